//! How a verified Stripe event enters the pipeline, whoever received it: the ingest (a webhook
//! delivery) or `webhookctl backfill` (an event read from Stripe's API).
//!
//! [`route`] decides what becomes of the event (queued for the worker, or stored as ignored
//! with the reason); [`record_and_queue`] does it for a batch in one transaction: inserts the
//! events (`INSERT … ON CONFLICT DO NOTHING`: the dedupe), publishes the new ones (persistent,
//! mandatory) and awaits all their confirms together, removes the rows of any event RabbitMQ did
//! not confirm, and commits. An event is answered [`Disposition::Accepted`] only once it is both
//! recorded and confirmed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tracing::Instrument;
use webhook_amqp::{Broker, Outgoing, PublishError, job_properties, trace_context};
use webhook_core::settings::Livemode;
use webhook_core::{EventType, VerifiedEvent};
use webhook_store::Store;
use webhook_store::events::{self, EventStatus};

/// What happened to a recorded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Recorded and confirmed by RabbitMQ.
    Accepted,
    /// Recorded before (or by an earlier copy in the same batch).
    Duplicate,
    /// An event type nobody handles, or an event of the other Stripe mode: recorded, not queued.
    Ignored,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Accepted => "accepted",
            Disposition::Duplicate => "duplicate",
            Disposition::Ignored => "ignored",
        }
    }
}

/// What to do with a verified event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Record it and queue it for the worker.
    Queue,
    /// Record it as `ignored`, with the reason (kept as its `last_error`), and do not queue it.
    Ignore { reason: Option<String> },
}

/// Why an event was not durably queued (the ingest answers 503 and Stripe retries; a backfill
/// stops and can be run again).
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotQueued {
    #[error("the ingest is shutting down; retry later")]
    ShuttingDown,
    #[error("the event store is unavailable; retry later")]
    StoreUnavailable(#[source] Arc<sqlx::Error>),
    #[error("the event could not be queued ({0}); it was not recorded, retry later")]
    NotConfirmed(#[source] Arc<PublishError>),
}

pub type Answer = Result<Disposition, NotQueued>;

/// Queued when its type is handled and its mode is the one configured; else stored as ignored
/// (with the reason for the other mode: with a test-mode secret configured beside the live
/// one, a test event must not provision a real account).
pub fn route(event: &VerifiedEvent, livemode: Livemode, handled: impl Fn(EventType) -> bool) -> Route {
    match livemode.refuses(event.livemode) {
        Some(reason) => {
            tracing::info!(
                event_id = %event.id,
                event_type = %event.event_type,
                event_livemode = event.livemode,
                stripe_livemode = livemode.as_str(),
                "event of the other Stripe mode: stored as ignored, not queued"
            );
            Route::Ignore { reason: Some(reason) }
        }
        None if event.handled_type().is_some_and(handled) => Route::Queue,
        None => Route::Ignore { reason: None },
    }
}

/// One event of a batch: distinct ids only (the caller folds copies).
pub struct Admission<'a> {
    pub event: &'a VerifiedEvent,
    pub route: &'a Route,
    /// The span the publish is a child of: the message carries its trace context, and the
    /// worker's job continues the trace.
    pub parent: &'a tracing::Span,
}

/// Insert, publish, await the confirms, forget the unconfirmed, commit. The answers are in the
/// order of `batch`; an `Err` of the whole function answers every event with it.
/// `on_publish(confirmed, took)` is told of every publish (the ingest's metric).
pub async fn record_and_queue(
    store: &Store,
    broker: &Broker,
    batch: &[Admission<'_>],
    on_publish: &(dyn Fn(bool, Duration) + Sync),
) -> Result<Vec<Answer>, NotQueued> {
    let rows: Vec<_> = batch
        .iter()
        .map(|a| match a.route {
            Route::Queue => (a.event.envelope(), EventStatus::Queued, None),
            Route::Ignore { reason } => (a.event.envelope(), EventStatus::Ignored, reason.as_deref()),
        })
        .collect();
    let started = Instant::now();
    let mut tx = store.pool.begin().await.map_err(db_unavailable)?;
    let inserted: HashSet<String> = events::insert_new_with_reasons(&mut tx, &rows)
        .await
        .map_err(db_unavailable)?
        .into_iter()
        .collect();
    if inserted.is_empty() {
        // Nothing was written; ending the transaction releases the connection either way.
        let _ = tx.rollback().await;
        return Ok(vec![Ok(Disposition::Duplicate); batch.len()]);
    }
    let inserted_at = Instant::now();
    let topology = broker.topology();
    let answers: Vec<Answer> = join_all(batch.iter().map(|a| {
        let new = inserted.contains(a.event.id.as_str());
        async move {
            if !new {
                return Ok(Disposition::Duplicate);
            }
            if *a.route != Route::Queue {
                return Ok(Disposition::Ignored);
            }
            let started = Instant::now();
            // The producer span of the message; the worker's job span continues from the
            // context the headers carry.
            let span = tracing::info_span!(
                parent: a.parent,
                "publish",
                otel.name = %format_args!("{} publish", topology.exchange),
                otel.kind = "producer",
                messaging.system = "rabbitmq",
                messaging.destination.name = %topology.exchange,
                messaging.rabbitmq.destination.routing_key = %a.event.event_type,
                messaging.message.id = %a.event.id,
            );
            let headers = trace_context::headers_of(&span);
            let published = broker
                .publish(Outgoing {
                    exchange: &topology.exchange,
                    routing_key: &a.event.event_type,
                    body: &a.event.body,
                    properties: job_properties(a.event.id.as_str(), &a.event.event_type, headers),
                })
                .instrument(span)
                .await;
            on_publish(published.is_ok(), started.elapsed());
            published.map(|()| Disposition::Accepted).map_err(|e| {
                tracing::warn!(event_id = %a.event.id, error = %e, "event not queued (not recorded either)");
                NotQueued::NotConfirmed(Arc::new(e))
            })
        }
    }))
    .await;
    let unconfirmed: Vec<&str> = batch
        .iter()
        .zip(&answers)
        .filter(|(_, answer)| answer.is_err())
        .map(|(a, _)| a.event.id.as_str())
        .collect();
    if unconfirmed.len() == inserted.len() {
        let _ = tx.rollback().await;
        return Ok(answers);
    }
    if !unconfirmed.is_empty() {
        events::forget(&mut tx, &unconfirmed)
            .await
            .map_err(db_unavailable)?;
    }
    let confirmed_at = Instant::now();
    if let Err(e) = tx.commit().await {
        // The messages may be queued without their records: the sender's retry (Stripe's, or
        // the backfill run again) queues them again, and the worker's ledger makes the second
        // copy harmless.
        tracing::warn!(error = %e, events = inserted.len(), "commit failed after publish");
        return Err(db_unavailable(e));
    }
    let done = Instant::now();
    if done - started >= SLOW_BATCH {
        // Which side held the batch up: Postgres (insert, commit) or RabbitMQ (confirms).
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::warn!(
            events = batch.len(),
            insert_ms = ms(inserted_at - started),
            confirms_ms = ms(confirmed_at - inserted_at),
            commit_ms = ms(done - confirmed_at),
            "slow group commit"
        );
    }
    Ok(answers)
}

/// A batch slower than this is logged with where its time went.
const SLOW_BATCH: Duration = Duration::from_millis(50);

fn db_unavailable(e: sqlx::Error) -> NotQueued {
    tracing::warn!(error = %e, "database unavailable");
    NotQueued::StoreUnavailable(Arc::new(e))
}
