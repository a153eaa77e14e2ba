//! `webhookctl`: see the crate docs and README.md.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = webhookctl::Cli::parse(); // exits 2 on bad usage
    match webhookctl::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.is::<webhookctl::UsageError>() => {
            eprintln!("webhookctl: {e}");
            std::process::ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("webhookctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
