//! `replay EVENT_ID`: publish the stored payload again, as the ingest would.

use std::time::Duration;

use anyhow::Context;
use webhook_amqp::lapin::types::FieldTable;
use webhook_amqp::{Broker, BrokerConfig, Outgoing, PublishError, job_properties};
use webhook_core::Settings;
use webhook_store::Store;

pub async fn run(settings: &Settings, event_id: &str) -> anyhow::Result<()> {
    let store = Store::connect_lazy(&settings.database)?;
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT event_type, payload FROM webhook_events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&store.pool)
            .await
            .context("cannot read the events table (check DATABASE_URL; run `webhookctl migrate`)")?;
    let (event_type, payload) = row.ok_or_else(|| {
        anyhow::anyhow!("no event {event_id} is stored: check the id with `webhookctl events list`")
    })?;
    let mut config = BrokerConfig::from_settings(settings, "webhookctl replay")?;
    config.declare_topology = false;
    let broker = Broker::start(config);
    broker
        .wait_connected(Duration::from_secs(15))
        .await
        .ok_or_else(|| anyhow::anyhow!("could not connect to RabbitMQ within 15s: check AMQP_URL"))?;
    let topo = broker.topology().clone();
    let published = broker
        .publish(Outgoing {
            exchange: &topo.exchange,
            routing_key: &event_type,
            body: payload.as_bytes(),
            properties: job_properties(event_id, &event_type, FieldTable::default()),
        })
        .await;
    broker.close().await;
    match published {
        Ok(()) => {}
        Err(PublishError::Returned(_)) => anyhow::bail!(
            "{event_id} is a {event_type} event, which no queue handles (it was ignored on receipt); nothing replayed"
        ),
        Err(e) => {
            return Err(anyhow::Error::new(e).context("the event could not be published; nothing replayed"));
        }
    }
    sqlx::query("UPDATE webhook_events SET status = 'queued', updated_at = now() WHERE event_id = $1")
        .bind(event_id)
        .execute(&store.pool)
        .await?;
    println!("replayed {event_id} ({event_type})");
    Ok(())
}
