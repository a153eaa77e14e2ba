//! `dlq list | requeue | drain | restore | purge`.
//!
//! Every move is publish-with-confirm (or write-and-fsync) first, ack second; see
//! `webhook_amqp::dead_letters` for why that makes each command safe to interrupt.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use webhook_amqp::dead_letters::{self, Archived, DeadLetter, Filter};
use webhook_amqp::lapin::Channel;
use webhook_amqp::lapin::options::QueuePurgeOptions;
use webhook_amqp::{Broker, BrokerConfig, Outgoing};
use webhook_core::Settings;

use crate::{UsageError, progress, report};

/// A broker connection for one command, and a channel to read the DLQ with.
struct Session {
    broker: Broker,
    channel: Channel,
}

impl Session {
    async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let mut config = BrokerConfig::from_settings(settings, "webhookctl")?;
        config.declare_topology = false;
        let broker = Broker::start(config);
        let link = broker
            .wait_connected(Duration::from_secs(15))
            .await
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "could not connect to RabbitMQ within 15s: check AMQP_URL and that RabbitMQ is running"
                )
            })?;
        let channel = link
            .connection
            .create_channel()
            .await
            .context("opening a channel")?;
        Ok(Self { broker, channel })
    }

    fn dlq(&self) -> &str {
        &self.broker.topology().dead_letter_queue
    }

    async fn depth(&self) -> anyhow::Result<u32> {
        webhook_amqp::topology::queue_depth(&self.channel, self.dlq())
            .await
            .with_context(|| {
                format!(
                    "the dead-letter queue {} does not exist: run `webhookctl setup` first",
                    self.dlq()
                )
            })
    }

    /// Publishes to the work queue directly (default exchange), so that only the worker gets it.
    async fn to_work_queue(
        &self,
        body: &[u8],
        properties: webhook_amqp::lapin::BasicProperties,
    ) -> anyhow::Result<()> {
        self.broker
            .publish(Outgoing {
                exchange: "",
                routing_key: &self.broker.topology().work_queue,
                body,
                properties,
            })
            .await
            .context("publishing to the work queue failed (nothing was removed from the dead-letter queue)")
    }

    async fn close(self, held: Vec<DeadLetter>) {
        for d in &held {
            let _ = dead_letters::give_back(d).await;
        }
        let _ = self.channel.close(200, "done".into()).await;
        self.broker.close().await;
    }
}

fn require_filter(filter: &Filter) -> anyhow::Result<()> {
    if filter.is_empty() {
        return Err(UsageError(
            "say which dead letters: --all, --event-id ID…, --type TYPE or --error-contains TEXT".into(),
        )
        .into());
    }
    Ok(())
}

pub async fn list(settings: &Settings, limit: usize, json: bool) -> anyhow::Result<()> {
    let s = Session::open(settings).await?;
    let total = s.depth().await?;
    let mut held = Vec::new();
    while held.len() < limit.min(total as usize) {
        let Some(d) = dead_letters::take(&s.channel, s.dlq()).await? else {
            break;
        };
        if json {
            println!("{}", d.summary());
        } else {
            println!(
                "{}  {}  attempts={}  step={}  kind={}  at={}\n    {}",
                d.event_id,
                d.event_type,
                d.attempts,
                d.failed_step,
                d.error_kind,
                d.dead_lettered_at,
                d.error
            );
        }
        held.push(d);
    }
    let shown = held.len();
    s.close(held).await;
    if !json {
        println!("{total} dead letters ({shown} shown)");
    }
    Ok(())
}

pub async fn requeue(settings: &Settings, filter: Filter, dry_run: bool, json: bool) -> anyhow::Result<()> {
    require_filter(&filter)?;
    let s = Session::open(settings).await?;
    let total = s.depth().await?;
    let bar = progress::bar(u64::from(total), if dry_run { "scanning" } else { "requeueing" });
    let (mut held, mut moved, mut matched_ids) = (Vec::new(), 0u64, Vec::new());
    let mut failure = None;
    for _ in 0..total {
        let Some(d) = dead_letters::take(&s.channel, s.dlq()).await? else {
            break;
        };
        bar.inc(1);
        if !filter.matches(&d) {
            held.push(d);
            continue;
        }
        if dry_run {
            if !json {
                println!("would requeue {}  {}  {}", d.event_id, d.event_type, d.error);
            }
            matched_ids.push(d.event_id.clone());
            held.push(d);
            continue;
        }
        // Confirmed on the work queue first; only then does it leave the DLQ.
        if let Err(e) = s
            .to_work_queue(&d.message.delivery.data, dead_letters::requeue_properties(&d))
            .await
        {
            held.push(d);
            failure = Some(e);
            break;
        }
        dead_letters::ack(&d)
            .await
            .context("acking the requeued dead letter")?;
        matched_ids.push(d.event_id.clone());
        moved += 1;
    }
    bar.finish_and_clear();
    s.close(held).await;
    if let Some(e) = failure {
        return Err(e.context(format!(
            "stopped after requeueing {moved} messages; run the same command again"
        )));
    }
    let n = matched_ids.len();
    let summary = if dry_run {
        format!("would requeue {n} messages")
    } else {
        format!("requeued {n} messages")
    };
    report(
        json,
        &summary,
        json!({"requeued": if dry_run { 0 } else { n }, "matched": n, "dry_run": dry_run, "event_ids": matched_ids}),
    );
    Ok(())
}

