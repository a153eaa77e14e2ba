//! The provisioning steps of a paid checkout: Keycloak lookup → Lago customer → Lago
//! subscription → Keycloak tier → audit row, with their results in the ledger.
//!
//! A redelivered message, or a second event for the same checkout session, finds the finished
//! steps in the ledger and resumes after the last one. The steps are written to the ledger
//! together with the audit row, in the one statement that finishes the action, or, when a step
//! fails, before that failure goes to the retry schedule (so the retry resumes after the last
//! finished step; a read alone, the Keycloak lookup, is not written then: the retry reads
//! again). Keycloak and Lago effects are idempotent (upsert, idempotent `external_id`,
//! setting an attribute, a terminate that accepts "already terminated"), so the steps a crash
//! left unrecorded are redone without changing anything; the audit row is written in the same
//! statement as its ledger entry, so it exists exactly once.

use std::future::Future;
use std::time::Instant;

use serde_json::{Value, json};
use webhook_core::Envelope;
use webhook_store::audit::AuditRow;
use webhook_store::ledger::{self, DoneSteps, FinishedStep};

use crate::clients::lago::NewSubscription;
use crate::context::WorkerContext;
use crate::domain::CheckoutOrder;
use crate::failure::{Failure, JobError};
use crate::lifecycle::Turn;

/// Runs a step unless the ledger has it, and keeps its result for the ledger.
pub(crate) struct Steps<'a> {
    ctx: &'a WorkerContext,
    action_key: String,
    event_id: &'a str,
    done: DoneSteps,
    /// Finished steps not yet in the ledger.
    unrecorded: Vec<FinishedStep>,
    /// Whether one of them changed something (a read alone is never written on a failure: the
    /// retry reads again, so it sees, e.g., a Keycloak user deleted and created again).
    unrecorded_change: bool,
}

impl<'a> Steps<'a> {
    /// Starts (or resumes) the event's action (see [`crate::dispatch::action_key`]).
    pub(crate) async fn begin(ctx: &'a WorkerContext, event: &'a Envelope) -> Result<Self, JobError> {
        let action_key = crate::dispatch::action_key(event).ok_or_else(|| {
            Failure::permanent("parse", "malformed message: the event has no data.object.id")
        })?;
        let event_id = event.id.as_str();
        let done = ledger::begin(&ctx.store.pool, &action_key, event_id).await?;
        Ok(Self {
            ctx,
            action_key,
            event_id,
            done,
            unrecorded: Vec::new(),
            unrecorded_change: false,
        })
    }

