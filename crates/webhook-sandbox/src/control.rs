//! The sandbox's own endpoints, without authentication: inspect the state, seed users and the
//! Stripe account, make changes "by hand" (a Keycloak attribute, a Lago termination), inject
//! faults, stalls and latency. They let a test in another process (or a person with curl) do
//! what in-process tests do through [`SandboxState`].

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::config::SeedUser;
use crate::error::SandboxError;
use crate::faults::{Fault, Route, Stall};
use crate::records::keycloak::is_email;
use crate::records::stripe::store::Kind;
use crate::state::SandboxState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/_sandbox/state", web::get().to(state))
        .route("/_sandbox/users", web::post().to(add_user))
        .route("/_sandbox/faults", web::post().to(add_fault))
        .route("/_sandbox/faults", web::delete().to(clear_faults))
        .route("/_sandbox/stalls", web::post().to(add_stall))
        .route("/_sandbox/latency", web::post().to(set_latency))
        .route("/_sandbox/tokens/expire", web::post().to(expire_tokens))
        .route(
            "/_sandbox/keycloak/users/{user}/attributes/{name}",
            web::put().to(set_user_attribute),
        )
        .route(
            "/_sandbox/lago/subscriptions/{external_id}/terminate",
            web::post().to(terminate_subscription),
        )
        .route("/_sandbox/stripe/events", web::post().to(stripe_add_events))
        .route(
            "/_sandbox/stripe/subscriptions/{id}",
            web::put().to(stripe_put_subscription),
        )
        .route(
            "/_sandbox/stripe/customers/{id}",
            web::put().to(stripe_put_customer),
        );
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

/// `PUT /_sandbox/keycloak/users/{id or email}/attributes/{name}` with the values as a JSON
/// array of strings (or one string); `[]` removes the attribute. 204.
async fn set_user_attribute(
    state: web::Data<SandboxState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let values: Vec<String> = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::String(one)) => vec![one],
        Ok(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => return bad_request("the body must be a JSON array of strings, e.g. [\"free\"]".into()),
    };
    let (user, name) = path.into_inner();
    match state.set_user_attribute(&user, &name, &values) {
        Ok(()) => HttpResponse::NoContent().finish(),
        Err(e) => refused(e),
    }
}

/// `POST /_sandbox/lago/subscriptions/{external_id}/terminate`: terminated by hand; 200 with
/// `{"subscription": …}`, 404 without an active one.
async fn terminate_subscription(
    state: web::Data<SandboxState>,
    external_id: web::Path<String>,
) -> HttpResponse {
    match state.terminate_subscription_by_hand(&external_id) {
        Ok(subscription) => HttpResponse::Ok().json(json!({"subscription": subscription})),
        Err(e) => refused(e),
    }
}

/// `POST /_sandbox/stripe/events`: one event object or an array of them, all or none; 201 with
/// `{"added": N}`, 400 for a malformed one, 409 for an id that exists.
async fn stripe_add_events(state: web::Data<SandboxState>, body: web::Bytes) -> HttpResponse {
    let events = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(events)) => events,
        Ok(event) => vec![event],
        Err(e) => return bad_request(format!("not JSON: {e}")),
    };
    match state.stripe_add_events(events) {
        Ok(added) => HttpResponse::Created().json(json!({"added": added})),
        Err(e) => refused(e),
    }
}

/// `PUT /_sandbox/stripe/subscriptions/{id}`: the current subscription; 200 with it as stored.
async fn stripe_put_subscription(
    state: web::Data<SandboxState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    stripe_put(&state, Kind::Subscription, &id, &body)
}

/// `PUT /_sandbox/stripe/customers/{id}`: the current customer; 200 with it as stored.
async fn stripe_put_customer(
    state: web::Data<SandboxState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    stripe_put(&state, Kind::Customer, &id, &body)
}

fn stripe_put(state: &SandboxState, kind: Kind, id: &str, body: &[u8]) -> HttpResponse {
    let object = match serde_json::from_slice::<Value>(body) {
        Ok(object) => object,
        Err(e) => return bad_request(format!("not JSON: {e}")),
    };
    match state.stripe_put(kind, Some(id), object) {
        Ok(stored) => HttpResponse::Ok().json(stored),
        Err(e) => refused(e),
    }
}

/// Anything else: a 404 in the style of the API the path belongs to, so a wrong base URL or
/// path in a client shows up as that API's error.
pub(crate) async fn not_found(req: HttpRequest) -> HttpResponse {
    let body = if req.path().starts_with("/api/") {
        json!({"status": 404, "error": "Not Found"})
    } else if req.path().starts_with("/v1/") {
        json!({"error": {
            "type": "invalid_request_error",
            "message": format!(
                "Unrecognized request URL ({}: {}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.",
                req.method(),
                req.path()
            ),
        }})
    } else {
        json!({"error": "HTTP 404 Not Found"})
    };
    HttpResponse::NotFound().json(body)
}

/// A refused seeding or by-hand change, with its status.
fn refused(error: SandboxError) -> HttpResponse {
    let status = match error {
        SandboxError::Invalid(_) => StatusCode::BAD_REQUEST,
        SandboxError::Conflict(_) => StatusCode::CONFLICT,
        SandboxError::NotFound(_) => StatusCode::NOT_FOUND,
    };
    HttpResponse::build(status).json(json!({"error": error.to_string()}))
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

fn bad_request(message: String) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": message}))
}
