//! Fast acknowledgement with the processing in-process: each event is answered 200 once it is in
//! the embedded spool (fsync), then handed to a typed async function. Its `Err` retries the
//! event by the backoff (`DeliveryError::retry`) or sends it to the dead letters
//! (`DeliveryError::reject`, and any body that does not parse as a `Generation`).
//!
//! ```sh
//! cargo run --example typed_handler --features axum,embedded    # 127.0.0.1:3000, data in ./data-typed
//! curl -i http://127.0.0.1:3000/webhook/o3-video -H 'content-type: application/json' \
//!   -d '{"generation_id":"550e8400-e29b-41d4-a716-446655440000","status":"completed",
//!        "video_url":"https://cdn.example.com/v.mp4","model":"kling-o3-video-10s-pro","message":null}'
//! # 200 {"status":"received","event_id":"..."}; the handler prints "video ready" and appends to
//! # ./data-typed/processed.log; kill -9 the server before it does and it is processed at the next start.
//! curl -s http://127.0.0.1:3000/metrics | grep hookgate_deliveries_total
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hookgate::deliver::{handler_fn, DeliveredEvent, DeliveryError};
use hookgate::metrics::Metrics;
use hookgate::prometheus::Registry;
use hookgate::store::{Durability, EmbeddedSpool, SpoolConfig};
use hookgate::tower::{ServeMetrics, WebhookLayer};

/// The reference sender's payload (hookgate's `runblob` profile has checked it already).
#[derive(serde::Deserialize)]
struct Generation {
    generation_id: String,
    status: String,
    video_url: Option<String>,
    message: Option<String>,
}

/// Processes one event: appends a line to the log. A full disk is worth another try.
async fn process(ev: DeliveredEvent, log: Arc<Mutex<std::fs::File>>) -> Result<(), DeliveryError> {
    let g: Generation = ev.json()?;
    let line = match g.status.as_str() {
        "completed" => format!(
            "{} video ready: {}",
            g.generation_id,
            g.video_url.unwrap_or_default()
        ),
        _ => format!(
            "{} failed: {}",
            g.generation_id,
            g.message.unwrap_or_default()
        ),
    };
    println!("event {} (attempt {}): {line}", ev.id(), ev.attempt());
    let mut log = log
        .lock()
        .map_err(|_| DeliveryError::retry("the log lock is poisoned"))?;
    writeln!(log, "{} {line}", ev.id())
        .and_then(|()| log.sync_data())
        .map_err(|e| DeliveryError::retry(format!("cannot write the log: {e}")))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = Path::new("data-typed");
    std::fs::create_dir_all(data)?;
    let log = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("processed.log"))?,
    ));
    let registry = Registry::new();
    let metrics = Metrics::new(&registry)?;
    let spool = Arc::new(EmbeddedSpool::open(SpoolConfig::new(
        data.join("spool"),
        Durability::Fsync,
    ))?);
    let (webhook, deliverer) = WebhookLayer::builder("o3-video")
        .with_allow(["127.0.0.0/8", "::1/128"])?
        .with_metrics(&metrics)
        .with_fast_ack(spool, handler_fn(move |ev| process(ev, log.clone())))
        .build()?;
    let app = Router::new()
        .route_service("/webhook/o3-video", webhook)
        .route_service("/metrics", ServeMetrics::new(registry));
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "listening on http://{}/webhook/o3-video",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    // Attempts in flight finish; what is left stays in the spool for the next start.
    deliverer.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
