//! The promise on a RabbitMQ cluster: a three-node cluster (scripts/rabbitmq-cluster.sh, beside
//! the machine's node), quorum queues with three replicas, two ingest and four worker processes,
//! a stream of signed events (checkouts, lifecycle sequences of some subscriptions, duplicate
//! deliveries, and a few events made to fail) while nodes go away and come back one at a time
//! (the work queue's leader first; every other loss a crash: SIGKILL of the node's VM, the others
//! clean stops) and ingests and workers are SIGKILLed. Whatever was not
//! answered 2xx is sent again, as Stripe does. Afterwards every accepted event has its effects
//! exactly once in Keycloak, Lago and the audit log, each subscription ends as in-order delivery
//! would leave it, nothing waits in the work or retry queues, and the dead-letter queue holds
//! exactly the events made to fail.
//!
//! `make test` runs a short version (CLUSTER_EVENTS=300, one node restart); `make chaos-cluster`
//! the long one (3,000 events over 2 minutes, a node restart every ~20 s).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::options::BasicGetOptions;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use webhook_sandbox::SeedUser;
use webhook_tests::cluster::Cluster;
use webhook_tests::stripe::{checkout, subscription};
use webhook_tests::worker::{TestSandbox, binary_env};
use webhook_tests::{Rng, TestContext, bin_path, env_num, free_port, rabbit, sign, wait_for};

/// How long the workers get to finish a job again after a node is lost (it stays down meanwhile).
const RESUME_WITHIN: Duration = Duration::from_secs(30);
/// The workers' retry schedule (it names their retry queues).
const SCHEDULE: &str = "1s,1s,2s,2s,3s,5s,5s,10s,10s,10s";

/// A process of the run, its log in the run's folder.
fn spawn(bin: &str, env: &HashMap<String, String>, log: &std::path::Path) -> Child {
    let file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(bin_path(bin))
        .env_clear()
        .envs(env)
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .expect("start binary")
}

/// What a subscription must end as, delivered in order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// Professional, one checkout.
    Checkout,
    /// Checkout professional, then upgraded to enterprise.
    Upgraded,
    /// Checkout, upgrade, then canceled: no Lago subscription, the free tier.
    Canceled,
    /// A checkout of a tier no plan maps: dead-lettered at once, no effect.
    Fails,
}

/// An event id and its body (signed at each delivery).
type Delivery = (String, Vec<u8>);

struct Sub {
    email: String,
    sub: String,
    expect: Expect,
    /// Its events, in `created` order.
    events: Vec<Delivery>,
}

/// One ingest's longest run of consecutive 503 answers (first 503 to the next 2xx).
#[derive(Default)]
struct Windows {
    open: HashMap<usize, Instant>,
    longest: Duration,
}

