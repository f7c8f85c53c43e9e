//! The library face over real sockets: the hyper example with hyper's own `Incoming` body, the
//! tower-http example with layers on both sides of hookgate, and the typed handler (`Retry`,
//! `Reject` to the dead letters, a panic, and events that wait through a restart).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hookgate::deliver::{handler_fn, DeliveredEvent, Deliverer, DeliveryError, DeliveryPolicy};
use hookgate::metrics::{render, Metrics};
use hookgate::prometheus::Registry;
use hookgate::store::{Durability, EmbeddedSpool, Spool, SpoolConfig};
use hookgate::tower::{ServeMetrics, WebhookLayer};
use serde_json::{json, Value};

#[allow(dead_code)]
#[path = "../examples/history_axum.rs"]
mod history_axum;
#[allow(dead_code)]
#[path = "../examples/hyper_incoming.rs"]
mod hyper_incoming;
#[allow(dead_code)]
#[path = "../examples/tower_http.rs"]
mod tower_http_example;

#[path = "support/local_http.rs"]
mod local_http;
use local_http::{post, serve, wait_for};

const PATH: &str = "/webhook/o3-video";

fn payload(n: u32, status: &str) -> String {
    let (url, message) = match status {
        "completed" => (
            format!(r#""https://cdn.example.com/{n}.mp4""#),
            "null".to_owned(),
        ),
        _ => ("null".to_owned(), format!("{status:?}")),
    };
    let status = if status == "completed" {
        "completed"
    } else {
        "failed"
    };
    format!(
        r#"{{"generation_id":"550e8400-e29b-41d4-a716-{n:012}","status":"{status}","video_url":{url},"model":"kling-o3-video-10s-pro","message":{message}}}"#
    )
}

#[tokio::test]
async fn hyper_with_its_incoming_body_and_no_axum() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let server = tokio::spawn(hyper_incoming::serve(listener, metrics));
    let (status, body) = post(&url, payload(1, "completed")).await;
    assert_eq!((status, body), (200, Value::String("handled".into())));
    let (status, body) = post(&url, payload(1, "completed")).await;
    assert_eq!((status, body), (200, json!({"status": "duplicate"})));
    let (status, body) = post(&url, r#"{"status":"done"}"#.into()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("invalid_payload"))
    );
    let (_, text) = render(&registry).unwrap();
    assert!(
        text.contains(r#"hookgate_requests_total{outcome="accepted",route="o3-video"} 1"#),
        "{text}"
    );
    server.abort();
}

#[tokio::test]
async fn tower_http_layers_on_both_sides() {
    let metrics = Metrics::new(&Registry::new()).unwrap();
    let seen = tower_http_example::Seen::default();
    let app = tower_http_example::app(&metrics, seen.clone()).unwrap();
    let (base, server) = serve(app).await;
    let url = format!("{base}{PATH}");
    let seen_now = || {
        (
            seen.outer.load(Ordering::SeqCst),
            seen.inner.load(Ordering::SeqCst),
        )
    };

    let (status, body) = post(&url, payload(1, "completed")).await;
    assert_eq!((status, body), (200, json!({"status": "received"})));
    assert_eq!(seen_now(), (1, 1), "both traces saw the admitted request");

    // hookgate refuses: only the outer trace sees it.
    let (status, body) = post(&url, r#"{"status":"done"}"#.into()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("invalid_payload"))
    );
    assert_eq!(seen_now(), (2, 1));

    // Over tower-http's 64 KiB, under hookgate's 1 MiB: tower-http answers, hookgate never runs.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(100_000));
    let (status, body) = post(&url, big.clone()).await;
    assert_eq!(status, 413);
    assert!(
        body.is_string(),
        "tower-http's own answer, not hookgate's JSON: {body}"
    );

    // Streamed (chunked, no Content-Length): hookgate reads the Limited body, which stops at
    // 64 KiB, and answers with its own 413.
    let (status, body) = post_chunked(&base, &big).await;
    assert_eq!(status, 413);
    assert_eq!(
        body["error"], "payload_too_large",
        "hookgate's answer: {body}"
    );
    assert_eq!(seen_now().1, 1, "the handler side saw none of the refused");
    server.abort();
}

/// POSTs `body` to the webhook path in 8 KiB chunks (`Transfer-Encoding: chunked`, so no
/// `Content-Length` to refuse early), over a raw socket; the status and the answer's JSON.
async fn post_chunked(base: &str, body: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "POST {PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.as_bytes().chunks(8192) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close before reading it all: a failed write is expected then.
    let _ = stream.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| b.find('{').map(|i| &b[i..]))
        .and_then(|b| serde_json::from_str(b.trim_end_matches(|c| c != '}')).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// Quick retries; `Retry-After` honoured up to 2 s; 300 ms per attempt; the default circuit.
fn policy() -> DeliveryPolicy {
    DeliveryPolicy {
        max_attempts: 4,
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_secs(2),
        timeout: Duration::from_millis(300),
        ..DeliveryPolicy::default()
    }
}

/// The `Retry-After` the handler asks for on `TIMEOUT`: longer than the backoff, so a test sees
/// that it is honoured.
const BUSY: Duration = Duration::from_millis(400);

/// What the typed handler of these tests saw: (generation id, attempt, event id, when).
type Calls = Arc<Mutex<Vec<(String, u32, String, Instant)>>>;

#[derive(serde::Deserialize)]
struct Generation {
    generation_id: String,
    status: String,
    message: Option<String>,
}

/// The handler, by the payload's error code: `TIMEOUT` retries (after [`BUSY`]) until the third
/// attempt, `MAINTENANCE` is unavailable once, `IMAGE_INACCESSIBLE` outlives the attempt's
/// timeout once, `TASK_FAILED` panics once, `CONTENT_POLICY_VIOLATION` is rejected; completed is
/// processed at once.
async fn typed(ev: DeliveredEvent, calls: Calls) -> Result<(), DeliveryError> {
    let g: Generation = ev.json()?;
    calls.lock().unwrap().push((
        g.generation_id.clone(),
        ev.attempt(),
        ev.id().to_string(),
        Instant::now(),
    ));
    let first = ev.attempt() == 1;
    match (g.status.as_str(), g.message.as_deref()) {
        ("failed", Some("TIMEOUT")) if ev.attempt() < 3 => {
            Err(DeliveryError::retry_after(BUSY, "the model is busy"))
        }
        ("failed", Some("MAINTENANCE")) if first => {
            Err(DeliveryError::unavailable("the database is down"))
        }
        ("failed", Some("IMAGE_INACCESSIBLE")) if first => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        }
        ("failed", Some("TASK_FAILED")) if first => panic!("a bug in the handler"),
        ("failed", Some("CONTENT_POLICY_VIOLATION")) => {
            Err(DeliveryError::reject("nothing to do for a refused prompt"))
        }
        _ => Ok(()),
    }
}

/// The calls for generation `n`: (attempt, when).
fn calls_of(calls: &Calls, n: u32) -> Vec<(u32, Instant)> {
    let id = format!("550e8400-e29b-41d4-a716-{n:012}");
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.0 == id)
        .map(|c| (c.1, c.3))
        .collect()
}

