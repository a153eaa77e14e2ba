//! Brings Lago and Keycloak to what the billing state implies (level-triggered: the whole
//! record decides, not the event that woke the job up).
//!
//! - **Lago**, per subscription: terminated once the tombstone is written (it needs only the
//!   subscription id, so it comes first and never waits for Keycloak), else on the record's plan
//!   while the status carries one ([`crate::ordering::lago_target`]). What Lago was brought to
//!   is kept in the record (written once, after Keycloak, by [`crate::apply`]), so a redelivery
//!   calls Lago only when something is left to do.
//! - **Keycloak**, per account: the attributes that all of the account's subscriptions imply
//!   ([`crate::entitlement`]). The user is read first and written only when it differs; after
//!   the write the account's state is read again and, if another job changed it meanwhile, the
//!   account is synced again, so the last write always reflects the newest state. A user that
//!   no longer exists is recorded (audit row, `events show`, a metric), not retried.

use serde_json::{Value, json};
use webhook_store::billing::{self, SubscriptionRecord};

use crate::context::WorkerContext;
use crate::entitlement::AccountView;
use crate::failure::{Failure, JobError};
use crate::ledger::Steps;
use crate::ordering::lease::Lease;
use crate::ordering::{self, LagoTarget};
use crate::step::Step;
use webhook_clients::keycloak::{UserRef, dropped_attribute};
use webhook_clients::lago::NewSubscription;

/// How many times an account is synced again when its state keeps changing under the job.
const SYNC_ROUNDS: usize = 4;

/// Brings Lago to the record; returns what was done, for the audit row.
pub(crate) async fn lago(
    ctx: &WorkerContext,
    lease: &Lease,
    record: &mut SubscriptionRecord,
    steps: &mut Steps<'_>,
) -> Result<Value, JobError> {
    let sub_id = record.subscription_id.clone();
    match ordering::lago_target(record) {
        LagoTarget::InSync => {
            // Noted for `events show` (a redelivery finds Lago brought there already).
            let (step, result) = match (&record.deleted_by, &record.lago_plan_code) {
                (Some(_), _) if record.lago_terminated => (
                    Step::LagoTerminate,
                    json!({"action": "none", "status": "terminated"}),
                ),
                (None, Some(plan)) => (
                    Step::LagoSubscription,
                    json!({"action": "none", "plan_code": plan}),
                ),
                _ => return Ok(json!({"action": "none"})),
            };
            steps.note(step, result.clone());
            Ok(result)
        }
        LagoTarget::WaitingForAccount => Ok(json!({
            "action": "none",
            "waiting": "no Keycloak account is bound to the subscription yet: its checkout assigns the plan",
        })),
        LagoTarget::End => {
            lease.check()?;
            let t = ctx
                .inline_retry
                .run(|| ctx.lago.terminate_subscription(&sub_id))
                .await
                .map_err(|e| Failure::downstream(Step::LagoSubscription, e))?;
            let result = json!({"action": "ended", "lago_id": t.as_ref().map(|s| s.lago_id.clone()), "status": record.status});
            record.lago_plan_code = None;
            record.lago_customer = None;
            steps.note(Step::LagoSubscription, result.clone());
            Ok(result)
        }
        LagoTarget::Terminate => {
            lease.check()?;
            let t = ctx
                .inline_retry
                .run(|| ctx.lago.terminate_subscription(&sub_id))
                .await
                .map_err(|e| Failure::downstream(Step::LagoTerminate, e))?;
            let result = match t {
                Some(s) => json!({"action": "terminated", "lago_id": s.lago_id, "status": s.status}),
                // Lago's 404: terminated already (or never created: canceled before its checkout).
                None => json!({"action": "terminated", "status": "already_terminated"}),
            };
            record.lago_terminated = true;
            let span = tracing::Span::current();
            span.record("otel.name", Step::LagoTerminate.as_str());
            span.record("step", Step::LagoTerminate.as_str());
            steps.note(Step::LagoTerminate, result.clone());
            Ok(result)
        }
        LagoTarget::Assign {
            plan_code,
            customer,
            move_from,
        } => {
            lease.check()?;
            if let Some(old) = &move_from {
                // Lago cannot move a subscription between customers: end it under the old one
                // without billing or crediting the old customer for it (Lago lets the
                // external_id be used again), then create it under the new one.
                ctx.inline_retry
                    .run(|| ctx.lago.terminate_subscription_for_move(&sub_id))
                    .await
                    .map_err(|e| Failure::downstream(Step::LagoSubscription, e))?;
                tracing::info!(subscription = %sub_id, from = %old, to = %customer, "moved the Lago subscription to the bound account's customer");
            }
            if record.lago_customer.as_deref() != Some(customer.as_str())
                && record.bound_by.as_deref() != Some("checkout")
            {
                // A customer the checkout did not upsert (an operator's rebinding, the
                // subscription's own metadata): with its email, so that invoices reach someone.
                ctx.inline_retry
                    .run(|| ctx.lago.upsert_customer(&customer, &customer, None))
                    .await
                    .map_err(|e| Failure::downstream(Step::LagoCustomer, e))?;
            }
            let new = NewSubscription {
                external_customer_id: &customer,
                plan_code: &plan_code,
                external_id: &sub_id,
                name: None,
            };
            let created = match ctx.inline_retry.run(|| ctx.lago.create_subscription(&new)).await {
                // Lago has this subscription live under another customer than the record knew
                // (a move whose record write was lost with its lease): converge by moving it.
                Err(e) if e.status == Some(422) && e.message.contains("value_already_exist") => {
                    tracing::warn!(subscription = %sub_id, to = %customer, "Lago has the subscription under another customer; moving it");
                    ctx.inline_retry
                        .run(|| ctx.lago.terminate_subscription_for_move(&sub_id))
                        .await
                        .map_err(|e| Failure::downstream(Step::LagoSubscription, e))?;
                    ctx.inline_retry.run(|| ctx.lago.create_subscription(&new)).await
                }
                other => other,
            };
            let s = created
                .map_err(|e| {
                    let mut f = Failure::downstream(Step::LagoSubscription, e.clone());
                    if e.code.as_deref() == Some("plan_not_found") {
                        f.message = format!(
                            "Lago has no plan {plan_code:?} (tier {:?}, cycle {:?}): create it in Lago or map it in \
                             [plans.map], then requeue",
                            record.tier.as_deref().unwrap_or(""),
                            record.cycle.as_deref().unwrap_or("")
                        );
                    }
                    f
                })?;
            // Assigning the current plan again leaves a downgrade Lago scheduled earlier in place
            // (a downgrade, then back): cancel it, so that Lago bills the plan the state has.
            let mut next_plan = s.next_plan_code.clone();
            if next_plan.as_deref().is_some_and(|next| next != plan_code)
                && s.plan_code.as_deref() == Some(plan_code.as_str())
            {
                ctx.inline_retry
                    .run(|| ctx.lago.cancel_pending(&sub_id))
                    .await
                    .map_err(|e| Failure::downstream(Step::LagoSubscription, e))?;
                next_plan = None;
            }
            let result = json!({
                "action": "assigned", "lago_id": s.lago_id, "external_id": s.external_id,
                "plan_code": s.plan_code, "status": s.status, "next_plan_code": next_plan,
                "moved_from": move_from,
            });
            record.lago_plan_code = Some(plan_code);
            record.lago_customer = Some(customer);
            steps.note(Step::LagoSubscription, result.clone());
            Ok(result)
        }
    }
}

