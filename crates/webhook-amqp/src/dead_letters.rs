//! Reading and moving dead letters safely, for `webhookctl dlq`.
//!
//! The rule everywhere: a dead letter is acked only after what replaces it is safe — its copy
//! confirmed on the work queue (requeue, restore) or at the DLQ's tail (a message a filter
//! skips), or written and fsynced to a file (drain). An interrupted operation therefore leaves
//! each message in the DLQ, at its destination, or (harmlessly, thanks to the worker's ledger)
//! both.
//!
//! **Bounded memory.** `requeue` and `drain` read the DLQ through a [`Scan`]: one consumer with
//! a prefetch of [`PREFETCH`], so at most that many messages are ever held, and every message is
//! settled as the scan goes. A message the filter skips is *kept* by publishing a confirmed copy
//! of it (body and headers unchanged) to the DLQ's tail and then acking the original: it cannot
//! simply be given back (nack with requeue), because where a requeued message goes differs
//! between brokers (a quorum queue on RabbitMQ 3.10 puts it at the back, measured; RabbitMQ
//! documents its original place, near the head, where the scan would get the same message again
//! at once), and a scan that held every skipped message unacked until the end (as before) holds
//! the whole DLQ. The copies at
//! the tail must not be read again by the same scan, so a scan takes exactly as many messages
//! as the DLQ held when it started ([`Scan::start`]'s `limit`): those are the oldest, the ones
//! that were there. Dead letters that arrive during the scan queue up behind them and are left
//! for the next run. The cost: the skipped messages move to the DLQ's tail (their order among
//! themselves is kept), and an interruption between copies' confirms and the originals' acks
//! leaves those messages twice (requeueing both is harmless): at most [`PREFETCH`], the
//! messages the broker lets the scan hold unacked, since acks already sent but still in the
//! process's or the socket's buffers are lost with a SIGKILL.
//!
//! `dlq restore` reads its archive with [`ArchiveReader`], one line at a time.

use std::collections::VecDeque;
use std::io::{BufRead, Read};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use webhook_core::message;

use crate::channel::{Channel, Confirm, Connection, Consumer};
use crate::delivery::Delivery;
use crate::error::{AmqpError, PublishError};
use crate::headers::Headers;
use crate::properties::Properties;

/// One dead letter as operators see it.
#[derive(Debug)]
pub struct DeadLetter {
    pub event_id: String,
    pub event_type: String,
    pub attempts: u32,
    pub failed_step: String,
    pub error: String,
    pub error_kind: String,
    pub dead_lettered_at: String,
    /// The message itself; its body is dropped ([`Delivery::forget_body`]) once the message is
    /// safe elsewhere, so that a scan's window holds only what it still needs (what acks it).
    pub delivery: Delivery,
}

impl DeadLetter {
    pub fn from_delivery(delivery: Delivery) -> Self {
        let h = delivery.headers();
        let event_id = delivery
            .message_id()
            .map(str::to_owned)
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(delivery.body())
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned))
            })
            .unwrap_or_default();
        let event_type = h
            .get_str(message::H_ORIGINAL_ROUTING_KEY)
            .or_else(|| delivery.kind().map(str::to_owned))
            .unwrap_or_else(|| delivery.routing_key().to_owned());
        Self {
            event_id,
            event_type,
            attempts: h.retry_attempt(),
            failed_step: h.get_str(message::H_FAILED_STEP).unwrap_or_default(),
            error: h.get_str(message::H_ERROR).unwrap_or_default(),
            error_kind: h.get_str(message::H_ERROR_KIND).unwrap_or_default(),
            dead_lettered_at: h.get_str(message::H_DEAD_LETTERED_AT).unwrap_or_default(),
            delivery,
        }
    }

    /// The contract's `dlq list --json` object.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "event_id": self.event_id,
            "event_type": self.event_type,
            "attempts": self.attempts,
            "failed_step": self.failed_step,
            "error": self.error,
            "error_kind": self.error_kind,
            "dead_lettered_at": self.dead_lettered_at,
        })
    }
}