fn attempts_of(calls: &Calls, n: u32) -> Vec<u32> {
    calls_of(calls, n).into_iter().map(|c| c.0).collect()
}

/// The typed handler's server: fast ack into `spool`, the handler in-process.
async fn typed_server(
    spool: Arc<dyn Spool>,
    calls: Calls,
    registry: &Registry,
) -> (String, Deliverer, tokio::task::JoinHandle<()>) {
    let metrics = Metrics::new(registry).unwrap();
    let (webhook, deliverer) = WebhookLayer::builder("o3-video")
        .with_allow(["127.0.0.0/8"])
        .unwrap()
        .with_metrics(&metrics)
        .with_fast_ack(spool, handler_fn(move |ev| typed(ev, calls.clone())))
        .with_delivery_policy(policy())
        .build()
        .unwrap();
    let app = Router::new()
        .route_service(PATH, webhook)
        .route_service("/metrics", ServeMetrics::new(registry.clone()));
    let (base, server) = serve(app).await;
    (base, deliverer, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_handler_retry_reject_and_panic() {
    let dir = tempfile::tempdir().unwrap();
    let spool: Arc<dyn Spool> =
        Arc::new(EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap());
    let calls = Calls::default();
    let registry = Registry::new();
    let (base, deliverer, server) = typed_server(spool.clone(), calls.clone(), &registry).await;
    let url = format!("{base}{PATH}");
    let kinds = [
        (1, "completed"),
        (2, "TIMEOUT"),
        (3, "CONTENT_POLICY_VIOLATION"),
        (4, "TASK_FAILED"),
        (5, "MAINTENANCE"),
        (6, "IMAGE_INACCESSIBLE"),
    ];
    for (n, kind) in kinds {
        let (status, ack) = post(&url, payload(n, kind)).await;
        assert_eq!(
            (status, ack["status"].as_str()),
            (200, Some("received")),
            "{kind}"
        );
    }
    wait_for("every event settled", Duration::from_secs(20), || {
        spool.stats().pending == 0
    })
    .await;
    assert_eq!(attempts_of(&calls, 1), [1], "processed at once");
    assert_eq!(
        attempts_of(&calls, 2),
        [1, 2, 3],
        "Retry: called again until it succeeded"
    );
    let busy = calls_of(&calls, 2);
    for pair in busy.windows(2) {
        assert!(
            pair[1].1 - pair[0].1 >= BUSY,
            "Retry-After honoured: {:?} between attempts",
            pair[1].1 - pair[0].1
        );
    }
    assert_eq!(attempts_of(&calls, 3), [1], "Reject: never called again");
    assert_eq!(
        attempts_of(&calls, 4),
        [1, 2],
        "a panic is a failed attempt, retried"
    );
    assert_eq!(attempts_of(&calls, 5), [1, 2], "Unavailable: retried");
    assert_eq!(attempts_of(&calls, 6), [1, 2], "past the timeout: retried");

    let dead = deliverer.dead_letters(None, 10).unwrap();
    assert_eq!(dead.len(), 1, "the rejected event is a dead letter");
    let letter = deliverer.dead_letter(dead[0].id).unwrap().unwrap();
    assert!(letter
        .body
        .windows(24)
        .any(|w| w == b"CONTENT_POLICY_VIOLATION"));
    assert!(
        letter
            .history
            .iter()
            .any(|a| a.outcome == "rejected: nothing to do for a refused prompt"),
        "the handler's reason is in the history: {:?}",
        letter.history
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"hookgate_deliveries_total{destination="upstream",result="dead_letter",route="o3-video"} 1"#,
        r#"hookgate_deliveries_total{destination="upstream",result="success",route="o3-video"} 5"#,
        // TIMEOUT twice, TASK_FAILED, MAINTENANCE and IMAGE_INACCESSIBLE once each.
        r#"hookgate_deliveries_total{destination="upstream",result="retry",route="o3-video"} 5"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    deliverer.shutdown(Duration::from_secs(2)).await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_handler_events_wait_through_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open = || -> Arc<dyn Spool> {
        Arc::new(EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap())
    };
    // First run: the handler cannot process anything yet.
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let (webhook, deliverer) = WebhookLayer::builder("o3-video")
        .with_allow(["127.0.0.0/8"])
        .unwrap()
        .with_metrics(&metrics)
        .with_fast_ack(
            open(),
            // Due again a second later: by then this instance is gone.
            handler_fn(|_ev: DeliveredEvent| async {
                Err(DeliveryError::retry_after(
                    Duration::from_secs(1),
                    "the database is down",
                ))
            }),
        )
        .build()
        .unwrap();
    let (base, server) = serve(Router::new().route_service(PATH, webhook)).await;
    let mut acked = Vec::new();
    for n in 1..=3 {
        let (status, ack) = post(&format!("{base}{PATH}"), payload(n, "completed")).await;
        assert_eq!(status, 200);
        acked.push(ack["event_id"].as_str().unwrap().to_owned());
    }
    deliverer.shutdown(Duration::from_secs(2)).await;
    server.abort();
    let _ = server.await;
    drop(deliverer);

    // Second run on the same directory: a handler that works gets each event once, same ids.
    let spool = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)) {
                Ok(s) => break Arc::new(s) as Arc<dyn Spool>,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("cannot reopen the spool: {e}"),
            }
        }
    };
    let calls = Calls::default();
    let (base, deliverer, server) =
        typed_server(spool.clone(), calls.clone(), &Registry::new()).await;
    wait_for("the waiting events", Duration::from_secs(10), || {
        calls.lock().unwrap().len() == 3
    })
    .await;
    let mut ids: Vec<String> = calls.lock().unwrap().iter().map(|c| c.2.clone()).collect();
    ids.sort();
    acked.sort();
    assert_eq!(
        ids, acked,
        "the events acknowledged before the restart, by their ids"
    );
    // Their keys came back with them: the sender's retry is a duplicate.
    let (status, body) = post(&format!("{base}{PATH}"), payload(2, "completed")).await;
    assert_eq!((status, body), (200, json!({"status": "duplicate"})));
    deliverer.shutdown(Duration::from_secs(2)).await;
    server.abort();
}

