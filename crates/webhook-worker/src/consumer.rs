//! The consume loop: manual acks, `concurrency` jobs in flight (prefetch), resumes on every new
//! broker connection, and on shutdown stops consuming and lets in-flight jobs finish.
//!
//! A message is acked only once its outcome is durable: done (ledger and status in Postgres),
//! re-published to a retry tier with a confirm, or dead-lettered with a confirm.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;
use webhook_amqp::lapin::message::Delivery;
use webhook_amqp::lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use webhook_amqp::lapin::types::FieldTable;
use webhook_amqp::trace_context;
use webhook_store::events::{ErrorRecord, EventStatus, Outcome};
use webhook_store::fault::DbFault;

use crate::context::WorkerContext;
use crate::dispatch::{self, Done};
use crate::failure::{Failure, JobError};
use crate::health::Hold;
use crate::retry::{self, Next};
use webhook_amqp::PublishError;
use webhook_core::message::ErrorKind;

/// Consumes until `shutdown` turns true, then waits up to `drain_timeout` for in-flight jobs.
pub async fn run(
    ctx: Arc<WorkerContext>,
    concurrency: u16,
    mut shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
) {
    let mut links = ctx.broker.links();
    let mut jobs = JoinSet::new();
    // The channel of the consumer that shutdown stopped: kept open until the jobs in flight
    // are settled, since their acks go through it (dropping it closes it, which hands every
    // unacked message back to the queue at once, finished jobs included).
    let mut draining = None;
    'outer: loop {
        // Wait for a usable connection (or shutdown).
        let link = loop {
            if *shutdown.borrow() {
                break 'outer;
            }
            if let Some(link) = ctx.broker.current() {
                break link;
            }
            tokio::select! {
                _ = links.changed() => {}
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        };
        let channel = match link.connection.create_channel().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a consumer channel");
                ctx.broker.report_broken(&link);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let consumer = async {
            channel.basic_qos(concurrency, BasicQosOptions::default()).await?;
            channel
                .basic_consume(
                    ctx.broker.topology().work_queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        }
        .await;
        let mut consumer = match consumer {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start consuming; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!(queue = %ctx.broker.topology().work_queue, concurrency, "consuming");
        loop {
            tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
                        jobs.spawn(handle(ctx, delivery, shutdown));
                    }
                    Some(Err(e)) => { tracing::warn!(error = %e, "consumer failed; resuming on the next connection"); break; }
                    None => { tracing::warn!("consumer ended; resuming on the next connection"); break; }
                },
                Some(_) = jobs.join_next(), if !jobs.is_empty() => {}
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        let tag = consumer.tag();
                        let _ = channel.basic_cancel(tag, BasicCancelOptions::default()).await;
                        draining = Some(channel);
                        break 'outer;
                    }
                }
            }
        }
        ctx.broker.report_broken(&link);
    }
    // Let in-flight jobs finish; what does not finish in time is returned to the queue when
    // the connection closes (unacked messages are redelivered, and the ledger makes that safe).
    let drained =
        tokio::time::timeout(drain_timeout, async { while jobs.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            left = jobs.len(),
            "shutdown timeout: returning unfinished jobs to the queue"
        );
        jobs.abort_all();
    }
    if let Some(channel) = draining {
        let _ = channel.close(200, "shutdown".into()).await;
    }
}

