//! The ingest against the real Postgres and RabbitMQ: each test has its own database and its
//! own queue prefix.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use webhook_core::settings::Livemode;
use webhook_tests::ingest::{IngestProcess, TestIngest};
use webhook_tests::{Output, TcpProxy, TestContext, bin_path, rabbit, sign, signed_event, wait_for};

async fn json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

async fn stored(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn accepted_event_is_queued_once_with_routing_key_message_id_and_persistence() {
    let ctx = TestContext::new().await;
    let settings = ctx.settings();
    let topo = rabbit::topology(&settings);
    let ingest = TestIngest::spawn(settings).await.ready().await;
    let event = signed_event("checkout.session.completed", "buyer@example.com");

    let (status, body) = json(ingest.post_event(&event).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "accepted");
    assert_eq!(body["event_id"], event.event_id.as_str());

    let messages = rabbit::drain(&topo.work_queue).await;
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.delivery.routing_key.as_str(), "checkout.session.completed");
    assert_eq!(m.delivery.exchange.as_str(), topo.exchange);
    assert_eq!(
        m.delivery.properties.message_id().as_ref().map(|s| s.as_str()),
        Some(event.event_id.as_str())
    );
    assert_eq!(*m.delivery.properties.delivery_mode(), Some(2), "persistent");
    assert_eq!(m.delivery.data, event.body, "the body is queued byte for byte");

    let pool = ctx.pool().await;
    let (status_col, payload): (String, String) =
        sqlx::query_as("SELECT status, payload FROM webhook_events WHERE event_id = $1")
            .bind(&event.event_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status_col, "queued");
    assert_eq!(payload.as_bytes(), event.body.as_slice());

    ingest.stop().await;
}

#[tokio::test]
async fn the_same_event_twenty_times_concurrently_is_queued_exactly_once() {
    let ctx = TestContext::new().await;
    let settings = ctx.settings();
    let topo = rabbit::topology(&settings);
    let ingest = TestIngest::spawn(settings).await.ready().await;
    let event = signed_event("checkout.session.completed", "buyer@example.com");

    let answers = futures_util::future::join_all((0..20).map(|_| ingest.post_event(&event))).await;
    let mut outcomes = Vec::new();
    for resp in answers {
        let (status, body) = json(resp).await;
        assert_eq!(status, 200, "{body}");
        outcomes.push(body["status"].as_str().unwrap().to_string());
    }
    assert_eq!(
        outcomes.iter().filter(|s| *s == "accepted").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|s| *s == "duplicate").count(),
        19,
        "{outcomes:?}"
    );
    assert_eq!(rabbit::drain(&topo.work_queue).await.len(), 1);
    assert_eq!(stored(&ctx.pool().await).await, 1);

    ingest.stop().await;
}

