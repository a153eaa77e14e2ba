//! The W3C trace context in AMQP headers: `traceparent` (and `tracestate`) ride with a job from
//! the ingest's request to the worker, as long strings, like any header of ours.
//!
//! Every re-publish copies the incoming headers (a retry tier, the dead-letter queue,
//! `webhookctl dlq requeue`/`restore`), so a retried or requeued job stays in the trace it
//! started in. With tracing off, nothing is written and nothing is read.

//! The header names (`webhook_core::message::H_TRACEPARENT`, `H_TRACESTATE`) are the
//! propagator's; they are read and written through [`Headers`] like every other.

use crate::headers::Headers;

/// Adds the trace context of `span` to `headers`.
pub fn inject(span: &tracing::Span, headers: &mut Headers) {
    webhook_core::telemetry::inject(span, |key, value| headers.set_str(key, &value));
}

/// The headers of a new job: only its trace context.
pub fn headers_of(span: &tracing::Span) -> Headers {
    let mut headers = Headers::new();
    inject(span, &mut headers);
    headers
}

/// Makes the trace context in `headers` (if any) the parent of `span` (not yet entered).
pub fn continue_trace(span: &tracing::Span, headers: &Headers) {
    webhook_core::telemetry::set_remote_parent(span, |key| headers.get_str(key));
}
