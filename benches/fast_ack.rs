//! Spool append throughput and the FastAck stack's acknowledgements per second.
//!
//! `cargo bench --bench fast_ack` (with `--features axum`; `cargo test` runs it once, tiny).
//!
//! 1. The embedded spool: appends/s at concurrency 1, 16, 64 and 256 in `fsync`, `os` and
//!    `memory` modes (each caller awaits its own durable append; group commit batches them).
//!    Target: ≥ 50,000 appends/s in `fsync` mode at concurrency 64. Also `fsync` without the
//!    linger: these appenders do nothing else, so waiting for company only costs them.
//! 2. HTTP over loopback, 64 concurrent keep-alive clients in this process: an axum server whose
//!    handler answers 200 (bare), against the same handler behind the whole `WebhookLayer` with
//!    fast acknowledgement (fsync spool, deliveries running meanwhile). Target: ≥ 0.7× bare.
//!    Client and server share the machine's cores, as they do for any loopback benchmark.
//!
//! Every row runs with mimalloc as the global allocator, the one the gateway binary is to use: under glibc's malloc the spool's cross-thread hand-offs contend on malloc's arenas
//! (measured: the fast-ack ratio fell from 0.54 to 0.41). An application using the layers
//! chooses its own allocator.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::routing::post;
use axum::Router;
use hookgate::core::Validator;
use hookgate::deliver::DeliveryPolicy;
use hookgate::metrics::Metrics;
use hookgate::store::{Durability, EmbeddedSpool, Event, Spool, SpoolConfig};
use hookgate::tower::{FastAckLayer, ValidateLayer, WebhookLayer};
use tower::Layer;

const PATH: &str = "/webhook/o3-video";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn append_rate(
    durability: Durability,
    linger: Duration,
    concurrency: usize,
    total: usize,
) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let spool =
        EmbeddedSpool::open(SpoolConfig::new(dir.path(), durability).with_linger(linger)).unwrap();
    let body = Bytes::from(
        r#"{"generation_id":"550e8400-e29b-41d4-a716-446655440000","status":"completed","video_url":"https://cdn.example.com/videos/550e8400.mp4","model":"kling-o3-video-10s-pro","message":null}"#,
    );
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (spool, next, body) = (spool.clone(), next.clone(), body.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total as u64 {
                    let e = Event::new(
                        "o3-video",
                        "127.0.0.1".parse().unwrap(),
                        "POST",
                        PATH,
                        vec![("content-type".into(), b"application/json".to_vec())],
                        body.clone(),
                    );
                    spool.append(&e).await.unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

async fn received() -> &'static str {
    r#"{"status":"received"}"#
}

// Two floors under any spool of this design, for the table's reading: the round trip to another
// thread (how group commit gathers appends), and one fjall insert with no I/O at all.

type Reply = tokio::sync::oneshot::Sender<()>;

/// A thread that answers every message at once; ends when its sender drops.
fn echo_thread() -> std::sync::mpsc::SyncSender<(Bytes, Reply)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Bytes, Reply)>(4096);
    std::thread::spawn(move || {
        while let Ok((_, reply)) = rx.recv() {
            let _ = reply.send(());
        }
    });
    tx
}

/// A handler that hands the body to `thread` and answers once it replied.
fn handed_off(
    thread: std::sync::mpsc::SyncSender<(Bytes, Reply)>,
) -> impl Fn(Bytes) -> std::pin::Pin<Box<dyn std::future::Future<Output = &'static str> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    move |body: Bytes| {
        let (reply, rx) = tokio::sync::oneshot::channel();
        thread.try_send((body, reply)).unwrap();
        Box::pin(async move {
            rx.await.unwrap();
            r#"{"status":"received"}"#
        })
    }
}

