//! `customer.subscription.updated` (status and plan) and `customer.subscription.deleted` (the
//! tombstone; Lago terminated first, then the account's tier). With `stripe.refetch` on, the
//! subscription is read from Stripe first and applied as it is now (see [`current`]); a
//! reconcile job (`webhookctl reconcile --fix`) carries Stripe's current subscription already.

use std::borrow::Cow;

use serde_json::{Value, json};
use webhook_core::Envelope;

use crate::apply::{self, BillingJob};
use crate::context::WorkerContext;
use crate::failure::{Failure, JobError};
use crate::job::{Done, Job};
use crate::ledger::traced;
use crate::ordering::{Change, Plan};
use crate::step::Step;
use crate::stripe::SubscriptionChange;

/// Both subscription events: `deleted` for `customer.subscription.deleted`.
pub async fn handle(
    ctx: &WorkerContext,
    job: &Job,
    action_key: String,
    object: &Value,
    deleted: bool,
) -> Result<Done, JobError> {
    let (event, object, deleted, refetched) = current(ctx, job, object, deleted).await?;
    let change = SubscriptionChange::from_object(&object, &ctx.plans)?;
    // A price the plan map cannot tell still carries its status (e.g. `unpaid` revokes access);
    // the record keeps its plan, and only a subscription with no plan at all fails (see
    // `apply::run`).
    let plan = plan_of(ctx, &change);
    let (change_of_state, audit_type) = if deleted {
        (Change::Deleted { plan }, "subscription.canceled")
    } else {
        (
            Change::Updated {
                status: change.status.clone(),
                plan,
            },
            "subscription.updated",
        )
    };
    let audit_type = if job.reconcile {
        "subscription.reconciled"
    } else {
        audit_type
    };
    let mut details = json!({"stripe_status": change.status.as_str()});
    if refetched {
        details["refetched_from_stripe"] = json!(true);
    }
    if job.reconcile {
        details["reconcile"] = serde_json::from_slice::<Value>(&job.event.body)
            .ok()
            .and_then(|b| b.get(webhook_core::message::RECONCILE_KEY).cloned())
            .unwrap_or(Value::Null);
    }
    apply::run(
        ctx,
        BillingJob {
            event: &event,
            subscription_id: &change.subscription_id,
            customer: Some(&change.customer),
            change: change_of_state,
            action_key,
            checkout: None,
            owner: change.user_email.as_ref(),
            price_id: change.price_id.as_deref(),
            audit_type,
            details,
            contact: None,
            reconcile: job.reconcile,
        },
    )
    .await
}

/// The subscription to apply: as delivered, or (with `stripe.refetch`) as Stripe has it now.
///
/// A refetched subscription is ordered by the time it was read, not by the event's `created`:
/// jobs of one subscription run one at a time (the lease), so each reads a state at least as
/// new as the one before, and the order in which Stripe delivered the events no longer matters.
/// A subscription Stripe does not know (another account's?) is applied as delivered.
async fn current<'a>(
    ctx: &WorkerContext,
    job: &'a Job,
    object: &'a Value,
    deleted: bool,
) -> Result<(Cow<'a, Envelope>, Cow<'a, Value>, bool, bool), JobError> {
    let as_delivered = Ok((Cow::Borrowed(&job.event), Cow::Borrowed(object), deleted, false));
    let (Some(stripe), false) = (&ctx.stripe, job.reconcile) else {
        return as_delivered;
    };
    let Some(id) = object.get("id").and_then(Value::as_str) else {
        return as_delivered;
    };
    let fetched = traced(Step::StripeRefetch, async {
        stripe
            .retrieve_subscription(id)
            .await
            .map_err(|e| JobError::from(Failure::downstream(Step::StripeRefetch, e)))
    })
    .await?;
    let Some(fresh) = fetched else {
        tracing::warn!(subscription = id, event_id = %job.event.id, "Stripe has no such subscription: applied as delivered (is STRIPE_API_KEY of the account that sends the webhooks?)");
        return as_delivered;
    };
    let mut event = job.event.clone();
    event.created = event.created.max(webhook_core::unix_now());
    let deleted = deleted || fresh.get("status").and_then(Value::as_str) == Some("canceled");
    Ok((Cow::Owned(event), Cow::Owned(fresh), deleted, true))
}

fn plan_of(ctx: &WorkerContext, change: &SubscriptionChange) -> Option<Plan> {
    let (tier, cycle) = change.tier.clone()?;
    Some(Plan {
        code: ctx.plans.plan_code(&tier, &cycle),
        tier,
        cycle,
    })
}
