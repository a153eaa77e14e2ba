//! How a job can fail, and what that means for the message.

use std::sync::Arc;
use std::time::Duration;

use webhook_core::message::ErrorKind;
use webhook_store::fault::{self, DbFault};

use crate::step::Step;
use webhook_clients::DownstreamError;

/// A failure of the job itself: retried later (transient) or dead-lettered (permanent). Its
/// message is what the event's history and the `x-error` header say; its source, when it has
/// one, is the error it came from (a Keycloak or Lago call, a refused statement).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{step} failed: {message}")]
pub struct Failure {
    pub kind: ErrorKind,
    /// The step that failed.
    pub step: Step,
    pub message: String,
    /// Whether the retry counts against the schedule. Waiting for another job of the same
    /// subscription does not: the lease is free again within `worker.lease_secs`.
    pub spends_retry: bool,
    /// How long the downstream asked us to wait (`Retry-After`): the retry waits at least that
    /// long ([`crate::settle::retry::tier`]).
    pub retry_after: Option<Duration>,
    #[source]
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Failure {
    fn new(kind: ErrorKind, step: Step, message: impl Into<String>) -> Self {
        Self {
            kind,
            step,
            message: message.into(),
            spends_retry: true,
            retry_after: None,
            source: None,
        }
    }
    pub fn permanent(step: Step, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, step, message)
    }
    pub fn transient(step: Step, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, step, message)
    }
    /// Transient, without spending a retry (see [`Failure::spends_retry`]).
    pub fn contention(step: Step, message: impl Into<String>) -> Self {
        Self {
            spends_retry: false,
            ..Self::transient(step, message)
        }
    }
    pub fn downstream(step: Step, e: DownstreamError) -> Self {
        Self {
            retry_after: e.retry_after,
            ..Self::new(e.kind, step, e.to_string())
        }
        .caused_by(e)
    }
    /// The same failure, with the error it came from as its source.
    pub fn caused_by(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(e));
        self
    }
}

/// A Stripe object that cannot be read: permanent (the event will never change).
impl From<crate::stripe::ObjectError> for Failure {
    fn from(e: crate::stripe::ObjectError) -> Self {
        Failure::permanent(Step::Parse, e.to_string()).caused_by(e)
    }
}

/// Why a job did not finish.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job failed; the message moves on (retry tier or dead letter).
    #[error(transparent)]
    Failed(#[from] Failure),
    /// Our own infrastructure (Postgres) is unavailable: nothing can be recorded, so the
    /// message is held (unacked) and tried again with a growing delay until it is back.
    #[error(transparent)]
    Infrastructure(#[from] Unavailable),
}

/// Postgres cannot take the work now (see [`webhook_store::fault`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct Unavailable {
    pub reason: String,
    /// The pool's connections may point at the wrong server (a failover): replace them.
    pub recycle: bool,
    #[source]
    pub source: Option<Arc<sqlx::Error>>,
}

impl Unavailable {
    /// Postgres unavailable for a reason of our own (no database error behind it).
    pub fn because(reason: impl Into<String>, recycle: bool) -> Self {
        Self {
            reason: reason.into(),
            recycle,
            source: None,
        }
    }
}

impl From<crate::stripe::ObjectError> for JobError {
    fn from(e: crate::stripe::ObjectError) -> Self {
        JobError::Failed(e.into())
    }
}

/// By SQLSTATE: Postgres unavailable (held), or the job's statement refused (retried through
/// the schedule, then dead-lettered with the SQLSTATE in `x-error`).
impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        match fault::classify(&e) {
            DbFault::Unavailable { reason, recycle } => JobError::Infrastructure(Unavailable {
                reason,
                recycle,
                source: Some(Arc::new(e)),
            }),
            DbFault::Refused { reason, .. } => {
                JobError::Failed(Failure::transient(Step::Postgres, reason).caused_by(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_says_whether_it_spends_a_retry() {
        let p = Failure::permanent(Step::Parse, "no id");
        assert_eq!(
            (p.kind, p.step, p.message.as_str(), p.spends_retry),
            (ErrorKind::Permanent, Step::Parse, "no id", true)
        );
        let t = Failure::transient(Step::LagoCustomer, "HTTP 503");
        assert_eq!((t.kind, t.spends_retry), (ErrorKind::Transient, true));
        let c = Failure::contention(Step::SubscriptionLease, "another job holds sub_1");
        assert_eq!(
            (c.kind, c.step, c.spends_retry),
            (ErrorKind::Transient, Step::SubscriptionLease, false)
        );
        let d = Failure::downstream(
            Step::KeycloakLookup,
            DownstreamError::permanent("keycloak", "search", "no such realm"),
        );
        assert_eq!((d.kind, d.step), (ErrorKind::Permanent, Step::KeycloakLookup));
        let source = std::error::Error::source(&d).expect("the Keycloak error is kept as the source");
        assert_eq!(source.to_string(), "keycloak search failed: no such realm");
        assert_eq!(d.message, "keycloak search failed: no such realm");
    }

    #[test]
    fn postgres_down_holds_the_job_and_a_refused_statement_fails_it() {
        match JobError::from(sqlx::Error::PoolTimedOut) {
            JobError::Infrastructure(u) => {
                assert!(!u.recycle);
                assert!(std::error::Error::source(&u).is_some(), "the sqlx error is kept");
                assert_eq!(u.to_string(), u.reason);
                assert!(u.reason.contains("Postgres is unavailable"), "{u}");
            }
            other => panic!("{other:?}"),
        }
        match JobError::from(sqlx::Error::Io(std::io::Error::other("reset"))) {
            JobError::Infrastructure(u) => assert!(u.recycle, "a lost connection is replaced"),
            other => panic!("{other:?}"),
        }
        match JobError::from(sqlx::Error::RowNotFound) {
            JobError::Failed(f) => {
                assert_eq!(
                    (f.kind, f.step, f.spends_retry),
                    (ErrorKind::Transient, Step::Postgres, true)
                );
                assert!(f.message.contains("webhookctl migrate"), "{}", f.message);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            JobError::from(Failure::permanent(Step::Parse, "x")),
            JobError::Failed(Failure {
                kind: ErrorKind::Permanent,
                ..
            })
        ));
    }

    #[test]
    fn a_downstream_failure_keeps_its_kind_its_retry_after_and_its_cause() {
        let mut e = DownstreamError::transient("lago", "create_subscription", "HTTP 429");
        e.retry_after = Some(Duration::from_secs(7));
        let f = Failure::downstream(Step::LagoSubscription, e);
        assert_eq!(f.kind, ErrorKind::Transient);
        assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(f.step, Step::LagoSubscription);
        assert!(f.message.contains("HTTP 429"), "{}", f.message);
        assert!(std::error::Error::source(&f).is_some());
    }
}
