#!/usr/bin/env bash
# A local three-node RabbitMQ cluster for tests and demos, beside (not joined to) the machine's
# own node on 5672, following RabbitMQ's guide to several nodes on one host: each node has its
# own node name, AMQP port, distribution port, config, data, log and feature-flags paths, owned
# by the rabbitmq user; the second and third join the first.
#
#   scripts/rabbitmq-cluster.sh up          start (or reuse) the cluster; prints AMQP_URL
#   scripts/rabbitmq-cluster.sh down        stop it and delete its data
#   scripts/rabbitmq-cluster.sh stop N      stop node N (1-3) cleanly (connections closed, leadership
#                                           handed over)
#   scripts/rabbitmq-cluster.sh kill N      crash node N: SIGKILL of its Erlang VM (half-open
#                                           connections, leaders lost without a hand-over)
#   scripts/rabbitmq-cluster.sh start N     start node N again (it rejoins by itself)
#   scripts/rabbitmq-cluster.sh status      which nodes run
#   scripts/rabbitmq-cluster.sh url         the AMQP_URL list of the three nodes
#   scripts/rabbitmq-cluster.sh leader Q    the number of the node that leads quorum queue Q
#
# Nodes: webhook-c1@localhost … webhook-c3@localhost on AMQP ports 5681-5683 (distribution
# 25681-25683). CLUSTER_DIR (default /tmp/webhook-rabbitmq-cluster) holds their files.
set -euo pipefail

BASE=${CLUSTER_DIR:-/tmp/webhook-rabbitmq-cluster}
NODES=(1 2 3)
RUN_AS=rabbitmq

