//! Step 12: drop duplicates by key.
//!
//! A request whose key was accepted within the TTL is answered 200 `{"status":"duplicate"}`
//! without calling the inner service. Otherwise the key is reserved, the inner service is called,
//! and the key is committed when it answers 2xx, or released otherwise (also when the request is
//! dropped half-way), so the sender's retry is accepted. A request whose key is reserved by a
//! request still in flight is answered 409 with `Retry-After`: it is not known yet whether the
//! first will succeed, and the sender's retry settles it.
//!
//! While the inner service runs, the request carries the reservation in its extensions as a
//! [`Reserved`](crate::store::Reserved): a spooling service inside ([`FastAck`](super::FastAck)) takes it, stores
//! the key with the event and keeps it held until its append ends, even if this request is
//! dropped meanwhile. The decisions are the core's ([`outcome::reserved`](crate::core::outcome::reserved)).
//!
//! Pointer and `body` keys read the payload [`ValidateLayer`](super::ValidateLayer) parsed, so put
//! that layer in front (any profile); `header:NAME` keys work alone.
//!
//! ```
//! use hookgate::core::{DedupKeySpec, Validator};
//! use hookgate::store::MemoryDedupStore;
//! use hookgate::tower::{DedupLayer, ValidateLayer};
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use http::{Request, Response};
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let dedup = DedupLayer::new(MemoryDedupStore::new(1000), "route", DedupKeySpec::default(), Duration::from_secs(60));
//! let svc = ValidateLayer::new(Validator::json()).layer(dedup.layer(service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::from("handled")))
//! })));
//! let req = || Request::post("/").header("content-type", "application/json")
//!     .body(Full::<Bytes>::from(r#"{"generation_id":"a"}"#)).unwrap();
//! async fn body<B: http_body::Body<Data = Bytes>>(res: http::Response<B>) -> Bytes
//! where B::Error: std::fmt::Debug {
//!     res.into_body().collect().await.unwrap().to_bytes()
//! }
//! assert_eq!(body(svc.clone().oneshot(req()).await.unwrap()).await, "handled");
//! assert_eq!(body(svc.oneshot(req()).await.unwrap()).await, r#"{"status":"duplicate"}"#);
//! # });
//! ```

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::DedupLayer;
pub use service::Dedup;
