//! How an [`Event`] is encoded where it is stored (the embedded engine, Redis): a tag, a format
//! version, then the event in postcard. Every reader decodes the versions before its own, so a
//! store written by an older release is read as it is; writers write the newest.
//!
//! | version | first bytes | what |
//! | --- | --- | --- |
//! | 1 (before the event history) | `0x10` (postcard's length of the 16-byte id) | the event, attempts as `{at_ms, outcome}` |
//! | 2 | `0xE7 0x02` | the event, attempts with their kind, HTTP status, duration and replay; the replay job |
//! | 3 | `0xE7 0x03` | version 2, then the destinations the event was fanned out to |
//!
//! The embedded layout also keeps an event's changing part apart from its record (see
//! [`State`]): a status change writes that, not the record.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::event::{AttemptKind, AttemptRecord, DedupRecord, Event};
use super::spool::SpoolError;

/// The first byte of every versioned record. A version 1 record starts with `0x10`: never this.
const TAG: u8 = 0xE7;
/// The version written now.
const VERSION: u8 = 3;
/// Version 2: version 3 without its last field (the destinations).
const VERSION_2: u8 = 2;

/// `event`, encoded at the newest version.
pub(crate) fn encode(event: &Event) -> Result<Vec<u8>, SpoolError> {
    let mut out = Vec::with_capacity(event.stored_size() as usize);
    out.push(TAG);
    out.push(VERSION);
    postcard::to_io(event, &mut out)
        .map_err(|e| SpoolError::Corrupt(event.id.to_string(), e.to_string()))?;
    Ok(out)
}

/// The event in `bytes`, of any version (`what` names it in an error).
pub(crate) fn decode(what: &str, bytes: &[u8]) -> Result<Event, SpoolError> {
    let corrupt = |e: postcard::Error| SpoolError::Corrupt(what.to_owned(), e.to_string());
    match bytes {
        [TAG, VERSION, rest @ ..] => postcard::from_bytes(rest).map_err(corrupt),
        // Version 3 only added a list at the end: an empty one is its length, a single 0.
        [TAG, VERSION_2, rest @ ..] => {
            let mut v3 = Vec::with_capacity(rest.len() + 1);
            v3.extend_from_slice(rest);
            v3.push(0);
            postcard::from_bytes(&v3).map_err(corrupt)
        }
        [TAG, v, ..] => Err(SpoolError::Corrupt(
            what.to_owned(),
            format!("written by a newer release (record version {v}); upgrade to read it"),
        )),
        _ => postcard::from_bytes::<EventV1>(bytes)
            .map(Event::from)
            .map_err(corrupt),
    }
}

/// An encoded event's fields up to its body, the strings and the body borrowed: a listing reads
/// past each body without copying it.
#[cfg(feature = "embedded")]
#[derive(Deserialize)]
pub(crate) struct View<'a> {
    pub id: Uuid,
    pub route: &'a str,
    pub received_ms: u64,
    pub client_ip: IpAddr,
    #[allow(dead_code)] // read only to reach the body
    pub method: &'a str,
    #[allow(dead_code)]
    pub uri: &'a str,
    #[allow(dead_code)]
    pub headers: Vec<(&'a str, &'a [u8])>,
    pub body: &'a [u8],
    #[allow(dead_code)] // the state kept apart says how many
    pub attempts: u32,
    #[allow(dead_code)]
    pub attempts_before_replay: u32,
    #[allow(dead_code)]
    pub window_start_ms: u64,
    #[allow(dead_code)]
    pub next_attempt_ms: u64,
    pub dedup: Option<DedupRecord>,
    #[allow(dead_code)]
    pub history: Vec<AttemptRecord>,
    #[allow(dead_code)]
    pub replay: Option<&'a str>,
    pub destinations: Vec<FanoutView<'a>>,
}

