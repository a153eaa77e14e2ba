//! Keycloak Admin REST client (contracts/README.md §2): admin token (cached until shortly
//! before it expires, refreshed once on a 401), user search by email, and the
//! GET-modify-PUT of a full user representation (a partial PUT wipes attributes on ≥ 24.0.4).

use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;
use webhook_core::settings::KeycloakSettings;

use super::error::DownstreamError;
use crate::metrics::DownstreamMetrics;

const SERVICE: &str = "keycloak";

/// How the admin token is obtained.
#[derive(Clone)]
pub enum Grant {
    Password {
        username: String,
        password: SecretString,
    },
    ClientCredentials {
        secret: SecretString,
    },
}

struct CachedToken {
    value: SecretString,
    refresh_at: Instant,
}

/// A user found by a search: its id and email (what the lookup needs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserRef {
    pub id: String,
    #[serde(default)]
    pub email: Option<String>,
}

pub struct KeycloakClient {
    http: reqwest::Client,
    base: String,
    realm: String,
    admin_realm: String,
    client_id: String,
    grant: Grant,
    token: Mutex<Option<CachedToken>>,
    metrics: Option<DownstreamMetrics>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default = "default_expires_in")]
    expires_in: u64,
}

fn default_expires_in() -> u64 {
    60
}

impl KeycloakClient {
    pub fn new(
        settings: &KeycloakSettings,
        http: reqwest::Client,
        metrics: Option<DownstreamMetrics>,
    ) -> anyhow::Result<Self> {
        if settings.url.trim().is_empty() {
            anyhow::bail!("KEYCLOAK_URL is required for the worker (e.g. http://keycloak:8080)");
        }
        if settings.realm.trim().is_empty() {
            anyhow::bail!("KEYCLOAK_REALM is required for the worker (the realm that holds the users)");
        }
        let grant = if !settings.client_secret.expose_secret().is_empty() {
            Grant::ClientCredentials {
                secret: settings.client_secret.clone(),
            }
        } else if !settings.admin_user.is_empty() {
            Grant::Password {
                username: settings.admin_user.clone(),
                password: settings.admin_password.clone(),
            }
        } else {
            anyhow::bail!(
                "Keycloak credentials are missing: set KEYCLOAK_CLIENT_SECRET (client_credentials) or \
                 KEYCLOAK_ADMIN_USER and KEYCLOAK_ADMIN_PASSWORD (password grant)"
            );
        };
        Ok(Self {
            http,
            base: settings.url.trim_end_matches('/').to_owned(),
            realm: settings.realm.clone(),
            admin_realm: settings.admin_realm.clone(),
            client_id: settings.client_id.clone(),
            grant,
            token: Mutex::new(None),
            metrics,
        })
    }

