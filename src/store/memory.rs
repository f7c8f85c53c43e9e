//! The `memory` backend: the spool and dedup store in the process's memory, nothing on disk. An
//! acknowledgement survives nothing (like `durability = "memory"`, without even a temporary
//! directory): for tests, benchmarks and trying hookgate out. It is also the second backend the
//! [conformance](super::conformance) suite runs against, which keeps the [`Spool`] trait honest
//! about what belongs to a backend.
//!
//! ```
//! use hookgate::store::{memory::MemorySpool, Event, Spool};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let spool = MemorySpool::new(10, 1 << 20);
//! let e = Event::new("r", "127.0.0.1".parse().unwrap(), "POST", "/w", vec![], "{}".into());
//! spool.append(&e).await.unwrap();
//! assert_eq!(spool.stats().pending, 1);
//! # });
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use super::embedded::MemoryDedupStore;
use super::event::{id_ms, lane, now_ms, DedupRecord, Event, DEFAULT_DESTINATION};
use super::history::{
    self, first_id_at, DeliveryStatus, DestinationState, EventDetail, EventPage, EventQuery, Order,
    PageBuilder,
};
use super::spool::{Completion, EventSummary, Spool, SpoolError, SpoolFuture, SpoolStats};
use super::{SharedDedupStore, Storage};
use crate::metrics::Metrics;

/// A destination's share: its lane, then the event id.
type Key = (String, Uuid);

#[derive(Default)]
struct State {
    /// Each destination's pending copies.
    pending: BTreeMap<Key, Event>,
    /// Each destination's dead letters.
    dead: BTreeMap<Key, Event>,
    /// Each destination's delivered copy (and a filtered destination's), by id then name.
    done: BTreeMap<(Uuid, String), Event>,
    /// Every event kept, as received: pending, dead or delivered somewhere, within the
    /// retention.
    records: BTreeMap<Uuid, Event>,
    /// Bytes of `done`, for the history's bound.
    done_bytes: u64,
    meta: BTreeMap<String, Vec<u8>>,
    counters: std::collections::HashMap<String, i64>,
    /// Dedup keys by expiry.
    dedup: BTreeSet<(u64, [u8; 16])>,
    /// Bytes of the pending and dead copies.
    bytes: u64,
}

/// The `memory` backend's spool: bounded by a number of events and of bytes, like the embedded
/// one. Delivered events stay in its history for the retention (72 hours unless
/// [`with_retention`](Self::with_retention)), within `max_bytes` of their own.
pub struct MemorySpool {
    state: Mutex<State>,
    max_events: u64,
    max_bytes: u64,
    retention: Duration,
}

impl std::fmt::Debug for MemorySpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySpool")
            .field("stats", &self.stats())
            .finish()
    }
}

fn key(lane: &str, id: Uuid) -> Key {
    (lane.to_owned(), id)
}

impl State {
    /// Where destination `destination` (filtered out or not) of event `record` stands, with its
    /// copy.
    fn standing(
        &self,
        record: &Event,
        destination: &str,
        filtered: bool,
    ) -> Option<DestinationState> {
        if filtered {
            return Some(DestinationState::filtered(destination));
        }
        let k = key(&lane(&record.route, destination), record.id);
        if let Some(e) = self.pending.get(&k) {
            return Some(DestinationState::of(e, DeliveryStatus::Pending));
        }
        if let Some(e) = self.dead.get(&k) {
            return Some(DestinationState::of(e, DeliveryStatus::Dead));
        }
        self.done
            .get(&(record.id, destination.to_owned()))
            .map(|e| DestinationState::of(e, DeliveryStatus::Delivered))
    }

    /// Where each destination of event `id` stands, with its record.
    fn detail(&self, id: Uuid) -> Option<EventDetail> {
        let record = self.records.get(&id)?;
        let destinations: Vec<DestinationState> = record
            .fanout()
            .filter_map(|(d, filtered)| self.standing(record, d, filtered))
            .collect();
        (!destinations.is_empty()).then(|| EventDetail {
            event: record.clone(),
            destinations,
        })
    }

    /// Whether any destination of `record` still holds a copy of it.
    fn held(&self, record: &Event) -> bool {
        record.fanout().any(|(d, _)| {
            let k = key(&lane(&record.route, d), record.id);
            self.pending.contains_key(&k)
                || self.dead.contains_key(&k)
                || self.done.contains_key(&(record.id, d.to_owned()))
        })
    }

    /// Forgets `id`'s record once no destination holds it.
    fn forget_if_unheld(&mut self, id: Uuid) {
        if let Some(record) = self.records.get(&id) {
            if !self.held(record) {
                self.records.remove(&id);
            }
        }
    }
}

