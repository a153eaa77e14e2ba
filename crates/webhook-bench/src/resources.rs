//! The run's own database and RabbitMQ name prefix, created at the start and removed at the end
//! (the same isolation the integration tests use, so a benchmark never touches real data).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use webhook_amqp::Topology;
use webhook_core::Settings;

use crate::events::SECRET;

/// A superuser connection used to create and drop the run's database
/// (`BENCH_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`).
pub fn admin_database_url() -> String {
    std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// RabbitMQ (`BENCH_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`).
pub fn amqp_url() -> String {
    std::env::var("BENCH_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// One run's isolated resources.
pub struct Resources {
    pub database_name: String,
    pub database_url: String,
    pub prefix: String,
    /// The environment every child process gets (plus its own additions).
    pub env: HashMap<String, String>,
    pub settings: Settings,
}

impl Resources {
    /// Creates and migrates a fresh database and picks a unique RabbitMQ prefix.
    pub async fn create() -> anyhow::Result<Self> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let database_name = format!("webhooks_bench_{id}");
        let admin = admin_database_url();
        let mut conn = PgConnection::connect(&admin)
            .await
            .with_context(|| format!("cannot connect to Postgres at {admin} (make services)"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{database_name}\""
        )))
        .execute(&mut conn)
        .await
        .context("creating the benchmark database")?;
        let _ = conn.close().await;
        let database_url = webhook_store::with_database_name(&admin, &database_name);
        let prefix = format!("bench.{id}.");
        let log = std::env::var("BENCH_LOG").unwrap_or_else(|_| "info,sqlx=warn".into());
        let env: HashMap<String, String> = [
            ("DATABASE_URL", database_url.as_str()),
            ("AMQP_URL", amqp_url().as_str()),
            ("STRIPE_WEBHOOK_SECRET", SECRET),
            ("WEBHOOK__AMQP__NAME_PREFIX", prefix.as_str()),
            ("RUST_LOG", log.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let settings = Settings::load_from(None, &env).context("benchmark settings")?;
        let resources = Self {
            database_name,
            database_url,
            prefix,
            env,
            settings,
        };
        webhook_store::Store::connect_lazy(&resources.settings.database)?
            .migrate()
            .await?;
        Ok(resources)
    }

    /// The queues and exchanges of this run.
    pub fn topology(&self) -> Topology {
        Topology::new(
            &self.settings.amqp,
            &self.settings.worker.retry_schedule,
            &self.settings.stripe.handled_event_types,
        )
    }

    /// Removes this run's queues, exchanges and database.
    pub async fn cleanup(&self) {
        let topo = self.topology();
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            webhook_amqp::Connection::connect(&amqp_url(), "webhook-bench"),
        )
        .await;
        if let Ok(Ok(conn)) = conn {
            webhook_amqp::topology::delete(&conn, &topo).await;
            conn.close("benchmark done").await;
        }
        if let Ok(mut conn) = PgConnection::connect(&admin_database_url()).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.database_name
            )))
            .execute(&mut conn)
            .await;
        }
    }
}
