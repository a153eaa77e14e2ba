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
//! `make test` runs a short version. `make chaos` runs the long one
//! (`CHAOS_EVENTS=3000 CHAOS_REAL_RESTARTS=1`), which also restarts the real RabbitMQ and
//! Postgres servers (Postgres half the time as a crash: an immediate stop, then crash recovery),
//! so it must run alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use webhook_sandbox::{Fault, Route, SeedUser};
use webhook_tests::worker::{TestSandbox, binary_env};
use webhook_tests::{SignedEvent, TcpProxy, TestContext, bin_path, rabbit, signed_event, wait_for};

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

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

/// A tiny deterministic PRNG (xorshift), seeded from the clock; the seed is printed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test]
async fn chaos_every_accepted_event_is_provisioned_exactly_once() {
    let n_events = env_num("CHAOS_EVENTS", 150) as usize;
    let seconds = env_num("CHAOS_SECONDS", 20);
    let real_restarts = std::env::var("CHAOS_REAL_RESTARTS").is_ok_and(|v| v == "1");
    let seed = env_num("CHAOS_SEED", webhook_core::unix_now() as u64 | 1);
    eprintln!("chaos: {n_events} events over {seconds}s, seed {seed}, real restarts: {real_restarts}");

    let ctx = TestContext::new().await;
    let sandbox = TestSandbox::spawn().await;
    let emails: Vec<String> = (0..n_events).map(|i| format!("chaos{i}@example.com")).collect();
    for e in &emails {
        sandbox.state.add_user(SeedUser::new(e.clone()));
    }
    let amqp_proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let pg_proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", amqp_proxy.port);
    let db = ctx
        .database_url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", pg_proxy.port));
    let bind = format!("127.0.0.1:{port}");
    let env = binary_env(
        &ctx,
        &sandbox,
        &[
            ("AMQP_URL", &amqp),
            ("DATABASE_URL", &db),
            ("INGEST_BIND", &bind),
            ("WORKER_RETRY_SCHEDULE", "1s,1s,2s,2s,3s,5s,5s,10s,10s,10s"),
            ("WORKER_CONCURRENCY", "16"),
            ("WEBHOOK__DATABASE__ACQUIRE_TIMEOUT_SECS", "2"),
            ("WEBHOOK__AMQP__CONFIRM_TIMEOUT_MS", "2000"),
        ],
    );
    let topo = rabbit::topology(&ctx.settings());
    let ingest = Arc::new(Mutex::new(spawn("webhook-ingest", &env)));
    let worker = Arc::new(Mutex::new(spawn("webhook-worker", &env)));
    let pool = ctx.pool().await;

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
    let mut rng = Rng(seed);
    let read_only_for = Duration::from_secs(if real_restarts { 60 } else { 2 });
    let (database_name, ctl_env, retry_queues) = (
        ctx.database_name.clone(),
        env.clone(),
        topo.retry_tiers
            .iter()
            .map(|t| t.queue.clone())
            .collect::<Vec<_>>(),
    );
    let chaos = {
        let sending_done = sending_done.clone();
        async move {
            let until = Instant::now() + Duration::from_secs(seconds);
            let mut step = 0u64;
            while !sending_done.load(Ordering::SeqCst) || Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(300 + rng.below(1200))).await;
                let kinds = if real_restarts { 10 } else { 8 };
                // Every kind once, in turn, then at random.
                let pick = if step < kinds { step } else { rng.below(kinds) };
                step += 1;
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
                            sandbox.state.inject_fault(Fault {
                                route,
                                status: 503,
                                count: 5,
                                retry_after_secs: None,
                                body: None,
                            });
                            "sandbox fails"
                        } else {
                            sandbox
                                .state
                                .set_latency(Some(route), Duration::from_millis(1500));
                            tokio::time::sleep(Duration::from_millis(2000)).await;
                            sandbox.state.clear_faults();
                            "sandbox stalls"
                        }
                    }
                    5 => {
                        // Two jobs creating one new customer at once: the loser's answer.
                        sandbox.state.inject_fault(Fault {
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
                        let ok = std::process::Command::new("rabbitmqctl")
                            .args(["stop_app"])
                            .status()
                            .is_ok_and(|s| s.success())
                            && std::process::Command::new("rabbitmqctl")
                                .args(["start_app"])
                                .status()
                                .is_ok_and(|s| s.success());
                        assert!(ok, "rabbitmqctl stop_app/start_app failed");
                        "RabbitMQ restarted"
                    }
                    _ => {
                        let v = std::fs::read_dir("/etc/postgresql")
                            .unwrap()
                            .flatten()
                            .map(|e| e.file_name())
                            .max()
                            .unwrap();
                        // Half of them a crash: an immediate stop loses what was not yet
                        // written to the WAL on disk (the worker's deferred commits), as a
                        // killed server does, and the restart runs crash recovery.
                        let crash = rng.below(2) == 0;
                        let ok = std::process::Command::new("pg_ctlcluster")
                            .args([
                                "--skip-systemctl-redirect",
                                "-m",
                                if crash { "immediate" } else { "fast" },
                                v.to_str().unwrap(),
                                "main",
                                "restart",
                            ])
                            .status()
                            .is_ok_and(|s| s.success());
                        assert!(ok, "pg_ctlcluster restart failed");
                        if crash {
                            "Postgres crashed and recovered"
                        } else {
                            "Postgres restarted"
                        }
                    }
                };
                *faults.entry(kind).or_default() += 1;
            }
            sandbox.state.clear_faults();
            (faults, worker, ingest, sandbox)
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
    let (faults, worker, ingest, sandbox) = chaos.await.unwrap();

    // What a missing retry queue sent to the dead-letter queue (and only that) goes back, as an
    // operator would do once the topology is declared again.
    let out = webhook_tests::webhookctl(&env_for_ctl(&ctx), &["setup"]).await;
    assert_eq!(out.code, 0, "webhookctl setup: {out:?}");
    let mut requeued = 0;
    for m in rabbit::peek(&topo.dead_letter_queue).await {
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
        let out = webhook_tests::webhookctl(&env_for_ctl(&ctx), &["dlq", "requeue", "--all"]).await;
        assert_eq!(out.code, 0, "webhookctl dlq requeue: {out:?}");
    }
    eprintln!("chaos: {requeued} infrastructure dead letters requeued");

    // Let the pipeline drain, then check every effect.
    wait_for(
        "every accepted event to be provisioned",
        Duration::from_secs(600),
        || async {
            let done: i64 =
                sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE status = 'succeeded'")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (done as usize == n_events).then_some(())
        },
    )
    .await;
    let per_subject: Vec<(String, i64)> =
        sqlx::query_as("SELECT subject, count(*) FROM audit_logs GROUP BY subject")
            .fetch_all(&pool)
            .await
            .unwrap();
    let audit: HashMap<String, i64> = per_subject.into_iter().collect();
    let snapshot = sandbox.state.snapshot();
    let subs = snapshot["subscriptions"].as_array().unwrap();
    let (mut lost, mut doubled) = (0, 0);
    for (e, email) in events.iter().zip(&emails) {
        let suffix: String = e
            .event_id
            .trim_start_matches("evt_")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let n_subs = subs
            .iter()
            .filter(|s| s["external_id"] == format!("sub_{suffix}"))
            .count();
        let n_audit = audit.get(email).copied().unwrap_or(0);
        let tier = sandbox.state.user_by_email(email).and_then(|u| {
            u["attributes"]["subscription_tier"][0]
                .as_str()
                .map(str::to_owned)
        });
        if n_subs == 0 || n_audit == 0 || tier.as_deref() != Some("professional") {
            lost += 1;
        }
        if n_subs > 1 || n_audit > 1 {
            doubled += 1;
        }
    }
    let dlq = rabbit::depth(&topo.dead_letter_queue).await;
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
    assert!(faults.values().sum::<u32>() > 0, "faults were injected");

    for p in [worker, ingest] {
        let mut p = p.lock().await;
        let _ = p.start_kill();
        let _ = p.wait().await;
    }
    sandbox.stop().await;
    ctx.cleanup().await;
}
