//! Builds realistic signed Stripe events from the contract fixtures (used by
//! `send-test-event`, the tests and the benchmarks).

use serde_json::{Value, json};

const CHECKOUT_EVENT: &str = include_str!("../../../tests/fixtures/checkout_session_completed_event.json");

/// What to put in a test checkout event.
#[derive(Debug, Clone)]
pub struct CheckoutSpec {
    pub event_id: String,
    pub event_type: String,
    pub email: String,
    pub tier: String,
    pub cycle: String,
    /// Unix seconds for the envelope's `created`.
    pub created: i64,
}

/// A new random event id in Stripe's style.
pub fn new_event_id() -> String {
    format!("evt_test_{}", uuid::Uuid::new_v4().simple())
}

/// The fixture envelope with a fresh id, the buyer, tier and cycle in the metadata, and session,
/// customer and subscription ids derived from the event id (so the same event id always
/// describes the same checkout).
pub fn checkout_event(spec: &CheckoutSpec) -> Value {
    let mut event: Value = serde_json::from_str(CHECKOUT_EVENT).expect("fixture is JSON");
    let suffix: String = spec
        .event_id
        .trim_start_matches("evt_")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    event["id"] = json!(spec.event_id);
    event["type"] = json!(spec.event_type);
    event["created"] = json!(spec.created);
    let session = &mut event["data"]["object"];
    session["id"] = json!(format!("cs_{suffix}"));
    session["created"] = json!(spec.created - 60);
    session["customer"] = json!(format!("cus_{suffix}"));
    session["subscription"] = json!(format!("sub_{suffix}"));
    session["customer_details"]["email"] = json!(spec.email);
    session["metadata"] = json!({
        "user_email": spec.email,
        "tier_id": spec.tier,
        "billing_cycle": spec.cycle,
    });
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_an_envelope_the_ingest_parses() {
        let spec = CheckoutSpec {
            event_id: "evt_test_abc".into(),
            event_type: "checkout.session.completed".into(),
            email: "a@example.com".into(),
            tier: "professional".into(),
            cycle: "yearly".into(),
            created: 1_800_000_000,
        };
        let body = serde_json::to_vec(&checkout_event(&spec)).unwrap();
        let env = webhook_core::Envelope::parse(body.into()).unwrap();
        assert_eq!(env.id.as_str(), "evt_test_abc");
        assert_eq!(env.object_id.as_deref(), Some("cs_testabc"));
        assert_eq!(env.created, 1_800_000_000);
    }
}
