//! The `redis` backend (feature `redis`): several gateway instances share one Redis for their
//! dedup keys, their spool and their dead letters (DESIGN §5). hookgate uses Redis as it is; it
//! does not imitate it.
//!
//! - [`RedisSpool`] (`spool.rs`): the [`Spool`](crate::store::Spool) on Redis Streams, and its
//!   [`SharedSpool`](crate::store::SharedSpool) side: a consumer group per route, each instance
//!   a consumer; retries wait in a sorted set; `XAUTOCLAIM` takes over what a silent instance
//!   held for longer than the visibility timeout.
//! - [`RedisDedupStore`] (`dedup.rs`): `SET NX PX` to reserve, renewed to the full TTL on commit,
//!   a compare-and-delete on release.
//!
//! Every key starts with the configured prefix; a route's keys then carry the route, or rather
//! its lane: each destination of a route has its own (see [`crate::store::lane`]), and an
//! event fanned out to two destinations is stored in both:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `{prefix}:stats` | hash | `events` (pending and dead), `dead`, `bytes`: the bounds, across instances |
//! | `{prefix}:routes` | set | the routes that ever stored an event |
//! | `{prefix}:ev:{route}` | hash | event id → the pending event (postcard, versioned) |
//! | `{prefix}:pending:{route}` | sorted set | event id by its id's time: the oldest pending |
//! | `{prefix}:queue:{route}` | stream | `u` (event id), `d` (due time): events to claim; group `hookgate` |
//! | `{prefix}:retry:{route}` | sorted set | event id by due time: retries waiting |
//! | `{prefix}:dead:{route}` | stream | `u`, `e` (the event): the dead letters, oldest first |
//! | `{prefix}:deadix:{route}` | sorted set | `{event id}:{stream entry}`, by name: the dead letters by id, for pages |
//! | `{prefix}:hist:{route}` | stream | `u`, `e` (the record), `a` (its state as delivered): the delivered events, trimmed by `MINID` to the retention |
//! | `{prefix}:hix:{route}` | sorted set | `{event id}\|{stream entry}`, by name: the history by id, for pages |
//! | `{prefix}:ord:{lane}:{key}` | list | an ordered destination's pending events of one ordering key, in arrival order: only the first is on the queue |
//! | `{prefix}:pace:{lane}` | string | a paced destination's next free slot (µs, Redis's clock) |
//! | `{prefix}:dedup:{key}` | string | `c` (committed) or `r:{instance}` (in flight), with its TTL |
//! | `{prefix}:meta` | hash | the gateway's records (replay jobs) by name |
//! | `{prefix}:meta:n` | hash | the gateway's counters (a replay job's progress) |
//! | `{prefix}:lease:{name}` | string | the instance running a job, with the lease's TTL |
//!
//! With the tower layers, open it and run its background tasks on your runtime:
//!
//! ```no_run
//! use hookgate::deliver::{handler_fn, DeliveredEvent};
//! use hookgate::metrics::Metrics;
//! use hookgate::store::redis::{open, RedisConfig};
//! use hookgate::tower::WebhookLayer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = Metrics::new(&prometheus::Registry::new())?;
//! let storage = open(RedisConfig::new("redis://127.0.0.1:6379/0"), &metrics)?;
//! for task in storage.background {
//!     tokio::spawn(task);       // the health check and the renewal of this instance's holds
//! }
//! let (webhook, deliverer) = WebhookLayer::builder("o3-video")
//!     .with_allow(["203.0.113.0/24"])?
//!     .with_metrics(&metrics)
//!     .with_fast_ack(storage.spool, handler_fn(|ev: DeliveredEvent| async move { Ok(()) }))
//!     .build_with_store(storage.dedup)?;   // dedup keys shared by every instance, in Redis
//! # let _ = (webhook, deliverer);
//! # Ok(()) }
//! ```
//!
//! Every write that touches several keys is one Lua script, so counts stay exact whichever
//! instance writes. The dedup key's hash already includes its route (two routes never share a
//! key), so dedup keys are namespaced by the prefix and that hash.

mod batch;
mod dedup;
mod history;
mod scripts;
mod spool;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError};

pub use dedup::RedisDedupStore;
pub use spool::RedisSpool;

use super::{SharedDedupStore, SpoolError, Storage};
use crate::metrics::{Metrics, StoreMetrics};

