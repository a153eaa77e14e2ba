//! Stripe API client (contracts/README.md §5): list and retrieve events, retrieve and list
//! subscriptions, retrieve customers. Read-only: `webhookctl backfill` and `reconcile`, and the
//! worker's `stripe.refetch`, are its users.
//!
//! Every call waits its turn under the configured rate (`stripe.api_rate_per_sec`, per process),
//! and transient answers (timeouts, 5xx, 429) are retried with backoff, honouring `Retry-After`
//! (see [`InlineRetry`]). A refused key is a permanent error that says which variable to fix.

use std::time::{Duration, Instant};

use reqwest::{Method, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::sync::Mutex;
use webhook_core::settings::StripeApiConfig;

use super::error::{DownstreamError, InlineRetry};
use crate::metrics::DownstreamMetrics;

const SERVICE: &str = "stripe";

/// Most items Stripe gives per page.
pub const PAGE_LIMIT: u32 = 100;

pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    key: SecretString,
    retry: InlineRetry,
    pacer: Pacer,
    metrics: Option<DownstreamMetrics>,
}

/// One page of a Stripe list (`{"object":"list","data":[…],"has_more":…}`).
#[derive(Debug, Deserialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

/// Which events to list (`GET /v1/events`).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// `created[gte]`, unix seconds.
    pub created_gte: Option<i64>,
    /// `created[lte]`, unix seconds.
    pub created_lte: Option<i64>,
    /// `types[]`: exact types (Stripe takes at most 20); empty: every type.
    pub types: Vec<String>,
}

/// Stripe's most types per `types[]` filter.
pub const MAX_TYPES: usize = 20;

/// An event as Stripe's API returns it: its id and type, and its exact JSON (the same shape as
/// a webhook delivery of it).
#[derive(Debug, Clone)]
pub struct ListedEvent {
    pub id: String,
    pub event_type: String,
    pub created: i64,
    pub raw: Box<RawValue>,
}

impl<'de> Deserialize<'de> for ListedEvent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Head {
            id: String,
            #[serde(rename = "type")]
            event_type: String,
            #[serde(default)]
            created: i64,
        }
        let raw = Box::<RawValue>::deserialize(d)?;
        let head: Head = serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?;
        Ok(Self {
            id: head.id,
            event_type: head.event_type,
            created: head.created,
            raw,
        })
    }
}

