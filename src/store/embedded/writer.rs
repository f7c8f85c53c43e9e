//! The embedded spool's one writer thread: takes what is queued, writes it as one batch, syncs
//! once, answers everyone (group commit). It is the only thread that changes the keyspaces, so it
//! keeps the counts: each write checks what is stored (or was written earlier in the same batch)
//! and the counts change by what the commit actually did, only once it succeeded. A write that
//! finds its event gone changes nothing and answers `NotFound`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use uuid::Uuid;

use super::engine::Engine;
use super::keys::{dedup_key, expired_until, id_of};
use super::recovery::{fail, rebuild, recover, wants_rebuild, Failure, Owed, Rebuilt, Why};
use super::spool::{lock, persist_mode, Shared};
use crate::store::event::DedupRecord;
use crate::store::spool::{Durability, SpoolError};

/// The most operations committed together.
pub(super) const MAX_GROUP: usize = 4096;
/// The most expired dedup keys removed in one batch: a sweep never holds the writer for long.
pub(super) const SWEEP_CHUNK: usize = 1024;
/// How often the writer sweeps expired dedup keys.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// How long removals of delivered events wait for a batch of appends to join.
const DEFER_FOR: Duration = Duration::from_millis(5);
/// How often the disk is measured while the writer commits (in between, what it commits is
/// taken off the last measure).
const MEASURE_BUSY: Duration = Duration::from_millis(10);
/// How often the disk is measured while nothing is written (free space comes back from
/// deliveries' removals, compactions, other processes).
const MEASURE_IDLE: Duration = Duration::from_millis(50);

pub(super) type Reply<T = ()> = oneshot::Sender<Result<T, SpoolError>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Space {
    Pending,
    Dead,
}

pub(super) enum Op {
    /// A new event, counted in `queued` until committed.
    Append {
        key: fjall::Slice,
        value: fjall::Slice,
        dedup: Option<DedupRecord>,
        reply: Reply,
    },
    /// Rewrites a pending event in place (its retry schedule), if still pending.
    Rewrite {
        key: fjall::Slice,
        value: fjall::Slice,
        reply: Reply,
    },
    /// Moves an event between spaces, if it is in `from`.
    Move {
        from: (Space, fjall::Slice),
        to: (Space, fjall::Slice),
        value: fjall::Slice,
        reply: Reply,
    },
    /// Deletes a dead letter, if present.
    Purge { key: fjall::Slice, reply: Reply },
    /// Commits nothing, at the spool's full durability.
    Probe { reply: Reply },
    /// Removes the expired dedup keys, a chunk per batch; answers how many.
    Sweep { reply: Option<Reply<usize>> },
    /// Wakes the writer for the deferred removals of delivered events.
    Deferred,
}

/// A delivered event's removal, waiting for the writer's next batch.
pub(super) type DeferredDelete = (fjall::Slice, Option<Reply>);

/// A sweep in progress: the caller to answer, and how many keys so far.
struct Sweeping {
    reply: Option<Reply<usize>>,
    removed: usize,
}