impl MemorySpool {
    /// A spool of at most `max_events` events (each destination's share counts as one) and
    /// `max_bytes` bytes.
    pub fn new(max_events: u64, max_bytes: u64) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_events,
            max_bytes,
            retention: Duration::from_secs(72 * 3600),
        }
    }

    /// Keeps delivered events for `retention`.
    #[must_use]
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    fn visible_from_ms(&self) -> u64 {
        now_ms().saturating_sub(self.retention.as_millis() as u64)
    }

    /// Drops the delivered (and filtered) shares past the retention or beyond `max_bytes` of
    /// history, oldest first, and the records no destination holds any more.
    fn retain(&self, s: &mut State) {
        let from = self.visible_from_ms();
        while let Some(((id, _), _)) = s.done.first_key_value() {
            let id = *id;
            if history::retained(id, from) && s.done_bytes <= self.max_bytes {
                break;
            }
            if let Some(((id, _), e)) = s.done.pop_first() {
                s.done_bytes -= e.stored_size();
                s.forget_if_unheld(id);
            }
        }
        // Events filtered out everywhere have no share at all: they go by time.
        while let Some((&id, record)) = s.records.first_key_value() {
            if history::retained(id, from) || s.held(record) {
                break;
            }
            s.records.remove(&id);
        }
    }

    fn query(&self, q: &EventQuery) -> EventPage {
        use std::ops::Bound;
        let mut s = self.lock();
        self.retain(&mut s);
        let f = &q.filter;
        let (lo_ms, hi_ms) = f.id_window();
        let lo = lo_ms.map(first_id_at).unwrap_or_else(Uuid::nil);
        let hi = hi_ms.map(first_id_at).unwrap_or_else(Uuid::max);
        let (lo, hi) = match (q.after, q.order) {
            (Some(a), Order::Asc) if a >= lo => (Bound::Excluded(a), Bound::Included(hi)),
            (Some(a), Order::Desc) if a <= hi => (Bound::Included(lo), Bound::Excluded(a)),
            _ => (Bound::Included(lo), Bound::Included(hi)),
        };
        // A cursor past the window's end: nothing (a BTreeMap range must not be inverted).
        let inverted = match (lo, hi) {
            (Bound::Excluded(a) | Bound::Included(a), Bound::Excluded(b) | Bound::Included(b)) => {
                a > b
            }
            _ => false,
        };
        if inverted {
            return EventPage::default();
        }
        let mut page = PageBuilder::new(q.limit);
        let range = s.records.range((lo, hi));
        let items: Box<dyn Iterator<Item = (&Uuid, &Event)>> = match q.order {
            Order::Asc => Box::new(range),
            Order::Desc => Box::new(range.rev()),
        };
        let mut ran_out = true;
        for (&id, record) in items {
            let matched = f
                .admits(
                    &record.route,
                    record.received_ms,
                    record.dedup.as_ref().map(|d| &d.key),
                )
                .then(|| s.detail(id))
                .flatten()
                .filter(|d| f.admits_destinations(&d.destinations) && f.matches_body(&record.body))
                .map(|d| EventSummary::with_destinations(record, d.destinations));
            if !page.offer(id, matched) {
                ran_out = false;
                break;
            }
        }
        page.finish(ran_out)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every method leaves the state consistent between statements.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Spool for MemorySpool {
    fn append(&self, event: &Event) -> Completion {
        let mut s = self.lock();
        let shares = event.delivered_to().count() as u64;
        let held = (s.pending.len() + s.dead.len()) as u64;
        let size = event.stored_size() * shares;
        if held + shares > self.max_events {
            return Completion::ready(Err(SpoolError::Full(format!("{held} events"))));
        }
        if s.bytes + size > self.max_bytes {
            return Completion::ready(Err(SpoolError::Full(format!("{} bytes", s.bytes))));
        }
        s.bytes += size;
        // Expired keys sort first: drop a few with each append, so they never pile up.
        let now = now_ms();
        for _ in 0..4 {
            match s.dedup.first() {
                Some(&(expires, _)) if expires <= now => {
                    s.dedup.pop_first();
                }
                _ => break,
            }
        }
        if let Some(d) = event.dedup {
            s.dedup.insert((d.expires_ms, d.key));
        }
        for (destination, filtered) in event.fanout() {
            let copy = event.clone().for_destination(destination);
            if filtered {
                s.done_bytes += copy.stored_size();
                s.done.insert((event.id, destination.to_owned()), copy);
            } else {
                s.pending
                    .insert(key(&lane(&event.route, destination), event.id), copy);
            }
        }
        s.records
            .insert(event.id, event.clone().for_destination(DEFAULT_DESTINATION));
        Completion::ready(Ok(()))
    }

    fn get(&self, lane: &str, id: Uuid) -> Result<Option<Event>, SpoolError> {
        Ok(self.lock().pending.get(&key(lane, id)).cloned())
    }

    fn delivered(&self, event: &Event) -> Completion {
        let mut s = self.lock();
        if let Some(old) = s.pending.remove(&key(&event.lane(), event.id)) {
            s.bytes -= old.stored_size();
            let k = (event.id, event.destination_name().to_owned());
            if let Some(before) = s.done.insert(k, event.clone()) {
                s.done_bytes -= before.stored_size();
            }
            s.done_bytes += event.stored_size();
            self.retain(&mut s);
        }
        Completion::ready(Ok(()))
    }

    fn reschedule(&self, event: &Event) -> Completion {
        let mut s = self.lock();
        let State { pending, bytes, .. } = &mut *s;
        match pending.get_mut(&key(&event.lane(), event.id)) {
            Some(stored) => {
                *bytes = *bytes - stored.stored_size() + event.stored_size();
                *stored = event.clone();
                Completion::ready(Ok(()))
            }
            None => Completion::ready(Err(SpoolError::NotFound(event.id))),
        }
    }

    fn dead_letter(&self, event: &Event) -> Completion {
        let mut s = self.lock();
        let k = key(&event.lane(), event.id);
        match s.pending.remove(&k) {
            Some(old) => {
                s.bytes = s.bytes - old.stored_size() + event.stored_size();
                s.dead.insert(k, event.clone());
                Completion::ready(Ok(()))
            }
            None => Completion::ready(Err(SpoolError::NotFound(event.id))),
        }
    }

    fn pending(&self) -> Result<Vec<Event>, SpoolError> {
        Ok(self.lock().pending.values().cloned().collect())
    }

    fn pending_schedule(&self, lane: &str) -> Result<Vec<(Uuid, u64)>, SpoolError> {
        Ok(self
            .lock()
            .pending
            .range(key(lane, Uuid::nil())..=key(lane, Uuid::max()))
            .map(|(_, e)| (e.id, e.next_attempt_ms))
            .collect())
    }

    fn dedup_keys(&self) -> Result<Vec<DedupRecord>, SpoolError> {
        let now = now_ms();
        Ok(self
            .lock()
            .dedup
            .range((now.saturating_add(1), [0; 16])..)
            .map(|&(expires_ms, key)| DedupRecord { key, expires_ms })
            .collect())
    }

    fn dead_letters(
        &self,
        lane: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<EventSummary>, SpoolError> {
        use std::ops::Bound;
        let start = match after {
            Some(id) => Bound::Excluded(key(lane, id)),
            None => Bound::Included(key(lane, Uuid::nil())),
        };
        Ok(self
            .lock()
            .dead
            .range((start, Bound::Included(key(lane, Uuid::max()))))
            .take(limit)
            .map(|(_, e)| EventSummary::of(e, DeliveryStatus::Dead))
            .collect())
    }

    fn get_dead(&self, lane: &str, id: Uuid) -> Result<Option<Event>, SpoolError> {
        Ok(self.lock().dead.get(&key(lane, id)).cloned())
    }

    fn revive(&self, lane: &str, id: Uuid) -> Completion<Event> {
        let mut s = self.lock();
        let k = key(lane, id);
        let Some(mut event) = s.dead.remove(&k) else {
            return Completion::ready(Err(SpoolError::NotFound(id)));
        };
        let before = event.stored_size();
        event.replay_now();
        s.bytes = s.bytes - before + event.stored_size();
        s.pending.insert(k, event.clone());
        Completion::ready(Ok(event))
    }

    fn purge(&self, lane: &str, id: Uuid) -> Completion {
        let mut s = self.lock();
        match s.dead.remove(&key(lane, id)) {
            Some(old) => {
                s.bytes -= old.stored_size();
                let k = (id, old.destination_name().to_owned());
                if let Some(done) = s.done.remove(&k) {
                    s.done_bytes -= done.stored_size();
                }
                // Gone for good once no other destination holds it either.
                s.forget_if_unheld(id);
                Completion::ready(Ok(()))
            }
            None => Completion::ready(Err(SpoolError::NotFound(id))),
        }
    }

    fn events(&self, query: &EventQuery) -> SpoolFuture<'_, EventPage> {
        let page = self.query(query);
        Box::pin(async move { Ok(page) })
    }

    fn event(&self, id: Uuid) -> SpoolFuture<'_, Option<EventDetail>> {
        let mut s = self.lock();
        self.retain(&mut s);
        let found = s.detail(id);
        Box::pin(async move { Ok(found) })
    }

    fn replay(
        &self,
        id: Uuid,
        destination: &str,
        job: &str,
    ) -> Completion<Option<(Event, DeliveryStatus)>> {
        let mut s = self.lock();
        self.retain(&mut s);
        let Some(record) = s.records.get(&id) else {
            return Completion::ready(Err(SpoolError::NotFound(id)));
        };
        let Some((_, filtered)) = record.fanout().find(|(d, _)| *d == destination) else {
            return Completion::ready(Err(SpoolError::NotFound(id)));
        };
        if filtered {
            return Completion::ready(Ok(None));
        }
        let k = key(&lane(&record.route, destination), id);
        let done_key = (id, destination.to_owned());
        if s.pending.contains_key(&k) {
            return Completion::ready(Ok(None));
        }
        let last = s
            .dead
            .get(&k)
            .or_else(|| s.done.get(&done_key))
            .and_then(|e| e.history.last())
            .and_then(|a| a.replay.clone());
        if last.as_deref() == Some(job) {
            return Completion::ready(Ok(None));
        }
        let (mut event, was) = if let Some(e) = s.dead.remove(&k) {
            s.bytes -= e.stored_size();
            (e, DeliveryStatus::Dead)
        } else if let Some(e) = s.done.get(&done_key).cloned() {
            (e, DeliveryStatus::Delivered)
        } else {
            return Completion::ready(Err(SpoolError::NotFound(id)));
        };
        event.replay_now();
        event.replay = Some(job.to_owned());
        s.bytes += event.stored_size();
        s.pending.insert(k, event.clone());
        Completion::ready(Ok(Some((event, was))))
    }

    fn stats(&self) -> SpoolStats {
        let s = self.lock();
        SpoolStats {
            pending: s.pending.len() as u64,
            dead: s.dead.len() as u64,
            bytes: s.bytes,
            syncs: 0,
        }
    }

    fn oldest_pending_ms(&self, lane: &str) -> Option<u64> {
        let s = self.lock();
        let (_, e) = s
            .pending
            .range(key(lane, Uuid::nil())..=key(lane, Uuid::max()))
            .next()?;
        id_ms(e.id)
    }

    fn sweep_expired_keys(&self) -> Completion<usize> {
        let now = now_ms();
        let mut s = self.lock();
        let live = s.dedup.split_off(&(now.saturating_add(1), [0; 16]));
        let expired = std::mem::replace(&mut s.dedup, live).len();
        Completion::ready(Ok(expired))
    }

    fn probe(&self) -> Completion {
        Completion::ready(Ok(()))
    }

    fn retained(&self) -> SpoolFuture<'_, Vec<(String, u64)>> {
        let mut s = self.lock();
        self.retain(&mut s);
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for record in s.records.values() {
            *counts.entry(record.route.clone()).or_default() += 1;
        }
        Box::pin(async move { Ok(counts.into_iter().collect()) })
    }

    fn meta_get(&self, key: &str) -> SpoolFuture<'_, Option<Vec<u8>>> {
        let got = self.lock().meta.get(key).cloned();
        Box::pin(async move { Ok(got) })
    }

    fn meta_put(&self, key: &str, value: Option<Vec<u8>>) -> Completion {
        let mut s = self.lock();
        match value {
            Some(v) => s.meta.insert(key.to_owned(), v),
            None => s.meta.remove(key),
        };
        Completion::ready(Ok(()))
    }

    fn meta_list(&self, prefix: &str) -> SpoolFuture<'_, Vec<(String, Vec<u8>)>> {
        let listed = self
            .lock()
            .meta
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Box::pin(async move { Ok(listed) })
    }

    fn meta_add(&self, key: &str, by: i64) -> Completion<i64> {
        let mut s = self.lock();
        let n = s.counters.entry(key.to_owned()).or_default();
        *n = n.saturating_add(by);
        Completion::ready(Ok(*n))
    }

    fn meta_counter(&self, key: &str) -> SpoolFuture<'_, i64> {
        let n = self.lock().counters.get(key).copied().unwrap_or(0);
        Box::pin(async move { Ok(n) })
    }
}

/// Opens the `memory` backend: an empty [`MemorySpool`] and a dedup store of `dedup_capacity`.
/// Delivered events stay `retention`.
pub fn open(
    max_events: u64,
    max_bytes: u64,
    dedup_capacity: usize,
    retention: Duration,
    metrics: &Metrics,
) -> Storage {
    let dedup = MemoryDedupStore::with_metrics(dedup_capacity, metrics);
    Storage {
        backend: "memory",
        spool: Arc::new(MemorySpool::new(max_events, max_bytes).with_retention(retention)),
        dedup: SharedDedupStore::new(dedup.clone()),
        background: vec![Box::pin(dedup.sweep_every(Duration::from_secs(30)))],
    }
}
