//! `webhook-worker`: consumes `billing.provisioning` and provisions each paid checkout in
//! Keycloak, Lago and the audit log, exactly once in effect, with retries through broker delay
//! queues and a dead-letter queue with reasons.
//!
//! - [`Application`]: builds everything from [`Settings`] (its view of them,
//!   [`Settings::for_worker`]); `main.rs` hands it to `webhook_core::service::main`.
//!
//! The job path, top to bottom (each module names its step):
//!
//! 1. [`consume`]: the consume loop (acks, concurrency, reconnects, graceful shutdown, holding
//!    jobs while Postgres is unavailable); it runs 2 to 5 for each message;
//! 2. [`job`]: the message decoded into a typed [`job::Job`] (its [`webhook_core::EventType`]
//!    and business action);
//! 3. [`handlers`]: one per event family (checkout, subscription, invoice): what the event asks
//!    of its subscription;
//! 4. [`apply`]: that applied under the subscription's lease: the binding, the ordering, Lago
//!    and Keycloak brought to the state ([`converge`]), the audit row; every effect through the
//!    step ledger ([`ledger`]);
//! 5. [`settle`]: ack, retry tier or dead-letter queue, each once its outcome is durable
//!    ([`outcomes`]).
//!
//! Beside it: [`ordering`] (which event is newer, the account binding, and the per-subscription
//! [`ordering::lease`]), [`entitlement`] (what a subscription grants), [`stripe`] and [`plans`]
//! (the Stripe objects and the plan map), `webhook_clients` (the typed Keycloak, Lago and Stripe clients, their own crate),
//! [`failure`] and [`step`] (how a job fails, and where), [`health`], [`routes`] and [`metrics`].

pub mod apply;
pub mod consume;
pub mod context;
pub mod converge;
pub mod failure;
pub mod handlers;
pub mod health;
pub mod job;
pub mod ledger;
pub mod metrics;
pub mod ordering;
pub mod outcomes;
pub mod routes;
pub mod settle;
pub mod step;

/// The pure billing rules, in their own crate (`webhook-billing`); `webhookctl reconcile` reads
/// them too.
pub use webhook_billing::{entitlement, plans, stripe};

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tokio::sync::watch;
use webhook_amqp::{Broker, BrokerConfig};
use webhook_core::Settings;
use webhook_store::{Commits, Store};

use crate::context::WorkerContext;
use crate::entitlement::Entitlements;
use crate::metrics::Metrics;
use crate::outcomes::OutcomeWriter;
use crate::plans::PlanMap;
use webhook_clients::{InlineRetry, KeycloakClient, LagoClient};
use webhook_store::pool_metrics::PoolMetrics;

/// Outcome writers (group commit): two, so that one batch collects while the other waits for
/// the disk.
const OUTCOME_WRITERS: u32 = 2;

/// Stops a running worker gracefully (what SIGTERM does).
#[derive(Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

pub struct Application {
    port: u16,
    server: Server,
    ctx: Arc<WorkerContext>,
    concurrency: u16,
    drain_timeout: Duration,
    shutdown: Arc<watch::Sender<bool>>,
}

