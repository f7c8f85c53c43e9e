//! A sender simulator with the reference provider's delivery policy: each generation's webhook is
//! attempted up to 5 times at a fixed interval (30 s by default) on any non-2xx answer, connect
//! error or timeout, with a 10 s connect and a 30 s request timeout. It sends N generations at
//! concurrency C, a mix of completed and failed ones (every error code of the contract), and
//! prints what it saw.
//!
//! ```sh
//! cargo run --example sender -- --count 200 --concurrency 16
//! cargo run --example sender -- --url http://127.0.0.1:8080/webhook/o3-video --interval 2s --resend 10
//! ```
//!
//! Options: `--url URL` (default `http://127.0.0.1:8080/webhook/o3-video`), `--count N` (100),
//! `--concurrency C` (8), `--interval D` (30s), `--attempts N` (5), `--failed P` (percent of
//! failed generations, 30), `--resend P` (percent of generations sent once more after their 200,
//! as a sender does when the answer was lost; 0), `--connect-timeout D` (10s), `--timeout D`
//! (30s), `--rate R` (generations started per second at most; default: as fast as the concurrency
//! allows), `--acked FILE` (each acknowledged generation id, a line as soon as its 200 arrives: what
//! `scripts/chaos` checks reached the handler), `--keys K` (the generations belong to K keys,
//! generation n to key `k{n % K}` as its `seq` n / K, written in the payload as `"key"` and
//! `"seq"`; each key's generations are sent one after the other, the next once the one before
//! was acknowledged or given up: K at a time, whatever `--concurrency`). Every run is bounded:
//! N × attempts requests at most.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CODES: [&str; 6] = [
    "CONTENT_POLICY_VIOLATION",
    "IMAGE_INACCESSIBLE",
    "INVALID_IMAGE",
    "TIMEOUT",
    "TASK_FAILED",
    "MAINTENANCE",
];

struct Options {
    url: String,
    count: usize,
    concurrency: usize,
    interval: Duration,
    attempts: u32,
    failed_percent: u64,
    resend_percent: u64,
    connect_timeout: Duration,
    timeout: Duration,
    acked: Option<std::path::PathBuf>,
    rate: Option<f64>,
    keys: Option<usize>,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        url: "http://127.0.0.1:8080/webhook/o3-video".into(),
        count: 100,
        concurrency: 8,
        interval: Duration::from_secs(30),
        attempts: 5,
        failed_percent: 30,
        resend_percent: 0,
        connect_timeout: Duration::from_secs(10),
        timeout: Duration::from_secs(30),
        acked: None,
        rate: None,
        keys: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--url" => o.url = value,
            "--count" => o.count = value.parse().map_err(|e| bad(&e))?,
            "--concurrency" => o.concurrency = value.parse().map_err(|e| bad(&e))?,
            "--interval" => o.interval = humantime::parse_duration(&value).map_err(|e| bad(&e))?,
            "--attempts" => o.attempts = value.parse().map_err(|e| bad(&e))?,
            "--failed" => o.failed_percent = value.parse().map_err(|e| bad(&e))?,
            "--resend" => o.resend_percent = value.parse().map_err(|e| bad(&e))?,
            "--connect-timeout" => {
                o.connect_timeout = humantime::parse_duration(&value).map_err(|e| bad(&e))?
            }
            "--timeout" => o.timeout = humantime::parse_duration(&value).map_err(|e| bad(&e))?,
            "--acked" => o.acked = Some(value.into()),
            "--rate" => match value.parse::<f64>() {
                Ok(r) if r > 0.0 && r.is_finite() => o.rate = Some(r),
                _ => {
                    return Err(bad(
                        &"a rate is a positive number of generations per second",
                    ))
                }
            },
            "--keys" => match value.parse::<usize>() {
                Ok(k) if k > 0 => o.keys = Some(k),
                _ => return Err(bad(&"a number of keys, at least 1")),
            },
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.concurrency == 0 || o.attempts == 0 {
        return Err("--concurrency and --attempts must be at least 1".into());
    }
    // One worker per key: a key's generations one after the other.
    if let Some(k) = o.keys {
        o.concurrency = k;
    }
    Ok(o)
}

