//! What the worker knows about Stripe customers and subscriptions across events: the customer →
//! email mapping, per subscription the newest event applied (for out-of-order delivery), and a
//! lease that lets the jobs of one subscription take turns across all workers.

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

/// Remembers (or updates) the email of a Stripe customer.
pub async fn remember_customer(pool: &PgPool, customer_id: &str, email: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO stripe_customers (customer_id, email) VALUES ($1, $2)
         ON CONFLICT (customer_id) DO UPDATE SET email = EXCLUDED.email, updated_at = now()",
    )
    .bind(customer_id)
    .bind(email)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn customer_email(pool: &PgPool, customer_id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT email FROM stripe_customers WHERE customer_id = $1")
        .bind(customer_id)
        .fetch_optional(pool)
        .await
}

/// Takes the subscription's lease for `owner` (the event id) for `secs` seconds, unless another
/// owner holds an unexpired one, and returns the subscription's ordering marks as they are under
/// the lease (`None`: another owner holds it). The same owner may take it again (a redelivery
/// after a crash). One statement.
pub async fn try_lease(
    pool: &PgPool,
    subscription_id: &str,
    owner: &str,
    secs: f64,
) -> Result<Option<Marks>, sqlx::Error> {
    let row = sqlx::query(
        "INSERT INTO stripe_subscriptions (subscription_id, lease_owner, lease_until)
         VALUES ($1, $2, now() + make_interval(secs => $3))
         ON CONFLICT (subscription_id) DO UPDATE SET
             lease_owner = EXCLUDED.lease_owner, lease_until = EXCLUDED.lease_until
         WHERE stripe_subscriptions.lease_until IS NULL
            OR stripe_subscriptions.lease_until < now()
            OR stripe_subscriptions.lease_owner = EXCLUDED.lease_owner
         RETURNING last_event_created, last_event_id, last_event_type, last_invoice_created, last_invoice_event_id",
    )
    .bind(subscription_id)
    .bind(owner)
    .bind(secs)
    .fetch_optional(pool)
    .await?;
    row.map(|r| marks_of(&r)).transpose()
}

/// Gives the lease back (only if `owner` still holds it).
pub async fn release_lease(pool: &PgPool, subscription_id: &str, owner: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE stripe_subscriptions SET lease_owner = NULL, lease_until = NULL
         WHERE subscription_id = $1 AND lease_owner = $2",
    )
    .bind(subscription_id)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// The two ordering marks of a subscription.
#[derive(Debug, Default, Clone)]
pub struct Marks {
    /// `created`, id and type of the newest checkout or subscription event applied.
    pub lifecycle: Option<(i64, String, String)>,
    /// `created` and id of the newest invoice event applied.
    pub invoice: Option<(i64, String)>,
}

impl Marks {
    pub fn deleted(&self) -> Option<&str> {
        self.lifecycle
            .as_ref()
            .filter(|(_, _, t)| t == "customer.subscription.deleted")
            .map(|(_, id, _)| id.as_str())
    }
}

fn marks_of(r: &PgRow) -> Result<Marks, sqlx::Error> {
    let lifecycle = match (
        r.try_get::<Option<i64>, _>(0)?,
        r.try_get::<Option<String>, _>(1)?,
        r.try_get::<Option<String>, _>(2)?,
    ) {
        (Some(c), Some(id), Some(t)) => Some((c, id, t)),
        _ => None,
    };
    let invoice = match (
        r.try_get::<Option<i64>, _>(3)?,
        r.try_get::<Option<String>, _>(4)?,
    ) {
        (Some(c), Some(id)) => Some((c, id)),
        _ => None,
    };
    Ok(Marks { lifecycle, invoice })
}

/// What an applied event left the subscription as.
pub struct Applied<'a> {
    pub subscription_id: &'a str,
    pub event_created: i64,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub status: Option<&'a str>,
    pub tier: Option<&'a str>,
}

/// Which ordering mark an event moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// Checkout and `customer.subscription.*`: the plan and status.
    Lifecycle,
    /// `invoice.*`: the payment status.
    Invoice,
}

/// An applied event's ordering mark (never moved backwards) and the release of the lease if its
/// `owner` still holds it: one upsert, run on its own ([`mark_and_release`]) or as part of the
/// statement that finishes the event's action ([`crate::ledger::finish_with_audit`]).
pub struct MarkAndRelease<'a> {
    pub track: Track,
    pub applied: Applied<'a>,
    pub owner: &'a str,
}

impl MarkAndRelease<'_> {
    /// The upsert, its 7 parameters numbered from `$first` (bound by [`Self::bind`]).
    pub fn sql(&self, first: usize) -> String {
        let p = |i: usize| format!("${}", first + i);
        let (sub, created, id, kind, status, tier, owner) = (p(0), p(1), p(2), p(3), p(4), p(5), p(6));
        let release = format!(
            "lease_owner = CASE WHEN s.lease_owner = {owner} THEN NULL ELSE s.lease_owner END,
             lease_until = CASE WHEN s.lease_owner = {owner} THEN NULL ELSE s.lease_until END,
             updated_at = now()"
        );
        match self.track {
            Track::Lifecycle => {
                let newer = format!("coalesce(s.last_event_created, {created}) <= {created}");
                format!(
                    "INSERT INTO stripe_subscriptions AS s (subscription_id, last_event_created, last_event_id, last_event_type, status, tier)
                     VALUES ({sub}, {created}, {id}, {kind}, {status}, {tier})
                     ON CONFLICT (subscription_id) DO UPDATE SET
                         last_event_created = CASE WHEN {newer} THEN {created} ELSE s.last_event_created END,
                         last_event_id = CASE WHEN {newer} THEN {id} ELSE s.last_event_id END,
                         last_event_type = CASE WHEN {newer} THEN {kind} ELSE s.last_event_type END,
                         status = CASE WHEN {newer} THEN coalesce({status}, s.status) ELSE s.status END,
                         tier = CASE WHEN {newer} THEN coalesce({tier}, s.tier) ELSE s.tier END,
                         {release}"
                )
            }
            // The type, status and tier parameters are bound but not used.
            Track::Invoice => {
                let newer = format!("coalesce(s.last_invoice_created, {created}) <= {created}");
                format!(
                    "INSERT INTO stripe_subscriptions AS s (subscription_id, last_invoice_created, last_invoice_event_id)
                     VALUES ({sub}, {created}, {id})
                     ON CONFLICT (subscription_id) DO UPDATE SET
                         last_invoice_created = CASE WHEN {newer} THEN {created} ELSE s.last_invoice_created END,
                         last_invoice_event_id = CASE WHEN {newer} THEN {id} ELSE s.last_invoice_event_id END,
                         {release}"
                )
            }
        }
    }

    /// Binds the parameters of [`Self::sql`], in order.
    pub fn bind<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        let a = &self.applied;
        query
            .bind(a.subscription_id)
            .bind(a.event_created)
            .bind(a.event_id)
            .bind(a.event_type)
            .bind(a.status)
            .bind(a.tier)
            .bind(self.owner)
    }
}

/// A query of this crate, for statements put together from parts.
pub type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Records an applied event's mark and gives the lease back, in one statement.
pub async fn mark_and_release(pool: &PgPool, m: &MarkAndRelease<'_>) -> Result<(), sqlx::Error> {
    m.bind(sqlx::query(sqlx::AssertSqlSafe(m.sql(1))))
        .execute(pool)
        .await?;
    Ok(())
}
