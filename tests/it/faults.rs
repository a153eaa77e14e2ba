//! Faults that are not outages (issue 14), against the real worker, Postgres and RabbitMQ:
//! nothing spins, and every message ends succeeded or dead-lettered with a reason.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{Connection, PgConnection};
use webhook_sandbox::{Route, SeedUser};
use webhook_tests::{
    TcpProxy, TestApp, TestContext, admin_database_url, rabbit, signed_event, wait_event_done, wait_for,
};

async fn admin() -> PgConnection {
    PgConnection::connect(&admin_database_url()).await.unwrap()
}

/// Sets the test database read-only (or back) for new sessions, and ends the open ones so that
/// the worker's next statements meet the new setting — what a failover to a replica looks like.
async fn set_read_only(ctx: &TestContext, on: bool) {
    let mut admin = admin().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{}\" SET default_transaction_read_only = {}",
        ctx.database_name,
        if on { "on" } else { "off" }
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&ctx.database_name)
        .execute(&mut admin)
        .await
        .unwrap();
}

/// Transactions of the test database that ended in a rollback (every refused statement is one).
async fn rollbacks(ctx: &TestContext) -> i64 {
    let mut admin = admin().await;
    sqlx::query_scalar("SELECT xact_rollback FROM pg_stat_database WHERE datname = $1")
        .bind(&ctx.database_name)
        .fetch_one(&mut admin)
        .await
        .unwrap()
}

async fn get(url: String) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn metric(port: u16, series: &str) -> f64 {
    webhook_tests::metric(&format!("http://127.0.0.1:{port}"), series).await
}

/// A failover in progress (the database read-only): the message is held with a growing delay —
/// a handful of tries, not a hot loop — `/readyz` says why, and once the database takes writes
/// again the event completes, once.
#[tokio::test]
async fn a_read_only_database_holds_the_message_with_backoff_then_completes_once() {
    let mut app = TestApp::without_worker(&[]).await;
    app.sandbox.state.add_user(SeedUser::new("ro@example.com"));
    app.start_worker().await;

    set_read_only(&app.ctx, true).await;
    let before = rollbacks(&app.ctx).await;
    let started = Instant::now();
    let event = signed_event("checkout.session.completed", "ro@example.com");
    app.publish(&event.body).await;
    let port = app.worker_port();
    let (status, body) = wait_for(
        "/readyz to say jobs are held",
        Duration::from_secs(20),
        || async move {
            let (status, body) = get(format!("http://127.0.0.1:{port}/readyz")).await;
            // The first tries may meet the ended sessions (57P01), then the read-only ones.
            let held = body["postgres"]
                .as_str()
                .is_some_and(|p| p.contains("holding") && p.contains("25006"));
            (status == 503 && held).then_some((status, body))
        },
    )
    .await;
    assert_eq!(status, 503);
    assert!(body["postgres"].as_str().unwrap().contains("25006"), "{body}");
    assert_eq!(metric(port, "webhook_worker_jobs_held").await, 1.0);
    // Six seconds of holding: with the delays doubling from 200 ms, a handful of tries.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(started.elapsed())).await;
    let tries = rollbacks(&app.ctx).await - before;
    assert!(
        (1..=25).contains(&tries),
        "{tries} refused statements in 6 s: the hold must back off"
    );
    assert_eq!(
        app.sandbox.state.calls(Route::LagoCreateSubscription),
        0,
        "nothing downstream while held"
    );

    set_read_only(&app.ctx, false).await;
    // A new pool: set_read_only ended every session of the database, the app's pool's too.
    let pool = app.ctx.pool().await;
    assert_eq!(wait_event_done(&pool, &event.event_id).await, "succeeded");
    assert_eq!(app.sandbox.state.calls(Route::LagoCreateSubscription), 1, "once");
    let audits: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_logs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(audits, 1);
    wait_for(
        "/readyz to be ready again",
        Duration::from_secs(20),
        || async move { (get(format!("http://127.0.0.1:{port}/readyz")).await.0 == 200).then_some(()) },
    )
    .await;
    assert_eq!(metric(port, "webhook_worker_jobs_held").await, 0.0);
    app.stop().await;
}

