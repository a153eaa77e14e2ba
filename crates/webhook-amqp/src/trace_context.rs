//! The W3C trace context in AMQP headers: `traceparent` (and `tracestate`) ride with a job from
//! the ingest's request to the worker, as long strings, like any header of ours.
//!
//! Every re-publish copies the incoming headers (a retry tier, the dead-letter queue,
//! `webhookctl dlq requeue`/`restore`), so a retried or requeued job stays in the trace it
//! started in. With tracing off, nothing is written and nothing is read.

use lapin::types::{AMQPValue, FieldTable, LongString};

/// The W3C header names.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Adds the trace context of `span` to `headers`.
pub fn inject(span: &tracing::Span, headers: &mut FieldTable) {
    webhook_core::telemetry::inject(span, |key, value| {
        headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    });
}

/// The headers of a new job: only its trace context.
pub fn headers_of(span: &tracing::Span) -> FieldTable {
    let mut headers = FieldTable::default();
    inject(span, &mut headers);
    headers
}

/// Makes the trace context in `headers` (if any) the parent of `span` (not yet entered).
pub fn continue_trace(span: &tracing::Span, headers: Option<&FieldTable>) {
    webhook_core::telemetry::set_remote_parent(span, |key| match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    });
}
