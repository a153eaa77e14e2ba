//! Lago's records and rules (contracts §3). Imports go down this list only:
//!
//! - [`common`]: Lago's error kinds and how it reads parameters and times.
//! - [`plans`]: the plan catalogue and billing-period arithmetic.
//! - [`customers`]: the customer record and its rendering.
//! - [`subscriptions`]: the subscription record and the plan-change rules on a list of them.
//! - [`store`]: customers and subscriptions together: upsert, create, terminate.

pub(crate) mod common;
pub(crate) mod customers;
pub(crate) mod plans;
pub(crate) mod store;
pub(crate) mod subscriptions;
