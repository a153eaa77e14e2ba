//! Fault injection: a stream of signed events through the real ingest and worker binaries,
//! RabbitMQ, Postgres and the sandbox while, at random moments, the worker and the ingest are
//! SIGKILLed and restarted, the connections to RabbitMQ and Postgres are cut (as a restart looks
//! from the services), and the sandbox fails or stalls. Whatever was not answered 2xx is sent
//! again, as Stripe does. At the end every accepted event must have all its effects exactly once.
//!
//! Faults that are not outages too: the database turned read-only (a failover) for a while and
//! back, a retry queue deleted (then declared again by `webhookctl setup`, and what it sent to
//! the dead-letter queue requeued, as an operator would), Lago answering `422
//! value_already_exist` to a customer create. Each kind of fault is injected once, in turn,
//! before they are drawn at random.
//!
//! Before anything is counted the pipeline must be at rest: the ingest stopped, every event
//! succeeded, the work queue and every retry queue empty and nothing in flight (the worker is
//! stopped, and the queues must still be empty without a consumer), so that a duplicate copy
//! still queued cannot run after the count. Every kind of fault must have been injected.
//!
//! `make test` runs a short version. `make chaos` runs the long one
//! (`CHAOS_EVENTS=3000 CHAOS_REAL_RESTARTS=1`), which also restarts the real RabbitMQ and
//! Postgres servers (Postgres half the time as a crash: an immediate stop, then crash recovery),
//! so it must run alone (under `flock -x /tmp/services.lock`); CI runs a short one of those
//! (.ci/run). Each restart is proven, not assumed: a connection opened before it is closed by the
//! broker, Postgres's start time changes. Both servers are started again when the test ends,
//! also when it fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use webhook_sandbox::{Fault, Route, SeedUser};
use webhook_tests::{
    Rng, SignedEvent, TcpProxy, TestApp, TestContext, bin_path, env_num, free_port, rabbit, signed_event,
    wait_for,
};

/// The kinds of fault, in the order of the first pass (the last two only with real restarts).
const KINDS: [&str; 10] = [
    "worker SIGKILL",
    "ingest SIGKILL",
    "RabbitMQ connections cut",
    "Postgres connections cut",
    "sandbox fails or stalls",
    "Lago 422 value_already_exist",
    "retry queue deleted",
    "database read-only",
    "RabbitMQ restarted",
    "Postgres restarted or crashed",
];

/// Runs a service command to its end and fails the test when it fails.
async fn run_ok(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The version of the local Postgres cluster (`/etc/postgresql/VERSION/main`).
fn pg_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql: real restarts need the local Debian cluster")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .expect("a cluster in /etc/postgresql")
        .to_string()
}

/// When Postgres last started, as it says itself (`None` while it does not answer).
async fn postgres_started_at() -> Option<String> {
    use sqlx::Connection;
    let connect = sqlx::PgConnection::connect(&webhook_tests::admin_database_url());
    let mut conn = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .ok()?
        .ok()?;
    sqlx::query_scalar("SELECT pg_postmaster_start_time()::text")
        .fetch_one(&mut conn)
        .await
        .ok()
}

/// Restarts the real Postgres (a crash: an immediate stop, then crash recovery on start) and
/// proves it: its start time changed and it answers again.
async fn restart_postgres(crash: bool) {
    let before = postgres_started_at()
        .await
        .expect("Postgres answers before its restart");
    let v = pg_version();
    let mode = if crash { "immediate" } else { "fast" };
    let args = ["--skip-systemctl-redirect", "-m", mode, &v, "main", "restart"];
    run_ok("pg_ctlcluster", &args).await;
    let after = wait_for(
        "Postgres to answer after its restart",
        Duration::from_secs(60),
        postgres_started_at,
    )
    .await;
    assert_ne!(before, after, "Postgres's start time changed: it restarted");
}

async fn amqp_connect() -> Option<Connection> {
    let url = webhook_tests::amqp_url();
    let connect = Connection::connect(&url, ConnectionProperties::default());
    tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .ok()?
        .ok()
}

