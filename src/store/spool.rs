//! The durable spool: where an event is written before it is acknowledged, and kept until it is
//! delivered or dead-lettered.
//!
//! [`EmbeddedSpool`] stores events in `fjall` (an LSM tree with a write-ahead journal) under a
//! data directory. One writer thread group-commits: concurrent appends are batched into one
//! journal write and one sync, and each caller's [`Completion`] resolves only after the commit
//! holding its event. `fjall` was chosen over `redb` by `benches/spool_backends.rs` (twice the
//! group-commit throughput) and because its journal can be flushed to the OS without a sync,
//! which is the `os` mode; `redb`'s non-durable commits do not survive a process crash.
//!
//! ```
//! use hookgate::store::{Durability, EmbeddedSpool, Event, Spool, SpoolConfig};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let spool = EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap();
//! let event = Event::new("o3-video", "127.0.0.1".parse().unwrap(), "POST", "/webhook", vec![], "{}".into());
//! spool.append(&event).await.unwrap();           // durable once this resolves
//! assert_eq!(spool.pending().unwrap().len(), 1);
//! spool.delivered(&event).await.unwrap();
//! assert!(spool.pending().unwrap().is_empty());
//! # });
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::core::DedupKey;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How much an acknowledged event survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Synced to disk before the acknowledgement: survives power loss (the default).
    Fsync,
    /// Written to the operating system before the acknowledgement: survives a crash or kill of
    /// the process, not of the machine.
    Os,
    /// Kept in a temporary directory deleted when the spool is dropped: survives nothing. For
    /// tests and benchmarks.
    Memory,
}

impl Durability {
    fn persist_mode(self) -> Option<fjall::PersistMode> {
        match self {
            // fdatasync: it writes the data and the metadata needed to read it back (size, block
            // allocation); fsync would also write the modification time, which recovery ignores.
            Durability::Fsync => Some(fjall::PersistMode::SyncData),
            Durability::Os => Some(fjall::PersistMode::Buffer),
            Durability::Memory => None,
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "os" => Ok(Durability::Os),
            "memory" => Ok(Durability::Memory),
            other => Err(format!(
                "{other:?} is not a durability: use fsync, os or memory"
            )),
        }
    }
}

/// A dedup key persisted with its event, to refill the dedup store after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupRecord {
    /// The key's 16 bytes.
    pub key: [u8; 16],
    /// When the key stops answering `duplicate`, in Unix milliseconds.
    pub expires_ms: u64,
}

/// One delivery attempt, kept in the event's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// When it ended, in Unix milliseconds.
    pub at_ms: u64,
    /// What happened: `status 503`, `connect error: ...`, `timeout`.
    pub outcome: String,
}

/// How many attempts an event's history keeps (the newest).
pub const HISTORY_LEN: usize = 16;

/// An acknowledged webhook request, as stored until delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// A UUIDv7: time-ordered, so the oldest event sorts first.
    pub id: Uuid,
    /// The route it arrived on.
    pub route: String,
    /// When it was acknowledged, in Unix milliseconds.
    pub received_ms: u64,
    /// The resolved client address.
    pub client_ip: IpAddr,
    /// The request method.
    pub method: String,
    /// The request URI (path and query).
    pub uri: String,
    /// The headers to forward (hop-by-hop headers and `Host` already removed).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, byte for byte.
    pub body: Bytes,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// Attempts made before the last replay from the dead letters (retry limits count from there).
    pub attempts_before_replay: u32,
    /// Receipt or last replay, in Unix milliseconds: `max_age` counts from here.
    pub window_start_ms: u64,
    /// When the next attempt is due, in Unix milliseconds.
    pub next_attempt_ms: u64,
    /// The dedup key to restore after a restart, if the route dedups.
    pub dedup: Option<DedupRecord>,
    /// The newest attempts' outcomes.
    pub history: Vec<AttemptRecord>,
}

impl Event {
    /// A new event received now, due at once.
    pub fn new(
        route: impl Into<String>,
        client_ip: IpAddr,
        method: impl Into<String>,
        uri: impl Into<String>,
        headers: Vec<(String, Vec<u8>)>,
        body: Bytes,
    ) -> Self {
        let now = now_ms();
        Self {
            id: Uuid::now_v7(),
            route: route.into(),
            received_ms: now,
            client_ip,
            method: method.into(),
            uri: uri.into(),
            headers,
            body,
            attempts: 0,
            attempts_before_replay: 0,
            window_start_ms: now,
            next_attempt_ms: now,
            dedup: None,
            history: Vec::new(),
        }
    }

    /// Attaches the dedup key and its expiry.
    #[must_use]
    pub fn with_dedup(mut self, key: DedupKey, expires_ms: u64) -> Self {
        self.dedup = Some(DedupRecord {
            key: key.to_bytes(),
            expires_ms,
        });
        self
    }

    /// Records the outcome of the attempt numbered `self.attempts`, keeping the newest
    /// [`HISTORY_LEN`].
    pub fn record_outcome(&mut self, outcome: String) {
        if self.history.len() == HISTORY_LEN {
            self.history.remove(0);
        }
        self.history.push(AttemptRecord {
            at_ms: now_ms(),
            outcome,
        });
    }

    fn pending_key(&self) -> Vec<u8> {
        pending_key(&self.route, self.id)
    }

