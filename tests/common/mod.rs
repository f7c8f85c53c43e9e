//! Shared by the gateway tests: the real `hookgate` binary as a process, a recording upstream on
//! 127.0.0.1, the provider's payloads, and raw HTTP/1.1 over a socket.
#![allow(dead_code)] // each test file uses part of it

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post as route_post;
use axum::Router;

pub const PATH: &str = "/webhook/o3-video";

/// The provider's three example payloads, byte for byte as its documentation prints them.
pub const PROVIDER_COMPLETED: &str = r#"{
"generation_id" : "550e8400-e29b-41d4-a716-446655440000" ,
"status" : "completed" ,
"video_url" : "https://cdn.example.com/videos/550e8400.mp4" ,
"model" : "kling-o3-video-10s-pro" ,
"message" : null
}"#;
pub const PROVIDER_FAILED: &str = r#"{
"generation_id" : "550e8400-e29b-41d4-a716-446655440001" ,
"status" : "failed" ,
"video_url" : null ,
"model" : "kling-o3-video-10s-pro" ,
"message" : "CONTENT_POLICY_VIOLATION"
}"#;
pub const PROVIDER_TIMEOUT: &str = r#"{
"generation_id" : "550e8400-e29b-41d4-a716-446655440002" ,
"status" : "failed" ,
"video_url" : null ,
"model" : "kling-o3-video-10s-pro" ,
"message" : "TIMEOUT"
}"#;

/// A valid payload for generation `id`.
pub fn completed(id: &str) -> String {
    format!(
        r#"{{"generation_id":"{id}","status":"completed","video_url":"https://cdn.example.com/videos/{id}.mp4","model":"kling-o3-video-10s-pro","message":null}}"#
    )
}

/// A fresh generation id.
pub fn generation() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A port free right now on 127.0.0.1, and never one this process was given before: the kernel
/// may hand the same ephemeral port to two binds in a row once the first listener is closed
/// (a gateway's public and admin ports then collided, and the config was refused).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no new free loopback port in 1000 tries")
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// What the upstream answered it.
    pub status: u16,
    /// The request's path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// How the upstream answers.
#[derive(Debug, Clone)]
pub struct Behavior {
    pub status: u16,
    pub delay: Duration,
    pub body: &'static str,
    /// Headers added to the answer (after `content-type` and `x-upstream`), repeats kept.
    pub headers: &'static [(&'static str, &'static str)],
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            status: 200,
            delay: Duration::ZERO,
            body: r#"{"status":"received"}"#,
            headers: &[],
        }
    }
}

#[derive(Clone, Default)]
struct UpstreamState {
    received: Arc<Mutex<Vec<Received>>>,
    behavior: Arc<Mutex<Behavior>>,
    /// Requests that arrived, counted before the [`Behavior`]'s delay (`received` is after).
    arrived: Arc<std::sync::atomic::AtomicUsize>,
}

/// A real HTTP server on 127.0.0.1 that records what arrives and answers per its [`Behavior`].
pub struct Upstream {
    pub addr: SocketAddr,
    state: UpstreamState,
    _task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::start_on(0).await
    }

    /// [`start`](Self::start) on a given loopback port (0: any free one).
    pub async fn start_on(port: u16) -> Upstream {
        let state = UpstreamState::default();
        let app = Router::new()
            .fallback(route_post(
                |State(s): State<UpstreamState>,
                 uri: axum::http::Uri,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    let behavior = s.behavior.lock().unwrap().clone();
                    s.arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if !behavior.delay.is_zero() {
                        tokio::time::sleep(behavior.delay).await;
                    }
                    s.received.lock().unwrap().push(Received {
                        status: behavior.status,
                        uri: uri.to_string(),
                        headers,
                        body,
                    });
                    let mut answer = HeaderMap::new();
                    answer.insert("content-type", "application/json".parse().unwrap());
                    answer.insert("x-upstream", "demo".parse().unwrap());
                    for (name, value) in behavior.headers {
                        answer.append(*name, value.parse().unwrap());
                    }
                    (
                        StatusCode::from_u16(behavior.status).unwrap(),
                        answer,
                        behavior.body,
                    )
                },
            ))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Upstream {
            addr,
            state,
            _task: task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}{PATH}", self.addr)
    }

    pub fn set(&self, behavior: Behavior) {
        *self.state.behavior.lock().unwrap() = behavior;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Requests that arrived so far, answered or not.
    pub fn arrived(&self) -> usize {
        self.state.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits (bounded) until `n` requests have arrived, answered or not (still in their delay).
    pub async fn wait_arrived(&self, n: usize, within: Duration) -> usize {
        let arrived = || self.state.arrived.load(std::sync::atomic::Ordering::SeqCst);
        poll(within, Duration::from_millis(10), async || {
            (arrived() >= n).then_some(())
        })
        .await;
        arrived()
    }

    /// Waits (bounded) until `n` requests arrived; returns them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let enough = async || Some(self.received()).filter(|got| got.len() >= n);
        match poll(within, Duration::from_millis(20), enough).await {
            Some(got) => got,
            None => self.received(),
        }
    }
}

/// Asks `probe` every `every` until it answers `Some`, for at most `within` (then `None`): the
/// one bounded wait of these tests.
pub async fn poll<T>(
    within: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self._task.abort();
    }
}

/// A config file's text: `server` lines go under `[server]` (listen, admin, data_dir and a short
/// shutdown grace are set here), then `routes` verbatim.
pub fn config(public: u16, admin: u16, data: &Path, server: &str, routes: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{public}\"\nadmin = \"127.0.0.1:{admin}\"\ndata_dir = {data:?}\nshutdown_grace = \"1s\"\n{server}\n{routes}\n"
    )
}