/// Which dead letters an operation touches.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub all: bool,
    pub event_ids: Vec<String>,
    pub event_type: Option<String>,
    pub error_contains: Option<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        !self.all && self.event_ids.is_empty() && self.event_type.is_none() && self.error_contains.is_none()
    }

    /// Every given criterion must match (`--all` matches everything).
    pub fn matches(&self, d: &DeadLetter) -> bool {
        if self.all {
            return true;
        }
        (self.event_ids.is_empty() || self.event_ids.contains(&d.event_id))
            && self.event_type.as_ref().is_none_or(|t| &d.event_type == t)
            && self
                .error_contains
                .as_ref()
                .is_none_or(|s| d.error.to_lowercase().contains(&s.to_lowercase()))
    }
}

/// A whole message as archived by `dlq drain`: body and properties exactly as they were.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Archived {
    pub event_id: String,
    pub event_type: String,
    pub message_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub content_type: Option<String>,
    pub timestamp: Option<u64>,
    /// The AMQP headers with their wire types, so a restore writes them back unchanged.
    pub headers: Option<Headers>,
    pub body_base64: String,
}

impl Archived {
    pub fn from_dead_letter(d: &DeadLetter) -> Self {
        Self {
            body_base64: base64::engine::general_purpose::STANDARD.encode(d.delivery.body()),
            ..Self::properties_of(d)
        }
    }

    /// The archive of `d` without its body (`body_base64` empty).
    fn properties_of(d: &DeadLetter) -> Self {
        let p = d.delivery.properties();
        Self {
            event_id: d.event_id.clone(),
            event_type: d.event_type.clone(),
            message_id: p.message_id().map(str::to_owned),
            kind: p.kind().map(str::to_owned),
            content_type: p.content_type().map(str::to_owned),
            timestamp: p.timestamp(),
            headers: p.header_table().cloned(),
            body_base64: String::new(),
        }
    }

    pub fn body(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.body_base64)
    }

    /// The properties to publish the archived message with; the retry count starts again at 0.
    pub fn properties(&self) -> Properties {
        let mut p = Properties::persistent();
        if let Some(v) = &self.message_id {
            p = p.with_message_id(v);
        }
        if let Some(v) = &self.kind {
            p = p.with_kind(v);
        }
        if let Some(v) = &self.content_type {
            p = p.with_content_type(v);
        }
        if let Some(v) = self.timestamp {
            p = p.with_timestamp(v);
        }
        p.with_headers(reset_retry_count(self.headers.as_ref()))
    }
}

