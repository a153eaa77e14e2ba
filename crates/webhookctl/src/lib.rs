//! `webhookctl`: the operator CLI. One module per command group under [`commands`]; every
//! command prints a stable one-line summary (or JSON with `--json`) and exits 0 on success,
//! 1 on failure, 2 on bad usage.

pub mod cli;
pub mod commands;
pub mod test_event;

pub use cli::{Cli, Command, EventsCommand};

use webhook_core::Settings;

/// Runs one parsed command. Errors are printed by `main` with what to do next.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    webhook_core::telemetry::init(&format!("warn,{}", cli.log_level), &settings.log.format);
    match cli.command {
        Command::Migrate => commands::setup::migrate(&settings).await,
        Command::Setup => commands::setup::setup(&settings).await,
        Command::SendTestEvent(args) => commands::send_test_event::run(&settings, args).await,
        Command::Events(EventsCommand::Show { event_id, json }) => {
            commands::events::show(&settings, &event_id, json).await
        }
    }
}
