//! The provider's example webhook handler, guarded by hookgate's tower layers.
//!
//! Run:
//!
//! ```sh
//! cargo run --example axum_layers --features axum          # listens on 127.0.0.1:3000 (PORT=... to change)
//! ```
//!
//! Then:
//!
//! ```sh
//! curl -i http://127.0.0.1:3000/webhook/o3-video -H 'content-type: application/json' \
//!   -d '{"generation_id":"550e8400-e29b-41d4-a716-446655440000","status":"completed",
//!        "video_url":"https://cdn.example.com/videos/550e8400.mp4","model":"kling-o3-video-10s-pro","message":null}'
//! # → 200 {"status":"received"}; the server prints "Video ready: https://cdn.example.com/videos/550e8400.mp4"
//! # the same again → 200 {"status":"duplicate"}, and nothing is printed
//! curl -i http://127.0.0.1:3000/webhook/o3-video -H 'content-type: application/json' -d '{"status":"done"}'
//! # → 422 {"error":"invalid_payload","detail":"3 fields are invalid","fields":[...]}
//! curl -s http://127.0.0.1:3000/metrics | grep hookgate_requests_total
//! # the router-level guard: the same checks on /callbacks/completed and /callbacks/failed
//! ```

use std::net::SocketAddr;

use axum::routing::post;
use axum::{Json, Router};
use hookgate::metrics::Metrics;
use hookgate::prometheus::Registry;
use hookgate::tower::{ServeMetrics, WebhookLayer};
use serde_json::{json, Value};

/// The provider's Flask example, in Rust: print what arrived, answer 200.
async fn handle_webhook(Json(data): Json<Value>) -> Json<Value> {
    if data["status"] == "completed" {
        println!(
            "Video ready: {}",
            data["video_url"].as_str().unwrap_or_default()
        );
    } else {
        println!(
            "Generation failed: {}",
            data["message"].as_str().unwrap_or_default()
        );
    }
    Json(json!({"status": "received"}))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::new();
    let metrics = Metrics::new(&registry)?;
    let webhook = WebhookLayer::builder("o3-video")
        .with_allow(["127.0.0.0/8", "::1/128"])?
        .with_metrics(&metrics)
        .build()?;

    // Router-level: one layer guards every route of a router (here a second sender, with its
    // own route name: metric label and dedup scope). `route_layer` leaves unmatched paths' 404
    // unguarded; `Router::layer` would guard them too.
    let callbacks = Router::new()
        .route("/callbacks/completed", post(handle_webhook))
        .route("/callbacks/failed", post(handle_webhook))
        .route_layer(
            WebhookLayer::builder("callbacks")
                .with_allow(["127.0.0.0/8", "::1/128"])?
                .with_metrics(&metrics)
                .build()?,
        );

    let app = Router::new()
        // Route-level: the layer around this route's handler.
        .route("/webhook/o3-video", post(handle_webhook).layer(webhook))
        .merge(callbacks)
        .route_service("/metrics", ServeMetrics::new(registry));

    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| format!("PORT={p:?} is not a port number"))?,
        Err(_) => 3000,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "listening on http://{}/webhook/o3-video (metrics at /metrics)",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
