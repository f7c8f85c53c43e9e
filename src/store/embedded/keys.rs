//! How the embedded spool lays records out in fjall's keyspaces, and encodes them.
//!
//! | keyspace | key | value |
//! | --- | --- | --- |
//! | `pending` | route, `0`, id (16 bytes) | the [`Event`], postcard |
//! | `dead` | route, `0`, id | the [`Event`], postcard |
//! | `dedup` | expiry (8 bytes, big endian), key (16 bytes) | empty |
//!
//! Ids are UUIDv7, so each route's events sort oldest first; dedup records sort by expiry, so the
//! expired ones are one range at the front.

use serde::Deserialize;
use uuid::Uuid;

use crate::store::event::{AttemptRecord, DedupRecord, Event};
use crate::store::spool::{EventSummary, SpoolError};

/// The key of event `id` of `route` in `pending` or `dead`.
pub(super) fn event_key(route: &str, id: Uuid) -> Vec<u8> {
    let mut key = Vec::with_capacity(route.len() + 17);
    key.extend_from_slice(route.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

/// The prefix of every event key of `route`.
pub(super) fn route_prefix(route: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(route.len() + 1);
    prefix.extend_from_slice(route.as_bytes());
    prefix.push(0);
    prefix
}

/// The id at the end of an event key.
pub(super) fn id_of(key: &[u8]) -> Option<Uuid> {
    let start = key.len().checked_sub(16)?;
    Uuid::from_slice(&key[start..]).ok()
}

/// A persisted dedup key: the expiry (big endian) then the key.
pub(super) fn dedup_key(d: &DedupRecord) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&d.expires_ms.to_be_bytes());
    k[8..].copy_from_slice(&d.key);
    k
}

/// The end (exclusive) of the range of dedup records expired now: they sort first.
pub(super) fn expired_until() -> [u8; 8] {
    crate::store::event::now_ms()
        .saturating_add(1)
        .to_be_bytes()
}

pub(super) fn decode_dedup_key(k: &[u8]) -> Option<DedupRecord> {
    let expires_ms = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    let key = k.get(8..24)?.try_into().ok()?;
    Some(DedupRecord { key, expires_ms })
}

pub(super) fn encode(event: &Event) -> Result<Vec<u8>, SpoolError> {
    postcard::to_stdvec(event).map_err(|e| SpoolError::Corrupt(event.id.to_string(), e.to_string()))
}

pub(super) fn decode(bytes: &[u8]) -> Result<Event, SpoolError> {
    postcard::from_bytes(bytes).map_err(|e| SpoolError::Corrupt("?".into(), e.to_string()))
}

/// [`Event`]'s fields in its encoding's order, the body borrowed rather than copied: a list of
/// dead letters reads past each body without allocating it.
#[derive(Deserialize)]
#[allow(dead_code)] // the fields before `body` are read only to reach it
struct Skimmed<'a> {
    id: Uuid,
    route: String,
    received_ms: u64,
    client_ip: std::net::IpAddr,
    method: &'a str,
    uri: &'a str,
    headers: Vec<(&'a str, &'a [u8])>,
    body: &'a [u8],
    attempts: u32,
    attempts_before_replay: u32,
    window_start_ms: u64,
    next_attempt_ms: u64,
    dedup: Option<DedupRecord>,
    history: Vec<AttemptRecord>,
}

/// The summary of an encoded event, its body skipped.
pub(super) fn summary(bytes: &[u8]) -> Result<EventSummary, SpoolError> {
    let s: Skimmed<'_> =
        postcard::from_bytes(bytes).map_err(|e| SpoolError::Corrupt("?".into(), e.to_string()))?;
    Ok(EventSummary {
        id: s.id,
        route: s.route,
        received_ms: s.received_ms,
        client_ip: s.client_ip,
        attempts: s.attempts,
        history: s.history,
        body_bytes: s.body.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::DedupKey;

    #[test]
    fn a_summary_reads_an_event_without_its_body() {
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
        e.record_outcome("status 400".into());
        let bytes = encode(&e).unwrap();
        assert_eq!(summary(&bytes).unwrap(), EventSummary::from(&e));
        assert_eq!(decode(&bytes).unwrap(), e);
    }

    #[test]
    fn keys_sort_by_route_then_age_and_give_their_id_back() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(event_key("r", a) < event_key("r", b));
        assert!(event_key("r", b) < event_key("s", a));
        assert_eq!(id_of(&event_key("r", a)), Some(a));
        assert!(event_key("r", a).starts_with(&route_prefix("r")));
        let d = DedupRecord {
            key: [7; 16],
            expires_ms: 5,
        };
        assert_eq!(decode_dedup_key(&dedup_key(&d)), Some(d));
    }
}
