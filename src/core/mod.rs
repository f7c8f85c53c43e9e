//! The sans-IO admission core (DESIGN §2): every step's decision, from the route match to the
//! answer written, as plain functions over plain data, shared by the tower layers and the
//! gateway. Nothing here does I/O or knows about tower, pingora or a storage backend.
//!
//! - steps 2–3: [`ClientIpResolver`], [`Allowlist`]; steps 4, 6, 7: [`request_head`];
//! - step 5: `RateLimit` (feature `rate-limit`); step 9: `SignatureVerifier` (feature
//!   `signatures`); steps 10–11: [`Validator`]; step 12's key: [`DedupKeySpec`];
//! - steps 12–14 and every answer: [`outcome`] ([`Outcome`], [`Answer`]), [`Rejection`];
//! - after the acknowledgement, which destinations get an event and in what order: [`Filter`],
//!   [`OrderKey`]; and at what pace: [`DeliveryRate`], [`Pacer`];
//! - which headers travel: [`forward`].
//!
//! ```
//! use hookgate::core::{Allowlist, ClientIpResolver, Validator, DedupKeySpec, request_head};
//! use http::{HeaderMap, Method};
//!
//! let allow = Allowlist::loopback();
//! let client = ClientIpResolver::default().resolve("127.0.0.1".parse().unwrap(), []);
//! assert!(allow.check(client.ip).is_ok());
//! assert!(request_head::check_method(&Method::POST).is_ok());
//! let body = br#"{"generation_id":"550e8400-e29b-41d4-a716-446655440000","status":"failed",
//!                "video_url":null,"model":"kling-o3-video-10s-pro","message":"TIMEOUT"}"#;
//! let payload = Validator::runblob().check(body).unwrap();
//! let key = DedupKeySpec::default().extract("o3-video", &HeaderMap::new(), Some(body), Some(&payload.value));
//! assert!(key.is_ok());
//! ```

mod allowlist;
mod client_ip;
mod dedup_key;
mod fanout;
pub mod forward;
pub mod outcome;
mod pace;
#[cfg(feature = "rate-limit")]
mod rate_limit;
mod rejection;
pub mod request_head;
#[cfg(feature = "signatures")]
mod signature;
mod validate;

pub use allowlist::{Allowlist, LiveAllowlist};
pub use client_ip::{ClientIp, ClientIpResolver};
pub use dedup_key::{DedupKey, DedupKeySpec, JsonPointer};
pub use fanout::{Filter, OrderKey};
pub use outcome::{Answer, Counted, Outcome, Reservation};
pub use pace::{DeliveryRate, Pacer};
#[cfg(feature = "rate-limit")]
pub use rate_limit::{RateLimit, DEFAULT_MAX_KEYS};
pub use rejection::{
    cut, FieldError, Reason, Rejection, SignatureFailure, MAX_LISTED_FIELDS, RETRY_AFTER_SECS,
    SPOOL_RETRY_AFTER_SECS,
};
#[cfg(feature = "signatures")]
pub use signature::{
    HmacAlgorithm, HmacScheme, SignatureEncoding, SignatureScheme, SignatureVerifier,
};
pub use validate::{ErrorCode, EventClass, EventStatus, Payload, PayloadValidator, Validator};

/// A configuration mistake, naming the setting at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An allowlist or trusted-proxy entry is not a CIDR.
    #[error("{key}: {entry:?} is not valid: {reason}")]
    InvalidCidr {
        /// The setting, e.g. `allow[2]`.
        key: String,
        /// The entry as written.
        entry: String,
        /// What is wrong.
        reason: String,
    },
    /// A JSON Schema does not compile.
    #[error("{key}: the JSON Schema is invalid: {reason}")]
    InvalidSchema {
        /// The setting.
        key: String,
        /// The compiler's message.
        reason: String,
    },
    /// A dedup key spec is not understood.
    #[error("{key}: {reason}")]
    InvalidDedupKey {
        /// The setting.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A value is out of range.
    #[error("{key}: {reason}")]
    InvalidValue {
        /// The setting.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The metrics could not be registered (e.g. registered twice in one registry).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}
