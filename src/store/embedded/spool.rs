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
use super::keys::{self, decode, decode_dedup_key, encode, event_key, route_prefix};
use super::writer::{self, DeferredDelete, Op, Space, MAX_GROUP, SWEEP_CHUNK};
use crate::store::event::{id_ms, now_ms, DedupRecord, Event};
use crate::store::spool::{
    Completion, Durability, EventSummary, Spool, SpoolError, SpoolStats, StoreHealth,
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
}

/// The smallest [`SpoolConfig::memory`]: the engine needs a write buffer of 1 MiB at least.
pub const MIN_MEMORY: u64 = 4 << 20;

impl SpoolConfig {
    /// A spool in `path` with `durability`, bounded at 1,000,000 events and 1 GiB, lingering
    /// 100 µs for concurrent appends, using 32 MiB of memory, keeping the default free space
    /// and retrying a failed write after 1 s.
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
        }
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

    /// Counts what the engine holds: (pending, dead, bytes).
    pub(super) fn count(engine: &Engine) -> Result<(u64, u64, u64), SpoolError> {
        let (mut pending, mut dead, mut bytes) = (0u64, 0u64, 0u64);
        for kv in engine.pending.iter() {
            let (_, v) = kv.into_inner()?;
            pending += 1;
            bytes += v.len() as u64;
        }
        for kv in engine.dead.iter() {
            let (_, v) = kv.into_inner()?;
            dead += 1;
            bytes += v.len() as u64;
        }
        Ok((pending, dead, bytes))
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
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held for the spool's life: one process at a time rebuilds or recovers its directory.
    /// (The file stays when it closes: removing it would race with a process taking it.)
    _lock: std::fs::File,
    _tempdir: Option<tempfile::TempDir>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        // The sender side is dropped with the last EmbeddedSpool clone before this guard (field
        // order), so the writer drains its queue and exits.
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
        rekey_legacy_dead_letters(&engine, config.durability)?;
        sweep_at_open(&engine, config.durability)?;
        let (pending_count, dead_count, bytes) = Shared::count(&engine)?;
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
        });
        // Bounded so a stalled disk pushes back on appends instead of growing memory.
        let (tx, rx) = mpsc::sync_channel(MAX_GROUP * 4);
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hookgate-spool".into())
            .spawn(move || writer::run(writer_shared, rx))
            .map_err(|e| SpoolError::Storage(format!("cannot start the spool writer: {e}")))?;
        Ok(Self {
            shared,
            tx,
            _writer: Arc::new(WriterGuard {
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

    /// Queues the removal of a delivered event for the writer's next batch.
    fn defer_delete(
        &self,
        event: &Event,
        reply: Option<tokio::sync::oneshot::Sender<Result<(), SpoolError>>>,
    ) {
        let s = &self.shared;
        lock(&s.deferred).push((event_key(&event.route, event.id).into(), reply));
        // Only a writer asleep with nothing to do needs waking; a busy one takes the removal with
        // its next batch. A closed queue needs nothing: the writer drains removals before exiting.
        if s.writer_idle.swap(false, Ordering::SeqCst) {
            let _ = self.tx.try_send(Op::Deferred);
        }
    }

    fn move_event(
        &self,
        from: (Space, Vec<u8>),
        to: (Space, Vec<u8>),
        event: &Event,
    ) -> Completion {
        let value = match encode(event) {
            Ok(v) => v,
            Err(e) => return Completion::ready(Err(e)),
        };
        if let Some(refused) = self.whole_record_refused(value.len()) {
            return Completion::ready(Err(refused));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(
            Op::Move {
                from: (from.0, from.1.into()),
                to: (to.0, to.1.into()),
                value: value.into(),
                reply,
            },
            rx,
        )
    }
}

/// Dead letters were keyed by id alone before 0.2; they are keyed by route, then id, now.
fn rekey_legacy_dead_letters(engine: &Engine, durability: Durability) -> Result<(), SpoolError> {
    let dead = &engine.dead;
    let mut batch = engine.db.batch().durability(persist_mode(durability));
    let mut moved = 0usize;
    for kv in dead.iter() {
        let (k, v) = kv.into_inner()?;
        if k.len() == 16 {
            let event = decode(&v)?;
            batch.remove(dead, k);
            batch.insert(dead, event_key(&event.route, event.id), v);
            moved += 1;
        }
    }
    if moved > 0 {
        batch.commit()?;
        tracing::info!(moved, "dead letters re-keyed by route");
    }
    Ok(())
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

impl Spool for EmbeddedSpool {
    fn append(&self, event: &Event) -> Completion {
        let s = &*self.shared;
        // A failed store answers at once: nothing waits on a write that is failing.
        if let Some(refused) = s.refusal() {
            return Completion::ready(Err(refused));
        }
        let value = match encode(event) {
            Ok(v) => v,
            Err(e) => return Completion::ready(Err(e)),
        };
        let size = value.len() as u64;
        // Reserve a place in the bounds now so concurrent appends cannot overshoot together; the
        // writer gives it back when the append leaves the queue.
        let queued = s.queued.fetch_add(1, Ordering::AcqRel) + 1;
        let queued_bytes = s.queued_bytes.fetch_add(size, Ordering::AcqRel) + size;
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
            s.queued.fetch_sub(1, Ordering::AcqRel);
            s.queued_bytes.fetch_sub(size, Ordering::AcqRel);
        };
        if let Some(why) = full {
            give_back();
            return Completion::ready(Err(SpoolError::Full(why)));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        // Built as fjall's own buffer here, in the caller's thread: the writer only moves it
        // into the batch, with no copy and no cross-thread free.
        let op = Op::Append {
            key: event_key(&event.route, event.id).into(),
            value: value.into(),
            dedup: event.dedup,
            reply,
        };
        let completion = self.send(op, rx);
        if completion.is_ready() {
            give_back();
        }
        completion
    }

    fn get(&self, route: &str, id: Uuid) -> Result<Option<Event>, SpoolError> {
        match self.shared.engine()?.pending.get(event_key(route, id))? {
            Some(v) => decode(&v).map(Some),
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
        let value = match encode(event) {
            Ok(v) => v,
            Err(e) => return Completion::ready(Err(e)),
        };
        if let Some(refused) = self.whole_record_refused(value.len()) {
            return Completion::ready(Err(refused));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(
            Op::Rewrite {
                key: event_key(&event.route, event.id).into(),
                value: value.into(),
                reply,
            },
            rx,
        )
    }

    fn dead_letter(&self, event: &Event) -> Completion {
        let key = event_key(&event.route, event.id);
        self.move_event((Space::Pending, key.clone()), (Space::Dead, key), event)
    }

    fn pending(&self) -> Result<Vec<Event>, SpoolError> {
        let engine = self.shared.engine()?;
        engine
            .pending
            .iter()
            .map(|kv| decode(&kv.into_inner()?.1))
            .collect()
    }

    fn pending_schedule(&self, route: &str) -> Result<Vec<(Uuid, u64)>, SpoolError> {
        let engine = self.shared.engine()?;
        engine
            .pending
            .prefix(route_prefix(route))
            .map(|kv| {
                let e = decode(&kv.into_inner()?.1)?;
                Ok((e.id, e.next_attempt_ms))
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
        route: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<EventSummary>, SpoolError> {
        let end = event_key(route, Uuid::max());
        let range = match after {
            Some(id) => (
                std::ops::Bound::Excluded(event_key(route, id)),
                std::ops::Bound::Included(end),
            ),
            None => (
                std::ops::Bound::Included(route_prefix(route)),
                std::ops::Bound::Included(end),
            ),
        };
        let engine = self.shared.engine()?;
        engine
            .dead
            .range(range)
            .take(limit)
            .map(|kv| keys::summary(&kv.into_inner()?.1))
            .collect()
    }

    fn get_dead(&self, route: &str, id: Uuid) -> Result<Option<Event>, SpoolError> {
        match self.shared.engine()?.dead.get(event_key(route, id))? {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }

    fn revive(&self, route: &str, id: Uuid) -> Completion<Event> {
        let mut event = match self.get_dead(route, id) {
            Ok(Some(e)) => e,
            Ok(None) => return Completion::ready(Err(SpoolError::NotFound(id))),
            Err(e) => return Completion::ready(Err(e)),
        };
        event.replay_now();
        let key = event_key(route, id);
        // The writer moves it only if it is still a dead letter: of two concurrent replays of
        // one event, the second answers NotFound.
        let done = self.move_event((Space::Dead, key.clone()), (Space::Pending, key), &event);
        let (tx, out) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(done.await.map(|()| event));
        });
        Completion::waiting(out)
    }

    fn purge(&self, route: &str, id: Uuid) -> Completion {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(
            Op::Purge {
                key: event_key(route, id).into(),
                reply,
            },
            rx,
        )
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

    fn oldest_pending_ms(&self, route: &str) -> Option<u64> {
        let (generation, hint) = {
            let h = lock(&self.shared.oldest_hint);
            (h.generation, h.by_route.get(route).copied())
        };
        let start = event_key(route, hint.unwrap_or_else(Uuid::nil));
        let end = event_key(route, Uuid::max());
        let engine = self.shared.engine().ok()?;
        let (key, _) = engine
            .pending
            .range(start..=end)
            .next()?
            .into_inner()
            .ok()?;
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

    #[tokio::test]
    async fn dead_letters_keyed_by_id_alone_are_rekeyed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let e = event();
        {
            // As releases before 0.2 wrote them.
            let db = fjall::Database::builder(dir.path()).open().unwrap();
            let dead = db
                .keyspace("dead", fjall::KeyspaceCreateOptions::default)
                .unwrap();
            dead.insert(e.id.as_bytes(), encode(&e).unwrap()).unwrap();
            db.persist(fjall::PersistMode::SyncAll).unwrap();
        }
        let spool = EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap();
        assert_eq!(spool.stats().dead, 1);
        assert_eq!(spool.get_dead("r", e.id).unwrap(), Some(e.clone()));
        assert_eq!(spool.dead_letters("r", None, 10).unwrap().len(), 1);
    }
}
