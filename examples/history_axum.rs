//! The event history in your own axum service: a fast-ack webhook whose events an in-process
//! handler processes, and beside it the history's query and replay API (the same as the
//! gateway's admin listener: `hookgate::history::History`), mounted on the same router. Put it
//! behind your own authentication: it shows and resends every event.
//!
//! ```sh
//! cargo run --example history_axum --features axum,embedded      # 127.0.0.1:3000, data in ./data-history
//! curl -s http://127.0.0.1:3000/webhook/o3-video -H 'content-type: application/json' \
//!   -d '{"generation_id":"550e8400-e29b-41d4-a716-446655440000","status":"completed",
//!        "video_url":"https://cdn.example.com/v.mp4","model":"kling-o3-video-10s-pro","message":null}'
//! curl -s 'http://127.0.0.1:3000/events?since=-1h&status=delivered'
//! curl -s http://127.0.0.1:3000/events/EVENT_ID
//! curl -s -X POST http://127.0.0.1:3000/events/EVENT_ID/replay         # processed again
//! curl -s -X POST http://127.0.0.1:3000/replays -H 'content-type: application/json' \
//!   -d '{"since":"-1h","rate":"10/s"}'                                   # a paced replay job
//! curl -s http://127.0.0.1:3000/replays
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hookgate::core::DedupKeySpec;
use hookgate::deliver::{handler_fn, DeliveredEvent, DeliveryError, Target};
use hookgate::history::{History, HistoryError, Params};
use hookgate::store::{Durability, EmbeddedSpool, Spool, SpoolConfig};
use hookgate::tower::WebhookLayer;
use serde_json::Value;

/// The history's answer as an HTTP response: its JSON, or its error's status and
/// `{"error", "detail"}`.
fn answer(result: Result<Value, HistoryError>, ok: StatusCode) -> Response {
    match result {
        Ok(v) => (ok, Json(v)).into_response(),
        Err(e) => {
            let status =
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Json(e.body())).into_response()
        }
    }
}

async fn events(State(h): State<History>, RawQuery(q): RawQuery) -> Response {
    answer(
        h.events(&Params::from_query(q.as_deref().unwrap_or("")))
            .await,
        StatusCode::OK,
    )
}

async fn event(State(h): State<History>, Path(id): Path<String>) -> Response {
    answer(h.event(&id).await, StatusCode::OK)
}

async fn replay(
    State(h): State<History>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    // `?destination=NAME`: only there.
    let p = Params::from_query(q.as_deref().unwrap_or(""));
    answer(h.replay(&id, p.get("destination")).await, StatusCode::OK)
}

async fn start_replay(State(h): State<History>, Json(body): Json<Value>) -> Response {
    let params = match Params::from_json(&body) {
        Ok(p) => p,
        Err(e) => return answer(Err(e), StatusCode::OK),
    };
    answer(h.start_replay(&params).await, StatusCode::ACCEPTED)
}

async fn replays(State(h): State<History>) -> Response {
    answer(h.replays().await, StatusCode::OK)
}

async fn replay_job(State(h): State<History>, Path(id): Path<String>) -> Response {
    answer(h.replay_job(&id).await, StatusCode::OK)
}

async fn cancel(State(h): State<History>, Path(id): Path<String>) -> Response {
    answer(h.cancel_replay(&id).await, StatusCode::OK)
}

/// The history's routes, for any router: `GET /events`, `GET /events/{id}`,
/// `POST /events/{id}/replay`, `POST /replays`, `GET /replays`, `GET /replays/{id}`,
/// `DELETE /replays/{id}`.
pub fn history_routes(history: History) -> Router {
    Router::new()
        .route("/events", get(events))
        .route("/events/{id}", get(event))
        .route("/events/{id}/replay", post(replay))
        .route("/replays", post(start_replay).get(replays))
        .route("/replays/{id}", get(replay_job).delete(cancel))
        .with_state(history)
}

/// The webhook at `/webhook/o3-video` (its events handed to `processor`) and the history of
/// `spool` beside it. The history's background task (it resumes replay jobs after a restart)
/// is spawned on the current runtime.
pub fn app(
    spool: Arc<dyn Spool>,
    processor: impl Target,
) -> Result<Router, Box<dyn std::error::Error>> {
    let (webhook, deliverer) = WebhookLayer::builder("o3-video")
        .with_allow(["127.0.0.0/8", "::1/128"])?
        .with_fast_ack(spool.clone(), processor)
        .build()?;
    let history = History::new(spool).with_route(deliverer, Some(DedupKeySpec::default()));
    tokio::spawn(history.clone().run());
    Ok(Router::new()
        .route_service("/webhook/o3-video", webhook)
        .merge(history_routes(history)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spool: Arc<dyn Spool> = Arc::new(EmbeddedSpool::open(SpoolConfig::new(
        "data-history",
        Durability::Fsync,
    ))?);
    let processor = handler_fn(|ev: DeliveredEvent| async move {
        let body: Value = ev.json()?;
        let replay = ev
            .replay()
            .map(|r| format!(" (replay {r})"))
            .unwrap_or_default();
        println!("event {}{replay}: {}", ev.id(), body["status"]);
        Ok::<(), DeliveryError>(())
    });
    let app = app(spool, processor)?;
    let addr: SocketAddr = "127.0.0.1:3000".parse()?;
    println!("listening on http://{addr}");
    axum::serve(tokio::net::TcpListener::bind(addr).await?, app).await?;
    Ok(())
}