/// How long one command may take before it counts as failed (Redis hung or unreachable). Above
/// the `WAIT` timeout, which is the longest a healthy command waits.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The shortest a dedup reservation lasts before its request stores the event (or its
/// instance is gone): the visibility timeout, or this if longer.
const MIN_IN_FLIGHT: Duration = Duration::from_secs(15);

/// How long `WAIT` waits for `wait_replicas` replicas.
const WAIT_TIMEOUT_MS: u64 = 1000;

/// How often the health check pings Redis.
const HEALTH_EVERY: Duration = Duration::from_millis(250);

/// Every how many health checks Redis's memory is read (once a second).
const MEMORY_EVERY: u32 = 4;

/// History entries a route gives up per yield while Redis is short of memory.
const YIELD_BATCH: i64 = 1000;

/// Failed health checks in a row that mark Redis down (one slow answer does not).
const DOWN_AFTER: u32 = 2;

/// Failed health checks in a row after which the shared connection is replaced.
const REBUILD_AFTER: u32 = 8;

/// The value of `name` in an `INFO` answer (`name:value` lines).
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Whether Redis refused a command because it takes no writes now: `OOM` (over `maxmemory`
/// with `noeviction`) or `MISCONF` (its last save failed, with `stop-writes-on-bgsave-error`).
fn refuses_writes(e: &RedisError) -> bool {
    matches!(e.code(), Some("OOM" | "MISCONF"))
}

/// What the `redis` backend needs: the `[store]` keys and the spool's bounds.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db` (or `rediss://` for TLS, `redis+unix://` for a socket).
    pub url: String,
    /// Every key starts with `{prefix}:`.
    pub prefix: String,
    /// An event held this long by a silent instance is taken over by another.
    pub visibility_timeout: Duration,
    /// `WAIT` for this many replicas before an append is acknowledged (0: no `WAIT`).
    pub wait_replicas: u32,
    /// The most events (pending and dead) held, across instances.
    pub max_events: u64,
    /// The most bytes held, across instances.
    pub max_bytes: u64,
    /// A consumer (instance) of a route's group that holds nothing and has not read for this
    /// long is removed from the group (default 1 h; a live instance reads at least once a
    /// second, or once per probe interval while its circuit is open, and one removed by
    /// mistake is added back at its next read).
    pub consumer_gone_after: Duration,
    /// How long delivered events stay in each route's history stream, counted from receipt
    /// (trimmed by `MINID`, by whichever instance delivers or tidies). Below a tenth of
    /// `maxmemory` free, the history yields: deliveries stop adding to it and its oldest
    /// entries go.
    pub retention: Duration,
}

impl RedisConfig {
    /// The defaults for `url`: prefix `hookgate`, visibility 30 s, no `WAIT`, the default bounds.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "hookgate".into(),
            visibility_timeout: Duration::from_secs(30),
            wait_replicas: 0,
            max_events: 1_000_000,
            max_bytes: 1 << 30,
            consumer_gone_after: Duration::from_secs(3600),
            retention: Duration::from_secs(72 * 3600),
        }
    }
}

/// The connection every short command shares (one multiplexed socket), the health flag, and
/// the metrics. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Conn {
    inner: Arc<ConnInner>,
}

struct ConnInner {
    /// The runtime the connections' tasks and the spool's writes run on (its own thread: the
    /// backend works from any caller, inside a runtime or not). Shut down with the last handle.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    client: Client,
    /// Replaced after [`REBUILD_AFTER`] failed health checks in a row: a socket whose peer
    /// vanished without a reset (a lost host) is never noticed by the manager itself.
    manager: std::sync::RwLock<ConnectionManager>,
    up: AtomicBool,
    /// Why Redis refuses writes now (out of memory, or unable to persist: `MISCONF`), set by the
    /// first command it refused and cleared once a write goes through again (the health check
    /// tries one every [`HEALTH_EVERY`]). `refused` mirrors it for the per-request check.
    refusal: std::sync::Mutex<Option<String>>,
    refused: AtomicBool,
    /// Set for good when the server is too old for this backend (its scripts declare flags).
    unsupported: std::sync::OnceLock<String>,
    /// Redis's `maxmemory` less its `used_memory` (`u64::MAX`: unknown, or no `maxmemory`).
    free_memory: std::sync::atomic::AtomicU64,
    /// Redis's `maxmemory` (0: none, or unknown).
    max_memory: std::sync::atomic::AtomicU64,
    /// How long delivered events stay in the history.
    retention: Duration,
    metrics: StoreMetrics,
    prefix: String,
    /// Dedup keys committed with their event's append, whose `commit` need not be sent again.
    committed: dashmap::DashSet<u128>,
}

