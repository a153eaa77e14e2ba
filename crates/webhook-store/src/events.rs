//! Received events: the dedupe record and the history operators read.

use chrono::{DateTime, TimeZone, Utc};
use sqlx::{PgConnection, PgPool, Row};
use webhook_core::Envelope;

use crate::{Commits, Store};

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

/// Inserts the events whose ids are not known yet, in one statement, and returns the ids this
/// call inserted (the ingest's group commit; one event is a batch of one).
///
/// Run inside the caller's transaction: a concurrent insert of the same id waits on the unique
/// index until the first transaction ends, so exactly one request publishes, and the others see
/// the id as known only once that publish is committed (or insert it themselves if it rolled
/// back). Rows are inserted in the order given: callers sort them by id, so that concurrent
/// batches take the unique index's locks in the same order and cannot deadlock.
pub async fn insert_new(
    conn: &mut PgConnection,
    batch: &[(&Envelope, EventStatus)],
) -> Result<Vec<String>, sqlx::Error> {
    let batch: Vec<_> = batch
        .iter()
        .map(|&(event, status)| (event, status, None))
        .collect();
    insert_new_with_reasons(conn, &batch).await
}

/// [`insert_new`], each event with the reason it gets its status, kept as its `last_error`
/// (why an `ignored` event was not queued, e.g. an event of the other Stripe mode; `None` for
/// an event type nobody handles).
pub async fn insert_new_with_reasons(
    conn: &mut PgConnection,
    batch: &[(&Envelope, EventStatus, Option<&str>)],
) -> Result<Vec<String>, sqlx::Error> {
    let n = batch.len();
    let (mut ids, mut types, mut objects) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut livemode, mut created, mut payloads, mut statuses, mut reasons) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (event, status, reason) in batch {
        ids.push(event.id.as_str());
        types.push(event.event_type.as_str());
        objects.push(event.object_id.as_deref());
        livemode.push(event.livemode);
        created.push(Utc.timestamp_opt(event.created, 0).single());
        payloads.push(std::str::from_utf8(&event.body).map_err(|e| sqlx::Error::Decode(Box::new(e)))?);
        statuses.push(status.as_str());
        reasons.push(reason.map(storable));
    }
    sqlx::query_scalar(
        "INSERT INTO webhook_events (event_id, event_type, object_id, livemode, stripe_created_at, payload, status, last_error)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::boolean[], $5::timestamptz[], $6::text[], $7::text[], $8::text[])
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&objects)
    .bind(&livemode)
    .bind(&created)
    .bind(&payloads)
    .bind(&statuses)
    .bind(&reasons)
    .fetch_all(conn)
    .await
}

