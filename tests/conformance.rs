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
            .with_max_bytes(b.max_bytes)
            .with_retention(b.retention, None);
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
    conformance::spool(|b| {
        Arc::new(MemorySpool::new(b.max_events, b.max_bytes).with_retention(b.retention))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_dedup_store() {
    conformance::dedup(|| SharedDedupStore::new(MemoryDedupStore::new(1000))).await;
}

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_server;

/// The `redis` backend's config for `url`, with a prefix no other test uses.
#[cfg(feature = "redis")]
fn redis_config(url: &str) -> hookgate::store::redis::RedisConfig {
    let mut config = hookgate::store::redis::RedisConfig::new(url);
    config.prefix = redis_server::prefix();
    config
}

/// A new event of route `r`.
#[cfg(feature = "redis")]
fn event() -> hookgate::store::Event {
    hookgate::store::Event::new(
        "r",
        "127.0.0.1".parse().unwrap(),
        "POST",
        "/w",
        vec![],
        "{}".into(),
    )
}

/// Opens the `redis` backend on `url` with a fresh prefix each time.
#[cfg(feature = "redis")]
fn redis(url: &str, bounds: Bounds) -> hookgate::store::Storage {
    let metrics = hookgate::metrics::Metrics::new(&prometheus::Registry::new()).unwrap();
    let mut config = redis_config(url);
    config.max_events = bounds.max_events;
    config.max_bytes = bounds.max_bytes;
    config.retention = bounds.retention;
    hookgate::store::redis::open(config, &metrics).unwrap()
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backend() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _server) = redis_server::shared(dir.path());
    conformance::spool(|b| redis(&url, b).spool).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dedup_store() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _server) = redis_server::shared(dir.path());
    let bounds = Bounds {
        max_events: 100,
        max_bytes: 1 << 20,
        retention: std::time::Duration::from_secs(3600),
    };
    conformance::dedup(|| redis(&url, bounds).dedup).await;
}

/// A consumer of an instance long gone (nothing held, no read for `consumer_gone_after`) is
/// removed from the route's group by the next instance that claims; the live one stays.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_removes_the_consumers_of_instances_long_gone() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let (url, _server) = redis_server::shared(dir.path());
    let metrics = hookgate::metrics::Metrics::new(&prometheus::Registry::new()).unwrap();
    let mut config = redis_config(&url);
    config.consumer_gone_after = Duration::from_millis(50);
    // Each instance's pending count in the route's group, by consumer.
    let consumers = || {
        let mut c = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let list: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(format!("{}:queue:r", config.prefix))
            .arg("hookgate")
            .query(&mut c)
            .unwrap();
        list.iter()
            .map(|c| match c.get("pending") {
                Some(redis::Value::Int(n)) => *n,
                other => panic!("pending: {other:?}"),
            })
            .collect::<Vec<_>>()
    };
    let gone = hookgate::store::redis::open(config.clone(), &metrics).unwrap();
    let e = event();
    gone.spool.append(&e).await.unwrap();
    let shared = gone.spool.shared().expect("a shared spool");
    let claimed = shared
        .claim("r", 1, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    gone.spool.delivered(&claimed[0]).await.unwrap();
    assert_eq!(consumers(), [0], "the first instance, holding nothing");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let live = hookgate::store::redis::open(config.clone(), &metrics).unwrap();
    live.spool.append(&event()).await.unwrap();
    let shared = live.spool.shared().expect("a shared spool");
    assert_eq!(
        shared
            .claim("r", 1, Duration::from_millis(100))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        consumers(),
        [1],
        "the gone one removed, the live one (holding one) kept"
    );
}

/// `wait_replicas`: an append is acknowledged once a real replica confirmed it; with the
/// replica gone, the append fails (503 for the sender) after the WAIT timeout.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_wait_replicas_acknowledges_only_what_a_replica_confirmed() {
    use hookgate::store::SpoolError;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    // No 5 s wait before the replica's first sync.
    let primary = redis_server::RedisServer::start_with(
        &dir.path().join("primary"),
        &["--repl-diskless-sync-delay", "0"],
    );
    let mut replica =
        redis_server::RedisServer::replica_of(&dir.path().join("replica"), primary.port);
    let info = |port: u16, section: &str| -> String {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("INFO").arg(section).query(&mut c).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !info(primary.port, "replication").contains("state=online") {
        assert!(Instant::now() < deadline, "the replica never came online");
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = hookgate::metrics::Metrics::new(&prometheus::Registry::new()).unwrap();
    let mut config = redis_config(&primary.url());
    config.wait_replicas = 1;
    let storage = hookgate::store::redis::open(config.clone(), &metrics).unwrap();
    let e = event();
    storage
        .spool
        .append(&e)
        .await
        .expect("confirmed by the replica");
    // What the replica holds once the acknowledgement was given.
    let mut c = redis::Client::open(replica.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let held: bool = redis::cmd("HEXISTS")
        .arg(format!("{}:ev:r", config.prefix))
        .arg(e.id.to_string())
        .query(&mut c)
        .unwrap();
    assert!(held, "the replica has the acknowledged event");

    replica.kill();
    let refused = storage.spool.append(&event()).await;
    assert!(
        matches!(&refused, Err(SpoolError::Storage(m)) if m.contains("0 of 1 replicas")),
        "{refused:?}"
    );
}

/// The library face on Redis: `FastAck` over the shared spool acknowledges once Redis has the
/// event, and its deliverer claims it back from Redis and calls the typed handler.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_spool_behind_fast_ack() {
    use hookgate::deliver::{handler_fn, DeliveredEvent, Deliverer, DeliveryPolicy};
    use http_body_util::{BodyExt, Full};
    use tower::{Layer, ServiceExt};
    let dir = tempfile::tempdir().unwrap();
    let (url, _server) = redis_server::shared(dir.path());
    let metrics = hookgate::metrics::Metrics::new(&prometheus::Registry::new()).unwrap();
    let storage = hookgate::store::redis::open(redis_config(&url), &metrics).unwrap();
    for task in storage.background {
        tokio::spawn(task);
    }
    let (tx, mut delivered) = tokio::sync::mpsc::unbounded_channel();
    let processor = handler_fn(move |ev: DeliveredEvent| {
        let tx = tx.clone();
        async move {
            tx.send(ev.body().clone()).unwrap();
            Ok(())
        }
    });
    let deliverer = Deliverer::start(
        "r",
        storage.spool.clone(),
        DeliveryPolicy::default(),
        metrics.route("r").delivery().clone(),
    )
    .unwrap()
    .with_target(std::sync::Arc::new(processor));
    let svc = hookgate::tower::ValidateLayer::new(hookgate::core::Validator::json())
        // A clone: the worker runs while a handle lives, and `oneshot` drops the service's.
        .layer(hookgate::tower::FastAck::new(deliverer.clone()));
    let mut req = http::Request::post("/")
        .header("content-type", "application/json")
        .body(Full::<bytes::Bytes>::from(r#"{"a":1}"#))
        .unwrap();
    req.extensions_mut()
        .insert(hookgate::tower::PeerAddr("127.0.0.1:9".parse().unwrap()));
    let ack = svc
        .oneshot(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert!(
        ack.starts_with(br#"{"status":"received","event_id":""#),
        "{ack:?}"
    );
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), delivered.recv())
        .await
        .expect("delivered from Redis within 10 s")
        .unwrap();
    assert_eq!(body, r#"{"a":1}"#);
}
