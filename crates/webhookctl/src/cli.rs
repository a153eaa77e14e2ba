//! The command line (ARCHITECTURE.md, "webhookctl"). Every command says when it is safe to run.

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
    /// The dead-letter queue: look, put back, archive, restore, purge.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Event history from Postgres.
    #[command(subcommand)]
    Events(EventsCommand),
    /// The billing state of a Stripe subscription: look at it, or rebind it to another account.
    #[command(subcommand)]
    Billing(BillingCommand),
    /// Publish a stored event again from its payload (e.g. after fixing its cause). Safe: the
    /// worker's ledger makes a second run of a finished event change nothing.
    Replay {
        /// The Stripe event id (evt_…).
        event_id: String,
    },
    /// Fetch the events Stripe has (its Events API keeps 30 days) and this system never
    /// received, and queue them as the ingest would, oldest first: after Stripe gave up
    /// retrying, disabled the endpoint, or a secret rotation rejected a window, or for the events
    /// sent before the first deploy. Needs STRIPE_API_KEY. Safe to interrupt and to run again:
    /// known events are skipped, so a second run backfills 0.
    Backfill(BackfillArgs),
    /// Compare each subscription as Stripe has it now with the billing state, Lago and
    /// Keycloak, and print every drift; exits 1 when there is any. Read-only unless --fix,
    /// which queues one reconcile job per drifted subscription (the worker brings Lago and
    /// Keycloak to Stripe's state through the normal path, with an audit row
    /// subscription.reconciled). Needs STRIPE_API_KEY. Safe to run again.
    Reconcile(ReconcileArgs),
    /// Sign a realistic checkout.session.completed event with the configured secret and POST it to
    /// the ingest, like `stripe trigger`. Safe: it goes through the normal pipeline.
    SendTestEvent(SendTestEventArgs),
}

#[derive(Debug, Subcommand)]
pub enum BillingCommand {
    /// A subscription's billing state: status, plan, the Keycloak account it is bound to, its
    /// watermark and tombstone, and what Lago was brought to. Read-only.
    Show {
        /// The Stripe subscription id (sub_…).
        subscription_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Bind a subscription to the Keycloak account with EMAIL (e.g. the buyer's account was
    /// replaced by another), then replay its newest event so that the worker brings Keycloak
    /// (both accounts) and Lago to the new binding. Events never rebind by themselves. Safe to
    /// repeat; run it while no event of the subscription is in flight.
    Rebind {
        /// The Stripe subscription id (sub_…).
        subscription_id: String,
        /// The email of the Keycloak account that owns the subscription now.
        #[arg(long)]
        email: String,
        /// Record the binding only; the next event of the subscription applies it.
        #[arg(long)]
        no_replay: bool,
    },
}

/// Which dead letters a command touches. Several criteria must all match.
#[derive(Debug, Args, Clone, Default)]
pub struct DlqFilterArgs {
    /// Every dead letter.
    #[arg(long)]
    pub all: bool,
    /// Only these event ids (repeatable).
    #[arg(long = "event-id", num_args = 1..)]
    pub event_ids: Vec<String>,
    /// Only this event type.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Only dead letters whose error contains this text (case-insensitive).
    #[arg(long)]
    pub error_contains: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show dead letters with their reasons. Read-only in effect: the messages are looked at and
    /// given back.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line: event_id, event_type, attempts, failed_step, error,
        /// error_kind, dead_lettered_at.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on the work queue with a fresh retry count. Safe to interrupt and
    /// run again: each message is published (confirmed) before it leaves the DLQ. Looks at the
    /// messages the DLQ holds when it starts, in bounded memory; those the filter skips stay in
    /// the DLQ (moved to its tail).
    Requeue {
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Show what would be requeued, change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Archive whole dead letters (payload and headers) to a JSON-lines file, then remove them.
    /// Safe to interrupt: a message leaves the DLQ only after the file is written and fsynced.
    /// Like requeue, looks at the messages the DLQ holds when it starts, in bounded memory.
    Drain {
        /// File to create (must not exist).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        filter: DlqFilterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Put archived messages (from `dlq drain`) back on the work queue with a fresh retry count.
    /// Running it twice queues them twice, which the worker's ledger makes harmless. The file is
    /// checked first: one that has an invalid line (such as the cut-off last line of an
    /// interrupted drain) is refused before anything is published, unless --skip-invalid.
    Restore {
        #[arg(long)]
        from: PathBuf,
        /// Restore the valid lines and skip the invalid ones (each is named on stderr and the
        /// summary lists their line numbers).
        #[arg(long)]
        skip_invalid: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete every dead letter. Irreversible: drain them to a file first if in doubt.
    Purge {
        /// Required: confirms that the messages are to be deleted.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Status, attempts, steps done with their results, every error with its time, and where
    /// the event is now (done, retrying, dead-lettered). Read-only.
    Show {
        /// The Stripe event id (evt_…).
        event_id: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Recent events, newest first. Read-only.
    List {
        /// queued, ignored, processing, retrying, succeeded, skipped or dead_lettered.
        #[arg(long)]
        status: Option<String>,
        /// Only events received within this long (e.g. 30m, 24h, 7d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Delete the history of finished events older than the retention period. Never touches
    /// events still queued, processing or retrying, nor the audit log. Safe at any time.
    Prune {
        /// Keep this long: at least 30 days (Stripe keeps events that long, and a backfill could
        /// bring back a pruned one as new).
        #[arg(long, default_value = "30d")]
        older_than: String,
        /// Count what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args, Clone)]
pub struct BackfillArgs {
    /// The window starts this long ago (e.g. 1h, 3d).
    #[arg(long, conflicts_with = "from")]
    pub since: Option<String>,
    /// The window starts at this time (RFC 3339, e.g. 2026-11-20T00:00:00Z).
    #[arg(long)]
    pub from: Option<String>,
    /// The window ends at this time (RFC 3339); default: now.
    #[arg(long)]
    pub until: Option<String>,
    /// Only events of this type (repeatable, at most 20; exact types).
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// Count what would be backfilled; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object: listed, backfilled, already_known, ignored, dry_run.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ReconcileArgs {
    /// Only the subscriptions of this Stripe customer (cus_…).
    #[arg(long)]
    pub customer: Option<String>,
    /// Also every subscription Stripe lists (any status), not only those the billing state knows.
    #[arg(long)]
    pub from_stripe: bool,
    /// Queue a reconcile job for each drifted subscription.
    #[arg(long)]
    pub fix: bool,
    /// One JSON object: checked, drifts (subscription_id, where, field, expected, actual,
    /// fixable), drifted_subscriptions, fix, queued.
    #[arg(long)]
    pub json: bool,
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
    /// Do not deliver it: put it in the Stripe API of the sandbox at this URL only, as an event
    /// Stripe has and never delivered (for `webhookctl backfill`; `make run` shows it).
    #[arg(long, value_name = "URL", conflicts_with = "url")]
    pub stripe_sandbox: Option<String>,
}
