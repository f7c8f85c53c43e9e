//! A fault run with counts: the real `hookgate` binary between `examples/sender` (the provider,
//! retrying at a shortened interval) and a handler that fails and stalls, while the gateway is
//! SIGKILLed and SIGTERMed (and, on Redis, Redis itself is killed and restarted) under load. At
//! the end every generation the sender saw acknowledged must have reached the handler, and each
//! must still be answered `duplicate`. `scripts/chaos` runs it on both backends, `scripts/powercut`
//! with a file system that drops unsynced bytes at each kill, `tests/chaos.rs` a short run.
//!
//! ```sh
//! cargo build --release --all-features --bin hookgate --examples
//! target/release/examples/chaos --generations 20000 --kills 10 --terms 2
//! target/release/examples/chaos --backend redis --generations 20000 --kills 10 --terms 2 --redis-restarts 2
//! ```
//!
//! Options (defaults in brackets):
//! - `--generations N` [20000], `--concurrency C` [32], `--rate R` [250]: what the sender sends,
//!   at once at most, and generations started per second (the faults land under load);
//! - `--interval D` [250ms], `--attempts N` [100]: the sender's retry policy (the provider's is
//!   5 × 30 s; shortened so a run takes minutes, still longer than the 15 s a killed instance's
//!   in-flight reservations hold a key on Redis);
//! - `--kills N` [10], `--terms N` [2]: SIGKILLs and SIGTERMs of the gateway, spread over the
//!   run by acknowledgements (each followed by a restart);
//! - `--backend embedded|redis` [embedded], `--redis-restarts N` [0]: on `redis`, a
//!   `redis-server` (`appendfsync always`) is started here and SIGKILLed and restarted N times;
//! - `--durability fsync|os` [fsync]: the gateway's `server.durability`;
//! - `--fail-percent P` [20], `--stall-percent P` [5]: the handler answers 500 to P% of
//!   deliveries, and processes P% but answers them only after the gateway's delivery timeout
//!   (1 s), so the gateway retries them (each arrives twice);
//! - `--upstream-down-every N` [0]: the handler answers 503 to everything during every Nth
//!   stretch between two faults (events pile up in the spool meanwhile);
//! - `--destinations 1|2` [1]: with 2, the route fans out to a second destination that orders
//!   its events by `/key` (the sender then gives its generations `--keys` keys, each key's sent
//!   one after the other): every acknowledged generation must reach it too, and each key's in
//!   the order they were acknowledged;
//! - `--keys K` [64]: with `--destinations 2`, how many keys;
//! - `--data-dir DIR` [a temporary directory]: the gateway's `server.data_dir` (a LazyFS mount);
//! - `--on-kill CMD` [none]: a shell command run after each SIGKILL, before the restart
//!   (`scripts/powercut`: LazyFS's `clear-cache`, the power cut);
//! - `--gateway PATH`, `--sender PATH` [next to this binary];
//! - `--seconds S` [900]: the whole run's bound.
//!
//! Everything listens on 127.0.0.1 only. It prints a table and one `chaos:` line of counts, and
//! exits 1 if any acknowledged event was lost or answered other than `duplicate` at the end.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;

const PATH: &str = "/webhook/o3-video";

/// How long the gateway waits for the handler before it counts a timeout (and retries).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(1);

struct Options {
    generations: usize,
    concurrency: usize,
    rate: f64,
    interval: String,
    attempts: u32,
    kills: usize,
    terms: usize,
    backend: String,
    redis_restarts: usize,
    durability: String,
    fail_percent: u64,
    stall_percent: u64,
    upstream_down_every: usize,
    destinations: usize,
    keys: usize,
    data_dir: Option<PathBuf>,
    on_kill: Option<String>,
    gateway: PathBuf,
    sender: PathBuf,
    seconds: u64,
}

