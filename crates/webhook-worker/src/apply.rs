//! Step 4 of the job path: a [`BillingJob`] (what one event asks of its subscription, made by
//! its handler) applied to the billing state, and Lago and Keycloak brought to that state, top
//! to bottom:
//!
//! 1. take the subscription's lease ([`crate::ordering::lease`]) and its record;
//! 2. a paid checkout: find the Keycloak account, upsert the Lago customer, bind the
//!    subscription and the Stripe customer to the account; any other event of a subscription
//!    with no binding yet: the customer's account as the fallback;
//! 3. apply the event if it is newer ([`crate::ordering`]); a stale event other than a
//!    checkout stops here (`skipped`, with the reason); the record is saved (fenced);
//! 4. Lago, then Keycloak, brought to the record ([`crate::converge`]);
//! 5. the audit row and the ledger, in one fenced statement; the lease is given back.
//!
//! Every step that changes something runs through the step ledger ([`crate::ledger`]).

use serde_json::{Value, json};
use webhook_core::Envelope;
use webhook_store::billing::{self, CustomerAccount};

use crate::context::WorkerContext;
use crate::converge::{self, find_account};
use crate::entitlement;
use crate::failure::{Failure, JobError};
use crate::job::{Done, Summary};
use crate::ledger::{Steps, traced};
use crate::ordering::lease::Lease;
use crate::ordering::{self, BoundBy, Change};
use crate::plans::{PlanCode, Tier};
use crate::step::Step;
use crate::stripe::{CheckoutOrder, Email};

/// What one event asks of its subscription.
pub struct BillingJob<'a> {
    pub event: &'a Envelope,
    pub subscription_id: &'a str,
    /// The Stripe customer the event names.
    pub customer: Option<&'a str>,
    pub change: Change,
    /// The business action in the step ledger (see [`crate::job::action_key`]).
    pub action_key: String,
    /// A paid checkout's order: it binds the subscription to its account.
    pub checkout: Option<&'a CheckoutOrder>,
    /// The account the subscription object itself names (`metadata.user_email`).
    pub owner: Option<&'a Email>,
    /// The price of a subscription event, for the error when its plan cannot be told.
    pub price_id: Option<&'a str>,
    /// The audit row's `event_type`.
    pub audit_type: &'static str,
    /// The event's own details for the audit row (ids of the session, invoice, …).
    pub details: Value,
    /// An invoice's `customer_email`: the billing contact, for the audit only.
    pub contact: Option<&'a str>,
    /// A reconcile job: Lago is brought to the state whatever the record says was done.
    pub reconcile: bool,
    /// The subscription was read from Stripe under the lease at this time: applied whatever the
    /// watermark says (see [`ordering::apply_read`]).
    pub read_at: Option<i64>,
}

/// Applies the job under its subscription's lease (see the module docs).
pub async fn run(ctx: &WorkerContext, job: BillingJob<'_>) -> Result<Done, JobError> {
    let (lease, record) = Lease::acquire(&ctx.store.pool, ctx.lease, job.subscription_id).await?;
    let result = run_leased(ctx, &job, &lease, record).await;
    lease.release().await;
    result
}

/// [`run`] for a caller that holds the subscription's lease already (a subscription read from
/// Stripe under it).
pub(crate) async fn run_leased(
    ctx: &WorkerContext,
    job: &BillingJob<'_>,
    lease: &Lease,
    mut record: billing::SubscriptionRecord,
) -> Result<Done, JobError> {
    let event = job.event;
    let pool = &ctx.store.pool;
    let mut steps = Steps::begin(ctx, job.action_key.clone(), event.id.as_str()).await?;
    if record.customer_id.is_none() {
        record.customer_id = job.customer.map(str::to_owned);
    }
    let mut details = job.details.clone();
    // 2. The binding.
    if let Some(order) = job.checkout {
        let email = order.email.as_str();
        match lookup_user(ctx, &mut steps, email).await {
            Ok(user_id) => {
                let customer =
                    upsert_customer(ctx, &mut steps, email, order.customer_name.as_deref()).await?;
                ordering::bind(&mut record, Some(&user_id), email, BoundBy::Checkout);
                if let Some(c) = job.customer {
                    let account = CustomerAccount {
                        account_id: Some(user_id.clone()),
                        account_email: email.to_owned(),
                    };
                    let mark = job.change.watermark(event.created, event.id.as_str());
                    billing::bind_customer(pool, c, &account, &mark).await?;
                }
                details["lago_customer_id"] = customer["lago_id"].clone();
                details["keycloak_user_id"] = json!(user_id);
            }
            // A late checkout of a canceled subscription whose account is gone: nothing to
            // provision, nothing to wait for.
            Err(JobError::Failed(f)) if f.step == Step::KeycloakLookup && record.deleted_by.is_some() => {
                details["keycloak_account_missing"] = json!(email);
            }
            Err(e) => return Err(e),
        }
    } else if ordering::weakly_bound(&record) {
        if let Some(owner) = job.owner {
            let id = find_account(ctx, owner.as_str()).await?;
            ordering::bind(&mut record, Some(&id), owner.as_str(), BoundBy::Subscription);
        } else if let Some(c) = job.customer
            && let Some(account) = billing::customer_account(pool, c).await?
        {
            ordering::bind(
                &mut record,
                account.account_id.as_deref(),
                &account.account_email,
                BoundBy::Customer,
            );
        }
    }
    // 3. The state.
    let applied = match job.read_at {
        Some(read_at) => ordering::apply_read(
            &mut record,
            event.id.as_str(),
            &event.event_type,
            read_at,
            &job.change,
        ),
        None => ordering::apply(
            &mut record,
            event.id.as_str(),
            &event.event_type,
            event.created,
            &job.change,
        ),
    };
    // A stale reconcile job still brings Lago and Keycloak to the (newer) record.
    if let Err(reason) = &applied
        && job.checkout.is_none()
        && !job.reconcile
    {
        return Ok(Done::Skipped(reason.to_string()));
    }
    if record.plan_code.is_none()
        && record.deleted_by.is_none()
        && matches!(job.change, Change::Updated { plan: None, .. })
    {
        return Err(Failure::permanent(
            Step::Parse,
            format!(
                "cannot tell the tier of price {}: map it in [plans.prices] (price id or lookup_key = \"tier:cycle\") \
                 or set metadata.tier_id on the price, then requeue",
                job.price_id.unwrap_or("(none)")
            ),
        )
        .into());
    }
    if job.reconcile {
        ordering::forget_lago(&mut record);
    }
    let result = converge_and_finish(ctx, job, lease, &mut record, &mut steps, details, applied).await;
    if let Err(JobError::Failed(failure)) = &result {
        // The retry resumes after the steps finished before the failure.
        steps.save_progress(failure).await?;
    }
    result
}

