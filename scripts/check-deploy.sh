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

# `kubectl kustomize` renders the kustomizations: the kubectl on PATH, else Debian's
# kubernetes-client, unpacked into target/tools (apt-get download checks it against Debian's
# signed package index; nothing is installed system-wide, so it conflicts with no other kubectl).
# Without either the render is a SKIP, and in CI (CI=true) a failure.
provide_kubectl() {
  local version dir deb tmp
  command -v apt-get >/dev/null 2>&1 || return 1
  version=$(apt-cache policy kubernetes-client 2>/dev/null | sed -n 's/^ *Candidate: //p')
  if { [ -z "$version" ] || [ "$version" = "(none)" ]; } && [ "$(id -u)" = 0 ]; then
    apt-get update >/dev/null 2>&1 || true
    version=$(apt-cache policy kubernetes-client 2>/dev/null | sed -n 's/^ *Candidate: //p')
  fi
  [ -n "$version" ] && [ "$version" != "(none)" ] || return 1
  dir="target/tools/kubernetes-client-$version"
  if [ ! -x "$dir/usr/bin/kubectl" ]; then
    echo "deploy-check: unpacking Debian's kubernetes-client $version into $dir (for \`kubectl kustomize\`)" >&2
    tmp=$(mktemp -d)
    mkdir -p "$(dirname "$dir")"
    (cd "$tmp" && apt-get download -q "kubernetes-client=$version" 2>&1 | grep -v 'unsandboxed as root' >&2) || true
    deb=$(ls "$tmp"/kubernetes-client_*.deb 2>/dev/null | head -n 1)
    [ -n "$deb" ] && dpkg-deb -x "$deb" "$dir.partial" && mv "$dir.partial" "$dir"
    rm -rf "$tmp" "$dir.partial"
  fi
  [ -x "$dir/usr/bin/kubectl" ] && echo "$PWD/$dir/usr/bin/kubectl"
}
if [ -z "${KUBECTL:-}" ]; then
  if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    KUBECTL=$(command -v kubectl)
  else
    KUBECTL=$(provide_kubectl) || KUBECTL=
  fi
fi
export KUBECTL

exec "$VENV/bin/python" deploy/checks/check_deploy.py "$@"
