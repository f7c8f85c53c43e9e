//! Destinations (issue 23), through the real gateway over sockets, on the embedded store and on
//! Redis (two instances sharing it where "across instances" is the point):
//! - fan-out: two destinations both receive every event, the filtered one only its share;
//! - order: 200 keys × 20 events through a destination that fails 30% of attempts at random;
//!   each key's events arrive in order, all of them, no gap;
//! - rate: `rate = "100/s"` over 1,000 events takes 9.5–12 s;
//! - pause: kill -9 while paused, restart, still paused; after resume, all delivered;
//! - reload: removing a destination with events waiting is refused, unless forced.

mod common;
#[path = "support/redis.rs"]
mod redis_server;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Router;
use common::*;
use serde_json::{json, Value};

/// Where the gateways keep their events.
#[derive(Clone)]
enum Store {
    Embedded,
    Redis { url: String, prefix: String },
}

impl Store {
    fn lines(&self) -> String {
        match self {
            Store::Embedded => String::new(),
            Store::Redis { url, prefix } => format!(
                "[store]\nbackend = \"redis\"\nurl = \"{url}\"\nprefix = \"{prefix}\"\nvisibility_timeout = \"3s\"\n"
            ),
        }
    }
}

/// A gateway named `name` (its own directory under `dir`) on `store`, with the route `route`
/// (its `[[route]]` and `[[route.destination]]` tables).
async fn gateway(dir: &Path, name: &str, store: &Store, route: &str) -> Gateway {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let (public, admin) = (free_port(), free_port());
    let text = config(
        public,
        admin,
        &dir.join("data"),
        "",
        &format!("{}{route}", store.lines()),
    );
    Gateway::start(&dir, public, admin, &text).await
}

/// The route's head: JSON payloads, deduplicated by `/id`, from loopback.
fn route_head() -> String {
    format!(
        "[[route]]\npath = \"{PATH}\"\nprofile = \"json\"\ndedup = {{ key = \"/id\" }}\nallow = [\"127.0.0.1/32\"]\n"
    )
}

/// A destination table.
fn destination(name: &str, url: &str, extra: &str) -> String {
    format!("[[route.destination]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n")
}

/// What one test upstream received: each request's JSON body, in arrival order.
#[derive(Clone, Default)]
struct Recorder {
    received: Arc<Mutex<Vec<Value>>>,
    /// When each was received.
    at: Arc<Mutex<Vec<Instant>>>,
    /// Of every attempt, the share refused with 503 (0.0: none).
    fail_ratio: f64,
}

/// A real HTTP upstream on 127.0.0.1 that records what it accepts and refuses `fail_ratio` of
/// the attempts (at random) with 503.
async fn recorder(fail_ratio: f64) -> (String, Recorder) {
    let state = Recorder {
        fail_ratio,
        ..Recorder::default()
    };
    let app = Router::new()
        .fallback(axum::routing::post(
            |State(s): State<Recorder>, body: Bytes| async move {
                if s.fail_ratio > 0.0 && fastrand::f64() < s.fail_ratio {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                s.received.lock().unwrap().push(v);
                s.at.lock().unwrap().push(Instant::now());
                StatusCode::OK
            },
        ))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), state)
}

