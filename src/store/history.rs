//! The event history (DESIGN §13): what every backend answers about the events it keeps, and the
//! filters of a query, applied the same way by each.
//!
//! Every accepted event is kept: pending and dead ones until they are delivered or purged,
//! delivered ones for the store's `retention` (and within `retention_max_size` on the embedded
//! store). A query pages through them in id order (UUIDv7: receipt order), oldest or newest
//! first, and reads a bounded number of records per page whatever its filters match: a page may
//! come back short, with a cursor to go on from.
//!
//! ```
//! use hookgate::store::history::{DeliveryStatus, EventFilter, EventQuery};
//!
//! let q = EventQuery {
//!     filter: EventFilter {
//!         route: Some("o3-video".into()),
//!         status: Some(DeliveryStatus::Delivered),
//!         ..EventFilter::default()
//!     },
//!     ..EventQuery::default()
//! };
//! assert_eq!(q.limit, 100);
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::event::{id_ms, AttemptRecord, Event};
use super::spool::EventSummary;
use crate::core::JsonPointer;

/// Where an event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for a delivery (new, retrying, or replayed).
    Pending,
    /// Delivered.
    Delivered,
    /// In the dead letters.
    Dead,
    /// Not for this destination: its filter did not match the event.
    Filtered,
}

impl DeliveryStatus {
    /// The name the API and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
            DeliveryStatus::Filtered => "filtered",
        }
    }

    /// Where an event stands as a whole, from where each destination does: pending while any
    /// is, then dead while any is, then delivered if any was, else filtered (for every one).
    pub fn overall(states: &[DestinationState]) -> Option<Self> {
        let any = |s: DeliveryStatus| states.iter().any(|d| d.status == s);
        [
            DeliveryStatus::Pending,
            DeliveryStatus::Dead,
            DeliveryStatus::Delivered,
            DeliveryStatus::Filtered,
        ]
        .into_iter()
        .find(|s| any(*s))
    }
}

/// Where one destination of an event stands, with its own attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationState {
    /// The destination's name.
    pub name: String,
    /// Where it stands there.
    pub status: DeliveryStatus,
    /// Attempts made there.
    pub attempts: u32,
    /// The newest attempts there.
    pub history: Vec<AttemptRecord>,
    /// When the next attempt is due, for a pending one (Unix milliseconds).
    pub next_attempt_ms: Option<u64>,
    /// The replay job it is pending for, if a replay queued it.
    pub replay: Option<String>,
}

impl DestinationState {
    /// The state of `e`'s copy (its destination's), standing at `status`.
    pub fn of(e: &Event, status: DeliveryStatus) -> Self {
        Self {
            name: e.destination_name().to_owned(),
            status,
            attempts: e.attempts,
            history: e.history.clone(),
            next_attempt_ms: (status == DeliveryStatus::Pending).then_some(e.next_attempt_ms),
            replay: e.replay.clone(),
        }
    }

    /// Puts this state's attempts, history, schedule and replay on `event` (that destination's
    /// copy, read from its record).
    #[cfg(feature = "embedded")]
    pub(crate) fn apply(&self, event: &mut Event) {
        event.attempts = self.attempts;
        event.history = self.history.clone();
        if let Some(due) = self.next_attempt_ms {
            event.next_attempt_ms = due;
        }
        event.replay = self.replay.clone();
    }

    /// Destination `name`, which the event's filter left out.
    pub fn filtered(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            status: DeliveryStatus::Filtered,
            attempts: 0,
            history: Vec::new(),
            next_attempt_ms: None,
            replay: None,
        }
    }
}

/// An event, whole, with where each of its destinations stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDetail {
    /// The event as received. Its per-destination fields (attempts, history, schedule) are
    /// not meaningful here: see `destinations`.
    pub event: Event,
    /// Each destination it was fanned out to, as far as the store still knows it.
    pub destinations: Vec<DestinationState>,
}

impl EventDetail {
    /// Where the event stands as a whole (see [`DeliveryStatus::overall`]).
    pub fn status(&self) -> DeliveryStatus {
        DeliveryStatus::overall(&self.destinations).unwrap_or(DeliveryStatus::Delivered)
    }

    /// Destination `name`'s state.
    pub fn destination(&self, name: &str) -> Option<&DestinationState> {
        self.destinations.iter().find(|d| d.name == name)
    }
}

impl std::str::FromStr for DeliveryStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(DeliveryStatus::Pending),
            "delivered" => Ok(DeliveryStatus::Delivered),
            "dead" => Ok(DeliveryStatus::Dead),
            "filtered" => Ok(DeliveryStatus::Filtered),
            other => Err(format!(
                "{other:?} is not a status: use pending, delivered, dead or filtered"
            )),
        }
    }
}

/// Which way a query pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Oldest first.
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

