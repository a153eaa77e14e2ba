//! `backfill`: fetch the events Stripe has and this system never received, and send them down
//! the same path as a webhook delivery.
//!
//! 1. List `GET /v1/events` for the window (and types), page by page (100 a page, newest first,
//!    `starting_after` cursors). Each page is checked against the store at once; the events it
//!    does not know are spooled to a temporary file (bounded memory whatever the window).
//! 2. Admit the spooled events oldest first, 100 per transaction, through
//!    [`webhook_intake::record_and_queue`]: recorded (the dedupe: an event the ingest took
//!    meanwhile is a duplicate) and published with a confirm, exactly as the ingest does;
//!    unhandled types and events of the other Stripe mode are stored as ignored.
//!
//! Idempotent: a second run finds every event known and backfills 0. An interrupted run loses
//! nothing (an event is recorded only with its confirm) and doubles nothing (a run again skips
//! the recorded ones; one published but not committed is published again, and the worker's
//! ledger makes the second copy change nothing).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use webhook_amqp::Broker;
use webhook_clients::error::InlineRetry;
use webhook_clients::stripe::{EventQuery, ListedEvent, MAX_TYPES, StripeClient};
use webhook_core::{Settings, VerifiedEvent};
use webhook_intake::{Admission, Disposition, Route};
use webhook_store::{Store, events};

use crate::UsageError;
use crate::cli::BackfillArgs;

/// Events per transaction (one page).
const BATCH: usize = 100;

/// Stripe keeps events this long.
const STRIPE_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// How the Stripe API is retried from the command line: a `Retry-After` up to a minute is
/// waited out, transient failures get 8 tries.
pub(crate) const CLI_RETRY: InlineRetry = InlineRetry {
    times: 8,
    min_delay: Duration::from_millis(500),
    max_delay: Duration::from_secs(60),
};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    listed: u64,
    backfilled: u64,
    known: u64,
    ignored: u64,
}

pub async fn run(settings: &Settings, args: BackfillArgs) -> anyhow::Result<()> {
    let query = query(&args, webhook_core::unix_now())?;
    let stripe_config = settings.for_stripe_api(
        " for backfill: a restricted key with read access to events (Stripe Dashboard > Developers > API keys)",
    )?;
    stripe_config.check_mode(settings.stripe.livemode)?;
    let stripe = StripeClient::new(&stripe_config, CLI_RETRY, None)?;
    let store = Store::connect_lazy(&settings.database)?;
    let handled = &settings.stripe.handled_event_types;
    let livemode = settings.stripe.livemode;

    // 1. List and spool what the store does not know.
    let mut spool = Spool::create()?;
    let mut counts = Counts::default();
    let listing = crate::progress::spinner("listing Stripe's events");
    let mut cursor: Option<String> = None;
    loop {
        let page = stripe.list_events(&query, cursor.as_deref()).await.context(
            "could not list Stripe's events; nothing was backfilled by this page, run the same command again",
        )?;
        counts.listed += page.data.len() as u64;
        let ids: Vec<&str> = page.data.iter().map(|e| e.id.as_str()).collect();
        let known: HashSet<String> = events::known(&store.pool, &ids)
            .await
            .context("cannot read the events table (check DATABASE_URL; run `webhookctl migrate`)")?
            .into_iter()
            .collect();
        for event in &page.data {
            if known.contains(&event.id) {
                counts.known += 1;
            } else {
                spool.push(event)?;
            }
        }
        listing.set_message(format!(
            "listing Stripe's events: {} listed, {} new",
            counts.listed,
            spool.len()
        ));
        match (page.has_more, page.data.last()) {
            (true, Some(last)) => cursor = Some(last.id.clone()),
            (true, None) => anyhow::bail!(
                "Stripe's event list said it has more but gave an empty page: check STRIPE_API_URL; nothing was backfilled"
            ),
            (false, _) => break,
        }
    }
    listing.finish_and_clear();
    spool.flush()?;

    if args.dry_run {
        // What a run would do, from the store as it is now.
        let mut would_ignore = 0;
        for event in spool.oldest_first()? {
            let event = event?;
            if webhook_intake::route(&event, livemode, |t| handled.contains(&t)) != Route::Queue {
                would_ignore += 1;
            }
        }
        let new = spool.len() as u64;
        let summary = format!(
            "would backfill {} events ({} already known, {would_ignore} ignored); nothing was changed (--dry-run)",
            new - would_ignore,
            counts.known
        );
        crate::report(
            args.json,
            &summary,
            json!({
                "dry_run": true,
                "listed": counts.listed,
                "backfilled": new - would_ignore,
                "already_known": counts.known,
                "ignored": would_ignore,
            }),
        );
        return Ok(());
    }

    // 2. Admit them, oldest first (no broker needed when nothing is new).
    if spool.len() > 0 {
        let broker = crate::publisher(settings, "webhookctl backfill", "nothing was backfilled").await?;
        let bar = crate::progress::bar(spool.len() as u64, "backfilling");
        let result = admit_all(&store, &broker, &spool, livemode, handled, &mut counts, &bar).await;
        bar.finish_and_clear();
        broker.close().await;
        result?;
    }
    let summary = format!(
        "backfilled {} events ({} already known, {} ignored)",
        counts.backfilled, counts.known, counts.ignored
    );
    crate::report(
        args.json,
        &summary,
        json!({
            "dry_run": false,
            "listed": counts.listed,
            "backfilled": counts.backfilled,
            "already_known": counts.known,
            "ignored": counts.ignored,
        }),
    );
    Ok(())
}

