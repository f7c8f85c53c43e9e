//! The tower layers around a real axum server on 127.0.0.1, driven by a real HTTP client.

#[path = "common/promtool.rs"]
mod promtool;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Router};
use hookgate::core::ClientIp;
use hookgate::metrics::Metrics;
use hookgate::tower::{WebhookLayer, WebhookLayerBuilder};
use prometheus::proto::MetricType;
use prometheus::Registry;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PATH: &str = "/webhook/o3-video";

fn completed(id: &str) -> String {
    json!({
        "generation_id": id,
        "status": "completed",
        "video_url": "https://cdn.example.com/videos/550e8400.mp4",
        "model": "kling-o3-video-10s-pro",
        "message": null
    })
    .to_string()
}

fn failed(id: &str, code: &str) -> String {
    json!({
        "generation_id": id,
        "status": "failed",
        "video_url": null,
        "model": "kling-o3-video-10s-pro",
        "message": code
    })
    .to_string()
}

fn uuid(n: u32) -> String {
    format!("550e8400-e29b-41d4-a716-{n:012}")
}

#[derive(Default)]
struct Handler {
    calls: AtomicUsize,
    /// The next `fail` calls answer 500.
    fail: AtomicUsize,
    delay_ms: AtomicUsize,
    bodies: Mutex<Vec<Bytes>>,
    peers: Mutex<Vec<(SocketAddr, ClientIp)>>,
}

async fn handle(
    State(h): State<Arc<Handler>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(client): Extension<ClientIp>,
    body: Bytes,
) -> (StatusCode, &'static str) {
    h.calls.fetch_add(1, Ordering::SeqCst);
    h.peers.lock().unwrap().push((peer, client));
    h.bodies.lock().unwrap().push(body);
    let delay = h.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    let failing = h
        .fail
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        (StatusCode::INTERNAL_SERVER_ERROR, "handler failed")
    } else {
        (StatusCode::OK, r#"{"status":"received"}"#)
    }
}

struct Server {
    addr: SocketAddr,
    handler: Arc<Handler>,
    registry: Registry,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}{PATH}", self.addr.port())
    }
}

fn builder() -> WebhookLayerBuilder {
    WebhookLayer::builder("o3-video")
        .with_allow(["127.0.0.1/32"])
        .unwrap()
}

async fn serve_on(
    listener: TcpListener,
    configure: impl FnOnce(WebhookLayerBuilder) -> WebhookLayerBuilder,
) -> Server {
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let layer = configure(builder()).with_metrics(&metrics).build().unwrap();
    let handler = Arc::new(Handler::default());
    let app = Router::new()
        .route(PATH, post(handle).layer(layer))
        .with_state(handler.clone());
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Server {
        addr,
        handler,
        registry,
        task,
    }
}

