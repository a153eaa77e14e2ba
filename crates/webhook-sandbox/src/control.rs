//! The sandbox's own endpoints, without authentication: inspect the state, seed users, inject
//! faults, stalls and latency. They let a test in another process (or a person with curl) do what
//! in-process tests do through [`SandboxState`].

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::config::SeedUser;
use crate::faults::{Fault, Route, Stall};
use crate::records::keycloak::is_email;
use crate::state::SandboxState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/_sandbox/state", web::get().to(state))
        .route("/_sandbox/users", web::post().to(add_user))
        .route("/_sandbox/faults", web::post().to(add_fault))
        .route("/_sandbox/faults", web::delete().to(clear_faults))
        .route("/_sandbox/stalls", web::post().to(add_stall))
        .route("/_sandbox/latency", web::post().to(set_latency))
        .route("/_sandbox/tokens/expire", web::post().to(expire_tokens));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn state(state: web::Data<SandboxState>) -> HttpResponse {
    HttpResponse::Ok().json(state.snapshot())
}

async fn add_user(state: web::Data<SandboxState>, body: web::Bytes) -> HttpResponse {
    let user: SeedUser = match parse(&body) {
        Ok(user) => user,
        Err(message) => return bad_request(message),
    };
    if !is_email(&user.email) {
        return bad_request(format!("not an email address: {:?}", user.email));
    }
    let id = state.add_user(user);
    HttpResponse::Created().json(json!({"id": id}))
}

async fn add_fault(state: web::Data<SandboxState>, body: web::Bytes) -> HttpResponse {
    let fault: Fault = match parse(&body) {
        Ok(fault) => fault,
        Err(message) => return bad_request(message),
    };
    if StatusCode::from_u16(fault.status).is_err() {
        return bad_request(format!("not an HTTP status: {}", fault.status));
    }
    state.inject_fault(fault);
    HttpResponse::NoContent().finish()
}

async fn add_stall(state: web::Data<SandboxState>, body: web::Bytes) -> HttpResponse {
    match parse::<Stall>(&body) {
        Ok(stall) => {
            state.inject_stall(stall);
            HttpResponse::NoContent().finish()
        }
        Err(message) => bad_request(message),
    }
}

async fn clear_faults(state: web::Data<SandboxState>) -> HttpResponse {
    state.clear_faults();
    HttpResponse::NoContent().finish()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Latency {
    /// `null` or absent = every route.
    #[serde(default)]
    route: Option<Route>,
    ms: u64,
}

async fn set_latency(state: web::Data<SandboxState>, body: web::Bytes) -> HttpResponse {
    let latency: Latency = match parse(&body) {
        Ok(latency) => latency,
        Err(message) => return bad_request(message),
    };
    state.set_latency(latency.route, Duration::from_millis(latency.ms));
    HttpResponse::NoContent().finish()
}

async fn expire_tokens(state: web::Data<SandboxState>) -> HttpResponse {
    state.expire_tokens();
    HttpResponse::NoContent().finish()
}

/// Anything else: a 404 in the style of the API the path belongs to, so a wrong base URL or
/// path in a client shows up as that API's error.
pub(crate) async fn not_found(req: HttpRequest) -> HttpResponse {
    let body = if req.path().starts_with("/api/") {
        json!({"status": 404, "error": "Not Found"})
    } else {
        json!({"error": "HTTP 404 Not Found"})
    };
    HttpResponse::NotFound().json(body)
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

fn bad_request(message: String) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": message}))
}
