//! A typed async function as a fast-ack route's processor: [`handler_fn`] gets each event as a
//! [`DeliveredEvent`] and answers `Ok(())` (delivered) or a [`DeliveryError`]: `Retry` this event
//! later (by the route's backoff, or after the duration given), `Unavailable` (what the handler
//! needs is down: like an upstream's 503, it counts towards the route's circuit breaker, which
//! then holds every event without spending their attempts) or `Reject` (straight to the dead
//! letters). A panic, or an attempt past the policy's `timeout`, is retried like `Unavailable`.
//!
//! ```
//! use hookgate::deliver::{handler_fn, DeliveredEvent, DeliveryError, Target};
//! use hookgate::store::Event;
//!
//! #[derive(serde::Deserialize)]
//! struct Generation { generation_id: String, status: String }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let handler = handler_fn(|ev: DeliveredEvent| async move {
//!     let g: Generation = ev.json()?;          // a body that does not fit: Reject (dead letter)
//!     match g.status.as_str() {
//!         "completed" => Ok(()),
//!         _ => Err(DeliveryError::retry(format!("{} not finished", g.generation_id))),
//!     }
//! });
//! let event = |body: &'static str| Event::new("r", "127.0.0.1".parse().unwrap(), "POST", "/w", vec![], body.into());
//! let done = handler.deliver(&event(r#"{"generation_id":"a","status":"completed"}"#)).await;
//! assert_eq!(done.to_string(), "processed");
//! let later = handler.deliver(&event(r#"{"generation_id":"b","status":"failed"}"#)).await;
//! assert_eq!(later.to_string(), "retry: b not finished");
//! let bad = handler.deliver(&event(r#"{"status":1}"#)).await;
//! assert!(bad.to_string().starts_with("rejected: the body does not fit: "));
//! # });
//! ```

use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;
use uuid::Uuid;

use super::policy::AttemptResult;
use super::target::{stored_headers, AttemptFuture, Target};
use crate::store::Event;

/// One delivery of an accepted event to a [`handler_fn`]: the event as it was received, and
/// which attempt this is. Cheap to move; the body is shared, not copied.
#[derive(Debug, Clone)]
pub struct DeliveredEvent {
    id: Uuid,
    route: String,
    attempt: u32,
    received_ms: u64,
    client_ip: IpAddr,
    headers: HeaderMap,
    body: Bytes,
    replay: Option<String>,
}

impl DeliveredEvent {
    fn of(event: &Event) -> Self {
        let headers = stored_headers(event, 0);
        Self {
            id: event.id,
            route: event.route.clone(),
            attempt: event.attempts,
            received_ms: event.received_ms,
            client_ip: event.client_ip,
            headers,
            body: event.body.clone(),
            replay: event.replay.clone(),
        }
    }

    /// The replay that sent this event again (its job id; `X-Hookgate-Replay` for an HTTP
    /// target), or `None` on a first delivery and its retries.
    pub fn replay(&self) -> Option<&str> {
        self.replay.as_deref()
    }

    /// The event id (a UUIDv7), the one the sender got in its acknowledgement. The same on
    /// every attempt: a handler that must not act twice keys on it.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The route it arrived on.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When hookgate acknowledged it.
    pub fn received_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.received_ms)
    }

    /// The sender's address (after trusted proxies).
    pub fn client_ip(&self) -> IpAddr {
        self.client_ip
    }

    /// The request headers as received (hop-by-hop headers and `Host` removed).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body, byte for byte as received.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body parsed as `T`. With `?` in the handler, a body that does not fit `T` becomes
    /// [`DeliveryError::Reject`]: it will not fit on the next attempt either.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Why a [`handler_fn`] did not process an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// Try this event again: after `after` if given (at most the policy's `max_backoff`), else
    /// by the route's backoff. Counts against `max_attempts` and `max_age`; other events are not
    /// held back.
    Retry {
        /// The earliest time to try again, if the handler knows it.
        after: Option<Duration>,
        /// Why, kept in the event's attempt history.
        reason: String,
    },
    /// What the handler needs (its database, an API) is down: retried like `Retry`, and counted
    /// by the route's circuit breaker like an upstream's 503: after `open_after` in a row, events
    /// wait without spending attempts and one probe goes out per interval until one succeeds.
    Unavailable {
        /// The earliest time to try again, if the handler knows it.
        after: Option<Duration>,
        /// Why, kept in the event's attempt history.
        reason: String,
    },
    /// Never: the event goes to the dead letters (where it can be replayed by hand).
    Reject {
        /// Why, kept in the event's attempt history.
        reason: String,
    },
}

impl DeliveryError {
    /// [`Retry`](Self::Retry) by the route's backoff.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            after: None,
            reason: reason.into(),
        }
    }

    /// [`Retry`](Self::Retry) no sooner than `after` (capped at the policy's `max_backoff`).
    pub fn retry_after(after: Duration, reason: impl Into<String>) -> Self {
        Self::Retry {
            after: Some(after),
            reason: reason.into(),
        }
    }

    /// [`Unavailable`](Self::Unavailable), retried by the route's backoff.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            after: None,
            reason: reason.into(),
        }
    }

    /// [`Reject`](Self::Reject): to the dead letters.
    pub fn reject(reason: impl Into<String>) -> Self {
        Self::Reject {
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Retry { reason, .. } => write!(f, "retry: {reason}"),
            Self::Unavailable { reason, .. } => write!(f, "unavailable: {reason}"),
            Self::Reject { reason } => write!(f, "rejected: {reason}"),
        }
    }
}

impl std::error::Error for DeliveryError {}

/// A body that does not parse as the handler's type is rejected: no retry will change it.
impl From<serde_json::Error> for DeliveryError {
    fn from(e: serde_json::Error) -> Self {
        Self::reject(format!("the body does not fit: {e}"))
    }
}

impl From<DeliveryError> for AttemptResult {
    fn from(e: DeliveryError) -> Self {
        match e {
            DeliveryError::Retry { after, reason } => AttemptResult::Retry { after, reason },
            DeliveryError::Unavailable { after, reason } => {
                AttemptResult::Unavailable { after, reason }
            }
            DeliveryError::Reject { reason } => AttemptResult::Rejected(reason),
        }
    }
}

/// A [`Target`] from an async function of a [`DeliveredEvent`]; see the [module docs](self).
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(DeliveredEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), DeliveryError>> + Send + 'static,
{
    HandlerFn { f }
}

/// The [`Target`] [`handler_fn`] makes.
#[derive(Clone)]
pub struct HandlerFn<F> {
    f: F,
}

impl<F> std::fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerFn").finish_non_exhaustive()
    }
}

impl<F, Fut> Target for HandlerFn<F>
where
    F: Fn(DeliveredEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), DeliveryError>> + Send + 'static,
{
    fn deliver(&self, event: &Event) -> AttemptFuture {
        let processing = (self.f)(DeliveredEvent::of(event));
        Box::pin(async move {
            match processing.await {
                Ok(()) => AttemptResult::Processed,
                Err(e) => e.into(),
            }
        })
    }
}
