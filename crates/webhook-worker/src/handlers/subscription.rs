//! `customer.subscription.updated` (status and plan) and `customer.subscription.deleted` (the
//! tombstone; Lago terminated first, then the account's tier). With `stripe.refetch` on, and for
//! a reconcile job (`webhookctl reconcile --fix`), the subscription is read from Stripe under its
//! lease and applied as it is now (see [`handle`]).

use serde_json::{Value, json};

use crate::apply::{self, BillingJob};
use crate::context::WorkerContext;
use crate::failure::{Failure, JobError};
use crate::job::{Done, Job};
use crate::ledger::traced;
use crate::ordering::lease::Lease;
use crate::ordering::{Change, Plan};
use crate::step::Step;
use crate::stripe::SubscriptionChange;

/// Both subscription events: `deleted` for `customer.subscription.deleted`.
///
/// The subscription is applied as delivered, or read from Stripe first: with `stripe.refetch`
/// on, and for a reconcile job when the worker has `STRIPE_API_KEY`. That read happens under
/// the subscription's lease, so the jobs of one subscription read one after another, each a
/// state at least as new as the one before; it is applied whatever the watermark says (ordered
/// just after it, or at the time of the read), so that the last read always wins.
pub async fn handle(
    ctx: &WorkerContext,
    job: &Job,
    action_key: String,
    object: &Value,
    deleted: bool,
) -> Result<Done, JobError> {
    let delivered = SubscriptionChange::from_object(object, &ctx.plans)?;
    // A deletion is final whatever its order: it never waits for Stripe's API.
    let stripe = ctx
        .stripe
        .as_ref()
        .filter(|_| (ctx.refetch && !deleted) || job.reconcile);
    let Some(stripe) = stripe else {
        let job = billing_job(ctx, job, &delivered, deleted, action_key, None);
        return apply::run(ctx, job).await;
    };
    let (lease, record) = Lease::acquire(&ctx.store.pool, ctx.lease, &delivered.subscription_id).await?;
    let result = async {
        let read_at = webhook_core::unix_now();
        let fetched = traced(Step::StripeRefetch, async {
            lease.check()?;
            stripe
                .retrieve_subscription(&delivered.subscription_id)
                .await
                .map_err(|e| JobError::from(Failure::downstream(Step::StripeRefetch, e)))
        })
        .await?;
        let Some(fresh) = fetched else {
            tracing::warn!(subscription = %delivered.subscription_id, event_id = %job.event.id, "Stripe has no such subscription: applied as delivered (is STRIPE_API_KEY of the account that sends the webhooks?)");
            let billing = billing_job(ctx, job, &delivered, deleted, action_key.clone(), None);
            return apply::run_leased(ctx, &billing, &lease, record.clone()).await;
        };
        // An update whose subscription is canceled now stays an update (status canceled: Lago
        // ended, no access); the tombstone is the deletion event's.
        let change = SubscriptionChange::from_object(&fresh, &ctx.plans)?;
        let billing = billing_job(ctx, job, &change, deleted, action_key.clone(), Some(read_at));
        apply::run_leased(ctx, &billing, &lease, record.clone()).await
    }
    .await;
    lease.release().await;
    result
}

fn billing_job<'a>(
    ctx: &WorkerContext,
    job: &'a Job,
    change: &'a SubscriptionChange,
    deleted: bool,
    action_key: String,
    read_at: Option<i64>,
) -> BillingJob<'a> {
    // A price the plan map cannot tell still carries its status (e.g. `unpaid` revokes access);
    // the record keeps its plan, and only a subscription with no plan at all fails (see
    // `apply::run`).
    let plan = plan_of(ctx, change);
    let (state, audit_type) = if deleted {
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
    if read_at.is_some() {
        details["refetched_from_stripe"] = json!(true);
    }
    if job.reconcile {
        details["reconcile"] = serde_json::from_slice::<Value>(&job.event.body)
            .ok()
            .and_then(|b| b.get(webhook_core::message::RECONCILE_KEY).cloned())
            .unwrap_or(Value::Null);
    }
    BillingJob {
        event: &job.event,
        subscription_id: &change.subscription_id,
        customer: Some(&change.customer),
        change: state,
        action_key,
        checkout: None,
        owner: change.user_email.as_ref(),
        price_id: change.price_id.as_deref(),
        audit_type,
        details,
        contact: None,
        reconcile: job.reconcile,
        read_at,
    }
}

fn plan_of(ctx: &WorkerContext, change: &SubscriptionChange) -> Option<Plan> {
    let (tier, cycle) = change.tier.clone()?;
    Some(Plan {
        code: ctx.plans.plan_code(&tier, &cycle),
        tier,
        cycle,
    })
}