#[tokio::test]
async fn broker_unreachable_answers_503_and_keeps_nothing_then_accepts_once_it_is_back() {
    let ctx = TestContext::new().await;
    let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let settings = ctx.settings_with(&[("AMQP_URL", &amqp)]);
    let topo = rabbit::topology(&settings);
    let ingest = TestIngest::spawn(settings).await.ready().await;
    let pool = ctx.pool().await;

    proxy.cut();
    let event = signed_event("checkout.session.completed", "buyer@example.com");
    let resp = ingest.post_event(&event).await;
    assert_eq!(resp.status(), 503);
    let retry_after = resp
        .headers()
        .get("retry-after")
        .expect("Retry-After on 503")
        .to_str()
        .unwrap();
    assert!(retry_after.parse::<u64>().unwrap() > 0);
    let (_, body) = json(resp).await;
    assert_eq!(body["error"], "unavailable", "{body}");
    assert_eq!(stored(&pool).await, 0, "no row may survive a failed publish");

    let ready = ingest
        .client
        .get(format!("{}/readyz", ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(json(ready).await.1["rabbitmq"], "down");

    // Stripe retries; once the broker is back the ingest has reconnected by itself.
    proxy.restore();
    let body = wait_for(
        "the event to be accepted after the broker is back",
        Duration::from_secs(20),
        || async {
            let (status, body) = json(ingest.post_event(&event).await).await;
            (status == 200).then_some(body)
        },
    )
    .await;
    assert_eq!(body["status"], "accepted");
    assert_eq!(rabbit::drain(&topo.work_queue).await.len(), 1);
    assert_eq!(stored(&pool).await, 1);

    ingest.stop().await;
}

#[tokio::test]
async fn database_unreachable_answers_503_then_recovers() {
    let ctx = TestContext::new().await;
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let db_url = ctx
        .database_url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let settings = ctx.settings_with(&[("DATABASE_URL", &db_url)]);
    let topo = rabbit::topology(&settings);
    let ingest = TestIngest::spawn(settings).await.ready().await;

    proxy.cut();
    let event = signed_event("checkout.session.completed", "buyer@example.com");
    let resp = ingest.post_event(&event).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let ready = ingest
        .client
        .get(format!("{}/readyz", ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(json(ready).await.1["postgres"], "down");
    // What Prometheus scrapes from the pod while the readiness probe keeps it out of the Service.
    let postgres_up = r#"webhook_dependency_up{dependency="postgres"}"#;
    let rabbitmq_up = r#"webhook_dependency_up{dependency="rabbitmq"}"#;
    let metrics = ingest
        .client
        .get(format!("{}/metrics", ingest.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(&format!("{postgres_up} 0")), "{metrics}");
    assert!(metrics.contains(&format!("{rabbitmq_up} 1")), "{metrics}");
    assert_eq!(
        rabbit::depth(&topo.work_queue).await,
        0,
        "nothing published without a record"
    );

    proxy.restore();
    let body = wait_for(
        "accepted after Postgres is back",
        Duration::from_secs(20),
        || async {
            let (status, body) = json(ingest.post_event(&event).await).await;
            (status == 200).then_some(body)
        },
    )
    .await;
    assert_eq!(body["status"], "accepted");
    assert_eq!(rabbit::drain(&topo.work_queue).await.len(), 1);
    assert_eq!(webhook_tests::metric(&ingest.url, postgres_up).await, 1.0);

    ingest.stop().await;
}

#[tokio::test]
async fn unhandled_event_type_is_stored_and_ignored_but_not_queued() {
    let ctx = TestContext::new().await;
    let settings = ctx.settings();
    let topo = rabbit::topology(&settings);
    let ingest = TestIngest::spawn(settings).await.ready().await;
    let event = signed_event("invoice.finalized", "buyer@example.com");

    let (status, body) = json(ingest.post_event(&event).await).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ignored")),
        "{body}"
    );
    let (status, body) = json(ingest.post_event(&event).await).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("duplicate")),
        "{body}"
    );
    assert_eq!(rabbit::depth(&topo.work_queue).await, 0);
    let status_col: String = sqlx::query_scalar("SELECT status FROM webhook_events WHERE event_id = $1")
        .bind(&event.event_id)
        .fetch_one(&ctx.pool().await)
        .await
        .unwrap();
    assert_eq!(status_col, "ignored");

    ingest.stop().await;
}

#[tokio::test]
async fn every_bad_input_gets_its_4xx_and_changes_nothing() {
    let ctx = TestContext::new().await;
    let settings = ctx.settings_with(&[("WEBHOOK__INGEST__BODY_LIMIT_BYTES", "65536")]);
    let topo = rabbit::topology(&settings);
    let ingest = TestIngest::spawn(settings).await.ready().await;
    let now = webhook_core::unix_now();
    let good = signed_event("checkout.session.completed", "buyer@example.com");
    let forged = webhook_core::signature::sign_header("whsec_attacker", now, &good.body);
    let mut tampered = good.body.clone();
    let at = tampered.iter().position(|&b| b == b'2').unwrap();
    tampered[at] = b'9';
    let not_json = b"this is not json".to_vec();
    let no_id = br#"{"object":"event","type":"checkout.session.completed","data":{"object":{}}}"#.to_vec();
    let big = {
        let mut v: Value = serde_json::from_slice(&good.body).unwrap();
        v["data"]["object"]["metadata"]["padding"] = Value::String("x".repeat(70_000));
        serde_json::to_vec(&v).unwrap()
    };
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes();

    // (what, body, Stripe-Signature, expected status, expected error code)
    type Case<'a> = (&'a str, Vec<u8>, Option<String>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "missing signature",
            good.body.clone(),
            None,
            400,
            "missing_signature",
        ),
        (
            "garbled signature",
            good.body.clone(),
            Some("t=abc,v1=%%%".into()),
            400,
            "malformed_signature",
        ),
        (
            "forged signature",
            good.body.clone(),
            Some(forged),
            400,
            "signature_mismatch",
        ),
        (
            "stale signature",
            good.body.clone(),
            Some(sign(&good.body, now - 301)),
            400,
            "timestamp_out_of_tolerance",
        ),
        (
            "future signature",
            good.body.clone(),
            Some(sign(&good.body, now + 400)),
            400,
            "timestamp_out_of_tolerance",
        ),
        (
            "tampered body",
            tampered,
            Some(good.signature.clone()),
            400,
            "signature_mismatch",
        ),
        (
            "non-JSON",
            not_json.clone(),
            Some(sign(&not_json, now)),
            400,
            "invalid_json",
        ),
        (
            "deep nesting",
            deep.clone(),
            Some(sign(&deep, now)),
            400,
            "invalid_json",
        ),
        (
            "no event id",
            no_id.clone(),
            Some(sign(&no_id, now)),
            400,
            "missing_event_id",
        ),
        (
            "body over the limit",
            big.clone(),
            Some(sign(&big, now)),
            413,
            "payload_too_large",
        ),
    ];
    for (name, body, sig, want_status, want_code) in cases {
        let (status, json_body) = json(ingest.post(body, sig.as_deref()).await).await;
        assert_eq!(status, want_status, "{name}: {json_body}");
        assert_eq!(json_body["error"], want_code, "{name}: {json_body}");
        assert!(
            json_body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}: {json_body}"
        );
    }

    // Wrong content type.
    let resp = ingest
        .client
        .post(format!("{}/webhooks/stripe", ingest.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("stripe-signature", &good.signature)
        .body(good.body.clone())
        .send()
        .await
        .unwrap();
    let (status, body) = json(resp).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (415, Some("unsupported_media_type")),
        "{body}"
    );

    // Oversized headers: refused with the JSON 400 up to the HTTP layer's own 128 KiB cut-off.
    let resp = ingest
        .client
        .post(format!("{}/webhooks/stripe", ingest.url))
        .header("content-type", "application/json")
        .header("stripe-signature", &good.signature)
        .header("x-padding", "p".repeat(20 * 1024))
        .body(good.body.clone())
        .send()
        .await
        .unwrap();
    let (status, body) = json(resp).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("headers_too_large")),
        "{body}"
    );
    // Heads beyond 128 KiB: cut off by the HTTP layer with a bare 431, which must arrive
    // however early the server closes. Sent over a connection of our own, read while it is
    // written: the server answers and closes before the whole head is sent, so the write may
    // fail, but the answer is there to read.
    let answer = raw_exchange(
        &ingest.url,
        format!(
            "POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             X-Padding: {}\r\nContent-Length: {}\r\n\r\n",
            "p".repeat(200 * 1024),
            good.body.len()
        )
        .into_bytes(),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "heads beyond 128 KiB are cut off by the HTTP layer with a 431, got: {:?}",
        answer.chars().take(200).collect::<String>()
    );

    assert_eq!(stored(&ctx.pool().await).await, 0, "bad input stores nothing");
    assert_eq!(
        rabbit::depth(&topo.work_queue).await,
        0,
        "bad input publishes nothing"
    );

    // And the good event still goes through afterwards.
    let (status, body) = json(ingest.post_event(&good).await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("accepted")));

    ingest.stop().await;
}

