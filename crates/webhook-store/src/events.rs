//! Received events: the dedupe record and the history operators read.

use chrono::{DateTime, TimeZone, Utc};
use sqlx::{PgConnection, PgPool, Row};
use webhook_core::Envelope;

/// Status of an event in `webhook_events.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    Queued,
    Ignored,
    Processing,
    Retrying,
    Succeeded,
    Skipped,
    DeadLettered,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Queued => "queued",
            EventStatus::Ignored => "ignored",
            EventStatus::Processing => "processing",
            EventStatus::Retrying => "retrying",
            EventStatus::Succeeded => "succeeded",
            EventStatus::Skipped => "skipped",
            EventStatus::DeadLettered => "dead_lettered",
        }
    }
}

/// Inserts the event unless its id is already known. Returns `true` if this call inserted it.
///
/// Run inside the ingest's transaction: a concurrent insert of the same id waits on the unique
/// index until the first transaction ends, so exactly one request publishes, and the others see
/// `false` only once that publish is committed (or get to publish themselves if it rolled back).
pub async fn insert_if_new(
    conn: &mut PgConnection,
    event: &Envelope,
    status: EventStatus,
) -> Result<bool, sqlx::Error> {
    let payload = std::str::from_utf8(&event.body).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let created: Option<DateTime<Utc>> = Utc.timestamp_opt(event.created, 0).single();
    let result = sqlx::query(
        "INSERT INTO webhook_events (event_id, event_type, object_id, livemode, stripe_created_at, payload, status)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event.id.as_str())
    .bind(&event.event_type)
    .bind(event.object_id.as_deref())
    .bind(event.livemode)
    .bind(created)
    .bind(payload)
    .bind(status.as_str())
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Number of stored events with this id (tests and tools).
pub async fn count(pool: &PgPool, event_id: &str) -> Result<i64, sqlx::Error> {
    let row = sqlx::query("SELECT count(*) AS n FROM webhook_events WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(pool)
        .await?;
    row.try_get("n")
}
