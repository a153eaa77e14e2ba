//! `webhookctl`: the operator CLI. One module per command group under [`commands`]; every
//! command prints a stable one-line summary (or JSON with `--json`) and exits 0 on success,
//! 1 on failure, 2 on bad usage ([`UsageError`]).

pub mod cli;
pub mod commands;
pub mod progress;
pub mod test_event;

pub use cli::{BillingCommand, Cli, Command, DlqCommand, EventsCommand};

use webhook_core::Settings;

/// A command line that cannot be run as given (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs one parsed command. Errors are printed by `main` with what to do next.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    webhook_core::telemetry::init(&format!("warn,{}", cli.log_level), settings.log.format);
    use commands::{backfill, billing, dlq, events, reconcile, replay, send_test_event, setup};
    match cli.command {
        Command::Migrate => setup::migrate(&settings).await,
        Command::Setup => setup::setup(&settings).await,
        Command::SendTestEvent(args) => send_test_event::run(&settings, args).await,
        Command::Backfill(args) => backfill::run(&settings, args).await,
        Command::Reconcile(args) => reconcile::run(&settings, args).await,
        Command::Replay { event_id } => replay::run(&settings, &event_id).await,
        Command::Billing(BillingCommand::Show {
            subscription_id,
            json,
        }) => billing::show(&settings, &subscription_id, json).await,
        Command::Billing(BillingCommand::Rebind {
            subscription_id,
            email,
            no_replay,
        }) => billing::rebind(&settings, &subscription_id, &email, !no_replay).await,
        Command::Events(EventsCommand::Show { event_id, json }) => {
            events::show(&settings, &event_id, json).await
        }
        Command::Events(EventsCommand::List {
            status,
            since,
            limit,
            json,
        }) => events::list(&settings, status.as_deref(), since.as_deref(), limit, json).await,
        Command::Events(EventsCommand::Prune {
            older_than,
            dry_run,
            json,
        }) => events::prune(&settings, &older_than, dry_run, json).await,
        Command::Dlq(DlqCommand::List { limit, json }) => dlq::list(&settings, limit, json).await,
        Command::Dlq(DlqCommand::Requeue {
            filter,
            dry_run,
            json,
        }) => dlq::requeue(&settings, filter.into(), dry_run, json).await,
        Command::Dlq(DlqCommand::Drain { out, filter, json }) => {
            dlq::drain(&settings, &out, filter.into(), json).await
        }
        Command::Dlq(DlqCommand::Restore {
            from,
            skip_invalid,
            json,
        }) => dlq::restore(&settings, &from, skip_invalid, json).await,
        Command::Dlq(DlqCommand::Purge { yes, json }) => dlq::purge(&settings, yes, json).await,
    }
}

impl From<cli::DlqFilterArgs> for webhook_amqp::dead_letters::Filter {
    fn from(a: cli::DlqFilterArgs) -> Self {
        Self {
            all: a.all,
            event_ids: a.event_ids,
            event_type: a.event_type,
            error_contains: a.error_contains,
        }
    }
}

/// A connection for publishing (the topology is not declared), once RabbitMQ answers; else the
/// reason and what to do, ending with `nothing` (what the command left undone, e.g. "nothing
/// replayed"), so that an unreachable broker changes nothing.
pub(crate) async fn publisher(
    settings: &Settings,
    connection_name: &str,
    nothing: &str,
) -> anyhow::Result<webhook_amqp::Broker> {
    let mut config = webhook_amqp::BrokerConfig::from_settings(settings, connection_name)?;
    config.declare_topology = false;
    let broker = webhook_amqp::Broker::start(config);
    if broker
        .wait_connected(std::time::Duration::from_secs(15))
        .await
        .is_none()
    {
        broker.close().await;
        anyhow::bail!(
            "could not connect to RabbitMQ within 15s: check AMQP_URL and that RabbitMQ is running; {nothing}"
        );
    }
    Ok(broker)
}

/// Prints a command's result: the JSON object with `--json`, else the one-line summary.
pub fn report(json: bool, summary: &str, value: serde_json::Value) {
    if json {
        println!("{value}");
    } else {
        println!("{summary}");
    }
}
