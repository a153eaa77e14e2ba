//! How a job can fail, and what that means for the message.

use std::time::Duration;

use webhook_core::message::ErrorKind;
use webhook_store::fault::{self, DbFault};

use crate::clients::DownstreamError;

/// A failure of the job itself: retried later (transient) or dead-lettered (permanent).
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: ErrorKind,
    /// The step that failed (`parse`, `keycloak_lookup`, `lago_subscription`, …).
    pub step: &'static str,
    pub message: String,
    /// Whether the retry counts against the schedule. Waiting for another job of the same
    /// subscription does not: the lease is free again within `worker.lease_secs`.
    pub spends_retry: bool,
    /// How long the downstream asked us to wait (`Retry-After`): the retry waits at least that
    /// long ([`crate::retry::tier`]).
    pub retry_after: Option<Duration>,
}

impl Failure {
    fn new(kind: ErrorKind, step: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            step,
            message: message.into(),
            spends_retry: true,
            retry_after: None,
        }
    }
    pub fn permanent(step: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, step, message)
    }
    pub fn transient(step: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, step, message)
    }
    /// Transient, without spending a retry (see [`Failure::spends_retry`]).
    pub fn contention(step: &'static str, message: impl Into<String>) -> Self {
        Self {
            spends_retry: false,
            ..Self::transient(step, message)
        }
    }
    pub fn downstream(step: &'static str, e: DownstreamError) -> Self {
        Self {
            retry_after: e.retry_after,
            ..Self::new(e.kind, step, e.to_string())
        }
    }
}

/// Why a job did not finish.
#[derive(Debug)]
pub enum JobError {
    /// The job failed; the message moves on (retry tier or dead letter).
    Failed(Failure),
    /// Our own infrastructure (Postgres) is unavailable: nothing can be recorded, so the
    /// message is held (unacked) and tried again with a growing delay until it is back.
    Infrastructure(Unavailable),
}

/// Postgres cannot take the work now (see [`webhook_store::fault`]).
#[derive(Debug, Clone)]
pub struct Unavailable {
    pub reason: String,
    /// The pool's connections may point at the wrong server (a failover): replace them.
    pub recycle: bool,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// By SQLSTATE: Postgres unavailable (held), or the job's statement refused (retried through
/// the schedule, then dead-lettered with the SQLSTATE in `x-error`).
impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        match fault::classify(&e) {
            DbFault::Unavailable { reason, recycle } => {
                JobError::Infrastructure(Unavailable { reason, recycle })
            }
            DbFault::Refused { reason, .. } => JobError::Failed(Failure::transient("postgres", reason)),
        }
    }
}

impl From<Failure> for JobError {
    fn from(f: Failure) -> Self {
        JobError::Failed(f)
    }
}
