//! Steps 13 and 14: store the request in the spool and answer 200 at once; a [`Deliverer`]
//! hands the stored event to the route's processor later and retries it by the policy.
//!
//! The answer is `{"status":"received","event_id":"..."}`, sent only once the event is in the
//! spool at its durability. A full or failing spool answers 503 with `Retry-After` (and a dedup
//! layer in front releases the key, so the sender's retry is accepted). With a dedup layer in
//! front, the dedup key is stored with the event, and
//! [`WebhookLayerBuilder::with_fast_ack`] refills the dedup store from the spool after a restart.
//!
//! [`FastAck`] is a terminal service, not a layer: every request it gets is answered by the
//! pipeline (a refusal, `duplicate`, or `received` after the append), so there is no inner service
//! to call, and the processor is named where the [`Deliverer`] is built. A layer that never called
//! its inner service would let `post(handler).layer(..)` compile and silently never call
//! `handler`. Most users build it with [`WebhookLayerBuilder::with_fast_ack`]; this is the
//! same thing by hand:
//!
//! [`Deliverer`]: crate::deliver::Deliverer
//! [`WebhookLayerBuilder::with_fast_ack`]: super::WebhookLayerBuilder::with_fast_ack
//!
//! ```
//! use hookgate::core::Validator;
//! use hookgate::deliver::{handler_fn, Deliverer, DeliveredEvent, DeliveryPolicy};
//! use hookgate::metrics::Metrics;
//! use hookgate::store::memory::MemorySpool;
//! use hookgate::tower::{FastAck, PeerAddr, ValidateLayer};
//! use bytes::Bytes;
//! use http::Request;
//! use http_body_util::{BodyExt, Full};
//! use std::sync::Arc;
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
//! let (tx, mut delivered) = tokio::sync::mpsc::unbounded_channel();
//! let deliverer = Deliverer::start(
//!     "r",
//!     Arc::new(MemorySpool::new(10_000, 64 << 20)),
//!     DeliveryPolicy::default(),
//!     metrics.route("r").delivery().clone(),
//! )
//! .unwrap()
//! .with_target(Arc::new(handler_fn(move |ev: DeliveredEvent| {
//!     let tx = tx.clone();
//!     async move { tx.send(ev.body().clone()).unwrap(); Ok(()) }
//! })));
//! // The worker runs while a `Deliverer` handle lives: keep one (`oneshot` drops the service).
//! let svc = ValidateLayer::new(Validator::json()).layer(FastAck::new(deliverer.clone()));
//! let mut req = Request::post("/").header("content-type", "application/json").body(Full::<Bytes>::from(r#"{"a":1}"#)).unwrap();
//! req.extensions_mut().insert(PeerAddr("127.0.0.1:9".parse().unwrap()));
//! let ack = svc.oneshot(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
//! assert!(ack.starts_with(br#"{"status":"received","event_id":""#));
//! assert_eq!(delivered.recv().await.unwrap(), r#"{"a":1}"#);   // delivered afterwards
//! # });
//! ```

mod future;
mod service;

pub use future::ResponseFuture;
pub use service::FastAck;
