//! The faults the promise ("no acknowledged event is lost, and the gateway keeps serving")
//! depends on, as tests with counts: a disk that fills up (a real tmpfs, mounted as root; skipped
//! loudly otherwise), and Redis out of memory or unable to persist (real `redis-server`s).
//!
//! Each fills the store under load with the upstream down, checks that the answers turn to 503
//! at once (never waiting on a failing write), that no 200 is given for an event that was not
//! stored, and that once the upstream is back the gateway accepts again by itself, every
//! acknowledged event delivered.

mod common;
#[path = "support/redis.rs"]
mod redis_server;
#[path = "support/tmpfs.rs"]
mod tmpfs;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hookgate::store::{Durability, EmbeddedSpool, Event, Spool, SpoolConfig};
use redis_server::RedisServer;
use tmpfs::Tmpfs;

/// What a load run saw: every generation by its answer, and the slowest refusal.
#[derive(Default)]
struct Seen {
    acked: HashSet<String>,
    refused: HashSet<String>,
    /// Refusals by reason (`spool_full`, ...).
    reasons: std::collections::BTreeMap<String, usize>,
    slowest_refusal: Duration,
    /// Refusals without `Retry-After`.
    without_retry_after: usize,
    other: Vec<(u16, String)>,
}

/// Sends fresh generations from `senders` concurrent clients until `stop` says so (given the
/// refusals in a row so far) or `max` requests were sent; every answer is recorded.
async fn load(
    url: &str,
    senders: usize,
    max: usize,
    within: Duration,
    stop_after_refusals: usize,
) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let refusals_in_a_row = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = Instant::now() + within;
    let tasks: Vec<_> = (0..senders)
        .map(|_| {
            let (seen, sent, row, url) = (
                seen.clone(),
                sent.clone(),
                refusals_in_a_row.clone(),
                url.to_owned(),
            );
            tokio::spawn(async move {
                let c = client();
                while sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < max
                    && Instant::now() < deadline
                    && row.load(std::sync::atomic::Ordering::SeqCst) < stop_after_refusals
                {
                    let g = generation();
                    let started = Instant::now();
                    let (status, headers, body) = post(&c, &url, completed(&g)).await;
                    let took = started.elapsed();
                    let mut s = seen.lock().unwrap();
                    match status {
                        200 => {
                            row.store(0, std::sync::atomic::Ordering::SeqCst);
                            s.acked.insert(g);
                        }
                        503 => {
                            row.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            *s.reasons.entry(reason(&body)).or_default() += 1;
                            if headers.get("retry-after").is_none() {
                                s.without_retry_after += 1;
                            }
                            s.slowest_refusal = s.slowest_refusal.max(took);
                            s.refused.insert(g);
                        }
                        other => s.other.push((other, body)),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(seen)
        .ok()
        .expect("every sender is done")
        .into_inner()
        .unwrap()
}

/// The generations the upstream received (answered 2xx).
fn delivered(upstream: &Upstream) -> HashSet<String> {
    upstream
        .received()
        .iter()
        .filter(|r| r.status < 300)
        .filter_map(|r| r.json()["generation_id"].as_str().map(str::to_owned))
        .collect()
}

/// Waits (bounded) until every generation of `acked` reached the upstream; returns those that
/// did not.
async fn undelivered(upstream: &Upstream, acked: &HashSet<String>, within: Duration) -> usize {
    poll(within, Duration::from_millis(100), async || {
        let got = delivered(upstream);
        acked.is_subset(&got).then_some(())
    })
    .await;
    let got = delivered(upstream);
    acked.difference(&got).count()
}

/// `/readyz`: (status, body).
async fn readyz(gateway: &Gateway) -> (u16, String) {
    let res = client()
        .get(gateway.admin_url("/readyz"))
        .send()
        .await
        .expect("the admin listener answers");
    (res.status().as_u16(), res.text().await.unwrap_or_default())
}

/// Waits (at most `within`) until the gateway accepts an event again, then 20 more in a row.
async fn assert_accepting_again(gateway: &Gateway, url: &str, within: Duration) {
    let back = poll(within, Duration::from_millis(200), async || {
        (accepted_of(url, 1).await == 1).then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "not accepting again; log:\n{}",
        gateway.log_text()
    );
    assert_eq!(accepted_of(url, 20).await, 20);
}

/// `hookgate_store_writable` once it reads `want` (the gauge is read off the store every
/// 250 ms), or what it reads after 5 s.
async fn writable(gateway: &Gateway, want: f64) -> f64 {
    let read = async || series(&gateway.metrics().await, "hookgate_store_writable");
    poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        async || (read().await == want).then_some(()),
    )
    .await;
    read().await
}

/// The store's lines of the gateway's log (its refusals, reopens and rebuilds).
fn store_log(gateway: &Gateway) -> String {
    gateway
        .log_text()
        .lines()
        .filter(|l| l.contains("hookgate::store"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sends `n` fresh generations one by one; returns how many got 200.
async fn accepted_of(url: &str, n: usize) -> usize {
    let c = client();
    let mut ok = 0;
    for _ in 0..n {
        let (status, _, _) = post(&c, url, completed(&generation())).await;
        ok += usize::from(status == 200);
    }
    ok
}

/// What a store filled under load shows: events acknowledged until it filled, then refusals,
/// each a 503 `spool_full` with `Retry-After` that never waited on a write; `/readyz` not ready,
/// naming `why`; `hookgate_store_writable` 0.
async fn assert_filled_and_refusing(gateway: &Gateway, seen: &Seen, why: &str) {
    assert!(
        seen.other.is_empty(),
        "{:?}",
        &seen.other[..seen.other.len().min(5)]
    );
    assert!(
        seen.acked.len() > 1000,
        "only {} acknowledged",
        seen.acked.len()
    );
    assert_eq!(seen.without_retry_after, 0);
    // Whether the reservation's write or the append met the refusal first: full, not failing.
    assert_eq!(
        seen.reasons.keys().collect::<Vec<_>>(),
        ["spool_full"],
        "{:?}",
        seen.reasons
    );
    // Far from the writer's retry interval: the refusal never waits on a write.
    assert!(
        seen.slowest_refusal < Duration::from_secs(1),
        "a refusal took {:?}",
        seen.slowest_refusal
    );
    let (status, body) = readyz(gateway).await;
    if status == 200 && why == "free on the disk" {
        // The engine gave room back on its own between the last refusal and this look (a
        // journal deleted once its memtable was flushed): the store took events again by
        // itself, which is the point; its figures must show why.
        let store = &serde_json::from_str::<serde_json::Value>(&body).unwrap()["store"];
        let (free, min) = (
            store["free_bytes"].as_u64().unwrap(),
            store["min_free_bytes"].as_u64().unwrap(),
        );
        assert!(
            store["writable"] == true && free >= min,
            "ready while under the headroom: {body}"
        );
        eprintln!("the store healed before /readyz was read: {body}");
        return;
    }
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(why), "{body}");
    assert_eq!(writable(gateway, 0.0).await, 0.0, "{}", store_log(gateway));
}

/// A small event of route `r`.
fn small_event(body: impl Into<bytes::Bytes>) -> Event {
    Event::new(
        "r",
        "127.0.0.1".parse().unwrap(),
        "POST",
        "/w",
        vec![],
        body.into(),
    )
}

/// An event of 256 KiB that does not compress (the journal compresses large records): it needs
/// that much new space on disk.
fn big_event(route: &str) -> Event {
    let mut body = vec![0u8; 256 << 10];
    fastrand::fill(&mut body);
    Event::new(
        route,
        "127.0.0.1".parse().unwrap(),
        "POST",
        "/w",
        vec![],
        body.into(),
    )
}

/// The embedded spool itself on a disk that fills behind its back (another file takes the
/// last bytes between two of its measures): the commit meets ENOSPC, and from then on every
/// write is refused at once (no caller waits for the 2 s retry), until the engine is reopened
/// in the running process, with what it held intact and the refused event not in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_spool_refuses_at_once_after_enospc_and_reopens_by_itself() {
    let disk = match Tmpfs::mount("8m") {
        Ok(d) => d,
        Err(why) => {
            return tmpfs::skipped(
                "the_embedded_spool_refuses_at_once_after_enospc_and_reopens_by_itself",
                &why,
            )
        }
    };
    let retry = Duration::from_secs(2);
    let spool = EmbeddedSpool::open(
        SpoolConfig::new(disk.path.join("spool"), Durability::Fsync).with_write_retry(retry),
    )
    .unwrap();
    let kept: Vec<Event> = (0..20)
        .map(|i| small_event(format!("{{\"n\":{i}}}")))
        .collect();
    for e in &kept {
        spool.append(e).await.unwrap();
    }
    // The ballast must win the race with the writer's next measure (every 50 ms while idle):
    // tried a few times, each from an idle writer.
    let mut failed_write = None;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        disk.fill("ballast");
        let big = big_event("r");
        let refused = spool.append(&big).await;
        assert!(
            refused.is_err(),
            "256 KiB that do not compress were stored on a full disk"
        );
        let health = spool.health();
        let why = health.refusing.clone().unwrap_or_default();
        if why.contains("recovers by itself") {
            failed_write = Some(big);
            break;
        }
        // Refused by the headroom (the measure came first): free the disk, try again.
        disk.free("ballast");
        tokio::time::timeout(Duration::from_secs(5), async {
            while spool.health().refusing.is_some() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the headroom comes back once the ballast is gone");
    }
    let big =
        failed_write.expect("in 10 tries, the disk never filled before the spool measured it");
    assert!(spool.health().refusing.unwrap().contains("is full"));
    // Refused at once while the store waits to be reopened: nothing waits on the writer.
    let started = Instant::now();
    for _ in 0..200 {
        let e = small_event("{}");
        let one = Instant::now();
        assert!(spool.append(&e).await.is_err());
        assert!(
            one.elapsed() < Duration::from_millis(100),
            "{:?}",
            one.elapsed()
        );
    }
    assert!(started.elapsed() < retry / 2, "{:?}", started.elapsed());
    // Room again: the store reopens by itself after `retry` and writes.
    disk.free("ballast");
    let back = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let e = small_event("{}");
            if spool.append(&e).await.is_ok() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the spool writes again within 15 s of the disk having room");
    let health = spool.health();
    assert_eq!(health.reopened, 1, "{health:?}");
    assert_eq!(health.refusing, None);
    let pending: HashSet<_> = spool.pending().unwrap().into_iter().map(|e| e.id).collect();
    for e in &kept {
        assert!(pending.contains(&e.id), "event {} was lost", e.id);
    }
    assert!(pending.contains(&back.id));
    assert!(
        !pending.contains(&big.id),
        "the refused event came back with the journal"
    );
    assert_eq!(spool.stats().pending, pending.len() as u64);
}

/// The gateway on a 16 MiB disk, the upstream down: acknowledgements turn to 503 `spool_full`
/// at once, `/readyz` and `hookgate_store_writable` say so; the upstream back, the backlog is
/// delivered and new events are accepted again, without a restart. Then another file takes the
/// rest of the disk under load: a failed write is refused at once, the store reopens by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_backpressure_and_heals_without_a_restart() {
    let disk = match Tmpfs::mount("16m") {
        Ok(d) => d,
        Err(why) => {
            return tmpfs::skipped(
                "a_full_disk_is_backpressure_and_heals_without_a_restart",
                &why,
            )
        }
    };
    let dir = tempfile::tempdir().unwrap();
    // The upstream is down: nothing listens on its port until it comes back.
    let upstream_port = free_port();
    let (public, admin) = (free_port(), free_port());
    let retry = Duration::from_secs(5);
    let text = config(
        public,
        admin,
        &disk.path.join("data"),
        "",
        &format!(
            "[store]\nwrite_retry = \"5s\"\n{}[route.delivery]\nbackoff = \"100ms\"\nmax_backoff = \"500ms\"\nmax_attempts = 1000\n",
            route(&format!("http://127.0.0.1:{upstream_port}{PATH}"), "")
        ),
    );
    let gateway = Gateway::start(dir.path(), public, admin, &text).await;
    let url = gateway.url(PATH);

    // Fill it: until 300 refusals in a row.
    let seen = load(&url, 16, 200_000, Duration::from_secs(120), 300).await;
    assert!(!seen.refused.is_empty(), "the disk never filled");
    assert_filled_and_refusing(&gateway, &seen, "free on the disk").await;
    eprintln!(
        "filled: {} acknowledged, {} refused ({:?}), slowest refusal {:?}, {} bytes free",
        seen.acked.len(),
        seen.refused.len(),
        seen.reasons,
        seen.slowest_refusal,
        disk.available()
    );

    // The upstream comes back: the backlog drains, and the gateway accepts again by itself.
    let upstream = Upstream::start_on(upstream_port).await;
    let lost = undelivered(&upstream, &seen.acked, Duration::from_secs(60)).await;
    assert_eq!(
        lost, 0,
        "{lost} acknowledged events never reached the upstream"
    );
    let got = delivered(&upstream);
    assert!(
        seen.refused.is_disjoint(&got),
        "an event answered 503 was delivered"
    );
    let again = poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || (readyz(&gateway).await.0 == 200).then_some(()),
    )
    .await;
    assert!(
        again.is_some(),
        "not ready again; log:\n{}",
        gateway.log_text()
    );
    assert_eq!(accepted_of(&url, 20).await, 20);
    assert_eq!(
        writable(&gateway, 1.0).await,
        1.0,
        "{}",
        store_log(&gateway)
    );

    // Another file takes the rest of the disk while events flow: whichever comes first (the
    // headroom, or a write failing with ENOSPC), the answers are 503 at once, and with the
    // disk freed the gateway takes events again by itself.
    let filler = {
        let path = disk.path.clone();
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(200));
            let ballast = Tmpfs::fill_at(&path, "ballast");
            std::thread::sleep(Duration::from_secs(2));
            std::fs::remove_file(path.join("ballast")).unwrap();
            ballast
        })
    };
    let burst = load(&url, 16, 100_000, Duration::from_secs(4), usize::MAX).await;
    let ballast = filler.await.unwrap();
    assert!(ballast > 0);
    assert!(
        burst.other.is_empty(),
        "{:?}",
        &burst.other[..burst.other.len().min(5)]
    );
    assert!(!burst.refused.is_empty(), "the full disk refused nothing");
    assert_eq!(
        burst.reasons.keys().collect::<Vec<_>>(),
        ["spool_full"],
        "{:?}",
        burst.reasons
    );
    assert!(
        burst.slowest_refusal < Duration::from_secs(1),
        "a refusal took {:?} (the write retry is {retry:?})",
        burst.slowest_refusal
    );
    let back = poll(retry * 4, Duration::from_millis(200), async || {
        (accepted_of(&url, 1).await == 1).then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "not accepting again; log:\n{}",
        gateway.log_text()
    );
    let lost = undelivered(&upstream, &burst.acked, Duration::from_secs(60)).await;
    assert_eq!(
        lost, 0,
        "{lost} acknowledged events never reached the upstream"
    );
    assert!(burst.refused.is_disjoint(&delivered(&upstream)));
    let metrics = gateway.metrics().await;
    eprintln!(
        "ballast: {} acknowledged, {} refused ({:?}), slowest refusal {:?}; reopened {}, rebuilt {}",
        burst.acked.len(),
        burst.refused.len(),
        burst.reasons,
        burst.slowest_refusal,
        series(&metrics, "hookgate_store_recoveries_total{action=\"reopen\"}"),
        series(&metrics, "hookgate_store_recoveries_total{action=\"rebuild\"}"),
    );
    drop(gateway);
}

/// A gateway on `redis` with one route to the (down) upstream on `upstream_port`.
async fn redis_gateway(dir: &Path, redis: &RedisServer, upstream_port: u16) -> Gateway {
    let (public, admin, text) = redis_gateway_config(
        dir,
        &redis.url(),
        &redis_server::prefix(),
        &format!("http://127.0.0.1:{upstream_port}{PATH}"),
        "[route.delivery]\nbackoff = \"100ms\"\nmax_backoff = \"500ms\"\nmax_attempts = 1000\n",
    );
    Gateway::start(dir, public, admin, &text).await
}

/// Redis out of memory (`maxmemory`, `noeviction`): the same backpressure. 503 `spool_full` at
/// once, no 200 for an event Redis did not store; deliveries free memory and it accepts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_is_backpressure_and_heals() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start_with(
        &dir.path().join("redis"),
        &["--maxmemory", "6mb", "--maxmemory-policy", "noeviction"],
    );
    let upstream_port = free_port();
    let gateway = redis_gateway(dir.path(), &redis, upstream_port).await;
    let url = gateway.url(PATH);
    let seen = load(&url, 16, 100_000, Duration::from_secs(120), 300).await;
    assert_filled_and_refusing(&gateway, &seen, "OOM").await;

    let upstream = Upstream::start_on(upstream_port).await;
    let lost = undelivered(&upstream, &seen.acked, Duration::from_secs(60)).await;
    assert_eq!(
        lost, 0,
        "{lost} acknowledged events never reached the upstream"
    );
    assert!(seen.refused.is_disjoint(&delivered(&upstream)));
    assert_accepting_again(&gateway, &url, Duration::from_secs(20)).await;
    assert_eq!(
        writable(&gateway, 1.0).await,
        1.0,
        "{}",
        store_log(&gateway)
    );
}

/// Redis unable to persist (its RDB save fails: `MISCONF`, every write refused): 503
/// `spool_full` at once; once it saves again, accepted again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unable_to_persist_is_backpressure_and_heals() {
    let dir = tempfile::tempdir().unwrap();
    let saves = dir.path().join("saves");
    std::fs::create_dir_all(&saves).unwrap();
    let redis = RedisServer::start_with(
        &dir.path().join("redis"),
        &["--save", "1 1", "--enable-protected-configs", "yes"],
    );
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        cli(&["CONFIG", "SET", "dir", saves.to_str().unwrap()]),
        "OK"
    );
    let upstream = Upstream::start().await;
    let (public, admin, text) = redis_gateway_config(
        dir.path(),
        &redis.url(),
        &redis_server::prefix(),
        &upstream.url(),
        "",
    );
    let gateway = Gateway::start(dir.path(), public, admin, &text).await;
    let url = gateway.url(PATH);
    assert_eq!(accepted_of(&url, 10).await, 10);
    // Its save directory goes away: the next RDB save fails, and Redis refuses every write.
    std::fs::remove_dir_all(&saves).unwrap();
    let refused = poll(
        Duration::from_secs(20),
        Duration::from_millis(100),
        async || {
            cli(&["SET", "probe", "1"])
                .starts_with("MISCONF")
                .then_some(())
        },
    )
    .await;
    assert!(refused.is_some(), "redis never refused writes");
    let seen = load(&url, 8, 2000, Duration::from_secs(10), 200).await;
    assert!(
        seen.acked.is_empty(),
        "{} acknowledged while redis refused writes",
        seen.acked.len()
    );
    assert!(seen.refused.len() >= 200);
    assert!(
        seen.slowest_refusal < Duration::from_secs(1),
        "{:?}",
        seen.slowest_refusal
    );
    assert_eq!(
        seen.reasons.keys().collect::<Vec<_>>(),
        ["spool_full"],
        "{:?}",
        seen.reasons
    );
    let (status, body) = readyz(&gateway).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("MISCONF"), "{body}");
    // The operator gives it a place to save: Redis saves again, the gateway accepts again.
    let fixed = dir.path().join("saves-fixed");
    std::fs::create_dir_all(&fixed).unwrap();
    assert_eq!(
        cli(&["CONFIG", "SET", "dir", fixed.to_str().unwrap()]),
        "OK"
    );
    assert_accepting_again(&gateway, &url, Duration::from_secs(30)).await;
    assert!(seen.refused.is_disjoint(&delivered(&upstream)));
}
