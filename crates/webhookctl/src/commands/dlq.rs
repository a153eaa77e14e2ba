//! `dlq list | requeue | drain | restore | purge`.
//!
//! Every move is publish-with-confirm (or write-and-fsync) first, ack second; see
//! `webhook_amqp::dead_letters` for why that makes each command safe to interrupt, and how
//! `requeue` and `drain` read a DLQ of any size in bounded memory: one pass over the messages
//! the DLQ held when the command started, each settled as the pass goes (moved, archived, or
//! kept by a confirmed copy at the DLQ's tail), never more than `PREFETCH` of them at once.
//! `restore` reads its archive twice, a line at a time: once to check every line (nothing is
//! published from a file with a bad line unless `--skip-invalid` says to skip it), once to
//! publish.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use webhook_amqp::dead_letters::{
    self, ArchiveLine, ArchiveReader, Archived, Confirms, DeadLetter, Filter, Scan, WINDOW,
};
use webhook_amqp::{Broker, BrokerConfig, Channel, Confirm, Link, Properties, PublishError};
use webhook_core::Settings;

use crate::{UsageError, progress, report};

/// A broker connection for one command, a channel to read the DLQ with, and a confirm-mode
/// channel for the command's own publishes (pipelined: many confirms awaited at once).
struct Session {
    broker: Broker,
    link: Arc<Link>,
    channel: Channel,
    confirms: Channel,
    confirm_timeout: Duration,
}

