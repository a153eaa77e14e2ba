//! End to end: ingest → RabbitMQ → worker → sandbox (Keycloak + Lago) → Postgres, with the real
//! services, a short retry schedule, and each test isolated (own database, queue prefix, sandbox).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinSet;
use webhook_sandbox::{Fault, Route, SeedUser, Stall};
use webhook_store::events::{ErrorRecord, EventStatus, Outcome};
use webhook_store::{Commits, Store};
use webhook_tests::ingest::TestIngest;
use webhook_tests::worker::{TestSandbox, binary_env};
use webhook_tests::{
    TcpProxy, TestApp, TestContext, bin_path, free_port, rabbit, signed_event, signed_event_with_id,
    wait_event_status, wait_for,
};
use webhook_worker::outcomes::OutcomeWriter;

const LONG: Duration = Duration::from_secs(30);

async fn audit_rows(pool: &PgPool, subject: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT details FROM audit_logs WHERE event_type = 'subscription.created' AND subject = $1",
    )
    .bind(subject)
    .fetch_all(pool)
    .await
    .unwrap()
}

fn session_subscription_id(event_id: &str) -> String {
    // webhookctl's test events derive the ids from the event id.
    let suffix: String = event_id
        .trim_start_matches("evt_")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("sub_{suffix}")
}

fn user(email: &str, attributes: &[(&str, &str)]) -> SeedUser {
    SeedUser {
        email: email.into(),
        username: Some(email.split('@').next().unwrap().into()),
        first_name: Some("Ada".into()),
        last_name: Some("Lovelace".into()),
        attributes: attributes
            .iter()
            .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
            .collect(),
    }
}

#[tokio::test]
async fn paid_checkout_provisions_keycloak_lago_and_audit_and_keeps_other_attributes() {
    let mut app = TestApp::without_worker(&[]).await;
    app.sandbox.state.add_user(user(
        "ada@example.com",
        &[("department", "R&D"), ("locale", "en")],
    ));
    let ingest = app.ingest().await;
    app.start_worker().await;

    let event = signed_event("checkout.session.completed", "Ada@Example.com");
    assert_eq!(ingest.post_event(&event).await.status(), 200);
    wait_event_status(app.pool(), &event.event_id, "succeeded").await;

    // Keycloak: the tier is set and nothing else was lost.
    let kc = app.sandbox.state.user_by_email("ada@example.com").expect("user");
    assert_eq!(kc["attributes"]["subscription_tier"], json!(["professional"]));
    assert_eq!(kc["attributes"]["department"], json!(["R&D"]));
    assert_eq!(kc["attributes"]["locale"], json!(["en"]));
    assert_eq!(kc["email"], "ada@example.com");
    assert_eq!(kc["firstName"], "Ada");
    assert_eq!(kc["lastName"], "Lovelace");
    // Lago: the customer (external_id = email) and the subscription on the bought plan.
    let customers = app.sandbox.state.snapshot()["customers"].clone();
    assert!(
        customers
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["external_id"] == "ada@example.com"),
        "{customers}"
    );
    let subs = app
        .sandbox
        .subscriptions(&session_subscription_id(&event.event_id));
    assert_eq!(subs.len(), 1, "{subs:?}");
    assert_eq!(subs[0]["plan_code"], "professional_monthly");
    assert_eq!(subs[0]["external_customer_id"], "ada@example.com");
    assert_eq!(subs[0]["status"], "active");
    // The audit row.
    let audit = audit_rows(app.pool(), "ada@example.com").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["stripe_event_id"], event.event_id.as_str());
    assert_eq!(audit[0]["tier"], "professional");
    assert_eq!(audit[0]["plan"], "professional_monthly");
    assert_eq!(audit[0]["lago_subscription_id"], subs[0]["lago_id"]);

    app.stop_worker().await;
    // Nothing left on the queues, in flight included (counted once the worker is gone).
    assert_eq!(rabbit::all_messages(&app.topo.work_queue).await, 0);
    assert_eq!(rabbit::depth(&app.topo.dead_letter_queue).await, 0);
    ingest.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn the_same_event_twice_and_two_events_for_one_session_provision_once() {
    let mut app = TestApp::without_worker(&[]).await;
    app.sandbox.state.add_user(user("bob@example.com", &[]));
    app.start_worker().await;

    // The same message twice on the queue (a redelivery, or two ingests racing past the dedupe),
    // then the async_payment_succeeded event of the same session under another event id.
    let first = signed_event("checkout.session.completed", "bob@example.com");
    for _ in 0..2 {
        app.publish(&first.body).await;
    }
    wait_event_status(app.pool(), &first.event_id, "succeeded").await;
    let mut second: Value = serde_json::from_slice(&first.body).unwrap();
    second["id"] = json!("evt_test_second_event_same_session");
    second["type"] = json!("checkout.session.async_payment_succeeded");
    let second_body = serde_json::to_vec(&second).unwrap();
    rabbit::publish(
        &app.topo.exchange,
        "checkout.session.async_payment_succeeded",
        &second_body,
        "evt_test_second_event_same_session",
    )
    .await;
    wait_event_status(app.pool(), "evt_test_second_event_same_session", "succeeded").await;
    // Both copies of the first event ran to the end (the second waited for the lease): two
    // attempts, the outcome terminal, and nothing left on the queue or in flight.
    wait_for("both copies of the first event processed", LONG, || async {
        let (status, attempts): (String, i32) =
            sqlx::query_as("SELECT status, attempts FROM webhook_events WHERE event_id = $1")
                .bind(&first.event_id)
                .fetch_one(app.pool())
                .await
                .ok()?;
        let in_flight = webhook_tests::metric(&app.worker_url(), "webhook_worker_jobs_in_flight").await;
        (status == "succeeded"
            && attempts == 2
            && in_flight == 0.0
            && rabbit::depth(&app.topo.work_queue).await == 0)
            .then_some(())
    })
    .await;

    // The sandbox counts the calls: the Lago effects were made once for three deliveries
    // (the ledger and the billing state, not Lago's idempotency, kept them from repeating).
    assert_eq!(
        app.sandbox.state.calls(Route::LagoCreateCustomer),
        1,
        "one customer create"
    );
    assert_eq!(
        app.sandbox.state.calls(Route::LagoCreateSubscription),
        1,
        "one subscription create"
    );
    assert_eq!(
        app.sandbox.state.calls(Route::KeycloakPutUser),
        1,
        "one tier update"
    );
    assert_eq!(
        app.sandbox
            .subscriptions(&session_subscription_id(&first.event_id))
            .len(),
        1
    );
    assert_eq!(audit_rows(app.pool(), "bob@example.com").await.len(), 1);
    let steps: Vec<String> = sqlx::query_scalar("SELECT step FROM provisioning_steps ORDER BY step")
        .fetch_all(app.pool())
        .await
        .unwrap();
    assert_eq!(
        steps,
        [
            "audit",
            "keycloak_attributes",
            "keycloak_lookup",
            "lago_customer",
            "lago_subscription"
        ]
    );

    app.stop().await;
}

#[tokio::test]
async fn lago_failing_three_times_succeeds_after_retries() {
    let mut app = TestApp::without_worker(&[("WEBHOOK__WORKER__INLINE_RETRIES", "1")]).await;
    app.sandbox.state.add_user(user("cy@example.com", &[]));
    app.sandbox.state.inject_fault(Fault {
        route: Route::LagoCreateSubscription,
        status: 500,
        count: 3,
        retry_after_secs: None,
        body: None,
    });
    // One quick in-process retry, so the third failure has to go through a broker retry tier.
    app.start_worker().await;
    let event = signed_event("checkout.session.completed", "cy@example.com");
    app.publish(&event.body).await;

    wait_event_status(app.pool(), &event.event_id, "succeeded").await;
    assert_eq!(app.sandbox.state.calls(Route::LagoCreateSubscription), 4);
    assert_eq!(
        app.sandbox
            .subscriptions(&session_subscription_id(&event.event_id))
            .len(),
        1
    );
    let (attempts,): (i32,) = sqlx::query_as("SELECT attempts FROM webhook_events WHERE event_id = $1")
        .bind(&event.event_id)
        .fetch_one(app.pool())
        .await
        .unwrap();
    // Attempt 1: the call and its one quick retry fail; attempt 2 (from the retry tier): the
    // third failure, then the quick retry succeeds.
    assert_eq!(attempts, 2, "first delivery and one broker retry");
    // The failed step wrote the steps finished before it: the broker retry resumed after them.
    assert_eq!(
        app.sandbox.state.calls(Route::KeycloakSearchUsers),
        1,
        "the lookup was not redone"
    );
    assert_eq!(
        app.sandbox.state.calls(Route::LagoCreateCustomer),
        1,
        "the customer was not redone"
    );
    let errors: Vec<(String, String)> =
        sqlx::query_as("SELECT step, action FROM event_errors WHERE event_id = $1 ORDER BY id")
            .bind(&event.event_id)
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(
        errors,
        vec![("lago_subscription".to_string(), "retry_scheduled".to_string())]
    );
    assert_eq!(audit_rows(app.pool(), "cy@example.com").await.len(), 1);

    app.stop().await;
}

