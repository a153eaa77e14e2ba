//! One module per command group.

pub mod backfill;
pub mod billing;
pub mod dlq;
pub mod events;
pub mod reconcile;
pub mod replay;
pub mod send_test_event;
pub mod setup;
