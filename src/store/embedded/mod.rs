//! The embedded backend (one machine, no dependency): the spool in fjall under the data
//! directory with group commit, the dedup store in memory, refilled from the spool at start.
//!
//! - [`EmbeddedSpool`] (`spool.rs`): the [`Spool`](crate::store::Spool) on fjall;
//!   `writer.rs` is its group-commit thread, `keys.rs` its record layout, `disk.rs` its room on
//!   disk, `engine.rs` the fjall database it can reopen, copy and swap, and `recovery.rs` what
//!   the writer does after a failed write or when the engine's garbage fills the disk;
//!   `retention.rs` drops the history past `retention` by whole tables.
//! - [`MemoryDedupStore`] (`dedup.rs`): a bounded `dashmap` of key hashes with expiry.
//!
//! ```
//! use hookgate::store::{embedded, Durability, SpoolConfig};
//! use hookgate::metrics::Metrics;
//!
//! let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
//! let storage = embedded::open(SpoolConfig::new("", Durability::Memory), 1000, &metrics).unwrap();
//! assert_eq!(storage.spool.stats().pending, 0);
//! ```

mod dedup;
#[cfg(feature = "embedded")]
mod disk;
#[cfg(feature = "embedded")]
mod engine;
#[cfg(feature = "embedded")]
mod keys;
#[cfg(feature = "embedded")]
mod recovery;
#[cfg(feature = "embedded")]
mod retention;
#[cfg(feature = "embedded")]
mod spool;
#[cfg(feature = "embedded")]
mod writer;

pub use dedup::{MemoryDedupStore, DEFAULT_DEDUP_CAPACITY, IN_FLIGHT_TTL};
#[cfg(feature = "embedded")]
pub use disk::{DEFAULT_MIN_FREE, DEFAULT_MIN_FREE_PERCENT};
#[cfg(feature = "embedded")]
pub use spool::{
    EmbeddedSpool, SpoolConfig, DEFAULT_RETENTION, DEFAULT_RETENTION_MAX_SIZE, MIN_MEMORY,
};

#[cfg(feature = "embedded")]
pub use opening::open;

#[cfg(feature = "embedded")]
mod opening {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{EmbeddedSpool, MemoryDedupStore, SpoolConfig};
    use crate::metrics::Metrics;
    use crate::store::{refill_dedup, watch_health, SharedDedupStore, SpoolError, Storage};

    /// How often the in-memory dedup store drops expired keys.
    const DEDUP_SWEEP_EVERY: Duration = Duration::from_secs(30);

    /// Opens the embedded backend: the spool of `config`, and a dedup store of `dedup_capacity`
    /// keys refilled with the keys the spool persisted. Its sweeper is in [`Storage::background`].
    pub fn open(
        config: SpoolConfig,
        dedup_capacity: usize,
        metrics: &Metrics,
    ) -> Result<Storage, SpoolError> {
        let spool = EmbeddedSpool::open(config)?;
        let dedup = MemoryDedupStore::with_metrics(dedup_capacity, metrics);
        let refilled = refill_dedup(&spool, &dedup)?;
        tracing::info!(keys = refilled, "dedup keys restored from the spool");
        let spool: Arc<dyn crate::store::Spool> = Arc::new(spool);
        Ok(Storage {
            backend: "embedded",
            spool: spool.clone(),
            dedup: SharedDedupStore::new(dedup.clone()),
            background: vec![
                Box::pin(dedup.sweep_every(DEDUP_SWEEP_EVERY)),
                watch_health(spool, metrics.store().clone()),
            ],
        })
    }
}
