//! The confirmed publisher against the real RabbitMQ: every publish's answer is its own.

use std::time::Duration;

use futures_util::future::join_all;
use webhook_amqp::{Broker, BrokerConfig, Headers, Outgoing, PublishError, job_properties};
use webhook_tests::{TestContext, rabbit};

/// Many concurrent publishes on one process's broker, half of them unroutable (no binding for
/// their routing key): each one that is answered `Ok` is on the queue, and each unroutable one
/// is answered `Returned`. RabbitMQ acknowledges several publishes at once (`multiple`), and a
/// return must not be credited to another publish of the same acknowledgement: an unroutable
/// event answered `Ok` would be acked to Stripe while queued nowhere.
#[tokio::test]
async fn every_publish_gets_its_own_answer_under_concurrent_returns() {
    let ctx = TestContext::new().await;
    let settings = ctx.settings();
    let broker = Broker::start(BrokerConfig::from_settings(&settings, "broker-test").unwrap());
    broker
        .wait_connected(Duration::from_secs(20))
        .await
        .expect("connected and topology declared");
    let topo = broker.topology().clone();
    let n = 2000;
    let results = join_all((0..n).map(|i| {
        let broker = &broker;
        let topo = &topo;
        async move {
            // Even: a handled type (bound to the work queue); odd: nothing routes it.
            let routing_key = if i % 2 == 0 {
                "checkout.session.completed"
            } else {
                "no.such.type"
            };
            let id = format!("evt_pub_{i}");
            let body = format!("{{\"id\":\"{id}\"}}");
            let r = broker
                .publish(Outgoing {
                    exchange: &topo.exchange,
                    routing_key,
                    body: body.as_bytes(),
                    properties: job_properties(&id, routing_key, Headers::new()),
                })
                .await;
            (i, r)
        }
    }))
    .await;
    let mut wrong = Vec::new();
    for (i, r) in &results {
        match (i % 2 == 0, r) {
            (true, Ok(())) | (false, Err(PublishError::Returned(_))) => {}
            (routable, other) => wrong.push(format!("{i} (routable: {routable}): {other:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} publishes got another's answer: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let queued = rabbit::drain(&topo.work_queue).await;
    assert_eq!(queued.len(), n / 2, "every Ok is on the queue, nothing else");
    broker.close().await;
}

/// `AMQP_URL` lists two nodes nobody listens on beside the real one: the worker, the ingest
/// binary and `webhookctl` each go through the list (a shuffled order of their own) until one
/// answers, and none shows the password. With three nodes, two of them dead, a process starts on
/// a dead node two times in three.
#[tokio::test]
async fn dead_nodes_in_amqp_url_are_skipped_by_every_binary() {
    use webhook_sandbox::SeedUser;
    use webhook_tests::ingest::IngestProcess;
    use webhook_tests::worker::{TestSandbox, TestWorker, worker_settings};
    use webhook_tests::{signed_event, wait_event_status, webhookctl};

    const PASSWORD: &str = "guest";
    let ctx = TestContext::new().await;
    let real = ctx.env["AMQP_URL"].clone();
    assert!(real.contains(&format!(":{PASSWORD}@127.0.0.1:5672/")), "{real}");
    let dead = |port: u16| real.replace("127.0.0.1:5672", &format!("127.0.0.1:{port}"));
    let list = format!(
        "{},{},{real}",
        dead(webhook_tests::free_port()),
        dead(webhook_tests::free_port())
    );
    let sandbox = TestSandbox::spawn().await;
    sandbox.state.add_user(SeedUser {
        email: "nodes@example.com".into(),
        ..SeedUser::default()
    });
    let worker = TestWorker::spawn(worker_settings(&ctx, &sandbox, &[("AMQP_URL", &list)]))
        .await
        .ready()
        .await;
    let mut env = ctx.env.clone();
    env.insert("AMQP_URL".into(), list.clone());
    let ingest = IngestProcess::start(&env).await;
    let event = signed_event("checkout.session.completed", "nodes@example.com");
    let answer = reqwest::Client::new()
        .post(format!("{}/webhooks/stripe", ingest.url))
        .header("content-type", "application/json")
        .header("stripe-signature", &event.signature)
        .body(event.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    wait_event_status(&ctx.pool().await, &event.event_id, "succeeded").await;
    let out = webhookctl(&env, &["dlq", "list", "--json"]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains(&format!(":{PASSWORD}@")), "{}", out.stderr);
    worker.stop().await;
    sandbox.stop().await;
}
