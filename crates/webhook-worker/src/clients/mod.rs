//! Typed clients of the downstream APIs, one per service, each with timeouts and errors that say
//! whether a retry can help ([`DownstreamError::kind`]). The classification lives here, next to
//! the HTTP calls, not in the worker loop.

pub mod error;
pub mod keycloak;
pub mod lago;

pub use error::{DownstreamError, InlineRetry};
pub use keycloak::KeycloakClient;
pub use lago::LagoClient;
