//! Fast acknowledgement and delivery over real sockets: an axum server with the FastAck stack, a
//! real embedded spool in a temporary directory, and real upstreams on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use hookgate::deliver::{retry_floor, Deliverer, DeliveryPolicy, HttpTarget, ServiceTarget};
use hookgate::metrics::Metrics;
use hookgate::store::{now_ms, Durability, EmbeddedSpool, Event, Spool, SpoolConfig};
use hookgate::tower::{FastAck, Webhook, WebhookLayer};
use http_body_util::BodyExt;
use prometheus::Registry;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tower::Layer;

const PATH: &str = "/webhook/o3-video";

fn payload(n: u32) -> String {
    json!({
        "generation_id": format!("550e8400-e29b-41d4-a716-{n:012}"),
        "status": "failed",
        "video_url": null,
        "model": "kling-o3-video-10s-pro",
        "message": "TIMEOUT"
    })
    .to_string()
}

/// One request as an upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    event_id: String,
    attempt: u32,
    received_at_ms: u64,
    at_ms: u64,
    status: u16,
    body: Bytes,
}

/// An upstream that records every request and answers with `status` (or, when `script` has
/// entries, pops its answer from there first).
#[derive(Default)]
struct Upstream {
    status: AtomicU16,
    script: Mutex<Vec<(u16, Option<&'static str>)>>,
    seen: Mutex<Vec<Seen>>,
}

impl Upstream {
    fn new(status: u16) -> Arc<Self> {
        let u = Arc::new(Upstream::default());
        u.status.store(status, Ordering::SeqCst);
        u
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many delivered requests carried `body`.
    fn delivered_copies(&self, body: &str) -> usize {
        self.delivered()
            .iter()
            .filter(|s| s.body == body.as_bytes())
            .count()
    }

    fn delivered(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| (200..300).contains(&s.status))
            .collect()
    }
}

async fn upstream_handler(
    State(u): State<Arc<Upstream>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let scripted = {
        let mut script = u.script.lock().unwrap();
        (!script.is_empty()).then(|| script.remove(0))
    };
    let (status, retry_after) = scripted.unwrap_or((u.status.load(Ordering::SeqCst), None));
    let received_at = header("x-hookgate-received-at");
    u.seen.lock().unwrap().push(Seen {
        event_id: header("x-hookgate-event-id"),
        attempt: header("x-hookgate-attempt").parse().unwrap_or(0),
        received_at_ms: humantime::parse_rfc3339(&received_at)
            .map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64)
            .unwrap_or(0),
        at_ms: now_ms(),
        status,
        body,
    });
    let mut res = (StatusCode::from_u16(status).unwrap(), "upstream").into_response();
    if let Some(ra) = retry_after {
        res.headers_mut().insert("retry-after", ra.parse().unwrap());
    }
    res
}

fn upstream_app(u: Arc<Upstream>) -> Router {
    Router::new()
        .route(PATH, post(upstream_handler))
        .with_state(u)
}

async fn serve(listener: TcpListener, app: Router) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    })
}

/// Serves `app` on a free loopback port; returns the URL of [`PATH`] there.
async fn serve_local(app: Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{PATH}", listener.local_addr().unwrap());
    (url, serve(listener, app).await)
}

