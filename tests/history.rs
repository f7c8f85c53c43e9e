//! The event history and replay (issue 22), on the embedded store and on Redis, through the
//! real gateway over sockets: 10,000 events found by time window, status and JSON pointer across
//! pages; a replay job at 200/s delivering exactly what it matched, once each, in 45–60 s; a
//! cancel that stops one; a job that finishes after its gateway is SIGKILLed (restarted, or
//! handed over to the other Redis instance); retention that drops delivered events only.

mod common;
#[path = "support/redis.rs"]
mod redis_server;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Where the gateways keep their events.
#[derive(Clone)]
enum Store {
    Embedded,
    Redis { url: String, prefix: String },
}

/// A gateway on `store` named `name` (its own directory under `dir`), one route to `upstream`,
/// `store_extra` lines under `[store]`, `route_extra` under the route.
async fn gateway(
    dir: &Path,
    name: &str,
    store: &Store,
    upstream: &str,
    store_extra: &str,
    route_extra: &str,
) -> Gateway {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let (public, admin) = (free_port(), free_port());
    let store_lines = match store {
        Store::Embedded => format!("[store]\n{store_extra}\n"),
        Store::Redis { url, prefix } => format!(
            "[store]\nbackend = \"redis\"\nurl = \"{url}\"\nprefix = \"{prefix}\"\nvisibility_timeout = \"3s\"\n{store_extra}\n"
        ),
    };
    let text = config(
        public,
        admin,
        &dir.join("data"),
        "",
        &format!("{store_lines}{}", route(upstream, route_extra)),
    );
    Gateway::start(&dir, public, admin, &text).await
}

/// A failed generation's payload.
fn failed(id: &str) -> String {
    format!(
        r#"{{"generation_id":"{id}","status":"failed","video_url":null,"model":"kling-o3-video-10s-pro","message":"TIMEOUT"}}"#
    )
}

/// One event sent: its id (from the acknowledgement) and whether its payload says `failed`.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    failed: bool,
}

/// Sends events `range` (every fourth a `failed` one), 32 at a time; returns each one's id.
async fn send(gateway: &Gateway, range: std::ops::Range<usize>) -> Vec<Sent> {
    let client = client();
    let url = gateway.url(PATH);
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in range {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let is_failed = i % 4 == 0;
            let g = generation();
            let body = if is_failed { failed(&g) } else { completed(&g) };
            let (status, _, text) = post(&client, &url, body).await;
            assert_eq!(status, 200, "{text}");
            let ack: Value = serde_json::from_str(&text).unwrap();
            Sent {
                id: ack["event_id"].as_str().unwrap().to_owned(),
                failed: is_failed,
            }
        });
    }
    tasks.join_all().await
}

/// The admin API's JSON answer to `method path` (a change carries `body` as JSON).
async fn admin(gateway: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = client();
    let url = gateway.admin_url(path);
    let request = match method {
        "GET" => client.get(&url),
        "POST" => client.post(&url),
        "DELETE" => client.delete(&url),
        other => panic!("{other}"),
    };
    let request = match method {
        "GET" => request,
        _ => request
            .header("content-type", "application/json")
            .body(body.unwrap_or(json!({})).to_string()),
    };
    let response = request.send().await.expect("the admin API answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Every page of `GET /events?{query}`: the ids, in order, and how many pages it took.
async fn all_pages(gateway: &Gateway, query: &str) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut after = String::new();
    for pages in 1..=10_000 {
        let (status, page) = admin(gateway, "GET", &format!("/events?{query}{after}"), None).await;
        assert_eq!(status, 200, "{page}");
        ids.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return (ids, pages),
        }
    }
    panic!("a query that never ends: {query}");
}

