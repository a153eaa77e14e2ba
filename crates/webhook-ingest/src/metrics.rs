//! Prometheus metrics of the ingest (`GET /metrics`).

use webhook_core::metrics::CommonMetrics;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Every metric the ingest exports, registered in its own registry (no global state, so several
/// `Application`s can run in one test process).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Requests by outcome: accepted, duplicate, ignored, or the error code.
    pub requests: IntCounterVec,
    /// End-to-end request latency by outcome.
    pub request_duration: HistogramVec,
    /// Time from publish to confirm.
    pub publish_duration: HistogramVec,
    /// 1 while the broker link is up.
    pub broker_connected: IntGauge,
    /// Events per group commit (one transaction, confirms awaited together).
    pub commit_batch_size: Histogram,
    /// Verified events waiting for a free writer.
    pub commit_waiting: IntGauge,
    /// Build info, `webhook_dependency_up`, process metrics.
    pub common: CommonMetrics,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("webhook_ingest_requests_total", "Webhook requests by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "webhook_ingest_request_duration_seconds",
                "Webhook request latency",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["outcome"],
        )
        .expect("valid metric");
        let publish_duration = HistogramVec::new(
            HistogramOpts::new(
                "webhook_ingest_publish_duration_seconds",
                "Time to get the publisher confirm from RabbitMQ",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["result"],
        )
        .expect("valid metric");
        let broker_connected = IntGauge::new(
            "webhook_ingest_broker_connected",
            "1 while the RabbitMQ connection is up",
        )
        .expect("valid metric");
        let commit_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "webhook_ingest_commit_batch_size",
                "Events recorded and queued per transaction (group commit of concurrent requests)",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
        )
        .expect("valid metric");
        let commit_waiting = IntGauge::new(
            "webhook_ingest_commit_waiting",
            "Verified events waiting for a free group-commit writer",
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(publish_duration.clone()),
            Box::new(broker_connected.clone()),
            Box::new(commit_batch_size.clone()),
            Box::new(commit_waiting.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        let common = CommonMetrics::register(&registry, "ingest");
        Self {
            registry,
            common,
            requests,
            request_duration,
            publish_duration,
            broker_connected,
            commit_batch_size,
            commit_waiting,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