/// The job's own statement refused (a worker newer than the schema: a column missing): retried
/// through the schedule, then dead-lettered with the SQLSTATE and the fix in `x-error`.
#[tokio::test]
async fn a_refused_statement_goes_through_the_schedule_to_the_dead_letter_queue() {
    let mut app = TestApp::without_worker(&[("WORKER_RETRY_SCHEDULE", "1s")]).await;
    app.sandbox.state.add_user(SeedUser::new("schema@example.com"));
    sqlx::query("ALTER TABLE webhook_events RENAME COLUMN action_key TO action_key_renamed")
        .execute(app.pool())
        .await
        .unwrap();
    app.start_worker().await;
    let event = signed_event("checkout.session.completed", "schema@example.com");
    app.publish(&event.body).await;
    let dlq = app.topo.dead_letter_queue.clone();
    let dead = wait_for("the dead letter", Duration::from_secs(30), || {
        let dlq = dlq.clone();
        async move {
            let got = rabbit::drain(&dlq).await;
            (!got.is_empty()).then_some(got)
        }
    })
    .await;
    let error = rabbit::header(&dead[0], "x-error").unwrap();
    assert!(
        error.contains("SQLSTATE 42703") && error.contains("webhookctl migrate"),
        "{error}"
    );
    assert_eq!(
        rabbit::header(&dead[0], "x-retry-attempt").as_deref(),
        Some("1"),
        "after the schedule"
    );
    app.stop().await;
}

