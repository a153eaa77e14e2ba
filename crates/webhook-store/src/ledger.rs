//! The worker's step ledger: which steps of a business action are done, and their results.
//!
//! Effects outside Postgres (Keycloak, Lago) are idempotent by construction (upsert, idempotent
//! `external_id`, setting an attribute to a value), so redoing a step whose completion was not
//! recorded (a crash in between) changes nothing. Effects inside Postgres (the audit row) are
//! written in the same transaction as their ledger entry, so they happen exactly once.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::Value;
use sqlx::{PgPool, Row};

use crate::audit::AuditRow;
use uuid::Uuid;

/// The finished steps of an action, by step name.
pub type DoneSteps = HashMap<String, Value>;

/// A finished step not yet in the ledger: its result and when it finished. The ledger is written
/// after the fact, together with a later write, so the row's `completed_at` is Postgres's clock
/// at that write minus the step's age on this process's monotonic clock (no skew between the
/// clocks of different workers).
#[derive(Debug, Clone)]
pub struct FinishedStep {
    pub step: &'static str,
    pub result: Value,
    pub finished: Instant,
}

impl FinishedStep {
    /// A step that finished now.
    pub fn now(step: &'static str, result: Value) -> Self {
        Self {
            step,
            result,
            finished: Instant::now(),
        }
    }
}

/// The columns of `steps`, for `UNNEST($n::text[], $n::jsonb[], $n::float8[])`: the last is each
/// step's age in seconds (`now() - make_interval(secs => age)`).
fn columns(steps: &[FinishedStep]) -> (Vec<&str>, Vec<&Value>, Vec<f64>) {
    (
        steps.iter().map(|s| s.step).collect(),
        steps.iter().map(|s| &s.result).collect(),
        steps.iter().map(|s| s.finished.elapsed().as_secs_f64()).collect(),
    )
}

/// Starts (or joins) an action and returns the steps already finished, in one statement.
pub async fn begin(pool: &PgPool, action_key: &str, event_id: &str) -> Result<DoneSteps, sqlx::Error> {
    let rows = sqlx::query(
        "WITH action AS (
             INSERT INTO provisioning_actions (action_key, first_event_id, last_event_id, status)
             VALUES ($1, $2, $2, 'in_progress')
             ON CONFLICT (action_key) DO UPDATE SET last_event_id = EXCLUDED.last_event_id, updated_at = now()
         )
         SELECT step, result FROM provisioning_steps WHERE action_key = $1",
    )
    .bind(action_key)
    .bind(event_id)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| Ok((r.try_get("step")?, r.try_get("result")?)))
        .collect()
}

/// Records finished steps (with their results) in one statement. A step recorded already (by a
/// concurrent duplicate) keeps its first record.
pub async fn record_steps(
    pool: &PgPool,
    action_key: &str,
    event_id: &str,
    steps: &[FinishedStep],
) -> Result<(), sqlx::Error> {
    let (names, results, ages) = columns(steps);
    sqlx::query(
        "INSERT INTO provisioning_steps (action_key, step, result, event_id, completed_at)
         SELECT $1, step, result, $2, now() - make_interval(secs => age)
         FROM UNNEST($3::text[], $4::jsonb[], $5::float8[]) AS s(step, result, age)
         ON CONFLICT (action_key, step) DO NOTHING",
    )
    .bind(action_key)
    .bind(event_id)
    .bind(&names)
    .bind(&results)
    .bind(&ages)
    .execute(pool)
    .await?;
    Ok(())
}

/// The lease that fences a write: the subscription and the attempt's token (see
/// [`crate::billing`]).
#[derive(Debug, Clone, Copy)]
pub struct Fence<'a> {
    pub subscription_id: &'a str,
    pub token: Uuid,
}

/// What [`finish_with_audit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The audit row was written (its id).
    Written(i64),
    /// The action had its audit row already (a duplicate delivery).
    AlreadyDone,
    /// The fence's lease is held by another attempt now: nothing was written.
    LeaseLost,
}

/// The last step of an action: the finished `steps` not recorded yet (as [`record_steps`]),
/// its audit row, the `audit` ledger entry (with the row's id) and the action marked done,
/// atomically in one statement, and only while the `fence`'s lease is held (for an event of a
/// subscription). Exactly one audit row per action, even when two deliveries race: the second
/// waits on the ledger's key, then inserts nothing.
pub async fn finish_with_audit(
    pool: &PgPool,
    action_key: &str,
    event_id: &str,
    steps: &[FinishedStep],
    audit: &AuditRow<'_>,
    fence: Option<Fence<'_>>,
) -> Result<Finished, sqlx::Error> {
    let (names, results, ages) = columns(steps);
    let row = sqlx::query(
        "WITH fence AS (
             SELECT $10::text IS NULL
                 OR EXISTS (SELECT 1 FROM stripe_subscriptions WHERE subscription_id = $10 AND lease_token = $11) AS held
         ), steps AS (
             INSERT INTO provisioning_steps (action_key, step, result, event_id, completed_at)
             SELECT $1, step, result, $2, now() - make_interval(secs => age)
             FROM UNNEST($6::text[], $7::jsonb[], $8::float8[]) AS s(step, result, age)
             WHERE (SELECT held FROM fence)
             ON CONFLICT (action_key, step) DO NOTHING
         ), step AS (
             INSERT INTO provisioning_steps (action_key, step, result, event_id, completed_at)
             SELECT $1, 'audit', jsonb_build_object('audit_id', nextval(pg_get_serial_sequence('audit_logs', 'id'))), $2, now() + make_interval(secs => $9)
             WHERE (SELECT held FROM fence)
             ON CONFLICT (action_key, step) DO NOTHING
             RETURNING (result->>'audit_id')::bigint AS id
         ), audit AS (
             INSERT INTO audit_logs (id, event_type, subject, details)
             SELECT id, $3, $4, $5 FROM step
             RETURNING id
         ), done AS (
             UPDATE provisioning_actions
             SET status = 'done', completed_at = coalesce(completed_at, now()), updated_at = now()
             WHERE action_key = $1 AND (SELECT held FROM fence)
         )
         SELECT (SELECT held FROM fence), (SELECT id FROM audit)",
    )
    .bind(action_key)
    .bind(event_id)
    .bind(audit.event_type)
    .bind(audit.subject)
    .bind(audit.details)
    .bind(&names)
    .bind(&results)
    .bind(&ages)
    // The audit entry: a microsecond after the steps (all rows of a statement share `now()`).
    .bind(1e-6_f64)
    .bind(fence.map(|f| f.subscription_id))
    .bind(fence.map(|f| f.token))
    .fetch_one(pool)
    .await?;
    let held: bool = row.try_get(0)?;
    let id: Option<i64> = row.try_get(1)?;
    Ok(match (held, id) {
        (false, _) => Finished::LeaseLost,
        (true, Some(id)) => Finished::Written(id),
        (true, None) => Finished::AlreadyDone,
    })
}
