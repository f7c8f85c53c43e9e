//! Steps 3 and 4: resolve the client address and refuse it (403) outside the allowlist.
//!
//! The resolved [`ClientIp`](crate::core::ClientIp) is inserted into the request extensions for the
//! handler. Nothing of a refused request's body is read.
//!
//! ```
//! use hookgate::core::Allowlist;
//! use hookgate::tower::{IpAllowlistLayer, PeerAddr};
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let svc = IpAllowlistLayer::new(Allowlist::new("allow", ["192.0.2.0/24"]).unwrap())
//!     .layer(service_fn(|_req: Request<Full<Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
//!     }));
//! let mut req = Request::new(Full::<Bytes>::default());
//! req.extensions_mut().insert(PeerAddr("198.51.100.1:4000".parse().unwrap()));
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::FORBIDDEN);
//! # });
//! ```

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::IpAllowlistLayer;
pub use service::IpAllowlist;
