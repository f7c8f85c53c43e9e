//! Measures the resident memory of the in-memory dedup store holding a million keys.
//!
//! ```sh
//! cargo run --release --example dedup_memory            # 1,000,000 keys
//! cargo run --release --example dedup_memory -- 250000  # another count
//! ```
//!
//! Prints the process RSS (from /proc/self/status, Linux) before and after, and exits non-zero if
//! a million keys take more than 64 MiB.

use std::time::{Duration, Instant};

use hookgate::core::DedupKey;
use hookgate::store::{DedupStore, MemoryDedupStore};

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().map_err(|_| format!("{n:?} is not a key count"))?,
        None => 1_000_000,
    };
    let before = rss_kib().ok_or("no /proc/self/status: RSS is measured on Linux only")?;
    let store = MemoryDedupStore::new(keys);
    let ttl = Duration::from_secs(24 * 3600);
    let start = Instant::now();
    for i in 0..keys as u64 {
        // Spread like real hashes: the store's keys are XXH3-128 outputs.
        let key = DedupKey::from_u128(xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes()));
        let reserved = store.reserve(key, ttl);
        drop(reserved);
        store.commit(key, ttl);
    }
    let elapsed = start.elapsed();
    let after = rss_kib().ok_or("RSS unreadable")?;
    let grown_mib = (after.saturating_sub(before)) as f64 / 1024.0;
    println!(
        "keys={} stored={} evictions={} rss_before={:.1} MiB rss_after={:.1} MiB store={:.1} MiB ({:.1} bytes/key) fill={:?}",
        keys,
        store.len(),
        store.evictions(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        grown_mib,
        grown_mib * 1024.0 * 1024.0 / keys as f64,
        elapsed
    );
    if keys == 1_000_000 && after as f64 / 1024.0 > 64.0 {
        return Err(format!(
            "a million keys took {:.1} MiB of RSS (> 64 MiB)",
            after as f64 / 1024.0
        )
        .into());
    }
    Ok(())
}
