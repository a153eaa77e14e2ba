//! A connection pool as Prometheus sees it: `webhook_db_pool_connections{pool, state="idle|in_use"}`
//! and `webhook_db_pool_max_connections{pool}`, read from the pool at each scrape. (sqlx does not say
//! how many tasks wait for a connection; `in_use` at the maximum for long is that signal.)

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, IntGaugeVec, Opts};
use sqlx::PgPool;

pub struct PoolMetrics {
    pool: PgPool,
    connections: IntGaugeVec,
    max: IntGauge,
}

impl PoolMetrics {
    /// `name` tells the process's pools apart (the `pool` label).
    pub fn new(pool: PgPool, name: &str) -> Self {
        let connections = IntGaugeVec::new(
            Opts::new(
                "webhook_db_pool_connections",
                "Postgres connections of the pool, idle or in use",
            )
            .const_label("pool", name),
            &["state"],
        )
        .expect("valid metric");
        let max = IntGauge::with_opts(
            Opts::new(
                "webhook_db_pool_max_connections",
                "The pool's limit of connections",
            )
            .const_label("pool", name),
        )
        .expect("valid metric");
        max.set(i64::from(pool.options().get_max_connections()));
        Self {
            pool,
            connections,
            max,
        }
    }
}

impl Collector for PoolMetrics {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.connections.desc();
        d.extend(self.max.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let size = i64::from(self.pool.size());
        let idle = i64::try_from(self.pool.num_idle()).unwrap_or(i64::MAX).min(size);
        self.connections.with_label_values(&["idle"]).set(idle);
        self.connections.with_label_values(&["in_use"]).set(size - idle);
        let mut families = self.connections.collect();
        families.extend(self.max.collect());
        families
    }
}
