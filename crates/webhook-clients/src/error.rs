//! Downstream errors, their classification, and the quick in-process retry of transient ones.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::HeaderMap;
use webhook_core::message::ErrorKind;

/// A failed call to Keycloak or Lago.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{service} {operation} failed: {message}")]
pub struct DownstreamError {
    pub service: &'static str,
    pub operation: &'static str,
    /// Transient: a later attempt may succeed (timeouts, 5xx, 429). Permanent: it will not.
    pub kind: ErrorKind,
    pub status: Option<u16>,
    /// The API's error code when it gives one (`plan_not_found`, `invalid_grant`, …).
    pub code: Option<String>,
    /// From a `Retry-After` header.
    pub retry_after: Option<Duration>,
    pub message: String,
}

impl DownstreamError {
    pub fn permanent(service: &'static str, operation: &'static str, message: impl Into<String>) -> Self {
        Self {
            service,
            operation,
            kind: ErrorKind::Permanent,
            status: None,
            code: None,
            retry_after: None,
            message: message.into(),
        }
    }

    /// An error that may heal by itself (retried through the schedule).
    pub fn transient(service: &'static str, operation: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            ..Self::permanent(service, operation, message)
        }
    }

    /// Classifies an HTTP error answer. 408, 425, 429 and 5xx can heal by themselves; every other
    /// 4xx means the request itself is wrong (bad plan, bad credentials, conflict) and a retry
    /// would get the same answer.
    pub fn from_status(
        service: &'static str,
        operation: &'static str,
        status: u16,
        headers: &HeaderMap,
        body: &str,
    ) -> Self {
        let transient = matches!(status, 408 | 425 | 429) || status >= 500;
        let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
        let code = parsed.as_ref().and_then(|v| {
            ["code", "error"]
                .iter()
                .find_map(|k| v.get(*k).and_then(|c| c.as_str()))
                .map(str::to_owned)
        });
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let snippet: String = body.chars().take(300).collect();
        Self {
            service,
            operation,
            kind: if transient {
                ErrorKind::Transient
            } else {
                ErrorKind::Permanent
            },
            status: Some(status),
            code,
            retry_after,
            message: format!("HTTP {status}: {snippet}"),
        }
    }

    /// Classifies a transport error: no answer (connect, timeout, reset) is transient.
    pub fn from_transport(service: &'static str, operation: &'static str, err: &reqwest::Error) -> Self {
        let what = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "could not connect"
        } else {
            "transport error"
        };
        Self {
            service,
            operation,
            kind: ErrorKind::Transient,
            status: None,
            code: None,
            retry_after: None,
            message: format!("{what}: {err}"),
        }
    }

    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

/// Quick in-process retries of transient errors, before the broker's delay tiers take over.
#[derive(Debug, Clone, Copy)]
pub struct InlineRetry {
    pub times: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl InlineRetry {
    pub const NONE: InlineRetry = InlineRetry {
        times: 0,
        min_delay: Duration::from_millis(0),
        max_delay: Duration::from_millis(0),
    };

    /// Runs `call`, retrying transient errors with exponential backoff and jitter. A
    /// `Retry-After` is honoured when it fits under `max_delay`; a longer one ends the inline
    /// retries at once so the broker tier waits instead of a worker slot.
    pub async fn run<T, F, Fut>(&self, call: F) -> Result<T, DownstreamError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DownstreamError>>,
    {
        if self.times == 0 {
            let mut call = call;
            return call().await;
        }
        let max = self.max_delay;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(max)
            .with_max_times(self.times)
            .with_jitter();
        call.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(DownstreamError::is_transient)
            .adjust(move |e, planned| match (planned, e.retry_after) {
                (None, _) => None,
                (Some(_), Some(ra)) if ra > max => None,
                (Some(_), Some(ra)) => Some(ra),
                (Some(d), None) => Some(d),
            })
            .notify(|e, d| tracing::debug!(error = %e, delay_ms = d.as_millis() as u64, "retrying downstream call"))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn err(status: u16, retry_after: Option<&str>) -> DownstreamError {
        let mut h = HeaderMap::new();
        if let Some(ra) = retry_after {
            h.insert(reqwest::header::RETRY_AFTER, ra.parse().unwrap());
        }
        DownstreamError::from_status(
            "lago",
            "test",
            status,
            &h,
            r#"{"status":404,"code":"plan_not_found"}"#,
        )
    }

    #[test]
    fn classification() {
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert!(err(s, None).is_transient(), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 422] {
            assert!(!err(s, None).is_transient(), "{s}");
        }
        assert_eq!(err(404, None).code.as_deref(), Some("plan_not_found"));
        assert_eq!(err(429, Some("7")).retry_after, Some(Duration::from_secs(7)));
    }

    #[tokio::test]
    async fn retries_transient_then_succeeds_and_stops_on_permanent() {
        let policy = InlineRetry {
            times: 3,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        };
        let calls = AtomicUsize::new(0);
        let r = policy
            .run(|| async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 2 { Err(err(503, None)) } else { Ok(n) }
            })
            .await;
        assert_eq!(r.unwrap(), 2);
        let calls = AtomicUsize::new(0);
        let r: Result<(), _> = policy
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(err(422, None))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "permanent errors are not retried"
        );
    }

    #[tokio::test]
    async fn long_retry_after_hands_over_to_the_broker() {
        let policy = InlineRetry {
            times: 3,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(50),
        };
        let calls = AtomicUsize::new(0);
        // At once: a worker slot never waits out a long Retry-After.
        let r: Result<(), _> = tokio::time::timeout(
            Duration::from_secs(5),
            policy.run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(err(429, Some("120")))
            }),
        )
        .await
        .expect("handed over at once, not after the Retry-After");
        assert_eq!(r.unwrap_err().retry_after, Some(Duration::from_secs(120)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_retry_after_up_to_the_longest_inline_delay_is_waited_out() {
        let policy = InlineRetry {
            times: 3,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_secs(1),
        };
        let calls = AtomicUsize::new(0);
        let started = std::time::Instant::now();
        let r = policy
            .run(|| async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n == 0 { Err(err(429, Some("1"))) } else { Ok(n) }
            })
            .await;
        assert_eq!(r.unwrap(), 1, "retried inline");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "after the Retry-After"
        );
    }

    #[test]
    fn made_errors_say_whether_a_retry_helps() {
        let t = DownstreamError::transient("stripe", "list_events", "timed out");
        assert!(t.is_transient());
        assert_eq!(t.kind, ErrorKind::Transient);
        let p = DownstreamError::permanent("stripe", "list_events", "bad key");
        assert!(!p.is_transient());
        assert_eq!(t.to_string(), "stripe list_events failed: timed out");
    }
}