/// Keys remembered in [`ConnInner::committed`] at most (a caller that appends events with dedup
/// keys and never commits them cannot grow it; past this, commits are sent as usual).
const COMMITTED_MAX: usize = 65_536;

/// The shared connection's: its response timeout above every command's deadline.
fn shared_config() -> ConnectionManagerConfig {
    manager_config(COMMAND_TIMEOUT + Duration::from_millis(500))
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    // Reconnects quickly and gives up quickly: the health check and the next command start a
    // new round, and every caller has its own deadline.
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(250))
}

pub(crate) fn storage_error(e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Storage(format!("redis: {e}"))
}

impl Conn {
    fn open(
        url: &str,
        prefix: &str,
        retention: Duration,
        metrics: StoreMetrics,
    ) -> Result<Self, SpoolError> {
        let client = Client::open(url)
            .map_err(|e| storage_error(format!("url {:?}: {e}", redacted(url))))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hookgate-redis")
            .enable_all()
            .build()
            .map_err(storage_error)?;
        let handle = runtime.handle().clone();
        let manager = {
            let _in = handle.enter();
            ConnectionManager::new_lazy_with_config(client.clone(), shared_config())
                .map_err(storage_error)?
        };
        Ok(Self {
            inner: Arc::new(ConnInner {
                runtime: Some(runtime),
                handle,
                client,
                manager: std::sync::RwLock::new(manager),
                up: AtomicBool::new(true),
                refusal: std::sync::Mutex::new(None),
                refused: AtomicBool::new(false),
                unsupported: std::sync::OnceLock::new(),
                free_memory: std::sync::atomic::AtomicU64::new(u64::MAX),
                max_memory: std::sync::atomic::AtomicU64::new(0),
                retention,
                metrics,
                prefix: prefix.to_owned(),
                committed: dashmap::DashSet::new(),
            }),
        })
    }

    pub(crate) fn key(&self, parts: &[&str]) -> String {
        let mut k = self.inner.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// The prefix of lane `lane`'s ordering lists: `{prefix}:ord:{lane}:` then the key's hex.
    pub(crate) fn order_prefix(&self, lane: &str) -> String {
        let mut k = self.key(&["ord", lane]);
        k.push(':');
        k
    }

    /// A script's keys: the shared counts, then each of `names` of `route` (`ev`, `queue`, ...).
    pub(crate) fn script_keys(&self, route: &str, names: &[&str]) -> Vec<String> {
        std::iter::once(self.key(&["stats"]))
            .chain(names.iter().map(|n| self.key(&[n, route])))
            .collect()
    }

    /// The Redis key of dedup key `key`.
    pub(crate) fn dedup_key(&self, key: crate::core::DedupKey) -> String {
        self.key(&["dedup", &format!("{:032x}", key.as_u128())])
    }

    /// Records that `key` was committed with its event's append.
    pub(crate) fn committed_with_event(&self, key: crate::core::DedupKey) {
        if self.inner.committed.len() >= COMMITTED_MAX {
            self.inner.committed.clear();
        }
        self.inner.committed.insert(key.as_u128());
    }

    /// Whether `key` was committed with its event's append (and forgets it).
    pub(crate) fn take_committed(&self, key: crate::core::DedupKey) -> bool {
        self.inner.committed.remove(&key.as_u128()).is_some()
    }

    /// Whether the last health check reached Redis.
    pub(crate) fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Why Redis refuses writes now, if it does (out of memory, or unable to persist).
    pub(crate) fn refusal(&self) -> Option<String> {
        if let Some(why) = self.inner.unsupported.get() {
            return Some(why.clone());
        }
        if self.inner.refused.load(Ordering::Acquire) {
            self.inner
                .refusal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        } else {
            None
        }
    }

    /// Redis's free memory under `maxmemory`, when it has one.
    pub(crate) fn free_memory(&self) -> Option<u64> {
        match self.inner.free_memory.load(Ordering::Acquire) {
            u64::MAX => None,
            free => Some(free),
        }
    }

    /// Records that Redis refused a write with `e` (logged once, when it starts).
    fn refuse(&self, e: &RedisError) {
        let why = e.to_string();
        let mut refusal = self.inner.refusal.lock().unwrap_or_else(|e| e.into_inner());
        if refusal.is_none() {
            tracing::error!(error = %why, "redis refuses writes: new events get 503 at once until it takes writes again (deliveries go on)");
        }
        *refusal = Some(why);
        self.inner.refused.store(true, Ordering::Release);
    }

    /// Redis takes writes again.
    fn accept_writes(&self) {
        let mut refusal = self.inner.refusal.lock().unwrap_or_else(|e| e.into_inner());
        if refusal.take().is_some() {
            tracing::info!("redis takes writes again: accepting events");
        }
        self.inner.refused.store(false, Ordering::Release);
    }

    pub(crate) fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Runs `f` on the backend's runtime.
    pub(crate) fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.inner.handle.spawn(f);
    }

