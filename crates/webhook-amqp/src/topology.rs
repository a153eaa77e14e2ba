//! The RabbitMQ topology (ARCHITECTURE.md, "RabbitMQ topology"), declared idempotently.
//!
//! ```text
//! billing.events (topic) ──<event type>──▶ billing.provisioning (quorum) ──▶ worker
//!        ▲                                     ▲        │ transient failure: worker publishes to
//!        │ ingest                              │        ▼
//!                           TTL expired ── billing.provisioning.retry.<delay> (quorum, no consumer)
//! worker (permanent / last tier) ──▶ billing.dlx (fanout) ──▶ billing.provisioning.dlq (quorum)
//! ```
//! Works on RabbitMQ 3.10 (Debian bookworm) through 4.x: quorum queue TTL and at-least-once
//! dead-lettering both arrived in 3.10.

use std::time::Duration;

use lapin::ExchangeKind;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use webhook_core::EventType;
use webhook_core::settings::{AmqpSettings, RetrySchedule};

use crate::channel::{Channel, Connection};
use crate::error::AmqpError;

/// Every name of the topology, with the configured prefix applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub exchange: String,
    pub work_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// One queue per retry delay, in schedule order.
    pub retry_tiers: Vec<RetryTier>,
    /// Routing keys (Stripe event types) bound to the work queue.
    pub handled_event_types: Vec<EventType>,
    /// `x-quorum-initial-group-size` of every queue; `None`: the broker's default.
    pub quorum_group_size: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryTier {
    pub delay: Duration,
    pub queue: String,
}

impl Topology {
    pub fn new(
        amqp: &AmqpSettings,
        retry_schedule: &RetrySchedule,
        handled_event_types: &[EventType],
    ) -> Self {
        let p = &amqp.name_prefix;
        let work_queue = format!("{p}{}", amqp.work_queue);
        // A schedule may repeat a delay (5s,5s,30s): the tiers share one queue.
        let retry_tiers = retry_schedule
            .tiers()
            .map(|(delay, label)| RetryTier {
                delay,
                queue: format!("{work_queue}.retry.{label}"),
            })
            .collect();
        Self {
            exchange: format!("{p}{}", amqp.exchange),
            dead_letter_exchange: format!("{p}{}", amqp.dead_letter_exchange),
            dead_letter_queue: format!("{p}{}", amqp.dead_letter_queue),
            work_queue,
            retry_tiers,
            handled_event_types: handled_event_types.to_vec(),
            quorum_group_size: (amqp.quorum_group_size > 0).then_some(amqp.quorum_group_size),
        }
    }

    /// The retry queue for a delay of the schedule.
    pub fn retry_queue(&self, delay: Duration) -> Option<&str> {
        self.retry_tiers
            .iter()
            .find(|t| t.delay == delay)
            .map(|t| t.queue.as_str())
    }

    /// Every queue of the topology (for depth metrics and tests).
    pub fn all_queues(&self) -> Vec<&str> {
        let mut q = vec![self.work_queue.as_str(), self.dead_letter_queue.as_str()];
        q.extend(self.retry_tiers.iter().map(|t| t.queue.as_str()));
        q
    }
}

/// See the dead-letter queue declaration.
pub const DLQ_DELIVERY_LIMIT: i64 = 1_000_000_000;

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

/// Declares exchanges, queues and bindings. Idempotent as long as the arguments are unchanged;
/// a queue that exists with other arguments makes the broker close the channel with
/// PRECONDITION_FAILED, which is reported with the queue's name.
pub async fn declare(channel: &Channel, topo: &Topology) -> Result<(), AmqpError> {
    let channel = &channel.0;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    // Topic: routing key = Stripe event type, so new consumers can bind to patterns like
    // `customer.subscription.*` without touching the ingest.
    channel
        .exchange_declare(
            topo.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    // Fanout: every dead letter goes to the one DLQ whatever its routing key (= event type).
    channel
        .exchange_declare(
            topo.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;

    let queue_opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    // Quorum queues replicate and fsync; confirms for them mean "a majority has it on disk".
    let quorum = ("x-queue-type", s("quorum"));
    let with_group_size = |mut args: FieldTable| {
        if let Some(n) = topo.quorum_group_size {
            args.insert(
                "x-quorum-initial-group-size".into(),
                AMQPValue::LongInt(i32::from(n)),
            );
        }
        args
    };

    // Work queue. Its own dead-letter exchange catches what the broker drops on its own (the
    // delivery limit of RabbitMQ ≥ 4.0, a poison message that kills consumers), so nothing is
    // lost silently; the worker dead-letters by publishing, with reason headers.
    channel
        .queue_declare(
            topo.work_queue.as_str().into(),
            queue_opts,
            with_group_size(table(&[
                quorum.clone(),
                ("x-dead-letter-exchange", s(&topo.dead_letter_exchange)),
            ])),
        )
        .await?;
    for event_type in &topo.handled_event_types {
        channel
            .queue_bind(
                topo.work_queue.as_str().into(),
                topo.exchange.as_str().into(),
                event_type.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }

    // Dead-letter queue: kept until an operator acts; no TTL, no consumer. `webhookctl dlq`
    // reads it by taking messages and giving back the ones it leaves, and RabbitMQ >= 4.0 counts
    // every give-back against a default delivery limit of 20, then DROPS the message (the DLQ
    // has no dead-letter exchange). A very high explicit limit keeps dead letters however often
    // operators look at them (-1, "unlimited", is not accepted before 4.0).
    channel
        .queue_declare(
            topo.dead_letter_queue.as_str().into(),
            queue_opts,
            with_group_size(table(&[
                quorum.clone(),
                ("x-delivery-limit", AMQPValue::LongLongInt(DLQ_DELIVERY_LIMIT)),
            ])),
        )
        .await?;
    channel
        .queue_bind(
            topo.dead_letter_queue.as_str().into(),
            topo.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // Retry tiers: one queue per delay, because expired messages leave a queue only from its
    // head (a per-message TTL would block behind a longer one). No consumers: on expiry the
    // broker dead-letters the message through the default exchange straight to the work queue.
    for tier in &topo.retry_tiers {
        channel
            .queue_declare(
                tier.queue.as_str().into(),
                queue_opts,
                with_group_size(table(&[
                    quorum.clone(),
                    (
                        "x-message-ttl",
                        AMQPValue::LongLongInt(tier.delay.as_millis() as i64),
                    ),
                    ("x-dead-letter-exchange", s("")),
                    ("x-dead-letter-routing-key", s(&topo.work_queue)),
                    // At-least-once dead-lettering (3.10+, quorum only): the expired message stays
                    // in the retry queue until the work queue confirms it; needs reject-publish.
                    ("x-dead-letter-strategy", s("at-least-once")),
                    ("x-overflow", s("reject-publish")),
                ])),
            )
            .await?;
    }
    Ok(())
}

/// Deletes the topology's queues and exchanges, as far as it can (each on a channel of its own,
/// since a failed delete closes its channel); for tests and benchmarks that made their own.
pub async fn delete(connection: &Connection, topo: &Topology) {
    for q in topo.all_queues() {
        if let Ok(ch) = connection.0.create_channel().await {
            let _ = ch.queue_delete(q.into(), QueueDeleteOptions::default()).await;
        }
    }
    for x in [&topo.exchange, &topo.dead_letter_exchange] {
        if let Ok(ch) = connection.0.create_channel().await {
            let _ = ch
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
}
