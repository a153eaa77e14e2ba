-- Every Stripe event the ingest accepted, keyed by its id: the dedupe record, the history that
-- operators read (`webhookctl events`), and the stored payload that `webhookctl replay` republishes.
CREATE TABLE webhook_events (
    event_id          text        PRIMARY KEY,
    event_type        text        NOT NULL,
    -- data.object.id, e.g. the checkout session id.
    object_id         text,
    livemode          boolean     NOT NULL DEFAULT false,
    -- `created` of the Stripe event.
    stripe_created_at timestamptz,
    -- The body exactly as Stripe signed it.
    payload           text        NOT NULL,
    -- queued | ignored | processing | retrying | succeeded | skipped | dead_lettered
    status            text        NOT NULL,
    attempts          integer     NOT NULL DEFAULT 0,
    last_error        text,
    received_at       timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz
);
CREATE INDEX webhook_events_received_at ON webhook_events (received_at);
CREATE INDEX webhook_events_status_received_at ON webhook_events (status, received_at);
CREATE INDEX webhook_events_object ON webhook_events (object_id) WHERE object_id IS NOT NULL;

-- Same shape as the old system's table so existing queries keep working:
-- SELECT * FROM audit_logs WHERE event_type = 'subscription.created' ORDER BY created_at DESC
CREATE TABLE audit_logs (
    id          bigserial   PRIMARY KEY,
    event_type  text        NOT NULL,
    -- The user's email.
    subject     text        NOT NULL,
    -- Stripe event id, tier, plan, Lago subscription id, …
    details     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_logs_event_type_created_at ON audit_logs (event_type, created_at DESC);
CREATE INDEX audit_logs_subject ON audit_logs (subject);