/// Writes `request` to the server at `base_url` on a connection of its own while reading its
/// answer until the server closes; returns what was read (an error, e.g. a reset after the
/// answer, ends the reading but keeps what came before it).
async fn raw_exchange(base_url: &str, request: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(base_url.trim_start_matches("http://"))
        .await
        .expect("connect to the ingest");
    let (mut reader, mut writer) = stream.into_split();
    let write = tokio::spawn(async move {
        // The server may close before it has read everything: that write error is expected.
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = reader.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the server answers and closes within 10 s");
    let _ = write.await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ctx = TestContext::new().await;
    let settings = ctx.settings_with(&[
        ("WEBHOOK__INGEST__HEADER_TIMEOUT_SECS", "1"),
        ("WEBHOOK__INGEST__BODY_TIMEOUT_SECS", "1"),
    ]);
    let ingest = TestIngest::spawn(settings).await.ready().await;
    let addr = ingest.url.trim_start_matches("http://").to_string();

    // Headers that never finish: the server closes the connection after the header timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server must close a connection whose headers never finish"
    );
    // The configured 1 s, not the 5 s default: well under 3 s.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed after {:?}, with header_timeout_secs = 1",
        started.elapsed()
    );

    // A body that never finishes: 400 body_timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"id\":",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");

    // The service stays responsive.
    let resp = ingest
        .client
        .get(format!("{}/healthz", ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    ingest.stop().await;
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let ctx = TestContext::new().await;
    let ingest = TestIngest::spawn(ctx.settings()).await.ready().await;
    let health = ingest
        .client
        .get(format!("{}/healthz", ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let event = signed_event("checkout.session.completed", "buyer@example.com");
    assert_eq!(ingest.post_event(&event).await.status(), 200);
    assert_eq!(ingest.post_event(&event).await.status(), 200);
    assert_eq!(ingest.post(b"{}".to_vec(), None).await.status(), 400);
    let text = ingest
        .client
        .get(format!("{}/metrics", ingest.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "webhook_ingest_requests_total{outcome=\"accepted\"} 1",
        "webhook_ingest_requests_total{outcome=\"duplicate\"} 1",
        "webhook_ingest_requests_total{outcome=\"missing_signature\"} 1",
        "webhook_ingest_broker_connected 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("webhook_ingest_request_duration_seconds_bucket"));
    let nf = ingest
        .client
        .get(format!("{}/nope", ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(nf.status(), 404);
    ingest.stop().await;
}

#[tokio::test]
async fn topology_is_declared_at_start() {
    let ctx = TestContext::new().await;
    let settings = ctx.settings();
    let topo = rabbit::topology(&settings);
    let ingest = TestIngest::spawn(settings).await.ready().await;
    for q in topo.all_queues() {
        assert!(rabbit::exists(q).await, "{q} declared");
    }
    assert_eq!(topo.retry_tiers.len(), 2);
    assert!(
        topo.retry_tiers[0]
            .queue
            .ends_with("billing.provisioning.retry.1s")
    );
    ingest.stop().await;
}

/// The value of a metric without labels in the ingest's `/metrics`.
async fn metric(ingest: &TestIngest, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", ingest.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

/// The `webhook_ingest_commit_batch_size` histogram: (transactions, events in them).
async fn batches(ingest: &TestIngest) -> (u64, u64) {
    (
        metric(ingest, "webhook_ingest_commit_batch_size_count").await as u64,
        metric(ingest, "webhook_ingest_commit_batch_size_sum").await as u64,
    )
}

#[tokio::test]
async fn concurrent_requests_share_transactions_and_every_event_is_queued_exactly_once() {
    let ctx = TestContext::new().await;
    // One writer: every request that arrives while it is busy joins its next transaction.
    let settings = ctx.settings_with(&[("WEBHOOK__INGEST__COMMIT_WRITERS", "1")]);
    let topo = rabbit::topology(&settings);
    let ingest = TestIngest::spawn(settings).await.ready().await;
    let events: Vec<_> = (0..200)
        .map(|_| signed_event("checkout.session.completed", "buyer@example.com"))
        .collect();
    let ignored = signed_event("customer.created", "buyer@example.com");
    // Every tenth event twice in the same burst (copies may share a transaction), and one event
    // of a type nobody handles.
    let mut burst: Vec<_> = events.iter().collect();
    burst.extend(events.iter().step_by(10));
    burst.push(&ignored);

    let answers = futures_util::future::join_all(burst.iter().map(|e| ingest.post_event(e))).await;
    let mut by_id: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (event, resp) in burst.iter().zip(answers) {
        let (status, body) = json(resp).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["event_id"], event.event_id.as_str());
        by_id
            .entry(event.event_id.clone())
            .or_default()
            .push(body["status"].as_str().unwrap().to_owned());
    }
    for e in &events {
        let mut got = by_id[&e.event_id].clone();
        got.sort();
        let want: &[&str] = if by_id[&e.event_id].len() == 2 {
            &["accepted", "duplicate"]
        } else {
            &["accepted"]
        };
        assert_eq!(got, want, "{}", e.event_id);
    }
    assert_eq!(by_id[&ignored.event_id], ["ignored"]);

    let mut queued: Vec<String> = rabbit::drain(&topo.work_queue)
        .await
        .iter()
        .map(|m| m.delivery.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    queued.sort();
    let mut want: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    want.sort();
    assert_eq!(queued, want, "every accepted event on the queue exactly once");
    assert_eq!(stored(&ctx.pool().await).await, 201);

    let (transactions, recorded) = batches(&ingest).await;
    assert_eq!(
        recorded,
        burst.len() as u64,
        "every request went through a transaction"
    );
    assert!(
        transactions < recorded,
        "{recorded} requests in {transactions} transactions: concurrent requests were not grouped"
    );

    ingest.stop().await;
}

/// What a background POST got: the status, whether `Retry-After` came with it, the JSON body.
type Answer = (u16, bool, Value);

/// POSTs an event to the ingest at `base_url` from a task of its own, on a connection of its
/// own; the task ends with the answer, or the error if none came.
fn try_post_in_background(
    base_url: &str,
    event: &webhook_tests::SignedEvent,
) -> tokio::task::JoinHandle<Result<Answer, reqwest::Error>> {
    let request = reqwest::Client::new()
        .post(format!("{base_url}/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", event.signature.clone())
        .body(event.body.clone());
    tokio::spawn(async move {
        let resp = request.send().await?;
        let retry_after = resp.headers().contains_key("retry-after");
        let (status, body) = json(resp).await;
        Ok((status, retry_after, body))
    })
}

/// [`try_post_in_background`], the ingest expected to answer.
fn post_in_background(base_url: &str, event: &webhook_tests::SignedEvent) -> tokio::task::JoinHandle<Answer> {
    let answer = try_post_in_background(base_url, event);
    tokio::spawn(async move { answer.await.unwrap().expect("ingest answers") })
}

/// Makes `event_type` unroutable: its queue binding removed, a mandatory publish of it comes
/// back from the broker (an event the broker refuses).
async fn unroute(topo: &webhook_amqp::Topology, event_type: &str) {
    let (conn, channel) = rabbit::channel().await;
    channel
        .queue_unbind(
            topo.work_queue.as_str().into(),
            topo.exchange.as_str().into(),
            event_type.into(),
            Default::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "unbound".into()).await;
}

/// The ingest's transaction held still: an uncommitted row with the event id of `blocker`,
/// which the ingest's insert of it waits for until the transaction ends.
struct Hold {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    blocker: webhook_tests::SignedEvent,
}

/// Holds the only writer of the ingest at `base_url` (`commit_writers` = 1): POSTs `blocker`
/// (the task is returned with the hold) and waits until its insert waits on our uncommitted
/// row of the same id. Every request after it waits for the writer too, until the hold ends.
async fn hold_the_only_writer(
    pool: &sqlx::PgPool,
    base_url: &str,
) -> (Hold, tokio::task::JoinHandle<Result<Answer, reqwest::Error>>) {
    let blocker = signed_event("checkout.session.completed", "buyer@example.com");
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO webhook_events (event_id, event_type, payload, status) VALUES ($1, 'x', '{}', 'queued')",
    )
    .bind(&blocker.event_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    let holder: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let blocked = try_post_in_background(base_url, &blocker);
    // The writer's insert waits for the holding transaction to end (a lock on its transaction
    // id, which `pg_locks` shows without a database): asked as "is a session of this test's
    // database blocked by the holder", so no other test's lock waits can answer for it.
    wait_for(
        "the writer to wait on the held row",
        Duration::from_secs(10),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND $1 = ANY(pg_blocking_pids(pid))",
            )
            .bind(holder)
            .fetch_one(pool)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        },
    )
    .await;
    (Hold { tx, blocker }, blocked)
}

/// Waits until `n` requests of the ingest at `base_url` wait for a writer.
async fn wait_commit_waiting(base_url: &str, n: usize) {
    wait_for(
        &format!("{n} requests to wait for the writer"),
        Duration::from_secs(10),
        || async {
            (webhook_tests::metric(base_url, "webhook_ingest_commit_waiting").await as usize == n)
                .then_some(())
        },
    )
    .await
}

#[tokio::test]
async fn an_event_the_broker_refuses_gets_503_and_no_row_while_the_rest_of_its_batch_is_accepted() {
    let ctx = TestContext::new().await;
    let settings = ctx.settings_with(&[("WEBHOOK__INGEST__COMMIT_WRITERS", "1")]);
    let topo = rabbit::topology(&settings);
    let ingest = TestIngest::spawn(settings).await.ready().await;
    // invoice.paid is handled, but nothing routes it any more: its mandatory publish comes back.
    unroute(&topo, "invoice.paid").await;
    let pool = ctx.pool().await;
    let (hold, blocked) = hold_the_only_writer(&pool, &ingest.url).await;
    // Meanwhile every event of the burst waits for the writer: they form one batch.
    let checkouts: Vec<_> = (0..40)
        .map(|_| signed_event("checkout.session.completed", "buyer@example.com"))
        .collect();
    let refused: Vec<_> = (0..5)
        .map(|_| signed_event("invoice.paid", "buyer@example.com"))
        .collect();
    let burst: Vec<_> = checkouts.iter().chain(&refused).collect();
    let answers: Vec<_> = burst.iter().map(|e| post_in_background(&ingest.url, e)).collect();
    wait_commit_waiting(&ingest.url, burst.len()).await;
    hold.tx.rollback().await.unwrap();

    let (status, _, body) = blocked.await.unwrap().expect("ingest answers");
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("accepted")),
        "{body}"
    );
    for (event, answer) in burst.iter().zip(answers) {
        let (status, retry_after, body) = answer.await.unwrap();
        if refused.iter().any(|r| r.event_id == event.event_id) {
            assert_eq!(status, 503, "{body}");
            assert!(retry_after, "503 tells Stripe when to retry");
        } else {
            assert_eq!(
                (status, body["status"].as_str()),
                (200, Some("accepted")),
                "{body}"
            );
        }
    }
    assert_eq!(
        batches(&ingest).await,
        (2, 1 + burst.len() as u64),
        "the blocker, then the burst in one"
    );
    let rows: Vec<String> = sqlx::query_scalar("SELECT event_type FROM webhook_events")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        1 + checkouts.len(),
        "no row for a refused event: {rows:?}"
    );
    assert!(rows.iter().all(|t| t == "checkout.session.completed"));
    assert_eq!(rabbit::drain(&topo.work_queue).await.len(), 1 + checkouts.len());

    ingest.stop().await;
}

/// The alias route (`POST /api/v1/billing/webhooks/stripe/checkout`, the old system's path)
/// is the same endpoint: it verifies, dedupes (across both paths), records and queues alike.
#[tokio::test]
async fn the_alias_route_answers_and_queues_like_the_main_route() {
    const ALIAS: &str = "/api/v1/billing/webhooks/stripe/checkout";
    let ctx = TestContext::new().await;
    let settings = ctx.settings();
    let topo = rabbit::topology(&settings);
    let ingest = TestIngest::spawn(settings).await.ready().await;
    let pool = ctx.pool().await;
    let event = signed_event("checkout.session.completed", "alias@example.com");

    let (status, body) = json(
        ingest
            .post_to(ALIAS, event.body.clone(), Some(&event.signature))
            .await,
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str(), body["event_id"].as_str()),
        (200, Some("accepted"), Some(event.event_id.as_str())),
        "{body}"
    );
    // The same event again, on either path: a duplicate.
    for path in [ALIAS, "/webhooks/stripe"] {
        let (status, body) = json(
            ingest
                .post_to(path, event.body.clone(), Some(&event.signature))
                .await,
        )
        .await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("duplicate")),
            "{path}: {body}"
        );
    }
    // Bad input gets the same 4xx and changes nothing.
    let forged =
        webhook_core::signature::sign_header("whsec_attacker", webhook_core::unix_now(), &event.body);
    let (status, body) = json(ingest.post_to(ALIAS, event.body.clone(), Some(&forged)).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("signature_mismatch")),
        "{body}"
    );
    let (status, body) = json(ingest.post_to(ALIAS, event.body.clone(), None).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("missing_signature")),
        "{body}"
    );
    // An event nobody handles: stored as ignored, not queued.
    let ignored = signed_event("invoice.finalized", "alias@example.com");
    let (status, body) = json(
        ingest
            .post_to(ALIAS, ignored.body.clone(), Some(&ignored.signature))
            .await,
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ignored")),
        "{body}"
    );

    let m = rabbit::drain(&topo.work_queue).await;
    assert_eq!(m.len(), 1, "queued once");
    assert_eq!(m[0].delivery.routing_key.as_str(), "checkout.session.completed");
    assert_eq!(
        m[0].delivery.properties.message_id().as_ref().map(|s| s.as_str()),
        Some(event.event_id.as_str())
    );
    assert_eq!(*m[0].delivery.properties.delivery_mode(), Some(2), "persistent");
    assert_eq!(m[0].delivery.data, event.body, "the body is queued byte for byte");
    assert_eq!(stored_event(&pool, &event.event_id).await.0, "queued");
    assert_eq!(stored_event(&pool, &ignored.event_id).await.0, "ignored");
    assert_eq!(stored(&pool).await, 2);

    ingest.stop().await;
}