/// Brings Keycloak to the state of the record's account (and of the account it was bound to
/// before, when the binding moved); returns what was done per account, for the audit row.
pub(crate) async fn keycloak(
    ctx: &WorkerContext,
    lease: &Lease,
    record: &mut SubscriptionRecord,
    steps: &mut Steps<'_>,
) -> Result<Value, JobError> {
    // An account known by email only (an operator's rebinding, a customer learned before
    // account ids were kept): its id, once.
    if record.account_id.is_none()
        && let Some(email) = record.account_email.clone()
    {
        let id = match find_account(ctx, &email).await {
            Ok(id) => id,
            // An operator named an account that does not exist: say so, do not wait for it.
            Err(f) if f.step == Step::KeycloakLookup && record.bound_by.as_deref() == Some("operator") => {
                return Err(Failure::permanent(
                    Step::KeycloakLookup,
                    format!(
                        "no Keycloak user has the email {email} that `webhookctl billing rebind` bound {} to: rebind it \
                         to the right email, then requeue",
                        record.subscription_id
                    ),
                )
                .into());
            }
            // The fallback account (a customer learned before account ids were kept) is gone:
            // recorded like a deleted account, not retried for hours.
            Err(f)
                if f.step == Step::KeycloakLookup
                    && f.kind == webhook_core::message::ErrorKind::Transient =>
            {
                ctx.metrics.accounts_missing.inc();
                return Ok(json!([{"account_email": email, "missing": true}]));
            }
            Err(f) => return Err(f.into()),
        };
        record.account_id = Some(id.clone());
        lease.save(record).await?;
        if record.bound_by.as_deref() == Some("customer")
            && let Some(customer) = &record.customer_id
        {
            billing::remember_customer_account_id(&ctx.store.pool, customer, &email, &id).await?;
        }
    }
    let mut accounts: Vec<String> = record.account_id.iter().cloned().collect();
    if let Some(old) = &record.synced_account_id
        && !accounts.contains(old)
    {
        accounts.push(old.clone());
    }
    if accounts.is_empty() {
        return Ok(json!([]));
    }
    let mut results = Vec::new();
    for account in &accounts {
        results.push(sync_account(ctx, lease, account).await?);
    }
    record.synced_account_id = record.account_id.clone();
    let results = Value::Array(results);
    steps.note(Step::KeycloakAttributes, results.clone());
    Ok(results)
}

