//! One message → the handler of its event type → an outcome. The body is untrusted: it is
//! re-parsed here, and anything malformed is a permanent failure (dead letter), never a panic.

use bytes::Bytes;
use serde_json::Value;
use webhook_core::Envelope;
use webhook_store::events;

use crate::context::WorkerContext;
use crate::domain::CheckoutOrder;
use crate::failure::{Failure, JobError};
use crate::steps;

/// Event types this worker provisions.
pub const HANDLED_EVENT_TYPES: &[&str] = &[
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
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
    events::start_attempt(&ctx.store.pool, event).await?;
    checkout(ctx, event).await
}

async fn checkout(ctx: &WorkerContext, event: &Envelope) -> Result<Done, JobError> {
    let body: Value = serde_json::from_slice(&event.body)
        .map_err(|e| Failure::permanent("parse", format!("malformed message: {e}")))?;
    let session = &body["data"]["object"];
    let order = CheckoutOrder::from_session(session, &ctx.plans.default_cycle)
        .map_err(|m| Failure::permanent("parse", m))?;
    if !order.is_paid() {
        return Ok(Done::Skipped(format!(
            "payment_status is {:?}: nothing to provision until checkout.session.async_payment_succeeded",
            order.payment_status
        )));
    }
    steps::provision_checkout(ctx, event, &order)
        .await
        .map(Done::Succeeded)
}
