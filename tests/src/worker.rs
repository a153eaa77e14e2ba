//! Runs the real worker `Application` (or binary) and the sandbox in the test process.

use std::collections::HashMap;
use std::time::Duration;

use webhook_core::Settings;
use webhook_sandbox::{Sandbox, SandboxConfig, SandboxState};
use webhook_worker::{Application, ShutdownHandle};

/// The sandbox (Keycloak + Lago) on port 0.
pub struct TestSandbox {
    pub url: String,
    pub state: SandboxState,
    handle: actix_web::dev::ServerHandle,
}

impl TestSandbox {
    pub async fn spawn() -> Self {
        Self::spawn_with(SandboxConfig::default()).await
    }

    pub async fn spawn_with(config: SandboxConfig) -> Self {
        let sandbox = Sandbox::build(config).await.expect("sandbox builds");
        let (url, state, handle) = (sandbox.url(), sandbox.state(), sandbox.handle());
        tokio::spawn(sandbox.run_until_stopped());
        Self { url, state, handle }
    }

    /// The settings (environment names) that point a worker at this sandbox.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KEYCLOAK_URL", self.url.clone()),
            ("KEYCLOAK_REALM", "uchub".into()),
            ("KEYCLOAK_ADMIN_USER", "admin".into()),
            ("KEYCLOAK_ADMIN_PASSWORD", "admin".into()),
            ("LAGO_API_URL", self.url.clone()),
            ("LAGO_API_KEY", "lago-sandbox-key".into()),
        ]
    }

    /// Lago subscriptions (every status) with this `external_id`, from the sandbox's state.
    pub fn subscriptions(&self, external_id: &str) -> Vec<serde_json::Value> {
        self.state.snapshot()["subscriptions"]
            .as_array()
            .expect("the state lists subscriptions")
            .iter()
            .filter(|s| s["external_id"] == external_id)
            .cloned()
            .collect()
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

/// Settings for a worker of `ctx` against `sandbox`, with quick retries.
pub fn worker_settings(ctx: &crate::TestContext, sandbox: &TestSandbox, extra: &[(&str, &str)]) -> Settings {
    let mut pairs: Vec<(&str, String)> = sandbox.env();
    pairs.push(("WEBHOOK__WORKER__INLINE_RETRY_MIN_MS", "20".into()));
    pairs.push(("WEBHOOK__WORKER__INLINE_RETRY_MAX_MS", "200".into()));
    pairs.push(("WEBHOOK__WORKER__SHUTDOWN_TIMEOUT_SECS", "5".into()));
    for (k, v) in extra {
        pairs.push((k, v.to_string()));
    }
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ctx.settings_with(&refs)
}

/// A worker `Application` running in the test process.
pub struct TestWorker {
    pub port: u16,
    shutdown: ShutdownHandle,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestWorker {
    pub async fn spawn(settings: Settings) -> Self {
        let app = Application::build(settings).await.expect("worker builds");
        let port = app.port();
        let shutdown = app.shutdown_handle();
        let task = tokio::spawn(app.run_until_stopped());
        Self { port, shutdown, task }
    }

    /// Waits until `/readyz` answers 200 (connected, topology declared).
    pub async fn ready(self) -> Self {
        crate::wait_http_ok("worker ready", &format!("http://127.0.0.1:{}/readyz", self.port)).await;
        self
    }

    /// Stops gracefully (what SIGTERM does) and asserts that the worker stopped within its
    /// drain timeout and returned `Ok`.
    pub async fn stop(self) {
        self.shutdown.shutdown();
        let ended = tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the worker stops within 20 s");
        ended
            .expect("the worker task did not panic")
            .expect("the worker stopped without an error");
    }
}

/// The environment that makes the `webhook-worker` binary use these settings' resources.
pub fn binary_env(
    ctx: &crate::TestContext,
    sandbox: &TestSandbox,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut env = ctx.env.clone();
    for (k, v) in sandbox.env() {
        env.insert(k.to_string(), v);
    }
    env.insert("WEBHOOK__WORKER__INLINE_RETRY_MIN_MS".into(), "20".into());
    env.insert("WEBHOOK__WORKER__INLINE_RETRY_MAX_MS".into(), "200".into());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}