/// Headers of a requeued or restored message: ours are kept (the error history stays readable),
/// the broker's per-queue ones are dropped, and the retry count starts again at 0.
pub fn reset_retry_count(headers: Option<&Headers>) -> Headers {
    let mut h = headers.map(Headers::without_broker_headers).unwrap_or_default();
    h.set_i32(message::H_RETRY_ATTEMPT, 0);
    h.set_str(
        message::H_REQUEUED_AT,
        &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    h
}

/// The properties of a dead letter put back on the work queue.
pub fn requeue_properties(d: &DeadLetter) -> Properties {
    Archived::properties_of(d).properties()
}

/// The properties of the copy that keeps a skipped dead letter at the DLQ's tail: everything
/// as it was (the retry count and the error history included), except the broker's counters of
/// deliveries, which describe this delivery and which the broker sets again itself.
pub fn kept_properties(d: &DeadLetter) -> Properties {
    let p = d.delivery.properties().clone();
    match p.header_table() {
        Some(h) => {
            let h = h.without_delivery_counts();
            p.with_headers(h)
        }
        None => p,
    }
}

/// Takes the next message without acking it (it stays ours until acked or returned).
pub async fn take(channel: &Channel, queue: &str) -> Result<Option<DeadLetter>, AmqpError> {
    Ok(channel.get(queue).await?.map(DeadLetter::from_delivery))
}

/// Removes the message from its queue (see [`Delivery::ack`]: fails when the channel it came
/// on is gone, and the broker has then put the message back already).
pub async fn ack(d: &DeadLetter) -> Result<(), AmqpError> {
    d.delivery.ack().await
}

/// Returns a held message to its queue untouched.
pub async fn give_back(d: &DeadLetter) -> Result<(), AmqpError> {
    d.delivery.give_back().await
}

/// Returns `d` and every message taken before it on the same channel and not yet settled
/// (one `basic.nack` with `multiple`): how a read-only scan gives everything back while holding
/// only the last message.
pub async fn give_back_all_up_to(d: &DeadLetter) -> Result<(), AmqpError> {
    d.delivery.give_back_all_up_to().await
}

/// How many messages of a [`Scan`] a command keeps unsettled at most (publishes waiting for
/// their confirms, archive lines waiting for their fsync). 64 keeps the broker's confirms
/// pipelined (about 5,000 messages a second moved on a small machine) without holding much.
pub const WINDOW: u16 = 64;

/// A [`Scan`]'s prefetch: the most messages it ever holds, so its memory is bounded by
/// `PREFETCH` × the largest message (bodies are at most `ingest.body_limit_bytes`, 1 MiB by
/// default; typical Stripe events are a few KiB, so a few hundred KiB in all). Twice
/// [`WINDOW`]: a quorum queue refills a consumer's prefetch in batches, and a consumer that
/// keeps its whole prefetch unsettled waits for every refill (measured: 1,000 messages a
/// second instead of 5,000).
pub const PREFETCH: u16 = 2 * WINDOW;

/// How long a scan waits for the next message before it asks the broker whether any is left.
const SCAN_IDLE: Duration = Duration::from_secs(2);

/// Why a scan stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(
        "something else is consuming the dead-letter queue {0} (another `webhookctl dlq requeue` or `dlq drain`?): wait for it to finish or stop it, then run this again"
    )]
    Busy(String),
    #[error("RabbitMQ cancelled the read of the dead-letter queue {0} (was it deleted?)")]
    Cancelled(String),
    #[error("reading the dead-letter queue: {0}")]
    Amqp(#[from] AmqpError),
}

/// One pass over a queue, oldest first, through a consumer of its own with a prefetch of
/// [`PREFETCH`] (see the module docs). It refuses to run beside another consumer of the queue
/// ([`ScanError::Busy`]): two scans at once would lose nothing, but each could read the other's
/// copies and miss messages of its own.
pub struct Scan {
    channel: Channel,
    consumer: Consumer,
    queue: String,
    remaining: u32,
}

impl Scan {
    /// Starts reading `queue`; [`Scan::next`] yields at most `limit` messages (the queue's depth
    /// when the command started).
    pub async fn start(connection: &Connection, queue: &str, limit: u32) -> Result<Self, ScanError> {
        let channel = connection.open_channel().await?;
        let consumer =
            channel
                .consume(queue, PREFETCH, true)
                .await
                .map_err(|e| match e.is_access_refused() {
                    true => ScanError::Busy(queue.to_owned()),
                    false => ScanError::Amqp(e),
                })?;
        let scan = Self {
            channel,
            consumer,
            queue: queue.to_owned(),
            remaining: limit,
        };
        // Quorum queues do not enforce `exclusive` (RabbitMQ 3.10 lets a second consumer in), so
        // count the consumers once this one is in: of two scans started together, at least the
        // later one sees the other and stops before it has settled anything.
        let consumers = scan.channel.queue_consumers(queue).await?;
        if consumers > 1 {
            scan.close().await;
            return Err(ScanError::Busy(queue.to_owned()));
        }
        Ok(scan)
    }

    /// The next message, or `None` once `limit` messages were read or the queue has none left
    /// (fewer than at the start: someone purged it, or holds some). Keep fewer than [`WINDOW`]
    /// messages unsettled while calling this, or the broker sends no more.
    pub async fn next(&mut self) -> Result<Option<DeadLetter>, ScanError> {
        while self.remaining > 0 {
            match tokio::time::timeout(SCAN_IDLE, self.consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    self.remaining -= 1;
                    return Ok(Some(DeadLetter::from_delivery(delivery)));
                }
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(None) => return Err(ScanError::Cancelled(self.queue.clone())),
                Err(_) => {
                    if self.channel.queue_depth(&self.queue).await? == 0 {
                        self.remaining = 0;
                    }
                }
            }
        }
        Ok(None)
    }

    /// Stops the consumer and closes its channel: whatever it took beyond the scan (or did not
    /// settle, after a failure) goes back to the queue untouched.
    pub async fn close(self) {
        self.consumer.cancel().await;
        self.channel.close("scan done").await;
    }
}

