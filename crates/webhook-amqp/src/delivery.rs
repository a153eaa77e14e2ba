//! A message received from a queue ([`Delivery`]), and how it is settled.

use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};

use crate::error::AmqpError;
use crate::headers::Headers;
use crate::properties::Properties;

/// A message received from a queue, to settle once: ack, give back (nack with requeue) or reject.
/// Each settles on the channel the message came on; once that channel is gone, the broker has
/// put the message back by itself.
#[derive(Debug)]
pub struct Delivery {
    body: Vec<u8>,
    properties: Properties,
    routing_key: String,
    delivery_tag: u64,
    redelivered: bool,
    acker: Acker,
}

impl Delivery {
    /// A delivery that was never received, for unit tests: settling it does nothing.
    pub fn mock(routing_key: &str, body: Vec<u8>, properties: Properties) -> Self {
        let mut d = lapin::message::Delivery::mock(1, "".into(), routing_key.into(), false, body);
        d.properties = properties.into();
        d.into()
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Drops the body (once it is safe elsewhere), keeping what settles the message.
    pub fn forget_body(&mut self) {
        self.body = Vec::new();
    }

    pub fn properties(&self) -> &Properties {
        &self.properties
    }

    /// The message's headers (empty when it has none).
    pub fn headers(&self) -> &Headers {
        self.properties.headers()
    }

    /// The message's `message_id` property (a job's event id).
    pub fn message_id(&self) -> Option<&str> {
        self.properties.message_id()
    }

    /// The message's `type` property (a job's event type).
    pub fn kind(&self) -> Option<&str> {
        self.properties.kind()
    }

    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    pub fn delivery_tag(&self) -> u64 {
        self.delivery_tag
    }

    /// Whether the broker delivered the message before (to this consumer or another).
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// Removes the message from its queue. Fails (rather than doing nothing, as the AMQP client
    /// does) when the message was settled already or the channel it came on is gone: the broker
    /// has then put the message back.
    pub async fn ack(&self) -> Result<(), AmqpError> {
        if self.acker.ack(BasicAckOptions::default()).await? {
            Ok(())
        } else {
            Err(AmqpError::channel_closed("basic.ack"))
        }
    }

    /// Returns the message to its queue untouched (a nack with requeue).
    pub async fn give_back(&self) -> Result<(), AmqpError> {
        self.nack(false).await
    }

    /// Returns this message and every message received before it on the same channel and not
    /// yet settled (one nack with `multiple`).
    pub async fn give_back_all_up_to(&self) -> Result<(), AmqpError> {
        self.nack(true).await
    }

    async fn nack(&self, multiple: bool) -> Result<(), AmqpError> {
        self.acker
            .nack(BasicNackOptions {
                requeue: true,
                multiple,
            })
            .await?;
        Ok(())
    }

    /// Refuses the message: back to its queue with `requeue`, else dropped (or dead-lettered by
    /// the queue's own dead-letter exchange).
    pub async fn reject(&self, requeue: bool) -> Result<(), AmqpError> {
        self.acker.reject(BasicRejectOptions { requeue }).await?;
        Ok(())
    }
}

impl From<lapin::message::Delivery> for Delivery {
    fn from(d: lapin::message::Delivery) -> Self {
        Self {
            body: d.data,
            properties: d.properties.into(),
            routing_key: d.routing_key.as_str().to_owned(),
            delivery_tag: d.delivery_tag,
            redelivered: d.redelivered,
            acker: d.acker,
        }
    }
}
