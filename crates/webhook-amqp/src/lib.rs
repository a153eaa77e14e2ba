//! The RabbitMQ layer: the only crate that speaks AMQP.
//!
//! - [`topology`]: names and idempotent declaration of exchanges, queues and bindings.
//! - [`broker`]: the supervised connection (reconnects by itself) and the confirmed publisher.
//! - [`dead_letters`]: reading, filtering, archiving and moving dead letters safely.
//! - [`trace_context`]: the W3C trace context in the message headers.

pub mod broker;
pub mod dead_letters;
pub mod topology;
pub mod trace_context;

pub use broker::{Broker, BrokerConfig, Link, Outgoing, PublishError, job_properties};
pub use lapin;
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