/// SIGTERM to the `webhook-ingest` process while requests wait for its (held) writer: it stops
/// accepting at once, keeps running while they are in flight (3 s here), every one gets its answer (2xx for the events now durably
/// queued, 503 + `Retry-After` for one the broker refuses), and it exits 0 within its shutdown
/// deadline. Nothing answered 2xx is missing from Postgres or the queue, and nothing else is
/// there.
#[tokio::test]
async fn sigterm_lets_the_requests_in_flight_finish_with_their_answers_and_exits_0() {
    requests_in_flight_finish_on("TERM").await;
}

/// Ctrl-C (SIGINT) is a graceful stop too (actix's own handling would stop at once).
#[tokio::test]
async fn ctrl_c_lets_the_requests_in_flight_finish_with_their_answers_and_exits_0() {
    requests_in_flight_finish_on("INT").await;
}

async fn requests_in_flight_finish_on(signal: &str) {
    const DEADLINE: Duration = Duration::from_secs(10);
    const IN_FLIGHT_FOR: Duration = Duration::from_secs(3);
    let ctx = TestContext::new().await;
    let mut env = ctx.env.clone();
    env.insert("WEBHOOK__INGEST__COMMIT_WRITERS".into(), "1".into());
    env.insert(
        "WEBHOOK__INGEST__SHUTDOWN_TIMEOUT_SECS".into(),
        DEADLINE.as_secs().to_string(),
    );
    let topo = rabbit::topology(&ctx.settings());
    let mut ingest = IngestProcess::start(&env).await;
    unroute(&topo, "invoice.paid").await;
    let pool = ctx.pool().await;
    let (hold, blocked) = hold_the_only_writer(&pool, &ingest.url).await;
    let checkouts: Vec<_> = (0..20)
        .map(|_| signed_event("checkout.session.completed", "buyer@example.com"))
        .collect();
    let refused: Vec<_> = (0..3)
        .map(|_| signed_event("invoice.paid", "buyer@example.com"))
        .collect();
    let burst: Vec<_> = checkouts.iter().chain(&refused).collect();
    let answers: Vec<_> = burst
        .iter()
        .map(|e| try_post_in_background(&ingest.url, e))
        .collect();
    wait_commit_waiting(&ingest.url, burst.len()).await;

    let signalled = std::time::Instant::now();
    ingest.signal(signal);
    wait_for(
        "the ingest to stop accepting connections",
        Duration::from_secs(5),
        || async { (!ingest.accepts().await).then_some(()) },
    )
    .await;
    let late = signed_event("checkout.session.completed", "buyer@example.com");
    assert!(
        try_post_in_background(&ingest.url, &late).await.unwrap().is_err(),
        "a request after SIGTERM is not taken"
    );
    // The requests stay in flight, held by our transaction, for a while (longer than a forced
    // shutdown takes): the process keeps running for them. Then let them go.
    while signalled.elapsed() < IN_FLIGHT_FOR {
        assert!(ingest.running(), "the ingest exited with requests in flight");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hold.tx.rollback().await.unwrap();

    let mut accepted = vec![hold.blocker.event_id.clone()];
    let (status, _, body) = blocked.await.unwrap().expect("the blocker gets its answer");
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("accepted")),
        "{body}"
    );
    for (event, answer) in burst.iter().zip(answers) {
        let (status, retry_after, body) = answer
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{} in flight got no answer: {e}", event.event_id));
        if refused.iter().any(|r| r.event_id == event.event_id) {
            assert_eq!(status, 503, "{body}");
            assert!(retry_after, "503 tells Stripe when to retry");
        } else {
            assert_eq!(
                (status, body["status"].as_str()),
                (200, Some("accepted")),
                "{body}"
            );
            accepted.push(event.event_id.clone());
        }
    }
    let released = signalled.elapsed();
    let (code, _) = ingest.wait_exit(DEADLINE).await;
    let took = signalled.elapsed();
    eprintln!("SIGTERM: requests released after {released:?}, exit after {took:?}");
    assert_eq!(code, Some(0), "the ingest exits 0 after SIGTERM");
    assert!(
        took < DEADLINE,
        "exited {took:?} after SIGTERM, deadline {DEADLINE:?}"
    );

    // Nothing lost, nothing extra: exactly the accepted events, recorded and queued once.
    accepted.sort();
    let mut rows: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM webhook_events WHERE status = 'queued'")
            .fetch_all(&pool)
            .await
            .unwrap();
    rows.sort();
    assert_eq!(rows, accepted, "recorded: the accepted events, nothing else");
    assert_eq!(stored(&pool).await as usize, accepted.len());
    let mut queued = queued_ids(&topo.work_queue).await;
    queued.sort();
    assert_eq!(queued, accepted, "queued: each accepted event once, nothing else");
}

