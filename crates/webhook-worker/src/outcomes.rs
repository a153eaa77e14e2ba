//! Group commit of job outcomes: the durable write before each ack, shared by the jobs that
//! finish together.
//!
//! A job hands its outcome to the writers and waits. A free writer takes every outcome waiting
//! (up to [`MAX_BATCH`]) and records them all in one statement with a durable commit
//! ([`events::record_outcomes`]); only then are the jobs told, and only then do they ack. The
//! batching is [`webhook_core::group_commit`], as the ingest's.

use std::sync::Arc;

use prometheus::Histogram;
use webhook_core::group_commit::{GroupCommit, Pending};
use webhook_store::Store;
use webhook_store::events::{self, Outcome};

/// Most outcomes in one statement.
pub const MAX_BATCH: usize = 256;

/// Why an outcome was not recorded.
pub type RecordError = Arc<sqlx::Error>;

/// The jobs' side: hands outcomes to the writers.
#[derive(Clone)]
pub struct OutcomeWriter {
    commit: GroupCommit<Outcome, Result<(), RecordError>>,
    store: Store,
}

impl OutcomeWriter {
    /// Starts `writers` writer tasks on `store` (a durable one: see [`webhook_store::Commits`]),
    /// each holding at most one of its connections at a time. They stop once every
    /// `OutcomeWriter` clone is dropped. Each write's number of outcomes goes to `batch_size`.
    pub fn start(store: Store, writers: usize, batch_size: Histogram) -> Self {
        let writer_store = store.clone();
        let commit = GroupCommit::start(writers, MAX_BATCH, MAX_BATCH * writers.max(1), move |batch| {
            let (store, batch_size) = (writer_store.clone(), batch_size.clone());
            async move { write(&store, &batch_size, batch).await }
        });
        Self { commit, store }
    }

    /// Replaces the writers' connections (see [`Store::recycle`]).
    pub fn recycle(&self) {
        self.store.recycle();
    }

    /// Outcomes handed over and not yet taken by a writer.
    pub fn waiting(&self) -> usize {
        self.commit.waiting()
    }

    /// Records `outcome` durably; returns once it is on disk (or why not).
    pub async fn record(&self, outcome: Outcome) -> Result<(), RecordError> {
        self.commit
            .submit(outcome)
            .await
            .map_err(|_| Arc::new(sqlx::Error::PoolClosed))?
    }
}

/// One statement for the whole batch, then every job's answer.
async fn write(store: &Store, batch_size: &Histogram, batch: Vec<Pending<Outcome, Result<(), RecordError>>>) {
    batch_size.observe(batch.len() as f64);
    let outcomes: Vec<&Outcome> = batch.iter().map(|p| &p.item).collect();
    match events::record_outcomes(store, &outcomes).await {
        // Postgres refused the statement (e.g. a deadlock, or a value it cannot store): one
        // outcome must not hold back the others, so each is written on its own.
        Err(sqlx::Error::Database(e)) if batch.len() > 1 => {
            tracing::warn!(error = %e, outcomes = batch.len(), "a batch of outcomes was refused; writing them one by one");
            for p in batch {
                let result = events::record_outcomes(store, &[&p.item]).await.map_err(Arc::new);
                p.answer(result);
            }
        }
        result => {
            let result = result.map_err(Arc::new);
            for p in batch {
                // A job that was aborted (shutdown timeout) is not waiting any more.
                p.answer(result.clone());
            }
        }
    }
}