impl StripeClient {
    /// `retry`: how transient answers are retried (a command line waits out long
    /// `Retry-After`s; the worker hands them to its broker tiers).
    pub fn new(
        config: &StripeApiConfig,
        retry: InlineRetry,
        metrics: Option<DownstreamMetrics>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("webhook-pipeline/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: config.url.trim_end_matches('/').to_owned(),
            key: config.key.clone(),
            retry,
            pacer: Pacer::new(config.rate_per_sec.get()),
            metrics,
        })
    }

    /// One page of events, newest first, after the event `starting_after` (a cursor).
    pub async fn list_events(
        &self,
        query: &EventQuery,
        starting_after: Option<&str>,
    ) -> Result<Page<ListedEvent>, DownstreamError> {
        let mut params: Vec<(String, String)> = vec![("limit".into(), PAGE_LIMIT.to_string())];
        if let Some(t) = query.created_gte {
            params.push(("created[gte]".into(), t.to_string()));
        }
        if let Some(t) = query.created_lte {
            params.push(("created[lte]".into(), t.to_string()));
        }
        for t in &query.types {
            params.push(("types[]".into(), t.clone()));
        }
        if let Some(cursor) = starting_after {
            params.push(("starting_after".into(), cursor.to_owned()));
        }
        self.get_json("list_events", "/v1/events", &params).await
    }

    /// One event (`GET /v1/events/{id}`); `None` when Stripe has no such event (older than 30
    /// days, or of another account).
    pub async fn retrieve_event(&self, id: &str) -> Result<Option<ListedEvent>, DownstreamError> {
        self.get_optional("retrieve_event", &format!("/v1/events/{}", path_segment(id)))
            .await
    }

    /// The subscription as it is now; `None` when Stripe has no such subscription.
    pub async fn retrieve_subscription(
        &self,
        id: &str,
    ) -> Result<Option<serde_json::Value>, DownstreamError> {
        self.get_optional(
            "retrieve_subscription",
            &format!("/v1/subscriptions/{}", path_segment(id)),
        )
        .await
    }

    /// One page of subscriptions of every status (`status=all`), of one customer or all.
    pub async fn list_subscriptions(
        &self,
        customer: Option<&str>,
        starting_after: Option<&str>,
    ) -> Result<Page<serde_json::Value>, DownstreamError> {
        let mut params: Vec<(String, String)> = vec![
            ("status".into(), "all".into()),
            ("limit".into(), PAGE_LIMIT.to_string()),
        ];
        if let Some(c) = customer {
            params.push(("customer".into(), c.to_owned()));
        }
        if let Some(cursor) = starting_after {
            params.push(("starting_after".into(), cursor.to_owned()));
        }
        self.get_json("list_subscriptions", "/v1/subscriptions", &params)
            .await
    }

    /// The customer; `None` when Stripe has no such customer.
    pub async fn retrieve_customer(&self, id: &str) -> Result<Option<serde_json::Value>, DownstreamError> {
        self.get_optional(
            "retrieve_customer",
            &format!("/v1/customers/{}", path_segment(id)),
        )
        .await
    }

    async fn get_optional<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
    ) -> Result<Option<T>, DownstreamError> {
        match self.get_json(operation, path, &[]).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.status == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
        params: &[(String, String)],
    ) -> Result<T, DownstreamError> {
        self.retry
            .run(|| async {
                let resp = self.call(operation, path, params).await?;
                let url = resp.url().path().to_owned();
                let bytes = resp
                    .bytes()
                    .await
                    .map_err(|e| DownstreamError::from_transport(SERVICE, operation, &e))?;
                serde_json::from_slice(&bytes).map_err(|e| {
                    DownstreamError::transient(
                        SERVICE,
                        operation,
                        format!(
                            "the answer of {url} is not what Stripe's API returns ({e}): check STRIPE_API_URL"
                        ),
                    )
                })
            })
            .await
    }

    async fn call(
        &self,
        operation: &'static str,
        path: &str,
        params: &[(String, String)],
    ) -> Result<Response, DownstreamError> {
        self.pacer.wait_turn().await;
        let req = self
            .http
            .request(Method::GET, format!("{}{path}", self.base))
            .query(params)
            .bearer_auth(self.key.expose_secret());
        let resp = super::send_observed(SERVICE, operation, req, self.metrics.as_ref()).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let (mut err, text) = super::status_error(SERVICE, operation, resp).await;
        // Stripe's errors: {"error": {"type", "code", "message", "param"}}.
        let stripe_error = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").cloned());
        if let Some(e) = stripe_error {
            if let Some(code) = e.get("code").and_then(|c| c.as_str()) {
                err.code = Some(code.to_owned());
            }
            if let Some(message) = e.get("message").and_then(|m| m.as_str()) {
                err.message = format!("HTTP {status}: {message}");
            }
        }
        match status {
            401 => {
                err.message = format!(
                    "{}: Stripe refused STRIPE_API_KEY; set a secret or restricted key of the account (read access to events, subscriptions and customers is enough)",
                    err.message
                )
            }
            403 => {
                err.message = format!(
                    "{}: STRIPE_API_KEY may not read this; give the restricted key read access to events, subscriptions and customers",
                    err.message
                )
            }
            _ => {}
        }
        Err(err)
    }
}

/// An id as one path segment: Stripe ids are `[A-Za-z0-9_]`; anything else is escaped so that
/// an id can never reach another path.
fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Spaces the calls of one process at least `1 / rate` apart.
struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(per_sec: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / per_sec.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    async fn wait_turn(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_one_path_segment() {
        assert_eq!(path_segment("sub_1AbC"), "sub_1AbC");
        assert_eq!(path_segment("../x?y"), "%2E%2E%2Fx%3Fy");
    }

    #[test]
    fn a_listed_event_keeps_its_exact_json() {
        let page: Page<ListedEvent> = serde_json::from_str(
            r#"{"object":"list","url":"/v1/events","has_more":true,"data":[{"id":"evt_1","type":"invoice.paid","created":7,"data":{"object":{"id":"in_1"}},  "x": 1}]}"#,
        )
        .unwrap();
        assert!(page.has_more);
        let e = &page.data[0];
        assert_eq!(
            (e.id.as_str(), e.event_type.as_str(), e.created),
            ("evt_1", "invoice.paid", 7)
        );
        assert!(
            e.raw.get().contains(r#""x": 1"#),
            "not re-serialised: {}",
            e.raw.get()
        );
    }

    #[tokio::test]
    async fn the_pacer_spaces_calls() {
        let pacer = Pacer::new(20);
        let started = Instant::now();
        for _ in 0..5 {
            pacer.wait_turn().await;
        }
        // 5 calls at 20/s: the 5th waits 4 intervals of 50 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(195),
            "{:?}",
            started.elapsed()
        );
    }
}
