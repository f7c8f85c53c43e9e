//! Measures the resident memory of the in-memory dedup store, full and under churn.
//!
//! ```sh
//! cargo run --release --example dedup_memory            # the default capacity (450,000 keys)
//! cargo run --release --example dedup_memory -- 250000  # another count
//! ```
//!
//! Fills the store, then inserts as many keys again (each evicting the oldest), and prints the
//! process RSS (from /proc/self/status, Linux) at each step. Exits non-zero if the store grew by
//! more than 5% under that churn, or if the default capacity takes more than 32 MiB.

use std::time::{Duration, Instant};

use hookgate::core::DedupKey;
use hookgate::store::embedded::DEFAULT_DEDUP_CAPACITY;
use hookgate::store::{DedupStore, MemoryDedupStore};

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().map_err(|_| format!("{n:?} is not a key count"))?,
        None => DEFAULT_DEDUP_CAPACITY,
    };
    let before = rss_kib().ok_or("no /proc/self/status: RSS is measured on Linux only")?;
    let store = MemoryDedupStore::new(keys);
    let ttl = Duration::from_secs(24 * 3600);
    let insert = |i: u64| {
        // Spread like real hashes: the store's keys are XXH3-128 outputs.
        let key = DedupKey::from_u128(xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes()));
        let reserved = store.reserve(key, ttl);
        drop(reserved);
        store.commit(key, ttl);
    };
    let start = Instant::now();
    for i in 0..keys as u64 {
        insert(i);
    }
    let elapsed = start.elapsed();
    let full = rss_kib().ok_or("RSS unreadable")?;
    // Churn: as many keys again, each evicting the oldest. The store must not grow.
    for i in keys as u64..2 * keys as u64 {
        insert(i);
    }
    let churned = rss_kib().ok_or("RSS unreadable")?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let store_mib = mib(full.saturating_sub(before));
    println!(
        "keys={} stored={} evictions={} rss_before={:.1} MiB full={:.1} MiB after_churn={:.1} MiB store={:.1} MiB ({:.1} bytes/key) fill={:?}",
        keys,
        store.len(),
        store.evictions(),
        mib(before),
        mib(full),
        mib(churned),
        store_mib,
        store_mib * 1024.0 * 1024.0 / keys as f64,
        elapsed
    );
    if churned as f64 > full as f64 * 1.05 {
        return Err(format!(
            "the store grew under churn: {:.1} MiB full, {:.1} MiB after as many evictions",
            mib(full),
            mib(churned)
        )
        .into());
    }
    if keys == DEFAULT_DEDUP_CAPACITY && store_mib > 32.0 {
        return Err(
            format!("the default {keys} keys took {store_mib:.1} MiB of RSS (> 32 MiB)").into(),
        );
    }
    Ok(())
}