#[tokio::test]
async fn every_accepted_event_survives_node_losses_exactly_once() {
    let n_events = env_num("CLUSTER_EVENTS", 300) as usize;
    let seconds = env_num("CLUSTER_SECONDS", 30);
    let restart_every = Duration::from_secs(env_num("CLUSTER_RESTART_EVERY_SECS", 20));
    let seed = env_num("CLUSTER_SEED", webhook_core::unix_now() as u64 | 1);
    eprintln!(
        "cluster: {n_events} events over {seconds}s, a node restart every {restart_every:?}, seed {seed}"
    );

    let cluster = Cluster::up().await;
    let ctx = TestContext::new().await;
    let sandbox = TestSandbox::spawn().await;
    let logs = std::env::temp_dir().join(format!("cluster-test-{}", ctx.id));
    std::fs::create_dir_all(&logs).unwrap();
    let mut rng = Rng(seed);

    // The events: about 1 % made to fail, a tenth of the subscriptions with a lifecycle.
    let t0 = webhook_core::unix_now() - 600;
    let mut subs: Vec<Sub> = Vec::new();
    let mut total = 0;
    let mut i = 0;
    while total < n_events {
        let email = format!("c{i}.{}@example.com", ctx.id);
        let (sub, cus) = (format!("sub_c{i}_{}", ctx.id), format!("cus_c{i}_{}", ctx.id));
        let id = |k: &str| format!("evt_c{i}{k}_{}", ctx.id);
        let expect = match i % 100 {
            0 => Expect::Fails,
            1..=5 => Expect::Upgraded,
            6..=10 => Expect::Canceled,
            _ => Expect::Checkout,
        };
        let tier = if expect == Expect::Fails {
            "unmapped"
        } else {
            "professional"
        };
        let mut events = vec![(
            id("a"),
            checkout(&id("a"), t0 + i as i64, &sub, &cus, &email, tier),
        )];
        if matches!(expect, Expect::Upgraded | Expect::Canceled) {
            events.push((
                id("b"),
                subscription(
                    &id("b"),
                    "customer.subscription.updated",
                    t0 + i as i64 + 100,
                    &sub,
                    &cus,
                    "active",
                    "enterprise",
                ),
            ));
        }
        if expect == Expect::Canceled {
            events.push((
                id("c"),
                subscription(
                    &id("c"),
                    "customer.subscription.deleted",
                    t0 + i as i64 + 200,
                    &sub,
                    &cus,
                    "canceled",
                    "enterprise",
                ),
            ));
        }
        total += events.len();
        // Every account exists: the events made to fail fail on their plan, permanently.
        sandbox.state.add_user(SeedUser::new(email.clone()));
        subs.push(Sub {
            email,
            sub,
            expect,
            events,
        });
        i += 1;
    }
    let fail_ids: HashSet<String> = subs
        .iter()
        .filter(|s| s.expect == Expect::Fails)
        .map(|s| s.events[0].0.clone())
        .collect();

    // Two ingests and four workers on the cluster, every quorum queue on all three nodes.
    let ports = [free_port(), free_port()];
    let base_env = binary_env(
        &ctx,
        &sandbox,
        &[
            ("AMQP_URL", &cluster.url),
            ("WEBHOOK__AMQP__QUORUM_GROUP_SIZE", "3"),
            ("WEBHOOK__AMQP__CONFIRM_TIMEOUT_MS", "3000"),
            ("WORKER_RETRY_SCHEDULE", SCHEDULE),
            ("WORKER_CONCURRENCY", "8"),
            ("WEBHOOK__DATABASE__MAX_CONNECTIONS", "10"),
            ("RUST_LOG", "info"),
        ],
    );
    let out = webhook_tests::webhookctl(&base_env, &["setup"]).await;
    assert_eq!(out.code, 0, "webhookctl setup on the cluster: {out:?}");
    let ingest_env: Vec<HashMap<String, String>> = ports
        .iter()
        .map(|p| {
            let mut e = base_env.clone();
            e.insert("INGEST_BIND".into(), format!("127.0.0.1:{p}"));
            e
        })
        .collect();
    let ingests: Arc<Vec<Mutex<Child>>> = Arc::new(
        (0..2)
            .map(|k| {
                Mutex::new(spawn(
                    "webhook-ingest",
                    &ingest_env[k],
                    &logs.join(format!("ingest-{k}.log")),
                ))
            })
            .collect(),
    );
    let workers: Vec<Mutex<Child>> = (0..4)
        .map(|k| {
            Mutex::new(spawn(
                "webhook-worker",
                &base_env,
                &logs.join(format!("worker-{k}.log")),
            ))
        })
        .collect();
    // The workers' schedule, so that the at-rest check below covers every retry queue they use.
    let topo = rabbit::topology(&ctx.settings_with(&[
        ("WEBHOOK__AMQP__QUORUM_GROUP_SIZE", "3"),
        ("WORKER_RETRY_SCHEDULE", SCHEDULE),
    ]));
    let pool = ctx.pool().await;

    // Senders, like Stripe: resend until 2xx; each subscription's events in order. A tenth of
    // the deliveries are sent twice (Stripe's duplicates), by another sender.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let deliveries: Arc<Vec<Vec<Delivery>>> = Arc::new(subs.iter().map(|s| s.events.clone()).collect());
    let duplicates: Vec<Delivery> = subs
        .iter()
        .flat_map(|s| s.events.iter().cloned())
        .filter(|_| rng.below(10) == 0)
        .collect();
    let n_duplicates = duplicates.len();
    let next = Arc::new(AtomicUsize::new(0));
    let resends = Arc::new(AtomicUsize::new(0));
    let windows = Arc::new(std::sync::Mutex::new(Windows::default()));
    let pace = Duration::from_secs(seconds) * 7 / 10 * 16 / subs.len().max(1) as u32;
    let send = {
        let (client, resends, windows) = (client.clone(), resends.clone(), windows.clone());
        move |body: Vec<u8>, which: usize| {
            let (client, resends, windows) = (client.clone(), resends.clone(), windows.clone());
            async move {
                let mut which = which;
                loop {
                    let url = format!("http://127.0.0.1:{}/webhooks/stripe", ports[which % 2]);
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("stripe-signature", sign(&body, webhook_core::unix_now()))
                        .body(body.clone())
                        .send()
                        .await;
                    let status = r.as_ref().map(|r| r.status().as_u16()).ok();
                    {
                        let mut w = windows.lock().unwrap();
                        match status {
                            Some(s) if (200..300).contains(&s) => {
                                if let Some(opened) = w.open.remove(&(which % 2)) {
                                    w.longest = w.longest.max(opened.elapsed());
                                }
                            }
                            Some(503) => {
                                w.open.entry(which % 2).or_insert_with(Instant::now);
                            }
                            _ => {}
                        }
                    }
                    if status.is_some_and(|s| (200..300).contains(&s)) {
                        return;
                    }
                    resends.fetch_add(1, Ordering::SeqCst);
                    which += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    };
    let mut senders = Vec::new();
    for lane in 0..16 {
        let (deliveries, next, send) = (deliveries.clone(), next.clone(), send.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(events) = deliveries.get(k) else {
                    return;
                };
                tokio::time::sleep(pace).await;
                for (_, body) in events {
                    send(body.clone(), lane + k).await;
                }
            }
        }));
    }
    {
        let send = send.clone();
        senders.push(tokio::spawn(async move {
            let every = Duration::from_secs(seconds) * 8 / 10 / duplicates.len().max(1) as u32;
            for (k, (_, body)) in duplicates.into_iter().enumerate() {
                tokio::time::sleep(every).await;
                send(body, k).await;
            }
        }));
    }

    // Faults: a node restart every `restart_every` (the work queue's leader first, then the
    // others in turn; one node down at a time), and SIGKILLs of ingests and workers between.
    let sending_done = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (sending_done, ingests, cluster_url) =
            (sending_done.clone(), ingests.clone(), cluster.url.clone());
        let failing: Vec<String> = fail_ids.iter().cloned().collect();
        let (pool, work_queue, logs, ingest_env, base_env) = (
            pool.clone(),
            topo.work_queue.clone(),
            logs.clone(),
            ingest_env.clone(),
            base_env.clone(),
        );
        async move {
            let cluster = Cluster { url: cluster_url };
            let mut faults: BTreeMap<String, u32> = BTreeMap::new();
            let mut resume: Vec<Duration> = Vec::new();
            let until = Instant::now() + Duration::from_secs(seconds);
            let mut restarts = 0u32;
            let mut last_restart = Instant::now() - restart_every / 2;
            while !sending_done.load(Ordering::SeqCst) || Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(1000 + rng.below(2000))).await;
                if last_restart.elapsed() >= restart_every {
                    let leader = cluster.leader(&work_queue).await;
                    let node = if restarts == 0 {
                        leader.expect("the work queue's leader is known (rabbitmq-cluster.sh leader)")
                    } else {
                        (restarts % 3 + 1) as u8
                    };
                    let succeeded = |pool: sqlx::PgPool| async move {
                        sqlx::query_scalar::<_, i64>(
                            "SELECT count(*) FROM webhook_events WHERE status = 'succeeded'",
                        )
                        .fetch_one(&pool)
                        .await
                        .unwrap_or(0)
                    };
                    let before = succeeded(pool.clone()).await;
                    let stopped = Instant::now();
                    // Every other loss a crash (the first among them): a clean stop hands the
                    // leadership over and closes the connections, a crash leaves both to be
                    // found out.
                    let crash = restarts.is_multiple_of(2);
                    if crash {
                        cluster.kill(node).await;
                    } else {
                        cluster.stop(node).await;
                    }
                    // How long until the workers finish jobs again (only measured while work
                    // is left to do).
                    let left: i64 = sqlx::query_scalar(
                        // Work a worker can do now: not the events waiting out a retry delay (the
                        // ones made to fail), which no worker can finish sooner.
                        "SELECT count(*) FROM webhook_events WHERE status IN ('queued', 'processing')
                         AND NOT (event_id = ANY($1))",
                    )
                    .bind(&failing)
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0);
                    // With the node still down: the other two hold every queue's quorum.
                    let deadline = Instant::now() + RESUME_WITHIN;
                    let mut resumed = None;
                    while Instant::now() < deadline {
                        if succeeded(pool.clone()).await > before {
                            resumed = Some(stopped.elapsed());
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    if left > 0 {
                        // Not resumed in time: counted as the bound, and named in the figures.
                        resume.push(resumed.unwrap_or(RESUME_WITHIN));
                        if resumed.is_none() {
                            *faults
                                .entry(format!("no job done within {RESUME_WITHIN:?} of a node loss"))
                                .or_default() += 1;
                        }
                    }
                    cluster.start(node).await;
                    let what = format!(
                        "node {} ({})",
                        if crash { "crash" } else { "stop" },
                        if Some(node) == leader {
                            "the work queue's leader"
                        } else {
                            "a follower"
                        }
                    );
                    *faults.entry(what).or_default() += 1;
                    restarts += 1;
                    last_restart = Instant::now();
                    continue;
                }
                if rng.below(2) == 0 {
                    let k = rng.below(2) as usize;
                    let mut p = ingests[k].lock().await;
                    let _ = p.start_kill();
                    let _ = p.wait().await;
                    *p = spawn(
                        "webhook-ingest",
                        &ingest_env[k],
                        &logs.join(format!("ingest-{k}.log")),
                    );
                    *faults.entry("ingest SIGKILL".into()).or_default() += 1;
                } else {
                    let k = rng.below(4) as usize;
                    let mut p = workers[k].lock().await;
                    let _ = p.start_kill();
                    let _ = p.wait().await;
                    *p = spawn("webhook-worker", &base_env, &logs.join(format!("worker-{k}.log")));
                    *faults.entry("worker SIGKILL".into()).or_default() += 1;
                }
            }
            (faults, resume, workers, restarts)
        }
    };
    let started = Instant::now();
    let chaos = tokio::spawn(chaos);
    for s in senders {
        tokio::time::timeout(Duration::from_secs(900), s)
            .await
            .expect("every event accepted in time")
            .unwrap();
    }
    sending_done.store(true, Ordering::SeqCst);
    let (faults, resume, workers, restarts) = chaos.await.unwrap();
    assert!(
        restarts >= 1,
        "no node was restarted: the run was too short ({faults:?})"
    );
    assert!(
        faults.keys().any(|k| k.contains("the work queue's leader")),
        "no loss hit the work queue's leader: {faults:?}"
    );

    // Drain: every event terminal, nothing ready in the work or retry queues.
    let expected_ok = total - fail_ids.len();
    wait_for("every accepted event to be provisioned", Duration::from_secs(300), || async {
        // `skipped`: superseded, e.g. an update the worker reached after the subscription's
        // deletion (delivery order is not guaranteed across workers; the state is).
        let (ok, dead): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status IN ('succeeded', 'skipped')), count(*) FILTER (WHERE status = 'dead_lettered') FROM webhook_events",
        )
        .fetch_one(&pool)
        .await
        .ok()?;
        (ok as usize == expected_ok && dead as usize == fail_ids.len()).then_some(())
    })
    .await;
    let drained = started.elapsed();
    for q in std::iter::once(&topo.work_queue).chain(topo.retry_tiers.iter().map(|t| &t.queue)) {
        assert_eq!(cluster.depth(q).await, 0, "{q} is empty");
    }

    // The dead-letter queue holds exactly the events made to fail.
    let (_conn, ch) = cluster.channel().await;
    let mut dead = HashSet::new();
    while let Some(m) = ch
        .basic_get(
            topo.dead_letter_queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
    {
        let id = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        assert!(dead.insert(id.clone()), "{id} dead-lettered twice");
    }
    assert_eq!(
        dead, fail_ids,
        "the dead-letter queue holds exactly the events made to fail"
    );

    // Effects: once each, and the state in-order delivery leaves.
    let audit: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT details->>'stripe_event_id', count(*) FROM audit_logs GROUP BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let status: HashMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT event_id, status FROM webhook_events")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let snapshot = sandbox.state.snapshot();
    let lago_subs = snapshot["subscriptions"].as_array().unwrap();
    let customers = snapshot["customers"].as_array().unwrap();
    let (mut lost, mut doubled, mut wrong) = (Vec::new(), Vec::new(), Vec::new());
    for s in &subs {
        for (id, _) in &s.events {
            let n = audit.get(id).copied().unwrap_or(0);
            if s.expect == Expect::Fails {
                if n != 0 {
                    doubled.push(format!("{id}: audited though it failed"));
                }
                continue;
            }
            if n == 0 && status.get(id).map(String::as_str) != Some("skipped") {
                lost.push(format!("{id}: no audit row ({:?})", status.get(id)));
            }
            if n > 1 {
                doubled.push(format!("{id}: {n} audit rows"));
            }
        }
        let mine: Vec<&serde_json::Value> = lago_subs
            .iter()
            .filter(|l| l["external_id"] == s.sub.as_str())
            .collect();
        let active: Vec<&&serde_json::Value> = mine.iter().filter(|l| l["status"] == "active").collect();
        let tier = sandbox.state.user_by_email(&s.email).and_then(|u| {
            u["attributes"]["subscription_tier"][0]
                .as_str()
                .map(str::to_owned)
        });
        let plan = active.first().and_then(|l| l["plan_code"].as_str());
        let (want_plan, want_tier) = match s.expect {
            Expect::Checkout => (Some("professional_monthly"), Some("professional")),
            Expect::Upgraded => (Some("enterprise_monthly"), Some("enterprise")),
            Expect::Canceled => (None, Some("free")),
            Expect::Fails => (None, None),
        };
        if active.len() > 1 {
            doubled.push(format!("{}: {} active Lago subscriptions", s.sub, active.len()));
        }
        if s.expect == Expect::Fails && !mine.is_empty() {
            doubled.push(format!(
                "{}: a Lago subscription for an event made to fail",
                s.sub
            ));
        }
        if plan != want_plan || tier.as_deref() != want_tier {
            wrong.push(format!(
                "{} ({:?}): Lago {plan:?}, Keycloak {tier:?}; in order: {want_plan:?}, {want_tier:?}",
                s.sub, s.expect
            ));
        }
        // The Lago customer is keyed by the account's email.
        let n_customers = customers
            .iter()
            .filter(|c| c["external_id"] == s.email.as_str())
            .count();
        if n_customers > 1 {
            doubled.push(format!("{}: {n_customers} Lago customers", s.email));
        }
    }
    let longest_503 = windows.lock().unwrap().longest;
    eprintln!(
        "cluster: {total} events ({} subscriptions, {n_duplicates} duplicate deliveries, {} made to fail), \
         {} resends; faults {faults:?}; lost {}, doubled {}, not as in order {}; longest 503 window \
         of an ingest {longest_503:?}; workers resumed after a node stop within {:?} (max of {}); \
         drained in {drained:?}",
        subs.len(),
        fail_ids.len(),
        resends.load(Ordering::SeqCst),
        lost.len(),
        doubled.len(),
        wrong.len(),
        resume.iter().max(),
        resume.len(),
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(doubled.is_empty(), "doubled: {doubled:?}");
    assert!(wrong.is_empty(), "not the state of in-order delivery: {wrong:?}");

    for w in workers {
        let _ = w.lock().await.start_kill();
    }
    for i in ingests.iter() {
        let _ = i.lock().await.start_kill();
    }
    let (conn, _) = cluster.channel().await;
    webhook_amqp::topology::delete(&conn.into(), &topo).await;
    let _ = std::fs::remove_dir_all(&logs);
}
