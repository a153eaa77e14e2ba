//! Reading and moving dead letters safely, for `webhookctl dlq`.
//!
//! The rule everywhere: a dead letter is acked only after what replaces it is safe — its copy
//! confirmed on the work queue (requeue, restore) or written and fsynced to a file (drain).
//! An interrupted operation therefore leaves each message in the DLQ, at its destination, or
//! (harmlessly, thanks to the worker's ledger) both. Messages that do not match a filter are
//! held unacked while the scan goes on and returned untouched at the end.

use base64::Engine;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use webhook_core::message;

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
    pub message: BasicGetMessage,
}

impl DeadLetter {
    pub fn from_message(message: BasicGetMessage) -> Self {
        let props = &message.delivery.properties;
        let h = props.headers().as_ref();
        let event_id = props
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned())
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&message.delivery.data)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned))
            })
            .unwrap_or_default();
        let event_type = header_str(h, message::H_ORIGINAL_ROUTING_KEY)
            .or_else(|| props.kind().as_ref().map(|t| t.as_str().to_owned()))
            .unwrap_or_else(|| message.delivery.routing_key.as_str().to_owned());
        Self {
            event_id,
            event_type,
            attempts: header_u32(h, message::H_RETRY_ATTEMPT).unwrap_or(0),
            failed_step: header_str(h, message::H_FAILED_STEP).unwrap_or_default(),
            error: header_str(h, message::H_ERROR).unwrap_or_default(),
            error_kind: header_str(h, message::H_ERROR_KIND).unwrap_or_default(),
            dead_lettered_at: header_str(h, message::H_DEAD_LETTERED_AT).unwrap_or_default(),
            message,
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
    pub headers: Option<FieldTable>,
    pub body_base64: String,
}

impl Archived {
    pub fn from_dead_letter(d: &DeadLetter) -> Self {
        let p = &d.message.delivery.properties;
        Self {
            event_id: d.event_id.clone(),
            event_type: d.event_type.clone(),
            message_id: p.message_id().as_ref().map(|s| s.as_str().to_owned()),
            kind: p.kind().as_ref().map(|s| s.as_str().to_owned()),
            content_type: p.content_type().as_ref().map(|s| s.as_str().to_owned()),
            timestamp: *p.timestamp(),
            headers: p.headers().clone(),
            body_base64: base64::engine::general_purpose::STANDARD.encode(&d.message.delivery.data),
        }
    }

    pub fn body(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.body_base64)
    }

    /// The properties to publish the archived message with; the retry count starts again at 0.
    pub fn properties(&self) -> BasicProperties {
        let mut p = BasicProperties::default().with_delivery_mode(2);
        if let Some(v) = &self.message_id {
            p = p.with_message_id(v.as_str().into());
        }
        if let Some(v) = &self.kind {
            p = p.with_type(v.as_str().into());
        }
        if let Some(v) = &self.content_type {
            p = p.with_content_type(v.as_str().into());
        }
        if let Some(v) = self.timestamp {
            p = p.with_timestamp(v);
        }
        p.with_headers(reset_retry_count(self.headers.as_ref()))
    }
}

/// Headers the broker sets on delivery; they describe a past queue, not the message.
const BROKER_HEADERS: &[&str] = &[
    "x-delivery-count",
    "x-acquired-count",
    "x-death",
    "x-first-death-",
    "x-last-death-",
];

/// Headers of a requeued or restored message: ours are kept (the error history stays readable),
/// the broker's per-queue ones are dropped, and the retry count starts again at 0.
pub fn reset_retry_count(headers: Option<&FieldTable>) -> FieldTable {
    let mut h = FieldTable::default();
    if let Some(headers) = headers {
        for (k, v) in headers.inner() {
            if !BROKER_HEADERS.iter().any(|b| k.as_str().starts_with(b)) {
                h.insert(k.clone(), v.clone());
            }
        }
    }
    h.insert(message::H_RETRY_ATTEMPT.into(), AMQPValue::LongInt(0));
    h.insert(
        "x-requeued-at".into(),
        AMQPValue::LongString(LongString::from(
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )),
    );
    h
}

/// The properties of a dead letter put back on the work queue.
pub fn requeue_properties(d: &DeadLetter) -> BasicProperties {
    Archived::from_dead_letter(d).properties()
}

/// Takes the next message without acking it (it stays ours until acked or returned).
pub async fn take(channel: &Channel, queue: &str) -> Result<Option<DeadLetter>, lapin::Error> {
    Ok(channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await?
        .map(DeadLetter::from_message))
}

pub async fn ack(d: &DeadLetter) -> Result<(), lapin::Error> {
    d.message
        .delivery
        .ack(BasicAckOptions::default())
        .await
        .map(|_| ())
}

/// Returns a held message to its queue untouched.
pub async fn give_back(d: &DeadLetter) -> Result<(), lapin::Error> {
    d.message
        .delivery
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .map(|_| ())
}

fn header_str(h: Option<&FieldTable>, key: &str) -> Option<String> {
    match h?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn header_u32(h: Option<&FieldTable>, key: &str) -> Option<u32> {
    match h?.inner().get(key)? {
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        _ => None,
    }
}
