//! The subscription after the first checkout: plan changes, payment trouble, cancellation.
//!
//! Every event of a Stripe subscription runs under that subscription's lease (one at a time
//! across all workers) and is applied only if it is newer than what was already applied: Stripe
//! does not deliver in order, and a late event must not undo a newer one — above all, nothing
//! brings back a deleted subscription. Skipped events are recorded with the reason.
//! Each event's effects go through the same ledger, retries and dead-lettering as a checkout.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use webhook_core::Envelope;
use webhook_store::subscriptions::{self, Applied, MarkAndRelease, Marks};

use crate::context::WorkerContext;
use crate::dispatch::Done;
use crate::domain::{Email, InvoiceChange, SubscriptionChange};
use crate::failure::{Failure, JobError};
use crate::steps::Steps;

/// How long a job may hold its subscription's lease: longer than any job.
const LEASE_SECS: f64 = 300.0;
/// How long a job waits for the lease before it goes to the retry tier.
const LEASE_WAIT: Duration = Duration::from_secs(10);

pub use webhook_store::subscriptions::Track;

/// A job's turn on its subscription (it holds the lease), and the ordering mark its event makes
/// once applied. The statement that finishes the event's action records the mark and gives the
/// lease back (`Steps::finish_with_audit`); if the job ends otherwise, [`in_order`] does.
pub struct Turn<'a> {
    pub(crate) mark: MarkAndRelease<'a>,
    released: AtomicBool,
}

impl Turn<'_> {
    /// The mark is recorded and the lease given back.
    pub(crate) fn set_released(&self) {
        self.released.store(true, Ordering::Release);
    }
}

