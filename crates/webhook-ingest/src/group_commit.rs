//! Group commit: the dedupe records and publishes of concurrent requests share one transaction.
//!
//! Each request hands its verified event to a small set of writers and waits for the answer.
//! A free writer takes every event waiting (up to [`MAX_BATCH`]), folds copies of one event
//! into the first, and records and queues the batch in one transaction
//! ([`webhook_intake::record_and_queue`]). Only then are the requests answered: accepted
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

use webhook_amqp::Broker;
use webhook_core::VerifiedEvent;
use webhook_core::group_commit::{self, Pending};
use webhook_intake::{Admission, record_and_queue};
pub use webhook_intake::{Answer, Disposition, NotQueued, Route};
use webhook_store::Store;

use crate::metrics::Metrics;

/// Most events in one transaction.
pub const MAX_BATCH: usize = 128;

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
    let admissions: Vec<Admission<'_>> = firsts
        .iter()
        .map(|&i| Admission {
            event: &batch[i].item.event,
            route: &batch[i].item.route,
            parent: &batch[i].item.span,
        })
        .collect();
    let on_publish = |confirmed: bool, took: std::time::Duration| {
        backend
            .metrics
            .publish_duration
            .with_label_values(&[if confirmed { "ack" } else { "failed" }])
            .observe(took.as_secs_f64());
    };
    let answers = match record_and_queue(&backend.store, &backend.broker, &admissions, &on_publish).await {
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
