//! Storage behind the pipeline: the [`DedupStore`] trait and its in-memory implementation, and
//! the [`Spool`] trait and the embedded spool.
//!
//! ```
//! use hookgate::store::{DedupStore, MemoryDedupStore, Reservation};
//! use hookgate::core::DedupKey;
//! use std::time::Duration;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = MemoryDedupStore::new(1000);
//! let key = DedupKey::from_u128(7);
//! let ttl = Duration::from_secs(60);
//! assert_eq!(store.reserve(key, ttl).await.unwrap(), Reservation::Reserved);
//! assert_eq!(store.reserve(key, ttl).await.unwrap(), Reservation::InFlight);
//! store.commit(key, ttl);
//! assert_eq!(store.reserve(key, ttl).await.unwrap(), Reservation::Duplicate);
//! # });
//! ```

use std::future::Future;
use std::time::Duration;

use crate::core::DedupKey;

mod memory;
mod spool;

pub use memory::MemoryDedupStore;
pub use spool::{
    now_ms, AttemptRecord, Completion, DedupRecord, Durability, EmbeddedSpool, Event, Spool,
    SpoolConfig, SpoolError, SpoolStats, HISTORY_LEN,
};

/// The answer to [`DedupStore::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The key was free and is now reserved by the caller, who must `commit` or `release` it.
    Reserved,
    /// The key was committed within its TTL: the event was already accepted.
    Duplicate,
    /// Another request holds the reservation right now.
    InFlight,
}

/// A dedup store failed (e.g. a network store is unreachable).
#[derive(Debug, thiserror::Error)]
#[error("dedup store: {0}")]
pub struct StoreError(pub String);

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

impl<T: DedupStore> DedupStore for std::sync::Arc<T> {
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