/// Restarts the real RabbitMQ application (`stop_app`/`start_app`: every queue process and
/// connection stops, the Erlang node stays) and proves it: a connection opened before is
/// closed by the broker, and a new one opens.
async fn restart_rabbitmq() {
    let witness = amqp_connect().await.expect("RabbitMQ answers before its restart");
    run_ok("rabbitmqctl", &["-q", "stop_app"]).await;
    run_ok("rabbitmqctl", &["-q", "start_app"]).await;
    wait_for(
        "RabbitMQ to have closed the connection opened before its restart",
        Duration::from_secs(30),
        || async { (!witness.status().connected()).then_some(()) },
    )
    .await;
    wait_for(
        "RabbitMQ to accept connections after its restart",
        Duration::from_secs(60),
        amqp_connect,
    )
    .await;
}

/// Starts Postgres and RabbitMQ again when the test ends, also on a failure (a panic between a
/// stop and a start would leave every other test of the machine without them), then waits until
/// both answer. Starting a running server is a no-op.
struct RestoreServices;

impl Drop for RestoreServices {
    fn drop(&mut self) {
        use std::process::{Command, Stdio};
        let quiet = |cmd: &mut Command| {
            let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        quiet(Command::new("rabbitmqctl").args(["-q", "start_app"]));
        quiet(Command::new("pg_ctlcluster").args([
            "--skip-systemctl-redirect",
            &pg_version(),
            "main",
            "start",
        ]));
        let deadline = Instant::now() + Duration::from_secs(60);
        for port in [5432, 5672] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if Instant::now() > deadline {
                    eprintln!("chaos: nothing answers on 127.0.0.1:{port} after the restore");
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Messages in `queue` and its consumers (passive declare); a missing queue fails the test.
async fn queue_state(channel: &Channel, queue: &str) -> (u32, u32) {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("queue {queue} is missing: {e}"));
    (q.message_count(), q.consumer_count())
}

/// SIGTERM (a graceful stop: what is in flight finishes, the rest goes back to the queue), then
/// waits for the exit.
async fn stop_gracefully(child: &mut Child, what: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap_or_else(|_| panic!("the {what} exits within 60 s of SIGTERM"))
        .unwrap();
}

/// Sets the test database read-only (or back) for new sessions and ends the open ones: what a
/// failover to a replica looks like from the services.
async fn set_read_only(database: &str, on: bool) {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&webhook_tests::admin_database_url())
        .await
        .expect("admin connection");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{database}\" SET default_transaction_read_only = {}",
        if on { "on" } else { "off" }
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(database)
        .execute(&mut admin)
        .await
        .unwrap();
}

/// The environment of `webhookctl` for this test's resources (direct, not through the proxies).
fn env_for_ctl(ctx: &TestContext) -> HashMap<String, String> {
    ctx.env.clone()
}

fn spawn(bin: &str, env: &HashMap<String, String>) -> Child {
    Command::new(bin_path(bin))
        .env_clear()
        .envs(env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start binary")
}

#[tokio::test]
async fn chaos_every_accepted_event_is_provisioned_exactly_once() {
    let n_events = env_num("CHAOS_EVENTS", 150) as usize;
    let seconds = env_num("CHAOS_SECONDS", 20);
    let real_restarts = std::env::var("CHAOS_REAL_RESTARTS").is_ok_and(|v| v == "1");
    let seed = env_num("CHAOS_SEED", webhook_core::unix_now() as u64 | 1);
    // With real restarts 60 s by default: longer than the whole retry schedule below, so a
    // worker that retried through the tiers instead of holding would dead-letter.
    let read_only_for = Duration::from_secs(env_num(
        "CHAOS_READ_ONLY_SECS",
        if real_restarts { 60 } else { 2 },
    ));
    eprintln!(
        "chaos: {n_events} events over {seconds}s, seed {seed}, real restarts: {real_restarts}, \
         read-only for {read_only_for:?}"
    );
    // The binaries' retry schedule, so that `app.topo` names every retry queue they use.
    const SCHEDULE: &str = "1s,1s,2s,2s,3s,5s,5s,10s,10s,10s";
    let app = TestApp::without_worker(&[("WORKER_RETRY_SCHEDULE", SCHEDULE)]).await;
    // Declared after the app, so dropped before it if the test fails (and dropped by hand
    // before `app.stop()` if it passes): whatever happens, both servers run again before the
    // context removes the test's database and queues.
    let _restore = real_restarts.then_some(RestoreServices);
    let emails: Vec<String> = (0..n_events).map(|i| format!("chaos{i}@example.com")).collect();
    for e in &emails {
        app.sandbox.state.add_user(SeedUser::new(e.clone()));
    }
    let amqp_proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let pg_proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let port = free_port();
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", amqp_proxy.port);
    let db = app
        .ctx
        .database_url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", pg_proxy.port));
    let bind = format!("127.0.0.1:{port}");
    let env = app.env(&[
        ("AMQP_URL", &amqp),
        ("DATABASE_URL", &db),
        ("INGEST_BIND", &bind),
        ("WORKER_RETRY_SCHEDULE", SCHEDULE),
        ("WORKER_CONCURRENCY", "16"),
        ("WEBHOOK__DATABASE__ACQUIRE_TIMEOUT_SECS", "2"),
        ("WEBHOOK__AMQP__CONFIRM_TIMEOUT_MS", "2000"),
    ]);
    let ingest = Arc::new(Mutex::new(spawn("webhook-ingest", &env)));
    let worker = Arc::new(Mutex::new(spawn("webhook-worker", &env)));

    // Senders: like Stripe, resend whatever did not get a 2xx.
    let events: Arc<Vec<SignedEvent>> = Arc::new(
        emails
            .iter()
            .map(|e| signed_event("checkout.session.completed", e))
            .collect(),
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let resends = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://{bind}/webhooks/stripe");
    // Paced so that the events arrive over most of the run, while faults happen.
    let pace = Duration::from_secs(seconds) * 7 / 10 * 8 / n_events.max(1) as u32;
    let mut senders = Vec::new();
    for _ in 0..8 {
        let (events, next, resends, client, url) = (
            events.clone(),
            next.clone(),
            resends.clone(),
            client.clone(),
            url.clone(),
        );
        senders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(e) = events.get(i) else { return };
                tokio::time::sleep(pace).await;
                loop {
                    // Stripe signs every delivery attempt afresh.
                    let sig = webhook_tests::sign(&e.body, webhook_core::unix_now());
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("stripe-signature", sig)
                        .body(e.body.clone())
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status().is_success()) {
                        break;
                    }
                    resends.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }

    // Chaos, until every event was accepted.
    let sending_done = Arc::new(AtomicBool::new(false));
    let mut faults: BTreeMap<&'static str, u32> = BTreeMap::new();
    let kinds = if real_restarts { KINDS.len() } else { 8 } as u64;
    let mut per_kind = vec![0u32; kinds as usize];
    let mut rng = Rng(seed);
    let (database_name, ctl_env, retry_queues) = (
        app.ctx.database_name.clone(),
        env.clone(),
        app.topo
            .retry_tiers
            .iter()
            .map(|t| t.queue.clone())
            .collect::<Vec<_>>(),
    );
    let worker_env = env.clone();
    let sandbox = app.sandbox.state.clone();
    let chaos = {
        let sending_done = sending_done.clone();
        async move {
            let run_started = Instant::now();
            let until = run_started + Duration::from_secs(seconds);
            let mut step = 0u64;
            // At least until every kind was injected once.
            let go_on = |step| !sending_done.load(Ordering::SeqCst) || Instant::now() < until || step < kinds;
            while go_on(step) {
                tokio::time::sleep(Duration::from_millis(300 + rng.below(1200))).await;
                if !go_on(step) {
                    break;
                }
                // Every kind once, in turn, then at random.
                let pick = if step < kinds { step } else { rng.below(kinds) };
                step += 1;
                let fault_started = Instant::now();
                let kind = match pick {
                    0 => {
                        let mut w = worker.lock().await;
                        let _ = w.start_kill();
                        let _ = w.wait().await;
                        *w = spawn("webhook-worker", &env);
                        "worker SIGKILL"
                    }
                    1 => {
                        let mut i = ingest.lock().await;
                        let _ = i.start_kill();
                        let _ = i.wait().await;
                        *i = spawn("webhook-ingest", &env);
                        "ingest SIGKILL"
                    }
                    2 => {
                        amqp_proxy.cut();
                        tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
                        amqp_proxy.restore();
                        "RabbitMQ connections cut"
                    }
                    3 => {
                        pg_proxy.cut();
                        tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
                        pg_proxy.restore();
                        "Postgres connections cut"
                    }
                    4 => {
                        let routes = [
                            Route::LagoCreateSubscription,
                            Route::LagoCreateCustomer,
                            Route::KeycloakPutUser,
                            Route::KeycloakSearchUsers,
                        ];
                        let route = routes[rng.below(routes.len() as u64) as usize];
                        if rng.below(2) == 0 {
                            sandbox.inject_fault(Fault {
                                route,
                                status: 503,
                                count: 5,
                                retry_after_secs: None,
                                body: None,
                            });
                            "sandbox fails"
                        } else {
                            sandbox.set_latency(Some(route), Duration::from_millis(1500));
                            tokio::time::sleep(Duration::from_millis(2000)).await;
                            sandbox.clear_faults();
                            "sandbox stalls"
                        }
                    }
                    5 => {
                        // Two jobs creating one new customer at once: the loser's answer.
                        sandbox.inject_fault(Fault {
                            route: Route::LagoCreateCustomer,
                            status: 422,
                            count: 1,
                            retry_after_secs: None,
                            body: Some(serde_json::json!({
                                "status": 422, "error": "Unprocessable Entity", "code": "validation_errors",
                                "error_details": {"external_id": ["value_already_exist"]}
                            })),
                        });
                        "Lago 422 value_already_exist"
                    }
                    6 => {
                        // A retry queue missing (the schedule changed, the topology not
                        // declared): failures meanwhile are dead-lettered as infrastructure,
                        // requeued at the end once `setup` declared it again.
                        let queue = &retry_queues[rng.below(retry_queues.len() as u64) as usize];
                        let (_conn, channel) = rabbit::channel().await;
                        let _ = channel
                            .queue_delete(queue.as_str().into(), Default::default())
                            .await;
                        tokio::time::sleep(Duration::from_millis(1000 + rng.below(2000))).await;
                        let out = webhook_tests::webhookctl(&ctl_env, &["setup"]).await;
                        assert_eq!(out.code, 0, "webhookctl setup: {out:?}");
                        "retry queue deleted"
                    }
                    7 => {
                        set_read_only(&database_name, true).await;
                        tokio::time::sleep(read_only_for).await;
                        set_read_only(&database_name, false).await;
                        "database read-only"
                    }
                    8 => {
                        restart_rabbitmq().await;
                        "RabbitMQ restarted"
                    }
                    _ => {
                        // Half of them a crash: an immediate stop loses what was not yet
                        // written to the WAL on disk (the worker's deferred commits), as a
                        // killed server does, and the restart runs crash recovery.
                        let crash = rng.below(2) == 0;
                        restart_postgres(crash).await;
                        if crash {
                            "Postgres crashed and recovered"
                        } else {
                            "Postgres restarted"
                        }
                    }
                };
                eprintln!(
                    "chaos: {:>6.1}s {kind} ({:.1}s)",
                    run_started.elapsed().as_secs_f64(),
                    fault_started.elapsed().as_secs_f64()
                );
                *faults.entry(kind).or_default() += 1;
                per_kind[pick as usize] += 1;
            }
            sandbox.clear_faults();
            (faults, per_kind, worker, ingest)
        }
    };
    let started = Instant::now();
    let chaos = tokio::spawn(chaos);
    for s in senders {
        tokio::time::timeout(Duration::from_secs(600), s)
            .await
            .expect("every event accepted in time")
            .unwrap();
    }
    sending_done.store(true, Ordering::SeqCst);
    eprintln!(
        "chaos: every event accepted after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let (faults, per_kind, worker, ingest) = chaos.await.unwrap();
    let missing: Vec<&str> = per_kind
        .iter()
        .zip(KINDS)
        .filter(|(n, _)| **n == 0)
        .map(|(_, k)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "every kind of fault injected at least once; never: {missing:?} ({faults:?})"
    );

    // What a missing retry queue sent to the dead-letter queue (and only that) goes back, as an
    // operator would do once the topology is declared again.
    let out = webhook_tests::webhookctl(&env_for_ctl(&app.ctx), &["setup"]).await;
    assert_eq!(out.code, 0, "webhookctl setup: {out:?}");
    let mut requeued = 0;
    for m in rabbit::peek(&app.topo.dead_letter_queue).await {
        let kind =
            m.1.as_ref()
                .and_then(|h| h.inner().get("x-error-kind"))
                .map(|v| format!("{v:?}"));
        assert!(
            kind.as_deref().is_some_and(|k| k.contains("infrastructure")),
            "only infrastructure dead letters are expected: {kind:?}"
        );
        requeued += 1;
    }
    if requeued > 0 {
        let out = webhook_tests::webhookctl(&env_for_ctl(&app.ctx), &["dlq", "requeue", "--all"]).await;
        assert_eq!(out.code, 0, "webhookctl dlq requeue: {out:?}");
    }
    eprintln!("chaos: {requeued} infrastructure dead letters requeued");

    // Let the pipeline come to rest before counting: no request in flight (the ingest stopped,
    // answering what it had), every event succeeded, the work queue and every retry queue empty,
    // and nothing in flight in the worker: it is stopped, and without a consumer the queues must
    // still be empty (an unacked copy goes back to the queue); if not, the worker runs again.
    stop_gracefully(&mut *ingest.lock().await, "ingest").await;
    let queues: Vec<String> = std::iter::once(app.topo.work_queue.clone())
        .chain(app.topo.retry_tiers.iter().map(|t| t.queue.clone()))
        .collect();
    let (_conn, channel) = rabbit::channel().await;
    let rest_deadline = Instant::now() + Duration::from_secs(600);
    let mut worker_runs = 1;
    loop {
        wait_for(
            "every accepted event succeeded and the work and retry queues empty",
            rest_deadline.saturating_duration_since(Instant::now()),
            || async {
                let done: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE status = 'succeeded'")
                        .fetch_one(app.pool())
                        .await
                        .ok()?;
                if done as usize != n_events {
                    return None;
                }
                for q in &queues {
                    if queue_state(&channel, q).await.0 > 0 {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
        stop_gracefully(&mut *worker.lock().await, "worker").await;
        wait_for(
            "the stopped worker's consumer to be gone",
            Duration::from_secs(30),
            || async { (queue_state(&channel, &app.topo.work_queue).await.1 == 0).then_some(()) },
        )
        .await;
        let mut left = Vec::new();
        for q in &queues {
            let (messages, _) = queue_state(&channel, q).await;
            if messages > 0 {
                left.push((q.clone(), messages));
            }
        }
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < rest_deadline,
            "the pipeline came to rest in time; still queued: {left:?}"
        );
        eprintln!("chaos: still queued after the worker stopped: {left:?}; running it again");
        *worker.lock().await = spawn("webhook-worker", &worker_env);
        worker_runs += 1;
    }
    eprintln!(
        "chaos: at rest after {:.1}s (the worker ran {worker_runs} time(s) to get there)",
        started.elapsed().as_secs_f64()
    );
    let per_subject: Vec<(String, i64)> =
        sqlx::query_as("SELECT subject, count(*) FROM audit_logs GROUP BY subject")
            .fetch_all(app.pool())
            .await
            .unwrap();
    let audit: HashMap<String, i64> = per_subject.into_iter().collect();
    let snapshot = app.sandbox.state.snapshot();
    let subs = snapshot["subscriptions"].as_array().unwrap();
    let (mut lost, mut doubled) = (0, 0);
    for (e, email) in events.iter().zip(&emails) {
        let suffix: String = e
            .event_id
            .trim_start_matches("evt_")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let sub: Vec<_> = subs
            .iter()
            .filter(|s| s["external_id"] == format!("sub_{suffix}"))
            .collect();
        let n_audit = audit.get(email).copied().unwrap_or(0);
        let tier = app.sandbox.state.user_by_email(email).and_then(|u| {
            u["attributes"]["subscription_tier"][0]
                .as_str()
                .map(str::to_owned)
        });
        if sub.len() != 1
            || sub[0]["status"] != "active"
            || n_audit == 0
            || tier.as_deref() != Some("professional")
        {
            lost += 1;
        }
        // Lago (and the sandbox) are idempotent on a subscription's external_id, so a repeated
        // create cannot show there; the audit row is written by the pipeline itself.
        if n_audit > 1 {
            doubled += 1;
        }
    }
    let dlq = rabbit::depth(&app.topo.dead_letter_queue).await;
    eprintln!(
        "chaos summary: events {n_events}, accepted {n_events}, resends {}, faults {:?} ({} in total), \
         lost {lost}, doubled {doubled}, dead letters {dlq}, {:.1}s",
        resends.load(Ordering::SeqCst),
        faults,
        faults.values().sum::<u32>(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!((lost, doubled), (0, 0), "lost 0, doubled 0");
    assert_eq!(subs.len(), n_events, "nothing else changed in Lago");
    assert_eq!(
        audit.values().sum::<i64>() as usize,
        n_events,
        "nothing else in the audit log"
    );
    assert_eq!(dlq, 0, "nothing in this run is designed to fail");

    for p in [worker, ingest] {
        let mut p = p.lock().await;
        let _ = p.start_kill();
        let _ = p.wait().await;
    }
    drop(_restore);
    app.stop().await;
}
