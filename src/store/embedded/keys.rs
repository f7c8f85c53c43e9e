//! How the embedded spool lays events out in fjall's keyspaces (layout 2: the event history).
//!
//! | keyspace | key | value | written |
//! | --- | --- | --- | --- |
//! | `events` | id (16 bytes) | the event's record ([`record`](crate::store::record)) | once, at append |
//! | `live` | `p` or `d`, lane, `0`, id | one destination's [`State`](crate::store::record::State) of the event: pending (`p`) or dead (`d`) | at append, each retry, dead letter, replay |
//! | `done` | id, then the destination's name unless it is the default one | the state a delivered event ended with there | at delivery |
//! | `kept` | id | the record of a pending or dead event older than the retention | before retention drops its range |
//! | `dedup` | expiry (8 bytes, big endian), key (16 bytes) | empty | at append |
//! | `meta` | `r/` key, `n/` key, `t/` route `0` minute | the gateway's records (replay jobs), counters, and how many events each route received each minute | as they change; the minutes with each batch of appends |
//!
//! Why this shape: ids are UUIDv7, so `events` and `done` grow at their end, in time order. A
//! status change is a few bytes in `live` or `done`, never the record again. Retention drops
//! whole tables of `events` and `done` older than its cutoff (`drop_range`, no tombstones);
//! the few events still pending or dead there are copied to `kept` first. The pending events of
//! a route are one prefix of `live` (start-up reads them, not the history), and so are its dead
//! letters; expired dedup records are one range at the front of `dedup`.
//!
//! Layout 1 (before the event history) kept the whole event in `pending` or `dead`, keyed by route then id;
//! [`super::engine`] moves such a spool into layout 2 when it opens it.

use uuid::Uuid;

use crate::store::event::DedupRecord;

/// Where an event in `live` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Space {
    Pending,
    Dead,
}

impl Space {
    fn tag(self) -> u8 {
        match self {
            Space::Pending => b'p',
            Space::Dead => b'd',
        }
    }

    /// The space of a `live` key.
    pub(super) fn of(key: &[u8]) -> Option<Space> {
        match key.first()? {
            b'p' => Some(Space::Pending),
            b'd' => Some(Space::Dead),
            _ => None,
        }
    }
}

/// The key of event `id`'s record in `events`, `done` and `kept`.
pub(super) fn record_key(id: Uuid) -> [u8; 16] {
    *id.as_bytes()
}

/// The key of destination `destination`'s delivered state of event `id` in `done`: the id
/// alone for the default destination (as before there were others), else the id and the name.
/// Either sorts with its id, so retention's ranges by id cover it.
pub(super) fn done_key(id: Uuid, destination: &str) -> Vec<u8> {
    let mut key = id.as_bytes().to_vec();
    if destination != crate::store::event::DEFAULT_DESTINATION {
        key.extend_from_slice(destination.as_bytes());
    }
    key
}

/// The key of event `id` of `route` (a lane: see [`crate::store::lane`]) in `live`.
pub(super) fn live_key(space: Space, route: &str, id: Uuid) -> Vec<u8> {
    let mut key = Vec::with_capacity(route.len() + 18);
    key.push(space.tag());
    key.extend_from_slice(route.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

/// The prefix of every `live` key of `route` in `space`.
pub(super) fn live_prefix(space: Space, route: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(route.len() + 2);
    prefix.push(space.tag());
    prefix.extend_from_slice(route.as_bytes());
    prefix.push(0);
    prefix
}

/// The prefix of every `live` key in `space`.
pub(super) fn space_prefix(space: Space) -> [u8; 1] {
    [space.tag()]
}

/// The id at the end of a key (of any keyspace but `dedup` and `done`).
pub(super) fn id_of(key: &[u8]) -> Option<Uuid> {
    let start = key.len().checked_sub(16)?;
    Uuid::from_slice(&key[start..]).ok()
}

/// The lane of a `live` key.
pub(super) fn route_of(key: &[u8]) -> Option<&str> {
    let end = key.len().checked_sub(17)?;
    std::str::from_utf8(key.get(1..end)?).ok()
}

pub(super) use crate::store::history::first_id_at;

/// The key of the gateway's record `key` in `meta`.
pub(super) fn meta_record(key: &str) -> Vec<u8> {
    [b"r/".as_slice(), key.as_bytes()].concat()
}

/// The key of counter `key` in `meta`.
pub(super) fn meta_counter(key: &str) -> Vec<u8> {
    [b"n/".as_slice(), key.as_bytes()].concat()
}

/// The prefix of every tally in `meta`.
pub(super) const TALLY: &[u8] = b"t/";

/// The key of `route`'s tally of minute `minute` (since the epoch) in `meta`.
pub(super) fn tally_key(route: &str, minute: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(route.len() + 11);
    k.extend_from_slice(TALLY);
    k.extend_from_slice(route.as_bytes());
    k.push(0);
    k.extend_from_slice(&minute.to_be_bytes());
    k
}

/// The route and minute of a tally key.
pub(super) fn decode_tally_key(k: &[u8]) -> Option<(String, u64)> {
    let rest = k.strip_prefix(TALLY)?;
    let split = rest.len().checked_sub(9)?;
    if rest.get(split) != Some(&0) {
        return None;
    }
    let route = std::str::from_utf8(&rest[..split]).ok()?.to_owned();
    let minute = u64::from_be_bytes(rest[split + 1..].try_into().ok()?);
    Some((route, minute))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_sort_by_space_route_then_age_and_give_their_parts_back() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let p = |r, id| live_key(Space::Pending, r, id);
        assert!(p("r", a) < p("r", b));
        assert!(p("r", b) < p("s", a));
        assert!(live_key(Space::Dead, "z", b) < p("a", a));
        assert_eq!(id_of(&p("r", a)), Some(a));
        assert_eq!(route_of(&p("route-1", a)), Some("route-1"));
        assert_eq!(Space::of(&live_key(Space::Dead, "r", a)), Some(Space::Dead));
        assert!(p("r", a).starts_with(&live_prefix(Space::Pending, "r")));
        assert!(p("r", a).starts_with(&space_prefix(Space::Pending)));
        let d = DedupRecord {
            key: [7; 16],
            expires_ms: 5,
        };
        assert_eq!(decode_dedup_key(&dedup_key(&d)), Some(d));
        assert_eq!(
            decode_tally_key(&tally_key("r/0", 29_000_000)),
            Some(("r/0".to_owned(), 29_000_000))
        );
        assert!(tally_key("a", 2) < tally_key("a", 10));
        let id = Uuid::now_v7();
        assert_eq!(done_key(id, "upstream"), id.as_bytes());
        let alerts = done_key(id, "alerts");
        assert!(alerts.as_slice() > id.as_bytes().as_slice());
        assert!(alerts.as_slice() < Uuid::from_u128(id.as_u128() + 1).as_bytes().as_slice());
    }
}
