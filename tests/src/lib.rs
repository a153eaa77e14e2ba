//! The integration-test harness: every test gets its own Postgres database and its own
//! RabbitMQ name prefix, runs the real `Application`s (or binaries) on port 0, and waits by
//! polling with a deadline.
//!
//! Environment: `TEST_DATABASE_URL` (a superuser connection used to create and drop the
//! per-test databases, default `postgres://postgres@127.0.0.1:5432/postgres`) and
//! `TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).

pub mod app;
pub mod cluster;
pub mod ingest;
pub mod proxy;
pub mod rabbit;
pub mod stripe;
pub mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};
use webhook_core::Settings;

pub use app::TestApp;
pub use proxy::TcpProxy;

/// The webhook secret every test signs with.
pub const TEST_SECRET: &str = "whsec_integration_test_secret";

pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// One test's isolated resources.
pub struct TestContext {
    pub id: String,
    pub database_url: String,
    pub database_name: String,
    /// Prefix of every exchange and queue of this test.
    pub prefix: String,
    pub env: HashMap<String, String>,
}

impl TestContext {
    /// Creates a fresh database (migrated) and picks a unique RabbitMQ prefix.
    pub async fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let database_name = format!("webhooks_test_{id}");
        let admin = admin_database_url();
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("connect to TEST_DATABASE_URL (make services)");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{database_name}\""
        )))
        .execute(&mut conn)
        .await
        .expect("create the test database");
        let database_url = webhook_store::with_database_name(&admin, &database_name);
        let prefix = format!("test.{id}.");
        let env: HashMap<String, String> = [
            ("DATABASE_URL", database_url.as_str()),
            ("AMQP_URL", amqp_url().as_str()),
            ("STRIPE_WEBHOOK_SECRET", TEST_SECRET),
            ("INGEST_BIND", "127.0.0.1:0"),
            ("WORKER_BIND", "127.0.0.1:0"),
            ("WORKER_RETRY_SCHEDULE", "1s,2s"),
            ("WEBHOOK__AMQP__NAME_PREFIX", prefix.as_str()),
            ("WEBHOOK__AMQP__RECONNECT_MIN_MS", "100"),
            ("WEBHOOK__AMQP__RECONNECT_MAX_MS", "500"),
            ("WEBHOOK__INGEST__WORKERS", "2"),
            ("WEBHOOK__DATABASE__MAX_CONNECTIONS", "25"),
            ("RUST_LOG", "warn"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let ctx = Self {
            id,
            database_url,
            database_name,
            prefix,
            env,
        };
        webhook_store::Store::connect_lazy(&ctx.settings().database)
            .unwrap()
            .migrate()
            .await
            .unwrap();
        ctx
    }

    /// Settings for this test's resources; `extra` overrides (same names as the environment).
    pub fn settings_with(&self, extra: &[(&str, &str)]) -> Settings {
        let mut env = self.env.clone();
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        Settings::load_from(None, &env).expect("test settings are valid")
    }

    pub fn settings(&self) -> Settings {
        self.settings_with(&[])
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.database_url)
            .await
            .expect("connect to the test database")
    }
}

