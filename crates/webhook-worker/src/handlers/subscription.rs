//! `customer.subscription.updated` (status and plan) and `customer.subscription.deleted` (the
//! tombstone; Lago terminated first, then the account's tier).

use serde_json::{Value, json};
use webhook_core::Envelope;

use crate::apply::{self, BillingJob};
use crate::context::WorkerContext;
use crate::failure::JobError;
use crate::job::Done;
use crate::ordering::{Change, Plan};
use crate::stripe::SubscriptionChange;

pub async fn updated(
    ctx: &WorkerContext,
    event: &Envelope,
    action_key: String,
    object: &Value,
) -> Result<Done, JobError> {
    let change = SubscriptionChange::from_object(object, &ctx.plans)?;
    // A price the plan map cannot tell still carries its status (e.g. `unpaid` revokes access);
    // the record keeps its plan, and only a subscription with no plan at all fails (see
    // `apply::run`).
    let plan = plan_of(ctx, &change);
    run(
        ctx,
        event,
        action_key,
        &change,
        Change::Updated {
            status: change.status.clone(),
            plan,
        },
        "subscription.updated",
    )
    .await
}

pub async fn deleted(
    ctx: &WorkerContext,
    event: &Envelope,
    action_key: String,
    object: &Value,
) -> Result<Done, JobError> {
    let change = SubscriptionChange::from_object(object, &ctx.plans)?;
    let plan = plan_of(ctx, &change);
    run(
        ctx,
        event,
        action_key,
        &change,
        Change::Deleted { plan },
        "subscription.canceled",
    )
    .await
}

fn plan_of(ctx: &WorkerContext, change: &SubscriptionChange) -> Option<Plan> {
    let (tier, cycle) = change.tier.clone()?;
    Some(Plan {
        code: ctx.plans.plan_code(&tier, &cycle),
        tier,
        cycle,
    })
}

async fn run(
    ctx: &WorkerContext,
    event: &Envelope,
    action_key: String,
    sub: &SubscriptionChange,
    change: Change,
    audit_type: &'static str,
) -> Result<Done, JobError> {
    apply::run(
        ctx,
        BillingJob {
            event,
            subscription_id: &sub.subscription_id,
            customer: Some(&sub.customer),
            change,
            action_key,
            checkout: None,
            owner: sub.user_email.as_ref(),
            price_id: sub.price_id.as_deref(),
            audit_type,
            details: json!({"stripe_status": sub.status.as_str()}),
            contact: None,
        },
    )
    .await
}