#[tokio::test]
async fn unknown_plan_is_dead_lettered_at_once_as_permanent() {
    let mut app = TestApp::without_worker(&[]).await;
    app.sandbox.state.add_user(user("dee@example.com", &[]));
    app.start_worker().await;

    let mut body: Value =
        serde_json::from_slice(&signed_event("checkout.session.completed", "dee@example.com").body).unwrap();
    body["data"]["object"]["metadata"]["tier_id"] = json!("platinum");
    let id = body["id"].as_str().unwrap().to_string();
    rabbit::publish(
        &app.topo.exchange,
        "checkout.session.completed",
        &serde_json::to_vec(&body).unwrap(),
        &id,
    )
    .await;

    wait_event_status(app.pool(), &id, "dead_lettered").await;
    let dead = rabbit::drain(&app.topo.dead_letter_queue).await;
    assert_eq!(dead.len(), 1);
    let m = &dead[0];
    assert_eq!(rabbit::header(m, "x-error-kind").as_deref(), Some("permanent"));
    assert_eq!(
        rabbit::header(m, "x-failed-step").as_deref(),
        Some("lago_subscription")
    );
    assert_eq!(rabbit::header(m, "x-retry-attempt").as_deref(), Some("0"));
    assert_eq!(
        rabbit::header(m, "x-original-routing-key").as_deref(),
        Some("checkout.session.completed")
    );
    assert!(rabbit::header(m, "x-error").unwrap().contains("platinum_monthly"));
    assert!(rabbit::header(m, "x-first-failed-at").is_some());
    assert_eq!(
        m.delivery.properties.message_id().as_ref().map(|s| s.as_str()),
        Some(id.as_str())
    );
    assert_eq!(
        app.sandbox.state.calls(Route::LagoCreateSubscription),
        1,
        "no retry of a permanent error"
    );
    assert!(audit_rows(app.pool(), "dee@example.com").await.is_empty());

    app.stop().await;
}

#[tokio::test]
async fn unknown_user_is_retried_through_the_schedule_then_dead_lettered() {
    let app = TestApp::spawn_with(&[("WORKER_RETRY_SCHEDULE", "1s,1s")]).await;
    let event = signed_event("checkout.session.completed", "ghost@example.com");
    app.publish(&event.body).await;

    wait_event_status(app.pool(), &event.event_id, "dead_lettered").await;
    let dead = rabbit::drain(&app.topo.dead_letter_queue).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        rabbit::header(&dead[0], "x-error-kind").as_deref(),
        Some("transient")
    );
    assert_eq!(
        rabbit::header(&dead[0], "x-failed-step").as_deref(),
        Some("keycloak_lookup")
    );
    assert_eq!(rabbit::header(&dead[0], "x-retry-attempt").as_deref(), Some("2"));
    assert!(
        rabbit::header(&dead[0], "x-error")
            .unwrap()
            .contains("ghost@example.com")
    );
    assert_eq!(
        dead[0].delivery.data, event.body,
        "the payload is dead-lettered byte for byte"
    );
    assert_eq!(
        app.sandbox.state.calls(Route::KeycloakSearchUsers),
        3,
        "first attempt and two retries"
    );
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM event_errors WHERE event_id = $1 ORDER BY id")
            .bind(&event.event_id)
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(actions, ["retry_scheduled", "retry_scheduled", "dead_lettered"]);

    app.stop().await;
}

