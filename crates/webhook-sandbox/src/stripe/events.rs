//! `GET /v1/events` (newest first, `created`, `type` with wildcards, `types[]`, cursors) and
//! `GET /v1/events/{id}`.

use actix_web::{HttpRequest, HttpResponse, web};

use super::http::{authorize, query_pairs};
use crate::faults::Route;
use crate::records::stripe::query::{EventQuery, StripeError, list_body, no_params};
use crate::state::SandboxState;

pub(crate) async fn list(
    state: web::Data<SandboxState>,
    req: HttpRequest,
) -> Result<HttpResponse, StripeError> {
    if let Some(fault) = state.enter(Route::StripeEvents).await {
        return Ok(fault);
    }
    authorize(&state, &req)?;
    let query = EventQuery::parse(query_pairs(&req)?)?;
    let (page, has_more) = state.lock().stripe.list_events(&query)?;
    Ok(HttpResponse::Ok().json(list_body("/v1/events", page, has_more)))
}

pub(crate) async fn retrieve(
    state: web::Data<SandboxState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, StripeError> {
    if let Some(fault) = state.enter(Route::StripeEvents).await {
        return Ok(fault);
    }
    authorize(&state, &req)?;
    no_params(query_pairs(&req)?)?;
    let event = state.lock().stripe.event(&id).cloned();
    let event = event.ok_or_else(|| StripeError::Missing {
        kind: "event",
        id: id.into_inner(),
        param: "id",
    })?;
    Ok(HttpResponse::Ok().json(event))
}
