//! The worker's HTTP routes on `WORKER_BIND`: `/healthz`, `/readyz` (from [`crate::health`]) and
//! `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde_json::json;
use webhook_core::metrics::dependency;

use crate::context::WorkerContext;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 when Postgres and RabbitMQ answer, no job is held for Postgres and every queue of the
/// topology exists; else 503 saying which.
pub async fn readyz(ctx: web::Data<Arc<WorkerContext>>) -> HttpResponse {
    let (postgres, rabbitmq) = check_dependencies(&ctx).await;
    let held = ctx.health.held_because();
    let missing = ctx.health.missing_queues();
    let ready = postgres && rabbitmq && held.is_none() && missing.is_empty();
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "postgres": match (postgres, &held) {
            (false, _) => "down".to_owned(),
            (true, Some(why)) => format!("holding jobs: {why}"),
            (true, None) => "up".to_owned(),
        },
        "rabbitmq": if rabbitmq { "up" } else { "down" },
    });
    if !missing.is_empty() {
        body["missing_queues"] = json!(missing);
        body["fix"] = json!("declare the topology: `webhookctl setup` (or the deploy's definitions)");
    }
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Keycloak's and Lago's `webhook_dependency_up` come from the calls to them; after this long
/// without a call the series is dropped rather than left at an old answer.
const KEYCLOAK_LAGO_QUIET: Duration = Duration::from_secs(300);

/// Whether Postgres and RabbitMQ answer now, also set as `webhook_dependency_up` (Keycloak's and
/// Lago's are set by each call to them).
async fn check_dependencies(ctx: &WorkerContext) -> (bool, bool) {
    let postgres = ctx.store.is_ready().await;
    let rabbitmq = ctx.broker.is_connected();
    let common = &ctx.metrics.common;
    common.set_up(dependency::POSTGRES, postgres);
    common.set_up(dependency::RABBITMQ, rabbitmq);
    ctx.metrics.broker_connected.set(i64::from(rabbitmq));
    (postgres, rabbitmq)
}

pub async fn metrics(ctx: web::Data<Arc<WorkerContext>>) -> HttpResponse {
    check_dependencies(&ctx).await;
    ctx.metrics.downstream.forget_quiet(KEYCLOAK_LAGO_QUIET);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(ctx.metrics.render())
}
