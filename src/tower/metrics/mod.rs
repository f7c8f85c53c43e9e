//! Records each request's outcome, rejection reason, event class and time to answer.
//!
//! Put it outermost: it reads what the inner layers left in the response extensions
//! ([`Counted`](crate::core::Counted), [`EventClass`](crate::core::EventClass)). An answer
//! without a `Counted` is the handler's own: a 2xx is `accepted`, any other `failed`.
//!
//! ```
//! use hookgate::metrics::Metrics;
//! use hookgate::tower::MetricsLayer;
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use http::{Request, Response};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let registry = prometheus::Registry::new();
//! let metrics = Metrics::new(&registry).unwrap();
//! let svc = MetricsLayer::new(metrics.route("r")).layer(service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
//! }));
//! svc.oneshot(Request::new(Full::<Bytes>::default())).await.unwrap();
//! let families = registry.gather();
//! let requests = families.iter().find(|f| f.name() == "hookgate_requests_total").unwrap();
//! let accepted = requests.get_metric().iter()
//!     .find(|m| m.get_label().iter().any(|l| l.value() == "accepted")).unwrap();
//! assert_eq!(accepted.get_counter().get_value(), 1.0);
//! # });
//! ```

mod future;
mod layer;
mod serve;
mod service;

pub use future::ResponseFuture;
pub use layer::MetricsLayer;
pub use serve::ServeMetrics;
pub use service::RecordMetrics;
