//! Billing state that converges, end to end (real RabbitMQ and Postgres, the real worker, the
//! sandbox downstream): the right account, the right access, whatever order Stripe delivers in.
//! One test per case of issue 13.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use webhook_sandbox::{Fault, Route, SandboxConfig, SeedUser, UnmanagedPolicy};
use webhook_tests::rabbit;
use webhook_tests::stripe::{checkout, checkout_paid_by, event_type, invoice_to, subscription};
use webhook_tests::{TestApp, TestContext, wait_event_done, wait_for};

/// A [`TestApp`] (context, sandbox, worker) with the helpers of these tests.
struct Env {
    app: TestApp,
    /// Event times: `t0` plus the offsets the tests give.
    t0: i64,
}

impl std::ops::Deref for Env {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

impl Env {
    async fn start(extra: &[(&str, &str)]) -> Self {
        Self::start_with(extra, SandboxConfig::default()).await
    }

    async fn start_with(extra: &[(&str, &str)], config: SandboxConfig) -> Self {
        Self {
            app: TestApp::spawn_in(config, extra).await,
            t0: webhook_core::unix_now() - 10_000,
        }
    }

    fn id(&self, name: &str) -> String {
        format!("{name}_{}", self.ctx.id)
    }

    async fn publish(&self, event_id: &str, body: &[u8]) {
        rabbit::publish(&self.topo.exchange, &event_type(body), body, event_id).await;
    }

    /// Publishes and waits until the event is finished; returns its status.
    async fn deliver(&self, event_id: &str, body: &[u8]) -> String {
        self.publish(event_id, body).await;
        wait_event_done(self.pool(), event_id).await
    }

    fn attr(&self, email: &str, key: &str) -> Option<String> {
        self.sandbox.state.user_by_email(email)?["attributes"][key][0]
            .as_str()
            .map(str::to_owned)
    }

