//! [`RedisSpool`]: the spool on Redis Streams, shared by every instance on one prefix.
//!
//! - **Append**: one script checks the bounds (across instances), stores the event, and queues
//!   its id on the route's stream; the acknowledgement waits for Redis's answer (and for
//!   `WAIT wait_replicas` when set).
//! - **Claim**: each instance is a consumer of the route's group (`XREADGROUP`); what it reads
//!   it holds until it records the delivery, reschedule or dead letter (`XACK` + `XDEL` in the
//!   same script). Retries wait in a sorted set until due, then go back on the stream.
//! - **Takeover**: an entry held unacknowledged for `visibility_timeout` (the instance is gone)
//!   is claimed by whichever instance looks next (`XAUTOCLAIM`). Each instance renews its own
//!   held entries every third of the timeout (`XCLAIM ... JUSTID`), so a long delivery is not
//!   taken over while it runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadReply};
use redis::{RedisError, Value};
use uuid::Uuid;

use super::batch::{self, Append, Delivered, Limits};
use super::history::{FoundLane, HistoryReader};
use super::scripts::{
    DEAD_LETTER, HEARTBEAT, LEASE, PACE, PROMOTE, PURGE, REMOVE_CONSUMER, REPLAY_DELIVERED,
    RESCHEDULE, REVIVE, TRIM_HISTORY,
};
use super::{storage_error, Conn, RedisConfig};
use crate::store::event::{id_ms, now_ms, DedupRecord, Event};
use crate::store::history::{DeliveryStatus, EventDetail, EventPage, EventQuery};
use crate::store::spool::{
    Completion, EventSummary, RouteGauges, SharedSpool, Spool, SpoolError, SpoolFuture, SpoolStats,
    StoreHealth,
};

/// The consumer group of every route's stream.
const GROUP: &str = "hookgate";

/// How often a claim moves due retries back to the stream, at most.
const PROMOTE_EVERY: Duration = Duration::from_millis(200);

/// How often a claim looks for entries a silent instance held too long, at most.
const TAKEOVER_EVERY: Duration = Duration::from_secs(1);

/// Retries moved to the stream per look.
const PROMOTE_BATCH: usize = 256;

/// How often a claim removes consumers of instances long gone from the route's group, at most.
const TIDY_EVERY: Duration = Duration::from_secs(60);

/// A [`Spool`] in Redis, shared by every gateway instance using the same prefix.
pub struct RedisSpool {
    conn: Conn,
    consumer: String,
    visibility: Duration,
    gone_after: Duration,
    /// Appends and deliveries queued for the next batch (taken when dropped).
    appends: Option<tokio::sync::mpsc::UnboundedSender<Append>>,
    deliveries: Option<tokio::sync::mpsc::UnboundedSender<Delivered>>,
    /// Disconnected once both batchers have sent everything queued and ended.
    drained: Mutex<std::sync::mpsc::Receiver<()>>,
    /// Events this instance claimed and has not settled: (lane, id) → stream entry.
    held: Mutex<HashMap<(String, Uuid), String>>,
    /// Per route: the blocking connection and when it last promoted and took over.
    routes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<RouteState>>>>,
    /// The blocking-free connection for the trait's synchronous reads (admin, start-up).
    sync: Mutex<Option<redis::Connection>>,
    /// The last counts read, answered while Redis is unreachable.
    last: [AtomicU64; 3],
}

struct RouteState {
    blocking: Option<ConnectionManager>,
    group: bool,
    promoted: Option<Instant>,
    took_over: Option<Instant>,
    tidied: Option<Instant>,
    cursor: String,
}

impl std::fmt::Debug for RedisSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSpool")
            .field("consumer", &self.consumer)
            .field("visibility", &self.visibility)
            .finish_non_exhaustive()
    }
}

use crate::store::record::{self, decode, encode};

/// A script's 0/1 answer: 0 means the event was not where the write expected it.
fn found(answer: i64, id: Uuid) -> Result<(), SpoolError> {
    if answer == 1 {
        Ok(())
    } else {
        Err(SpoolError::NotFound(id))
    }
}

/// A script's call: its keys and arguments, sent as they are.
fn call(
    conn: &Conn,
    command: &'static str,
    script: &'static redis::Script,
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
) -> impl std::future::Future<Output = Result<i64, SpoolError>> + Send + 'static {
    let conn = conn.clone();
    async move {
        conn.run(command, |mut c| async move {
            let mut call = script.prepare_invoke();
            for k in &keys {
                call.key(k);
            }
            for a in &args {
                call.arg(&a[..]);
            }
            call.invoke_async::<i64>(&mut c).await
        })
        .await
    }
}

/// `v` as a script argument.
fn arg(v: impl ToString) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// Runs `f` on the backend's runtime, resolving the returned completion with its result: the
/// write goes on even if the completion is dropped.
fn spawn<T: Send + 'static>(
    conn: &Conn,
    f: impl std::future::Future<Output = Result<T, SpoolError>> + Send + 'static,
) -> Completion<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    conn.spawn(async move {
        let _ = tx.send(f.await);
    });
    Completion::waiting(rx)
}

