//! Group commit of job outcomes: the durable write before each ack, shared by the jobs that
//! finish together.
//!
//! A job hands its outcome to the writers and waits. A free writer takes every outcome waiting
//! (up to [`MAX_BATCH`]) and records them all in one statement with a durable commit
//! ([`events::record_outcomes`]); only then are the jobs told, and only then do they ack. As
//! with the ingest's group commit there is no timer: under light load a batch holds one
//! outcome; under load, the outcomes that arrive while a writer waits for the disk form the
//! next batch, so the statements and disk flushes per job fall as the load rises.

use std::sync::Arc;

use prometheus::Histogram;
use tokio::sync::{Mutex, mpsc, oneshot};
use webhook_store::Store;
use webhook_store::events::{self, Outcome};

/// Most outcomes in one statement.
pub const MAX_BATCH: usize = 256;

/// Why an outcome was not recorded.
pub type RecordError = Arc<sqlx::Error>;

struct Pending {
    outcome: Outcome,
    reply: oneshot::Sender<Result<(), RecordError>>,
}

/// The jobs' side: hands outcomes to the writers.
#[derive(Clone)]
pub struct OutcomeWriter {
    pending: mpsc::Sender<Pending>,
    store: Store,
}

impl OutcomeWriter {
    /// Starts `writers` writer tasks on `store` (a durable one: see [`webhook_store::Commits`]),
    /// each holding at most one of its connections at a time. They stop once every
    /// `OutcomeWriter` clone is dropped. Each write's number of outcomes goes to `batch_size`.
    pub fn start(store: Store, writers: usize, batch_size: Histogram) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * writers.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            tokio::spawn(writer(store.clone(), rx.clone(), batch_size.clone()));
        }
        Self { pending: tx, store }
    }

    /// Replaces the writers' connections (see [`Store::recycle`]).
    pub fn recycle(&self) {
        self.store.recycle();
    }

    /// Outcomes handed over and not yet taken by a writer.
    pub fn waiting(&self) -> usize {
        self.pending.max_capacity() - self.pending.capacity()
    }

    /// Records `outcome` durably; returns once it is on disk (or why not).
    pub async fn record(&self, outcome: Outcome) -> Result<(), RecordError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || Arc::new(sqlx::Error::PoolClosed);
        self.pending
            .send(Pending { outcome, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn writer(store: Store, pending: Arc<Mutex<mpsc::Receiver<Pending>>>, batch_size: Histogram) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if pending.lock().await.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        batch_size.observe(batch.len() as f64);
        let outcomes: Vec<&Outcome> = batch.iter().map(|p| &p.outcome).collect();
        match events::record_outcomes(&store, &outcomes).await {
            // Postgres refused the statement (e.g. a deadlock, or a value it cannot store):
            // one outcome must not hold back the others, so each is written on its own.
            Err(sqlx::Error::Database(e)) if batch.len() > 1 => {
                tracing::warn!(error = %e, outcomes = batch.len(), "a batch of outcomes was refused; writing them one by one");
                for p in batch.drain(..) {
                    let result = events::record_outcomes(&store, &[&p.outcome])
                        .await
                        .map_err(Arc::new);
                    let _ = p.reply.send(result);
                }
            }
            result => {
                let result = result.map_err(Arc::new);
                for p in batch.drain(..) {
                    // A job that was aborted (shutdown timeout) is not waiting any more.
                    let _ = p.reply.send(result.clone());
                }
            }
        }
    }
}
