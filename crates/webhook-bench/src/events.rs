//! Realistic signed Stripe events, made fast enough not to be the bottleneck.
//!
//! The body is the contract fixture as `webhookctl send-test-event` builds it, serialised once
//! per buyer with a placeholder id; each event only overwrites the placeholder bytes (event id,
//! and the session, customer and subscription ids derived from it) and signs the result.

use bytes::Bytes;
use webhookctl::test_event::{CheckoutSpec, checkout_event};

/// The webhook secret the benchmark's ingest verifies with.
pub const SECRET: &str = "whsec_bench_secret";

/// The event type every benchmark event has.
pub const EVENT_TYPE: &str = "checkout.session.completed";

/// 32 characters that never occur in the fixture, replaced by each event's unique suffix.
const PLACEHOLDER: &[u8; 32] = b"ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ";

/// One signed request.
pub struct SignedEvent {
    pub id: String,
    pub body: Bytes,
    pub signature: String,
}

struct Template {
    body: Vec<u8>,
    /// Offsets of every occurrence of [`PLACEHOLDER`].
    positions: Vec<usize>,
}

/// Makes events for a fixed set of buyers (the sandbox knows them as Keycloak users).
pub struct EventFactory {
    templates: Vec<Template>,
}

impl EventFactory {
    /// Events for these buyers, round robin.
    pub fn new(emails: &[String]) -> Self {
        assert!(!emails.is_empty(), "at least one buyer");
        let templates = emails
            .iter()
            .map(|email| {
                let spec = CheckoutSpec {
                    event_id: format!("evt_test_{}", std::str::from_utf8(PLACEHOLDER).expect("ASCII")),
                    event_type: EVENT_TYPE.into(),
                    email: email.clone(),
                    tier: "professional".into(),
                    cycle: "monthly".into(),
                    created: webhook_core::unix_now(),
                };
                let body = serde_json::to_vec(&checkout_event(&spec)).expect("fixture serialises");
                let positions = body
                    .windows(PLACEHOLDER.len())
                    .enumerate()
                    .filter(|(_, w)| *w == PLACEHOLDER)
                    .map(|(i, _)| i)
                    .collect::<Vec<_>>();
                assert!(!positions.is_empty(), "the placeholder is in the body");
                Template { body, positions }
            })
            .collect();
        Self { templates }
    }

    /// The event id of event `n` of `series` (a series is one phase of one run).
    pub fn id(series: u32, n: u64) -> String {
        format!("evt_test_{}", Self::suffix(series, n))
    }

    /// The first and the last possible event id of `series`, for `event_id BETWEEN $1 AND $2`.
    /// Every id of a series has the same prefix and length, and its number is fixed-width hex,
    /// so the range holds exactly that series, and Postgres reads it through the primary key.
    /// (A `LIKE 'prefix%'` cannot use that index under a non-C collation: it scans the whole
    /// table, and in a full run that table holds every event of the ingest phases.)
    pub fn series_range(series: u32) -> (String, String) {
        (Self::id(series, 0), Self::id(series, u64::MAX))
    }

    fn suffix(series: u32, n: u64) -> String {
        format!("{series:08x}{n:024x}")
    }

    /// Size of a request body in bytes.
    pub fn body_len(&self) -> usize {
        self.templates[0].body.len()
    }

    /// Event `n` of `series`, signed now. The same `(series, n)` always has the same id and
    /// body (a re-send is a duplicate, as Stripe's retries are).
    pub fn event(&self, series: u32, n: u64) -> SignedEvent {
        let template = &self.templates[(n % self.templates.len() as u64) as usize];
        let suffix = Self::suffix(series, n);
        let mut body = template.body.clone();
        for &at in &template.positions {
            body[at..at + PLACEHOLDER.len()].copy_from_slice(suffix.as_bytes());
        }
        let signature = webhook_core::signature::sign_header(SECRET, webhook_core::unix_now(), &body);
        SignedEvent {
            id: format!("evt_test_{suffix}"),
            body: body.into(),
            signature,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_with_unique_derived_ids() {
        let factory = EventFactory::new(&["a@example.com".into(), "b@example.com".into()]);
        let e = factory.event(7, 43);
        assert_eq!(e.id, EventFactory::id(7, 43));
        let env = webhook_core::Envelope::parse(e.body.clone()).unwrap();
        assert_eq!(env.id.as_str(), e.id);
        assert_eq!(env.event_type, EVENT_TYPE);
        assert_eq!(
            env.object_id.as_deref(),
            Some(format!("cs_test{}", &e.id["evt_test_".len()..]).as_str())
        );
        let body: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(body["data"]["object"]["metadata"]["user_email"], "b@example.com");
        let (first, last) = EventFactory::series_range(7);
        assert!(first < e.id && e.id < last, "{first} < {} < {last}", e.id);
        let (_, before) = EventFactory::series_range(6);
        let (after, _) = EventFactory::series_range(8);
        assert!(before < first && last < after, "series do not overlap");
        assert!(factory.body_len() > 2000, "realistic size");
    }
}
