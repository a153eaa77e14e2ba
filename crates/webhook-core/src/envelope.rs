//! The Stripe event envelope (contracts/README.md §1.4): the few fields the pipeline routes on.
//!
//! The body is kept byte for byte; only `id`, `type`, `created`, `livemode` and `data.object.id`
//! are read. A [`VerifiedEvent`] can only be made from a [`VerifiedPayload`], so nothing that was
//! not signed by Stripe can reach the queue through the ingest.

use bytes::Bytes;
use serde::Deserialize;

use crate::signature::VerifiedPayload;

/// A Stripe event id (`evt_…`): non-empty, at most 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);

impl EventId {
    pub fn parse(raw: &str) -> Result<Self, EnvelopeError> {
        let ok = !raw.is_empty() && raw.len() <= 255 && raw.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(EnvelopeError::InvalidId)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a body is not a usable Stripe event. All map to 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the event has no \"id\"")]
    MissingId,
    #[error("the event \"id\" must be 1 to 255 visible ASCII characters")]
    InvalidId,
    #[error("the event has no \"type\"")]
    MissingType,
}

impl EnvelopeError {
    pub fn code(&self) -> &'static str {
        match self {
            EnvelopeError::InvalidJson(_) => "invalid_json",
            EnvelopeError::MissingId | EnvelopeError::InvalidId => "missing_event_id",
            EnvelopeError::MissingType => "missing_event_type",
        }
    }
}

#[derive(Deserialize)]
struct RawEnvelope {
    id: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    #[serde(default)]
    created: i64,
    #[serde(default)]
    livemode: bool,
    #[serde(default)]
    data: Option<RawData>,
}

#[derive(Deserialize)]
struct RawData {
    #[serde(default)]
    object: Option<RawObject>,
}

#[derive(Deserialize)]
struct RawObject {
    #[serde(default)]
    id: Option<String>,
}

/// The routing facts of a Stripe event plus its exact body.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub id: EventId,
    pub event_type: String,
    /// Unix seconds at which Stripe created the event.
    pub created: i64,
    pub livemode: bool,
    /// `data.object.id`, e.g. the checkout session id (the key of the business action).
    pub object_id: Option<String>,
    pub body: Bytes,
}

impl Envelope {
    /// Parses an envelope from any body (the worker re-parses untrusted queue messages with this).
    pub fn parse(body: Bytes) -> Result<Self, EnvelopeError> {
        let raw: RawEnvelope =
            serde_json::from_slice(&body).map_err(|e| EnvelopeError::InvalidJson(e.to_string()))?;
        let id = EventId::parse(raw.id.as_deref().ok_or(EnvelopeError::MissingId)?)?;
        let event_type = raw
            .event_type
            .filter(|t| !t.is_empty())
            .ok_or(EnvelopeError::MissingType)?;
        Ok(Self {
            id,
            event_type,
            created: raw.created,
            livemode: raw.livemode,
            object_id: raw.data.and_then(|d| d.object).and_then(|o| o.id),
            body,
        })
    }

    /// The event's type when the pipeline handles it; `None` for every other Stripe type.
    pub fn handled_type(&self) -> Option<crate::EventType> {
        crate::EventType::parse(&self.event_type)
    }
}

/// An envelope known to come from Stripe: its body carried a valid Stripe signature, or it was
/// read from Stripe's API with the account's key.
#[derive(Debug, Clone)]
pub struct VerifiedEvent(Envelope);

impl VerifiedEvent {
    pub fn parse(payload: VerifiedPayload) -> Result<Self, EnvelopeError> {
        Envelope::parse(payload.body().clone()).map(Self)
    }

    /// An event read from Stripe's API (`GET /v1/events`) over TLS with the account's key: it is
    /// authentic without a signature (contracts §5). Only the Stripe API client calls this.
    pub fn fetched_from_stripe(body: Bytes) -> Result<Self, EnvelopeError> {
        Envelope::parse(body).map(Self)
    }
    pub fn envelope(&self) -> &Envelope {
        &self.0
    }
}

impl std::ops::Deref for VerifiedEvent {
    type Target = Envelope;
    fn deref(&self) -> &Envelope {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FIXTURE: &[u8] = include_bytes!("../../../tests/fixtures/checkout_session_completed_event.json");

    #[test]
    fn parses_the_fixture() {
        let e = Envelope::parse(Bytes::from_static(FIXTURE)).unwrap();
        assert_eq!(e.id.as_str(), "evt_1RqExampleCheckoutDone00001");
        assert_eq!(e.event_type, "checkout.session.completed");
        assert_eq!(e.created, 1_754_000_123);
        assert!(!e.livemode);
        assert_eq!(
            e.object_id.as_deref(),
            Some("cs_test_a1YS1URlnyQCN5fUUduORoQ7Pw41PJqDWkIVQCpJPqkfIhd6tVY8XB1OLY")
        );
    }

    #[test]
    fn an_event_id_shows_as_itself() {
        let id = EventId::parse("evt_1RqExample").unwrap();
        assert_eq!(id.to_string(), "evt_1RqExample");
        assert_eq!(format!("[{id}]"), "[evt_1RqExample]");
    }

    #[test]
    fn refuses_bad_bodies() {
        let cases: &[(&str, &str)] = &[
            ("", "invalid_json"),
            ("not json", "invalid_json"),
            ("[1,2]", "invalid_json"),
            ("{\"type\":\"x\"}", "missing_event_id"),
            ("{\"id\":\"\",\"type\":\"x\"}", "missing_event_id"),
            ("{\"id\":\"evt 1\",\"type\":\"x\"}", "missing_event_id"),
            ("{\"id\":42,\"type\":\"x\"}", "invalid_json"),
            ("{\"id\":\"evt_1\"}", "missing_event_type"),
        ];
        for (body, code) in cases {
            let err = Envelope::parse(Bytes::from_static(body.as_bytes())).unwrap_err();
            assert_eq!(err.code(), *code, "{body}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let body = "[".repeat(100_000);
        assert_eq!(
            Envelope::parse(Bytes::from(body)).unwrap_err().code(),
            "invalid_json"
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Envelope::parse(Bytes::from(body));
        }
    }

    #[test]
    fn the_handled_type_of_an_envelope() {
        let parse =
            |t: &str| Envelope::parse(Bytes::from(format!(r#"{{"id": "evt_1", "type": "{t}"}}"#))).unwrap();
        assert_eq!(
            parse("invoice.paid").handled_type(),
            Some(crate::EventType::InvoicePaid)
        );
        assert_eq!(parse("customer.created").handled_type(), None);
    }
}
