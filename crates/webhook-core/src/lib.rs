//! Shared core of the Stripe billing webhook pipeline.
//!
//! - [`signature`]: `Stripe-Signature` verification; only it can make a [`signature::VerifiedPayload`].
//! - [`envelope`]: the event envelope and the [`envelope::VerifiedEvent`] the publisher takes.
//! - [`group_commit`]: many callers' items written together (the ingest's events, the worker's outcomes).
//! - [`event_type`]: the Stripe event types the pipeline handles ([`EventType`]).
//! - [`settings`]: the configuration of every binary (defaults in `default.toml`), and each
//!   server's typed view of it.
//! - [`service`]: the `main` of the servers: command line, settings, telemetry, build, run.
//! - [`urls`]: the configured URLs, checked at start ([`url_list`]: where one URL of a list ends).
//! - [`redact`]: credentials out of URLs before they are shown.
//! - [`message`]: the queue message schema and header names.
//! - [`telemetry`]: logging and tracing setup.
//! - [`metrics`]: the metrics every server exports (build info, dependencies, process).

pub mod envelope;
pub mod event_type;
pub mod group_commit;
pub mod message;
pub mod metrics;
pub mod redact;
pub mod service;
pub mod settings;
pub mod signature;
pub mod telemetry;
pub mod url_list;
pub mod urls;

pub use envelope::{Envelope, EnvelopeError, EventId, VerifiedEvent};
pub use event_type::EventType;
pub use settings::Settings;
pub use signature::{SignatureError, SignatureVerifier, VerifiedPayload};

/// Resolves on SIGTERM or SIGINT (Ctrl-C): both mean "stop gracefully" for the servers.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Current unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn unix_now_is_the_clock_in_seconds() {
        let expected = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((super::unix_now() - expected).abs() <= 2);
    }
}