#[tokio::test]
async fn malformed_and_unpaid_messages_never_block_the_queue() {
    let mut app = TestApp::without_worker(&[("WORKER_CONCURRENCY", "1")]).await;
    app.sandbox.state.add_user(user("eve@example.com", &[]));
    // One job at a time, the bad messages first: a bad message that blocked the queue would
    // keep the good one from ever running.
    let _ = TestIngest::spawn(app.ctx.settings())
        .await
        .ready()
        .await
        .stop()
        .await;

    rabbit::publish(
        &app.topo.exchange,
        "checkout.session.completed",
        b"{not json",
        "garbage-1",
    )
    .await;
    let mut unpaid: Value =
        serde_json::from_slice(&signed_event("checkout.session.completed", "eve@example.com").body).unwrap();
    unpaid["data"]["object"]["payment_status"] = json!("unpaid");
    let unpaid_id = unpaid["id"].as_str().unwrap().to_string();
    rabbit::publish(
        &app.topo.exchange,
        "checkout.session.completed",
        &serde_json::to_vec(&unpaid).unwrap(),
        &unpaid_id,
    )
    .await;
    let good = signed_event("checkout.session.completed", "eve@example.com");
    app.publish(&good.body).await;
    app.start_worker().await;

    wait_event_status(app.pool(), &good.event_id, "succeeded").await;
    wait_event_status(app.pool(), &unpaid_id, "skipped").await;
    let dead = wait_for("the malformed message in the DLQ", LONG, || async {
        let d = rabbit::drain(&app.topo.dead_letter_queue).await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        rabbit::header(&dead[0], "x-failed-step").as_deref(),
        Some("parse")
    );
    assert_eq!(
        rabbit::header(&dead[0], "x-error-kind").as_deref(),
        Some("permanent")
    );
    assert!(
        rabbit::header(&dead[0], "x-error")
            .unwrap()
            .contains("malformed message")
    );
    assert_eq!(dead[0].delivery.data, b"{not json");
    assert_eq!(audit_rows(app.pool(), "eve@example.com").await.len(), 1);

    app.stop().await;
}

#[tokio::test]
async fn worker_killed_mid_job_completes_after_restart_without_doubling() {
    let app = TestApp::without_worker(&[]).await;
    app.sandbox
        .state
        .add_user(user("kim@example.com", &[("plan_note", "vip")]));
    // Slow down the Keycloak tier update so the worker is killed while the job is in flight,
    // after the Lago subscription was created.
    app.sandbox
        .state
        .set_latency(Some(Route::KeycloakPutUser), Duration::from_secs(30));
    let env = app.env(&[]);
    // Migrations and topology, as the binary would do them.
    let _ = TestIngest::spawn(app.ctx.settings())
        .await
        .ready()
        .await
        .stop()
        .await;

    let spawn = || {
        std::process::Command::new(bin_path("webhook-worker"))
            .env_clear()
            .envs(&env)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start webhook-worker")
    };
    let mut worker = spawn();
    let event = signed_event("checkout.session.completed", "kim@example.com");
    app.publish(&event.body).await;
    let sub_id = session_subscription_id(&event.event_id);
    wait_for("the job to reach the Keycloak tier update", LONG, || async {
        (app.sandbox.state.calls(Route::KeycloakPutUser) >= 1).then_some(())
    })
    .await;
    assert_eq!(app.sandbox.subscriptions(&sub_id).len(), 1);
    // Every Lago subscription, whatever its id, as it was when the worker died.
    let lago_before = app.sandbox.state.snapshot()["subscriptions"].clone();
    worker.kill().expect("SIGKILL"); // kill -9: no graceful anything
    let _ = worker.wait();

    app.sandbox.state.clear_faults();
    let mut worker = spawn();
    wait_event_status(app.pool(), &event.event_id, "succeeded").await;
    assert_eq!(
        app.sandbox.state.snapshot()["subscriptions"],
        lago_before,
        "Lago unchanged by the redelivery: not doubled, not replaced (same lago_id)"
    );
    assert_eq!(
        audit_rows(app.pool(), "kim@example.com").await.len(),
        1,
        "one audit row"
    );
    let kc = app.sandbox.state.user_by_email("kim@example.com").unwrap();
    assert_eq!(kc["attributes"]["subscription_tier"], json!(["professional"]));
    assert_eq!(kc["attributes"]["plan_note"], json!(["vip"]));
    let done: Vec<String> = sqlx::query_scalar("SELECT step FROM provisioning_steps ORDER BY completed_at")
        .fetch_all(app.pool())
        .await
        .unwrap();
    assert_eq!(
        done,
        [
            "keycloak_lookup",
            "lago_customer",
            "lago_subscription",
            "keycloak_attributes",
            "audit"
        ]
    );

    // SIGTERM: a graceful exit with status 0.
    let pid = worker.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = wait_for("the worker to exit on SIGTERM", LONG, || {
        let s = worker.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(status.success(), "{status:?}");
    app.stop().await;
}

#[tokio::test]
async fn broker_connections_lost_under_load_still_process_everything_exactly_once() {
    let mut app = TestApp::without_worker(&[]).await;
    let emails: Vec<String> = (0..40).map(|i| format!("load{i}@example.com")).collect();
    for e in &emails {
        app.sandbox.state.add_user(user(e, &[]));
    }
    app.sandbox.state.set_latency(None, Duration::from_millis(20));
    // Both services reach RabbitMQ through a proxy that the test cuts, as a broker restart would.
    let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    app.set_worker_settings(&[("AMQP_URL", &amqp), ("WORKER_CONCURRENCY", "8")]);
    let ingest = app.ingest().await;
    app.start_worker().await;

    let events: Vec<_> = emails
        .iter()
        .enumerate()
        .map(|(i, e)| {
            signed_event_with_id(
                &format!("evt_test_load_{}_{i}", app.ctx.id),
                "checkout.session.completed",
                e,
            )
        })
        .collect();
    // The first half is accepted, then the connections drop while the worker is busy with it.
    for e in &events[..20] {
        assert_eq!(ingest.post_event(e).await.status(), 200);
    }
    proxy.cut();
    let mut pending = Vec::new();
    for (i, e) in events.iter().enumerate().skip(20) {
        // Stripe resends whatever did not get a 2xx.
        if ingest.post_event(e).await.status() != 200 {
            pending.push(i);
        }
    }
    let ready_url = format!("{}/readyz", ingest.url);
    wait_for("the ingest to see the broker down", LONG, || async {
        (ingest.client.get(&ready_url).send().await.ok()?.status() == 503).then_some(())
    })
    .await;
    proxy.restore();
    let deadline = std::time::Instant::now() + LONG;
    while !pending.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "events never accepted: {pending:?}"
        );
        let mut still = Vec::new();
        for i in pending {
            if ingest.post_event(&events[i]).await.status() != 200 {
                still.push(i);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for e in &events {
        wait_event_status(app.pool(), &e.event_id, "succeeded").await;
    }
    for (e, email) in events.iter().zip(&emails) {
        assert_eq!(
            app.sandbox
                .subscriptions(&session_subscription_id(&e.event_id))
                .len(),
            1,
            "{email}"
        );
        assert_eq!(audit_rows(app.pool(), email).await.len(), 1, "{email}");
    }
    assert_eq!(rabbit::depth(&app.topo.dead_letter_queue).await, 0);

    app.stop_worker().await;
    ingest.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn outcomes_that_wait_for_a_writer_share_one_durable_write() {
    let ctx = TestContext::new().await;
    let pool = ctx.pool().await;
    let ids: Vec<String> = (0..102).map(|i| format!("evt_outcome_{i:03}")).collect();
    sqlx::query(
        "INSERT INTO webhook_events (event_id, event_type, payload, status)
         SELECT id, 'checkout.session.completed', '{}', 'processing' FROM UNNEST($1::text[]) AS id",
    )
    .bind(&ids)
    .execute(&pool)
    .await
    .unwrap();
    let store = Store::connect_lazy_with(&ctx.settings().database, Commits::Durable).unwrap();
    let batch_size =
        prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("batch_size", "test")).unwrap();
    let writer = OutcomeWriter::start(store, 2, batch_size.clone());
    let outcome = |id: &str, status, last_error: Option<&str>, error: Option<ErrorRecord>| Outcome {
        event_id: id.to_owned(),
        attempt: 1,
        status,
        last_error: last_error.map(str::to_owned),
        error,
    };
    let waiting_for_locks = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };

    // Hold both writers: each takes one outcome whose row this transaction has locked.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM webhook_events WHERE event_id = ANY($1) FOR UPDATE")
        .bind(&ids[..2])
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut jobs = JoinSet::new();
    for (n, id) in ids[..2].iter().enumerate() {
        let (w, o) = (writer.clone(), outcome(id, EventStatus::Succeeded, None, None));
        jobs.spawn(async move { w.record(o).await });
        wait_for(
            "a writer to wait for its locked row",
            Duration::from_secs(10),
            || async { (waiting_for_locks().await == n as i64 + 1).then_some(()) },
        )
        .await;
    }
    // 101 outcomes of the other 100 events arrive while both writers wait; the first of these
    // events has two, in this order: a failed attempt (retry scheduled), then success.
    let failed = ErrorRecord {
        attempt: 1,
        step: Some("lago_subscription".into()),
        kind: "transient".into(),
        // A downstream error body may hold a NUL, which Postgres text cannot.
        error: "Lago answered 503 \0".into(),
        action: "retry_scheduled".into(),
    };
    let in_order = [
        outcome(
            &ids[2],
            EventStatus::Retrying,
            Some("Lago answered 503 \0"),
            Some(failed),
        ),
        outcome(&ids[2], EventStatus::Succeeded, None, None),
    ];
    let others = ids[3..]
        .iter()
        .map(|id| outcome(id, EventStatus::Succeeded, None, None));
    for (n, o) in in_order.into_iter().enumerate() {
        let w = writer.clone();
        jobs.spawn(async move { w.record(o).await });
        wait_for(
            "the outcome to wait for a writer",
            Duration::from_secs(10),
            || async { (writer.waiting() == n + 1).then_some(()) },
        )
        .await;
    }
    for o in others {
        let w = writer.clone();
        jobs.spawn(async move { w.record(o).await });
    }
    wait_for(
        "every outcome to wait for a writer",
        Duration::from_secs(10),
        || async { (writer.waiting() == 101).then_some(()) },
    )
    .await;
    lock.commit().await.unwrap();
    while let Some(recorded) = jobs.join_next().await {
        recorded.unwrap().expect("recorded");
    }

    assert_eq!(batch_size.get_sample_sum(), 103.0, "every outcome written once");
    assert_eq!(
        batch_size.get_sample_count(),
        3,
        "the two held writes, then the 101 outcomes that waited, in one write"
    );
    let done: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_events WHERE status = 'succeeded' AND completed_at IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(done, 102);
    let (status, last_error): (String, Option<String>) =
        sqlx::query_as("SELECT status, last_error FROM webhook_events WHERE event_id = $1")
            .bind(&ids[2])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "succeeded", "the later outcome of the same event wins");
    assert_eq!(last_error.as_deref(), Some("Lago answered 503 \u{FFFD}"));
    let errors: Vec<(String, String, String)> =
        sqlx::query_as("SELECT event_id, action, error FROM event_errors")
            .fetch_all(&pool)
            .await
            .unwrap();
    let stored = "Lago answered 503 \u{FFFD}".to_string();
    assert_eq!(
        errors,
        vec![(ids[2].clone(), "retry_scheduled".to_string(), stored)]
    );

    // Two copies of one event: the later attempt (2) finished first; the earlier attempt's
    // outcome, written after it, does not overwrite it, alone or in one batch with it.
    let copy = |attempt, status| Outcome {
        attempt,
        ..outcome(&ids[3], status, None, None)
    };
    writer.record(copy(2, EventStatus::Succeeded)).await.unwrap();
    writer.record(copy(1, EventStatus::DeadLettered)).await.unwrap();
    let store = Store::connect_lazy_with(&ctx.settings().database, Commits::Durable).unwrap();
    let (late, early) = (copy(3, EventStatus::Succeeded), copy(1, EventStatus::Retrying));
    webhook_store::events::record_outcomes(&store, &[&late, &early])
        .await
        .unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM webhook_events WHERE event_id = $1")
        .bind(&ids[3])
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        status, "succeeded",
        "an outcome never overwrites that of a later attempt"
    );
    let attempt: i32 = sqlx::query_scalar("SELECT outcome_attempt FROM webhook_events WHERE event_id = $1")
        .bind(&ids[3])
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(attempt, 3);
    drop(writer);
}

/// A `webhook-worker` process, killed when dropped (a failing test leaves nothing running).
struct WorkerProcess {
    child: std::process::Child,
    port: u16,
}

impl WorkerProcess {
    /// Starts the binary with exactly `env`, its health and metrics on a port of its own.
    fn start(env: &HashMap<String, String>) -> Self {
        let port = free_port();
        let child = std::process::Command::new(bin_path("webhook-worker"))
            .env_clear()
            .envs(env)
            .env("WORKER_BIND", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start webhook-worker");
        Self { child, port }
    }

    async fn ready(self) -> Self {
        webhook_tests::wait_http_ok("worker process ready", &format!("{}/readyz", self.url())).await;
        self
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The sum of every series of the family `name` whose labels contain all of `labels`
    /// (e.g. `outcome="succeeded"`).
    async fn metric_sum(&self, name: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.url(), name, labels).await
    }

    /// Sends SIGTERM and waits (up to 60 s) for the exit: its status and how long it took.
    async fn terminate(mut self) -> (std::process::ExitStatus, Duration) {
        let sent = Instant::now();
        let pid = self.child.id().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        let child = &mut self.child;
        let status = wait_for(
            "the worker process to exit on SIGTERM",
            Duration::from_secs(60),
            || {
                let s = child.try_wait().unwrap();
                async move { s }
            },
        )
        .await;
        (status, sent.elapsed())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn metric_sum(base_url: &str, name: &str, labels: &[&str]) -> f64 {
    let text = reqwest::get(format!("{base_url}/metrics"))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Migrations and topology, as a binary would do them at start.
async fn declare(ctx: &TestContext) {
    TestIngest::spawn(ctx.settings()).await.ready().await.stop().await;
}

/// What a subscription's history leaves behind, for comparing two runs of it: the account's
/// Keycloak attributes, Lago's live subscriptions and the billing record (ids generated by the
/// sandbox left out).
async fn end_state(sandbox: &TestSandbox, pool: &PgPool, email: &str, sub: &str) -> Value {
    let kc = sandbox.state.user_by_email(email).expect("the account");
    let mut lago: Vec<Value> = sandbox
        .subscriptions(sub)
        .into_iter()
        .filter(|s| s["status"] == "active" || s["status"] == "pending")
        .map(|s| {
            json!([
                s["status"],
                s["plan_code"],
                s["next_plan_code"],
                s["external_customer_id"]
            ])
        })
        .collect();
    lago.sort_by_key(Value::to_string);
    let r = webhook_store::billing::subscription(pool, sub)
        .await
        .unwrap()
        .expect("the billing record");
    json!({
        "keycloak": [kc["attributes"]["subscription_tier"], kc["attributes"]["billing_status"]],
        "lago": lago,
        "record": [r.status, r.tier, r.cycle, r.plan_code, r.invoice_status, r.lago_plan_code,
                   r.lago_customer, r.account_email, r.bound_by, r.deleted_by, r.lago_terminated],
    })
}

/// One subscription's history, two copies of each event, scrambled, applied by two worker
/// processes at once: the subscription's lease makes their jobs take turns across processes,
/// so the end state is that of in-order delivery, and every call the sandbox received is an
/// effect the audit log records once (nothing was done twice by two processes at once).
#[tokio::test]
async fn two_worker_processes_applying_one_subscriptions_events_end_as_in_order_delivery() {
    use webhook_tests::stripe::{checkout, invoice, subscription};
    let email = "twins@example.com";
    let (sub, cus, t0) = ("sub_twins", "cus_twins", webhook_core::unix_now() - 1000);
    let updated = "customer.subscription.updated";
    let history: Vec<(&str, Vec<u8>)> = vec![
        ("evt_tw1", checkout("evt_tw1", t0, sub, cus, email, "starter")),
        (
            "evt_tw2",
            subscription("evt_tw2", updated, t0 + 1, sub, cus, "active", "professional"),
        ),
        (
            "evt_tw3",
            subscription("evt_tw3", updated, t0 + 2, sub, cus, "past_due", "professional"),
        ),
        (
            "evt_tw4",
            invoice("evt_tw4", "invoice.paid", t0 + 3, "in_tw1", sub, cus),
        ),
        (
            "evt_tw5",
            subscription("evt_tw5", updated, t0 + 4, sub, cus, "active", "enterprise"),
        ),
        (
            "evt_tw6",
            invoice("evt_tw6", "invoice.payment_failed", t0 + 5, "in_tw2", sub, cus),
        ),
    ];

    // In order, one at a time, through one worker: what the history must end in.
    let expected = {
        let mut app = TestApp::without_worker(&[("WORKER_CONCURRENCY", "1")]).await;
        app.sandbox.state.add_user(user(email, &[]));
        app.start_worker().await;
        for (id, body) in &history {
            app.publish(body).await;
            webhook_tests::wait_event_done(app.pool(), id).await;
        }
        let end = end_state(&app.sandbox, app.pool(), email, sub).await;
        app.stop().await;
        end
    };
    assert_eq!(
        expected["keycloak"],
        json!([["enterprise"], ["past_due"]]),
        "{expected}"
    );

    let app = TestApp::without_worker(&[]).await;
    app.sandbox.state.add_user(user(email, &[]));
    // Every call takes a moment, so that the jobs of the two processes overlap.
    app.sandbox.state.set_latency(None, Duration::from_millis(50));
    declare(&app.ctx).await;
    let env = app.env(&[("WORKER_CONCURRENCY", "4")]);
    let workers = [
        WorkerProcess::start(&env).ready().await,
        WorkerProcess::start(&env).ready().await,
    ];
    // Newest first, then every event again in order: RabbitMQ hands them out to both.
    let order = [5, 2, 4, 0, 3, 1, 0, 1, 2, 3, 4, 5];
    for i in order {
        app.publish(&history[i].1).await;
    }
    wait_for("all twelve deliveries to finish", LONG * 2, || async {
        let mut finished = 0.0;
        let mut in_flight = 0.0;
        for w in &workers {
            finished += w
                .metric_sum("webhook_worker_jobs_total", &["outcome=\"succeeded\""])
                .await
                + w.metric_sum("webhook_worker_jobs_total", &["outcome=\"skipped\""])
                    .await;
            in_flight += w.metric_sum("webhook_worker_jobs_in_flight", &[]).await;
        }
        (finished == 12.0 && in_flight == 0.0).then_some(())
    })
    .await;

    assert_eq!(end_state(&app.sandbox, app.pool(), email, sub).await, expected);
    for w in &workers {
        assert!(
            w.metric_sum("webhook_worker_jobs_total", &[]).await > 0.0,
            "both processes took jobs"
        );
        assert_eq!(
            w.metric_sum("webhook_worker_jobs_total", &["outcome=\"dead_lettered\""])
                .await,
            0.0
        );
    }
    assert_eq!(
        app.sandbox.state.calls(Route::LagoCreateCustomer),
        1,
        "one customer upsert"
    );
    let doubled: Vec<(String, i64)> = sqlx::query_as(
        "SELECT details->>'stripe_event_id', count(*) FROM audit_logs GROUP BY 1 HAVING count(*) > 1",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert_eq!(doubled, [], "one audit row per event at most");
    // Each call the sandbox received is an effect one audit row records: no call was made by a
    // job that did not finish, or twice by two jobs at once.
    let audited = |condition: &'static str| {
        let pool = app.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM audit_logs WHERE {condition}"
            )))
            .fetch_one(&pool)
            .await
            .unwrap() as u64
        }
    };
    assert_eq!(
        app.sandbox.state.calls(Route::LagoCreateSubscription),
        audited("details->'lago'->>'action' = 'assigned'").await,
        "Lago subscription calls = plans assigned in the audit log"
    );
    assert_eq!(
        app.sandbox.state.calls(Route::KeycloakPutUser),
        audited("jsonb_path_exists(details, '$.keycloak[*] ? (@.written == true)')").await,
        "Keycloak writes = writes in the audit log"
    );
    assert!(rabbit::peek(&app.topo.dead_letter_queue).await.is_empty());

    for w in workers {
        let (status, _) = w.terminate().await;
        assert!(status.success(), "{status:?}");
    }
    app.stop().await;
}

/// A job that waits for a lease another worker process holds goes to the first retry tier
/// without spending a retry: with a one-tier schedule, the same job failing once more after
/// it got the lease still has its retry (it would be dead-lettered had the wait spent it).
#[tokio::test]
async fn waiting_for_another_processs_lease_spends_no_retry() {
    use webhook_tests::stripe::{checkout, subscription};
    let email = "turns@example.com";
    let (sub, cus, t0) = ("sub_turns", "cus_turns", webhook_core::unix_now() - 1000);
    let app = TestApp::without_worker(&[]).await;
    app.sandbox.state.add_user(user(email, &[]));
    declare(&app.ctx).await;
    // One job per process (so a second job goes to the other process); a lease of 1 s, so a
    // waiting job gives up after 6 s; one retry tier; no quick retries.
    let env = app.env(&[
        ("WORKER_CONCURRENCY", "1"),
        ("WEBHOOK__WORKER__LEASE_SECS", "1"),
        ("WORKER_RETRY_SCHEDULE", "1s"),
        ("WEBHOOK__WORKER__INLINE_RETRIES", "0"),
    ]);
    let workers = [
        WorkerProcess::start(&env).ready().await,
        WorkerProcess::start(&env).ready().await,
    ];
    let publish = |id: &'static str, body: Vec<u8>| {
        let exchange = app.topo.exchange.clone();
        async move {
            rabbit::publish(&exchange, &webhook_tests::stripe::event_type(&body), &body, id).await;
        }
    };
    publish("evt_tn1", checkout("evt_tn1", t0, sub, cus, email, "starter")).await;
    assert_eq!(
        webhook_tests::wait_event_done(app.pool(), "evt_tn1").await,
        "succeeded"
    );

    // The first update holds the lease for 8 s (a slow Keycloak), after its Lago call.
    app.sandbox
        .state
        .set_latency(Some(Route::KeycloakPutUser), Duration::from_secs(8));
    let puts = app.sandbox.state.calls(Route::KeycloakPutUser);
    let updated = "customer.subscription.updated";
    publish(
        "evt_tn2",
        subscription("evt_tn2", updated, t0 + 1, sub, cus, "active", "professional"),
    )
    .await;
    wait_for("the first update to hold the lease", LONG, || async {
        (app.sandbox.state.calls(Route::KeycloakPutUser) > puts).then_some(())
    })
    .await;
    let mut busy = None;
    for (i, w) in workers.iter().enumerate() {
        if w.metric_sum("webhook_worker_jobs_in_flight", &[]).await == 1.0 {
            busy = Some(i);
        }
    }
    let other = &workers[1 - busy.expect("one process runs the first update")];
    // The next Lago call fails once: the second update's own failure, after its wait.
    app.sandbox.state.clear_faults();
    app.sandbox.state.inject_fault(Fault {
        route: Route::LagoCreateSubscription,
        status: 500,
        count: 1,
        retry_after_secs: None,
        body: None,
    });
    publish(
        "evt_tn3",
        subscription("evt_tn3", updated, t0 + 2, sub, cus, "active", "enterprise"),
    )
    .await;
    wait_for("the second update to give up waiting", LONG, || async {
        (other
            .metric_sum("webhook_worker_jobs_total", &["outcome=\"retry_scheduled\""])
            .await
            >= 1.0)
            .then_some(())
    })
    .await;

    assert_eq!(
        webhook_tests::wait_event_done(app.pool(), "evt_tn2").await,
        "succeeded"
    );
    assert_eq!(
        webhook_tests::wait_event_done(app.pool(), "evt_tn3").await,
        "succeeded"
    );
    let errors: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT attempt, step, action FROM event_errors WHERE event_id = 'evt_tn3' ORDER BY id",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert!(
        errors.len() >= 2 && errors.iter().all(|(attempt, _, _)| *attempt == 1),
        "every failure of the job happened with no retry spent: {errors:?}"
    );
    assert_eq!(
        (errors[0].1.as_str(), errors[0].2.as_str()),
        ("subscription_lease", "retry_scheduled"),
        "{errors:?}"
    );
    assert_eq!(
        errors
            .last()
            .map(|(_, step, action)| (step.as_str(), action.as_str())),
        Some(("lago_subscription", "retry_scheduled")),
        "{errors:?}"
    );
    let kc = app.sandbox.state.user_by_email(email).unwrap();
    assert_eq!(kc["attributes"]["subscription_tier"], json!(["enterprise"]));
    let live: Vec<Value> = app
        .sandbox
        .subscriptions(sub)
        .into_iter()
        .filter(|s| s["status"] == "active")
        .collect();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["plan_code"], "enterprise_monthly");
    assert!(rabbit::peek(&app.topo.dead_letter_queue).await.is_empty());
    for w in workers {
        let (status, _) = w.terminate().await;
        assert!(status.success(), "{status:?}");
    }
    app.stop().await;
}

