//! The subscription lifecycle end to end (real RabbitMQ and Postgres, the sandbox downstream):
//! checkout → upgrade → payment failed → paid → cancel, and every delivery order of
//! checkout / updated / deleted ending in the right state.

use serde_json::{Value, json};
use sqlx::PgPool;
use webhook_sandbox::SeedUser;
use webhook_tests::ingest::TestIngest;
use webhook_tests::stripe::{checkout, invoice, subscription};
use webhook_tests::worker::TestSandbox;
use webhook_tests::{TestApp, rabbit, sign, wait_event_done};

async fn audits(pool: &PgPool, email: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT event_type FROM audit_logs WHERE subject = $1 ORDER BY id")
        .bind(email)
        .fetch_all(pool)
        .await
        .unwrap()
}

fn active_plan(sandbox: &TestSandbox, external_id: &str) -> Option<String> {
    sandbox
        .subscriptions(external_id)
        .into_iter()
        .find(|s| s["status"] == "active")
        .and_then(|s| s["plan_code"].as_str().map(str::to_owned))
}

fn attr(sandbox: &TestSandbox, email: &str, key: &str) -> Option<String> {
    sandbox.state.user_by_email(email)?["attributes"][key][0]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test]
async fn checkout_upgrade_payment_failed_paid_cancel() {
    let app = TestApp::spawn_with(&[]).await;
    let (ctx, sandbox, pool) = (&app.ctx, &app.sandbox, app.pool().clone());
    let email = "life@example.com";
    sandbox.state.add_user(SeedUser::new(email));
    let settings = app.settings.clone();
    let ingest = TestIngest::spawn(settings.clone()).await.ready().await;
    let (sub, cus) = (format!("sub_life_{}", ctx.id), format!("cus_life_{}", ctx.id));
    let t0 = webhook_core::unix_now() - 100;
    let post = |body: Vec<u8>| {
        let sig = sign(&body, webhook_core::unix_now());
        let ingest = &ingest;
        async move {
            let r = ingest.post(body, Some(&sig)).await;
            assert_eq!(r.status(), 200);
        }
    };

    // 1. Checkout: professional.
    post(checkout("evt_l1", t0, &sub, &cus, email, "professional")).await;
    assert_eq!(wait_event_done(&pool, "evt_l1").await, "succeeded");
    assert_eq!(
        active_plan(sandbox, &sub).as_deref(),
        Some("professional_monthly")
    );
    assert_eq!(
        attr(sandbox, email, "subscription_tier").as_deref(),
        Some("professional")
    );

    // 2. Upgrade to enterprise: Lago upgrades at once, Keycloak follows.
    post(subscription(
        "evt_l2",
        "customer.subscription.updated",
        t0 + 10,
        &sub,
        &cus,
        "active",
        "enterprise",
    ))
    .await;
    assert_eq!(wait_event_done(&pool, "evt_l2").await, "succeeded");
    assert_eq!(active_plan(sandbox, &sub).as_deref(), Some("enterprise_monthly"));
    assert_eq!(
        attr(sandbox, email, "subscription_tier").as_deref(),
        Some("enterprise")
    );
    assert_eq!(attr(sandbox, email, "billing_status").as_deref(), Some("active"));

    // 3. Payment failed, then paid.
    post(invoice(
        "evt_l3",
        "invoice.payment_failed",
        t0 + 20,
        "in_l1",
        &sub,
        &cus,
    ))
    .await;
    assert_eq!(wait_event_done(&pool, "evt_l3").await, "succeeded");
    assert_eq!(
        attr(sandbox, email, "billing_status").as_deref(),
        Some("past_due")
    );
    post(invoice("evt_l4", "invoice.paid", t0 + 30, "in_l1", &sub, &cus)).await;
    assert_eq!(wait_event_done(&pool, "evt_l4").await, "succeeded");
    assert_eq!(attr(sandbox, email, "billing_status").as_deref(), Some("active"));
    // A late copy of the failure (older than the payment) changes nothing.
    post(invoice(
        "evt_l4b",
        "invoice.payment_failed",
        t0 + 25,
        "in_l0",
        &sub,
        &cus,
    ))
    .await;
    assert_eq!(wait_event_done(&pool, "evt_l4b").await, "skipped");
    assert_eq!(attr(sandbox, email, "billing_status").as_deref(), Some("active"));

    // 4. Cancel: terminated in Lago, free tier in Keycloak; a second deletion is a no-op.
    post(subscription(
        "evt_l5",
        "customer.subscription.deleted",
        t0 + 40,
        &sub,
        &cus,
        "canceled",
        "enterprise",
    ))
    .await;
    assert_eq!(wait_event_done(&pool, "evt_l5").await, "succeeded");
    assert_eq!(active_plan(sandbox, &sub), None);
    assert!(
        sandbox
            .subscriptions(&sub)
            .iter()
            .any(|s| s["status"] == "terminated")
    );
    assert_eq!(attr(sandbox, email, "subscription_tier").as_deref(), Some("free"));
    assert_eq!(
        attr(sandbox, email, "billing_status").as_deref(),
        Some("canceled")
    );
    post(subscription(
        "evt_l6",
        "customer.subscription.deleted",
        t0 + 50,
        &sub,
        &cus,
        "canceled",
        "enterprise",
    ))
    .await;
    assert_eq!(wait_event_done(&pool, "evt_l6").await, "succeeded");

    assert_eq!(
        audits(&pool, email).await,
        [
            "subscription.created",
            "subscription.updated",
            "payment.failed",
            "payment.succeeded",
            "subscription.canceled"
        ]
    );

    ingest.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn every_delivery_order_of_checkout_update_and_delete_ends_canceled() {
    let app = TestApp::spawn_with(&[("WORKER_CONCURRENCY", "1")]).await;
    let (ctx, sandbox, pool) = (&app.ctx, &app.sandbox, app.pool().clone());
    // One job at a time: the worker takes the events in the order they are published.
    let settings = app.settings.clone();
    let topo = rabbit::topology(&settings);
    let t0 = webhook_core::unix_now() - 1000;
    let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];

    let mut all = Vec::new();
    for (n, order) in orders.iter().enumerate() {
        let email = format!("perm{n}@example.com");
        sandbox.state.add_user(SeedUser::new(email.clone()));
        let (sub, cus) = (
            format!("sub_perm{n}_{}", ctx.id),
            format!("cus_perm{n}_{}", ctx.id),
        );
        let ids = [
            format!("evt_p{n}_c"),
            format!("evt_p{n}_u"),
            format!("evt_p{n}_d"),
        ];
        let events = [
            (
                "checkout.session.completed",
                checkout(&ids[0], t0, &sub, &cus, &email, "professional"),
            ),
            (
                "customer.subscription.updated",
                subscription(
                    &ids[1],
                    "customer.subscription.updated",
                    t0 + 1,
                    &sub,
                    &cus,
                    "active",
                    "enterprise",
                ),
            ),
            (
                "customer.subscription.deleted",
                subscription(
                    &ids[2],
                    "customer.subscription.deleted",
                    t0 + 2,
                    &sub,
                    &cus,
                    "canceled",
                    "enterprise",
                ),
            ),
        ];
        for &i in order {
            rabbit::publish(&topo.exchange, events[i].0, &events[i].1, &ids[i]).await;
        }
        all.push((order, email, sub, ids));
    }
    for (order, email, sub, ids) in &all {
        let position = |i: usize| order.iter().position(|&o| o == i).unwrap();
        let update_before_delete = position(1) < position(2);
        let mut statuses = Vec::new();
        for id in ids {
            statuses.push(wait_event_done(&pool, id).await);
        }
        // The checkout always binds and writes its row; the update is stale once deleted.
        let update = if update_before_delete {
            "succeeded"
        } else {
            "skipped"
        };
        assert_eq!(statuses, ["succeeded", update, "succeeded"], "{order:?}");
        let lago = sandbox.subscriptions(sub);
        assert!(
            lago.iter()
                .all(|s| s["status"] != "active" && s["status"] != "pending"),
            "{order:?}: no live Lago subscription: {lago:?}"
        );
        // Lago sees the subscription only if something assigned a plan before the deletion:
        // the checkout, or the update once the checkout bound the account.
        assert_eq!(!lago.is_empty(), position(0) < position(2), "{order:?}: {lago:?}");
        assert_eq!(
            attr(sandbox, email, "subscription_tier").as_deref(),
            Some("free"),
            "{order:?}"
        );
        assert_eq!(
            attr(sandbox, email, "billing_status").as_deref(),
            Some("canceled"),
            "{order:?}"
        );
        let mut rows = audits_of(&pool, sub).await;
        rows.sort();
        let mut want = vec!["subscription.canceled", "subscription.created"];
        if update_before_delete {
            want.push("subscription.updated");
        }
        assert_eq!(rows, want, "{order:?}");
    }

    app.stop().await;
}

