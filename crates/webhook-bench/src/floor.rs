//! The floor: the durable work of an accepted event alone, without HTTP, signature or JSON
//! answer. Per event: `BEGIN; INSERT … ON CONFLICT DO NOTHING`, a persistent, mandatory publish
//! to the work queue awaited until the broker confirms it, `COMMIT` — the very calls the ingest
//! makes, through the same store and broker code, the same pool size and the same concurrency.
//! The ingest can approach this rate, not exceed it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use webhook_amqp::{Broker, Outgoing, job_properties};
use webhook_core::Envelope;
use webhook_store::Store;
use webhook_store::events::{self, EventStatus};

use crate::events::EventFactory;
use crate::stats::{self, Latency, Phase};

/// One insert-and-commit plus one confirmed publish; errors are counted, not retried.
async fn durable_work(store: &Store, broker: &Broker, event: &Envelope) -> anyhow::Result<()> {
    let mut tx = store.pool.begin().await?;
    let inserted = events::insert_new(&mut tx, &[(event, EventStatus::Queued)]).await?;
    anyhow::ensure!(inserted.len() == 1, "event ids are unique");
    let topology = broker.topology();
    broker
        .publish(Outgoing {
            exchange: &topology.exchange,
            routing_key: &event.event_type,
            body: &event.body,
            properties: job_properties(event.id.as_str(), &event.event_type, webhook_amqp::Headers::new()),
        })
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Runs the durable work of fresh events of `series` with `concurrency` tasks for `duration`.
pub async fn run(
    store: &Store,
    broker: &Broker,
    factory: &Arc<EventFactory>,
    series: u32,
    concurrency: usize,
    duration: Duration,
) -> Phase {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (store, broker, factory, next) = (store.clone(), broker.clone(), factory.clone(), next.clone());
        tasks.spawn(async move {
            let (mut ok, mut errors, mut h) = (0u64, 0u64, stats::histogram());
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let event = Envelope::parse(factory.event(series, n).body).expect("valid event");
                let t = Instant::now();
                match durable_work(&store, &broker, &event).await {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("floor: {e:#}");
                        }
                    }
                }
                stats::record(&mut h, t.elapsed());
            }
            (ok, errors, h)
        });
    }
    let (mut ok, mut errors, mut h) = (0, 0, stats::histogram());
    while let Some(r) = tasks.join_next().await {
        let (o, e, hist) = r.expect("floor task");
        ok += o;
        errors += e;
        h.add(&hist).expect("same bounds");
    }
    let seconds = started.elapsed().as_secs_f64();
    Phase {
        concurrency,
        ok,
        errors,
        seconds,
        per_sec: ok as f64 / seconds,
        latency: Latency::from_histogram(&h),
    }
}
