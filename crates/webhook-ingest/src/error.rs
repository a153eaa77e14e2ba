//! The ingest's HTTP errors: `{"error":"<code>","message":"…"}` with only 400, 413, 415 and 503
//! as error statuses on the webhook route, and a JSON 404 elsewhere (ARCHITECTURE.md, Ingest §5).
//! A 503 also carries `Retry-After` (added by the route, which knows the configured value).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// Every error the ingest can answer, with its status and stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            code,
            message: message.into(),
        }
    }
    pub fn payload_too_large(limit: usize) -> Self {
        Self {
            status: 413,
            code: "payload_too_large",
            message: format!("the body is larger than the {limit}-byte limit"),
        }
    }
    pub fn unsupported_media_type() -> Self {
        Self {
            status: 415,
            code: "unsupported_media_type",
            message: "send the event with Content-Type: application/json".into(),
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: 503,
            code: "unavailable",
            message: message.into(),
        }
    }
    pub fn not_found() -> Self {
        Self {
            status: 404,
            code: "not_found",
            message: "no such endpoint; Stripe webhooks go to POST /webhooks/stripe".into(),
        }
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string(&Body {
            error: self.code,
            message: &self.message,
        })
        .expect("serializable")
    }
}

/// An event not durably queued: 503, and Stripe delivers it again later.
impl From<crate::group_commit::NotQueued> for ApiError {
    fn from(e: crate::group_commit::NotQueued) -> Self {
        Self::unavailable(e.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .content_type("application/json")
            .body(self.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_and_stable_code() {
        let cases = [
            (ApiError::bad_request("invalid_json", "no"), 400, "invalid_json"),
            (ApiError::payload_too_large(1024), 413, "payload_too_large"),
            (ApiError::unsupported_media_type(), 415, "unsupported_media_type"),
            (ApiError::unavailable("Postgres is down"), 503, "unavailable"),
            (ApiError::not_found(), 404, "not_found"),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status, e.code), (status, code), "{e}");
            assert!(!e.message.is_empty(), "{e}");
        }
        assert!(ApiError::payload_too_large(1024).message.contains("1024-byte"));
        assert!(
            ApiError::unsupported_media_type()
                .message
                .contains("application/json")
        );
        assert!(ApiError::not_found().message.contains("POST /webhooks/stripe"));
    }

    #[test]
    fn the_body_is_error_and_message_and_display_shows_all_three() {
        let e = ApiError::unavailable("RabbitMQ \"down\"");
        let body: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "unavailable", "message": "RabbitMQ \"down\""})
        );
        assert_eq!(e.to_string(), "503 unavailable: RabbitMQ \"down\"");
    }

    #[test]
    fn the_response_has_the_status_and_the_json_body() {
        for e in [
            ApiError::payload_too_large(8),
            ApiError::not_found(),
            ApiError::unavailable("x"),
        ] {
            let response = e.error_response();
            assert_eq!(response.status().as_u16(), e.status, "{e}");
            assert_eq!(
                response.headers().get("content-type").unwrap(),
                "application/json",
                "{e}"
            );
        }
    }
}