/// Runs `apply` for `event` on `subscription_id` unless a newer event was applied already.
/// `apply` gets the job's [`Turn`], for the statement that finishes its action.
pub async fn in_order<'a, F, Fut>(
    ctx: &WorkerContext,
    subscription_id: &'a str,
    event: &'a Envelope,
    track: Track,
    state: (Option<&'a str>, Option<&'a str>),
    apply: F,
) -> Result<Done, JobError>
where
    F: FnOnce(Arc<Turn<'a>>) -> Fut,
    Fut: Future<Output = Result<Done, JobError>>,
{
    // Take turns with the other events of this subscription (on any worker). The lease outlives
    // any job; a crashed holder's lease expires, and its own redelivery may take it at once.
    let pool = &ctx.store.pool;
    let owner = event.id.as_str();
    let waited_until = Instant::now() + LEASE_WAIT;
    let marks = loop {
        if let Some(marks) = subscriptions::try_lease(pool, subscription_id, owner, LEASE_SECS).await? {
            break marks;
        }
        if Instant::now() >= waited_until {
            return Err(Failure::transient(
                "subscription_lease",
                format!("another event of subscription {subscription_id} is being processed (retrying)"),
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let turn = Arc::new(Turn {
        mark: MarkAndRelease {
            track,
            applied: Applied {
                subscription_id,
                event_created: event.created,
                event_id: owner,
                event_type: &event.event_type,
                status: state.0,
                tier: state.1,
            },
            owner,
        },
        released: AtomicBool::new(false),
    });
    let outcome = match stale(event, subscription_id, &marks, track) {
        Some(reason) => Ok((Done::Skipped(reason), false)),
        None => apply(turn.clone()).await.map(|done| (done, true)),
    };
    // The ordering mark and the lease's release are one write, made by the action's finish
    // already, else now; when nothing was applied, only the release (the next attempt may come
    // from another event). A lost release only delays the others until the lease expires, and
    // this event's redelivery may take it at once.
    match &outcome {
        Ok((_, true)) if turn.released.load(Ordering::Acquire) => {}
        Ok((_, true)) => subscriptions::mark_and_release(pool, &turn.mark).await?,
        _ => {
            let _ = subscriptions::release_lease(pool, subscription_id, owner).await;
        }
    }
    outcome.map(|(done, _)| done)
}

/// Why the event must not be applied, if the marks say a newer event (or the deletion) was
/// applied already.
fn stale(event: &Envelope, subscription_id: &str, marks: &Marks, track: Track) -> Option<String> {
    let is_delete = event.event_type == "customer.subscription.deleted";
    if let Some(deleted_by) = marks.deleted()
        && !is_delete
    {
        return Some(format!(
            "subscription {subscription_id} was deleted by {deleted_by}; a canceled subscription never comes back"
        ));
    }
    let newer = match track {
        Track::Lifecycle => marks.lifecycle.as_ref().map(|(c, id, _)| (*c, id.as_str())),
        Track::Invoice => marks.invoice.as_ref().map(|(c, id)| (*c, id.as_str())),
    };
    match newer {
        Some((created, by)) if created > event.created => Some(format!(
            "out of order: {by} (created {created}) was already applied to {subscription_id}, and this event is older ({})",
            event.created
        )),
        _ => None,
    }
}

/// The user's email for a Stripe customer: from the event when it has one (and then remembered),
/// else from what the checkout taught us.
async fn email_of(
    ctx: &WorkerContext,
    customer: Option<&str>,
    in_event: Option<&Email>,
) -> Result<String, JobError> {
    if let Some(email) = in_event {
        if let Some(c) = customer {
            subscriptions::remember_customer(&ctx.store.pool, c, email.as_str()).await?;
        }
        return Ok(email.as_str().to_owned());
    }
    if let Some(c) = customer
        && let Some(email) = subscriptions::customer_email(&ctx.store.pool, c).await?
    {
        return Ok(email);
    }
    Err(Failure::transient(
        "customer_lookup",
        format!(
            "no email is known for Stripe customer {}: it is learned from the customer's checkout, which has not been \
             processed yet (retrying)",
            customer.unwrap_or("(none)")
        ),
    )
    .into())
}

/// Keycloak's billing status for a Stripe subscription status.
fn billing_status(stripe_status: &str) -> &str {
    match stripe_status {
        "active" | "trialing" => "active",
        other => other,
    }
}

/// `customer.subscription.updated`: plan change → Lago (upgrade now, downgrade scheduled) →
/// Keycloak tier and billing status → audit `subscription.updated`.
pub async fn subscription_updated(
    ctx: &WorkerContext,
    event: &Envelope,
    object: &Value,
) -> Result<Done, JobError> {
    let change =
        SubscriptionChange::from_object(object, &ctx.plans).map_err(|m| Failure::permanent("parse", m))?;
    let (tier, cycle) = change.tier.clone().ok_or_else(|| {
        Failure::permanent(
            "parse",
            format!(
                "cannot tell the tier of price {}: map it in [plans.prices] (price id or lookup_key = \"tier:cycle\") \
                 or set metadata.tier_id on the price, then requeue",
                change.price_id.as_deref().unwrap_or("(none)")
            ),
        )
    })?;
    let sub_id = change.subscription_id.clone();
    let (change, sub_id, tier, cycle) = (&change, sub_id.as_str(), tier.as_str(), cycle.as_str());
    in_order(
        ctx,
        sub_id,
        event,
        Track::Lifecycle,
        (Some(&change.status), Some(tier)),
        move |turn| async move {
            let email = email_of(ctx, Some(&change.customer), None).await?;
            let mut steps = Steps::begin(ctx, event).await?;
            let user_id = steps.lookup_user(&email).await?;
            let plan_code = ctx.plans.plan_code(tier, cycle);
            // A subscription that is over has no plan to change; its deletion event terminates it.
            let lago = if matches!(
                change.status.as_str(),
                "canceled" | "incomplete_expired" | "incomplete"
            ) {
                Value::Null
            } else {
                steps.assign_plan(&email, sub_id, &plan_code, tier, cycle).await?
            };
            let status = billing_status(&change.status);
            steps
                .set_attributes(
                    "keycloak_attributes",
                    &user_id,
                    &[
                        (&ctx.tier_attribute, tier),
                        (&ctx.billing_status_attribute, status),
                    ],
                )
                .await?;
            let details = json!({
                "stripe_event_id": event.id.as_str(),
                "stripe_subscription_id": sub_id,
                "stripe_status": change.status,
                "billing_status": status,
                "tier": tier,
                "billing_cycle": cycle,
                "plan": plan_code,
                "lago_subscription_id": lago["lago_id"],
                "lago_next_plan_code": lago["next_plan_code"],
            });
            steps
                .finish_with_audit("subscription.updated", &email, &details, Some(&turn))
                .await?;
            Ok(Done::Succeeded(details))
        },
    )
    .await
}

/// `customer.subscription.deleted`: terminate in Lago (already terminated counts as done) →
/// Keycloak tier back to the free tier → audit `subscription.canceled`.
pub async fn subscription_deleted(
    ctx: &WorkerContext,
    event: &Envelope,
    object: &Value,
) -> Result<Done, JobError> {
    let change =
        SubscriptionChange::from_object(object, &ctx.plans).map_err(|m| Failure::permanent("parse", m))?;
    let (change, sub_id, free) = (
        &change,
        change.subscription_id.as_str(),
        ctx.plans.free_tier.as_str(),
    );
    in_order(
        ctx,
        sub_id,
        event,
        Track::Lifecycle,
        (Some("canceled"), Some(free)),
        move |turn| async move {
            let email = email_of(ctx, Some(&change.customer), None).await?;
            let mut steps = Steps::begin(ctx, event).await?;
            let user_id = steps.lookup_user(&email).await?;
            let terminated = steps
                .run("lago_terminate", || async {
                    let t = ctx
                        .inline_retry
                        .run(|| ctx.lago.terminate_subscription(sub_id))
                        .await
                        .map_err(|e| Failure::downstream("lago_terminate", e))?;
                    Ok(match t {
                        Some(s) => json!({"lago_id": s["lago_id"], "status": s["status"]}),
                        // Lago's 404 to a second termination: it is terminated already.
                        None => json!({"status": "already_terminated"}),
                    })
                })
                .await?;
            steps
                .set_attributes(
                    "keycloak_attributes",
                    &user_id,
                    &[
                        (&ctx.tier_attribute, free),
                        (&ctx.billing_status_attribute, "canceled"),
                    ],
                )
                .await?;
            let details = json!({
                "stripe_event_id": event.id.as_str(),
                "stripe_subscription_id": sub_id,
                "tier": free,
                "lago_subscription_id": terminated["lago_id"],
                "lago_status": terminated["status"],
            });
            steps
                .finish_with_audit("subscription.canceled", &email, &details, Some(&turn))
                .await?;
            Ok(Done::Succeeded(details))
        },
    )
    .await
}

/// `invoice.paid` / `invoice.payment_failed`: Keycloak billing status → audit
/// `payment.succeeded` / `payment.failed`.
pub async fn invoice(
    ctx: &WorkerContext,
    event: &Envelope,
    object: &Value,
    paid: bool,
) -> Result<Done, JobError> {
    let inv = InvoiceChange::from_object(object).map_err(|m| Failure::permanent("parse", m))?;
    let Some(sub_id) = inv.subscription_id.clone() else {
        return Ok(Done::Skipped(format!(
            "invoice {} is not for a subscription: nothing to change",
            inv.invoice_id
        )));
    };
    let (inv, sub_id) = (&inv, sub_id.as_str());
    in_order(
        ctx,
        sub_id,
        event,
        Track::Invoice,
        (None, None),
        move |turn| async move {
            let email = email_of(ctx, inv.customer.as_deref(), inv.customer_email.as_ref()).await?;
            let mut steps = Steps::begin(ctx, event).await?;
            let user_id = steps.lookup_user(&email).await?;
            let status = if paid { "active" } else { "past_due" };
            steps
                .set_attributes(
                    "keycloak_attributes",
                    &user_id,
                    &[(&ctx.billing_status_attribute, status)],
                )
                .await?;
            let details = json!({
                "stripe_event_id": event.id.as_str(),
                "stripe_invoice_id": inv.invoice_id,
                "stripe_subscription_id": sub_id,
                "billing_status": status,
            });
            steps
                .finish_with_audit(
                    if paid {
                        "payment.succeeded"
                    } else {
                        "payment.failed"
                    },
                    &email,
                    &details,
                    Some(&turn),
                )
                .await?;
            Ok(Done::Succeeded(details))
        },
    )
    .await
}
