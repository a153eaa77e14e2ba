//! What operators read and prune (`webhookctl events show|list|prune`, `replay`): an event's
//! record, the steps of its action, its failed attempts; recent events; the removal of old,
//! finished ones.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

/// An event's row in `webhook_events`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRecord {
    pub event_id: String,
    pub event_type: String,
    pub object_id: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub action_key: Option<String>,
    pub received_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// A finished step of an action (`provisioning_steps`), by the event that ran it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepRecord {
    pub step: String,
    pub result: Value,
    pub event_id: String,
    pub completed_at: DateTime<Utc>,
}

/// A failed attempt of an event (`event_errors`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptError {
    pub attempt: i32,
    pub step: Option<String>,
    pub kind: String,
    pub error: String,
    /// `retry_scheduled` or `dead_lettered`.
    pub action: String,
    pub created_at: DateTime<Utc>,
}

/// A line of `events list`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventSummary {
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// The event `event_id`, if it is stored.
pub async fn event(pool: &PgPool, event_id: &str) -> Result<Option<EventRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT event_id, event_type, object_id, status, attempts, last_error, action_key,
                received_at, updated_at, completed_at
         FROM webhook_events WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_optional(pool)
    .await
}

/// The type of the stored event `event_id`, if it is stored.
pub async fn event_type(pool: &PgPool, event_id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT event_type FROM webhook_events WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(pool)
        .await
}

/// The finished steps of the action `action_key`, in the order they finished.
pub async fn steps(pool: &PgPool, action_key: &str) -> Result<Vec<StepRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT step, result, event_id, completed_at FROM provisioning_steps WHERE action_key = $1 ORDER BY completed_at",
    )
    .bind(action_key)
    .fetch_all(pool)
    .await
}

/// The failed attempts of `event_id`, oldest first.
pub async fn errors(pool: &PgPool, event_id: &str) -> Result<Vec<AttemptError>, sqlx::Error> {
    sqlx::query_as(
        "SELECT attempt, step, kind, error, action, created_at FROM event_errors WHERE event_id = $1 ORDER BY id",
    )
    .bind(event_id)
    .fetch_all(pool)
    .await
}

/// The newest events (at most `limit`), of one status if given, received in the last
/// `since_secs` seconds if given.
pub async fn recent(
    pool: &PgPool,
    status: Option<&str>,
    since_secs: Option<f64>,
    limit: i64,
) -> Result<Vec<EventSummary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT event_id, event_type, status, attempts, last_error, received_at FROM webhook_events
         WHERE ($1::text IS NULL OR status = $1)
           AND ($2::float8 IS NULL OR received_at >= now() - make_interval(secs => $2))
         ORDER BY received_at DESC LIMIT $3",
    )
    .bind(status)
    .bind(since_secs)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Removes the finished events received more than `older_than_secs` seconds ago (queued,
/// processing and retrying ones are still in flight), the errors of events no longer stored
/// and the done actions as old, in one transaction; rolled back when `dry_run`. Returns how
/// many events it removed (or would remove).
pub async fn prune(pool: &PgPool, older_than_secs: f64, dry_run: bool) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let pruned: i64 = sqlx::query_scalar(
        "WITH old AS (
             DELETE FROM webhook_events
             WHERE received_at < now() - make_interval(secs => $1)
               AND status NOT IN ('queued', 'processing', 'retrying')
             RETURNING event_id)
         SELECT count(*) FROM old",
    )
    .bind(older_than_secs)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM event_errors e WHERE created_at < now() - make_interval(secs => $1)
           AND NOT EXISTS (SELECT 1 FROM webhook_events w WHERE w.event_id = e.event_id)",
    )
    .bind(older_than_secs)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM provisioning_actions WHERE status = 'done' AND updated_at < now() - make_interval(secs => $1)",
    )
    .bind(older_than_secs)
    .execute(&mut *tx)
    .await?;
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(pruned)
}
