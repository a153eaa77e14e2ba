//! One module per command group.

pub mod events;
pub mod send_test_event;
pub mod setup;
