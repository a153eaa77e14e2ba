//! The bottom layer: what the sandbox stores and the rules of the real APIs over it, as plain
//! data and pure functions. Nothing here knows actix, the shared state or the configuration, so
//! every rule is unit-tested without a server.
//!
//! - [`keycloak`]: users, the user profile, the full-replace PUT and user search.
//! - [`lago`]: plans, customers, subscriptions and the store that ties them together.
//! - [`stripe`]: events, subscriptions and customers of the Stripe API stand-in, and how its
//!   list endpoints filter and paginate.

pub(crate) mod keycloak;
pub(crate) mod lago;
pub(crate) mod stripe;
