//! The metrics every server exports beside its own: `webhook_build_info`,
//! `webhook_dependency_up`, and the process's CPU, memory, threads and file descriptors
//! (`process_*`, Linux). Each binary registers them into its own registry (no global state).

use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};

/// The commit the binary was built from: `WEBHOOK_BUILD_COMMIT` at compile time (the Dockerfile
/// passes it as a build argument), else `unknown`.
pub const BUILD_COMMIT: &str = match option_env!("WEBHOOK_BUILD_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// The names `webhook_dependency_up` uses.
pub mod dependency {
    pub const POSTGRES: &str = "postgres";
    pub const RABBITMQ: &str = "rabbitmq";
    pub const KEYCLOAK: &str = "keycloak";
    pub const LAGO: &str = "lago";
}

/// Handles to the shared metrics a binary sets.
#[derive(Clone)]
pub struct CommonMetrics {
    /// 1 while the process can reach the dependency, 0 while it cannot.
    pub dependency_up: IntGaugeVec,
}

impl CommonMetrics {
    /// Registers the shared metrics into `registry`; `component` is `ingest` or `worker`.
    pub fn register(registry: &Registry, component: &str) -> Self {
        let build_info = IntGauge::with_opts(
            Opts::new(
                "webhook_build_info",
                "Always 1; the labels say which build runs (version, commit, component)",
            )
            .const_label("version", env!("CARGO_PKG_VERSION"))
            .const_label("commit", BUILD_COMMIT)
            .const_label("component", component),
        )
        .expect("valid metric");
        build_info.set(1);
        let dependency_up = IntGaugeVec::new(
            Opts::new(
                "webhook_dependency_up",
                "1 while the process reaches the dependency, 0 while it cannot (postgres and \
                 rabbitmq checked at each scrape; keycloak and lago: the latest call, within 5 \
                 minutes, got an answer other than 5xx, 401 or 403)",
            ),
            &["dependency"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(build_info))
            .expect("metric registered once");
        registry
            .register(Box::new(dependency_up.clone()))
            .expect("metric registered once");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric registered once");
        Self { dependency_up }
    }

    pub fn set_up(&self, dependency: &str, up: bool) {
        self.dependency_up
            .with_label_values(&[dependency])
            .set(i64::from(up));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_exports_build_info_dependencies_and_process_metrics() {
        let registry = Registry::new();
        let common = CommonMetrics::register(&registry, "worker");
        common.set_up(dependency::POSTGRES, false);
        common.set_up(dependency::RABBITMQ, true);
        let families = registry.gather();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        assert!(names.contains(&"webhook_build_info"), "{names:?}");
        #[cfg(target_os = "linux")]
        assert!(names.contains(&"process_resident_memory_bytes"), "{names:?}");
        let up = families
            .iter()
            .find(|f| f.name() == "webhook_dependency_up")
            .expect("dependency family");
        let values: Vec<(String, f64)> = up
            .get_metric()
            .iter()
            .map(|m| (m.get_label()[0].value().to_owned(), m.get_gauge().get_value()))
            .collect();
        assert_eq!(
            values,
            vec![("postgres".to_owned(), 0.0), ("rabbitmq".to_owned(), 1.0)]
        );
        let info = families
            .iter()
            .find(|f| f.name() == "webhook_build_info")
            .unwrap();
        let labels: Vec<(&str, &str)> = info.get_metric()[0]
            .get_label()
            .iter()
            .map(|l| (l.name(), l.value()))
            .collect();
        assert!(labels.contains(&("component", "worker")), "{labels:?}");
        assert!(
            labels.contains(&("version", env!("CARGO_PKG_VERSION"))),
            "{labels:?}"
        );
    }
}
