//! The worker's step ledger: which steps of a business action are done, and their results.
//!
//! Effects outside Postgres (Keycloak, Lago) are idempotent by construction (upsert, idempotent
//! `external_id`, setting an attribute to a value), so redoing a step whose completion was not
//! recorded (a crash in between) changes nothing. Effects inside Postgres (the audit row) are
//! written in the same transaction as their ledger entry, so they happen exactly once.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::{PgPool, Postgres, Row, Transaction};

/// The finished steps of an action, by step name.
pub type DoneSteps = HashMap<String, Value>;

/// Starts (or joins) an action and returns the steps already finished.
pub async fn begin(pool: &PgPool, action_key: &str, event_id: &str) -> Result<DoneSteps, sqlx::Error> {
    sqlx::query(
        "INSERT INTO provisioning_actions (action_key, first_event_id, last_event_id, status)
         VALUES ($1, $2, $2, 'in_progress')
         ON CONFLICT (action_key) DO UPDATE SET last_event_id = EXCLUDED.last_event_id, updated_at = now()",
    )
    .bind(action_key)
    .bind(event_id)
    .execute(pool)
    .await?;
    sqlx::query("UPDATE webhook_events SET action_key = $2 WHERE event_id = $1")
        .bind(event_id)
        .bind(action_key)
        .execute(pool)
        .await?;
    let rows = sqlx::query("SELECT step, result FROM provisioning_steps WHERE action_key = $1")
        .bind(action_key)
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|r| Ok((r.try_get("step")?, r.try_get("result")?)))
        .collect()
}

/// Records a finished step. Returns false if it was already recorded (a concurrent duplicate).
pub async fn record_step(
    pool: &PgPool,
    action_key: &str,
    step: &str,
    event_id: &str,
    result: &Value,
) -> Result<bool, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    record_step_in(&mut conn, action_key, step, event_id, result).await
}

/// [`record_step`] inside a caller's transaction (for effects that live in Postgres too).
pub async fn record_step_in(
    conn: &mut sqlx::PgConnection,
    action_key: &str,
    step: &str,
    event_id: &str,
    result: &Value,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO provisioning_steps (action_key, step, result, event_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (action_key, step) DO NOTHING",
    )
    .bind(action_key)
    .bind(step)
    .bind(result)
    .bind(event_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks the action done.
pub async fn finish(pool: &PgPool, action_key: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE provisioning_actions SET status = 'done', completed_at = coalesce(completed_at, now()), updated_at = now()
         WHERE action_key = $1",
    )
    .bind(action_key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Opens a transaction (for a step whose effect is a Postgres write).
pub async fn transaction(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin().await
}