/// SIGTERM with jobs in flight: the process stops taking messages, lets its jobs finish and
/// exits 0; a job that cannot finish within `worker.shutdown_timeout_secs` goes back to the
/// queue unacked, and the next worker completes it once. Nothing is lost or done twice.
#[tokio::test]
async fn sigterm_lets_jobs_in_flight_finish_returns_the_rest_and_exits_0_in_time() {
    let app = TestApp::without_worker(&[]).await;
    let emails: Vec<String> = (0..5).map(|i| format!("term{i}@example.com")).collect();
    for e in &emails {
        app.sandbox.state.add_user(user(e, &[]));
    }
    declare(&app.ctx).await;
    let events: Vec<_> = emails
        .iter()
        .map(|e| signed_event("checkout.session.completed", e))
        .collect();
    for e in &events {
        app.publish(&e.body).await;
    }
    let status_of = |i: usize| {
        let (pool, id) = (app.pool().clone(), events[i].event_id.clone());
        async move { webhook_tests::event_status(&pool, &id).await }
    };
    let puts = || app.sandbox.state.calls(Route::KeycloakPutUser);

    // 1. Three jobs in flight (each 1.5 s in its Keycloak update), two waiting in the queue.
    app.sandbox
        .state
        .set_latency(Some(Route::KeycloakPutUser), Duration::from_millis(1500));
    let worker = WorkerProcess::start(&app.env(&[
        ("WORKER_CONCURRENCY", "3"),
        ("WEBHOOK__WORKER__SHUTDOWN_TIMEOUT_SECS", "5"),
    ]));
    wait_for("three jobs in flight", LONG, || async {
        (puts() == 3).then_some(())
    })
    .await;
    let (status, took) = worker.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(5),
        "exited within the shutdown timeout: {took:?}"
    );
    let mut finished = Vec::new();
    let mut untouched = Vec::new();
    for i in 0..events.len() {
        match status_of(i).await.as_deref() {
            Some("succeeded") => finished.push(i),
            None => untouched.push(i),
            other => panic!("event {i} is {other:?} after the shutdown"),
        }
    }
    assert_eq!(finished.len(), 3, "the jobs in flight finished");
    assert_eq!(untouched.len(), 2, "the others were never taken");
    assert_eq!(rabbit::depth(&app.topo.work_queue).await, 2, "still queued");
    assert_eq!(app.sandbox.state.calls(Route::LagoCreateSubscription), 3);

    // 2. Two jobs that cannot finish within the shutdown timeout (2 s): returned unacked.
    app.sandbox
        .state
        .set_latency(Some(Route::KeycloakPutUser), Duration::from_secs(30));
    let worker = WorkerProcess::start(&app.env(&[
        ("WORKER_CONCURRENCY", "3"),
        ("WEBHOOK__WORKER__SHUTDOWN_TIMEOUT_SECS", "2"),
        // The aborted jobs' leases are not given back: they expire after 2 s.
        ("WEBHOOK__WORKER__LEASE_SECS", "2"),
    ]));
    wait_for("the two others in flight", LONG, || async {
        (puts() == 5).then_some(())
    })
    .await;
    let lago_before = app.sandbox.state.snapshot()["subscriptions"].clone();
    let (status, took) = worker.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "waited for the jobs up to the shutdown timeout (2 s), then exited: {took:?}"
    );
    for &i in &untouched {
        assert_ne!(status_of(i).await.as_deref(), Some("succeeded"));
    }
    let work_queue = app.topo.work_queue.clone();
    wait_for("the unfinished jobs back on the work queue", LONG, || async {
        (rabbit::depth(&work_queue).await == 2).then_some(())
    })
    .await;
    for tier in &app.topo.retry_tiers {
        assert_eq!(rabbit::depth(&tier.queue).await, 0, "not sent to a retry tier");
    }

    // 3. The next worker completes them, once.
    app.sandbox.state.clear_faults();
    let worker = WorkerProcess::start(&app.env(&[("WEBHOOK__WORKER__LEASE_SECS", "2")]));
    for &i in &untouched {
        webhook_tests::wait_event_status(app.pool(), &events[i].event_id, "succeeded").await;
    }
    assert_eq!(
        app.sandbox.state.snapshot()["subscriptions"],
        lago_before,
        "Lago unchanged by the redelivery: not doubled, not replaced (same lago_id)"
    );
    for (e, email) in events.iter().zip(&emails) {
        assert_eq!(
            app.sandbox
                .subscriptions(&session_subscription_id(&e.event_id))
                .len(),
            1,
            "{email}"
        );
        assert_eq!(audit_rows(app.pool(), email).await.len(), 1, "{email}");
        let kc = app.sandbox.state.user_by_email(email).unwrap();
        assert_eq!(kc["attributes"]["subscription_tier"], json!(["professional"]));
    }
    let errors: i64 = sqlx::query_scalar("SELECT count(*) FROM event_errors")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(errors, 0, "no failure recorded: a shutdown is not a failure");
    assert!(rabbit::peek(&app.topo.dead_letter_queue).await.is_empty());
    let (status, _) = worker.terminate().await;
    assert!(status.success(), "{status:?}");
    app.stop().await;
}

