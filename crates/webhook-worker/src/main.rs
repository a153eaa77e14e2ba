//! `webhook-worker`: see the crate docs and README.md.

use std::path::PathBuf;

use webhook_core::Settings;
use webhook_worker::Application;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = config_path();
    let settings = match Settings::load(config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("webhook-worker: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    webhook_core::telemetry::init(&settings.log.level, &settings.log.format);
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("webhook-worker cannot start: {e:#}");
            eprintln!("webhook-worker cannot start: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing::info!(port = app.port(), "webhook-worker health and metrics listening");
    match app.run_until_stopped().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("webhook-worker failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--config PATH` (the only flag); `WEBHOOK_CONFIG` is read by the settings loader.
fn config_path() -> Option<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(p) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    None
}
