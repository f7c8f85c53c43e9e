//! Steps 13 and 14: store the request in the spool and answer 200 at once; the delivery engine
//! calls the wrapped service later with the stored request and retries it by the policy.
//!
//! The answer is `{"status":"received","event_id":"..."}`, sent only once the event is in the
//! spool at its durability. A full or failing spool answers 503 with `Retry-After` (and a dedup
//! layer in front releases the key, so the sender's retry is accepted). With a dedup layer in
//! front, the dedup key is stored with the event, and [`WebhookLayerBuilder::with_fast_ack`]
//! refills the dedup store from the spool after a restart.
//!
//! The service this layer wraps is the delivery target, so it must wrap exactly one: with axum,
//! `Router::new().route_service(path, layer.layer(post(handler).with_state(state)))`. Axum's
//! `MethodRouter::layer` and `Router::route_layer` also wrap the 405 fallback, in no fixed order;
//! wrapping a second service stops delivery and refuses requests with 500
//! `ambiguous_delivery_target` instead of guessing. It reads the body
//! [`ValidateLayer`](super::ValidateLayer) buffered, so put that layer in front.
//!
//! [`WebhookLayerBuilder::with_fast_ack`]: super::WebhookLayerBuilder::with_fast_ack
//!
//! ```
//! use hookgate::deliver::DeliveryPolicy;
//! use hookgate::core::Validator;
//! use hookgate::metrics::Metrics;
//! use hookgate::store::{Durability, EmbeddedSpool, SpoolConfig};
//! use hookgate::tower::{FastAckLayer, PeerAddr, ValidateLayer};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use std::sync::Arc;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let spool = Arc::new(EmbeddedSpool::open(SpoolConfig::new("", Durability::Memory)).unwrap());
//! let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
//! let (tx, mut delivered) = tokio::sync::mpsc::unbounded_channel();
//! let handler = service_fn(move |req: Request<Full<Bytes>>| {
//!     let tx = tx.clone();
//!     async move {
//!         tx.send(req.into_body().collect().await.unwrap().to_bytes()).unwrap();
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
//!     }
//! });
//! let fast_ack = FastAckLayer::<Full<Bytes>>::new("r", spool, DeliveryPolicy::default(), &metrics.route("r")).unwrap();
//! let svc = ValidateLayer::new(Validator::json()).layer(fast_ack.layer(handler));
//! let mut req = Request::post("/").header("content-type", "application/json").body(Full::from(r#"{"a":1}"#)).unwrap();
//! req.extensions_mut().insert(PeerAddr("127.0.0.1:9".parse().unwrap()));
//! let ack = svc.oneshot(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
//! assert!(ack.starts_with(br#"{"status":"received","event_id":""#));
//! assert_eq!(delivered.recv().await.unwrap(), r#"{"a":1}"#);   // delivered afterwards
//! # });
//! ```

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::FastAckLayer;
pub use service::FastAck;
