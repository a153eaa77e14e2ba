//! What `/readyz` reports beyond the connections: jobs held because Postgres cannot take work
//! (read-only during a failover, disk full, …), and queues of the topology that are missing.
//! Also the delay schedule of every wait for our own infrastructure (nothing loops without one),
//! and the sampler that finds the queue depths and the missing queues.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use prometheus::{IntGauge, IntGaugeVec};
use tokio::sync::watch;
use webhook_amqp::Broker;
use webhook_store::Store;

use crate::failure::Unavailable;

/// First and largest delay of a hold (jitter adds up to as much again).
pub const HOLD_MIN: Duration = Duration::from_millis(200);
pub const HOLD_MAX: Duration = Duration::from_secs(15);

/// The delays of waiting for our own infrastructure: from [`HOLD_MIN`], doubling, up to
/// [`HOLD_MAX`], with jitter, for as long as it takes.
pub fn backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(HOLD_MIN)
        .with_max_delay(HOLD_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Shared readiness state.
pub struct Health {
    held: AtomicI64,
    held_gauge: IntGauge,
    reason: Mutex<Option<String>>,
    missing: Mutex<Vec<String>>,
    missing_gauge: IntGaugeVec,
}

impl Health {
    pub fn new(held_gauge: IntGauge, missing_gauge: IntGaugeVec) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicI64::new(0),
            held_gauge,
            reason: Mutex::new(None),
            missing: Mutex::new(Vec::new()),
            missing_gauge,
        })
    }

    /// Why jobs are held now, if any is.
    pub fn held_because(&self) -> Option<String> {
        if self.held.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.reason.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Queues of the topology the last sample found missing.
    pub fn missing_queues(&self) -> Vec<String> {
        self.missing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The sampler's finding: every queue with whether it exists.
    pub fn set_queues(&self, queues: &[(String, bool)]) {
        let mut missing = self.missing.lock().unwrap_or_else(PoisonError::into_inner);
        missing.clear();
        for (queue, exists) in queues {
            self.missing_gauge
                .with_label_values(&[queue])
                .set(i64::from(!exists));
            if !exists {
                missing.push(queue.clone());
            }
        }
    }
}

/// One job's hold: counted in [`Health`] from its first wait until it is dropped.
pub struct Hold {
    health: Arc<Health>,
    delays: ExponentialBackoff,
    counted: bool,
}

impl Hold {
    pub fn new(health: Arc<Health>) -> Self {
        Self {
            health,
            delays: backoff(),
            counted: false,
        }
    }

    /// Whether this is the hold's first wait (e.g. to recycle connections once, not every time).
    pub fn is_first(&self) -> bool {
        !self.counted
    }

    /// Records why the job is held and returns how long to wait before trying again.
    pub fn wait(&mut self, why: &Unavailable) -> Duration {
        *self.health.reason.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.reason.clone());
        if !self.counted {
            self.counted = true;
            self.health.held.fetch_add(1, Ordering::AcqRel);
            self.health.held_gauge.inc();
        }
        self.delays.next().unwrap_or(HOLD_MAX)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.counted {
            self.health.held.fetch_sub(1, Ordering::AcqRel);
            self.health.held_gauge.dec();
        }
    }
}

