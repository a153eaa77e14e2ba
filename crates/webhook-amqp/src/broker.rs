//! One supervised RabbitMQ connection per process, with confirm-mode publishing channels.
//!
//! A background task connects, declares the topology (if asked), publishes the live [`Link`]
//! through a `watch` channel, and reconnects with exponential backoff whenever the connection
//! dies (broker restart, network cut, a channel error from a publish). Callers never block on a
//! dead broker: [`Broker::publish`] fails fast with [`PublishError::Unavailable`] and the HTTP
//! layer answers 503, and consumers (the worker) watch [`Broker::links`] to resume consuming.
//!
//! `AMQP_URL` may list a cluster's nodes, comma-separated: each process goes through them in an
//! order of its own (shuffled at start, so that the replicas spread over the nodes rather than
//! all connecting to the first), each connection attempt taking the next node. A URL shows in logs only through `webhook_core::redact` (no password).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, ConnectionProperties, Event};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Notify, watch};
use webhook_core::{redact, urls};

use crate::channel::{self, Connection};
use crate::error::{AmqpError, PublishError};
use crate::properties::Properties;
use crate::topology::{self, Topology};

/// A live connection and its confirm-mode publishing channels.
pub struct Link {
    pub connection: Connection,
    /// Confirm-mode channels, each with at most one publish in flight (see [`Publishers`]).
    publishers: Publishers,
    /// Set when a user of the link saw it fail; the supervisor then replaces it.
    broken: AtomicBool,
    /// Increments with every new connection (tests and logs use it).
    pub generation: u64,
}

impl Link {
    pub fn is_usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed) && self.connection.is_connected()
    }
}

/// How many publishes may wait for their confirms at once, per process (one channel each).
const PUBLISHERS: usize = 128;

/// Confirm-mode channels, each lent to one publish at a time.
///
/// Why not one channel for every publish: RabbitMQ confirms several publishes at once
/// (`multiple`), and the AMQP client credits a `basic.return` (an unroutable message) to
/// whichever publish of that acknowledgement it resolves first, not to the one returned. With
/// one publish in flight per channel, the return can only be that publish's own: an unroutable
/// message is never answered `Ok` (an event answered 2xx while queued nowhere), and a routed
/// one is never answered `Returned`.
struct Publishers {
    idle: std::sync::Mutex<Vec<Channel>>,
    permits: tokio::sync::Semaphore,
}

impl Publishers {
    fn new(first: Channel) -> Self {
        Self {
            idle: std::sync::Mutex::new(vec![first]),
            permits: tokio::sync::Semaphore::new(PUBLISHERS),
        }
    }

    fn take_idle(&self) -> Option<Channel> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(ch) = idle.pop() {
            if ch.status().connected() {
                return Some(ch);
            }
        }
        None
    }

    fn give_back(&self, ch: Channel) {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(ch);
    }
}

/// How the broker should be reached.
#[derive(Clone)]
pub struct BrokerConfig {
    /// One URL, or several (a cluster's nodes) comma-separated; see `webhook_core::urls`.
    pub url: SecretString,
    pub topology: Topology,
    pub declare_topology: bool,
    pub confirm_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Shown in the RabbitMQ management UI (`connection_name`).
    pub connection_name: String,
}

/// What to publish. `mandatory` is always set: an unroutable message is a failure, never a drop.
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: Properties,
}

struct Shared {
    config: BrokerConfig,
    link: watch::Sender<Option<Arc<Link>>>,
    /// Wakes the supervisor when a caller finds the link broken.
    wake: Notify,
    shutdown: Notify,
}

/// Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl Broker {
    /// Starts the supervisor. Returns at once; use [`Broker::wait_connected`] to wait for the first link.
    pub fn start(config: BrokerConfig) -> Self {
        let (link, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            config,
            link,
            wake: Notify::new(),
            shutdown: Notify::new(),
        });
        tokio::spawn(supervise(shared.clone()));
        Self { shared }
    }

    pub fn topology(&self) -> &Topology {
        &self.shared.config.topology
    }

    /// The current link, if it is usable.
    pub fn current(&self) -> Option<Arc<Link>> {
        self.shared.link.borrow().clone().filter(|l| l.is_usable())
    }

    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    /// Subscribe to link changes (a new connection, or `None` while reconnecting).
    pub fn links(&self) -> watch::Receiver<Option<Arc<Link>>> {
        self.shared.link.subscribe()
    }

    /// Waits until a link is up, or the deadline passes.
    pub async fn wait_connected(&self, timeout: Duration) -> Option<Arc<Link>> {
        let mut rx = self.links();
        let wait = async {
            loop {
                if let Some(link) = self.current() {
                    return link;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }

    /// Tells the supervisor that `link` failed, so it reconnects now rather than at the next event.
    pub fn report_broken(&self, link: &Link) {
        link.broken.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }

    /// Publishes with `mandatory` and waits for the publisher confirm. `Ok` means the broker has
    /// the message on disk in every queue it routed to (for quorum queues: a majority).
    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<(), PublishError> {
        let link = self.current().ok_or(PublishError::Unavailable)?;
        let timeout = self.shared.config.confirm_timeout;
        let pool = &link.publishers;
        let _permit = pool
            .permits
            .acquire()
            .await
            .map_err(|_| PublishError::Unavailable)?;
        let channel = match pool.take_idle() {
            Some(ch) => ch,
            None => {
                let ch = link.connection.0.create_channel().await?;
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
                ch
            }
        };
        let attempt = async {
            let confirm = channel
                .basic_publish(
                    msg.exchange.into(),
                    msg.routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    msg.body,
                    msg.properties.into(),
                )
                .await?
                .await?;
            channel::confirmation_result(confirm)
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(PublishError::Timeout(timeout)),
        };
        match &result {
            // The channel is suspect (a lost confirm may never arrive): it is not lent again,
            // and if the connection went with it, the supervisor replaces the link.
            Err(PublishError::Amqp(_) | PublishError::Timeout(_)) => {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), channel.close(200, "suspect".into())).await;
                if !link.connection.is_connected() {
                    self.report_broken(&link);
                }
            }
            _ => pool.give_back(channel),
        }
        result
    }

    /// Closes the connection and stops reconnecting.
    pub async fn close(&self) {
        self.shared.shutdown.notify_one();
        let link = self.shared.link.send_replace(None);
        if let Some(link) = link {
            link.connection.close("shutdown").await;
        }
    }
}

/// The node the `attempt`-th connection attempt (from 1) goes to: the nodes in the order that
/// `seed` shuffles them, in turn.
fn node(url: &str, attempt: u64, seed: u64) -> &str {
    let mut nodes = urls::split_list(url);
    if nodes.is_empty() {
        return url;
    }
    // Fisher-Yates with a xorshift generator started from the seed.
    let mut x = seed | 1;
    for i in (1..nodes.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        nodes.swap(i, (x % (i as u64 + 1)) as usize);
    }
    nodes[((attempt.max(1) - 1) % nodes.len() as u64) as usize]
}

/// The longest one connection attempt (TCP, TLS, the AMQP handshake, the topology) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A seed of this process's own (the standard library's random hash keys).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

async fn connect(shared: &Shared, node: &str, generation: u64) -> Result<Link, AmqpError> {
    let cfg = &shared.config;
    let props = ConnectionProperties::default().with_connection_name(cfg.connection_name.clone().into());
    let connection = lapin::Connection::connect(node, props).await?;
    if cfg.declare_topology {
        let ch = connection.create_channel().await?;
        topology::declare(&ch.clone().into(), &cfg.topology).await?;
        let _ = ch.close(200, "topology declared".into()).await;
    }
    let publisher = connection.create_channel().await?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(Link {
        connection: Connection(connection),
        publishers: Publishers::new(publisher),
        broken: AtomicBool::new(false),
        generation,
    })
}