async fn serve(configure: impl FnOnce(WebhookLayerBuilder) -> WebhookLayerBuilder) -> Server {
    serve_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), configure).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn post_json(url: &str, body: String) -> (u16, Value) {
    send(
        client()
            .post(url)
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Writes `raw` on a fresh connection and returns the status line's code.
async fn raw_status(addr: SocketAddr, raw: &[u8]) -> u16 {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(raw).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("server answered within 10 s")
            .unwrap_or(0);
        got.extend_from_slice(&buf[..n]);
        if n == 0 || got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn accepted_body_reaches_handler_unchanged() {
    let s = serve(|b| b).await;
    // Odd spacing and key order: the handler must see these exact bytes.
    let body = format!("{{ \"model\":\"kling-o3-video-10s-pro\",  \"status\":\"failed\",\"generation_id\":\"{}\",\"message\":\"TIMEOUT\",\"video_url\":null }}", uuid(1));
    let (status, v) = post_json(&s.url(), body.clone()).await;
    assert_eq!((status, v), (200, json!({"status": "received"})));
    assert_eq!(
        s.handler.bodies.lock().unwrap().as_slice(),
        [Bytes::from(body)]
    );
}

#[tokio::test]
async fn duplicate_is_answered_without_calling_handler() {
    let s = serve(|b| b).await;
    assert_eq!(post_json(&s.url(), completed(&uuid(2))).await.0, 200);
    let (status, v) = post_json(&s.url(), completed(&uuid(2))).await;
    assert_eq!((status, v), (200, json!({"status": "duplicate"})));
    assert_eq!(s.handler.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn disallowed_address_gets_403() {
    let s = serve(|b| b).await;
    let from_127_0_0_2 = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse::<IpAddr>().unwrap()))
        .build()
        .unwrap();
    let (status, v) = send(
        from_127_0_0_2
            .post(s.url())
            .header("content-type", "application/json")
            .body(completed(&uuid(3))),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(v["error"], "ip_not_allowed");
    assert_eq!(s.handler.calls.load(Ordering::SeqCst), 0);
    // The same request from 127.0.0.1 is allowed.
    assert_eq!(post_json(&s.url(), completed(&uuid(3))).await.0, 200);
}

#[tokio::test]
async fn wrong_method_gets_405() {
    let s = serve(|b| b).await;
    let res = client().get(s.url()).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "POST");
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"], "method_not_allowed");
}

#[tokio::test]
async fn declared_oversize_gets_413() {
    let s = serve(|b| b.with_max_body(256)).await;
    let body = failed(&uuid(4), &"X".repeat(400));
    let (status, v) = post_json(&s.url(), body).await;
    assert_eq!(status, 413);
    assert_eq!(v["error"], "payload_too_large");
    assert_eq!(s.handler.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn streamed_oversize_gets_413() {
    let s = serve(|b| b.with_max_body(256)).await;
    // Chunked: no Content-Length, so only the streamed count can catch it.
    let chunk = "a".repeat(200);
    let raw = format!(
        "POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    assert_eq!(raw_status(s.addr, raw.as_bytes()).await, 413);
    assert_eq!(s.handler.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn slow_body_gets_408() {
    let s = serve(|b| b.with_read_timeout(Duration::from_millis(300))).await;
    // Declares 100 bytes, sends 10, then stalls.
    let raw = format!("POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"a\":1234");
    assert_eq!(raw_status(s.addr, raw.as_bytes()).await, 408);
}

#[tokio::test]
async fn non_json_content_type_gets_415() {
    let s = serve(|b| b).await;
    let (status, v) = send(
        client()
            .post(s.url())
            .header("content-type", "text/plain")
            .body(completed(&uuid(5))),
    )
    .await;
    assert_eq!(status, 415);
    assert_eq!(v["error"], "unsupported_media_type");
    // A charset parameter is fine.
    let (status, _) = send(
        client()
            .post(s.url())
            .header("content-type", "application/json; charset=utf-8")
            .body(completed(&uuid(5))),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn malformed_json_gets_400() {
    let s = serve(|b| b).await;
    let (status, v) = post_json(&s.url(), "{\"generation_id\": ".into()).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"], "malformed_json");
}

#[tokio::test]
async fn a_repeated_member_name_gets_400() {
    let s = serve(|b| b).await;
    // The last generation_id is valid; a parser that keeps the first would see another one.
    let body = completed(&uuid(1)).replacen('{', "{\"generation_id\":\"not-a-uuid\",", 1);
    let (status, v) = post_json(&s.url(), body).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("duplicate_key")),
        "{v}"
    );
    assert_eq!(s.handler.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn invalid_payload_gets_422_listing_every_field() {
    let s = serve(|b| b).await;
    let body = json!({"generation_id": "not-a-uuid", "status": "completed", "video_url": "ftp://x", "model": ""});
    let (status, v) = post_json(&s.url(), body.to_string()).await;
    assert_eq!(status, 422);
    assert_eq!(v["error"], "invalid_payload");
    let fields: Vec<&str> = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["/generation_id", "/model", "/video_url"]);
}

#[tokio::test]
async fn spoofed_forwarded_for_from_untrusted_peer_is_ignored() {
    // Only 203.0.113.0/24 is allowed and no proxy is trusted: claiming that address is useless.
    let s = serve(|b| b.with_allow(["203.0.113.0/24"]).unwrap()).await;
    let (status, v) = send(
        client()
            .post(s.url())
            .header("content-type", "application/json")
            .header("x-forwarded-for", "203.0.113.5")
            .body(completed(&uuid(6))),
    )
    .await;
    assert_eq!((status, v["error"].as_str()), (403, Some("ip_not_allowed")));
}

#[tokio::test]
async fn trusted_proxy_forwarded_for_is_used() {
    let s = serve(|b| {
        b.with_allow(["203.0.113.0/24"])
            .unwrap()
            .with_trusted_proxies(["127.0.0.0/8"])
            .unwrap()
    })
    .await;
    let post = |xff: &'static str, n| {
        send(
            client()
                .post(s.url())
                .header("content-type", "application/json")
                .header("x-forwarded-for", xff)
                .body(completed(&uuid(n))),
        )
    };
    // The rightmost untrusted hop is the client; the spoofed left hop is not believed.
    assert_eq!(post("198.51.100.1, 203.0.113.5, 127.0.0.9", 7).await.0, 200);
    let (_, client_ip) = s.handler.peers.lock().unwrap()[0];
    assert_eq!(client_ip.ip, "203.0.113.5".parse::<IpAddr>().unwrap());
    assert!(client_ip.forwarded);
    assert_eq!(post("203.0.113.5, 198.51.100.1", 8).await.0, 403);
    // Garbage from a trusted proxy falls back to the proxy's own address: refused, and counted.
    assert_eq!(post("203.0.113.5, garbage", 9).await.0, 403);
    assert_eq!(
        metric(
            &s.registry,
            "hookgate_forwarded_for_invalid_total",
            &[("route", "o3-video")]
        ),
        1.0
    );
}

#[tokio::test]
async fn ipv4_mapped_ipv6_peer_is_normalised() {
    // A dual-stack socket bound to the mapped loopback sees IPv4 clients as ::ffff:127.0.0.1.
    let listener = match TcpListener::bind("[::ffff:127.0.0.1]:0").await {
        Ok(l) => l,
        Err(e) => panic!("cannot bind a dual-stack socket on ::ffff:127.0.0.1: {e}"),
    };
    let port = listener.local_addr().unwrap().port();
    let s = serve_on(listener, |b| b).await;
    let url = format!("http://127.0.0.1:{port}{PATH}");
    assert_eq!(post_json(&url, completed(&uuid(10))).await.0, 200);
    let (peer, client_ip) = s.handler.peers.lock().unwrap()[0];
    assert_eq!(
        peer.ip(),
        "::ffff:127.0.0.1".parse::<IpAddr>().unwrap(),
        "the peer really is mapped"
    );
    assert_eq!(client_ip.ip, "127.0.0.1".parse::<IpAddr>().unwrap());
}

#[tokio::test]
async fn concurrent_duplicates_reach_handler_once() {
    let s = serve(|b| b).await;
    s.handler.delay_ms.store(100, Ordering::SeqCst);
    let client = client();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let req = client
                .post(s.url())
                .header("content-type", "application/json")
                .body(completed(&uuid(11)));
            tokio::spawn(send(req))
        })
        .collect();
    let mut received = 0;
    for t in tasks {
        let (status, v) = t.await.unwrap();
        match (status, v["status"].as_str(), v["error"].as_str()) {
            (200, Some("received"), _) => received += 1,
            (200, Some("duplicate"), _) | (409, _, Some("duplicate_in_flight")) => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(received, 1);
    assert_eq!(s.handler.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn failed_handler_releases_key_for_retry() {
    let s = serve(|b| b).await;
    s.handler.fail.store(1, Ordering::SeqCst);
    assert_eq!(post_json(&s.url(), completed(&uuid(12))).await.0, 500);
    let (status, v) = post_json(&s.url(), completed(&uuid(12))).await;
    assert_eq!((status, v), (200, json!({"status": "received"})));
    assert_eq!(s.handler.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn key_is_accepted_again_after_ttl() {
    let s = serve(|b| b.with_dedup_ttl(Duration::from_secs(1))).await;
    assert_eq!(
        post_json(&s.url(), completed(&uuid(13))).await.1["status"],
        "received"
    );
    assert_eq!(
        post_json(&s.url(), completed(&uuid(13))).await.1["status"],
        "duplicate"
    );
    // TTLs have one-second resolution: an entry lives between ttl and ttl + 1 s.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        post_json(&s.url(), completed(&uuid(13))).await.1["status"],
        "received"
    );
    assert_eq!(s.handler.calls.load(Ordering::SeqCst), 2);
}

fn metric(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    let families = registry.gather();
    let Some(family) = families.iter().find(|f| f.name() == name) else {
        return f64::NAN;
    };
    family
        .get_metric()
        .iter()
        .find(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| match family.get_field_type() {
            MetricType::COUNTER => m.get_counter().get_value(),
            MetricType::GAUGE => m.get_gauge().get_value(),
            _ => m.get_histogram().get_sample_count() as f64,
        })
        .unwrap_or(f64::NAN)
}

#[tokio::test]
async fn metrics_count_a_known_sequence_and_pass_promtool() {
    let s = serve(|b| b).await;
    let url = s.url();
    assert_eq!(post_json(&url, completed(&uuid(20))).await.0, 200);
    assert_eq!(post_json(&url, failed(&uuid(21), "TIMEOUT")).await.0, 200);
    assert_eq!(
        post_json(&url, failed(&uuid(22), "SOMETHING_NEW")).await.0,
        200
    );
    assert_eq!(post_json(&url, completed(&uuid(20))).await.0, 200); // duplicate
    assert_eq!(post_json(&url, "{".into()).await.0, 400);
    assert_eq!(post_json(&url, "{}".into()).await.0, 422);
    assert_eq!(client().get(&url).send().await.unwrap().status(), 405);

    let r = &s.registry;
    let route = ("route", "o3-video");
    assert_eq!(
        metric(
            r,
            "hookgate_requests_total",
            &[route, ("outcome", "accepted")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            r,
            "hookgate_requests_total",
            &[route, ("outcome", "duplicate")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            r,
            "hookgate_requests_total",
            &[route, ("outcome", "rejected")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            r,
            "hookgate_rejections_total",
            &[route, ("reason", "malformed_json")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            r,
            "hookgate_rejections_total",
            &[route, ("reason", "invalid_payload")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            r,
            "hookgate_rejections_total",
            &[route, ("reason", "method_not_allowed")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            r,
            "hookgate_rejections_total",
            &[route, ("reason", "ip_not_allowed")]
        ),
        0.0
    );
    assert_eq!(
        metric(
            r,
            "hookgate_events_total",
            &[route, ("status", "completed"), ("code", "none")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            r,
            "hookgate_events_total",
            &[route, ("status", "failed"), ("code", "TIMEOUT")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            r,
            "hookgate_events_total",
            &[route, ("status", "failed"), ("code", "other")]
        ),
        1.0
    );
    assert_eq!(metric(r, "hookgate_ack_duration_seconds", &[route]), 7.0);
    assert_eq!(metric(r, "hookgate_dedup_entries", &[]), 3.0);

    let mut text = Vec::new();
    prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut text).unwrap();
    promtool::check(&text);
}

/// Step 9 in the tower face: a GitHub-signed route. A valid signature reaches the handler, a
/// forged one is 401 before the body is parsed, and `X-GitHub-Delivery` is the dedup key.
#[tokio::test]
async fn a_signed_route_refuses_forged_bodies_and_dedups_by_delivery_id() {
    use hmac::Mac as _;
    use hookgate::core::{SignatureScheme, SignatureVerifier, Validator};
    let secrets = ["old-secret".to_owned(), "new-secret".to_owned()];
    let verifier = SignatureVerifier::new(
        "signature",
        SignatureScheme::Github,
        &secrets,
        Duration::from_secs(300),
    )
    .unwrap();
    let server = serve(|b| b.with_validator(Validator::json()).with_signature(verifier)).await;
    let sign = |secret: &str, body: &str| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let push = |delivery: &str, signature: Option<String>, body: &str| {
        let mut req = client()
            .post(server.url())
            .header("content-type", "application/json")
            .header("x-github-delivery", delivery);
        if let Some(s) = signature {
            req = req.header("x-hub-signature-256", s);
        }
        req.body(body.to_owned())
    };
    let body = r#"{"action":"opened","number":1}"#;
    let (status, answer) = send(push("d-1", Some(sign("new-secret", body)), body)).await;
    assert_eq!(status, 200, "{answer}");
    // GitHub's redelivery of d-1, signed with the other listed secret: a duplicate.
    let (status, answer) = send(push("d-1", Some(sign("old-secret", body)), body)).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("duplicate")),
        "{answer}"
    );
    let forged = r#"{"action":"opened","number":2}"#;
    let (status, answer) = send(push("d-2", Some(sign("new-secret", body)), forged)).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("bad_signature")),
        "{answer}"
    );
    // Refused before parsing: not even JSON is looked at.
    let (status, answer) = send(push("d-3", Some(sign("guess", "{")), "{")).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("bad_signature")),
        "{answer}"
    );
    let (status, answer) = send(push("d-4", None, body)).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("missing_signature")),
        "{answer}"
    );
    assert_eq!(
        server.handler.calls.load(Ordering::SeqCst),
        1,
        "only the genuine one reached the handler"
    );
}

/// A live allowlist replaced while the layer serves: the next request is checked against the new
/// networks (what an application refreshing a published list does).
#[tokio::test]
async fn a_live_allowlist_replaced_while_serving() {
    use hookgate::core::{Allowlist, LiveAllowlist};
    let live = LiveAllowlist::new(Allowlist::new("allow", ["127.0.0.1/32"]).unwrap());
    let handle = live.clone();
    let server = serve(|b| b.with_live_allow(live)).await;
    let (status, _) = post_json(&server.url(), completed(&uuid(41))).await;
    assert_eq!(status, 200);
    let published = br#"{"hooks":["192.0.2.0/24"]}"#;
    handle.replace(Allowlist::from_json("allow", published, "/hooks").unwrap());
    let (status, answer) = post_json(&server.url(), completed(&uuid(42))).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (403, Some("ip_not_allowed")),
        "{answer}"
    );
}
