//! The Postgres store: connection pool, migrations (`/migrations`), and the queries of each
//! component, one module per concern.
//!
//! - [`events`]: the received events (dedupe on the Stripe event id, history, payload for replay).
//! - [`history`]: what operators read and prune (`webhookctl events`, `replay`).
//! - [`ledger`]: the worker's step ledger per business action.
//! - [`audit`]: the audit log.
//! - [`billing`]: the billing state: per subscription its status, plan, account binding,
//!   ordering watermarks, tombstone and lease; per customer its account.
//! - [`pool_metrics`]: the connection pool's gauges for `/metrics`.

pub mod audit;
pub mod billing;
pub mod events;
pub mod fault;
pub mod history;
pub mod ledger;
pub mod pool_metrics;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use webhook_core::settings::DatabaseSettings;

/// The embedded migrations of `/migrations`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// A pool over the configured database.
#[derive(Clone, Debug)]
pub struct Store {
    pub pool: PgPool,
    /// How the pool's commits behave.
    pub commits: Commits,
    /// Connections opened before this instant are closed instead of used (see [`Store::recycle`]).
    recycle_before: Arc<Mutex<Option<Instant>>>,
}

/// When a commit on the pool's connections returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commits {
    /// Once the commit is on disk (`synchronous_commit` as the server has it, normally `on`).
    Durable,
    /// At once; Postgres writes the WAL to disk within a fraction of a second
    /// (`synchronous_commit = off`). A crash of Postgres can lose the last such commits, never
    /// part of one, and never one older than a later durable commit: WAL is flushed in order,
    /// so a durable commit (e.g. [`events::record_outcomes`]) makes every earlier one durable.
    /// The worker's step writes use this; its outcome write, made before the ack, is durable.
    Deferred,
}

impl Store {
    /// Builds the pool without connecting: the binaries start (and report not-ready) while
    /// Postgres is down, and connections are made on demand. Commits are durable.
    pub fn connect_lazy(db: &DatabaseSettings) -> anyhow::Result<Self> {
        Self::connect_lazy_with(db, Commits::Durable)
    }

    /// [`Store::connect_lazy`] with the given commit behaviour.
    pub fn connect_lazy_with(db: &DatabaseSettings, commits: Commits) -> anyhow::Result<Self> {
        let mut options: PgConnectOptions = db
            .url
            .expose_secret()
            .parse()
            .context("DATABASE_URL is not a valid postgres:// URL")?;
        if commits == Commits::Deferred {
            options = options.options([("synchronous_commit", "off")]);
        }
        // No ping before each use of a pooled connection: it would double the round trips of
        // every statement. A connection that died with its server fails its next statement
        // instead, is dropped by the pool, and that failure is handled like Postgres being
        // down (the ingest answers 503, the worker waits and retries).
        let recycle_before: Arc<Mutex<Option<Instant>>> = Arc::default();
        let before = recycle_before.clone();
        let pool = PgPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(db.max_connections)
            .acquire_timeout(Duration::from_secs(db.acquire_timeout_secs))
            .before_acquire(move |_, meta| {
                let recycle = before
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some_and(|at| {
                        Instant::now()
                            .checked_sub(meta.age)
                            .is_some_and(|opened| opened < at)
                    });
                Box::pin(async move { Ok(!recycle) })
            })
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            commits,
            recycle_before,
        })
    }

    /// Replaces every pooled connection opened until now by a new one, as it is next taken
    /// (after a failover, the old ones may still point at the server that became read-only).
    pub fn recycle(&self) {
        *self.recycle_before.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Applies pending migrations. Idempotent; safe to run from several replicas at once
    /// (sqlx takes an advisory lock).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .context("applying database migrations failed (is DATABASE_URL right and Postgres up?)")
    }

    /// True when Postgres answers a trivial query.
    pub async fn is_ready(&self) -> bool {
        tokio_timeout(sqlx::query("SELECT 1").execute(&self.pool)).await
    }
}

async fn tokio_timeout<F, T, E>(f: F) -> bool
where
    F: std::future::Future<Output = Result<T, E>>,
{
    matches!(tokio::time::timeout(Duration::from_secs(2), f).await, Ok(Ok(_)))
}

/// `url` with its database name replaced by `name` (query string kept), e.g. to reach a
/// per-test or per-benchmark database through an administrator URL.
pub fn with_database_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].rfind('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Creates the database named in `url` if it does not exist yet.
pub async fn create_database_if_missing(url: &str) -> anyhow::Result<()> {
    if !Postgres::database_exists(url)
        .await
        .context("cannot reach Postgres to check the database")?
    {
        Postgres::create_database(url)
            .await
            .context("cannot create the database")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            super::with_database_name("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            super::with_database_name("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(
            super::with_database_name("postgres://u@h", "x"),
            "postgres://u@h/x"
        );
    }
}
