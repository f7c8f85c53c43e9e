//! The in-memory dedup store: a `dashmap` of 128-bit keys with a second-resolution expiry,
//! bounded by a FIFO ring of insertion order (the oldest key is evicted first when full).
//!
//! Memory: each entry is 20 bytes in the map (16-byte key, 4-byte expiry with the commit flag in
//! its top bit) plus 16 bytes in the ring, all allocated at start, so the store never grows. The
//! map's table is a power of two of slots sized to stay at most half full (a fuller table under
//! churn would double: its deleted slots are reclaimed in place only below half), so a capacity
//! just under 458,752 × 2^k uses it best: 450,000 keys take about 27 MiB, 900,000 about 55 MiB
//! (`examples/dedup_memory.rs` measures).
//!
//! A key evicted before its TTL shortens the dedup window: size the capacity for the rate of
//! accepted events times the TTL (100 events/s for 24 h is 8.64 million keys). Evicting a live key
//! is logged (once a minute at most) and counted in `hookgate_dedup_evictions_total`. A
//! reservation still in flight is never evicted: its request would lose its guard against a
//! concurrent duplicate; the store may then briefly hold more than its capacity.

use std::future::{ready, Ready};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use prometheus::{IntCounter, IntGauge};

use crate::core::{DedupKey, Reservation};
use crate::metrics::Metrics;
use crate::store::{DedupStore, StoreError};

const COMMITTED: u32 = 1 << 31;
const EXPIRY_MASK: u32 = COMMITTED - 1;

/// An in-memory [`DedupStore`]. Clones share one store.
#[derive(Clone)]
pub struct MemoryDedupStore {
    inner: Arc<Inner>,
}

struct Inner {
    map: DashMap<DedupKey, u32, BuildHasherDefault<KeyHasher>>,
    shards: usize,
    ring: Mutex<Ring>,
    epoch: Instant,
    entries: IntGauge,
    evictions: IntCounter,
    /// When a live key's eviction was last logged (store seconds, `u32::MAX`: never).
    warned: AtomicU32,
}

/// The default capacity, for both faces: 450,000 keys, about 27 MiB (a table of 2^20 slots,
/// which holds them at most half full; see the module docs).
pub const DEFAULT_DEDUP_CAPACITY: usize = 450_000;

/// The longest a reservation is held without a commit: longer than any request (body timeout
/// plus a `proxy` forward's timeout), far shorter than a dedup window.
pub const IN_FLIGHT_TTL: Duration = Duration::from_secs(300);

/// Keys per map shard, about: a sweep holds one shard's lock at a time, for this many entries
/// (a few hundred microseconds; more, smaller shards would cost memory in table slack).
const KEYS_PER_SHARD: usize = 16 * 1024;

/// Insertion order, `capacity` slots. A slot whose key was released or swept is stale: evicting
/// it removes nothing. A key re-reserved after release holds two slots and may be evicted from the
/// older one, which is at most one ring-turn early.
struct Ring {
    slots: Vec<DedupKey>,
    /// Slots written so far (all of them once the ring has turned).
    filled: usize,
    head: usize,
    capacity: usize,
}

impl Ring {
    /// Records `key`; returns the key pushed out when the ring is full.
    fn push(&mut self, key: DedupKey) -> Option<DedupKey> {
        if self.filled < self.capacity {
            self.slots[self.filled] = key;
            self.filled += 1;
            return None;
        }
        let old = std::mem::replace(&mut self.slots[self.head], key);
        self.head = (self.head + 1) % self.capacity;
        Some(old)
    }
}

