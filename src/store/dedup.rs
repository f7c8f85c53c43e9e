//! The dedup side of storage: the [`DedupStore`] trait every backend implements, its type-erased
//! form [`SharedDedupStore`] (what the gateway holds, whatever the backend), and [`Reserved`], the
//! one guard that holds a reservation between step 12 and its end.
//!
//! ```
//! use hookgate::store::{MemoryDedupStore, Reserved, SharedDedupStore, DedupStore};
//! use hookgate::core::{DedupKey, Reservation};
//! use std::time::Duration;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = SharedDedupStore::new(MemoryDedupStore::new(1000));
//! let (key, ttl) = (DedupKey::from_u128(7), Duration::from_secs(60));
//! assert_eq!(store.reserve(key, ttl).await.unwrap(), Reservation::Reserved);
//! let held = Reserved::new(store.clone(), key, ttl);
//! drop(held);                           // dropped before a commit: released
//! assert_eq!(store.reserve(key, ttl).await.unwrap(), Reservation::Reserved);
//! Reserved::new(store.clone(), key, ttl).commit();
//! assert_eq!(store.reserve(key, ttl).await.unwrap(), Reservation::Duplicate);
//! # });
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::event::now_ms;
use super::spool::{Spool, SpoolError};
use crate::core::{DedupKey, Outcome, Reservation};

/// A dedup store failed (e.g. a network store is unreachable), or has no room for the key.
#[derive(Debug, thiserror::Error)]
#[error("dedup store: {message}")]
pub struct StoreError {
    message: String,
    full: bool,
}

impl StoreError {
    /// The store failed: 503 `dedup_unavailable`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            full: false,
        }
    }

    /// The store answers, but has no room for the key (Redis out of memory or unable to
    /// persist): 503 `spool_full`, like the append it would have preceded.
    pub fn full(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            full: true,
        }
    }
}

impl crate::core::outcome::StoreFailure for StoreError {
    fn is_full(&self) -> bool {
        self.full
    }
}

/// Remembers which events were accepted, for a TTL.
///
/// `reserve` is asynchronous so network stores fit; `commit` and `release` are fire-and-forget
/// (they may be called from `Drop`): a lost `commit` can only let a later duplicate through
/// (at-least-once holds), and a lost `release` only delays a retry until the reservation's TTL.
pub trait DedupStore: Send + Sync + 'static {
    /// The future `reserve` returns.
    type ReserveFuture: Future<Output = Result<Reservation, StoreError>> + Send + 'static;

    /// Reserves `key` for `ttl` unless it is committed or reserved already.
    fn reserve(&self, key: DedupKey, ttl: Duration) -> Self::ReserveFuture;

    /// Marks a reserved key as accepted; it answers `Duplicate` for `ttl` from now.
    fn commit(&self, key: DedupKey, ttl: Duration);

    /// Frees a reserved key so the sender's retry is accepted.
    fn release(&self, key: DedupKey);
}

impl<T: DedupStore> DedupStore for Arc<T> {
    type ReserveFuture = T::ReserveFuture;

    fn reserve(&self, key: DedupKey, ttl: Duration) -> Self::ReserveFuture {
        (**self).reserve(key, ttl)
    }

    fn commit(&self, key: DedupKey, ttl: Duration) {
        (**self).commit(key, ttl)
    }

    fn release(&self, key: DedupKey) {
        (**self).release(key)
    }
}

/// A boxed [`DedupStore::reserve`] future.
pub type BoxReserveFuture = Pin<Box<dyn Future<Output = Result<Reservation, StoreError>> + Send>>;

/// [`DedupStore`] in object-safe form; every `DedupStore` is one.
trait ErasedDedupStore: Send + Sync + 'static {
    fn reserve_boxed(&self, key: DedupKey, ttl: Duration) -> BoxReserveFuture;
    fn commit(&self, key: DedupKey, ttl: Duration);
    fn release(&self, key: DedupKey);
}

impl<T: DedupStore> ErasedDedupStore for T {
    fn reserve_boxed(&self, key: DedupKey, ttl: Duration) -> BoxReserveFuture {
        Box::pin(DedupStore::reserve(self, key, ttl))
    }

    fn commit(&self, key: DedupKey, ttl: Duration) {
        DedupStore::commit(self, key, ttl)
    }

    fn release(&self, key: DedupKey) {
        DedupStore::release(self, key)
    }
}

/// Any [`DedupStore`] behind one type: what the gateway holds whichever backend the config chose.
/// Cheap to clone; `reserve` costs one box per call.
#[derive(Clone)]
pub struct SharedDedupStore(Arc<dyn ErasedDedupStore>);

impl SharedDedupStore {
    /// Wraps `store`.
    pub fn new(store: impl DedupStore) -> Self {
        Self(Arc::new(store))
    }
}

