//! Metrics of the downstream calls, shared by every client: the server's registry registers
//! them (the worker's `/metrics`); a command-line tool passes none.

use std::time::Duration;

use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};

/// Downstream calls by service, operation and HTTP status (`error` when there was no answer).
#[derive(Clone)]
pub struct DownstreamMetrics {
    pub calls: IntCounterVec,
    pub duration: HistogramVec,
    /// `webhook_dependency_up` (shared with `webhook_core::metrics::CommonMetrics`): set by every call's answer.
    pub up: IntGaugeVec,
    /// When each service was last called: a service not called for a while has no
    /// `webhook_dependency_up` series rather than a stale one (see [`Self::forget_quiet`]).
    pub last_call: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
}

impl DownstreamMetrics {
    pub fn observe(&self, service: &str, operation: &str, status: Option<u16>, took: Duration) {
        // Up while the service answers and takes our credentials: no answer, a server error or
        // a refused credential (401, 403) is down.
        let usable = matches!(status, Some(code) if code < 500 && code != 401 && code != 403);
        self.up.with_label_values(&[service]).set(i64::from(usable));
        if let Ok(mut last) = self.last_call.lock() {
            last.insert(service.to_owned(), std::time::Instant::now());
        }
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.calls.with_label_values(&[service, operation, &status]).inc();
        self.duration
            .with_label_values(&[service, operation])
            .observe(took.as_secs_f64());
    }
}

impl DownstreamMetrics {
    /// Drops the `webhook_dependency_up` series of services not called for `quiet`: the answer
    /// of a call long ago says nothing about now (a job that failed before a quiet night must
    /// not page all night).
    pub fn forget_quiet(&self, quiet: std::time::Duration) {
        if let Ok(last) = self.last_call.lock() {
            for (service, at) in last.iter() {
                if at.elapsed() > quiet {
                    let _ = self.up.remove_label_values(&[service]);
                }
            }
        }
    }
}
