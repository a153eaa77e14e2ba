//! Lago customers (contracts §3.1): `POST /api/v1/customers` is an upsert on `external_id` that
//! changes only the keys sent, and `GET /api/v1/customers/{external_id}`.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use serde_json::json;

use super::http::authorize;
use crate::faults::Route;
use crate::records::lago::common::{LagoError, require_root};
use crate::state::SandboxState;

pub(crate) async fn post(
    state: web::Data<SandboxState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, LagoError> {
    if let Some(fault) = state.enter(Route::LagoCreateCustomer).await {
        return Ok(fault);
    }
    authorize(&state, &req)?;
    let params = require_root(&body, "customer")?;
    let mut data = state.lock();
    let index = data.lago.upsert_customer(&params, Utc::now())?;
    Ok(HttpResponse::Ok().json(json!({"customer": data.lago.customers[index].render()})))
}

pub(crate) async fn get(
    state: web::Data<SandboxState>,
    req: HttpRequest,
    external_id: web::Path<String>,
) -> Result<HttpResponse, LagoError> {
    if let Some(fault) = state.enter(Route::LagoGetCustomer).await {
        return Ok(fault);
    }
    authorize(&state, &req)?;
    let data = state.lock();
    let customer = data
        .lago
        .customers
        .iter()
        .find(|c| c.external_id == *external_id)
        .ok_or(LagoError::NotFound("customer"))?;
    Ok(HttpResponse::Ok().json(json!({"customer": customer.render()})))
}
