//! What happens to a failed message: the next broker delay tier, or the dead-letter queue.
//! Either way the message is re-published with a confirm BEFORE the original is acked, so a
//! crash in between leaves a duplicate (harmless, thanks to the ledger), never a loss.

use std::time::Duration;

use webhook_amqp::lapin::message::Delivery;
use webhook_amqp::lapin::types::{AMQPValue, FieldTable, LongString};
use webhook_amqp::{Outgoing, PublishError};
use webhook_core::message::{self, ErrorKind};

use crate::context::WorkerContext;
use crate::failure::Failure;

/// Where a failed message goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Wait in `queue` for `delay`, then come back as attempt `attempt`.
    Retry {
        attempt: u32,
        delay: Duration,
        queue: String,
    },
    DeadLetter,
}

/// Transient failures go through the schedule; permanent ones, or the last tier, to the DLQ.
pub fn next(ctx: &WorkerContext, failure: &Failure, retries_so_far: u32) -> Next {
    if failure.kind == ErrorKind::Permanent {
        return Next::DeadLetter;
    }
    match tier(&ctx.retry_delays, failure, retries_so_far) {
        Some((delay, attempt)) => match ctx.broker.topology().retry_queue(delay) {
            Some(queue) => Next::Retry {
                attempt,
                delay,
                queue: queue.to_owned(),
            },
            None => Next::DeadLetter,
        },
        None => Next::DeadLetter,
    }
}

/// The delay of the schedule (`delays`) a transient failure waits, and the attempt it comes
/// back as; `None` once the schedule is spent. Contention waits in the first tier and keeps
/// its count. A `Retry-After` longer than the tier's delay waits in the first later tier at
/// least that long (the longest one left when none is), and still spends one retry.
pub fn tier(delays: &[Duration], failure: &Failure, retries_so_far: u32) -> Option<(Duration, u32)> {
    let (index, attempt) = if failure.spends_retry {
        (retries_so_far as usize, retries_so_far + 1)
    } else {
        (0, retries_so_far)
    };
    let left = delays.get(index..).filter(|l| !l.is_empty())?;
    let delay = match failure.retry_after {
        Some(wait) if left[0] < wait => left
            .iter()
            .copied()
            .find(|d| *d >= wait)
            .or_else(|| left.iter().copied().max())?,
        _ => left[0],
    };
    Some((delay, attempt))
}

/// Our retry count (`x-retry-attempt`), 0 for a first delivery.
pub fn retries_so_far(delivery: &Delivery) -> u32 {
    header(delivery.properties.headers().as_ref(), message::H_RETRY_ATTEMPT)
        .and_then(|v| match v {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
            AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
            AMQPValue::ShortShortInt(n) => u32::try_from(*n).ok(),
            AMQPValue::ShortShortUInt(n) => Some(u32::from(*n)),
            AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
            AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
            AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::LongUInt(n) => Some(*n),
            AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
            _ => None,
        })
        .unwrap_or(0)
}

fn header<'a>(headers: Option<&'a FieldTable>, key: &str) -> Option<&'a AMQPValue> {
    headers?.inner().get(key)
}

