//! The durable billing state: per Stripe subscription its status, plan, binding to a Keycloak
//! account, ordering watermarks, tombstone and what Lago was last brought to; per Stripe
//! customer the account of its latest paid checkout. The decisions (is an event newer, what an
//! account is entitled to) are made by the worker from these records; this module loads and
//! saves them.
//!
//! Every write of a subscription's record is fenced by the lease of the attempt that makes it:
//! one token per delivery attempt ([`try_lease`]), renewed while the job runs ([`renew_lease`]),
//! and checked by the write itself ([`save`]), so a stale copy of a job can never write after a
//! newer one.

use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgPool, Row};
use uuid::Uuid;

/// Where an event stands in its subscription's order: Stripe's `created` (seconds), then a rank
/// for events of the same second, then the event id (deterministic, if arbitrary).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watermark {
    pub created: i64,
    pub rank: i32,
    pub event_id: String,
}

/// One subscription's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub subscription_id: String,
    pub customer_id: Option<String>,
    /// The Keycloak user id, and the email it was found by (the Lago customer's external_id).
    pub account_id: Option<String>,
    pub account_email: Option<String>,
    /// `checkout`, `customer` (the customer's fallback) or `operator`.
    pub bound_by: Option<String>,
    /// Stripe's status (`active`, `past_due`, …) from the newest checkout or subscription event.
    pub status: Option<String>,
    pub tier: Option<String>,
    pub cycle: Option<String>,
    pub plan_code: Option<String>,
    /// The newest checkout or `customer.subscription.*` event applied.
    pub watermark: Option<Watermark>,
    pub last_event_type: Option<String>,
    /// `active` or `past_due`, from the newest invoice event applied.
    pub invoice_status: Option<String>,
    pub invoice_watermark: Option<Watermark>,
    /// The deletion event: the tombstone.
    pub deleted_by: Option<String>,
    /// The plan Lago was last brought to, and whether Lago's subscription is terminated.
    pub lago_plan_code: Option<String>,
    /// The Lago customer (`external_id`) Lago has the subscription under.
    pub lago_customer: Option<String>,
    pub lago_terminated: bool,
    /// The account whose Keycloak attributes last included this subscription.
    pub synced_account_id: Option<String>,
}

const COLUMNS: &str =
    "subscription_id, customer_id, account_id, account_email, bound_by, status, tier, cycle, plan_code,
     last_event_created, last_event_rank, last_event_id, last_event_type,
     invoice_status, last_invoice_created, last_invoice_rank, last_invoice_event_id,
     deleted_by, lago_plan_code, lago_customer, lago_terminated, synced_account_id";

impl FromRow<'_, PgRow> for SubscriptionRecord {
    fn from_row(r: &PgRow) -> Result<Self, sqlx::Error> {
        let mark = |c: &str, k: &str, id: &str| -> Result<Option<Watermark>, sqlx::Error> {
            Ok(
                match (
                    r.try_get::<Option<i64>, _>(c)?,
                    r.try_get::<Option<i32>, _>(k)?,
                    r.try_get::<Option<String>, _>(id)?,
                ) {
                    (Some(created), rank, Some(event_id)) => Some(Watermark {
                        created,
                        rank: rank.unwrap_or(0),
                        event_id,
                    }),
                    _ => None,
                },
            )
        };
        Ok(Self {
            subscription_id: r.try_get("subscription_id")?,
            customer_id: r.try_get("customer_id")?,
            account_id: r.try_get("account_id")?,
            account_email: r.try_get("account_email")?,
            bound_by: r.try_get("bound_by")?,
            status: r.try_get("status")?,
            tier: r.try_get("tier")?,
            cycle: r.try_get("cycle")?,
            plan_code: r.try_get("plan_code")?,
            watermark: mark("last_event_created", "last_event_rank", "last_event_id")?,
            last_event_type: r.try_get("last_event_type")?,
            invoice_status: r.try_get("invoice_status")?,
            invoice_watermark: mark(
                "last_invoice_created",
                "last_invoice_rank",
                "last_invoice_event_id",
            )?,
            deleted_by: r.try_get("deleted_by")?,
            lago_plan_code: r.try_get("lago_plan_code")?,
            lago_customer: r.try_get("lago_customer")?,
            lago_terminated: r.try_get("lago_terminated")?,
            synced_account_id: r.try_get("synced_account_id")?,
        })
    }
}

