//! The admission pipeline's per-request costs.
//!
//! `cargo bench --bench pipeline`. Targets:
//! - `validate/runblob`: parse + validate the provider's example payload, ≤ 2 µs;
//! - `dedup/reserve_new` and `dedup/reserve_duplicate`: ≤ 200 ns;
//! - `stack/webhook_layer` against `stack/bare`: the whole layer stack around a trivial service
//!   against that service alone, both fed identical requests; ≤ 5 µs added per request.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use hookgate::core::{DedupKey, DedupKeySpec, Validator};
use hookgate::deliver::ServiceTarget;
use hookgate::metrics::Metrics;
use hookgate::store::{DedupStore, Durability, EmbeddedSpool, MemoryDedupStore, SpoolConfig};
use hookgate::tower::{PeerAddr, WebhookLayer};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer, ServiceExt};

/// The provider's "completed" example payload, as documented.
const SEED_COMPLETED: &str = r#"{
  "generation_id": "550e8400-e29b-41d4-a716-446655440000",
  "status": "completed",
  "video_url": "https://cdn.example.com/videos/550e8400.mp4",
  "model": "kling-o3-video-10s-pro",
  "message": null
}"#;

fn validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("validate");
    let runblob = Validator::runblob();
    let json = Validator::json();
    let body = SEED_COMPLETED.as_bytes();
    assert!(runblob.check(body).is_ok());
    g.bench_function("runblob", |b| {
        b.iter(|| black_box(runblob.check(black_box(body))))
    });
    // Parsing alone, to show what the runblob rules add on top.
    g.bench_function("json_parse_only", |b| {
        b.iter(|| black_box(json.check(black_box(body))))
    });
    let payload = runblob.check(body).unwrap();
    let spec = DedupKeySpec::default();
    let headers = http::HeaderMap::new();
    g.bench_function("dedup_key_extract", |b| {
        b.iter(|| black_box(spec.extract("o3-video", &headers, None, Some(&payload.value))))
    });
    g.finish();
}

fn dedup(c: &mut Criterion) {
    let mut g = c.benchmark_group("dedup");
    let ttl = Duration::from_secs(3600);
    // New keys into a full store (each reserve also evicts the oldest key): once with a store
    // that fits in cache, once at the documented million keys, where every probe misses cache.
    for capacity in [10_000usize, 1_000_000] {
        let store = MemoryDedupStore::new(capacity);
        let mut n: u64 = 0;
        for _ in 0..capacity {
            n += 1;
            store.commit(
                DedupKey::from_u128(xxhash_rust::xxh3::xxh3_128(&n.to_le_bytes())),
                ttl,
            );
        }
        g.bench_function(format!("reserve_new/{capacity}"), |b| {
            b.iter(|| {
                n += 1;
                let key = DedupKey::from_u128(xxhash_rust::xxh3::xxh3_128(&n.to_le_bytes()));
                black_box(store.reserve(key, ttl))
            })
        });
        let dup = DedupKey::from_u128(xxhash_rust::xxh3::xxh3_128(&n.to_le_bytes()));
        store.commit(dup, ttl);
        g.bench_function(format!("reserve_duplicate/{capacity}"), |b| {
            b.iter(|| black_box(store.reserve(black_box(dup), ttl)))
        });
    }
    g.finish();
}

fn request(n: u64) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"generation_id":"550e8400-e29b-41d4-a716-{n:012}","status":"completed","video_url":"https://cdn.example.com/videos/550e8400.mp4","model":"kling-o3-video-10s-pro","message":null}}"#
    );
    let mut req = Request::post("/webhook/o3-video")
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Full::from(body))
        .expect("static request parts are valid");
    req.extensions_mut()
        .insert(PeerAddr(([127, 0, 0, 1], 40000).into()));
    req
}

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let trivial = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            br#"{"status":"received"}"#,
        ))))
    });
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let layer = rt.block_on(async {
        WebhookLayer::builder("o3-video")
            .with_allow(["127.0.0.0/8"])
            .unwrap()
            .with_metrics(&metrics)
            .build()
            .unwrap()
    });
    let guarded = layer.layer(trivial);

    let mut g = c.benchmark_group("stack");
    let mut n: u64 = 0;
    g.bench_function("bare", |b| {
        b.iter(|| {
            n += 1;
            let res = rt.block_on(trivial.oneshot(request(n))).unwrap();
            assert_eq!(res.status(), 200);
        })
    });
    g.bench_function("webhook_layer", |b| {
        b.iter(|| {
            n += 1;
            let res = rt.block_on(guarded.clone().oneshot(request(n))).unwrap();
            assert_eq!(res.status(), 200);
        })
    });
    // With fast acknowledgement into a `memory` spool, deliveries paused: the cost of building,
    // encoding and committing the event, without a sync.
    let fast_ack = rt.block_on(async {
        let spool = std::sync::Arc::new(
            EmbeddedSpool::open(SpoolConfig::new("", Durability::Memory)).unwrap(),
        );
        let (webhook, deliverer) = WebhookLayer::builder("fast-ack")
            .with_allow(["127.0.0.0/8"])
            .unwrap()
            .with_metrics(&metrics)
            .with_fast_ack(spool, ServiceTarget::new(trivial))
            .build()
            .unwrap();
        deliverer.halt();
        (webhook, deliverer)
    });
    let acked = fast_ack.0.clone();
    g.bench_function("webhook_layer_fast_ack_memory", |b| {
        b.iter(|| {
            n += 1;
            let res = rt.block_on(acked.clone().oneshot(request(n))).unwrap();
            assert_eq!(res.status(), 200);
        })
    });
    g.finish();
}

criterion_group!(benches, validate, dedup, stack);
criterion_main!(benches);
