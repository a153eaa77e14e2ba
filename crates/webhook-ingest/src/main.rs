//! `webhook-ingest`: see the crate docs and README.md.

use webhook_ingest::Application;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let settings = match webhook_core::settings::load_for_service("webhook-ingest") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("webhook-ingest cannot start: {e:#}");
            eprintln!("webhook-ingest cannot start: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing::info!(port = app.port(), "webhook-ingest listening");
    let code = match app.run_until_stopped().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("webhook-ingest failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    // The spans still buffered are exported before the process ends.
    webhook_core::telemetry::shutdown();
    code
}
