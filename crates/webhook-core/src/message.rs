//! The queue message schema shared by ingest, worker and webhookctl.
//!
//! A job is the Stripe event body exactly as Stripe signed it (so the worker, a replay and an
//! operator all see the same bytes), published with `message_id` = event id, `type` = event type,
//! `content_type` = `application/json`, persistent delivery, and these headers when relevant.

/// The top-level body key of a reconcile job (`webhookctl reconcile --fix`): an event envelope
/// of our own around Stripe's current subscription, `{"webhook_reconcile": {"requested_by", "drifts"}}`.
/// Stripe's events never carry it.
pub const RECONCILE_KEY: &str = "webhook_reconcile";

/// How many broker-level retries the message has been through (our own count: brokers ≥ 3.13
/// ignore a client-supplied `x-death`, so it cannot carry the count).
pub const H_RETRY_ATTEMPT: &str = "x-retry-attempt";
/// Why the last attempt failed (a readable sentence).
pub const H_ERROR: &str = "x-error";
/// `transient` or `permanent`.
pub const H_ERROR_KIND: &str = "x-error-kind";
/// The step that failed, e.g. `keycloak_lookup`.
pub const H_FAILED_STEP: &str = "x-failed-step";
/// RFC 3339 time of the first failure of this event.
pub const H_FIRST_FAILED_AT: &str = "x-first-failed-at";
/// Routing key (event type) the message was first published with.
pub const H_ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
/// RFC 3339 time the message was dead-lettered.
pub const H_DEAD_LETTERED_AT: &str = "x-dead-lettered-at";

/// RFC 3339 time an operator put the message back (`webhookctl dlq requeue`/`restore`).
pub const H_REQUEUED_AT: &str = "x-requeued-at";

/// The W3C trace context the job rides in (written and read by `webhook_amqp::trace_context`).
pub const H_TRACEPARENT: &str = "traceparent";
pub const H_TRACESTATE: &str = "tracestate";

/// The broker's: its dead-letter history (an array of tables, one per queue, each with a
/// `count`), and the prefixes of its summary of the first and last dead-lettering.
pub const H_DEATH: &str = "x-death";
pub const H_FIRST_DEATH_PREFIX: &str = "x-first-death";
pub const H_LAST_DEATH_PREFIX: &str = "x-last-death";
/// The broker's: how many times this message was delivered or acquired (quorum queues).
pub const H_DELIVERY_COUNT: &str = "x-delivery-count";
pub const H_ACQUIRED_COUNT: &str = "x-acquired-count";

/// Whether `name` is part of the broker's dead-letter history (`x-death*`, `x-first-death*`,
/// `x-last-death*`), which brokers ≥ 3.13 own: a message of ours never carries it along.
pub fn is_death_history(name: &str) -> bool {
    [H_DEATH, H_FIRST_DEATH_PREFIX, H_LAST_DEATH_PREFIX]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Whether `name` is one of the broker's counts of this delivery.
pub fn is_delivery_count(name: &str) -> bool {
    name == H_DELIVERY_COUNT || name == H_ACQUIRED_COUNT
}

/// Whether `name` is a header the broker sets on delivery: it describes a past queue or
/// delivery, not the message.
pub fn is_broker_header(name: &str) -> bool {
    is_death_history(name) || is_delivery_count(name)
}

pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Whether a failure can be fixed by trying again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Transient,
    Permanent,
    /// Our own infrastructure failed the message, not the job (e.g. its retry queue is missing).
    Infrastructure,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Infrastructure => "infrastructure",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorKind;

    #[test]
    fn error_kinds_are_written_as_the_x_error_kind_header_says() {
        for (kind, text) in [
            (ErrorKind::Transient, "transient"),
            (ErrorKind::Permanent, "permanent"),
            (ErrorKind::Infrastructure, "infrastructure"),
        ] {
            assert_eq!(kind.as_str(), text);
            assert_eq!(kind.to_string(), text);
        }
    }

    #[test]
    fn the_brokers_headers_are_told_from_ours() {
        for name in ["x-death", "x-first-death-reason", "x-last-death-queue"] {
            assert!(super::is_death_history(name), "{name}");
            assert!(super::is_broker_header(name), "{name}");
            assert!(!super::is_delivery_count(name), "{name}");
        }
        for name in ["x-delivery-count", "x-acquired-count"] {
            assert!(super::is_delivery_count(name), "{name}");
            assert!(super::is_broker_header(name), "{name}");
            assert!(!super::is_death_history(name), "{name}");
        }
        for name in [
            super::H_RETRY_ATTEMPT,
            super::H_ERROR,
            super::H_FAILED_STEP,
            "traceparent",
            "x-delivery",
        ] {
            assert!(!super::is_broker_header(name), "{name}");
            assert!(!super::is_delivery_count(name), "{name}");
        }
    }
}
