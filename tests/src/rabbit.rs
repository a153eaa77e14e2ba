//! RabbitMQ helpers for tests: read queues, count messages, delete a test's topology.

use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, message::BasicGetMessage};
use webhook_amqp::{Headers, Topology};
use webhook_core::{Settings, message};

pub fn topology(settings: &Settings) -> Topology {
    Topology::new(
        &settings.amqp,
        &settings.worker.retry_schedule,
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

/// Messages ready in `queue` and its consumers, at once and exactly (a passive declare).
async fn declare_passive(queue: &str) -> Result<(u32, u32), lapin::Error> {
    use lapin::options::QueueDeclareOptions;
    let (_conn, ch) = channel().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok((q.message_count(), q.consumer_count()))
}

/// Messages *ready* in `queue` (a passive declare: exact and immediate). Messages delivered to
/// a consumer and not yet acked are not among them: see [`unacked`] (in flight while a consumer
/// runs) and [`all_messages`] (everything, once the consumers are gone). Panics when the queue
/// does not exist: a count of a queue that is not there proves nothing.
pub async fn depth(queue: &str) -> u32 {
    match declare_passive(queue).await {
        Ok((ready, _)) => ready,
        Err(e) => panic!("cannot count the messages of queue {queue}: it does not exist ({e})"),
    }
}

/// Consumers of `queue` (a passive declare: exact and immediate). Panics when the queue does
/// not exist.
pub async fn consumers(queue: &str) -> u32 {
    match declare_passive(queue).await {
        Ok((_, consumers)) => consumers,
        Err(e) => panic!("cannot count the consumers of queue {queue}: it does not exist ({e})"),
    }
}

/// Every message of `queue`, ready or in flight, exactly: waits (up to 20 s) until nobody
/// consumes the queue (stop the consumers first), then counts the ready ones. When a consumer
/// goes, the broker puts back what it held unacked in the same step as it removes the consumer,
/// so with no consumer left nothing can be in flight. Panics when the queue does not exist, or
/// when it is still consumed after 20 s.
pub async fn all_messages(queue: &str) -> u32 {
    super::wait_for(
        &format!("nobody to consume {queue} (stop its consumers before counting all of it)"),
        Duration::from_secs(20),
        || async { (consumers(queue).await == 0).then_some(()) },
    )
    .await;
    depth(queue).await
}

/// The RabbitMQ management API (`TEST_RABBITMQ_MANAGEMENT_URL`, default
/// `http://127.0.0.1:15672`, as guest/guest: `make services` enables the plugin).
pub fn management_url() -> String {
    std::env::var("TEST_RABBITMQ_MANAGEMENT_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".into())
}

/// The vhost of [`super::amqp_url`] (the last segment of its path, percent-decoded; `/` when
/// there is none).
fn vhost() -> String {
    let url = super::amqp_url();
    let encoded = url.rsplit_once('/').map(|(_, v)| v).unwrap_or("");
    if encoded.is_empty() || url.matches('/').count() < 3 {
        return "/".into();
    }
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], encoded.get(i + 1..i + 3)) {
            (b'%', Some(hex)) if u8::from_str_radix(hex, 16).is_ok() => {
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("the vhost of TEST_AMQP_URL is UTF-8")
}

/// Messages of `queue` delivered to a consumer and not yet acked (or returned): the ones in
/// flight, from the management API. These are the broker's statistics, which trail the queue by
/// a few seconds (a quorum queue reports them every 5 s, the API collects every 5 s): wait for
/// a value with [`wait_unacked`] rather than reading it once. Panics when the queue does not
/// exist or the API does not answer.
pub async fn unacked(queue: &str) -> u32 {
    let mut url = reqwest::Url::parse(&management_url()).expect("TEST_RABBITMQ_MANAGEMENT_URL is a URL");
    url.path_segments_mut()
        .expect("an http URL")
        .extend(["api", "queues", &vhost(), queue]);
    let resp = reqwest::Client::new()
        .get(url.clone())
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the RabbitMQ management API does not answer at {url} ({e}): \
                 enable it with `rabbitmq-plugins enable rabbitmq_management` (make services does)"
            )
        });
    let status = resp.status();
    assert!(
        status != 404,
        "cannot count the unacked messages of queue {queue}: it does not exist"
    );
    assert!(status.is_success(), "{url} answered {status}");
    let body: serde_json::Value = resp.json().await.expect("the management API answers JSON");
    // A queue the statistics have not reached yet has no counts: nothing reported so far.
    body["messages_unacknowledged"].as_u64().unwrap_or(0) as u32
}

/// Waits (up to `timeout`) until the broker reports `want` messages of `queue` in flight
/// (unacked); see [`unacked`] for why this waits rather than reads.
pub async fn wait_unacked(queue: &str, want: u32, timeout: Duration) {
    super::wait_for(
        &format!("{want} messages of {queue} in flight (unacked)"),
        timeout,
        || async { (unacked(queue).await == want).then_some(()) },
    )
    .await
}