    /// Approximate stored size, for the spool's byte bound.
    pub fn stored_size(&self) -> u64 {
        (self.body.len()
            + self.uri.len()
            + self.route.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + 128) as u64
    }
}

fn pending_key(route: &str, id: Uuid) -> Vec<u8> {
    let mut key = Vec::with_capacity(route.len() + 17);
    key.extend_from_slice(route.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

/// A spool operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The spool holds its maximum number of events or bytes.
    #[error("the spool is full ({0})")]
    Full(String),
    /// The store failed to read or commit.
    #[error("spool storage: {0}")]
    Storage(String),
    /// A stored event could not be decoded.
    #[error("spool record {0}: {1}")]
    Corrupt(String, String),
    /// No such event.
    #[error("no event {0}")]
    NotFound(Uuid),
    /// The spool is shut down.
    #[error("the spool is closed")]
    Closed,
}

impl From<fjall::Error> for SpoolError {
    fn from(e: fjall::Error) -> Self {
        SpoolError::Storage(e.to_string())
    }
}

/// Resolves when a spool write has reached the configured durability (or failed).
#[derive(Debug)]
#[must_use = "the write is only durable once this resolves"]
pub struct Completion<T = ()>(CompletionInner<T>);

#[derive(Debug)]
enum CompletionInner<T> {
    Waiting(tokio::sync::oneshot::Receiver<Result<T, SpoolError>>),
    Ready(Option<Result<T, SpoolError>>),
}

impl<T> Completion<T> {
    fn ready(result: Result<T, SpoolError>) -> Self {
        Completion(CompletionInner::Ready(Some(result)))
    }
}

// Completion never pins its result: it only moves it out.
impl<T> Unpin for Completion<T> {}

impl<T> std::future::Future for Completion<T> {
    type Output = Result<T, SpoolError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.get_mut().0 {
            CompletionInner::Waiting(rx) => std::pin::Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(SpoolError::Closed))),
            CompletionInner::Ready(r) => {
                std::task::Poll::Ready(r.take().unwrap_or(Err(SpoolError::Closed)))
            }
        }
    }
}

/// Counts of what the spool holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Events awaiting delivery.
    pub pending: u64,
    /// Events in the dead letters.
    pub dead: u64,
    /// Approximate bytes of pending and dead events.
    pub bytes: u64,
}

/// Where acknowledged events wait for delivery. Writes resolve at the configured durability.
pub trait Spool: Send + Sync + 'static {
    /// Stores a new event (and its dedup key). Fails when full or when the commit fails.
    fn append(&self, event: &Event) -> Completion;
    /// The pending event `id` of `route`.
    fn get(&self, route: &str, id: Uuid) -> Result<Option<Event>, SpoolError>;
    /// The dead letter `id`.
    fn get_dead(&self, id: Uuid) -> Result<Option<Event>, SpoolError>;
    /// Removes a delivered event.
    fn delivered(&self, event: &Event) -> Completion;
    /// Removes a delivered event without waiting for the record (a crash before it is written
    /// means one repeat delivery after the restart). The delivery engine's way: cheaper.
    fn forget_delivered(&self, event: &Event) {
        drop(self.delivered(event));
    }
    /// Stores an event's new attempt count, history and next attempt time.
    fn reschedule(&self, event: &Event) -> Completion;
    /// Moves an event to the dead letters.
    fn dead_letter(&self, event: &Event) -> Completion;
    /// Every pending event.
    fn pending(&self) -> Result<Vec<Event>, SpoolError>;
    /// The id and next attempt time of every pending event of `route` (for recovery at start).
    fn pending_schedule(&self, route: &str) -> Result<Vec<(Uuid, u64)>, SpoolError>;
    /// The persisted dedup keys still inside their TTL.
    fn dedup_keys(&self) -> Result<Vec<DedupRecord>, SpoolError>;
    /// Dead letters, oldest first, at most `limit`.
    fn dead_letters(&self, limit: usize) -> Result<Vec<Event>, SpoolError>;
    /// Moves dead letter `id` back to pending, due now; returns it.
    fn revive(&self, id: Uuid) -> Completion<Event>;
    /// Deletes dead letter `id`.
    fn purge(&self, id: Uuid) -> Completion;
    /// What the spool holds.
    fn stats(&self) -> SpoolStats;
    /// The receive time of the oldest pending event of `route`, in Unix milliseconds.
    fn oldest_pending_ms(&self, route: &str) -> Option<u64>;
    /// Deletes persisted dedup keys whose TTL has passed; returns how many.
    fn sweep_expired_keys(&self) -> Result<usize, SpoolError>;
    /// Commits a write that changes nothing, at the spool's durability: resolves `Ok` when the
    /// spool can store events now (for readiness checks).
    fn probe(&self) -> Completion;
}

/// Settings of an [`EmbeddedSpool`].
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The data directory. With [`Durability::Memory`], a temporary directory is made inside it
    /// (or in the system's temp dir when empty) and deleted when the spool is dropped.
    pub path: PathBuf,
    /// What an acknowledgement survives.
    pub durability: Durability,
    /// The most events (pending and dead) held; appends beyond fail.
    pub max_events: u64,
    /// The most bytes (approximate) held; appends beyond fail.
    pub max_bytes: u64,
    /// In `fsync` mode, how long a batch of appends may wait for the senders of the previous
    /// batch to come back and share its sync (only when appends come concurrently; an append
    /// alone never waits). Trades up to this much latency for fewer syncs: each costs tens of
    /// microseconds of CPU. Zero turns it off.
    pub linger: Duration,
}