/// Which events a query (or a replay job) selects. Every filter given must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// The route's name.
    pub route: Option<String>,
    /// Where it stands: an event matches if any destination (or `destination`) stands there.
    pub status: Option<DeliveryStatus>,
    /// One destination: the event must have been fanned out to it (and `status` is its own).
    pub destination: Option<String>,
    /// Received at or after, in Unix milliseconds.
    pub since_ms: Option<u64>,
    /// Received before, in Unix milliseconds.
    pub until_ms: Option<u64>,
    /// The dedup key, per route (its 16 bytes, as the route's key spec hashes the sender's
    /// value; any of them): an event of a route not named here does not match.
    pub keys: Option<HashMap<String, Vec<[u8; 16]>>>,
    /// JSON pointers into the body and the value each must equal (a string given also matches
    /// a JSON string of that text).
    pub matches: Vec<(JsonPointer, Value)>,
}

impl EventFilter {
    /// Whether an event received at `received_ms` on `route`, with `dedup`, passes every
    /// filter but `status`, `destination` and `matches` (the cheap ones: no state and no body
    /// read).
    pub fn admits(&self, route: &str, received_ms: u64, dedup: Option<&[u8; 16]>) -> bool {
        self.route.as_deref().is_none_or(|r| r == route)
            && self.since_ms.is_none_or(|t| received_ms >= t)
            && self.until_ms.is_none_or(|t| received_ms < t)
            && self.keys.as_ref().is_none_or(|keys| {
                keys.get(route)
                    .is_some_and(|k| dedup.is_some_and(|d| k.contains(d)))
            })
    }

    /// Whether an event whose destinations stand at `states` passes `destination` and
    /// `status`.
    pub fn admits_destinations(&self, states: &[DestinationState]) -> bool {
        let wanted =
            |d: &&DestinationState| self.destination.as_deref().is_none_or(|n| n == d.name);
        match self.status {
            Some(s) => states.iter().filter(wanted).any(|d| d.status == s),
            None => self.destination.is_none() || states.iter().any(|d| wanted(&d)),
        }
    }

    /// Whether `body` passes `matches` (always, without any).
    pub fn matches_body(&self, body: &[u8]) -> bool {
        if self.matches.is_empty() {
            return true;
        }
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return false;
        };
        self.matches.iter().all(|(pointer, want)| {
            pointer.lookup(&json).is_some_and(|got| {
                got == want
                    || match (got, want) {
                        // `where=/n=3` given as text: the string "3" matches too.
                        (Value::String(g), _) => {
                            serde_json::from_str::<Value>(g).is_ok_and(|v| v == *want)
                        }
                        _ => false,
                    }
            })
        })
    }

    /// The id range the time window covers, with a second of slack each side (an id is made
    /// within a millisecond of the receipt time it is stored with; the exact window is checked
    /// on each event).
    pub fn id_window(&self) -> (Option<u64>, Option<u64>) {
        (
            self.since_ms.map(|t| t.saturating_sub(1000)),
            self.until_ms.map(|t| t.saturating_add(1000)),
        )
    }
}

/// A page of a query.
#[derive(Debug, Clone, PartialEq)]
pub struct EventQuery {
    /// Which events.
    pub filter: EventFilter,
    /// Oldest or newest first.
    pub order: Order,
    /// The most events on the page (at most [`MAX_PAGE`]).
    pub limit: usize,
    /// Go on after this event (the previous page's `next`).
    pub after: Option<Uuid>,
}

impl Default for EventQuery {
    fn default() -> Self {
        Self {
            filter: EventFilter::default(),
            order: Order::Asc,
            limit: 100,
            after: None,
        }
    }
}

/// The most events one page holds.
pub const MAX_PAGE: usize = 1000;

/// The most records one page reads, whatever its filters match: a page over a million events
/// that match rarely comes back short, with its cursor, rather than reading them all.
pub const SCAN_BUDGET: usize = 20_000;

/// What a query found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventPage {
    /// The events, without their bodies.
    pub events: Vec<EventSummary>,
    /// Where the next page starts (`after`), or `None` when there is no more.
    pub next: Option<Uuid>,
}

/// Collects a page as a backend reads candidates in order: counts what was read against the
/// [`SCAN_BUDGET`] and says when to stop.
#[derive(Debug)]
pub struct PageBuilder {
    limit: usize,
    read: usize,
    last: Option<Uuid>,
    page: EventPage,
}

impl PageBuilder {
    /// A page of at most `limit` events (capped at [`MAX_PAGE`], at least 1).
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.clamp(1, MAX_PAGE),
            read: 0,
            last: None,
            page: EventPage::default(),
        }
    }

    /// One candidate read (`Some` if it matched); returns `false` once the page is full or
    /// its budget spent.
    pub fn offer(&mut self, id: Uuid, matched: Option<EventSummary>) -> bool {
        self.read += 1;
        self.last = Some(id);
        if let Some(e) = matched {
            self.page.events.push(e);
        }
        self.page.events.len() < self.limit && self.read < SCAN_BUDGET
    }

    /// The page: its cursor is the last event read if the page stopped early, else none (the
    /// candidates ran out).
    pub fn finish(mut self, ran_out: bool) -> EventPage {
        self.page.next = if ran_out { None } else { self.last };
        self.page
    }
}