/// A gateway config on `redis_url` (a fresh `prefix` per test) with one route to `upstream`.
pub fn redis_gateway_config(
    dir: &Path,
    redis_url: &str,
    prefix: &str,
    upstream: &str,
    route_extra: &str,
) -> (u16, u16, String) {
    let (public, admin) = (free_port(), free_port());
    let text = config(
        public,
        admin,
        &dir.join("data"),
        "",
        &format!(
            "[store]\nbackend = \"redis\"\nurl = \"{redis_url}\"\nprefix = \"{prefix}\"\nvisibility_timeout = \"3s\"\n{}",
            route(upstream, route_extra)
        ),
    );
    (public, admin, text)
}

/// A route to `upstream` allowing loopback, with extra lines.
pub fn route(upstream: &str, extra: &str) -> String {
    format!(
        "[[route]]\npath = \"{PATH}\"\nupstream = \"{upstream}\"\nallow = [\"127.0.0.1/32\", \"::1/128\"]\n{extra}\n"
    )
}

/// The `hookgate` binary under test, as a process; SIGKILLed (by PID) when dropped.
pub struct Gateway {
    child: Option<Child>,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_hookgate")
}

impl Gateway {
    /// Writes `text` to `dir/hookgate.toml` and starts the binary on it; waits for `/healthz`.
    pub async fn start(dir: &Path, public: u16, admin: u16, text: &str) -> Gateway {
        let config = dir.join("hookgate.toml");
        std::fs::write(&config, text).unwrap();
        Self::start_file(dir, public, admin, &config).await
    }

    /// A gateway on free ports with one route (`route_extra` added) to `upstream`, its data in
    /// `dir/data`, `server` lines added to `[server]`.
    pub async fn for_upstream(
        dir: &Path,
        upstream: &str,
        server: &str,
        route_extra: &str,
    ) -> Gateway {
        Self::for_upstream_edited(dir, upstream, server, route_extra, |text| text).await
    }

    /// [`for_upstream`](Self::for_upstream), the config text passed through `edit` first (for
    /// keys the helpers set already).
    pub async fn for_upstream_edited(
        dir: &Path,
        upstream: &str,
        server: &str,
        route_extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Gateway {
        let (public, admin) = (free_port(), free_port());
        let text = config(
            public,
            admin,
            &dir.join("data"),
            server,
            &route(upstream, route_extra),
        );
        Self::start(dir, public, admin, &edit(text)).await
    }

    pub async fn start_file(dir: &Path, public: u16, admin: u16, config: &Path) -> Gateway {
        let log = dir.join(format!("gateway-{}.log", uuid::Uuid::now_v7()));
        let child = Command::new(binary())
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,fjall=warn,lsm_tree=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the hookgate binary");
        let gateway = Gateway {
            child: Some(child),
            public: SocketAddr::from(([127, 0, 0, 1], public)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            config: config.to_owned(),
            log,
        };
        gateway.wait_ready().await;
        gateway
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let up = async || {
            let health = client
                .get(format!("http://{}/healthz", self.admin))
                .send()
                .await;
            let public = tokio::net::TcpStream::connect(self.public).await;
            (matches!(health, Ok(ref r) if r.status() == 200) && public.is_ok()).then_some(())
        };
        if poll(Duration::from_secs(30), Duration::from_millis(50), up)
            .await
            .is_none()
        {
            panic!("the gateway did not come up; its log:\n{}", self.log_text());
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .expect("the admin listener answers")
            .text()
            .await
            .expect("a text body")
    }

    /// Sends `signal` (by PID) and waits (bounded) for the exit; returns how long it took.
    pub fn signal_and_wait(&mut self, signal: &str) -> Duration {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait().unwrap().is_some() {
                return started.elapsed();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the gateway did not exit within 30 s of SIG{signal}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A JSON POST; returns (status, headers, body).
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let res = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the gateway answers");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().await.unwrap_or_default())
}

/// Writes `request` raw to `addr` and reads the answer until the server closes or `within`
/// passes; returns what arrived.
pub mod promtool;

pub async fn raw(addr: SocketAddr, request: &[u8], within: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A client with a bound on every request.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("a client")
}

/// An upstream and a gateway with one route to it.
pub struct Setup {
    /// Holds the data dir until the test ends.
    pub dir: tempfile::TempDir,
    pub upstream: Upstream,
    pub gateway: Gateway,
}

/// An upstream and a gateway with one route to it (`route_extra` and `server_extra` added).
pub async fn setup(server_extra: &str, route_extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gateway =
        Gateway::for_upstream(dir.path(), &upstream.url(), server_extra, route_extra).await;
    Setup {
        dir,
        upstream,
        gateway,
    }
}

/// Sends `n` events the upstream refuses with 400 (so each becomes a dead letter at its first
/// attempt, with `max_attempts` 1 or any refusal); returns their event ids once all arrived.
pub async fn dead_lettered(s: &Setup, n: usize) -> Vec<String> {
    s.upstream.set(Behavior {
        status: 400,
        ..Behavior::default()
    });
    let c = client();
    let mut ids = Vec::new();
    for _ in 0..n {
        let (status, _, text) = post(&c, &s.gateway.url(PATH), completed(&generation())).await;
        assert_eq!(status, 200);
        ids.push(
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    s.upstream.wait_for(n, Duration::from_secs(10)).await;
    ids
}

/// The `Content-Length` of an answer's head (0 without one).
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0)
}

/// The `error` of a JSON error body.
pub fn reason(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The value of the series `name{labels}` (labels as written in the exposition, sorted).
pub fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}