async fn supervise(shared: Arc<Shared>) {
    let mut generation = 0u64;
    let backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(shared.config.reconnect_min)
            .with_max_delay(shared.config.reconnect_max)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = backoff();
    let url = shared.config.url.expose_secret();
    let seed = random_seed();
    loop {
        generation += 1;
        let node = node(url, generation, seed);
        // Shown as `node` in every log line of this connection; never with its password.
        let shown = redact::url(node);
        // Bounded: a node that drops packets would hold the attempt for minutes (the kernel's
        // SYN retries, an AMQP handshake nobody answers) while the other nodes are up.
        let attempt = tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, connect(&shared, node, generation)) => r,
            _ = shared.shutdown.notified() => return,
        };
        let attempt = attempt.map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"));
        match attempt {
            Ok(Ok(link)) => {
                tracing::info!(generation, node = %shown, "connected to RabbitMQ");
                let mut events = link.connection.0.events_listener();
                let link = Arc::new(link);
                shared.link.send_replace(Some(link.clone()));
                delays = backoff();
                // Wait until the connection reports an error, a user reports it broken, or we stop.
                loop {
                    tokio::select! {
                        ev = events.next() => match ev {
                            // lapin reports a channel's error (e.g. a passive declare of a
                            // missing queue: 404 closes that channel) here too: only an error
                            // that left the connection or the publisher unusable is a reason to
                            // reconnect, which would hand back every unacked delivery.
                            Some(Event::Error(e)) if link.is_usable() => {
                                tracing::debug!(node = %shown, error = %redact::scrub(&e.to_string(), url), "RabbitMQ channel error; the connection is fine");
                            }
                            Some(Event::Error(e)) => {
                                tracing::warn!(node = %shown, error = %redact::scrub(&e.to_string(), url), "RabbitMQ connection failed");
                                break;
                            }
                            Some(Event::ConnectionBlocked(reason)) => tracing::warn!(%reason, "RabbitMQ blocked publishing (resource alarm)"),
                            Some(Event::ConnectionUnblocked) => tracing::info!("RabbitMQ unblocked publishing"),
                            Some(_) => {}
                            None => break,
                        },
                        _ = shared.wake.notified() => {
                            if !link.is_usable() {
                                tracing::warn!("RabbitMQ link reported broken; reconnecting");
                                break;
                            }
                        }
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {
                            if !link.is_usable() {
                                tracing::warn!("RabbitMQ connection is no longer usable; reconnecting");
                                break;
                            }
                        }
                        _ = shared.shutdown.notified() => return,
                    }
                }
                shared.link.send_replace(None);
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    link.connection.0.close(320, "reconnecting".into()),
                )
                .await;
            }
            Err(timeout) => {
                tracing::warn!(
                    node = %shown,
                    error = %timeout,
                    "cannot connect to RabbitMQ; trying the next node (check AMQP_URL and that RabbitMQ is running)"
                );
            }
            Ok(Err(e)) => {
                // lapin's errors may quote the URL (an unparsable one whole): scrubbed.
                tracing::warn!(
                    node = %shown,
                    error = %redact::scrub(&e.to_string(), url),
                    "cannot connect to RabbitMQ; retrying (check AMQP_URL and that RabbitMQ is running)"
                );
            }
        }
        let delay = delays.next().unwrap_or(shared.config.reconnect_max);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.shutdown.notified() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_attempt_takes_the_next_node_of_a_shuffled_order() {
        let url = "amqp://u:p@r0/%2f, amqp://u:p@r1/%2f,amqp://u:p@r2/%2f";
        let mut firsts = std::collections::HashSet::new();
        for seed in 0..64u64 {
            let seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let nodes: Vec<_> = (1..=6).map(|a| super::node(url, a, seed)).collect();
            // Every node once in each round, the same order every round.
            let mut round: Vec<_> = nodes[..3].to_vec();
            round.sort();
            assert_eq!(
                round,
                ["amqp://u:p@r0/%2f", "amqp://u:p@r1/%2f", "amqp://u:p@r2/%2f"]
            );
            assert_eq!(nodes[..3], nodes[3..]);
            firsts.insert(nodes[0]);
        }
        assert_eq!(firsts.len(), 3, "processes start on different nodes");
        assert_eq!(super::node("amqp://h", 7, 1), "amqp://h");
        assert_eq!(super::node("", 1, 1), "");
    }
}
