//! The delivery engine: takes events from the spool to their target, with retries, backoff and
//! dead letters (DESIGN §3).
//!
//! - [`policy`]: the outcome rules ([`classify`]) and the backoff ([`retry_delay`]), as plain functions.
//! - [`target`]: where events go (a route's processor): an HTTP upstream (`HttpTarget`, feature
//!   `http-target`), a tower service ([`ServiceTarget`]) or a typed async function
//!   ([`handler_fn`], [`DeliveredEvent`], [`DeliveryError`]).
//! - [`Deliverer`]: one route's worker: steps 13–14 ([`Deliverer::accept`]), then for each of
//!   its [`Destination`]s (DESIGN §13) a schedule, a dispatcher, a concurrency limit, a rate, a
//!   per-key order, pause and resume, dead letters, graceful stop.
//! - [`circuit`]: a route's circuit breaker (DESIGN §11): one probe per interval while the
//!   upstream is down, no attempt counted against waiting events.
//! - `Forwarder` (feature `http-target`): `proxy` mode's bounded synchronous forward.
//!
//! ```
//! use hookgate::deliver::{classify, AttemptResult, Verdict};
//!
//! let answer = AttemptResult::Status { code: 503, retry_after: None };
//! assert_eq!(classify(&answer), Verdict::Retry { not_before: None });
//! assert_eq!(classify(&AttemptResult::Status { code: 400, retry_after: None }), Verdict::Reject);
//! ```

pub mod circuit;
mod destination;
#[cfg(feature = "http-target")]
mod forward;
mod handler;
#[cfg(feature = "http-target")]
mod http;
#[cfg(feature = "http-target")]
mod origin;
pub mod policy;
pub mod target;
mod worker;

pub use destination::Destination;
#[cfg(feature = "http-target")]
pub use forward::{Forwarder, MAX_ANSWER};
pub use handler::{handler_fn, DeliveredEvent, DeliveryError, HandlerFn};
#[cfg(feature = "gateway")]
pub(crate) use http::error_chain;
#[cfg(feature = "http-target")]
pub use http::HttpTarget;
pub use policy::{classify, retry_delay, retry_floor, AttemptResult, DeliveryPolicy, Verdict};
pub use target::{attempt_headers, ServiceTarget, Target};
#[cfg(feature = "gateway")]
pub(crate) use worker::each_second_until;
pub use worker::{Accepting, Deliverer, DestinationStatus};