impl Session {
    async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let mut config = BrokerConfig::from_settings(settings, "webhookctl")?;
        config.declare_topology = false;
        let confirm_timeout = config.confirm_timeout;
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
            .open_channel()
            .await
            .context("opening a channel")?;
        let confirms = link
            .connection
            .open_confirm_channel()
            .await
            .context("opening a channel with publisher confirms")?;
        Ok(Self {
            broker,
            link,
            channel,
            confirms,
            confirm_timeout,
        })
    }

    fn dlq(&self) -> &str {
        &self.broker.topology().dead_letter_queue
    }

    fn work_queue(&self) -> &str {
        &self.broker.topology().work_queue
    }

    /// Fails unless the work queue exists. Messages put back go straight to it, many awaiting
    /// their confirms at once on one channel, where the AMQP client may credit one message's
    /// return to another: a missing work queue is refused before anything is taken.
    async fn require_work_queue(&self) -> anyhow::Result<()> {
        let channel = self
            .link
            .connection
            .open_channel()
            .await
            .context("opening a channel")?;
        let found = channel.queue_depth(self.work_queue()).await;
        channel.close("checked").await;
        found.map(|_| ()).with_context(|| {
            format!(
                "the work queue {} does not exist: run `webhookctl setup` first; nothing was changed",
                self.work_queue()
            )
        })
    }

    async fn depth(&self) -> anyhow::Result<u32> {
        self.channel.queue_depth(self.dlq()).await.with_context(|| {
            format!(
                "the dead-letter queue {} does not exist: run `webhookctl setup` first",
                self.dlq()
            )
        })
    }

    /// One pass over the `limit` oldest dead letters (see `dead_letters::Scan`).
    async fn scan(&self, limit: u32) -> anyhow::Result<Scan> {
        Ok(Scan::start(&self.link.connection, self.dlq(), limit).await?)
    }

    /// Publishes to a queue directly (default exchange); await the confirm through [`Confirms`].
    async fn publish_to(&self, queue: &str, body: &[u8], properties: Properties) -> anyhow::Result<Confirm> {
        self.confirms
            .publish("", queue, body, properties)
            .await
            .with_context(|| format!("publishing to {queue} failed"))
    }

    /// Puts a dead letter on the work queue (only the worker gets it) with a fresh retry count.
    async fn requeue(&self, d: &DeadLetter) -> anyhow::Result<Confirm> {
        self.publish_to(
            self.work_queue(),
            d.delivery.body(),
            dead_letters::requeue_properties(d),
        )
        .await
    }

    /// Keeps a dead letter the filter skips: an unchanged copy at the DLQ's tail.
    async fn keep(&self, d: &DeadLetter) -> anyhow::Result<Confirm> {
        self.publish_to(self.dlq(), d.delivery.body(), dead_letters::kept_properties(d))
            .await
    }

    async fn close(self, held: Vec<DeadLetter>) {
        for d in &held {
            let _ = dead_letters::give_back(d).await;
        }
        self.channel.close("done").await;
        self.confirms.close("done").await;
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

/// What is left to do once a publish of a scan is confirmed.
enum Then {
    /// It was a matching dead letter put on the work queue: ack it, count it.
    Requeued(DeadLetter),
    /// It was a skipped one copied to the DLQ's tail: ack the original.
    Kept(DeadLetter),
}

/// Counts of a scan so far.
#[derive(Default)]
struct Tally {
    /// Dead letters put on the work queue (and removed from the DLQ).
    moved: u64,
}

/// `requeue --json`'s object, written while the scan goes so that the list of ids is never
/// held in memory: `{"dry_run":…,"event_ids":[…],"matched":…,"requeued":…}`, the same keys
/// in the same order as before. It is completed on a failure too (with the ids moved so far).
struct JsonIds {
    on: bool,
    first: bool,
}

impl JsonIds {
    fn start(on: bool, dry_run: bool) -> Self {
        if on {
            print!("{{\"dry_run\":{dry_run},\"event_ids\":[");
        }
        Self { on, first: true }
    }

    fn push(&mut self, id: &str) {
        if self.on {
            let sep = if self.first { "" } else { "," };
            print!("{sep}{}", serde_json::Value::from(id));
            self.first = false;
        }
    }

    fn finish(self, matched: u64, requeued: u64) {
        if self.on {
            println!("],\"matched\":{matched},\"requeued\":{requeued}}}");
        }
    }
}

/// Settles one confirmed (or failed) publish of a scan.
async fn settle(
    confirmed: Result<(), PublishError>,
    then: Then,
    tally: &mut Tally,
    ids: &mut JsonIds,
) -> anyhow::Result<()> {
    match (confirmed, then) {
        (Ok(()), Then::Requeued(d)) => {
            dead_letters::ack(&d)
                .await
                .context("removing a requeued message from the dead-letter queue failed (it is on the work queue too, which is harmless)")?;
            tally.moved += 1;
            ids.push(&d.event_id);
        }
        (Ok(()), Then::Kept(d)) => {
            dead_letters::ack(&d).await.context(
                "removing a skipped message after copying it to the dead-letter queue's tail failed (it is there twice now, which is harmless)",
            )?;
        }
        (Err(e), Then::Requeued(d)) => {
            return Err(anyhow::Error::new(e).context(format!(
                "putting {} on the work queue failed (it stays in the dead-letter queue)",
                d.event_id
            )));
        }
        (Err(e), Then::Kept(d)) => {
            return Err(anyhow::Error::new(e).context(format!(
                "keeping the skipped message {} at the dead-letter queue's tail failed (it stays where it was)",
                d.event_id
            )));
        }
    }
    Ok(())
}

/// After a failure: settles what can still be settled (publishes already confirmed), so that
/// as few messages as possible end up in two places. Errors are ignored: the first one is reported.
async fn settle_remaining(confirms: &mut Confirms<Then>, tally: &mut Tally, ids: &mut JsonIds) {
    while let Some((confirmed, then)) = confirms.next().await {
        let _ = settle(confirmed, then, tally, ids).await;
    }
}

pub async fn requeue(settings: &Settings, filter: Filter, dry_run: bool, json: bool) -> anyhow::Result<()> {
    require_filter(&filter)?;
    let s = Session::open(settings).await?;
    let total = s.depth().await?;
    if dry_run {
        return requeue_dry_run(s, total, &filter, json).await;
    }
    s.require_work_queue().await?;
    let bar = progress::bar(u64::from(total), "requeueing");
    let mut ids = JsonIds::start(json, false);
    let mut tally = Tally::default();
    let mut confirms: Confirms<Then> = Confirms::new(s.confirm_timeout);
    let mut scan = match s.scan(total).await {
        Ok(scan) => scan,
        Err(e) => {
            ids.finish(0, 0);
            s.close(Vec::new()).await;
            return Err(e);
        }
    };
    let result: anyhow::Result<()> = async {
        loop {
            // At most WINDOW messages unsettled, or the scan's consumer gets no more.
            while confirms.is_full() {
                if let Some((confirmed, then)) = confirms.next().await {
                    settle(confirmed, then, &mut tally, &mut ids).await?;
                }
            }
            let Some(mut d) = scan.next().await? else {
                break;
            };
            bar.inc(1);
            if filter.matches(&d) {
                let confirm = s.requeue(&d).await?;
                d.delivery.forget_body(); // the broker has it; keep only what acks it
                confirms.push(confirm, Then::Requeued(d));
            } else {
                let confirm = s.keep(&d).await?;
                d.delivery.forget_body();
                confirms.push(confirm, Then::Kept(d));
            }
        }
        while let Some((confirmed, then)) = confirms.next().await {
            settle(confirmed, then, &mut tally, &mut ids).await?;
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        settle_remaining(&mut confirms, &mut tally, &mut ids).await;
    }
    bar.finish_and_clear();
    scan.close().await;
    s.close(Vec::new()).await;
    ids.finish(tally.moved, tally.moved);
    if let Err(e) = result {
        return Err(e.context(format!(
            "stopped after requeueing {} messages; run the same command again",
            tally.moved
        )));
    }
    if !json {
        println!("requeued {} messages", tally.moved);
    }
    Ok(())
}

/// How many channels a dry run reads the DLQ with at once. Every `basic.get` of a quorum queue
/// is a round trip through the queue's log (about 1 ms): one channel reads about 1,000 messages
/// a second, 16 about 7,000.
const DRY_RUN_READERS: usize = 16;

/// `requeue --dry-run`: looks at the messages the DLQ holds and changes nothing but their order.
/// Readers on [`DRY_RUN_READERS`] channels take messages unacked (taking the DLQ's depth at the
/// start, in all) and forget each at once but for its delivery tag; at the end each gives all
/// of its own back with one `nack`. Memory stays bounded; the broker holds the messages unacked
/// meanwhile, as it did before.
async fn requeue_dry_run(s: Session, total: u32, filter: &Filter, json: bool) -> anyhow::Result<()> {
    let bar = progress::bar(u64::from(total), "scanning");
    let mut ids = JsonIds::start(json, true);
    let taken = Arc::new(AtomicU32::new(0));
    // Per message read: its id, type and error if it matches, else None.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<(String, String, String)>>(256);
    let mut readers = Vec::with_capacity(DRY_RUN_READERS);
    let mut result: anyhow::Result<()> = Ok(());
    for _ in 0..DRY_RUN_READERS {
        let channel = match s.link.connection.open_channel().await {
            Ok(c) => c,
            Err(e) => {
                result = Err(anyhow::Error::new(e).context("opening a channel"));
                break;
            }
        };
        let (taken, tx, filter, dlq) = (taken.clone(), tx.clone(), filter.clone(), s.dlq().to_owned());
        readers.push(tokio::spawn(async move {
            let mut last: Option<DeadLetter> = None;
            let mut read = Ok(());
            while taken.fetch_add(1, Ordering::Relaxed) < total {
                match dead_letters::take(&channel, &dlq).await {
                    Ok(Some(mut d)) => {
                        let seen = filter
                            .matches(&d)
                            .then(|| (d.event_id.clone(), d.event_type.clone(), d.error.clone()));
                        d.delivery.forget_body();
                        last = Some(d);
                        if tx.send(seen).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        read = Err(e);
                        break;
                    }
                }
            }
            if let Some(d) = &last {
                let _ = dead_letters::give_back_all_up_to(d).await;
            }
            channel.close("dry run done").await;
            read
        }));
    }
    drop(tx);
    let mut matched = 0u64;
    while let Some(seen) = rx.recv().await {
        bar.inc(1);
        if let Some((event_id, event_type, error)) = seen {
            if !json {
                bar.suspend(|| println!("would requeue {event_id}  {event_type}  {error}"));
            }
            ids.push(&event_id);
            matched += 1;
        }
    }
    for reader in readers {
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if result.is_ok() => {
                result = Err(anyhow::Error::new(e).context("reading the dead-letter queue"));
            }
            Err(e) if result.is_ok() => {
                result = Err(anyhow::anyhow!("a reader of the dead-letter queue failed: {e}"))
            }
            _ => {}
        }
    }
    bar.finish_and_clear();
    s.close(Vec::new()).await;
    ids.finish(matched, 0);
    result?;
    if !json {
        println!("would requeue {matched} messages");
    }
    Ok(())
}

/// The archive `drain` writes: lines are written as messages come, made durable (flush +
/// fsync) before the messages they hold are acked.
struct ArchiveFile<'a> {
    file: BufWriter<File>,
    path: &'a Path,
    /// Written, not yet fsynced, not yet acked (oldest first).
    unsynced: Vec<DeadLetter>,
}

