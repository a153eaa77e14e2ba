//! `webhook-worker`: see the crate docs and README.md.

use webhook_core::service::{self, Binary, Started};
use webhook_worker::Application;

const WORKER: Binary = Binary {
    name: env!("CARGO_PKG_NAME"),
    version: env!("CARGO_PKG_VERSION"),
    about: env!("CARGO_PKG_DESCRIPTION"),
    listening: "health and metrics listening",
};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::main(WORKER, |settings| async move {
        let app = Application::build(settings).await?;
        Ok(Started {
            port: app.port(),
            run: app.run_until_stopped(),
        })
    })
    .await
}