    /// A new connection of its own (for blocking reads), with `response_timeout`.
    pub(crate) fn dedicated(
        &self,
        response_timeout: Duration,
    ) -> Result<ConnectionManager, SpoolError> {
        let _in = self.inner.handle.enter();
        ConnectionManager::new_lazy_with_config(
            self.inner.client.clone(),
            manager_config(response_timeout),
        )
        .map_err(storage_error)
    }

    pub(crate) fn metrics(&self) -> &StoreMetrics {
        &self.inner.metrics
    }

    /// Runs `f` on the shared connection within [`COMMAND_TIMEOUT`], timed into the command
    /// histogram. Fails at once while the health check says Redis is down.
    pub(crate) async fn run<T, F, Fut>(&self, command: &str, f: F) -> Result<T, SpoolError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        if !self.is_up() {
            return Err(SpoolError::Storage("redis is unreachable".into()));
        }
        self.run_anyway(command, f).await
    }

    /// [`run`](Self::run) whatever the health flag says (the health check itself).
    async fn run_anyway<T, F, Fut>(&self, command: &str, f: F) -> Result<T, SpoolError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let manager = self
            .inner
            .manager
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.run_on(manager, command, f).await
    }

    /// [`run_anyway`](Self::run_anyway) on `manager` (a dedicated connection).
    pub(crate) async fn run_on<T, F, Fut>(
        &self,
        manager: ConnectionManager,
        command: &str,
        f: F,
    ) -> Result<T, SpoolError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let started = Instant::now();
        let result = tokio::time::timeout(COMMAND_TIMEOUT, f(manager)).await;
        self.inner
            .metrics
            .commands
            .with_label_values(&[command])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(v)) => Ok(v),
            // Out of memory or unable to persist: the spool is full until Redis says otherwise.
            Ok(Err(e)) if refuses_writes(&e) => {
                self.refuse(&e);
                Err(SpoolError::Full(format!("redis: {command}: {e}")))
            }
            Ok(Err(e)) => Err(storage_error(format!("{command}: {e}"))),
            Err(_) => Err(storage_error(format!(
                "{command}: no answer within {} ms",
                COMMAND_TIMEOUT.as_millis()
            ))),
        }
    }

    /// Pings Redis every [`HEALTH_EVERY`]: keeps `hookgate_store_up` and the flag commands check
    /// ([`DOWN_AFTER`] failures in a row mark it down, one success up), replaces the shared
    /// connection after [`REBUILD_AFTER`], and logs each change. Runs until dropped.
    pub(crate) async fn health(self) {
        let mut tick = tokio::time::interval(HEALTH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        let mut checked_policy = false;
        let mut tick_count = 0u32;
        loop {
            tick.tick().await;
            let pong = self
                .run_anyway("ping", |mut c| async move {
                    ::redis::cmd("PING").query_async::<String>(&mut c).await
                })
                .await
                // Redis answers PING with MISCONF while it cannot persist: it is reachable, and
                // refuses writes (recorded by `run_on`).
                .map(drop)
                .or_else(|e| match e {
                    SpoolError::Full(_) => Ok(()),
                    other => Err(other),
                });
            failures = if pong.is_ok() { 0 } else { failures + 1 };
            let up = failures < DOWN_AFTER;
            let was = self.inner.up.swap(up, Ordering::Relaxed);
            self.inner.metrics.up.set(i64::from(up));
            match (&pong, was, up) {
                (Err(e), true, false) => {
                    tracing::error!(error = %e, "redis unreachable: new events get 503 until it answers again")
                }
                (Ok(_), false, true) => tracing::info!("redis answers again: accepting events"),
                _ => {}
            }
            if failures > 0 && failures.is_multiple_of(REBUILD_AFTER) {
                let _in = self.inner.handle.enter();
                match ConnectionManager::new_lazy_with_config(
                    self.inner.client.clone(),
                    shared_config(),
                ) {
                    Ok(fresh) => {
                        *self
                            .inner
                            .manager
                            .write()
                            .unwrap_or_else(|e| e.into_inner()) = fresh;
                        tracing::warn!(failures, "redis: replaced the shared connection");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "redis: cannot replace the shared connection")
                    }
                }
            }
            if pong.is_ok() && !checked_policy {
                checked_policy = true;
                self.check_eviction_policy().await;
                self.check_version().await;
            }
            if pong.is_ok() {
                if self.inner.refused.load(Ordering::Acquire) {
                    self.try_write().await;
                }
                tick_count = tick_count.wrapping_add(1);
                if tick_count % MEMORY_EVERY == 1 {
                    self.read_memory().await;
                    if !self.keeps_history() {
                        self.yield_history().await;
                    }
                }
            }
        }
    }

    /// While Redis refuses writes: one that changes nothing (a key of this prefix that expires
    /// in a second). Through, it takes writes again.
    async fn try_write(&self) {
        let key = self.key(&["writable"]);
        let tried = self
            .run_anyway("ping", |mut c| async move {
                ::redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("PX")
                    .arg(1000)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
        if tried.is_ok() {
            self.accept_writes();
        }
    }

    /// `INFO section`'s `name: value` pairs, as text (`None` if Redis does not answer).
    async fn info(&self, section: &'static str) -> Option<String> {
        self.run_anyway("read", |mut c| async move {
            ::redis::cmd("INFO")
                .arg(section)
                .query_async::<String>(&mut c)
                .await
        })
        .await
        .ok()
    }

    /// Reads Redis's `used_memory` and `maxmemory` (`INFO memory`): the free memory gauge.
    async fn read_memory(&self) {
        let Some(info) = self.info("memory").await else {
            return;
        };
        let field = |name: &str| info_field(&info, name).and_then(|v| v.parse::<u64>().ok());
        let (free, max) = match (field("used_memory"), field("maxmemory")) {
            (Some(used), Some(max)) if max > 0 => (max.saturating_sub(used), max),
            _ => (u64::MAX, 0),
        };
        self.inner.free_memory.store(free, Ordering::Release);
        self.inner.max_memory.store(max, Ordering::Release);
    }

    /// Whether deliveries go into the history now: not while Redis refuses writes, nor below a
    /// tenth of its `maxmemory` free (the history yields to new events).
    pub(crate) fn keeps_history(&self) -> bool {
        self.refusal().is_none() && !self.short_of_memory()
    }

    /// Whether Redis has less than a tenth of its `maxmemory` free.
    fn short_of_memory(&self) -> bool {
        let max = self.inner.max_memory.load(Ordering::Acquire);
        let free = self.inner.free_memory.load(Ordering::Acquire);
        max > 0 && free < max / 10
    }

    /// The retention's cutoff now: (Unix ms, the first id of that millisecond).
    pub(crate) fn history_cutoff(&self) -> (u64, String) {
        let ms = crate::store::now_ms().saturating_sub(self.inner.retention.as_millis() as u64);
        (
            ms,
            crate::store::history::first_id_at(ms)
                .hyphenated()
                .to_string(),
        )
    }

    /// When Redis refuses writes or is short of memory: the oldest history of every route goes,
    /// [`YIELD_BATCH`] entries a route at a time, until it is not.
    async fn yield_history(&self) {
        let routes_key = self.key(&["routes"]);
        let routes: Vec<String> = match self
            .run_anyway("read", |mut c| async move {
                ::redis::cmd("SMEMBERS")
                    .arg(&routes_key)
                    .query_async(&mut c)
                    .await
            })
            .await
        {
            Ok(r) => r,
            Err(_) => return,
        };
        let (cutoff, cut_u) = self.history_cutoff();
        let mut dropped = 0i64;
        for route in routes {
            let (hist, hix) = (self.key(&["hist", &route]), self.key(&["hix", &route]));
            let (cut_u, n) = (cut_u.clone(), YIELD_BATCH);
            let trimmed = self
                .run_anyway("trim", |mut c| async move {
                    scripts::TRIM_HISTORY
                        .key(hist)
                        .key(hix)
                        .arg(cutoff)
                        .arg(cut_u)
                        .arg(n)
                        .invoke_async::<i64>(&mut c)
                        .await
                })
                .await;
            dropped += trimmed.unwrap_or(0);
        }
        if dropped > 0 {
            tracing::warn!(dropped, "redis is short of memory: the oldest delivered events leave the history to make room");
        }
    }

    /// Refuses every new event, for good, on a Redis older than 7.0: the scripts declare their
    /// flags (`#!lua`), which older servers cannot run. Said once in the log and on `/readyz`.
    async fn check_version(&self) {
        let Some(info) = self.info("server").await else {
            return;
        };
        let version = info_field(&info, "redis_version")
            .unwrap_or_default()
            .to_owned();
        let major = version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        if major.is_some_and(|m| m < 7) {
            let why = format!(
                "redis {version} is too old for this backend: 7.0 or later is needed (its scripts declare their flags)"
            );
            tracing::error!(%version, "{why}; every new event gets 503");
            let _ = self.inner.unsupported.set(why);
        }
    }

    /// Logs an error if Redis may evict keys without a TTL (events, streams, counts): only
    /// `noeviction` and the `volatile-*` policies are safe. Silent when `CONFIG` is not allowed.
    async fn check_eviction_policy(&self) {
        let policy = self
            .run_anyway("read", |mut c| async move {
                ::redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async::<Vec<String>>(&mut c)
                    .await
            })
            .await;
        if let Ok(policy) = policy {
            if let Some(p) = policy.get(1) {
                if p.starts_with("allkeys") {
                    tracing::error!(maxmemory_policy = %p, "redis may evict any key when full, events included: set maxmemory-policy to noeviction or volatile-lru");
                }
            }
        }
    }
}

impl Drop for ConnInner {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Never blocks, so the last handle may drop anywhere (even inside a runtime).
            runtime.shutdown_background();
        }
    }
}