impl ArchiveFile<'_> {
    fn write(&mut self, mut d: DeadLetter) -> anyhow::Result<()> {
        let line = serde_json::to_string(&Archived::from_dead_letter(&d))?;
        writeln!(self.file, "{line}").with_context(|| format!("writing {}", self.path.display()))?;
        d.delivery.forget_body();
        self.unsynced.push(d);
        Ok(())
    }

    /// Makes the written lines durable, then removes their messages from the DLQ.
    async fn sync(&mut self) -> anyhow::Result<u64> {
        if self.unsynced.is_empty() {
            return Ok(0);
        }
        self.file
            .flush()
            .and_then(|()| self.file.get_ref().sync_all())
            .with_context(|| {
                format!(
                    "fsync of {} failed; nothing more was removed",
                    self.path.display()
                )
            })?;
        let n = self.unsynced.len() as u64;
        for d in self.unsynced.drain(..) {
            dead_letters::ack(&d)
                .await
                .context("removing an archived message from the dead-letter queue failed (it is archived, and still in the queue)")?;
        }
        Ok(n)
    }
}

pub async fn drain(settings: &Settings, out: &Path, filter: Filter, json: bool) -> anyhow::Result<()> {
    let filter = if filter.is_empty() {
        Filter { all: true, ..filter }
    } else {
        filter
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| {
            format!(
                "cannot create {} (it must not exist yet; choose another path)",
                out.display()
            )
        })?;
    let mut archive = ArchiveFile {
        file: BufWriter::new(file),
        path: out,
        unsynced: Vec::with_capacity(usize::from(WINDOW)),
    };
    let s = Session::open(settings).await?;
    let total = s.depth().await?;
    let bar = progress::bar(u64::from(total), "draining");
    let (mut drained, mut tally) = (0u64, Tally::default());
    let mut ids = JsonIds::start(false, false);
    let mut confirms: Confirms<Then> = Confirms::new(s.confirm_timeout);
    let mut scan = match s.scan(total).await {
        Ok(scan) => scan,
        Err(e) => {
            s.close(Vec::new()).await;
            return Err(e);
        }
    };
    let result: anyhow::Result<()> = async {
        loop {
            // At most WINDOW messages unsettled: archived ones first (one fsync for them all).
            while archive.unsynced.len() + confirms.len() >= usize::from(WINDOW) {
                if archive.unsynced.is_empty() {
                    if let Some((confirmed, then)) = confirms.next().await {
                        settle(confirmed, then, &mut tally, &mut ids).await?;
                    }
                } else {
                    drained += archive.sync().await?;
                }
            }
            let Some(mut d) = scan.next().await? else {
                break;
            };
            bar.inc(1);
            if filter.matches(&d) {
                archive.write(d)?;
            } else {
                let confirm = s.keep(&d).await?;
                d.delivery.forget_body();
                confirms.push(confirm, Then::Kept(d));
            }
        }
        drained += archive.sync().await?;
        while let Some((confirmed, then)) = confirms.next().await {
            settle(confirmed, then, &mut tally, &mut ids).await?;
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        settle_remaining(&mut confirms, &mut tally, &mut ids).await;
    }
    bar.finish_and_clear();
    scan.close().await;
    s.close(Vec::new()).await;
    if let Err(e) = result {
        return Err(e.context(format!(
            "stopped after draining {drained} messages to {}; run the same command again with another --out file",
            out.display()
        )));
    }
    report(
        json,
        &format!("drained {drained} messages to {}", out.display()),
        json!({"drained": drained, "file": out.display().to_string()}),
    );
    Ok(())
}

/// Invalid lines of an archive: how many, and the first few (for the summary).
#[derive(Default)]
struct InvalidLines {
    count: u64,
    first: Vec<(u64, String)>,
}

impl InvalidLines {
    /// How many line numbers the JSON summary lists at most.
    const KEEP: usize = 100;

    fn push(&mut self, number: u64, reason: String) {
        self.count += 1;
        if self.first.len() < Self::KEEP {
            self.first.push((number, reason));
        }
    }

    /// "3, 7, 100" (the first ten, then "…").
    fn numbers(&self) -> String {
        let mut s = String::new();
        for (i, (n, _)) in self.first.iter().take(10).enumerate() {
            let _ = write!(s, "{}{n}", if i == 0 { "" } else { ", " });
        }
        if self.count > 10 {
            s.push_str(", …");
        }
        s
    }
}

fn open_archive(from: &Path) -> anyhow::Result<ArchiveReader<BufReader<File>>> {
    let file = File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    Ok(ArchiveReader::new(BufReader::new(file)))
}

pub async fn restore(settings: &Settings, from: &Path, skip_invalid: bool, json: bool) -> anyhow::Result<()> {
    // First pass: check every line, publish nothing.
    let mut reader = open_archive(from)?;
    let (mut valid, mut invalid) = (0u64, InvalidLines::default());
    while let Some(line) = reader
        .next_line()
        .with_context(|| format!("reading {}", from.display()))?
    {
        match line {
            ArchiveLine::Message { .. } => valid += 1,
            ArchiveLine::Invalid { number, reason } => invalid.push(number, reason),
        }
    }
    let last_line = reader.line_number();
    drop(reader);
    if let Some((number, reason)) = invalid.first.first().filter(|_| !skip_invalid) {
        let others = match invalid.count {
            1 => String::new(),
            n => format!(" ({n} invalid lines in all: {})", invalid.numbers()),
        };
        return Err(UsageError(format!(
            "{} line {number} {reason}{others}. Nothing was restored. To restore the {valid} valid messages and skip the invalid lines, add --skip-invalid",
            from.display()
        ))
        .into());
    }

    // Second pass: publish the valid lines, confirms pipelined.
    let s = Session::open(settings).await?;
    s.require_work_queue().await?;
    let bar = progress::bar(valid, "restoring");
    let mut reader = open_archive(from)?;
    let mut confirms: Confirms<u64> = Confirms::new(s.confirm_timeout);
    let (mut restored, mut skipped) = (0u64, InvalidLines::default());
    let result: anyhow::Result<()> = async {
        loop {
            while confirms.is_full() {
                if let Some((confirmed, number)) = confirms.next().await {
                    confirmed
                        .with_context(|| format!("publishing line {number} to the work queue failed"))?;
                    restored += 1;
                    bar.inc(1);
                }
            }
            // Only the lines checked by the first pass (a file still growing is not followed).
            if reader.line_number() >= last_line {
                break;
            }
            let Some(line) = reader
                .next_line()
                .with_context(|| format!("reading {}", from.display()))?
            else {
                break;
            };
            match line {
                ArchiveLine::Message {
                    number,
                    archived,
                    body,
                } => {
                    let confirm = s.publish_to(s.work_queue(), &body, archived.properties()).await?;
                    confirms.push(confirm, number);
                }
                ArchiveLine::Invalid { number, reason } => {
                    if !skip_invalid {
                        anyhow::bail!(
                            "{} changed while it was being restored: line {number} {reason}",
                            from.display()
                        );
                    }
                    bar.suspend(|| {
                        eprintln!(
                            "webhookctl: skipped {} line {number}: it {reason}",
                            from.display()
                        )
                    });
                    skipped.push(number, reason);
                }
            }
        }
        while let Some((confirmed, number)) = confirms.next().await {
            confirmed.with_context(|| format!("publishing line {number} to the work queue failed"))?;
            restored += 1;
            bar.inc(1);
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        while let Some((confirmed, _)) = confirms.next().await {
            restored += u64::from(confirmed.is_ok());
        }
    }
    bar.finish_and_clear();
    s.close(Vec::new()).await;
    if let Err(e) = result {
        return Err(e.context(format!(
            "stopped after restoring {restored} of {valid} messages from {} (running it again queues those {restored} twice, which is harmless)",
            from.display()
        )));
    }
    let mut summary = format!("restored {restored} messages from {}", from.display());
    if skipped.count > 0 {
        let _ = write!(
            summary,
            "; skipped {} invalid line{}: {}",
            skipped.count,
            if skipped.count == 1 { "" } else { "s" },
            skipped.numbers()
        );
    }
    report(
        json,
        &summary,
        json!({
            "restored": restored,
            "file": from.display().to_string(),
            "skipped": skipped.count,
            "skipped_lines": skipped.first.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        }),
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
        .queue_purge(s.dlq())
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
