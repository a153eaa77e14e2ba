//! Keycloak's user endpoints (contracts §2.2, §2.3): search, get and the user PUT, over the
//! rules in `crate::records::keycloak`.

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value};

use super::http::{authorize, check_realm};
use crate::faults::Route;
use crate::records::keycloak::{KeycloakError, Search, View, apply_put};
use crate::state::SandboxState;

pub(crate) async fn search(
    state: web::Data<SandboxState>,
    req: HttpRequest,
    realm: web::Path<String>,
) -> Result<HttpResponse, KeycloakError> {
    if let Some(fault) = state.enter(Route::KeycloakSearchUsers).await {
        return Ok(fault);
    }
    authorize(&state, &req)?;
    check_realm(&state, &realm)?;
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map_err(|e| KeycloakError::BadRequest(e.to_string()))?;
    let search = Search::parse(&query);
    let profile = &state.shared().profile;
    let data = state.lock();
    let found = search.page(data.users.iter().filter(|u| search.matches(u)).collect());
    let body: Vec<_> = found
        .into_iter()
        .map(|u| u.representation(profile, View::Admin { brief: search.brief }))
        .collect();
    Ok(HttpResponse::Ok().json(body))
}

pub(crate) async fn get(
    state: web::Data<SandboxState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, KeycloakError> {
    if let Some(fault) = state.enter(Route::KeycloakGetUser).await {
        return Ok(fault);
    }
    authorize(&state, &req)?;
    let (realm, id) = path.into_inner();
    check_realm(&state, &realm)?;
    let data = state.lock();
    let user = data
        .users
        .iter()
        .find(|u| u.id == id)
        .ok_or(KeycloakError::UserNotFound)?;
    Ok(HttpResponse::Ok().json(user.representation(&state.shared().profile, View::Admin { brief: false })))
}

pub(crate) async fn update(
    state: web::Data<SandboxState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, KeycloakError> {
    if let Some(fault) = state.enter(Route::KeycloakPutUser).await {
        return Ok(fault);
    }
    authorize(&state, &req)?;
    let (realm, id) = path.into_inner();
    check_realm(&state, &realm)?;
    let body: Map<String, Value> =
        serde_json::from_slice(&body).map_err(|e| KeycloakError::BadRequest(format!("invalid JSON: {e}")))?;
    let mut data = state.lock();
    let index = data
        .users
        .iter()
        .position(|u| u.id == id)
        .ok_or(KeycloakError::UserNotFound)?;
    let next = apply_put(&data.users[index], &body, &state.shared().profile)?;
    if let Some(email) = &next.email
        && next.email != data.users[index].email
        && data
            .users
            .iter()
            .any(|u| u.id != id && u.email.as_ref() == Some(email))
    {
        return Err(KeycloakError::Conflict);
    }
    // One line per effect, so `make run` shows what Keycloak would now hold.
    tracing::info!(
        user = next.email.as_deref().unwrap_or(&next.username),
        attributes = ?next.attributes,
        "keycloak: user updated"
    );
    data.users[index] = next;
    Ok(HttpResponse::NoContent().finish())
}
