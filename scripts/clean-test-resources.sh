#!/usr/bin/env bash
# Drops the per-test databases (webhooks_test_*) and queues/exchanges (test.*) that an
# interrupted test run left behind. Never touches anything else.
set -euo pipefail
PSQL="psql -h ${PGHOST:-127.0.0.1} -U ${PGUSER:-postgres} -d postgres -tA"
for db in $($PSQL -c "SELECT datname FROM pg_database WHERE datname LIKE 'webhooks\_test\_%'"); do
  $PSQL -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null && echo "dropped database $db"
done
if command -v rabbitmqctl >/dev/null 2>&1; then
  for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep '^test\.' || true); do
    rabbitmqctl -q delete_queue "$q" >/dev/null && echo "deleted queue $q"
  done
  for x in $(rabbitmqctl -q list_exchanges name 2>/dev/null | grep '^test\.' || true); do
    rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$x\">>), false, <<\"cli\">>)." >/dev/null 2>&1 || true
  done
fi
