//! The event record: an acknowledged webhook request as every spool stores it, built in one place
//! ([`Event::received`]) from what a face read off the wire.
//!
//! ```
//! use hookgate::store::Event;
//! use http::{HeaderMap, Method};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("content-type", "application/json".parse().unwrap());
//! headers.insert("host", "gateway.example".parse().unwrap());
//! let e = Event::received("o3-video", "127.0.0.1".parse().unwrap(), &Method::POST, "/w", &headers, "{}".into(), None);
//! assert_eq!(e.headers, [("content-type".to_string(), b"application/json".to_vec())]);
//! assert_eq!(e.attempts, 0);
//! ```

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Reserved;
use crate::core::forward::forwardable_headers;
use crate::core::DedupKey;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// When the UUIDv7 `id` was made, in Unix milliseconds (every event id is one).
pub fn id_ms(id: Uuid) -> Option<u64> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

/// A dedup key persisted with its event, to refill the dedup store after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupRecord {
    /// The key's 16 bytes.
    pub key: [u8; 16],
    /// When the key stops answering `duplicate`, in Unix milliseconds.
    pub expires_ms: u64,
}

/// What one attempt came to, for the event's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptKind {
    /// The target took it (2xx, or an in-process handler processed it).
    Delivered,
    /// It failed in a way that is retried (5xx, 408, 429, no connection, timeout).
    Failed,
    /// The target refused it for good (another 4xx, or a handler's rejection).
    Rejected,
}

/// One delivery attempt, kept in the event's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// When it ended, in Unix milliseconds.
    pub at_ms: u64,
    /// What happened: `status 503`, `connect error: ...`, `timeout` (at most
    /// [`OUTCOME_MAX`] bytes).
    pub outcome: String,
    /// What it came to.
    pub kind: AttemptKind,
    /// The HTTP status the target answered, when it answered.
    pub status: Option<u16>,
    /// How long it took, in milliseconds.
    pub duration_ms: u32,
    /// The replay job that made it, if a replay did.
    pub replay: Option<String>,
}

/// The name of a route's destination when it has just one: `upstream = "..."` in the gateway's
/// file, the processor of [`with_fast_ack`](crate::tower::WebhookLayerBuilder::with_fast_ack).
/// Its events keep the route's own place in the spool (its lane is the route's name), so a
/// route that gains destinations keeps what it had queued, under this name.
pub const DEFAULT_DESTINATION: &str = "upstream";

/// What separates a route from a destination in a lane's name (never in a route's name).
pub const LANE_SEPARATOR: char = '#';

/// The name of the queue one destination of `route` delivers from, in every backend: the route's
/// name for [`DEFAULT_DESTINATION`], `route#destination` for any other.
///
/// ```
/// use hookgate::store::lane;
/// assert_eq!(lane("stripe", "upstream"), "stripe");
/// assert_eq!(lane("stripe", "alerts"), "stripe#alerts");
/// ```
pub fn lane<'a>(route: &'a str, destination: &str) -> std::borrow::Cow<'a, str> {
    if destination.is_empty() || destination == DEFAULT_DESTINATION {
        std::borrow::Cow::Borrowed(route)
    } else {
        std::borrow::Cow::Owned(format!("{route}{LANE_SEPARATOR}{destination}"))
    }
}

/// The route and the destination of a lane's name (the inverse of [`lane`]).
///
/// ```
/// use hookgate::store::split_lane;
/// assert_eq!(split_lane("stripe#alerts"), ("stripe", "alerts"));
/// assert_eq!(split_lane("stripe"), ("stripe", "upstream"));
/// ```
pub fn split_lane(lane: &str) -> (&str, &str) {
    match lane.rsplit_once(LANE_SEPARATOR) {
        Some((route, destination)) => (route, destination),
        None => (lane, DEFAULT_DESTINATION),
    }
}

/// One destination an event was fanned out to, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fanout {
    /// The destination's name.
    pub destination: String,
    /// Its filter did not match the event: it is never delivered there (status `filtered`).
    pub filtered: bool,
    /// The event's ordering key there (its `order`'s value, hashed), if the destination
    /// orders its events and the event has the key: it waits for the events before it with
    /// the same key.
    pub order: Option<[u8; 16]>,
}

/// How many attempts an event's record keeps (the newest; [`Event::attempts`] counts them all).
pub const HISTORY_LEN: usize = 32;

/// The most bytes of an attempt's outcome kept (an upstream's error text is cut there).
pub const OUTCOME_MAX: usize = 512;

/// An acknowledged webhook request, as stored until delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// A UUIDv7: time-ordered, so the oldest event sorts first.
    pub id: Uuid,
    /// The route it arrived on.
    pub route: String,
    /// When it was acknowledged, in Unix milliseconds.
    pub received_ms: u64,
    /// The resolved client address.
    pub client_ip: IpAddr,
    /// The request method.
    pub method: String,
    /// The request URI (path and query).
    pub uri: String,
    /// The headers to forward (hop-by-hop headers and `Host` already removed).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, byte for byte.
    pub body: Bytes,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// Attempts made before the last replay from the dead letters (retry limits count from there).
    pub attempts_before_replay: u32,
    /// Receipt or last replay, in Unix milliseconds: `max_age` counts from here.
    pub window_start_ms: u64,
    /// When the next attempt is due, in Unix milliseconds.
    pub next_attempt_ms: u64,
    /// The dedup key to restore after a restart, if the route dedups.
    pub dedup: Option<DedupRecord>,
    /// The newest attempts (at most [`HISTORY_LEN`]).
    pub history: Vec<AttemptRecord>,
    /// The replay job this event is pending for, if a replay queued it: its deliveries carry
    /// `X-Hookgate-Replay`.
    pub replay: Option<String>,
    /// The destinations the event was fanned out to when it was acknowledged, filtered ones
    /// included; empty for a route with only [`DEFAULT_DESTINATION`]. Part of the record.
    pub destinations: Vec<Fanout>,
    /// The destination this copy is for: `attempts`, `history`, the schedule and `replay` are
    /// its own. Empty means [`DEFAULT_DESTINATION`]. Not part of the record: each destination's
    /// queue (its [`lane`]) says whose copy it holds.
    #[serde(skip)]
    pub destination: String,
}

