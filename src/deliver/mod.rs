//! The delivery engine: takes events from the spool to their target, with retries, backoff and
//! dead letters (DESIGN §3).
//!
//! - [`policy`]: the outcome rules ([`classify`]) and the backoff ([`retry_delay`]), as plain functions.
//! - [`target`]: an HTTP upstream ([`HttpTarget`]) or a tower service ([`ServiceTarget`]).
//! - [`Deliverer`]: one route's worker: steps 13–14 ([`Deliverer::accept`]), schedule,
//!   dispatcher, concurrency limit, dead letters, graceful stop.
//! - [`circuit`]: a route's circuit breaker (DESIGN §11): one probe per interval while the
//!   upstream is down, no attempt counted against waiting events.
//! - [`Forwarder`]: `proxy` mode's bounded synchronous forward.
//!
//! ```
//! use hookgate::deliver::{classify, AttemptResult, Verdict};
//!
//! let answer = AttemptResult::Status { code: 503, retry_after: None };
//! assert_eq!(classify(&answer), Verdict::Retry { not_before: None });
//! assert_eq!(classify(&AttemptResult::Status { code: 400, retry_after: None }), Verdict::Reject);
//! ```

pub mod circuit;
mod forward;
mod origin;
pub mod policy;
pub mod target;
mod worker;

pub use forward::{Forwarder, MAX_ANSWER};
pub use policy::{classify, retry_delay, retry_floor, AttemptResult, DeliveryPolicy, Verdict};
pub use target::{HttpTarget, ServiceTarget, Target};
pub(crate) use worker::each_second_until;
pub use worker::{Accepting, Deliverer};
