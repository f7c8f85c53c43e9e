//! hookgate's layers on a plain hyper server: hyper's own `Incoming` body, no axum.
//!
//! ```sh
//! cargo run --example hyper_incoming        # listens on 127.0.0.1:3000 (PORT=... to change)
//! curl -i http://127.0.0.1:3000/ -H 'content-type: application/json' \
//!   -d '{"generation_id":"550e8400-e29b-41d4-a716-446655440000","status":"failed","video_url":null,"model":"kling-o3-video-10s-pro","message":"TIMEOUT"}'
//! # 200 handled; the same again: 200 {"status":"duplicate"}
//! ```
//!
//! The peer address comes from the accepted socket, as [`PeerAddr`] in each request's
//! extensions. `tests/library.rs` runs [`serve`] over real sockets.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use hookgate::metrics::Metrics;
use hookgate::tower::{PeerAddr, WebhookLayer};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tower::{service_fn, Layer, ServiceExt};

/// The handler: the validated body, as `Full<Bytes>`.
async fn handle(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let peer = req
        .extensions()
        .get::<hookgate::core::ClientIp>()
        .map(|c| c.ip);
    println!("webhook from {peer:?}");
    Ok(Response::new(Full::from("handled")))
}

/// Serves the guarded handler on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let webhook = WebhookLayer::builder("o3-video")
        .with_allow(["127.0.0.0/8", "::1/128"])?
        .with_metrics(&metrics)
        .build()?;
    let service = webhook.layer(service_fn(handle));
    loop {
        let (stream, peer): (_, SocketAddr) = listener.accept().await?;
        let service = service.clone();
        // `Request<Incoming>` straight into hookgate: the peer address added on the way.
        let per_connection = service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            service.clone().oneshot(req)
        });
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, TowerToHyperService::new(per_connection))
                .await;
            if let Err(e) = served {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

#[allow(dead_code)] // `tests/library.rs` includes this file for `serve`
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let metrics = Metrics::new(&hookgate::prometheus::Registry::new())?;
    tokio::select! {
        served = serve(listener, metrics) => served,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
