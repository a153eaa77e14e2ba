//! `events show` and `events list`: what happened to an event, from Postgres.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::Row;
use webhook_core::Settings;
use webhook_store::Store;

pub async fn show(settings: &Settings, event_id: &str, as_json: bool) -> anyhow::Result<()> {
    let store = Store::connect_lazy(&settings.database)?;
    let pool = &store.pool;
    let row = sqlx::query(
        "SELECT event_id, event_type, object_id, status, attempts, last_error, action_key,
                received_at, updated_at, completed_at
         FROM webhook_events WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_optional(pool)
    .await
    .context("cannot read the events table (check DATABASE_URL; run `webhookctl migrate`)")?
    .ok_or_else(|| {
        anyhow::anyhow!("no event {event_id} is stored: check the id (evt_…) or `webhookctl events list`")
    })?;
    let action_key: Option<String> = row.try_get("action_key")?;
    let steps = match &action_key {
        Some(key) => sqlx::query(
            "SELECT step, result, event_id, completed_at FROM provisioning_steps WHERE action_key = $1 ORDER BY completed_at",
        )
        .bind(key)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| -> anyhow::Result<Value> {
            Ok(json!({
                "step": r.try_get::<String, _>("step")?,
                "result": r.try_get::<Value, _>("result")?,
                "by_event": r.try_get::<String, _>("event_id")?,
                "completed_at": r.try_get::<DateTime<Utc>, _>("completed_at")?,
            }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let errors = sqlx::query(
        "SELECT attempt, step, kind, error, action, created_at FROM event_errors WHERE event_id = $1 ORDER BY id",
    )
    .bind(event_id)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| -> anyhow::Result<Value> {
        Ok(json!({
            "attempt": r.try_get::<i32, _>("attempt")?,
            "step": r.try_get::<Option<String>, _>("step")?,
            "kind": r.try_get::<String, _>("kind")?,
            "error": r.try_get::<String, _>("error")?,
            "action": r.try_get::<String, _>("action")?,
            "at": r.try_get::<DateTime<Utc>, _>("created_at")?,
        }))
    })
    .collect::<anyhow::Result<Vec<_>>>()?;
    let status: String = row.try_get("status")?;
    let place = match status.as_str() {
        "succeeded" | "skipped" | "ignored" => "done",
        "retrying" => "waiting in a retry queue",
        "dead_lettered" => "in the dead-letter queue",
        "queued" | "processing" => "on the work queue",
        _ => "unknown",
    };
    let out = json!({
        "event_id": row.try_get::<String, _>("event_id")?,
        "event_type": row.try_get::<String, _>("event_type")?,
        "object_id": row.try_get::<Option<String>, _>("object_id")?,
        "status": status,
        "place": place,
        "attempts": row.try_get::<i32, _>("attempts")?,
        "last_error": row.try_get::<Option<String>, _>("last_error")?,
        "action": action_key,
        "received_at": row.try_get::<DateTime<Utc>, _>("received_at")?,
        "updated_at": row.try_get::<DateTime<Utc>, _>("updated_at")?,
        "completed_at": row.try_get::<Option<DateTime<Utc>>, _>("completed_at")?,
        "steps": steps,
        "errors": errors,
    });
    if as_json {
        println!("{out}");
        return Ok(());
    }
    println!(
        "event     {} ({})",
        out["event_id"].as_str().unwrap_or(""),
        out["event_type"].as_str().unwrap_or("")
    );
    println!(
        "status    {} — {place}, {} attempt(s)",
        out["status"].as_str().unwrap_or(""),
        out["attempts"]
    );
    println!("received  {}", out["received_at"].as_str().unwrap_or(""));
    if let Some(e) = out["last_error"].as_str() {
        println!("last error {e}");
    }
    for s in out["steps"].as_array().into_iter().flatten() {
        println!(
            "step      {:<18} {}  {}",
            s["step"].as_str().unwrap_or(""),
            s["completed_at"].as_str().unwrap_or(""),
            s["result"]
        );
    }
    for e in out["errors"].as_array().into_iter().flatten() {
        println!(
            "error     attempt {} {} {} → {}: {}",
            e["attempt"],
            e["step"].as_str().unwrap_or("-"),
            e["kind"].as_str().unwrap_or(""),
            e["action"].as_str().unwrap_or(""),
            e["error"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

const STATUSES: &[&str] = &[
    "queued",
    "ignored",
    "processing",
    "retrying",
    "succeeded",
    "skipped",
    "dead_lettered",
];

fn parse_age(flag: &str, raw: &str) -> anyhow::Result<std::time::Duration> {
    humantime::parse_duration(raw).map_err(|e| {
        crate::UsageError(format!(
            "{flag} {raw:?} is not a duration like 30m, 24h or 7d ({e})"
        ))
        .into()
    })
}

pub async fn list(
    settings: &Settings,
    status: Option<&str>,
    since: Option<&str>,
    limit: i64,
    as_json: bool,
) -> anyhow::Result<()> {
    if let Some(s) = status
        && !STATUSES.contains(&s)
    {
        return Err(
            crate::UsageError(format!("--status {s:?} is not one of {}", STATUSES.join(", "))).into(),
        );
    }
    let since_secs = since
        .map(|s| parse_age("--since", s))
        .transpose()?
        .map(|d| d.as_secs() as f64);
    let store = Store::connect_lazy(&settings.database)?;
    let rows = sqlx::query(
        "SELECT event_id, event_type, status, attempts, last_error, received_at FROM webhook_events
         WHERE ($1::text IS NULL OR status = $1)
           AND ($2::float8 IS NULL OR received_at >= now() - make_interval(secs => $2))
         ORDER BY received_at DESC LIMIT $3",
    )
    .bind(status)
    .bind(since_secs)
    .bind(limit)
    .fetch_all(&store.pool)
    .await
    .context("cannot read the events table (check DATABASE_URL; run `webhookctl migrate`)")?;
    for r in &rows {
        let v = json!({
            "event_id": r.try_get::<String, _>("event_id")?,
            "event_type": r.try_get::<String, _>("event_type")?,
            "status": r.try_get::<String, _>("status")?,
            "attempts": r.try_get::<i32, _>("attempts")?,
            "last_error": r.try_get::<Option<String>, _>("last_error")?,
            "received_at": r.try_get::<DateTime<Utc>, _>("received_at")?,
        });
        if as_json {
            println!("{v}");
        } else {
            println!(
                "{}  {:<40} {:<14} attempts={}  {}",
                v["received_at"].as_str().unwrap_or(""),
                v["event_id"].as_str().unwrap_or(""),
                v["status"].as_str().unwrap_or(""),
                v["attempts"],
                v["event_type"].as_str().unwrap_or("")
            );
        }
    }
    if !as_json {
        println!("{} events", rows.len());
    }
    Ok(())
}

pub async fn prune(
    settings: &Settings,
    older_than: &str,
    dry_run: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    let age = parse_age("--older-than", older_than)?;
    if age < std::time::Duration::from_secs(3 * 24 * 3600) {
        return Err(crate::UsageError(format!(
            "--older-than {older_than} is shorter than Stripe's 3 days of retries: a pruned event id could be accepted again"
        ))
        .into());
    }
    let secs = age.as_secs() as f64;
    let store = Store::connect_lazy(&settings.database)?;
    let mut tx = store
        .pool
        .begin()
        .await
        .context("cannot reach Postgres (check DATABASE_URL)")?;
    // Finished events only: queued, processing and retrying ones are still in flight.
    let pruned: i64 = sqlx::query_scalar(
        "WITH old AS (
             DELETE FROM webhook_events
             WHERE received_at < now() - make_interval(secs => $1)
               AND status NOT IN ('queued', 'processing', 'retrying')
             RETURNING event_id)
         SELECT count(*) FROM old",
    )
    .bind(secs)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM event_errors e WHERE created_at < now() - make_interval(secs => $1)
           AND NOT EXISTS (SELECT 1 FROM webhook_events w WHERE w.event_id = e.event_id)",
    )
    .bind(secs)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM provisioning_actions WHERE status = 'done' AND updated_at < now() - make_interval(secs => $1)",
    )
    .bind(secs)
    .execute(&mut *tx)
    .await?;
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    let summary = if dry_run {
        format!("would prune {pruned} events older than {older_than}")
    } else {
        format!("pruned {pruned} events older than {older_than}")
    };
    crate::report(
        as_json,
        &summary,
        json!({"pruned": if dry_run { 0 } else { pruned }, "matched": pruned, "dry_run": dry_run}),
    );
    Ok(())
}
