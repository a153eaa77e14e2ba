//! Reading the work queue back: which event ids are on it, and how often.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::{BasicConsumeOptions, QueuePurgeOptions};
use lapin::types::FieldTable;

/// How often each message id was seen on the work queue.
#[derive(Default)]
pub struct Tally {
    pub seen: HashMap<String, u32>,
}

/// Takes every message off `queue` (auto-ack) and counts its `message_id` in `tally`, until at
/// least `expected` arrived and the queue is empty, or nothing arrived for `idle`.
/// Returns the number of messages taken.
pub async fn drain(
    conn: &Connection,
    queue: &str,
    expected: usize,
    idle: Duration,
    tally: &mut Tally,
) -> anyhow::Result<usize> {
    let channel = conn.create_channel().await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut taken = 0usize;
    loop {
        let wait = if taken >= expected {
            Duration::from_millis(300)
        } else {
            idle
        };
        match tokio::time::timeout(wait, consumer.next()).await {
            Ok(Some(delivery)) => {
                let delivery = delivery?;
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default();
                *tally.seen.entry(id).or_default() += 1;
                taken += 1;
            }
            Ok(None) => break,
            Err(_) => {
                if taken < expected
                    || webhook_amqp::Channel::from(channel.clone())
                        .queue_depth(queue)
                        .await?
                        == 0
                {
                    break;
                }
            }
        }
    }
    let _ = channel.close(200, "drained".into()).await;
    Ok(taken)
}

/// Empties `queue` (the floor's messages are not for anyone).
pub async fn purge(conn: &Connection, queue: &str) -> anyhow::Result<u32> {
    let channel = conn.create_channel().await?;
    let n = channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    let _ = channel.close(200, "purged".into()).await;
    Ok(n)
}