/// Publishes waiting for their confirms, oldest first, each with what to do once it is
/// confirmed (`T`: ack a dead letter, count a restored line). At most [`WINDOW`] are kept.
pub struct Confirms<T> {
    timeout: Duration,
    waiting: VecDeque<(Confirm, T)>,
}

impl<T> Confirms<T> {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            waiting: VecDeque::with_capacity(usize::from(WINDOW)),
        }
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.waiting.len() >= usize::from(WINDOW)
    }

    pub fn push(&mut self, confirm: Confirm, then: T) {
        self.waiting.push_back((confirm, then));
    }

    /// Waits for the oldest publish's confirm and returns its `T` (with the error, if it was
    /// not confirmed); `None` if nothing is waiting.
    pub async fn next(&mut self) -> Option<(Result<(), PublishError>, T)> {
        let (confirm, then) = self.waiting.pop_front()?;
        Some((confirm.wait(self.timeout).await, then))
    }
}

/// The longest line [`ArchiveReader`] reads: far more than any archived message (bodies of at
/// most a few MiB, base64-encoded), so a longer one is garbage, skipped without holding it.
pub const MAX_ARCHIVE_LINE: usize = 32 << 20;

/// One line of an archive.
#[derive(Debug)]
pub enum ArchiveLine {
    /// A whole archived message; `body` is decoded (and `archived.body_base64` emptied).
    Message {
        number: u64,
        archived: Archived,
        body: Vec<u8>,
    },
    /// A line that is not one: `reason` says why, for a person.
    Invalid { number: u64, reason: String },
}

/// Reads an archive written by `dlq drain` (JSON lines) one line at a time, holding one line.
/// Blank lines are skipped; line numbers count from 1 as editors do.
pub struct ArchiveReader<R> {
    reader: R,
    buf: Vec<u8>,
    number: u64,
}

