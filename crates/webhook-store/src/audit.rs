//! The audit log (`audit_logs`, the old system's shape).

use serde_json::Value;

/// Inserts one audit row; returns its id.
pub async fn insert(
    conn: &mut sqlx::PgConnection,
    event_type: &str,
    subject: &str,
    details: &Value,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO audit_logs (event_type, subject, details) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(event_type)
    .bind(subject)
    .bind(details)
    .fetch_one(conn)
    .await
}
