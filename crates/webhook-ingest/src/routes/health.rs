//! `/healthz` (the process is alive), `/readyz` (Postgres and RabbitMQ reachable), `/metrics`
//! (with `webhook_dependency_up` checked at each scrape).

use actix_web::{HttpResponse, web};
use serde_json::json;

use webhook_core::metrics::dependency;

use crate::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 503 while either dependency is unreachable, so a load balancer stops sending webhooks that
/// could only be answered 503 anyway.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (postgres, rabbitmq) = check_dependencies(&state).await;
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

/// Whether Postgres and RabbitMQ answer now, also set as `webhook_dependency_up`: a scrape sees
/// them even while the readiness probe keeps the pod out of the Service.
async fn check_dependencies(state: &AppState) -> (bool, bool) {
    let postgres = state.store.is_ready().await;
    let rabbitmq = state.broker.is_connected();
    let common = &state.metrics.common;
    common.set_up(dependency::POSTGRES, postgres);
    common.set_up(dependency::RABBITMQ, rabbitmq);
    state.metrics.broker_connected.set(i64::from(rabbitmq));
    (postgres, rabbitmq)
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    check_dependencies(&state).await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
