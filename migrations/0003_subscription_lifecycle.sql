-- Which email a Stripe customer has: learned at checkout (and from invoices that carry one), so
-- that subscription and invoice events, which carry only the customer id, find the user.
CREATE TABLE stripe_customers (
    customer_id text        PRIMARY KEY,
    email       text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Per Stripe subscription, the newest event applied. Stripe does not deliver in order: an event
-- older than this one is recorded and skipped (a late checkout must not resurrect a canceled
-- subscription). Invoice events keep their own mark: a payment must not hide a plan change
-- created a second earlier, nor the other way round.
CREATE TABLE stripe_subscriptions (
    subscription_id      text        PRIMARY KEY,
    -- checkout.session.*, customer.subscription.*
    last_event_created   bigint,
    last_event_id        text,
    last_event_type      text,
    -- invoice.*
    last_invoice_created bigint,
    last_invoice_event_id text,
    status             text,
    tier               text,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