fn memory_spool() -> Arc<dyn Spool> {
    Arc::new(EmbeddedSpool::open(SpoolConfig::new("", Durability::Memory)).unwrap())
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Event `n` of route `r`, as the fast-ack layer would store it.
fn event(n: u32) -> Event {
    let headers = vec![("content-type".into(), b"application/json".to_vec())];
    Event::new(
        "r",
        "203.0.113.9".parse().unwrap(),
        "POST",
        PATH,
        headers,
        payload(n).into(),
    )
}

/// A worker for route `r` delivering to `url`.
fn http_deliverer(
    spool: &Arc<dyn Spool>,
    policy: &DeliveryPolicy,
    metrics: &Metrics,
    url: &str,
) -> Deliverer {
    let target = HttpTarget::new("upstream", url, policy).unwrap();
    Deliverer::start(
        "r",
        spool.clone(),
        policy.clone(),
        metrics.route("r").delivery().clone(),
    )
    .unwrap()
    .with_target(Arc::new(target))
}

fn fast_policy() -> DeliveryPolicy {
    DeliveryPolicy {
        max_attempts: 50,
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        concurrency: 4,
        ..DeliveryPolicy::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_then_up_gets_every_event_with_backoff() {
    // A port with nothing listening: connections are refused until the upstream starts.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let spool: Arc<dyn Spool> =
        Arc::new(EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap());
    let metrics = Metrics::new(&Registry::new()).unwrap();
    // The circuit breaker off: each event retries on its own schedule (tests/gateway.rs has the
    // breaker's own test).
    let policy = DeliveryPolicy {
        open_after: 0,
        ..fast_policy()
    };
    let url = format!("http://127.0.0.1:{port}{PATH}");
    let deliverer = http_deliverer(&spool, &policy, &metrics, &url);
    let mut ids = Vec::new();
    for n in 0..20 {
        let e = event(n);
        spool.append(&e).await.unwrap();
        ids.push(e.id.to_string());
        deliverer.schedule_new(e);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let upstream = Upstream::new(200);
    let _server = serve(
        TcpListener::bind(("127.0.0.1", port)).await.unwrap(),
        upstream_app(upstream.clone()),
    )
    .await;
    wait_for("all 20 events", Duration::from_secs(20), || {
        upstream.delivered().len() >= 20
    })
    .await;

    let delivered = upstream.delivered();
    let mut got: Vec<String> = delivered.iter().map(|s| s.event_id.clone()).collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "every event delivered exactly once");
    for s in &delivered {
        assert!(
            s.attempt > 1,
            "attempts grew while the upstream was down: {s:?}"
        );
        // Attempt n cannot come before the sum of the first n-1 backoff floors.
        let floor: u64 = (1..s.attempt)
            .map(|k| retry_floor(&policy, k).as_millis() as u64)
            .sum();
        let waited = s.at_ms - s.received_at_ms;
        assert!(
            waited + 5 >= floor,
            "attempt {} after {waited} ms, floor {floor} ms",
            s.attempt
        );
    }
    // The upstream records before it answers: the spool learns of the last delivery just after.
    wait_for("the spool to empty", Duration::from_secs(5), || {
        spool.stats().pending == 0
    })
    .await;
    deliverer.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_for_backoff_and_retry_after() {
    let upstream = Upstream::new(200);
    *upstream.script.lock().unwrap() =
        vec![(503, None), (500, None), (429, Some("1")), (200, None)];
    let (url, _server) = serve_local(upstream_app(upstream.clone())).await;
    let spool = memory_spool();
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    // Retry-After is honoured up to max_backoff: leave room for the 1 s asked.
    let policy = DeliveryPolicy {
        max_backoff: Duration::from_secs(2),
        ..fast_policy()
    };
    let deliverer = http_deliverer(&spool, &policy, &metrics, &url);
    let e = event(1);
    spool.append(&e).await.unwrap();
    deliverer.schedule_new(e);
    wait_for("delivery", Duration::from_secs(10), || {
        !upstream.delivered().is_empty()
    })
    .await;

    let seen = upstream.seen();
    let attempts: Vec<u32> = seen.iter().map(|s| s.attempt).collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    let gap = |i: usize| seen[i + 1].at_ms - seen[i].at_ms;
    assert!(
        gap(0) + 2 >= retry_floor(&policy, 1).as_millis() as u64,
        "gap after 503: {}",
        gap(0)
    );
    assert!(
        gap(1) + 2 >= retry_floor(&policy, 2).as_millis() as u64,
        "gap after 500: {}",
        gap(1)
    );
    assert!(
        gap(2) + 2 >= 1000,
        "Retry-After: 1 honoured (gap {} ms)",
        gap(2)
    );
    let d = metrics.route("r");
    wait_for("the success to be counted", Duration::from_secs(5), || {
        d.delivery().success.get() == 1
    })
    .await;
    assert_eq!(d.delivery().retry.get(), 3);
    assert_eq!(d.delivery().spool_depth.get(), 0);
    deliverer.shutdown(Duration::from_secs(2)).await;
}

/// The FastAck stack in an axum server, whose handler is a scripted upstream.
struct Stack {
    url: String,
    upstream: Arc<Upstream>,
    deliverer: Deliverer,
    registry: Registry,
    server: tokio::task::JoinHandle<()>,
}

impl Stack {
    /// Lets go of everything holding the spool: the server (and its connections) and the
    /// deliverer.
    async fn stop(self) {
        let Stack {
            server, deliverer, ..
        } = self;
        server.abort();
        let _ = server.await;
        drop(deliverer);
    }
}

/// The whole pipeline with fast acknowledgement into `spool`, loopback allowed, delivering to
/// the scripted upstream's axum handler in-process.
fn fast_ack(
    spool: Arc<dyn Spool>,
    metrics: &Metrics,
    upstream: &Arc<Upstream>,
) -> (Webhook<FastAck>, Deliverer) {
    WebhookLayer::builder("o3-video")
        .with_allow(["127.0.0.1/32"])
        .unwrap()
        .with_metrics(metrics)
        .with_fast_ack(
            spool,
            ServiceTarget::new(post(upstream_handler).with_state(upstream.clone())),
        )
        .with_delivery_policy(fast_policy())
        .build()
        .unwrap()
}

async fn stack(spool: Arc<dyn Spool>, upstream: Arc<Upstream>) -> Stack {
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let (webhook, deliverer) = fast_ack(spool, &metrics, &upstream);
    let app = Router::new().route_service(PATH, webhook);
    let (url, server) = serve_local(app).await;
    Stack {
        url,
        upstream,
        deliverer,
        registry,
        server,
    }
}

async fn send(url: &str, body: String) -> (u16, Option<String>, Value) {
    let res = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, res.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_event_is_dead_lettered_then_replayed_once() {
    let spool = memory_spool();
    let s = stack(spool, Upstream::new(400)).await;
    let body = payload(7);
    let (status, _, ack) = send(&s.url, body.clone()).await;
    assert_eq!((status, ack["status"].as_str()), (200, Some("received")));
    let id = ack["event_id"].as_str().unwrap().to_owned();
    wait_for("the dead letter", Duration::from_secs(10), || {
        s.deliverer.dead_letters(None, 10).unwrap().len() == 1
    })
    .await;
    let dead = &s.deliverer.dead_letters(None, 10).unwrap()[0];
    assert_eq!(dead.id.to_string(), id);
    assert_eq!(
        dead.destinations[0].history.last().unwrap().outcome,
        "status 400"
    );
    assert_eq!(s.upstream.seen().len(), 1, "a 400 is not retried");

    s.upstream.status.store(200, Ordering::SeqCst);
    s.deliverer.replay(dead.id).await.unwrap();
    wait_for("the replayed delivery", Duration::from_secs(10), || {
        s.upstream.delivered().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered = s.upstream.delivered();
    assert_eq!(delivered.len(), 1, "delivered once");
    assert_eq!(
        (delivered[0].event_id.as_str(), delivered[0].attempt),
        (id.as_str(), 2),
        "same id, history kept"
    );
    assert_eq!(delivered[0].body, body.as_bytes(), "byte for byte");
    assert!(s.deliverer.dead_letters(None, 10).unwrap().is_empty());
    wait_for("the delivery to be counted", Duration::from_secs(5), || {
        render(&s.registry)
            .contains(r#"hookgate_deliveries_total{destination="upstream",result="success",route="o3-video"} 1"#)
    })
    .await;
    let text = render(&s.registry);
    assert!(
        text.contains(r#"hookgate_deliveries_total{destination="upstream",result="dead_letter",route="o3-video"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"hookgate_dead_letters{destination="upstream",route="o3-video"} 0"#),
        "{text}"
    );
    s.server.abort();
}

fn render(registry: &Registry) -> String {
    let mut text = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut text,
    )
    .unwrap();
    String::from_utf8(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_answers_503_and_the_retry_is_accepted_once_space_frees() {
    let spool: Arc<dyn Spool> = Arc::new(
        EmbeddedSpool::open(SpoolConfig::new("", Durability::Memory).with_max_events(2)).unwrap(),
    );
    let s = stack(spool.clone(), Upstream::new(503)).await;
    assert_eq!(send(&s.url, payload(1)).await.0, 200);
    assert_eq!(send(&s.url, payload(2)).await.0, 200);
    let (status, retry_after, body) = send(&s.url, payload(3)).await;
    assert_eq!(
        (status, retry_after.as_deref(), body["error"].as_str()),
        (503, Some("5"), Some("spool_full"))
    );

    s.upstream.status.store(200, Ordering::SeqCst);
    wait_for("the spool to drain", Duration::from_secs(10), || {
        spool.stats().pending == 0
    })
    .await;
    let (status, _, body) = send(&s.url, payload(3)).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("received")),
        "the retry is not a duplicate"
    );
    wait_for("event 3", Duration::from_secs(10), || {
        s.upstream.delivered().len() == 3
    })
    .await;
    s.server.abort();
}

/// Opens the fsync spool in `dir`, waiting (bounded) for a previous instance to release the
/// directory once its last task ends.
async fn reopen_fsync(dir: &std::path::Path) -> Arc<dyn Spool> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match EmbeddedSpool::open(SpoolConfig::new(dir, Durability::Fsync)) {
            Ok(s) => return Arc::new(s),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("cannot reopen the spool: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open = || reopen_fsync(dir.path());
    let first = stack(open().await, Upstream::new(200)).await;
    assert_eq!(send(&first.url, payload(1)).await.2["status"], "received");
    wait_for("delivery", Duration::from_secs(10), || {
        first.upstream.delivered().len() == 1
    })
    .await;
    first.deliverer.shutdown(Duration::from_secs(2)).await;
    // Everything holding the spool goes: the server (and its connections) and the deliverer.
    first.stop().await;

    let second = stack(open().await, Upstream::new(200)).await;
    let (status, _, body) = send(&second.url, payload(1)).await;
    assert_eq!((status, body), (200, json!({"status": "duplicate"})));
    assert_eq!(send(&second.url, payload(2)).await.2["status"], "received");
    wait_for("event 2", Duration::from_secs(10), || {
        second.upstream.delivered().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        second.upstream.delivered().len(),
        1,
        "the duplicate was not delivered"
    );
    second.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_ack_alone_forwards_the_stored_request() {
    // FastAck used directly (no WebhookLayer), delivering to a tower service.
    let spool = memory_spool();
    let metrics = Metrics::new(&Registry::new()).unwrap();
    let upstream = Upstream::new(200);
    let deliverer = Deliverer::start(
        "plain",
        spool,
        fast_policy(),
        metrics.route("plain").delivery().clone(),
    )
    .unwrap()
    .with_target(Arc::new(ServiceTarget::new(
        post(upstream_handler).with_state(upstream.clone()),
    )));
    let app = Router::new().route_service(
        PATH,
        tower::ServiceBuilder::new()
            .layer(hookgate::tower::ValidateLayer::new(
                hookgate::core::Validator::json(),
            ))
            .service(FastAck::new(deliverer)),
    );
    let (url, server) = serve_local(app).await;
    let (status, _, ack) = send(&url, r#"{"any":"json"}"#.into()).await;
    assert_eq!(status, 200);
    wait_for("delivery", Duration::from_secs(10), || {
        upstream.delivered().len() == 1
    })
    .await;
    assert_eq!(
        upstream.delivered()[0].event_id,
        ack["event_id"].as_str().unwrap()
    );
    assert_eq!(upstream.delivered()[0].body, r#"{"any":"json"}"#.as_bytes());
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_all_and_purge_all() {
    let upstream = Upstream::new(400);
    let (url, _server) = serve_local(upstream_app(upstream.clone())).await;
    let spool = memory_spool();
    let metrics = Metrics::new(&Registry::new()).unwrap();
    let policy = fast_policy();
    let deliverer = http_deliverer(&spool, &policy, &metrics, &url);
    for n in 0..4 {
        let e = event(n);
        spool.append(&e).await.unwrap();
        deliverer.schedule_new(e);
    }
    wait_for("4 dead letters", Duration::from_secs(10), || {
        deliverer.dead_letters(None, 10).unwrap().len() == 4
    })
    .await;
    // Purge one, replay the rest once the upstream is fixed.
    let first = deliverer.dead_letters(None, 1).unwrap()[0].id;
    deliverer.purge(first).await.unwrap();
    assert!(deliverer.purge(first).await.is_err(), "purged twice");
    upstream.status.store(200, Ordering::SeqCst);
    assert_eq!(deliverer.replay_all().await.unwrap(), 3);
    wait_for("3 deliveries", Duration::from_secs(10), || {
        upstream.delivered().len() == 3
    })
    .await;
    assert!(deliverer.dead_letters(None, 10).unwrap().is_empty());
    assert_eq!(deliverer.purge_all().await.unwrap(), 0);
    let d = metrics.route("r");
    wait_for("the gauges", Duration::from_secs(5), || {
        d.delivery().spool_depth.get() == 0
    })
    .await;
    assert_eq!(d.delivery().dead_letters.get(), 0);
    deliverer.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_stops_the_worker_and_frees_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let policy = fast_policy();
    let metrics = Metrics::new(&Registry::new()).unwrap();
    {
        let spool: Arc<dyn Spool> =
            Arc::new(EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap());
        let deliverer = http_deliverer(&spool, &policy, &metrics, "http://127.0.0.1:9/unused");
        drop(deliverer);
    }
    // The worker's tasks held the spool; once they stop, the directory can be opened again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)) {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "the spool is still held: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_scheduled_from_outside_the_runtime_are_delivered() {
    // schedule_new takes a shortcut straight to an attempt; a thread without a runtime must
    // fall back to the worker's dispatcher instead of panicking.
    let upstream = Upstream::new(200);
    let (url, _server) = serve_local(upstream_app(upstream.clone())).await;
    let spool = memory_spool();
    let metrics = Metrics::new(&Registry::new()).unwrap();
    let deliverer = http_deliverer(&spool, &fast_policy(), &metrics, &url);
    let (inside, outside) = (event(1), event(2));
    spool.append(&inside).await.unwrap();
    spool.append(&outside).await.unwrap();
    deliverer.schedule_new(inside);
    let handle = deliverer.clone();
    std::thread::spawn(move || handle.schedule_new(outside))
        .join()
        .expect("schedule_new panicked outside the runtime");
    wait_for("both events", Duration::from_secs(20), || {
        upstream.delivered().len() >= 2
    })
    .await;
    assert_eq!(upstream.delivered().len(), 2);
}

/// The request the stack answers, as a sender posts it.
fn request(body: String) -> axum::http::Request<Body> {
    let mut req = axum::http::Request::post(PATH)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    req.extensions_mut()
        .insert(hookgate::tower::PeerAddr("127.0.0.1:4000".parse().unwrap()));
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_that_commits_after_the_client_left_is_delivered_and_keeps_its_key() {
    use std::future::Future;
    use tower::{Service, ServiceExt};
    let dir = tempfile::tempdir().unwrap();
    // fsync: the commit takes long enough for the first poll to find it pending.
    let spool: Arc<dyn Spool> =
        Arc::new(EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap());
    let upstream = Upstream::new(200);
    let metrics = Metrics::new(&Registry::new()).unwrap();
    let (mut svc, _deliverer) = fast_ack(spool, &metrics, &upstream);
    // The response future is polled once, with the append queued, then dropped: the client hung
    // up. (If the commit won the race to that first poll, there is nothing to test: try again.)
    let mut n = 0;
    loop {
        n += 1;
        assert!(n < 50, "every append resolved at its first poll");
        let call = ServiceExt::<axum::http::Request<Body>>::ready(&mut svc)
            .await
            .unwrap()
            .call(request(payload(n)));
        let mut call = Box::pin(call);
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
        if first.is_pending() {
            break;
        }
    }
    // Committed anyway: delivered without a restart...
    wait_for("the delivery", Duration::from_secs(10), || {
        upstream.delivered_copies(&payload(n)) > 0
    })
    .await;
    // ...and the sender's retry is a duplicate, not a second event.
    let res = ServiceExt::<axum::http::Request<Body>>::ready(&mut svc)
        .await
        .unwrap()
        .call(request(payload(n)))
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"status":"duplicate"}"#);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.delivered_copies(&payload(n)), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_hang_up_get_one_event_each() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let open = || reopen_fsync(dir.path());
    let upstream = Upstream::new(200);
    let first = stack(open().await, upstream.clone()).await;
    let addr = first
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let hangups: Vec<_> = (0..300)
        .map(|n| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let body = payload(n);
                let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
                let request = format!(
                    "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(request.as_bytes()).await.unwrap();
            })
        })
        .collect();
    for h in hangups {
        h.await.unwrap();
    }
    // The sender's retries: received or duplicate, after a 409 while the first is still in
    // flight (retried, as the sender does).
    for n in 0..300 {
        let answered = async || {
            let (status, _, body) = send(&first.url, payload(n)).await;
            (status != 409).then_some((status, body))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let got = loop {
            match answered().await {
                Some(got) => break Some(got),
                None if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                None => break None,
            }
        };
        assert_eq!(got.as_ref().map(|g| g.0), Some(200), "{got:?}");
    }
    wait_for("every generation", Duration::from_secs(30), || {
        upstream
            .delivered()
            .iter()
            .map(|s| s.body.clone())
            .collect::<std::collections::HashSet<_>>()
            .len()
            == 300
    })
    .await;
    first.deliverer.shutdown(Duration::from_secs(2)).await;
    first.stop().await;
    // A restart delivers whatever was committed but never scheduled.
    let second = stack(open().await, upstream.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ids: std::collections::HashMap<Bytes, std::collections::HashSet<String>> =
        Default::default();
    for s in upstream.delivered() {
        ids.entry(s.body).or_default().insert(s.event_id);
    }
    for n in 0..300 {
        let got = ids.get(payload(n).as_bytes()).map(|s| s.len()).unwrap_or(0);
        assert_eq!(
            got, 1,
            "generation {n} reached the upstream under {got} event ids"
        );
    }
    second.server.abort();
}

/// A layer that gives up on its inner service after one poll and answers 503 itself (as a
/// timeout or load-shedding layer does), dropping the inner future.
#[derive(Clone)]
struct GivesUp<S>(S);

type Answer = axum::http::Response<http_body_util::Full<Bytes>>;

impl<S, B> tower::Service<axum::http::Request<B>> for GivesUp<S>
where
    S: tower::Service<axum::http::Request<B>, Response = Answer> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Answer;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Answer, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        use std::future::Future;
        let mut inner = Box::pin(self.0.call(req));
        Box::pin(async move {
            let first =
                std::future::poll_fn(|cx| std::task::Poll::Ready(inner.as_mut().poll(cx))).await;
            match first {
                std::task::Poll::Ready(res) => res,
                std::task::Poll::Pending => {
                    drop(inner);
                    let mut res = Answer::new("gave up".into());
                    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    Ok(res)
                }
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_between_dedup_and_fast_ack_cannot_release_a_key_the_spool_holds() {
    use hookgate::core::{DedupKeySpec, Validator};
    use hookgate::store::MemoryDedupStore;
    use hookgate::tower::{DedupLayer, ValidateLayer};
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    // fsync: the commit takes long enough for the first poll to find it pending.
    let spool: Arc<dyn Spool> =
        Arc::new(EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap());
    let metrics = Metrics::new(&Registry::new()).unwrap();
    let upstream = Upstream::new(200);
    let deliverer = Deliverer::start(
        "r",
        spool,
        fast_policy(),
        metrics.route("r").delivery().clone(),
    )
    .unwrap()
    .with_target(Arc::new(ServiceTarget::new(
        post(upstream_handler).with_state(upstream.clone()),
    )));
    let dedup = DedupLayer::new(
        MemoryDedupStore::new(1000),
        "r",
        DedupKeySpec::default(),
        Duration::from_secs(60),
    );
    let svc = ValidateLayer::new(Validator::runblob())
        .layer(dedup.layer(GivesUp(FastAck::new(deliverer))));
    let mut n = 0;
    loop {
        n += 1;
        assert!(n < 50, "every append resolved at its first poll");
        let res = svc.clone().oneshot(request(payload(n))).await.unwrap();
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
    }
    wait_for("the delivery", Duration::from_secs(10), || {
        upstream.delivered_copies(&payload(n)) > 0
    })
    .await;
    // The sender retries the 503: the append committed, so this is a duplicate.
    let res = svc.clone().oneshot(request(payload(n))).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"status":"duplicate"}"#);
}