async fn admit_all(
    store: &Store,
    broker: &Broker,
    spool: &Spool,
    livemode: webhook_core::settings::Livemode,
    handled: &[webhook_core::EventType],
    counts: &mut Counts,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let span = tracing::info_span!("backfill", otel.name = "webhookctl backfill");
    let mut events = spool.oldest_first()?;
    loop {
        let mut batch: Vec<(VerifiedEvent, Route)> = Vec::with_capacity(BATCH);
        for event in events.by_ref().take(BATCH) {
            let event = event?;
            let route = webhook_intake::route(&event, livemode, |t| handled.contains(&t));
            batch.push((event, route));
        }
        if batch.is_empty() {
            return Ok(());
        }
        // In id order, as the ingest's batches: concurrent transactions lock the unique index
        // in the same order and cannot deadlock.
        batch.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let admissions: Vec<Admission<'_>> = batch
            .iter()
            .map(|(event, route)| Admission {
                event,
                route,
                parent: &span,
            })
            .collect();
        let answers = webhook_intake::record_and_queue(store, broker, &admissions, &|_, _| {})
            .await
            .map_err(|e| {
                anyhow::Error::new(e).context(format!(
                    "backfill stopped after {} events; what was confirmed stays queued, run the same command again to send the rest",
                    counts.backfilled
                ))
            })?;
        let mut failed = None;
        for ((event, _), answer) in batch.iter().zip(answers) {
            match answer {
                Ok(Disposition::Accepted) => counts.backfilled += 1,
                Ok(Disposition::Duplicate) => counts.known += 1,
                Ok(Disposition::Ignored) => counts.ignored += 1,
                Err(e) => failed = Some((event.id.to_string(), e)),
            }
        }
        bar.inc(batch.len() as u64);
        if let Some((id, e)) = failed {
            return Err(anyhow::Error::new(e).context(format!(
                "{id} could not be queued; backfill stopped after {} events (the confirmed ones stay queued): run the same command again",
                counts.backfilled
            )));
        }
    }
}

/// The `GET /v1/events` filter of the command line; bad usage exits 2.
fn query(args: &BackfillArgs, now: i64) -> anyhow::Result<EventQuery> {
    let from = match (&args.since, &args.from) {
        (Some(since), None) => {
            let age = humantime::parse_duration(since).map_err(|e| {
                UsageError(format!(
                    "--since {since:?} is not a duration like 30m, 24h or 7d ({e})"
                ))
            })?;
            now.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX))
        }
        (None, Some(from)) => rfc3339("--from", from)?,
        _ => {
            return Err(UsageError(
                "give the start of the window: --since DURATION (e.g. 24h) or --from RFC3339 (e.g. 2026-11-20T00:00:00Z)"
                    .into(),
            )
            .into());
        }
    };
    let oldest = now - STRIPE_RETENTION.as_secs() as i64;
    let from = if from < oldest {
        eprintln!(
            "webhookctl: note: Stripe keeps events for 30 days; the window starts {}, so it is cut to {} (older events cannot be fetched)",
            format_time(from),
            format_time(oldest)
        );
        oldest
    } else {
        from
    };
    let until = args.until.as_deref().map(|u| rfc3339("--until", u)).transpose()?;
    if let Some(until) = until
        && until < from
    {
        return Err(UsageError(format!(
            "--until is before the start of the window ({} < {}): nothing to fetch",
            args.until.as_deref().unwrap_or_default(),
            format_time(from)
        ))
        .into());
    }
    if from > now {
        return Err(UsageError(format!("the window starts in the future ({})", format_time(from))).into());
    }
    if args.types.len() > MAX_TYPES {
        return Err(UsageError(format!(
            "{} --type filters given; Stripe takes at most {MAX_TYPES}: run the command once per group of types",
            args.types.len()
        ))
        .into());
    }
    for t in &args.types {
        if t.is_empty() || t.contains('*') || t.contains(char::is_whitespace) {
            return Err(UsageError(format!(
                "--type {t:?} is not an event type such as customer.subscription.updated (wildcards are not taken: list each type)"
            ))
            .into());
        }
    }
    Ok(EventQuery {
        created_gte: Some(from),
        created_lte: until,
        types: args.types.clone(),
    })
}

