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
use super::event::{id_ms, now_ms, DedupRecord, Event};
use super::spool::{Completion, EventSummary, Spool, SpoolError, SpoolStats};
use super::{SharedDedupStore, Storage};
use crate::metrics::Metrics;

type Key = (String, Uuid);

#[derive(Default)]
struct State {
    pending: BTreeMap<Key, Event>,
    dead: BTreeMap<Key, Event>,
    /// Expiry, then key: the expired ones sort first.
    dedup: BTreeSet<(u64, [u8; 16])>,
    bytes: u64,
}

/// A [`Spool`] in memory, bounded like the embedded one; every write is done when it returns.
pub struct MemorySpool {
    state: Mutex<State>,
    max_events: u64,
    max_bytes: u64,
}

impl std::fmt::Debug for MemorySpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySpool")
            .field("stats", &self.stats())
            .finish()
    }
}

fn key(route: &str, id: Uuid) -> Key {
    (route.to_owned(), id)
}

impl MemorySpool {
    /// A spool holding at most `max_events` events and `max_bytes` bytes (approximate: the
    /// events' [`stored_size`](Event::stored_size)).
    pub fn new(max_events: u64, max_bytes: u64) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_events,
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every method leaves the state consistent between statements.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Spool for MemorySpool {
    fn append(&self, event: &Event) -> Completion {
        let mut s = self.lock();
        let held = (s.pending.len() + s.dead.len()) as u64;
        let size = event.stored_size();
        if held >= self.max_events {
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
        s.pending.insert(key(&event.route, event.id), event.clone());
        Completion::ready(Ok(()))
    }

    fn get(&self, route: &str, id: Uuid) -> Result<Option<Event>, SpoolError> {
        Ok(self.lock().pending.get(&key(route, id)).cloned())
    }

    fn delivered(&self, event: &Event) -> Completion {
        let mut s = self.lock();
        if let Some(old) = s.pending.remove(&key(&event.route, event.id)) {
            s.bytes -= old.stored_size();
        }
        Completion::ready(Ok(()))
    }

    fn reschedule(&self, event: &Event) -> Completion {
        let mut s = self.lock();
        let State { pending, bytes, .. } = &mut *s;
        match pending.get_mut(&key(&event.route, event.id)) {
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
        let k = key(&event.route, event.id);
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

    fn pending_schedule(&self, route: &str) -> Result<Vec<(Uuid, u64)>, SpoolError> {
        Ok(self
            .lock()
            .pending
            .range(key(route, Uuid::nil())..=key(route, Uuid::max()))
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
        route: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<EventSummary>, SpoolError> {
        use std::ops::Bound;
        let start = match after {
            Some(id) => Bound::Excluded(key(route, id)),
            None => Bound::Included(key(route, Uuid::nil())),
        };
        Ok(self
            .lock()
            .dead
            .range((start, Bound::Included(key(route, Uuid::max()))))
            .take(limit)
            .map(|(_, e)| EventSummary::from(e))
            .collect())
    }

    fn get_dead(&self, route: &str, id: Uuid) -> Result<Option<Event>, SpoolError> {
        Ok(self.lock().dead.get(&key(route, id)).cloned())
    }

    fn revive(&self, route: &str, id: Uuid) -> Completion<Event> {
        let mut s = self.lock();
        let k = key(route, id);
        let Some(mut event) = s.dead.remove(&k) else {
            return Completion::ready(Err(SpoolError::NotFound(id)));
        };
        let before = event.stored_size();
        event.replay_now();
        s.bytes = s.bytes - before + event.stored_size();
        s.pending.insert(k, event.clone());
        Completion::ready(Ok(event))
    }

    fn purge(&self, route: &str, id: Uuid) -> Completion {
        let mut s = self.lock();
        match s.dead.remove(&key(route, id)) {
            Some(old) => {
                s.bytes -= old.stored_size();
                Completion::ready(Ok(()))
            }
            None => Completion::ready(Err(SpoolError::NotFound(id))),
        }
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

    fn oldest_pending_ms(&self, route: &str) -> Option<u64> {
        let s = self.lock();
        let (_, e) = s
            .pending
            .range(key(route, Uuid::nil())..=key(route, Uuid::max()))
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
}

/// Opens the `memory` backend: an empty [`MemorySpool`] and a dedup store of `dedup_capacity`.
pub fn open(max_events: u64, max_bytes: u64, dedup_capacity: usize, metrics: &Metrics) -> Storage {
    let dedup = MemoryDedupStore::with_metrics(dedup_capacity, metrics);
    Storage {
        backend: "memory",
        spool: Arc::new(MemorySpool::new(max_events, max_bytes)),
        dedup: SharedDedupStore::new(dedup.clone()),
        background: vec![Box::pin(dedup.sweep_every(Duration::from_secs(30)))],
    }
}
