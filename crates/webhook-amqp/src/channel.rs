//! A connection ([`Connection`]), its channels ([`Channel`]), a queue's consumer ([`Consumer`])
//! and a publish's confirm ([`Confirm`]): the AMQP operations the other crates use.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{ConnectionProperties, PublisherConfirm};

use crate::delivery::Delivery;
use crate::error::{AmqpError, PublishError};
use crate::properties::Properties;

/// One AMQP connection. [`crate::Broker`] keeps the one of a process (reconnecting it); tests and
/// benchmarks may open their own with [`Connection::connect`].
pub struct Connection(pub(crate) lapin::Connection);

impl Connection {
    /// Connects to one node (`url` is one node's URL), shown as `name` in the management UI.
    pub async fn connect(url: &str, name: &str) -> Result<Self, AmqpError> {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        Ok(Self(lapin::Connection::connect(url, props).await?))
    }

    pub fn is_connected(&self) -> bool {
        self.0.status().connected()
    }

    pub async fn open_channel(&self) -> Result<Channel, AmqpError> {
        Ok(Channel(self.0.create_channel().await?))
    }

    /// A channel in confirm mode: every publish on it gets a [`Confirm`].
    pub async fn open_confirm_channel(&self) -> Result<Channel, AmqpError> {
        let ch = self.0.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Channel(ch))
    }

    /// Closes the connection (normal shutdown); errors are ignored (it is gone either way).
    pub async fn close(&self, reason: &str) {
        let _ = self.0.close(200, reason.into()).await;
    }
}

impl From<lapin::Connection> for Connection {
    fn from(c: lapin::Connection) -> Self {
        Self(c)
    }
}

/// A channel of a connection. A refused operation (a passive declare of a missing queue, …)
/// closes it: open another one for the next operation.
#[derive(Clone)]
pub struct Channel(pub(crate) lapin::Channel);

impl Channel {
    /// Messages ready in `queue` (a passive declare: fails if the queue does not exist
    /// ([`AmqpError::is_not_found`]), and then the broker closes the channel).
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, AmqpError> {
        Ok(self.passive_declare(queue).await?.message_count())
    }

    /// Consumers of `queue` (a passive declare, as [`Channel::queue_depth`]).
    pub async fn queue_consumers(&self, queue: &str) -> Result<u32, AmqpError> {
        Ok(self.passive_declare(queue).await?.consumer_count())
    }

    async fn passive_declare(&self, queue: &str) -> Result<lapin::Queue, AmqpError> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        Ok(self
            .0
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?)
    }

    /// Deletes every ready message of `queue`; returns how many.
    pub async fn queue_purge(&self, queue: &str) -> Result<u32, AmqpError> {
        Ok(self
            .0
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await?)
    }

    /// Takes the next message of `queue` without acking it (it stays ours until settled).
    pub async fn get(&self, queue: &str) -> Result<Option<Delivery>, AmqpError> {
        Ok(self
            .0
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?
            .map(|m| m.delivery.into()))
    }

    /// Consumes `queue` with manual acks, at most `prefetch` messages unsettled at once;
    /// `exclusive` asks the broker to refuse any other consumer (403, see
    /// [`AmqpError::is_access_refused`]; quorum queues do not enforce it).
    pub async fn consume(&self, queue: &str, prefetch: u16, exclusive: bool) -> Result<Consumer, AmqpError> {
        self.0
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await?;
        let inner = self
            .0
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions {
                    exclusive,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(Consumer {
            channel: self.clone(),
            inner,
        })
    }

    /// Publishes with `mandatory` (an unroutable message is returned, never dropped) and
    /// returns at once; on a confirm-mode channel, await the broker's answer with
    /// [`Confirm::wait`]. Many may be in flight on one channel.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: Properties,
    ) -> Result<Confirm, AmqpError> {
        Ok(Confirm(
            self.0
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    body,
                    properties.into(),
                )
                .await?,
        ))
    }

    pub fn is_connected(&self) -> bool {
        self.0.status().connected()
    }

    /// Closes the channel: whatever it holds unsettled goes back to its queue. Errors are
    /// ignored (it is gone either way).
    pub async fn close(&self, reason: &str) {
        let _ = self.0.close(200, reason.into()).await;
    }
}

impl From<lapin::Channel> for Channel {
    fn from(c: lapin::Channel) -> Self {
        Self(c)
    }
}

/// The consumer of a queue on a channel (see [`Channel::consume`]).
pub struct Consumer {
    channel: Channel,
    inner: lapin::Consumer,
}

impl Consumer {
    /// The next message; `None` when the broker cancelled the consumer (its queue was deleted).
    pub async fn next(&mut self) -> Option<Result<Delivery, AmqpError>> {
        Some(
            self.inner
                .next()
                .await?
                .map(Delivery::from)
                .map_err(AmqpError::from),
        )
    }

    /// Stops the consumer (errors ignored). Messages received and not settled stay ours until
    /// settled or until the channel closes.
    pub async fn cancel(&self) {
        let _ = self
            .channel
            .0
            .basic_cancel(self.inner.tag(), BasicCancelOptions::default())
            .await;
    }

    /// The channel the consumer is on (its messages settle through it).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

/// The broker's answer to one publish on a confirm-mode channel, to wait for.
pub struct Confirm(PublisherConfirm);

impl Confirm {
    /// `Ok` only for an ack of a routed message: the broker has it on disk in every queue it
    /// routed to (for quorum queues: a majority).
    pub async fn wait(self, timeout: Duration) -> Result<(), PublishError> {
        match tokio::time::timeout(timeout, self.0).await {
            Err(_) => Err(PublishError::Timeout(timeout)),
            Ok(Err(e)) => Err(PublishError::Amqp(e.into())),
            Ok(Ok(confirmation)) => confirmation_result(confirmation),
        }
    }
}

/// What a publisher confirm says. With mandatory, `basic.return` comes before the ack:
/// "returned then acked" is a drop.
pub(crate) fn confirmation_result(c: lapin::Confirmation) -> Result<(), PublishError> {
    match c {
        lapin::Confirmation::Ack(None) => Ok(()),
        lapin::Confirmation::Ack(Some(returned)) => Err(PublishError::Returned(format!(
            "{} {}",
            returned.reply_code, returned.reply_text
        ))),
        lapin::Confirmation::Nack(_) | lapin::Confirmation::NotRequested => Err(PublishError::Nacked),
    }
}