/// Whether `queue` exists.
pub async fn exists(queue: &str) -> bool {
    declare_passive(queue).await.is_ok()
}

pub async fn delete_topology(settings: &Settings) {
    let topo = topology(settings);
    let Ok(conn) = tokio::time::timeout(
        Duration::from_secs(5),
        webhook_amqp::Connection::connect(&super::amqp_url(), "webhook-tests"),
    )
    .await
    else {
        return;
    };
    let Ok(conn) = conn else { return };
    webhook_amqp::topology::delete(&conn, &topo).await;
    conn.close("test done").await;
}

/// Publishes a message the way the ingest does (persistent, `message_id`), bypassing the ingest.
pub async fn publish(exchange: &str, routing_key: &str, body: &[u8], message_id: &str) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let (_conn, ch) = channel().await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let props = webhook_amqp::job_properties(message_id, routing_key, Headers::new()).into();
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
        matches!(confirm, lapin::Confirmation::Ack(None)),
        "published and routed"
    );
}

/// A header of a message as text (strings and integers).
pub fn header(m: &BasicGetMessage, key: &str) -> Option<String> {
    use lapin::types::AMQPValue;
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
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let (_conn, ch) = channel().await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let mut confirms = Vec::new();
    for (id, body) in messages {
        let mut h = Headers::new();
        h.set_str(message::H_ERROR, error);
        h.set_str(message::H_ERROR_KIND, "transient");
        h.set_str(message::H_FAILED_STEP, "keycloak_lookup");
        h.set_i32(message::H_RETRY_ATTEMPT, 8);
        h.set_str(message::H_FIRST_FAILED_AT, "2026-11-27T10:00:00.000Z");
        h.set_str(message::H_ORIGINAL_ROUTING_KEY, "checkout.session.completed");
        h.set_str(message::H_DEAD_LETTERED_AT, "2026-11-27T16:00:00.000Z");
        let props = webhook_amqp::job_properties(id, "checkout.session.completed", h).into();
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
        assert!(matches!(c.await.unwrap(), lapin::Confirmation::Ack(None)));
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
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    const BATCH: usize = 2_000;
    let (conn, ch) = channel().await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let padding = "x".repeat(body_bytes.saturating_sub(120));
    for start in ids.clone().step_by(BATCH) {
        let mut confirms = Vec::with_capacity(BATCH);
        for i in start..(start + BATCH).min(ids.end) {
            let (id, kind) = (format!("evt_bulk_{i}"), event_type(i));
            let body = serde_json::json!({
                "id": id, "type": kind, "created": 1_700_000_000,
                "data": {"object": {"id": format!("cs_bulk_{i}"), "padding": padding}},
            })
            .to_string();
            let mut h = Headers::new();
            h.set_str(message::H_ERROR, "no Keycloak user has the email (bulk)");
            h.set_str(message::H_ERROR_KIND, "transient");
            h.set_str(message::H_FAILED_STEP, "keycloak_lookup");
            h.set_i32(message::H_RETRY_ATTEMPT, 8);
            h.set_str(message::H_ORIGINAL_ROUTING_KEY, kind);
            h.set_str(message::H_DEAD_LETTERED_AT, "2026-11-27T16:00:00.000Z");
            let props = webhook_amqp::job_properties(&id, kind, h).into();
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
                matches!(c.await.unwrap(), lapin::Confirmation::Ack(None)),
                "dead letter confirmed and routed"
            );
        }
    }
    let _ = ch.close(200, "published".into()).await;
    let _ = conn.close(200, "published".into()).await;
}

/// Deletes every queue and exchange whose name starts with `prefix` (a test's leftovers, e.g.
/// the retry queues of a schedule other than the context's), found through the management API.
/// Best effort: a broker or API that does not answer leaves them.
pub async fn delete_prefixed(prefix: &str) {
    let client = reqwest::Client::new();
    let list = |kind: &'static str| {
        let client = client.clone();
        async move {
            let mut url = reqwest::Url::parse(&management_url()).ok()?;
            url.path_segments_mut().ok()?.extend(["api", kind, &vhost()]);
            url.query_pairs_mut().append_pair("columns", "name");
            let names: Vec<serde_json::Value> = client
                .get(url)
                .basic_auth("guest", Some("guest"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            Some(
                names
                    .iter()
                    .filter_map(|n| n["name"].as_str())
                    .filter(|n| n.starts_with(prefix))
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            )
        }
    };
    let (queues, exchanges) = (list("queues").await, list("exchanges").await);
    if queues.as_ref().is_none_or(Vec::is_empty) && exchanges.as_ref().is_none_or(Vec::is_empty) {
        return;
    }
    let Ok(Ok(conn)) = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(&super::amqp_url(), ConnectionProperties::default()),
    )
    .await
    else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        for q in queues.unwrap_or_default() {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
        for e in exchanges.unwrap_or_default() {
            let _ = ch.exchange_delete(e.as_str().into(), Default::default()).await;
        }
    }
    let _ = conn.close(200, "test done".into()).await;
}
