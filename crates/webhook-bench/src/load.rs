//! The load generator: signed events over keep-alive HTTP/1.1 connections, closed loop (a fixed
//! number of clients, each sending its next event as soon as the previous one is answered) or
//! open loop (a fixed rate, latency measured from the scheduled send time, so a slow server is
//! not hidden by a client that waits for it: no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::events::EventFactory;
use crate::stats::{self, Latency, Phase};

/// Where the events go.
#[derive(Clone)]
pub struct Target {
    client: reqwest::Client,
    url: String,
}

impl Target {
    /// `POST /webhooks/stripe` of the ingest on `port`, with up to `connections` kept alive.
    pub fn new(port: u16, connections: usize) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            client,
            url: format!("http://127.0.0.1:{port}/webhooks/stripe"),
        })
    }
}

/// Which events a phase sends.
#[derive(Clone)]
pub enum Source {
    /// New events `0, 1, 2, …` of the series (at most `limit`).
    Fresh { series: u32, limit: Option<u64> },
    /// Events already sent (by series and number), re-sent in a cycle: the duplicates path.
    Replay(Arc<Vec<(u32, u64)>>),
}

/// The answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    Duplicate,
    Other,
}

/// What a load phase saw.
pub struct LoadResult {
    /// `(series, n)` of every event answered `accepted`.
    pub accepted: Vec<(u32, u64)>,
    pub duplicates: u64,
    pub other: u64,
    pub elapsed: Duration,
    pub histogram: Histogram<u64>,
}

impl LoadResult {
    fn empty() -> Self {
        Self {
            accepted: Vec::new(),
            duplicates: 0,
            other: 0,
            elapsed: Duration::ZERO,
            histogram: stats::histogram(),
        }
    }

    fn merge(&mut self, other: LoadResult) {
        self.accepted.extend(other.accepted);
        self.duplicates += other.duplicates;
        self.other += other.other;
        self.histogram.add(&other.histogram).expect("same bounds");
    }

    /// The phase's figures, counting `answer` as success.
    pub fn phase(&self, concurrency: usize, answer: Answer) -> Phase {
        let ok = match answer {
            Answer::Accepted => self.accepted.len() as u64,
            Answer::Duplicate => self.duplicates,
            Answer::Other => self.other,
        };
        let total = self.accepted.len() as u64 + self.duplicates + self.other;
        let seconds = self.elapsed.as_secs_f64();
        Phase {
            concurrency,
            ok,
            errors: total - ok,
            seconds,
            per_sec: if seconds > 0.0 { ok as f64 / seconds } else { 0.0 },
            latency: Latency::from_histogram(&self.histogram),
        }
    }
}

struct Picker {
    source: Source,
    next: AtomicU64,
}

impl Picker {
    fn pick(&self) -> Option<(u32, u64)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        match &self.source {
            Source::Fresh { series, limit } => match limit {
                Some(l) if i >= *l => None,
                _ => Some((*series, i)),
            },
            Source::Replay(list) if list.is_empty() => None,
            Source::Replay(list) => Some(list[(i % list.len() as u64) as usize]),
        }
    }
}

async fn send(target: &Target, factory: &EventFactory, (series, n): (u32, u64)) -> Answer {
    let event = factory.event(series, n);
    let response = target
        .client
        .post(&target.url)
        .header("content-type", "application/json")
        .header("stripe-signature", event.signature)
        .body(event.body)
        .send()
        .await;
    let Ok(response) = response else {
        return Answer::Other;
    };
    let ok = response.status() == 200;
    let Ok(body) = response.bytes().await else {
        return Answer::Other;
    };
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    match () {
        _ if ok && has(br#""status":"accepted""#) => Answer::Accepted,
        _ if ok && has(br#""status":"duplicate""#) => Answer::Duplicate,
        _ => Answer::Other,
    }
}

fn tally(result: &mut LoadResult, picked: (u32, u64), answer: Answer) {
    match answer {
        Answer::Accepted => result.accepted.push(picked),
        Answer::Duplicate => result.duplicates += 1,
        Answer::Other => result.other += 1,
    }
}

/// `concurrency` clients send back to back until `duration` has passed or the source is
/// exhausted.
pub async fn closed_loop(
    target: &Target,
    factory: &Arc<EventFactory>,
    source: Source,
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    let picker = Arc::new(Picker {
        source,
        next: AtomicU64::new(0),
    });
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (target, factory, picker) = (target.clone(), factory.clone(), picker.clone());
        tasks.spawn(async move {
            let mut result = LoadResult::empty();
            while Instant::now() < deadline {
                let Some(picked) = picker.pick() else { break };
                let sent = Instant::now();
                let answer = send(&target, &factory, picked).await;
                stats::record(&mut result.histogram, sent.elapsed());
                tally(&mut result, picked, answer);
            }
            result
        });
    }
    let mut total = merge_all(tasks).await;
    total.elapsed = started.elapsed();
    total
}

/// Fresh events of `series` at `rate` per second for `duration`, by up to `max_in_flight`
/// clients. Each latency is measured from the moment the event was due, so time spent waiting
/// for a free client counts.
pub async fn open_loop(
    target: &Target,
    factory: &Arc<EventFactory>,
    series: u32,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
) -> LoadResult {
    let total_events = (rate * duration.as_secs_f64()).round() as u64;
    let next = Arc::new(AtomicU64::new(0));
    let started = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..max_in_flight {
        let (target, factory, next) = (target.clone(), factory.clone(), next.clone());
        tasks.spawn(async move {
            let mut result = LoadResult::empty();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total_events {
                    break;
                }
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due).await;
                let answer = send(&target, &factory, (series, i)).await;
                stats::record(&mut result.histogram, due.elapsed());
                tally(&mut result, (series, i), answer);
            }
            result
        });
    }
    let mut total = merge_all(tasks).await;
    total.elapsed = started.elapsed();
    total
}

/// The load tasks' results, merged.
async fn merge_all(mut tasks: JoinSet<LoadResult>) -> LoadResult {
    let mut total = LoadResult::empty();
    while let Some(r) = tasks.join_next().await {
        total.merge(r.expect("load task"));
    }
    total
}
