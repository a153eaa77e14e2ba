//! Recovering what webhooks alone miss (issue 19), end to end against the sandbox's Stripe API:
//! `webhookctl backfill` provisions the events only Stripe has, exactly once, idempotently and
//! safely after a kill; its filters and its answers to a wrong key and to Stripe's 429;
//! `webhookctl reconcile` finds drift made by hand in Keycloak and Lago and `--fix` repairs it
//! through the worker; `stripe.refetch` applies a subscription as Stripe has it now.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use webhook_sandbox::{Fault, Route, SeedUser};
use webhook_tests::ingest::TestIngest;
use webhook_tests::{TestApp, bin_path, rabbit, sign, stripe, wait_event_status, wait_for, webhookctl};

const LONG: Duration = Duration::from_secs(120);
const KEY: &str = "sk_test_sandbox";

fn user(email: &str) -> SeedUser {
    SeedUser {
        email: email.into(),
        ..SeedUser::default()
    }
}

fn value(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap()
}

/// The environment of a `webhookctl` that reads the sandbox's Stripe API.
fn ctl_env(app: &TestApp, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut pairs = vec![
        ("STRIPE_API_KEY", KEY),
        ("STRIPE_API_URL", app.sandbox.url.as_str()),
    ];
    pairs.extend_from_slice(extra);
    app.env(&pairs)
}

fn json_out(out: &webhook_tests::Output) -> Value {
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr))
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wait_count(pool: &sqlx::PgPool, what: &str, sql: &str, want: i64) {
    wait_for(what, LONG, || async {
        (count(pool, sql).await == want).then_some(())
    })
    .await
}

/// 250 events exist in Stripe (3 pages of 100): paid checkouts of 250 accounts, 20 of which
/// were also delivered by webhook. A backfill of the last hour provisions the other 230 exactly
/// once (one Lago subscription create per subscription, one audit row each); a second run
/// backfills 0.
#[tokio::test]
async fn backfill_provisions_what_only_stripe_has_exactly_once() {
    let app = TestApp::spawn().await;
    let (sandbox, pool) = (&app.sandbox, app.pool());
    let now = webhook_core::unix_now();
    let mut events = Vec::new();
    for i in 0..250 {
        let email = format!("bf{i}@example.com");
        sandbox.state.add_user(user(&email));
        events.push(stripe::checkout(
            &format!("evt_bf_{i:03}"),
            now - 3000 + i as i64 * 10,
            &format!("sub_bf_{i:03}"),
            &format!("cus_bf_{i:03}"),
            &email,
            "professional",
        ));
    }
    sandbox
        .state
        .stripe_add_events(events.iter().map(|b| value(b)).collect())
        .expect("the stand-in takes the events");
    let ingest = TestIngest::spawn(app.settings.clone()).await.ready().await;
    for body in &events[..20] {
        let answer = ingest.post(body.clone(), Some(&sign(body, now))).await;
        assert_eq!(answer.status(), 200);
    }
    for i in 0..20 {
        wait_event_status(pool, &format!("evt_bf_{i:03}"), "succeeded").await;
    }

    let env = ctl_env(&app, &[]);
    let out = webhookctl(&env, &["backfill", "--since", "1h", "--json"]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report = json_out(&out);
    assert_eq!(
        (
            &report["listed"],
            &report["backfilled"],
            &report["already_known"],
            &report["ignored"]
        ),
        (&json!(250), &json!(230), &json!(20), &json!(0)),
        "{report}"
    );
    wait_count(
        pool,
        "every checkout provisioned",
        "SELECT count(*) FROM webhook_events WHERE status = 'succeeded'",
        250,
    )
    .await;
    // Exactly once: one create per subscription, one audit row per checkout.
    assert_eq!(sandbox.state.calls(Route::LagoCreateSubscription), 250);
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM audit_logs WHERE event_type = 'subscription.created'"
        )
        .await,
        250
    );
    for i in [0, 19, 20, 249] {
        assert_eq!(sandbox.subscriptions(&format!("sub_bf_{i:03}")).len(), 1);
    }

    // Idempotent.
    let again = webhookctl(&env, &["backfill", "--since", "1h"]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.stdout.trim(),
        "backfilled 0 events (250 already known, 0 ignored)"
    );
    assert_eq!(sandbox.state.calls(Route::LagoCreateSubscription), 250);
    ingest.stop().await;
    app.stop().await;
}