pub(super) fn run(s: Arc<Shared>, rx: mpsc::Receiver<Op>) {
    let Ok(mut engine) = s.engine() else {
        return;
    };
    let mut ops = Vec::with_capacity(MAX_GROUP);
    let mut deletes: Vec<DeferredDelete> = Vec::new();
    let mut open = true;
    let mut sweeping: Option<Sweeping> = None;
    let mut next_sweep = Instant::now() + SWEEP_EVERY;
    // Appends in the last batch that had any: more than one means concurrent senders.
    let mut last_appends = 0;
    let mut measured = Instant::now();
    let mut last_rebuild: Option<Instant> = None;
    // After a failed write: the copy to a fresh directory still owed before new events.
    let mut owed: Option<Owed> = None;
    let linger = match s.config.durability {
        Durability::Fsync => s.config.linger,
        // Without a sync there is nothing to share.
        _ => Duration::ZERO,
    };
    while open {
        let busy = !lock(&s.deferred).is_empty() || sweeping.is_some();
        let next = if busy {
            // Removals (and a sweep's next chunk) wait a little for appends to ride with.
            receive(&rx, DEFER_FOR, &mut open)
        } else {
            // Nothing to do: removals queued from now on must wake this thread.
            s.writer_idle.store(true, Ordering::SeqCst);
            let next = if lock(&s.deferred).is_empty() {
                // Woken at least every MEASURE_IDLE: the disk's free space is kept current
                // while nothing is written too (deliveries elsewhere, another process).
                let wait = next_sweep
                    .saturating_duration_since(Instant::now())
                    .min(MEASURE_IDLE);
                receive(&rx, wait, &mut open)
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
        // A requested sweep starts now (one at a time; a second caller shares the first's run).
        for op in ops.iter_mut() {
            if let Op::Sweep { reply } = op {
                match &mut sweeping {
                    Some(_) => {
                        if let Some(r) = reply.take() {
                            let _ = r.send(Ok(0));
                        }
                    }
                    None => {
                        sweeping = Some(Sweeping {
                            reply: reply.take(),
                            removed: 0,
                        })
                    }
                }
            }
        }
        if sweeping.is_none() && Instant::now() >= next_sweep {
            sweeping = Some(Sweeping {
                reply: None,
                removed: 0,
            });
        }
        let expired = match &sweeping {
            Some(_) => {
                next_sweep = Instant::now() + SWEEP_EVERY;
                expired_chunk(&engine)
            }
            None => Ok(Vec::new()),
        };
        std::mem::swap(&mut deletes, &mut *lock(&s.deferred));
        let appends = count_appends(&ops);
        if appends > 0 {
            last_appends = appends;
        }
        let swept = expired.as_ref().map(Vec::len).unwrap_or(0);
        let mut committed = true;
        let wrote = !ops.is_empty() || !deletes.is_empty() || swept > 0;
        if wrote {
            match commit(
                &s,
                &engine,
                &mut ops,
                &mut deletes,
                expired.as_deref().unwrap_or(&[]),
            ) {
                Ok(bytes) => s.room.committed(bytes),
                Err(failure) => {
                    committed = false;
                    owed.get_or_insert_with(Owed::default)
                        .skip(failure.unwritten);
                    match recover(&s, engine, &rx, &mut ops) {
                        Some(e) => engine = e,
                        // The spool was dropped while its store was failing.
                        None => return,
                    }
                }
            }
        }
        let expired = match (committed, expired) {
            (false, Ok(_)) => Err(SpoolError::Storage("the sweep's commit failed".into())),
            (_, expired) => expired,
        };
        if let Some(sweep) = &mut sweeping {
            if committed {
                sweep.removed += swept;
            }
            let done = match &expired {
                Err(_) => true,
                Ok(keys) => keys.len() < SWEEP_CHUNK,
            };
            if done {
                if let Some(Sweeping { reply, removed }) = sweeping.take() {
                    if let Err(e) = &expired {
                        tracing::warn!(error = %e, "cannot sweep expired dedup keys");
                    } else if removed > 0 {
                        tracing::debug!(removed, "expired dedup keys swept");
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(expired.map(|_| removed));
                    }
                }
            }
        }
        let every = if wrote { MEASURE_BUSY } else { MEASURE_IDLE };
        let measure = if s.room.is_measured() && measured.elapsed() >= every {
            measured = Instant::now();
            engine.measure(&s.path).ok().inspect(|m| s.room.update(m))
        } else {
            None
        };
        // The copy owed since a failed write, tried every `write_retry` until it is done.
        if let Some(o) = &mut owed {
            if o.last_try
                .is_none_or(|t| t.elapsed() >= s.config.write_retry)
            {
                o.last_try = Some(Instant::now());
                match rebuild(&s, engine, Why::Recover(&o.skip)) {
                    Rebuilt::Done(e) => {
                        engine = e;
                        owed = None;
                        s.reopened.fetch_add(1, Ordering::AcqRel);
                        *lock(&s.failure) = None;
                        s.failed.store(false, Ordering::Release);
                        tracing::warn!(path = %s.path.display(), "spool store recovered: copied to a fresh directory, it takes new events again");
                    }
                    Rebuilt::NotNow(e, why) => {
                        engine = e;
                        if o.reported.as_deref() != Some(why.as_str()) {
                            tracing::warn!(path = %s.path.display(), why = %why, retry_ms = s.config.write_retry.as_millis() as u64, "the spool store cannot be copied to a fresh directory yet; new events are refused until it is");
                            o.reported = Some(why);
                        }
                    }
                    Rebuilt::Lost(failure) => {
                        fail(&s, &failure.error);
                        match recover(&s, None, &rx, &mut ops) {
                            Some(e) => engine = e,
                            None => return,
                        }
                    }
                }
            }
        } else if let Some(m) = measure {
            if wants_rebuild(&s, &engine, &m, last_rebuild) {
                last_rebuild = Some(Instant::now());
                match rebuild(&s, engine, Why::Room) {
                    Rebuilt::Done(e) | Rebuilt::NotNow(e, _) => engine = e,
                    Rebuilt::Lost(failure) => {
                        owed.get_or_insert_with(Owed::default);
                        fail(&s, &failure.error);
                        match recover(&s, None, &rx, &mut ops) {
                            Some(e) => engine = e,
                            None => return,
                        }
                    }
                }
            }
        }
    }
    // Stopping before the copy owed was done: the appends answered 503 that the journal may
    // have kept are removed now, where the engine can still write (else they stay, and may be
    // delivered after the restart: at least once, with their own event ids).
    if let Some(o) = owed.filter(|o| !o.skip.pending.is_empty()) {
        let mut batch = engine
            .db
            .batch()
            .durability(persist_mode(s.config.durability));
        for key in &o.skip.pending {
            batch.remove(&engine.pending, key.as_slice());
        }
        for key in &o.skip.dedup {
            batch.remove(&engine.dedup, key.as_slice());
        }
        if let Err(e) = batch.commit() {
            tracing::warn!(error = %e, events = o.skip.pending.len(), "stopping with appends answered 503 possibly in the journal: they may be delivered after the restart");
        }
    }
    // Queue closed: make everything written so far durable before exiting.
    if let Some(mode) = persist_mode(s.config.durability) {
        let _ = engine.db.persist(mode);
    }
}

/// The next op within `wait`, if one comes; `open` turns false when the queue is closed.
fn receive(rx: &mpsc::Receiver<Op>, wait: Duration, open: &mut bool) -> Option<Op> {
    match rx.recv_timeout(wait) {
        Ok(op) => Some(op),
        Err(mpsc::RecvTimeoutError::Timeout) => None,
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            *open = false;
            None
        }
    }
}

/// The next chunk of expired dedup keys (they are one range at the front of the keyspace).
fn expired_chunk(engine: &Engine) -> Result<Vec<fjall::Slice>, SpoolError> {
    let mut keys = Vec::new();
    for kv in engine.dedup.range(..expired_until()).take(SWEEP_CHUNK) {
        keys.push(kv.key()?);
    }
    Ok(keys)
}

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

/// What one batch changes, applied to the counts only once it commits.
#[derive(Default)]
struct Delta {
    pending: i64,
    dead: i64,
    bytes: i64,
    /// Appends (and their bytes) leaving the queue, committed or not.
    dequeued: u64,
    dequeued_bytes: u64,
}

/// The batch being built, and what it has done to each key so far.
struct Batch<'a> {
    engine: &'a Engine,
    batch: fjall::OwnedWriteBatch,
    /// Keys written or removed earlier in this batch: their size now, or `None` when removed.
    touched: HashMap<(Space, fjall::Slice), Option<u64>>,
    delta: Delta,
    /// Records written or removed so far.
    writes: usize,
    /// Bytes of the keys and values written so far (what the journal grows by, about).
    bytes: u64,
    /// Appends in the batch: the key, and the dedup record's key if any.
    appended: Vec<(fjall::Slice, Option<[u8; 24]>)>,
}