impl SpoolConfig {
    /// A spool in `path` with `durability`, bounded at 1,000,000 events and 1 GiB, lingering
    /// 100 µs for concurrent appends.
    pub fn new(path: impl AsRef<Path>, durability: Durability) -> Self {
        Self {
            path: path.as_ref().to_owned(),
            durability,
            max_events: 1_000_000,
            max_bytes: 1 << 30,
            linger: Duration::from_micros(100),
        }
    }

    /// Bounds the spool at `events` events.
    #[must_use]
    pub fn with_max_events(mut self, events: u64) -> Self {
        self.max_events = events;
        self
    }

    /// Sets [`linger`](Self::linger).
    #[must_use]
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Bounds the spool at `bytes` bytes.
    #[must_use]
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }
}

enum Space {
    Pending,
    Dead,
}

enum Op {
    Append {
        key: fjall::Slice,
        value: fjall::Slice,
        dedup: Option<DedupRecord>,
        size: u64,
        reply: tokio::sync::oneshot::Sender<Result<(), SpoolError>>,
    },
    Put {
        space: Space,
        key: fjall::Slice,
        value: fjall::Slice,
        reply: tokio::sync::oneshot::Sender<Result<(), SpoolError>>,
    },
    Move {
        from: (Space, fjall::Slice),
        to: (Space, fjall::Slice),
        value: fjall::Slice,
        reply: tokio::sync::oneshot::Sender<Result<(), SpoolError>>,
    },
    Delete {
        space: Space,
        key: fjall::Slice,
        reply: tokio::sync::oneshot::Sender<Result<(), SpoolError>>,
    },
    /// Wakes the writer for the deferred removals of delivered events.
    Deferred,
}

/// A delivered event's removal, waiting for the writer's next batch.
type DeferredDelete = (
    fjall::Slice,
    Option<tokio::sync::oneshot::Sender<Result<(), SpoolError>>>,
);

struct Shared {
    db: fjall::Database,
    pending: fjall::Keyspace,
    dead: fjall::Keyspace,
    dedup: fjall::Keyspace,
    pending_count: AtomicU64,
    dead_count: AtomicU64,
    bytes: AtomicU64,
    config: SpoolConfig,
    /// Removals of delivered events. They ride with the writer's next batch, and only the first
    /// of a batch wakes it: under load, a delivery costs no wake-up and no write of its own.
    deferred: Mutex<Vec<DeferredDelete>>,
    /// The writer sleeps with nothing queued: the next removal must wake it.
    writer_idle: std::sync::atomic::AtomicBool,
    /// Per route, the oldest pending id found last: the next search starts there, skipping the
    /// removed events before it. UUIDv7 ids only grow; a revived event (an older id) resets it.
    oldest_hint: Mutex<OldestHint>,
}

#[derive(Default)]
struct OldestHint {
    /// Bumped by every revive: a search that began before one must not store its result.
    generation: u64,
    by_route: std::collections::HashMap<String, Uuid>,
}

/// Locks `m`, whatever a panicking holder left: every value guarded here stays consistent
/// between statements.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The embedded spool on `fjall`. Cheap to clone; the writer thread stops when the last clone is
/// dropped, after committing what was queued.
#[derive(Clone)]
pub struct EmbeddedSpool {
    shared: Arc<Shared>,
    tx: mpsc::SyncSender<Op>,
    _writer: Arc<WriterGuard>,
}

