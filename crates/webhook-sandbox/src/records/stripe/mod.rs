//! Stripe's API as the stand-in serves it (contracts §5). Imports go down this list only:
//!
//! - [`query`]: list parameters, Stripe's errors for them, and cursor pagination.
//! - [`store`]: the account's events and its current subscriptions and customers.

pub(crate) mod query;
pub(crate) mod store;
