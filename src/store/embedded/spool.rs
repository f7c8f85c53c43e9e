//! [`EmbeddedSpool`]: the [`Spool`] on fjall under a data directory; writes go through the
//! group-commit writer ([`super::writer`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use uuid::Uuid;

use super::disk::{self, Room};
use super::engine::{self, Engine, Tuning};
use super::keys::{self, decode_dedup_key, live_key, live_prefix, Space};
use super::retention;
use super::writer::{self, DeferredDelete, Op, MAX_GROUP, SWEEP_CHUNK};
use crate::store::event::{id_ms, now_ms, split_lane, DedupRecord, Event, DEFAULT_DESTINATION};
use crate::store::history::{
    self, DeliveryStatus, DestinationState, EventDetail, EventFilter, EventPage, EventQuery, Order,
    PageBuilder,
};
use crate::store::record;
use crate::store::spool::{
    Completion, Durability, EventSummary, Spool, SpoolError, SpoolFuture, SpoolStats, StoreHealth,
};

impl From<fjall::Error> for SpoolError {
    fn from(e: fjall::Error) -> Self {
        SpoolError::Storage(e.to_string())
    }
}

/// fjall's persist mode for `durability` (`None`: nothing to persist).
pub(super) fn persist_mode(durability: Durability) -> Option<fjall::PersistMode> {
    match durability {
        // fdatasync: it writes the data and the metadata needed to read it back (size, block
        // allocation); fsync would also write the modification time, which recovery ignores.
        Durability::Fsync => Some(fjall::PersistMode::SyncData),
        Durability::Os => Some(fjall::PersistMode::Buffer),
        Durability::Memory => None,
    }
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
    /// The most bytes of stored records held; appends beyond fail.
    pub max_bytes: u64,
    /// In `fsync` mode, how long a batch of appends may wait for the senders of the previous
    /// batch to come back and share its sync (only when appends come concurrently; an append
    /// alone never waits). Trades up to this much latency for fewer syncs: each costs tens of
    /// microseconds of CPU. Zero turns it off.
    pub linger: Duration,
    /// The memory the store's engine may use, at most: its write buffers (memtables) and its
    /// block cache. A steady load keeps the process flat at about this much plus the dedup keys
    /// and the connections; the data on disk is not bounded by it.
    pub memory: u64,
    /// New events are refused (503 `spool_full`) while the filesystem's free space, less the
    /// room the engine keeps for flushing its journal and one compaction, is under this many
    /// bytes. `None` (the default): 256 MiB, or 5% of a smaller filesystem.
    pub min_free_space: Option<u64>,
    /// After a failed write, how long the store waits before it reopens its engine and tries
    /// again. New events get 503 at once meanwhile: none waits on a failing write.
    pub write_retry: Duration,
    /// How long delivered events stay in the history, counted from their receipt. Pending and
    /// dead events are never dropped for it.
    pub retention: Duration,
    /// The most bytes of history kept on disk (its tables): beyond, the oldest delivered events
    /// are dropped first, a table at a time. `None`: bounded by `retention` and the disk only.
    pub retention_max_size: Option<u64>,
}

/// The default [`SpoolConfig::retention`]: 72 hours.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(72 * 3600);

/// The default [`SpoolConfig::retention_max_size`]: 1 GiB.
pub const DEFAULT_RETENTION_MAX_SIZE: u64 = 1 << 30;

/// The smallest [`SpoolConfig::memory`]: the engine needs a write buffer of 1 MiB at least.
pub const MIN_MEMORY: u64 = 4 << 20;

impl SpoolConfig {
    /// A spool in `path` with `durability`, bounded at 1,000,000 events and 1 GiB, lingering
    /// 100 µs for concurrent appends, using 32 MiB of memory, keeping the default free space,
    /// retrying a failed write after 1 s, and keeping delivered events 72 hours within 1 GiB.
    pub fn new(path: impl AsRef<Path>, durability: Durability) -> Self {
        Self {
            path: path.as_ref().to_owned(),
            durability,
            max_events: 1_000_000,
            max_bytes: 1 << 30,
            linger: Duration::from_micros(100),
            memory: 32 << 20,
            min_free_space: None,
            write_retry: Duration::from_secs(1),
            retention: DEFAULT_RETENTION,
            retention_max_size: Some(DEFAULT_RETENTION_MAX_SIZE),
        }
    }

    /// Sets [`retention`](Self::retention) and [`retention_max_size`](Self::retention_max_size).
    #[must_use]
    pub fn with_retention(mut self, retention: Duration, max_size: Option<u64>) -> Self {
        self.retention = retention;
        self.retention_max_size = max_size;
        self
    }

    /// Sets [`min_free_space`](Self::min_free_space) (`None`: the default for the filesystem).
    #[must_use]
    pub fn with_min_free(mut self, bytes: Option<u64>) -> Self {
        self.min_free_space = bytes;
        self
    }

    /// Sets [`write_retry`](Self::write_retry).
    #[must_use]
    pub fn with_write_retry(mut self, wait: Duration) -> Self {
        self.write_retry = wait;
        self
    }

