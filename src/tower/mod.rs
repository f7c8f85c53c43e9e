//! Tower layers for servers that receive webhooks themselves (axum, hyper, tonic).
//!
//! Each layer calls one decision of [`crate::core`]; [`WebhookLayer`] stacks them in pipeline
//! order from one configuration:
//!
//! ```text
//! MetricsLayer → IpAllowlistLayer → ValidateLayer → DedupLayer → your handler
//! ```
//!
//! Rejections are responses (a status and a JSON body `{"error": reason, "detail": ...}`) with the
//! [`Rejection`] in the response extensions; `type Error = S::Error` throughout. The handler sees
//! the original body bytes, unchanged.
//!
//! ```
//! use hookgate::tower::{PeerAddr, WebhookLayer};
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let registry = prometheus::Registry::new();
//! let metrics = hookgate::metrics::Metrics::new(&registry).unwrap();
//! let layer = WebhookLayer::builder("o3-video")
//!     .with_allow(["127.0.0.0/8"]).unwrap()
//!     .with_metrics(&metrics)
//!     .build().unwrap();
//! let svc = layer.layer(service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::from("ok")))
//! }));
//! let body = r#"{"generation_id":"550e8400-e29b-41d4-a716-446655440000","status":"failed",
//!              "video_url":null,"model":"kling-o3-video-10s-pro","message":"TIMEOUT"}"#;
//! let req = |peer: &str| {
//!     let mut req = Request::post("/webhook").header("content-type", "application/json")
//!         .body(Full::from(body)).unwrap();
//!     req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
//!     req
//! };
//! assert_eq!(svc.clone().oneshot(req("127.0.0.1:5000")).await.unwrap().status(), StatusCode::OK);
//! let dup = svc.clone().oneshot(req("127.0.0.1:5000")).await.unwrap();
//! assert_eq!(dup.into_body().collect().await.unwrap().to_bytes(), r#"{"status":"duplicate"}"#);
//! assert_eq!(svc.oneshot(req("10.0.0.1:5000")).await.unwrap().status(), StatusCode::FORBIDDEN);
//! # });
//! ```

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::core::Rejection;

mod allowlist;
mod dedup;
mod fast_ack;
mod metrics;
pub(crate) mod validate;
mod webhook;

pub use allowlist::{IpAllowlist, IpAllowlistLayer};
pub use dedup::{Dedup, DedupLayer, DedupReservation, Duplicate};
pub use fast_ack::{FastAck, FastAckLayer};
pub use metrics::{MetricsLayer, RecordMetrics};
pub use validate::{ParsedPayload, Validate, ValidateLayer};
pub use webhook::{AckMode, DirectAck, FastAckMode, WebhookLayer, WebhookLayerBuilder};

/// The TCP peer address, for servers that do not use axum's `ConnectInfo`: insert it into each
/// request's extensions (hyper: in the `service_fn` given to `serve_connection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Reads the peer address from request extensions.
pub type PeerIpFn = fn(&http::Extensions) -> Option<IpAddr>;

/// The default [`PeerIpFn`]: [`PeerAddr`], then (feature `axum`) `ConnectInfo<SocketAddr>`.
pub fn default_peer_ip(ext: &http::Extensions) -> Option<IpAddr> {
    if let Some(PeerAddr(addr)) = ext.get::<PeerAddr>() {
        return Some(addr.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        ext.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(addr.ip());
    }
    None
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A JSON response with `body`.
pub(crate) fn json_response<B: From<Bytes>>(status: StatusCode, body: Bytes) -> Response<B> {
    let mut res = Response::new(B::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, JSON);
    res
}

/// The one place a [`Rejection`] becomes a response: status, JSON body, `Allow` / `Retry-After`,
/// and the rejection itself in the response extensions.
pub fn rejection_response<B: From<Bytes>>(rejection: Rejection) -> Response<B> {
    let mut res = json_response(rejection.status(), Bytes::from(rejection.to_json()));
    if let Some(allow) = rejection.allow() {
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    if let Some(secs) = rejection.retry_after() {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    res.extensions_mut().insert(rejection);
    res
}
