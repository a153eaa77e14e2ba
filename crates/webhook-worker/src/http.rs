//! `/healthz`, `/readyz` and `/metrics` on `WORKER_BIND`, plus the queue-depth sampler.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde_json::json;
use webhook_amqp::topology::queue_depth;

use crate::context::WorkerContext;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(ctx: web::Data<Arc<WorkerContext>>) -> HttpResponse {
    let postgres = ctx.store.is_ready().await;
    let rabbitmq = ctx.broker.is_connected();
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

pub async fn metrics(ctx: web::Data<Arc<WorkerContext>>) -> HttpResponse {
    ctx.metrics
        .broker_connected
        .set(i64::from(ctx.broker.is_connected()));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(ctx.metrics.render())
}

/// Samples the depth of every queue of the topology every `every` (passive declares).
pub async fn sample_queue_depths(ctx: Arc<WorkerContext>, every: Duration) {
    loop {
        if let Some(link) = ctx.broker.current()
            && let Ok(channel) = link.connection.create_channel().await
        {
            // Sample the whole round first, then publish it: a scrape never sees half a round.
            let mut depths = Vec::new();
            for queue in ctx.broker.topology().all_queues() {
                match queue_depth(&channel, queue).await {
                    Ok(n) => depths.push((queue, i64::from(n))),
                    Err(_) => break, // a missing queue closes the channel; try again next round
                }
            }
            for (queue, depth) in depths {
                ctx.metrics.queue_depth.with_label_values(&[queue]).set(depth);
            }
            let _ = channel.close(200, "sampled".into()).await;
        }
        tokio::time::sleep(every).await;
    }
}
