//! Step 5 of the job path: what becomes of a processed message. A message is acked only once
//! its outcome is durable: done (ledger and status in Postgres), re-published to a retry tier
//! with a confirm, or dead-lettered with a confirm ([`retry`]). When none of that can be done
//! (shutdown while Postgres is down), it goes back to the queue.

pub mod retry;

use tokio::sync::watch;
use webhook_amqp::{Delivery, PublishError};
use webhook_core::message::ErrorKind;
use webhook_store::events::{ErrorRecord, EventStatus, Outcome};
use webhook_store::fault::DbFault;

use crate::context::WorkerContext;
use crate::failure::{Failure, JobError, Unavailable};
use crate::health::{self, Hold, wait_for_store};
use crate::job::{Done, Processed};
use crate::plans::{PlanCode, Tier};
use retry::Next;

/// What became of a message (the `outcome` label of `webhook_worker_jobs_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Succeeded,
    Skipped,
    RetryScheduled,
    DeadLettered,
    /// Back to the work queue, unfinished or unrecorded (shutdown).
    Requeued,
}

impl Settled {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Skipped => "skipped",
            Self::RetryScheduled => "retry_scheduled",
            Self::DeadLettered => "dead_lettered",
            Self::Requeued => "requeued",
        }
    }
}

/// Settles a processed message (see the module docs); returns what became of it.
pub async fn settle(
    ctx: &WorkerContext,
    delivery: &Delivery,
    event_type: &str,
    processed: Processed,
    retries: u32,
    shutdown: &mut watch::Receiver<bool>,
) -> Settled {
    let event_id = processed.event.as_ref().map(|e| e.id.to_string());
    let attempt = processed.attempt;
    let outcome_of = |id: &str, status, last_error: Option<&str>, error: Option<ErrorRecord>| Outcome {
        event_id: id.to_owned(),
        attempt,
        status,
        last_error: last_error.map(str::to_owned),
        error,
    };
    let ack = || async {
        if let Err(e) = delivery.ack().await {
            // The connection died: the broker redelivers, and the ledger makes that harmless.
            tracing::warn!(error = %e, "ack failed; the message will be redelivered");
        }
    };
    match processed.result {
        Ok(Done::Succeeded(summary)) => {
            if let Some(id) = &event_id
                && !record(ctx, shutdown, &outcome_of(id, EventStatus::Succeeded, None, None)).await
            {
                return give_back(delivery).await;
            }
            tracing::info!(
                event_id = event_id.as_deref().unwrap_or("-"),
                event_type,
                outcome = "succeeded",
                tier = summary.tier.as_ref().map_or("", Tier::as_str),
                plan = summary.plan.as_ref().map_or("", PlanCode::as_str),
                "job done"
            );
            ack().await;
            Settled::Succeeded
        }
        Ok(Done::Skipped(reason)) => {
            if let Some(id) = &event_id
                && !record(
                    ctx,
                    shutdown,
                    &outcome_of(id, EventStatus::Skipped, Some(&reason), None),
                )
                .await
            {
                return give_back(delivery).await;
            }
            tracing::info!(event_id = event_id.as_deref().unwrap_or("-"), event_type, outcome = "skipped", %reason, "job skipped");
            ack().await;
            Settled::Skipped
        }
        Err(JobError::Infrastructure(_)) => unreachable!("handled by the caller"),
        Err(JobError::Failed(failure)) => {
            let Some((next, failure)) =
                route_failure(ctx, delivery, event_type, failure, retries, shutdown).await
            else {
                // Neither the retry tier nor the dead-letter queue took it: back to the work
                // queue (after a delay), to be tried again.
                return give_back(delivery).await;
            };
            let (outcome, status) = match &next {
                Next::Retry { .. } => (Settled::RetryScheduled, EventStatus::Retrying),
                Next::DeadLetter => (Settled::DeadLettered, EventStatus::DeadLettered),
            };
            if let Some(id) = &event_id {
                let error_record = ErrorRecord {
                    attempt: retries as i32 + 1,
                    step: Some(failure.step.as_str().to_owned()),
                    kind: failure.kind.as_str().to_owned(),
                    error: failure.message.clone(),
                    action: outcome.as_str().to_owned(),
                };
                // The re-published message is durable already: on shutdown it is acked even if
                // the history could not be written.
                let outcome = outcome_of(id, status, Some(&failure.message), Some(error_record));
                let _ = record(ctx, shutdown, &outcome).await;
            }
            tracing::warn!(
                event_id = event_id.as_deref().unwrap_or("-"), event_type, outcome = outcome.as_str(), step = failure.step.as_str(),
                kind = failure.kind.as_str(), error = %failure.message, next = ?next, "job failed"
            );
            ack().await;
            outcome
        }
    }
}

