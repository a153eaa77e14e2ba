//! What happens to a failed message: the next broker delay tier, or the dead-letter queue.
//! Either way the message is re-published with a confirm BEFORE the original is acked, so a
//! crash in between leaves a duplicate (harmless, thanks to the ledger), never a loss.

use std::time::Duration;

use webhook_amqp::{Delivery, Headers, Outgoing, Properties, PublishError};
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
        // The first tier at least that long (the tier's own when it is), else the longest left.
        Some(wait) => left
            .iter()
            .copied()
            .find(|d| *d >= wait)
            .or_else(|| left.iter().copied().max())?,
        None => left[0],
    };
    Some((delay, attempt))
}

/// The headers of a re-published message: our own failure headers, the first failure time and
/// original routing key carried over, and none of the broker's `x-death` family (brokers ≥ 3.13
/// own those, and carrying them along could make the broker see a dead-letter cycle).
pub fn failure_headers(delivery: &Delivery, event_type: &str, failure: &Failure, attempt: u32) -> Headers {
    let incoming = delivery.headers();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut h = incoming.without_death_history();
    let first = incoming.get_str(message::H_FIRST_FAILED_AT).unwrap_or(now);
    let original = incoming
        .get_str(message::H_ORIGINAL_ROUTING_KEY)
        .unwrap_or_else(|| event_type.to_owned());
    h.set_i32(message::H_RETRY_ATTEMPT, attempt as i32);
    h.set_str(message::H_ERROR, &truncate(&failure.message, 1000));
    h.set_str(message::H_ERROR_KIND, failure.kind.as_str());
    h.set_str(message::H_FAILED_STEP, failure.step.as_str());
    h.set_str(message::H_FIRST_FAILED_AT, &first);
    h.set_str(message::H_ORIGINAL_ROUTING_KEY, &original);
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
            body: delivery.body(),
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
    headers.set_str(message::H_DEAD_LETTERED_AT, &now);
    let topo = ctx.broker.topology();
    ctx.broker
        .publish(Outgoing {
            exchange: &topo.dead_letter_exchange,
            routing_key: event_type,
            body: delivery.body(),
            properties: republished_properties(delivery, event_type, headers),
        })
        .await
}

fn republished_properties(delivery: &Delivery, event_type: &str, headers: Headers) -> Properties {
    webhook_amqp::job_properties(delivery.message_id().unwrap_or_default(), event_type, headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::Step;

    /// A delivery of `evt_1` with these text headers.
    fn delivery(headers: &[(&str, &str)]) -> Delivery {
        let mut table = Headers::new();
        for (k, v) in headers {
            table.set_str(k, v);
        }
        let properties = Properties::default().with_message_id("evt_1").with_headers(table);
        Delivery::mock("billing.provisioning", b"{}".to_vec(), properties)
    }

    fn text(h: &Headers, key: &str) -> String {
        h.get_str(key).unwrap_or_else(|| panic!("no {key} in {h:?}"))
    }

    #[test]
    fn failure_headers_carry_the_reason_and_drop_the_brokers_own() {
        let incoming = delivery(&[
            ("x-death", "broker's"),
            ("x-first-death-queue", "q"),
            ("x-last-death-reason", "expired"),
            ("x-custom", "kept"),
            (message::H_RETRY_ATTEMPT, "1"),
        ]);
        let failure = Failure::transient(Step::LagoSubscription, "HTTP 503");
        let h = failure_headers(&incoming, "invoice.paid", &failure, 2);
        for broker_owned in ["x-death", "x-first-death-queue", "x-last-death-reason"] {
            assert!(!h.contains(broker_owned), "{broker_owned} carried over");
        }
        assert_eq!(text(&h, "x-custom"), "kept");
        assert_eq!(h.retry_attempt(), 2);
        assert_eq!(text(&h, message::H_ERROR), "HTTP 503");
        assert_eq!(text(&h, message::H_ERROR_KIND), "transient");
        assert_eq!(text(&h, message::H_FAILED_STEP), "lago_subscription");
        assert_eq!(text(&h, message::H_ORIGINAL_ROUTING_KEY), "invoice.paid");
        let first = text(&h, message::H_FIRST_FAILED_AT);
        assert!(chrono::DateTime::parse_from_rfc3339(&first).is_ok(), "{first}");

        // A later failure keeps the first failure's time and the original routing key.
        let again = delivery(&[
            (message::H_FIRST_FAILED_AT, "2026-01-01T00:00:00.000Z"),
            (message::H_ORIGINAL_ROUTING_KEY, "checkout.session.completed"),
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
        let p = republished_properties(&d, "invoice.paid", Headers::new());
        assert_eq!(p.message_id(), Some("evt_1"));
        assert_eq!(p.kind(), Some("invoice.paid"));
        assert_eq!(p.delivery_mode(), Some(2), "persistent");
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