    /// Sets [`memory`](Self::memory) (at least [`MIN_MEMORY`]).
    #[must_use]
    pub fn with_memory(mut self, bytes: u64) -> Self {
        self.memory = bytes.max(MIN_MEMORY);
        self
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

pub(super) struct Shared {
    /// The engine; `None` while the writer reopens it (reads then fail at once).
    pub(super) engine: ArcSwapOption<Engine>,
    /// Where the engine's files are (the configured path, or the temporary directory).
    pub(super) path: PathBuf,
    pub(super) tuning: Tuning,
    /// The room on disk, measured by the writer.
    pub(super) room: Room,
    /// Why new events are refused now: a write failed, and the engine is not yet copied to a
    /// fresh directory (the journal that failed is not trusted with them).
    pub(super) failure: Mutex<Option<SpoolError>>,
    /// Mirrors `failure.is_some()` for the per-append check.
    pub(super) failed: AtomicBool,
    /// A rebuild of much data is under way: new events are refused rather than wait for it.
    pub(super) rebuilding: AtomicBool,
    /// Times the engine was reopened after a failed write, and rebuilt to give space back.
    pub(super) reopened: AtomicU64,
    pub(super) rebuilt: AtomicU64,
    /// Committed counts, changed only by the writer, by what each commit did.
    pub(super) pending_count: AtomicU64,
    pub(super) dead_count: AtomicU64,
    pub(super) bytes: AtomicU64,
    /// Appends queued and not yet committed (they count against the bounds).
    pub(super) queued: AtomicU64,
    pub(super) queued_bytes: AtomicU64,
    pub(super) syncs: AtomicU64,
    pub(super) config: SpoolConfig,
    /// Removals of delivered events. They ride with the writer's next batch, and only the first
    /// of a batch wakes it: under load, a delivery costs no wake-up and no write of its own.
    pub(super) deferred: Mutex<Vec<DeferredDelete>>,
    /// The writer sleeps with nothing queued: the next removal must wake it.
    pub(super) writer_idle: AtomicBool,
    /// Per route, the oldest pending id found last: the next search starts there, skipping the
    /// removed events before it. UUIDv7 ids only grow; a revived event (an older id) resets it.
    pub(super) oldest_hint: Mutex<OldestHint>,
    /// Where retention (or a rebuild short of room) has cut the history, in Unix milliseconds:
    /// delivered events received before are gone (see [`Shared::visible_from_ms`]).
    pub(super) history_from: AtomicU64,
    /// Whether `kept` may hold records (it is empty unless retention passed a live event): a
    /// delivery reads it only then.
    pub(super) kept_any: AtomicBool,
    /// How many events each route received each minute (since the epoch) still in the
    /// history: what `retained` sums. Kept in `meta` too, changed only by the writer.
    pub(super) tally:
        Mutex<std::collections::HashMap<String, std::collections::BTreeMap<u64, u64>>>,
    /// The live events' records are in `kept` below this id already (retention's last copy):
    /// the next copy reads only from here on.
    pub(super) kept_from: Mutex<Uuid>,
}

#[derive(Default)]
pub(super) struct OldestHint {
    /// Bumped by every revive: a search that began before one must not store its result.
    pub(super) generation: u64,
    pub(super) by_route: std::collections::HashMap<String, Uuid>,
}

/// Locks `m`, whatever a panicking holder left: every value guarded here stays consistent
/// between statements.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// The engine, or why there is none right now (it is being reopened).
    pub(super) fn engine(&self) -> Result<Arc<Engine>, SpoolError> {
        self.engine.load_full().ok_or(SpoolError::Reopening)
    }

    /// Why new events are refused now, if they are: the store failed and is not recovered
    /// yet, or a long rebuild is under way.
    pub(super) fn refusal(&self) -> Option<SpoolError> {
        if self.failed.load(Ordering::Acquire) {
            if let Some(e) = lock(&self.failure).clone() {
                return Some(e);
            }
        }
        self.rebuilding
            .load(Ordering::Acquire)
            .then(|| SpoolError::Full("the spool is being copied to give disk space back".into()))
    }

    /// Counts what the engine holds: (pending, dead, bytes of their records).
    pub(super) fn count(engine: &Engine) -> Result<(u64, u64, u64), SpoolError> {
        let (mut pending, mut dead, mut bytes) = (0u64, 0u64, 0u64);
        for kv in engine.live.iter() {
            let (k, v) = kv.into_inner()?;
            match Space::of(&k) {
                Some(Space::Pending) => pending += 1,
                Some(Space::Dead) => dead += 1,
                None => continue,
            }
            bytes += u64::from(record::state_size(&v).unwrap_or(0));
        }
        Ok((pending, dead, bytes))
    }

    /// Where the history starts now, in Unix milliseconds: the retention's cutoff, or later
    /// where the history was cut for size or room.
    pub(super) fn visible_from_ms(&self) -> u64 {
        let by_time = now_ms().saturating_sub(self.config.retention.as_millis() as u64);
        by_time.max(self.history_from.load(Ordering::Acquire))
    }
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
    /// Stopped first: it holds a sender of the writer's queue.
    retainer: Mutex<Option<retention::Retainer>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held for the spool's life: one process at a time rebuilds or recovers its directory.
    /// (The file stays when it closes: removing it would race with a process taking it.)
    _lock: std::fs::File,
    _tempdir: Option<tempfile::TempDir>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        // The sender side is dropped with the last EmbeddedSpool clone before this guard (field
        // order), and retention's with its thread here, so the writer drains its queue and exits.
        drop(lock(&self.retainer).take());
        if let Some(t) = lock(&self.thread).take() {
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

/// Takes the spool's lock file in `path`, or says that another process has it.
fn take_lock(path: &Path) -> Result<std::fs::File, SpoolError> {
    std::fs::create_dir_all(path)
        .map_err(|e| SpoolError::Storage(format!("{}: {e}", path.display())))?;
    let lock_path = path.join("hookgate.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| SpoolError::Storage(format!("{}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SpoolError::Storage(format!(
            "{} is in use by another process (its lock {} is held)",
            path.display(),
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(SpoolError::Storage(format!("{}: {e}", lock_path.display())))
        }
    }
}

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
        let held = take_lock(&path)?;
        // A spool of the first layout moves into `engine/`; a rebuild that a crash interrupted
        // is finished (or undone) before anything opens.
        engine::migrate_layout(&path)?;
        let path = engine::engine_dir(&path);
        engine::recover_swap(&path)?;
        let tuning = Tuning {
            memory: config.memory.max(MIN_MEMORY),
        };
        let engine = Engine::open(&path, tuning)?;
        engine.migrate_records(persist_mode(config.durability))?;
        sweep_at_open(&engine, config.durability)?;
        let (pending_count, dead_count, bytes) = Shared::count(&engine)?;
        let kept_any = engine.kept.first_key_value().is_some();
        // Where the history was cut for size or room before this start.
        let history_from = engine
            .meta
            .get(writer::HISTORY_FROM)?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map_or(0, u64::from_le_bytes);
        let mut tally: std::collections::HashMap<String, std::collections::BTreeMap<u64, u64>> =
            std::collections::HashMap::new();
        for kv in engine.meta.prefix(keys::TALLY) {
            let (k, v) = kv.into_inner()?;
            if let (Some((route, minute)), Ok(n)) =
                (keys::decode_tally_key(&k), <[u8; 8]>::try_from(&v[..]))
            {
                tally
                    .entry(route)
                    .or_default()
                    .insert(minute, u64::from_le_bytes(n));
            }
        }
        let measure = match engine.measure(&path) {
            Ok(m) if m.total > 0 => Some(m),
            // Some file systems (FUSE ones among them) report no size at all.
            Ok(_) => {
                tracing::warn!(path = %path.display(), "the spool's file system reports no size (statvfs): its free space is not measured, and new events are not refused for it");
                None
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot measure the spool's free space: new events are not refused for it");
                None
            }
        };
        let min_free = match measure {
            Some(m) => disk::min_free(config.min_free_space, m.total, &path)
                .map_err(SpoolError::Storage)?,
            None => 0,
        };
        let room = Room::new(path.clone(), min_free, measure);
        let shared = Arc::new(Shared {
            engine: ArcSwapOption::from_pointee(engine),
            path,
            tuning,
            room,
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            rebuilding: AtomicBool::new(false),
            reopened: AtomicU64::new(0),
            rebuilt: AtomicU64::new(0),
            pending_count: AtomicU64::new(pending_count),
            dead_count: AtomicU64::new(dead_count),
            bytes: AtomicU64::new(bytes),
            queued: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            config,
            deferred: Mutex::new(Vec::new()),
            writer_idle: AtomicBool::new(false),
            oldest_hint: Mutex::new(OldestHint::default()),
            history_from: AtomicU64::new(history_from),
            kept_any: AtomicBool::new(kept_any),
            tally: Mutex::new(tally),
            kept_from: Mutex::new(Uuid::nil()),
        });
        // Bounded so a stalled disk pushes back on appends instead of growing memory.
        let (tx, rx) = mpsc::sync_channel(MAX_GROUP * 4);
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hookgate-spool".into())
            .spawn(move || writer::run(writer_shared, rx))
            .map_err(|e| SpoolError::Storage(format!("cannot start the spool writer: {e}")))?;
        let retainer = retention::start(shared.clone(), tx.clone())
            .map_err(|e| SpoolError::Storage(format!("cannot start the retention thread: {e}")))?;
        Ok(Self {
            shared,
            tx,
            _writer: Arc::new(WriterGuard {
                retainer: Mutex::new(Some(retainer)),
                thread: Mutex::new(Some(thread)),
                _lock: held,
                _tempdir: tempdir,
            }),
        })
    }

    /// Whether a write of a whole record (a retry's schedule, a dead letter, a replay) of `bytes`
    /// is refused for room: it may use half of `min_free_space` beyond where appends stop (see
    /// [`Room::fits_bookkeeping`]), then only removals are written, so the engine never meets
    /// ENOSPC from the deliveries' own bookkeeping (the delivery engine keeps such an event in
    /// memory and tries again).
    fn whole_record_refused(&self, bytes: usize) -> Option<SpoolError> {
        (!self.shared.room.fits_bookkeeping(bytes as u64))
            .then(|| SpoolError::Full(self.room_refusal()))
    }

    /// `event`'s state encoded for a write of the deliveries' bookkeeping (a retry, a dead
    /// letter, a replay), or why it cannot be written now.
    fn bookkeeping_state(&self, event: &Event) -> Result<Vec<u8>, SpoolError> {
        let state = record::encode_state(event, 0, 0)?;
        match self.whole_record_refused(state.len()) {
            Some(refused) => Err(refused),
            None => Ok(state),
        }
    }

    /// Why the room on disk refuses new events (the message of 503 `spool_full`'s log line).
    fn room_refusal(&self) -> String {
        let room = &self.shared.room;
        format!(
            "{} bytes free on the disk of {}, less the engine's room, are under min_free_space ({} bytes)",
            room.free().unwrap_or_default(),
            room.path.display(),
            room.min_free
        )
    }

    /// The configuration.
    pub fn config(&self) -> &SpoolConfig {
        &self.shared.config
    }

    /// Queues `op` for the writer, answered on `rx`.
    fn send<T>(
        &self,
        op: Op,
        rx: tokio::sync::oneshot::Receiver<Result<T, SpoolError>>,
    ) -> Completion<T> {
        // Never blocks the caller (a runtime thread): a queue full because the disk stalls is
        // refused, which the fast-ack path answers with 503 and the sender retries.
        match self.tx.try_send(op) {
            Ok(()) => Completion::waiting(rx),
            Err(mpsc::TrySendError::Full(_)) => {
                Completion::ready(Err(SpoolError::Full("the write queue is full".into())))
            }
            Err(mpsc::TrySendError::Disconnected(_)) => Completion::ready(Err(SpoolError::Closed)),
        }
    }

    /// Queues the removal of a delivered event from the pending ones, with the state it ended
    /// with, for the writer's next batch.
    fn defer_delete(
        &self,
        event: &Event,
        reply: Option<tokio::sync::oneshot::Sender<Result<(), SpoolError>>>,
    ) {
        let s = &self.shared;
        let state = match record::encode_state(event, 0, now_ms()) {
            Ok(state) => state,
            Err(e) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(e));
                }
                return;
            }
        };
        let destination = event.destination_name();
        lock(&s.deferred).push(DeferredDelete {
            live: live_key(Space::Pending, &event.lane(), event.id).into(),
            done: keys::done_key(event.id, destination),
            state,
            siblings: siblings(&event.route, event.id, event.fanout(), destination),
            reply,
        });
        // Only a writer asleep with nothing to do needs waking; a busy one takes the removal with
        // its next batch. A closed queue needs nothing: the writer drains removals before exiting.
        if s.writer_idle.swap(false, Ordering::SeqCst) {
            let _ = self.tx.try_send(Op::Deferred);
        }
    }

    /// Moves an event between pending and dead (`from` and `to` are its `live` keys), with the
    /// state `event` has now.
    fn move_event(&self, from: Vec<u8>, to: Vec<u8>, event: &Event) -> Completion {
        let state = match self.bookkeeping_state(event) {
            Ok(state) => state,
            Err(e) => return Completion::ready(Err(e)),
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(
            Op::Move {
                from: from.into(),
                to: to.into(),
                state,
                reply,
            },
            rx,
        )
    }
}

