#!/usr/bin/env bash
# `make deploy-check`: validates deploy/ (Dockerfile, compose, Kubernetes manifests, RabbitMQ
# definitions, alert rules, Grafana dashboard) against the schemas and against the real binaries
# (target/debug, built by `make build`) with the local Postgres and RabbitMQ (`make services`).
# The Python tools are installed from PyPI into target/deploy-venv the first time, and again
# whenever deploy/checks/requirements.txt changes. What each check does: deploy/checks/check_deploy.py.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${DEPLOY_VENV:-target/deploy-venv}
REQ=deploy/checks/requirements.txt
STAMP="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "deploy-check: installing the check tools into $VENV (from $REQ)"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || { echo "deploy-check: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir -r "$REQ" \
    || { echo "deploy-check: pip could not install $REQ (is PyPI reachable?)" >&2; rm -rf "$VENV"; exit 1; }
  echo "$want" >"$STAMP"
fi

exec "$VENV/bin/python" deploy/checks/check_deploy.py "$@"
