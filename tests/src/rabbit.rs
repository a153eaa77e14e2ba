//! RabbitMQ helpers for tests: read queues, count messages, delete a test's topology.

use std::time::Duration;

use webhook_amqp::Topology;
use webhook_amqp::lapin::options::BasicGetOptions;
use webhook_amqp::lapin::types::FieldTable;
use webhook_amqp::lapin::{Channel, Connection, ConnectionProperties, message::BasicGetMessage};
use webhook_core::Settings;

pub fn topology(settings: &Settings) -> Topology {
    Topology::new(
        &settings.amqp,
        &settings.worker.retry_delays().unwrap(),
        &settings.stripe.handled_event_types,
    )
}

pub async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(&super::amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// Takes (acks) every message currently in `queue`.
pub async fn drain(queue: &str) -> Vec<BasicGetMessage> {
    let (_conn, ch) = channel().await;
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(m);
    }
    out
}

/// Messages ready in `queue` (passive declare).
pub async fn depth(queue: &str) -> u32 {
    let (_conn, ch) = channel().await;
    webhook_amqp::topology::queue_depth(&ch, queue).await.unwrap_or(0)
}

/// Whether `queue` exists.
pub async fn exists(queue: &str) -> bool {
    let (_conn, ch) = channel().await;
    webhook_amqp::topology::queue_depth(&ch, queue).await.is_ok()
}

pub async fn delete_topology(settings: &Settings) {
    let topo = topology(settings);
    let Ok(conn) = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(&super::amqp_url(), ConnectionProperties::default()),
    )
    .await
    else {
        return;
    };
    let Ok(conn) = conn else { return };
    webhook_amqp::topology::delete(&conn, &topo).await;
    let _ = conn.close(200, "test done".into()).await;
}

/// Publishes a message the way the ingest does (persistent, `message_id`), bypassing the ingest.
pub async fn publish(exchange: &str, routing_key: &str, body: &[u8], message_id: &str) {
    use webhook_amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let (_conn, ch) = channel().await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let props = webhook_amqp::job_properties(message_id, routing_key, FieldTable::default());
    let confirm = ch
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        matches!(confirm, webhook_amqp::lapin::Confirmation::Ack(None)),
        "published and routed"
    );
}

/// A header of a message as text (strings and integers).
pub fn header(m: &BasicGetMessage, key: &str) -> Option<String> {
    use webhook_amqp::lapin::types::AMQPValue;
    match m.delivery.properties.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Looks at every message of `queue` and gives them all back (bodies and headers).
pub async fn peek(queue: &str) -> Vec<(Vec<u8>, Option<FieldTable>)> {
    let (conn, ch) = channel().await;
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
    {
        out.push((m.delivery.data.clone(), m.delivery.properties.headers().clone()));
    }
    let _ = ch.close(200, "peeked".into()).await;
    let _ = conn.close(200, "peeked".into()).await;
    out
}

/// Publishes `n` messages to the dead-letter exchange as the worker would dead-letter them.
pub async fn publish_dead_letters(exchange: &str, messages: &[(String, Vec<u8>)], error: &str) {
    use webhook_amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use webhook_amqp::lapin::types::{AMQPValue, LongString};
    let (_conn, ch) = channel().await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let mut confirms = Vec::new();
    for (id, body) in messages {
        let mut h = FieldTable::default();
        let s = |v: &str| AMQPValue::LongString(LongString::from(v));
        h.insert("x-error".into(), s(error));
        h.insert("x-error-kind".into(), s("transient"));
        h.insert("x-failed-step".into(), s("keycloak_lookup"));
        h.insert("x-retry-attempt".into(), AMQPValue::LongInt(8));
        h.insert("x-first-failed-at".into(), s("2026-11-27T10:00:00.000Z"));
        h.insert("x-original-routing-key".into(), s("checkout.session.completed"));
        h.insert("x-dead-lettered-at".into(), s("2026-11-27T16:00:00.000Z"));
        let props = webhook_amqp::job_properties(id, "checkout.session.completed", h);
        confirms.push(
            ch.basic_publish(
                exchange.into(),
                "checkout.session.completed".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(matches!(
            c.await.unwrap(),
            webhook_amqp::lapin::Confirmation::Ack(None)
        ));
    }
}

/// Publishes dead letters numbered `ids` to the dead-letter exchange `exchange` as fast as the
/// broker takes them (publisher confirms awaited per batch of 2,000), shaped as the worker
/// dead-letters: message `i` has the id `evt_bulk_{i}`, the event type `event_type(i)` (in
/// `x-original-routing-key`, as the worker sets it) and a JSON body of about `body_bytes`.
pub async fn publish_many_dead_letters(
    exchange: &str,
    ids: std::ops::Range<usize>,
    body_bytes: usize,
    event_type: impl Fn(usize) -> &'static str,
) {
    use webhook_amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use webhook_amqp::lapin::types::{AMQPValue, LongString};
    const BATCH: usize = 2_000;
    let (conn, ch) = channel().await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let padding = "x".repeat(body_bytes.saturating_sub(120));
    let s = |v: &str| AMQPValue::LongString(LongString::from(v));
    for start in ids.clone().step_by(BATCH) {
        let mut confirms = Vec::with_capacity(BATCH);
        for i in start..(start + BATCH).min(ids.end) {
            let (id, kind) = (format!("evt_bulk_{i}"), event_type(i));
            let body = serde_json::json!({
                "id": id, "type": kind, "created": 1_700_000_000,
                "data": {"object": {"id": format!("cs_bulk_{i}"), "padding": padding}},
            })
            .to_string();
            let mut h = FieldTable::default();
            h.insert("x-error".into(), s("no Keycloak user has the email (bulk)"));
            h.insert("x-error-kind".into(), s("transient"));
            h.insert("x-failed-step".into(), s("keycloak_lookup"));
            h.insert("x-retry-attempt".into(), AMQPValue::LongInt(8));
            h.insert("x-original-routing-key".into(), s(kind));
            h.insert("x-dead-lettered-at".into(), s("2026-11-27T16:00:00.000Z"));
            let props = webhook_amqp::job_properties(&id, kind, h);
            confirms.push(
                ch.basic_publish(
                    exchange.into(),
                    kind.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body.as_bytes(),
                    props,
                )
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            assert!(
                matches!(c.await.unwrap(), webhook_amqp::lapin::Confirmation::Ack(None)),
                "dead letter confirmed and routed"
            );
        }
    }
    let _ = ch.close(200, "published".into()).await;
    let _ = conn.close(200, "published".into()).await;
}