/// The time now, RFC 3339 with milliseconds, percent-encoded for a query.
fn now_text() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Waits (bounded) until every event `ids` names arrived at `upstream`.
async fn wait_all_arrived(upstream: &Upstream, ids: &HashSet<String>, within: Duration) {
    let arrived = poll(within, Duration::from_millis(200), async || {
        let got: HashSet<String> = upstream
            .received()
            .iter()
            .map(|r| r.header("x-hookgate-event-id").to_owned())
            .collect();
        ids.is_subset(&got).then_some(())
    })
    .await;
    assert!(
        arrived.is_some(),
        "not every event arrived within {within:?}"
    );
}

/// The deliveries `upstream` received from index `from` on that replay `job` sent, by event id.
fn replayed(upstream: &Upstream, from: usize, job: &str) -> HashMap<String, usize> {
    let mut by_id = HashMap::new();
    for r in upstream.received().into_iter().skip(from) {
        if r.header("x-hookgate-replay") == job {
            *by_id
                .entry(r.header("x-hookgate-event-id").to_owned())
                .or_default() += 1;
        }
    }
    by_id
}

/// Waits (bounded) for replay `job` to leave `running`; its progress.
async fn job_ended(gateway: &Gateway, job: &str, within: Duration) -> Value {
    let ended = poll(within, Duration::from_millis(250), async || {
        let (status, v) = admin(gateway, "GET", &format!("/replays/{job}"), None).await;
        (status == 200 && v["state"] != "running").then_some(v)
    })
    .await;
    ended.unwrap_or_else(|| panic!("replay {job} still running after {within:?}"))
}