/// Removes events inserted by the caller's still open transaction whose publish failed.
pub async fn forget(conn: &mut PgConnection, event_ids: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM webhook_events WHERE event_id = ANY($1)")
        .bind(event_ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Which of these event ids are stored (received before, queued or ignored).
pub async fn known(pool: &PgPool, event_ids: &[&str]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT event_id FROM webhook_events WHERE event_id = ANY($1)")
        .bind(event_ids)
        .fetch_all(pool)
        .await
}

/// The events still in flight (queued, processing or waiting in a retry queue) and updated
/// within `within` (older ones are stuck, not in flight): their object id and payload, for a
/// caller that looks for the subscriptions they name. One scan, however many subscriptions.
pub async fn in_flight(
    pool: &PgPool,
    within: std::time::Duration,
) -> Result<Vec<(Option<String>, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT object_id, payload FROM webhook_events
         WHERE status IN ('queued', 'processing', 'retrying')
           AND updated_at > now() - make_interval(secs => $1)",
    )
    .bind(within.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Number of stored events with this id (tests and tools).
pub async fn count(pool: &PgPool, event_id: &str) -> Result<i64, sqlx::Error> {
    let row = sqlx::query("SELECT count(*) AS n FROM webhook_events WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(pool)
        .await?;
    row.try_get("n")
}

/// Records the start of an attempt (the event row is created if it is missing, e.g. a message
/// published by hand): status `processing`, attempts + 1, the action key. Returns the attempt
/// number. One statement.
pub async fn start_attempt(
    pool: &PgPool,
    event: &Envelope,
    action_key: Option<&str>,
) -> Result<i32, sqlx::Error> {
    let payload = std::str::from_utf8(&event.body).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let created: Option<DateTime<Utc>> = Utc.timestamp_opt(event.created, 0).single();
    sqlx::query_scalar(
        "INSERT INTO webhook_events (event_id, event_type, object_id, livemode, stripe_created_at, payload, status, attempts, action_key)
         VALUES ($1, $2, $3, $4, $5, $6, 'processing', 1, $7)
         ON CONFLICT (event_id) DO UPDATE SET
             status = 'processing', attempts = webhook_events.attempts + 1, updated_at = now(),
             action_key = coalesce(EXCLUDED.action_key, webhook_events.action_key)
         RETURNING attempts",
    )
    .bind(event.id.as_str())
    .bind(&event.event_type)
    .bind(event.object_id.as_deref())
    .bind(event.livemode)
    .bind(created)
    .bind(payload)
    .bind(action_key)
    .fetch_one(pool)
    .await
}

/// One failed attempt, for the event history.
#[derive(Debug, Clone)]
pub struct ErrorRecord {
    pub attempt: i32,
    pub step: Option<String>,
    pub kind: String,
    pub error: String,
    /// `retry_scheduled` or `dead_lettered`.
    pub action: String,
}

/// The outcome of an event's latest attempt.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub event_id: String,
    /// The attempt it is the outcome of (from [`start_attempt`]; 0 when unknown): an outcome
    /// never overwrites that of a later attempt (a concurrent copy that finished first).
    pub attempt: i32,
    pub status: EventStatus,
    /// Kept as the event's `last_error` (a skip's reason, a failure's message).
    pub last_error: Option<String>,
    /// A failed attempt, for `event_errors`.
    pub error: Option<ErrorRecord>,
}

/// Records the outcomes of the latest attempts (and the errors of failed ones) durably, in one
/// statement: the commit returns only once it is on disk, and with it every earlier commit of
/// the same server (see [`crate::Commits::Deferred`]). Run before the messages are acked, so
/// that an acked message's outcome and effects survive a crash of Postgres. The worker's
/// outcome writer shares one such statement among the jobs that finish together.
///
/// The rows are given to Postgres in event-id order, which makes a deadlock between two writers
/// unlikely (Postgres does not promise to lock in that order; it would cancel one of them, and
/// the worker's outcome writer then writes that batch's outcomes one by one). Several outcomes
/// of one event in `outcomes` (in the order given) end as they would one statement after
/// another: the last status, the last error message, and every failed attempt in
/// `event_errors`. A NUL character (which Postgres text cannot hold, and which a downstream
/// error body may contain) is stored as U+FFFD.
pub async fn record_outcomes(store: &Store, outcomes: &[&Outcome]) -> Result<(), sqlx::Error> {
    // Per event, in event-id order: (id, status, last_error, attempt). The sort is stable, so an
    // event's outcomes stay in the order given and fold into the last of its latest attempt.
    let mut by_id: Vec<&Outcome> = outcomes.to_vec();
    by_id.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    let mut latest: Vec<(&str, EventStatus, Option<&str>, i32)> = Vec::with_capacity(by_id.len());
    for o in by_id {
        let last_error = o.last_error.as_deref();
        match latest.last_mut() {
            Some(l) if l.0 == o.event_id && o.attempt >= l.3 => {
                *l = (l.0, o.status, last_error.or(l.2), o.attempt)
            }
            Some(l) if l.0 == o.event_id => {}
            _ => latest.push((&o.event_id, o.status, last_error, o.attempt)),
        }
    }
    let ids: Vec<&str> = latest.iter().map(|l| l.0).collect();
    let statuses: Vec<&str> = latest.iter().map(|l| l.1.as_str()).collect();
    let last_errors: Vec<Option<String>> = latest.iter().map(|l| l.2.map(storable)).collect();
    let terminal: Vec<bool> = latest
        .iter()
        .map(|l| {
            matches!(
                l.1,
                EventStatus::Succeeded | EventStatus::Skipped | EventStatus::DeadLettered
            )
        })
        .collect();
    let errors: Vec<(&str, &ErrorRecord)> = outcomes
        .iter()
        .filter_map(|o| o.error.as_ref().map(|e| (o.event_id.as_str(), e)))
        .collect();
    let query = sqlx::query(
        "WITH errors AS (
             INSERT INTO event_errors (event_id, attempt, step, kind, error, action)
             SELECT * FROM UNNEST($5::text[], $6::int[], $7::text[], $8::text[], $9::text[], $10::text[])
         )
         UPDATE webhook_events e SET status = o.status, last_error = coalesce(o.last_error, e.last_error),
                updated_at = now(), completed_at = CASE WHEN o.terminal THEN now() ELSE e.completed_at END,
                outcome_attempt = CASE WHEN o.attempt = 0 THEN e.outcome_attempt ELSE o.attempt END
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::boolean[], $11::int[]) AS o(event_id, status, last_error, terminal, attempt)
         -- Attempt 0: not known (the attempt could not be recorded): written.
         WHERE e.event_id = o.event_id AND (o.attempt = 0 OR coalesce(e.outcome_attempt, 0) <= o.attempt)",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&last_errors)
    .bind(&terminal)
    .bind(errors.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(errors.iter().map(|(_, e)| e.attempt).collect::<Vec<_>>())
    .bind(errors.iter().map(|(_, e)| e.step.as_deref()).collect::<Vec<_>>())
    .bind(errors.iter().map(|(_, e)| e.kind.as_str()).collect::<Vec<_>>())
    .bind(errors.iter().map(|(_, e)| storable(&e.error)).collect::<Vec<_>>())
    .bind(errors.iter().map(|(_, e)| e.action.as_str()).collect::<Vec<_>>())
    .bind(latest.iter().map(|l| l.3).collect::<Vec<_>>());
    match store.commits {
        Commits::Durable => {
            query.execute(&store.pool).await?;
            Ok(())
        }
        Commits::Deferred => {
            let mut tx = store
                .pool
                .begin_with("BEGIN; SET LOCAL synchronous_commit = on")
                .await?;
            query.execute(&mut *tx).await?;
            tx.commit().await
        }
    }
}

/// `text` as Postgres can store it: without NUL characters.
fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// A stored event marked `queued` for `webhookctl replay`, and what it was before.
#[derive(Debug, Clone)]
pub struct ReplayMark {
    pub event_type: String,
    pub payload: String,
    /// The status and `updated_at` before the mark, restored by [`unmark_replay`].
    pub previous_status: String,
    pub previous_updated_at: DateTime<Utc>,
    /// The `updated_at` the mark wrote: [`unmark_replay`] undoes the mark only while it stands.
    pub marked_at: DateTime<Utc>,
}

/// Marks a stored event `queued` for a replay, BEFORE its message is published. The other order
/// loses outcomes: a worker that took the replayed message at once could write `succeeded`
/// before the replay wrote `queued`, and the event would stay `queued` forever. One statement;
/// waits for a concurrent writer of the row. `None` if no event has this id.
pub async fn mark_queued_for_replay(
    pool: &PgPool,
    event_id: &str,
) -> Result<Option<ReplayMark>, sqlx::Error> {
    let row = sqlx::query(
        "WITH old AS (
             SELECT event_id, status, updated_at FROM webhook_events WHERE event_id = $1 FOR UPDATE
         )
         UPDATE webhook_events e SET status = 'queued', updated_at = clock_timestamp()
         FROM old WHERE e.event_id = old.event_id
         RETURNING e.event_type, e.payload, old.status AS previous_status,
                   old.updated_at AS previous_updated_at, e.updated_at AS marked_at",
    )
    .bind(event_id)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(ReplayMark {
            event_type: r.try_get("event_type")?,
            payload: r.try_get("payload")?,
            previous_status: r.try_get("previous_status")?,
            previous_updated_at: r.try_get("previous_updated_at")?,
            marked_at: r.try_get("marked_at")?,
        })
    })
    .transpose()
}

/// Undoes [`mark_queued_for_replay`] after the publish failed: the status and `updated_at`
/// go back to what they were, unless the event changed since the mark (a worker took a message
/// of it: its outcome stands). Returns whether the mark was undone.
pub async fn unmark_replay(pool: &PgPool, event_id: &str, mark: &ReplayMark) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE webhook_events SET status = $2, updated_at = $3
         WHERE event_id = $1 AND status = 'queued' AND updated_at = $4",
    )
    .bind(event_id)
    .bind(&mark.previous_status)
    .bind(mark.previous_updated_at)
    .bind(mark.marked_at)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}