/// SIGTERM while a request cannot finish (its writer held past the shutdown deadline): the
/// ingest still exits 0 at its deadline, the stuck request gets no 2xx, and its event is
/// neither recorded nor queued (Stripe sends it again).
#[tokio::test]
async fn sigterm_with_a_request_stuck_past_the_deadline_exits_0_at_the_deadline_and_keeps_nothing_of_it() {
    const DEADLINE: Duration = Duration::from_secs(2);
    let ctx = TestContext::new().await;
    let mut env = ctx.env.clone();
    env.insert("WEBHOOK__INGEST__COMMIT_WRITERS".into(), "1".into());
    env.insert(
        "WEBHOOK__INGEST__SHUTDOWN_TIMEOUT_SECS".into(),
        DEADLINE.as_secs().to_string(),
    );
    let topo = rabbit::topology(&ctx.settings());
    let mut ingest = IngestProcess::start(&env).await;
    let pool = ctx.pool().await;
    let (hold, blocked) = hold_the_only_writer(&pool, &ingest.url).await;

    let signalled = std::time::Instant::now();
    ingest.signal("TERM");
    let (code, _) = ingest.wait_exit(DEADLINE + Duration::from_secs(5)).await;
    let took = signalled.elapsed();
    assert_eq!(code, Some(0), "the ingest exits 0 after SIGTERM");
    assert!(
        took >= DEADLINE && took < DEADLINE + Duration::from_secs(3),
        "exited {took:?} after SIGTERM: the in-flight request is given the deadline ({DEADLINE:?}), not more"
    );
    // No answer at all (the connection closed) is fine: Stripe sends the event again.
    if let Ok((status, _, body)) = blocked.await.unwrap() {
        assert!(!(200..300).contains(&status), "{status} {body}");
    }
    hold.tx.rollback().await.unwrap();
    assert_eq!(stored(&pool).await, 0, "nothing recorded");
    assert_eq!(rabbit::all_messages(&topo.work_queue).await, 0, "nothing queued");
}