/// Deletes the expired dedup keys at start, a chunk per commit.
fn sweep_at_open(engine: &Engine, durability: Durability) -> Result<usize, SpoolError> {
    let (db, dedup) = (&engine.db, &engine.dedup);
    let until = keys::expired_until();
    let mut removed = 0;
    loop {
        let mut keys = Vec::with_capacity(SWEEP_CHUNK);
        for kv in dedup.range(..until).take(SWEEP_CHUNK) {
            keys.push(kv.key()?);
        }
        if keys.is_empty() {
            return Ok(removed);
        }
        // Not synced: a key that reappears after a power cut is expired and ignored anyway.
        let mut batch = db
            .batch()
            .durability(persist_mode(durability).map(|_| fjall::PersistMode::Buffer));
        for k in &keys {
            batch.remove(dedup, k.clone());
        }
        batch.commit()?;
        removed += keys.len();
        if keys.len() < SWEEP_CHUNK {
            return Ok(removed);
        }
    }
}

/// The `live` keys (pending and dead) of event `id`'s destinations of `fanout` other than
/// `destination` and those filtered out: what still holds its record once `destination` lets
/// it go. Empty (no allocation) for an event with one destination.
fn siblings<'a>(
    route: &str,
    id: Uuid,
    fanout: impl Iterator<Item = (&'a str, bool)>,
    destination: &str,
) -> Vec<fjall::Slice> {
    let mut out = Vec::new();
    for (d, filtered) in fanout {
        if filtered || d == destination {
            continue;
        }
        let lane = crate::store::lane(route, d);
        out.push(live_key(Space::Pending, &lane, id).into());
        out.push(live_key(Space::Dead, &lane, id).into());
    }
    out
}

/// An event's `live` state read with its record: that destination's copy as it stands now.
fn joined(engine: &Engine, live_key: &[u8], state: &[u8]) -> Result<Option<Event>, SpoolError> {
    let Some(id) = keys::id_of(live_key) else {
        return Ok(None);
    };
    let what = id.to_string();
    let Some(record) = engine.record(id)? else {
        return Err(SpoolError::Corrupt(what, "its record is missing".into()));
    };
    let mut event = record::decode(&what, &record)?;
    record::decode_state(&what, state)?.apply(&mut event);
    let destination = keys::route_of(live_key).map_or("", |l| split_lane(l).1);
    Ok(Some(event.for_destination(destination)))
}