/// Syncs one account's attributes until its state stops changing under the job.
async fn sync_account(ctx: &WorkerContext, lease: &Lease, account: &str) -> Result<Value, JobError> {
    let pool = &ctx.store.pool;
    let mut view = ctx
        .entitlements
        .account_view(&billing::account_subscriptions(pool, account).await?);
    let mut written = false;
    for _ in 0..SYNC_ROUNDS {
        let values = attributes(ctx, &view);
        let values: Vec<(&str, &str)> = values.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        lease.check()?;
        let synced = match ctx
            .inline_retry
            .run(|| ctx.keycloak.sync_attributes(account, &values))
            .await
        {
            Ok(s) => s,
            // Deleted (before the GET, or between the GET and the PUT).
            Err(e) if e.status == Some(404) && matches!(e.operation, "get_user" | "put_user") => {
                ctx.metrics.accounts_missing.inc();
                tracing::warn!(
                    account, tier = %view.tier,
                    "the Keycloak account of a subscription no longer exists: its attributes cannot be set \
                     (rebind the subscription with `webhookctl billing rebind` if the user has a new account)"
                );
                return Ok(json!({"account_id": account, "missing": true, "tier": view.tier}));
            }
            Err(e) => return Err(Failure::downstream(Step::KeycloakAttributes, e).into()),
        };
        written |= synced.written;
        let wrote_now = synced.written;
        for key in &synced.dropped {
            if *key == ctx.tier_attribute {
                return Err(Failure::downstream(Step::KeycloakAttributes, dropped_attribute(key)).into());
            }
            ctx.metrics.attribute_dropped.with_label_values(&[key]).inc();
            tracing::warn!(
                account, attribute = %key,
                "Keycloak did not store the optional status attribute: declare it in the realm's user profile, or \
                 set keycloak.status_attribute = \"\" to stop writing it"
            );
        }
        // Read again only after a write of ours: without one, nothing of ours can have landed over
        // a newer job's, and a job that changes the state later syncs the account itself.
        let now = if wrote_now {
            ctx.entitlements
                .account_view(&billing::account_subscriptions(pool, account).await?)
        } else {
            view.clone()
        };
        if now == view {
            return Ok(json!({
                "account_id": account, "tier": view.tier, "billing_status": view.status,
                "written": written, "dropped": synced.dropped,
            }));
        }
        view = now;
    }
    Err(Failure::transient(
        Step::KeycloakAttributes,
        format!(
            "the billing state of Keycloak account {account} kept changing while it was synced (retrying)"
        ),
    )
    .into())
}

/// The attributes to write for a view: the tier, and the status when it is configured (`none`
/// for an account left without any subscription, e.g. after a rebinding moved it away).
fn attributes(ctx: &WorkerContext, view: &AccountView) -> Vec<(String, String)> {
    let mut values = vec![(ctx.tier_attribute.clone(), view.tier.clone())];
    if let Some(attribute) = &ctx.status_attribute {
        let status = view.status.clone().unwrap_or_else(|| "none".to_owned());
        values.push((attribute.clone(), status));
    }
    values
}
/// The id of the one Keycloak user with this email. None yet is transient (the account may
/// still be being created: retried through the schedule); several is permanent.
pub(crate) async fn find_account(ctx: &WorkerContext, email: &str) -> Result<String, Failure> {
    let users = ctx
        .inline_retry
        .run(|| ctx.keycloak.find_users_by_email(email))
        .await
        .map_err(|e| Failure::downstream(Step::KeycloakLookup, e))?;
    // Defensive: a Keycloak older than 11 ignores exact=true and matches substrings.
    let matching: Vec<&UserRef> = users
        .iter()
        .filter(|u| u.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(email)))
        .collect();
    match matching.as_slice() {
        [] => Err(Failure::transient(
            Step::KeycloakLookup,
            format!(
                "no Keycloak user has the email {email} yet (the account may still be being created; retried \
                 through the schedule)"
            ),
        )),
        [u] => Ok(u.id.clone()),
        many => Err(Failure::permanent(
            Step::KeycloakLookup,
            format!(
                "{} Keycloak users share the email {email}; merge them or make emails unique in the realm, then requeue",
                many.len()
            ),
        )),
    }
}
