//! A steady load for `scripts/bench --steady`: distinct provider payloads at a fixed rate over a
//! few kept-alive connections, for a bounded time, sampling a server process's RSS once a
//! second. wrk drives as fast as it can; the memory bar asks for a steady rate instead.
//!
//! `steady_load --target 127.0.0.1:PORT --rate 5000 --seconds 300 [--connections 16]
//! [--pid PID] [--path /webhook/o3-video]` prints one JSON line: requests, non-2xx, errors, the
//! rate reached and the RSS samples (KiB). Run any other way (`cargo test --all-targets` runs
//! benches once in test mode) it prints what it is and exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    non_2xx: AtomicU64,
    errors: AtomicU64,
}

fn main() {
    let Some(target) = arg("--target") else {
        println!("steady_load: the steady-rate load of scripts/bench --steady (--target ADDR --rate N --seconds S [--connections C] [--pid PID]); nothing to run here");
        return;
    };
    let rate: f64 = arg("--rate").and_then(|r| r.parse().ok()).unwrap_or(5000.0);
    let seconds: u64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(60);
    let connections: usize = arg("--connections")
        .and_then(|c| c.parse().ok())
        .unwrap_or(16);
    let pid: Option<u32> = arg("--pid").and_then(|p| p.parse().ok());
    let path = arg("--path").unwrap_or_else(|| "/webhook/o3-video".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let samples = runtime.block_on(async {
        let mut tasks = Vec::new();
        let every = Duration::from_secs_f64(connections as f64 / rate);
        for conn in 0..connections {
            let (target, path, counts) = (target.clone(), path.clone(), counts.clone());
            tasks.push(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                // A late tick is sent at once: the rate holds on average.
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut sender = None;
                let mut n: u64 = 0;
                while Instant::now() < deadline {
                    ticks.tick().await;
                    if sender.is_none() {
                        sender = connect(&target).await;
                    }
                    let Some(send) = sender.as_mut() else {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    n += 1;
                    let id = format!("5eadf000-{conn:04x}-4000-8000-{n:012x}");
                    let body = format!(
                        r#"{{"generation_id":"{id}","status":"completed","video_url":"https://cdn.example.com/videos/{id}.mp4","model":"kling-o3-video-10s-pro","message":null}}"#
                    );
                    let request = Request::post(path.as_str())
                        .header("host", "bench")
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)))
                        .expect("a request");
                    match send.send_request(request).await {
                        Ok(res) => {
                            let ok = res.status().is_success();
                            let _ = res.into_body().collect().await;
                            let c = if ok { &counts.ok } else { &counts.non_2xx };
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                            sender = None;
                        }
                    }
                }
            }));
        }
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while Instant::now() < deadline {
            tick.tick().await;
            if let Some(pid) = pid {
                samples.push(rss_kib(pid).unwrap_or(0));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        samples
    });
    let elapsed = started.elapsed().as_secs_f64();
    let ok = counts.ok.load(Ordering::Relaxed);
    println!(
        "{{\"requests\":{},\"non_2xx\":{},\"errors\":{},\"rate\":{:.0},\"rss_kib\":{:?}}}",
        ok,
        counts.non_2xx.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
        ok as f64 / elapsed,
        samples
    );
}

async fn connect(target: &str) -> Option<http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(target).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(send)
}