fn header_str(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match header(headers, key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

/// The headers of a re-published message: our own failure headers, the first failure time and
/// original routing key carried over, and none of the broker's `x-death` family (brokers ≥ 3.13
/// own those, and carrying them along could make the broker see a dead-letter cycle).
pub fn failure_headers(delivery: &Delivery, event_type: &str, failure: &Failure, attempt: u32) -> FieldTable {
    let incoming = delivery.properties.headers().as_ref();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut h = FieldTable::default();
    if let Some(incoming) = incoming {
        for (k, v) in incoming.inner() {
            let k = k.as_str();
            if !k.starts_with("x-death") && !k.starts_with("x-first-death") && !k.starts_with("x-last-death")
            {
                h.insert(k.into(), v.clone());
            }
        }
    }
    let first = header_str(incoming, message::H_FIRST_FAILED_AT).unwrap_or_else(|| now.clone());
    let original =
        header_str(incoming, message::H_ORIGINAL_ROUTING_KEY).unwrap_or_else(|| event_type.to_owned());
    h.insert(
        message::H_RETRY_ATTEMPT.into(),
        AMQPValue::LongInt(attempt as i32),
    );
    h.insert(message::H_ERROR.into(), s(&truncate(&failure.message, 1000)));
    h.insert(message::H_ERROR_KIND.into(), s(failure.kind.as_str()));
    h.insert(message::H_FAILED_STEP.into(), s(failure.step.as_str()));
    h.insert(message::H_FIRST_FAILED_AT.into(), s(&first));
    h.insert(message::H_ORIGINAL_ROUTING_KEY.into(), s(&original));
    h
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Publishes the message to the retry queue of the next tier (through the default exchange,
/// straight to the queue), with a confirm.
pub async fn schedule(
    ctx: &WorkerContext,
    delivery: &Delivery,
    event_type: &str,
    failure: &Failure,
    attempt: u32,
    queue: &str,
) -> Result<(), PublishError> {
    let headers = failure_headers(delivery, event_type, failure, attempt);
    ctx.broker
        .publish(Outgoing {
            exchange: "",
            routing_key: queue,
            body: &delivery.data,
            properties: republished_properties(delivery, event_type, headers),
        })
        .await
}

/// Publishes the message to the dead-letter exchange with the reason headers, with a confirm.
pub async fn dead_letter(
    ctx: &WorkerContext,
    delivery: &Delivery,
    event_type: &str,
    failure: &Failure,
    retries_so_far: u32,
) -> Result<(), PublishError> {
    let mut headers = failure_headers(delivery, event_type, failure, retries_so_far);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    headers.insert(message::H_DEAD_LETTERED_AT.into(), s(&now));
    let topo = ctx.broker.topology();
    ctx.broker
        .publish(Outgoing {
            exchange: &topo.dead_letter_exchange,
            routing_key: event_type,
            body: &delivery.data,
            properties: republished_properties(delivery, event_type, headers),
        })
        .await
}

fn republished_properties(
    delivery: &Delivery,
    event_type: &str,
    headers: FieldTable,
) -> webhook_amqp::lapin::BasicProperties {
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    webhook_amqp::job_properties(&message_id, event_type, headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::Step;
    use webhook_amqp::lapin::BasicProperties;
    use webhook_amqp::lapin::types::ShortString;

    fn delivery(headers: &[(&str, AMQPValue)]) -> Delivery {
        let mut d = Delivery::mock(1, "".into(), "billing.provisioning".into(), false, b"{}".to_vec());
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), v.clone());
        }
        d.properties = BasicProperties::default()
            .with_message_id("evt_1".into())
            .with_headers(table);
        d
    }

    fn get<'a>(h: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
        h.inner().get(key)
    }

    fn text(h: &FieldTable, key: &str) -> String {
        header_str(Some(h), key).unwrap_or_else(|| panic!("no {key} in {h:?}"))
    }

    #[test]
    fn the_retry_count_is_read_whatever_integer_or_string_type_carries_it() {
        let count = |v: AMQPValue| retries_so_far(&delivery(&[(message::H_RETRY_ATTEMPT, v)]));
        assert_eq!(retries_so_far(&delivery(&[])), 0, "a first delivery");
        let mut bare = delivery(&[]);
        bare.properties = BasicProperties::default();
        assert_eq!(retries_so_far(&bare), 0, "no headers at all");
        assert_eq!(count(s(" 3 ")), 3);
        assert_eq!(count(AMQPValue::ShortString(ShortString::from(" 4"))), 4);
        assert_eq!(count(AMQPValue::ShortShortInt(5)), 5);
        assert_eq!(count(AMQPValue::ShortShortUInt(6)), 6);
        assert_eq!(count(AMQPValue::ShortInt(7)), 7);
        assert_eq!(count(AMQPValue::ShortUInt(8)), 8);
        assert_eq!(count(AMQPValue::LongInt(9)), 9);
        assert_eq!(count(AMQPValue::LongUInt(10)), 10);
        assert_eq!(count(AMQPValue::LongLongInt(11)), 11);
        // What is not a count starts the schedule over rather than failing the message.
        assert_eq!(count(AMQPValue::LongInt(-1)), 0);
        assert_eq!(count(s("two")), 0);
        assert_eq!(count(AMQPValue::Boolean(true)), 0);
    }

    #[test]
    fn failure_headers_carry_the_reason_and_drop_the_brokers_own() {
        let incoming = delivery(&[
            ("x-death", s("broker's")),
            ("x-first-death-queue", s("q")),
            ("x-last-death-reason", s("expired")),
            ("x-custom", s("kept")),
            (message::H_RETRY_ATTEMPT, AMQPValue::LongInt(1)),
        ]);
        let failure = Failure::transient(Step::LagoSubscription, "HTTP 503");
        let h = failure_headers(&incoming, "invoice.paid", &failure, 2);
        for broker_owned in ["x-death", "x-first-death-queue", "x-last-death-reason"] {
            assert!(get(&h, broker_owned).is_none(), "{broker_owned} carried over");
        }
        assert_eq!(text(&h, "x-custom"), "kept");
        assert_eq!(get(&h, message::H_RETRY_ATTEMPT), Some(&AMQPValue::LongInt(2)));
        assert_eq!(text(&h, message::H_ERROR), "HTTP 503");
        assert_eq!(text(&h, message::H_ERROR_KIND), "transient");
        assert_eq!(text(&h, message::H_FAILED_STEP), "lago_subscription");
        assert_eq!(text(&h, message::H_ORIGINAL_ROUTING_KEY), "invoice.paid");
        let first = text(&h, message::H_FIRST_FAILED_AT);
        assert!(chrono::DateTime::parse_from_rfc3339(&first).is_ok(), "{first}");

        // A later failure keeps the first failure's time and the original routing key.
        let again = delivery(&[
            (message::H_FIRST_FAILED_AT, s("2026-01-01T00:00:00.000Z")),
            (
                message::H_ORIGINAL_ROUTING_KEY,
                AMQPValue::ShortString("checkout.session.completed".into()),
            ),
        ]);
        let failure = Failure::permanent(Step::Parse, "no id");
        let h = failure_headers(&again, "other", &failure, 3);
        assert_eq!(text(&h, message::H_FIRST_FAILED_AT), "2026-01-01T00:00:00.000Z");
        assert_eq!(
            text(&h, message::H_ORIGINAL_ROUTING_KEY),
            "checkout.session.completed"
        );
        assert_eq!(text(&h, message::H_ERROR_KIND), "permanent");
    }

    #[test]
    fn a_long_error_is_cut_on_a_character_boundary() {
        let failure = Failure::transient(Step::KeycloakAttributes, format!("a{}", "é".repeat(600)));
        let h = failure_headers(&delivery(&[]), "invoice.paid", &failure, 1);
        let error = text(&h, message::H_ERROR);
        assert!(error.ends_with('…'), "{error}");
        // Byte 1000 falls in the middle of the 500th "é": the "a" and 499 whole ones are kept.
        assert_eq!(error.trim_end_matches('…'), format!("a{}", "é".repeat(499)));
        assert_eq!(truncate("short", 5), "short");
        assert_eq!(truncate("longer", 5), "longe…");
    }

    #[test]
    fn a_republished_message_keeps_its_id_and_gets_the_job_properties() {
        let d = delivery(&[]);
        let p = republished_properties(&d, "invoice.paid", FieldTable::default());
        assert_eq!(p.message_id().as_ref().map(|m| m.as_str()), Some("evt_1"));
        assert_eq!(p.kind().as_ref().map(|m| m.as_str()), Some("invoice.paid"));
        assert_eq!(p.delivery_mode(), &Some(2), "persistent");
    }

    fn secs(list: &[u64]) -> Vec<Duration> {
        list.iter().copied().map(Duration::from_secs).collect()
    }

    fn failure(spends_retry: bool, retry_after: Option<u64>) -> Failure {
        Failure {
            spends_retry,
            retry_after: retry_after.map(Duration::from_secs),
            ..Failure::transient(Step::LagoSubscription, "HTTP 429")
        }
    }

    #[test]
    fn each_retry_takes_the_next_tier_until_the_schedule_is_spent() {
        let delays = secs(&[5, 30, 120]);
        let f = failure(true, None);
        assert_eq!(tier(&delays, &f, 0), Some((Duration::from_secs(5), 1)));
        assert_eq!(tier(&delays, &f, 2), Some((Duration::from_secs(120), 3)));
        assert_eq!(tier(&delays, &f, 3), None);
        assert_eq!(tier(&[], &f, 0), None);
    }

    #[test]
    fn contention_waits_in_the_first_tier_and_keeps_its_count() {
        let delays = secs(&[5, 30]);
        assert_eq!(
            tier(&delays, &failure(false, None), 1),
            Some((Duration::from_secs(5), 1))
        );
    }

    #[test]
    fn a_retry_after_waits_in_the_first_tier_at_least_that_long() {
        let delays = secs(&[5, 30, 120, 600]);
        // Shorter than the tier: the tier.
        assert_eq!(
            tier(&delays, &failure(true, Some(3)), 0),
            Some((Duration::from_secs(5), 1))
        );
        // Exactly a tier, or between two: that tier or the next, one retry spent.
        assert_eq!(
            tier(&delays, &failure(true, Some(30)), 0),
            Some((Duration::from_secs(30), 1))
        );
        assert_eq!(
            tier(&delays, &failure(true, Some(31)), 1),
            Some((Duration::from_secs(120), 2))
        );
        // Never an earlier tier than the schedule's, and the longest left when none is long
        // enough.
        assert_eq!(
            tier(&delays, &failure(true, Some(10)), 2),
            Some((Duration::from_secs(120), 3))
        );
        assert_eq!(
            tier(&delays, &failure(true, Some(3600)), 1),
            Some((Duration::from_secs(600), 2))
        );
        assert_eq!(tier(&delays, &failure(true, Some(3600)), 4), None);
    }
}
