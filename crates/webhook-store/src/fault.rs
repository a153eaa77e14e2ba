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
