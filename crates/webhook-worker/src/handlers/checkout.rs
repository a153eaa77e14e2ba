//! `checkout.session.completed` and `checkout.session.async_payment_succeeded`: a paid session
//! binds its subscription (or, for a one-time payment, the session itself) to the buyer's
//! Keycloak account, upserts the Lago customer and makes the subscription active on the bought
//! plan. Both events of one session are one action: one audit `subscription.created`.

use serde_json::json;
use webhook_core::Envelope;

use crate::apply::{self, BillingJob};
use crate::context::WorkerContext;
use crate::failure::JobError;
use crate::job::Done;
use crate::ordering::{Change, Plan};
use crate::stripe::CheckoutOrder;

pub async fn handle(
    ctx: &WorkerContext,
    event: &Envelope,
    action_key: String,
    object: &serde_json::Value,
) -> Result<Done, JobError> {
    let order = CheckoutOrder::from_session(object, &ctx.plans.default_cycle)?;
    if !order.is_paid() {
        return Ok(Done::Skipped(format!(
            "payment_status is {:?}: nothing to provision until checkout.session.async_payment_succeeded",
            order.payment_status
        )));
    }
    let plan = Plan {
        code: ctx.plans.plan_code(&order.tier, &order.cycle),
        tier: order.tier.clone(),
        cycle: order.cycle.clone(),
    };
    apply::run(
        ctx,
        BillingJob {
            event,
            subscription_id: &order.subscription_external_id,
            customer: order.stripe_customer.as_deref(),
            change: Change::Checkout(plan),
            action_key,
            checkout: Some(&order),
            owner: None,
            price_id: None,
            audit_type: "subscription.created",
            details: json!({"stripe_session_id": order.session_id}),
            contact: None,
            reconcile: false,
            read_at: None,
        },
    )
    .await
}
