//! Step 1 of the job path, and the whole of it for one message: consume it, decode it into a
//! [`Job`] (2), run its handler ([`handlers`], 3, which applies it through [`crate::apply`], 4)
//! and settle it ([`settle`], 5).
//!
//! The loop: manual acks, `concurrency` jobs in flight (prefetch), resumes on every new broker
//! connection, and on shutdown stops consuming and lets in-flight jobs finish. A job that finds
//! Postgres unavailable is held here (unacked) until it is back. A message is acked only once its
//! outcome is durable (see [`settle`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;
use webhook_amqp::{Delivery, trace_context};
use webhook_store::events;

use crate::context::WorkerContext;
use crate::failure::JobError;
use crate::handlers;
use crate::health::{Hold, wait_for_store};
use crate::job::{Job, Processed};
use crate::settle::{self, Settled};

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
        let channel = match link.connection.open_channel().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a consumer channel");
                ctx.broker.report_broken(&link);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let consumer = channel
            .consume(&ctx.broker.topology().work_queue, concurrency, false)
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
                        consumer.cancel().await;
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
        channel.close("shutdown").await;
    }
}

/// Processes one delivery and settles it, in the job's span: the child of the ingest's publish
/// when the message carries its trace context (see `webhook_amqp::trace_context`).
async fn handle(ctx: Arc<WorkerContext>, delivery: Delivery, shutdown: watch::Receiver<bool>) {
    let retries = delivery.headers().retry_attempt();
    let queue = &ctx.broker.topology().work_queue;
    let span = tracing::info_span!(
        "job",
        otel.name = %format_args!("{queue} process"),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = %queue,
        messaging.message.id = delivery.message_id().unwrap_or(""),
        messaging.rabbitmq.destination.routing_key = delivery.routing_key(),
        retry_attempt = retries,
        event_id = tracing::field::Empty,
        event_type = tracing::field::Empty,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    trace_context::continue_trace(&span, delivery.headers());
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
        let processed = process(&ctx, Bytes::copy_from_slice(delivery.body())).await;
        let event_type = processed
            .event
            .as_ref()
            .map(|e| e.event_type.clone())
            .or_else(|| delivery.kind().map(str::to_owned))
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
                _ = tokio::time::sleep(delay) => wait_for_store(&ctx.store, &mut shutdown).await,
                _ = shutdown.changed() => false,
            };
            if !resumed || *shutdown.borrow() {
                let _ = delivery.give_back().await;
                break (event_type, Settled::Requeued);
            }
            continue;
        }
        drop(hold);
        let outcome = settle::settle(&ctx, &delivery, &event_type, processed, retries, &mut shutdown).await;
        break (event_type, outcome);
    };
    let span = tracing::Span::current();
    span.record("event_type", event_type.as_str());
    span.record("outcome", outcome.as_str());
    if matches!(outcome, Settled::RetryScheduled | Settled::DeadLettered) {
        span.record("otel.status_code", "error");
    }
    ctx.metrics
        .jobs
        .with_label_values(&[&event_type, outcome.as_str()])
        .inc();
    ctx.metrics
        .job_duration
        .with_label_values(&[&event_type])
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics.in_flight.dec();
}

/// Steps 2 to 4: the message decoded, its attempt recorded, its handler run.
async fn process(ctx: &WorkerContext, body: Bytes) -> Processed {
    let job = match Job::decode(body) {
        Ok(job) => job,
        Err(rejected) => {
            if let Some(event) = &rejected.event {
                tracing::Span::current().record("event_id", event.id.as_str());
            }
            return Processed {
                event: rejected.event,
                attempt: 0,
                result: Err(rejected.failure.into()),
            };
        }
    };
    // The job's span (see `handle`) is known by its event from here on.
    tracing::Span::current().record("event_id", job.event.id.as_str());
    let mut attempt = 0;
    let result = match events::start_attempt(&ctx.store.pool, &job.event, job.action_key.as_deref()).await {
        Ok(recorded) => {
            attempt = recorded;
            handlers::handle(ctx, &job).await
        }
        Err(e) => Err(e.into()),
    };
    Processed {
        event: Some(job.event),
        attempt,
        result,
    }
}