/// A checkout event of the given Stripe mode (`livemode`), signed now.
fn signed_event_in_mode(livemode: bool) -> webhook_tests::SignedEvent {
    let mut event = signed_event("checkout.session.completed", "buyer@example.com");
    let mut body: Value = serde_json::from_slice(&event.body).unwrap();
    body["livemode"] = Value::Bool(livemode);
    event.body = serde_json::to_vec(&body).unwrap();
    event.signature = sign(&event.body, webhook_core::unix_now());
    event
}

/// `status`, `livemode` and `last_error` of a stored event.
async fn stored_event(pool: &sqlx::PgPool, event_id: &str) -> (String, bool, Option<String>) {
    sqlx::query_as("SELECT status, livemode, last_error FROM webhook_events WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The message ids in `queue`, taken off it.
async fn queued_ids(queue: &str) -> Vec<String> {
    rabbit::drain(queue)
        .await
        .iter()
        .map(|m| {
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn an_event_of_the_other_stripe_mode_is_stored_as_ignored_with_the_reason_and_never_queued() {
    let ctx = TestContext::new().await;
    let pool = ctx.pool().await;

    // Production: live events only.
    let settings = ctx.settings_with(&[("WEBHOOK__STRIPE__LIVEMODE", "live")]);
    assert_eq!(settings.stripe.livemode, Livemode::Live);
    let topo = rabbit::topology(&settings);
    let ingest = TestIngest::spawn(settings).await.ready().await;

    let test_event = signed_event_in_mode(false);
    let (status, body) = json(ingest.post_event(&test_event).await).await;
    assert_eq!(
        (status, body["status"].as_str(), body["event_id"].as_str()),
        (200, Some("ignored"), Some(test_event.event_id.as_str())),
        "{body}"
    );
    let (status, body) = json(ingest.post_event(&test_event).await).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("duplicate")),
        "Stripe's retry of it is a duplicate: {body}"
    );
    let (status_col, livemode, reason) = stored_event(&pool, &test_event.event_id).await;
    assert_eq!((status_col.as_str(), livemode), ("ignored", false));
    let reason = reason.expect("the reason is stored with the event");
    assert!(
        reason.contains("test-mode event") && reason.contains("stripe.livemode is \"live\""),
        "{reason}"
    );

    let live_event = signed_event_in_mode(true);
    let (status, body) = json(ingest.post_event(&live_event).await).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("accepted")),
        "{body}"
    );
    assert_eq!(
        stored_event(&pool, &live_event.event_id).await,
        ("queued".to_string(), true, None)
    );
    // Each answer comes after the broker's confirm of its publish (if any), so the queue now
    // holds everything that was ever published.
    assert_eq!(
        queued_ids(&topo.work_queue).await,
        [live_event.event_id.as_str()],
        "only the live event is queued"
    );
    ingest.stop().await;

    // A staging endpoint on Stripe's test mode: the other way round.
    let settings = ctx.settings_with(&[("WEBHOOK__STRIPE__LIVEMODE", "test")]);
    let ingest = TestIngest::spawn(settings).await.ready().await;
    let live_event = signed_event_in_mode(true);
    let (status, body) = json(ingest.post_event(&live_event).await).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ignored")),
        "{body}"
    );
    let (status_col, livemode, reason) = stored_event(&pool, &live_event.event_id).await;
    assert_eq!((status_col.as_str(), livemode), ("ignored", true));
    assert!(reason.unwrap().contains("live-mode event"));
    let test_event = signed_event_in_mode(false);
    let (status, body) = json(ingest.post_event(&test_event).await).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("accepted")),
        "{body}"
    );
    assert_eq!(queued_ids(&topo.work_queue).await, [test_event.event_id.as_str()]);

    ingest.stop().await;
}

