//! # hookgate
//!
//! A webhook gateway: everything a webhook receiver is told to do, done once and correctly in
//! front of any handler. Accept only the sender's IP ranges, validate the payload, drop
//! duplicates, and show it all as Prometheus metrics.
//!
//! - [`core`]: the sans-IO admission pipeline, every step and answer (client IP, allowlist,
//!   request head, validation, dedup key, [`Rejection`](core::Rejection),
//!   [`Outcome`](core::Outcome)), shared by every face.
//! - [`tower`]: layers for servers that receive webhooks themselves; [`tower::WebhookLayer`]
//!   stacks them all.
//! - [`store`]: the [`Spool`](store::Spool) and [`DedupStore`](store::DedupStore) traits, the
//!   event record, and the backends (`embedded`, `memory`), with one conformance suite.
//! - [`deliver`]: steps 13–14 and delivery: retries, backoff, dead letters, `proxy` forwards.
//! - `gateway` (feature `gateway`): the pingora binary's service, config and admin API.
//! - [`metrics`]: the Prometheus families, registered into a registry you pass, and
//!   [`metrics::render`] for a `/metrics` route.
//!
//! Features (`default` is what the binary needs; a library user writes
//! `default-features = false` and adds what they use):
//!
//! | feature | adds |
//! | --- | --- |
//! | (none) | the core, every layer, the memory spool and dedup store, `handler_fn` and `ServiceTarget` processors, metrics |
//! | `axum` | axum's `ConnectInfo<SocketAddr>` read as the peer address |
//! | `embedded` | `EmbeddedSpool`: the durable spool on fjall |
//! | `http-target` | `HttpTarget` (delivery to an HTTP upstream) and `Forwarder` |
//! | `https-upstream` | `https://` upstreams (reqwest with rustls) |
//! | `schema` | `Validator::schema` (JSON Schema) |
//! | `rate-limit` | `RateLimit` (governor) |
//! | `signatures` | `SignatureVerifier` (Standard Webhooks, GitHub, Stripe, HMAC) |
//! | `redis` | `store::redis`: the spool, dedup and dead letters in Redis |
//! | `gateway` | the `hookgate` binary (pingora): all of the above but `axum` and `redis` |
//!
//! ```
//! use hookgate::core::Rejection;
//! assert_eq!(Rejection::IpNotAllowed.reason().as_str(), "ip_not_allowed");
//! ```

/// The `prometheus` crate hookgate registers its metrics with: use its `Registry` for
/// [`metrics::Metrics::new`] without pinning a version of your own.
pub use prometheus;

pub mod core;
pub mod deliver;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod history;
pub mod metrics;
pub mod store;
pub mod tower;