fn rfc3339(flag: &str, raw: &str) -> anyhow::Result<i64> {
    chrono::DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| t.timestamp())
        .map_err(|e| {
            UsageError(format!(
                "{flag} {raw:?} is not an RFC 3339 time such as 2026-11-20T00:00:00Z ({e})"
            ))
            .into()
        })
}

fn format_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// The events to admit, in an unlinked temporary file (mode 0600) in the order listed (newest
/// first), read back oldest first.
struct Spool {
    path: PathBuf,
    writer: BufWriter<File>,
    /// (offset, length) of each event's JSON.
    spans: Vec<(u64, u32)>,
    written: u64,
}

impl Spool {
    fn create() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "webhookctl-backfill-{}-{}.json",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        // Only this process may read it (the events hold customers' names and emails), and it
        // is unlinked at once: nothing is left behind, whatever ends the run.
        let file = std::os::unix::fs::OpenOptionsExt::mode(
            File::options().read(true).write(true).create_new(true),
            0o600,
        )
        .open(&path)
        .with_context(|| format!("cannot create the temporary file {}", path.display()))?;
        let _ = std::fs::remove_file(&path);
        Ok(Self {
            path,
            writer: BufWriter::new(file),
            spans: Vec::new(),
            written: 0,
        })
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn push(&mut self, event: &ListedEvent) -> anyhow::Result<()> {
        let raw = event.raw.get().as_bytes();
        self.writer
            .write_all(raw)
            .with_context(|| format!("cannot write to {}", self.path.display()))?;
        self.spans.push((self.written, raw.len() as u32));
        self.written += raw.len() as u64;
        Ok(())
    }

    /// Everything pushed is in the file (before reading it back).
    fn flush(&mut self) -> anyhow::Result<()> {
        self.writer
            .flush()
            .with_context(|| format!("cannot write to {}", self.path.display()))
    }

    /// The events, oldest first (the reverse of Stripe's order). Call [`Self::flush`] first.
    fn oldest_first(&self) -> anyhow::Result<impl Iterator<Item = anyhow::Result<VerifiedEvent>> + '_> {
        let mut file = self
            .writer
            .get_ref()
            .try_clone()
            .context("cannot reopen the temporary file")?;
        Ok(self.spans.iter().rev().map(move |&(offset, len)| {
            let mut body = vec![0; len as usize];
            file.seek(SeekFrom::Start(offset))?;
            file.read_exact(&mut body)?;
            VerifiedEvent::fetched_from_stripe(body.into())
                .map_err(|e| anyhow::anyhow!("an event listed by Stripe could not be read: {e}"))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut BackfillArgs)) -> BackfillArgs {
        let mut a = BackfillArgs {
            since: None,
            from: None,
            until: None,
            types: Vec::new(),
            dry_run: false,
            json: false,
        };
        f(&mut a);
        a
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn the_window() {
        let q = query(&args(|a| a.since = Some("1h".into())), NOW).unwrap();
        assert_eq!((q.created_gte, q.created_lte), (Some(NOW - 3600), None));
        let q = query(
            &args(|a| {
                a.from = Some("2027-01-15T08:00:00+01:00".into());
                a.until = Some("2027-01-15T09:00:00Z".into());
            }),
            NOW,
        )
        .unwrap();
        // NOW is 2027-01-15T08:00:00Z.
        assert_eq!(
            (q.created_gte, q.created_lte),
            (Some(NOW - 3600), Some(NOW + 3600))
        );
    }

    #[test]
    fn bad_usage_says_what_to_give() {
        for (a, needle) in [
            (args(|_| {}), "--since DURATION"),
            (args(|a| a.since = Some("yesterday".into())), "not a duration"),
            (args(|a| a.from = Some("2026-13-01".into())), "RFC 3339"),
            (
                args(|a| {
                    a.since = Some("1h".into());
                    a.until = Some("2020-01-01T00:00:00Z".into());
                }),
                "before the start",
            ),
            (
                args(|a| {
                    a.since = Some("1h".into());
                    a.types = vec!["customer.subscription.*".into()];
                }),
                "wildcards",
            ),
            (
                args(|a| {
                    a.since = Some("1h".into());
                    a.types = (0..21).map(|i| format!("t.{i}")).collect();
                }),
                "at most 20",
            ),
        ] {
            let e = query(&a, NOW).unwrap_err();
            assert!(e.is::<UsageError>(), "{e}");
            assert!(e.to_string().contains(needle), "{e} lacks {needle}");
        }
    }
}
