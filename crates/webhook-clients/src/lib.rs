//! Typed clients of the APIs around the pipeline (Keycloak, Lago, Stripe), one per service, each with timeouts and errors that say
//! whether a retry can help ([`DownstreamError::kind`]). The classification lives here, next to
//! the HTTP calls, not in the worker loop.

pub mod error;
pub mod keycloak;
pub mod lago;
pub mod metrics;
pub mod stripe;

pub use error::{DownstreamError, InlineRetry};
pub use keycloak::KeycloakClient;
pub use lago::LagoClient;
pub use metrics::DownstreamMetrics;
pub use stripe::StripeClient;

use tracing::Instrument;

/// Sends one request to a downstream API in a client span (`keycloak get_user`, `lago
/// create_subscription`, …), the child of the step that calls it, with the W3C trace context in
/// the request headers (a traced Keycloak or Lago joins the trace).
pub(crate) async fn send(
    service: &'static str,
    operation: &'static str,
    req: reqwest::RequestBuilder,
) -> reqwest::Result<reqwest::Response> {
    let (client, request) = req.build_split();
    let mut request = request?;
    let span = tracing::info_span!(
        "call",
        otel.name = %format_args!("{service} {operation}"),
        otel.kind = "client",
        peer.service = service,
        operation,
        http.request.method = %request.method(),
        server.address = request.url().host_str().unwrap_or(""),
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let headers = request.headers_mut();
    webhook_core::telemetry::inject(&span, |key, value| {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(key.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    });
    let result = client.execute(request).instrument(span.clone()).await;
    match &result {
        Ok(resp) => {
            span.record("http.response.status_code", resp.status().as_u16());
            if resp.status().is_server_error() {
                span.record("otel.status_code", "error");
            }
        }
        Err(_) => {
            span.record("otel.status_code", "error");
        }
    }
    result
}

/// [`send`], the call recorded in `metrics` (when the caller keeps them), a transport failure
/// (no answer) classified.
pub(crate) async fn send_observed(
    service: &'static str,
    operation: &'static str,
    req: reqwest::RequestBuilder,
    metrics: Option<&DownstreamMetrics>,
) -> Result<reqwest::Response, DownstreamError> {
    let started = std::time::Instant::now();
    let result = send(service, operation, req).await;
    if let Some(m) = metrics {
        m.observe(
            service,
            operation,
            result.as_ref().ok().map(|r| r.status().as_u16()),
            started.elapsed(),
        );
    }
    result.map_err(|e| DownstreamError::from_transport(service, operation, &e))
}

/// A non-2xx answer as an error, and its body (for what the service's client adds).
pub(crate) async fn status_error(
    service: &'static str,
    operation: &'static str,
    resp: reqwest::Response,
) -> (DownstreamError, String) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    (
        DownstreamError::from_status(service, operation, status, &headers, &text),
        text,
    )
}