/// Steps 3 (the save) to 5 of the module docs.
async fn converge_and_finish(
    ctx: &WorkerContext,
    job: &BillingJob<'_>,
    lease: &Lease,
    record: &mut billing::SubscriptionRecord,
    steps: &mut Steps<'_>,
    mut details: Value,
    applied: Result<(), ordering::Stale>,
) -> Result<Done, JobError> {
    let event = job.event;
    lease.save(record).await?;
    let saved = record.clone();
    // 4. Lago, then Keycloak.
    let effects = async {
        // One span per system brought to the record, named by the step the ledger notes (a
        // termination renames its span `lago_terminate`).
        let lago = traced(Step::LagoSubscription, converge::lago(ctx, lease, record, steps)).await?;
        let keycloak = traced(
            Step::KeycloakAttributes,
            converge::keycloak(ctx, lease, record, steps),
        )
        .await?;
        Ok::<_, JobError>((lago, keycloak))
    }
    .await;
    // What Lago and Keycloak were brought to, in one write (also when a later step failed, so
    // that the retry does not redo what is done).
    if *record != saved {
        let written = lease.save(record).await;
        if effects.is_ok() {
            written?;
        }
    }
    let (lago, keycloak) = effects?;
    // 5. The audit row.
    let r = &*record;
    for (key, value) in [
        ("stripe_event_id", json!(event.id.as_str())),
        ("stripe_subscription_id", json!(r.subscription_id)),
        ("stripe_customer_id", json!(r.customer_id)),
        ("applied", json!(applied.is_ok())),
        ("status", json!(r.status)),
        ("billing_status", json!(entitlement::billing_status(r))),
        ("tier", json!(r.tier)),
        ("billing_cycle", json!(r.cycle)),
        ("plan", json!(r.plan_code)),
        ("account_email", json!(r.account_email)),
        ("keycloak_account_id", json!(r.account_id)),
        ("lago_subscription_id", lago["lago_id"].clone()),
        ("lago", lago),
        ("keycloak", keycloak),
    ] {
        details[key] = value;
    }
    if let Err(reason) = applied {
        details["not_applied"] = json!(reason.to_string());
    }
    let subject = r
        .account_email
        .as_deref()
        .or(job.contact)
        .or(r.customer_id.as_deref())
        .unwrap_or(&r.subscription_id)
        .to_owned();
    steps
        .finish_with_audit(job.audit_type, &subject, &details, Some(lease.fence()))
        .await?;
    Ok(Done::Succeeded(Summary {
        tier: r.tier.as_deref().and_then(Tier::parse),
        plan: r.plan_code.as_deref().map(PlanCode::new),
    }))
}

/// The `keycloak_lookup` step: the one user with this email (see [`find_account`]). A read:
/// written to the ledger only together with a step that changes something.
async fn lookup_user(ctx: &WorkerContext, steps: &mut Steps<'_>, email: &str) -> Result<String, JobError> {
    let user = steps
        .run_read(Step::KeycloakLookup, || async {
            find_account(ctx, email).await.map(|id| json!({"user_id": id}))
        })
        .await?;
    Ok(user["user_id"].as_str().unwrap_or_default().to_owned())
}

/// The `lago_customer` step: the Lago customer `external_id` = the account's email.
async fn upsert_customer(
    ctx: &WorkerContext,
    steps: &mut Steps<'_>,
    email: &str,
    name: Option<&str>,
) -> Result<Value, JobError> {
    steps
        .run(Step::LagoCustomer, || async {
            let c = ctx
                .inline_retry
                .run(|| ctx.lago.upsert_customer(email, email, name))
                .await
                .map_err(|e| Failure::downstream(Step::LagoCustomer, e))?;
            Ok(json!({"lago_id": c.lago_id, "external_id": c.external_id}))
        })
        .await
}