/// Keycloak and Lago calls that time out (the sandbox holds them past the worker's 500 ms
/// timeout) are retried: in process first, then through a retry tier; the job completes once.
#[tokio::test]
async fn keycloak_and_lago_timeouts_are_retried_and_the_job_completes_once() {
    let mut app = TestApp::without_worker(&[
        ("WEBHOOK__KEYCLOAK__TIMEOUT_MS", "500"),
        ("WEBHOOK__LAGO__TIMEOUT_MS", "500"),
        ("WEBHOOK__WORKER__INLINE_RETRIES", "1"),
    ])
    .await;
    app.sandbox.state.add_user(user("slow@example.com", &[]));
    let stall = |route, count| Stall {
        route,
        count,
        delay_ms: 1_500,
    };
    // The lookup and the tier update time out once (the quick retry recovers); the Lago
    // subscription twice (the quick retry times out too: a broker retry tier).
    app.sandbox
        .state
        .inject_stall(stall(Route::KeycloakSearchUsers, 1));
    app.sandbox
        .state
        .inject_stall(stall(Route::LagoCreateSubscription, 2));
    app.sandbox.state.inject_stall(stall(Route::KeycloakPutUser, 1));
    app.start_worker().await;
    let event = signed_event("checkout.session.completed", "slow@example.com");
    app.publish(&event.body).await;

    assert_eq!(
        webhook_tests::wait_event_done(app.pool(), &event.event_id).await,
        "succeeded"
    );
    let (attempts,): (i32,) = sqlx::query_as("SELECT attempts FROM webhook_events WHERE event_id = $1")
        .bind(&event.event_id)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(attempts, 2, "the first delivery and one broker retry");
    let errors: Vec<(String, String, String)> =
        sqlx::query_as("SELECT step, action, error FROM event_errors WHERE event_id = $1 ORDER BY id")
            .bind(&event.event_id)
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (errors[0].0.as_str(), errors[0].1.as_str()),
        ("lago_subscription", "retry_scheduled")
    );
    assert!(errors[0].2.contains("timed out"), "{errors:?}");
    assert_eq!(
        app.sandbox.state.calls(Route::KeycloakSearchUsers),
        2,
        "one timeout, one answer"
    );
    assert_eq!(
        app.sandbox.state.calls(Route::LagoCreateSubscription),
        3,
        "two timeouts, one answer"
    );
    assert_eq!(
        app.sandbox.state.calls(Route::KeycloakPutUser),
        2,
        "one timeout, one answer"
    );
    let url = app.worker_url();
    assert_eq!(
        webhook_tests::metric(
            &url,
            "webhook_worker_downstream_requests_total{operation=\"create_subscription\",service=\"lago\",status=\"error\"}"
        )
        .await,
        2.0
    );
    assert_eq!(
        app.sandbox
            .subscriptions(&session_subscription_id(&event.event_id))
            .len(),
        1
    );
    assert_eq!(audit_rows(app.pool(), "slow@example.com").await.len(), 1);
    let kc = app.sandbox.state.user_by_email("slow@example.com").unwrap();
    assert_eq!(kc["attributes"]["subscription_tier"], json!(["professional"]));
    app.stop().await;
}

