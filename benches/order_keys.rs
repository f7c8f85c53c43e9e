//! What per-key ordering costs in memory (issue 23: "a million distinct keys must not grow memory
//! without limit"). Drives a route's `Deliverer` in process (memory spool, a handler that returns
//! at once) with one event per distinct key, and reads the process's RSS (`/proc/self/status`):
//!
//! 1. flowing: 1,000,000 keys through an ordered destination, 10,000 at a time, each batch
//!    delivered before the next: the key state follows what is pending, so memory stays flat;
//! 2. held: the same through a paused destination, ordered and not, side by side: what a
//!    pending event's key costs while it waits (bounded by the spool's `max_events`);
//! 3. resumed: every event delivered, no key state left.
//!
//! `cargo bench --bench order_keys` (1,000,000 keys); in test mode (`cargo test --benches`,
//! CI) 20,000, to keep it running.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hookgate::core::{Counted, OrderKey};
use hookgate::deliver::{handler_fn, DeliveredEvent, Deliverer, DeliveryPolicy, Destination};
use hookgate::metrics::Metrics;
use hookgate::store::memory::MemorySpool;
use hookgate::store::{Event, Spool};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn event(i: usize) -> Event {
    Event::new(
        "r",
        "127.0.0.1".parse().unwrap(),
        "POST",
        "/w",
        vec![],
        format!(r#"{{"k":"key-{i}","n":{i}}}"#).into(),
    )
}

/// A route with one destination (`ordered` or not) on a fresh memory spool that keeps no
/// history (retention 0: only what is pending holds memory); its worker spawned.
fn route(ordered: bool, n: usize) -> Deliverer {
    let spool: Arc<dyn Spool> =
        Arc::new(MemorySpool::new(n as u64 + 10, 1 << 40).with_retention(Duration::ZERO));
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    let mut app = Destination::new("app")
        .with_target(handler_fn(|_ev: DeliveredEvent| async { Ok(()) }))
        .with_policy(DeliveryPolicy {
            concurrency: 64,
            ..DeliveryPolicy::default()
        });
    if ordered {
        app = app.with_order(OrderKey::parse("order", "/k").unwrap());
    }
    let (deliverer, worker) =
        Deliverer::with_destinations("r", spool, &metrics, vec![app]).unwrap();
    tokio::spawn(worker);
    deliverer
}

async fn accept_all(d: &Deliverer, from: usize, to: usize) {
    for i in from..to {
        let outcome = d.accept(event(i), None).await;
        assert_eq!(outcome.counted(), Counted::Accepted, "{outcome:?}");
    }
}

async fn drained(d: &Deliverer, within: Duration) {
    let deadline = Instant::now() + within;
    while d.spool().stats().pending > 0 {
        assert!(Instant::now() < deadline, "not delivered in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One case, in this process (each case runs in a process of its own: memory an earlier case
/// freed would otherwise be reused and hide what this one takes). Prints its RSS growth.
async fn case(name: &str, n: usize) {
    let base = rss_mib();
    match name {
        "flowing" => {
            // A hundredth of the keys at a time, each delivered before the next: what stays
            // is what a million keys that came and went leave behind.
            let d = route(true, n);
            let started = Instant::now();
            let mut at_tenth = 0.0;
            for chunk in 0..100 {
                accept_all(&d, chunk * n / 100, (chunk + 1) * n / 100).await;
                drained(&d, Duration::from_secs(60)).await;
                if chunk == 9 {
                    at_tenth = rss_mib() - base;
                }
            }
            let keys = d.status()[0].order_keys;
            assert_eq!(keys, 0);
            println!(
                "  flowing (ordered, {} at a time, each delivered before the next): {n} keys in {:.1} s; RSS +{at_tenth:.1} MiB after a tenth of them, +{:.1} MiB after all; keys held after: {keys}",
                n / 100,
                started.elapsed().as_secs_f64(),
                rss_mib() - base,
            );
        }
        "held-ordered" | "held-unordered" => {
            let ordered = name == "held-ordered";
            let d = route(ordered, n);
            d.pause("app").await.unwrap();
            accept_all(&d, 0, n).await;
            let held = rss_mib() - base;
            let keys = d.status()[0].order_keys;
            d.resume("app").await.unwrap();
            drained(&d, Duration::from_secs(300)).await;
            assert_eq!(d.status()[0].order_keys, 0);
            println!(
                "  paused, {}: {n} pending, RSS +{held:.1} MiB, keys held: {keys}; resumed: all delivered, keys held: 0",
                if ordered { "ordered" } else { "unordered" },
            );
            println!("RESULT {name} {held}");
        }
        other => panic!("no case {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    // ORDER_KEYS_N: another count, to see how the numbers scale.
    let n = std::env::var("ORDER_KEYS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 1_000_000 } else { 20_000 });
    if let Some(at) = args.iter().position(|a| a == "--case") {
        let name = args[at + 1].clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(case(&name, n));
        return;
    }
    println!("order_keys: {n} events, each its own key");
    let exe = std::env::current_exe().unwrap();
    let mut held = std::collections::HashMap::new();
    for name in ["flowing", "held-unordered", "held-ordered"] {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["--case", name]);
        if full {
            cmd.arg("--bench");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            match line.strip_prefix("RESULT ") {
                Some(r) => {
                    let (k, v) = r.split_once(' ').unwrap();
                    held.insert(k.to_owned(), v.parse::<f64>().unwrap());
                }
                None => println!("{line}"),
            }
        }
    }
    let extra = held["held-ordered"] - held["held-unordered"];
    println!(
        "  a pending event's key state: about {:.0} bytes ({extra:.1} MiB for {n} keys pending at once)",
        extra * 1024.0 * 1024.0 / n as f64,
    );
}