/// The summary of a `live` entry, with that destination's state alone (its record's body
/// skipped).
fn live_summary(
    engine: &Engine,
    key: &[u8],
    state: &[u8],
    status: DeliveryStatus,
) -> Result<Option<(EventSummary, Option<fjall::Slice>)>, SpoolError> {
    let Some(id) = keys::id_of(key) else {
        return Ok(None);
    };
    let Some(record) = engine.record(id)? else {
        return Ok(None);
    };
    let destination = keys::route_of(key).map_or(DEFAULT_DESTINATION, |l| split_lane(l).1);
    let state = record::decode_state(&id.to_string(), state)?;
    let states = vec![state.into_destination(destination, status)];
    Ok(Some((summary_of(id, &record, states)?, Some(record))))
}

/// The summary of the event whose record is `record`, its destinations standing at `states`.
fn summary_of(
    id: Uuid,
    record: &[u8],
    states: Vec<DestinationState>,
) -> Result<EventSummary, SpoolError> {
    let what = id.to_string();
    Ok(match record::view(&what, record)? {
        Some(v) => EventSummary {
            id: v.id,
            route: v.route.to_owned(),
            received_ms: v.received_ms,
            client_ip: v.client_ip,
            attempts: states.iter().map(|d| d.attempts).sum(),
            body_bytes: v.body.len(),
            status: DeliveryStatus::overall(&states).unwrap_or(DeliveryStatus::Delivered),
            destinations: states,
            dedup: v.dedup.map(|d| d.key),
        },
        None => EventSummary::with_destinations(&record::decode(&what, record)?, states),
    })
}

/// Where destination `destination` of event `id` of `route` stands, with its state: pending,
/// dead, or delivered (`None`: none of them, a purged dead letter or an append in flight).
fn standing(
    engine: &Engine,
    route: &str,
    destination: &str,
    id: Uuid,
) -> Result<Option<(DeliveryStatus, fjall::Slice)>, SpoolError> {
    let lane = crate::store::lane(route, destination);
    if let Some(v) = engine.live.get(live_key(Space::Pending, &lane, id))? {
        return Ok(Some((DeliveryStatus::Pending, v)));
    }
    if let Some(v) = engine.live.get(live_key(Space::Dead, &lane, id))? {
        return Ok(Some((DeliveryStatus::Dead, v)));
    }
    Ok(engine
        .done
        .get(keys::done_key(id, destination))?
        .map(|v| (DeliveryStatus::Delivered, v)))
}

/// Where each destination of event `id` (of `route`, fanned out as `fanout`) stands; a
/// delivered one only while the history shows it (`visible_from`).
fn states_of(
    engine: &Engine,
    route: &str,
    id: Uuid,
    fanout: &[(&str, bool)],
    visible_from: u64,
) -> Result<Vec<DestinationState>, SpoolError> {
    let what = id.to_string();
    let mut out = Vec::with_capacity(fanout.len());
    for &(destination, filtered) in fanout {
        if filtered {
            if history::retained(id, visible_from) {
                out.push(DestinationState::filtered(destination));
            }
            continue;
        }
        let Some((status, state)) = standing(engine, route, destination, id)? else {
            continue;
        };
        if status == DeliveryStatus::Delivered && !history::retained(id, visible_from) {
            continue;
        }
        let state = record::decode_state(&what, &state)?;
        out.push(state.into_destination(destination, status));
    }
    Ok(out)
}

/// The route and destinations of an encoded record.
fn route_and_fanout(
    what: &str,
    record: &[u8],
) -> Result<(String, Vec<(String, bool)>), SpoolError> {
    Ok(match record::view(what, record)? {
        Some(v) => (
            v.route.to_owned(),
            v.fanout()
                .into_iter()
                .map(|(d, f)| (d.to_owned(), f))
                .collect(),
        ),
        None => {
            let e = record::decode(what, record)?;
            let fanout = e.fanout().map(|(d, f)| (d.to_owned(), f)).collect();
            (e.route, fanout)
        }
    })
}

impl EmbeddedSpool {
    /// Where the history starts now, in Unix milliseconds: delivered events received before it
    /// are past the retention (or were dropped for size or room), gone from queries and
    /// replays even while their tables wait to be dropped.
    pub(super) fn visible_from_ms(&self) -> u64 {
        self.shared.visible_from_ms()
    }

    /// A page of the history, read in this thread (bounded by [`history::SCAN_BUDGET`]).
    fn query(&self, q: &EventQuery) -> Result<EventPage, SpoolError> {
        let engine = self.shared.engine()?;
        let visible_from = self.visible_from_ms();
        let f = &q.filter;
        let (lo_ms, hi_ms) = f.id_window();
        let lo = lo_ms.map(keys::first_id_at).unwrap_or_else(Uuid::nil);
        let hi = hi_ms.map(keys::first_id_at).unwrap_or_else(Uuid::max);
        // The cursor narrows the range on its side, exclusive.
        let (lo, hi, lo_excl, hi_excl) = match (q.after, q.order) {
            (Some(a), Order::Asc) if a >= lo => (a, hi, true, false),
            (Some(a), Order::Desc) if a <= hi => (lo, a, false, true),
            _ => (lo, hi, false, false),
        };
        let mut page = PageBuilder::new(q.limit);
        let bound = |id: Uuid, excl: bool| {
            if excl {
                std::ops::Bound::Excluded(id)
            } else {
                std::ops::Bound::Included(id)
            }
        };
        let (lo_b, hi_b) = (bound(lo, lo_excl), bound(hi, hi_excl));
        // One destination's pending or dead events: its lane's range of `live`, not the whole
        // history (a route's, when it has only its default destination).
        let lane = match (&f.route, &f.destination) {
            (Some(route), Some(d)) => Some(crate::store::lane(route, d).into_owned()),
            (Some(route), None) if !has_other_lanes(&engine, route)? => Some(route.clone()),
            _ => None,
        };
        if let (Some(lane), Some(status @ (DeliveryStatus::Pending | DeliveryStatus::Dead))) =
            (lane, f.status)
        {
            let space = if status == DeliveryStatus::Pending {
                Space::Pending
            } else {
                Space::Dead
            };
            let key = |b: std::ops::Bound<Uuid>| b.map(|id| live_key(space, &lane, id));
            let range = engine.live.range::<Vec<u8>, _>((key(lo_b), key(hi_b)));
            let mut scan = |kv: fjall::Guard| -> Result<bool, SpoolError> {
                let k = kv.key()?;
                let Some(id) = keys::id_of(&k) else {
                    return Ok(true);
                };
                let matched = match self.summary(&engine, id, f, visible_from) {
                    Ok(m) => m,
                    Err(e @ SpoolError::Corrupt(..)) => {
                        tracing::warn!(event_id = %id, error = %e, "an event in the history cannot be read: left out of the query");
                        None
                    }
                    Err(e) => return Err(e),
                };
                Ok(page.offer(id, matched))
            };
            let ran_out = match q.order {
                Order::Asc => drive(range, &mut scan)?,
                Order::Desc => drive(range.rev(), &mut scan)?,
            };
            return Ok(page.finish(ran_out));
        }
        // Everything else: the records in id order, with those retention moved to `kept`.
        let key = |b: std::ops::Bound<Uuid>| b.map(keys::record_key);
        let events = engine.events.range((key(lo_b), key(hi_b)));
        let kept = engine.kept.range((key(lo_b), key(hi_b)));
        let mut scan = |kv: (fjall::Slice, fjall::Slice)| -> Result<bool, SpoolError> {
            let (k, record) = kv;
            let Some(id) = keys::id_of(&k) else {
                return Ok(true);
            };
            let matched = match self.summary_of_record(&engine, id, &record, f, visible_from) {
                Ok(m) => m,
                // A record this release cannot read is passed over, not the page's end.
                Err(e @ SpoolError::Corrupt(..)) => {
                    tracing::warn!(event_id = %id, error = %e, "an event in the history cannot be read: left out of the query");
                    None
                }
                Err(e) => return Err(e),
            };
            Ok(page.offer(id, matched))
        };
        let ran_out = match q.order {
            Order::Asc => drive(merged(events, kept, false), &mut scan)?,
            Order::Desc => drive(merged(events.rev(), kept.rev(), true), &mut scan)?,
        };
        Ok(page.finish(ran_out))
    }

