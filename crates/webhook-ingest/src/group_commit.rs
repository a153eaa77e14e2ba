//! Group commit: the dedupe records and publishes of concurrent requests share one transaction.
//!
//! Each request hands its verified event to a small set of writers and waits for the answer.
//! A free writer takes every event waiting (up to [`MAX_BATCH`]) and, in one transaction:
//! inserts them all (`INSERT … ON CONFLICT DO NOTHING`, one statement), publishes the new ones
//! (persistent, mandatory) and awaits all their confirms together, removes the rows of any
//! event RabbitMQ did not confirm, and commits. Only then are the requests answered: accepted
//! (recorded and confirmed), duplicate, ignored, or 503 for an event that is not durably queued.
//!
//! The batching is [`webhook_core::group_commit`] (no timer: under light load every batch holds
//! one event and latency is that of a lone request; under heavy load the events that arrive
//! while the writers are busy form the next batches, so the Postgres round trips and commits per
//! event fall as the load rises).
//!
//! Rows are inserted in event-id order, so concurrent batches lock the unique index in the same
//! order (no deadlock), and a second copy of an event waits for the first copy's transaction
//! exactly as a lone insert would: it is answered `duplicate` only once the first is committed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use tracing::Instrument;
use webhook_amqp::{Broker, Outgoing, PublishError, job_properties, trace_context};
use webhook_core::VerifiedEvent;
use webhook_core::group_commit::{self, Pending};
use webhook_store::Store;
use webhook_store::events::{self, EventStatus};

use crate::metrics::Metrics;

/// Most events in one transaction.
pub const MAX_BATCH: usize = 128;

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

/// What to do with a verified event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Record it and queue it for the worker.
    Queue,
    /// Record it as `ignored`, with the reason (kept as its `last_error`), and do not queue it.
    Ignore { reason: Option<String> },
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