fn parse() -> Result<Options, String> {
    let here = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = here.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut o = Options {
        generations: 20_000,
        concurrency: 32,
        rate: 250.0,
        interval: "250ms".into(),
        attempts: 100,
        kills: 10,
        terms: 2,
        backend: "embedded".into(),
        redis_restarts: 0,
        durability: "fsync".into(),
        fail_percent: 20,
        stall_percent: 5,
        upstream_down_every: 0,
        destinations: 1,
        keys: 64,
        data_dir: None,
        on_kill: None,
        // target/<profile>/examples/chaos → target/<profile>/hookgate
        gateway: dir.parent().map(|p| p.join("hookgate")).unwrap_or_default(),
        sender: dir.join("sender"),
        seconds: 900,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--generations" => o.generations = value.parse().map_err(|e| bad(&e))?,
            "--concurrency" => o.concurrency = value.parse().map_err(|e| bad(&e))?,
            "--rate" => o.rate = value.parse().map_err(|e| bad(&e))?,
            "--interval" => {
                humantime::parse_duration(&value).map_err(|e| bad(&e))?;
                o.interval = value;
            }
            "--attempts" => o.attempts = value.parse().map_err(|e| bad(&e))?,
            "--kills" => o.kills = value.parse().map_err(|e| bad(&e))?,
            "--terms" => o.terms = value.parse().map_err(|e| bad(&e))?,
            "--backend" if value == "embedded" || value == "redis" => o.backend = value,
            "--redis-restarts" => o.redis_restarts = value.parse().map_err(|e| bad(&e))?,
            "--durability" if value == "fsync" || value == "os" => o.durability = value,
            "--fail-percent" => o.fail_percent = value.parse().map_err(|e| bad(&e))?,
            "--stall-percent" => o.stall_percent = value.parse().map_err(|e| bad(&e))?,
            "--upstream-down-every" => {
                o.upstream_down_every = value.parse().map_err(|e| bad(&e))?
            }
            "--destinations" if value == "1" || value == "2" => {
                o.destinations = value.parse().map_err(|e| bad(&e))?
            }
            "--keys" => o.keys = value.parse().map_err(|e| bad(&e))?,
            "--data-dir" => o.data_dir = Some(value.into()),
            "--on-kill" => o.on_kill = Some(value),
            "--gateway" => o.gateway = value.into(),
            "--sender" => o.sender = value.into(),
            "--seconds" => o.seconds = value.parse().map_err(|e| bad(&e))?,
            other => return Err(format!("unknown option or value: {other} {value}")),
        }
    }
    if o.backend != "redis" && o.redis_restarts > 0 {
        return Err("--redis-restarts needs --backend redis".into());
    }
    if o.fail_percent + o.stall_percent > 100 || o.generations == 0 || o.concurrency == 0 {
        return Err("the percentages must add up to at most 100, the counts be at least 1".into());
    }
    for (what, path) in [("--gateway", &o.gateway), ("--sender", &o.sender)] {
        if !path.is_file() {
            return Err(format!(
                "{what} {}: not built (cargo build --all-features --bin hookgate --examples)",
                path.display()
            ));
        }
    }
    Ok(o)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The handler: answers 500 to `fail_percent`% of requests, holds `stall_percent`% past the
/// gateway's delivery timeout before answering 200, and 503 to everything while `down`. Counts
/// the 2xx answers per generation (what the handler processed).
#[derive(Clone)]
struct Handler {
    fail: u64,
    stall: u64,
    down: Arc<AtomicBool>,
    processed: Arc<Mutex<HashMap<String, u32>>>,
    /// The ordered destination's: per key, the `seq` of each event processed, in the order
    /// they came (a repeat is a redelivery); and each generation it processed.
    ordered: Arc<Mutex<HashMap<String, Vec<u64>>>>,
    ordered_ids: Arc<Mutex<std::collections::HashSet<String>>>,
    requests: Arc<AtomicU64>,
}

async fn handle(
    State(h): State<Handler>,
    uri: axum::http::Uri,
    body: Bytes,
) -> (StatusCode, &'static str) {
    h.requests.fetch_add(1, Ordering::Relaxed);
    if h.down.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down");
    }
    let roll = fastrand::u64(0..100);
    if roll < h.fail {
        return (StatusCode::INTERNAL_SERVER_ERROR, "failed");
    }
    let v = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
    let Some(id) = v["generation_id"].as_str().map(str::to_owned) else {
        return (StatusCode::BAD_REQUEST, "no generation_id");
    };
    // Processed, then (a stall) answered after the gateway gave up waiting: it retries, and the
    // handler sees the event again. At least once, as promised.
    if uri.path().ends_with("/ordered") {
        let (Some(key), Some(seq)) = (v["key"].as_str(), v["seq"].as_u64()) else {
            return (StatusCode::BAD_REQUEST, "no key and seq");
        };
        h.ordered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_default()
            .push(seq);
        h.ordered_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
    } else {
        *h.processed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default() += 1;
    }
    if roll < h.fail + h.stall {
        tokio::time::sleep(DELIVERY_TIMEOUT + Duration::from_millis(500)).await;
    }
    (StatusCode::OK, r#"{"status":"received"}"#)
}

