//! The Stripe API stand-in (contracts §5, issue 19): the read calls `webhookctl backfill`,
//! `webhookctl reconcile` and the worker's `stripe.refetch` make, under Stripe's paths, with
//! Stripe's list envelope, cursor pagination, errors and key check. What it serves is seeded
//! (`SandboxState::stripe_*`, `/_sandbox/stripe/*`); the rules are in `crate::records::stripe`.
//!
//! - [`http`]: what every endpoint shares: the key check, error bodies, the query.
//! - [`events`]: `GET /v1/events` and `GET /v1/events/{id}`.
//! - [`objects`]: `GET /v1/subscriptions`, `GET /v1/subscriptions/{id}`, `GET /v1/customers/{id}`.

mod events;
mod http;
mod objects;

use actix_web::web;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/events", web::get().to(events::list))
        .route("/v1/events/{id}", web::get().to(events::retrieve))
        .route("/v1/subscriptions", web::get().to(objects::list_subscriptions))
        .route(
            "/v1/subscriptions/{id}",
            web::get().to(objects::retrieve_subscription),
        )
        .route("/v1/customers/{id}", web::get().to(objects::retrieve_customer));
}
