//! Runs the real ingest `Application` in the test process.

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
        let mut req = self
            .client
            .post(format!("{}/webhooks/stripe", self.url))
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