/// A retry queue missing (the schedule changed, the topology not declared again, as in
/// production with `declare_on_start` off): the failed message is dead-lettered at once as an
/// infrastructure failure that says what to do, `/readyz` and `webhook_worker_queue_missing`
/// name the queue, and the worker's connection is left alone: a healthy job in flight meanwhile
/// runs once (the queue sampler's 404 is a channel error, not a reason to reconnect, which
/// would hand back every unacked message).
#[tokio::test]
async fn a_missing_retry_queue_dead_letters_with_the_fix_and_shows_in_readyz() {
    let mut app = TestApp::without_worker(&[
        ("WORKER_RETRY_SCHEDULE", "7s"),
        ("WEBHOOK__WORKER__INLINE_RETRIES", "0"),
        ("WEBHOOK__AMQP__DECLARE_ON_START", "false"),
    ])
    .await;
    app.sandbox.state.add_user(SeedUser::new("healthy@example.com"));
    // A job that takes longer than a round of the queue sampler (5 s).
    app.sandbox
        .state
        .set_latency(Some(Route::KeycloakPutUser), Duration::from_secs(7));
    // The topology of the worker's schedule, so that its retry queue exists before it is deleted.
    let out = webhook_tests::webhookctl(&app.env(&[("WORKER_RETRY_SCHEDULE", "7s")]), &["setup"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let retry_queue = app.topo.retry_tiers[0].queue.clone();
    assert!(retry_queue.ends_with(".retry.7s"), "{retry_queue}");
    assert_eq!(
        rabbit::depth(&retry_queue).await,
        0,
        "setup declared {retry_queue}"
    );
    let (_conn, channel) = rabbit::channel().await;
    channel
        .queue_delete(retry_queue.as_str().into(), Default::default())
        .await
        .unwrap();
    app.start_worker_unready().await;
    let port = app.worker_port();

    let healthy = signed_event("checkout.session.completed", "healthy@example.com");
    app.publish(&healthy.body).await;
    // No such Keycloak user: a transient failure, for the retry queue that is missing.
    let failing = signed_event("checkout.session.completed", "nobody@example.com");
    app.publish(&failing.body).await;
    assert_eq!(
        wait_event_done(app.pool(), &failing.event_id).await,
        "dead_lettered"
    );
    let dead = rabbit::drain(&app.topo.dead_letter_queue).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        rabbit::header(&dead[0], "x-error-kind").as_deref(),
        Some("infrastructure")
    );
    let error = rabbit::header(&dead[0], "x-error").unwrap();
    assert!(
        error.contains(&retry_queue) && error.contains("webhookctl setup"),
        "{error}"
    );

    let body = wait_for(
        "/readyz to name the missing queue",
        Duration::from_secs(20),
        || {
            let retry_queue = retry_queue.clone();
            async move {
                let (status, body) = get(format!("http://127.0.0.1:{port}/readyz")).await;
                (status == 503 && body["missing_queues"].to_string().contains(&retry_queue)).then_some(body)
            }
        },
    )
    .await;
    assert!(body["fix"].as_str().unwrap().contains("webhookctl setup"));
    let gauge = format!("webhook_worker_queue_missing{{queue=\"{retry_queue}\"}}");
    assert_eq!(metric(port, &gauge).await, 1.0);

    assert_eq!(wait_event_done(app.pool(), &healthy.event_id).await, "succeeded");
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM webhook_events WHERE event_id = $1")
        .bind(&healthy.event_id)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(attempts, 1, "the healthy job was not handed back by a reconnect");
    assert_eq!(app.sandbox.state.calls(Route::KeycloakPutUser), 1);
    assert!(rabbit::drain(&app.topo.dead_letter_queue).await.is_empty());
    app.stop().await;
}

/// The dead-letter queue refusing too (deleted): the failed message is held unacked, its
/// publish tried again with a growing delay, and its job never run again for it.
#[tokio::test]
async fn a_refusing_dead_letter_queue_holds_the_message_without_rerunning_the_job() {
    let mut app = TestApp::without_worker(&[("WEBHOOK__AMQP__DECLARE_ON_START", "false")]).await;
    let out = webhook_tests::webhookctl(&app.ctx.env, &["setup"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let (_conn, channel) = rabbit::channel().await;
    channel
        .queue_delete(app.topo.dead_letter_queue.as_str().into(), Default::default())
        .await
        .unwrap();
    app.start_worker_unready().await;
    let port = app.worker_port();
    // Malformed: a permanent failure, straight to the (missing) dead-letter queue.
    rabbit::publish(
        &app.topo.exchange,
        "checkout.session.completed",
        b"{not json",
        "garbage-dlq",
    )
    .await;
    wait_for("the message to be held", Duration::from_secs(20), || async move {
        (metric(port, "webhook_worker_jobs_held").await == 1.0).then_some(())
    })
    .await;
    let (status, body) = get(format!("http://127.0.0.1:{port}/readyz")).await;
    assert_eq!(status, 503);
    assert!(body.to_string().contains("dead-letter queue refuses"), "{body}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let jobs = metric(
        port,
        "webhook_worker_jobs_total{event_type=\"checkout.session.completed\",outcome=\"requeued\"}",
    )
    .await;
    assert_eq!(jobs, 0.0, "never handed back to run again");
    assert_eq!(
        rabbit::depth(&app.topo.work_queue).await,
        0,
        "held by the worker, unacked"
    );
    rabbit::wait_unacked(&app.topo.work_queue, 1, Duration::from_secs(20)).await;
    // Once the topology is declared again, the dead letter lands.
    let out = webhook_tests::webhookctl(&app.ctx.env, &["setup"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let dlq = app.topo.dead_letter_queue.clone();
    let dead = wait_for("the dead letter", Duration::from_secs(40), || {
        let dlq = dlq.clone();
        async move {
            let d = rabbit::drain(&dlq).await;
            (!d.is_empty()).then_some(d)
        }
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].delivery.data, b"{not json");
    app.stop().await;
}

/// The outcome of a finished job cannot be written (a column missing: a worker newer than the
/// schema): the message is never acked unrecorded, the write is tried again with a growing
/// delay (not in a loop), the job's effects are not redone, and once the schema is fixed the
/// outcome is recorded.
#[tokio::test]
async fn an_outcome_that_cannot_be_written_is_held_with_backoff() {
    let mut app = TestApp::without_worker(&[]).await;
    app.sandbox.state.add_user(SeedUser::new("outcome@example.com"));
    app.start_worker().await;
    sqlx::query("ALTER TABLE webhook_events RENAME COLUMN completed_at TO completed_at_renamed")
        .execute(app.pool())
        .await
        .unwrap();
    let before = rollbacks(&app.ctx).await;
    let event = signed_event("checkout.session.completed", "outcome@example.com");
    app.publish(&event.body).await;
    let port = app.worker_port();
    wait_for(
        "the outcome write to be held",
        Duration::from_secs(20),
        || async move { (metric(port, "webhook_worker_jobs_held").await == 1.0).then_some(()) },
    )
    .await;
    let (status, body) = get(format!("http://127.0.0.1:{port}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["postgres"].as_str().unwrap().contains("42703"), "{body}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let tries = rollbacks(&app.ctx).await - before;
    assert!(
        (1..=25).contains(&tries),
        "{tries} refused writes in about 5 s: the hold must back off"
    );
    assert_eq!(
        rabbit::depth(&app.topo.work_queue).await,
        0,
        "the message is held by the worker (unacked), not requeued"
    );
    rabbit::wait_unacked(&app.topo.work_queue, 1, Duration::from_secs(20)).await;

    sqlx::query("ALTER TABLE webhook_events RENAME COLUMN completed_at_renamed TO completed_at")
        .execute(app.pool())
        .await
        .unwrap();
    assert_eq!(wait_event_done(app.pool(), &event.event_id).await, "succeeded");
    assert_eq!(
        app.sandbox.state.calls(Route::LagoCreateSubscription),
        1,
        "the effects were not redone"
    );
    wait_for("nothing held", Duration::from_secs(20), || async move {
        (metric(port, "webhook_worker_jobs_held").await == 0.0).then_some(())
    })
    .await;
    app.stop().await;
}

/// An event of the other Stripe mode that reaches the queue anyway (a replay, a publish by
/// hand) is skipped by the worker with the reason, and changes nothing.
#[tokio::test]
async fn the_worker_skips_an_event_of_the_other_stripe_mode() {
    let mut app = TestApp::without_worker(&[("WEBHOOK__STRIPE__LIVEMODE", "live")]).await;
    app.sandbox.state.add_user(SeedUser::new("mode@example.com"));
    app.start_worker().await;
    // The test checkouts are test-mode events (livemode: false).
    let event = signed_event("checkout.session.completed", "mode@example.com");
    app.publish(&event.body).await;
    assert_eq!(wait_event_done(app.pool(), &event.event_id).await, "skipped");
    let reason: String = sqlx::query_scalar("SELECT last_error FROM webhook_events WHERE event_id = $1")
        .bind(&event.event_id)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert!(reason.contains("test-mode event"), "{reason}");
    assert_eq!(app.sandbox.state.calls(Route::KeycloakSearchUsers), 0);
    assert_eq!(app.sandbox.state.calls(Route::LagoCreateSubscription), 0);
    app.stop().await;
}

/// Postgres unreachable (every connection cut and refused, through a proxy): the worker holds
/// the message unacked and tries again with a growing delay, without spending a retry tier —
/// with a one-tier schedule, a job that went through the tiers would be dead-lettered — and
/// completes it once when Postgres is back; a job cut off mid-way too (after Lago and
/// Keycloak were called), without doing its effects twice.
#[tokio::test]
async fn an_unreachable_database_holds_the_message_without_spending_a_retry_then_completes_once() {
    let mut app = TestApp::without_worker(&[]).await;
    app.sandbox.state.add_user(SeedUser::new("down@example.com"));
    app.sandbox.state.add_user(SeedUser::new("midway@example.com"));
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let db_url = app
        .ctx
        .database_url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    app.set_worker_settings(&[("DATABASE_URL", &db_url), ("WORKER_RETRY_SCHEDULE", "1s")]);
    app.start_worker().await;
    let port = app.worker_port();
    let publish = |email: &str| {
        let event = signed_event("checkout.session.completed", email);
        let exchange = app.topo.exchange.clone();
        async move {
            rabbit::publish(
                &exchange,
                "checkout.session.completed",
                &event.body,
                &event.event_id,
            )
            .await;
            event
        }
    };
    let held = || async move { metric(port, "webhook_worker_jobs_held").await };
    let retries = || async move {
        metric(
            port,
            "webhook_worker_jobs_total{event_type=\"checkout.session.completed\",outcome=\"retry_scheduled\"}",
        )
        .await
    };

    // 1. Down before the job starts.
    proxy.cut();
    let first = publish("down@example.com").await;
    wait_for("the message to be held", Duration::from_secs(20), || async {
        (held().await == 1.0).then_some(())
    })
    .await;
    let (status, body) = get(format!("http://127.0.0.1:{port}/readyz")).await;
    assert_eq!((status, body["postgres"].as_str()), (503, Some("down")), "{body}");
    let (refused, since) = (proxy.refused(), Instant::now());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let tries = proxy.refused() - refused;
    assert!(
        tries <= 30,
        "{tries} connection attempts in {:?}: the hold must back off",
        since.elapsed()
    );
    assert_eq!(held().await, 1.0, "still held");
    assert_eq!(retries().await, 0.0, "no retry tier spent");
    assert_eq!(
        rabbit::depth(&app.topo.work_queue).await,
        0,
        "held unacked, not requeued"
    );
    // In flight (unacked) on the work queue, as the broker sees it.
    rabbit::wait_unacked(&app.topo.work_queue, 1, Duration::from_secs(20)).await;
    for tier in &app.topo.retry_tiers {
        assert_eq!(rabbit::depth(&tier.queue).await, 0);
    }
    assert_eq!(
        app.sandbox.state.calls(Route::KeycloakSearchUsers),
        0,
        "nothing downstream"
    );
    proxy.restore();
    assert_eq!(wait_event_done(app.pool(), &first.event_id).await, "succeeded");

    // 2. Down in the middle of a job: its Keycloak update in flight when Postgres goes.
    app.sandbox
        .state
        .set_latency(Some(Route::KeycloakPutUser), Duration::from_secs(2));
    let second = publish("midway@example.com").await;
    wait_for(
        "the second job's Keycloak update",
        Duration::from_secs(20),
        || async { (app.sandbox.state.calls(Route::KeycloakPutUser) == 2).then_some(()) },
    )
    .await;
    proxy.cut();
    let lago_before = app.sandbox.state.snapshot()["subscriptions"].clone();
    wait_for("the second job to be held", Duration::from_secs(20), || async {
        (held().await == 1.0).then_some(())
    })
    .await;
    app.sandbox.state.clear_faults();
    proxy.restore();
    assert_eq!(wait_event_done(app.pool(), &second.event_id).await, "succeeded");

    assert_eq!(retries().await, 0.0, "no retry tier spent");
    let errors: i64 = sqlx::query_scalar("SELECT count(*) FROM event_errors")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(errors, 0, "an outage is not a failure of the job");
    for event in [&first, &second] {
        let (status, attempts): (String, i32) =
            sqlx::query_as("SELECT status, attempts FROM webhook_events WHERE event_id = $1")
                .bind(&event.event_id)
                .fetch_one(app.pool())
                .await
                .unwrap();
        assert_eq!(status, "succeeded");
        assert!(attempts <= 2, "{attempts} attempts recorded");
    }
    assert_eq!(
        app.sandbox.state.snapshot()["subscriptions"],
        lago_before,
        "Lago unchanged by the job's second run: one subscription each, the same lago_id"
    );
    assert_eq!(
        app.sandbox.state.snapshot()["subscriptions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let audits: Vec<String> = sqlx::query_scalar("SELECT subject FROM audit_logs ORDER BY subject")
        .fetch_all(app.pool())
        .await
        .unwrap();
    assert_eq!(
        audits,
        ["down@example.com", "midway@example.com"],
        "one audit row each"
    );
    for email in ["down@example.com", "midway@example.com"] {
        let kc = app.sandbox.state.user_by_email(email).unwrap();
        assert_eq!(kc["attributes"]["subscription_tier"][0], "professional");
    }
    assert!(rabbit::peek(&app.topo.dead_letter_queue).await.is_empty());
    wait_for(
        "nothing held, ready again",
        Duration::from_secs(20),
        || async move {
            let ready = get(format!("http://127.0.0.1:{port}/readyz")).await.0 == 200;
            (ready && held().await == 0.0).then_some(())
        },
    )
    .await;
    app.stop().await;
}