    /// Event `id`'s summary if it passes `f` (its record read from `events` or `kept`).
    fn summary(
        &self,
        engine: &Engine,
        id: Uuid,
        f: &EventFilter,
        visible_from: u64,
    ) -> Result<Option<EventSummary>, SpoolError> {
        match engine.record(id)? {
            Some(record) => self.summary_of_record(engine, id, &record, f, visible_from),
            None => Ok(None),
        }
    }

    /// The summary of event `id`, whose record is `record`, if it passes `f`.
    fn summary_of_record(
        &self,
        engine: &Engine,
        id: Uuid,
        record: &[u8],
        f: &EventFilter,
        visible_from: u64,
    ) -> Result<Option<EventSummary>, SpoolError> {
        let what = id.to_string();
        let (route, fanout) = route_and_fanout(&what, record)?;
        if f.route.as_deref().is_some_and(|r| r != route) {
            return Ok(None);
        }
        let fanout: Vec<(&str, bool)> = fanout.iter().map(|(d, x)| (d.as_str(), *x)).collect();
        let states = states_of(engine, &route, id, &fanout, visible_from)?;
        if states.is_empty() || !f.admits_destinations(&states) {
            return Ok(None);
        }
        let s = summary_of(id, record, states)?;
        Ok(admits(f, &s, record)?.then_some(s))
    }

    /// Event `id`, whole, and where each destination stands.
    fn event_now(&self, id: Uuid) -> Result<Option<EventDetail>, SpoolError> {
        let engine = self.shared.engine()?;
        let Some(record) = engine.record(id)? else {
            return Ok(None);
        };
        let what = id.to_string();
        let event = record::decode(&what, &record)?;
        let fanout: Vec<(&str, bool)> = event.fanout().collect();
        let states = states_of(&engine, &event.route, id, &fanout, self.visible_from_ms())?;
        if states.is_empty() {
            return Ok(None);
        }
        Ok(Some(EventDetail {
            event: event.clone(),
            destinations: states,
        }))
    }
}

