//! Hostile input against the real services: replays, invalid UTF-8, a flood of forged
//! signatures, and secrets that must never reach the logs.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use webhook_sandbox::{Route, SeedUser};
use webhook_tests::ingest::TestIngest;
use webhook_tests::{
    TEST_SECRET, TestApp, TestContext, bin_path, event_status, rabbit, sign, signed_event, wait_for,
};

#[tokio::test]
async fn a_processed_event_resent_with_a_fresh_signature_is_a_duplicate_with_no_effects() {
    let mut app = TestApp::without_worker(&[]).await;
    app.sandbox.state.add_user(SeedUser::new("again@example.com"));
    let ingest = app.ingest().await;
    app.start_worker().await;

    let event = signed_event("checkout.session.completed", "again@example.com");
    assert_eq!(ingest.post_event(&event).await.status(), 200);
    wait_for("processed", Duration::from_secs(30), || async {
        (event_status(app.pool(), &event.event_id).await.as_deref() == Some("succeeded")).then_some(())
    })
    .await;
    let calls = app.sandbox.state.calls(Route::LagoCreateSubscription);
    // No consumer from here on: a duplicate wrongly queued would stay in the queue to be seen
    // (a running worker would consume it, and the ledger hide it).
    app.stop_worker().await;

    // The captured request replayed after the tolerance: refused.
    let stale = sign(&event.body, webhook_core::unix_now() - 400);
    let resp = ingest.post(event.body.clone(), Some(&stale)).await;
    assert_eq!(resp.status(), 400);
    // The same body freshly signed (as Stripe's own retry would be): a duplicate, nothing queued.
    let fresh = sign(&event.body, webhook_core::unix_now());
    let body: Value = ingest
        .post(event.body.clone(), Some(&fresh))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "duplicate");
    assert_eq!(
        rabbit::all_messages(&app.topo.work_queue).await,
        0,
        "nothing queued for the duplicate"
    );
    assert_eq!(
        app.sandbox.state.calls(Route::LagoCreateSubscription),
        calls,
        "no downstream call"
    );
    let audits: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_logs")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(audits, 1);

    ingest.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn invalid_utf8_and_a_flood_of_forged_signatures_change_nothing_and_valid_events_still_pass() {
    let ctx = TestContext::new().await;
    let settings = ctx.settings();
    let topo = rabbit::topology(&settings);
    let ingest = TestIngest::spawn(settings).await.ready().await;
    let pool = ctx.pool().await;

    let bad = b"{\"id\":\"evt_\xff\xfe\",\"type\":\"checkout.session.completed\"}".to_vec();
    let resp = ingest
        .post(bad.clone(), Some(&sign(&bad, webhook_core::unix_now())))
        .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_json");

    // 400 forged requests and 20 genuine ones, all at once.
    let genuine: Vec<_> = (0..20)
        .map(|i| signed_event("checkout.session.completed", &format!("f{i}@example.com")))
        .collect();
    let forged_body = signed_event("checkout.session.completed", "x@example.com").body;
    let forged_sig =
        webhook_core::signature::sign_header("whsec_forged", webhook_core::unix_now(), &forged_body);
    let forged =
        futures_util::future::join_all((0..400).map(|_| ingest.post(forged_body.clone(), Some(&forged_sig))));
    let valid = futures_util::future::join_all(genuine.iter().map(|e| ingest.post_event(e)));
    let (forged, valid) =
        tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(forged, valid) })
            .await
            .expect("the service stays responsive under a flood of forged signatures");
    assert!(forged.iter().all(|r| r.status() == 400));
    assert!(valid.iter().all(|r| r.status() == 200));
    assert_eq!(rabbit::drain(&topo.work_queue).await.len(), 20);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 20, "only the genuine events are stored");

    ingest.stop().await;
}

#[tokio::test]
async fn secrets_never_appear_in_the_logs_of_a_full_run() {
    let client_secret = "kc-client-secret-91ab44f0";
    let config = webhook_sandbox::SandboxConfig {
        client_secret: Some(client_secret.into()),
        ..Default::default()
    };
    let app = TestApp::without_worker_in(config, &[]).await;
    app.sandbox.state.add_user(SeedUser::new("logs@example.com"));
    let keycloak_password = "kc-pass-7f3a9c2e";
    let lago_key = "lago-key-5b1d8e40";
    // A wrong Lago key: the worker logs Lago's 401 and its advice, never the key.
    let mut env: HashMap<String, String> = app.env(&[
        ("KEYCLOAK_ADMIN_PASSWORD", keycloak_password),
        ("KEYCLOAK_CLIENT_SECRET", client_secret),
        ("LAGO_API_KEY", lago_key),
        ("RUST_LOG", "debug"),
        ("LOG_FORMAT", "json"),
        ("WORKER_RETRY_SCHEDULE", "1s"),
    ]);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    env.insert("INGEST_BIND".into(), format!("127.0.0.1:{port}"));
    let spawn = |bin: &str| {
        tokio::process::Command::new(bin_path(bin))
            .env_clear()
            .envs(&env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let ingest = spawn("webhook-ingest");
    let worker = spawn("webhook-worker");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    wait_for("ingest ready", Duration::from_secs(30), || async {
        (client.get(format!("{url}/readyz")).send().await.ok()?.status() == 200).then_some(())
    })
    .await;
    let event = signed_event("checkout.session.completed", "logs@example.com");
    let post = |body: Vec<u8>, sig: String| {
        client
            .post(format!("{url}/webhooks/stripe"))
            .header("content-type", "application/json")
            .header("stripe-signature", sig)
            .body(body)
            .send()
    };
    assert_eq!(
        post(event.body.clone(), event.signature.clone())
            .await
            .unwrap()
            .status(),
        200
    );
    let forged = webhook_core::signature::sign_header("whsec_other", webhook_core::unix_now(), &event.body);
    assert_eq!(post(event.body.clone(), forged).await.unwrap().status(), 400);
    wait_for(
        "the event to be dead-lettered (Lago refuses the key)",
        Duration::from_secs(30),
        || async {
            (event_status(app.pool(), &event.event_id).await.as_deref() == Some("dead_lettered"))
                .then_some(())
        },
    )
    .await;

    let mut logs = String::new();
    for mut child in [ingest, worker] {
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let out = tokio::time::timeout(Duration::from_secs(30), async {
            let status = child.wait().await.unwrap();
            let mut text = String::new();
            use tokio::io::AsyncReadExt;
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut text)
                .await
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut text)
                .await
                .unwrap();
            (status, text)
        })
        .await
        .expect("exits on SIGTERM");
        assert!(out.0.success(), "graceful exit: {:?}", out.0);
        logs.push_str(&out.1);
    }
    assert!(logs.contains("stripe webhook"), "the request log lines are there");
    assert!(
        logs.contains("LAGO_API_KEY"),
        "the worker explains the Lago failure"
    );
    assert!(
        app.sandbox.state.calls(Route::KeycloakSearchUsers) >= 1,
        "Keycloak (client_credentials) was used"
    );
    for secret in [
        TEST_SECRET,
        keycloak_password,
        client_secret,
        lago_key,
        "whsec_other",
    ] {
        assert!(!logs.contains(secret), "a secret leaked into the logs: {secret}");
    }
    // Not even the payload: the buyer's email is in the body, never in the ingest's lines.
    let ingest_lines: Vec<&str> = logs.lines().filter(|l| l.contains("stripe webhook")).collect();
    assert!(
        ingest_lines.iter().all(|l| !l.contains("logs@example.com")),
        "{ingest_lines:?}"
    );

    app.stop().await;
}