    /// Lago subscriptions with this external id: (status, plan_code).
    fn lago(&self, sub: &str) -> Vec<(String, String)> {
        self.sandbox
            .subscriptions(sub)
            .iter()
            .map(|s| {
                (
                    s["status"].as_str().unwrap().to_owned(),
                    s["plan_code"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    async fn audit(&self, event_id: &str) -> Value {
        sqlx::query_scalar("SELECT details FROM audit_logs WHERE details->>'stripe_event_id' = $1")
            .bind(event_id)
            .fetch_one(self.pool())
            .await
            .unwrap()
    }

    async fn dead_letters(&self) -> usize {
        rabbit::peek(&self.topo.dead_letter_queue).await.len()
    }

    async fn metric(&self, series: &str) -> f64 {
        webhook_tests::metric(&self.worker_url(), series).await
    }

    async fn stop(self) {
        self.app.stop().await;
    }
}

/// 1. Someone else pays (the billing email is not the account's): the account of
///    `metadata.user_email` is provisioned, later invoices carrying the billing email do not
///    rebind the subscription, and an upgrade reaches the right account.
#[tokio::test]
async fn a_checkout_paid_by_someone_else_keeps_its_account_through_invoices_and_upgrades() {
    let env = Env::start(&[]).await;
    let (user, finance) = ("dev@example.com", "finance@example.com");
    env.sandbox.state.add_user(SeedUser::new(user));
    // Another person's account has the billing email.
    env.sandbox.state.add_user(SeedUser::new(finance));
    let (sub, cus, t0) = (env.id("sub"), env.id("cus"), env.t0);

    let c = checkout_paid_by("evt_b1", t0, &sub, &cus, user, finance, "starter");
    assert_eq!(env.deliver("evt_b1", &c).await, "succeeded");
    let paid = invoice_to(
        "evt_b2",
        "invoice.paid",
        t0 + 1,
        "in_b1",
        &sub,
        &cus,
        Some(finance),
    );
    assert_eq!(env.deliver("evt_b2", &paid).await, "succeeded");
    let up = subscription(
        "evt_b3",
        "customer.subscription.updated",
        t0 + 2,
        &sub,
        &cus,
        "active",
        "enterprise",
    );
    assert_eq!(env.deliver("evt_b3", &up).await, "succeeded");

    assert_eq!(env.attr(user, "subscription_tier").as_deref(), Some("enterprise"));
    assert_eq!(env.attr(user, "billing_status").as_deref(), Some("active"));
    assert_eq!(
        env.attr(finance, "subscription_tier"),
        None,
        "the payer's own account is untouched"
    );
    assert_eq!(env.attr(finance, "billing_status"), None);
    let lago = env.lago(&sub);
    assert!(
        lago.contains(&("active".into(), "enterprise_monthly".into())),
        "{lago:?}"
    );
    let customers = env.sandbox.state.snapshot()["customers"].clone();
    assert!(
        customers
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["external_id"] != finance),
        "no Lago customer for the billing email: {customers}"
    );
    // The invoice's audit row is about the account; the payer is kept as the billing contact.
    let row = env.audit("evt_b2").await;
    assert_eq!(row["account_email"], json!(user));
    assert_eq!(row["billing_contact"], json!(finance));
    assert_eq!(env.dead_letters().await, 0);
    env.stop().await;
}

/// 2. A cancellation after the Keycloak account was deleted still terminates Lago, at once, and
///    records the missing account; after an email change the account is still found (by id).
#[tokio::test]
async fn a_cancellation_reaches_lago_when_the_account_is_gone_or_renamed() {
    // A long retry schedule: a retried job would not finish within the test's wait.
    let env = Env::start(&[("WORKER_RETRY_SCHEDULE", "10m")]).await;
    let (gone, renamed) = ("gone@example.com", "renamed@example.com");
    env.sandbox.state.add_user(SeedUser::new(gone));
    env.sandbox.state.add_user(SeedUser::new(renamed));
    let t0 = env.t0;
    let (sub1, cus1, sub2, cus2) = (env.id("sub1"), env.id("cus1"), env.id("sub2"), env.id("cus2"));
    assert_eq!(
        env.deliver(
            "evt_g1",
            &checkout("evt_g1", t0, &sub1, &cus1, gone, "professional")
        )
        .await,
        "succeeded"
    );
    assert_eq!(
        env.deliver(
            "evt_r1",
            &checkout("evt_r1", t0, &sub2, &cus2, renamed, "professional")
        )
        .await,
        "succeeded"
    );

    assert!(env.sandbox.state.delete_user(gone));
    assert!(env.sandbox.state.change_email(renamed, "new-name@example.com"));
    let d1 = subscription(
        "evt_g2",
        "customer.subscription.deleted",
        t0 + 5,
        &sub1,
        &cus1,
        "canceled",
        "professional",
    );
    let d2 = subscription(
        "evt_r2",
        "customer.subscription.deleted",
        t0 + 5,
        &sub2,
        &cus2,
        "canceled",
        "professional",
    );
    assert_eq!(env.deliver("evt_g2", &d1).await, "succeeded");
    assert_eq!(env.deliver("evt_r2", &d2).await, "succeeded");

    for sub in [&sub1, &sub2] {
        let lago = env.lago(sub);
        assert!(lago.iter().all(|(s, _)| s == "terminated"), "{lago:?}");
        assert!(!lago.is_empty());
    }
    let row = env.audit("evt_g2").await;
    assert_eq!(row["keycloak"][0]["missing"], json!(true), "{row}");
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM webhook_events WHERE event_id = 'evt_g2'")
        .fetch_one(env.pool())
        .await
        .unwrap();
    assert_eq!(attempts, 1, "recorded, not retried");
    assert_eq!(
        env.metric("webhook_worker_keycloak_accounts_missing_total").await,
        1.0
    );
    // The renamed user keeps their account: free tier, canceled.
    assert_eq!(
        env.attr("new-name@example.com", "subscription_tier").as_deref(),
        Some("free")
    );
    assert_eq!(
        env.attr("new-name@example.com", "billing_status").as_deref(),
        Some("canceled")
    );
    // `webhookctl events show` says so.
    let out = webhook_tests::webhookctl(&env.ctx.env, &["events", "show", "evt_g2"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("\"missing\":true"), "{}", out.stdout);
    env.stop().await;
}

/// 3. An incomplete subscription (first invoice unpaid, failed 3-D Secure) grants nothing; it
///    does once Stripe says it is active.
#[tokio::test]
async fn an_incomplete_subscription_grants_no_access_until_it_is_active() {
    let env = Env::start(&[]).await;
    let email = "known@example.com";
    env.sandbox.state.add_user(SeedUser::new(email));
    let (sub1, sub2, cus, t0) = (env.id("sub1"), env.id("sub2"), env.id("cus"), env.t0);
    assert_eq!(
        env.deliver("evt_i1", &checkout("evt_i1", t0, &sub1, &cus, email, "starter"))
            .await,
        "succeeded"
    );
    // A second subscription of the known customer, its first payment not done.
    let inc = subscription(
        "evt_i2",
        "customer.subscription.updated",
        t0 + 1,
        &sub2,
        &cus,
        "incomplete",
        "enterprise",
    );
    assert_eq!(env.deliver("evt_i2", &inc).await, "succeeded");
    assert_eq!(env.attr(email, "subscription_tier").as_deref(), Some("starter"));
    assert!(
        env.lago(&sub2).is_empty(),
        "no Lago subscription while incomplete"
    );
    let act = subscription(
        "evt_i3",
        "customer.subscription.updated",
        t0 + 2,
        &sub2,
        &cus,
        "active",
        "enterprise",
    );
    assert_eq!(env.deliver("evt_i3", &act).await, "succeeded");
    assert_eq!(
        env.attr(email, "subscription_tier").as_deref(),
        Some("enterprise")
    );
    assert_eq!(
        env.lago(&sub2),
        [("active".to_string(), "enterprise_monthly".to_string())]
    );
    // Cancelling the old plan keeps the new tier.
    let del = subscription(
        "evt_i4",
        "customer.subscription.deleted",
        t0 + 3,
        &sub1,
        &cus,
        "canceled",
        "starter",
    );
    assert_eq!(env.deliver("evt_i4", &del).await, "succeeded");
    assert_eq!(
        env.attr(email, "subscription_tier").as_deref(),
        Some("enterprise")
    );
    assert_eq!(env.attr(email, "billing_status").as_deref(), Some("active"));
    env.stop().await;
}

/// 4. A realm that declares only `subscription_tier`: every event succeeds (the status
///    attribute is optional, with a metric); a realm without it dead-letters with the fix.
#[tokio::test]
async fn only_the_tier_attribute_declared_is_enough() {
    let config = SandboxConfig {
        managed_attributes: vec!["subscription_tier".into()],
        unmanaged_attribute_policy: UnmanagedPolicy::Disabled,
        ..SandboxConfig::default()
    };
    let env = Env::start_with(&[], config).await;
    let email = "tier-only@example.com";
    env.sandbox.state.add_user(SeedUser::new(email));
    let (sub, cus, t0) = (env.id("sub"), env.id("cus"), env.t0);
    let events = [
        ("evt_t1", checkout("evt_t1", t0, &sub, &cus, email, "starter")),
        (
            "evt_t2",
            subscription(
                "evt_t2",
                "customer.subscription.updated",
                t0 + 1,
                &sub,
                &cus,
                "active",
                "professional",
            ),
        ),
        (
            "evt_t3",
            invoice_to(
                "evt_t3",
                "invoice.payment_failed",
                t0 + 2,
                "in_t",
                &sub,
                &cus,
                None,
            ),
        ),
        (
            "evt_t4",
            invoice_to("evt_t4", "invoice.paid", t0 + 3, "in_t", &sub, &cus, None),
        ),
        (
            "evt_t5",
            subscription(
                "evt_t5",
                "customer.subscription.deleted",
                t0 + 4,
                &sub,
                &cus,
                "canceled",
                "professional",
            ),
        ),
    ];
    for (id, body) in &events {
        assert_eq!(env.deliver(id, body).await, "succeeded", "{id}");
        if *id == "evt_t2" {
            assert_eq!(
                env.attr(email, "subscription_tier").as_deref(),
                Some("professional")
            );
        }
    }
    assert_eq!(env.attr(email, "subscription_tier").as_deref(), Some("free"));
    assert_eq!(env.dead_letters().await, 0);
    assert!(
        env.metric("webhook_worker_keycloak_attribute_dropped_total{attribute=\"billing_status\"}")
            .await
            >= 1.0
    );
    env.stop().await;

    // With the status attribute switched off, nothing is dropped.
    let config = SandboxConfig {
        managed_attributes: vec!["subscription_tier".into()],
        unmanaged_attribute_policy: UnmanagedPolicy::Disabled,
        ..SandboxConfig::default()
    };
    let env = Env::start_with(&[("WEBHOOK__KEYCLOAK__STATUS_ATTRIBUTE", "")], config).await;
    env.sandbox.state.add_user(SeedUser::new(email));
    let (sub, cus, t0) = (env.id("sub"), env.id("cus"), env.t0);
    assert_eq!(
        env.deliver("evt_o1", &checkout("evt_o1", t0, &sub, &cus, email, "starter"))
            .await,
        "succeeded"
    );
    let up = subscription(
        "evt_o2",
        "customer.subscription.updated",
        t0 + 1,
        &sub,
        &cus,
        "past_due",
        "starter",
    );
    assert_eq!(env.deliver("evt_o2", &up).await, "succeeded");
    assert_eq!(
        env.metric("webhook_worker_keycloak_attribute_dropped_total")
            .await,
        0.0
    );
    assert_eq!(env.attr(email, "billing_status"), None);
    env.stop().await;

    // No tier attribute in the profile: a permanent error that says what to declare.
    let config = SandboxConfig {
        managed_attributes: vec![],
        unmanaged_attribute_policy: UnmanagedPolicy::Disabled,
        ..SandboxConfig::default()
    };
    let env = Env::start_with(&[], config).await;
    env.sandbox.state.add_user(SeedUser::new(email));
    let (sub, cus, t0) = (env.id("sub"), env.id("cus"), env.t0);
    assert_eq!(
        env.deliver("evt_n1", &checkout("evt_n1", t0, &sub, &cus, email, "starter"))
            .await,
        "dead_lettered"
    );
    let dead = rabbit::drain(&env.topo.dead_letter_queue).await;
    let error = rabbit::header(&dead[0], "x-error").unwrap();
    assert!(
        error.contains("subscription_tier") && error.contains("user profile"),
        "{error}"
    );
    env.stop().await;
}

/// 5. A cancellation whose Keycloak part fails after Lago was terminated leaves its tombstone:
///    an older update arriving meanwhile does not re-create the Lago subscription.
#[tokio::test]
async fn a_half_done_cancellation_is_never_undone_by_a_late_update() {
    let env = Env::start(&[
        ("WORKER_RETRY_SCHEDULE", "2s"),
        ("WEBHOOK__WORKER__INLINE_RETRIES", "0"),
    ])
    .await;
    let email = "half@example.com";
    env.sandbox.state.add_user(SeedUser::new(email));
    let (sub, cus, t0) = (env.id("sub"), env.id("cus"), env.t0);
    assert_eq!(
        env.deliver(
            "evt_h1",
            &checkout("evt_h1", t0, &sub, &cus, email, "professional")
        )
        .await,
        "succeeded"
    );
    env.sandbox.state.inject_fault(Fault {
        route: Route::KeycloakPutUser,
        status: 500,
        count: 1,
        retry_after_secs: None,
        body: None,
    });
    let del = subscription(
        "evt_h2",
        "customer.subscription.deleted",
        t0 + 10,
        &sub,
        &cus,
        "canceled",
        "professional",
    );
    env.publish("evt_h2", &del).await;
    let pool = env.pool().clone();
    wait_for(
        "the deletion's first attempt to fail",
        Duration::from_secs(30),
        || {
            let pool = pool.clone();
            async move {
                let n: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM event_errors WHERE event_id = 'evt_h2'")
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                (n >= 1).then_some(())
            }
        },
    )
    .await;
    assert!(
        env.lago(&sub).iter().all(|(s, _)| s == "terminated"),
        "Lago first"
    );
    // An update older than the deletion, delivered late.
    let late = subscription(
        "evt_h3",
        "customer.subscription.updated",
        t0 + 5,
        &sub,
        &cus,
        "active",
        "enterprise",
    );
    assert_eq!(env.deliver("evt_h3", &late).await, "skipped");
    assert_eq!(wait_event_done(env.pool(), "evt_h2").await, "succeeded");
    let lago = env.lago(&sub);
    assert!(
        lago.iter().all(|(s, _)| s == "terminated"),
        "nothing re-created: {lago:?}"
    );
    assert_eq!(env.sandbox.state.calls(Route::LagoCreateSubscription), 1);
    assert_eq!(env.attr(email, "subscription_tier").as_deref(), Some("free"));
    env.stop().await;
}

/// 6. A checkout that ordering finds stale still binds, upserts the Lago customer and writes
///    its audit row; the newer update's plan is what Lago and Keycloak get.
#[tokio::test]
async fn a_stale_checkout_still_binds_upserts_the_customer_and_audits() {
    let env = Env::start(&[]).await;
    let email = "stale@example.com";
    env.sandbox.state.add_user(SeedUser::new(email));
    let (sub, cus, t0) = (env.id("sub"), env.id("cus"), env.t0);
    let up = subscription(
        "evt_s2",
        "customer.subscription.updated",
        t0 + 10,
        &sub,
        &cus,
        "active",
        "enterprise",
    );
    assert_eq!(
        env.deliver("evt_s2", &up).await,
        "succeeded",
        "recorded, waiting for the account"
    );
    assert!(env.lago(&sub).is_empty());
    let c = checkout("evt_s1", t0, &sub, &cus, email, "starter");
    assert_eq!(env.deliver("evt_s1", &c).await, "succeeded");
    let row = env.audit("evt_s1").await;
    assert_eq!(row["applied"], json!(false), "{row}");
    assert!(
        row["not_applied"].as_str().unwrap().contains("out of order"),
        "{row}"
    );
    assert!(row["lago_customer_id"].is_string(), "{row}");
    assert_eq!(
        env.lago(&sub),
        [("active".to_string(), "enterprise_monthly".to_string())]
    );
    assert_eq!(
        env.attr(email, "subscription_tier").as_deref(),
        Some("enterprise")
    );
    env.stop().await;
}

/// 7. Two deliveries of one event never hold the lease together, and a job longer than the
///    lease keeps it (renewed): the later event's state is what Keycloak ends with.
#[tokio::test]
async fn leases_are_fenced_per_delivery_and_renewed() {
    let env = Env::start(&[("WEBHOOK__WORKER__LEASE_SECS", "2")]).await;
    let email = "lease@example.com";
    env.sandbox.state.add_user(SeedUser::new(email));
    let (sub, cus, t0) = (env.id("sub"), env.id("cus"), env.t0);
    assert_eq!(
        env.deliver("evt_l1", &checkout("evt_l1", t0, &sub, &cus, email, "starter"))
            .await,
        "succeeded"
    );
    let puts = env.sandbox.state.calls(Route::KeycloakPutUser);

    // Two copies of one update, at once: one PUT (the second copy waits, then finds Keycloak
    // in the state already).
    env.sandbox
        .state
        .set_latency(Some(Route::KeycloakPutUser), Duration::from_millis(500));
    let up = subscription(
        "evt_l2",
        "customer.subscription.updated",
        t0 + 1,
        &sub,
        &cus,
        "active",
        "professional",
    );
    env.publish("evt_l2", &up).await;
    env.publish("evt_l2", &up).await;
    let pool = env.pool().clone();
    wait_for("both copies to finish", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let (status, attempts): (String, i32) =
                sqlx::query_as("SELECT status, attempts FROM webhook_events WHERE event_id = 'evt_l2'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (status == "succeeded" && attempts >= 2).then_some(())
        }
    })
    .await;
    assert_eq!(
        env.sandbox.state.calls(Route::KeycloakPutUser) - puts,
        1,
        "one PUT for two copies"
    );

    // A job that runs three times longer than the lease (slow Keycloak) keeps it: a newer
    // event of the subscription waits for it, and its state is the last one written.
    env.sandbox
        .state
        .set_latency(Some(Route::KeycloakPutUser), Duration::from_secs(6));
    let slow = subscription(
        "evt_l3",
        "customer.subscription.updated",
        t0 + 2,
        &sub,
        &cus,
        "active",
        "enterprise",
    );
    env.publish("evt_l3", &slow).await;
    wait_for(
        "the slow job to hold the lease",
        Duration::from_secs(30),
        || async { (env.sandbox.state.calls(Route::KeycloakPutUser) > puts + 1).then_some(()) },
    )
    .await;
    let newer = subscription(
        "evt_l4",
        "customer.subscription.updated",
        t0 + 3,
        &sub,
        &cus,
        "past_due",
        "enterprise",
    );
    env.publish("evt_l4", &newer).await;
    assert_eq!(wait_event_done(env.pool(), "evt_l3").await, "succeeded");
    env.sandbox.state.clear_faults();
    assert_eq!(wait_event_done(env.pool(), "evt_l4").await, "succeeded");
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT details->>'stripe_event_id' FROM audit_logs WHERE event_type = 'subscription.updated' ORDER BY id",
    )
    .fetch_all(env.pool())
    .await
    .unwrap();
    assert_eq!(
        order,
        ["evt_l2", "evt_l3", "evt_l4"],
        "the newer event waited for the slow one"
    );
    assert_eq!(env.attr(email, "billing_status").as_deref(), Some("past_due"));
    assert_eq!(
        env.attr(email, "subscription_tier").as_deref(),
        Some("enterprise")
    );
    env.stop().await;
}

/// 8. Events of the same second apply in the documented order, whatever the delivery order.
#[tokio::test]
async fn same_second_events_apply_in_the_documented_order() {
    let env = Env::start(&[("WORKER_CONCURRENCY", "1")]).await;
    let email = "second@example.com";
    env.sandbox.state.add_user(SeedUser::new(email));
    let (sub, cus, t) = (env.id("sub"), env.id("cus"), env.t0);
    // All in one second: checkout, then incomplete → active (the way a subscription moves).
    // Delivered backwards.
    let events = [
        (
            "evt_z3",
            subscription(
                "evt_z3",
                "customer.subscription.updated",
                t,
                &sub,
                &cus,
                "active",
                "enterprise",
            ),
        ),
        (
            "evt_z2",
            subscription(
                "evt_z2",
                "customer.subscription.updated",
                t,
                &sub,
                &cus,
                "incomplete",
                "professional",
            ),
        ),
        ("evt_z1", checkout("evt_z1", t, &sub, &cus, email, "starter")),
    ];
    for (id, body) in &events {
        env.publish(id, body).await;
    }
    let statuses = [
        wait_event_done(env.pool(), "evt_z3").await,
        wait_event_done(env.pool(), "evt_z2").await,
        wait_event_done(env.pool(), "evt_z1").await,
    ];
    assert_eq!(statuses, ["succeeded", "skipped", "succeeded"]);
    assert_eq!(
        env.attr(email, "subscription_tier").as_deref(),
        Some("enterprise")
    );
    assert_eq!(env.attr(email, "billing_status").as_deref(), Some("active"));
    assert_eq!(
        env.lago(&sub),
        [("active".to_string(), "enterprise_monthly".to_string())]
    );
    env.stop().await;
}

/// An operator rebinds a subscription to another account: Keycloak (both accounts) and Lago
/// follow, and `billing show` says so.
#[tokio::test]
async fn an_operator_rebinds_a_subscription_to_another_account() {
    let env = Env::start(&[]).await;
    let (old, new) = ("old-owner@example.com", "new-owner@example.com");
    env.sandbox.state.add_user(SeedUser::new(old));
    env.sandbox.state.add_user(SeedUser::new(new));
    let (sub, cus, t0) = (env.id("sub"), env.id("cus"), env.t0);
    assert_eq!(
        env.deliver("evt_o1", &checkout("evt_o1", t0, &sub, &cus, old, "professional"))
            .await,
        "succeeded"
    );
    assert_eq!(
        env.attr(old, "subscription_tier").as_deref(),
        Some("professional")
    );

    let out = webhook_tests::webhookctl(
        &env.ctx.env,
        &["billing", "rebind", &sub, "--email", "New-Owner@example.com"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("rebound {sub}: {old} → {new}")),
        "{}",
        out.stdout
    );
    let pool = env.pool().clone();
    wait_for(
        "the replayed checkout to be applied",
        Duration::from_secs(60),
        || {
            let pool = pool.clone();
            async move {
                let (status, attempts): (String, i32) =
                    sqlx::query_as("SELECT status, attempts FROM webhook_events WHERE event_id = 'evt_o1'")
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                (status == "succeeded" && attempts == 2).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        env.attr(new, "subscription_tier").as_deref(),
        Some("professional")
    );
    assert_eq!(env.attr(old, "subscription_tier").as_deref(), Some("free"));
    let live: Vec<Value> = env
        .sandbox
        .subscriptions(&sub)
        .into_iter()
        .filter(|s| s["status"] == "active")
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0]["external_customer_id"], json!(new));

    let out = webhook_tests::webhookctl(&env.ctx.env, &["billing", "show", &sub, "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let shown: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(shown["account"]["email"], json!(new));
    assert_eq!(shown["account"]["bound_by"], json!("operator"));
    assert_eq!(shown["lago"]["customer"], json!(new));
    // Bad input changes nothing and says what to do.
    let out =
        webhook_tests::webhookctl(&env.ctx.env, &["billing", "rebind", &sub, "--email", "nobody"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not an email address"), "{}", out.stderr);
    let out = webhook_tests::webhookctl(&env.ctx.env, &["billing", "show", "sub_unknown"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("no billing state for subscription sub_unknown"),
        "{}",
        out.stderr
    );
    env.stop().await;
}

/// Subscriptions and customers the worker knew before the billing state (migration 0006) keep
/// their account: bound from their checkout's audit row, never from the customer's old email
/// (which the old worker overwrote with invoices' billing contacts).
#[tokio::test]
async fn the_migration_binds_what_the_old_worker_provisioned() {
    use sqlx::Connection;
    let name = format!("webhooks_test_mig_{}", &uuid_suffix());
    let mut admin = sqlx::PgConnection::connect(&webhook_tests::admin_database_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = webhook_store::with_database_name(&webhook_tests::admin_database_url(), &name);
    let pool = PgPool::connect(&url).await.unwrap();
    webhook_store::MIGRATOR.run_to(5, &pool).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO stripe_subscriptions (subscription_id, last_event_created, last_event_id, last_event_type, status, tier, lease_owner, lease_until)
         VALUES ('sub_old', 100, 'evt_up', 'customer.subscription.updated', 'active', 'enterprise', 'evt_up', now() + interval '1 hour'),
                ('sub_gone', 90, 'evt_del', 'customer.subscription.deleted', 'canceled', 'free', NULL, NULL);
         INSERT INTO stripe_customers (customer_id, email) VALUES ('cus_1', 'finance@example.com');
         INSERT INTO audit_logs (event_type, subject, details) VALUES
           ('subscription.created', 'dev@example.com', '{\"stripe_event_id\": \"evt_c\", \"stripe_subscription_id\": \"sub_old\", \"stripe_customer_id\": \"cus_1\", \"keycloak_user_id\": \"kc-1\", \"plan\": \"starter_monthly\", \"billing_cycle\": \"monthly\"}'),
           ('subscription.updated', 'dev@example.com', '{\"stripe_event_id\": \"evt_up\", \"stripe_subscription_id\": \"sub_old\", \"plan\": \"enterprise_monthly\", \"billing_cycle\": \"monthly\"}'),
           ('subscription.created', 'gone@example.com', '{\"stripe_event_id\": \"evt_g\", \"stripe_subscription_id\": \"sub_gone\", \"stripe_customer_id\": null, \"keycloak_user_id\": \"kc-2\", \"plan\": \"pro_monthly\"}');",
    )
    .execute(&pool)
    .await
    .unwrap();
    webhook_store::MIGRATOR.run(&pool).await.unwrap();

    let old = webhook_store::billing::subscription(&pool, "sub_old")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.account_id.as_deref(), Some("kc-1"));
    assert_eq!(old.account_email.as_deref(), Some("dev@example.com"));
    assert_eq!(old.bound_by.as_deref(), Some("checkout"));
    assert_eq!(old.customer_id.as_deref(), Some("cus_1"));
    assert_eq!(
        old.plan_code.as_deref(),
        Some("enterprise_monthly"),
        "the newest plan"
    );
    assert_eq!(old.lago_plan_code.as_deref(), Some("enterprise_monthly"));
    assert_eq!(old.lago_customer.as_deref(), Some("dev@example.com"));
    assert_eq!(old.synced_account_id.as_deref(), Some("kc-1"));
    let token: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT lease_token FROM stripe_subscriptions WHERE subscription_id = 'sub_old'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(token, None, "an old lease is dropped");
    let gone = webhook_store::billing::subscription(&pool, "sub_gone")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone.deleted_by.as_deref(), Some("evt_del"));
    assert!(gone.lago_terminated);
    assert_eq!(gone.lago_plan_code, None);
    let customer = webhook_store::billing::customer_account(&pool, "cus_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        customer.account_email, "dev@example.com",
        "not the invoice's billing contact"
    );
    assert_eq!(customer.account_id.as_deref(), Some("kc-1"));

    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

fn uuid_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// The fence itself: once another attempt took an expired lease, the stale attempt's record
/// write, renewal, release and finishing statement change nothing; an operator's rebinding
/// waits for the holder.
#[tokio::test]
async fn a_stale_attempt_writes_nothing_once_its_lease_is_taken() {
    use webhook_store::billing::{self, Rebound};
    use webhook_store::ledger::{self, Fence, Finished};
    let ctx = TestContext::new().await;
    let pool = ctx.pool().await;
    let (a, b, c) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let record = billing::try_lease(&pool, "sub_f", a, 0.5).await.unwrap().unwrap();
    assert!(
        billing::try_lease(&pool, "sub_f", b, 5.0)
            .await
            .unwrap()
            .is_none(),
        "held by a"
    );
    assert!(billing::renew_lease(&pool, "sub_f", a, 1.0).await.unwrap());
    wait_for(
        "a's lease to expire and b to take it",
        Duration::from_secs(10),
        || async {
            billing::try_lease(&pool, "sub_f", b, 30.0)
                .await
                .unwrap()
                .map(|_| ())
        },
    )
    .await;

    let mut stale = record.clone();
    stale.status = Some("active".into());
    assert!(
        !billing::save(&pool, a, &stale).await.unwrap(),
        "a's write is refused"
    );
    assert!(!billing::renew_lease(&pool, "sub_f", a, 30.0).await.unwrap());
    ledger::begin(&pool, "act_f", "evt_f").await.unwrap();
    let details = json!({});
    let row = webhook_store::audit::AuditRow {
        event_type: "subscription.updated",
        subject: "x@example.com",
        details: &details,
    };
    let fence = |token| Fence {
        subscription_id: "sub_f",
        token,
    };
    let finished = ledger::finish_with_audit(&pool, "act_f", "evt_f", &[], &row, Some(fence(a)))
        .await
        .unwrap();
    assert_eq!(finished, Finished::LeaseLost);
    let audits: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_logs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(audits, 0, "a stale attempt writes no audit row");
    billing::release_lease(&pool, "sub_f", a).await.unwrap();
    assert!(
        billing::try_lease(&pool, "sub_f", c, 5.0)
            .await
            .unwrap()
            .is_none(),
        "a's release freed nothing"
    );
    assert!(matches!(
        billing::rebind(&pool, "sub_f", "new@example.com").await.unwrap(),
        Rebound::InFlight
    ));

    assert!(
        billing::save(&pool, b, &stale).await.unwrap(),
        "the holder writes"
    );
    let finished = ledger::finish_with_audit(&pool, "act_f", "evt_f", &[], &row, Some(fence(b)))
        .await
        .unwrap();
    assert!(matches!(finished, Finished::Written(_)));
    billing::release_lease(&pool, "sub_f", b).await.unwrap();
    assert!(matches!(
        billing::rebind(&pool, "sub_f", "new@example.com").await.unwrap(),
        Rebound::Done(_)
    ));
    assert!(matches!(
        billing::rebind(&pool, "sub_unknown", "new@example.com")
            .await
            .unwrap(),
        Rebound::Unknown
    ));
}

/// A second seat bought by the same Stripe customer for another person: the subscription's own
/// `metadata.user_email` binds it before its checkout arrives, so the first buyer never gets
/// the second seat's tier, and Lago never bills them for it.
#[tokio::test]
async fn a_second_seat_named_in_its_metadata_goes_to_its_own_account() {
    let env = Env::start(&[]).await;
    let (a, b) = ("seat-a@example.com", "seat-b@example.com");
    env.sandbox.state.add_user(SeedUser::new(a));
    env.sandbox.state.add_user(SeedUser::new(b));
    let (s1, s2, cus, t0) = (env.id("s1"), env.id("s2"), env.id("cus"), env.t0);
    assert_eq!(
        env.deliver("evt_a1", &checkout("evt_a1", t0, &s1, &cus, a, "starter"))
            .await,
        "succeeded"
    );
    let mut u2: Value = serde_json::from_slice(&subscription(
        "evt_b0",
        "customer.subscription.updated",
        t0 + 10,
        &s2,
        &cus,
        "active",
        "enterprise",
    ))
    .unwrap();
    u2["data"]["object"]["metadata"] = json!({"user_email": b, "tier_id": "enterprise"});
    let u2 = serde_json::to_vec(&u2).unwrap();
    assert_eq!(env.deliver("evt_b0", &u2).await, "succeeded");
    assert_eq!(
        env.attr(a, "subscription_tier").as_deref(),
        Some("starter"),
        "A never gets B's seat"
    );
    assert_eq!(env.attr(b, "subscription_tier").as_deref(), Some("enterprise"));
    assert_eq!(
        env.deliver("evt_b1", &checkout("evt_b1", t0 + 10, &s2, &cus, b, "enterprise"))
            .await,
        "succeeded"
    );
    let subs = env.sandbox.subscriptions(&s2);
    assert!(
        subs.iter().all(|s| s["external_customer_id"] == b),
        "never under A: {subs:?}"
    );
    assert_eq!(env.attr(a, "subscription_tier").as_deref(), Some("starter"));
    env.stop().await;
}

/// A downgrade (Stripe moves the subscription to a cheaper price): Lago schedules it — the
/// current plan stays active until the end of the period, the cheaper one pending as
/// `next_plan_code` — while Keycloak's tier follows Stripe at once (README, "What the
/// pipeline handles"; docs/reliability.md, "What is not covered"). Going back to the current
/// plan cancels the scheduled downgrade.
#[tokio::test]
async fn a_downgrade_is_scheduled_by_lago_while_keycloak_follows_stripe_at_once() {
    let env = Env::start(&[]).await;
    let email = "down@example.com";
    env.sandbox.state.add_user(SeedUser::new(email));
    let (sub, cus, t0) = (env.id("sub"), env.id("cus"), env.t0);
    assert_eq!(
        env.deliver("evt_d1", &checkout("evt_d1", t0, &sub, &cus, email, "enterprise"))
            .await,
        "succeeded"
    );
    let lago_id = env.sandbox.subscriptions(&sub)[0]["lago_id"].clone();
    let updated = "customer.subscription.updated";

    let down = subscription("evt_d2", updated, t0 + 1, &sub, &cus, "active", "starter");
    assert_eq!(env.deliver("evt_d2", &down).await, "succeeded");
    let subs = env.sandbox.subscriptions(&sub);
    let active: Vec<&Value> = subs.iter().filter(|s| s["status"] == "active").collect();
    assert_eq!(active.len(), 1, "{subs:?}");
    assert_eq!(active[0]["lago_id"], lago_id, "the same subscription goes on");
    assert_eq!(active[0]["plan_code"], "enterprise_monthly");
    assert_eq!(active[0]["next_plan_code"], "starter_monthly");
    assert!(active[0]["downgrade_plan_date"].is_string(), "{:?}", active[0]);
    assert_eq!(
        env.lago(&sub),
        [
            ("active".to_string(), "enterprise_monthly".to_string()),
            ("pending".to_string(), "starter_monthly".to_string())
        ]
    );
    assert_eq!(
        env.attr(email, "subscription_tier").as_deref(),
        Some("starter"),
        "Keycloak follows Stripe at once"
    );
    let record = webhook_store::billing::subscription(env.pool(), &sub)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.plan_code.as_deref(), Some("starter_monthly"));
    assert_eq!(record.lago_plan_code.as_deref(), Some("starter_monthly"));
    let row = env.audit("evt_d2").await;
    assert_eq!(row["lago"]["action"], "assigned", "{row}");
    assert_eq!(row["lago"]["plan_code"], "enterprise_monthly", "{row}");
    assert_eq!(row["lago"]["next_plan_code"], "starter_monthly", "{row}");
    assert_eq!(row["tier"], "starter", "{row}");

    // Back to the plan Lago still bills: the scheduled downgrade is canceled.
    let back = subscription("evt_d3", updated, t0 + 2, &sub, &cus, "active", "enterprise");
    assert_eq!(env.deliver("evt_d3", &back).await, "succeeded");
    assert_eq!(
        env.lago(&sub),
        [
            ("active".to_string(), "enterprise_monthly".to_string()),
            ("canceled".to_string(), "starter_monthly".to_string())
        ]
    );
    let active = env
        .sandbox
        .subscriptions(&sub)
        .into_iter()
        .find(|s| s["status"] == "active")
        .unwrap();
    assert_eq!(active["lago_id"], lago_id);
    assert_eq!(active["next_plan_code"], Value::Null);
    assert_eq!(
        env.attr(email, "subscription_tier").as_deref(),
        Some("enterprise")
    );
    assert_eq!(env.sandbox.state.calls(Route::LagoCreateSubscription), 3);
    assert_eq!(
        env.sandbox.state.calls(Route::LagoTerminateSubscription),
        1,
        "the pending downgrade canceled"
    );
    assert_eq!(env.dead_letters().await, 0);
    env.stop().await;
}

/// `[plans.prices]` in the TOML file maps a price by its `lookup_key` (case-sensitive): an
/// update whose price id is not mapped, but whose lookup_key is, provisions the mapped plan,
/// over the price's own metadata and interval.
#[tokio::test]
async fn a_price_mapped_by_its_lookup_key_provisions_the_mapped_plan() {
    let config = std::env::temp_dir().join(format!("webhook-prices-{}.toml", uuid_suffix()));
    std::fs::write(
        &config,
        "[plans.prices]\n\"Team_Plan_2026\" = \"enterprise:yearly\"\n\"team_plan_2026\" = \"professional:monthly\"\n",
    )
    .unwrap();
    let env = Env::start(&[("WEBHOOK_CONFIG", config.to_str().unwrap())]).await;
    std::fs::remove_file(&config).unwrap();
    let email = "lookup@example.com";
    env.sandbox.state.add_user(SeedUser::new(email));
    let (sub, cus, t0) = (env.id("sub"), env.id("cus"), env.t0);
    assert_eq!(
        env.deliver("evt_k1", &checkout("evt_k1", t0, &sub, &cus, email, "starter"))
            .await,
        "succeeded"
    );
    let mut event: Value = serde_json::from_slice(&subscription(
        "evt_k2",
        "customer.subscription.updated",
        t0 + 1,
        &sub,
        &cus,
        "active",
        "starter",
    ))
    .unwrap();
    let price = &mut event["data"]["object"]["items"]["data"][0]["price"];
    price["id"] = json!("price_not_in_the_map");
    price["lookup_key"] = json!("Team_Plan_2026");
    assert_eq!(price["metadata"]["tier_id"], "starter");
    assert_eq!(price["recurring"]["interval"], "month");
    let body = serde_json::to_vec(&event).unwrap();
    assert_eq!(env.deliver("evt_k2", &body).await, "succeeded");

    assert_eq!(
        env.lago(&sub),
        [
            ("terminated".to_string(), "starter_monthly".to_string()),
            ("active".to_string(), "enterprise_yearly".to_string())
        ]
    );
    assert_eq!(
        env.attr(email, "subscription_tier").as_deref(),
        Some("enterprise")
    );
    let record = webhook_store::billing::subscription(env.pool(), &sub)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (record.tier.as_deref(), record.cycle.as_deref()),
        (Some("enterprise"), Some("yearly"))
    );
    let row = env.audit("evt_k2").await;
    assert_eq!(row["plan"], "enterprise_yearly", "{row}");
    env.stop().await;
}