    /// The cached admin token, or a new one.
    async fn token(&self) -> Result<SecretString, DownstreamError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(t.value.clone());
        }
        let url = format!(
            "{}/realms/{}/protocol/openid-connect/token",
            self.base, self.admin_realm
        );
        let mut form: Vec<(&str, &str)> = vec![("client_id", &self.client_id)];
        match &self.grant {
            Grant::Password { username, password } => {
                form.extend([
                    ("grant_type", "password"),
                    ("username", username),
                    ("password", password.expose_secret()),
                ]);
            }
            Grant::ClientCredentials { secret } => {
                form.extend([
                    ("grant_type", "client_credentials"),
                    ("client_secret", secret.expose_secret()),
                ]);
            }
        }
        let resp = self.observe("token", self.http.post(url).form(&form)).await?;
        let resp = check(resp, "token").await?;
        let token: TokenResponse = resp
            .json()
            .await
            .map_err(|e| DownstreamError::from_transport(SERVICE, "token", &e))?;
        // Refresh a little before expiry: 10 % of the lifetime, at least 5 s (tokens last 60 s by default).
        let lifetime = Duration::from_secs(token.expires_in);
        let margin = (lifetime / 10).max(Duration::from_secs(5)).min(lifetime / 2);
        let value = SecretString::from(token.access_token);
        *cached = Some(CachedToken {
            value: value.clone(),
            refresh_at: Instant::now() + lifetime - margin,
        });
        Ok(value)
    }

    async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    async fn observe(
        &self,
        operation: &'static str,
        req: RequestBuilder,
    ) -> Result<Response, DownstreamError> {
        super::send_observed(SERVICE, operation, req, self.metrics.as_ref()).await
    }

    /// An admin request; on a 401 the token is refreshed and the request sent once more.
    async fn admin(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        query: &[(&str, &str)],
    ) -> Result<Response, DownstreamError> {
        let url = format!("{}/admin/realms/{}{}", self.base, self.realm, path);
        for attempt in 0..2 {
            let token = self.token().await?;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(token.expose_secret())
                .query(query);
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = self.observe(operation, req).await?;
            if resp.status() == 401 && attempt == 0 {
                self.forget_token().await;
                continue;
            }
            return check(resp, operation).await;
        }
        unreachable!("the loop returns on its second pass")
    }

    /// Users whose email is exactly `email` (already lowercased).
    pub async fn find_users_by_email(&self, email: &str) -> Result<Vec<UserRef>, DownstreamError> {
        let resp = self
            .admin(
                "search_users",
                Method::GET,
                "/users",
                None,
                &[
                    ("email", email),
                    ("exact", "true"),
                    ("briefRepresentation", "false"),
                    ("max", "2"),
                ],
            )
            .await?;
        let users: Value = resp
            .json()
            .await
            .map_err(|e| DownstreamError::from_transport(SERVICE, "search_users", &e))?;
        // Transient, as an answer that is not JSON at all is: see `LagoClient::json`.
        serde_json::from_value(users).map_err(|e| {
            DownstreamError::transient(
                SERVICE,
                "search_users",
                format!(
                    "Keycloak answered users this client cannot read ({e}): check KEYCLOAK_URL points at Keycloak"
                ),
            )
        })
    }

    pub async fn get_user(&self, id: &str) -> Result<Value, DownstreamError> {
        let resp = self
            .admin("get_user", Method::GET, &format!("/users/{id}"), None, &[])
            .await?;
        resp.json()
            .await
            .map_err(|e| DownstreamError::from_transport(SERVICE, "get_user", &e))
    }

    /// PUT of a FULL user representation (see the module docs).
    pub async fn put_user(&self, id: &str, user: &Value) -> Result<(), DownstreamError> {
        self.admin("put_user", Method::PUT, &format!("/users/{id}"), Some(user), &[])
            .await?;
        Ok(())
    }

    /// Sets one attribute; see [`KeycloakClient::set_attributes`].
    pub async fn set_attribute(&self, id: &str, key: &str, value: &str) -> Result<(), DownstreamError> {
        self.set_attributes(id, &[(key, value)]).await
    }

    /// Sets attributes (see [`KeycloakClient::sync_attributes`]); an attribute the realm did
    /// not store is a permanent error.
    pub async fn set_attributes(&self, id: &str, values: &[(&str, &str)]) -> Result<(), DownstreamError> {
        let report = self.sync_attributes(id, values).await?;
        match report.dropped.first() {
            Some(key) => Err(dropped_attribute(key)),
            None => Ok(()),
        }
    }

    /// Brings the user's attributes to `values` by GET-modify-PUT of the whole user, so that
    /// every other attribute, the email and the names survive; nothing is written when they
    /// have these values already. After a PUT the user is read back, because Keycloak ≥ 24
    /// silently drops attributes that its user profile does not declare: those are reported in
    /// [`Synced::dropped`]. A user that does not exist is a 404 from `get_user`.
    pub async fn sync_attributes(
        &self,
        id: &str,
        values: &[(&str, &str)],
    ) -> Result<Synced, DownstreamError> {
        let mut user = self.get_user(id).await?;
        let has = |user: &Value, key: &str, value: &str| {
            user["attributes"][key]
                .as_array()
                .is_some_and(|v| v.len() == 1 && v[0].as_str() == Some(value))
        };
        if values.iter().all(|(k, v)| has(&user, k, v)) {
            return Ok(Synced::default());
        }
        if !user.get("attributes").is_some_and(Value::is_object) {
            user["attributes"] = Value::Object(Default::default());
        }
        for (key, value) in values {
            user["attributes"][*key] = Value::Array(vec![Value::String((*value).to_owned())]);
        }
        self.put_user(id, &user).await?;
        let after = self.get_user(id).await?;
        // Dropped = absent: a value other than ours is another writer's PUT that landed after
        // this one (the caller reads its state again and syncs again if it must), not a realm
        // that refuses the attribute.
        let absent = |key: &str| after["attributes"][key].as_array().is_none_or(|v| v.is_empty());
        Ok(Synced {
            written: true,
            dropped: values
                .iter()
                .filter(|(k, _)| absent(k))
                .map(|(k, _)| (*k).to_owned())
                .collect(),
        })
    }
}

/// What [`KeycloakClient::sync_attributes`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    /// A PUT was needed (the attributes differed).
    pub written: bool,
    /// Attributes Keycloak accepted but did not store (undeclared in the realm's user profile):
    /// absent when the user is read back.
    pub dropped: Vec<String>,
}

/// The permanent error for an attribute the realm does not store.
pub fn dropped_attribute(key: &str) -> DownstreamError {
    DownstreamError::permanent(
        SERVICE,
        "put_user",
        format!(
            "Keycloak accepted the update but did not store the attribute {key:?}: declare it in the realm's \
             user profile (Realm settings > User profile) or allow admins to edit unmanaged attributes, then requeue"
        ),
    )
}

/// Turns a non-2xx answer into a classified error.
async fn check(resp: Response, operation: &'static str) -> Result<Response, DownstreamError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    let mut err = DownstreamError::from_status(SERVICE, operation, status, &headers, &body);
    if status == 401 {
        err.message = format!(
            "{} (Keycloak refused the admin credentials or token: check KEYCLOAK_ADMIN_USER/PASSWORD or KEYCLOAK_CLIENT_SECRET)",
            err.message
        );
    } else if status == 403 {
        err.message = format!(
            "{} (the admin account lacks permissions: give it realm-management view-users, query-users and manage-users)",
            err.message
        );
    }
    Err(err)
}
