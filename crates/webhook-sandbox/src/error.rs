//! The bottom of the crate: why the sandbox refuses a seeding or a change made "by hand", both
//! in-process ([`crate::SandboxState`]'s methods) and over `/_sandbox/*`, where each kind is an
//! HTTP status.

/// A refused seeding or by-hand change; nothing was stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// Malformed input (HTTP 400): the message says which field and why.
    #[error("{0}")]
    Invalid(String),
    /// It would replace something that exists, such as an event id (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// What it names does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
}
