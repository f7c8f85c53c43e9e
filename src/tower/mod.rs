//! Tower layers for servers that receive webhooks themselves (axum, hyper, tonic).
//!
//! Each layer calls one decision of [`crate::core`]; [`WebhookLayer`] stacks them in pipeline
//! order from one configuration:
//!
//! ```text
//! MetricsLayer → IpAllowlistLayer → ValidateLayer → DedupLayer → your handler
//! ```
//!
//! Two ways to acknowledge:
//!
//! - **the handler's answer** ([`WebhookLayerBuilder::build`] → [`WebhookLayer`]): a plain layer,
//!   placed wherever axum takes one (`post(h).layer(..)`, `route_layer`, `Router::layer`) or in
//!   any tower stack; the handler's 2xx commits the dedup key.
//! - **fast ack** ([`WebhookLayerBuilder::with_fast_ack`] → [`Webhook`]`<`[`FastAck`]`>` and a
//!   [`Deliverer`](crate::deliver::Deliverer)): 200 as soon as the event is in the spool, and a
//!   processor (a typed [`handler_fn`](crate::deliver::handler_fn), a tower service, an HTTP
//!   upstream) gets it afterwards, with retries and dead letters. It is a service to mount at the
//!   route's path (`Router::route_service`), not a layer: it calls no inner service.
//!
//! The layers take any request body (`http_body::Body`, its error into a boxed error: hyper's
//! `Incoming`, axum's `Body`, tower-http's `Limited`) and hand the handler the validated bytes as
//! `Request<Full<Bytes>>`. They answer `Response<`[`ResponseBody`]`<B>>`, where `B` is the
//! handler's own body type, whatever it is. Every answer they give themselves is the core's
//! ([`crate::core::outcome`]): rejections are responses (a status and a JSON body
//! `{"error": reason, "detail": ...}`) with the [`Rejection`] in the response extensions, and
//! each response hookgate answers carries its [`Counted`](crate::core::Counted) there too;
//! `type Error = S::Error` throughout. The handler sees the original body bytes, unchanged.
//!
//! ```
//! use hookgate::tower::{PeerAddr, WebhookLayer};
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Empty, Full};
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
//! // Any response body: this handler answers with an empty one.
//! let svc = layer.layer(service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
//! }));
//! let body = r#"{"generation_id":"550e8400-e29b-41d4-a716-446655440000","status":"failed",
//!              "video_url":null,"model":"kling-o3-video-10s-pro","message":"TIMEOUT"}"#;
//! let req = |peer: &str| {
//!     let mut req = Request::post("/webhook").header("content-type", "application/json")
//!         .body(Full::<Bytes>::from(body)).unwrap();
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
use http::Response;
use http_body_util::Full;

use crate::core::{Counted, Outcome, Rejection};

mod allowlist;
mod body;
mod dedup;
mod fast_ack;
mod metrics;
pub(crate) mod validate;
mod webhook;

pub use allowlist::{IpAllowlist, IpAllowlistLayer};
pub use body::ResponseBody;
pub use dedup::{Dedup, DedupLayer};
pub use fast_ack::FastAck;
pub use metrics::{MetricsLayer, RecordMetrics, ServeMetrics};
pub use validate::{ParsedPayload, Validate, ValidateLayer};
pub use webhook::{
    DirectAck, FastAckIsNotALayer, FastAckMode, Webhook, WebhookLayer, WebhookLayerBuilder,
    DEFAULT_DEDUP_CAPACITY, DEFAULT_DEDUP_TTL,
};

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

/// The one place an [`Outcome`] becomes a response: the core's status, headers and body, with
/// how it is counted ([`Counted`]) and, for a refusal, the [`Rejection`] in the extensions.
pub(crate) fn respond(outcome: Outcome) -> Response<Full<Bytes>> {
    let counted = outcome.counted();
    let (answer, rejection) = match outcome {
        Outcome::Rejected(r) => (r.answer(), Some(r)),
        other => (other.answer(), None),
    };
    let mut res = Response::new(Full::new(answer.body));
    *res.status_mut() = answer.status;
    *res.headers_mut() = answer.headers;
    res.extensions_mut().insert(counted);
    if let Some(r) = rejection {
        res.extensions_mut().insert(r);
    }
    res
}

/// How a response is counted: as the core decided ([`Counted`] in its extensions), else — the
/// handler's own answer — by its status.
pub(crate) fn counted<B>(res: &Response<B>) -> Counted {
    res.extensions()
        .get::<Counted>()
        .copied()
        .unwrap_or_else(|| Counted::of_status(res.status()))
}

/// A [`Rejection`] as a response, as the layers answer it: status, JSON body, `Allow` /
/// `Retry-After`, and the rejection itself in the response extensions.
pub fn rejection_response(rejection: Rejection) -> Response<Full<Bytes>> {
    respond(Outcome::Rejected(rejection))
}
