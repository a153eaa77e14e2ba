//! The Keycloak part of the sandbox (contracts §2): the OpenID Connect token endpoint and the
//! Admin REST user endpoints, under the same paths as a real Keycloak ≥ 17 (no `/auth` prefix).
//!
//! - [`http`]: what every endpoint shares: error bodies, the bearer-token and realm checks.
//! - [`token`]: `POST /realms/{realm}/protocol/openid-connect/token`.
//! - [`users`]: the search / get / update handlers (the user model and the user-profile rules are
//!   in `crate::records::keycloak`).

mod http;
mod token;
mod users;

use actix_web::web;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/realms/{realm}/protocol/openid-connect/token",
        web::post().to(token::issue),
    )
    .route("/admin/realms/{realm}/users", web::get().to(users::search))
    .route("/admin/realms/{realm}/users/{id}", web::get().to(users::get))
    .route("/admin/realms/{realm}/users/{id}", web::put().to(users::update));
}