impl Recorder {
    fn bodies(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Waits (bounded) until `n` were received.
    async fn wait_for(&self, n: usize, within: Duration) -> usize {
        poll(within, Duration::from_millis(20), async || {
            (self.count() >= n).then_some(())
        })
        .await;
        self.count()
    }
}

/// Sends `body` to `gateway`; asserts it was acknowledged; returns the event id.
async fn send(client: &reqwest::Client, gateway: &Gateway, body: &Value) -> String {
    let (status, _, text) = post(client, &gateway.url(PATH), body.to_string()).await;
    assert_eq!(status, 200, "{text}");
    let ack: Value = serde_json::from_str(&text).unwrap();
    ack["event_id"].as_str().unwrap().to_owned()
}

/// The admin API's JSON answer to `method path` (a change sends `{}` as JSON).
async fn admin(gateway: &Gateway, method: &str, path: &str) -> (u16, Value) {
    let client = client();
    let url = gateway.admin_url(path);
    let request = match method {
        "GET" => client.get(&url),
        "POST" => client
            .post(&url)
            .header("content-type", "application/json")
            .body("{}"),
        other => panic!("{other}"),
    };
    let response = request.send().await.expect("the admin API answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn redis_store(url: &str) -> Store {
    Store::Redis {
        url: url.to_owned(),
        prefix: redis_server::prefix(),
    }
}

// ---------------------------------------------------------------------------------------------
// Fan-out and filters.

async fn fan_out(store: Store, dir: &Path) {
    let (app_url, app) = recorder(0.0).await;
    let (alerts_url, alerts) = recorder(0.0).await;
    let route = format!(
        "{}{}{}",
        route_head(),
        destination("app", &app_url, ""),
        destination(
            "alerts",
            &alerts_url,
            "filter = { \"/type\" = [\"invoice.payment_failed\", \"charge.failed\"] }"
        )
    );
    let g = gateway(dir, "fan", &store, &route).await;
    let client = client();
    let mut failed_ids = Vec::new();
    let mut all_ids = Vec::new();
    for i in 0..200 {
        let kind = match i % 4 {
            0 => "invoice.payment_failed",
            1 => "charge.failed",
            _ => "invoice.paid",
        };
        let body = json!({"id": format!("evt_{i}"), "type": kind, "n": i});
        let id = send(&client, &g, &body).await;
        if kind != "invoice.paid" {
            failed_ids.push(id.clone());
        }
        all_ids.push(id);
    }
    assert_eq!(app.wait_for(200, Duration::from_secs(30)).await, 200);
    assert_eq!(alerts.wait_for(100, Duration::from_secs(30)).await, 100);
    // And nothing more arrives at either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((app.count(), alerts.count()), (200, 100));
    let kinds: Vec<String> = alerts
        .bodies()
        .iter()
        .map(|b| b["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        kinds.iter().all(|k| k != "invoice.paid"),
        "only its share: {kinds:?}"
    );
    // The history: each destination's status; `filtered` where the filter left it out.
    let (status, paid) = admin(&g, "GET", &format!("/events/{}", all_ids[2])).await;
    assert_eq!(status, 200, "{paid}");
    let at: HashMap<&str, &str> = paid["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap(), d["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        at,
        HashMap::from([("app", "delivered"), ("alerts", "filtered")])
    );
    let (_, page) = admin(
        &g,
        "GET",
        &format!("/events?route={PATH}&destination=alerts&status=delivered&limit=1000"),
    )
    .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 100, "{page}");
    let (_, page) = admin(&g, "GET", "/events?status=filtered&limit=1000").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 100);
    // A replay to one destination reaches only it.
    let (status, replayed) = admin(
        &g,
        "POST",
        &format!("/events/{}/replay?destination=alerts", failed_ids[0]),
    )
    .await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(alerts.wait_for(101, Duration::from_secs(10)).await, 101);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count(), 200, "the other destination got nothing");
    // Per-destination series.
    let m = g.metrics().await;
    for (d, n) in [("app", 200.0), ("alerts", 101.0)] {
        let line = format!(
            "hookgate_deliveries_total{{destination=\"{d}\",result=\"success\",route=\"{PATH}\"}}"
        );
        assert_eq!(series(&m, &line), n, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_fans_out_to_two_destinations_and_filters_one() {
    let dir = tempfile::tempdir().unwrap();
    fan_out(Store::Embedded, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_fans_out_to_two_destinations_and_filters_one() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _server) = redis_server::shared(dir.path());
    fan_out(redis_store(&url), dir.path()).await;
}

// ---------------------------------------------------------------------------------------------
// Per-key order.

const KEYS: usize = 200;
const PER_KEY: usize = 20;

/// 200 keys × 20 events, each key's sent one after the other (each acknowledged before the
/// next), spread over `gateways` (event `i` of a key to gateway `i % n`: with Redis, a key's
/// events arrive at different instances), to a destination that refuses 30% of attempts.
async fn ordered(gateways: &[Gateway], upstream: &Recorder) {
    let client = client();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..KEYS {
        let client = client.clone();
        let urls: Vec<String> = gateways.iter().map(|g| g.url(PATH)).collect();
        tasks.spawn(async move {
            for seq in 0..PER_KEY {
                let body = json!({"id": format!("k{k}-{seq}"), "key": format!("k{k}"), "seq": seq});
                let url = &urls[seq % urls.len()];
                let (status, _, text) = post(&client, url, body.to_string()).await;
                assert_eq!(status, 200, "{text}");
            }
        });
    }
    tasks.join_all().await;
    let total = KEYS * PER_KEY;
    let got = upstream.wait_for(total, Duration::from_secs(240)).await;
    assert_eq!(got, total, "every event delivered");
    // None twice: wait a moment for stragglers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut by_key: HashMap<String, Vec<u64>> = HashMap::new();
    for b in upstream.bodies() {
        by_key
            .entry(b["key"].as_str().unwrap().to_owned())
            .or_default()
            .push(b["seq"].as_u64().unwrap());
    }
    assert_eq!(by_key.len(), KEYS);
    let want: Vec<u64> = (0..PER_KEY as u64).collect();
    for (key, seqs) in &by_key {
        assert_eq!(seqs, &want, "key {key}: in order, all, no gap");
    }
    eprintln!(
        "{total} ordered events over {} gateway(s), 30% of attempts refused: {:.1} s",
        gateways.len(),
        started.elapsed().as_secs_f64()
    );
}

/// An ordered destination that retries fast and never opens its circuit (30% refused at
/// random would open it now and then: slower, not wrong).
fn ordered_route(url: &str) -> String {
    format!(
        "{}{}[route.destination.delivery]\nmax_attempts = 100\nbackoff = \"10ms\"\nmax_backoff = \"40ms\"\nopen_after = 0\nconcurrency = 32\n",
        route_head(),
        destination("app", url, "order = \"/key\"")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_delivers_each_keys_events_in_order_through_failures() {
    let dir = tempfile::tempdir().unwrap();
    let (url, upstream) = recorder(0.3).await;
    let g = gateway(dir.path(), "order", &Store::Embedded, &ordered_route(&url)).await;
    ordered(std::slice::from_ref(&g), &upstream).await;
    let m = g.metrics().await;
    let released = format!("hookgate_order_released_total{{destination=\"app\",route=\"{PATH}\"}}");
    assert_eq!(series(&m, &released), 0.0, "no head was dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_delivers_each_keys_events_in_order_across_two_instances() {
    let dir = tempfile::tempdir().unwrap();
    let (redis, _server) = redis_server::shared(dir.path());
    let store = redis_store(&redis);
    let (url, upstream) = recorder(0.3).await;
    let route = ordered_route(&url);
    let a = gateway(dir.path(), "a", &store, &route).await;
    let b = gateway(dir.path(), "b", &store, &route).await;
    ordered(&[a, b], &upstream).await;
}

/// A key's head dead-lettered: the next event of its key goes on, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_lettered_head_lets_the_next_of_its_key_go() {
    let dir = tempfile::tempdir().unwrap();
    // Refuses every attempt of seq 0 for good (400); takes the rest.
    let received = Arc::new(Mutex::new(Vec::<u64>::new()));
    let r = received.clone();
    let app = Router::new().fallback(axum::routing::post(move |body: Bytes| {
        let r = r.clone();
        async move {
            let v: Value = serde_json::from_slice(&body).unwrap();
            let seq = v["seq"].as_u64().unwrap();
            if seq == 0 {
                return StatusCode::BAD_REQUEST;
            }
            r.lock().unwrap().push(seq);
            StatusCode::OK
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let g = gateway(dir.path(), "g", &Store::Embedded, &ordered_route(&url)).await;
    let client = client();
    for seq in 0..3 {
        send(
            &client,
            &g,
            &json!({"id": format!("d{seq}"), "key": "k", "seq": seq}),
        )
        .await;
    }
    let done = poll(
        Duration::from_secs(20),
        Duration::from_millis(20),
        async || (received.lock().unwrap().len() == 2).then_some(()),
    )
    .await;
    assert!(done.is_some(), "{:?}", received.lock().unwrap());
    assert_eq!(*received.lock().unwrap(), [1, 2]);
    let released = format!("hookgate_order_released_total{{destination=\"app\",route=\"{PATH}\"}}");
    assert_eq!(series(&g.metrics().await, &released), 1.0);
    assert!(g
        .log_text()
        .contains("the head of an ordering key was dead-lettered"));
}

// ---------------------------------------------------------------------------------------------
// Rate.

/// 1,000 events to a destination at `rate = "100/s"` (its concurrency well above): from the
/// first arrival to the last, 9.5–12 s.
async fn paced(gateways: &[Gateway], upstream: &Recorder) {
    let client = client();
    let mut tasks = tokio::task::JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(32));
    for i in 0..1000 {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (client, url) = (client.clone(), gateways[i % gateways.len()].url(PATH));
        tasks.spawn(async move {
            let _permit = permit;
            let (status, _, text) =
                post(&client, &url, json!({"id": format!("r{i}")}).to_string()).await;
            assert_eq!(status, 200, "{text}");
        });
    }
    tasks.join_all().await;
    let n = upstream.wait_for(1000, Duration::from_secs(30)).await;
    assert_eq!(n, 1000);
    let at = upstream.at.lock().unwrap().clone();
    let took = at[at.len() - 1] - at[0];
    eprintln!(
        "1,000 events at 100/s over {} gateway(s): {:.2} s from the first to the last",
        gateways.len(),
        took.as_secs_f64()
    );
    assert!(
        (9.5..=12.0).contains(&took.as_secs_f64()),
        "{:.2} s",
        took.as_secs_f64()
    );
}

fn paced_route(url: &str) -> String {
    format!(
        "{}{}",
        route_head(),
        destination("app", url, "rate = \"100/s\"\nconcurrency = 64")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_holds_a_destination_to_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let (url, upstream) = recorder(0.0).await;
    let g = gateway(dir.path(), "rate", &Store::Embedded, &paced_route(&url)).await;
    paced(std::slice::from_ref(&g), &upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_holds_a_destination_to_its_rate_across_two_instances() {
    let dir = tempfile::tempdir().unwrap();
    let (redis, _server) = redis_server::shared(dir.path());
    let store = redis_store(&redis);
    let (url, upstream) = recorder(0.0).await;
    let a = gateway(dir.path(), "a", &store, &paced_route(&url)).await;
    let b = gateway(dir.path(), "b", &store, &paced_route(&url)).await;
    paced(&[a, b], &upstream).await;
}

// ---------------------------------------------------------------------------------------------
// Pause and resume.

async fn pause_survives_a_kill(store: Store, dir: &Path) {
    let (url, upstream) = recorder(0.0).await;
    let route = format!("{}{}", route_head(), destination("app", &url, ""));
    let mut g = gateway(dir, "p", &store, &route).await;
    let path = format!("/destinations/{}/app/pause", PATH.replace('/', "%2F"));
    let (status, paused) = admin(&g, "POST", &path).await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["changed"], true);
    let client = client();
    for i in 0..50 {
        send(&client, &g, &json!({"id": format!("p{i}")})).await;
    }
    // Acknowledged, and waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream.count(), 0, "nothing sent while paused");
    let (_, ready) = admin(&g, "GET", "/readyz").await;
    assert_eq!(ready["status"], "ready", "paused is information: {ready}");
    assert_eq!(ready["paused"][0]["destination"], "app", "{ready}");
    let gauge = format!("hookgate_destination_paused{{destination=\"app\",route=\"{PATH}\"}}");
    assert_eq!(series(&g.metrics().await, &gauge), 1.0);
    // kill -9, and a new process on the same store.
    g.signal_and_wait("KILL");
    let config = g.config.clone();
    let (public, admin_port) = (g.public.port(), g.admin.port());
    drop(g);
    let g = Gateway::start_file(config.parent().unwrap(), public, admin_port, &config).await;
    let (_, listed) = admin(&g, "GET", "/destinations").await;
    assert_eq!(listed["destinations"][0]["paused"], true, "{listed}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream.count(), 0, "still paused after the restart");
    assert_eq!(series(&g.metrics().await, &gauge), 1.0);
    let (status, _) = admin(&g, "POST", &path.replace("/pause", "/resume")).await;
    assert_eq!(status, 200);
    assert_eq!(upstream.wait_for(50, Duration::from_secs(20)).await, 50);
    assert_eq!(series(&g.metrics().await, &gauge), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_pause_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    pause_survives_a_kill(Store::Embedded, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_pause_survives_a_kill_and_holds_for_every_instance() {
    let dir = tempfile::tempdir().unwrap();
    let (redis, _server) = redis_server::shared(dir.path());
    let store = redis_store(&redis);
    // A second instance on the same store takes the pause from the first.
    let (url, upstream) = recorder(0.0).await;
    let route = format!("{}{}", route_head(), destination("app", &url, ""));
    let other = gateway(dir.path(), "other", &store, &route).await;
    let first = gateway(dir.path(), "first", &store, &route).await;
    let path = format!("/destinations/{}/app/pause", PATH.replace('/', "%2F"));
    let (status, _) = admin(&first, "POST", &path).await;
    assert_eq!(status, 200);
    let seen = poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        async || {
            let (_, listed) = admin(&other, "GET", "/destinations").await;
            (listed["destinations"][0]["paused"] == true).then_some(())
        },
    )
    .await;
    assert!(seen.is_some(), "the other instance follows the pause");
    let client = client();
    for i in 0..20 {
        send(&client, &other, &json!({"id": format!("o{i}")})).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream.count(), 0, "no instance sends while paused");
    let (status, _) = admin(&other, "POST", &path.replace("/pause", "/resume")).await;
    assert_eq!(status, 200);
    assert_eq!(upstream.wait_for(20, Duration::from_secs(20)).await, 20);
    drop((first, other));
    pause_survives_a_kill(redis_store(&redis), &dir.path().join("kill")).await;
}

// ---------------------------------------------------------------------------------------------
// Reload.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_that_removes_a_destination_with_events_waiting_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let (app_url, app) = recorder(0.0).await;
    let (audit_url, audit) = recorder(0.0).await;
    let both = format!(
        "{}{}{}",
        route_head(),
        destination("app", &app_url, ""),
        destination("audit", &audit_url, "")
    );
    let g = gateway(dir.path(), "r", &Store::Embedded, &both).await;
    let path = format!("/destinations/{}/audit/pause", PATH.replace('/', "%2F"));
    assert_eq!(admin(&g, "POST", &path).await.0, 200);
    let client = client();
    send(&client, &g, &json!({"id": "w1"})).await;
    assert_eq!(app.wait_for(1, Duration::from_secs(10)).await, 1);
    // Without audit: refused, its event waiting.
    let text = std::fs::read_to_string(&g.config).unwrap();
    let only_app = text.replace(&destination("audit", &audit_url, ""), "");
    assert_ne!(text, only_app);
    std::fs::write(&g.config, &only_app).unwrap();
    let (status, refused) = admin(&g, "POST", "/reload").await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("destination \\\"audit\\\" has events waiting"),
        "{refused}"
    );
    let (_, listed) = admin(&g, "GET", "/destinations").await;
    assert_eq!(listed["destinations"].as_array().unwrap().len(), 2);
    // Forced: gone, its event kept.
    let (status, _) = admin(&g, "POST", "/reload?force=true").await;
    assert_eq!(status, 200);
    let (_, listed) = admin(&g, "GET", "/destinations").await;
    assert_eq!(
        listed["destinations"].as_array().unwrap().len(),
        1,
        "{listed}"
    );
    send(&client, &g, &json!({"id": "w2"})).await;
    assert_eq!(app.wait_for(2, Duration::from_secs(10)).await, 2);
    // Back: still paused (as it was left), with its waiting event; resumed, it is delivered.
    std::fs::write(&g.config, &text).unwrap();
    let (status, _) = admin(&g, "POST", "/reload").await;
    assert_eq!(status, 200);
    assert_eq!(
        admin(&g, "POST", &path.replace("/pause", "/resume"))
            .await
            .0,
        200
    );
    assert_eq!(audit.wait_for(1, Duration::from_secs(10)).await, 1);
    assert_eq!(audit.bodies()[0]["id"], "w1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        audit.count(),
        1,
        "w2 came while audit was not a destination"
    );
}
