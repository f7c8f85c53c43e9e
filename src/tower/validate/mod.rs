//! Steps 2, 6, 7, 8, 10 and 11: method, size, media type, read timeout, JSON and payload checks.
//!
//! The body (any `http_body::Body`) is buffered up to the limit (declared `Content-Length`
//! checked first, then the streamed count), validated, and handed to the inner service as the
//! same bytes, a `Request<Full<Bytes>>`. The parsed payload is left in the request extensions as
//! [`ParsedPayload`] for the dedup layer and the handler.
//!
//! ```
//! use hookgate::core::Validator;
//! use hookgate::tower::ValidateLayer;
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let svc = ValidateLayer::new(Validator::runblob())
//!     .layer(service_fn(|_req: Request<Full<Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
//!     }));
//! let req = Request::post("/").header("content-type", "application/json")
//!     .body(Full::<Bytes>::from(r#"{"status":"done"}"#)).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
//! # });
//! ```

mod future;
mod layer;
mod service;

use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;

pub use future::ResponseFuture;
pub use layer::{ValidateLayer, DEFAULT_MAX_BODY, DEFAULT_READ_TIMEOUT};
pub use service::Validate;

/// The validated payload, in the request extensions of requests that passed [`Validate`]: a
/// handler behind a `WebhookLayer` can take it (axum: `Extension<ParsedPayload>`). A fast-ack
/// processor gets the stored event instead, later, and parses its body itself.
#[derive(Debug, Clone)]
pub struct ParsedPayload {
    /// The parsed JSON.
    pub value: Arc<Value>,
    /// The raw body, as received.
    pub raw: Bytes,
}
