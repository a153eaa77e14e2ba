//! Group commit: the items of many concurrent callers written together, one batch per write.
//!
//! A caller hands its item to a small set of writer tasks and waits for its answer. A free
//! writer takes every item waiting (up to `max_batch`) and commits them all at once; the
//! commit answers each item. There is no timer: under light load a batch holds one item and
//! the latency is that of a lone write; under load, the items that arrive while the writers
//! wait for the disk form the next batch, so the round trips and flushes per item fall as the
//! load rises. The ingest records and queues events this way, the worker its job outcomes.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

/// One caller's item, and where its answer goes.
pub struct Pending<I, A> {
    pub item: I,
    reply: oneshot::Sender<A>,
}

impl<I, A> Pending<I, A> {
    /// Answers the caller (a caller that went away is not waiting any more: nothing to do).
    pub fn answer(self, answer: A) {
        let _ = self.reply.send(answer);
    }
}

/// The writers stopped (the process is shutting down): the item was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the writers have stopped (shutting down)")]
pub struct Stopped {
    /// Whether a writer had taken the item (and dropped it unanswered) before it stopped.
    pub taken: bool,
}

/// The callers' side: hands items to the writers.
pub struct GroupCommit<I, A> {
    pending: mpsc::Sender<Pending<I, A>>,
}

impl<I, A> Clone for GroupCommit<I, A> {
    fn clone(&self) -> Self {
        Self {
            pending: self.pending.clone(),
        }
    }
}

impl<I: Send + 'static, A: Send + 'static> GroupCommit<I, A> {
    /// Starts `writers` writer tasks on the current runtime; each takes up to `max_batch` items
    /// at a time and passes them to `commit`, which must answer every one of them. At most
    /// `queue` items wait for a writer (then `submit` waits). The writers stop once every
    /// `GroupCommit` clone is dropped.
    pub fn start<F, Fut>(writers: usize, max_batch: usize, queue: usize, commit: F) -> Self
    where
        F: Fn(Vec<Pending<I, A>>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let max_batch = max_batch.max(1);
        let (tx, rx) = mpsc::channel(queue.max(max_batch));
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            let (rx, commit) = (rx.clone(), commit.clone());
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(max_batch);
                loop {
                    // Every item waiting, up to max_batch (waits for the first).
                    if rx.lock().await.recv_many(&mut batch, max_batch).await == 0 {
                        return;
                    }
                    commit(std::mem::take(&mut batch)).await;
                }
            });
        }
        Self { pending: tx }
    }

    /// Hands `item` to the writers and waits for its answer.
    pub async fn submit(&self, item: I) -> Result<A, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.pending
            .send(Pending { item, reply })
            .await
            .map_err(|_| Stopped { taken: false })?;
        answer.await.map_err(|_| Stopped { taken: true })
    }

    /// Items handed over and not yet taken by a writer.
    pub fn waiting(&self) -> usize {
        self.pending.max_capacity() - self.pending.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn every_item_gets_its_own_answer_and_items_waiting_share_a_batch() {
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        let started = Arc::new(tokio::sync::Notify::new());
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let commit = {
            let (batches, started, gate) = (batches.clone(), started.clone(), gate.clone());
            move |batch: Vec<Pending<u32, u32>>| {
                let (batches, started, gate) = (batches.clone(), started.clone(), gate.clone());
                async move {
                    // Each commit waits for the gate, so that the next items queue up meanwhile.
                    started.notify_one();
                    gate.acquire().await.unwrap().forget();
                    batches.lock().unwrap().push(batch.len());
                    for p in batch {
                        let answer = p.item * 10;
                        p.answer(answer);
                    }
                }
            }
        };
        let gc = GroupCommit::start(1, 64, 256, commit);
        let submit = |i: u32| {
            let gc = gc.clone();
            tokio::spawn(async move { gc.submit(i).await })
        };
        let first = submit(1);
        started.notified().await;
        let rest: Vec<_> = (2..=21).map(submit).collect();
        assert_eq!(gc.waiting(), 0, "the first was taken by the writer");
        while gc.waiting() < 20 {
            tokio::task::yield_now().await;
        }
        // Exactly the 20 handed over and not taken (the writer holds the first).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(gc.waiting(), 20);
        gate.add_permits(1_000);
        assert_eq!(first.await.unwrap(), Ok(10));
        for (i, r) in (2..=21).zip(rest) {
            assert_eq!(r.await.unwrap(), Ok(i * 10));
        }
        assert_eq!(
            *batches.lock().unwrap(),
            vec![1, 20],
            "the 20 that waited went in one batch"
        );
    }

    #[tokio::test]
    async fn a_commit_that_drops_an_item_answers_stopped_and_writers_stop_with_the_callers() {
        let commits = Arc::new(AtomicUsize::new(0));
        let counted = commits.clone();
        let gc: GroupCommit<u32, u32> = GroupCommit::start(2, 8, 8, move |batch: Vec<Pending<u32, u32>>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { drop(batch) }
        });
        assert_eq!(gc.submit(1).await, Err(Stopped { taken: true }));
        assert_eq!(commits.load(Ordering::SeqCst), 1);
        drop(gc);
    }
}