/// A [`Fanout`](super::event::Fanout), borrowed.
#[cfg(feature = "embedded")]
#[derive(Deserialize)]
pub(crate) struct FanoutView<'a> {
    pub destination: &'a str,
    pub filtered: bool,
    #[allow(dead_code)] // read only to reach the next
    pub order: Option<[u8; 16]>,
}

#[cfg(feature = "embedded")]
impl View<'_> {
    /// Every destination of the event, with whether it was filtered out (see
    /// [`Event::fanout`]).
    pub fn fanout(&self) -> Vec<(&str, bool)> {
        if self.destinations.is_empty() {
            return vec![(super::event::DEFAULT_DESTINATION, false)];
        }
        self.destinations
            .iter()
            .map(|f| (f.destination, f.filtered))
            .collect()
    }
}

/// The view of a record of the newest version (`None`: another version, to decode whole).
#[cfg(feature = "embedded")]
pub(crate) fn view<'a>(what: &str, bytes: &'a [u8]) -> Result<Option<View<'a>>, SpoolError> {
    match bytes {
        [TAG, VERSION, rest @ ..] => postcard::from_bytes(rest)
            .map(Some)
            .map_err(|e| SpoolError::Corrupt(what.to_owned(), e.to_string())),
        _ => Ok(None),
    }
}

/// What changes in an event after it is stored: its attempts, schedule and replay. The embedded
/// layout keeps it apart from the record (which is written once), so a retry, a dead letter or
/// a delivery writes these few bytes rather than the whole event.
///
/// Encoded as a version byte, the record's size (4 bytes, little endian: the spool's byte
/// count, set by whoever knows it without decoding the rest), then the fields in postcard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    pub attempts: u32,
    pub attempts_before_replay: u32,
    pub window_start_ms: u64,
    pub next_attempt_ms: u64,
    /// When it was delivered (for a delivered event), in Unix milliseconds.
    pub done_ms: u64,
    pub history: Vec<AttemptRecord>,
    pub replay: Option<String>,
}

/// [`State`] borrowed from an event, to encode it without a copy.
#[derive(Serialize)]
struct StateRef<'a> {
    attempts: u32,
    attempts_before_replay: u32,
    window_start_ms: u64,
    next_attempt_ms: u64,
    done_ms: u64,
    history: &'a [AttemptRecord],
    replay: Option<&'a str>,
}

/// The version of an encoded [`State`].
const STATE_VERSION: u8 = 1;

/// The bytes before an encoded state's fields: its version and the record's size.
#[cfg(feature = "embedded")]
const STATE_HEAD: usize = 5;

/// `event`'s changing part, encoded, for a record of `size` bytes (`done_ms`: when delivered,
/// else 0).
pub(crate) fn encode_state(event: &Event, size: u32, done_ms: u64) -> Result<Vec<u8>, SpoolError> {
    let state = StateRef {
        attempts: event.attempts,
        attempts_before_replay: event.attempts_before_replay,
        window_start_ms: event.window_start_ms,
        next_attempt_ms: event.next_attempt_ms,
        done_ms,
        history: &event.history,
        replay: event.replay.as_deref(),
    };
    let mut out = Vec::with_capacity(48);
    out.push(STATE_VERSION);
    out.extend_from_slice(&size.to_le_bytes());
    postcard::to_io(&state, &mut out)
        .map_err(|e| SpoolError::Corrupt(event.id.to_string(), e.to_string()))?;
    Ok(out)
}

/// The state in `bytes`.
pub(crate) fn decode_state(what: &str, bytes: &[u8]) -> Result<State, SpoolError> {
    match bytes {
        [STATE_VERSION, _, _, _, _, rest @ ..] => postcard::from_bytes(rest)
            .map_err(|e| SpoolError::Corrupt(what.to_owned(), e.to_string())),
        [v, ..] => Err(SpoolError::Corrupt(
            what.to_owned(),
            format!("an event state of version {v}, unknown to this release"),
        )),
        _ => Err(SpoolError::Corrupt(
            what.to_owned(),
            "a truncated state".into(),
        )),
    }
}