impl<'a> Batch<'a> {
    fn keyspace(&self, space: Space) -> &'a fjall::Keyspace {
        let e: &'a Engine = self.engine;
        match space {
            Space::Pending => &e.pending,
            Space::Dead => &e.dead,
        }
    }

    /// The stored size of `key` in `space`, as this batch leaves it so far.
    fn size(&self, space: Space, key: &fjall::Slice) -> Result<Option<u64>, SpoolError> {
        if let Some(size) = self.touched.get(&(space, key.clone())) {
            return Ok(*size);
        }
        Ok(self.keyspace(space).size_of(key)?.map(u64::from))
    }

    fn count(&mut self, space: Space, by: i64) {
        match space {
            Space::Pending => self.delta.pending += by,
            Space::Dead => self.delta.dead += by,
        }
    }

    fn insert(&mut self, space: Space, key: &fjall::Slice, value: &fjall::Slice) {
        let ks = self.keyspace(space);
        self.batch.insert(ks, key.clone(), value.clone());
        self.writes += 1;
        self.bytes += (key.len() + value.len()) as u64;
        self.touched
            .insert((space, key.clone()), Some(value.len() as u64));
    }

    fn remove(&mut self, space: Space, key: &fjall::Slice) {
        let ks = self.keyspace(space);
        self.batch.remove(ks, key.clone());
        self.writes += 1;
        self.bytes += key.len() as u64;
        self.touched.insert((space, key.clone()), None);
    }

    fn not_found(key: &fjall::Slice) -> SpoolError {
        SpoolError::NotFound(id_of(key).unwrap_or_else(Uuid::nil))
    }

    /// Adds `op` to the batch; its own answer if the commit succeeds.
    fn add(&mut self, op: &Op) -> Result<(), SpoolError> {
        match op {
            Op::Append {
                key, value, dedup, ..
            } => {
                let size = value.len() as u64;
                self.insert(Space::Pending, key, value);
                let dedup = dedup.map(|d| dedup_key(&d));
                if let Some(d) = &dedup {
                    self.batch
                        .insert(&self.engine.dedup, d.as_slice(), b"".as_slice());
                    self.writes += 1;
                    self.bytes += d.len() as u64;
                }
                self.appended.push((key.clone(), dedup));
                self.delta.pending += 1;
                self.delta.bytes += size as i64;
                self.delta.dequeued += 1;
                self.delta.dequeued_bytes += size;
                Ok(())
            }
            Op::Rewrite { key, value, .. } => {
                let old = self
                    .size(Space::Pending, key)?
                    .ok_or_else(|| Self::not_found(key))?;
                self.insert(Space::Pending, key, value);
                self.delta.bytes += value.len() as i64 - old as i64;
                Ok(())
            }
            Op::Move {
                from, to, value, ..
            } => {
                let old = self
                    .size(from.0, &from.1)?
                    .ok_or_else(|| Self::not_found(&from.1))?;
                self.remove(from.0, &from.1);
                self.insert(to.0, &to.1, value);
                self.count(from.0, -1);
                self.count(to.0, 1);
                self.delta.bytes += value.len() as i64 - old as i64;
                Ok(())
            }
            Op::Purge { key, .. } => {
                let old = self
                    .size(Space::Dead, key)?
                    .ok_or_else(|| Self::not_found(key))?;
                self.remove(Space::Dead, key);
                self.delta.dead -= 1;
                self.delta.bytes -= old as i64;
                Ok(())
            }
            Op::Probe { .. } | Op::Sweep { .. } | Op::Deferred => Ok(()),
        }
    }

    /// A delivered event's removal: nothing if it is gone already (delivered twice).
    fn add_delete(&mut self, key: &fjall::Slice) -> Result<(), SpoolError> {
        if let Some(old) = self.size(Space::Pending, key)? {
            self.remove(Space::Pending, key);
            self.delta.pending -= 1;
            self.delta.bytes -= old as i64;
        }
        Ok(())
    }
}

