//! Step 3 of the job path: one handler per event family reads the event's object and says what
//! it asks of its subscription (a [`crate::apply::BillingJob`]); [`crate::apply`] does the rest.
//!
//! - [`checkout`]: `checkout.session.completed`, `checkout.session.async_payment_succeeded`;
//! - [`subscription`]: `customer.subscription.updated`, `customer.subscription.deleted`;
//! - [`invoice`]: `invoice.paid`, `invoice.payment_failed`.

pub mod checkout;
pub mod invoice;
pub mod subscription;

use webhook_core::EventType;

use crate::context::WorkerContext;
use crate::failure::{Failure, JobError};
use crate::job::{Done, Job};
use crate::step::Step;

/// Runs the handler of the job's event type.
pub async fn handle(ctx: &WorkerContext, job: &Job) -> Result<Done, JobError> {
    let event = &job.event;
    // The ingest does not queue events of the other Stripe mode; one replayed or published by
    // hand is refused here too.
    if let Some(reason) = ctx.livemode.refuses(event.livemode) {
        return Ok(Done::Skipped(reason));
    }
    let action_key = job.action_key.clone().ok_or_else(|| {
        Failure::permanent(Step::Parse, "malformed message: the event has no data.object.id")
    })?;
    let object = &job.object()?;
    // Every type by name: a new `EventType` does not compile until it has its handler here.
    match job.event_type {
        EventType::CheckoutSessionCompleted | EventType::CheckoutSessionAsyncPaymentSucceeded => {
            checkout::handle(ctx, event, action_key, object).await
        }
        EventType::CustomerSubscriptionUpdated => {
            subscription::handle(ctx, job, action_key, object, false).await
        }
        EventType::CustomerSubscriptionDeleted => {
            subscription::handle(ctx, job, action_key, object, true).await
        }
        EventType::InvoicePaid => invoice::handle(ctx, event, action_key, object, true).await,
        EventType::InvoicePaymentFailed => invoice::handle(ctx, event, action_key, object, false).await,
    }
}
