-- Billing state that converges (docs/architecture.md, "Billing state"): every event updates the
-- durable record of its subscription if it is newer, and the worker then brings Lago and Keycloak
-- to what the whole record implies.

-- The Stripe customer: the Keycloak account of its latest paid checkout (the fallback for events
-- that name a subscription the store does not know), and the billing contact seen last. The
-- email column was "the account's email" before; it is only the contact now.
ALTER TABLE stripe_customers ALTER COLUMN email DROP NOT NULL;
ALTER TABLE stripe_customers
    ADD COLUMN account_id          text,
    ADD COLUMN account_email       text,
    -- The checkout that bound it: `created`, then event id (the latest paid checkout wins).
    ADD COLUMN bound_event_created bigint,
    ADD COLUMN bound_event_id      text;

ALTER TABLE stripe_subscriptions
    ADD COLUMN customer_id        text,
    -- The Keycloak account (user id) the subscription belongs to, and the email it was found by
    -- (also the Lago customer's external_id). `bound_by`: checkout | customer | operator.
    ADD COLUMN account_id         text,
    ADD COLUMN account_email      text,
    ADD COLUMN bound_by           text,
    ADD COLUMN cycle              text,
    ADD COLUMN plan_code          text,
    -- The watermark's tie-break for events of the same second (see docs/architecture.md).
    ADD COLUMN last_event_rank    integer,
    ADD COLUMN last_invoice_rank  integer,
    -- From invoice.paid / invoice.payment_failed: active | past_due.
    ADD COLUMN invoice_status     text,
    -- The tombstone: the deletion event. Nothing brings the subscription back once it is set.
    ADD COLUMN deleted_by         text,
    ADD COLUMN deleted_at         timestamptz,
    -- What Lago was last brought to: the plan, and the Lago customer (external_id) it is under.
    ADD COLUMN lago_plan_code     text,
    ADD COLUMN lago_customer      text,
    ADD COLUMN lago_terminated    boolean NOT NULL DEFAULT false,
    -- The account whose Keycloak attributes last included this subscription: when the binding
    -- moves (a checkout after the customer's fallback, an operator's rebinding), both are synced.
    ADD COLUMN synced_account_id  text,
    -- The fencing token of the attempt that holds the lease (one per delivery attempt).
    ADD COLUMN lease_token        uuid;

-- The old lease owner (an event id) let two deliveries of one event hold the lease together.
UPDATE stripe_subscriptions SET lease_owner = NULL, lease_until = NULL;
ALTER TABLE stripe_subscriptions DROP COLUMN lease_owner;

-- Rows written before this migration: their tombstone is the deletion they recorded.
UPDATE stripe_subscriptions
SET deleted_by = last_event_id, deleted_at = updated_at, lago_terminated = true
WHERE last_event_type = 'customer.subscription.deleted';

-- An account's subscriptions, for its tier (several subscriptions of one account).
CREATE INDEX stripe_subscriptions_account ON stripe_subscriptions (account_id) WHERE account_id IS NOT NULL;

-- Customers learned before this migration: their email was the account's (from a checkout, or
-- from an invoice's customer_email); the worker looks the account up by it when it needs the
-- fallback, and then remembers the account's id.
UPDATE stripe_customers SET account_email = email WHERE account_id IS NULL;

-- The attempt whose outcome the event's status is: an outcome never overwrites that of a later
-- attempt (two copies of one event finishing in the other order).
ALTER TABLE webhook_events ADD COLUMN outcome_attempt integer;
