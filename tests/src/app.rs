//! [`TestApp`]: one test's pipeline in the test process: its own database and queue prefix
//! ([`TestContext`]), the sandbox, and a worker `Application` ready to consume. Dropping it (the
//! test passed or failed) removes the database and every queue and exchange of the prefix.
//!
//! ```ignore
//! let app = TestApp::spawn().await;
//! app.sandbox.state.add_user(user("a@example.com"));
//! app.publish(&stripe::checkout("evt_1", now, "sub_1", "cus_1", "a@example.com", "pro")).await;
//! wait_event_status(app.pool(), "evt_1", "succeeded").await;
//! app.stop().await;
//! ```

use std::collections::HashMap;

use sqlx::PgPool;
use webhook_amqp::Topology;
use webhook_core::Settings;
use webhook_sandbox::SandboxConfig;

use crate::TestContext;
use crate::ingest::TestIngest;
use crate::worker::{TestSandbox, TestWorker, binary_env, worker_settings};

pub struct TestApp {
    pub sandbox: TestSandbox,
    /// The worker's settings (this test's database, prefix and sandbox; quick retries).
    pub settings: Settings,
    pub topo: Topology,
    /// `None` once stopped, or for [`TestApp::without_worker`].
    pub worker: Option<TestWorker>,
    pool: PgPool,
    /// Last: dropped after the rest, it removes the database and the queues.
    pub ctx: TestContext,
}

impl TestApp {
    /// A fresh context, the sandbox and a ready worker.
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// [`TestApp::spawn`] with settings overrides (environment names, e.g.
    /// `("WORKER_CONCURRENCY", "1")`).
    pub async fn spawn_with(extra: &[(&str, &str)]) -> Self {
        let mut app = Self::without_worker(extra).await;
        app.start_worker().await;
        app
    }

    /// [`TestApp::spawn_with`] on a sandbox of this configuration (seed users and plans, the
    /// unmanaged-attribute policy, …).
    pub async fn spawn_in(sandbox: SandboxConfig, extra: &[(&str, &str)]) -> Self {
        let mut app = Self::without_worker_in(sandbox, extra).await;
        app.start_worker().await;
        app
    }

    /// The context and the sandbox; no worker yet ([`TestApp::start_worker`]).
    pub async fn without_worker(extra: &[(&str, &str)]) -> Self {
        Self::without_worker_in(SandboxConfig::default(), extra).await
    }

    /// [`TestApp::without_worker`] on a sandbox of this configuration.
    pub async fn without_worker_in(sandbox: SandboxConfig, extra: &[(&str, &str)]) -> Self {
        let ctx = TestContext::new().await;
        let sandbox = TestSandbox::spawn_with(sandbox).await;
        let settings = worker_settings(&ctx, &sandbox, extra);
        let topo = crate::rabbit::topology(&settings);
        let pool = ctx.pool().await;
        Self {
            sandbox,
            settings,
            topo,
            worker: None,
            pool,
            ctx,
        }
    }

    /// Replaces the worker's settings overrides, those given to the constructor included (for
    /// overrides that name the sandbox or a proxy, e.g. its URL as `STRIPE_API_URL`); before
    /// [`TestApp::start_worker`]. `topo` follows; an [`TestApp::ingest`] started after takes
    /// these settings too.
    pub fn set_worker_settings(&mut self, extra: &[(&str, &str)]) {
        assert!(
            self.worker.is_none(),
            "set the worker's settings before it starts (it would not see them)"
        );
        self.settings = worker_settings(&self.ctx, &self.sandbox, extra);
        self.topo = crate::rabbit::topology(&self.settings);
    }

    /// Starts a worker with the app's settings and waits until it is ready.
    pub async fn start_worker(&mut self) {
        assert!(self.worker.is_none(), "the app's worker runs already");
        self.worker = Some(TestWorker::spawn(self.settings.clone()).await.ready().await);
    }

    /// Starts a worker with the app's settings without waiting for it to be ready (for what a
    /// worker does while it cannot be: a missing queue, an unreachable dependency).
    pub async fn start_worker_unready(&mut self) {
        assert!(self.worker.is_none(), "the app's worker runs already");
        self.worker = Some(TestWorker::spawn(self.settings.clone()).await);
    }

    /// Stops the worker gracefully (asserting that it stopped in time and without an error).
    pub async fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop().await;
        }
    }

    /// The test's database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The environment of a binary (`webhookctl`, `webhook-worker`) using this app's database,
    /// prefix and sandbox, with `extra` on top.
    pub fn env(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        binary_env(&self.ctx, &self.sandbox, extra)
    }

    /// Publishes a Stripe event body to the exchange as the ingest would: routed by its type,
    /// with its id as the message id.
    pub async fn publish(&self, body: &[u8]) {
        let event: serde_json::Value = serde_json::from_slice(body).expect("an event body");
        let (id, event_type) = (
            event["id"].as_str().expect("the event has an id"),
            event["type"].as_str().expect("the event has a type"),
        );
        crate::rabbit::publish(&self.topo.exchange, event_type, body, id).await;
    }

    /// Starts an ingest `Application` on the app's settings (its database, prefix and
    /// secret) and waits until it is ready.
    pub async fn ingest(&self) -> TestIngest {
        TestIngest::spawn(self.settings.clone()).await.ready().await
    }

    /// The base URL of the running worker's health and metrics endpoints.
    pub fn worker_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.worker_port())
    }

    /// The port of the running worker's health and metrics endpoints.
    pub fn worker_port(&self) -> u16 {
        self.worker.as_ref().expect("the app's worker runs").port
    }

    /// Stops the worker and the sandbox, then drops the app, which removes the database and the
    /// queues: whatever must go before them (a guard that restarts a server) is dropped first.
    pub async fn stop(mut self) {
        self.stop_worker().await;
        self.sandbox.stop().await;
    }
}
