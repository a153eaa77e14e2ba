//! What a Postgres error means for the work that got it, by SQLSTATE: our infrastructure is
//! unavailable (hold the work and try again later; the work is not at fault), or the work's
//! own statement was refused (a schema or data error: it goes through the retry schedule and
//! then to the dead-letter queue, with the SQLSTATE in its reason).

/// A classified Postgres error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbFault {
    /// Postgres cannot take the work now: connection lost, shutting down, a failover in
    /// progress (read-only), disk full, too many connections, a deadlock. `recycle`: the
    /// pool's connections may point at the wrong server (after a failover): replace them.
    Unavailable { reason: String, recycle: bool },
    /// The statement itself was refused: a column or table missing (a worker newer than the
    /// schema: run `webhookctl migrate`), a value out of range, a constraint.
    Refused {
        sqlstate: Option<String>,
        reason: String,
    },
}

/// Classifies `e` (see the module docs).
pub fn classify(e: &sqlx::Error) -> DbFault {
    use sqlx::Error as E;
    match e {
        E::Database(db) => {
            let code = db.code().map(|c| c.into_owned());
            let state = code.as_deref().unwrap_or("");
            let what = db.message();
            let unavailable = |recycle: bool, why: &str| DbFault::Unavailable {
                reason: format!("Postgres {why} (SQLSTATE {state}: {what})"),
                recycle,
            };
            match state {
                "25006" => unavailable(true, "refuses writes: a read-only server, a failover in progress"),
                "57P01" | "57P02" | "57P03" => unavailable(true, "is shutting down or starting"),
                "53100" => unavailable(false, "has a full disk"),
                "53200" => unavailable(false, "is out of memory"),
                "53300" => unavailable(false, "has too many connections"),
                "40001" | "40P01" => unavailable(
                    false,
                    "aborted the transaction (serialization failure or deadlock)",
                ),
                "53400" => unavailable(false, "reached a configuration limit"),
                "57014" => unavailable(
                    false,
                    "cancelled the statement (a statement timeout, e.g. behind a lock)",
                ),
                "55P03" => unavailable(false, "could not take a lock in time"),
                s if s.starts_with("58") => unavailable(false, "had a system or I/O error"),
                s if s.starts_with("08") => unavailable(true, "lost the connection"),
                _ => {
                    let hint = match state {
                        "42703" | "42P01" | "42883" => {
                            " (the schema is older than this worker: run `webhookctl migrate`)"
                        }
                        _ => "",
                    };
                    DbFault::Refused {
                        reason: format!("Postgres refused the statement: SQLSTATE {state}: {what}{hint}"),
                        sqlstate: code,
                    }
                }
            }
        }
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Protocol(_) => {
            DbFault::Unavailable {
                reason: format!("Postgres is unavailable: {e}"),
                recycle: matches!(e, E::Io(_) | E::Protocol(_)),
            }
        }
        // The answer does not fit what this build expects (a column missing or of another type).
        _ => DbFault::Refused {
            sqlstate: None,
            reason: format!(
                "Postgres answered what this build cannot read: {e} (is the schema migrated? run `webhookctl migrate`)"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Postgres error with this SQLSTATE, as the server sends it.
    fn db(code: &'static str) -> sqlx::Error {
        #[derive(Debug)]
        struct E(&'static str);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "error {}", self.0)
            }
        }
        impl std::error::Error for E {}
        impl sqlx::error::DatabaseError for E {
            fn message(&self) -> &str {
                "boom"
            }
            fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
                Some(self.0.into())
            }
            fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
                self
            }
            fn kind(&self) -> sqlx::error::ErrorKind {
                sqlx::error::ErrorKind::Other
            }
        }
        sqlx::Error::Database(Box::new(E(code)))
    }

    #[test]
    fn by_sqlstate() {
        for (code, recycle) in [
            ("25006", true),
            ("57P01", true),
            ("08006", true),
            ("53100", false),
            ("53300", false),
            ("53200", false),
            ("53400", false),
            ("40P01", false),
            ("57014", false),
            ("55P03", false),
            ("58030", false),
        ] {
            match classify(&db(code)) {
                DbFault::Unavailable { reason, recycle: r } => {
                    assert_eq!(r, recycle, "{code}");
                    assert!(reason.contains(code), "{reason}");
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        for code in ["42703", "42P01", "22001", "23505", "XX000"] {
            match classify(&db(code)) {
                DbFault::Refused { sqlstate, reason } => {
                    assert_eq!(sqlstate.as_deref(), Some(code));
                    assert!(reason.contains(code), "{reason}");
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        assert!(
            matches!(classify(&db("42703")), DbFault::Refused { reason, .. } if reason.contains("webhookctl migrate"))
        );
        assert!(matches!(
            classify(&sqlx::Error::PoolTimedOut),
            DbFault::Unavailable { .. }
        ));
        assert!(matches!(
            classify(&sqlx::Error::RowNotFound),
            DbFault::Refused { .. }
        ));
    }
}
