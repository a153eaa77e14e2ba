//! One benchmark run, start to finish, on its own database and queues.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lapin::{Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use webhook_amqp::{Broker, BrokerConfig};
use webhook_store::Store;

use crate::events::EventFactory;
use crate::floor;
use crate::load::{self, Answer, Source, Target};
use crate::plan::{Plan, WorkerCase};
use crate::procs::{self, Service};
use crate::queue::{self, Tally};
use crate::resources::{self, Resources};
use crate::stats::Phase;
use crate::worker::{self, WorkerOutcome};

/// Did every accepted event reach the queue exactly once?
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Verification {
    /// Events answered `accepted`.
    pub accepted: u64,
    /// Messages read back from the work queue.
    pub on_queue: u64,
    /// Accepted but not on the queue: lost.
    pub missing: u64,
    /// Accepted and on the queue more than once.
    pub doubled: u64,
    /// On the queue but never answered `accepted` (possible by design after a failed commit).
    pub unanswered: u64,
}

impl Verification {
    pub fn passed(&self) -> bool {
        self.missing == 0 && self.doubled == 0
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// The floor at each sweep level.
    pub floor: Vec<Phase>,
    /// The ingest at each sweep level (accepted events).
    pub ingest: Vec<Phase>,
    /// The fixed-rate run.
    pub fixed_rate: Phase,
    /// Re-sent events (all answered `duplicate`).
    pub duplicates: Phase,
    pub verification: Verification,
    pub worker: Vec<WorkerOutcome>,
    pub ingest_peak_rss_kib: Option<u64>,
    pub worker_peak_rss_kib: Option<u64>,
    pub body_bytes: usize,
}

/// Where the binaries are, and where their logs go.
pub struct Binaries {
    pub dir: PathBuf,
    pub logs: PathBuf,
}

impl Binaries {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Creates the run's resources, measures, and removes them again (also on failure).
pub async fn run_once(plan: &Plan, bins: &Binaries) -> anyhow::Result<RunResult> {
    let resources = Resources::create().await?;
    let result = measure(plan, bins, &resources).await;
    resources.cleanup().await;
    result
}

struct Runner<'a> {
    plan: &'a Plan,
    bins: &'a Binaries,
    resources: &'a Resources,
    factory: Arc<EventFactory>,
    series: u32,
    ingest_rss: Option<u64>,
}

impl Runner<'_> {
    fn next_series(&mut self) -> u32 {
        self.series += 1;
        self.series
    }

    async fn start_ingest(&self) -> anyhow::Result<Service> {
        let port = procs::free_port()?;
        let mut env = self.resources.env.clone();
        env.insert("INGEST_BIND".into(), format!("127.0.0.1:{port}"));
        let mut ingest = Service::spawn(
            "webhook-ingest",
            &self.bins.path("webhook-ingest"),
            &[],
            &env,
            port,
            &self.bins.logs,
        )?;
        ingest.wait_ready("/readyz", Duration::from_secs(30)).await?;
        Ok(ingest)
    }

    async fn stop_ingest(&mut self, ingest: Service) {
        let rss = ingest.stop().await;
        self.ingest_rss = self.ingest_rss.max(rss);
    }
}

fn log(msg: impl AsRef<str>) {
    eprintln!("webhook-bench: {}", msg.as_ref());
}