/// A password that must never be shown; its middle part catches a partial leak too.
const PASSWORD: &str = "Pw-4f9c1e7a-secret";

fn leaks(text: &str) -> bool {
    text.contains(PASSWORD) || text.contains("4f9c1e7a")
}

/// Runs a built binary with exactly `env` until it exits; fails the test if it still runs
/// after `within` (it is killed then).
async fn run_until_exit(
    binary: &str,
    args: &[&str],
    env: &HashMap<String, String>,
    within: Duration,
) -> Output {
    let child = tokio::process::Command::new(bin_path(binary))
        .env_clear()
        .envs(env)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(within, child)
        .await
        .unwrap_or_else(|_| {
            panic!("{binary} {args:?} still runs after {within:?}: a malformed setting must stop it at start")
        })
        .expect("run the binary");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn a_malformed_url_stops_every_binary_at_start_naming_the_variable_without_its_password() {
    let ctx = TestContext::new().await;
    let cases = [
        // The issue's case: the "//" is missing.
        ("AMQP_URL", format!("amqp:guest:{PASSWORD}@127.0.0.1:5672/%2f")),
        // An unencoded '/' in the password.
        (
            "AMQP_URL",
            format!("amqp://guest:{PASSWORD}/x@127.0.0.1:5672/%2f"),
        ),
        // A list of nodes written as hosts rather than URLs.
        (
            "AMQP_URL",
            format!("amqp://guest:{PASSWORD}@127.0.0.1:5672/%2f,127.0.0.1:5673"),
        ),
        (
            "DATABASE_URL",
            format!(
                "postgres:postgres:{PASSWORD}@127.0.0.1:5432/{}",
                ctx.database_name
            ),
        ),
        ("KEYCLOAK_URL", format!("http://admin:{PASSWORD}@127.0.0.1:8180")),
    ];
    let binaries: [(&str, &[&str]); 3] = [
        ("webhook-ingest", &[]),
        ("webhook-worker", &[]),
        ("webhookctl", &["dlq", "list"]),
    ];
    for (variable, value) in &cases {
        for (binary, args) in binaries {
            let mut env = ctx.env.clone();
            env.insert(variable.to_string(), value.clone());
            let out = run_until_exit(binary, args, &env, Duration::from_secs(10)).await;
            let what = format!("{binary} with {variable} malformed: {out:?}");
            assert_ne!(out.code, 0, "{what}");
            assert!(out.stderr.contains(&format!("{variable} is invalid: ")), "{what}");
            assert!(out.stderr.contains("***"), "the URL is shown redacted: {what}");
            assert!(!leaks(&out.stdout) && !leaks(&out.stderr), "{what}");
        }
    }
    assert!(
        !rabbit::exists(&rabbit::topology(&ctx.settings()).work_queue).await,
        "nothing started"
    );
}

/// The servers' command line and exit codes (`webhook_core::service`): 2 for an argument or
/// settings that cannot be loaded, 1 for a server that cannot start, `--version` and `--help`
/// answered without starting anything.
#[tokio::test]
async fn the_servers_command_line_and_exit_codes() {
    let ctx = TestContext::new().await;
    for binary in ["webhook-ingest", "webhook-worker"] {
        let out = run_until_exit(binary, &["--confg", "x"], &ctx.env, Duration::from_secs(10)).await;
        assert_eq!(out.code, 2, "an unknown argument: {out:?}");
        assert!(out.stderr.contains("--confg"), "{out:?}");
        let out = run_until_exit(
            binary,
            &["--config", "/nonexistent/webhook.toml"],
            &ctx.env,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(out.code, 2, "a config file that does not exist: {out:?}");
        assert!(out.stderr.contains("/nonexistent/webhook.toml"), "{out:?}");
        let out = run_until_exit(binary, &["--version"], &ctx.env, Duration::from_secs(10)).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")), "{out:?}");
        let out = run_until_exit(binary, &["--help"], &ctx.env, Duration::from_secs(10)).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("--config"), "{out:?}");
    }
    let mut env = ctx.env.clone();
    env.remove("STRIPE_WEBHOOK_SECRET");
    let out = run_until_exit("webhook-ingest", &[], &env, Duration::from_secs(10)).await;
    assert_eq!(
        out.code, 1,
        "the ingest's view refuses to start without a secret: {out:?}"
    );
    assert!(out.stderr.contains("webhook-ingest cannot start"), "{out:?}");
    assert!(
        out.stderr.contains("STRIPE_WEBHOOK_SECRET is required"),
        "{out:?}"
    );
}

#[tokio::test]
async fn while_rabbitmq_is_unreachable_the_reconnect_log_never_shows_the_password() {
    let ctx = TestContext::new().await;
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut env = ctx.env.clone();
    env.insert(
        "AMQP_URL".into(),
        format!("amqp://guest:{PASSWORD}@127.0.0.1:{port}/%2f"),
    );
    env.insert("RUST_LOG".into(), "info".into());
    let mut child = tokio::process::Command::new(bin_path("webhook-ingest"))
        .env_clear()
        .envs(&env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start webhook-ingest");
    let log = Arc::new(Mutex::new(String::new()));
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let log = log.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
    }
    wait_for(
        "three failed connection attempts in the log",
        Duration::from_secs(20),
        || {
            let log = log.clone();
            async move { (log.lock().unwrap().matches("cannot connect to RabbitMQ").count() >= 3).then_some(()) }
        },
    )
    .await;
    child.kill().await.unwrap();
    let log = log.lock().unwrap().clone();
    assert!(!leaks(&log), "{log}");
    let shown = format!("guest:***@127.0.0.1:{port}/%2f");
    assert!(
        log.contains("webhook-ingest starting") && log.contains(&shown),
        "{log}"
    );
}
