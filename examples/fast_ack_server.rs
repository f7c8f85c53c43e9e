//! A webhook receiver answering 200 as soon as each event is in the embedded spool (fsync unless
//! `--durability os|memory`), and
//! forwarding it to an upstream afterwards, with retries. Used by `tests/kill.rs`, which SIGKILLs
//! it mid-load; handy to watch the guarantee by hand too:
//!
//! ```sh
//! cargo run --example fast_ack_server --features axum,embedded,http-target -- \
//!     --listen 127.0.0.1:8080 --data ./data --upstream http://127.0.0.1:3000/webhook/o3-video
//! curl -i http://127.0.0.1:8080/webhook/o3-video -H 'content-type: application/json' \
//!   -d '{"generation_id":"550e8400-e29b-41d4-a716-446655440000","status":"failed","video_url":null,"model":"kling-o3-video-10s-pro","message":"TIMEOUT"}'
//! # 200 {"status":"received","event_id":"..."}: the event survives a kill -9 from here on
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hookgate::deliver::{DeliveryPolicy, HttpTarget};
use hookgate::metrics::Metrics;
use hookgate::store::{Durability, EmbeddedSpool, SpoolConfig};
use hookgate::tower::{ServeMetrics, WebhookLayer};

const PATH: &str = "/webhook/o3-video";

fn arg(name: &str) -> Result<String, String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .ok_or_else(|| format!("missing {name} (usage: --listen ADDR --data DIR --upstream URL)"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let listen: SocketAddr = arg("--listen")?.parse()?;
    let data = arg("--data")?;
    let upstream = arg("--upstream")?;
    // fsync (the default), os or memory.
    let durability: Durability = match arg("--durability") {
        Ok(d) => d.parse()?,
        Err(_) => Durability::Fsync,
    };

    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry)?;
    let spool = Arc::new(EmbeddedSpool::open(SpoolConfig::new(&data, durability))?);
    // Quick, persistent retries: an upstream that refuses often still gets everything soon.
    let policy = DeliveryPolicy {
        max_attempts: 1000,
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
        ..DeliveryPolicy::default()
    };
    // The processor: the upstream, over HTTP, with the stored request byte for byte.
    let upstream = HttpTarget::new("--upstream", &upstream, &policy)?;
    let (webhook, deliverer) = WebhookLayer::builder("o3-video")
        .with_allow(["127.0.0.0/8", "::1/128"])?
        .with_metrics(&metrics)
        .with_fast_ack(spool, upstream)
        .with_delivery_policy(policy)
        .build()?;
    let app = Router::new()
        .route_service(PATH, webhook)
        .route_service("/metrics", ServeMetrics::new(registry));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    deliverer.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
