//! The RabbitMQ layer: the only crate that speaks AMQP. The other crates use the types below
//! and never the AMQP client's; the client's types stay inside this crate.
//!
//! Modules, each using only the ones above it (no import circles):
//!
//! 1. [`error`]: [`AmqpError`] (the client's error, kept whole) and [`PublishError`].
//! 2. [`headers`]: [`Headers`], the one reader and writer of message headers (names in
//!    `webhook_core::message`).
//! 3. [`properties`]: [`Properties`] of a message, and [`job_properties`].
//! 4. [`delivery`]: a received [`Delivery`] and how it is settled (ack, give back, reject).
//! 5. [`channel`]: [`Connection`], [`Channel`], [`Consumer`], [`Confirm`]: the operations.
//! 6. [`trace_context`]: the W3C trace context in the headers.
//! 7. [`topology`]: names and idempotent declaration of exchanges, queues and bindings.
//! 8. [`broker`]: the supervised connection (reconnects by itself) and the confirmed publisher.
//! 9. [`dead_letters`]: reading, filtering, archiving and moving dead letters safely.
//!
//! This file (the top) builds a [`BrokerConfig`] from the settings.

pub mod broker;
pub mod channel;
pub mod dead_letters;
pub mod delivery;
pub mod error;
pub mod headers;
pub mod properties;
pub mod topology;
pub mod trace_context;

pub use broker::{Broker, BrokerConfig, Link, Outgoing};
pub use channel::{Channel, Confirm, Connection, Consumer};
pub use delivery::Delivery;
pub use error::{AmqpError, PublishError};
pub use headers::Headers;
pub use properties::{Properties, job_properties};
pub use topology::{RetryTier, Topology};

use std::time::Duration;
use webhook_core::Settings;

impl BrokerConfig {
    /// The broker configuration of a binary from its settings (checked when they were loaded:
    /// this does not fail today).
    pub fn from_settings(settings: &Settings, connection_name: &str) -> anyhow::Result<Self> {
        Ok(Self {
            url: settings.amqp.url.clone(),
            topology: Topology::new(
                &settings.amqp,
                &settings.worker.retry_schedule,
                &settings.stripe.handled_event_types,
            ),
            declare_topology: settings.amqp.declare_on_start,
            confirm_timeout: Duration::from_millis(settings.amqp.confirm_timeout_ms),
            reconnect_min: Duration::from_millis(settings.amqp.reconnect_min_ms),
            reconnect_max: Duration::from_millis(settings.amqp.reconnect_max_ms),
            connection_name: connection_name.to_owned(),
        })
    }
}
