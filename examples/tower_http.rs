//! hookgate among tower-http's layers, on both sides:
//!
//! ```text
//! TraceLayer → RequestBodyLimitLayer (64 KiB) → WebhookLayer → TraceLayer → handler
//! ```
//!
//! The outer trace sees every request, hookgate's refusals included; the body limit in front
//! hands hookgate a `Limited<Body>`; the inner trace sees only what hookgate admitted, as the
//! `Request<Full<Bytes>>` hookgate hands on. Each trace counts what it saw (`/seen`).
//!
//! ```sh
//! cargo run --example tower_http --features axum     # listens on 127.0.0.1:3000 (PORT=... to change)
//! curl -i http://127.0.0.1:3000/webhook/o3-video -H 'content-type: application/json' -d '{"status":"done"}'
//! # 422 from hookgate; curl -s http://127.0.0.1:3000/seen → {"outer":1,"inner":0}
//! ```
//!
//! `tests/library.rs` runs [`app`] over real sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Json, Router};
use hookgate::metrics::Metrics;
use hookgate::tower::WebhookLayer;
use serde_json::{json, Value};
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

/// How many requests each trace layer saw.
#[derive(Default, Clone)]
pub struct Seen {
    /// In front of everything.
    pub outer: Arc<AtomicUsize>,
    /// Between hookgate and the handler.
    pub inner: Arc<AtomicUsize>,
}

async fn handle(Json(event): Json<Value>) -> Json<Value> {
    println!("{}: {}", event["generation_id"], event["status"]);
    Json(json!({"status": "received"}))
}

/// The router: the webhook route guarded as above, and `/seen`.
pub fn app(metrics: &Metrics, seen: Seen) -> Result<Router, hookgate::core::ConfigError> {
    let webhook = WebhookLayer::builder("o3-video")
        .with_allow(["127.0.0.0/8", "::1/128"])?
        .with_metrics(metrics)
        .build()?;
    let (outer, inner) = (seen.outer.clone(), seen.inner.clone());
    let stack = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http().on_request(
            move |_: &http::Request<_>, _: &tracing::Span| {
                outer.fetch_add(1, Ordering::SeqCst);
            },
        ))
        .layer(RequestBodyLimitLayer::new(64 * 1024))
        .layer(webhook)
        .layer(TraceLayer::new_for_http().on_request(
            move |_: &http::Request<_>, _: &tracing::Span| {
                inner.fetch_add(1, Ordering::SeqCst);
            },
        ));
    Ok(Router::new()
        .route("/webhook/o3-video", post(handle).layer(stack))
        .route(
            "/seen",
            get(move || async move {
                Json(json!({
                    "outer": seen.outer.load(Ordering::SeqCst),
                    "inner": seen.inner.load(Ordering::SeqCst),
                }))
            }),
        ))
}

#[allow(dead_code)] // `tests/library.rs` includes this file for `app`
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let metrics = Metrics::new(&hookgate::prometheus::Registry::new())?;
    let app = app(&metrics, Seen::default())?;
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "listening on http://{}/webhook/o3-video",
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