/// Why an event was not durably queued (the request is answered 503, and Stripe retries).
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotQueued {
    #[error("the ingest is shutting down; retry later")]
    ShuttingDown,
    #[error("the event store is unavailable; retry later")]
    StoreUnavailable(#[source] Arc<sqlx::Error>),
    #[error("the event could not be queued ({0}); it was not recorded, retry later")]
    NotConfirmed(#[source] Arc<PublishError>),
}

type Answer = Result<Disposition, NotQueued>;

struct Job {
    event: VerifiedEvent,
    route: Route,
    /// The request's span: the parent of the publish, whose trace context the message carries.
    span: tracing::Span,
}

/// The requests' side: hands events to the writers.
#[derive(Clone)]
pub struct GroupCommit {
    jobs: group_commit::GroupCommit<Job, Answer>,
    metrics: Metrics,
}

/// What the writers work with.
#[derive(Clone)]
pub struct Backend {
    pub store: Store,
    pub broker: Broker,
    pub metrics: Metrics,
}

impl GroupCommit {
    /// Starts `writers` writer tasks on the current runtime (each holds at most one pooled
    /// connection at a time). They stop once every `GroupCommit` clone is dropped.
    pub fn start(backend: Backend, writers: usize) -> Self {
        let metrics = backend.metrics.clone();
        let jobs = group_commit::GroupCommit::start(
            writers,
            MAX_BATCH,
            MAX_BATCH * writers.max(1) * 4,
            move |batch| {
                let backend = backend.clone();
                async move {
                    backend.metrics.commit_waiting.sub(batch.len() as i64);
                    commit(&backend, batch).await
                }
            },
        );
        Self { jobs, metrics }
    }

    /// Records and (for [`Route::Queue`]) queues the event; answers once that is durable, or why not.
    pub async fn submit(&self, event: VerifiedEvent, route: Route) -> Answer {
        let job = Job {
            event,
            route,
            span: tracing::Span::current(),
        };
        // Taken off again by the writer that takes the event.
        self.metrics.commit_waiting.inc();
        match self.jobs.submit(job).await {
            Ok(answer) => answer,
            Err(stopped) => {
                if !stopped.taken {
                    self.metrics.commit_waiting.dec();
                }
                Err(NotQueued::ShuttingDown)
            }
        }
    }
}

/// One transaction for the whole batch, then every request's answer.
async fn commit(backend: &Backend, mut batch: Vec<Pending<Job, Answer>>) {
    backend.metrics.commit_batch_size.observe(batch.len() as f64);
    batch.sort_by(|a, b| a.item.event.id.cmp(&b.item.event.id));
    // The first copy of each id is written; later copies in the batch follow its fate.
    let firsts: Vec<usize> = (0..batch.len())
        .filter(|&i| i == 0 || batch[i].item.event.id != batch[i - 1].item.event.id)
        .collect();
    let answers = match record_and_queue(backend, &batch, &firsts).await {
        Ok(answers) => answers,
        Err(e) => vec![Err(e); firsts.len()],
    };
    let mut first = 0;
    for (i, job) in batch.into_iter().enumerate() {
        let answer = if firsts.get(first) == Some(&i) {
            first += 1;
            answers[first - 1].clone()
        } else {
            // A second copy: a duplicate once the first is durable, else the first's error.
            answers[first - 1].clone().map(|_| Disposition::Duplicate)
        };
        // A client that went away gets no answer; its event is durable all the same.
        job.answer(answer);
    }
}

/// Insert, publish, await the confirms, forget the unconfirmed, commit. The answers are in the
/// order of `firsts`; an `Err` of the whole function answers every event with it.
async fn record_and_queue(
    backend: &Backend,
    batch: &[Pending<Job, Answer>],
    firsts: &[usize],
) -> Result<Vec<Answer>, NotQueued> {
    let rows: Vec<_> = firsts
        .iter()
        .map(|&i| {
            let job = &batch[i].item;
            match &job.route {
                Route::Queue => (job.event.envelope(), EventStatus::Queued, None),
                Route::Ignore { reason } => (job.event.envelope(), EventStatus::Ignored, reason.as_deref()),
            }
        })
        .collect();
    let started = Instant::now();
    let mut tx = backend.store.pool.begin().await.map_err(db_unavailable)?;
    let inserted: HashSet<String> = events::insert_new_with_reasons(&mut tx, &rows)
        .await
        .map_err(db_unavailable)?
        .into_iter()
        .collect();
    if inserted.is_empty() {
        // Nothing was written; ending the transaction releases the connection either way.
        let _ = tx.rollback().await;
        return Ok(vec![Ok(Disposition::Duplicate); firsts.len()]);
    }
    let inserted_at = Instant::now();
    let topology = backend.broker.topology();
    let answers: Vec<Answer> = join_all(firsts.iter().map(|&i| {
        let job = &batch[i].item;
        let new = inserted.contains(job.event.id.as_str());
        async move {
            if !new {
                return Ok(Disposition::Duplicate);
            }
            if job.route != Route::Queue {
                return Ok(Disposition::Ignored);
            }
            let started = Instant::now();
            // The producer span of the message, in the request's trace; the worker's job
            // span continues from the context the headers carry.
            let span = tracing::info_span!(
                parent: &job.span,
                "publish",
                otel.name = %format_args!("{} publish", topology.exchange),
                otel.kind = "producer",
                messaging.system = "rabbitmq",
                messaging.destination.name = %topology.exchange,
                messaging.rabbitmq.destination.routing_key = %job.event.event_type,
                messaging.message.id = %job.event.id,
            );
            let headers = trace_context::headers_of(&span);
            let published = backend
                .broker
                .publish(Outgoing {
                    exchange: &topology.exchange,
                    routing_key: &job.event.event_type,
                    body: &job.event.body,
                    properties: job_properties(job.event.id.as_str(), &job.event.event_type, headers),
                })
                .instrument(span)
                .await;
            let result = if published.is_ok() { "ack" } else { "failed" };
            backend
                .metrics
                .publish_duration
                .with_label_values(&[result])
                .observe(started.elapsed().as_secs_f64());
            published.map(|()| Disposition::Accepted).map_err(|e| {
                tracing::warn!(event_id = %job.event.id, error = %e, "event not queued; answering 503 so Stripe retries");
                NotQueued::NotConfirmed(Arc::new(e))
            })
        }
    }))
    .await;
    let unconfirmed: Vec<&str> = firsts
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.is_err())
        .map(|(&i, _)| batch[i].item.event.id.as_str())
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
        // The messages may be queued without their records: Stripe's retry then queues them
        // again, and the worker's ledger makes the second copy harmless.
        tracing::warn!(error = %e, events = inserted.len(), "commit failed after publish");
        return Err(db_unavailable(e));
    }
    let done = Instant::now();
    if done - started >= SLOW_BATCH {
        // Which side held the requests up: Postgres (insert, commit) or RabbitMQ (confirms).
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        tracing::warn!(
            events = firsts.len(),
            insert_ms = ms(inserted_at - started),
            confirms_ms = ms(confirmed_at - inserted_at),
            commit_ms = ms(done - confirmed_at),
            "slow group commit"
        );
    }
    Ok(answers)
}

/// A batch slower than this is logged with where its time went.
const SLOW_BATCH: std::time::Duration = std::time::Duration::from_millis(50);

fn db_unavailable(e: sqlx::Error) -> NotQueued {
    tracing::warn!(error = %e, "database unavailable");
    NotQueued::StoreUnavailable(Arc::new(e))
}