struct WriterGuard {
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    _tempdir: Option<tempfile::TempDir>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        // The sender side is dropped with the last EmbeddedSpool clone before this guard (field
        // order), so the writer drains its queue and exits.
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for EmbeddedSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSpool")
            .field("path", &self.shared.config.path)
            .field("durability", &self.shared.config.durability)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The most operations committed together.
const MAX_GROUP: usize = 4096;

impl EmbeddedSpool {
    /// Opens (or creates) the spool, counts what it holds and deletes expired dedup keys.
    pub fn open(config: SpoolConfig) -> Result<Self, SpoolError> {
        let (path, tempdir) = match config.durability {
            Durability::Memory => {
                // Inside `path` when one is given (the gateway's data dir), so a killed
                // process's leftovers are where its operator looks; else the system's temp dir.
                let mut builder = tempfile::Builder::new();
                builder.prefix("hookgate-spool-");
                let dir = if config.path.as_os_str().is_empty() {
                    builder.tempdir()
                } else {
                    std::fs::create_dir_all(&config.path)
                        .and_then(|()| builder.tempdir_in(&config.path))
                }
                .map_err(|e| SpoolError::Storage(format!("{}: {e}", config.path.display())))?;
                (dir.path().to_owned(), Some(dir))
            }
            _ => (config.path.clone(), None),
        };
        let db = fjall::Database::builder(&path)
            .manual_journal_persist(true)
            .open()
            .map_err(|e| SpoolError::Storage(format!("{}: {e}", path.display())))?;
        let pending = db.keyspace("pending", fjall::KeyspaceCreateOptions::default)?;
        let dead = db.keyspace("dead", fjall::KeyspaceCreateOptions::default)?;
        let dedup = db.keyspace("dedup", fjall::KeyspaceCreateOptions::default)?;

        let (mut pending_count, mut dead_count, mut bytes) = (0u64, 0u64, 0u64);
        for kv in pending.iter() {
            let (_, v) = kv.into_inner()?;
            pending_count += 1;
            bytes += decode(&v)?.stored_size();
        }
        for kv in dead.iter() {
            let (_, v) = kv.into_inner()?;
            dead_count += 1;
            bytes += decode(&v)?.stored_size();
        }
        let shared = Arc::new(Shared {
            db,
            pending,
            dead,
            dedup,
            pending_count: AtomicU64::new(pending_count),
            dead_count: AtomicU64::new(dead_count),
            bytes: AtomicU64::new(bytes),
            config,
            deferred: Mutex::new(Vec::new()),
            writer_idle: std::sync::atomic::AtomicBool::new(false),
            oldest_hint: Mutex::new(OldestHint::default()),
        });
        // Bounded so a stalled disk pushes back on appends instead of growing memory.
        let (tx, rx) = mpsc::sync_channel(MAX_GROUP * 4);
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hookgate-spool".into())
            .spawn(move || writer(writer_shared, rx))
            .map_err(|e| SpoolError::Storage(format!("cannot start the spool writer: {e}")))?;
        let spool = Self {
            shared,
            tx,
            _writer: Arc::new(WriterGuard {
                thread: Mutex::new(Some(thread)),
                _tempdir: tempdir,
            }),
        };
        spool.sweep_expired_keys()?;
        Ok(spool)
    }

    /// The configuration.
    pub fn config(&self) -> &SpoolConfig {
        &self.shared.config
    }

    fn send<T>(
        &self,
        op: Op,
        rx: tokio::sync::oneshot::Receiver<Result<T, SpoolError>>,
    ) -> Completion<T> {
        // Never blocks the caller (a runtime thread): a queue full because the disk stalls is
        // refused, which the fast-ack path answers with 503 and the sender retries.
        match self.tx.try_send(op) {
            Ok(()) => Completion(CompletionInner::Waiting(rx)),
            Err(mpsc::TrySendError::Full(_)) => {
                Completion::ready(Err(SpoolError::Full("the write queue is full".into())))
            }
            Err(mpsc::TrySendError::Disconnected(_)) => Completion::ready(Err(SpoolError::Closed)),
        }
    }