impl Event {
    /// A new event received now, due at once.
    pub fn new(
        route: impl Into<String>,
        client_ip: IpAddr,
        method: impl Into<String>,
        uri: impl Into<String>,
        headers: Vec<(String, Vec<u8>)>,
        body: Bytes,
    ) -> Self {
        let now = now_ms();
        Self {
            id: Uuid::now_v7(),
            route: route.into(),
            received_ms: now,
            client_ip,
            method: method.into(),
            uri: uri.into(),
            headers,
            body,
            attempts: 0,
            attempts_before_replay: 0,
            window_start_ms: now,
            next_attempt_ms: now,
            dedup: None,
            history: Vec::new(),
            replay: None,
            destinations: Vec::new(),
            destination: String::new(),
        }
    }

    /// The destination this copy is for ([`DEFAULT_DESTINATION`] when not set).
    pub fn destination_name(&self) -> &str {
        if self.destination.is_empty() {
            DEFAULT_DESTINATION
        } else {
            &self.destination
        }
    }

    /// The queue this copy waits in: see [`lane`].
    pub fn lane(&self) -> std::borrow::Cow<'_, str> {
        lane(&self.route, &self.destination)
    }

    /// Every destination the event was fanned out to, with whether it was filtered out.
    pub fn fanout(&self) -> impl Iterator<Item = (&str, bool)> + '_ {
        let default = self
            .destinations
            .is_empty()
            .then_some((DEFAULT_DESTINATION, false));
        default.into_iter().chain(
            self.destinations
                .iter()
                .map(|f| (f.destination.as_str(), f.filtered)),
        )
    }

    /// The destinations it waits for (those not filtered out).
    pub fn delivered_to(&self) -> impl Iterator<Item = &str> + '_ {
        self.fanout().filter(|(_, f)| !f).map(|(d, _)| d)
    }

    /// The ordering key of this copy's destination, if it has one.
    pub fn order_key(&self) -> Option<[u8; 16]> {
        let name = self.destination_name();
        self.destinations
            .iter()
            .find(|f| f.destination == name)
            .and_then(|f| f.order)
    }

    /// This event as destination `destination`'s copy.
    #[must_use]
    pub fn for_destination(mut self, destination: &str) -> Self {
        self.destination = if destination == DEFAULT_DESTINATION {
            String::new()
        } else {
            destination.to_owned()
        };
        self
    }

    /// The event of a request a face has admitted (steps 1–12): its forwardable headers
    /// (DESIGN §3) and, when it holds a dedup `reservation`, the key to restore after a restart
    /// with its expiry counted from now. The one place both faces build an event.
    pub fn received(
        route: &str,
        client_ip: IpAddr,
        method: &Method,
        uri: &str,
        headers: &HeaderMap,
        body: Bytes,
        reservation: Option<&Reserved>,
    ) -> Self {
        let event = Self::new(
            route,
            client_ip,
            method.as_str(),
            uri,
            forwardable_headers(headers),
            body,
        );
        match reservation {
            Some(r) => event.with_dedup(r.key(), r.expires_ms()),
            None => event,
        }
    }

    /// The event as a replay from the dead letters makes it: due now, its retry limits counted
    /// afresh from here (its id, attempts and history kept).
    pub fn replay_now(&mut self) {
        self.attempts_before_replay = self.attempts;
        self.next_attempt_ms = now_ms();
        self.window_start_ms = self.next_attempt_ms;
    }

    /// Attaches the dedup key and its expiry.
    #[must_use]
    pub fn with_dedup(mut self, key: DedupKey, expires_ms: u64) -> Self {
        self.dedup = Some(DedupRecord {
            key: key.to_bytes(),
            expires_ms,
        });
        self
    }

    /// Records a failed attempt ended now (no HTTP status, no duration known): `outcome` says
    /// what happened.
    pub fn record_outcome(&mut self, outcome: String) {
        self.record_attempt(AttemptKind::Failed, outcome, None, 0);
    }

    /// Records the attempt numbered `self.attempts`, ended now, keeping the newest
    /// [`HISTORY_LEN`]; the outcome is cut at [`OUTCOME_MAX`] bytes.
    pub fn record_attempt(
        &mut self,
        kind: AttemptKind,
        mut outcome: String,
        status: Option<u16>,
        duration_ms: u32,
    ) {
        if outcome.len() > OUTCOME_MAX {
            let cut = crate::core::cut(&outcome, OUTCOME_MAX).len();
            outcome.truncate(cut);
        }
        if self.history.len() == HISTORY_LEN {
            self.history.remove(0);
        }
        self.history.push(AttemptRecord {
            at_ms: now_ms(),
            outcome,
            kind,
            status,
            duration_ms,
            replay: self.replay.clone(),
        });
    }

    /// Approximate stored size, for the spool's byte bound.
    pub fn stored_size(&self) -> u64 {
        (self.body.len()
            + self.uri.len()
            + self.route.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + 128) as u64
    }
}
