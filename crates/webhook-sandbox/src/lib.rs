//! `webhook-sandbox`: an in-memory stand-in for the Keycloak Admin REST API, the Lago API and
//! Stripe's read API, for `make run` and the end-to-end tests, on a machine where none can run.
//!
//! It reproduces the semantics the worker depends on (shared/contracts/README.md §2 and §3), the
//! pitfalls included: Keycloak's full-replace user PUT and silently dropped unmanaged attributes,
//! Lago's partial customer upsert, idempotent / upgrading / downgrading subscription create, and
//! non-idempotent terminate. For `webhookctl backfill`, `webhookctl reconcile` and the worker's
//! `stripe.refetch` (§5) it serves the Stripe calls they make: `GET /v1/events` (newest first,
//! `created` ranges, `type` with `*`, `types[]`, `limit` 1–100, `starting_after` /
//! `ending_before`), `GET /v1/events/{id}`, `GET /v1/subscriptions` (canceled ones only with
//! `status=all` or `canceled`), `GET /v1/subscriptions/{id}` and `GET /v1/customers/{id}`, with
//! Stripe's list envelope and errors, the key as Bearer or Basic, and 429s on demand (a
//! [`Fault`] on [`Route::StripeEvents`], …). One base URL serves all three APIs, under their real
//! paths.
//!
//! Tests seed and change it in-process through [`SandboxState`], or over HTTP through the
//! `/_sandbox/*` endpoints (no auth):
//!
//! | in-process | over HTTP |
//! |---|---|
//! | [`SandboxState::snapshot`] | `GET /_sandbox/state` |
//! | [`SandboxState::add_user`] | `POST /_sandbox/users` |
//! | [`SandboxState::inject_fault`], `inject_stall`, `set_latency`, `clear_faults` | `POST /_sandbox/faults`, `/stalls`, `/latency`; `DELETE /_sandbox/faults` |
//! | [`SandboxState::expire_tokens`] | `POST /_sandbox/tokens/expire` |
//! | [`SandboxState::set_user_attribute`] (by hand) | `PUT /_sandbox/keycloak/users/{id or email}/attributes/{name}` |
//! | [`SandboxState::terminate_subscription_by_hand`] | `POST /_sandbox/lago/subscriptions/{external_id}/terminate` |
//! | [`SandboxState::stripe_add_events`] | `POST /_sandbox/stripe/events` (one event or an array) |
//! | [`SandboxState::stripe_put_subscription`] | `PUT /_sandbox/stripe/subscriptions/{id}` |
//! | [`SandboxState::stripe_put_customer`] | `PUT /_sandbox/stripe/customers/{id}` |
//!
//! Layout, in layers: a module imports only from layers below its own (`use crate::…` never
//! goes up or sideways), so each layer can be read and tested without the ones above it.
//!
//! 1. `records`: what the sandbox stores and the APIs' rules over it, as plain data and pure
//!    functions: no actix, no shared state, no configuration (Keycloak users and the user
//!    profile; Lago plans, customers, subscriptions; Stripe events, subscriptions, customers and
//!    list queries). `error` ([`SandboxError`]) is below it; [`faults`] sits beside it: the
//!    injected errors, stalls and latencies per [`Route`], and the error bodies they answer with.
//! 2. [`config`]: [`SandboxConfig`] and the seed types, loadable from a JSON seed file; the seeds
//!    turn into records.
//! 3. [`state`]: [`SandboxState`], all records behind one mutex, and the inspection API for tests.
//! 4. The HTTP handlers, which never import each other: `keycloak` (token endpoint and Admin REST
//!    users), `lago` (customers and subscriptions under `/api/v1`), `stripe` (`/v1/…`) and
//!    `control` (`/_sandbox/*`: state dump, seeding, by-hand changes, faults; and `/healthz`).
//!    Inside `keycloak`, `lago` and `stripe`, `http` (error bodies, auth) is below the endpoint
//!    modules.
//! 5. [`Sandbox`] (here): builds and runs the server; [`cli`] turns flags into a config, and
//!    `main.rs` only parses flags and runs it.

pub mod cli;
pub mod config;
mod control;
mod error;
pub mod faults;
mod keycloak;
mod lago;
mod records;
pub mod state;
mod stripe;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use anyhow::Context;

pub use config::{SandboxConfig, SeedPlan, SeedUser, UnmanagedPolicy};
pub use error::SandboxError;
pub use faults::{Fault, Route, Stall};
pub use state::SandboxState;

/// A built, bound, not yet running sandbox.
pub struct Sandbox {
    port: u16,
    url: String,
    server: Server,
    state: SandboxState,
}

impl Sandbox {
    /// Validates the configuration, loads the seed data and binds `config.bind`.
    pub async fn build(config: SandboxConfig) -> anyhow::Result<Sandbox> {
        let bind = config.bind.clone();
        let state = SandboxState::new(config)?;
        let listener = TcpListener::bind(&bind).with_context(|| format!("cannot listen on {bind}"))?;
        let address = listener.local_addr()?;
        // A wildcard address is reachable through loopback; clients need a concrete host.
        let host = match address.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let url = match host {
            IpAddr::V4(ip) => format!("http://{ip}:{}", address.port()),
            IpAddr::V6(ip) => format!("http://[{ip}]:{}", address.port()),
        };
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .configure(keycloak::routes)
                .configure(lago::routes)
                .configure(stripe::routes)
                .configure(control::routes)
                .default_service(web::to(control::not_found))
        })
        // One worker is plenty: handlers only hold the lock briefly, and injected latency is an
        // async sleep, so slow requests do not block others.
        .workers(1)
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        Ok(Sandbox {
            port: address.port(),
            url,
            server,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://HOST:PORT`: the base URL of the Keycloak, Lago and Stripe routes (`STRIPE_API_URL`).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The shared state, for in-process inspection and fault injection.
    pub fn state(&self) -> SandboxState {
        self.state.clone()
    }

    /// Stops the server gracefully (tests; SIGTERM and Ctrl-C do it for the binary).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await.context("sandbox server failed")
    }
}
