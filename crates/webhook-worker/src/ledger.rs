//! The step ledger of an action, as [`crate::apply`] and [`crate::converge`] use it: a step runs unless the ledger has it
//! (then its recorded result is returned), and the finished steps are written to the ledger
//! together with the audit row, in the one statement that finishes the action, or, when a step
//! fails, before that failure goes to the retry schedule (so the retry resumes after the last
//! finished step; a read alone, the Keycloak lookup, is not written then: the retry reads
//! again). The audit row is written in the same statement as its ledger entry, so it exists
//! exactly once per action.
//!
//! The effects that bring Lago and Keycloak to the billing state ([`crate::converge`]) do not
//! skip by the ledger (they compare the state with what Lago and Keycloak were brought to); they
//! are only noted in it, for `webhookctl events show`.

use std::future::Future;
use std::time::Instant;

use serde_json::{Value, json};
use tracing::Instrument;
use webhook_store::audit::AuditRow;
use webhook_store::ledger::{self, DoneSteps, Fence, Finished, FinishedStep};

use crate::context::WorkerContext;
use crate::failure::{Failure, JobError};
use crate::step::Step;

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
    /// Starts (or resumes) the action `action_key` of the event `event_id`.
    pub(crate) async fn begin(
        ctx: &'a WorkerContext,
        action_key: String,
        event_id: &'a str,
    ) -> Result<Self, JobError> {
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
    pub(crate) async fn run<F, Fut>(&mut self, step: Step, f: F) -> Result<Value, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Value, Failure>>,
    {
        self.run_step(step, false, f).await
    }

    /// A step that only reads (the Keycloak lookup): written to the ledger only together with a
    /// step that changes something.
    pub(crate) async fn run_read<F, Fut>(&mut self, step: Step, f: F) -> Result<Value, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Value, Failure>>,
    {
        self.run_step(step, true, f).await
    }

    async fn run_step<F, Fut>(&mut self, step: Step, read_only: bool, f: F) -> Result<Value, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Value, Failure>>,
    {
        if let Some(result) = self.done.get(step.as_str()) {
            return Ok(result.clone());
        }
        let started = Instant::now();
        let span = step_span(step);
        let result = match f().instrument(span.clone()).await {
            Ok(result) => result,
            Err(failure) => {
                span.record("otel.status_code", "error");
                self.save_progress(&failure).await?;
                return Err(failure.into());
            }
        };
        self.ctx
            .metrics
            .step_duration
            .with_label_values(&[step.as_str()])
            .observe(started.elapsed().as_secs_f64());
        self.unrecorded
            .push(FinishedStep::now(step.as_str(), result.clone()));
        self.unrecorded_change |= !read_only;
        self.done.insert(step.as_str().to_owned(), result.clone());
        Ok(result)
    }

    /// Before `failure` goes to the retry schedule: writes the finished steps not yet in the
    /// ledger if one of them changed something, so that the retry resumes after them.
    pub(crate) async fn save_progress(&mut self, failure: &Failure) -> Result<(), JobError> {
        if !self.unrecorded_change {
            return Ok(());
        }
        self.record_unrecorded().await.inspect_err(|_| {
            // The job is held until Postgres is back and then runs again; say why the step
            // failed, since this attempt will not record it.
            tracing::warn!(
                event_id = self.event_id, step = failure.step.as_str(), error = %failure.message,
                "the step failed, and the steps finished before it could not be recorded"
            );
        })
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

impl Steps<'_> {
    /// Notes a finished effect in the ledger (with the action's finish), without skipping it
    /// next time: see the module docs.
    pub(crate) fn note(&mut self, step: Step, result: Value) {
        self.unrecorded.push(FinishedStep::now(step.as_str(), result));
        self.unrecorded_change = true;
    }

    /// The last step: the steps not yet in the ledger, the audit row, its ledger entry and the
    /// action marked done, atomically (one statement), so there is exactly one row per action,
    /// even when two deliveries race. With a `fence` (the job's lease on its subscription),
    /// nothing is written unless the lease is still held.
    pub(crate) async fn finish_with_audit(
        &mut self,
        audit_type: &str,
        subject: &str,
        details: &Value,
        fence: Option<Fence<'_>>,
    ) -> Result<(), JobError> {
        let row = AuditRow {
            event_type: audit_type,
            subject,
            details,
        };
        let finished = traced(Step::Audit, async {
            Ok(ledger::finish_with_audit(
                &self.ctx.store.pool,
                &self.action_key,
                self.event_id,
                &self.unrecorded,
                &row,
                fence,
            )
            .await?)
        })
        .await?;
        if finished == Finished::LeaseLost {
            return Err(crate::ordering::lease::lost(
                fence.map_or("", |f| f.subscription_id),
            ));
        }
        self.unrecorded.clear();
        self.unrecorded_change = false;
        self.done.insert(Step::Audit.as_str().into(), json!({}));
        Ok(())
    }
}

/// The span of one step of a job, named as the ledger names the step (`keycloak_lookup`,
/// `lago_customer`, `lago_subscription`, `keycloak_attributes`, `audit`, …); its downstream
/// calls are its children.
pub(crate) fn step_span(step: Step) -> tracing::Span {
    tracing::info_span!(
        "step",
        otel.name = step.as_str(),
        step = step.as_str(),
        otel.status_code = tracing::field::Empty
    )
}

/// Runs `f` in the span of the step `step`, marked as an error when `f` fails.
pub(crate) async fn traced<T>(
    step: Step,
    f: impl Future<Output = Result<T, JobError>>,
) -> Result<T, JobError> {
    let span = step_span(step);
    let result = f.instrument(span.clone()).await;
    if result.is_err() {
        span.record("otel.status_code", "error");
    }
    result
}
