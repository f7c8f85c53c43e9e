//! Several gateway processes sharing one real `redis-server` (`[store] backend = "redis"`):
//! dedup across instances, takeover of a SIGKILLed instance's events, a Redis restart mid-run,
//! and the dead-letter admin API over the shared store.

mod common;
#[path = "support/redis.rs"]
mod redis_server;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use redis_server::RedisServer;

async fn start_gateway(
    dir: &Path,
    name: &str,
    redis_url: &str,
    prefix: &str,
    upstream: &str,
    route_extra: &str,
) -> Gateway {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let (public, admin, text) =
        redis_gateway_config(&dir, redis_url, prefix, upstream, route_extra);
    Gateway::start(&dir, public, admin, &text).await
}

/// A TCP listener that accepts connections and never answers: an upstream that hangs.
async fn silent_upstream(port: u16) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    })
}

fn status_of(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["status"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Waits (bounded by `within`) until the upstream received every one of `ids`; asserts each
/// arrived exactly once (`log` shown if not all arrived).
async fn all_delivered_once(
    upstream: &Upstream,
    ids: &[String],
    within: Duration,
    log: impl Fn() -> String,
) {
    let all = poll(within, Duration::from_millis(100), async || {
        (arrivals(upstream).len() >= ids.len()).then_some(())
    })
    .await;
    let seen = arrivals(upstream);
    assert!(
        all.is_some(),
        "{} of {} delivered within {within:?}; log:\n{}",
        seen.len(),
        ids.len(),
        log()
    );
    for id in ids {
        assert_eq!(seen.get(id), Some(&1), "{id} delivered once");
    }
}

/// The generation ids the upstream received, with how many times each.
fn arrivals(upstream: &Upstream) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in upstream.received() {
        let id = r.json()["generation_id"].as_str().unwrap_or("").to_owned();
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_dedup_across_and_a_killed_instance_s_events_are_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _server) = redis_server::shared(dir.path());
    let prefix = redis_server::prefix();
    // The upstream hangs: each instance's attempts stay in flight, its events held by it.
    let port = free_port();
    let silent = silent_upstream(port).await;
    let upstream_url = format!("http://127.0.0.1:{port}{PATH}");
    let extra = "[route.delivery]\nbackoff = \"100ms\"\nmax_backoff = \"500ms\"\ntimeout = \"60s\"\nconcurrency = 8\n";
    let mut a = start_gateway(dir.path(), "a", &url, &prefix, &upstream_url, extra).await;
    let b = start_gateway(dir.path(), "b", &url, &prefix, &upstream_url, extra).await;
    let c = client();

    // Requests alternate between the instances; each one's duplicate goes to the other.
    let ids: Vec<String> = (0..30).map(|_| generation()).collect();
    for (i, id) in ids.iter().enumerate() {
        let (first, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let (status, _, text) = post(&c, &first.url(PATH), completed(id)).await;
        assert_eq!(
            (status, status_of(&text).as_str()),
            (200, "received"),
            "{text}"
        );
        let (status, _, text) = post(&c, &other.url(PATH), completed(id)).await;
        assert_eq!(
            (status, status_of(&text).as_str()),
            (200, "duplicate"),
            "the other instance: {text}"
        );
    }
    // Both instances hold attempts in flight (8 each), the rest wait in the stream.
    let held = |m: &str| {
        series(
            m,
            "hookgate_spool_depth{destination=\"upstream\",route=\"/webhook/o3-video\"}",
        )
    };
    assert!(
        poll(
            Duration::from_secs(10),
            Duration::from_millis(100),
            async || { (held(&a.metrics().await) == 30.0).then_some(()) }
        )
        .await
        .is_some(),
        "30 events pending, across instances"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Instance a dies with its events held; the upstream comes back.
    a.signal_and_wait("KILL");
    let killed = Instant::now();
    silent.abort();
    let _ = silent.await;
    let upstream = Upstream::start_on(port).await;

    // The survivor delivers every acknowledged event: a's after the visibility timeout (3 s).
    all_delivered_once(&upstream, &ids, Duration::from_secs(3 + 15), || {
        b.log_text()
    })
    .await;
    eprintln!(
        "every event delivered {:?} after the kill",
        killed.elapsed()
    );
    let metrics = b.metrics().await;
    // The store's families (the command histogram by command, takeovers) pass Prometheus's lint.
    common::promtool::check(metrics.as_bytes());
    assert!(
        series(
            &metrics,
            "hookgate_store_takeovers_total{route=\"/webhook/o3-video\"}"
        ) >= 1.0,
        "the survivor took over the killed instance's events:\n{metrics}"
    );
    assert!(
        poll(
            Duration::from_secs(5),
            Duration::from_millis(100),
            async || { (held(&b.metrics().await) == 0.0).then_some(()) }
        )
        .await
        .is_some(),
        "nothing left pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_run_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(&dir.path().join("redis"));
    let upstream = Upstream::start().await;
    let gateway = start_gateway(
        dir.path(),
        "g",
        &redis.url(),
        &redis_server::prefix(),
        &upstream.url(),
        "[route.delivery]\nbackoff = \"100ms\"\nmax_backoff = \"500ms\"\n",
    )
    .await;

    // A sender posting fresh events without pause, bounded in requests and time.
    let sender = {
        let url = gateway.url(PATH);
        tokio::spawn(async move {
            let c = client();
            let mut acked = Vec::new();
            let mut refused = 0usize;
            let mut refused_after_ack = false;
            let started = Instant::now();
            for _ in 0..20_000 {
                if started.elapsed() > Duration::from_secs(8) {
                    break;
                }
                let id = generation();
                let (status, headers, text) = post(&c, &url, completed(&id)).await;
                match status {
                    200 => {
                        assert_eq!(status_of(&text), "received", "{text}");
                        acked.push((id, Instant::now()));
                    }
                    503 => {
                        assert!(
                            headers.contains_key("retry-after"),
                            "503 without Retry-After"
                        );
                        refused += 1;
                        refused_after_ack |= !acked.is_empty();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("unexpected {other}: {text}"),
                }
            }
            (acked, refused, refused_after_ack)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.kill();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ready = reqwest::get(gateway.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while redis is down");
    redis.restart();
    let up = Instant::now();
    let (acked, refused, _) = sender.await.unwrap();
    let after_restart = acked.iter().filter(|(_, at)| *at > up).count();
    let before_kill = acked.iter().filter(|(_, at)| *at < down).count();
    eprintln!(
        "{} acked ({before_kill} before the kill, {after_restart} after the restart), {refused} refused with 503",
        acked.len()
    );
    assert!(
        before_kill > 0 && after_restart > 0,
        "accepting before and after"
    );
    assert!(refused > 0, "new events get 503 while redis is down");

    // Every acknowledged event arrives.
    let want: HashSet<String> = acked.iter().map(|(id, _)| id.clone()).collect();
    let missing = || {
        let seen = arrivals(&upstream);
        want.iter().filter(|id| !seen.contains_key(*id)).count()
    };
    let done = poll(
        Duration::from_secs(20),
        Duration::from_millis(200),
        async || (missing() == 0).then_some(()),
    )
    .await;
    assert!(
        done.is_some(),
        "{} acknowledged events never delivered; log:\n{}",
        missing(),
        gateway.log_text()
    );
    let ready = reqwest::get(gateway.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "ready again without a restart");
    let metrics = gateway.metrics().await;
    assert_eq!(series(&metrics, "hookgate_store_up"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_shared_listed_replayed_and_purged_from_either_instance() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _server) = redis_server::shared(dir.path());
    let prefix = redis_server::prefix();
    let upstream = Upstream::start().await;
    upstream.set(Behavior {
        status: 400,
        ..Behavior::default()
    });
    let a = start_gateway(dir.path(), "a", &url, &prefix, &upstream.url(), "").await;
    let b = start_gateway(dir.path(), "b", &url, &prefix, &upstream.url(), "").await;
    let c = client();
    for _ in 0..4 {
        let (status, _, _) = post(&c, &a.url(PATH), completed(&generation())).await;
        assert_eq!(status, 200);
    }
    upstream.wait_for(4, Duration::from_secs(10)).await;
    // Listed by the other instance.
    let listed = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || {
            let list: serde_json::Value = c
                .get(b.admin_url("/dead-letters"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let items = list["dead_letters"].as_array()?.clone();
            (items.len() == 4).then_some(items)
        },
    )
    .await
    .expect("4 dead letters listed by the other instance");
    // One replayed through b, delivered once the upstream accepts.
    upstream.set(Behavior::default());
    let id = listed[0]["id"].as_str().unwrap();
    let replay = c
        .post(b.admin_url(&format!("/dead-letters/{id}/replay")))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200, "{:?}", replay.text().await);
    upstream.wait_for(5, Duration::from_secs(10)).await;
    assert_eq!(upstream.received()[4].status, 200);
    // The rest purged through a.
    let purge = c
        .delete(a.admin_url("/dead-letters"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let text = purge.text().await.unwrap();
    assert!(text.contains("\"count\":3"), "{text}");
    let stats: serde_json::Value = c
        .get(b.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["spool"]["dead"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_upstream_opens_the_circuit_and_every_event_waits_in_redis() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _server) = redis_server::shared(dir.path());
    // Nothing listens there: every attempt is refused. Three attempts would dead-letter an
    // event; the open circuit counts none while the upstream is down.
    let port = free_port();
    let gateway = start_gateway(
        dir.path(),
        "g",
        &url,
        &redis_server::prefix(),
        &format!("http://127.0.0.1:{port}{PATH}"),
        "[route.delivery]\nmax_attempts = 3\nbackoff = \"100ms\"\nmax_backoff = \"400ms\"\n",
    )
    .await;
    let c = client();
    let ids: Vec<String> = (0..20).map(|_| generation()).collect();
    for id in &ids {
        let (status, _, text) = post(&c, &gateway.url(PATH), completed(id)).await;
        assert_eq!(status, 200, "{text}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = gateway.metrics().await;
    assert_eq!(
        series(
            &metrics,
            "hookgate_upstream_up{destination=\"upstream\",route=\"/webhook/o3-video\"}"
        ),
        0.0,
        "circuit open"
    );
    assert_eq!(
        series(
            &metrics,
            "hookgate_deliveries_total{destination=\"upstream\",result=\"dead_letter\",route=\"/webhook/o3-video\"}"
        ),
        0.0,
        "no attempt counted while the circuit is open:\n{metrics}"
    );
    let upstream = Upstream::start_on(port).await;
    all_delivered_once(&upstream, &ids, Duration::from_secs(15), || {
        gateway.log_text()
    })
    .await;
    let metrics = gateway.metrics().await;
    assert_eq!(
        series(
            &metrics,
            "hookgate_upstream_up{destination=\"upstream\",route=\"/webhook/o3-video\"}"
        ),
        1.0,
        "closed again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_gets_503_and_the_gateway_recovers_when_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(&dir.path().join("redis"));
    let upstream = Upstream::start().await;
    let gateway = start_gateway(
        dir.path(),
        "g",
        &redis.url(),
        &redis_server::prefix(),
        &upstream.url(),
        "",
    )
    .await;
    let c = client();
    let (status, _, _) = post(&c, &gateway.url(PATH), completed(&generation())).await;
    assert_eq!(status, 200);

    // Stopped, not gone: connections stay open and nothing answers.
    redis.signal("STOP");
    let refused = poll(
        Duration::from_secs(15),
        Duration::from_millis(200),
        async || {
            let (status, headers, text) =
                post(&c, &gateway.url(PATH), completed(&generation())).await;
            match status {
                503 => Some((headers.contains_key("retry-after"), reason(&text))),
                200 => None,
                other => panic!("unexpected {other}: {text}"),
            }
        },
    )
    .await;
    let (retry_after, why) = refused.expect("503 while redis is hung");
    assert!(retry_after, "503 with Retry-After");
    assert!(
        why == "dedup_unavailable" || why == "spool_unavailable",
        "{why}"
    );
    let ready = reqwest::get(gateway.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while redis is hung");
    assert_eq!(series(&gateway.metrics().await, "hookgate_store_up"), 0.0);

    redis.signal("CONT");
    let id = generation();
    let back = poll(
        Duration::from_secs(15),
        Duration::from_millis(200),
        async || {
            let (status, _, _) = post(&c, &gateway.url(PATH), completed(&id)).await;
            (status == 200).then_some(())
        },
    )
    .await;
    assert!(
        back.is_some(),
        "accepting again; log:\n{}",
        gateway.log_text()
    );
    let delivered = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || arrivals(&upstream).contains_key(&id).then_some(()),
    )
    .await;
    assert!(
        delivered.is_some(),
        "the event after the pause is delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_sigkilled_under_load_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _server) = redis_server::shared(dir.path());
    let prefix = redis_server::prefix();
    let upstream = Upstream::start().await;
    let extra = "[route.delivery]\nbackoff = \"100ms\"\nmax_backoff = \"500ms\"\n";
    let mut a = start_gateway(dir.path(), "a", &url, &prefix, &upstream.url(), extra).await;
    let b = start_gateway(dir.path(), "b", &url, &prefix, &upstream.url(), extra).await;
    // Four senders, bounded in requests and time, alternating between the instances; a
    // refused or failed request (the killed instance's) is simply not acknowledged.
    let senders: Vec<_> = (0..4)
        .map(|n| {
            let urls = [a.url(PATH), b.url(PATH)];
            tokio::spawn(async move {
                let c = client();
                let mut acked = Vec::new();
                let started = Instant::now();
                for i in 0..5_000usize {
                    if started.elapsed() > Duration::from_secs(4) {
                        break;
                    }
                    let id = generation();
                    let sent = c
                        .post(&urls[(i + n) % 2])
                        .header("content-type", "application/json")
                        .body(completed(&id))
                        .send()
                        .await;
                    if let Ok(r) = sent {
                        if r.status() == 200
                            && r.text().await.is_ok_and(|t| status_of(&t) == "received")
                        {
                            acked.push(id);
                        }
                    }
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.signal_and_wait("KILL");
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    eprintln!("{} events acknowledged across both instances", acked.len());
    assert!(acked.len() > 100, "load went through");
    // Whatever a held is taken over after the visibility timeout (3 s).
    let want: HashSet<String> = acked.into_iter().collect();
    let missing = || {
        let seen = arrivals(&upstream);
        want.iter().filter(|id| !seen.contains_key(*id)).count()
    };
    let done = poll(
        Duration::from_secs(3 + 15),
        Duration::from_millis(200),
        async || (missing() == 0).then_some(()),
    )
    .await;
    assert!(
        done.is_some(),
        "{} acknowledged events never delivered; b's log:\n{}",
        missing(),
        b.log_text()
    );
    let metrics = b.metrics().await;
    let took_over = series(
        &metrics,
        "hookgate_store_takeovers_total{route=\"/webhook/o3-video\"}",
    );
    eprintln!("the survivor took over {took_over} events");
}