/// A handler that inserts the body into a fjall keyspace in `dir` (journal buffer and memtable:
/// no write, no sync) and answers.
fn stored(
    dir: &std::path::Path,
) -> impl Fn(Bytes) -> std::future::Ready<&'static str> + Clone + Send + Sync + 'static {
    let db = fjall::Database::builder(dir)
        .manual_journal_persist(true)
        .open()
        .unwrap();
    let keyspace = db
        .keyspace("floor", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let next = Arc::new(AtomicU64::new(0));
    move |body: Bytes| {
        let key = next.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        let mut batch = db.batch().durability(None);
        batch.insert(&keyspace, key.as_slice(), &body[..]);
        batch.commit().unwrap();
        std::future::ready(r#"{"status":"received"}"#)
    }
}

async fn serve(app: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    (addr, task)
}

/// Requests/s of `total` POSTs with distinct ids from `concurrency` keep-alive clients; every
/// answer must be 200.
async fn load(addr: SocketAddr, concurrency: usize, total: usize, offset: u64) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let url = format!("http://{addr}{PATH}");
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, next) = (client.clone(), url.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total as u64 {
                        break;
                    }
                    let body = format!(
                        r#"{{"generation_id":"550e8400-e29b-41d4-a716-{:012}","status":"completed","video_url":"https://cdn.example.com/videos/550e8400.mp4","model":"kling-o3-video-10s-pro","message":null}}"#,
                        offset + n
                    );
                    let res = client.post(&url).header("content-type", "application/json").body(body).send().await.unwrap();
                    assert_eq!(res.status(), 200);
                    let _ = res.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (appends, requests, rounds) = if full {
        (40_000, 20_000, 5)
    } else {
        (200, 200, 1)
    };
    if !full {
        println!(
            "test mode (cargo test): tiny counts on a debug build, a smoke run, not a measurement"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("spool appends/s ({appends} appends per run, median of {rounds}):");
        println!("| mode | c=1 | c=16 | c=64 | c=256 |\n| --- | --- | --- | --- | --- |");
        let linger = SpoolConfig::new("", Durability::Fsync).linger;
        for (name, mode, linger) in [
            ("fsync", Durability::Fsync, linger),
            ("fsync, linger 0", Durability::Fsync, Duration::ZERO),
            ("os", Durability::Os, linger),
            ("memory", Durability::Memory, linger),
        ] {
            let mut row = format!("| {name} |");
            for c in [1, 16, 64, 256] {
                let mut runs = Vec::new();
                for _ in 0..rounds {
                    // Concurrency 1 waits on every sync: fewer appends keep the run short.
                    let n = if c == 1 { appends / 10 } else { appends };
                    runs.push(append_rate(mode, linger, c, n).await);
                }
                row.push_str(&format!(" {:.0} |", median(runs)));
            }
            println!("{row}");
        }

        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(&registry).unwrap();
        let fast_ack = |route: &str, spool: Arc<dyn Spool>| {
            WebhookLayer::builder(route)
                .with_allow(["127.0.0.0/8"])
                .unwrap()
                .with_metrics(&metrics)
                .with_fast_ack::<Body>(spool, DeliveryPolicy::default())
                .build()
                .unwrap()
        };
        let (dir, paused_dir, alone_dir, fjall_dir) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let alone_spool: Arc<dyn Spool> = Arc::new(
            EmbeddedSpool::open(SpoolConfig::new(alone_dir.path(), Durability::Fsync)).unwrap(),
        );
        let alone = FastAckLayer::<Body>::new(
            "alone",
            alone_spool.clone(),
            DeliveryPolicy::default(),
            &metrics.route("alone"),
        )
        .unwrap();
        let spool: Arc<dyn Spool> =
            Arc::new(EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap());
        let paused_spool: Arc<dyn Spool> = Arc::new(
            EmbeddedSpool::open(SpoolConfig::new(paused_dir.path(), Durability::Fsync)).unwrap(),
        );
        let acking = fast_ack("fast_ack", spool.clone());
        let paused = fast_ack("paused", paused_spool);
        // The breakdown: where the gap to bare goes.
        paused.deliverer().halt();
        let direct = WebhookLayer::builder("direct")
            .with_allow(["127.0.0.0/8"])
            .unwrap()
            .with_metrics(&metrics)
            .build()
            .unwrap();
        let servers = [
            (
                "axum handler, bare (the baseline)",
                serve(Router::new().route(PATH, post(received))).await,
            ),
            (
                "WebhookLayer, handler answers (no spool)",
                serve(Router::new().route(PATH, post(received).layer(direct.clone()))).await,
            ),
            (
                "WebhookLayer, handler hands the body to a thread, awaits its reply (no storage)",
                serve(Router::new().route(PATH, post(handed_off(echo_thread())).layer(direct.clone()))).await,
            ),
            (
                "WebhookLayer, handler inserts the body into fjall, unsynced (no event, no delivery)",
                serve(Router::new().route(PATH, post(stored(fjall_dir.path())).layer(direct.clone()))).await,
            ),
            (
                "JSON check + FastAckLayer alone, fsync spool, delivering",
                serve(Router::new().route_service(
                    PATH,
                    tower::ServiceBuilder::new()
                        .layer(ValidateLayer::new(Validator::json()))
                        .layer(alone.clone())
                        .service(post(received)),
                ))
                .await,
            ),
            (
                "WebhookLayer + FastAck, fsync spool, deliveries paused",
                serve(Router::new().route_service(PATH, paused.layer(post(received)))).await,
            ),
            (
                "WebhookLayer + FastAck, fsync spool, delivering (the target)",
                serve(Router::new().route_service(PATH, acking.layer(post(received)))).await,
            ),
        ];
        let mut rates = vec![Vec::new(); servers.len()];
        for round in 0..rounds {
            // Alternate the servers within each round so drift on a shared machine hits all alike.
            for (i, (_, (addr, _))) in servers.iter().enumerate() {
                let offset = ((round * servers.len() + i) * requests) as u64;
                rates[i].push(load(*addr, 64, requests, offset).await);
            }
        }
        let medians: Vec<f64> = rates.into_iter().map(median).collect();
        println!(
            "\nHTTP over loopback, 64 clients, {requests} requests per run, median of {rounds}:"
        );
        println!("| server | requests/s | vs bare |\n| --- | --- | --- |");
        for ((name, _), rate) in servers.iter().zip(&medians) {
            println!("| {name} | {rate:.0} | {:.2} |", rate / medians[0]);
        }
        let target = servers.len() - 1;
        println!(
            "ratio FastAck / bare: {:.2} (target >= 0.70); FastAck / the same stack without it: {:.2}",
            medians[target] / medians[0],
            medians[target] / medians[1],
        );
        // Let deliveries finish so the spool is drained before exit.
        let deadline = Instant::now() + Duration::from_secs(30);
        while spool.stats().pending + alone_spool.stats().pending > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "spool pending after the run: {}",
            spool.stats().pending + alone_spool.stats().pending
        );
        acking.deliverer().shutdown(Duration::from_secs(5)).await;
        alone.deliverer().shutdown(Duration::from_secs(5)).await;
        for (_, (_, task)) in servers {
            task.abort();
        }
    });
}
