//! `POST /realms/{realm}/protocol/openid-connect/token` (contracts §2.1): the password grant of
//! the admin user and, when a client secret is configured, the client_credentials grant.
//!
//! Tokens are opaque random strings, not JWTs: the admin API only has to recognise them, and a
//! client must not depend on decoding them (it should use `expires_in`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::faults::Route;
use crate::state::SandboxState;

/// Keycloak's description for every client authentication failure; it does not say which part
/// was wrong.
const INVALID_CLIENT: &str = "Invalid client or Invalid client credentials";

pub(crate) async fn issue(
    state: web::Data<SandboxState>,
    realm: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    if let Some(fault) = state.enter(Route::KeycloakToken).await {
        return fault;
    }
    let config = state.config();
    let realm = realm.into_inner();
    if realm != config.admin_realm && realm != config.realm {
        return HttpResponse::NotFound().json(json!({"error": "Realm does not exist"}));
    }
    // An urlencoded body has the same syntax as a query string.
    let form = std::str::from_utf8(&body)
        .ok()
        .and_then(|text| web::Query::<HashMap<String, String>>::from_query(text).ok());
    let Some(form) = form else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Invalid form body");
    };
    let field = |name: &str| form.get(name).map(String::as_str);
    let Some(grant_type) = field("grant_type") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing form parameter: grant_type",
        );
    };
    if field("client_id") != Some(config.client_id.as_str()) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", INVALID_CLIENT);
    }
    let secret_ok = match (&config.client_secret, field("client_secret")) {
        (Some(expected), Some(given)) => expected == given,
        (Some(_), None) => false,
        // A public client: a secret sent anyway is ignored, as Keycloak does.
        (None, _) => true,
    };
    match grant_type {
        "password" => {
            if config.client_secret.is_some() && !secret_ok {
                return oauth_error(StatusCode::UNAUTHORIZED, "unauthorized_client", INVALID_CLIENT);
            }
            // The admin user lives in the admin realm only; usernames are case-insensitive.
            let user_ok = realm == config.admin_realm
                && field("username").is_some_and(|u| u.eq_ignore_ascii_case(&config.admin_user))
                && field("password") == Some(config.admin_password.as_str());
            if !user_ok {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_grant",
                    "Invalid user credentials",
                );
            }
        }
        "client_credentials" => {
            if config.client_secret.is_none() {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized_client",
                    "Public client not allowed to retrieve service account",
                );
            }
            if !secret_ok {
                return oauth_error(StatusCode::UNAUTHORIZED, "unauthorized_client", INVALID_CLIENT);
            }
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Unsupported grant_type",
            );
        }
    }
    let ttl = config.token_ttl_secs;
    let token = format!(
        "sbx.{}.{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    {
        let now = Instant::now();
        let mut data = state.lock();
        // Forget expired tokens so a long `make run` does not grow without bound.
        data.tokens.retain(|_, expires| *expires > now);
        data.tokens.insert(token.clone(), now + Duration::from_secs(ttl));
    }
    HttpResponse::Ok().json(json!({
        "access_token": token,
        "expires_in": ttl,
        "refresh_expires_in": 0,
        "token_type": "Bearer",
        "not-before-policy": 0,
        "scope": "profile email",
    }))
}

/// RFC 6749 §5.2 error body.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": error, "error_description": description}))
}
