//! `webhook-sandbox`: see the crate docs; `--help` lists the flags.

use std::process::ExitCode;

use clap::Parser;
use webhook_sandbox::Sandbox;
use webhook_sandbox::cli::Cli;

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Lenient, as the sandbox has always been: anything but "json" is text.
    let log_format = cli.log_format.parse().unwrap_or_default();
    webhook_core::telemetry::init(&cli.log_level, log_format);
    let config = match cli.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("webhook-sandbox: {e:#}");
            return ExitCode::from(2);
        }
    };
    let (realm, admin_realm) = (config.realm.clone(), config.admin_realm.clone());
    let sandbox = match Sandbox::build(config).await {
        Ok(sandbox) => sandbox,
        Err(e) => {
            eprintln!("webhook-sandbox cannot start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        url = %sandbox.url(),
        realm = %realm,
        token_realm = %admin_realm,
        "webhook-sandbox listening (Keycloak, Lago and the Stripe API on this base URL, state at /_sandbox/state)"
    );
    match sandbox.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("webhook-sandbox failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
