//! What `/readyz` reports beyond the connections: jobs held because Postgres cannot take work
//! (read-only during a failover, disk full, …), and queues of the topology that are missing.
//! Also the delay schedule of every wait for our own infrastructure: nothing loops without one.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use prometheus::{IntGauge, IntGaugeVec};

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