node_name() { echo "webhook-c$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }
dist_port() { echo $((25680 + $1)); }

die() { echo "rabbitmq-cluster: $*" >&2; exit 1; }

# The nodes run as the rabbitmq user (their files are its own): only root or that user can
# start, stop or ask them anything.
if [ "$(id -u)" != 0 ] && [ "$(id -un)" != "$RUN_AS" ]; then
  die "run as root or as the $RUN_AS user (sudo $0 $*)"
fi

as_rabbitmq() {
  if [ "$(id -un)" = "$RUN_AS" ]; then "$@"; else runuser -u "$RUN_AS" -- "$@"; fi
}

ctl() { # ctl N args…
  local n=$1; shift
  as_rabbitmq env HOME=/var/lib/rabbitmq RABBITMQ_CONF_ENV_FILE="$BASE/c$n/rabbitmq-env.conf" \
    rabbitmqctl -n "$(node_name "$n")" "$@"
}

running() { ctl "$1" -q status >/dev/null 2>&1; }

url() {
  local urls=()
  for n in "${NODES[@]}"; do urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f"); done
  (IFS=,; echo "${urls[*]}")
}

prepare() {
  local n=$1
  local dir="$BASE/c$n"
  mkdir -p "$dir/mnesia" "$dir/log"
  cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$(amqp_port "$n")
# Tests connect as guest from 127.0.0.1 (allowed by default for loopback).
cluster_partition_handling = pause_minority
# Small machine: never block publishers for memory or disk in tests.
vm_memory_high_watermark.relative = 0.8
disk_free_limit.absolute = 50MB
CONF
  cat >"$dir/rabbitmq-env.conf" <<ENV
NODENAME=$(node_name "$n")
CONFIG_FILE=$dir/rabbitmq.conf
MNESIA_BASE=$dir/mnesia
LOG_BASE=$dir/log
ENABLED_PLUGINS_FILE=$dir/enabled_plugins
FEATURE_FLAGS_FILE=$dir/feature_flags
DIST_PORT=$(dist_port "$n")
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
ENV
  [ -f "$dir/enabled_plugins" ] || echo "[]." >"$dir/enabled_plugins"
  chown -R "$RUN_AS:$RUN_AS" "$dir"
}

# Starts node N's VM in the background (await_node waits for it); on failure says why on
# stderr and returns 1.
launch_node() {
  local n=$1
  local dir="$BASE/c$n" out
  prepare "$n" || return 1
  # The launcher's own output, in a file of the caller's (not in the node's directory, whose
  # files are the rabbitmq user's).
  out=$(mktemp)
  if ! as_rabbitmq env HOME=/var/lib/rabbitmq RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
    RABBITMQ_NODENAME="$(node_name "$n")" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_NODE_PORT="$(amqp_port "$n")" RABBITMQ_DIST_PORT="$(dist_port "$n")" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_FEATURE_FLAGS_FILE="$dir/feature_flags" \
    rabbitmq-server -detached >"$out" 2>&1; then
    echo "rabbitmq-cluster: node $n did not start: $(tail -5 "$out")" >&2
    rm -f "$out"
    return 1
  fi
  rm -f "$out"
}

# Waits until node N has booted, or the deadline (seconds since the script started) passes.
await_node() {
  local n=$1 deadline=$2
  until ctl "$n" -q await_startup --timeout 5 >/dev/null 2>&1; do
    [ $SECONDS -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

node_log_tail() {
  local log="$BASE/c$1/log/$(node_name "$1").log"
  echo "the last lines of $log:"
  tail -n 15 "$log" 2>/dev/null | cut -c1-240
}

# Starts node N again while the others run (it rejoins by itself).
start_node() {
  local n=$1
  running "$n" && return 0
  launch_node "$n" || exit 1
  await_node "$n" $((SECONDS + 180)) || die "node $n did not finish starting within 180 s; $(node_log_tail "$n")"
}

# Starts every stopped node at once. A clustered node waits at boot for the peers that ran
# after it stopped (RabbitMQ's restart rule: the last node down must come up first, or all
# together), so starting them one by one can wait for ever after an unclean stop: a machine
# shut down with the cluster running, or one node after the other SIGKILLed.
# Every message goes to stderr (stdout is the URL list); returns 1 when a node does not boot.
start_all() {
  local n deadline=$((SECONDS + 240))
  for n in "${NODES[@]}"; do
    running "$n" || launch_node "$n" || return 1
  done
  # Every node, also one that answered `status` while still booting.
  for n in "${NODES[@]}"; do
    if ! await_node "$n" "$deadline"; then
      echo "rabbitmq-cluster: node $n did not finish starting within 240 s; $(node_log_tail "$n")" >&2
      return 1
    fi
  done
}

joined() { # whether node N is in node 1's cluster
  ctl 1 -q cluster_status --formatter json 2>/dev/null | python3 -c \
    "import json,sys; d=json.load(sys.stdin); sys.exit(0 if '$(node_name "$1")' in d.get('running_nodes', []) else 1)"
}

up() {
  command -v rabbitmq-server >/dev/null || die "rabbitmq-server is not installed (make services installs it)"
  if ! start_all; then
    # The cluster is disposable (tests and demos): when its old state cannot boot, start over.
    echo "rabbitmq-cluster: the existing cluster in $BASE did not start; deleting it and starting a new one" >&2
    down
    start_all || die "a new cluster did not start either (see above)"
  fi
  for n in 2 3; do
    joined "$n" && continue
    ctl "$n" -q stop_app >/dev/null 2>&1
    ctl "$n" -q reset >/dev/null 2>&1
    ctl "$n" -q join_cluster "$(node_name 1)" >/dev/null 2>&1 || die "node $n could not join $(node_name 1)"
    ctl "$n" -q start_app >/dev/null 2>&1
  done
  for n in 2 3; do joined "$n" || die "node $n is not running in the cluster"; done
  echo "rabbitmq-cluster: 3 nodes up ($(node_name 1), $(node_name 2), $(node_name 3))" >&2
  url
}

# The Erlang VM of node N, if it runs. Its name is in the VM's environment, not on its
# command line.
node_pids() {
  local p
  for p in $(pgrep beam.smp); do
    # grep reads it all (no -q): an early exit would kill tr with SIGPIPE, and pipefail would
    # then call a match a miss.
    tr '\0' '\n' 2>/dev/null <"/proc/$p/environ" | grep -x "RABBITMQ_NODENAME=$(node_name "$1")" >/dev/null && echo "$p"
  done || true
}

down() {
  local n pids
  for n in "${NODES[@]}"; do
    [ -d "$BASE/c$n" ] || continue
    # Its files go, so it need not stop cleanly (and a node still booting, waiting for its
    # peers, may not answer a stop at all).
    pids=$(node_pids "$n")
    [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
  done
  rm -rf "$BASE"
  echo "rabbitmq-cluster: down" >&2
}

status() {
  for n in "${NODES[@]}"; do
    if running "$n"; then echo "$(node_name "$n") running on $(amqp_port "$n")"; else echo "$(node_name "$n") stopped"; fi
  done
}

leader() {
  local q=$1
  for n in "${NODES[@]}"; do
    running "$n" || continue
    ctl "$n" -q list_queues name leader --formatter json 2>/dev/null | python3 -c "
import json, sys
for row in json.load(sys.stdin):
    if row.get('name') == sys.argv[1]:
        print(str(row.get('leader', '')).split('@')[0].removeprefix('webhook-c'))
        break
" "$q"
    return 0
  done
  die "no node is running"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  stop) [[ "${2:-}" =~ ^[123]$ ]] || die "usage: $0 stop 1|2|3"; running "$2" && ctl "$2" -q stop >/dev/null; true ;;
  kill)
    [[ "${2:-}" =~ ^[123]$ ]] || die "usage: $0 kill 1|2|3"
    pids=$(node_pids "$2")
    [ -n "$pids" ] || die "node $2 is not running"
    kill -9 $pids
    ;;
  start) [[ "${2:-}" =~ ^[123]$ ]] || die "usage: $0 start 1|2|3"; start_node "$2" ;;
  status) status ;;
  url) url ;;
  leader) [ -n "${2:-}" ] || die "usage: $0 leader QUEUE"; leader "$2" ;;
  *) die "usage: $0 up|down|stop N|kill N|start N|status|url|leader QUEUE" ;;
esac
