//! Stripe events as a real account sends them, built from the contract fixtures: checkouts,
//! subscription updates and deletions, invoices. Unsigned bodies: publish them to the exchange,
//! or sign them with [`crate::sign`] for the ingest.

use serde_json::{Value, json};

const FIXTURE_SUB: &str = include_str!("../fixtures/subscription_fixture.json");
const FIXTURE_INVOICE: &str = include_str!("../fixtures/invoice_fixture.json");

/// An event envelope around `object`.
pub fn envelope(id: &str, event_type: &str, created: i64, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "object": "event", "api_version": "2026-07-29.dahlia", "created": created,
        "data": {"object": object}, "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null}, "type": event_type,
    }))
    .unwrap()
}

/// A paid `checkout.session.completed` of subscription `sub` for customer `cus`, bought by the
/// Keycloak user `email` (metadata.user_email, also the billing email).
pub fn checkout(id: &str, created: i64, sub: &str, cus: &str, email: &str, tier: &str) -> Vec<u8> {
    checkout_paid_by(id, created, sub, cus, email, email, tier)
}

/// [`checkout`] where someone else pays: `billing_email` is `customer_details.email`.
pub fn checkout_paid_by(
    id: &str,
    created: i64,
    sub: &str,
    cus: &str,
    email: &str,
    billing_email: &str,
    tier: &str,
) -> Vec<u8> {
    let spec = webhookctl::test_event::CheckoutSpec {
        event_id: id.into(),
        event_type: "checkout.session.completed".into(),
        email: email.into(),
        tier: tier.into(),
        cycle: "monthly".into(),
        created,
    };
    let mut event = webhookctl::test_event::checkout_event(&spec);
    let session = &mut event["data"]["object"];
    session["subscription"] = json!(sub);
    session["customer"] = json!(cus);
    session["customer_details"]["email"] = json!(billing_email);
    session["customer_email"] = json!(billing_email);
    serde_json::to_vec(&event).unwrap()
}

/// A `customer.subscription.*` event: the subscription fixture as `sub` of `cus`, with `status`,
/// on a monthly price whose metadata names `tier`.
pub fn subscription(
    id: &str,
    event_type: &str,
    created: i64,
    sub: &str,
    cus: &str,
    status: &str,
    tier: &str,
) -> Vec<u8> {
    let mut object: Value = serde_json::from_str(FIXTURE_SUB).unwrap();
    object["id"] = json!(sub);
    object["customer"] = json!(cus);
    object["status"] = json!(status);
    object["items"]["data"][0]["price"]["id"] = json!(format!("price_{tier}_monthly"));
    object["items"]["data"][0]["price"]["metadata"] = json!({"tier_id": tier});
    envelope(id, event_type, created, object)
}

/// An `invoice.*` event for `sub` (at `parent.subscription_details.subscription`) of `cus`.
pub fn invoice(id: &str, event_type: &str, created: i64, invoice_id: &str, sub: &str, cus: &str) -> Vec<u8> {
    invoice_to(id, event_type, created, invoice_id, sub, cus, None)
}

/// [`invoice`] with the invoice's `customer_email` (the billing contact).
pub fn invoice_to(
    id: &str,
    event_type: &str,
    created: i64,
    invoice_id: &str,
    sub: &str,
    cus: &str,
    customer_email: Option<&str>,
) -> Vec<u8> {
    let mut object: Value = serde_json::from_str(FIXTURE_INVOICE).unwrap();
    object["id"] = json!(invoice_id);
    object["customer"] = json!(cus);
    object["customer_email"] = json!(customer_email);
    object["parent"]["subscription_details"]["subscription"] = json!(sub);
    envelope(id, event_type, created, object)
}

/// The routing key of an event body (its `type`).
pub fn event_type(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body).unwrap()["type"]
        .as_str()
        .unwrap()
        .to_owned()
}
