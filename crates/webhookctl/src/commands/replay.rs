//! `replay EVENT_ID`: publish the stored payload again, as the ingest would.
//!
//! Order matters: the event is marked `queued` first and published second. A worker can take the
//! replayed message the moment the broker confirms it and write `succeeded` within milliseconds;
//! a `queued` written after the publish would overwrite that outcome and leave the event
//! `queued` for good. If the publish fails (broker unreachable, nack, unroutable, no confirm in
//! time), the mark is undone: the event gets back its previous status, unless a worker has
//! written one since (then the worker's stands).

use anyhow::Context;
use webhook_amqp::{Headers, Outgoing, PublishError, job_properties};
use webhook_core::{EventType, Settings};
use webhook_store::{Store, events, history};

pub async fn run(settings: &Settings, event_id: &str) -> anyhow::Result<()> {
    let store = Store::connect_lazy(&settings.database)?;
    let event_type = history::event_type(&store.pool, event_id)
        .await
        .context("cannot read the events table (check DATABASE_URL; run `webhookctl migrate`)")?;
    let event_type = event_type.ok_or_else(|| {
        anyhow::anyhow!("no event {event_id} is stored: check the id with `webhookctl events list`")
    })?;
    if !EventType::parse(&event_type).is_some_and(|t| settings.stripe.handled_event_types.contains(&t)) {
        anyhow::bail!(
            "{event_id} is a {event_type} event, which no queue handles (it was ignored on receipt); nothing replayed"
        );
    }
    // Connected before anything is marked: an unreachable broker changes nothing.
    let broker = crate::publisher(settings, "webhookctl replay", "nothing replayed").await?;
    let mark = match events::mark_queued_for_replay(&store.pool, event_id).await {
        Ok(Some(mark)) => mark,
        Ok(None) => {
            broker.close().await;
            anyhow::bail!("no event {event_id} is stored (it was pruned just now?); nothing replayed");
        }
        Err(e) => {
            broker.close().await;
            return Err(anyhow::Error::new(e).context(format!(
                "could not mark {event_id} queued (check DATABASE_URL); nothing replayed"
            )));
        }
    };
    let topo = broker.topology().clone();
    let published = broker
        .publish(Outgoing {
            exchange: &topo.exchange,
            routing_key: &mark.event_type,
            body: mark.payload.as_bytes(),
            properties: job_properties(event_id, &mark.event_type, Headers::new()),
        })
        .await;
    broker.close().await;
    let Err(e) = published else {
        println!("replayed {event_id} ({})", mark.event_type);
        return Ok(());
    };
    let why = match &e {
        PublishError::Returned(_) => format!(
            "RabbitMQ has no queue bound to {} on {} (run `webhookctl setup`)",
            mark.event_type, topo.exchange
        ),
        PublishError::Amqp(a) if a.is_not_found() => {
            format!(
                "RabbitMQ has no exchange {} (run `webhookctl setup`): {a}",
                topo.exchange
            )
        }
        other => other.to_string(),
    };
    let undo = match events::unmark_replay(&store.pool, event_id, &mark).await {
        Ok(true) => format!("its status is {} again", mark.previous_status),
        Ok(false) => "its status was changed meanwhile by a worker and is left as it is".to_owned(),
        Err(db) => format!(
            "its status could not be set back to {} ({db}); it stays queued until the event is replayed",
            mark.previous_status
        ),
    };
    anyhow::bail!("{event_id} was not replayed: {why}; {undo}. Fix the cause and run the same command again")
}