/// Keys are already uniform hashes: pass the 64-bit fold `DedupKey::hash` writes straight through.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than DedupKey is hashed; fold the bytes in.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(b))
                .rotate_left(29)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl std::fmt::Debug for MemoryDedupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDedupStore")
            .field("entries", &self.inner.map.len())
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl MemoryDedupStore {
    /// A store holding at most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let shards = (capacity / KEYS_PER_SHARD)
            .next_power_of_two()
            .clamp(16, 1024);
        Self {
            inner: Arc::new(Inner {
                // The whole bound is taken at start, table and ring: the store never grows, so
                // the process's memory is flat from its first minute (the table's pages are
                // resident once a few keys per page have landed on them at random), and no
                // doubling of a shard's table briefly holds both copies under its lock.
                // Twice the keys: under churn (an eviction and an insert for each new key) a
                // table's deleted slots pile up until it rehashes, in place only while it is at
                // most half full; fuller, it would double, once the store first filled.
                map: DashMap::with_capacity_and_hasher_and_shard_amount(
                    capacity.saturating_mul(2),
                    BuildHasherDefault::default(),
                    shards,
                ),
                shards,
                ring: Mutex::new(Ring {
                    slots: vec![DedupKey::from_u128(0); capacity],
                    filled: 0,
                    head: 0,
                    capacity,
                }),
                epoch: Instant::now(),
                entries: IntGauge::new("hookgate_dedup_entries", "keys in the dedup store")
                    .expect("static metric name and help are valid"),
                evictions: IntCounter::new(
                    "hookgate_dedup_evictions_total",
                    "keys evicted because the dedup store was full",
                )
                .expect("static metric name and help are valid"),
                warned: AtomicU32::new(u32::MAX),
            }),
        }
    }

    /// A store reporting into `metrics` (`hookgate_dedup_entries`, `hookgate_dedup_evictions_total`).
    pub fn with_metrics(capacity: usize, metrics: &Metrics) -> Self {
        let mut store = Self::new(capacity);
        let inner = Arc::get_mut(&mut store.inner).expect("a store just built has one owner");
        inner.entries = metrics.dedup_entries().clone();
        inner.evictions = metrics.dedup_evictions().clone();
        store
    }

    /// The capacity bound.
    pub fn capacity(&self) -> usize {
        self.lock_ring().capacity
    }

    /// Keys currently held (reserved or committed, including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.inner.map.is_empty()
    }

    /// Keys evicted so far because the store was full.
    pub fn evictions(&self) -> u64 {
        self.inner.evictions.get()
    }

    /// Removes expired keys; returns how many. The background sweeper calls this, on a blocking
    /// thread: the walk locks one shard (a few thousand keys) at a time, never the whole map.
    pub fn sweep(&self) -> usize {
        let now = self.now();
        let mut removed = 0usize;
        self.inner.map.retain(|_, v| {
            let keep = *v & EXPIRY_MASK > now;
            removed += usize::from(!keep);
            keep
        });
        self.inner.entries.sub(removed as i64);
        removed
    }

    /// Sweeps expired keys every `interval` on the current tokio runtime, until the store is
    /// dropped. Panics outside a tokio runtime (as `tokio::spawn` does).
    pub fn spawn_sweeper(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.sweep_every(interval))
    }

    /// The sweeper as a future, for the caller to run: it ends when the store is dropped.
    pub fn sweep_every(
        &self,
        interval: Duration,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                // Off the runtime's threads: a million keys take tens of milliseconds to walk.
                let _ =
                    tokio::task::spawn_blocking(move || MemoryDedupStore { inner }.sweep()).await;
            }
        }
    }

    fn lock_ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        // The ring holds no invariant a panicking holder could break half-way: keep using it.
        self.inner.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seconds since the store's epoch. TTLs have one-second resolution: an entry lives between
    /// `ttl` and `ttl + 1s`.
    #[inline]
    fn now(&self) -> u32 {
        // u32 seconds cover 68 years of uptime below the flag bit.
        (self.inner.epoch.elapsed().as_secs() as u32) & EXPIRY_MASK
    }

    #[inline]
    fn expiry(now: u32, ttl: Duration) -> u32 {
        let ttl = ttl.as_secs().max(1).min(u64::from(EXPIRY_MASK) / 2) as u32;
        (now + ttl).min(EXPIRY_MASK)
    }

    /// Inserts or overwrites `key`; a new key takes a ring slot, which may evict the oldest.
    fn set(&self, key: DedupKey, value: u32, now: u32) {
        let fresh = self.inner.map.insert(key, value).is_none();
        if fresh {
            self.admit(key, now);
        }
    }

    /// Counts a new key and records it in the ring. Called with no map lock held: the evicted key
    /// may live in the same shard.
    fn admit(&self, key: DedupKey, now: u32) {
        self.inner.entries.inc();
        let evicted = self.lock_ring().push(key);
        if let Some(old) = evicted {
            // A reservation in flight stays (it loses its ring slot; release or the sweep
            // removes it later): only committed or expired keys are evicted.
            let evictable = |_: &DedupKey, v: &u32| *v & COMMITTED != 0 || *v & EXPIRY_MASK <= now;
            if let Some((_, v)) = self.inner.map.remove_if(&old, evictable) {
                self.inner.entries.dec();
                if v & EXPIRY_MASK > now {
                    self.inner.evictions.inc();
                    self.warn_eviction(now);
                }
            }
        }
    }

    /// Logs a live key's eviction, once a minute at most.
    fn warn_eviction(&self, now: u32) {
        let last = self.inner.warned.load(Ordering::Relaxed);
        if (last == u32::MAX || now.saturating_sub(last) >= 60)
            && self
                .inner
                .warned
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                capacity = self.capacity(),
                evicted = self.inner.evictions.get(),
                "dedup store full: keys are evicted before their TTL, shortening the dedup window; raise dedup_capacity to the accepted rate times the TTL"
            );
        }
    }

    /// The number of map shards (each locked on its own).
    pub fn shards(&self) -> usize {
        self.inner.shards
    }

    fn reserve_now(&self, key: DedupKey, ttl: Duration) -> Reservation {
        use dashmap::mapref::entry::Entry;
        let now = self.now();
        // A reservation lasts at most IN_FLIGHT_TTL: one whose release was lost (a request
        // future dropped before it was polled, a crash of a network store's client) frees itself
        // in minutes, not after the whole dedup window. `commit` sets the full TTL.
        let expiry = Self::expiry(now, ttl.min(IN_FLIGHT_TTL));
        match self.inner.map.entry(key) {
            Entry::Occupied(mut e) => {
                let v = *e.get();
                return if v & EXPIRY_MASK <= now {
                    // Expired but not swept yet: the key is free again, and keeps its ring slot.
                    e.insert(expiry);
                    Reservation::Reserved
                } else if v & COMMITTED != 0 {
                    Reservation::Duplicate
                } else {
                    Reservation::InFlight
                };
            }
            // `insert` hands back a guard dropped at the `;`: the shard is unlocked before
            // `admit`, whose eviction may touch the same shard.
            Entry::Vacant(e) => {
                e.insert(expiry);
            }
        }
        self.admit(key, now);
        Reservation::Reserved
    }
}