impl<R: BufRead> ArchiveReader<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            buf: Vec::new(),
            number: 0,
        }
    }

    /// The number of the last line read.
    pub fn line_number(&self) -> u64 {
        self.number
    }

    /// The next non-blank line, or `None` at the end of the file. `Err` only for a failed read.
    pub fn next_line(&mut self) -> std::io::Result<Option<ArchiveLine>> {
        loop {
            if self.buf.capacity() > 4 << 20 {
                self.buf = Vec::new(); // do not keep a huge line's buffer
            }
            self.buf.clear();
            let limit = MAX_ARCHIVE_LINE as u64 + 1;
            if Read::take(&mut self.reader, limit).read_until(b'\n', &mut self.buf)? == 0 {
                return Ok(None);
            }
            self.number += 1;
            let number = self.number;
            let ended = self.buf.last() == Some(&b'\n');
            if !ended && self.buf.len() > MAX_ARCHIVE_LINE {
                self.skip_rest_of_line()?;
                return Ok(Some(ArchiveLine::Invalid {
                    number,
                    reason: format!(
                        "is longer than {} MiB, which no archived message is",
                        MAX_ARCHIVE_LINE >> 20
                    ),
                }));
            }
            let line = self.buf.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let invalid = |reason: String| Ok(Some(ArchiveLine::Invalid { number, reason }));
            let mut archived: Archived = match serde_json::from_slice(line) {
                Ok(a) => a,
                Err(_) if !ended => {
                    return invalid(
                        "is cut off: the file ends in the middle of it (left by an interrupted `dlq drain`?)"
                            .into(),
                    );
                }
                Err(e) => {
                    // serde's position is within the line, which is always its "line 1".
                    let e = e.to_string().replace(" at line 1 column ", " at column ");
                    return invalid(format!("is not an archived message (from `dlq drain`): {e}"));
                }
            };
            let body = match archived.body() {
                Ok(b) => b,
                Err(e) => return invalid(format!("has an invalid body_base64: {e}")),
            };
            archived.body_base64 = String::new();
            return Ok(Some(ArchiveLine::Message {
                number,
                archived,
                body,
            }));
        }
    }

    fn skip_rest_of_line(&mut self) -> std::io::Result<()> {
        loop {
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                return Ok(());
            }
            match available.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.reader.consume(i + 1);
                    return Ok(());
                }
                None => {
                    let n = available.len();
                    self.reader.consume(n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archived_line(id: &str, body: &[u8]) -> String {
        serde_json::to_string(&Archived {
            event_id: id.into(),
            event_type: "checkout.session.completed".into(),
            message_id: Some(id.into()),
            kind: None,
            content_type: None,
            timestamp: None,
            headers: None,
            body_base64: base64::engine::general_purpose::STANDARD.encode(body),
        })
        .unwrap()
    }

    /// A line read: `Ok((number, body))` or `Err((number, reason))`.
    type LineRead = Result<(u64, Vec<u8>), (u64, String)>;

    fn read_all(text: &[u8]) -> Vec<LineRead> {
        let mut r = ArchiveReader::new(std::io::BufReader::with_capacity(16, text));
        let mut out = Vec::new();
        while let Some(line) = r.next_line().unwrap() {
            out.push(match line {
                ArchiveLine::Message {
                    number,
                    archived,
                    body,
                } => {
                    assert!(archived.body_base64.is_empty(), "the encoded copy is dropped");
                    Ok((number, body))
                }
                ArchiveLine::Invalid { number, reason } => Err((number, reason)),
            });
        }
        out
    }

    #[test]
    fn archive_lines_are_numbered_as_in_an_editor_and_blank_ones_skipped() {
        let text = format!(
            "{}\n\n{}\r\n   \n{}",
            archived_line("evt_1", b"one"),
            archived_line("evt_2", b"two"),
            archived_line("evt_3", b"three")
        );
        let lines = read_all(text.as_bytes());
        assert_eq!(
            lines,
            vec![
                Ok((1, b"one".to_vec())),
                Ok((3, b"two".to_vec())),
                Ok((5, b"three".to_vec()))
            ],
            "CRLF and a last line without a newline are fine"
        );
    }

    #[test]
    fn a_cut_off_last_line_and_bad_lines_are_named_with_why() {
        let whole = archived_line("evt_1", b"one");
        let text = format!(
            "{whole}\nnot json\n{}\n{whole}\n{}",
            whole.replace("\"body_base64\":\"b25l\"", "\"body_base64\":\"@@@\""),
            &whole[..whole.len() / 2]
        );
        let lines = read_all(text.as_bytes());
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], Ok((1, b"one".to_vec())));
        let Err((2, reason)) = &lines[1] else {
            panic!("{:?}", lines[1])
        };
        assert!(
            reason.starts_with("is not an archived message") && reason.contains("at column 2"),
            "{reason}"
        );
        let Err((3, reason)) = &lines[2] else {
            panic!("{:?}", lines[2])
        };
        assert!(reason.contains("invalid body_base64"), "{reason}");
        assert_eq!(lines[3], Ok((4, b"one".to_vec())));
        let Err((5, reason)) = &lines[4] else {
            panic!("{:?}", lines[4])
        };
        assert!(reason.starts_with("is cut off"), "{reason}");
    }

    #[test]
    fn a_line_longer_than_any_message_is_skipped_without_being_held_whole() {
        let long = "x".repeat(MAX_ARCHIVE_LINE + 10);
        let text = format!("{long}\n{}\n", archived_line("evt_1", b"one"));
        let lines = read_all(text.as_bytes());
        assert_eq!(lines.len(), 2);
        let Err((1, reason)) = &lines[0] else {
            panic!("{:?}", lines[0])
        };
        assert!(reason.contains("longer than 32 MiB"), "{reason}");
        assert_eq!(lines[1], Ok((2, b"one".to_vec())), "reading goes on after it");
    }
}
