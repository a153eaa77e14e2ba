//! One message → the handler of its event type → an outcome. The body is untrusted: it is
//! re-parsed here, and anything malformed is a permanent failure (dead letter), never a panic.

use bytes::Bytes;
use serde_json::Value;
use webhook_core::Envelope;
use webhook_store::events;

use crate::context::WorkerContext;
use crate::domain::CheckoutOrder;
use crate::failure::{Failure, JobError};
use crate::lifecycle::{self, Track};
use crate::steps;

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
    pub result: Result<Done, JobError>,
}

pub async fn process(ctx: &WorkerContext, body: Bytes) -> Processed {
    let envelope = match Envelope::parse(body) {
        Ok(e) => e,
        Err(e) => {
            return Processed {
                envelope: None,
                result: Err(Failure::permanent("parse", format!("malformed message: {e}")).into()),
            };
        }
    };
    let result = handle(ctx, &envelope).await;
    Processed {
        envelope: Some(envelope),
        result,
    }
}

async fn handle(ctx: &WorkerContext, event: &Envelope) -> Result<Done, JobError> {
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
    let body: Result<Value, _> = serde_json::from_slice(&event.body);
    let order = match (event.event_type.as_str(), &body) {
        ("checkout.session.completed" | "checkout.session.async_payment_succeeded", Ok(body)) => Some(
            CheckoutOrder::from_session(&body["data"]["object"], &ctx.plans.default_cycle),
        ),
        _ => None,
    };
    // A paid checkout teaches us its Stripe customer's email (later subscription and invoice
    // events carry only the customer id): remembered in the attempt's statement.
    let customer = match &order {
        Some(Ok(order)) if order.is_paid() => order
            .stripe_customer
            .as_deref()
            .map(|c| (c, order.email.as_str())),
        _ => None,
    };
    events::start_attempt(&ctx.store.pool, event, action_key(event).as_deref(), customer).await?;
    let body = body.map_err(|e| Failure::permanent("parse", format!("malformed message: {e}")))?;
    let object = &body["data"]["object"];
    match (event.event_type.as_str(), order) {
        ("customer.subscription.updated", _) => lifecycle::subscription_updated(ctx, event, object).await,
        ("customer.subscription.deleted", _) => lifecycle::subscription_deleted(ctx, event, object).await,
        ("invoice.paid", _) => lifecycle::invoice(ctx, event, object, true).await,
        ("invoice.payment_failed", _) => lifecycle::invoice(ctx, event, object, false).await,
        (_, Some(order)) => checkout(ctx, event, order.map_err(|m| Failure::permanent("parse", m))?).await,
        (other, None) => {
            Err(Failure::permanent("dispatch", format!("no handler for event type {other:?}")).into())
        }
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

/// A checkout session's order (its customer's email was remembered with the attempt).
async fn checkout(ctx: &WorkerContext, event: &Envelope, order: CheckoutOrder) -> Result<Done, JobError> {
    if !order.is_paid() {
        return Ok(Done::Skipped(format!(
            "payment_status is {:?}: nothing to provision until checkout.session.async_payment_succeeded",
            order.payment_status
        )));
    }
    match order.stripe_subscription.clone() {
        // A subscription checkout takes its place in the subscription's event order.
        Some(sub_id) => {
            let order = &order;
            let state = (Some("active"), Some(order.tier.as_str()));
            lifecycle::in_order(
                ctx,
                &sub_id,
                event,
                Track::Lifecycle,
                state,
                move |turn| async move {
                    steps::provision_checkout(ctx, event, order, Some(&turn))
                        .await
                        .map(Done::Succeeded)
                },
            )
            .await
        }
        None => steps::provision_checkout(ctx, event, &order, None)
            .await
            .map(Done::Succeeded),
    }
}