/// `429` with `Retry-After`, through the real worker: a short one is waited in process (no
/// broker retry), a longer one than the quick retries may wait sends the message to a retry
/// tier at least that long. The sandbox's arrival times show each wait; each job completes once.
#[tokio::test]
async fn a_429_retry_after_is_waited_in_process_or_through_a_long_enough_tier() {
    let mut app = TestApp::without_worker(&[
        ("WEBHOOK__WORKER__INLINE_RETRIES", "2"),
        ("WEBHOOK__WORKER__INLINE_RETRY_MAX_MS", "3000"),
        ("WORKER_RETRY_SCHEDULE", "1s,5s"),
    ])
    .await;
    app.sandbox.state.add_user(user("rate@example.com", &[]));
    app.sandbox.state.add_user(user("limit@example.com", &[]));
    // Quick retries wait up to 3 s; the broker tiers are 1 s and 5 s.
    app.start_worker().await;
    let too_many = |route, secs| Fault {
        route,
        status: 429,
        count: 1,
        retry_after_secs: Some(secs),
        body: None,
    };
    let attempts_and_errors = |id: String| {
        let pool = app.pool().clone();
        async move {
            let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM webhook_events WHERE event_id = $1")
                .bind(&id)
                .fetch_one(&pool)
                .await
                .unwrap();
            let errors: Vec<(String, String)> =
                sqlx::query_as("SELECT step, action FROM event_errors WHERE event_id = $1 ORDER BY id")
                    .bind(&id)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            (attempts, errors)
        }
    };
    let gap = |route| {
        let arrivals = app.sandbox.state.arrivals(route);
        let n = arrivals.len();
        assert!(n >= 2, "{route:?} called {n} times");
        arrivals[n - 1] - arrivals[n - 2]
    };

    // Keycloak: Retry-After 1 s, within the quick retries' bound.
    app.sandbox
        .state
        .inject_fault(too_many(Route::KeycloakSearchUsers, 1));
    let first = signed_event("checkout.session.completed", "rate@example.com");
    app.publish(&first.body).await;
    assert_eq!(
        webhook_tests::wait_event_done(app.pool(), &first.event_id).await,
        "succeeded"
    );
    let waited = gap(Route::KeycloakSearchUsers);
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
    assert_eq!(
        attempts_and_errors(first.event_id.clone()).await,
        (1, vec![]),
        "waited in process: no broker retry"
    );

    // Lago: Retry-After 4 s, longer than the quick retries may wait: the 5 s tier, not the 1 s.
    app.sandbox
        .state
        .inject_fault(too_many(Route::LagoCreateSubscription, 4));
    let second = signed_event("checkout.session.completed", "limit@example.com");
    app.publish(&second.body).await;
    assert_eq!(
        webhook_tests::wait_event_done(app.pool(), &second.event_id).await,
        "succeeded"
    );
    let waited = gap(Route::LagoCreateSubscription);
    assert!(waited >= Duration::from_secs(4), "retried after {waited:?}");
    assert_eq!(
        attempts_and_errors(second.event_id.clone()).await,
        (
            2,
            vec![("lago_subscription".to_string(), "retry_scheduled".to_string())]
        ),
        "one broker retry"
    );

    assert_eq!(app.sandbox.state.calls(Route::KeycloakSearchUsers), 3);
    assert_eq!(app.sandbox.state.calls(Route::LagoCreateSubscription), 3);
    for (e, email) in [(&first, "rate@example.com"), (&second, "limit@example.com")] {
        assert_eq!(
            app.sandbox
                .subscriptions(&session_subscription_id(&e.event_id))
                .len(),
            1
        );
        assert_eq!(audit_rows(app.pool(), email).await.len(), 1);
    }
    app.stop().await;
}

