//! `migrate` and `setup`: idempotent preparation of Postgres and RabbitMQ.

use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use webhook_amqp::{Broker, BrokerConfig};
use webhook_core::Settings;
use webhook_store::Store;

pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    webhook_store::create_database_if_missing(settings.database.url.expose_secret())
        .await
        .context("check DATABASE_URL and that Postgres is running (make services)")?;
    let store = Store::connect_lazy(&settings.database)?;
    store.migrate().await?;
    let applied = webhook_store::MIGRATOR.iter().count();
    println!("migrations applied ({applied} in total, database up to date)");
    Ok(())
}

pub async fn setup(settings: &Settings) -> anyhow::Result<()> {
    let mut config = BrokerConfig::from_settings(settings, "webhookctl setup")?;
    config.declare_topology = true;
    let topology = config.topology.clone();
    let broker = Broker::start(config);
    let link = broker.wait_connected(Duration::from_secs(15)).await;
    broker.close().await;
    if link.is_none() {
        anyhow::bail!(
            "could not connect to RabbitMQ and declare the topology within 15s: check AMQP_URL, that RabbitMQ \
             is running (make services), and the log above for PRECONDITION_FAILED (a queue that exists \
             with other arguments must be deleted or migrated by hand)"
        );
    }
    println!(
        "topology declared: exchange {}, queue {} (bound to {}), {} retry queues, dead letters {} -> {}",
        topology.exchange,
        topology.work_queue,
        topology
            .handled_event_types
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        topology.retry_tiers.len(),
        topology.dead_letter_exchange,
        topology.dead_letter_queue
    );
    Ok(())
}
