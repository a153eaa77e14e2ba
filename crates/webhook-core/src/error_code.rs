//! The HTTP error contract of the ingest: `{"error":"<code>","message":"…"}` with only
//! 400, 413, 415 and 503 as error statuses (ARCHITECTURE.md, Ingest §5).

use serde::Serialize;

/// Every error the ingest can answer, with its status and stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
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
}
