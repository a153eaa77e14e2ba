-- The worker updates an event twice per attempt (processing, then its outcome). With `status` in
-- an index, every such update wrote a new entry into each of the table's four indexes; without
-- it, and with room left in each page, Postgres updates the row in place (a HOT update: no index
-- writes at all). `webhookctl events list --status` now reads the events newest first through
-- `webhook_events_received_at` and stops at its --limit; add --since on a very large table.
DROP INDEX IF EXISTS webhook_events_status_received_at;
ALTER TABLE webhook_events SET (fillfactor = 70);