/// 10,000 events found by window, status and pointer across pages; a replay of all of them at
/// 200/s; a cancelled one.
async fn find_and_replay(store: Store, dir: &Path) {
    let upstream = Upstream::start().await;
    let g = gateway(dir, "a", &store, &upstream.url(), "", "").await;
    let first = send(&g, 0..5000).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let middle = now_text();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = send(&g, 5000..10_000).await;
    let all_ids: HashSet<String> = first.iter().chain(&second).map(|s| s.id.clone()).collect();
    assert_eq!(all_ids.len(), 10_000);
    wait_all_arrived(&upstream, &all_ids, Duration::from_secs(120)).await;
    // Delivered, recorded: every event in id order, 1,000 a page.
    let (ids, pages) = all_pages(&g, "limit=1000").await;
    assert_eq!(ids.len(), 10_000, "every event");
    assert!(pages >= 10);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "oldest first");
    // The second half's failed ones, delivered: by time window, status and pointer, in pages
    // of 97 (none lost or repeated at a page's edge), both ways.
    let want: HashSet<String> = second
        .iter()
        .filter(|s| s.failed)
        .map(|s| s.id.clone())
        .collect();
    let until = now_text();
    let q = format!(
        "since={middle}&until={until}&status=delivered&where=/status=failed&limit=97&route={PATH}"
    );
    let (found, pages) = all_pages(&g, &q).await;
    assert!(pages > 10, "{pages} pages");
    assert_eq!(found.len(), want.len(), "no event twice");
    assert_eq!(found.iter().cloned().collect::<HashSet<_>>(), want);
    let (mut newest_first, _) = all_pages(&g, &format!("{q}&order=desc")).await;
    newest_first.reverse();
    assert_eq!(newest_first, found, "newest first is the same, reversed");
    // The first half, by `until` alone.
    let (before, _) = all_pages(&g, &format!("until={middle}&limit=1000")).await;
    assert_eq!(
        before.into_iter().collect::<HashSet<_>>(),
        first.iter().map(|s| s.id.clone()).collect()
    );
    // Mistakes are 400 with their reason.
    for (q, reason) in [
        ("route=nope", "unknown_route"),
        ("since=yesterday", "bad_time"),
        ("where=status=failed", "bad_pointer"),
    ] {
        let (status, v) = admin(&g, "GET", &format!("/events?{q}"), None).await;
        assert_eq!((status, v["error"].as_str()), (400, Some(reason)), "{q}");
    }
    // One event, whole: its body as JSON, its attempt.
    let (status, one) = admin(&g, "GET", &format!("/events/{}", second[0].id), None).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["status"], "delivered");
    assert_eq!(
        one["body"]["status"],
        if second[0].failed {
            "failed"
        } else {
            "completed"
        }
    );
    assert_eq!(one["history"][0]["status"], 200);

    // Replay all 10,000 at 200/s to the upstream: exactly them, once each, in 45-60 s.
    let from = upstream.received().len();
    let started = Instant::now();
    let (status, job) = admin(
        &g,
        "POST",
        "/replays",
        Some(json!({ "since": "-10m", "rate": "200/s" })),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["matched"], 10_000);
    let job_id = job["id"].as_str().unwrap().to_owned();
    let progress = job_ended(&g, &job_id, Duration::from_secs(120)).await;
    assert_eq!(progress["state"], "done", "{progress}");
    let got = poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || {
            let got = replayed(&upstream, from, &job_id);
            (got.len() == 10_000).then_some(got)
        },
    )
    .await
    .expect("every matched event delivered again");
    let took = started.elapsed();
    eprintln!("replay of 10,000 events at 200/s: every one delivered once in {took:?}");
    assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), all_ids);
    assert!(got.values().all(|n| *n == 1), "an event replayed twice");
    assert!(
        (Duration::from_secs(45)..=Duration::from_secs(60)).contains(&took),
        "10,000 events at 200/s took {took:?}"
    );
    let (_, progress) = admin(&g, "GET", &format!("/replays/{job_id}"), None).await;
    assert_eq!(progress["delivered"], 10_000, "{progress}");
    let metrics = g.metrics().await;
    for result in ["queued", "delivered"] {
        let line = format!("hookgate_replay_events_total{{destination=\"upstream\",result=\"{result}\",route=\"{PATH}\"}}");
        assert_eq!(series(&metrics, &line), 10_000.0, "{line}");
    }

    // A cancelled job stops: nothing more is sent a moment after.
    let (_, job) = admin(
        &g,
        "POST",
        "/replays",
        Some(json!({ "route": PATH, "rate": "100/s" })),
    )
    .await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, cancelled) = admin(&g, "DELETE", &format!("/replays/{job_id}"), None).await;
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("cancelled"))
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_cancel = replayed(&upstream, 0, &job_id).len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = replayed(&upstream, 0, &job_id).len();
    assert!(at_cancel > 0 && at_cancel < 10_000, "{at_cancel}");
    assert_eq!(later, at_cancel, "the cancelled job went on");
    let (_, listed) = admin(&g, "GET", "/replays", None).await;
    assert_eq!(listed["replays"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_finds_and_replays_10000_events() {
    let dir = tempfile::tempdir().unwrap();
    find_and_replay(Store::Embedded, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_finds_and_replays_10000_events() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _server) = redis_server::shared(dir.path());
    let store = Store::Redis {
        url,
        prefix: redis_server::prefix(),
    };
    find_and_replay(store, dir.path()).await;
}

/// A job at 200/s over 2,000 events; its gateway SIGKILLed 3 s in. `resume` brings the job back
/// (a restart, or another instance); every matched event arrives, and the job says done.
async fn killed_mid_job(
    upstream: &Upstream,
    mut g: Gateway,
    resume: impl AsyncFnOnce() -> Gateway,
) {
    let sent = send(&g, 0..2000).await;
    let ids: HashSet<String> = sent.iter().map(|s| s.id.clone()).collect();
    wait_all_arrived(upstream, &ids, Duration::from_secs(60)).await;
    let (status, job) = admin(
        &g,
        "POST",
        "/replays",
        Some(json!({ "since": "-10m", "rate": "200/s" })),
    )
    .await;
    assert_eq!(
        (status, job["matched"].as_u64()),
        (202, Some(2000)),
        "{job}"
    );
    let job_id = job["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(3)).await;
    g.signal_and_wait("KILL");
    let before = replayed(upstream, 0, &job_id).len();
    assert!(
        before > 0 && before < 2000,
        "{before} replayed before the kill"
    );
    let g = resume().await;
    let progress = job_ended(&g, &job_id, Duration::from_secs(60)).await;
    assert_eq!(progress["state"], "done", "{progress}");
    let got = poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || {
            let got = replayed(upstream, 0, &job_id);
            (got.len() == 2000).then_some(got)
        },
    )
    .await
    .unwrap_or_else(|| {
        panic!(
            "{} of 2000 replayed; log:\n{}",
            replayed(upstream, 0, &job_id).len(),
            g.log_text()
        )
    });
    assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), ids);
    // At least once: an event in flight at the kill may come twice, no more.
    let twice = got.values().filter(|n| **n > 1).count();
    assert!(twice <= 64, "{twice} events replayed twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_job_finishes_after_a_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let g = gateway(dir.path(), "a", &Store::Embedded, &upstream.url(), "", "").await;
    let (public, admin, config) = (g.public.port(), g.admin.port(), g.config.clone());
    let dir_a = dir.path().join("a");
    killed_mid_job(&upstream, g, async || {
        Gateway::start_file(&dir_a, public, admin, &config).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_job_is_handed_over_when_its_instance_is_sigkilled() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _server) = redis_server::shared(dir.path());
    let store = Store::Redis {
        url,
        prefix: redis_server::prefix(),
    };
    let upstream = Upstream::start().await;
    let a = gateway(dir.path(), "a", &store, &upstream.url(), "", "").await;
    let b = gateway(dir.path(), "b", &store, &upstream.url(), "", "").await;
    killed_mid_job(&upstream, a, async || b).await;
}

/// With `retention = "3s"`: delivered events go once older than that; a dead letter and a
/// pending event stay.
async fn retention_drops_delivered_only(store: Store, dir: &Path) {
    let upstream = Upstream::start().await;
    let g = gateway(
        dir,
        "a",
        &store,
        &upstream.url(),
        "retention = \"3s\"",
        "[route.delivery]\nmax_attempts = 5\nbackoff = \"1h\"\nmax_backoff = \"1h\"\n",
    )
    .await;
    let delivered = send(&g, 1..4).await;
    let ids: HashSet<String> = delivered.iter().map(|s| s.id.clone()).collect();
    wait_all_arrived(&upstream, &ids, Duration::from_secs(30)).await;
    // One refused for good (a dead letter), one that waits for a retry an hour away.
    upstream.set(Behavior {
        status: 400,
        ..Behavior::default()
    });
    let dead = send(&g, 1..2).await.remove(0);
    poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || {
            let (_, e) = admin(&g, "GET", &format!("/events/{}", dead.id), None).await;
            (e["status"] == "dead").then_some(())
        },
    )
    .await
    .expect("dead-lettered");
    upstream.set(Behavior {
        status: 503,
        ..Behavior::default()
    });
    let pending = send(&g, 1..2).await.remove(0);
    let (all, _) = all_pages(&g, "limit=100").await;
    assert_eq!(all.len(), 5, "{all:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (kept, _) = all_pages(&g, "limit=100").await;
    assert_eq!(
        kept.into_iter().collect::<HashSet<_>>(),
        [dead.id.clone(), pending.id.clone()].into_iter().collect(),
        "only the dead letter and the pending event are left"
    );
    let (status, _) = admin(&g, "GET", &format!("/events/{}", delivered[0].id), None).await;
    assert_eq!(status, 404);
    let (status, v) = admin(
        &g,
        "POST",
        &format!("/events/{}/replay", delivered[0].id),
        None,
    )
    .await;
    assert_eq!((status, v["error"].as_str()), (404, Some("not_found")));
    // The dead-letter view still lists the dead one.
    let (status, v) = admin(&g, "GET", "/dead-letters", None).await;
    assert_eq!((status, v["count"].as_u64()), (200, Some(1)), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_retention_drops_delivered_events_only() {
    let dir = tempfile::tempdir().unwrap();
    retention_drops_delivered_only(Store::Embedded, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_retention_drops_delivered_events_only() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _server) = redis_server::shared(dir.path());
    let store = Store::Redis {
        url,
        prefix: redis_server::prefix(),
    };
    retention_drops_delivered_only(store, dir.path()).await;
}