/// Polls Postgres until it answers; false if shutdown came first.
pub async fn wait_for_store(store: &Store, shutdown: &mut watch::Receiver<bool>) -> bool {
    loop {
        if *shutdown.borrow() {
            return false;
        }
        if store.is_ready().await {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Samples the depth of every queue of the topology every `every` (passive declares), and
/// which of them are missing (for `/readyz` and `webhook_worker_queue_missing`).
pub async fn sample_queue_depths(
    broker: Broker,
    health: Arc<Health>,
    depths_gauge: IntGaugeVec,
    every: Duration,
) {
    loop {
        if let Some(link) = broker.current() {
            // Sample the whole round first, then publish it: a scrape never sees half a round.
            let mut depths = Vec::new();
            let mut exists = Vec::new();
            let mut channel = None;
            for queue in broker.topology().all_queues() {
                if channel.is_none() {
                    channel = link.connection.open_channel().await.ok();
                }
                let Some(ch) = &channel else { break };
                match ch.queue_depth(queue).await {
                    Ok(n) => {
                        depths.push((queue, i64::from(n)));
                        exists.push((queue.to_owned(), true));
                    }
                    // A missing queue closes the channel: the next queue gets a new one.
                    Err(e) if e.is_not_found() => {
                        exists.push((queue.to_owned(), false));
                        channel = None;
                    }
                    Err(_) => break,
                }
            }
            for (queue, depth) in depths {
                depths_gauge.with_label_values(&[queue]).set(depth);
            }
            // Only a complete round says which queues are missing.
            if exists.len() == broker.topology().all_queues().len() {
                health.set_queues(&exists);
            }
            if let Some(ch) = channel {
                ch.close("sampled").await;
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn health() -> Arc<Health> {
        Health::new(
            IntGauge::new("held", "held").unwrap(),
            IntGaugeVec::new(Opts::new("missing", "missing"), &["queue"]).unwrap(),
        )
    }

    fn why(reason: &str) -> Unavailable {
        Unavailable::because(reason, false)
    }

    #[test]
    fn a_hold_is_reported_from_its_first_wait_until_it_ends() {
        let h = health();
        assert_eq!(h.held_because(), None);
        let mut one = Hold::new(h.clone());
        assert!(one.is_first());
        assert_eq!(h.held_because(), None, "not held before the first wait");
        let first = one.wait(&why("read-only (SQLSTATE 25006)"));
        assert!((HOLD_MIN..=2 * HOLD_MIN).contains(&first), "{first:?}");
        assert!(!one.is_first());
        assert_eq!(h.held_because().as_deref(), Some("read-only (SQLSTATE 25006)"));
        assert_eq!(h.held_gauge.get(), 1);
        one.wait(&why("disk full"));
        assert_eq!(
            h.held_gauge.get(),
            1,
            "one job counts once however often it waits"
        );
        let mut two = Hold::new(h.clone());
        two.wait(&why("disk full"));
        assert_eq!(h.held_gauge.get(), 2);
        drop(one);
        assert_eq!(h.held_because().as_deref(), Some("disk full"), "still one held");
        drop(two);
        assert_eq!(h.held_because(), None);
        assert_eq!(h.held_gauge.get(), 0);
        // A hold that never waited was never counted.
        drop(Hold::new(h.clone()));
        assert_eq!(h.held_gauge.get(), 0);
    }

    #[test]
    fn waits_for_our_infrastructure_grow_to_the_cap_and_never_end() {
        let delays: Vec<Duration> = backoff().take(40).collect();
        assert_eq!(delays.len(), 40, "no limit on the number of waits");
        assert!((HOLD_MIN..=2 * HOLD_MIN).contains(&delays[0]), "{:?}", delays[0]);
        assert!(delays.iter().all(|d| *d <= 2 * HOLD_MAX), "{delays:?}");
        assert!(delays[30] >= HOLD_MAX, "{delays:?}");
    }

    #[test]
    fn missing_queues_follow_the_last_sample() {
        let h = health();
        assert!(h.missing_queues().is_empty());
        h.set_queues(&[("work".into(), true), ("retry.5s".into(), false)]);
        assert_eq!(h.missing_queues(), ["retry.5s"]);
        assert_eq!(h.missing_gauge.with_label_values(&["retry.5s"]).get(), 1);
        assert_eq!(h.missing_gauge.with_label_values(&["work"]).get(), 0);
        h.set_queues(&[("work".into(), true), ("retry.5s".into(), true)]);
        assert!(h.missing_queues().is_empty());
        assert_eq!(h.missing_gauge.with_label_values(&["retry.5s"]).get(), 0);
    }
}
