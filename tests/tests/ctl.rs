//! `webhookctl` against the real broker and database: every dlq command and filter, the event
//! history, replay, retention, and the safety of an interrupted requeue.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use webhook_sandbox::SeedUser;
use webhook_tests::worker::{TestSandbox, TestWorker, binary_env, worker_settings};
use webhook_tests::{
    TestContext, event_status, rabbit, signed_event, wait_event_status, wait_for, webhookctl,
};

const LONG: Duration = Duration::from_secs(60);

async fn wait_depth(queue: &str, want: u32) {
    wait_for(&format!("{queue} to hold {want}"), LONG, || async {
        (rabbit::depth(queue).await == want).then_some(())
    })
    .await
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[tokio::test]
async fn dlq_commands_filters_history_and_replay() {
    let ctx = TestContext::new().await;
    let sandbox = TestSandbox::spawn().await;
    let settings = worker_settings(&ctx, &sandbox, &[("WORKER_RETRY_SCHEDULE", "1s")]);
    let topo = rabbit::topology(&settings);
    let worker = TestWorker::spawn(settings).await.ready().await;
    let pool = ctx.pool().await;
    let env: HashMap<String, String> = binary_env(&ctx, &sandbox, &[("WORKER_RETRY_SCHEDULE", "1s")]);

    // Four dead letters: two for a user that does not exist yet, one for another, one garbage.
    let a1 = signed_event("checkout.session.completed", "late1@example.com");
    let a2 = signed_event("checkout.session.completed", "late1@example.com");
    let b1 = signed_event("checkout.session.completed", "late2@example.com");
    for e in [&a1, &a2, &b1] {
        rabbit::publish(&topo.exchange, "checkout.session.completed", &e.body, &e.event_id).await;
    }
    rabbit::publish(
        &topo.exchange,
        "checkout.session.completed",
        b"\xff not json",
        "garbage-1",
    )
    .await;
    wait_depth(&topo.dead_letter_queue, 4).await;
    for e in [&a1, &a2, &b1] {
        wait_event_status(&pool, &e.event_id, "dead_lettered").await;
    }

    // list
    let out = webhookctl(&env, &["dlq", "list", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let listed = json_lines(&out.stdout);
    assert_eq!(listed.len(), 4, "{out:?}");
    let a1_row = listed
        .iter()
        .find(|v| v["event_id"] == a1.event_id.as_str())
        .expect("a1 listed");
    assert_eq!(a1_row["failed_step"], "keycloak_lookup");
    assert_eq!(a1_row["error_kind"], "transient");
    assert_eq!(a1_row["attempts"], 1);
    assert!(a1_row["error"].as_str().unwrap().contains("late1@example.com"));
    assert!(!a1_row["dead_lettered_at"].as_str().unwrap().is_empty());
    for key in [
        "event_type",
        "attempts",
        "failed_step",
        "error",
        "error_kind",
        "dead_lettered_at",
    ] {
        assert!(a1_row.get(key).is_some(), "{key}");
    }
    let out = webhookctl(&env, &["dlq", "list", "--limit", "2"]).await;
    assert!(out.stdout.contains("4 dead letters (2 shown)"), "{out:?}");
    assert_eq!(
        rabbit::depth(&topo.dead_letter_queue).await,
        4,
        "listing changes nothing"
    );

    // Bad usage → exit 2, nothing touched.
    let out = webhookctl(&env, &["dlq", "requeue"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--all"), "{out:?}");
    let out = webhookctl(&env, &["dlq", "purge"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    let out = webhookctl(&env, &["dlq", "frobnicate"]).await;
    assert_eq!(out.code, 2, "{out:?}");

    // Dry run: shows, changes nothing.
    let out = webhookctl(&env, &["dlq", "requeue", "--event-id", &a1.event_id, "--dry-run"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("would requeue 1 messages"), "{out:?}");
    assert_eq!(rabbit::depth(&topo.dead_letter_queue).await, 4);

    // Fix the cause, requeue by error text: exactly the two late1 messages go back and succeed.
    sandbox.state.add_user(SeedUser::new("late1@example.com"));
    let out = webhookctl(&env, &["dlq", "requeue", "--error-contains", "LATE1@example.com"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("requeued 2 messages"), "{out:?}");
    wait_event_status(&pool, &a1.event_id, "succeeded").await;
    wait_event_status(&pool, &a2.event_id, "succeeded").await;
    assert_eq!(
        rabbit::depth(&topo.dead_letter_queue).await,
        2,
        "non-matching dead letters untouched"
    );

    // A filter that matches nothing.
    let out = webhookctl(
        &env,
        &[
            "dlq",
            "requeue",
            "--type",
            "customer.subscription.updated",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(json_lines(&out.stdout)[0]["requeued"], 0);
    assert_eq!(rabbit::depth(&topo.dead_letter_queue).await, 2);

    // Drain one by id to a file, byte for byte; then restore it (worker stopped to inspect).
    let before: Vec<_> = rabbit::peek(&topo.dead_letter_queue).await;
    let (b1_body, b1_headers) = before
        .iter()
        .find(|(body, _)| body == &b1.body)
        .cloned()
        .expect("b1 dead letter");
    let dir = std::env::temp_dir().join(format!("webhookctl-{}", ctx.id));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dlq.jsonl");
    let out = webhookctl(
        &env,
        &[
            "dlq",
            "drain",
            "--out",
            file.to_str().unwrap(),
            "--event-id",
            &b1.event_id,
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("drained 1 messages"), "{out:?}");
    assert_eq!(rabbit::depth(&topo.dead_letter_queue).await, 1);
    let out = webhookctl(&env, &["dlq", "drain", "--out", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 1, "an existing archive is never overwritten: {out:?}");
    assert_eq!(rabbit::depth(&topo.dead_letter_queue).await, 1);

    worker.stop().await;
    let out = webhookctl(&env, &["dlq", "restore", "--from", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("restored 1 messages"), "{out:?}");
    let restored = rabbit::drain(&topo.work_queue).await;
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0].delivery.data, b1_body, "payload byte for byte");
    let restored_headers = restored[0].delivery.properties.headers().clone().unwrap();
    for (k, v) in b1_headers.unwrap().inner() {
        // Ours are kept; the retry count restarts; the broker's delivery counter is its own.
        if !["x-retry-attempt", "x-delivery-count"].contains(&k.as_str()) {
            assert_eq!(restored_headers.inner().get(k), Some(v), "header {k} kept");
        }
    }
    assert_eq!(
        rabbit::header(&restored[0], "x-retry-attempt").as_deref(),
        Some("0"),
        "retry count reset"
    );
    assert_eq!(
        restored[0]
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str()),
        Some(b1.event_id.as_str())
    );
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "not an archive\n").unwrap();
    let out = webhookctl(&env, &["dlq", "restore", "--from", bad.to_str().unwrap()]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("line 1"), "{out:?}");

    // Purge the garbage one.
    let out = webhookctl(&env, &["dlq", "purge", "--yes", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(json_lines(&out.stdout)[0]["purged"], 1);
    assert_eq!(rabbit::depth(&topo.dead_letter_queue).await, 0);

    // History.
    let out = webhookctl(&env, &["events", "show", &a1.event_id, "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let shown: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(shown["status"], "succeeded");
    assert_eq!(shown["place"], "done");
    assert_eq!(shown["attempts"], 3);
    assert_eq!(shown["steps"].as_array().unwrap().len(), 5);
    let actions: Vec<&str> = shown["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["retry_scheduled", "dead_lettered"]);
    let out = webhookctl(&env, &["events", "show", &a1.event_id]).await;
    assert!(
        out.stdout.contains("succeeded") && out.stdout.contains("keycloak_attributes"),
        "{out:?}"
    );
    let out = webhookctl(&env, &["events", "show", "evt_nope"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("events list"), "{out:?}");
    let out = webhookctl(
        &env,
        &[
            "events",
            "list",
            "--status",
            "succeeded",
            "--since",
            "1h",
            "--json",
        ],
    )
    .await;
    let ids: Vec<String> = json_lines(&out.stdout)
        .iter()
        .map(|v| v["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        ids.contains(&a1.event_id) && ids.contains(&a2.event_id) && !ids.contains(&b1.event_id),
        "{ids:?}"
    );
    assert_eq!(
        webhookctl(&env, &["events", "list", "--status", "weird"])
            .await
            .code,
        2
    );

    // Retention.
    assert_eq!(
        webhookctl(&env, &["events", "prune", "--older-than", "1d"])
            .await
            .code,
        2
    );
    let out = webhookctl(&env, &["events", "prune", "--dry-run"]).await;
    assert!(
        out.stdout.contains("would prune 0 events older than 30d"),
        "{out:?}"
    );
    sqlx::query("UPDATE webhook_events SET received_at = now() - interval '40 days' WHERE event_id = $1")
        .bind(&a2.event_id)
        .execute(&pool)
        .await
        .unwrap();
    let out = webhookctl(&env, &["events", "prune"]).await;
    assert!(out.stdout.contains("pruned 1 events"), "{out:?}");
    assert_eq!(event_status(&pool, &a2.event_id).await, None);

    // Replay: published again, and the ledger makes it change nothing.
    let worker = TestWorker::spawn(worker_settings(&ctx, &sandbox, &[]))
        .await
        .ready()
        .await;
    let out = webhookctl(&env, &["replay", &a1.event_id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("replayed {}", a1.event_id)),
        "{out:?}"
    );
    wait_event_status(&pool, &a1.event_id, "succeeded").await;
    let audits: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_logs WHERE subject = 'late1@example.com'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        audits, 2,
        "a1 and a2 are two checkout sessions: one audit row each, the replay added none"
    );

    worker.stop().await;
    sandbox.stop().await;
    let _ = std::fs::remove_dir_all(dir);
    ctx.cleanup().await;
}

#[tokio::test]
async fn a_requeue_of_1000_killed_halfway_then_rerun_processes_every_message_exactly_once() {
    const N: usize = 1000;
    let ctx = TestContext::new().await;
    let sandbox = TestSandbox::spawn().await;
    let settings = worker_settings(&ctx, &sandbox, &[("WORKER_CONCURRENCY", "32")]);
    let topo = rabbit::topology(&settings);
    let env = binary_env(&ctx, &sandbox, &[]);
    let pool = ctx.pool().await;
    // Topology and migrations, without a worker yet.
    assert_eq!(webhookctl(&env, &["setup"]).await.code, 0);

    let events: Vec<_> = (0..N)
        .map(|i| signed_event("checkout.session.completed", &format!("bulk{i}@example.com")))
        .collect();
    let messages: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|e| (e.event_id.clone(), e.body.clone()))
        .collect();
    rabbit::publish_dead_letters(
        &topo.dead_letter_exchange,
        &messages,
        "no Keycloak user has the email (cause now fixed)",
    )
    .await;
    wait_depth(&topo.dead_letter_queue, N as u32).await;
    for i in 0..N {
        sandbox
            .state
            .add_user(SeedUser::new(format!("bulk{i}@example.com")));
    }

    // Start a requeue of everything and kill it (SIGKILL) about halfway.
    let mut child = tokio::process::Command::new(webhook_tests::bin_path("webhookctl"))
        .env_clear()
        .envs(&env)
        .args(["dlq", "requeue", "--all"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("half of the dead letters to be requeued", LONG, || async {
        (rabbit::depth(&topo.work_queue).await >= (N / 2) as u32).then_some(())
    })
    .await;
    child.start_kill().unwrap();
    let _ = child.wait().await;
    // Every message is in the DLQ or on the work queue (or, at most for the one in flight, both).
    // The one the killed requeue had taken but not acked counts as ready again only once the
    // broker has seen its connection close: wait for that (a lost message never comes back).
    let (moved, left) = wait_for(
        "every message to be in the DLQ or on the work queue",
        LONG,
        || async {
            let moved = rabbit::depth(&topo.work_queue).await as usize;
            let left = rabbit::depth(&topo.dead_letter_queue).await as usize;
            (moved + left >= N).then_some((moved, left))
        },
    )
    .await;
    assert!(moved < N, "killed before the end ({moved} moved, {left} left)");

    // Run it again to completion.
    let out = webhookctl(&env, &["dlq", "requeue", "--all"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(rabbit::depth(&topo.dead_letter_queue).await, 0);

    // Process: every event's effects exactly once.
    let worker = TestWorker::spawn(settings).await.ready().await;
    wait_for(
        "every requeued event to succeed",
        Duration::from_secs(240),
        || async {
            let done: i64 =
                sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE status = 'succeeded'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (done as usize == N && rabbit::depth(&topo.work_queue).await == 0).then_some(())
        },
    )
    .await;
    let audits: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_logs")
        .fetch_one(&pool)
        .await
        .unwrap();
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT subject) FROM audit_logs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((audits, distinct), (N as i64, N as i64));
    let subs = sandbox.state.snapshot()["subscriptions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(subs, N, "one Lago subscription per event");
    assert_eq!(rabbit::depth(&topo.dead_letter_queue).await, 0);

    worker.stop().await;
    sandbox.stop().await;
    ctx.cleanup().await;
}