impl Application {
    /// Takes the worker's view of the settings (a missing or malformed one stops it here),
    /// migrates (if enabled), starts the broker supervisor and binds the health endpoints.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let config = settings.for_worker()?;
        let metrics = Metrics::new();
        let http = reqwest::Client::builder()
            .timeout(config.keycloak_timeout.max(config.lago_timeout))
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(usize::from(config.concurrency.get()).max(4))
            .build()
            .context("building the HTTP client")?;
        let keycloak =
            KeycloakClient::new(&settings.keycloak, http.clone(), Some(metrics.downstream.clone()))?;
        let lago = LagoClient::new(&settings.lago, http, Some(metrics.downstream.clone()))?;
        let database = settings.database.clone();
        // Step writes commit without waiting for the disk; the outcome write before each ack is
        // durable, and with it everything the job wrote (see `webhook_store::Commits`). The two
        // pools share database.max_connections: one connection per outcome writer (each writes
        // the outcomes of every job waiting in one statement, which waits for the disk), the
        // rest for the steps.
        let outcome_connections = OUTCOME_WRITERS.min(database.max_connections / 2).max(1);
        let mut steps_db = database.clone();
        steps_db.max_connections = database
            .max_connections
            .saturating_sub(outcome_connections)
            .max(1);
        let mut outcomes_db = database.clone();
        outcomes_db.max_connections = outcome_connections;
        let store = Store::connect_lazy_with(&steps_db, Commits::Deferred)?;
        let outcomes = Store::connect_lazy_with(&outcomes_db, Commits::Durable)?;
        for (pool, name) in [(&store.pool, "steps"), (&outcomes.pool, "outcomes")] {
            metrics
                .registry
                .register(Box::new(PoolMetrics::new(pool.clone(), name)))?;
        }
        if settings.database.migrate_on_start {
            outcomes.migrate().await?;
        }
        let broker = Broker::start(BrokerConfig::from_settings(&settings, "webhook-worker")?);
        if let Some(a) = &config.status_attribute {
            // The series exists from the start (at 0), so that a rate over it is defined.
            metrics.attribute_dropped.with_label_values(&[a]).inc_by(0);
        }
        let inline_retry = InlineRetry {
            times: config.inline_retries,
            min_delay: config.inline_retry_min,
            max_delay: config.inline_retry_max,
        };
        let stripe = match &config.stripe_api {
            Some(api) => Some(
                webhook_clients::StripeClient::new(api, inline_retry, Some(metrics.downstream.clone()))
                    .context("building the Stripe API client")?,
            ),
            None => None,
        };
        let ctx = Arc::new(WorkerContext {
            store,
            outcomes: OutcomeWriter::start(
                outcomes,
                outcome_connections as usize,
                metrics.outcome_batch_size.clone(),
            ),
            broker,
            keycloak,
            lago,
            stripe,
            refetch: config.refetch,
            plans: PlanMap::new(&settings.plans)?,
            livemode: settings.stripe.livemode,
            entitlements: Entitlements::new(&settings.plans)?,
            retry_delays: config.retry_schedule.to_vec(),
            inline_retry,
            lease: ordering::lease::LeaseTiming::new(config.lease.as_secs()),
            health: health::Health::new(metrics.jobs_held.clone(), metrics.queue_missing.clone()),
            metrics,
            tier_attribute: config.tier_attribute,
            status_attribute: config.status_attribute,
        });
        let listener = TcpListener::bind(config.bind)
            .with_context(|| format!("cannot listen on WORKER_BIND={}", config.bind))?;
        let port = listener.local_addr()?.port();
        let data = web::Data::new(ctx.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/healthz", web::get().to(routes::healthz))
                .route("/readyz", web::get().to(routes::readyz))
                .route("/metrics", web::get().to(routes::metrics))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let (tx, _) = watch::channel(false);
        Ok(Self {
            port,
            server,
            ctx,
            concurrency: config.concurrency.get(),
            drain_timeout: config.shutdown_timeout,
            shutdown: Arc::new(tx),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Consumes until SIGTERM, Ctrl-C or the [`ShutdownHandle`]; then stops consuming, lets
    /// in-flight jobs finish (up to the shutdown timeout) and closes the connection.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let server_handle = self.server.handle();
        let server = tokio::spawn(self.server);
        let sampler = tokio::spawn(health::sample_queue_depths(
            self.ctx.broker.clone(),
            self.ctx.health.clone(),
            self.ctx.metrics.queue_depth.clone(),
            Duration::from_secs(5),
        ));
        let consumer = tokio::spawn(consume::run(
            self.ctx.clone(),
            self.concurrency,
            self.shutdown.subscribe(),
            self.drain_timeout,
        ));
        let mut stop = self.shutdown.subscribe();
        tokio::select! {
            _ = webhook_core::shutdown_signal() => tracing::info!("shutdown signal received; finishing in-flight jobs"),
            _ = stop.wait_for(|s| *s) => tracing::info!("shutdown requested; finishing in-flight jobs"),
        }
        self.shutdown.send_replace(true);
        let _ = consumer.await;
        sampler.abort();
        self.ctx.broker.close().await;
        server_handle.stop(true).await;
        let _ = server.await;
        tracing::info!("webhook-worker stopped");
        Ok(())
    }
}
