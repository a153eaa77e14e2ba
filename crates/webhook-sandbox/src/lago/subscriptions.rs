//! Lago subscriptions (contracts §3.2, §3.3): `POST /api/v1/subscriptions` (create, idempotent
//! on `external_id`, upgrade or downgrade), `GET` and `DELETE /api/v1/subscriptions/{external_id}`
//! (terminate, not idempotent). The rules are in `crate::records::lago::subscriptions`.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use serde_json::json;

use super::http::authorize;
use crate::faults::Route;
use crate::records::lago::common::{LagoError, require_root};
use crate::state::{Data, SandboxState};

fn respond(state: &SandboxState, data: &Data, index: usize) -> HttpResponse {
    let body = data.lago.render_subscription(index, &state.shared().plans);
    HttpResponse::Ok().json(json!({"subscription": body}))
}

pub(crate) async fn post(
    state: web::Data<SandboxState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, LagoError> {
    if let Some(fault) = state.enter(Route::LagoCreateSubscription).await {
        return Ok(fault);
    }
    authorize(&state, &req)?;
    let params = require_root(&body, "subscription")?;
    let mut data = state.lock();
    let index = data
        .lago
        .create_subscription(&state.shared().plans, &params, Utc::now())?;
    let response = respond(&state, &data, index);
    let sub = &data.lago.subscriptions[index];
    tracing::info!(
        external_id = %sub.external_id, customer = %sub.external_customer_id, plan = %sub.plan_code,
        status = ?sub.status, "lago: subscription assigned"
    );
    Ok(response)
}

#[derive(serde::Deserialize)]
pub(crate) struct StatusQuery {
    status: Option<String>,
}

pub(crate) async fn get(
    state: web::Data<SandboxState>,
    req: HttpRequest,
    external_id: web::Path<String>,
    query: web::Query<StatusQuery>,
) -> Result<HttpResponse, LagoError> {
    if let Some(fault) = state.enter(Route::LagoGetSubscription).await {
        return Ok(fault);
    }
    authorize(&state, &req)?;
    let data = state.lock();
    let status = query.status.as_deref().unwrap_or("active");
    let index = data
        .lago
        .find_subscription(&external_id, status)
        .ok_or(LagoError::NotFound("subscription"))?;
    Ok(respond(&state, &data, index))
}

pub(crate) async fn delete(
    state: web::Data<SandboxState>,
    req: HttpRequest,
    external_id: web::Path<String>,
    query: web::Query<StatusQuery>,
) -> Result<HttpResponse, LagoError> {
    if let Some(fault) = state.enter(Route::LagoTerminateSubscription).await {
        return Ok(fault);
    }
    authorize(&state, &req)?;
    let mut data = state.lock();
    let status = query.status.as_deref().unwrap_or("active");
    let index = data
        .lago
        .terminate_subscription(&external_id, status, Utc::now())?;
    Ok(respond(&state, &data, index))
}