/// Removes this test's queues, exchanges and database when the test ends, passed or failed (a
/// failed test used to leave them behind). `Drop` cannot wait for async work, so the cleanup
/// runs on a thread of its own with a small runtime, and is joined: the next test never sees
/// this one's resources. It never panics (a panic while unwinding would abort): what cannot be
/// removed is left to `make clean-test-resources`.
impl Drop for TestContext {
    fn drop(&mut self) {
        let env = std::mem::take(&mut self.env);
        let database_name = std::mem::take(&mut self.database_name);
        let prefix = std::mem::take(&mut self.prefix);
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(settings) = Settings::load_from(None, &env) {
                    rabbit::delete_topology(&settings).await;
                }
                // What the topology of these settings does not name (another retry schedule's
                // queues, a test's own queues).
                if !prefix.is_empty() {
                    rabbit::delete_prefixed(&prefix).await;
                }
                if let Ok(mut conn) = PgConnection::connect(&admin_database_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{database_name}\" WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A signed request body and header for a test checkout event.
pub struct SignedEvent {
    pub event_id: String,
    pub body: Vec<u8>,
    pub signature: String,
}

/// A checkout event (`event_type`) for `email`, signed now with [`TEST_SECRET`].
pub fn signed_event(event_type: &str, email: &str) -> SignedEvent {
    let event_id = webhookctl::test_event::new_event_id();
    signed_event_with_id(&event_id, event_type, email)
}

pub fn signed_event_with_id(event_id: &str, event_type: &str, email: &str) -> SignedEvent {
    let now = webhook_core::unix_now();
    let spec = webhookctl::test_event::CheckoutSpec {
        event_id: event_id.to_string(),
        event_type: event_type.to_string(),
        email: email.to_string(),
        tier: "professional".into(),
        cycle: "monthly".into(),
        created: now,
    };
    let body = serde_json::to_vec(&webhookctl::test_event::checkout_event(&spec)).unwrap();
    let signature = webhook_core::signature::sign_header(TEST_SECRET, now, &body);
    SignedEvent {
        event_id: event_id.to_string(),
        body,
        signature,
    }
}

/// Signs an arbitrary body with [`TEST_SECRET`] at `t`.
pub fn sign(body: &[u8], t: i64) -> String {
    webhook_core::signature::sign_header(TEST_SECRET, t, body)
}

/// Directory of the workspace's built binaries (`target/debug`), for tests that run them.
pub fn bin_path(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --bins` first (make test does)",
        path.display()
    );
    path
}

/// What a command printed and how it exited.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `webhookctl` binary with exactly this environment.
pub async fn webhookctl(env: &HashMap<String, String>, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(bin_path("webhookctl"))
        .env_clear()
        .envs(env)
        .args(args)
        .output()
        .await
        .expect("run webhookctl");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `webhook_events.status` of an event, if it is stored.
pub async fn event_status(pool: &PgPool, event_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM webhook_events WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(pool)
        .await
        .expect("read webhook_events")
}

/// Waits (up to 60 s) until the event has status `want`.
pub async fn wait_event_status(pool: &PgPool, event_id: &str, want: &str) {
    wait_for(
        &format!("event {event_id} to be {want}"),
        Duration::from_secs(60),
        || async { (event_status(pool, event_id).await.as_deref() == Some(want)).then_some(()) },
    )
    .await
}

/// Waits (up to 60 s) until the event is finished (succeeded, skipped or dead-lettered).
pub async fn wait_event_done(pool: &PgPool, event_id: &str) -> String {
    wait_for(
        &format!("event {event_id} to finish"),
        Duration::from_secs(60),
        || async {
            event_status(pool, event_id)
                .await
                .filter(|s| matches!(s.as_str(), "succeeded" | "skipped" | "dead_lettered"))
        },
    )
    .await
}

/// Waits (up to 20 s) until `url` answers 200.
pub async fn wait_http_ok(what: &str, url: &str) {
    let client = reqwest::Client::new();
    wait_for(what, Duration::from_secs(20), || {
        let (client, url) = (client.clone(), url.to_owned());
        async move {
            client
                .get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        }
    })
    .await
}

/// A series of a service's `/metrics` at `base_url` (`http://host:port`): its value, or 0 when it
/// is absent. `series` is the name with its labels as Prometheus prints them, e.g.
/// `webhook_worker_queue_missing{queue="q"}`.
pub async fn metric(base_url: &str, series: &str) -> f64 {
    let text = reqwest::get(format!("{base_url}/metrics"))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics is text");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A free port on 127.0.0.1, for a process the test starts (its `*_BIND`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
}

/// A numeric setting of a long test from the environment (`CHAOS_EVENTS`, …), else `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A tiny deterministic PRNG (xorshift) for fault sequences: print the seed, and a run can be
/// replayed with it.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