/// The worker's `/readyz` names the dependency that is down (each cut in turn through a proxy)
/// and comes back by itself; `/metrics` serves every family, also while Postgres is down, and
/// its counters move with a processed job.
#[tokio::test]
async fn readyz_names_the_dependency_that_is_down_and_metrics_move_with_a_job() {
    let mut app = TestApp::without_worker(&[]).await;
    app.sandbox.state.add_user(user("ready@example.com", &[]));
    let pg = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let amqp = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let db_url = app
        .ctx
        .database_url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", pg.port));
    let amqp_url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", amqp.port);
    app.set_worker_settings(&[("DATABASE_URL", &db_url), ("AMQP_URL", &amqp_url)]);
    app.start_worker().await;
    let url = app.worker_url();
    let readyz = || {
        let url = url.clone();
        async move {
            let r = reqwest::get(format!("{url}/readyz")).await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let ready_as = |want: (u16, &'static str, &'static str)| {
        let readyz = &readyz;
        async move {
            wait_for(&format!("/readyz to be {want:?}"), LONG, || async {
                let (status, body) = readyz().await;
                let got = (status, body["postgres"].as_str()?, body["rabbitmq"].as_str()?);
                (got == (want.0, want.1, want.2)).then_some(body)
            })
            .await
        }
    };
    let body = ready_as((200, "up", "up")).await;
    assert_eq!(body["status"], "ready");

    // A processed job moves the counters.
    let series = |s: &str| s.to_owned();
    let job =
        series("webhook_worker_jobs_total{event_type=\"checkout.session.completed\",outcome=\"succeeded\"}");
    let lago_call = series(
        "webhook_worker_downstream_requests_total{operation=\"create_subscription\",service=\"lago\",status=\"200\"}",
    );
    let duration =
        series("webhook_worker_job_duration_seconds_count{event_type=\"checkout.session.completed\"}");
    let step = series("webhook_worker_step_duration_seconds_count{step=\"lago_customer\"}");
    for s in [&job, &lago_call, &duration, &step] {
        assert_eq!(webhook_tests::metric(&url, s).await, 0.0, "{s} before the job");
    }
    let event = signed_event("checkout.session.completed", "ready@example.com");
    app.publish(&event.body).await;
    wait_event_status(app.pool(), &event.event_id, "succeeded").await;
    wait_for("the job's counters", LONG, || async {
        (webhook_tests::metric(&url, &job).await == 1.0).then_some(())
    })
    .await;
    for s in [&lago_call, &duration, &step] {
        assert_eq!(webhook_tests::metric(&url, s).await, 1.0, "{s} after the job");
    }
    let depth = format!("webhook_worker_queue_depth{{queue=\"{}\"}}", app.topo.work_queue);
    wait_for("the sampled work queue depth", LONG, || async {
        let text = reqwest::get(format!("{url}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().any(|l| l.starts_with(&depth)).then_some(())
    })
    .await;
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "webhook_worker_jobs_total",
        "webhook_worker_job_duration_seconds",
        "webhook_worker_step_duration_seconds",
        "webhook_worker_downstream_requests_total",
        "webhook_worker_downstream_duration_seconds",
        "webhook_worker_queue_depth",
        "webhook_worker_jobs_in_flight",
        "webhook_worker_broker_connected",
        "webhook_worker_outcome_batch_size",
        "webhook_worker_keycloak_attribute_dropped_total",
        "webhook_worker_keycloak_accounts_missing_total",
        "webhook_worker_jobs_held",
        "webhook_worker_queue_missing",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{text}"
        );
    }
    assert_eq!(
        webhook_tests::metric(&url, "webhook_worker_broker_connected").await,
        1.0
    );
    assert_eq!(
        webhook_tests::metric(&url, "webhook_worker_jobs_in_flight").await,
        0.0
    );

    // Postgres down: named; metrics still served.
    pg.cut();
    let body = ready_as((503, "down", "up")).await;
    assert_eq!(body["status"], "not_ready");
    assert_eq!(
        webhook_tests::metric(&url, &job).await,
        1.0,
        "/metrics without Postgres"
    );
    let dependency = |d: &str| format!("webhook_dependency_up{{dependency=\"{d}\"}}");
    assert_eq!(webhook_tests::metric(&url, &dependency("postgres")).await, 0.0);
    assert_eq!(webhook_tests::metric(&url, &dependency("rabbitmq")).await, 1.0);
    pg.restore();
    ready_as((200, "up", "up")).await;
    assert_eq!(webhook_tests::metric(&url, &dependency("postgres")).await, 1.0);

    // RabbitMQ down: named; the connection comes back by itself.
    amqp.cut();
    ready_as((503, "up", "down")).await;
    assert_eq!(
        webhook_tests::metric(&url, "webhook_worker_broker_connected").await,
        0.0
    );
    assert_eq!(webhook_tests::metric(&url, &dependency("rabbitmq")).await, 0.0);
    amqp.restore();
    ready_as((200, "up", "up")).await;

    app.stop().await;
}

/// The spans an OTLP/HTTP (`http/json`) receiver was sent: each with the `service.name` of its
/// resource.
#[derive(Clone, Default)]
struct OtlpReceiver {
    spans: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
}

impl OtlpReceiver {
    /// Listens on port 0; returns the receiver and its base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    fn spawn() -> (Self, String, actix_web::dev::ServerHandle) {
        use actix_web::{App, HttpResponse, HttpServer, web};
        let receiver = Self::default();
        let spans = receiver.spans.clone();
        let server = HttpServer::new(move || {
            let spans = spans.clone();
            App::new().route(
                "/v1/traces",
                web::post().to(move |body: web::Bytes| {
                    let spans = spans.clone();
                    async move {
                        let Ok(export) = serde_json::from_slice::<Value>(&body) else {
                            return HttpResponse::BadRequest().finish();
                        };
                        let mut spans = spans.lock().unwrap();
                        for rs in export["resourceSpans"].as_array().into_iter().flatten() {
                            let service = rs["resource"]["attributes"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .find(|a| a["key"] == "service.name")
                                .and_then(|a| a["value"]["stringValue"].as_str())
                                .unwrap_or("")
                                .to_owned();
                            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                                for span in ss["spans"].as_array().into_iter().flatten() {
                                    spans.push((service.clone(), span.clone()));
                                }
                            }
                        }
                        HttpResponse::Ok().json(json!({}))
                    }
                }),
            )
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let url = format!("http://{}", server.addrs()[0]);
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        (receiver, url, handle)
    }

    fn spans(&self) -> Vec<(String, Value)> {
        self.spans.lock().unwrap().clone()
    }
}

fn span_attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    let value = &span["attributes"].as_array()?.iter().find(|a| a["key"] == key)?["value"];
    value
        .get("stringValue")
        .or_else(|| value.get("intValue"))
        .or_else(|| value.get("boolValue"))
}

fn nanos(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// The spans of one trace as an indented tree: name, service and duration.
fn trace_tree(spans: &[(String, Value)]) -> String {
    fn walk(spans: &[(String, Value)], parent: &str, depth: usize, out: &mut String) {
        let mut children: Vec<&(String, Value)> = spans
            .iter()
            .filter(|(_, s)| s["parentSpanId"].as_str().unwrap_or("") == parent)
            .collect();
        children.sort_by_key(|(_, s)| nanos(&s["startTimeUnixNano"]));
        for (service, s) in children {
            let ms =
                (nanos(&s["endTimeUnixNano"]).saturating_sub(nanos(&s["startTimeUnixNano"]))) as f64 / 1e6;
            out.push_str(&format!(
                "{}{} [{service}] {ms:.1} ms\n",
                "  ".repeat(depth),
                s["name"].as_str().unwrap_or("?")
            ));
            walk(spans, s["spanId"].as_str().unwrap_or(""), depth + 1, out);
        }
    }
    let mut out = String::new();
    walk(spans, "", 0, &mut out);
    out
}

/// The JSON log lines of a process's stderr that carry `key` = `value`.
fn log_lines_with(stderr: &[u8], key: &str, value: &str) -> Vec<Value> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l[key] == value)
        .collect()
}

/// The ingest and worker binaries, exporting their spans to `otlp_url` (`http/json`, every
/// 100 ms) and logging JSON at `info`; returns them (stderr piped) and the ingest's URL once
/// it is ready.
async fn traced_binaries(
    ctx: &TestContext,
    sandbox: &TestSandbox,
    otlp_url: &str,
    extra: &[(&str, &str)],
) -> (tokio::process::Child, tokio::process::Child, String) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let bind = format!("127.0.0.1:{port}");
    let mut settings = vec![
        ("INGEST_BIND", bind.as_str()),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "info"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_url),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        // The batch processor exports every 100 ms (5 s by default).
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    settings.extend_from_slice(extra);
    let env = binary_env(ctx, sandbox, &settings);
    let spawn = |bin: &str| {
        tokio::process::Command::new(bin_path(bin))
            .env_clear()
            .envs(&env)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let ingest = spawn("webhook-ingest");
    let worker = spawn("webhook-worker");
    let url = format!("http://{bind}");
    let client = reqwest::Client::new();
    wait_for("ingest ready", LONG, || async {
        (client.get(format!("{url}/readyz")).send().await.ok()?.status() == 200).then_some(())
    })
    .await;
    (ingest, worker, url)
}

/// POSTs a signed event to the ingest at `url`; asserts the 200.
async fn post_signed(url: &str, event: &webhook_tests::SignedEvent) {
    let answer = reqwest::Client::new()
        .post(format!("{url}/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", &event.signature)
        .body(event.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn one_checkout_is_one_trace_from_the_ingest_request_through_the_queue_to_the_downstream_calls() {
    let app = TestApp::without_worker(&[]).await;
    app.sandbox.state.add_user(user("trace@example.com", &[]));
    let (receiver, otlp_url, otlp) = OtlpReceiver::spawn();
    let (ingest, worker, url) = traced_binaries(&app.ctx, &app.sandbox, &otlp_url, &[]).await;
    let event = signed_event("checkout.session.completed", "trace@example.com");
    post_signed(&url, &event).await;
    wait_event_status(app.pool(), &event.event_id, "succeeded").await;

    // The ingest's request span names the event; its trace holds everything else.
    const STEPS: [&str; 5] = [
        "keycloak_lookup",
        "lago_customer",
        "lago_subscription",
        "keycloak_attributes",
        "audit",
    ];
    let (request, trace) = wait_for("the spans of the whole trace", LONG, || async {
        let spans = receiver.spans();
        let (_, request) = spans
            .iter()
            .find(|(service, s)| {
                service == "webhook-ingest"
                    && span_attribute(s, "event_id") == Some(&json!(event.event_id))
                    && s["name"] == "POST /webhooks/stripe"
            })?
            .clone();
        let trace_id = request["traceId"].as_str()?.to_owned();
        let trace: Vec<(String, Value)> = spans
            .into_iter()
            .filter(|(_, s)| s["traceId"] == trace_id.as_str())
            .collect();
        let names: Vec<&str> = trace.iter().filter_map(|(_, s)| s["name"].as_str()).collect();
        // The job's span ends after its steps (once the outcome is settled): it may reach the
        // receiver in a later export batch than they do.
        let job = format!("{}billing.provisioning process", app.ctx.prefix);
        let complete = STEPS.iter().all(|step| names.contains(step))
            && names.contains(&"lago create_subscription")
            && names.contains(&"keycloak put_user")
            && names.contains(&job.as_str());
        complete.then_some((request, trace))
    })
    .await;
    eprintln!("the trace of {}:\n{}", event.event_id, trace_tree(&trace));
    let trace_id = request["traceId"].as_str().unwrap();
    let by_name =
        |name: &str| -> Vec<&(String, Value)> { trace.iter().filter(|(_, s)| s["name"] == name).collect() };
    let one = |name: &str| -> &(String, Value) {
        let found = by_name(name);
        assert_eq!(
            found.len(),
            1,
            "one {name} span in the trace:\n{}",
            trace_tree(&trace)
        );
        found[0]
    };
    // The request is the root (a server span); the publish is its child, in the ingest.
    assert_eq!(
        request["parentSpanId"].as_str().unwrap_or(""),
        "",
        "the request span is the root"
    );
    assert_eq!(request["kind"], json!(2), "SERVER");
    let request_id = request["spanId"].as_str().unwrap();
    let (service, publish) = one(&format!("{}billing.events publish", app.ctx.prefix));
    assert_eq!(service, "webhook-ingest");
    assert_eq!(publish["parentSpanId"], request_id);
    // The job continues the trace across the queue: its parent is the ingest's publish.
    let (service, job) = one(&format!("{}billing.provisioning process", app.ctx.prefix));
    assert_eq!(service, "webhook-worker");
    assert_eq!(job["kind"], json!(5), "CONSUMER");
    assert_eq!(job["parentSpanId"], publish["spanId"]);
    assert_eq!(span_attribute(job, "event_id"), Some(&json!(event.event_id)));
    assert_eq!(span_attribute(job, "outcome"), Some(&json!("succeeded")));
    // The five steps of the ledger are the job's children, and every downstream call is the
    // child of a step.
    let job_id = job["spanId"].as_str().unwrap();
    let mut step_ids = std::collections::HashMap::new();
    for step in STEPS {
        let (service, span) = one(step);
        assert_eq!(service, "webhook-worker");
        assert_eq!(span["parentSpanId"], job_id, "{step} is a child of the job");
        step_ids.insert(span["spanId"].as_str().unwrap().to_owned(), step);
    }
    let calls: Vec<&(String, Value)> = trace.iter().filter(|(_, s)| s["kind"] == json!(3)).collect();
    let parent_step = |name: &str| -> Vec<&str> {
        calls
            .iter()
            .filter(|(_, s)| s["name"] == name)
            .map(|(_, s)| {
                step_ids
                    .get(s["parentSpanId"].as_str().unwrap())
                    .copied()
                    .unwrap_or("?")
            })
            .collect()
    };
    assert_eq!(parent_step("keycloak search_users"), ["keycloak_lookup"]);
    assert_eq!(parent_step("lago create_customer"), ["lago_customer"]);
    assert_eq!(parent_step("lago create_subscription"), ["lago_subscription"]);
    assert_eq!(parent_step("keycloak put_user"), ["keycloak_attributes"]);
    for (_, call) in &calls {
        assert!(
            step_ids.contains_key(call["parentSpanId"].as_str().unwrap()),
            "every downstream call is a step's child: {call}"
        );
        assert!(
            span_attribute(call, "http.response.status_code").is_some(),
            "{call}"
        );
    }
    assert!(
        trace.iter().all(|(_, s)| s["traceId"] == trace_id),
        "one trace id"
    );

    // Graceful exits (they flush the exporter), then the JSON logs of both binaries.
    for child in [&ingest, &worker] {
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
    }
    let ingest = tokio::time::timeout(LONG, ingest.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let worker = tokio::time::timeout(LONG, worker.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(ingest.status.success() && worker.status.success());
    let request_log = log_lines_with(&ingest.stderr, "message", "stripe webhook");
    assert_eq!(
        request_log.len(),
        1,
        "{}",
        String::from_utf8_lossy(&ingest.stderr)
    );
    assert_eq!(request_log[0]["trace_id"], trace_id);
    assert_eq!(request_log[0]["span_id"], request_id);
    assert_eq!(request_log[0]["event_id"], json!(event.event_id));
    let job_log = log_lines_with(&worker.stderr, "message", "job done");
    assert_eq!(job_log.len(), 1, "{}", String::from_utf8_lossy(&worker.stderr));
    assert_eq!(job_log[0]["trace_id"], trace_id);
    assert_eq!(job_log[0]["span_id"], job_id);
    // Lines outside any span carry no ids.
    let started = log_lines_with(&worker.stderr, "message", "consuming");
    assert!(!started.is_empty() && started.iter().all(|l| l.get("trace_id").is_none()));

    otlp.stop(true).await;
    app.stop().await;
}

#[tokio::test]
async fn a_retried_dead_lettered_and_requeued_job_stays_in_its_events_trace() {
    let app = TestApp::without_worker(&[]).await;
    app.sandbox.state.add_user(user("retrace@example.com", &[]));
    // Attempt 1: Lago fails twice (the call and its one quick retry): a broker retry tier.
    // Attempt 2: Lago refuses (400): the dead-letter queue. Attempt 3 (requeued): succeeds.
    for (status, count) in [(500, 2), (400, 1)] {
        app.sandbox.state.inject_fault(Fault {
            route: Route::LagoCreateSubscription,
            status,
            count,
            retry_after_secs: None,
            body: None,
        });
    }
    let (receiver, otlp_url, otlp) = OtlpReceiver::spawn();
    let (ingest, worker, url) = traced_binaries(
        &app.ctx,
        &app.sandbox,
        &otlp_url,
        &[("WEBHOOK__WORKER__INLINE_RETRIES", "1")],
    )
    .await;
    let event = signed_event("checkout.session.completed", "retrace@example.com");
    post_signed(&url, &event).await;
    wait_event_status(app.pool(), &event.event_id, "dead_lettered").await;
    let out = webhook_tests::webhookctl(&app.ctx.env, &["dlq", "requeue", "--all"]).await;
    assert_eq!(out.code, 0, "webhookctl dlq requeue: {out:?}");
    wait_event_status(app.pool(), &event.event_id, "succeeded").await;

    let publish_name = format!("{}billing.events publish", app.ctx.prefix);
    let job_name = format!("{}billing.provisioning process", app.ctx.prefix);
    let (publish, jobs, trace) = wait_for("the three jobs' spans", LONG, || async {
        let spans = receiver.spans();
        let (_, publish) = spans
            .iter()
            .find(|(_, s)| {
                s["name"] == publish_name.as_str()
                    && span_attribute(s, "messaging.message.id") == Some(&json!(event.event_id))
            })?
            .clone();
        let jobs: Vec<Value> = spans
            .iter()
            .filter(|(_, s)| {
                s["name"] == job_name.as_str()
                    && span_attribute(s, "event_id") == Some(&json!(event.event_id))
            })
            .map(|(_, s)| s.clone())
            .collect();
        let trace: Vec<(String, Value)> = spans
            .into_iter()
            .filter(|(_, s)| s["traceId"] == publish["traceId"])
            .collect();
        (jobs.len() == 3).then_some((publish, jobs, trace))
    })
    .await;
    eprintln!("the trace of {}:\n{}", event.event_id, trace_tree(&trace));
    let mut outcomes: Vec<(u64, &str)> = jobs
        .iter()
        .map(|j| {
            assert_eq!(
                j["traceId"], publish["traceId"],
                "every attempt is in the event's trace"
            );
            assert_eq!(
                j["parentSpanId"], publish["spanId"],
                "every attempt is a child of the publish"
            );
            (
                nanos(&j["startTimeUnixNano"]),
                span_attribute(j, "outcome")
                    .and_then(Value::as_str)
                    .unwrap_or("?"),
            )
        })
        .collect();
    outcomes.sort();
    let outcomes: Vec<&str> = outcomes.into_iter().map(|(_, o)| o).collect();
    assert_eq!(outcomes, ["retry_scheduled", "dead_lettered", "succeeded"]);

    drop((ingest, worker));
    otlp.stop(true).await;
    app.stop().await;
}
