//! Runs the real ingest `Application` in the test process, or the `webhook-ingest` binary as a
//! process of its own (for what only a process has: signals and an exit status).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use webhook_core::Settings;
use webhook_ingest::Application;

pub struct TestIngest {
    pub url: String,
    pub handle: ServerHandle,
    pub client: reqwest::Client,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestIngest {
    /// Builds and starts the ingest; it may still be connecting to RabbitMQ when this returns.
    pub async fn spawn(settings: Settings) -> Self {
        let app = Application::build(settings).await.expect("ingest builds");
        let url = format!("http://127.0.0.1:{}", app.port());
        let handle = app.handle();
        let task = tokio::spawn(app.run_until_stopped());
        Self {
            url,
            handle,
            client: reqwest::Client::new(),
            task,
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(self) -> Self {
        crate::wait_http_ok("ingest ready", &format!("{}/readyz", self.url)).await;
        self
    }

    /// POSTs a body with a signature header and the Stripe content type.
    pub async fn post(&self, body: Vec<u8>, signature: Option<&str>) -> reqwest::Response {
        self.post_to("/webhooks/stripe", body, signature).await
    }

    /// [`Self::post`] to another path (the alias route).
    pub async fn post_to(&self, path: &str, body: Vec<u8>, signature: Option<&str>) -> reqwest::Response {
        let mut req = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json; charset=utf-8")
            .body(body);
        if let Some(sig) = signature {
            req = req.header("stripe-signature", sig);
        }
        req.send().await.expect("ingest answers")
    }

    pub async fn post_event(&self, event: &crate::SignedEvent) -> reqwest::Response {
        self.post(event.body.clone(), Some(&event.signature)).await
    }

    /// Stops gracefully (what SIGTERM does) and asserts that the ingest stopped in time and
    /// without an error.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let ended = tokio::time::timeout(std::time::Duration::from_secs(30), self.task)
            .await
            .expect("the ingest stops within 30 s");
        ended
            .expect("the ingest task did not panic")
            .expect("the ingest stopped without an error");
    }
}

/// The `webhook-ingest` binary, run with exactly the given environment on a free port of its
/// own; killed if the test ends before it exits.
pub struct IngestProcess {
    pub url: String,
    child: tokio::process::Child,
}

impl IngestProcess {
    /// Starts the binary and waits until its `/readyz` answers 200.
    pub async fn start(env: &HashMap<String, String>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = tokio::process::Command::new(crate::bin_path("webhook-ingest"))
            .env_clear()
            .envs(env)
            .env("INGEST_BIND", format!("127.0.0.1:{port}"))
            .kill_on_drop(true)
            .spawn()
            .expect("start webhook-ingest");
        let url = format!("http://127.0.0.1:{port}");
        crate::wait_http_ok("the ingest process ready", &format!("{url}/readyz")).await;
        Self { url, child }
    }

    /// Sends `signal` (a name `kill -s` takes: `TERM`, `INT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the ingest is still running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} {pid}");
    }

    /// Waits for the process to exit; returns its exit code (`None` when a signal ended it)
    /// and how long it took. Fails the test if it still runs after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("webhook-ingest still runs after {within:?}"))
            .expect("wait for webhook-ingest");
        (status.code(), started.elapsed())
    }

    /// Whether the process is still running (it has not exited).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("look at webhook-ingest").is_none()
    }

    /// Whether the process still accepts connections.
    pub async fn accepts(&self) -> bool {
        tokio::net::TcpStream::connect(self.url.trim_start_matches("http://"))
            .await
            .is_ok()
    }
}