async fn measure(plan: &Plan, bins: &Binaries, resources: &Resources) -> anyhow::Result<RunResult> {
    let factory = Arc::new(EventFactory::new(&plan.emails()));
    let mut runner = Runner {
        plan,
        bins,
        resources,
        factory: factory.clone(),
        series: rand_series_base(),
        ingest_rss: None,
    };
    let topology = resources.topology();
    let work_queue = topology.work_queue.clone();
    let amqp = Connection::connect(&resources::amqp_url(), ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let ingest = runner.start_ingest().await?;
    let target = Target::new(ingest.port, 256)?;
    let store = Store::connect_lazy(&resources.settings.database)?;
    let broker = Broker::start(BrokerConfig::from_settings(
        &resources.settings,
        "webhook-bench-floor",
    )?);
    broker
        .wait_connected(Duration::from_secs(10))
        .await
        .context("the floor's broker connection")?;

    let mut tally = Tally::default();
    let mut accepted: Vec<(u32, u64)> = Vec::new();
    let idle = Duration::from_secs(5);

    // Warm-up: connections, pools, caches. Its events are verified like all others.
    let series = runner.next_series();
    let warm = load::closed_loop(
        &target,
        &factory,
        Source::Fresh { series, limit: None },
        32,
        Duration::from_secs_f64(plan.warmup_secs),
    )
    .await;
    queue::drain(&amqp, &work_queue, warm.accepted.len(), idle, &mut tally).await?;
    accepted.extend(&warm.accepted);

    // Latency at a known load, before the sweep: measured after the saturating sweep levels, it
    // would mostly measure their aftermath (Postgres writing back and checkpointing the WAL of
    // tens of thousands of events, RabbitMQ compacting the drained queue), not 1,000 events/s.
    tokio::time::sleep(Duration::from_secs_f64(plan.settle_secs)).await;
    let series = runner.next_series();
    let r = load::open_loop(
        &target,
        &factory,
        series,
        plan.fixed_rate,
        Duration::from_secs_f64(plan.fixed_secs),
        plan.fixed_clients,
    )
    .await;
    let fixed_rate = r.phase(plan.fixed_clients, Answer::Accepted);
    log(format!(
        "fixed rate {:.0}/s: {:.0}/s accepted, p50 {:.1} ms, p99 {:.1} ms",
        plan.fixed_rate, fixed_rate.per_sec, fixed_rate.latency.p50_ms, fixed_rate.latency.p99_ms
    ));
    queue::drain(&amqp, &work_queue, r.accepted.len(), idle, &mut tally).await?;
    accepted.extend(&r.accepted);

    let (mut floor_phases, mut ingest_phases) = (Vec::new(), Vec::new());
    for &c in &plan.levels {
        let series = runner.next_series();
        let f = floor::run(&store, &broker, &factory, series, c, plan.level()).await;
        queue::purge(&amqp, &work_queue).await?;
        let series = runner.next_series();
        let r = load::closed_loop(
            &target,
            &factory,
            Source::Fresh { series, limit: None },
            c,
            plan.level(),
        )
        .await;
        let p = r.phase(c, Answer::Accepted);
        log(format!(
            "concurrency {c:>3}: floor {:>7.0}/s, ingest {:>7.0}/s ({:.2} of the floor), p99 {:.1} ms, errors {}",
            f.per_sec,
            p.per_sec,
            p.per_sec / f.per_sec,
            p.latency.p99_ms,
            p.errors
        ));
        queue::drain(&amqp, &work_queue, r.accepted.len(), idle, &mut tally).await?;
        accepted.extend(&r.accepted);
        floor_phases.push(f);
        ingest_phases.push(p);
    }
    broker.close().await;
    store.pool.close().await;

    let r = load::closed_loop(
        &target,
        &factory,
        Source::Replay(Arc::new(accepted.clone())),
        plan.duplicate_concurrency,
        Duration::from_secs_f64(plan.duplicate_secs),
    )
    .await;
    let duplicates = r.phase(plan.duplicate_concurrency, Answer::Duplicate);
    log(format!(
        "duplicates: {:.0}/s, p99 {:.1} ms, other answers {}",
        duplicates.per_sec, duplicates.latency.p99_ms, duplicates.errors
    ));
    queue::drain(&amqp, &work_queue, 0, Duration::from_millis(500), &mut tally).await?;
    let verification = verify(&accepted, &tally);
    log(format!("verification: {verification:?}"));
    runner.stop_ingest(ingest).await;

    let worker = run_worker_cases(&mut runner).await?;
    let _ = amqp.close(200, "benchmark done".into()).await;
    let worker_rss = worker.iter().filter_map(|w| w.peak_rss_kib).max();
    Ok(RunResult {
        floor: floor_phases,
        ingest: ingest_phases,
        fixed_rate,
        duplicates,
        verification,
        worker,
        ingest_peak_rss_kib: runner.ingest_rss,
        worker_peak_rss_kib: worker_rss,
        body_bytes: factory.body_len(),
    })
}

/// Series numbers start at a random base so ids never repeat across runs.
fn rand_series_base() -> u32 {
    (uuid::Uuid::new_v4().as_u128() as u32) & 0x7fff_0000
}

fn verify(accepted: &[(u32, u64)], tally: &Tally) -> Verification {
    let ids: HashMap<String, ()> = accepted
        .iter()
        .map(|&(s, n)| (EventFactory::id(s, n), ()))
        .collect();
    let mut v = Verification {
        accepted: accepted.len() as u64,
        on_queue: tally.seen.values().map(|&n| u64::from(n)).sum(),
        ..Default::default()
    };
    for id in ids.keys() {
        match tally.seen.get(id) {
            None => v.missing += 1,
            Some(1) => {}
            Some(_) => v.doubled += 1,
        }
    }
    v.unanswered = tally.seen.keys().filter(|id| !ids.contains_key(*id)).count() as u64;
    v
}

async fn run_worker_cases(runner: &mut Runner<'_>) -> anyhow::Result<Vec<WorkerOutcome>> {
    let plan = runner.plan;
    let sandbox_port = procs::free_port()?;
    let mut args = vec![
        "--bind".to_owned(),
        format!("127.0.0.1:{sandbox_port}"),
        "--log-level".to_owned(),
        "warn".to_owned(),
    ];
    for email in plan.emails() {
        args.extend(["--user".to_owned(), email]);
    }
    let mut sandbox = Service::spawn(
        "webhook-sandbox",
        &runner.bins.path("webhook-sandbox"),
        &args,
        &HashMap::new(),
        sandbox_port,
        &runner.bins.logs,
    )?;
    sandbox.wait_ready("/healthz", Duration::from_secs(20)).await?;
    let sandbox_url = format!("http://127.0.0.1:{sandbox_port}");
    let pool = sqlx::PgPool::connect(&runner.resources.database_url).await?;
    let http = reqwest::Client::new();
    let mut outcomes = Vec::new();
    for case in &plan.worker {
        let outcome = run_worker_case(runner, *case, &sandbox_url, &http, &pool).await;
        match outcome {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                sandbox.stop().await;
                return Err(e);
            }
        }
    }
    pool.close().await;
    sandbox.stop().await;
    // Latency-bound scaling, against the job latency measured at concurrency 1.
    for latency in outcomes.iter().map(|o| o.latency_ms).collect::<Vec<_>>() {
        let single = outcomes
            .iter()
            .find(|o| o.latency_ms == latency && o.concurrency == 1)
            .map(|o| o.jobs_per_sec);
        if latency == 0 {
            continue;
        }
        for o in outcomes.iter_mut().filter(|o| o.latency_ms == latency) {
            o.efficiency = single
                .filter(|s| *s > 0.0)
                .map(|s| o.jobs_per_sec / (f64::from(o.concurrency) * s));
        }
    }
    Ok(outcomes)
}