impl std::fmt::Debug for SharedDedupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDedupStore").finish_non_exhaustive()
    }
}

impl DedupStore for SharedDedupStore {
    type ReserveFuture = BoxReserveFuture;

    fn reserve(&self, key: DedupKey, ttl: Duration) -> BoxReserveFuture {
        self.0.reserve_boxed(key, ttl)
    }

    fn commit(&self, key: DedupKey, ttl: Duration) {
        self.0.commit(key, ttl)
    }

    fn release(&self, key: DedupKey) {
        self.0.release(key)
    }
}

/// A reserved dedup key (step 12 answered `Reserved`), held until the request's end decides it:
/// [`commit`](Self::commit) once the event is accepted, [`release`](Self::release) when it is
/// not. If neither is called, the key is released when the last clone drops — a cancelled
/// request never blocks the sender's retry — so a clone handed to the spool keeps the key held
/// while the append it rides with finishes, whatever happens to the request (DESIGN §3).
/// The first of `commit` and `release` wins; later calls do nothing.
#[derive(Clone)]
pub struct Reserved(Arc<Held>);

struct Held {
    store: SharedDedupStore,
    key: DedupKey,
    ttl: Duration,
    settled: AtomicBool,
    /// A spooling service (`FastAck`) took it over: the request's own end no longer decides it.
    handed_over: AtomicBool,
}

impl Reserved {
    /// Holds `key`, just reserved in `store` for `ttl`.
    pub fn new(store: SharedDedupStore, key: DedupKey, ttl: Duration) -> Self {
        Self(Arc::new(Held {
            store,
            key,
            ttl,
            settled: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
        }))
    }

    /// Step 12 for both faces: the core's decision on a store's `answer` for `key`
    /// ([`outcome::reserved`](crate::core::outcome::reserved)), and the guard when the key is
    /// now reserved; otherwise the outcome to answer.
    pub fn hold(
        store: &SharedDedupStore,
        route: &str,
        key: DedupKey,
        ttl: Duration,
        answer: Result<Reservation, StoreError>,
    ) -> Result<Self, Outcome> {
        match crate::core::outcome::reserved(route, answer) {
            None => Ok(Self::new(store.clone(), key, ttl)),
            Some(outcome) => Err(outcome),
        }
    }

    /// Marks the reservation as taken over by whoever settles it once its event's append ends
    /// (`FastAck`): the request's own answer then no longer commits or releases it.
    pub fn hand_over(&self) {
        self.0.handed_over.store(true, Ordering::Release);
    }

    /// Whether [`hand_over`](Self::hand_over) was called.
    pub fn is_handed_over(&self) -> bool {
        self.0.handed_over.load(Ordering::Acquire)
    }

    /// The key.
    pub fn key(&self) -> DedupKey {
        self.0.key
    }

    /// How long the key answers `duplicate` once committed.
    pub fn ttl(&self) -> Duration {
        self.0.ttl
    }

    /// When a key committed now stops answering `duplicate`, in Unix milliseconds.
    pub fn expires_ms(&self) -> u64 {
        let ttl = u64::try_from(self.0.ttl.as_millis()).unwrap_or(u64::MAX);
        now_ms().saturating_add(ttl)
    }

    /// The event was accepted: the key answers `duplicate` for its TTL.
    pub fn commit(&self) {
        if !self.0.settled.swap(true, Ordering::AcqRel) {
            DedupStore::commit(&self.0.store, self.0.key, self.0.ttl);
        }
    }

    /// The event was not accepted: the sender's retry is.
    pub fn release(&self) {
        if !self.0.settled.swap(true, Ordering::AcqRel) {
            DedupStore::release(&self.0.store, self.0.key);
        }
    }

    /// Commits on `accepted`, releases otherwise.
    pub fn settle(&self, accepted: bool) {
        if accepted {
            self.commit()
        } else {
            self.release()
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !*self.settled.get_mut() {
            DedupStore::release(&self.store, self.key);
        }
    }
}

impl std::fmt::Debug for Reserved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reserved")
            .field("key", &self.0.key)
            .field("ttl", &self.0.ttl)
            .finish()
    }
}

/// Commits into `store` every dedup key persisted in `spool` that is still inside its TTL, for
/// the rest of it: events accepted before a restart answer `duplicate` again. Returns how many.
pub fn refill_dedup<D: DedupStore + ?Sized>(
    spool: &dyn Spool,
    store: &D,
) -> Result<usize, SpoolError> {
    let now = now_ms();
    let records = spool.dedup_keys()?;
    for record in &records {
        let left = Duration::from_millis(record.expires_ms.saturating_sub(now));
        store.commit(DedupKey::from_bytes(record.key), left);
    }
    Ok(records.len())
}