/// `--type`, `--from` and `--until` choose what is listed; `--dry-run` changes nothing; a wrong
/// key exits 1 with Stripe's reason and never shows the key; Stripe's 429 is waited out as its
/// `Retry-After` says.
#[tokio::test]
async fn backfill_filters_dry_runs_and_answers_stripes_refusals() {
    let app = TestApp::without_worker(&[]).await;
    let (sandbox, pool) = (&app.sandbox, app.pool());
    let now = webhook_core::unix_now();
    let mut events = Vec::new();
    for (i, created) in [now - 7200, now - 7100, now - 300, now - 200]
        .into_iter()
        .enumerate()
    {
        events.push(value(&stripe::checkout(
            &format!("evt_f_{i}"),
            created,
            &format!("sub_f_{i}"),
            &format!("cus_f_{i}"),
            "nobody@example.com",
            "professional",
        )));
    }
    events.push(value(&stripe::envelope(
        "evt_f_cus",
        "customer.created",
        now - 150,
        json!({"id": "cus_x", "object": "customer"}),
    )));
    events.push(value(&stripe::invoice(
        "evt_f_inv",
        "invoice.paid",
        now - 250,
        "in_f",
        "sub_f_3",
        "cus_f_3",
    )));
    sandbox.state.stripe_add_events(events).unwrap();
    let env = ctl_env(&app, &[]);

    let dry = |args: &'static [&'static str]| {
        let env = env.clone();
        async move {
            let mut all = vec!["backfill", "--dry-run", "--json"];
            all.extend_from_slice(args);
            let out = webhookctl(&env, &all).await;
            assert_eq!(out.code, 0, "{all:?}: {}", out.stderr);
            let r = json_out(&out);
            (r["listed"].as_u64().unwrap(), r["backfilled"].as_u64().unwrap())
        }
    };
    // The customer.created event is listed, and would be stored as ignored.
    assert_eq!(dry(&["--since", "1h"]).await, (4, 3));
    assert_eq!(
        dry(&["--since", "1h", "--type", "checkout.session.completed"]).await,
        (2, 2)
    );
    assert_eq!(
        dry(&[
            "--since",
            "3h",
            "--type",
            "invoice.paid",
            "--type",
            "checkout.session.completed"
        ])
        .await,
        (5, 5)
    );
    let from = chrono::DateTime::from_timestamp(now - 3 * 3600, 0)
        .unwrap()
        .to_rfc3339();
    let until = chrono::DateTime::from_timestamp(now - 3600, 0)
        .unwrap()
        .to_rfc3339();
    let out = webhookctl(
        &env,
        &[
            "backfill",
            "--from",
            &from,
            "--until",
            &until,
            "--dry-run",
            "--json",
        ],
    )
    .await;
    assert_eq!(json_out(&out)["listed"], 2, "{}", out.stdout);
    assert_eq!(
        count(pool, "SELECT count(*) FROM webhook_events").await,
        0,
        "--dry-run changed nothing"
    );

    // Bad usage: exit 2, with what to give.
    let out = webhookctl(&env, &["backfill"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--since"), "{}", out.stderr);

    // A wrong key: exit 1, Stripe's reason, the variable to fix, not the key.
    let wrong = ctl_env(&app, &[("STRIPE_API_KEY", "sk_test_wrongwrongwrong1234")]);
    let out = webhookctl(&wrong, &["backfill", "--since", "1h"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("STRIPE_API_KEY"), "{}", out.stderr);
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("sk_test_wrongwrongwrong1234"),
        "{}",
        out.stderr
    );
    // No key at all: said before anything is called.
    let mut none = env.clone();
    none.remove("STRIPE_API_KEY");
    let out = webhookctl(&none, &["backfill", "--since", "1h"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("STRIPE_API_KEY is required"),
        "{}",
        out.stderr
    );

    // Two 429s with Retry-After: 1, then the answer.
    let before = sandbox.state.calls(Route::StripeEvents);
    sandbox.state.inject_fault(Fault {
        route: Route::StripeEvents,
        status: 429,
        count: 2,
        retry_after_secs: Some(1),
        body: None,
    });
    let started = Instant::now();
    let out = webhookctl(&env, &["backfill", "--since", "1h", "--dry-run", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(json_out(&out)["listed"], 4);
    assert_eq!(json_out(&out)["ignored"], 1);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "each Retry-After waited out: {:?}",
        started.elapsed()
    );
    assert_eq!(sandbox.state.calls(Route::StripeEvents) - before, 3);
    app.stop().await;
}

/// A backfill SIGKILLed after its first batch was recorded, then run again, with no worker
/// running meanwhile: every event is recorded once, and once the worker runs every subscription
/// is created in Lago exactly once (a message published twice, by a kill between its confirm and
/// its commit, is a copy the ledger makes harmless).
#[tokio::test]
async fn a_backfill_killed_halfway_and_run_again_loses_and_doubles_nothing() {
    const N: usize = 1000;
    let mut app = TestApp::without_worker(&[]).await;
    let (state, pool, topo) = (app.sandbox.state.clone(), app.pool().clone(), app.topo.clone());
    let now = webhook_core::unix_now();
    let mut events = Vec::new();
    for i in 0..N {
        let email = format!("k{i}@example.com");
        state.add_user(user(&email));
        events.push(value(&stripe::checkout(
            &format!("evt_k_{i:04}"),
            now - 3000 + i as i64,
            &format!("sub_k_{i:04}"),
            &format!("cus_k_{i:04}"),
            &email,
            "professional",
        )));
    }
    state.stripe_add_events(events).unwrap();
    // The topology, without a consumer.
    let out = webhookctl(&app.env(&[]), &["setup"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let env = ctl_env(&app, &[]);
    let mut child = tokio::process::Command::new(bin_path("webhookctl"))
        .env_clear()
        .envs(&env)
        .args(["backfill", "--since", "1h"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Killed as soon as the first batch of 100 is recorded (polled every few milliseconds; the
    // other nine batches take far longer than that).
    let deadline = Instant::now() + LONG;
    let at_kill = loop {
        let n = count(&pool, "SELECT count(*) FROM webhook_events").await;
        if n > 0 {
            break n;
        }
        assert!(Instant::now() < deadline, "no batch recorded within {LONG:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let recorded = count(&pool, "SELECT count(*) FROM webhook_events").await;
    assert!(
        recorded < N as i64,
        "the kill came after the whole backfill ({at_kill} then {recorded}): nothing was interrupted"
    );
    let out = webhookctl(&env, &["backfill", "--since", "1h", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = json_out(&out);
    assert_eq!(
        report["backfilled"].as_i64().unwrap() + report["already_known"].as_i64().unwrap(),
        N as i64,
        "{report}"
    );
    assert!(report["already_known"].as_i64().unwrap() >= recorded, "{report}");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM webhook_events").await,
        N as i64
    );
    assert!(rabbit::depth(&topo.work_queue).await >= N as u32);

    app.start_worker().await;
    wait_count(
        &pool,
        "every event provisioned",
        "SELECT count(*) FROM webhook_events WHERE status = 'succeeded'",
        N as i64,
    )
    .await;
    wait_for("the work queue drained", LONG, || async {
        (rabbit::depth(&topo.work_queue).await == 0).then_some(())
    })
    .await;
    assert_eq!(state.calls(Route::LagoCreateSubscription), N as u64);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM audit_logs WHERE event_type = 'subscription.created'"
        )
        .await,
        N as i64
    );
    app.stop().await;
}

/// Four subscriptions provisioned (two active, one past due, one canceled: no drift); then, by
/// hand, one account's tier is set to `free` in Keycloak and another's Lago subscription is
/// terminated. `reconcile` names both drifts (exit 1) and none before; `--fix` queues two jobs that repair both, with audit rows
/// `subscription.reconciled`; a last `reconcile` finds nothing.
#[tokio::test]
async fn reconcile_finds_drift_made_by_hand_and_fix_repairs_it() {
    let app = TestApp::spawn().await;
    let (sandbox, pool, topo) = (&app.sandbox, app.pool(), &app.topo);
    let now = webhook_core::unix_now();
    // a and b active; c past due (its grace keeps the tier, Lago keeps billing); d canceled
    // (Lago terminated, the free tier): none of them is a drift until something is changed by hand.
    for (who, sub, later) in [
        ("rc-a", "sub_rc_a", None),
        ("rc-b", "sub_rc_b", None),
        (
            "rc-c",
            "sub_rc_c",
            Some(("customer.subscription.updated", "past_due")),
        ),
        (
            "rc-d",
            "sub_rc_d",
            Some(("customer.subscription.deleted", "canceled")),
        ),
    ] {
        let email = format!("{who}@example.com");
        sandbox.state.add_user(user(&email));
        let cus = format!("cus_{who}");
        let checkout = stripe::checkout(
            &format!("evt_{who}"),
            now - 600,
            sub,
            &cus,
            &email,
            "professional",
        );
        rabbit::publish(
            &topo.exchange,
            "checkout.session.completed",
            &checkout,
            &format!("evt_{who}"),
        )
        .await;
        wait_event_status(pool, &format!("evt_{who}"), "succeeded").await;
        // Stripe's subscription as it is now, delivered too when it changed after the checkout.
        let (event_type, status) = later.unwrap_or(("customer.subscription.updated", "active"));
        let current = stripe::subscription(
            &format!("evt_{who}_s"),
            event_type,
            now - 300,
            sub,
            &cus,
            status,
            "professional",
        );
        sandbox
            .state
            .stripe_put_subscription(value(&current)["data"]["object"].clone())
            .unwrap();
        if later.is_some() {
            rabbit::publish(&topo.exchange, event_type, &current, &format!("evt_{who}_s")).await;
            wait_event_status(pool, &format!("evt_{who}_s"), "succeeded").await;
        }
    }
    let env = ctl_env(&app, &[]);
    let out = webhookctl(&env, &["reconcile", "--json"]).await;
    assert_eq!(out.code, 0, "no drift yet: {}\n{}", out.stdout, out.stderr);
    assert_eq!(json_out(&out)["checked"], 4);

    // By hand.
    sandbox
        .state
        .set_user_attribute("rc-a@example.com", "subscription_tier", &["free"])
        .unwrap();
    sandbox.state.terminate_subscription_by_hand("sub_rc_b").unwrap();

    let out = webhookctl(&env, &["reconcile"]).await;
    eprintln!("reconcile:\n{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("sub_rc_a: keycloak tier: free (Stripe implies professional)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("sub_rc_b: lago subscription: "),
        "{}",
        out.stdout
    );
    let drifts = json_out(&webhookctl(&env, &["reconcile", "--json"]).await)["drifts"].clone();
    assert_eq!(drifts.as_array().unwrap().len(), 2, "{drifts}");

    let out = webhookctl(&env, &["reconcile", "--fix"]).await;
    eprintln!("reconcile --fix:\n{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 1, "drift was found: {}", out.stdout);
    assert!(out.stdout.contains("queued 2 reconcile jobs"), "{}", out.stdout);
    wait_count(
        pool,
        "two reconcile audit rows",
        "SELECT count(*) FROM audit_logs WHERE event_type = 'subscription.reconciled'",
        2,
    )
    .await;
    let out = webhookctl(&env, &["reconcile"]).await;
    eprintln!("reconcile after the fix:\n{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("checked 4 subscriptions: 0 drifts"),
        "{}",
        out.stdout
    );
    let a = sandbox.state.user_by_email("rc-a@example.com").unwrap();
    assert_eq!(a["attributes"]["subscription_tier"], json!(["professional"]));
    assert!(
        sandbox
            .subscriptions("sub_rc_b")
            .iter()
            .any(|s| s["status"] == "active" && s["plan_code"] == "professional_monthly"),
        "{:?}",
        sandbox.subscriptions("sub_rc_b")
    );
    let details: Value = sqlx::query_scalar(
        "SELECT details FROM audit_logs WHERE event_type = 'subscription.reconciled' ORDER BY id LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        details["reconcile"]["requested_by"], "webhookctl reconcile",
        "{details}"
    );
    app.stop().await;
}

/// With `stripe.refetch`, a subscription event delivered late and out of date (older than the
/// checkout, on another status and plan) applies the subscription as Stripe has it now.
#[tokio::test]
async fn refetch_applies_the_subscription_as_stripe_has_it_now() {
    let mut app = TestApp::without_worker(&[]).await;
    let url = app.sandbox.url.clone();
    app.set_worker_settings(&[
        ("WEBHOOK__STRIPE__REFETCH", "true"),
        ("STRIPE_API_KEY", KEY),
        ("STRIPE_API_URL", &url),
    ]);
    app.start_worker().await;
    let (sandbox, pool, topo) = (&app.sandbox, app.pool(), &app.topo);
    let now = webhook_core::unix_now();
    sandbox.state.add_user(user("rf@example.com"));
    let checkout = stripe::checkout(
        "evt_rf_c",
        now - 60,
        "sub_rf",
        "cus_rf",
        "rf@example.com",
        "professional",
    );
    rabbit::publish(
        &topo.exchange,
        "checkout.session.completed",
        &checkout,
        "evt_rf_c",
    )
    .await;
    wait_event_status(pool, "evt_rf_c", "succeeded").await;
    // Now on enterprise in Stripe; the event that says so is not delivered, an old one is.
    let current = value(&stripe::subscription(
        "evt_rf_now",
        "customer.subscription.updated",
        now - 10,
        "sub_rf",
        "cus_rf",
        "active",
        "enterprise",
    ));
    sandbox
        .state
        .stripe_put_subscription(current["data"]["object"].clone())
        .unwrap();
    let old = stripe::subscription(
        "evt_rf_old",
        "customer.subscription.updated",
        now - 120,
        "sub_rf",
        "cus_rf",
        "past_due",
        "professional",
    );
    rabbit::publish(
        &topo.exchange,
        "customer.subscription.updated",
        &old,
        "evt_rf_old",
    )
    .await;
    wait_event_status(pool, "evt_rf_old", "succeeded").await;
    let u = sandbox.state.user_by_email("rf@example.com").unwrap();
    assert_eq!(u["attributes"]["subscription_tier"], json!(["enterprise"]), "{u}");
    assert!(
        sandbox
            .subscriptions("sub_rf")
            .iter()
            .any(|s| s["status"] == "active" && s["plan_code"] == "enterprise_monthly"),
        "{:?}",
        sandbox.subscriptions("sub_rf")
    );
    assert!(sandbox.state.calls(Route::StripeSubscriptions) >= 1);
    let details: Value =
        sqlx::query_scalar("SELECT details FROM audit_logs WHERE details->>'stripe_event_id' = 'evt_rf_old'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(details["refetched_from_stripe"], true, "{details}");
    app.stop().await;
}