/// Writes `ops`, `deletes` and the removal of `expired` dedup keys as one batch, then answers
/// their callers and applies what the batch changed to the counts. Returns the bytes it wrote,
/// or the failure (every caller answered with it, the removals kept for a later batch).
fn commit(
    s: &Shared,
    engine: &Engine,
    ops: &mut Vec<Op>,
    deletes: &mut Vec<DeferredDelete>,
    expired: &[fjall::Slice],
) -> Result<u64, Failure> {
    let synced = ops
        .iter()
        .any(|op| matches!(op, Op::Append { .. } | Op::Probe { .. }));
    // Appends and probes wait for the configured durability. Retries, dead letters and replays
    // only reach the OS, and removals of delivered events wait in the journal's buffer for the
    // next write: losing either in a crash means a repeat delivery, never a lost event.
    let mode = if synced {
        persist_mode(s.config.durability)
    } else if s.config.durability != Durability::Memory {
        Some(fjall::PersistMode::Buffer)
    } else {
        None
    };
    let mut b = Batch {
        engine,
        batch: engine.db.batch().durability(mode),
        touched: HashMap::new(),
        delta: Delta::default(),
        writes: 0,
        bytes: 0,
        appended: Vec::new(),
    };
    let mut answers: Vec<Result<(), SpoolError>> = Vec::with_capacity(ops.len());
    for op in ops.iter() {
        answers.push(b.add(op));
    }
    // A removal whose record cannot be read is tried again with a later batch; the others go.
    let mut unread = Vec::new();
    let mut written = Vec::with_capacity(deletes.len());
    for (key, reply) in deletes.drain(..) {
        match b.add_delete(&key) {
            Ok(()) => written.push((key, reply)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a delivered event's record; its removal waits");
                unread.push((key, reply));
            }
        }
    }
    for key in expired {
        b.batch.remove(&engine.dedup, key.clone());
        b.writes += 1;
        b.bytes += key.len() as u64;
    }
    let Batch {
        batch,
        delta,
        writes,
        bytes,
        appended,
        ..
    } = b;
    let result = if writes == 0 {
        // fjall answers an empty batch at once, without touching the journal: a probe alone
        // must still reach the disk (and see a failed one), so it persists the journal itself.
        let _ = batch;
        match mode {
            Some(m) if synced => engine.db.persist(m),
            _ => Ok(()),
        }
    } else {
        batch.commit()
    };
    // A failure is recorded before anyone is answered: an append arriving after this answer is
    // refused at the door, never queued behind a failing write.
    let answer_all = match &result {
        Ok(()) => Ok(()),
        Err(e) => Err(fail(s, e)),
    };
    match &result {
        Ok(()) => {
            apply(&s.pending_count, delta.pending);
            apply(&s.dead_count, delta.dead);
            apply(&s.bytes, delta.bytes);
            if mode == Some(fjall::PersistMode::SyncData) && (writes > 0 || synced) {
                s.syncs.fetch_add(1, Ordering::AcqRel);
            }
            note_oldest(s, ops, &answers);
        }
        Err(e) => {
            tracing::error!(error = %e, operations = ops.len() + written.len(), "spool commit failed")
        }
    }
    // Appends leave the queue whatever happened; committed ones are counted above first.
    s.queued.fetch_sub(delta.dequeued, Ordering::AcqRel);
    s.queued_bytes
        .fetch_sub(delta.dequeued_bytes, Ordering::AcqRel);
    for (op, answer) in ops.drain(..).zip(answers) {
        let answer = answer_all.clone().and(answer);
        let reply = match op {
            Op::Append { reply, .. }
            | Op::Rewrite { reply, .. }
            | Op::Move { reply, .. }
            | Op::Purge { reply, .. }
            | Op::Probe { reply } => reply,
            Op::Sweep { .. } | Op::Deferred => continue,
        };
        let _ = reply.send(answer);
    }
    let mut again = unread;
    if result.is_err() {
        // Not written: they go again with a later batch (a delivered event is never left
        // pending for good by one failed commit).
        again.append(&mut written);
    } else {
        for (_, reply) in written {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
        }
    }
    if !again.is_empty() {
        lock(&s.deferred).append(&mut again);
    }
    match result {
        Ok(()) => Ok(bytes),
        Err(error) => Err(Failure {
            error,
            unwritten: appended,
        }),
    }
}