/// Writes the outcome to the event history (through the outcome writers), waiting for Postgres
/// while it is down, so that an acked message always has its outcome recorded. False only when
/// shutdown came first.
async fn record(ctx: &WorkerContext, shutdown: &mut watch::Receiver<bool>, outcome: &Outcome) -> bool {
    let mut hold = Hold::new(ctx.health.clone());
    loop {
        match ctx.outcomes.record(outcome.clone()).await {
            Ok(()) => return true,
            Err(e) => {
                let (reason, recycle) = match webhook_store::fault::classify(&e) {
                    DbFault::Unavailable { reason, recycle } => (reason, recycle),
                    // Refused (a schema older than this worker): nothing to do but wait for
                    // the fix (`webhookctl migrate`); the message is never acked unrecorded.
                    DbFault::Refused { reason, .. } => (reason, false),
                };
                if recycle && hold.is_first() {
                    ctx.store.recycle();
                    ctx.outcomes.recycle();
                }
                let delay = hold.wait(&Unavailable::because(reason, recycle));
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "could not record the event's outcome; holding the message");
                let resumed = tokio::select! {
                    _ = tokio::time::sleep(delay) => wait_for_store(&ctx.store, shutdown).await,
                    _ = shutdown.changed() => false,
                };
                if !resumed || *shutdown.borrow() {
                    return false;
                }
            }
        }
    }
}

/// How many times a retry queue may refuse a message (a nack) before the message goes to the
/// dead-letter queue instead. Broker outages and confirm timeouts do not count: they wait.
const REPUBLISH_TRIES: usize = 3;

/// Re-publishes a failed message where it goes next ([`retry::next`]), with a confirm. A retry
/// queue that does not exist (a changed schedule with the topology not declared again) or that
/// keeps refusing sends the message to the dead-letter queue instead, as an infrastructure
/// failure that says so. A dead-letter queue that refuses holds the message (unacked, counted in
/// `/readyz`) and tries again with a growing delay: the job is never run again for it. While
/// the broker is unreachable, the publish waits with the same delays. Returns where the message
/// went and the failure it carries; `None` only on shutdown (the message then goes back to the
/// queue).
async fn route_failure(
    ctx: &WorkerContext,
    delivery: &Delivery,
    event_type: &str,
    failure: Failure,
    retries: u32,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(Next, Failure)> {
    let mut next = retry::next(ctx, &failure, retries);
    let mut failure = failure;
    let mut delays = health::backoff();
    let mut hold = Hold::new(ctx.health.clone());
    let mut refused = 0;
    loop {
        let published = match &next {
            Next::Retry { attempt, queue, .. } => {
                retry::schedule(ctx, delivery, event_type, &failure, *attempt, queue).await
            }
            Next::DeadLetter => retry::dead_letter(ctx, delivery, event_type, &failure, retries).await,
        };
        let e = match published {
            Ok(()) => return Some((next, failure)),
            Err(e) => e,
        };
        let unroutable = matches!(e, PublishError::Returned(_));
        if unroutable || matches!(e, PublishError::Nacked) {
            refused += 1;
        }
        if let Next::Retry { queue, .. } = &next
            && (unroutable || refused >= REPUBLISH_TRIES)
        {
            let why = if unroutable {
                format!("the retry queue {queue} does not exist")
            } else {
                format!("the retry queue {queue} refused the message ({e})")
            };
            tracing::error!(%queue, error = %e, "cannot schedule a retry; dead-lettering the message");
            failure = Failure {
                kind: ErrorKind::Infrastructure,
                step: failure.step,
                spends_retry: true,
                retry_after: None,
                source: Some(std::sync::Arc::new(e)),
                message: format!(
                    "{why}, so the retry could not be scheduled: declare the topology (`webhookctl setup`), then \
                     requeue. The job had failed with: {}",
                    failure.message
                ),
            };
            next = Next::DeadLetter;
            refused = 0;
            continue;
        }
        let delay = if matches!(next, Next::DeadLetter) && refused > 0 {
            let why = Unavailable::because(
                format!(
                    "the dead-letter queue refuses messages ({e}): declare the topology (`webhookctl setup`)"
                ),
                false,
            );
            let delay = hold.wait(&why);
            tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "the dead-letter queue refused the message; holding it");
            delay
        } else {
            let delay = delays.next().unwrap_or(health::HOLD_MAX);
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "could not re-publish the failed message; trying again");
            delay
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return None,
        }
    }
}

/// Returns the message to the queue: its redelivery finds the ledger done and records the outcome.
async fn give_back(delivery: &Delivery) -> Settled {
    let _ = delivery.give_back().await;
    Settled::Requeued
}
