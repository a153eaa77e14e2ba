//! `POST /webhooks/stripe`: verify, dedupe and durably queue one Stripe event.
//!
//! The answer is 2xx only once the event is both recorded in Postgres and confirmed by
//! RabbitMQ; every failure on the way rolls the record back and answers 503 with `Retry-After`,
//! so Stripe delivers again later. The recording and queueing is shared with the other
//! requests in flight: see [`crate::group_commit`].

use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::json;
use tracing::Instrument;
use webhook_core::VerifiedEvent;

use crate::AppState;
use crate::error::ApiError;
use crate::group_commit::Disposition;

/// The facts a log line and a metric need, whatever the outcome.
#[derive(Default)]
struct Seen {
    event_id: Option<String>,
    event_type: Option<String>,
}

pub async fn receive(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    let started = Instant::now();
    // The root of the event's trace (a Stripe request carries none): the worker's job is its
    // descendant through the message headers (see `group_commit`).
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("POST {}", req.match_pattern().unwrap_or_else(|| req.path().to_owned())),
        otel.kind = "server",
        http.request.method = "POST",
        url.path = req.path(),
        http.response.status_code = tracing::field::Empty,
        event_id = tracing::field::Empty,
        event_type = tracing::field::Empty,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let mut seen = Seen::default();
    let result = handle(&req, payload, &state, &mut seen)
        .instrument(span.clone())
        .await;
    let _entered = span.enter();
    let latency = started.elapsed();
    let (response, outcome) = match result {
        Ok(disposition) => {
            let body = json!({"status": disposition.as_str(), "event_id": seen.event_id});
            (HttpResponse::Ok().json(body), disposition.as_str())
        }
        Err(err) => {
            let mut response = err.error_response();
            if err.status == 503 {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(state.retry_after_secs));
            }
            (response, err.code)
        }
    };
    state.metrics.requests.with_label_values(&[outcome]).inc();
    state
        .metrics
        .request_duration
        .with_label_values(&[outcome])
        .observe(latency.as_secs_f64());
    span.record("http.response.status_code", response.status().as_u16());
    span.record("outcome", outcome);
    if let Some(id) = &seen.event_id {
        span.record("event_id", id.as_str());
    }
    if let Some(t) = &seen.event_type {
        span.record("event_type", t.as_str());
    }
    if response.status().is_server_error() {
        span.record("otel.status_code", "error");
    }
    tracing::info!(
        event_id = seen.event_id.as_deref().unwrap_or("-"),
        event_type = seen.event_type.as_deref().unwrap_or("-"),
        outcome,
        status = response.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        "stripe webhook"
    );
    response
}

async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    seen: &mut Seen,
) -> Result<Disposition, ApiError> {
    check_headers(req, state)?;
    let body = read_body(req, payload, state.body_limit, state.body_timeout).await?;
    let signature = req.headers().get("stripe-signature").map(HeaderValue::to_str);
    let signature = match signature {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(_)) => {
            return Err(ApiError::bad_request(
                "malformed_signature",
                "the Stripe-Signature header is not ASCII",
            ));
        }
    };
    let verified = state
        .verifier
        .verify(signature, body, webhook_core::unix_now())
        .map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
    let event = VerifiedEvent::parse(verified).map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
    seen.event_id = Some(event.id.to_string());
    seen.event_type = Some(event.event_type.clone());
    // Queued, or stored as ignored (an unhandled type, or an event of the other Stripe mode).
    let route = webhook_intake::route(&event, state.livemode, |t| state.handled_event_types.contains(&t));
    // Recorded and queued together with the other requests in flight (group commit).
    Ok(state.queue.submit(event, route).await?)
}

/// Content type and header size, checked before the body is read.
fn check_headers(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > state.max_header_bytes {
        return Err(ApiError::bad_request(
            "headers_too_large",
            format!(
                "the request headers are {header_bytes} bytes, more than the {} allowed",
                state.max_header_bytes
            ),
        ));
    }
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false);
    if !is_json {
        return Err(ApiError::unsupported_media_type());
    }
    Ok(())
}

/// Reads the whole body, refusing it as soon as it passes the limit, and cutting off clients
/// that send it too slowly.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    let read = async {
        let mut buf = BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(limit));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request("invalid_body", format!("the body could not be read: {e}"))
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(ApiError::payload_too_large(limit));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(timeout, read).await.unwrap_or_else(|_| {
        Err(ApiError::bad_request(
            "body_timeout",
            format!("the body did not arrive within {}s", timeout.as_secs()),
        ))
    })
}

/// JSON 404 for every other path.
pub async fn not_found() -> HttpResponse {
    ApiError::not_found().error_response()
}