/// Keeps the oldest-pending search hints true after a commit: a replayed event (an older id)
/// resets them, and so does an append whose id is older than its route's hint (ids are made
/// before their append is queued, so commits can land slightly out of id order).
fn note_oldest(s: &Shared, ops: &[Op], answers: &[Result<(), SpoolError>]) {
    let mut hint = lock(&s.oldest_hint);
    if hint.by_route.is_empty() {
        return;
    }
    let stale = ops.iter().zip(answers).any(|(op, answer)| {
        answer.is_ok()
            && match op {
                Op::Move {
                    to: (Space::Pending, _),
                    ..
                } => true,
                Op::Append { key, .. } => {
                    let route = key.get(..key.len().saturating_sub(17)).unwrap_or_default();
                    let id = id_of(key);
                    std::str::from_utf8(route)
                        .ok()
                        .and_then(|r| hint.by_route.get(r))
                        .is_some_and(|h| id.is_some_and(|id| id < *h))
                }
                _ => false,
            }
    });
    if stale {
        hint.generation += 1;
        hint.by_route.clear();
    }
}

/// Adds `by` to `counter`; the writer is its only writer, so it never goes below zero.
fn apply(counter: &std::sync::atomic::AtomicU64, by: i64) {
    if by >= 0 {
        counter.fetch_add(by as u64, Ordering::AcqRel);
    } else {
        counter.fetch_sub(by.unsigned_abs(), Ordering::AcqRel);
    }
}