/// examples/history_axum.rs: the history's API mounted beside a webhook on one axum router finds
/// the event, replays it (the handler sees the replay), runs a paced job, and refuses a bad
/// query with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_mounted_on_axum_finds_and_replays() {
    /// Each delivery the handler saw: the event id and its replay.
    type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let processor = handler_fn(move |ev: DeliveredEvent| {
        let record = record.clone();
        async move {
            record
                .lock()
                .unwrap()
                .push((ev.id().to_string(), ev.replay().map(str::to_owned)));
            Ok::<(), DeliveryError>(())
        }
    });
    let spool: Arc<dyn Spool> =
        Arc::new(EmbeddedSpool::open(SpoolConfig::new("", Durability::Memory)).unwrap());
    let (url, server) = serve(history_axum::app(spool, processor).unwrap()).await;
    let (status, ack) = post(&format!("{url}{PATH}"), payload(7, "completed")).await;
    assert_eq!(status, 200, "{ack}");
    let id = ack["event_id"].as_str().unwrap().to_owned();
    wait_for("the first delivery", Duration::from_secs(10), || {
        seen.lock().unwrap().len() == 1
    })
    .await;
    let get = |path: String| async move {
        local_http::send(&path, reqwest::Method::GET, String::new()).await
    };
    let (status, page) = get(format!("{url}/events?status=delivered&since=-1m")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"][0]["id"], id.as_str());
    let (_, one) = get(format!("{url}/events/{id}")).await;
    assert_eq!(
        one["body"]["generation_id"],
        "550e8400-e29b-41d4-a716-000000000007"
    );
    let (status, replayed) = post(&format!("{url}/events/{id}/replay"), String::new()).await;
    assert_eq!(
        (status, replayed["status"].as_str()),
        (200, Some("replayed"))
    );
    wait_for("the replay", Duration::from_secs(10), || {
        seen.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(
        seen.lock().unwrap()[1].1.as_deref(),
        replayed["replay"].as_str()
    );
    let (status, job) = post(
        &format!("{url}/replays"),
        json!({"since": "-1m", "rate": "50/s"}).to_string(),
    )
    .await;
    assert_eq!((status, job["matched"].as_u64()), (202, Some(1)), "{job}");
    wait_for("the job's delivery", Duration::from_secs(10), || {
        seen.lock().unwrap().len() == 3
    })
    .await;
    let (status, bad) = get(format!("{url}/events?where=kind")).await;
    assert_eq!((status, bad["error"].as_str()), (400, Some("bad_pointer")));
    server.abort();
}

/// The tower face fans out like the gateway: one acknowledgement, then each destination with
/// its own target (an in-process handler, a tower service), filter and order, its own series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_ack_fans_out_to_an_in_process_handler_and_a_tower_service() {
    use hookgate::core::{Filter, OrderKey};
    use hookgate::deliver::{Destination, ServiceTarget};
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    // In process: every event, one at a time per model (the ordering key), in arrival order.
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let h = handled.clone();
    let app = Destination::new("app")
        .with_target(handler_fn(move |ev: DeliveredEvent| {
            let h = h.clone();
            async move {
                let v: Value = serde_json::from_slice(ev.body()).unwrap();
                h.lock()
                    .unwrap()
                    .push(v["generation_id"].as_str().unwrap().to_owned());
                Ok(())
            }
        }))
        .with_order(OrderKey::parse("order", "/model").unwrap());
    // A tower service (an axum router), only for failed generations.
    let failed: Arc<Mutex<usize>> = Arc::default();
    let f = failed.clone();
    let alerts = Destination::new("alerts")
        .with_target(ServiceTarget::new(Router::new().route(
            "/{*path}",
            axum::routing::post(move || {
                let f = f.clone();
                async move {
                    *f.lock().unwrap() += 1;
                    "ok"
                }
            }),
        )))
        .with_filter(Filter::new("filter", [("/status".to_string(), json!("failed"))]).unwrap());
    let spool: Arc<dyn Spool> =
        Arc::new(EmbeddedSpool::open(SpoolConfig::new("", Durability::Memory)).unwrap());
    let (webhook, deliverer) = WebhookLayer::builder("o3-video")
        .with_allow(["127.0.0.0/8"])
        .unwrap()
        .with_metrics(&metrics)
        .with_fast_ack_destinations(spool, [app, alerts])
        .build()
        .unwrap();
    assert_eq!(deliverer.destinations(), ["app", "alerts"]);
    let (base, server) = serve(Router::new().route_service(PATH, webhook)).await;
    let url = format!("{base}{PATH}");
    let mut sent = Vec::new();
    for n in 0..8 {
        let status = if n % 2 == 0 { "completed" } else { "TIMEOUT" };
        let body = payload(n, status);
        let v: Value = serde_json::from_str(&body).unwrap();
        sent.push(v["generation_id"].as_str().unwrap().to_owned());
        let (code, ack) = post(&url, body).await;
        assert_eq!((code, ack["status"].as_str()), (200, Some("received")));
    }
    wait_for("every delivery", Duration::from_secs(10), || {
        handled.lock().unwrap().len() == 8 && *failed.lock().unwrap() == 4
    })
    .await;
    assert_eq!(*handled.lock().unwrap(), sent, "in arrival order");
    let (_, text) = render(&registry).unwrap();
    for (d, n) in [("app", 8), ("alerts", 4)] {
        let line = format!(
            r#"hookgate_deliveries_total{{destination="{d}",result="success",route="o3-video"}} {n}"#
        );
        assert!(text.contains(&line), "{line}\n{text}");
    }
    server.abort();
}