pub async fn drain(settings: &Settings, out: &Path, filter: Filter, json: bool) -> anyhow::Result<()> {
    let filter = if filter.is_empty() {
        Filter { all: true, ..filter }
    } else {
        filter
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| {
            format!(
                "cannot create {} (it must not exist yet; choose another path)",
                out.display()
            )
        })?;
    let s = Session::open(settings).await?;
    let total = s.depth().await?;
    let bar = progress::bar(u64::from(total), "draining");
    let (mut held, mut pending, mut drained) = (Vec::new(), Vec::new(), 0u64);
    for _ in 0..total {
        let Some(d) = dead_letters::take(&s.channel, s.dlq()).await? else {
            break;
        };
        bar.inc(1);
        if !filter.matches(&d) {
            held.push(d);
            continue;
        }
        let line = serde_json::to_string(&Archived::from_dead_letter(&d))?;
        writeln!(file, "{line}").with_context(|| format!("writing {}", out.display()))?;
        pending.push(d);
        if pending.len() >= 100 {
            drained += flush(&mut file, out, &mut pending).await?;
        }
    }
    drained += flush(&mut file, out, &mut pending).await?;
    bar.finish_and_clear();
    s.close(held).await;
    report(
        json,
        &format!("drained {drained} messages to {}", out.display()),
        json!({"drained": drained, "file": out.display().to_string()}),
    );
    Ok(())
}

/// Makes the written lines durable, then removes their messages from the DLQ.
async fn flush(file: &mut std::fs::File, out: &Path, pending: &mut Vec<DeadLetter>) -> anyhow::Result<u64> {
    file.sync_all()
        .with_context(|| format!("fsync of {} failed; nothing was removed", out.display()))?;
    let n = pending.len() as u64;
    for d in pending.drain(..) {
        dead_letters::ack(&d)
            .await
            .context("acking an archived dead letter")?;
    }
    Ok(n)
}

pub async fn restore(settings: &Settings, from: &Path, json: bool) -> anyhow::Result<()> {
    let file = std::fs::File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    let mut messages = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", from.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let archived: Archived = serde_json::from_str(&line).map_err(|e| {
            UsageError(format!(
                "{} line {} is not an archived message (from `dlq drain`): {e}",
                from.display(),
                i + 1
            ))
        })?;
        let body = archived.body().map_err(|e| {
            UsageError(format!(
                "{} line {}: body_base64 is invalid: {e}",
                from.display(),
                i + 1
            ))
        })?;
        messages.push((archived, body));
    }
    let s = Session::open(settings).await?;
    let bar = progress::bar(messages.len() as u64, "restoring");
    let mut restored = 0u64;
    for (archived, body) in &messages {
        s.to_work_queue(body, archived.properties())
            .await
            .with_context(|| {
                format!(
                    "stopped after restoring {restored} of {} messages",
                    messages.len()
                )
            })?;
        restored += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    s.close(Vec::new()).await;
    report(
        json,
        &format!("restored {restored} messages from {}", from.display()),
        json!({"restored": restored, "file": from.display().to_string()}),
    );
    Ok(())
}

pub async fn purge(settings: &Settings, yes: bool, json: bool) -> anyhow::Result<()> {
    if !yes {
        return Err(UsageError(
            "purge deletes every dead letter for good: add --yes (or `dlq drain --out FILE` to keep them)"
                .into(),
        )
        .into());
    }
    let s = Session::open(settings).await?;
    s.depth().await?;
    let purged = s
        .channel
        .queue_purge(s.dlq().into(), QueuePurgeOptions::default())
        .await
        .context("purging the dead-letter queue")?;
    s.close(Vec::new()).await;
    report(
        json,
        &format!("purged {purged} messages"),
        json!({"purged": purged}),
    );
    Ok(())
}
