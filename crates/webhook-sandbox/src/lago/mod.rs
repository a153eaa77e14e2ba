//! The Lago endpoints of the sandbox (contracts §3), under `/api/v1` with bearer-key auth and
//! Lago's error bodies. The rules they apply are in `crate::records::lago`; these handlers parse,
//! authorize, lock the state and answer.
//!
//! - [`http`]: what every endpoint shares: error bodies and the API-key check.
//! - [`customers`]: `POST /customers` (upsert, partial update) and `GET /customers/{id}`.
//! - [`subscriptions`]: create (idempotent / upgrade / downgrade), get and terminate.

mod customers;
mod http;
mod subscriptions;

use actix_web::web;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/customers", web::post().to(customers::post))
        .route("/api/v1/customers/{external_id}", web::get().to(customers::get))
        .route("/api/v1/subscriptions", web::post().to(subscriptions::post))
        .route(
            "/api/v1/subscriptions/{external_id}",
            web::get().to(subscriptions::get),
        )
        .route(
            "/api/v1/subscriptions/{external_id}",
            web::delete().to(subscriptions::delete),
        );
}
