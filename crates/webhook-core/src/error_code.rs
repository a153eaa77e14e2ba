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