impl DedupStore for MemoryDedupStore {
    type ReserveFuture = Ready<Result<Reservation, StoreError>>;

    #[inline]
    fn reserve(&self, key: DedupKey, ttl: Duration) -> Self::ReserveFuture {
        ready(Ok(self.reserve_now(key, ttl)))
    }

    fn commit(&self, key: DedupKey, ttl: Duration) {
        let now = self.now();
        self.set(key, Self::expiry(now, ttl) | COMMITTED, now);
    }

    fn release(&self, key: DedupKey) {
        // Only an uncommitted reservation is released; a committed key stays a duplicate.
        if self
            .inner
            .map
            .remove_if(&key, |_, v| *v & COMMITTED == 0)
            .is_some()
        {
            self.inner.entries.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u128) -> DedupKey {
        DedupKey::from_u128(n)
    }

    fn reserve(s: &MemoryDedupStore, n: u128) -> Reservation {
        s.reserve_now(k(n), Duration::from_secs(60))
    }

    #[test]
    fn lifecycle() {
        let s = MemoryDedupStore::new(10);
        let ttl = Duration::from_secs(60);
        assert_eq!(reserve(&s, 1), Reservation::Reserved);
        assert_eq!(reserve(&s, 1), Reservation::InFlight);
        s.release(k(1));
        assert_eq!(reserve(&s, 1), Reservation::Reserved);
        s.commit(k(1), ttl);
        assert_eq!(reserve(&s, 1), Reservation::Duplicate);
        s.release(k(1));
        assert_eq!(
            reserve(&s, 1),
            Reservation::Duplicate,
            "release never frees a committed key"
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s.inner.entries.get(), 1);
    }

    #[test]
    fn capacity_evicts_oldest_first() {
        let s = MemoryDedupStore::new(3);
        for n in 1..=3 {
            assert_eq!(reserve(&s, n), Reservation::Reserved);
            s.commit(k(n), Duration::from_secs(60));
        }
        assert_eq!(reserve(&s, 4), Reservation::Reserved);
        assert_eq!(s.len(), 3);
        assert_eq!(s.evictions(), 1);
        assert_eq!(
            reserve(&s, 1),
            Reservation::Reserved,
            "1 was the oldest, evicted"
        );
        assert_eq!(reserve(&s, 3), Reservation::Duplicate);
        assert!(s.len() <= 3);
        assert_eq!(s.inner.entries.get() as usize, s.len());
    }

    #[test]
    fn expired_keys_are_free_and_swept() {
        let s = MemoryDedupStore::new(10);
        s.inner.map.insert(k(9), COMMITTED); // expiry 0: expired at the epoch
        s.inner.entries.inc();
        s.inner.map.insert(k(8), 1000);
        s.inner.entries.inc();
        assert_eq!(s.sweep(), 1);
        assert_eq!(s.len(), 1);
        assert_eq!(s.inner.entries.get(), 1);
        s.inner.map.insert(k(7), COMMITTED);
        assert_eq!(reserve(&s, 7), Reservation::Reserved);
    }

    #[tokio::test]
    async fn sweeper_removes_expired_keys_and_stops_with_the_store() {
        let s = MemoryDedupStore::new(10);
        s.commit(k(1), Duration::from_secs(1));
        let task = s.spawn_sweeper(Duration::from_millis(100));
        // TTLs have one-second resolution: gone after at most two seconds plus one sweep.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !s.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(s.is_empty(), "the sweeper removed the expired key");
        assert_eq!(s.inner.entries.get(), 0);
        drop(s);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn concurrent_reservations_admit_one() {
        let s = MemoryDedupStore::new(1000);
        let winners: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        (0..100)
                            .filter(|_| reserve(&s, 42) == Reservation::Reserved)
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(winners, 1);
    }

    #[test]
    fn a_full_store_never_evicts_a_reservation_in_flight() {
        let s = MemoryDedupStore::new(2);
        assert_eq!(reserve(&s, 1), Reservation::Reserved); // in flight, never committed
        assert_eq!(reserve(&s, 2), Reservation::Reserved);
        s.commit(k(2), Duration::from_secs(60));
        assert_eq!(reserve(&s, 3), Reservation::Reserved);
        assert_eq!(
            reserve(&s, 1),
            Reservation::InFlight,
            "the first request still holds its key"
        );
        s.release(k(1));
        assert_eq!(reserve(&s, 1), Reservation::Reserved);
    }

    #[test]
    fn a_sweep_locks_a_few_thousand_keys_at_a_time() {
        // dashmap's default on two cores is 8 shards: 125,000 keys under one lock.
        let s = MemoryDedupStore::new(1_000_000);
        assert!(
            1_000_000 / s.shards() <= KEYS_PER_SHARD,
            "{} shards",
            s.shards()
        );
    }

    #[test]
    fn a_reservation_never_settled_frees_itself_long_before_the_dedup_window() {
        let s = MemoryDedupStore::new(10);
        assert_eq!(
            s.reserve_now(k(1), Duration::from_secs(24 * 3600)),
            Reservation::Reserved
        );
        let held = *s.inner.map.get(&k(1)).unwrap() & EXPIRY_MASK;
        assert!(
            held <= s.now() + IN_FLIGHT_TTL.as_secs() as u32,
            "held until {held}"
        );
        s.commit(k(1), Duration::from_secs(24 * 3600));
        let kept = *s.inner.map.get(&k(1)).unwrap() & EXPIRY_MASK;
        assert!(
            kept >= s.now() + 24 * 3600,
            "committed for the whole window"
        );
    }
}