impl RedisSpool {
    pub(super) fn new(conn: Conn, config: &RedisConfig) -> Result<Self, SpoolError> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "host".into());
        let (appends, appends_rx) = tokio::sync::mpsc::unbounded_channel();
        let (deliveries, deliveries_rx) = tokio::sync::mpsc::unbounded_channel();
        let limits = Limits {
            max_events: config.max_events,
            max_bytes: config.max_bytes,
            wait_replicas: config.wait_replicas,
        };
        let (ended, drained) = std::sync::mpsc::channel::<()>();
        let (a, d) = (ended.clone(), ended);
        let c = conn.clone();
        conn.spawn(async move {
            batch::appends(c, appends_rx, limits).await;
            drop(a);
        });
        let c = conn.clone();
        conn.spawn(async move {
            batch::deliveries(c, deliveries_rx).await;
            drop(d);
        });
        Ok(Self {
            consumer: format!("{host}-{}-{}", std::process::id(), Uuid::now_v7().simple()),
            conn,
            visibility: config.visibility_timeout.max(Duration::from_secs(1)),
            gone_after: config.consumer_gone_after,
            appends: Some(appends),
            deliveries: Some(deliveries),
            drained: Mutex::new(drained),
            held: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            sync: Mutex::new(None),
            last: Default::default(),
        })
    }

    /// This instance's consumer name in every route's group (host, pid, a unique suffix).
    pub fn consumer(&self) -> String {
        self.consumer.clone()
    }

    fn keys(&self, what: &str, route: &str) -> String {
        self.conn.key(&[what, route])
    }

    /// Takes this instance's hold on `id` in `lane`: the stream entry its settling write acks.
    fn release_hold(&self, lane: &str, id: Uuid) -> String {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(lane.to_owned(), id))
            .unwrap_or_default()
    }

    /// What a write settling `event` needs: this instance's hold on it (the stream entry its
    /// script acknowledges), and the event encoded.
    fn settling(&self, event: &Event) -> Result<(String, Vec<u8>), SpoolError> {
        let entry = self.release_hold(&event.lane(), event.id);
        Ok((entry, encode(event)?))
    }

    /// Runs a synchronous read on the connection kept for them (opened on first use, dropped
    /// after an I/O error).
    fn read<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, SpoolError> {
        if !self.conn.is_up() {
            return Err(SpoolError::Storage("redis is unreachable".into()));
        }
        let started = Instant::now();
        let mut slot = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            let c = self
                .conn
                .client()
                .get_connection_with_timeout(Duration::from_millis(500))
                .map_err(storage_error)?;
            c.set_read_timeout(Some(super::COMMAND_TIMEOUT))
                .map_err(storage_error)?;
            c.set_write_timeout(Some(super::COMMAND_TIMEOUT))
                .map_err(storage_error)?;
            *slot = Some(c);
        }
        let Some(c) = slot.as_mut() else {
            return Err(SpoolError::Storage("redis: no connection".into()));
        };
        let result = f(c);
        self.conn
            .metrics()
            .commands
            .with_label_values(&["read"])
            .observe(started.elapsed().as_secs_f64());
        result.map_err(|e| {
            if e.is_io_error() || e.is_unrecoverable_error() {
                *slot = None;
            }
            storage_error(e)
        })
    }

    /// The dead-letter stream entry of `id`, from the route's index.
    fn dead_entry(&self, deadix: &str, id: Uuid) -> Result<Option<String>, SpoolError> {
        let u = id.to_string();
        let m: Vec<String> = self.read(|c| {
            redis::cmd("ZRANGEBYLEX")
                .arg(deadix)
                .arg(format!("[{u}:"))
                .arg(format!("({u};"))
                .arg("LIMIT")
                .arg(0)
                .arg(1)
                .query(c)
        })?;
        Ok(m.first()
            .and_then(|m| m.split_once(':'))
            .map(|(_, e)| e.to_owned()))
    }

    fn route_state(&self, route: &str) -> Arc<tokio::sync::Mutex<RouteState>> {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(route.to_owned())
            .or_insert_with(|| {
                // The route's takeovers series starts at zero, so dashboards and alerts see it.
                let route = crate::store::split_lane(route).0;
                self.conn.metrics().takeovers.with_label_values(&[route]);
                Arc::new(tokio::sync::Mutex::new(RouteState {
                    blocking: None,
                    group: false,
                    promoted: None,
                    took_over: None,
                    tidied: None,
                    cursor: "0-0".into(),
                }))
            })
            .clone()
    }

    /// Renews this instance's hold on every event it is delivering, every third of the
    /// visibility timeout, so none is taken over while its attempt runs. Runs until dropped.
    pub(super) async fn heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.visibility / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut by_route: HashMap<String, Vec<String>> = HashMap::new();
            for ((route, _), entry) in self.held.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                by_route
                    .entry(route.clone())
                    .or_default()
                    .push(entry.clone());
            }
            for (route, entries) in by_route {
                let queue = self.keys("queue", &route);
                let consumer = self.consumer.clone();
                let renewed = self
                    .conn
                    .run("heartbeat", |mut c| async move {
                        let mut call = HEARTBEAT.key(&queue);
                        call.arg(&consumer).arg(&entries);
                        call.invoke_async::<Vec<String>>(&mut c).await
                    })
                    .await;
                match renewed {
                    Ok(lost) if !lost.is_empty() => {
                        // Taken over while this instance was silent: the other one delivers
                        // them now; this one's attempts may still finish (at least once).
                        let lost: std::collections::HashSet<String> = lost.into_iter().collect();
                        self.held
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .retain(|_, entry| !lost.contains(entry));
                        tracing::warn!(%route, events = lost.len(), "events this instance held were taken over by another (it was silent for the visibility timeout)");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%route, error = %e, "cannot renew this instance's hold on its deliveries; another instance may take them over")
                    }
                }
            }
        }
    }

    async fn claim_route(
        &self,
        route: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Event>, SpoolError> {
        if !self.conn.is_up() {
            return Err(SpoolError::Storage("redis is unreachable".into()));
        }
        let state = self.route_state(route);
        let mut state = state.lock().await;
        let queue = self.keys("queue", route);
        if !state.group {
            let q = queue.clone();
            let created = self
                .conn
                .run("group", |mut c| async move {
                    let r: Result<(), RedisError> = redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(&q)
                        .arg(GROUP)
                        .arg("0")
                        .arg("MKSTREAM")
                        .query_async(&mut c)
                        .await;
                    match r {
                        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                        other => other,
                    }
                })
                .await;
            created?;
            state.group = true;
        }
        let now = Instant::now();
        if state.promoted.is_none_or(|t| now - t >= PROMOTE_EVERY) {
            state.promoted = Some(now);
            let (retry, q) = (self.keys("retry", route), queue.clone());
            let moved = self
                .conn
                .run("promote", |mut c| async move {
                    PROMOTE
                        .key(retry)
                        .key(q)
                        .arg(now_ms())
                        .arg(PROMOTE_BATCH)
                        .invoke_async::<i64>(&mut c)
                        .await
                })
                .await?;
            if moved > 0 {
                tracing::debug!(route, moved, "retries due: queued again");
            }
        }
        if state.tidied.is_none_or(|t| now - t >= TIDY_EVERY) {
            state.tidied = Some(now);
            self.tidy(route, &queue).await;
            self.trim_history(route).await;
        }
        let mut entries = Vec::new();
        if state.took_over.is_none_or(|t| now - t >= TAKEOVER_EVERY) {
            state.took_over = Some(now);
            let (q, consumer, cursor) =
                (queue.clone(), self.consumer.clone(), state.cursor.clone());
            let idle = self.visibility.as_millis() as u64;
            let reply = self
                .conn
                .run("autoclaim", |mut c| async move {
                    redis::cmd("XAUTOCLAIM")
                        .arg(&q)
                        .arg(GROUP)
                        .arg(&consumer)
                        .arg(idle)
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(max)
                        .query_async::<StreamAutoClaimReply>(&mut c)
                        .await
                })
                .await?;
            state.cursor = reply.next_stream_id;
            if !reply.claimed.is_empty() {
                self.conn
                    .metrics()
                    .takeovers
                    .with_label_values(&[crate::store::split_lane(route).0])
                    .inc_by(reply.claimed.len() as u64);
                tracing::warn!(
                    route,
                    events = reply.claimed.len(),
                    visibility_timeout_ms = idle,
                    "took over events another instance held unacknowledged for the visibility timeout"
                );
                entries = reply.claimed;
            }
        }
        if entries.is_empty() {
            if state.blocking.is_none() {
                state.blocking = Some(self.conn.dedicated(wait + Duration::from_secs(2))?);
            }
            let Some(mut blocking) = state.blocking.clone() else {
                return Ok(Vec::new());
            };
            let read = tokio::time::timeout(
                wait + super::COMMAND_TIMEOUT,
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg("COUNT")
                    .arg(max)
                    .arg("BLOCK")
                    .arg(wait.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&queue)
                    .arg(">")
                    .query_async::<Option<StreamReadReply>>(&mut blocking),
            )
            .await;
            // Not timed: a blocking read measures how long the route was idle.
            let reply = match read {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    if e.code() == Some("NOGROUP") {
                        // The stream was deleted (FLUSHDB?): create the group again next time.
                        state.group = false;
                    }
                    // A fresh connection next time (this one may be half-open).
                    state.blocking = None;
                    return Err(storage_error(format!("claim: {e}")));
                }
                Err(_) => {
                    state.blocking = None;
                    return Err(storage_error("claim: no answer in time"));
                }
            };
            entries = reply
                .into_iter()
                .flat_map(|r| r.keys)
                .flat_map(|k| k.ids)
                .collect();
        }
        drop(state);
        self.load(route, &queue, entries).await
    }

    /// The reader of the history (queries, lookups), cheap to make.
    fn history_reader(&self) -> HistoryReader {
        HistoryReader::new(self.conn.clone())
    }

    /// Trims `route`'s history to the retention (deliveries trim it too; this covers a route
    /// that delivers nothing for a while). Best effort.
    async fn trim_history(&self, route: &str) {
        let (hist, hix) = (self.keys("hist", route), self.keys("hix", route));
        let (cutoff, cut_u) = self.conn.history_cutoff();
        let trimmed = self
            .conn
            .run("trim", |mut c| async move {
                TRIM_HISTORY
                    .key(hist)
                    .key(hix)
                    .arg(cutoff)
                    .arg(cut_u)
                    .arg(0)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        if let Err(e) = trimmed {
            tracing::debug!(route, error = %e, "cannot trim the history to the retention");
        }
    }

    /// Removes the consumers of instances long gone (nothing held, no read for `gone_after`)
    /// from the route's group, so it does not grow with every restart. Best effort.
    async fn tidy(&self, route: &str, queue: &str) {
        let q = queue.to_owned();
        let consumers = self
            .conn
            .run("tidy", |mut c| async move {
                redis::cmd("XINFO")
                    .arg("CONSUMERS")
                    .arg(&q)
                    .arg(GROUP)
                    .query_async::<Vec<HashMap<String, Value>>>(&mut c)
                    .await
            })
            .await;
        let Ok(consumers) = consumers else {
            return;
        };
        let int = |c: &HashMap<String, Value>, k: &str| match c.get(k) {
            Some(Value::Int(n)) => *n,
            _ => -1,
        };
        for c in consumers {
            let name = match c.get("name") {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => continue,
            };
            let gone = int(&c, "pending") == 0
                && int(&c, "idle") > self.gone_after.as_millis() as i64
                && name != self.consumer;
            if !gone {
                continue;
            }
            let (q, n) = (queue.to_owned(), name.clone());
            let removed = self
                .conn
                .run("tidy", |mut c| async move {
                    REMOVE_CONSUMER
                        .key(&q)
                        .arg(&n)
                        .invoke_async::<i64>(&mut c)
                        .await
                })
                .await;
            if matches!(removed, Ok(1)) {
                tracing::info!(route, consumer = %name, "removed the consumer of an instance long gone from the group");
            }
        }
    }

    /// The events of claimed `entries`, held from now; entries whose event is gone or was
    /// queued for another due time (stale) are acknowledged and dropped.
    async fn load(
        &self,
        route: &str,
        queue: &str,
        entries: Vec<StreamId>,
    ) -> Result<Vec<Event>, SpoolError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = entries
            .iter()
            .map(|e| e.get::<String>("u").unwrap_or_default())
            .collect();
        let ev = self.keys("ev", route);
        let blobs = {
            let ids = ids.clone();
            self.conn
                .run("load", |mut c| async move {
                    redis::cmd("HMGET")
                        .arg(&ev)
                        .arg(&ids)
                        .query_async::<Vec<Option<Vec<u8>>>>(&mut c)
                        .await
                })
                .await?
        };
        let mut events = Vec::with_capacity(entries.len());
        let mut claimed = Vec::with_capacity(entries.len());
        let mut stale = Vec::new();
        let destination = crate::store::split_lane(route).1;
        for ((entry, id), blob) in entries.into_iter().zip(&ids).zip(blobs) {
            // `*`: the next of an ordering key, queued when the one before it left: due now,
            // whatever its record says.
            let d = entry.get::<String>("d");
            let released = d.as_deref() == Some("*");
            let due: Option<u64> = d.and_then(|d| d.parse().ok());
            match blob.map(|b| decode(id, &b)) {
                Some(Ok(e)) if released || Some(e.next_attempt_ms) == due => {
                    claimed.push((e.id, entry.id));
                    events.push(e.for_destination(destination));
                }
                Some(Err(e)) => {
                    // Left in its hash (counted, and the oldest pending age shows it), its entry
                    // acknowledged so it is not taken over again and again.
                    tracing::error!(route, event_id = %id, key = %self.keys("ev", route), error = %e, "an event this version cannot decode: left in Redis, not delivered");
                    stale.push(entry.id);
                }
                // Delivered meanwhile, or queued again for another due time.
                _ => stale.push(entry.id),
            }
        }
        if !stale.is_empty() {
            let q = queue.to_owned();
            let acked = self
                .conn
                .run("ack", |mut c| async move {
                    redis::pipe()
                        .cmd("XACK")
                        .arg(&q)
                        .arg(GROUP)
                        .arg(&stale)
                        .ignore()
                        .cmd("XDEL")
                        .arg(&q)
                        .arg(&stale)
                        .ignore()
                        .query_async::<()>(&mut c)
                        .await
                })
                .await;
            if let Err(e) = acked {
                // They come back after the visibility timeout and are dropped then.
                tracing::debug!(route, error = %e, "cannot drop stale queue entries");
            }
        }
        // Held from here to their settling write; nothing awaits in between, so a cancelled
        // claim never leaves an event held that nobody attempts.
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for (id, entry) in claimed {
            held.insert((route.to_owned(), id), entry);
        }
        Ok(events)
    }

    async fn route_gauges(&self, route: &str) -> Result<RouteGauges, SpoolError> {
        let (pending, deadix) = (self.keys("pending", route), self.keys("deadix", route));
        let (count, dead, oldest): (u64, u64, Vec<(String, f64)>) = self
            .conn
            .run("gauges", |mut c| async move {
                redis::pipe()
                    .cmd("ZCARD")
                    .arg(&pending)
                    .cmd("ZCARD")
                    .arg(&deadix)
                    .cmd("ZRANGE")
                    .arg(&pending)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(RouteGauges {
            pending: count,
            dead,
            oldest_ms: oldest.first().map(|(_, ms)| *ms as u64),
        })
    }
}

/// How long a dropped spool waits for its queued writes to reach Redis.
const DRAIN: Duration = Duration::from_secs(3);

impl Drop for RedisSpool {
    /// Sends what is queued (the last deliveries' records, above all) before the process goes:
    /// a graceful stop leaves nothing to deliver twice. Waits [`DRAIN`] at most.
    fn drop(&mut self) {
        self.appends.take();
        self.deliveries.take();
        let drained = self.drained.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = drained.recv_timeout(DRAIN) {
            tracing::warn!(
                "redis: queued writes not sent within 3 s of the stop; their deliveries may repeat"
            );
        }
    }
}

impl Spool for RedisSpool {
    fn append(&self, event: &Event) -> Completion {
        if !self.conn.is_up() {
            return Completion::ready(Err(SpoolError::Storage("redis is unreachable".into())));
        }
        // Out of memory or unable to persist: refused at once, no round trip per request.
        if let Some(why) = self.conn.refusal() {
            return Completion::ready(Err(SpoolError::Full(format!(
                "redis refuses writes: {why}"
            ))));
        }
        let blob = match encode(event) {
            Ok(b) => b,
            Err(e) => return Completion::ready(Err(e)),
        };
        let (done, rx) = tokio::sync::oneshot::channel();
        let lanes: Vec<String> = event
            .delivered_to()
            .map(|d| crate::store::lane(&event.route, d).into_owned())
            .collect();
        let orders: Vec<String> = event
            .delivered_to()
            .map(|d| {
                let copy = event.destinations.iter().find(|f| f.destination == d);
                copy.and_then(|f| f.order).map_or(String::new(), hex)
            })
            .collect();
        // Filtered out everywhere: kept in the history of the route's first destination.
        let history = if lanes.is_empty() {
            let first = event.fanout().next().map_or("", |(d, _)| d);
            match record::encode_state(event, 0, now_ms()) {
                Ok(state) => Some((crate::store::lane(&event.route, first).into_owned(), state)),
                Err(e) => return Completion::ready(Err(e)),
            }
        } else {
            None
        };
        let job = Append {
            group: lanes.join("\u{1f}"),
            lanes,
            orders,
            history,
            id: event.id.to_string(),
            blob,
            id_ms: id_ms(event.id).unwrap_or(event.received_ms),
            due: event.next_attempt_ms,
            dedup: event
                .dedup
                .map(|d| (crate::core::DedupKey::from_bytes(d.key), d.expires_ms)),
            done,
        };
        if self.appends.as_ref().is_none_or(|a| a.send(job).is_err()) {
            return Completion::ready(Err(SpoolError::Closed));
        }
        Completion::waiting(rx)
    }

    fn get(&self, lane: &str, id: Uuid) -> Result<Option<Event>, SpoolError> {
        let key = self.keys("ev", lane);
        let blob: Option<Vec<u8>> =
            self.read(|c| redis::cmd("HGET").arg(&key).arg(id.to_string()).query(c))?;
        let destination = crate::store::split_lane(lane).1;
        blob.map(|b| decode(&id.to_string(), &b).map(|e| e.for_destination(destination)))
            .transpose()
    }

    fn delivered(&self, event: &Event) -> Completion {
        let (done, rx) = tokio::sync::oneshot::channel();
        let state = match record::encode_state(event, 0, now_ms()) {
            Ok(state) => state,
            Err(e) => return Completion::ready(Err(e)),
        };
        let lane = event.lane().into_owned();
        let job = Delivered {
            entry: self.release_hold(&lane, event.id),
            route: lane,
            id: event.id.to_string(),
            order: event.order_key().map_or(String::new(), hex),
            state,
            done,
        };
        if self
            .deliveries
            .as_ref()
            .is_none_or(|d| d.send(job).is_err())
        {
            return Completion::ready(Err(SpoolError::Closed));
        }
        Completion::waiting(rx)
    }

    fn reschedule(&self, event: &Event) -> Completion {
        let (entry, blob) = match self.settling(event) {
            Ok(settling) => settling,
            Err(e) => return Completion::ready(Err(e)),
        };
        let keys = self
            .conn
            .script_keys(&event.lane(), &["ev", "queue", "retry"]);
        let args = vec![
            arg(event.id),
            blob,
            arg(event.next_attempt_ms),
            entry.into_bytes(),
        ];
        let (written, id) = (
            call(&self.conn, "reschedule", &RESCHEDULE, keys, args),
            event.id,
        );
        spawn(&self.conn, async move { found(written.await?, id) })
    }

    fn dead_letter(&self, event: &Event) -> Completion {
        let (entry, blob) = match self.settling(event) {
            Ok(settling) => settling,
            Err(e) => return Completion::ready(Err(e)),
        };
        let lane = event.lane();
        let keys = self.conn.script_keys(
            &lane,
            &["ev", "pending", "queue", "retry", "dead", "deadix"],
        );
        let args = vec![
            arg(event.id),
            blob,
            entry.into_bytes(),
            self.conn.order_prefix(&lane).into_bytes(),
            event.order_key().map_or(String::new(), hex).into_bytes(),
        ];
        let (written, id) = (
            call(&self.conn, "dead_letter", &DEAD_LETTER, keys, args),
            event.id,
        );
        spawn(&self.conn, async move { found(written.await?, id) })
    }

    fn pending(&self) -> Result<Vec<Event>, SpoolError> {
        let routes: Vec<String> = self.read(|c| {
            redis::cmd("SMEMBERS")
                .arg(self.conn.key(&["routes"]))
                .query(c)
        })?;
        let mut all = Vec::new();
        for route in routes {
            let key = self.keys("ev", &route);
            let blobs: Vec<Vec<u8>> = self.read(|c| redis::cmd("HVALS").arg(&key).query(c))?;
            let destination = crate::store::split_lane(&route).1;
            for b in blobs {
                all.push(decode("?", &b)?.for_destination(destination));
            }
        }
        all.sort_by_key(|e| e.id);
        Ok(all)
    }

    fn pending_schedule(&self, route: &str) -> Result<Vec<(Uuid, u64)>, SpoolError> {
        let key = self.keys("ev", route);
        let blobs: Vec<Vec<u8>> = self.read(|c| redis::cmd("HVALS").arg(&key).query(c))?;
        let mut schedule = blobs
            .iter()
            .map(|b| decode("?", b).map(|e| (e.id, e.next_attempt_ms)))
            .collect::<Result<Vec<_>, _>>()?;
        schedule.sort();
        Ok(schedule)
    }

    /// None: the Redis dedup store keeps its keys in Redis itself, with their TTL.
    fn dedup_keys(&self) -> Result<Vec<DedupRecord>, SpoolError> {
        Ok(Vec::new())
    }

    fn dead_letters(
        &self,
        route: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<EventSummary>, SpoolError> {
        let (dead, deadix) = (self.keys("dead", route), self.keys("deadix", route));
        let start = match after {
            // Past every member of `after` (`{id}:{entry}` < `{id};`).
            Some(id) => format!("({id};"),
            None => "-".to_owned(),
        };
        let count = limit.min(1 << 30);
        let members: Vec<String> = self.read(|c| {
            redis::cmd("ZRANGEBYLEX")
                .arg(&deadix)
                .arg(&start)
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(count)
                .query(c)
        })?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for m in &members {
            let entry = m.split_once(':').map_or("", |(_, e)| e);
            pipe.cmd("XRANGE").arg(&dead).arg(entry).arg(entry);
        }
        let pages: Vec<StreamRangeReply> = self.read(|c| pipe.query(c))?;
        let destination = crate::store::split_lane(route).1;
        pages
            .iter()
            .flat_map(|p| p.ids.first())
            .map(|entry| {
                let blob: Vec<u8> = entry.get("e").unwrap_or_default();
                decode(&entry.id, &blob).map(|e| {
                    EventSummary::of(&e.for_destination(destination), DeliveryStatus::Dead)
                })
            })
            .collect()
    }

    fn get_dead(&self, route: &str, id: Uuid) -> Result<Option<Event>, SpoolError> {
        let (dead, deadix) = (self.keys("dead", route), self.keys("deadix", route));
        let Some(entry) = self.dead_entry(&deadix, id)? else {
            return Ok(None);
        };
        let page: StreamRangeReply = self.read(|c| {
            redis::cmd("XRANGE")
                .arg(&dead)
                .arg(&entry)
                .arg(&entry)
                .query(c)
        })?;
        let destination = crate::store::split_lane(route).1;
        page.ids
            .first()
            .map(|e| {
                decode(&e.id, &e.get::<Vec<u8>>("e").unwrap_or_default())
                    .map(|e| e.for_destination(destination))
            })
            .transpose()
    }

    fn revive(&self, route: &str, id: Uuid) -> Completion<Event> {
        let keys = self
            .conn
            .script_keys(route, &["ev", "pending", "queue", "dead", "deadix"]);
        let conn = self.conn.clone();
        let (ordp, destination) = (
            self.conn.order_prefix(route),
            crate::store::split_lane(route).1.to_owned(),
        );
        spawn(&self.conn, async move {
            let (dead, deadix) = (keys[4].clone(), keys[5].clone());
            let uuid = id.to_string();
            let member: Vec<String> = conn
                .run("read", |mut c| {
                    let u = uuid.clone();
                    async move {
                        redis::cmd("ZRANGEBYLEX")
                            .arg(&deadix)
                            .arg(format!("[{u}:"))
                            .arg(format!("({u};"))
                            .arg("LIMIT")
                            .arg(0)
                            .arg(1)
                            .query_async(&mut c)
                            .await
                    }
                })
                .await?;
            let Some(entry) = member
                .first()
                .and_then(|m| m.split_once(':'))
                .map(|(_, e)| e.to_owned())
            else {
                return Err(SpoolError::NotFound(id));
            };
            let page: StreamRangeReply = conn
                .run("read", |mut c| async move {
                    redis::cmd("XRANGE")
                        .arg(&dead)
                        .arg(&entry)
                        .arg(&entry)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let Some(stored) = page.ids.first() else {
                return Err(SpoolError::NotFound(id));
            };
            let mut event = decode(&uuid, &stored.get::<Vec<u8>>("e").unwrap_or_default())?
                .for_destination(&destination);
            event.replay_now();
            let args = revive_args(&event, ordp)?;
            let answer = call(&conn, "revive", &REVIVE, keys, args).await?;
            found(answer, id).map(|()| event)
        })
    }

    fn purge(&self, route: &str, id: Uuid) -> Completion {
        let keys = self.conn.script_keys(route, &["dead", "deadix"]);
        let written = call(&self.conn, "purge", &PURGE, keys, vec![arg(id)]);
        spawn(&self.conn, async move { found(written.await?, id) })
    }

    fn stats(&self) -> SpoolStats {
        let key = self.conn.key(&["stats"]);
        let read: Result<[Option<u64>; 3], _> = self.read(|c| {
            redis::cmd("HMGET")
                .arg(&key)
                .arg("events")
                .arg("dead")
                .arg("bytes")
                .query(c)
        });
        if let Ok(counts) = read {
            for (slot, v) in self.last.iter().zip(counts) {
                slot.store(v.unwrap_or(0), Ordering::Relaxed);
            }
        }
        let [events, dead, bytes] = [0, 1, 2].map(|i| self.last[i].load(Ordering::Relaxed));
        SpoolStats {
            pending: events.saturating_sub(dead),
            dead,
            bytes,
            syncs: 0,
        }
    }

    fn oldest_pending_ms(&self, route: &str) -> Option<u64> {
        let key = self.keys("pending", route);
        let first: Vec<(String, f64)> = self
            .read(|c| {
                redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .query(c)
            })
            .ok()?;
        first.first().map(|(_, ms)| *ms as u64)
    }

    /// Nothing to sweep: Redis expires dedup keys itself.
    fn sweep_expired_keys(&self) -> Completion<usize> {
        Completion::ready(Ok(0))
    }

    fn health(&self) -> StoreHealth {
        let refusing = if !self.conn.is_up() {
            Some("redis is unreachable".to_owned())
        } else {
            self.conn
                .refusal()
                .map(|why| format!("redis refuses writes: {why}"))
        };
        StoreHealth {
            refusing,
            free_bytes: self.conn.free_memory(),
            ..StoreHealth::default()
        }
    }

    fn events(&self, query: &EventQuery) -> SpoolFuture<'_, EventPage> {
        let query = query.clone();
        Box::pin(async move { self.history_reader().query(&query).await })
    }

    fn event(&self, id: Uuid) -> SpoolFuture<'_, Option<EventDetail>> {
        Box::pin(async move { Ok(self.history_reader().find(id).await?.map(|f| f.detail())) })
    }

    fn replay(
        &self,
        id: Uuid,
        destination: &str,
        job: &str,
    ) -> Completion<Option<(Event, DeliveryStatus)>> {
        let (conn, job, reader) = (self.conn.clone(), job.to_owned(), self.history_reader());
        let destination = destination.to_owned();
        spawn(&self.conn, async move {
            let hit = reader.find(id).await?.ok_or(SpoolError::NotFound(id))?;
            if hit
                .record
                .fanout()
                .any(|(d, filtered)| d == destination && filtered)
            {
                return Ok(None);
            }
            let Some(FoundLane {
                mut event,
                status,
                lane,
                locator,
            }) = hit
                .lanes
                .into_iter()
                .find(|l| l.event.destination_name() == destination)
            else {
                return Err(SpoolError::NotFound(id));
            };
            // Replayed by this very job already (a job resumed, or taken over).
            if event.replay.as_deref() == Some(job.as_str())
                || event.history.last().and_then(|a| a.replay.as_deref()) == Some(job.as_str())
            {
                return Ok(None);
            }
            event.replay_now();
            event.replay = Some(job);
            let ordp = conn.order_prefix(&lane);
            let answer = match status {
                DeliveryStatus::Pending | DeliveryStatus::Filtered => return Ok(None),
                DeliveryStatus::Dead => {
                    let keys =
                        conn.script_keys(&lane, &["ev", "pending", "queue", "dead", "deadix"]);
                    call(&conn, "revive", &REVIVE, keys, revive_args(&event, ordp)?).await?
                }
                DeliveryStatus::Delivered => {
                    let keys = conn.script_keys(&lane, &["ev", "pending", "queue", "hist", "hix"]);
                    // REVIVE's arguments with the event's place in the history after its id.
                    let mut args = revive_args(&event, ordp)?;
                    args.insert(1, arg(&locator));
                    call(&conn, "replay", &REPLAY_DELIVERED, keys, args).await?
                }
            };
            found(answer, id).map(|()| Some((event, status)))
        })
    }

    fn retained(&self) -> SpoolFuture<'_, Vec<(String, u64)>> {
        Box::pin(async move {
            let routes = self.history_reader().routes().await?;
            let (_, cut_u) = self.conn.history_cutoff();
            let mut pipe = redis::pipe();
            for route in &routes {
                pipe.cmd("HLEN").arg(self.keys("ev", route));
                pipe.cmd("ZCARD").arg(self.keys("deadix", route));
                pipe.cmd("ZLEXCOUNT")
                    .arg(self.keys("hix", route))
                    .arg(format!("[{cut_u}"))
                    .arg("+");
            }
            let counts: Vec<u64> = self
                .conn
                .run(
                    "read",
                    |mut c| async move { pipe.query_async(&mut c).await },
                )
                .await?;
            // A route's destinations each keep a copy of its events: the route keeps as many
            // as its fullest destination (close: an event one destination filtered out and
            // another delivered is counted once, by the one that keeps it).
            let mut by_route: std::collections::BTreeMap<String, u64> = Default::default();
            for (lane, n) in routes.iter().zip(counts.chunks(3)) {
                let route = crate::store::split_lane(lane).0.to_owned();
                let n: u64 = n.iter().sum();
                let kept = by_route.entry(route).or_default();
                *kept = (*kept).max(n);
            }
            Ok(by_route.into_iter().collect())
        })
    }

    fn meta_get(&self, key: &str) -> SpoolFuture<'_, Option<Vec<u8>>> {
        let (meta, field) = (self.conn.key(&["meta"]), key.to_owned());
        Box::pin(async move {
            self.conn
                .run("read", |mut c| async move {
                    redis::cmd("HGET")
                        .arg(&meta)
                        .arg(&field)
                        .query_async(&mut c)
                        .await
                })
                .await
        })
    }

    fn meta_put(&self, key: &str, value: Option<Vec<u8>>) -> Completion {
        let (conn, meta, field) = (self.conn.clone(), self.conn.key(&["meta"]), key.to_owned());
        spawn(&self.conn, async move {
            conn.run("meta", |mut c| async move {
                match value {
                    Some(v) => {
                        redis::cmd("HSET")
                            .arg(&meta)
                            .arg(&field)
                            .arg(v)
                            .query_async::<()>(&mut c)
                            .await
                    }
                    None => {
                        redis::cmd("HDEL")
                            .arg(&meta)
                            .arg(&field)
                            .query_async::<()>(&mut c)
                            .await
                    }
                }
            })
            .await
        })
    }

    fn meta_list(&self, prefix: &str) -> SpoolFuture<'_, Vec<(String, Vec<u8>)>> {
        let (meta, prefix) = (self.conn.key(&["meta"]), prefix.to_owned());
        Box::pin(async move {
            let all: Vec<(String, Vec<u8>)> = self
                .conn
                .run("read", |mut c| async move {
                    redis::cmd("HGETALL").arg(&meta).query_async(&mut c).await
                })
                .await?;
            let mut listed: Vec<(String, Vec<u8>)> = all
                .into_iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .collect();
            listed.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(listed)
        })
    }

    fn meta_add(&self, key: &str, by: i64) -> Completion<i64> {
        let (conn, counters, field) = (
            self.conn.clone(),
            self.conn.key(&["meta", "n"]),
            key.to_owned(),
        );
        spawn(&self.conn, async move {
            conn.run("meta", |mut c| async move {
                redis::cmd("HINCRBY")
                    .arg(&counters)
                    .arg(&field)
                    .arg(by)
                    .query_async(&mut c)
                    .await
            })
            .await
        })
    }

    fn meta_counter(&self, key: &str) -> SpoolFuture<'_, i64> {
        let (counters, field) = (self.conn.key(&["meta", "n"]), key.to_owned());
        Box::pin(async move {
            let n: Option<i64> = self
                .conn
                .run("read", |mut c| async move {
                    redis::cmd("HGET")
                        .arg(&counters)
                        .arg(&field)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            Ok(n.unwrap_or(0))
        })
    }

    fn lease(&self, key: &str, owner: &str, ttl: Duration) -> SpoolFuture<'_, bool> {
        let (lease, owner) = (self.conn.key(&["lease", key]), owner.to_owned());
        Box::pin(async move {
            let held: i64 = self
                .conn
                .run("lease", |mut c| async move {
                    LEASE
                        .key(&lease)
                        .arg(&owner)
                        .arg(ttl.as_millis() as u64)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Ok(held == 1)
        })
    }

    fn probe(&self) -> Completion {
        let conn = self.conn.clone();
        spawn(&self.conn, async move {
            conn.run("ping", |mut c| async move {
                redis::cmd("PING").query_async::<String>(&mut c).await
            })
            .await
            .map(drop)
        })
    }

    fn shared(&self) -> Option<&dyn SharedSpool> {
        Some(self)
    }
}

impl SharedSpool for RedisSpool {
    fn claim<'a>(
        &'a self,
        route: &'a str,
        max: usize,
        wait: Duration,
    ) -> SpoolFuture<'a, Vec<Event>> {
        Box::pin(self.claim_route(route, max.max(1), wait))
    }

    fn gauges<'a>(&'a self, route: &'a str) -> SpoolFuture<'a, RouteGauges> {
        Box::pin(self.route_gauges(route))
    }

    fn pace<'a>(&'a self, lane: &'a str, interval: Duration) -> SpoolFuture<'a, Duration> {
        let key = self.keys("pace", lane);
        let interval_us = interval.as_micros().max(1) as u64;
        Box::pin(async move {
            let wait_us: i64 = self
                .conn
                .run("pace", |mut c| async move {
                    PACE.key(&key).arg(interval_us).invoke_async(&mut c).await
                })
                .await?;
            Ok(Duration::from_micros(wait_us.max(0) as u64))
        })
    }
}

/// The arguments of `REVIVE` for `event` (its copy as made pending again) in the lane whose
/// ordering lists start with `ordp`.
fn revive_args(event: &Event, ordp: String) -> Result<Vec<Vec<u8>>, SpoolError> {
    Ok(vec![
        arg(event.id),
        encode(event)?,
        arg(id_ms(event.id).unwrap_or(event.received_ms)),
        arg(event.next_attempt_ms),
        arg(ordp),
        arg(event.order_key().map_or(String::new(), hex)),
    ])
}

/// An ordering key as the scripts name it: 32 hex digits.
fn hex(key: [u8; 16]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}