    fn put(&self, space: Space, key: Vec<u8>, event: &Event) -> Completion {
        let value = match encode(event) {
            Ok(v) => v,
            Err(e) => return Completion::ready(Err(e)),
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(
            Op::Put {
                space,
                key: key.into(),
                value: value.into(),
                reply,
            },
            rx,
        )
    }
}

impl EmbeddedSpool {
    /// Queues the removal of a delivered event for the writer's next batch.
    fn defer_delete(
        &self,
        event: &Event,
        reply: Option<tokio::sync::oneshot::Sender<Result<(), SpoolError>>>,
    ) {
        let s = &self.shared;
        s.pending_count.fetch_sub(1, Ordering::AcqRel);
        s.bytes.fetch_sub(
            event.stored_size().min(s.bytes.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        lock(&s.deferred).push((event.pending_key().into(), reply));
        // Only a writer asleep with nothing to do needs waking; a busy one takes the removal with
        // its next batch. A closed queue needs nothing: the writer drains removals before exiting.
        if s.writer_idle.swap(false, Ordering::SeqCst) {
            let _ = self.tx.try_send(Op::Deferred);
        }
    }
}

fn encode(event: &Event) -> Result<Vec<u8>, SpoolError> {
    postcard::to_stdvec(event).map_err(|e| SpoolError::Corrupt(event.id.to_string(), e.to_string()))
}

fn decode(bytes: &[u8]) -> Result<Event, SpoolError> {
    postcard::from_bytes(bytes).map_err(|e| SpoolError::Corrupt("?".into(), e.to_string()))
}

impl Spool for EmbeddedSpool {
    fn append(&self, event: &Event) -> Completion {
        let s = &*self.shared;
        let size = event.stored_size();
        let held = s.pending_count.load(Ordering::Relaxed) + s.dead_count.load(Ordering::Relaxed);
        if held >= s.config.max_events {
            return Completion::ready(Err(SpoolError::Full(format!("{held} events"))));
        }
        // Reserve the bytes now so concurrent appends cannot overshoot together.
        let before = s.bytes.fetch_add(size, Ordering::AcqRel);
        if before + size > s.config.max_bytes {
            s.bytes.fetch_sub(size, Ordering::AcqRel);
            return Completion::ready(Err(SpoolError::Full(format!("{before} bytes"))));
        }
        s.pending_count.fetch_add(1, Ordering::AcqRel);
        let value = match encode(event) {
            Ok(v) => v,
            Err(e) => {
                s.bytes.fetch_sub(size, Ordering::AcqRel);
                s.pending_count.fetch_sub(1, Ordering::AcqRel);
                return Completion::ready(Err(e));
            }
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        // Built as fjall's own buffer here, in the caller's thread: the writer only moves it
        // into the batch, with no copy and no cross-thread free.
        let op = Op::Append {
            key: event.pending_key().into(),
            value: value.into(),
            dedup: event.dedup,
            size,
            reply,
        };
        let completion = self.send(op, rx);
        if matches!(completion.0, CompletionInner::Ready(_)) {
            // Not queued: give back what was reserved.
            s.bytes.fetch_sub(size, Ordering::AcqRel);
            s.pending_count.fetch_sub(1, Ordering::AcqRel);
        }
        completion
    }

    fn get(&self, route: &str, id: Uuid) -> Result<Option<Event>, SpoolError> {
        match self.shared.pending.get(pending_key(route, id))? {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }

    fn get_dead(&self, id: Uuid) -> Result<Option<Event>, SpoolError> {
        match self.shared.dead.get(id.as_bytes())? {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }

    fn delivered(&self, event: &Event) -> Completion {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.defer_delete(event, Some(reply));
        Completion(CompletionInner::Waiting(rx))
    }

    fn forget_delivered(&self, event: &Event) {
        self.defer_delete(event, None);
    }

    fn reschedule(&self, event: &Event) -> Completion {
        self.put(Space::Pending, event.pending_key(), event)
    }

    fn dead_letter(&self, event: &Event) -> Completion {
        let value = match encode(event) {
            Ok(v) => v,
            Err(e) => return Completion::ready(Err(e)),
        };
        self.shared.pending_count.fetch_sub(1, Ordering::AcqRel);
        self.shared.dead_count.fetch_add(1, Ordering::AcqRel);
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(
            Op::Move {
                from: (Space::Pending, event.pending_key().into()),
                to: (Space::Dead, event.id.as_bytes().to_vec().into()),
                value: value.into(),
                reply,
            },
            rx,
        )
    }

    fn pending(&self) -> Result<Vec<Event>, SpoolError> {
        self.shared
            .pending
            .iter()
            .map(|kv| decode(&kv.into_inner()?.1))
            .collect()
    }

    fn pending_schedule(&self, route: &str) -> Result<Vec<(Uuid, u64)>, SpoolError> {
        let mut prefix = route.as_bytes().to_vec();
        prefix.push(0);
        self.shared
            .pending
            .prefix(&prefix)
            .map(|kv| {
                let e = decode(&kv.into_inner()?.1)?;
                Ok((e.id, e.next_attempt_ms))
            })
            .collect()
    }

    fn dedup_keys(&self) -> Result<Vec<DedupRecord>, SpoolError> {
        let from = now_ms().saturating_add(1).to_be_bytes();
        self.shared
            .dedup
            .range(from..)
            .filter_map(|kv| match kv.into_inner() {
                Ok((k, _)) => decode_dedup_key(&k).map(Ok),
                Err(e) => Some(Err(e.into())),
            })
            .collect()
    }

    fn dead_letters(&self, limit: usize) -> Result<Vec<Event>, SpoolError> {
        self.shared
            .dead
            .iter()
            .take(limit)
            .map(|kv| decode(&kv.into_inner()?.1))
            .collect()
    }

    fn revive(&self, id: Uuid) -> Completion<Event> {
        let mut event = match self.get_dead(id) {
            Ok(Some(e)) => e,
            Ok(None) => return Completion::ready(Err(SpoolError::NotFound(id))),
            Err(e) => return Completion::ready(Err(e)),
        };
        event.attempts_before_replay = event.attempts;
        event.next_attempt_ms = now_ms();
        event.window_start_ms = event.next_attempt_ms;
        let value = match encode(&event) {
            Ok(v) => v,
            Err(e) => return Completion::ready(Err(e)),
        };
        self.shared.dead_count.fetch_sub(1, Ordering::AcqRel);
        self.shared.pending_count.fetch_add(1, Ordering::AcqRel);
        let (reply, rx) = tokio::sync::oneshot::channel();
        let done = self.send(
            Op::Move {
                from: (Space::Dead, id.as_bytes().to_vec().into()),
                to: (Space::Pending, event.pending_key().into()),
                value: value.into(),
                reply,
            },
            rx,
        );
        let (tx, out) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(done.await.map(|()| event));
        });
        Completion(CompletionInner::Waiting(out))
    }

    fn purge(&self, id: Uuid) -> Completion {
        let size = match self.shared.dead.get(id.as_bytes()) {
            Ok(Some(v)) => decode(&v).map(|e| e.stored_size()).unwrap_or(0),
            Ok(None) => return Completion::ready(Err(SpoolError::NotFound(id))),
            Err(e) => return Completion::ready(Err(e.into())),
        };
        self.shared.dead_count.fetch_sub(1, Ordering::AcqRel);
        self.shared.bytes.fetch_sub(
            size.min(self.shared.bytes.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(
            Op::Delete {
                space: Space::Dead,
                key: id.as_bytes().to_vec().into(),
                reply,
            },
            rx,
        )
    }

    fn probe(&self) -> Completion {
        // Deleting a dead letter that cannot exist (the nil UUID is never an event id) goes
        // through the writer and the journal's sync like any commit, and removes nothing.
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(
            Op::Delete {
                space: Space::Dead,
                key: Uuid::nil().as_bytes().to_vec().into(),
                reply,
            },
            rx,
        )
    }

    fn stats(&self) -> SpoolStats {
        let s = &self.shared;
        SpoolStats {
            pending: s.pending_count.load(Ordering::Acquire),
            dead: s.dead_count.load(Ordering::Acquire),
            bytes: s.bytes.load(Ordering::Acquire),
        }
    }

    fn sweep_expired_keys(&self) -> Result<usize, SpoolError> {
        // Keys lead with their expiry: the expired ones are one range at the front.
        let until = now_ms().saturating_add(1).to_be_bytes();
        let mut expired = Vec::new();
        for kv in self.shared.dedup.range(..until) {
            expired.push(kv.key()?);
        }
        if expired.is_empty() {
            return Ok(0);
        }
        // Not synced: a key that reappears after a power cut is expired and ignored anyway.
        let mut batch = self.shared.db.batch().durability(
            self.shared
                .config
                .durability
                .persist_mode()
                .map(|_| fjall::PersistMode::Buffer),
        );
        for k in &expired {
            batch.remove(&self.shared.dedup, k.clone());
        }
        batch.commit()?;
        Ok(expired.len())
    }

    fn oldest_pending_ms(&self, route: &str) -> Option<u64> {
        let (generation, hint) = {
            let h = lock(&self.shared.oldest_hint);
            (h.generation, h.by_route.get(route).copied())
        };
        let start = match hint {
            Some(id) => pending_key(route, id),
            None => pending_key(route, Uuid::nil()),
        };
        let end = pending_key(route, Uuid::max());
        let (key, _) = self
            .shared
            .pending
            .range(start..=end)
            .next()?
            .into_inner()
            .ok()?;
        let id = Uuid::from_slice(key.get(route.len() + 1..)?).ok()?;
        {
            let mut h = lock(&self.shared.oldest_hint);
            if h.generation == generation {
                h.by_route.insert(route.to_owned(), id);
            }
        }
        let (secs, nanos) = id.get_timestamp()?.to_unix();
        Some(secs * 1000 + u64::from(nanos) / 1_000_000)
    }
}

/// The group-commit loop: take what is queued, write it as one batch, sync once, answer everyone.
fn writer(s: Arc<Shared>, rx: mpsc::Receiver<Op>) {
    let mut ops = Vec::with_capacity(MAX_GROUP);
    let mut deletes: Vec<DeferredDelete> = Vec::new();
    let mut open = true;
    // Appends in the last batch that had any: more than one means concurrent senders.
    let mut last_appends = 0;
    let linger = match s.config.durability {
        Durability::Fsync => s.config.linger,
        // Without a sync there is nothing to share.
        _ => Duration::ZERO,
    };
    while open {
        let next = if !lock(&s.deferred).is_empty() {
            // Removals wait a little for appends to ride with, then go alone.
            match rx.recv_timeout(DEFER_FOR) {
                Ok(op) => Some(op),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    open = false;
                    None
                }
            }
        } else {
            // Nothing at all to do: removals queued from now on must wake this thread.
            s.writer_idle.store(true, Ordering::SeqCst);
            let next = if lock(&s.deferred).is_empty() {
                rx.recv().map_err(|_| open = false).ok()
            } else {
                None
            };
            s.writer_idle.store(false, Ordering::SeqCst);
            next
        };
        ops.extend(next);
        drain(&rx, &mut ops);
        if !linger.is_zero() && last_appends > 1 && count_appends(&ops) > 0 {
            // Concurrent appends: wait (a little) for as many as the last sync carried, so they
            // share this one. A sync costs tens of microseconds of CPU; an alone append never
            // waits, and senders that are all here already do not wait either.
            let deadline = Instant::now() + linger;
            while count_appends(&ops) < last_appends && Instant::now() < deadline {
                std::thread::sleep(linger / 4);
                drain(&rx, &mut ops);
            }
        }
        std::mem::swap(&mut deletes, &mut *lock(&s.deferred));
        let appends = count_appends(&ops);
        if appends > 0 {
            last_appends = appends;
        }
        if !ops.is_empty() || !deletes.is_empty() {
            commit(&s, &mut ops, &mut deletes, appends > 0);
        }
    }
    // Queue closed: make everything written so far durable before exiting.
    if let Some(mode) = s.config.durability.persist_mode() {
        let _ = s.db.persist(mode);
    }
}

/// How long removals of delivered events wait for a batch of appends to join.
const DEFER_FOR: Duration = Duration::from_millis(5);

/// Moves what is queued into `ops`, up to a group.
fn drain(rx: &mpsc::Receiver<Op>, ops: &mut Vec<Op>) {
    while ops.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
}

fn count_appends(ops: &[Op]) -> usize {
    ops.iter()
        .filter(|op| matches!(op, Op::Append { .. }))
        .count()
}

/// Writes `ops` and `deletes` as one batch and answers their callers.
fn commit(s: &Shared, ops: &mut Vec<Op>, deletes: &mut Vec<DeferredDelete>, appends: bool) {
    let bookkeeping = ops
        .iter()
        .any(|op| matches!(op, Op::Put { .. } | Op::Move { .. } | Op::Delete { .. }));
    // Appends wait for the configured durability. Retries, dead letters and replays only reach
    // the OS, and removals of delivered events wait in the journal's buffer for the next write:
    // losing either in a crash means a repeat delivery, never a lost event.
    let mode = if appends {
        s.config.durability.persist_mode()
    } else if bookkeeping && s.config.durability != Durability::Memory {
        Some(fjall::PersistMode::Buffer)
    } else {
        None
    };
    let mut batch = s.db.batch().durability(mode);
    let mut revived = false;
    for op in ops.iter() {
        match op {
            Op::Append {
                key, value, dedup, ..
            } => {
                batch.insert(&s.pending, key.clone(), value.clone());
                if let Some(d) = dedup {
                    batch.insert(&s.dedup, dedup_key(d).as_slice(), b"".as_slice());
                }
            }
            Op::Put {
                space, key, value, ..
            } => {
                batch.insert(keyspace(s, space), key.clone(), value.clone());
            }
            Op::Move {
                from, to, value, ..
            } => {
                revived |= matches!(to.0, Space::Pending);
                batch.remove(keyspace(s, &from.0), from.1.clone());
                batch.insert(keyspace(s, &to.0), to.1.clone(), value.clone());
            }
            Op::Delete { space, key, .. } => batch.remove(keyspace(s, space), key.clone()),
            Op::Deferred => {}
        }
    }
    for (key, _) in deletes.iter() {
        batch.remove(&s.pending, key.clone());
    }
    let result = batch.commit().map_err(SpoolError::from);
    if let Err(e) = &result {
        tracing::error!(error = %e, operations = ops.len() + deletes.len(), "spool commit failed");
    }
    if revived {
        let mut hint = lock(&s.oldest_hint);
        hint.generation += 1;
        hint.by_route.clear();
    }
    for op in ops.drain(..) {
        let reply = match op {
            Op::Append { reply, size, .. } => {
                if result.is_err() {
                    s.bytes.fetch_sub(size, Ordering::AcqRel);
                    s.pending_count.fetch_sub(1, Ordering::AcqRel);
                }
                reply
            }
            Op::Put { reply, .. } | Op::Move { reply, .. } | Op::Delete { reply, .. } => reply,
            Op::Deferred => continue,
        };
        let _ = reply.send(result.clone());
    }
    for (_, reply) in deletes.drain(..) {
        if let Some(reply) = reply {
            let _ = reply.send(result.clone());
        }
    }
}

/// A persisted dedup key: the expiry (big endian) then the key, so records sort by expiry. New
/// records land near the end of the tree, and expired ones are one range at its front.
fn dedup_key(d: &DedupRecord) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&d.expires_ms.to_be_bytes());
    k[8..].copy_from_slice(&d.key);
    k
}

fn decode_dedup_key(k: &[u8]) -> Option<DedupRecord> {
    let expires_ms = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    let key = k.get(8..24)?.try_into().ok()?;
    Some(DedupRecord { key, expires_ms })
}

fn keyspace<'a>(s: &'a Shared, space: &Space) -> &'a fjall::Keyspace {
    match space {
        Space::Pending => &s.pending,
        Space::Dead => &s.dead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(route: &str) -> Event {
        Event::new(
            route,
            "127.0.0.1".parse().unwrap(),
            "POST",
            "/w",
            vec![("x-a".into(), b"1".to_vec())],
            Bytes::from_static(b"{\"a\":1}"),
        )
    }

    #[tokio::test]
    async fn events_survive_reopen_in_every_persistent_mode() {
        for durability in [Durability::Fsync, Durability::Os] {
            let dir = tempfile::tempdir().unwrap();
            let e = event("r").with_dedup(DedupKey::from_u128(9), now_ms() + 60_000);
            {
                let spool = EmbeddedSpool::open(SpoolConfig::new(dir.path(), durability)).unwrap();
                spool.append(&e).await.unwrap();
            }
            let spool = EmbeddedSpool::open(SpoolConfig::new(dir.path(), durability)).unwrap();
            assert_eq!(spool.pending().unwrap(), vec![e.clone()], "{durability:?}");
            assert_eq!(spool.dedup_keys().unwrap(), vec![e.dedup.unwrap()]);
            assert_eq!(spool.stats().pending, 1);
            assert_eq!(spool.get("r", e.id).unwrap(), Some(e));
        }
    }

    #[tokio::test]
    async fn bounds_refuse_appends() {
        let dir = tempfile::tempdir().unwrap();
        let spool =
            EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Os).with_max_events(2))
                .unwrap();
        spool.append(&event("r")).await.unwrap();
        spool.append(&event("r")).await.unwrap();
        assert!(matches!(
            spool.append(&event("r")).await,
            Err(SpoolError::Full(_))
        ));
        let spool = EmbeddedSpool::open(
            SpoolConfig::new(tempfile::tempdir().unwrap().path(), Durability::Memory)
                .with_max_bytes(100),
        )
        .unwrap();
        assert!(matches!(
            spool.append(&event("r")).await,
            Err(SpoolError::Full(_))
        ));
        assert_eq!(spool.stats().bytes, 0);
    }