/// A child process stopped by PID when dropped.
struct Process {
    child: Option<Child>,
    name: &'static str,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends `signal` by PID and waits (bounded) for the exit.
    fn stop(&mut self, signal: &str, within: Duration) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "{} did not exit within {within:?} of SIG{signal}",
            self.name
        ))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The gateway's files and ports, to start it again after each fault.
struct Gateway {
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    admin: u16,
    process: Process,
    starts: usize,
}

impl Gateway {
    fn start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "warn,hookgate::store=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.binary.display()))?;
        self.process = Process {
            child: Some(child),
            name: "hookgate",
        };
        self.starts += 1;
        wait_for(Duration::from_secs(60), || http_ok(self.admin, "/healthz"))
            .map_err(|()| format!("the gateway did not come up; see {}", self.log.display()))
    }
}

/// A `redis-server` with `appendfsync always` on `port`, files in `dir`.
fn start_redis(port: u16, dir: &Path) -> Result<Process, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("redis.log")).map_err(|e| e.to_string())?;
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--dir"])
        .arg(dir)
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
        ])
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server: {e}"))?;
    let process = Process {
        child: Some(child),
        name: "redis-server",
    };
    wait_for(Duration::from_secs(30), || redis_ping(port))
        .map_err(|()| "redis-server did not answer".to_owned())?;
    Ok(process)
}

fn redis_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// Whether `GET path` on the admin port answers 200.
fn http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut buf = [0u8; 32];
    s.write_all(request.as_bytes()).is_ok()
        && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200"))
}

/// The admin listener's `/metrics` text ("" if it does not answer).
fn metrics_text(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let request = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let mut text = String::new();
    if s.write_all(request.as_bytes()).is_err() || s.read_to_string(&mut text).is_err() {
        return String::new();
    }
    text
}

fn wait_for(within: Duration, mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(())
}

/// The acknowledged generations the sender recorded so far.
fn acked(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Term,
    RedisRestart,
}

