//! What every Lago endpoint shares: Lago's error bodies and the API-key check.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde_json::{Map, json};

use crate::records::lago::common::LagoError;
use crate::state::SandboxState;

/// Lago's bodies for its errors (`api_errors.rb`).
impl ResponseError for LagoError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Validation(..) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let body = match self {
            Self::Unauthorized => json!({"status": 401, "error": "Unauthorized"}),
            Self::BadRequest(message) => json!({"status": 400, "error": format!("BadRequest: {message}")}),
            Self::NotFound(resource) => {
                json!({"status": 404, "error": "Not Found", "code": format!("{resource}_not_found")})
            }
            Self::Validation(field, code) => json!({
                "status": 422,
                "error": "Unprocessable Entity",
                "code": "validation_errors",
                "error_details": Map::from_iter([(field.to_string(), json!([code]))]),
            }),
        };
        HttpResponse::build(self.status_code()).json(body)
    }
}

/// `Authorization: Bearer <api_key>`; Lago takes the second word of the header.
pub(crate) fn authorize(state: &SandboxState, req: &HttpRequest) -> Result<(), LagoError> {
    let header = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match header.split(' ').nth(1) {
        Some(key) if key == state.config().lago_api_key => Ok(()),
        _ => Err(LagoError::Unauthorized),
    }
}
