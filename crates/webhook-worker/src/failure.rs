//! How a job can fail, and what that means for the message.

use webhook_core::message::ErrorKind;

use crate::clients::DownstreamError;

/// A failure of the job itself: retried later (transient) or dead-lettered (permanent).
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: ErrorKind,
    /// The step that failed (`parse`, `keycloak_lookup`, `lago_subscription`, …).
    pub step: &'static str,
    pub message: String,
}

impl Failure {
    pub fn permanent(step: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            step,
            message: message.into(),
        }
    }
    pub fn transient(step: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            step,
            message: message.into(),
        }
    }
    pub fn downstream(step: &'static str, e: DownstreamError) -> Self {
        Self {
            kind: e.kind,
            step,
            message: e.to_string(),
        }
    }
}

/// Why a job did not finish.
#[derive(Debug)]
pub enum JobError {
    /// The job failed; the message moves on (retry tier or dead letter).
    Failed(Failure),
    /// Our own infrastructure (Postgres) is unavailable: nothing can be recorded, so the
    /// message is returned to the queue untouched and tried again once it is back.
    Infrastructure(String),
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Infrastructure(format!("Postgres: {e}"))
    }
}

impl From<Failure> for JobError {
    fn from(f: Failure) -> Self {
        JobError::Failed(f)
    }
}
