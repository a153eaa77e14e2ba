//! `events show` and `events list`: what happened to an event, from Postgres.

use anyhow::Context;
use serde_json::{Value, json};
use webhook_core::Settings;
use webhook_store::{Store, history};

pub async fn show(settings: &Settings, event_id: &str, as_json: bool) -> anyhow::Result<()> {
    let store = Store::connect_lazy(&settings.database)?;
    let pool = &store.pool;
    let row = history::event(pool, event_id)
        .await
        .context("cannot read the events table (check DATABASE_URL; run `webhookctl migrate`)")?
        .ok_or_else(|| {
            anyhow::anyhow!("no event {event_id} is stored: check the id (evt_…) or `webhookctl events list`")
        })?;
    let steps: Vec<Value> = match &row.action_key {
        Some(key) => history::steps(pool, key)
            .await?
            .into_iter()
            .map(|s| {
                json!({
                    "step": s.step,
                    "result": s.result,
                    "by_event": s.event_id,
                    "completed_at": s.completed_at,
                })
            })
            .collect(),
        None => Vec::new(),
    };
    let errors: Vec<Value> = history::errors(pool, event_id)
        .await?
        .into_iter()
        .map(|e| {
            json!({
                "attempt": e.attempt,
                "step": e.step,
                "kind": e.kind,
                "error": e.error,
                "action": e.action,
                "at": e.created_at,
            })
        })
        .collect();
    let status = row.status;
    let place = match status.as_str() {
        "succeeded" | "skipped" | "ignored" => "done",
        "retrying" => "waiting in a retry queue",
        "dead_lettered" => "in the dead-letter queue",
        "queued" | "processing" => "on the work queue",
        _ => "unknown",
    };
    let out = json!({
        "event_id": row.event_id,
        "event_type": row.event_type,
        "object_id": row.object_id,
        "status": status,
        "place": place,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "action": row.action_key,
        "received_at": row.received_at,
        "updated_at": row.updated_at,
        "completed_at": row.completed_at,
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
    let rows = history::recent(&store.pool, status, since_secs, limit)
        .await
        .context("cannot read the events table (check DATABASE_URL; run `webhookctl migrate`)")?;
    for r in &rows {
        let v = json!({
            "event_id": r.event_id,
            "event_type": r.event_type,
            "status": r.status,
            "attempts": r.attempts,
            "last_error": r.last_error,
            "received_at": r.received_at,
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
    if age < std::time::Duration::from_secs(30 * 24 * 3600) {
        return Err(crate::UsageError(format!(
            "--older-than {older_than} is shorter than 30 days: Stripe keeps events that long (and retries them for 3 days), \
             so a pruned event could be accepted again, by a delivery or by `webhookctl backfill`; give 30d or more"
        ))
        .into());
    }
    let secs = age.as_secs() as f64;
    let store = Store::connect_lazy(&settings.database)?;
    // Finished events only: queued, processing and retrying ones are still in flight.
    let pruned = history::prune(&store.pool, secs, dry_run)
        .await
        .context("cannot prune the events tables (check DATABASE_URL; run `webhookctl migrate`)")?;
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