/// The record's size in an encoded state, for the writer's counts.
#[cfg(feature = "embedded")]
pub(crate) fn state_size(bytes: &[u8]) -> Option<u32> {
    let size = bytes.get(1..STATE_HEAD)?;
    Some(u32::from_le_bytes(size.try_into().ok()?))
}

/// Sets the record's size in an encoded state.
#[cfg(feature = "embedded")]
pub(crate) fn set_state_size(bytes: &mut [u8], size: u32) {
    if let Some(head) = bytes.get_mut(1..STATE_HEAD) {
        head.copy_from_slice(&size.to_le_bytes());
    }
}

impl State {
    /// This state as destination `name`'s, standing at `status`.
    #[cfg(feature = "embedded")]
    pub(crate) fn into_destination(
        self,
        name: &str,
        status: super::history::DeliveryStatus,
    ) -> super::history::DestinationState {
        super::history::DestinationState {
            name: name.to_owned(),
            status,
            attempts: self.attempts,
            history: self.history,
            next_attempt_ms: (status == super::history::DeliveryStatus::Pending)
                .then_some(self.next_attempt_ms),
            replay: self.replay,
        }
    }

    /// Puts this state on `event` (read from its record).
    pub(crate) fn apply(self, event: &mut Event) {
        event.attempts = self.attempts;
        event.attempts_before_replay = self.attempts_before_replay;
        event.window_start_ms = self.window_start_ms;
        event.next_attempt_ms = self.next_attempt_ms;
        event.history = self.history;
        event.replay = self.replay;
    }
}

/// `event` as version 1 wrote it (for tests of what reads it).
#[cfg(test)]
pub(crate) fn encode_v1(e: &Event) -> Vec<u8> {
    #[derive(Serialize)]
    struct A<'a> {
        at_ms: u64,
        outcome: &'a str,
    }
    let history: Vec<A<'_>> = e
        .history
        .iter()
        .map(|a| A {
            at_ms: a.at_ms,
            outcome: &a.outcome,
        })
        .collect();
    postcard::to_stdvec(&(
        e.id,
        &e.route,
        e.received_ms,
        e.client_ip,
        &e.method,
        &e.uri,
        &e.headers,
        &e.body,
        e.attempts,
        e.attempts_before_replay,
        e.window_start_ms,
        e.next_attempt_ms,
        e.dedup,
        history,
    ))
    .expect("an event encodes")
}

/// Version 1's attempt.
#[derive(Deserialize)]
struct AttemptV1 {
    at_ms: u64,
    outcome: String,
}

/// Version 1's event, field for field.
#[derive(Deserialize)]
struct EventV1 {
    id: Uuid,
    route: String,
    received_ms: u64,
    client_ip: IpAddr,
    method: String,
    uri: String,
    headers: Vec<(String, Vec<u8>)>,
    body: bytes::Bytes,
    attempts: u32,
    attempts_before_replay: u32,
    window_start_ms: u64,
    next_attempt_ms: u64,
    dedup: Option<DedupRecord>,
    history: Vec<AttemptV1>,
}

