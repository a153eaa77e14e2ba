//! Stripe's current objects: `GET /v1/subscriptions` (without `status`, canceled ones are left
//! out; `status=all` lists every one), `GET /v1/subscriptions/{id}` and `GET /v1/customers/{id}`.

use actix_web::{HttpRequest, HttpResponse, web};

use super::http::{authorize, query_pairs};
use crate::faults::Route;
use crate::records::stripe::query::{StripeError, SubscriptionQuery, list_body, no_params};
use crate::records::stripe::store::Kind;
use crate::state::SandboxState;

pub(crate) async fn list_subscriptions(
    state: web::Data<SandboxState>,
    req: HttpRequest,
) -> Result<HttpResponse, StripeError> {
    if let Some(fault) = state.enter(Route::StripeSubscriptions).await {
        return Ok(fault);
    }
    authorize(&state, &req)?;
    let query = SubscriptionQuery::parse(query_pairs(&req)?)?;
    let (page, has_more) = state.lock().stripe.list_subscriptions(&query)?;
    Ok(HttpResponse::Ok().json(list_body("/v1/subscriptions", page, has_more)))
}

pub(crate) async fn retrieve_subscription(
    state: web::Data<SandboxState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, StripeError> {
    retrieve(
        &state,
        &req,
        Route::StripeSubscriptions,
        Kind::Subscription,
        id.into_inner(),
    )
    .await
}

pub(crate) async fn retrieve_customer(
    state: web::Data<SandboxState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, StripeError> {
    retrieve(
        &state,
        &req,
        Route::StripeCustomers,
        Kind::Customer,
        id.into_inner(),
    )
    .await
}

async fn retrieve(
    state: &SandboxState,
    req: &HttpRequest,
    route: Route,
    kind: Kind,
    id: String,
) -> Result<HttpResponse, StripeError> {
    if let Some(fault) = state.enter(route).await {
        return Ok(fault);
    }
    authorize(state, req)?;
    no_params(query_pairs(req)?)?;
    let object = state.lock().stripe.object(kind, &id).cloned();
    let object = object.ok_or(StripeError::Missing {
        kind: kind.name(),
        id,
        param: "id",
    })?;
    Ok(HttpResponse::Ok().json(object))
}