async fn run_worker_case(
    runner: &mut Runner<'_>,
    case: WorkerCase,
    sandbox_url: &str,
    http: &reqwest::Client,
    pool: &sqlx::PgPool,
) -> anyhow::Result<WorkerOutcome> {
    http.post(format!("{sandbox_url}/_sandbox/latency"))
        .json(&serde_json::json!({"route": null, "ms": case.latency_ms}))
        .send()
        .await?
        .error_for_status()?;
    // Fill the work queue through the ingest, then let the worker loose on it alone.
    let series = runner.next_series();
    let ingest = runner.start_ingest().await?;
    let target = Target::new(ingest.port, 32)?;
    let filled = load::closed_loop(
        &target,
        &runner.factory,
        Source::Fresh {
            series,
            limit: Some(case.jobs),
        },
        32,
        Duration::from_secs(600),
    )
    .await;
    runner.stop_ingest(ingest).await;
    settle_database(pool).await;
    anyhow::ensure!(
        filled.accepted.len() as u64 == case.jobs,
        "filling the queue: {} of {} events accepted",
        filled.accepted.len(),
        case.jobs
    );
    let port = procs::free_port()?;
    let mut env = runner.resources.env.clone();
    for (k, v) in [
        ("WORKER_BIND", format!("127.0.0.1:{port}")),
        ("WORKER_CONCURRENCY", case.concurrency.to_string()),
        ("KEYCLOAK_URL", sandbox_url.to_owned()),
        ("KEYCLOAK_REALM", "uchub".into()),
        ("KEYCLOAK_ADMIN_USER", "admin".into()),
        ("KEYCLOAK_ADMIN_PASSWORD", "admin".into()),
        ("LAGO_API_URL", sandbox_url.to_owned()),
        ("LAGO_API_KEY", "lago-sandbox-key".into()),
    ] {
        env.insert(k.into(), v);
    }
    let mut worker = Service::spawn(
        "webhook-worker",
        &runner.bins.path("webhook-worker"),
        &[],
        &env,
        port,
        &runner.bins.logs,
    )?;
    worker.wait_ready("/readyz", Duration::from_secs(30)).await?;
    let timeout = Duration::from_secs(60 + case.jobs / 10);
    let measured = worker::measure(pool, series, case.jobs, timeout).await;
    let rss = worker.stop().await;
    let (succeeded, failed, jobs_per_sec) = measured.context("measuring the worker")?;
    log(format!(
        "worker: {} ms per call, concurrency {:>2}: {jobs_per_sec:.1} jobs/s ({succeeded} of {} succeeded)",
        case.latency_ms, case.concurrency, case.jobs
    ));
    Ok(WorkerOutcome {
        latency_ms: case.latency_ms,
        concurrency: case.concurrency,
        jobs: case.jobs,
        succeeded,
        failed,
        jobs_per_sec,
        efficiency: None,
        peak_rss_kib: rss,
    })
}

/// Vacuums the run's database and checkpoints, as pgbench does before each run: the worker is
/// then measured on its own work, not while Postgres vacuums and writes back the tens of
/// thousands of events of the phases before it. A failure (e.g. a role that may not
/// checkpoint) is logged and the measurement goes on.
async fn settle_database(pool: &sqlx::PgPool) {
    for statement in ["VACUUM (ANALYZE)", "CHECKPOINT"] {
        if let Err(e) = sqlx::query(statement).execute(pool).await {
            log(format!(
                "{statement} before the worker case failed ({e}); measuring anyway"
            ));
        }
    }
}

/// The directory of this run's child-process logs.
pub fn log_dir(base: &Path) -> anyhow::Result<PathBuf> {
    let dir = base.join(format!("webhook-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