/// Opens the `redis` backend: the spool and dedup store on `config.url`, reporting into
/// `metrics`. No connection is made yet (a gateway may start before its Redis); the health
/// check, the takeover of held events and the heartbeat of this instance's own are in
/// [`Storage::background`].
pub fn open(config: RedisConfig, metrics: &Metrics) -> Result<Storage, SpoolError> {
    let conn = Conn::open(
        &config.url,
        &config.prefix,
        config.retention,
        metrics.store().clone(),
    )?;
    let spool = Arc::new(RedisSpool::new(conn.clone(), &config)?);
    // An in-flight reservation outlives the request that holds it (read, stored, WAITed for).
    let in_flight = config.visibility_timeout.max(MIN_IN_FLIGHT);
    let dedup = RedisDedupStore::new(conn.clone(), spool.consumer(), in_flight);
    tracing::info!(
        url = %redacted(&config.url),
        prefix = %config.prefix,
        consumer = %spool.consumer(),
        visibility_timeout_ms = config.visibility_timeout.as_millis() as u64,
        wait_replicas = config.wait_replicas,
        "redis backend: spool, dedup keys and dead letters shared with every instance on this prefix"
    );
    Ok(Storage {
        backend: "redis",
        background: vec![
            Box::pin(conn.health()),
            Box::pin(spool.clone().heartbeat()),
            super::watch_health(spool.clone(), metrics.store().clone()),
        ],
        spool,
        dedup: SharedDedupStore::new(dedup),
    })
}

/// The URL without its password (in the user part, or a `pass`/`password` query parameter), for
/// logs.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let secret =
                |k: &str| k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password");
            if u.query_pairs().any(|(k, _)| secret(&k)) {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if secret(&k) {
                            "***".to_owned()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "***".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(
            redacted("redis://:hunter2@10.0.0.5:6379/0"),
            "redis://:***@10.0.0.5:6379/0"
        );
        assert_eq!(
            redacted("redis+unix:///run/redis.sock?db=1&pass=hunter2"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