fn payload(n: usize, failed_percent: u64, keys: Option<usize>) -> (String, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let keyed = match keys {
        Some(k) => format!(r#","key":"k{}","seq":{}"#, n % k, n / k),
        None => String::new(),
    };
    let body = if fastrand::u64(0..100) < failed_percent {
        let code = CODES[n % CODES.len()];
        format!(
            r#"{{"generation_id":"{id}","status":"failed","video_url":null,"model":"kling-o3-video-10s-pro","message":"{code}"{keyed}}}"#
        )
    } else {
        format!(
            r#"{{"generation_id":"{id}","status":"completed","video_url":"https://cdn.example.com/videos/{id}.mp4","model":"kling-o3-video-10s-pro","message":null{keyed}}}"#
        )
    };
    (id, body)
}

#[derive(Default)]
struct Tally {
    /// Answers by status (or error kind).
    answers: BTreeMap<String, usize>,
    /// Acknowledged at attempt n (index n - 1).
    acked_at: Vec<usize>,
    gave_up: usize,
    duplicates: usize,
    latencies_ms: Vec<f64>,
}

#[tokio::main]
async fn main() {
    let o = match parse() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("sender: {e}");
            std::process::exit(2);
        }
    };
    let client = reqwest::Client::builder()
        .connect_timeout(o.connect_timeout)
        .timeout(o.timeout)
        .build()
        .expect("an HTTP client");
    let tally = Arc::new(Mutex::new(Tally {
        acked_at: vec![0; o.attempts as usize],
        ..Tally::default()
    }));
    let next = Arc::new(AtomicUsize::new(0));
    // Each acknowledged generation, written (and flushed) as its 200 arrives: a reader sees
    // every one the sender saw acknowledged, even if this process is stopped.
    let acked_file = match &o.acked {
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => Some(Arc::new(Mutex::new(f))),
            Err(e) => {
                eprintln!("sender: --acked {}: {e}", path.display());
                std::process::exit(2);
            }
        },
        None => None,
    };
    let started = Instant::now();
    println!(
        "sender: {} generations to {} at concurrency {}, up to {} attempts {:?} apart",
        o.count, o.url, o.concurrency, o.attempts, o.interval
    );
    let workers: Vec<_> = (0..o.concurrency)
        .map(|worker| {
            let (o, client, tally, next) = (o.clone(), client.clone(), tally.clone(), next.clone());
            let acked_file = acked_file.clone();
            tokio::spawn(async move {
                // With keys, worker w sends key w's generations: w, w + K, w + 2K, ...
                let mut own = (worker..o.count).step_by(o.keys.unwrap_or(1));
                loop {
                    let n = match o.keys {
                        Some(_) => match own.next() {
                            Some(n) => n,
                            None => return,
                        },
                        None => next.fetch_add(1, Ordering::Relaxed),
                    };
                    if n >= o.count {
                        return;
                    }
                    // Paced: generation n starts n / rate seconds into the run.
                    if let Some(rate) = o.rate {
                        let at = started + Duration::from_secs_f64(n as f64 / rate);
                        tokio::time::sleep_until(at.into()).await;
                    }
                    let (id, body) = payload(n, o.failed_percent, o.keys);
                    let resend = fastrand::u64(0..100) < o.resend_percent;
                    let mut acked = false;
                    for attempt in 1..=o.attempts {
                        let sent = Instant::now();
                        let answer = client
                            .post(&o.url)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .await;
                        let (key, ok, text) = match answer {
                            Ok(res) => {
                                let status = res.status();
                                let text = res.text().await.unwrap_or_default();
                                (status.as_u16().to_string(), status.is_success(), text)
                            }
                            Err(e) if e.is_timeout() => ("timeout".into(), false, String::new()),
                            Err(e) if e.is_connect() => {
                                ("connect error".into(), false, String::new())
                            }
                            Err(_) => ("other error".into(), false, String::new()),
                        };
                        {
                            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                            *t.answers.entry(key).or_default() += 1;
                            t.latencies_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
                            if ok {
                                t.acked_at[attempt as usize - 1] += 1;
                                if text.contains("duplicate") {
                                    t.duplicates += 1;
                                }
                                acked = true;
                            }
                        }
                        if acked {
                            if let Some(f) = &acked_file {
                                use std::io::Write;
                                let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
                                if let Err(e) = writeln!(f, "{id}") {
                                    eprintln!("sender: cannot record an acknowledgement: {e}");
                                    std::process::exit(2);
                                }
                            }
                            break;
                        }
                        if attempt < o.attempts {
                            tokio::time::sleep(o.interval).await;
                        }
                    }
                    if !acked {
                        tally.lock().unwrap_or_else(|e| e.into_inner()).gave_up += 1;
                    } else if resend {
                        let res = client
                            .post(&o.url)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await;
                        let dup = match res {
                            Ok(r) => r.text().await.unwrap_or_default().contains("duplicate"),
                            Err(_) => false,
                        };
                        let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                        *t.answers.entry("resent".into()).or_default() += 1;
                        if dup {
                            t.duplicates += 1;
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed();
    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
    t.latencies_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        t.latencies_ms
            .get(((t.latencies_ms.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!("sender: done in {:.2?}", elapsed);
    for (answer, n) in &t.answers {
        println!("  answered {answer}: {n}");
    }
    for (i, n) in t.acked_at.iter().enumerate() {
        if *n > 0 {
            println!("  acknowledged at attempt {}: {n}", i + 1);
        }
    }
    println!("  answered duplicate: {}", t.duplicates);
    println!("  gave up after {} attempts: {}", o.attempts, t.gave_up);
    println!(
        "  latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    if t.gave_up > 0 {
        std::process::exit(1);
    }
}
