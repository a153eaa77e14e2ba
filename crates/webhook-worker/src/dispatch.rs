//! One message → the handler of its event type → an outcome. The body is untrusted: it is
//! re-parsed here, and anything malformed is a permanent failure (dead letter), never a panic.

use bytes::Bytes;
use serde_json::Value;
use webhook_core::Envelope;
use webhook_store::events;

use crate::context::WorkerContext;
use crate::failure::{Failure, JobError};
use crate::handlers;

/// Event types this worker provisions.
pub const HANDLED_EVENT_TYPES: &[&str] = &[
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
];

/// A finished job.
#[derive(Debug)]
pub enum Done {
    /// Every step is done; the summary of effects.
    Succeeded(Value),
    /// Nothing to do (e.g. an unpaid session); the reason.
    Skipped(String),
}

/// The result of processing one message.
pub struct Processed {
    /// `None` when the body is not a Stripe event at all.
    pub envelope: Option<Envelope>,
    /// The attempt number recorded for the event (0 when none could be recorded).
    pub attempt: i32,
    pub result: Result<Done, JobError>,
}

pub async fn process(ctx: &WorkerContext, body: Bytes) -> Processed {
    let envelope = match Envelope::parse(body) {
        Ok(e) => e,
        Err(e) => {
            return Processed {
                envelope: None,
                attempt: 0,
                result: Err(Failure::permanent("parse", format!("malformed message: {e}")).into()),
            };
        }
    };
    // The job's span (see `consumer`) is known by its event from here on.
    tracing::Span::current().record("event_id", envelope.id.as_str());
    let mut attempt = 0;
    let result = handle(ctx, &envelope, &mut attempt).await;
    Processed {
        envelope: Some(envelope),
        attempt,
        result,
    }
}

async fn handle(ctx: &WorkerContext, event: &Envelope, attempt: &mut i32) -> Result<Done, JobError> {
    if !HANDLED_EVENT_TYPES.contains(&event.event_type.as_str()) {
        return Err(Failure::permanent(
            "dispatch",
            format!(
                "no handler for event type {:?}: remove its binding from the work queue",
                event.event_type
            ),
        )
        .into());
    }
    let action_key = action_key(event);
    *attempt = events::start_attempt(&ctx.store.pool, event, action_key.as_deref()).await?;
    // The ingest does not queue events of the other Stripe mode; one replayed or published by
    // hand is refused here too.
    if let Some(reason) = ctx.livemode.refuses(event.livemode) {
        return Ok(Done::Skipped(reason));
    }
    let action_key = action_key
        .ok_or_else(|| Failure::permanent("parse", "malformed message: the event has no data.object.id"))?;
    let body: Value = serde_json::from_slice(&event.body)
        .map_err(|e| Failure::permanent("parse", format!("malformed message: {e}")))?;
    let object = &body["data"]["object"];
    match event.event_type.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            handlers::checkout::handle(ctx, event, action_key, object).await
        }
        "customer.subscription.updated" => {
            handlers::subscription::updated(ctx, event, action_key, object).await
        }
        "customer.subscription.deleted" => {
            handlers::subscription::deleted(ctx, event, action_key, object).await
        }
        "invoice.paid" => handlers::invoice::handle(ctx, event, action_key, object, true).await,
        "invoice.payment_failed" => handlers::invoice::handle(ctx, event, action_key, object, false).await,
        other => Err(Failure::permanent("dispatch", format!("no handler for event type {other:?}")).into()),
    }
}

/// The business action an event works on: its key in the step ledger. Events about one object
/// share an action where they must not act twice: both checkout events of a session, every copy
/// of a subscription's deletion. A plan change is an action per event, a payment one per invoice.
/// `None` when the event has no `data.object.id` (its handler then fails it as malformed).
pub fn action_key(event: &Envelope) -> Option<String> {
    let object = event
        .object_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())?;
    Some(match event.event_type.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            format!("checkout:{object}")
        }
        "customer.subscription.updated" => format!("{}:{}", event.event_type, event.id),
        other => format!("{other}:{object}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str, object_id: Option<&str>) -> Envelope {
        let mut body = serde_json::json!({"id": "evt_9", "type": event_type, "data": {"object": {}}});
        if let Some(id) = object_id {
            body["data"]["object"]["id"] = id.into();
        }
        Envelope::parse(Bytes::from(body.to_string())).unwrap()
    }

    #[test]
    fn events_that_must_not_act_twice_share_an_action() {
        let key = |t: &str, id: Option<&str>| action_key(&event(t, id));
        // Both checkout events of a session: one provisioning.
        assert_eq!(
            key("checkout.session.completed", Some("cs_1")).as_deref(),
            Some("checkout:cs_1")
        );
        assert_eq!(
            key("checkout.session.async_payment_succeeded", Some(" cs_1 ")).as_deref(),
            Some("checkout:cs_1")
        );
        // Every copy of a deletion: one cancellation.
        assert_eq!(
            key("customer.subscription.deleted", Some("sub_1")).as_deref(),
            Some("customer.subscription.deleted:sub_1")
        );
        // A payment: one per invoice.
        assert_eq!(
            key("invoice.paid", Some("in_1")).as_deref(),
            Some("invoice.paid:in_1")
        );
        // A plan change: one per event, so that a later change of the same subscription runs.
        assert_eq!(
            key("customer.subscription.updated", Some("sub_1")).as_deref(),
            Some("customer.subscription.updated:evt_9")
        );
        // No object id: no action (the handler fails the event as malformed).
        assert_eq!(key("invoice.paid", None), None);
        assert_eq!(key("invoice.paid", Some("  ")), None);
    }
}
