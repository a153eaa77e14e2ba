//! Lago API client (contracts/README.md §3): customer upsert, subscription create (idempotent on
//! `external_id`), get and terminate.

use reqwest::{Method, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use webhook_core::settings::LagoSettings;

use super::error::DownstreamError;
use crate::metrics::DownstreamMetrics;

const SERVICE: &str = "lago";

pub struct LagoClient {
    http: reqwest::Client,
    base: String,
    api_key: SecretString,
    metrics: Option<DownstreamMetrics>,
}

/// A Lago customer, as Lago answers it (the fields this worker reads).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LagoCustomer {
    #[serde(default)]
    pub lago_id: Option<String>,
    #[serde(default)]
    pub external_id: Option<String>,
}

/// A Lago subscription, as Lago answers it (the fields this worker reads).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LagoSubscription {
    #[serde(default)]
    pub lago_id: Option<String>,
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    pub plan_code: Option<String>,
    /// The customer (`external_id`) the subscription bills.
    #[serde(default)]
    pub external_customer_id: Option<String>,
    /// `active`, `pending`, `terminated`, `canceled`.
    #[serde(default)]
    pub status: Option<String>,
    /// The plan of a downgrade Lago scheduled for the end of the period.
    #[serde(default)]
    pub next_plan_code: Option<String>,
}

/// What a new subscription needs.
pub struct NewSubscription<'a> {
    pub external_customer_id: &'a str,
    pub plan_code: &'a str,
    /// Idempotency key: the Stripe subscription id (else the checkout session id).
    pub external_id: &'a str,
    pub name: Option<&'a str>,
}

impl LagoClient {
    pub fn new(
        settings: &LagoSettings,
        http: reqwest::Client,
        metrics: Option<DownstreamMetrics>,
    ) -> anyhow::Result<Self> {
        if settings.api_url.trim().is_empty() {
            anyhow::bail!("LAGO_API_URL is required for the worker (e.g. http://lago-api:3000)");
        }
        if settings.api_key.expose_secret().is_empty() {
            anyhow::bail!("LAGO_API_KEY is required for the worker (Lago > Developers > API keys)");
        }
        Ok(Self {
            http,
            base: settings
                .api_url
                .trim_end_matches('/')
                .trim_end_matches("/api/v1")
                .to_owned(),
            api_key: settings.api_key.clone(),
            metrics,
        })
    }

    async fn call(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, DownstreamError> {
        let url = format!("{}/api/v1{}", self.base, path);
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(self.api_key.expose_secret());
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = super::send_observed(SERVICE, operation, req, self.metrics.as_ref()).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let (mut err, _) = super::status_error(SERVICE, operation, resp).await;
        if status == 401 {
            err.message = format!("{} (check LAGO_API_KEY)", err.message);
        }
        Err(err)
    }

    /// The object under `root` (`{"customer": {…}}`), or the whole body when there is none.
    async fn json<T: DeserializeOwned>(
        resp: Response,
        operation: &'static str,
        root: &str,
    ) -> Result<T, DownstreamError> {
        let mut v: Value = resp
            .json()
            .await
            .map_err(|e| DownstreamError::from_transport(SERVICE, operation, &e))?;
        let object = v.get_mut(root).map(Value::take).unwrap_or(v);
        // Transient, as an answer that is not JSON at all is (a proxy's page, a half-deployed
        // Lago): retried through the schedule, then dead-lettered with this message.
        serde_json::from_value(object).map_err(|e| {
            DownstreamError::transient(
                SERVICE,
                operation,
                format!("Lago answered a {root} this client cannot read ({e}): check LAGO_API_URL points at Lago's API"),
            )
        })
    }

    /// Creates or updates the customer `external_id` (Lago upserts; only the keys sent change).
    pub async fn upsert_customer(
        &self,
        external_id: &str,
        email: &str,
        name: Option<&str>,
    ) -> Result<LagoCustomer, DownstreamError> {
        let mut customer = json!({"external_id": external_id, "email": email});
        if let Some(n) = name {
            customer["name"] = json!(n);
        }
        let body = json!({"customer": customer});
        let resp = match self
            .call("create_customer", Method::POST, "/customers", Some(&body))
            .await
        {
            // Two jobs created the same new customer at once and this one lost the race
            // (`RecordNotUnique`): the customer exists now, so the same upsert updates it.
            Err(e) if e.status == Some(422) && e.message.contains("value_already_exist") => {
                self.call("create_customer", Method::POST, "/customers", Some(&body))
                    .await?
            }
            other => other?,
        };
        Self::json(resp, "create_customer", "customer").await
    }

    /// Assigns the plan. Same `external_id` and plan → the existing subscription (idempotent);
    /// another plan → Lago's upgrade (now) or downgrade (at period end).
    pub async fn create_subscription(
        &self,
        sub: &NewSubscription<'_>,
    ) -> Result<LagoSubscription, DownstreamError> {
        let mut body = json!({
            "external_customer_id": sub.external_customer_id,
            "plan_code": sub.plan_code,
            "external_id": sub.external_id,
        });
        if let Some(n) = sub.name {
            body["name"] = json!(n);
        }
        let resp = self
            .call(
                "create_subscription",
                Method::POST,
                "/subscriptions",
                Some(&json!({"subscription": body})),
            )
            .await?;
        Self::json(resp, "create_subscription", "subscription").await
    }

    /// The active subscription `external_id`, or `None` when Lago has none.
    pub async fn get_subscription(
        &self,
        external_id: &str,
    ) -> Result<Option<LagoSubscription>, DownstreamError> {
        match self
            .call(
                "get_subscription",
                Method::GET,
                &format!("/subscriptions/{external_id}"),
                None,
            )
            .await
        {
            Ok(resp) => Self::json(resp, "get_subscription", "subscription")
                .await
                .map(Some),
            Err(e) if e.status == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Terminates `external_id`. Lago answers 404 `subscription_not_found` to a second
    /// termination, so `Ok(None)` means "already terminated (or never existed)".
    pub async fn terminate_subscription(
        &self,
        external_id: &str,
    ) -> Result<Option<LagoSubscription>, DownstreamError> {
        self.terminate(external_id, "").await
    }

    /// [`LagoClient::terminate_subscription`] for a subscription that moves to another customer:
    /// no closing invoice and no credit note for the customer it leaves.
    pub async fn terminate_subscription_for_move(
        &self,
        external_id: &str,
    ) -> Result<Option<LagoSubscription>, DownstreamError> {
        self.terminate(
            external_id,
            "?on_termination_invoice=skip&on_termination_credit_note=skip",
        )
        .await
    }

    async fn terminate(
        &self,
        external_id: &str,
        query: &str,
    ) -> Result<Option<LagoSubscription>, DownstreamError> {
        match self
            .call(
                "terminate_subscription",
                Method::DELETE,
                &format!("/subscriptions/{external_id}{query}"),
                None,
            )
            .await
        {
            Ok(resp) => Self::json(resp, "terminate_subscription", "subscription")
                .await
                .map(Some),
            Err(e) if e.status == Some(404) && e.code.as_deref() == Some("subscription_not_found") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Cancels the downgrade Lago scheduled for `external_id` (its pending next subscription),
    /// if there is one: assigning the current plan again does not cancel it. `Ok(false)`: none.
    pub async fn cancel_pending(&self, external_id: &str) -> Result<bool, DownstreamError> {
        match self
            .call(
                "cancel_pending_subscription",
                Method::DELETE,
                &format!("/subscriptions/{external_id}?status=pending"),
                None,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.status == Some(404) && e.code.as_deref() == Some("subscription_not_found") => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}
