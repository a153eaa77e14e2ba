//! The subscription lease: the jobs of one Stripe subscription take turns across all workers.
//!
//! Each delivery attempt takes the lease with a token of its own (two copies of one event, or an
//! old job still running after a reconnect, never hold it together), renews it while it runs,
//! and every write of the subscription's record and the action's finish is fenced by the token
//! (see [`webhook_store::billing`]). A crashed holder's lease expires after `worker.lease_secs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;
use webhook_store::billing::{self, SubscriptionRecord};
use webhook_store::ledger::Fence;

use crate::failure::{Failure, JobError};
use crate::step::Step;

/// How long a lease lasts without renewal (`worker.lease_secs`), how often a running job
/// renews it (a third of that), and how long a job waits for it before it goes to the retry
/// tier: longer than a lease lasts, so that the lease of a crashed holder expires while its
/// redelivery waits, without spending a retry.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    pub lasts: Duration,
    pub renew_every: Duration,
    pub wait: Duration,
}

impl LeaseTiming {
    pub fn new(lease_secs: u64) -> Self {
        let lasts = Duration::from_secs(lease_secs.max(1));
        Self {
            lasts,
            renew_every: lasts / 3,
            wait: lasts + Duration::from_secs(5),
        }
    }
}

/// A held lease; renewed in the background until [`Lease::release`] (or drop).
pub struct Lease {
    pool: PgPool,
    pub subscription_id: String,
    token: Uuid,
    lost: Arc<AtomicBool>,
    /// When the lease was last taken or renewed (milliseconds since `started`).
    renewed_ms: Arc<AtomicU64>,
    started: Instant,
    timing: LeaseTiming,
    renewer: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Waits (up to `timing.wait`) for the subscription's lease; returns it with the record as
    /// it is under the lease.
    pub async fn acquire(
        pool: &PgPool,
        timing: LeaseTiming,
        subscription_id: &str,
    ) -> Result<(Lease, SubscriptionRecord), JobError> {
        let pool = pool.clone();
        let token = Uuid::new_v4();
        let waited_until = Instant::now() + timing.wait;
        let record = loop {
            if let Some(record) =
                billing::try_lease(&pool, subscription_id, token, timing.lasts.as_secs_f64()).await?
            {
                break record;
            }
            if Instant::now() >= waited_until {
                return Err(Failure::contention(
                    Step::SubscriptionLease,
                    format!("another event of subscription {subscription_id} is being processed (retrying)"),
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let lost = Arc::new(AtomicBool::new(false));
        let renewed_ms = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let renewer = tokio::spawn(renew(
            pool.clone(),
            subscription_id.to_owned(),
            token,
            timing,
            lost.clone(),
            (started, renewed_ms.clone()),
        ));
        Ok((
            Lease {
                pool,
                subscription_id: subscription_id.to_owned(),
                token,
                lost,
                renewed_ms,
                started,
                timing,
                renewer,
            },
            record,
        ))
    }

    /// The fence of writes made under this lease.
    pub fn fence(&self) -> Fence<'_> {
        Fence {
            subscription_id: &self.subscription_id,
            token: self.token,
        }
    }

    /// Fails when the lease was lost (another attempt holds it now), or when it was not renewed
    /// for two thirds of its length (two renewals missed: Postgres unreachable, the lease may
    /// expire while the next call runs): check before every downstream write.
    pub fn check(&self) -> Result<(), JobError> {
        let renewed = Duration::from_millis(self.renewed_ms.load(Ordering::Acquire));
        let since = self.started.elapsed().saturating_sub(renewed);
        if self.lost.load(Ordering::Acquire) || since > self.timing.lasts * 2 / 3 {
            return Err(lost(&self.subscription_id));
        }
        Ok(())
    }

    /// Writes the record, fenced by the lease.
    pub async fn save(&self, record: &SubscriptionRecord) -> Result<(), JobError> {
        if billing::save(&self.pool, self.token, record).await? {
            Ok(())
        } else {
            self.lost.store(true, Ordering::Release);
            Err(lost(&self.subscription_id))
        }
    }

    /// Gives the lease back. A failed release only delays the next job of the subscription
    /// until the lease expires.
    pub async fn release(self) {
        self.renewer.abort();
        if let Err(e) = billing::release_lease(&self.pool, &self.subscription_id, self.token).await {
            tracing::warn!(subscription = %self.subscription_id, error = %e, "could not release the lease; it expires by itself");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

pub(crate) fn lost(subscription_id: &str) -> JobError {
    Failure::contention(
        Step::SubscriptionLease,
        format!(
            "this attempt lost (or could not renew) its lease on subscription {subscription_id}; it stopped before \
             its next write, and the retry brings Lago and Keycloak to the state (retrying)"
        ),
    )
    .into()
}

async fn renew(
    pool: PgPool,
    subscription_id: String,
    token: Uuid,
    timing: LeaseTiming,
    lost: Arc<AtomicBool>,
    (started, renewed_ms): (Instant, Arc<AtomicU64>),
) {
    loop {
        tokio::time::sleep(timing.renew_every).await;
        let asked = started.elapsed();
        match billing::renew_lease(&pool, &subscription_id, token, timing.lasts.as_secs_f64()).await {
            Ok(true) => renewed_ms.store(asked.as_millis() as u64, Ordering::Release),
            Ok(false) => {
                lost.store(true, Ordering::Release);
                return;
            }
            // The next renewal tries again; the fenced writes fail by themselves if it expires.
            Err(e) => {
                tracing::warn!(subscription = %subscription_id, error = %e, "could not renew the lease")
            }
        }
    }
}
