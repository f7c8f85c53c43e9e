//! Storage behind the pipeline (DESIGN §5): the [`Spool`] and [`DedupStore`] traits, the
//! [`Event`] record, the one reservation guard [`Reserved`], and the backends, each one module:
//!
//! | backend | module | spool | dedup |
//! | --- | --- | --- | --- |
//! | `embedded` (default) | [`embedded`] | fjall under the data dir, group commit | in memory, refilled from the spool |
//! | `memory` | [`memory`] | in memory, nothing on disk | in memory |
//! | `redis` (feature `redis`) | `redis` | Redis Streams, a consumer group per route | `SET NX PX` in Redis |
//!
//! A backend opens into a [`Storage`]: what the gateway holds, as trait objects, whichever the
//! config chose. Every backend passes the same [`conformance`] suite.
//!
//! ```
//! use hookgate::store::{DedupStore, MemoryDedupStore};
//! use hookgate::core::{DedupKey, Reservation};
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
use std::pin::Pin;
use std::sync::Arc;

pub mod conformance;
mod dedup;
pub mod embedded;
mod event;
pub mod history;
pub mod memory;
#[cfg(any(feature = "embedded", feature = "redis"))]
pub(crate) mod record;
#[cfg(feature = "redis")]
pub mod redis;
mod spool;

pub use crate::core::Reservation;
pub use dedup::{
    refill_dedup, BoxReserveFuture, DedupStore, Reserved, SharedDedupStore, StoreError,
};
pub use embedded::MemoryDedupStore;
#[cfg(feature = "embedded")]
pub use embedded::{EmbeddedSpool, SpoolConfig};
pub use event::{
    id_ms, lane, now_ms, split_lane, AttemptKind, AttemptRecord, DedupRecord, Event, Fanout,
    DEFAULT_DESTINATION, HISTORY_LEN, LANE_SEPARATOR, OUTCOME_MAX,
};
pub use history::{
    DeliveryStatus, DestinationState, EventDetail, EventFilter, EventPage, EventQuery,
};
pub use spool::{
    Completion, Durability, EventSummary, RouteGauges, SharedSpool, Spool, SpoolError, SpoolFuture,
    SpoolStats, StoreHealth,
};

/// A task a backend needs run for as long as it is used (e.g. a sweeper of expired keys).
pub type Background = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How often [`watch_health`] reads the store's health.
const HEALTH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Keeps the store's gauges current from [`Spool::health`] (`hookgate_store_writable`,
/// `hookgate_store_free_bytes`, `hookgate_store_min_free_bytes`,
/// `hookgate_store_recoveries_total`), every 250 ms, and logs each time new events start or stop
/// being refused. Runs until dropped; a backend puts it in [`Storage::background`].
pub fn watch_health(spool: Arc<dyn Spool>, metrics: crate::metrics::StoreMetrics) -> Background {
    Box::pin(async move {
        let mut tick = tokio::time::interval(HEALTH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refusing: Option<String> = None;
        let (mut reopened, mut rebuilt) = (0u64, 0u64);
        loop {
            tick.tick().await;
            let h = spool.health();
            metrics.writable.set(i64::from(h.refusing.is_none()));
            let gauge = |v: Option<u64>| v.map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX));
            metrics.free_bytes.set(gauge(h.free_bytes));
            metrics.min_free_bytes.set(gauge(h.min_free_bytes));
            metrics.headroom_bytes.set(h.headroom_bytes.unwrap_or(0));
            let recoveries = &metrics.recoveries;
            recoveries
                .with_label_values(&["reopen"])
                .inc_by(h.reopened.saturating_sub(reopened));
            recoveries
                .with_label_values(&["rebuild"])
                .inc_by(h.rebuilt.saturating_sub(rebuilt));
            (reopened, rebuilt) = (h.reopened, h.rebuilt);
            match (&refusing, &h.refusing) {
                (None, Some(why)) => {
                    tracing::error!(why = %why, free_bytes = h.free_bytes, "the store refuses new events: they get 503 until it has room again")
                }
                (Some(_), None) => {
                    tracing::info!(
                        free_bytes = h.free_bytes,
                        "the store takes new events again"
                    )
                }
                _ => {}
            }
            refusing = h.refusing;
        }
    })
}

/// An opened backend: the spool and the dedup store, as trait objects.
pub struct Storage {
    /// The backend's name, as configured (`embedded`, `memory`).
    pub backend: &'static str,
    /// Where events wait for delivery.
    pub spool: Arc<dyn Spool>,
    /// Which keys were accepted.
    pub dedup: SharedDedupStore,
    /// Tasks to run on the runtime while the storage is used.
    pub background: Vec<Background>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("backend", &self.backend)
            .field("stats", &self.spool.stats())
            .finish_non_exhaustive()
    }
}
