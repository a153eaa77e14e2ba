#!/usr/bin/env bash
# Makes sure PostgreSQL and RabbitMQ answer on 127.0.0.1 and the `webhooks` database exists.
# Idempotent: does nothing when both already run. When one is not answering it is started; when
# it is not installed and we are root on Debian, it is installed from Debian's packages first.
set -euo pipefail

PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
AMQP_PORT=${AMQP_PORT:-5672}
DB_NAME=${DB_NAME:-webhooks}

say() { printf 'services: %s\n' "$*"; }
die() { printf 'services: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() { # host port name seconds
  local deadline=$((SECONDS + $4))
  until port_open "$1" "$2"; do
    [ "$SECONDS" -lt "$deadline" ] || die "$3 did not start answering on $1:$2 within $4s; see its log (journalctl, /var/log/postgresql or /var/log/rabbitmq)"
    sleep 1
  done
}

can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_install() {
  can_install || die "$1 is not installed. Install it (Debian: sudo apt-get install $*) or run this as root to let it install itself."
  say "installing $* from Debian's packages"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null; then
    apt-get update >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null
  fi
}

pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

start_postgres() {
  local fresh=0
  if [ -z "$(pg_version)" ]; then
    apt_install postgresql postgresql-client
    fresh=1
  fi
  local v; v=$(pg_version)
  if [ "$fresh" = 1 ]; then
    # A fresh development install: let local TCP clients in without a password, as the default
    # DATABASE_URL (postgres://postgres@127.0.0.1:5432/webhooks) expects.
    local hba="/etc/postgresql/$v/main/pg_hba.conf"
    sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  fi
  say "starting PostgreSQL $v"
  pg_ctlcluster --skip-systemctl-redirect "$v" main start 2>/dev/null || pg_ctlcluster "$v" main start
}

start_rabbitmq() {
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  say "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
}

if ! port_open "$PGHOST" "$PGPORT"; then
  start_postgres
  wait_port "$PGHOST" "$PGPORT" PostgreSQL 60
fi
if ! port_open 127.0.0.1 "$AMQP_PORT"; then
  start_rabbitmq
  wait_port 127.0.0.1 "$AMQP_PORT" RabbitMQ 120
fi

# The tests count the messages a consumer holds unacked through RabbitMQ's management API.
if ! port_open 127.0.0.1 15672 && command -v rabbitmq-plugins >/dev/null 2>&1; then
  say "enabling RabbitMQ's management plugin (the tests read unacked counts from its API)"
  rabbitmq-plugins enable rabbitmq_management >/dev/null \
    || die "cannot enable the management plugin; run as root: rabbitmq-plugins enable rabbitmq_management"
  wait_port 127.0.0.1 15672 "RabbitMQ's management API" 60
fi

# The deploy check reads RabbitMQ's own per-queue metrics (the alerts do) from the
# rabbitmq_prometheus plugin, and runs the alert scenarios with promtool (Debian's prometheus
# package; the Prometheus server it also installs is not started here).
if ! port_open 127.0.0.1 15692 && command -v rabbitmq-plugins >/dev/null 2>&1; then
  say "enabling RabbitMQ's prometheus plugin (the deploy check reads its per-queue metrics)"
  rabbitmq-plugins enable rabbitmq_prometheus >/dev/null \
    || die "cannot enable the prometheus plugin; run as root: rabbitmq-plugins enable rabbitmq_prometheus"
  wait_port 127.0.0.1 15692 "RabbitMQ's prometheus endpoint" 60
fi
command -v promtool >/dev/null 2>&1 || apt_install prometheus

# The deploy check (definitions import) and the chaos run with real restarts drive the broker
# with rabbitmqctl. Debian's /usr/sbin/rabbitmqctl runs as user rabbitmq when called by root; a CLI
# that runs as the caller authenticates with the caller's Erlang cookie ($HOME/.erlang.cookie),
# which must be the node's (the CLI's first call makes a random one when there is none): when the
# node's cookie is readable (root) and differs, it is copied there, the old one kept as .bak.
rabbitmqctl_ok() { timeout 60 rabbitmqctl -q status >/dev/null 2>&1; }
node_cookie=/var/lib/rabbitmq/.erlang.cookie
if command -v rabbitmqctl >/dev/null 2>&1 && ! rabbitmqctl_ok; then
  if [ -r "$node_cookie" ] && [ -n "${HOME:-}" ] && ! cmp -s "$node_cookie" "$HOME/.erlang.cookie"; then
    say "rabbitmqctl cannot reach the node: copying its Erlang cookie ($node_cookie) to $HOME/.erlang.cookie"
    [ ! -e "$HOME/.erlang.cookie" ] || mv -f "$HOME/.erlang.cookie" "$HOME/.erlang.cookie.bak"
    install -m 400 "$node_cookie" "$HOME/.erlang.cookie"
  fi
  if ! rabbitmqctl_ok; then
    msg="rabbitmqctl cannot reach the local RabbitMQ node: run as root or as user rabbitmq, with \$HOME/.erlang.cookie equal to $node_cookie"
    [ "${CI:-}" = true ] && die "$msg (CI needs it for the deploy check)"
    say "$msg; the deploy check will skip the definitions import"
  fi
fi

command -v psql >/dev/null 2>&1 || apt_install postgresql-client
exists=$(psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'") \
  || die "PostgreSQL answers on $PGHOST:$PGPORT but refuses user $PGUSER; allow it (pg_hba.conf) or set PGUSER"
if [ "$exists" != 1 ]; then
  psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "CREATE DATABASE \"$DB_NAME\"" >/dev/null
  say "created database $DB_NAME"
fi
say "PostgreSQL on $PGHOST:$PGPORT and RabbitMQ on 127.0.0.1:$AMQP_PORT are up"