/// The smallest id made at `ms` (Unix milliseconds): every id of that millisecond or later
/// sorts at or after it (ids are UUIDv7, compared as bytes).
pub fn first_id_at(ms: u64) -> Uuid {
    let ms = ms.min((1 << 48) - 1);
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(b)
}

/// Whether a delivered event `id` is still inside the history kept from `visible_from_ms`.
pub fn retained(id: Uuid, visible_from_ms: u64) -> bool {
    id_ms(id).is_some_and(|ms| ms >= visible_from_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheap_filters_and_the_body_filter() {
        let f = EventFilter {
            route: Some("r".into()),
            destination: None,
            status: Some(DeliveryStatus::Delivered),
            since_ms: Some(10),
            until_ms: Some(20),
            keys: Some([("r".to_string(), vec![[1; 16]])].into()),
            matches: vec![
                (
                    JsonPointer::parse("/status"),
                    Value::String("failed".into()),
                ),
                (JsonPointer::parse("/n"), serde_json::json!(3)),
            ],
        };
        let ok = |route, at, key: Option<&[u8; 16]>| f.admits(route, at, key);
        assert!(ok("r", 10, Some(&[1; 16])));
        assert!(!ok("r", 20, Some(&[1; 16])), "until excludes");
        assert!(!ok("r", 9, Some(&[1; 16])));
        assert!(!ok("s", 15, Some(&[1; 16])));
        assert!(!ok("r", 15, Some(&[2; 16])));
        assert!(!ok("r", 15, None));
        let state = |name: &str, status| DestinationState {
            status,
            ..DestinationState::filtered(name)
        };
        let delivered = [state("a", DeliveryStatus::Delivered)];
        assert!(f.admits_destinations(&delivered));
        assert!(!f.admits_destinations(&[state("a", DeliveryStatus::Dead)]));
        let both = [
            state("a", DeliveryStatus::Delivered),
            state("b", DeliveryStatus::Dead),
        ];
        assert!(f.admits_destinations(&both), "any destination");
        let at_b = EventFilter {
            destination: Some("b".into()),
            ..f.clone()
        };
        assert!(!at_b.admits_destinations(&both), "b's own status");
        assert!(!at_b.admits_destinations(&delivered), "no b");
        assert_eq!(
            DeliveryStatus::overall(&both),
            Some(DeliveryStatus::Dead),
            "dead before delivered"
        );
        assert_eq!(
            DeliveryStatus::overall(&[DestinationState::filtered("x")]),
            Some(DeliveryStatus::Filtered)
        );
        assert!(f.matches_body(br#"{"status":"failed","n":3}"#));
        assert!(f.matches_body(br#"{"status":"failed","n":"3"}"#));
        assert!(!f.matches_body(br#"{"status":"completed","n":3}"#));
        assert!(!f.matches_body(br#"{"status":"failed"}"#));
        assert!(!f.matches_body(b"not json"));
        assert!(EventFilter::default().matches_body(b"not json"));
    }

    #[test]
    fn the_first_id_of_a_millisecond_sorts_before_every_id_made_then() {
        let id = Uuid::now_v7();
        let ms = id_ms(id).unwrap();
        assert!(first_id_at(ms) <= id);
        assert!(first_id_at(ms + 1) > id);
        assert!(retained(id, ms) && !retained(id, ms + 1));
    }

    #[test]
    fn a_page_stops_when_full_or_out_of_budget_and_says_where_to_go_on() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let summary = |id| EventSummary {
            id,
            route: "r".into(),
            received_ms: 0,
            client_ip: "127.0.0.1".parse().unwrap(),
            attempts: 0,
            body_bytes: 0,
            status: DeliveryStatus::Pending,
            destinations: vec![],
            dedup: None,
        };
        let mut p = PageBuilder::new(2);
        assert!(p.offer(ids[0], Some(summary(ids[0]))));
        assert!(p.offer(ids[1], None));
        assert!(!p.offer(ids[2], Some(summary(ids[2]))));
        let page = p.finish(false);
        assert_eq!(page.events.len(), 2);
        assert_eq!(page.next, Some(ids[2]));
        let mut p = PageBuilder::new(5);
        p.offer(ids[0], None);
        assert_eq!(p.finish(true).next, None);
        let mut p = PageBuilder::new(5);
        for _ in 0..SCAN_BUDGET - 1 {
            assert!(p.offer(ids[0], None));
        }
        assert!(!p.offer(ids[1], None), "the budget is spent");
        assert_eq!(p.finish(false).next, Some(ids[1]));
    }
}