    /// Runs `step`, which changes something, unless the ledger has it (then its recorded result
    /// is returned). A failed step first writes the steps finished before it, so that its retry
    /// resumes after them.
    pub(crate) async fn run<F, Fut>(&mut self, step: &'static str, f: F) -> Result<Value, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Value, Failure>>,
    {
        self.run_step(step, false, f).await
    }

    /// A step that only reads (the Keycloak lookup): written to the ledger only together with a
    /// step that changes something.
    pub(crate) async fn run_read<F, Fut>(&mut self, step: &'static str, f: F) -> Result<Value, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Value, Failure>>,
    {
        self.run_step(step, true, f).await
    }

    async fn run_step<F, Fut>(&mut self, step: &'static str, read_only: bool, f: F) -> Result<Value, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Value, Failure>>,
    {
        if let Some(result) = self.done.get(step) {
            return Ok(result.clone());
        }
        let started = Instant::now();
        let result = match f().await {
            Ok(result) => result,
            Err(failure) => {
                if self.unrecorded_change
                    && let Err(e) = self.record_unrecorded().await
                {
                    // The job is held until Postgres is back and then runs again; say why the
                    // step failed, since this attempt will not record it.
                    tracing::warn!(
                        event_id = self.event_id, step, error = %failure.message,
                        "the step failed, and the steps finished before it could not be recorded"
                    );
                    return Err(e);
                }
                return Err(failure.into());
            }
        };
        self.ctx
            .metrics
            .step_duration
            .with_label_values(&[step])
            .observe(started.elapsed().as_secs_f64());
        self.unrecorded.push(FinishedStep::now(step, result.clone()));
        self.unrecorded_change |= !read_only;
        self.done.insert(step.to_owned(), result.clone());
        Ok(result)
    }

    /// Writes the finished steps not yet in the ledger, in one statement.
    async fn record_unrecorded(&mut self) -> Result<(), JobError> {
        if self.unrecorded.is_empty() {
            return Ok(());
        }
        ledger::record_steps(
            &self.ctx.store.pool,
            &self.action_key,
            self.event_id,
            &self.unrecorded,
        )
        .await?;
        self.unrecorded.clear();
        self.unrecorded_change = false;
        Ok(())
    }
}

/// Provisions one paid checkout. Returns a summary of what was done.
/// With the job's `turn` on the order's subscription (a subscription checkout), the statement
/// that finishes the action also records the subscription's ordering mark.
pub async fn provision_checkout(
    ctx: &WorkerContext,
    event: &Envelope,
    order: &CheckoutOrder,
    turn: Option<&Turn<'_>>,
) -> Result<Value, JobError> {
    let mut steps = Steps::begin(ctx, event).await?;
    let email = order.email.as_str();

    let user_id = steps.lookup_user(email).await?;

    let customer = steps
        .run("lago_customer", || async {
            let c = ctx
                .inline_retry
                .run(|| {
                    ctx.lago
                        .upsert_customer(email, email, order.customer_name.as_deref())
                })
                .await
                .map_err(|e| Failure::downstream("lago_customer", e))?;
            Ok(json!({"lago_id": c["lago_id"], "external_id": c["external_id"]}))
        })
        .await?;

    let plan_code = ctx.plans.plan_code(&order.tier, &order.cycle);
    let subscription = steps
        .assign_plan(
            email,
            &order.subscription_external_id,
            &plan_code,
            &order.tier,
            &order.cycle,
        )
        .await?;

    steps
        .set_attributes("keycloak_tier", &user_id, &[(&ctx.tier_attribute, &order.tier)])
        .await?;

    let details = json!({
        "stripe_event_id": event.id.as_str(),
        "stripe_session_id": order.session_id,
        "stripe_subscription_id": order.subscription_external_id,
        "stripe_customer_id": order.stripe_customer,
        "tier": order.tier,
        "billing_cycle": order.cycle,
        "plan": plan_code,
        "lago_subscription_id": subscription["lago_id"],
        "lago_customer_id": customer["lago_id"],
        "keycloak_user_id": user_id,
    });
    steps
        .finish_with_audit("subscription.created", email, &details, turn)
        .await?;
    Ok(details)
}

impl Steps<'_> {
    /// The `lago_subscription` step: the plan on the subscription `external_id` (Lago creates it,
    /// returns it unchanged for the same plan, or upgrades / schedules a downgrade).
    pub(crate) async fn assign_plan(
        &mut self,
        email: &str,
        external_id: &str,
        plan_code: &str,
        tier: &str,
        cycle: &str,
    ) -> Result<Value, JobError> {
        let ctx = self.ctx;
        self.run("lago_subscription", || async {
            let new = NewSubscription { external_customer_id: email, plan_code, external_id, name: None };
            let s = ctx.inline_retry.run(|| ctx.lago.create_subscription(&new)).await.map_err(|e| {
                let mut f = Failure::downstream("lago_subscription", e.clone());
                if e.code.as_deref() == Some("plan_not_found") {
                    f.message = format!(
                        "Lago has no plan {plan_code:?} (tier {tier:?}, cycle {cycle:?}): create it in Lago or map it in [plans.map], then requeue"
                    );
                }
                f
            })?;
            Ok(json!({
                "lago_id": s["lago_id"], "external_id": s["external_id"], "plan_code": s["plan_code"],
                "status": s["status"], "next_plan_code": s["next_plan_code"],
            }))
        })
        .await
    }

    /// The `keycloak_lookup` step: the one user with this email.
    pub(crate) async fn lookup_user(&mut self, email: &str) -> Result<String, JobError> {
        let ctx = self.ctx;
        let user = self
            .run_read("keycloak_lookup", || async {
                let users = ctx
                    .inline_retry
                    .run(|| ctx.keycloak.find_users_by_email(email))
                    .await
                    .map_err(|e| Failure::downstream("keycloak_lookup", e))?;
                // Defensive: a Keycloak older than 11 ignores exact=true and matches substrings.
                let matching: Vec<&Value> = users
                    .iter()
                    .filter(|u| u["email"].as_str().is_some_and(|e| e.eq_ignore_ascii_case(email)))
                    .collect();
                match matching.as_slice() {
                    [] => Err(Failure::transient(
                        "keycloak_lookup",
                        format!("no Keycloak user has the email {email} yet (the account may still be being created; retried through the schedule)"),
                    )),
                    [u] => Ok(json!({"user_id": u["id"], "username": u["username"]})),
                    many => Err(Failure::permanent(
                        "keycloak_lookup",
                        format!(
                            "{} Keycloak users share the email {email}; merge them or make emails unique in the realm, then requeue",
                            many.len()
                        ),
                    )),
                }
            })
            .await?;
        Ok(user["user_id"].as_str().unwrap_or_default().to_owned())
    }

    /// A step that sets Keycloak attributes on the user.
    pub(crate) async fn set_attributes(
        &mut self,
        step: &'static str,
        user_id: &str,
        values: &[(&str, &str)],
    ) -> Result<(), JobError> {
        let ctx = self.ctx;
        self.run(step, || async {
            ctx.inline_retry
                .run(|| ctx.keycloak.set_attributes(user_id, values))
                .await
                .map_err(|e| Failure::downstream(step, e))?;
            let set: serde_json::Map<String, Value> = values
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                .collect();
            Ok(Value::Object(set))
        })
        .await
        .map(|_| ())
    }

    /// The last step: the steps not yet in the ledger, the audit row, its ledger entry and the
    /// action marked done, atomically (one statement), so there is exactly one row per action,
    /// even when two deliveries race.
    /// With the job's `turn` on its subscription, the same statement records the ordering mark
    /// and gives the lease back.
    pub(crate) async fn finish_with_audit(
        &mut self,
        audit_type: &str,
        subject: &str,
        details: &Value,
        turn: Option<&Turn<'_>>,
    ) -> Result<(), JobError> {
        let row = AuditRow {
            event_type: audit_type,
            subject,
            details,
        };
        let pool = &self.ctx.store.pool;
        let mark = turn.map(|t| &t.mark);
        ledger::finish_with_audit(
            pool,
            &self.action_key,
            self.event_id,
            &self.unrecorded,
            &row,
            mark,
        )
        .await?;
        if let Some(turn) = turn {
            turn.set_released();
        }
        self.unrecorded.clear();
        self.unrecorded_change = false;
        self.done.insert("audit".into(), json!({}));
        Ok(())
    }
}