/// Whether `route` has a destination other than its default one with an event pending or dead.
fn has_other_lanes(engine: &Engine, route: &str) -> Result<bool, SpoolError> {
    for space in [Space::Pending, Space::Dead] {
        let mut prefix = keys::space_prefix(space).to_vec();
        prefix.extend_from_slice(route.as_bytes());
        prefix.push(crate::store::LANE_SEPARATOR as u8);
        if engine.live.prefix(prefix).next().is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether summary `s` (of `record`) passes `f`.
fn admits(f: &EventFilter, s: &EventSummary, record: &[u8]) -> Result<bool, SpoolError> {
    if !f.admits(&s.route, s.received_ms, s.dedup.as_ref()) {
        return Ok(false);
    }
    if f.matches.is_empty() {
        return Ok(true);
    }
    let what = s.id.to_string();
    Ok(match record::view(&what, record)? {
        Some(v) => f.matches_body(v.body),
        None => f.matches_body(&record::decode(&what, record)?.body),
    })
}

/// Feeds `items` to `scan` until it says stop; returns whether the items ran out first.
fn drive<I, T>(
    items: I,
    scan: &mut impl FnMut(T) -> Result<bool, SpoolError>,
) -> Result<bool, SpoolError>
where
    I: Iterator<Item = T>,
{
    for item in items {
        if !scan(item)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Two keyspace ranges read as one, in key order (descending if `desc`); a key in both comes
/// once (a record retention copied to `kept` before its table was dropped).
fn merged<A, B>(a: A, b: B, desc: bool) -> impl Iterator<Item = (fjall::Slice, fjall::Slice)>
where
    A: Iterator<Item = fjall::Guard>,
    B: Iterator<Item = fjall::Guard>,
{
    let pair = |kv: fjall::Guard| kv.into_inner().ok();
    let mut a = a.filter_map(pair).peekable();
    let mut b = b.filter_map(pair).peekable();
    std::iter::from_fn(move || {
        let take_a = match (a.peek(), b.peek()) {
            (None, None) => return None,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((ka, _)), Some((kb, _))) => {
                if ka == kb {
                    b.next();
                    true
                } else {
                    (ka < kb) != desc
                }
            }
        };
        if take_a {
            a.next()
        } else {
            b.next()
        }
    })
}

impl Spool for EmbeddedSpool {
    fn append(&self, event: &Event) -> Completion {
        let s = &*self.shared;
        // A failed store answers at once: nothing waits on a write that is failing.
        if let Some(refused) = s.refusal() {
            return Completion::ready(Err(refused));
        }
        let record = match record::encode(event) {
            Ok(v) => v,
            Err(e) => return Completion::ready(Err(e)),
        };
        let size = record.len() as u64;
        let state = match record::encode_state(event, size as u32, 0) {
            Ok(v) => v,
            Err(e) => return Completion::ready(Err(e)),
        };
        let lives: Vec<fjall::Slice> = event
            .delivered_to()
            .map(|d| {
                live_key(
                    Space::Pending,
                    &crate::store::lane(&event.route, d),
                    event.id,
                )
                .into()
            })
            .collect();
        let weight = writer::weight(&lives);
        // Reserve a place in the bounds now so concurrent appends cannot overshoot together; the
        // writer gives it back when the append leaves the queue.
        let queued = s.queued.fetch_add(weight, Ordering::AcqRel) + weight;
        let queued_bytes =
            s.queued_bytes.fetch_add(size * weight, Ordering::AcqRel) + size * weight;
        let held = s.pending_count.load(Ordering::Acquire) + s.dead_count.load(Ordering::Acquire);
        let bytes = s.bytes.load(Ordering::Acquire);
        let full = if held + queued > s.config.max_events {
            Some(format!("{held} events"))
        } else if bytes + queued_bytes > s.config.max_bytes {
            Some(format!("{bytes} bytes"))
        } else if !s.room.fits(queued_bytes) {
            Some(self.room_refusal())
        } else {
            None
        };
        let give_back = || {
            s.queued.fetch_sub(weight, Ordering::AcqRel);
            s.queued_bytes.fetch_sub(size * weight, Ordering::AcqRel);
        };
        if let Some(why) = full {
            give_back();
            return Completion::ready(Err(SpoolError::Full(why)));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        // Built as fjall's own buffer here, in the caller's thread: the writer only moves it
        // into the batch, with no copy and no cross-thread free.
        let op = Op::Append {
            id: event.id,
            lives,
            record: record.into(),
            state,
            dedup: event.dedup,
            reply,
        };
        let completion = self.send(op, rx);
        if completion.is_ready() {
            give_back();
        }
        completion
    }

    fn get(&self, lane: &str, id: Uuid) -> Result<Option<Event>, SpoolError> {
        let engine = self.shared.engine()?;
        let key = live_key(Space::Pending, lane, id);
        match engine.live.get(&key)? {
            Some(state) => joined(&engine, &key, &state),
            None => Ok(None),
        }
    }

    fn delivered(&self, event: &Event) -> Completion {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.defer_delete(event, Some(reply));
        Completion::waiting(rx)
    }

    fn forget_delivered(&self, event: &Event) {
        self.defer_delete(event, None);
    }

    fn reschedule(&self, event: &Event) -> Completion {
        let state = match self.bookkeeping_state(event) {
            Ok(state) => state,
            Err(e) => return Completion::ready(Err(e)),
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(
            Op::Rewrite {
                live: live_key(Space::Pending, &event.lane(), event.id).into(),
                state,
                reply,
            },
            rx,
        )
    }

    fn dead_letter(&self, event: &Event) -> Completion {
        let (lane, id) = (event.lane(), event.id);
        self.move_event(
            live_key(Space::Pending, &lane, id),
            live_key(Space::Dead, &lane, id),
            event,
        )
    }

    fn pending(&self) -> Result<Vec<Event>, SpoolError> {
        let engine = self.shared.engine()?;
        let mut out = Vec::new();
        for kv in engine.live.prefix(keys::space_prefix(Space::Pending)) {
            let (k, v) = kv.into_inner()?;
            out.extend(joined(&engine, &k, &v)?);
        }
        Ok(out)
    }

    fn pending_schedule(&self, lane: &str) -> Result<Vec<(Uuid, u64)>, SpoolError> {
        let engine = self.shared.engine()?;
        engine
            .live
            .prefix(live_prefix(Space::Pending, lane))
            .filter_map(|kv| {
                let (k, v) = match kv.into_inner() {
                    Ok(kv) => kv,
                    Err(e) => return Some(Err(e.into())),
                };
                let id = keys::id_of(&k)?;
                Some(record::decode_state(&id.to_string(), &v).map(|s| (id, s.next_attempt_ms)))
            })
            .collect()
    }

    fn dedup_keys(&self) -> Result<Vec<DedupRecord>, SpoolError> {
        let from = now_ms().saturating_add(1).to_be_bytes();
        let engine = self.shared.engine()?;
        engine
            .dedup
            .range(from..)
            .filter_map(|kv| match kv.into_inner() {
                Ok((k, _)) => decode_dedup_key(&k).map(Ok),
                Err(e) => Some(Err(e.into())),
            })
            .collect()
    }

    fn dead_letters(
        &self,
        lane: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<EventSummary>, SpoolError> {
        let end = live_key(Space::Dead, lane, Uuid::max());
        let range = match after {
            Some(id) => (
                std::ops::Bound::Excluded(live_key(Space::Dead, lane, id)),
                std::ops::Bound::Included(end),
            ),
            None => (
                std::ops::Bound::Included(live_prefix(Space::Dead, lane)),
                std::ops::Bound::Included(end),
            ),
        };
        let engine = self.shared.engine()?;
        let mut out = Vec::new();
        for kv in engine.live.range(range) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv.into_inner()?;
            if let Some((s, _)) = live_summary(&engine, &k, &v, DeliveryStatus::Dead)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    fn get_dead(&self, lane: &str, id: Uuid) -> Result<Option<Event>, SpoolError> {
        let engine = self.shared.engine()?;
        let key = live_key(Space::Dead, lane, id);
        match engine.live.get(&key)? {
            Some(state) => joined(&engine, &key, &state),
            None => Ok(None),
        }
    }

    fn revive(&self, lane: &str, id: Uuid) -> Completion<Event> {
        let mut event = match self.get_dead(lane, id) {
            Ok(Some(e)) => e,
            Ok(None) => return Completion::ready(Err(SpoolError::NotFound(id))),
            Err(e) => return Completion::ready(Err(e)),
        };
        event.replay_now();
        // The writer moves it only if it is still a dead letter: of two concurrent replays of
        // one event, the second answers NotFound.
        let done = self.move_event(
            live_key(Space::Dead, lane, id),
            live_key(Space::Pending, lane, id),
            &event,
        );
        let (tx, out) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(done.await.map(|()| event));
        });
        Completion::waiting(out)
    }

    fn purge(&self, lane: &str, id: Uuid) -> Completion {
        // The record says which other destinations may still hold the event.
        let (route, destination) = split_lane(lane);
        let fanout = match self
            .shared
            .engine()
            .and_then(|e| e.record(id))
            .and_then(|r| match r {
                Some(r) => route_and_fanout(&id.to_string(), &r).map(|(_, f)| f),
                None => Ok(Vec::new()),
            }) {
            Ok(f) => f,
            Err(e) => return Completion::ready(Err(e)),
        };
        let others = fanout
            .iter()
            .filter(|(d, f)| !f && d != destination)
            .count();
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(
            Op::Purge {
                live: live_key(Space::Dead, lane, id).into(),
                done: keys::done_key(id, destination),
                siblings: siblings(
                    route,
                    id,
                    fanout.iter().map(|(d, f)| (d.as_str(), *f)),
                    destination,
                ),
                whole: others == 0,
                reply,
            },
            rx,
        )
    }

    fn events(&self, query: &EventQuery) -> SpoolFuture<'_, EventPage> {
        let (this, query) = (self.clone(), query.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.query(&query))
                .await
                .map_err(|e| SpoolError::Storage(format!("the query stopped: {e}")))?
        })
    }

    fn event(&self, id: Uuid) -> SpoolFuture<'_, Option<EventDetail>> {
        Box::pin(async move { self.event_now(id) })
    }

    fn replay(
        &self,
        id: Uuid,
        destination: &str,
        job: &str,
    ) -> Completion<Option<(Event, DeliveryStatus)>> {
        let detail = match self.event_now(id) {
            Ok(Some(found)) => found,
            Ok(None) => return Completion::ready(Err(SpoolError::NotFound(id))),
            Err(e) => return Completion::ready(Err(e)),
        };
        let Some(state) = detail.destination(destination).cloned() else {
            return Completion::ready(Err(SpoolError::NotFound(id)));
        };
        let status = state.status;
        let mut event = detail.event.for_destination(destination);
        state.apply(&mut event);
        // Replayed by this very job already (a job resumed after a crash, or run twice).
        if event.replay.as_deref() == Some(job)
            || event.history.last().and_then(|a| a.replay.as_deref()) == Some(job)
        {
            return Completion::ready(Ok(None));
        }
        event.replay_now();
        event.replay = Some(job.to_owned());
        let (lane, id) = (event.lane().into_owned(), event.id);
        let done = match status {
            DeliveryStatus::Pending | DeliveryStatus::Filtered => {
                return Completion::ready(Ok(None))
            }
            DeliveryStatus::Dead => self.move_event(
                live_key(Space::Dead, &lane, id),
                live_key(Space::Pending, &lane, id),
                &event,
            ),
            DeliveryStatus::Delivered => {
                let state = match self.bookkeeping_state(&event) {
                    Ok(state) => state,
                    Err(e) => return Completion::ready(Err(e)),
                };
                let (reply, rx) = tokio::sync::oneshot::channel();
                self.send(
                    Op::Replay {
                        id,
                        live: live_key(Space::Pending, &lane, id).into(),
                        state,
                        reply,
                    },
                    rx,
                )
            }
        };
        let (tx, out) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(done.await.map(|()| Some((event, status))));
        });
        Completion::waiting(out)
    }

    fn retained(&self) -> SpoolFuture<'_, Vec<(String, u64)>> {
        let from = self.visible_from_ms() / 60_000;
        let mut counts: Vec<(String, u64)> = lock(&self.shared.tally)
            .iter()
            .map(|(route, minutes)| (route.clone(), minutes.range(from..).map(|(_, n)| n).sum()))
            .collect();
        counts.sort();
        Box::pin(async move { Ok(counts) })
    }

    fn meta_get(&self, key: &str) -> SpoolFuture<'_, Option<Vec<u8>>> {
        let got = self
            .shared
            .engine()
            .and_then(|e| Ok(e.meta.get(keys::meta_record(key))?))
            .map(|v| v.map(|v| v.to_vec()));
        Box::pin(async move { got })
    }

    fn meta_put(&self, key: &str, value: Option<Vec<u8>>) -> Completion {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(
            Op::Meta {
                key: keys::meta_record(key),
                value,
                reply,
            },
            rx,
        )
    }

    fn meta_list(&self, prefix: &str) -> SpoolFuture<'_, Vec<(String, Vec<u8>)>> {
        let listed = self.shared.engine().and_then(|e| {
            e.meta
                .prefix(keys::meta_record(prefix))
                .map(|kv| {
                    let (k, v) = kv.into_inner()?;
                    let key = String::from_utf8_lossy(&k[2..]).into_owned();
                    Ok((key, v.to_vec()))
                })
                .collect()
        });
        Box::pin(async move { listed })
    }

    fn meta_add(&self, key: &str, by: i64) -> Completion<i64> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(
            Op::MetaAdd {
                key: keys::meta_counter(key),
                by,
                reply,
            },
            rx,
        )
    }

    fn meta_counter(&self, key: &str) -> SpoolFuture<'_, i64> {
        let got = self
            .shared
            .engine()
            .and_then(|e| writer::read_counter(&e.meta, &keys::meta_counter(key)));
        Box::pin(async move { got })
    }

    fn probe(&self) -> Completion {
        // Ready means new events are stored: not while they are refused.
        if let Some(refused) = self.shared.refusal() {
            return Completion::ready(Err(refused));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(Op::Probe { reply }, rx)
    }

    fn stats(&self) -> SpoolStats {
        let s = &self.shared;
        SpoolStats {
            pending: s.pending_count.load(Ordering::Acquire),
            dead: s.dead_count.load(Ordering::Acquire),
            bytes: s.bytes.load(Ordering::Acquire),
            syncs: s.syncs.load(Ordering::Acquire),
        }
    }

    fn health(&self) -> StoreHealth {
        let s = &self.shared;
        let refusing = match s.refusal() {
            Some(e) => Some(e.to_string()),
            None if !s.room.fits(s.queued_bytes.load(Ordering::Acquire)) => {
                Some(self.room_refusal())
            }
            None => None,
        };
        StoreHealth {
            refusing,
            free_bytes: s.room.free(),
            min_free_bytes: s.room.is_measured().then_some(s.room.min_free),
            headroom_bytes: s.room.is_measured().then(|| s.room.headroom()),
            reopened: s.reopened.load(Ordering::Acquire),
            rebuilt: s.rebuilt.load(Ordering::Acquire),
        }
    }

    fn sweep_expired_keys(&self) -> Completion<usize> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(Op::Sweep { reply: Some(reply) }, rx)
    }

    fn oldest_pending_ms(&self, lane: &str) -> Option<u64> {
        let route = lane;
        let (generation, hint) = {
            let h = lock(&self.shared.oldest_hint);
            (h.generation, h.by_route.get(route).copied())
        };
        let start = live_key(Space::Pending, route, hint.unwrap_or_else(Uuid::nil));
        let end = live_key(Space::Pending, route, Uuid::max());
        let engine = self.shared.engine().ok()?;
        let key = engine.live.range(start..=end).next()?.key().ok()?;
        let id = keys::id_of(&key)?;
        {
            let mut h = lock(&self.shared.oldest_hint);
            if h.generation == generation {
                h.by_route.insert(route.to_owned(), id);
            }
        }
        id_ms(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::DedupKey;
    use crate::store::history::EventQuery;

    fn event() -> Event {
        Event::new(
            "r",
            "127.0.0.1".parse().unwrap(),
            "POST",
            "/w",
            vec![],
            bytes::Bytes::from_static(b"{}"),
        )
    }

    #[tokio::test]
    async fn a_readiness_probe_is_synced_like_an_append() {
        let dir = tempfile::tempdir().unwrap();
        let spool = EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap();
        let before = spool.stats().syncs;
        spool.probe().await.unwrap();
        assert_eq!(
            spool.stats().syncs,
            before + 1,
            "the probe reached the disk"
        );
        // Bookkeeping is not synced (a lost record means one repeat delivery).
        let e = event();
        spool.append(&e).await.unwrap();
        let synced = spool.stats().syncs;
        spool.reschedule(&e).await.unwrap();
        assert_eq!(spool.stats().syncs, synced);
    }

    #[tokio::test]
    async fn below_the_headroom_appends_stop_and_deliveries_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (event(), event());
        {
            let spool =
                EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap();
            spool.append(&a).await.unwrap();
            spool.append(&b).await.unwrap();
        }
        // A headroom beyond what the disk has free: the spool is short of room at once.
        let (free, total) = disk::statvfs(dir.path()).unwrap();
        let headroom = (free + (256 << 20)).min(total - 1);
        let spool = EmbeddedSpool::open(
            SpoolConfig::new(dir.path(), Durability::Fsync).with_min_free(Some(headroom)),
        )
        .unwrap();
        let r = spool.append(&event()).await;
        assert!(
            matches!(r, Err(SpoolError::Full(_))),
            "{r:?} {:?}",
            spool.health()
        );
        // The deliveries' bookkeeping goes on within half the headroom (the unit tests of
        // `Room` show where it stops): a retry's schedule, a dead letter, a removal.
        spool.reschedule(&a).await.unwrap();
        spool.dead_letter(&a).await.unwrap();
        spool.delivered(&b).await.unwrap();
        assert_eq!((spool.stats().pending, spool.stats().dead), (0, 1));
        assert!(spool.health().refusing.is_some());
    }

    #[tokio::test]
    async fn many_expired_keys_are_swept_in_chunks() {
        let spool = EmbeddedSpool::open(SpoolConfig::new("", Durability::Memory)).unwrap();
        let n = SWEEP_CHUNK * 2 + 10;
        for i in 0..n {
            let e = event().with_dedup(DedupKey::from_u128(i as u128), now_ms().saturating_sub(1));
            spool.append(&e).await.unwrap();
        }
        let live = event().with_dedup(DedupKey::from_u128(u128::MAX), now_ms() + 60_000);
        spool.append(&live).await.unwrap();
        assert_eq!(spool.sweep_expired_keys().await.unwrap(), n);
        assert_eq!(spool.dedup_keys().unwrap(), [live.dedup.unwrap()]);
    }

    /// Flushes the history's memtables into tables (what a long-running spool has).
    fn flush_history(spool: &EmbeddedSpool) {
        let engine = spool.shared.engine().unwrap();
        for ks in [&engine.events, &engine.done, &engine.live] {
            ks.rotate_memtable_and_wait().unwrap();
        }
    }

    /// One retention pass, as the retention thread runs it.
    async fn retention_pass(spool: &EmbeddedSpool) -> u64 {
        let (s, tx) = (spool.shared.clone(), spool.tx.clone());
        tokio::task::spawn_blocking(move || retention::pass(&s, &tx))
            .await
            .unwrap()
            .unwrap()
    }

    /// Delivered events past the retention leave by whole tables; the records of the pending
    /// and dead events in those tables are copied to `kept` first, and read from there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_drops_whole_tables_and_keeps_the_live_records() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig::new(dir.path(), Durability::Fsync)
            .with_retention(Duration::from_millis(300), None);
        let spool = EmbeddedSpool::open(config).unwrap();
        let mut events = Vec::new();
        for _ in 0..300 {
            let mut e = event();
            e.body = bytes::Bytes::from(vec![b'x'; 1000]);
            spool.append(&e).await.unwrap();
            events.push(e);
        }
        for e in &events[..250] {
            spool.delivered(e).await.unwrap();
        }
        for e in &events[250..275] {
            spool.dead_letter(e).await.unwrap();
        }
        flush_history(&spool);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let engine = spool.shared.engine().unwrap();
        let before = engine.history_bytes();
        let dropped = retention_pass(&spool).await;
        assert!(dropped > 0, "no table dropped ({before} bytes of history)");
        assert_eq!(engine.kept.iter().count(), 50, "the live records kept");
        assert_eq!(engine.events.iter().count(), 0, "the table dropped whole");
        // Every live event still reads whole; the query finds them and nothing else.
        for e in &events[250..275] {
            assert_eq!(spool.get_dead("r", e.id).unwrap().unwrap().body, e.body);
        }
        for e in &events[275..] {
            assert_eq!(spool.get("r", e.id).unwrap().unwrap().body, e.body);
        }
        let page = spool.events(&EventQuery::default()).await.unwrap();
        assert_eq!(page.events.len(), 50);
        assert_eq!((spool.stats().pending, spool.stats().dead), (25, 25));
        // Delivered, a kept event leaves `kept`; a second pass finds nothing more to drop.
        spool.delivered(&events[299]).await.unwrap();
        assert_eq!(engine.kept.iter().count(), 49);
        assert_eq!(retention_pass(&spool).await, 0);
        // And after a restart, the counts and the records are as they were.
        drop(engine);
        drop(spool);
        let spool = EmbeddedSpool::open(
            SpoolConfig::new(dir.path(), Durability::Fsync)
                .with_retention(Duration::from_millis(300), None),
        )
        .unwrap();
        assert_eq!((spool.stats().pending, spool.stats().dead), (24, 25));
        assert_eq!(spool.pending().unwrap().len(), 24);
    }

    /// Past `retention_max_size`, the oldest delivered events go first, whatever their age.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_its_size_the_oldest_history_goes_first() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig::new(dir.path(), Durability::Fsync)
            .with_retention(Duration::from_secs(3600), Some(1));
        let spool = EmbeddedSpool::open(config).unwrap();
        let mut events = Vec::new();
        for _ in 0..100 {
            let mut e = event();
            e.body = bytes::Bytes::from(vec![b'x'; 1000]);
            spool.append(&e).await.unwrap();
            spool.delivered(&e).await.unwrap();
            events.push(e);
        }
        flush_history(&spool);
        assert!(retention_pass(&spool).await > 0);
        let page = spool.events(&EventQuery::default()).await.unwrap();
        assert!(
            page.events.len() < 100,
            "{} events left of 100",
            page.events.len()
        );
        if let Some(first) = page.events.first() {
            assert!(first.id > events[0].id, "the oldest went first");
        }
    }

    /// A spool of layout 1 (before the event history): whole version 1 events in `pending` and `dead`,
    /// keyed by route then id, and the first releases' dead letters keyed by id alone.
    #[tokio::test]
    async fn a_spool_of_layout_1_moves_into_layout_2_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (pending, dead, old_dead) = (event(), event(), event());
        let mut dead = dead;
        dead.attempts = 3;
        dead.record_outcome("status 400".into());
        {
            let db = fjall::Database::builder(engine::engine_dir(dir.path()))
                .open()
                .unwrap();
            let ks = |name| {
                db.keyspace(name, fjall::KeyspaceCreateOptions::default)
                    .unwrap()
            };
            let key = |e: &Event| [b"r\0".as_slice(), e.id.as_bytes()].concat();
            ks("pending")
                .insert(key(&pending), record::encode_v1(&pending))
                .unwrap();
            ks("dead")
                .insert(key(&dead), record::encode_v1(&dead))
                .unwrap();
            ks("dead")
                .insert(old_dead.id.as_bytes(), record::encode_v1(&old_dead))
                .unwrap();
            db.persist(fjall::PersistMode::SyncAll).unwrap();
        }
        let spool = EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap();
        assert_eq!((spool.stats().pending, spool.stats().dead), (1, 2));
        assert_eq!(spool.get("r", pending.id).unwrap(), Some(pending.clone()));
        let read = spool.get_dead("r", dead.id).unwrap().unwrap();
        assert_eq!(
            (read.id, read.attempts, &read.body),
            (dead.id, 3, &dead.body)
        );
        assert_eq!(read.history[0].status, Some(400));
        assert_eq!(spool.dead_letters("r", None, 10).unwrap().len(), 2);
        // The old keyspaces are gone, and a second open finds nothing to move.
        drop(spool);
        let spool = EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap();
        assert_eq!((spool.stats().pending, spool.stats().dead), (1, 2));
        spool.delivered(&pending).await.unwrap();
        assert_eq!(spool.stats().pending, 0);
    }
}
