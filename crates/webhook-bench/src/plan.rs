//! What a run measures and for how long: the full benchmark, or a smoke run of seconds that only
//! proves the machinery works.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One worker measurement: downstream latency per call, `WORKER_CONCURRENCY`, jobs queued.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct WorkerCase {
    pub latency_ms: u64,
    pub concurrency: u16,
    pub jobs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub mode: String,
    /// Concurrency sweep of the floor and the ingest.
    pub levels: Vec<usize>,
    /// Seconds per sweep level (floor and ingest each).
    pub level_secs: f64,
    /// Seconds of ingest load before the sweep (connections and pools warm up; not reported).
    pub warmup_secs: f64,
    /// The fixed-rate run: events per second, seconds, and clients available.
    pub fixed_rate: f64,
    pub fixed_secs: f64,
    pub fixed_clients: usize,
    /// Seconds of quiet between the warm-up and the fixed-rate run.
    #[serde(default)]
    pub settle_secs: f64,
    /// The duplicates run: seconds and concurrency.
    pub duplicate_secs: f64,
    pub duplicate_concurrency: usize,
    pub worker: Vec<WorkerCase>,
    /// Distinct buyers (Keycloak users in the sandbox) the events are spread over.
    pub buyers: usize,
}

impl Plan {
    /// The full benchmark (a few minutes per run).
    pub fn full() -> Self {
        let case = |latency_ms, concurrency, jobs| WorkerCase {
            latency_ms,
            concurrency,
            jobs,
        };
        Self {
            mode: "full".into(),
            levels: vec![1, 8, 32, 128],
            level_secs: 6.0,
            warmup_secs: 2.0,
            fixed_rate: 1000.0,
            fixed_secs: 10.0,
            fixed_clients: 64,
            settle_secs: 3.0,
            duplicate_secs: 5.0,
            duplicate_concurrency: 32,
            worker: vec![
                case(0, 16, 3000),
                case(0, 64, 3000),
                case(50, 1, 20),
                case(50, 16, 240),
                case(50, 64, 960),
            ],
            buyers: 16,
        }
    }

    /// Seconds: every phase once, tiny.
    pub fn smoke() -> Self {
        let case = |latency_ms, concurrency, jobs| WorkerCase {
            latency_ms,
            concurrency,
            jobs,
        };
        Self {
            mode: "smoke".into(),
            levels: vec![1, 8],
            level_secs: 0.5,
            warmup_secs: 0.2,
            fixed_rate: 200.0,
            fixed_secs: 0.5,
            fixed_clients: 16,
            settle_secs: 0.0,
            duplicate_secs: 0.3,
            duplicate_concurrency: 8,
            worker: vec![case(0, 16, 40), case(50, 1, 3), case(50, 8, 16)],
            buyers: 4,
        }
    }

    /// Drops the ingest measurements (the worker cases still fill their queue through it).
    pub fn only_worker(&mut self) {
        self.levels.clear();
        self.warmup_secs = 0.0;
        self.fixed_secs = 0.0;
        self.settle_secs = 0.0;
        self.duplicate_secs = 0.0;
    }

    pub fn level(&self) -> Duration {
        Duration::from_secs_f64(self.level_secs)
    }

    pub fn emails(&self) -> Vec<String> {
        (0..self.buyers)
            .map(|i| format!("buyer{i}@bench.example"))
            .collect()
    }
}
