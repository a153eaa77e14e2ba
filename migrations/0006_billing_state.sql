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

-- Subscriptions provisioned before this migration: their checkout's audit row names the
-- account (subject = the email it was found by, details.keycloak_user_id) and the customer; the
-- newest of their checkout and plan-change rows names the plan Lago was brought to.
WITH created AS (
    SELECT DISTINCT ON (details->>'stripe_subscription_id')
           details->>'stripe_subscription_id' AS subscription_id, subject,
           details->>'keycloak_user_id' AS account_id, details->>'stripe_customer_id' AS customer_id
    FROM audit_logs
    WHERE event_type = 'subscription.created' AND details ? 'stripe_subscription_id'
    ORDER BY details->>'stripe_subscription_id', id DESC
), planned AS (
    SELECT DISTINCT ON (details->>'stripe_subscription_id')
           details->>'stripe_subscription_id' AS subscription_id,
           details->>'plan' AS plan_code, details->>'billing_cycle' AS cycle
    FROM audit_logs
    WHERE event_type IN ('subscription.created', 'subscription.updated') AND details ? 'plan'
    ORDER BY details->>'stripe_subscription_id', id DESC
)
UPDATE stripe_subscriptions s SET
    account_id = c.account_id,
    account_email = c.subject,
    bound_by = 'checkout',
    customer_id = coalesce(s.customer_id, c.customer_id),
    plan_code = coalesce(s.plan_code, p.plan_code),
    cycle = coalesce(s.cycle, p.cycle),
    lago_plan_code = CASE WHEN s.deleted_by IS NULL THEN p.plan_code END,
    lago_customer = CASE WHEN s.deleted_by IS NULL THEN c.subject END,
    synced_account_id = c.account_id
FROM created c LEFT JOIN planned p USING (subscription_id)
WHERE s.subscription_id = c.subscription_id AND s.account_email IS NULL;

-- Customers learned before this migration: the account of their newest checkout's audit row.
-- (Their old `email` column is not trusted: the old worker overwrote it with invoices' billing
-- contacts.)
WITH latest AS (
    SELECT DISTINCT ON (details->>'stripe_customer_id')
           details->>'stripe_customer_id' AS customer_id, subject, details->>'keycloak_user_id' AS account_id,
           details->>'stripe_event_id' AS event_id
    FROM audit_logs
    WHERE event_type = 'subscription.created' AND details ? 'stripe_customer_id'
      AND jsonb_typeof(details->'stripe_customer_id') = 'string'
    ORDER BY details->>'stripe_customer_id', id DESC
)
UPDATE stripe_customers c SET
    account_id = l.account_id, account_email = l.subject,
    bound_event_created = 0, bound_event_id = l.event_id
FROM latest l
WHERE c.customer_id = l.customer_id AND c.account_email IS NULL;

-- The attempt whose outcome the event's status is: an outcome never overwrites that of a later
-- attempt (two copies of one event finishing in the other order).
ALTER TABLE webhook_events ADD COLUMN outcome_attempt integer;