/// Takes the subscription's lease for the attempt `token` for `secs` seconds, unless another
/// attempt holds an unexpired one, and returns the record as it is under the lease (`None`:
/// another attempt holds it). Creates the record when the subscription is new. One statement.
pub async fn try_lease(
    pool: &PgPool,
    subscription_id: &str,
    token: Uuid,
    secs: f64,
) -> Result<Option<SubscriptionRecord>, sqlx::Error> {
    let sql = format!(
        "INSERT INTO stripe_subscriptions AS s (subscription_id, lease_token, lease_until)
         VALUES ($1, $2, now() + make_interval(secs => $3))
         ON CONFLICT (subscription_id) DO UPDATE SET
             lease_token = EXCLUDED.lease_token, lease_until = EXCLUDED.lease_until
         WHERE s.lease_until IS NULL OR s.lease_until < now() OR s.lease_token IS NULL
         RETURNING {COLUMNS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(subscription_id)
        .bind(token)
        .bind(secs)
        .fetch_optional(pool)
        .await
}

/// Extends the lease by `secs` from now if `token` still holds it; `false` when it does not.
pub async fn renew_lease(
    pool: &PgPool,
    subscription_id: &str,
    token: Uuid,
    secs: f64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE stripe_subscriptions SET lease_until = now() + make_interval(secs => $3)
         WHERE subscription_id = $1 AND lease_token = $2",
    )
    .bind(subscription_id)
    .bind(token)
    .bind(secs)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives the lease back (only if `token` still holds it).
pub async fn release_lease(pool: &PgPool, subscription_id: &str, token: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE stripe_subscriptions SET lease_token = NULL, lease_until = NULL
         WHERE subscription_id = $1 AND lease_token = $2",
    )
    .bind(subscription_id)
    .bind(token)
    .execute(pool)
    .await?;
    Ok(())
}

/// Writes the whole record if `token` still holds its lease; `false` when it does not (the
/// lease expired and another attempt took it: nothing was written).
pub async fn save(pool: &PgPool, token: Uuid, r: &SubscriptionRecord) -> Result<bool, sqlx::Error> {
    let w = r.watermark.as_ref();
    let i = r.invoice_watermark.as_ref();
    let done = sqlx::query(
        "UPDATE stripe_subscriptions SET
             customer_id = $3, account_id = $4, account_email = $5, bound_by = $6,
             status = $7, tier = $8, cycle = $9, plan_code = $10,
             last_event_created = $11, last_event_rank = $12, last_event_id = $13, last_event_type = $14,
             invoice_status = $15, last_invoice_created = $16, last_invoice_rank = $17, last_invoice_event_id = $18,
             deleted_by = $19, deleted_at = CASE WHEN $19::text IS NULL THEN NULL ELSE coalesce(deleted_at, now()) END,
             lago_plan_code = $20, lago_terminated = $21, synced_account_id = $22,
             lago_customer = $23, updated_at = now()
         WHERE subscription_id = $1 AND lease_token = $2",
    )
    .bind(&r.subscription_id)
    .bind(token)
    .bind(&r.customer_id)
    .bind(&r.account_id)
    .bind(&r.account_email)
    .bind(&r.bound_by)
    .bind(&r.status)
    .bind(&r.tier)
    .bind(&r.cycle)
    .bind(&r.plan_code)
    .bind(w.map(|w| w.created))
    .bind(w.map(|w| w.rank))
    .bind(w.map(|w| w.event_id.as_str()))
    .bind(&r.last_event_type)
    .bind(&r.invoice_status)
    .bind(i.map(|w| w.created))
    .bind(i.map(|w| w.rank))
    .bind(i.map(|w| w.event_id.as_str()))
    .bind(&r.deleted_by)
    .bind(&r.lago_plan_code)
    .bind(r.lago_terminated)
    .bind(&r.synced_account_id)
    .bind(&r.lago_customer)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One subscription's record, if the store knows it.
pub async fn subscription(
    pool: &PgPool,
    subscription_id: &str,
) -> Result<Option<SubscriptionRecord>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM stripe_subscriptions WHERE subscription_id = $1"
    )))
    .bind(subscription_id)
    .fetch_optional(pool)
    .await
}

