//! The audit log (`audit_logs`, the old system's shape). Rows are written by
//! [`crate::ledger::finish_with_audit`], in the same statement as their ledger entry.

use serde_json::Value;

/// An `audit_logs` row to write.
pub struct AuditRow<'a> {
    /// e.g. `subscription.created`.
    pub event_type: &'a str,
    /// The user's email.
    pub subject: &'a str,
    /// Stripe event id, tier, plan, Lago subscription id, …
    pub details: &'a Value,
}