/// The faults in the order they happen: spread so that each kind recurs through the run.
fn schedule(kills: usize, terms: usize, redis: usize) -> Vec<Fault> {
    let mut all: Vec<(f64, Fault)> = Vec::new();
    for (n, fault) in [
        (kills, Fault::Kill),
        (terms, Fault::Term),
        (redis, Fault::RedisRestart),
    ] {
        for i in 0..n {
            all.push(((i as f64 + 0.5) / n as f64, fault));
        }
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all.into_iter().map(|(_, f)| f).collect()
}

fn config_text(
    o: &Options,
    public: u16,
    admin: u16,
    data: &Path,
    upstream: u16,
    redis: Option<u16>,
) -> String {
    // One destination: the `upstream` shorthand, in the route's table; two: tables after it.
    let (upstream_line, destinations) = if o.destinations == 2 {
        (
            String::new(),
            format!(
                r#"[[route.destination]]
name = "app"
url = "http://127.0.0.1:{upstream}{PATH}"
[[route.destination]]
name = "ordered"
url = "http://127.0.0.1:{upstream}{PATH}/ordered"
order = "/key"
"#
            ),
        )
    } else {
        (
            format!("upstream = \"http://127.0.0.1:{upstream}{PATH}\"\n"),
            String::new(),
        )
    };
    let store = match redis {
        Some(port) => format!(
            "[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{port}/0\"\nvisibility_timeout = \"5s\"\n"
        ),
        None => "[store]\nbackend = \"embedded\"\n".to_owned(),
    };
    format!(
        r#"[server]
listen = "127.0.0.1:{public}"
admin = "127.0.0.1:{admin}"
data_dir = {data:?}
durability = "{durability}"
shutdown_grace = "2s"
threads = 2

{store}
[[route]]
path = "{PATH}"
{upstream_line}allow = ["127.0.0.1/32"]
dedup = {{ key = "/generation_id", ttl = "24h" }}

[route.delivery]
timeout = "{timeout}ms"
connect_timeout = "1s"
backoff = "100ms"
max_backoff = "1s"
max_attempts = 1000
max_age = "1h"
concurrency = 32

{destinations}"#,
        durability = o.durability,
        timeout = DELIVERY_TIMEOUT.as_millis(),
    )
}

/// Re-sends each acknowledged generation once; returns how many were not answered
/// `duplicate` (each is an event the gateway forgot it had: its dedup key was lost).
async fn not_duplicate(url: &str, generations: &[String]) -> usize {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let misses = Arc::new(AtomicU64::new(0));
    let queue = Arc::new(Mutex::new(generations.to_vec()));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, misses, queue, url) = (client.clone(), misses.clone(), queue.clone(), url.to_owned());
            tokio::spawn(async move {
                loop {
                    let Some(id) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                        return;
                    };
                    let body = format!(
                        r#"{{"generation_id":"{id}","status":"completed","video_url":"https://cdn.example.com/videos/{id}.mp4","model":"kling-o3-video-10s-pro","message":null}}"#
                    );
                    let answer = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let duplicate = match answer {
                        Ok(r) if r.status() == 200 => {
                            r.text().await.unwrap_or_default().contains("duplicate")
                        }
                        _ => false,
                    };
                    if !duplicate {
                        misses.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    misses.load(Ordering::Relaxed) as usize
}

// Four workers: the handler keeps answering while a worker waits on a process (a restart).
#[tokio::main(worker_threads = 4)]
async fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chaos: {e}");
            std::process::exit(2);
        }
    };
    match run(&o).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("chaos: {e}");
            std::process::exit(2);
        }
    }
}