impl From<EventV1> for Event {
    fn from(v: EventV1) -> Self {
        Event {
            id: v.id,
            route: v.route,
            received_ms: v.received_ms,
            client_ip: v.client_ip,
            method: v.method,
            uri: v.uri,
            headers: v.headers,
            body: v.body,
            attempts: v.attempts,
            attempts_before_replay: v.attempts_before_replay,
            window_start_ms: v.window_start_ms,
            next_attempt_ms: v.next_attempt_ms,
            dedup: v.dedup,
            history: v
                .history
                .into_iter()
                .map(|a| AttemptRecord {
                    status: a
                        .outcome
                        .strip_prefix("status ")
                        .and_then(|s| s.parse().ok()),
                    at_ms: a.at_ms,
                    outcome: a.outcome,
                    // Version 1 kept only failures.
                    kind: AttemptKind::Failed,
                    duration_ms: 0,
                    replay: None,
                })
                .collect(),
            replay: None,
            destinations: Vec::new(),
            destination: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::DedupKey;

    fn event() -> Event {
        let mut e = Event::new(
            "r",
            "127.0.0.1".parse().unwrap(),
            "POST",
            "/w?x=1",
            vec![("content-type".into(), b"application/json".to_vec())],
            bytes::Bytes::from_static(b"{\"a\":1}"),
        )
        .with_dedup(DedupKey::from_u128(3), 99);
        e.attempts = 2;
        e.record_attempt(AttemptKind::Failed, "status 503".into(), Some(503), 12);
        e
    }

    #[test]
    fn a_record_round_trips_and_its_view_borrows_the_body() {
        let e = event();
        let bytes = encode(&e).unwrap();
        assert_eq!(&bytes[..2], [TAG, VERSION]);
        assert_eq!(decode("x", &bytes).unwrap(), e);
        let v = view("x", &bytes).unwrap().unwrap();
        assert_eq!((v.id, v.route, v.body), (e.id, "r", &b"{\"a\":1}"[..]));
        assert_eq!(v.history, e.history);
    }

    #[test]
    fn a_version_2_record_is_read_and_the_destinations_round_trip() {
        let e = event();
        let mut v2 = encode(&e).unwrap();
        assert_eq!(v2.pop(), Some(0), "an empty list is one byte at the end");
        v2[1] = VERSION_2;
        assert_eq!(decode("x", &v2).unwrap(), e);
        assert!(view("x", &v2).unwrap().is_none(), "decoded whole");
        let mut fanned = e.clone();
        fanned.destinations = vec![
            crate::store::event::Fanout {
                destination: "app".into(),
                filtered: false,
                order: Some([7; 16]),
            },
            crate::store::event::Fanout {
                destination: "alerts".into(),
                filtered: true,
                order: None,
            },
        ];
        let bytes = encode(&fanned).unwrap();
        assert_eq!(decode("x", &bytes).unwrap(), fanned);
        let v = view("x", &bytes).unwrap().unwrap();
        assert_eq!(v.fanout(), [("app", false), ("alerts", true)]);
        assert_eq!(
            view("x", &encode(&e).unwrap()).unwrap().unwrap().fanout(),
            [("upstream", false)]
        );
    }

    /// Written before the event history: the same fields, attempts as `{at_ms, outcome}`.
    #[test]
    fn a_version_1_record_is_read() {
        let e = event();
        let v1 = encode_v1(&e);
        assert_eq!(
            v1[0], 0x10,
            "a version 1 record starts with the id's length"
        );
        let read = decode("x", &v1).unwrap();
        assert_eq!((read.id, &read.body, read.dedup), (e.id, &e.body, e.dedup));
        assert_eq!(read.history[0].status, Some(503));
        assert_eq!(read.history[0].outcome, "status 503");
        assert!(view("x", &v1).unwrap().is_none());
    }

    #[test]
    fn a_newer_version_is_refused_by_name() {
        let err = decode("x", &[TAG, 9, 0]).unwrap_err().to_string();
        assert!(err.contains("newer release"), "{err}");
    }

    #[test]
    fn a_state_round_trips_and_gives_its_size_alone() {
        let mut e = event();
        e.replay = Some("job".into());
        let mut bytes = encode_state(&e, 1234, 0).unwrap();
        assert_eq!(state_size(&bytes), Some(1234));
        set_state_size(&mut bytes, 99);
        assert_eq!(state_size(&bytes), Some(99));
        let state = decode_state("x", &bytes).unwrap();
        let mut back = Event {
            history: vec![],
            replay: None,
            attempts: 0,
            ..e.clone()
        };
        state.apply(&mut back);
        assert_eq!(back, e);
    }
}