    #[tokio::test]
    async fn dead_letters_keep_id_and_history_and_revive() {
        let dir = tempfile::tempdir().unwrap();
        let spool = EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap();
        let mut e = event("r");
        spool.append(&e).await.unwrap();
        e.attempts += 1;
        e.record_outcome("status 400".into());
        spool.dead_letter(&e).await.unwrap();
        assert!(spool.pending().unwrap().is_empty());
        let dead = spool.dead_letters(10).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].id, dead[0].history[0].outcome.as_str()),
            (e.id, "status 400")
        );
        assert_eq!(
            spool.stats(),
            SpoolStats {
                pending: 0,
                dead: 1,
                bytes: e.stored_size()
            }
        );
        let revived = spool.revive(e.id).await.unwrap();
        assert_eq!(
            (revived.id, revived.attempts, revived.attempts_before_replay),
            (e.id, 1, 1)
        );
        assert_eq!(spool.pending().unwrap().len(), 1);
        assert!(spool.dead_letters(10).unwrap().is_empty());
        assert!(matches!(
            spool.purge(e.id).await,
            Err(SpoolError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn expired_dedup_keys_are_swept() {
        let spool = EmbeddedSpool::open(SpoolConfig::new("", Durability::Memory)).unwrap();
        let live = event("r").with_dedup(DedupKey::from_u128(1), now_ms() + 60_000);
        let dead = event("r").with_dedup(DedupKey::from_u128(2), now_ms().saturating_sub(1));
        spool.append(&live).await.unwrap();
        spool.append(&dead).await.unwrap();
        assert_eq!(spool.dedup_keys().unwrap(), vec![live.dedup.unwrap()]);
        assert_eq!(spool.sweep_expired_keys().unwrap(), 1);
        assert_eq!(spool.sweep_expired_keys().unwrap(), 0);
        assert_eq!(spool.dedup_keys().unwrap(), vec![live.dedup.unwrap()]);
    }

    #[tokio::test]
    async fn oldest_pending_is_per_route() {
        let spool = EmbeddedSpool::open(SpoolConfig::new("", Durability::Memory)).unwrap();
        assert_eq!(spool.oldest_pending_ms("a"), None);
        let a = event("a");
        spool.append(&a).await.unwrap();
        spool.append(&event("b")).await.unwrap();
        let oldest = spool.oldest_pending_ms("a").unwrap();
        assert!(
            oldest.abs_diff(a.received_ms) < 5,
            "{oldest} vs {}",
            a.received_ms
        );
    }

    #[tokio::test]
    async fn concurrent_appends_are_grouped_and_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        let spool = EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap();
        let tasks: Vec<_> = (0..500)
            .map(|_| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.append(&event("r")).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        drop(spool);
        let spool = EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap();
        assert_eq!(spool.pending().unwrap().len(), 500);
    }

    #[tokio::test]
    async fn a_removal_wakes_an_idle_writer() {
        // Removals ride with later batches; with nothing else queued, one must still be written.
        let spool = EmbeddedSpool::open(SpoolConfig::new("", Durability::Memory)).unwrap();
        let e = event("r");
        spool.append(&e).await.unwrap();
        // Let the writer go idle first.
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A guard against hanging, not a timing check.
        tokio::time::timeout(Duration::from_secs(30), spool.delivered(&e))
            .await
            .expect("the removal was never written: the idle writer was not woken")
            .unwrap();
        assert!(spool.pending().unwrap().is_empty());
    }

    #[tokio::test]
    async fn unawaited_removals_are_written_before_the_spool_closes() {
        for durability in [Durability::Fsync, Durability::Os] {
            let dir = tempfile::tempdir().unwrap();
            let config = SpoolConfig::new(dir.path(), durability);
            let spool = EmbeddedSpool::open(config.clone()).unwrap();
            let events: Vec<Event> = (0..100).map(|_| event("r")).collect();
            for e in &events {
                spool.append(e).await.unwrap();
            }
            for e in &events[..60] {
                spool.forget_delivered(e);
            }
            assert_eq!(spool.stats().pending, 40);
            drop(spool);
            let spool = EmbeddedSpool::open(config).unwrap();
            let left: Vec<Uuid> = spool.pending().unwrap().iter().map(|e| e.id).collect();
            let want: Vec<Uuid> = events[60..].iter().map(|e| e.id).collect();
            assert_eq!(left, want, "{durability:?}");
        }
    }

    #[tokio::test]
    async fn oldest_pending_follows_deliveries_and_replays() {
        let spool = EmbeddedSpool::open(SpoolConfig::new("", Durability::Memory)).unwrap();
        let events: Vec<Event> = (0..3)
            .map(|i| {
                let mut e = event("a");
                e.received_ms = 1_000 * (i + 1);
                e
            })
            .collect();
        for e in &events {
            spool.append(e).await.unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let id_ms = |e: &Event| {
            let (secs, nanos) = e.id.get_timestamp().unwrap().to_unix();
            secs * 1000 + u64::from(nanos) / 1_000_000
        };
        assert_eq!(spool.oldest_pending_ms("a"), Some(id_ms(&events[0])));
        // The first dead-lettered, the second delivered: the third is the oldest.
        spool.dead_letter(&events[0]).await.unwrap();
        spool.delivered(&events[1]).await.unwrap();
        assert_eq!(spool.oldest_pending_ms("a"), Some(id_ms(&events[2])));
        // Replayed, the first (an older id) is the oldest again.
        spool.revive(events[0].id).await.unwrap();
        assert_eq!(spool.oldest_pending_ms("a"), Some(id_ms(&events[0])));
        assert_eq!(spool.oldest_pending_ms("b"), None);
    }
}
