//! Prometheus metrics of the worker (`GET /metrics` on `WORKER_BIND`).

use webhook_clients::DownstreamMetrics;
use webhook_core::metrics::CommonMetrics;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Jobs by event type and outcome (succeeded, skipped, retry_scheduled, dead_lettered, requeued).
    pub jobs: IntCounterVec,
    pub job_duration: HistogramVec,
    /// Duration of each provisioning step that ran (steps found done in the ledger are not timed).
    pub step_duration: HistogramVec,
    pub downstream: DownstreamMetrics,
    /// Messages ready in the work, retry and dead-letter queues (sampled).
    pub queue_depth: IntGaugeVec,
    pub in_flight: IntGauge,
    pub broker_connected: IntGauge,
    /// Outcomes per durable write (group commit of the jobs that finish together).
    pub outcome_batch_size: Histogram,
    /// Optional attributes Keycloak accepted but did not store (undeclared in the user profile).
    pub attribute_dropped: IntCounterVec,
    /// Syncs that found the subscription's Keycloak account deleted.
    pub accounts_missing: IntCounter,
    /// Messages held (unacked) because Postgres cannot take work.
    pub jobs_held: IntGauge,
    /// Build info, `webhook_dependency_up`, process metrics.
    pub common: CommonMetrics,
    /// 1 for each queue of the topology that does not exist (sampled).
    pub queue_missing: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let jobs = IntCounterVec::new(
            Opts::new("webhook_worker_jobs_total", "Jobs by event type and outcome"),
            &["event_type", "outcome"],
        )
        .unwrap();
        let job_duration = HistogramVec::new(
            HistogramOpts::new("webhook_worker_job_duration_seconds", "Time to process one job")
                .buckets(BUCKETS.into()),
            &["event_type"],
        )
        .unwrap();
        let step_duration = HistogramVec::new(
            HistogramOpts::new(
                "webhook_worker_step_duration_seconds",
                "Time of one provisioning step",
            )
            .buckets(BUCKETS.into()),
            &["step"],
        )
        .unwrap();
        let calls = IntCounterVec::new(
            Opts::new(
                "webhook_worker_downstream_requests_total",
                "Downstream HTTP calls by service and status",
            ),
            &["service", "operation", "status"],
        )
        .unwrap();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "webhook_worker_downstream_duration_seconds",
                "Downstream HTTP call latency",
            )
            .buckets(BUCKETS.into()),
            &["service", "operation"],
        )
        .unwrap();
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "webhook_worker_queue_depth",
                "Messages ready in each queue of the topology",
            ),
            &["queue"],
        )
        .unwrap();
        let in_flight = IntGauge::new("webhook_worker_jobs_in_flight", "Jobs being processed now").unwrap();
        let broker_connected = IntGauge::new(
            "webhook_worker_broker_connected",
            "1 while the RabbitMQ connection is up",
        )
        .unwrap();
        let outcome_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "webhook_worker_outcome_batch_size",
                "Job outcomes recorded per durable write (group commit of the jobs that finish together)",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )
        .unwrap();
        let attribute_dropped = IntCounterVec::new(
            Opts::new(
                "webhook_worker_keycloak_attribute_dropped_total",
                "Optional Keycloak attributes the realm did not store (declare them in the user profile)",
            ),
            &["attribute"],
        )
        .unwrap();
        let accounts_missing = IntCounter::new(
            "webhook_worker_keycloak_accounts_missing_total",
            "Keycloak accounts of subscriptions that no longer exist (recorded, not retried)",
        )
        .unwrap();
        let jobs_held = IntGauge::new(
            "webhook_worker_jobs_held",
            "Messages held because Postgres cannot take work (down, read-only, disk full, …)",
        )
        .unwrap();
        let queue_missing = IntGaugeVec::new(
            Opts::new(
                "webhook_worker_queue_missing",
                "1 when a queue of the topology does not exist (declare it: webhookctl setup)",
            ),
            &["queue"],
        )
        .unwrap();
        let common = CommonMetrics::register(&registry, "worker");
        let downstream = DownstreamMetrics {
            calls,
            duration,
            up: common.dependency_up.clone(),
            last_call: Default::default(),
        };
        for c in [
            Box::new(jobs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(job_duration.clone()),
            Box::new(step_duration.clone()),
            Box::new(downstream.calls.clone()),
            Box::new(downstream.duration.clone()),
            Box::new(queue_depth.clone()),
            Box::new(in_flight.clone()),
            Box::new(broker_connected.clone()),
            Box::new(outcome_batch_size.clone()),
            Box::new(attribute_dropped.clone()),
            Box::new(accounts_missing.clone()),
            Box::new(jobs_held.clone()),
            Box::new(queue_missing.clone()),
        ] {
            registry.register(c).unwrap();
        }
        Self {
            registry,
            jobs,
            job_duration,
            step_duration,
            downstream,
            queue_depth,
            in_flight,
            broker_connected,
            outcome_batch_size,
            attribute_dropped,
            accounts_missing,
            jobs_held,
            queue_missing,
            common,
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

#[cfg(test)]
mod dependency_tests {
    use super::*;

    fn up(m: &Metrics, service: &str) -> Option<i64> {
        m.registry
            .gather()
            .iter()
            .find(|f| f.name() == "webhook_dependency_up")?
            .get_metric()
            .iter()
            .find(|x| x.get_label()[0].value() == service)
            .map(|x| x.get_gauge().get_value() as i64)
    }

    #[test]
    fn a_downstream_is_up_while_it_answers_usably_and_forgotten_when_quiet() {
        use std::time::Duration;
        let m = Metrics::new();
        let d = &m.downstream;
        assert_eq!(up(&m, "lago"), None, "no call yet, no claim");
        d.observe("lago", "create_customer", Some(200), Duration::ZERO);
        assert_eq!(up(&m, "lago"), Some(1));
        d.observe("lago", "create_customer", Some(422), Duration::ZERO);
        assert_eq!(up(&m, "lago"), Some(1), "a 4xx about the request is an answer");
        for down in [Some(503), Some(500), Some(401), Some(403), None] {
            d.observe("lago", "create_customer", down, Duration::ZERO);
            assert_eq!(up(&m, "lago"), Some(0), "{down:?}");
        }
        d.observe("keycloak", "token", Some(200), Duration::ZERO);
        d.forget_quiet(Duration::from_secs(60));
        assert_eq!(up(&m, "lago"), Some(0), "called a moment ago: kept");
        d.forget_quiet(Duration::ZERO);
        assert_eq!(up(&m, "lago"), None, "quiet: no stale answer left");
        assert_eq!(up(&m, "keycloak"), None);
    }
}
