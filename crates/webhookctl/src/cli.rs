//! The command line (ARCHITECTURE.md, "webhookctl").

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "webhookctl",
    version,
    about = "Operate the Stripe billing webhook pipeline"
)]
pub struct Cli {
    /// TOML configuration file (else WEBHOOK_CONFIG; environment variables override it).
    #[arg(long, global = true, env = "WEBHOOK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log level of the CLI itself (logs go to stderr).
    #[arg(long, global = true, default_value = "warn")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if needed and apply pending migrations. Safe at any time, from any
    /// number of replicas (migrations take a lock and are idempotent).
    Migrate,
    /// Declare the RabbitMQ exchanges, queues and bindings. Safe at any time: declarations are
    /// idempotent; a queue that exists with other arguments is reported, never changed.
    Setup,
    /// Sign a realistic checkout.session.completed event with the configured secret and POST it to
    /// the ingest, like `stripe trigger`. Safe: it goes through the normal pipeline.
    SendTestEvent(SendTestEventArgs),
    /// Event history from Postgres. Read-only: safe at any time.
    #[command(subcommand)]
    Events(EventsCommand),
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Status, attempts, steps done with their results, every error with its time, and where
    /// the event is now (done, retrying, dead-lettered).
    Show {
        /// The Stripe event id (evt_…).
        event_id: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args, Clone)]
pub struct SendTestEventArgs {
    /// Ingest endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8084/webhooks/stripe")]
    pub url: String,
    /// Email of the buyer (the Keycloak user).
    #[arg(long, default_value = "example@example.com")]
    pub email: String,
    /// Tier bought (metadata.tier_id).
    #[arg(long, default_value = "professional")]
    pub tier: String,
    /// Billing cycle (metadata.billing_cycle).
    #[arg(long, default_value = "monthly")]
    pub cycle: String,
    /// Event type.
    #[arg(long = "type", default_value = "checkout.session.completed")]
    pub event_type: String,
    /// Reuse this event id (send the same event twice to see the duplicate answer).
    #[arg(long)]
    pub event_id: Option<String>,
    /// Print the server's answer as JSON only.
    #[arg(long)]
    pub json: bool,
}
