//! `webhookctl` against the real broker and database: every dlq command and filter, the event
//! history, replay (its order of status write and publish), retention, the safety of an
//! interrupted requeue, the memory bound of a requeue of 100,000 dead letters, and restoring a
//! damaged archive.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use webhook_amqp::dead_letters::PREFETCH;
use webhook_sandbox::SeedUser;
use webhook_tests::{
    Output, TestApp, TestContext, event_status, rabbit, signed_event, wait_event_status, wait_for, webhookctl,
};

const LONG: Duration = Duration::from_secs(60);

async fn wait_depth(queue: &str, want: u32) {
    wait_for(&format!("{queue} to hold {want}"), LONG, || async {
        (rabbit::depth(queue).await == want).then_some(())
    })
    .await
}

/// Jobs the worker at `base_url` has brought to a final outcome (succeeded, skipped or
/// dead-lettered), from its `webhook_worker_jobs_total`: one per message it settled for good
/// (a retry or a message handed back gets its final outcome at a later delivery).
async fn final_outcomes(base_url: &str) -> usize {
    let text = reqwest::get(format!("{base_url}/metrics"))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics is text");
    text.lines()
        .filter(|l| l.starts_with("webhook_worker_jobs_total{"))
        .filter(|l| {
            ["succeeded", "skipped", "dead_lettered"]
                .iter()
                .any(|o| l.contains(&format!("outcome=\"{o}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as usize
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[tokio::test]
async fn dlq_commands_filters_history_and_replay() {
    let mut app = TestApp::spawn_with(&[("WORKER_RETRY_SCHEDULE", "1s")]).await;
    let env: HashMap<String, String> = app.env(&[("WORKER_RETRY_SCHEDULE", "1s")]);

    // Four dead letters: two for a user that does not exist yet, one for another, one garbage.
    let a1 = signed_event("checkout.session.completed", "late1@example.com");
    let a2 = signed_event("checkout.session.completed", "late1@example.com");
    let b1 = signed_event("checkout.session.completed", "late2@example.com");
    for e in [&a1, &a2, &b1] {
        app.publish(&e.body).await;
    }
    rabbit::publish(
        &app.topo.exchange,
        "checkout.session.completed",
        b"\xff not json",
        "garbage-1",
    )
    .await;
    wait_depth(&app.topo.dead_letter_queue, 4).await;
    for e in [&a1, &a2, &b1] {
        wait_event_status(app.pool(), &e.event_id, "dead_lettered").await;
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
        rabbit::all_messages(&app.topo.dead_letter_queue).await,
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
    assert_eq!(rabbit::all_messages(&app.topo.dead_letter_queue).await, 4);

    // Fix the cause, requeue by error text: exactly the two late1 messages go back and succeed.
    app.sandbox.state.add_user(SeedUser::new("late1@example.com"));
    let out = webhookctl(&env, &["dlq", "requeue", "--error-contains", "LATE1@example.com"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("requeued 2 messages"), "{out:?}");
    wait_event_status(app.pool(), &a1.event_id, "succeeded").await;
    wait_event_status(app.pool(), &a2.event_id, "succeeded").await;
    assert_eq!(
        rabbit::all_messages(&app.topo.dead_letter_queue).await,
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
    assert_eq!(rabbit::all_messages(&app.topo.dead_letter_queue).await, 2);

    // Drain one by id to a file, byte for byte; then restore it (worker stopped to inspect).
    let before: Vec<_> = rabbit::peek(&app.topo.dead_letter_queue).await;
    let (b1_body, b1_headers) = before
        .iter()
        .find(|(body, _)| body == &b1.body)
        .cloned()
        .expect("b1 dead letter");
    let dir = std::env::temp_dir().join(format!("webhookctl-{}", app.ctx.id));
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
    assert_eq!(rabbit::all_messages(&app.topo.dead_letter_queue).await, 1);
    let out = webhookctl(&env, &["dlq", "drain", "--out", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 1, "an existing archive is never overwritten: {out:?}");
    assert_eq!(rabbit::all_messages(&app.topo.dead_letter_queue).await, 1);

    app.stop_worker().await;
    let out = webhookctl(&env, &["dlq", "restore", "--from", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("restored 1 messages"), "{out:?}");
    let restored = rabbit::drain(&app.topo.work_queue).await;
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
    assert_eq!(rabbit::all_messages(&app.topo.dead_letter_queue).await, 0);

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
        .execute(app.pool())
        .await
        .unwrap();
    let out = webhookctl(&env, &["events", "prune"]).await;
    assert!(out.stdout.contains("pruned 1 events"), "{out:?}");
    assert_eq!(event_status(app.pool(), &a2.event_id).await, None);

    // Replay: published again, and the ledger makes it change nothing.
    app.set_worker_settings(&[]);
    app.start_worker().await;
    let out = webhookctl(&env, &["replay", &a1.event_id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("replayed {}", a1.event_id)),
        "{out:?}"
    );
    wait_event_status(app.pool(), &a1.event_id, "succeeded").await;
    let audits: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_logs WHERE subject = 'late1@example.com'")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(
        audits, 2,
        "a1 and a2 are two checkout sessions: one audit row each, the replay added none"
    );

    app.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A requeue killed (SIGKILL) halfway, then run again: every message ends on the work queue or
/// in the DLQ, some possibly in both (harmless, and at most the requeue's window of unsettled
/// messages: more is a doubled message), the second run moves or keeps each message it finds
/// once, the worker settles every message once, and each event's effects happen once.
/// The 1,000 events are spread among 20,000 dead letters the filter skips, so the scan takes
/// seconds (the kill lands halfway, not after the end) and is killed while it copies skipped
/// messages to the DLQ's tail: none of them may be lost either.
#[tokio::test]
async fn a_requeue_of_1000_killed_halfway_then_rerun_processes_every_message_exactly_once() {
    const N: usize = 1000;
    const SKIPPED: usize = 20_000;
    const CHUNKS: usize = 10;
    let mut app = TestApp::without_worker(&[("WORKER_CONCURRENCY", "32")]).await;
    let env = app.env(&[]);
    // Topology and migrations, without a worker yet.
    assert_eq!(webhookctl(&env, &["setup"]).await.code, 0);

    let events: Vec<_> = (0..N)
        .map(|i| signed_event("checkout.session.completed", &format!("bulk{i}@example.com")))
        .collect();
    let messages: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|e| (e.event_id.clone(), e.body.clone()))
        .collect();
    for (c, chunk) in messages.chunks(N / CHUNKS).enumerate() {
        rabbit::publish_dead_letters(
            &app.topo.dead_letter_exchange,
            chunk,
            "no Keycloak user has the email (cause now fixed)",
        )
        .await;
        let per = SKIPPED / CHUNKS;
        rabbit::publish_many_dead_letters(
            &app.topo.dead_letter_exchange,
            c * per..(c + 1) * per,
            512,
            |_| "invoice.paid",
        )
        .await;
    }
    wait_depth(&app.topo.dead_letter_queue, (N + SKIPPED) as u32).await;
    for i in 0..N {
        app.sandbox
            .state
            .add_user(SeedUser::new(format!("bulk{i}@example.com")));
    }

    // Start a requeue of the checkouts and kill it (SIGKILL) about halfway.
    let requeue = ["dlq", "requeue", "--type", "checkout.session.completed"];
    let mut child = tokio::process::Command::new(webhook_tests::bin_path("webhookctl"))
        .env_clear()
        .envs(&env)
        .args(requeue)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("half of the dead letters to be requeued", LONG, || async {
        (rabbit::depth(&app.topo.work_queue).await >= (N / 2) as u32).then_some(())
    })
    .await;
    child.start_kill().unwrap();
    let _ = child.wait().await;
    // What the killed requeue held unacked goes back to the DLQ once the broker has seen its
    // connection close, in the same step as its consumer goes: `all_messages` waits for that
    // (a lost message never comes back).
    // The broker still enqueues what it had read from the killed connection for a moment after
    // the kill (a quorum queue's count follows its log): count once both counts have held still
    // for three seconds (a pause of a busy broker is shorter; a later check of the totals fails
    // if one was not).
    let deadline = std::time::Instant::now() + LONG;
    let mut last = None;
    let mut still_since = std::time::Instant::now();
    let (moved, left) = loop {
        let now = (
            rabbit::all_messages(&app.topo.work_queue).await as usize,
            rabbit::all_messages(&app.topo.dead_letter_queue).await as usize,
        );
        if last != Some(now) {
            last = Some(now);
            still_since = std::time::Instant::now();
        } else if still_since.elapsed() >= Duration::from_secs(3) {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the counts did not settle after the kill: {now:?} (moved, left)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(moved < N, "killed before the end ({moved} moved, {left} left)");
    // Every message is in the DLQ or on the work queue; only those whose copy was confirmed but
    // whose ack the broker had not processed when the requeue was killed are in both. That is
    // more than its window of unconfirmed publishes (WINDOW): acks it had sent can still be in
    // its buffers or its socket's (a SIGKILL drops them), so the bound is what the broker lets
    // it hold unacked (PREFETCH). More is a message doubled.
    let doubled = (moved + left)
        .checked_sub(N + SKIPPED)
        .unwrap_or_else(|| panic!("messages lost: {moved} moved + {left} left < {N} + {SKIPPED}"));
    eprintln!("requeue killed: {moved} moved, {left} left, {doubled} in both places");
    // The first run put each message on the work queue once (a copy there twice is a doubled
    // message, whatever the counts say).
    let on_queue: std::collections::HashSet<String> = rabbit::peek(&app.topo.work_queue)
        .await
        .iter()
        .map(|(body, _)| {
            let v: Value = serde_json::from_slice(body).unwrap();
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(on_queue.len(), moved, "each message moved once by the first run");
    wait_depth(&app.topo.work_queue, moved as u32).await; // the peeked ones back
    assert!(
        doubled <= usize::from(PREFETCH),
        "{doubled} messages in both places ({moved} moved + {left} left): at most {PREFETCH} may be"
    );

    // Run it again to completion: it moves every checkout left in the DLQ to the work queue,
    // each once.
    let out = webhookctl(
        &env,
        &["dlq", "requeue", "--type", "checkout.session.completed", "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let requeued = json_lines(&out.stdout)[0]["requeued"].as_u64().unwrap() as usize;
    let on_work_queue = rabbit::all_messages(&app.topo.work_queue).await as usize;
    assert_eq!(
        on_work_queue,
        moved + requeued,
        "the work queue holds what the first run moved and what the second says it requeued"
    );

    // The DLQ holds every skipped message (some may be there twice, copied but not yet removed
    // when the first run was killed), and nothing else.
    let dir = std::env::temp_dir().join(format!("webhookctl-{}", app.ctx.id));
    std::fs::create_dir_all(&dir).unwrap();
    let archive = dir.join("left.jsonl");
    let out = webhookctl(&env, &["dlq", "drain", "--out", archive.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let mut left_ids = std::collections::HashSet::new();
    let mut kept = 0;
    for line in std::fs::read_to_string(&archive).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            v["event_type"], "invoice.paid",
            "only skipped messages are left: {line}"
        );
        left_ids.insert(v["event_id"].as_str().unwrap().to_owned());
        kept += 1;
    }
    assert_eq!(left_ids.len(), SKIPPED, "every skipped message is still there");
    // Nothing doubled by the second run: what it found in the DLQ is now on the work queue or
    // kept, once; the copies in two places are still only those the kill left.
    assert_eq!(
        requeued + kept,
        left,
        "the second run moved or kept each of the {left} messages it found once"
    );
    assert_eq!(
        (on_work_queue - N) + (kept - SKIPPED),
        doubled,
        "no message doubled beyond those the kill left in two places"
    );

    // Process: every message on the work queue settled once, every event's effects once.
    app.start_worker().await;
    let worker_url = app.worker_url();
    let settled = wait_for(
        "every requeued event to succeed and every message on the work queue to be settled",
        Duration::from_secs(240),
        || async {
            let done: i64 =
                sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE status = 'succeeded'")
                    .fetch_one(app.pool())
                    .await
                    .unwrap();
            let settled = final_outcomes(&worker_url).await;
            (done as usize == N && settled >= on_work_queue).then_some(settled)
        },
    )
    .await;
    app.stop_worker().await;
    assert_eq!(
        settled, on_work_queue,
        "one final outcome per message on the work queue, no more"
    );
    assert_eq!(
        rabbit::all_messages(&app.topo.work_queue).await,
        0,
        "nothing left in flight"
    );
    let audits: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_logs")
        .fetch_one(app.pool())
        .await
        .unwrap();
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT subject) FROM audit_logs")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!((audits, distinct), (N as i64, N as i64));
    let subs = app.sandbox.state.snapshot()["subscriptions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(subs, N, "one Lago subscription per event");
    assert_eq!(rabbit::all_messages(&app.topo.dead_letter_queue).await, 0);

    app.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs `webhookctl` (exactly this environment) and samples its peak resident memory (`VmHWM` of
/// /proc/PID/status, a high-water mark kept by the kernel) every 10 ms until it exits. Returns
/// what it printed, how it exited, and the peak in KiB: the last sample before the exit, which
/// misses at most growth in the final 10 ms (the command is then closing its connections).
/// Fails as soon as the peak passes `bound_kib` (the process is killed), or at `timeout`.
async fn webhookctl_peak_rss(
    env: &HashMap<String, String>,
    args: &[&str],
    bound_kib: u64,
    timeout: Duration,
) -> (Output, u64) {
    use tokio::io::AsyncReadExt;
    let mut child = tokio::process::Command::new(webhook_tests::bin_path("webhookctl"))
        .env_clear()
        .envs(env)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run webhookctl");
    let pid = child.id().expect("a running child has a pid");
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s).await;
        s
    });
    let err_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let vm_hwm = || -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let started = tokio::time::Instant::now();
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(kib) = vm_hwm() {
            peak_kib = peak_kib.max(kib);
        }
        assert!(
            peak_kib <= bound_kib,
            "webhookctl {args:?} reached {} MiB resident after {:?}, over the {} MiB bound",
            peak_kib / 1024,
            started.elapsed(),
            bound_kib / 1024
        );
        tokio::select! {
            status = child.wait() => break status.expect("wait for webhookctl"),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        assert!(
            started.elapsed() < timeout,
            "webhookctl {args:?} did not finish within {timeout:?} (peak so far {} MiB)",
            peak_kib / 1024
        );
    };
    let output = Output {
        code: status.code().unwrap_or(-1),
        stdout: out_task.await.unwrap(),
        stderr: err_task.await.unwrap(),
    };
    assert!(
        peak_kib > 0,
        "no memory sample of webhookctl {args:?}: {output:?}"
    );
    (output, peak_kib)
}

/// The case: a DLQ far larger than a filter's matches. The old requeue held every
/// skipped message (unacked, with its body) for the whole scan: 50,000 × ~2 KiB here, well over
/// the bound. The new one holds at most a window of messages whatever the DLQ's size; so do the
/// dry run, a drain of the other 50,000 and their restore from the ~170 MB archive. Its
/// 100,000 messages are removed even if the test fails (they would weigh on every later test).
#[tokio::test]
async fn dlq_requeue_of_100000_dead_letters_by_type_runs_in_bounded_memory() {
    let ctx = TestContext::new().await;
    let mut env = ctx.env.clone();
    // This test is about memory, not latency: 200,000 confirmed publishes on a broker that the
    // rest of the suite loads too may see a confirm take more than the default 5 s.
    env.insert("WEBHOOK__AMQP__CONFIRM_TIMEOUT_MS".into(), "60000".into());
    let topo = rabbit::topology(&ctx.settings());
    let outcome = tokio::spawn(requeue_100000(env, topo)).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn requeue_100000(env: HashMap<String, String>, topo: webhook_amqp::Topology) {
    const N: usize = 100_000;
    const BOUND_MIB: u64 = 64;
    const WANTED: &str = "customer.subscription.updated";
    let started = std::time::Instant::now();
    let out = webhookctl(&env, &["setup"]).await;
    assert_eq!(out.code, 0, "{out:?}");

    // Every other dead letter is of the wanted type.
    let kind = |i: usize| {
        if i.is_multiple_of(2) {
            WANTED
        } else {
            "checkout.session.completed"
        }
    };
    rabbit::publish_many_dead_letters(&topo.dead_letter_exchange, 0..N, 2048, kind).await;
    wait_depth(&topo.dead_letter_queue, N as u32).await;
    let published = started.elapsed();

    let t = std::time::Instant::now();
    let (out, peak_kib) = webhookctl_peak_rss(
        &env,
        &["dlq", "requeue", "--type", WANTED],
        BOUND_MIB * 1024,
        Duration::from_secs(300),
    )
    .await;
    let requeue_time = t.elapsed();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("requeued {} messages", N / 2),
        "{out:?}"
    );
    // Counted once the command's consumer is gone: the messages its prefetch held beyond the
    // scan go back to the DLQ when its connection closes, a moment after it exits.
    let moved = rabbit::all_messages(&topo.work_queue).await as usize;
    let left = rabbit::all_messages(&topo.dead_letter_queue).await as usize;
    assert_eq!(
        (moved, left),
        (N / 2, N / 2),
        "moved + left == N, nothing lost or doubled"
    );
    eprintln!(
        "100k requeue: publishing took {published:?}, requeue {requeue_time:?}, peak RSS {peak_kib} KiB"
    );

    // What is left is exactly the skipped half: nothing of the wanted type. The dry run reads
    // all 50,000 in bounded memory too, and gives them back.
    let t = std::time::Instant::now();
    let (out, dry_peak_kib) = webhookctl_peak_rss(
        &env,
        &["dlq", "requeue", "--type", WANTED, "--dry-run"],
        BOUND_MIB * 1024,
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "would requeue 0 messages", "{out:?}");
    wait_depth(&topo.dead_letter_queue, (N / 2) as u32).await;
    eprintln!(
        "100k requeue: dry run of 50,000 {:?}, peak RSS {dry_peak_kib} KiB",
        t.elapsed()
    );

    // Drain the other half to an archive (~170 MB) and restore it: both in bounded memory too
    // (the old restore read the whole file into memory first).
    let dir = std::env::temp_dir().join(format!("webhookctl-100k-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let archive = dir.join("half.jsonl");
    let path = archive.to_str().unwrap();
    let t = std::time::Instant::now();
    let (out, drain_peak_kib) = webhookctl_peak_rss(
        &env,
        &["dlq", "drain", "--out", path],
        BOUND_MIB * 1024,
        Duration::from_secs(300),
    )
    .await;
    let drain_time = t.elapsed();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("drained {} messages to {path}", N / 2),
        "{out:?}"
    );
    assert_eq!(rabbit::all_messages(&topo.dead_letter_queue).await, 0);
    let t = std::time::Instant::now();
    let (out, restore_peak_kib) = webhookctl_peak_rss(
        &env,
        &["dlq", "restore", "--from", path],
        BOUND_MIB * 1024,
        Duration::from_secs(300),
    )
    .await;
    let restore_time = t.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("restored {} messages from {path}", N / 2),
        "{out:?}"
    );
    assert_eq!(
        rabbit::depth(&topo.work_queue).await as usize,
        N,
        "every message on the work queue once"
    );
    eprintln!(
        "100k requeue: drain of 50,000 {drain_time:?} (peak RSS {drain_peak_kib} KiB), restore {restore_time:?} (peak RSS {restore_peak_kib} KiB); whole test {:?}",
        started.elapsed()
    );
}

/// A filter's skipped messages stay in the DLQ unchanged (body, reason headers, retry count);
/// an archive with a bad line (the cut-off last line of an interrupted drain, and garbage in
/// the middle) is refused before anything is published, and `--skip-invalid` restores the rest
/// and names the lines it skipped.
#[tokio::test]
async fn dlq_skipped_messages_are_kept_whole_and_restore_handles_a_cut_off_archive() {
    let ctx = TestContext::new().await;
    let env = ctx.env.clone();
    let topo = rabbit::topology(&ctx.settings());
    assert_eq!(webhookctl(&env, &["setup"]).await.code, 0);
    let events: Vec<_> = (0..3)
        .map(|i| signed_event("checkout.session.completed", &format!("keep{i}@example.com")))
        .collect();
    let messages: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|e| (e.event_id.clone(), e.body.clone()))
        .collect();
    rabbit::publish_dead_letters(&topo.dead_letter_exchange, &messages, "kept as it was").await;
    rabbit::publish_many_dead_letters(&topo.dead_letter_exchange, 0..2, 512, |_| "invoice.paid").await;
    wait_depth(&topo.dead_letter_queue, 5).await;

    // While something else consumes the DLQ, requeue refuses to start and touches nothing.
    let (conn, ch) = rabbit::channel().await;
    ch.basic_qos(1, Default::default()).await.unwrap();
    let _other = ch
        .basic_consume(
            topo.dead_letter_queue.as_str().into(),
            "someone-else".into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let out = webhookctl(&env, &["dlq", "requeue", "--all"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("something else is consuming the dead-letter queue"),
        "{out:?}"
    );
    let _ = conn.close(200, "done".into()).await;
    wait_depth(&topo.dead_letter_queue, 5).await;
    assert_eq!(rabbit::depth(&topo.work_queue).await, 0);

    // Requeue the two invoices: the three checkouts stay, whole.
    let out = webhookctl(&env, &["dlq", "requeue", "--type", "invoice.paid", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let summary = &json_lines(&out.stdout)[0];
    assert_eq!(summary["requeued"], 2, "{out:?}");
    assert_eq!(summary["matched"], 2, "{out:?}");
    assert_eq!(summary["dry_run"], false, "{out:?}");
    let mut ids: Vec<&str> = summary["event_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["evt_bulk_0", "evt_bulk_1"]);
    assert_eq!(rabbit::drain(&topo.work_queue).await.len(), 2);
    let kept = rabbit::peek(&topo.dead_letter_queue).await;
    assert_eq!(kept.len(), 3, "the skipped messages are all still there");
    for e in &events {
        let (_, headers) = kept
            .iter()
            .find(|(body, _)| body == &e.body)
            .unwrap_or_else(|| panic!("{} kept with its body byte for byte", e.event_id));
        let h = headers.as_ref().expect("headers kept");
        let text = |k: &str| match h.inner().get(k) {
            Some(lapin::types::AMQPValue::LongString(s)) => {
                String::from_utf8_lossy(s.as_bytes()).into_owned()
            }
            other => format!("{other:?}"),
        };
        assert_eq!(text("x-error"), "kept as it was");
        assert_eq!(text("x-failed-step"), "keycloak_lookup");
        assert_eq!(
            h.inner().get("x-retry-attempt"),
            Some(&lapin::types::AMQPValue::LongInt(8)),
            "a skipped message's retry count is not reset"
        );
    }

    // Drain the three to an archive, then damage it as an interrupted drain and a bad edit would.
    let dir = std::env::temp_dir().join(format!("webhookctl-{}", ctx.id));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dlq.jsonl");
    let path = file.to_str().unwrap();
    let out = webhookctl(&env, &["dlq", "drain", "--out", path]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("drained 3 messages"), "{out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    let torn = &lines[0][..lines[0].len() / 2];
    let damaged = format!("{}\nnot a message\n{}\n{}\n{torn}", lines[0], lines[1], lines[2]);
    std::fs::write(&file, damaged).unwrap();

    // Without --skip-invalid: refused before anything is published, naming the lines.
    let out = webhookctl(&env, &["dlq", "restore", "--from", path]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("line 2 is not an archived message"),
        "{out:?}"
    );
    assert!(out.stderr.contains("2 invalid lines in all: 2, 5"), "{out:?}");
    assert!(out.stderr.contains("--skip-invalid"), "{out:?}");
    assert!(out.stderr.contains("Nothing was restored"), "{out:?}");
    assert_eq!(rabbit::depth(&topo.work_queue).await, 0, "nothing published");
    // Only the cut-off last line: named as such.
    let torn_only = dir.join("torn.jsonl");
    std::fs::write(&torn_only, format!("{}\n{torn}", lines[0])).unwrap();
    let out = webhookctl(&env, &["dlq", "restore", "--from", torn_only.to_str().unwrap()]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("line 2 is cut off"), "{out:?}");
    assert!(out.stderr.contains("--skip-invalid"), "{out:?}");
    assert_eq!(rabbit::depth(&topo.work_queue).await, 0, "nothing published");

    // With it: the valid lines are restored, the invalid ones named.
    let out = webhookctl(&env, &["dlq", "restore", "--from", path, "--skip-invalid"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("restored 3 messages from {path}; skipped 2 invalid lines: 2, 5"),
        "{out:?}"
    );
    assert!(out.stderr.contains("line 5: it is cut off"), "{out:?}");
    let restored = rabbit::drain(&topo.work_queue).await;
    let mut bodies: Vec<&[u8]> = restored.iter().map(|m| m.delivery.data.as_slice()).collect();
    bodies.sort();
    let mut want: Vec<&[u8]> = events.iter().map(|e| e.body.as_slice()).collect();
    want.sort();
    assert_eq!(bodies, want, "each valid line restored once, byte for byte");
    let out = webhookctl(
        &env,
        &["dlq", "restore", "--from", path, "--skip-invalid", "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let summary = &json_lines(&out.stdout)[0];
    assert_eq!(summary["restored"], 3, "{out:?}");
    assert_eq!(summary["skipped"], 2, "{out:?}");
    assert_eq!(summary["skipped_lines"], serde_json::json!([2, 5]), "{out:?}");
    assert_eq!(rabbit::depth(&topo.work_queue).await, 3);

    let _ = std::fs::remove_dir_all(dir);
}

/// `replay` must record `queued` before it publishes: with the other order, a worker that takes
/// the replayed message at once writes its outcome first, the late `queued` overwrites it, and
/// the event stays `queued` for good. Proved deterministically by holding the event's row:
/// while replay waits for it, nothing may have been published yet.
#[tokio::test]
async fn replay_records_queued_before_it_publishes_so_a_fast_worker_s_outcome_stands() {
    let mut app = TestApp::without_worker(&[]).await;
    app.sandbox.state.add_user(SeedUser::new("replay@example.com"));
    let env = app.env(&[]);
    let e = signed_event("checkout.session.completed", "replay@example.com");
    app.start_worker().await;
    app.publish(&e.body).await;
    wait_event_status(app.pool(), &e.event_id, "succeeded").await;
    app.stop_worker().await;

    let mut row_lock = app.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM webhook_events WHERE event_id = $1 FOR UPDATE")
        .bind(&e.event_id)
        .execute(&mut *row_lock)
        .await
        .unwrap();
    let replay = tokio::process::Command::new(webhook_tests::bin_path("webhookctl"))
        .env_clear()
        .envs(&env)
        .args(["replay", &e.event_id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for("replay to wait for the event's row", LONG, || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(app.pool())
        .await
        .unwrap();
        (waiting > 0).then_some(())
    })
    .await;
    assert_eq!(
        rabbit::depth(&app.topo.work_queue).await,
        0,
        "replay published before it recorded `queued`: a fast worker's outcome would be overwritten"
    );
    row_lock.rollback().await.unwrap();
    let out = replay.wait_with_output().await.unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout} {stderr}");
    assert!(stdout.contains(&format!("replayed {}", e.event_id)), "{stdout}");
    assert_eq!(
        event_status(app.pool(), &e.event_id).await.as_deref(),
        Some("queued")
    );
    assert_eq!(rabbit::depth(&app.topo.work_queue).await, 1, "published once");

    // The worker's outcome is the last word, however fast it comes: with the worker running
    // during a replay too.
    app.start_worker().await;
    wait_event_status(app.pool(), &e.event_id, "succeeded").await;
    let out = webhookctl(&env, &["replay", &e.event_id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    wait_for("the second replay to be processed", LONG, || async {
        let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM webhook_events WHERE event_id = $1")
            .bind(&e.event_id)
            .fetch_one(app.pool())
            .await
            .unwrap();
        (attempts == 3).then_some(())
    })
    .await;
    wait_event_status(app.pool(), &e.event_id, "succeeded").await;
    let audits: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_logs WHERE subject = 'replay@example.com'")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(audits, 1, "the replays changed nothing downstream");
    app.stop().await;
}

/// A replay whose publish fails leaves the event as it was (status and `updated_at`), and says
/// so; an event type no queue handles is refused before anything is touched.
#[tokio::test]
async fn replay_that_cannot_publish_puts_the_previous_status_back() {
    let ctx = TestContext::new().await;
    let env = ctx.env.clone();
    let topo = rabbit::topology(&ctx.settings());
    let pool = ctx.pool().await;
    assert_eq!(webhookctl(&env, &["setup"]).await.code, 0);
    let e = signed_event("checkout.session.completed", "nobody@example.com");
    let insert = "INSERT INTO webhook_events (event_id, event_type, payload, status, attempts, updated_at)
                  VALUES ($1, $2, $3, $4, 1, now() - interval '1 hour')";
    sqlx::query(insert)
        .bind(&e.event_id)
        .bind("checkout.session.completed")
        .bind(String::from_utf8(e.body.clone()).unwrap())
        .bind("succeeded")
        .execute(&pool)
        .await
        .unwrap();
    let row = |id: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, String)>(
                "SELECT status, updated_at::text FROM webhook_events WHERE event_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let before = row(e.event_id.clone()).await;

    // The exchange is gone (topology not declared): the publish fails.
    let (conn, ch) = rabbit::channel().await;
    ch.exchange_delete(
        topo.exchange.as_str().into(),
        lapin::options::ExchangeDeleteOptions::default(),
    )
    .await
    .unwrap();
    let _ = conn.close(200, "done".into()).await;
    let out = webhookctl(&env, &["replay", &e.event_id]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("was not replayed"), "{out:?}");
    assert!(out.stderr.contains("its status is succeeded again"), "{out:?}");
    assert!(out.stderr.contains("webhookctl setup"), "{out:?}");
    assert!(out.stderr.contains("run the same command again"), "{out:?}");
    assert_eq!(
        row(e.event_id.clone()).await,
        before,
        "status and updated_at as they were"
    );
    assert_eq!(rabbit::depth(&topo.work_queue).await, 0);

    // A type nothing handles: refused, nothing touched.
    let ignored = signed_event("customer.created", "nobody@example.com");
    sqlx::query(insert)
        .bind(&ignored.event_id)
        .bind("customer.created")
        .bind(String::from_utf8(ignored.body.clone()).unwrap())
        .bind("ignored")
        .execute(&pool)
        .await
        .unwrap();
    let before = row(ignored.event_id.clone()).await;
    let out = webhookctl(&env, &["replay", &ignored.event_id]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("which no queue handles"), "{out:?}");
    assert_eq!(row(ignored.event_id.clone()).await, before);
}

/// A password that must never be shown; its middle part catches a partial leak too.
const PASSWORD: &str = "Pw-71be0c2d-secret";

/// `_sqlx_migrations` of a database: version, checksum, success, when installed.
async fn applied_migrations(db: &mut sqlx::PgConnection) -> Vec<(i64, Vec<u8>, bool, String)> {
    sqlx::query_as(
        "SELECT version, checksum, success, installed_on::text FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(db)
    .await
    .expect("_sqlx_migrations")
}

/// `webhookctl migrate` against a database that does not exist yet: creates it and applies
/// every migration; a second run is a no-op that says the same; a URL that does not reach
/// Postgres (or is malformed) fails with exit 1, naming `DATABASE_URL`, without its password.
#[tokio::test]
async fn migrate_creates_and_migrates_a_fresh_database_then_is_a_no_op_and_names_a_bad_url() {
    use sqlx::Connection;
    let ctx = TestContext::new().await;
    let fresh = format!("{}_fresh", ctx.database_name);
    let fresh_url = webhook_store::with_database_name(&webhook_tests::admin_database_url(), &fresh);
    let mut env = ctx.env.clone();
    env.insert("DATABASE_URL".into(), fresh_url.clone());
    let migrations: Vec<(i64, Vec<u8>)> = webhook_store::MIGRATOR
        .iter()
        .map(|m| (m.version, m.checksum.to_vec()))
        .collect();
    assert!(migrations.len() >= 6, "{} migrations embedded", migrations.len());
    let summary = format!(
        "migrations applied ({} in total, database up to date)",
        migrations.len()
    );

    let out = webhookctl(&env, &["migrate"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), summary, "{out:?}");
    let mut db = sqlx::PgConnection::connect(&fresh_url)
        .await
        .expect("migrate created the database");
    let first = applied_migrations(&mut db).await;
    assert_eq!(
        first
            .iter()
            .map(|(v, c, ok, _)| {
                assert!(ok, "migration {v} applied successfully");
                (*v, c.clone())
            })
            .collect::<Vec<_>>(),
        migrations,
        "every embedded migration applied, with its checksum"
    );
    // The operator contract: the old system's audit query works.
    sqlx::query("SELECT id, event_type, subject, details, created_at FROM audit_logs WHERE event_type = 'subscription.created' ORDER BY created_at DESC")
        .fetch_all(&mut db)
        .await
        .expect("audit_logs has the contract's shape");
    sqlx::query("SELECT event_id, status, payload, attempts FROM webhook_events")
        .fetch_all(&mut db)
        .await
        .expect("webhook_events exists");

    // Again: nothing to do, nothing touched.
    let out = webhookctl(&env, &["migrate"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), summary, "{out:?}");
    assert_eq!(
        applied_migrations(&mut db).await,
        first,
        "the second run applied nothing"
    );
    let _ = db.close().await;

    // Postgres not reachable at that URL (a port nobody listens on).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut bad = ctx.env.clone();
    bad.insert(
        "DATABASE_URL".into(),
        format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/{fresh}"),
    );
    let out = webhookctl(&bad, &["migrate"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("check DATABASE_URL and that Postgres is running"),
        "{out:?}"
    );
    assert!(
        !out.stderr.contains("71be0c2d") && !out.stdout.contains("71be0c2d"),
        "{out:?}"
    );
    // Malformed (no "//"): refused at start, naming the variable.
    bad.insert(
        "DATABASE_URL".into(),
        format!("postgres:postgres:{PASSWORD}@127.0.0.1:5432/{fresh}"),
    );
    let out = webhookctl(&bad, &["migrate"]).await;
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("DATABASE_URL is invalid: "), "{out:?}");
    assert!(
        !out.stderr.contains("71be0c2d") && !out.stdout.contains("71be0c2d"),
        "{out:?}"
    );

    let mut admin = sqlx::PgConnection::connect(&webhook_tests::admin_database_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{fresh}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

/// `webhookctl send-test-event` signs a checkout event with the configured secret and POSTs it
/// to the ingest: accepted, then provisioned end to end on the tier and cycle asked for
/// (Keycloak tier, Lago subscription on the plan, audit row); the same `--event-id` again is a
/// duplicate; an ingest that refuses it or is not there makes it exit 1 saying so.
#[tokio::test]
async fn send_test_event_is_accepted_by_the_ingest_and_provisioned_end_to_end() {
    let mut app = TestApp::without_worker(&[]).await;
    app.sandbox.state.add_user(SeedUser::new("sender@example.com"));
    let ingest = webhook_tests::ingest::TestIngest::spawn(app.settings.clone())
        .await
        .ready()
        .await;
    app.start_worker().await;
    let env = app.env(&[]);
    let url = format!("{}/webhooks/stripe", ingest.url);
    let event_id = format!("evt_sendtest_{}", app.ctx.id);
    let send = [
        "send-test-event",
        "--url",
        &url,
        "--email",
        "Sender@Example.com",
        "--tier",
        "enterprise",
        "--cycle",
        "yearly",
        "--event-id",
        &event_id,
    ];

    let out = webhookctl(&env, &send).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .starts_with(&format!("checkout.session.completed {event_id} -> 200 ")),
        "{out:?}"
    );
    assert!(out.stdout.contains("\"accepted\""), "{out:?}");
    wait_event_status(app.pool(), &event_id, "succeeded").await;
    let user = app.sandbox.state.user_by_email("sender@example.com").unwrap();
    assert_eq!(
        user["attributes"]["subscription_tier"],
        serde_json::json!(["enterprise"]),
        "{user}"
    );
    let subs: Vec<Value> = app.sandbox.state.snapshot()["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["external_customer_id"] == "sender@example.com")
        .cloned()
        .collect();
    assert_eq!(subs.len(), 1, "{subs:?}");
    assert_eq!(subs[0]["plan_code"], "enterprise_yearly");
    let audits: Vec<Value> = sqlx::query_scalar(
        "SELECT details FROM audit_logs WHERE subject = 'sender@example.com' AND event_type = 'subscription.created'",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert_eq!(audits.len(), 1, "{audits:?}");
    assert_eq!(audits[0]["stripe_event_id"], event_id.as_str());

    // The same event id again: the ingest's duplicate answer, printed as JSON with --json.
    let mut again = send.to_vec();
    again.push("--json");
    let out = webhookctl(&env, &again).await;
    assert_eq!(out.code, 0, "{out:?}");
    let answer: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(answer["status"], "duplicate", "{out:?}");
    assert_eq!(answer["event_id"], event_id.as_str(), "{out:?}");

    // Signed with a secret the ingest does not know: refused, exit 1 with the answer.
    let mut wrong = env.clone();
    wrong.insert("STRIPE_WEBHOOK_SECRET".into(), "whsec_not_the_ingests".into());
    let out = webhookctl(&wrong, &send[..3]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("the ingest answered 400"), "{out:?}");
    assert!(out.stderr.contains("signature_mismatch"), "{out:?}");
    // No ingest there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("http://127.0.0.1:{port}/webhooks/stripe");
    let out = webhookctl(&env, &["send-test-event", "--url", &nowhere]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("could not reach the ingest"), "{out:?}");
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM webhook_events")
            .fetch_one(app.pool())
            .await
            .unwrap(),
        1,
        "only the one event recorded"
    );

    app.stop_worker().await;
    ingest.stop().await;
    app.stop().await;
}