/// The ids of every subscription the billing state knows (of one Stripe customer, or all), in
/// id order.
pub async fn subscription_ids(pool: &PgPool, customer_id: Option<&str>) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT subscription_id FROM stripe_subscriptions WHERE $1::text IS NULL OR customer_id = $1
         ORDER BY subscription_id",
    )
    .bind(customer_id)
    .fetch_all(pool)
    .await
}

/// Every subscription bound to a Keycloak account, oldest first.
pub async fn account_subscriptions(
    pool: &PgPool,
    account_id: &str,
) -> Result<Vec<SubscriptionRecord>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM stripe_subscriptions WHERE account_id = $1 ORDER BY subscription_id"
    )))
    .bind(account_id)
    .fetch_all(pool)
    .await
}

/// A Stripe customer's binding: the account of its latest paid checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerAccount {
    /// `None` for a customer learned before account ids were kept: only its email is known.
    pub account_id: Option<String>,
    pub account_email: String,
}

pub async fn customer_account(
    pool: &PgPool,
    customer_id: &str,
) -> Result<Option<CustomerAccount>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT account_id, account_email FROM stripe_customers
         WHERE customer_id = $1 AND account_email IS NOT NULL",
    )
    .bind(customer_id)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(CustomerAccount {
            account_id: r.try_get(0)?,
            account_email: r.try_get(1)?,
        })
    })
    .transpose()
}

/// Binds the customer to the account of a paid checkout, unless a later checkout (by its
/// watermark) bound it already.
pub async fn bind_customer(
    pool: &PgPool,
    customer_id: &str,
    account: &CustomerAccount,
    by: &Watermark,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO stripe_customers AS c (customer_id, account_id, account_email, bound_event_created, bound_event_id)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (customer_id) DO UPDATE SET
             account_id = EXCLUDED.account_id, account_email = EXCLUDED.account_email,
             bound_event_created = EXCLUDED.bound_event_created, bound_event_id = EXCLUDED.bound_event_id,
             updated_at = now()
         WHERE c.bound_event_created IS NULL
            OR (c.bound_event_created, c.bound_event_id) <= (EXCLUDED.bound_event_created, EXCLUDED.bound_event_id)",
    )
    .bind(customer_id)
    .bind(&account.account_id)
    .bind(&account.account_email)
    .bind(by.created)
    .bind(&by.event_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Remembers the account id found for a customer known only by email (see [`CustomerAccount`]).
pub async fn remember_customer_account_id(
    pool: &PgPool,
    customer_id: &str,
    account_email: &str,
    account_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE stripe_customers SET account_id = $3, updated_at = now()
         WHERE customer_id = $1 AND account_email = $2 AND account_id IS NULL",
    )
    .bind(customer_id)
    .bind(account_email)
    .bind(account_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// What [`rebind`] did.
#[derive(Debug)]
pub enum Rebound {
    /// Bound; the record as it was before.
    Done(Box<SubscriptionRecord>),
    /// An event of the subscription holds its lease now (until `lease_until`): nothing changed.
    InFlight,
    /// The store knows no such subscription.
    Unknown,
}

/// An operator's rebinding (`webhookctl billing rebind`): the subscription now belongs to the
/// Keycloak account with `account_email` (its id is looked up by the worker when it next works
/// on the subscription). Only while no job holds the subscription's lease, so that no job can
/// write its older copy of the record over the new binding.
pub async fn rebind(
    pool: &PgPool,
    subscription_id: &str,
    account_email: &str,
) -> Result<Rebound, sqlx::Error> {
    let sql = format!(
        "WITH old AS (SELECT {COLUMNS} FROM stripe_subscriptions WHERE subscription_id = $1),
         new AS (
             UPDATE stripe_subscriptions SET account_id = NULL, account_email = $2, bound_by = 'operator', updated_at = now()
             WHERE subscription_id = $1 AND (lease_token IS NULL OR lease_until < now())
             RETURNING 1
         )
         SELECT old.*, EXISTS (SELECT 1 FROM new) AS rebound FROM old"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(subscription_id)
        .bind(account_email)
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        None => Rebound::Unknown,
        Some(r) if r.try_get::<bool, _>("rebound")? => {
            Rebound::Done(Box::new(SubscriptionRecord::from_row(&r)?))
        }
        Some(_) => Rebound::InFlight,
    })
}
