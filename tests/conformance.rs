//! The storage conformance suite (`hookgate::store::conformance`) against every backend of this
//! crate: the embedded spool in each durability, the in-memory one, and the in-memory dedup store.

use std::sync::Arc;

use hookgate::store::conformance::{self, Bounds};
use hookgate::store::memory::MemorySpool;
use hookgate::store::{Durability, EmbeddedSpool, MemoryDedupStore, SharedDedupStore, SpoolConfig};

/// Opens each spool in a new directory under `parent` (removed when the test ends).
fn embedded(
    parent: &tempfile::TempDir,
    durability: Durability,
) -> impl Fn(Bounds) -> Arc<EmbeddedSpool> + '_ {
    let next = std::sync::atomic::AtomicUsize::new(0);
    move |b: Bounds| {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let config = SpoolConfig::new(parent.path().join(n.to_string()), durability)
            .with_max_events(b.max_events)
            .with_max_bytes(b.max_bytes);
        Arc::new(EmbeddedSpool::open(config).unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_fsync() {
    let dir = tempfile::tempdir().unwrap();
    conformance::spool(embedded(&dir, Durability::Fsync)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_os() {
    let dir = tempfile::tempdir().unwrap();
    conformance::spool(embedded(&dir, Durability::Os)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_memory() {
    let dir = tempfile::tempdir().unwrap();
    conformance::spool(embedded(&dir, Durability::Memory)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend() {
    conformance::spool(|b| Arc::new(MemorySpool::new(b.max_events, b.max_bytes))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_dedup_store() {
    conformance::dedup(|| SharedDedupStore::new(MemoryDedupStore::new(1000))).await;
}
