//! What every Keycloak Admin REST endpoint shares: Keycloak's error bodies, the bearer-token
//! check and the realm check.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde_json::json;

use crate::records::keycloak::KeycloakError;
use crate::state::SandboxState;

/// The bodies Keycloak sends for its Admin REST errors.
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
