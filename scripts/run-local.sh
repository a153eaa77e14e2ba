#!/usr/bin/env bash
# `make run`: the whole pipeline on this machine, until Ctrl-C.
# Migrates, declares the topology, starts the sandbox (in-memory Keycloak + Lago + Stripe API), the
# ingest and the worker, sends one signed checkout event and shows what it became, then backfills
# one event that only the sandbox's Stripe API has.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
export WEBHOOK_CONFIG=${WEBHOOK_CONFIG:-deploy/local/webhook.toml}
SANDBOX_BIND=${SANDBOX_BIND:-127.0.0.1:8180}
INGEST=${INGEST:-127.0.0.1:8084}
WORKER=${WORKER:-127.0.0.1:9091}

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

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

wait_ready() { # name host:port path
  local deadline=$((SECONDS + 30))
  until http_ok "$2" "$3"; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "run: $1 did not become ready within 30s (see its log above)" >&2; exit 1; }
    sleep 0.3
  done
}

"$BIN/webhookctl" migrate
"$BIN/webhookctl" setup

SANDBOX_BIND=$SANDBOX_BIND "$BIN/webhook-sandbox" &
pids+=($!)
wait_ready "the sandbox" "$SANDBOX_BIND" /healthz
"$BIN/webhook-ingest" &
pids+=($!)
"$BIN/webhook-worker" &
pids+=($!)
wait_ready "the ingest" "$INGEST" /readyz
wait_ready "the worker" "$WORKER" /readyz

echo
echo "run: sending one signed checkout.session.completed event for example@example.com (tier professional)"
event_id="evt_local_$(date +%s)_$$"
"$BIN/webhookctl" send-test-event --url "http://$INGEST/webhooks/stripe" --event-id "$event_id"

deadline=$((SECONDS + 30))
until "$BIN/webhookctl" events show "$event_id" --json 2>/dev/null | grep -q '"status":"succeeded"'; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "run: the event was not provisioned within 30s:" >&2; "$BIN/webhookctl" events show "$event_id" >&2 || true; exit 1; }
  sleep 0.3
done
echo
echo "run: what the event became (webhookctl events show $event_id):"
"$BIN/webhookctl" events show "$event_id"
echo
echo "run: the audit row:"
psql -h 127.0.0.1 -U postgres -d webhooks -c \
  "SELECT id, event_type, subject, details->>'tier' AS tier, details->>'plan' AS plan, details->>'lago_subscription_id' AS lago_subscription, created_at FROM audit_logs WHERE details->>'stripe_event_id' = '$event_id'"
echo
echo "run: an event Stripe has but never delivered (the endpoint was down, say): it is only in the"
echo "     sandbox's Stripe API, and webhookctl backfill fetches it from there"
missed_id="evt_missed_$(date +%s)_$$"
"$BIN/webhookctl" send-test-event --stripe-sandbox "http://$SANDBOX_BIND" --event-id "$missed_id" --tier enterprise
STRIPE_API_KEY=sk_test_sandbox STRIPE_API_URL="http://$SANDBOX_BIND" "$BIN/webhookctl" backfill --since 1h
deadline=$((SECONDS + 30))
until "$BIN/webhookctl" events show "$missed_id" --json 2>/dev/null | grep -q '"status":"succeeded"'; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "run: the backfilled event was not provisioned within 30s:" >&2; "$BIN/webhookctl" events show "$missed_id" >&2 || true; exit 1; }
  sleep 0.3
done
echo "run: backfilled and provisioned ($missed_id); a second backfill finds nothing new:"
STRIPE_API_KEY=sk_test_sandbox STRIPE_API_URL="http://$SANDBOX_BIND" "$BIN/webhookctl" backfill --since 1h
echo
cat <<EOT
run: the pipeline is up:
     ingest   http://$INGEST   (POST /webhooks/stripe, /healthz, /readyz, /metrics)
     worker   http://$WORKER   (/healthz, /readyz, /metrics)
     sandbox  http://$SANDBOX_BIND (Keycloak + Lago + Stripe API stand-in; state: GET /_sandbox/state)
   Send more:    WEBHOOK_CONFIG=$WEBHOOK_CONFIG $BIN/webhookctl send-test-event [--email E --tier T --cycle C --event-id ID]
   Real Stripe:  stripe listen --forward-to localhost:8084/webhooks/stripe, and put the whsec_ it prints in
                 STRIPE_WEBHOOK_SECRET (or [stripe] webhook_secret in a copy of $WEBHOOK_CONFIG)
   Ctrl-C stops everything.
EOT
wait
