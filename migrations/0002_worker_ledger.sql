-- The worker's step ledger. One row per business action (e.g. "checkout:cs_…": both
-- checkout.session.completed and .async_payment_succeeded of one session are the same action),
-- one row per finished step with its result, so a redelivered or duplicate event resumes after
-- the last finished step and never repeats an effect.
CREATE TABLE provisioning_actions (
    action_key      text        PRIMARY KEY,
    -- The event that started the action, and the last one that worked on it.
    first_event_id  text        NOT NULL,
    last_event_id   text        NOT NULL,
    status          text        NOT NULL, -- in_progress | done
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz
);

CREATE TABLE provisioning_steps (
    action_key   text        NOT NULL REFERENCES provisioning_actions (action_key) ON DELETE CASCADE,
    step         text        NOT NULL,
    -- What the step produced (ids, plan code, …); later steps read it instead of asking again.
    result       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    event_id     text        NOT NULL,
    completed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (action_key, step)
);

-- Every failed attempt of an event, for `webhookctl events show`.
CREATE TABLE event_errors (
    id         bigserial   PRIMARY KEY,
    event_id   text        NOT NULL,
    attempt    integer     NOT NULL,
    step       text,
    kind       text        NOT NULL, -- transient | permanent
    error      text        NOT NULL,
    -- What the worker did about it: retry_scheduled | dead_lettered
    action     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_errors_event_id ON event_errors (event_id, created_at);

-- Which action each event worked on, so `events show` can list the steps done.
ALTER TABLE webhook_events ADD COLUMN action_key text;
