//! `/healthz` (the process is alive), `/readyz` (Postgres and RabbitMQ reachable), `/metrics`.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 503 while either dependency is unreachable, so a load balancer stops sending webhooks that
/// could only be answered 503 anyway.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let postgres = state.store.is_ready().await;
    let rabbitmq = state.broker.is_connected();
    let body = json!({
        "status": if postgres && rabbitmq { "ready" } else { "not_ready" },
        "postgres": if postgres { "up" } else { "down" },
        "rabbitmq": if rabbitmq { "up" } else { "down" },
    });
    if postgres && rabbitmq {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state
        .metrics
        .broker_connected
        .set(i64::from(state.broker.is_connected()));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