async fn run(o: &Options) -> Result<bool, String> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(o.seconds);
    let work = tempfile::Builder::new()
        .prefix("hookgate-chaos-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let data = o
        .data_dir
        .clone()
        .unwrap_or_else(|| work.path().join("data"));

    // The handler.
    let handler = Handler {
        fail: o.fail_percent,
        stall: o.stall_percent,
        down: Arc::new(AtomicBool::new(false)),
        processed: Arc::new(Mutex::new(HashMap::new())),
        ordered: Arc::new(Mutex::new(HashMap::new())),
        ordered_ids: Arc::new(Mutex::new(std::collections::HashSet::new())),
        requests: Arc::new(AtomicU64::new(0)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let upstream_port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let app = Router::new()
        .fallback(post(handle))
        .with_state(handler.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // Redis, on its backend.
    let redis_port = (o.backend == "redis").then(free_port);
    let redis_dir = work.path().join("redis");
    let mut redis = match redis_port {
        Some(port) => Some(start_redis(port, &redis_dir)?),
        None => None,
    };

    // The gateway.
    let (public, admin) = (free_port(), free_port());
    let config = work.path().join("hookgate.toml");
    std::fs::write(
        &config,
        config_text(o, public, admin, &data, upstream_port, redis_port),
    )
    .map_err(|e| e.to_string())?;
    let mut gateway = Gateway {
        binary: o.gateway.clone(),
        config,
        log: work.path().join("gateway.log"),
        admin,
        process: Process {
            child: None,
            name: "hookgate",
        },
        starts: 0,
    };
    gateway.start()?;
    let url = format!("http://127.0.0.1:{public}{PATH}");

    // The provider.
    let acked_file = work.path().join("acked");
    let sender_log = work.path().join("sender.log");
    let mut sender = Process {
        child: Some(
            Command::new(&o.sender)
                .args(["--url", &url, "--count", &o.generations.to_string()])
                .args(["--concurrency", &o.concurrency.to_string()])
                .args(["--rate", &o.rate.to_string()])
                .args([
                    "--interval",
                    &o.interval,
                    "--attempts",
                    &o.attempts.to_string(),
                ])
                .args(["--connect-timeout", "1s", "--timeout", "5s"])
                .args(if o.destinations == 2 {
                    vec!["--keys".to_owned(), o.keys.to_string()]
                } else {
                    Vec::new()
                })
                .arg("--acked")
                .arg(&acked_file)
                .stdout(std::fs::File::create(&sender_log).map_err(|e| e.to_string())?)
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("{}: {e}", o.sender.display()))?,
        ),
        name: "sender",
    };
    println!(
        "chaos: {} generations at concurrency {}, backend {} ({}), {} kills, {} terms, {} redis restarts, handler fails {}% and stalls {}%",
        o.generations, o.concurrency, o.backend, o.durability, o.kills, o.terms, o.redis_restarts, o.fail_percent, o.stall_percent
    );

    // The faults, each when its share of the generations has been acknowledged.
    let faults = schedule(o.kills, o.terms, o.redis_restarts);
    let mut done: HashMap<&'static str, usize> = HashMap::new();
    let mut stretch = 0usize;
    let set_down = |stretch: usize| {
        let down = o.upstream_down_every > 0
            && stretch % o.upstream_down_every == o.upstream_down_every - 1;
        handler.down.store(down, Ordering::Relaxed);
    };
    set_down(stretch);
    for (i, fault) in faults.iter().enumerate() {
        let due = o.generations * (i + 1) / (faults.len() + 1);
        loop {
            let sender_done = sender
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            if acked(&acked_file).len() >= due || sender_done {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the run passed its bound of {} s", o.seconds));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match fault {
            Fault::Kill => {
                gateway.process.stop("KILL", Duration::from_secs(10))?;
                if let Some(cmd) = &o.on_kill {
                    let status = Command::new("sh")
                        .args(["-c", cmd])
                        .status()
                        .map_err(|e| e.to_string())?;
                    if !status.success() {
                        return Err(format!("--on-kill {cmd:?}: {status}"));
                    }
                }
                gateway.start()?;
                *done.entry("kills").or_default() += 1;
            }
            Fault::Term => {
                gateway.process.stop("TERM", Duration::from_secs(30))?;
                gateway.start()?;
                *done.entry("terms").or_default() += 1;
            }
            Fault::RedisRestart => {
                if let (Some(r), Some(port)) = (redis.as_mut(), redis_port) {
                    r.stop("KILL", Duration::from_secs(10))?;
                    *r = start_redis(port, &redis_dir)?;
                    *done.entry("redis restarts").or_default() += 1;
                }
            }
        }
        stretch += 1;
        set_down(stretch);
        println!(
            "  {:>6.1} s  {:?} #{} at {} acknowledged (gateway pid {})",
            started.elapsed().as_secs_f64(),
            fault,
            i + 1,
            acked(&acked_file).len(),
            gateway.process.pid()
        );
    }

    // The sender finishes (bounded by its own retry policy, and by the run's bound).
    loop {
        let finished = sender
            .child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
        if finished {
            break;
        }
        if Instant::now() > deadline {
            sender.stop("KILL", Duration::from_secs(5))?;
            return Err(format!("the sender did not finish within {} s", o.seconds));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sender.child = None;
    handler.down.store(false, Ordering::Relaxed);

    // Every acknowledged generation reaches the handler (bounded wait).
    let acked_ids = acked(&acked_file);
    let acked_set: std::collections::HashSet<&String> = acked_ids.iter().collect();
    let wait_until = (Instant::now() + Duration::from_secs(180))
        .min(deadline.max(Instant::now() + Duration::from_secs(30)));
    loop {
        let missing = {
            let p = handler.processed.lock().unwrap_or_else(|e| e.into_inner());
            let ordered = handler
                .ordered_ids
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            acked_set
                .iter()
                .filter(|id| {
                    !p.contains_key(id.as_str())
                        || (o.destinations == 2 && !ordered.contains(id.as_str()))
                })
                .count()
        };
        if missing == 0 || Instant::now() > wait_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (lost, delivered, twice) = {
        let p = handler.processed.lock().unwrap_or_else(|e| e.into_inner());
        let lost = acked_set
            .iter()
            .filter(|id| !p.contains_key(id.as_str()))
            .count();
        let twice = acked_set
            .iter()
            .filter(|id| p.get(id.as_str()).is_some_and(|n| *n > 1))
            .count();
        (lost, p.len(), twice)
    };
    // The ordered destination: every acknowledged generation reached it, and each key's came in
    // order: an event never after a later one of its key (a repeat of the one just delivered, a
    // redelivery, is in order).
    let (ordered_lost, out_of_order) = if o.destinations == 2 {
        let ids = handler
            .ordered_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let lost = acked_set
            .iter()
            .filter(|id| !ids.contains(id.as_str()))
            .count();
        let by_key = handler.ordered.lock().unwrap_or_else(|e| e.into_inner());
        let mut late = 0;
        for seqs in by_key.values() {
            let mut highest = None;
            for &s in seqs {
                if highest.is_some_and(|h| s < h) {
                    late += 1;
                }
                highest = highest.max(Some(s));
            }
        }
        (lost, late)
    } else {
        (0, 0)
    };
    // Their dedup keys survived every fault.
    let misses = not_duplicate(&url, &acked_ids).await;
    let sender_out = std::fs::read_to_string(&sender_log).unwrap_or_default();
    let gave_up = sender_out
        .lines()
        .find_map(|l| l.trim().strip_prefix("gave up after "))
        .and_then(|l| l.rsplit(": ").next())
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let recoveries = |action: &str| {
        metrics_text(admin)
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "hookgate_store_recoveries_total{{action=\"{action}\"}} "
                ))
                .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    };
    // Since the last start: the counters start at zero with each process.
    let (reopens, rebuilds) = (recoveries("reopen"), recoveries("rebuild"));
    gateway.process.stop("TERM", Duration::from_secs(30))?;
    drop(redis);

    let count = |k: &str| done.get(k).copied().unwrap_or(0);
    // One set of counts, printed as a table row and as `chaos:` key=value pairs.
    let counts: [(&str, &str, String); 19] = [
        ("backend", "backend", o.backend.clone()),
        ("durability", "durability", o.durability.clone()),
        ("destinations", "destinations", o.destinations.to_string()),
        ("generations", "generations", o.generations.to_string()),
        ("acked", "acked", acked_ids.len().to_string()),
        ("", "gave_up", gave_up.to_string()),
        ("lost", "lost", lost.to_string()),
        ("delivered", "delivered", delivered.to_string()),
        ("delivered twice", "delivered_twice", twice.to_string()),
        ("not duplicate", "not_duplicate", misses.to_string()),
        ("ordered lost", "ordered_lost", ordered_lost.to_string()),
        ("out of order", "out_of_order", out_of_order.to_string()),
        ("kills", "kills", count("kills").to_string()),
        ("terms", "terms", count("terms").to_string()),
        (
            "redis restarts",
            "redis_restarts",
            count("redis restarts").to_string(),
        ),
        (
            "",
            "handler_requests",
            handler.requests.load(Ordering::Relaxed).to_string(),
        ),
        ("", "reopens_since_last_start", reopens.to_string()),
        ("", "rebuilds_since_last_start", rebuilds.to_string()),
        (
            "seconds",
            "seconds",
            format!("{:.1}", started.elapsed().as_secs_f64()),
        ),
    ];
    let columns: Vec<&(&str, &str, String)> = counts.iter().filter(|c| !c.0.is_empty()).collect();
    println!("{sender_out}");
    let row = |f: &dyn Fn(&(&str, &str, String)) -> String| {
        columns.iter().map(|c| f(c)).collect::<Vec<_>>().join(" | ")
    };
    println!("| {} |", row(&|c| c.0.to_owned()));
    println!("| {} |", row(&|_| "---".to_owned()));
    println!("| {} |", row(&|c| c.2.clone()));
    let pairs: Vec<String> = counts.iter().map(|c| format!("{}={}", c.1, c.2)).collect();
    println!("chaos: {}", pairs.join(" "));
    if lost > 0 || misses > 0 || ordered_lost > 0 || out_of_order > 0 {
        let log = std::fs::read_to_string(&gateway.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("chaos: FAILED; the gateway's log ends:");
        for l in tail.into_iter().rev() {
            eprintln!("  {l}");
        }
        return Ok(false);
    }
    Ok(true)
}