/// The audit rows of one Stripe subscription, by type, in order.
async fn audits_of(pool: &PgPool, sub: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_type FROM audit_logs WHERE details->>'stripe_subscription_id' = $1 ORDER BY id",
    )
    .bind(sub)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_late_checkout_does_not_resurrect_a_canceled_subscription() {
    let app = TestApp::spawn_with(&[]).await;
    let (ctx, sandbox, pool) = (&app.ctx, &app.sandbox, app.pool().clone());
    let email = "late@example.com";
    sandbox.state.add_user(SeedUser::new(email));
    let settings = app.settings.clone();
    let topo = rabbit::topology(&settings);
    let cus = format!("cus_late_{}", ctx.id);
    let t0 = webhook_core::unix_now() - 1000;

    // An earlier checkout of the same customer (another subscription, still active).
    let first = checkout(
        "evt_late_0",
        t0 - 500,
        &format!("sub_old_{}", ctx.id),
        &cus,
        email,
        "starter",
    );
    rabbit::publish(&topo.exchange, "checkout.session.completed", &first, "evt_late_0").await;
    assert_eq!(wait_event_done(&pool, "evt_late_0").await, "succeeded");

    // The deletion of the new subscription arrives before its checkout.
    let sub = format!("sub_new_{}", ctx.id);
    let deleted = subscription(
        "evt_late_d",
        "customer.subscription.deleted",
        t0 + 2,
        &sub,
        &cus,
        "canceled",
        "professional",
    );
    rabbit::publish(
        &topo.exchange,
        "customer.subscription.deleted",
        &deleted,
        "evt_late_d",
    )
    .await;
    assert_eq!(wait_event_done(&pool, "evt_late_d").await, "succeeded");
    let late = checkout("evt_late_c", t0, &sub, &cus, email, "professional");
    rabbit::publish(&topo.exchange, "checkout.session.completed", &late, "evt_late_c").await;
    // The checkout is recorded (binding, Lago customer, audit row), its tier is not applied.
    assert_eq!(wait_event_done(&pool, "evt_late_c").await, "succeeded");

    assert!(
        sandbox.subscriptions(&sub).is_empty(),
        "no Lago subscription was created for the canceled one"
    );
    // The account keeps the tier of its other, still active subscription.
    assert_eq!(
        attr(sandbox, email, "subscription_tier").as_deref(),
        Some("starter")
    );
    let details: Value = sqlx::query_scalar(
        "SELECT details FROM audit_logs WHERE event_type = 'subscription.created' AND details->>'stripe_event_id' = 'evt_late_c'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(details["applied"], json!(false));
    assert!(
        details["not_applied"]
            .as_str()
            .unwrap()
            .contains("deleted by evt_late_d"),
        "{details}"
    );
    assert_eq!(details["account_email"], json!(email));

    app.stop().await;
}

/// A cancellation of a subscription Lago has terminated already (by hand in Lago, or by an
/// earlier attempt whose answer was lost): Lago's 404 counts as done. The job succeeds at its
/// first attempt, writes its audit row once, and the account falls back to the free tier.
#[tokio::test]
async fn a_cancellation_lago_has_terminated_already_counts_as_done_once() {
    use webhook_sandbox::Route;
    let app = TestApp::spawn_with(&[("WORKER_RETRY_SCHEDULE", "1s")]).await;
    let (ctx, sandbox, pool) = (&app.ctx, &app.sandbox, app.pool().clone());
    let email = "gone-in-lago@example.com";
    sandbox.state.add_user(SeedUser::new(email));
    let settings = app.settings.clone();
    let topo = rabbit::topology(&settings);
    let (sub, cus) = (format!("sub_gone_{}", ctx.id), format!("cus_gone_{}", ctx.id));
    let t0 = webhook_core::unix_now() - 100;
    let deliver = |id: &'static str, body: Vec<u8>| {
        let (exchange, pool) = (topo.exchange.clone(), pool.clone());
        async move {
            let kind = webhook_tests::stripe::event_type(&body);
            rabbit::publish(&exchange, &kind, &body, id).await;
            wait_event_done(&pool, id).await
        }
    };
    assert_eq!(
        deliver(
            "evt_t1",
            checkout("evt_t1", t0, &sub, &cus, email, "professional")
        )
        .await,
        "succeeded"
    );

    // Terminated in Lago directly.
    let terminated = reqwest::Client::new()
        .delete(format!("{}/api/v1/subscriptions/{sub}", sandbox.url))
        .bearer_auth("lago-sandbox-key")
        .send()
        .await
        .unwrap();
    assert_eq!(terminated.status(), 200);
    let lago_before = sandbox.subscriptions(&sub);
    assert_eq!(lago_before.len(), 1);
    assert_eq!(lago_before[0]["status"], "terminated");

    let deleted = |id: &'static str| {
        subscription(
            id,
            "customer.subscription.deleted",
            t0 + 10,
            &sub,
            &cus,
            "canceled",
            "professional",
        )
    };
    assert_eq!(deliver("evt_t2", deleted("evt_t2")).await, "succeeded");
    assert_eq!(
        sandbox.state.calls(Route::LagoTerminateSubscription),
        2,
        "the operator's and the worker's (answered 404)"
    );
    let (attempts,): (i32,) = sqlx::query_as("SELECT attempts FROM webhook_events WHERE event_id = 'evt_t2'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(attempts, 1, "done at the first attempt, not retried");
    let errors: i64 = sqlx::query_scalar("SELECT count(*) FROM event_errors")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(errors, 0);
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT details FROM audit_logs WHERE event_type = 'subscription.canceled' AND subject = $1",
    )
    .bind(email)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["stripe_event_id"], "evt_t2");
    assert_eq!(
        rows[0]["lago"],
        json!({"action": "terminated", "status": "already_terminated"})
    );
    assert_eq!(attr(sandbox, email, "subscription_tier").as_deref(), Some("free"));
    assert_eq!(
        attr(sandbox, email, "billing_status").as_deref(),
        Some("canceled")
    );

    // Another copy of the cancellation changes nothing more.
    assert!(matches!(
        deliver("evt_t2", deleted("evt_t2")).await.as_str(),
        "succeeded" | "skipped"
    ));
    let pool2 = pool.clone();
    webhook_tests::wait_for("the copy's outcome", std::time::Duration::from_secs(30), || {
        let pool = pool2.clone();
        async move {
            let n: i32 =
                sqlx::query_scalar("SELECT outcome_attempt FROM webhook_events WHERE event_id = 'evt_t2'")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (n == 2).then_some(())
        }
    })
    .await;
    assert_eq!(sandbox.state.calls(Route::LagoTerminateSubscription), 2);
    assert_eq!(
        sandbox.subscriptions(&sub),
        lago_before,
        "nothing re-created in Lago"
    );
    assert_eq!(
        audits_of(&pool, &sub).await.len(),
        2,
        "the checkout's and the cancellation's"
    );
    assert!(rabbit::peek(&topo.dead_letter_queue).await.is_empty());

    app.stop().await;
}
