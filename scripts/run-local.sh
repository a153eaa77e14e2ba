#!/usr/bin/env bash
# `make run`: the pipeline on this machine with the local configuration, until Ctrl-C.
# Migrates, declares the topology, starts the ingest, sends one signed test event and shows
# where it went.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
export WEBHOOK_CONFIG=${WEBHOOK_CONFIG:-deploy/local/webhook.toml}
export INGEST_BIND=${INGEST_BIND:-127.0.0.1:8084}

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$BIN/webhookctl" migrate
"$BIN/webhookctl" setup

"$BIN/webhook-ingest" &
pids+=($!)

# GET a path on host:port with bash alone (no curl needed); true on a 200.
http_ok() {
  local host=${1%:*} port=${1##*:}
  (
    exec 3<>"/dev/tcp/$host/$port" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$host" >&3
    IFS= read -r line <&3 || exit 1
    [[ "$line" == *" 200 "* ]]
  ) 2>/dev/null
}

deadline=$((SECONDS + 30))
until http_ok "$INGEST_BIND" /readyz; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "run: the ingest did not become ready within 30s (see its log above)" >&2; exit 1; }
  sleep 0.3
done

echo
echo "run: sending one signed checkout.session.completed event"
"$BIN/webhookctl" send-test-event --url "http://$INGEST_BIND/webhooks/stripe"
cat <<EOT

run: the ingest listens on http://$INGEST_BIND (POST /webhooks/stripe, /healthz, /readyz, /metrics).
     Send more:      WEBHOOK_CONFIG=$WEBHOOK_CONFIG $BIN/webhookctl send-test-event [--email E --tier T --event-id ID]
     Real Stripe:    stripe listen --forward-to localhost:8084/webhooks/stripe  (and put its whsec_ in STRIPE_WEBHOOK_SECRET)
     Ctrl-C stops everything.
EOT
wait
