//! `webhook-ingest`: receives Stripe webhooks, verifies them, dedupes them on the event id in
//! Postgres and queues them on RabbitMQ with publisher confirms, in milliseconds.
//!
//! - [`Application`]: builds the server from [`Settings`] (its view of them,
//!   [`Settings::for_ingest`]); `main.rs` hands it to `webhook_core::service::main`.
//! - [`routes::webhook`]: the webhook endpoint (verify → parse → record + publish → answer).
//! - [`routes::health`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`group_commit`]: the events of concurrent requests recorded and queued together.
//! - [`error`]: the HTTP errors ([`error::ApiError`]).
//! - [`metrics`]: the Prometheus metrics.

pub mod error;
pub mod group_commit;
pub mod metrics;
pub mod routes;

use std::collections::HashSet;
use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use webhook_amqp::{Broker, BrokerConfig};
use webhook_core::redact;
use webhook_core::settings::Livemode;
use webhook_core::{EventType, Settings, SignatureVerifier};
use webhook_store::Store;

use crate::group_commit::{Backend, GroupCommit};
use crate::metrics::Metrics;
use webhook_store::pool_metrics::PoolMetrics;

/// Header bytes above which a request is refused with a JSON 400 (a real Stripe request has
/// about 1 KiB). Heads above 128 KiB are cut off earlier by the HTTP layer with a bare 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Shared by all request handlers.
pub struct AppState {
    pub verifier: SignatureVerifier,
    /// Records and queues verified events (group commit).
    pub queue: GroupCommit,
    pub store: Store,
    pub broker: Broker,
    pub metrics: Metrics,
    pub handled_event_types: HashSet<EventType>,
    /// Which Stripe mode's events are queued; the others are stored as ignored.
    pub livemode: Livemode,
    pub body_limit: usize,
    pub body_timeout: Duration,
    pub max_header_bytes: usize,
    pub retry_after_secs: u64,
}

/// A built, bound, not yet running ingest server.
pub struct Application {
    port: u16,
    server: Server,
    broker: Broker,
}

impl Application {
    /// Takes the ingest's view of the settings (a missing or malformed one stops it here),
    /// migrates (if enabled), starts the broker supervisor and binds. The broker may still be
    /// down when this returns: requests get 503 until it is up.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let config = settings.for_ingest()?;
        tracing::info!(
            database = %redact::secret_url(&settings.database.url),
            rabbitmq = %redact::secret_url(&settings.amqp.url),
            livemode = config.livemode.as_str(),
            "webhook-ingest starting"
        );
        let verifier = SignatureVerifier::new(config.secrets, config.tolerance.as_secs());
        let store = Store::connect_lazy(&settings.database)?;
        if settings.database.migrate_on_start {
            store.migrate().await?;
        }
        let broker = Broker::start(BrokerConfig::from_settings(&settings, "webhook-ingest")?);
        let listener = TcpListener::bind(config.bind)
            .with_context(|| format!("cannot listen on INGEST_BIND={}", config.bind))?;
        let port = listener.local_addr()?.port();
        let metrics = Metrics::new();
        metrics
            .registry
            .register(Box::new(PoolMetrics::new(store.pool.clone(), "events")))?;
        let queue = GroupCommit::start(
            Backend {
                store: store.clone(),
                broker: broker.clone(),
                metrics: metrics.clone(),
            },
            config.commit_writers,
        );
        let state = web::Data::new(AppState {
            verifier,
            queue,
            store,
            broker: broker.clone(),
            metrics,
            handled_event_types: config.handled_event_types.into_iter().collect(),
            livemode: config.livemode,
            body_limit: config.body_limit_bytes,
            body_timeout: config.body_timeout,
            max_header_bytes: MAX_HEADER_BYTES,
            retry_after_secs: config.retry_after.as_secs(),
        });
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/webhooks/stripe", web::post().to(routes::webhook::receive))
                .route(
                    "/api/v1/billing/webhooks/stripe/checkout",
                    web::post().to(routes::webhook::receive),
                )
                .route("/healthz", web::get().to(routes::health::healthz))
                .route("/readyz", web::get().to(routes::health::readyz))
                .route("/metrics", web::get().to(routes::health::metrics))
                .default_service(web::to(routes::webhook::not_found))
        })
        // Slow-loris: a client must finish its request head within this time.
        .client_request_timeout(config.header_timeout)
        .client_disconnect_timeout(Duration::from_secs(1))
        .shutdown_timeout(config.shutdown_timeout.as_secs())
        // actix stops at once on SIGINT (Ctrl-C); both signals are handled in
        // `run_until_stopped` instead, as a graceful stop.
        .disable_signals();
        if let Some(workers) = config.workers {
            server = server.workers(workers.get());
        }
        let server = server.listen(listener)?.run();
        Ok(Self { port, server, broker })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server gracefully (tests; SIGTERM and Ctrl-C do it in production).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped (SIGTERM, Ctrl-C or the handle): in-flight requests finish first.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let server = self.server;
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => result?,
            _ = webhook_core::shutdown_signal() => {
                tracing::info!("shutdown signal received; finishing in-flight requests");
                // The server future processes the stop command: poll both.
                let ((), result) = tokio::join!(handle.stop(true), server);
                result?;
            }
        }
        self.broker.close().await;
        tracing::info!("webhook-ingest stopped");
        Ok(())
    }
}
