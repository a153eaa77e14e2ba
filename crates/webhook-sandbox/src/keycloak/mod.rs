//! The Keycloak part of the sandbox (contracts §2): the OpenID Connect token endpoint and the
//! Admin REST user endpoints, under the same paths as a real Keycloak ≥ 17 (no `/auth` prefix).
//!
//! - [`token`]: `POST /realms/{realm}/protocol/openid-connect/token`.
//! - [`users`]: the user model, the user-profile rules and the search/get/update handlers.

pub(crate) mod token;
pub(crate) mod users;

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde_json::json;

use crate::state::SandboxState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/realms/{realm}/protocol/openid-connect/token",
        web::post().to(token::issue),
    )
    .route("/admin/realms/{realm}/users", web::get().to(users::search))
    .route("/admin/realms/{realm}/users/{id}", web::get().to(users::get))
    .route("/admin/realms/{realm}/users/{id}", web::put().to(users::update));
}

/// Admin REST errors, with the bodies Keycloak sends.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeycloakError {
    #[error("missing, unknown or expired bearer token")]
    Unauthorized,
    #[error("realm not found")]
    RealmNotFound,
    #[error("user not found")]
    UserNotFound,
    #[error("email already used by another user")]
    Conflict,
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A user-profile validation error (`{"field", "errorMessage", "params"}`).
    #[error("invalid {field}: {message}")]
    InvalidField {
        field: &'static str,
        message: &'static str,
        value: String,
    },
}

impl ResponseError for KeycloakError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::RealmNotFound | Self::UserNotFound => StatusCode::NOT_FOUND,
            Self::Conflict => StatusCode::CONFLICT,
            Self::BadRequest(_) | Self::InvalidField { .. } => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let body = match self {
            Self::Unauthorized => json!({"error": "HTTP 401 Unauthorized"}),
            Self::RealmNotFound => json!({"error": "Realm not found."}),
            Self::UserNotFound => json!({"error": "User not found"}),
            Self::Conflict => json!({"errorMessage": "User exists with same username or email"}),
            Self::BadRequest(message) => json!({"errorMessage": message}),
            Self::InvalidField {
                field,
                message,
                value,
            } => {
                json!({"field": field, "errorMessage": message, "params": [field, value]})
            }
        };
        HttpResponse::build(self.status_code()).json(body)
    }
}

/// Accepts only a token this sandbox issued and that has not expired.
pub(crate) fn authorize(state: &SandboxState, req: &HttpRequest) -> Result<(), KeycloakError> {
    let header = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = match header.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(KeycloakError::Unauthorized),
    };
    let data = state.lock();
    match data.tokens.get(token) {
        Some(expires) if *expires > Instant::now() => Ok(()),
        _ => Err(KeycloakError::Unauthorized),
    }
}

/// The admin API serves the users realm only (the admin realm has no users but the admin).
pub(crate) fn check_realm(state: &SandboxState, realm: &str) -> Result<(), KeycloakError> {
    if realm == state.config().realm {
        Ok(())
    } else {
        Err(KeycloakError::RealmNotFound)
    }
}
