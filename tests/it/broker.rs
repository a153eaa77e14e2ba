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
