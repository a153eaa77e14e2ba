//! Worker throughput: a queue filled with jobs, the real worker binary started on it, and the
//! completion times Postgres recorded for each job.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::events::EventFactory;

/// One worker measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerOutcome {
    pub latency_ms: u64,
    pub concurrency: u16,
    pub jobs: u64,
    pub succeeded: u64,
    /// Ended otherwise (skipped, retrying, dead-lettered) or not within the deadline.
    pub failed: u64,
    /// Steady-state jobs per second (the middle 80 % of completions).
    pub jobs_per_sec: f64,
    /// For the 50 ms cases: `jobs_per_sec ÷ (concurrency ÷ job latency at concurrency 1)`.
    pub efficiency: Option<f64>,
    pub peak_rss_kib: Option<u64>,
}

/// How long without a single job finishing before the measurement gives up.
const STALL: Duration = Duration::from_secs(20);

/// Waits until every job of `series` is terminal (or `timeout`), then computes the rate.
/// Returns `(succeeded, failed, jobs_per_sec)`.
pub async fn measure(
    pool: &PgPool,
    series: u32,
    jobs: u64,
    timeout: Duration,
) -> anyhow::Result<(u64, u64, f64)> {
    let (first, last) = EventFactory::series_range(series);
    let deadline = Instant::now() + timeout;
    let (mut last_done, mut last_progress) = (0u64, Instant::now());
    let (succeeded, failed) = loop {
        let (succeeded, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'),
                    count(*) FILTER (WHERE status IN ('skipped', 'dead_lettered'))
             FROM webhook_events WHERE event_id BETWEEN $1 AND $2",
        )
        .bind(&first)
        .bind(&last)
        .fetch_one(pool)
        .await?;
        let (succeeded, failed) = (succeeded as u64, failed as u64);
        let done = succeeded + failed;
        if done > last_done {
            (last_done, last_progress) = (done, Instant::now());
        }
        // Jobs that went to a retry tier come back only after its delay: give up on them when
        // nothing has finished for a while, and report them as not succeeded.
        let stalled = last_progress.elapsed() > STALL;
        if done >= jobs || stalled || Instant::now() >= deadline {
            break (succeeded, jobs - succeeded);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let times: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM completed_at)::float8 FROM webhook_events
         WHERE event_id BETWEEN $1 AND $2 AND status = 'succeeded' ORDER BY completed_at",
    )
    .bind(&first)
    .bind(&last)
    .fetch_all(pool)
    .await?;
    Ok((succeeded, failed, steady_rate(&times)))
}

/// Completions per second over the middle 80 % of sorted completion times (the start, when
/// the first `concurrency` jobs finish together, and the tail are left out).
fn steady_rate(times: &[f64]) -> f64 {
    if times.len() < 2 {
        return 0.0;
    }
    let last = times.len() - 1;
    let (mut lo, mut hi) = (
        (last as f64 * 0.1).floor() as usize,
        (last as f64 * 0.9).ceil() as usize,
    );
    if hi <= lo || times[hi] <= times[lo] {
        (lo, hi) = (0, last);
    }
    let span = times[hi] - times[lo];
    if span <= 0.0 { 0.0 } else { (hi - lo) as f64 / span }
}

#[cfg(test)]
mod tests {
    #[test]
    fn steady_rate_ignores_the_edges() {
        let mut times: Vec<f64> = vec![0.0; 10];
        times.extend((1..=90).map(|i| i as f64 * 0.01));
        let rate = super::steady_rate(&times);
        assert!((rate - 100.0).abs() < 1.0, "{rate}");
        assert_eq!(super::steady_rate(&[1.0]), 0.0);
        assert_eq!(super::steady_rate(&[1.0, 2.0]), 1.0);
    }
}
