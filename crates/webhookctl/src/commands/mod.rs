//! One module per command group.

pub mod send_test_event;
pub mod setup;