/// Processes one delivery and settles it, in the job's span: the child of the ingest's publish
/// when the message carries its trace context (see `webhook_amqp::trace_context`).
async fn handle(ctx: Arc<WorkerContext>, delivery: Delivery, shutdown: watch::Receiver<bool>) {
    let retries = retry::retries_so_far(&delivery);
    let queue = &ctx.broker.topology().work_queue;
    let span = tracing::info_span!(
        "job",
        otel.name = %format_args!("{queue} process"),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = %queue,
        messaging.message.id = delivery.properties.message_id().as_ref().map(|m| m.as_str()).unwrap_or(""),
        messaging.rabbitmq.destination.routing_key = delivery.routing_key.as_str(),
        retry_attempt = retries,
        event_id = tracing::field::Empty,
        event_type = tracing::field::Empty,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    trace_context::continue_trace(&span, delivery.properties.headers().as_ref());
    run_job(ctx, delivery, shutdown, retries).instrument(span).await
}

async fn run_job(
    ctx: Arc<WorkerContext>,
    delivery: Delivery,
    mut shutdown: watch::Receiver<bool>,
    retries: u32,
) {
    ctx.metrics.in_flight.inc();
    let started = Instant::now();
    let mut hold = Hold::new(ctx.health.clone());
    let (event_type, outcome) = loop {
        let processed = dispatch::process(&ctx, Bytes::copy_from_slice(&delivery.data)).await;
        let event_type = processed
            .envelope
            .as_ref()
            .map(|e| e.event_type.clone())
            .or_else(|| delivery.properties.kind().as_ref().map(|t| t.as_str().to_owned()))
            .unwrap_or_else(|| "unknown".into());
        if let Err(JobError::Infrastructure(unavailable)) = &processed.result {
            // Postgres cannot take the work (down, read-only, full, …): nothing can be recorded.
            // Keep the message (unacked) and try again with a growing delay, so an outage
            // neither loses nor burns through the retries, nor spins.
            // Recycled once per hold: the connections opened after it reach the new primary.
            let first = hold.is_first();
            let delay = hold.wait(unavailable);
            if unavailable.recycle && first {
                ctx.store.recycle();
                ctx.outcomes.recycle();
            }
            tracing::warn!(
                error = %unavailable, retry_in_ms = delay.as_millis() as u64,
                "Postgres unavailable; holding the message"
            );
            let resumed = tokio::select! {
                _ = tokio::time::sleep(delay) => wait_for_store(&ctx, &mut shutdown).await,
                _ = shutdown.changed() => false,
            };
            if !resumed || *shutdown.borrow() {
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
                break (event_type, "requeued");
            }
            continue;
        }
        drop(hold);
        let outcome = settle(&ctx, &delivery, &event_type, processed, retries, &mut shutdown).await;
        break (event_type, outcome);
    };
    let span = tracing::Span::current();
    span.record("event_type", event_type.as_str());
    span.record("outcome", outcome);
    if matches!(outcome, "retry_scheduled" | "dead_lettered") {
        span.record("otel.status_code", "error");
    }
    ctx.metrics.jobs.with_label_values(&[&event_type, outcome]).inc();
    ctx.metrics
        .job_duration
        .with_label_values(&[&event_type])
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics.in_flight.dec();
}

/// Polls Postgres until it answers; false if shutdown came first.
async fn wait_for_store(ctx: &WorkerContext, shutdown: &mut watch::Receiver<bool>) -> bool {
    loop {
        if *shutdown.borrow() {
            return false;
        }
        if ctx.store.is_ready().await {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn settle(
    ctx: &WorkerContext,
    delivery: &Delivery,
    event_type: &str,
    processed: dispatch::Processed,
    retries: u32,
    shutdown: &mut watch::Receiver<bool>,
) -> &'static str {
    let event_id = processed.envelope.as_ref().map(|e| e.id.to_string());
    let attempt = processed.attempt;
    let outcome_of = |id: &str, status, last_error: Option<&str>, error: Option<ErrorRecord>| Outcome {
        event_id: id.to_owned(),
        attempt,
        status,
        last_error: last_error.map(str::to_owned),
        error,
    };
    let ack = || async {
        if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
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
                tier = summary["tier"].as_str().unwrap_or(""),
                plan = summary["plan"].as_str().unwrap_or(""),
                "job done"
            );
            ack().await;
            "succeeded"
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
            "skipped"
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
            let (outcome, status, action) = match &next {
                Next::Retry { .. } => ("retry_scheduled", EventStatus::Retrying, "retry_scheduled"),
                Next::DeadLetter => ("dead_lettered", EventStatus::DeadLettered, "dead_lettered"),
            };
            if let Some(id) = &event_id {
                let error_record = ErrorRecord {
                    attempt: retries as i32 + 1,
                    step: Some(failure.step.to_owned()),
                    kind: failure.kind.as_str().to_owned(),
                    error: failure.message.clone(),
                    action: action.to_owned(),
                };
                // The re-published message is durable already: on shutdown it is acked even if
                // the history could not be written.
                let outcome = outcome_of(id, status, Some(&failure.message), Some(error_record));
                let _ = record(ctx, shutdown, &outcome).await;
            }
            tracing::warn!(
                event_id = event_id.as_deref().unwrap_or("-"), event_type, outcome, step = failure.step,
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
                let delay = hold.wait(&crate::failure::Unavailable { reason, recycle });
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "could not record the event's outcome; holding the message");
                let resumed = tokio::select! {
                    _ = tokio::time::sleep(delay) => wait_for_store(ctx, shutdown).await,
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
    let mut delays = crate::health::backoff();
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
            let why = crate::failure::Unavailable {
                reason: format!(
                    "the dead-letter queue refuses messages ({e}): declare the topology (`webhookctl setup`)"
                ),
                recycle: false,
            };
            let delay = hold.wait(&why);
            tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "the dead-letter queue refused the message; holding it");
            delay
        } else {
            let delay = delays.next().unwrap_or(crate::health::HOLD_MAX);
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
async fn give_back(delivery: &Delivery) -> &'static str {
    let _ = delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await;
    "requeued"
}
