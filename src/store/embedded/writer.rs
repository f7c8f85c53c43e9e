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
use super::keys::{
    dedup_key, expired_until, id_of, live_key, live_prefix, record_key, route_of, space_prefix,
    tally_key, Space,
};
use super::recovery::{fail, rebuild, recover, wants_rebuild, Failure, Owed, Rebuilt, Why};
use super::spool::{lock, persist_mode, Shared};
use crate::store::event::{id_ms, split_lane, DedupRecord};
use crate::store::record::{set_state_size, state_size};
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

pub(super) enum Op {
    /// A new event: its record, and its state pending in the lane of each destination it
    /// goes to (none if every one filtered it out: then it is history at once); counted in
    /// `queued` (see [`weight`]) until committed.
    Append {
        id: Uuid,
        lives: Vec<fjall::Slice>,
        record: fjall::Slice,
        state: Vec<u8>,
        dedup: Option<DedupRecord>,
        reply: Reply,
    },
    /// Writes a pending event's new state (its retry schedule), if still pending.
    Rewrite {
        live: fjall::Slice,
        state: Vec<u8>,
        reply: Reply,
    },
    /// Moves an event between pending and dead with its new state, if it is in `from`.
    Move {
        from: fjall::Slice,
        to: fjall::Slice,
        state: Vec<u8>,
        reply: Reply,
    },
    /// Makes a delivered event pending again (a replay), with its new state: if it is neither
    /// pending nor dead, its record is kept, and retention has not passed it.
    Replay {
        id: Uuid,
        live: fjall::Slice,
        state: Vec<u8>,
        reply: Reply,
    },
    /// Deletes a dead letter (and its state in `done`), if present; and its record if the
    /// event has no other destination (`whole`), its copy in `kept` once none of `siblings`
    /// (the other destinations' `live` keys) holds it.
    Purge {
        live: fjall::Slice,
        done: Vec<u8>,
        siblings: Vec<fjall::Slice>,
        whole: bool,
        reply: Reply,
    },
    /// Copies to `kept` the records of pending and dead events older than `below`, synced,
    /// before retention drops the range holding them, and drops the tallies of the minutes
    /// before it; answers how many records it copied.
    Keep { below: Uuid, reply: Reply<i64> },
    /// Writes (or, `None`, deletes) one of the gateway's records in `meta`, synced.
    Meta {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        reply: Reply,
    },
    /// Adds to a counter in `meta`; answers its new value.
    MetaAdd {
        key: Vec<u8>,
        by: i64,
        reply: Reply<i64>,
    },
    /// Commits nothing, at the spool's full durability.
    Probe { reply: Reply },
    /// Removes the expired dedup keys, a chunk per batch; answers how many.
    Sweep { reply: Option<Reply<usize>> },
    /// Wakes the writer for the deferred removals of delivered events.
    Deferred,
}

/// A delivered event leaving the pending ones of one destination: its `live` key, its key in
/// `done` and the state it ended with, the other destinations' `live` keys (its copy in `kept`
/// goes once none holds it), and who waits for the record; it waits for the writer's next
/// batch.
pub(super) struct DeferredDelete {
    pub live: fjall::Slice,
    pub done: Vec<u8>,
    pub state: Vec<u8>,
    pub siblings: Vec<fjall::Slice>,
    pub reply: Option<Reply>,
}

/// What an append holds of the bounds while it is queued: one event per destination it goes
/// to (one if none: its record is written all the same).
pub(super) fn weight(lives: &[fjall::Slice]) -> u64 {
    lives.len().max(1) as u64
}

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
            batch.remove(&engine.live, key.as_slice());
            if let Some(id) = id_of(key) {
                batch.remove(&engine.events, record_key(id).as_slice());
            }
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
    /// `live` keys written or removed earlier in this batch: their record's size now, or `None`
    /// when removed.
    touched: HashMap<fjall::Slice, Option<u64>>,
    /// `live` keys made pending again (replays) earlier in this batch.
    replayed: std::collections::HashSet<fjall::Slice>,
    delta: Delta,
    /// Records written or removed so far.
    writes: usize,
    /// Bytes of the keys and values written so far (what the journal grows by, about).
    bytes: u64,
    /// Appends in the batch: a `live` key (by which its id is known), and the dedup record's key
    /// if any.
    appended: Vec<(fjall::Slice, Option<[u8; 24]>)>,
    /// Whether something in it must reach the disk before it is answered (a `Keep`, a record).
    synced: bool,
    /// Whether it must reach the disk whatever the durability (a `Keep`).
    on_disk: bool,
    /// Records copied to `kept` in this batch.
    kept_added: std::collections::HashSet<Uuid>,
    /// Counters written earlier in this batch: their value now.
    counters: HashMap<Vec<u8>, i64>,
    /// Appends per route and minute, for the tallies.
    appends: HashMap<(String, u64), u64>,
}

impl<'a> Batch<'a> {
    /// The record size of the event at `live` key `key`, as this batch leaves it so far
    /// (`None`: not there).
    fn size(&self, key: &fjall::Slice) -> Result<Option<u64>, SpoolError> {
        if let Some(size) = self.touched.get(key) {
            return Ok(*size);
        }
        Ok(self
            .engine
            .live
            .get(key)?
            .map(|v| state_size(&v).map_or(0, u64::from)))
    }

    fn count(&mut self, key: &[u8], by: i64) {
        match Space::of(key) {
            Some(Space::Pending) => self.delta.pending += by,
            Some(Space::Dead) => self.delta.dead += by,
            None => {}
        }
    }

    fn put(
        &mut self,
        ks: &fjall::Keyspace,
        key: impl Into<fjall::Slice>,
        value: impl Into<fjall::Slice>,
    ) {
        let (key, value) = (key.into(), value.into());
        self.writes += 1;
        self.bytes += (key.len() + value.len()) as u64;
        self.batch.insert(ks, key, value);
    }

    fn delete(&mut self, ks: &fjall::Keyspace, key: impl Into<fjall::Slice>) {
        let key = key.into();
        self.writes += 1;
        self.bytes += key.len() as u64;
        self.batch.remove(ks, key);
    }

    /// Writes `state` (its record's size set to `size`) at `live` key `key`.
    fn set_live(&mut self, key: &fjall::Slice, mut state: Vec<u8>, size: u64) {
        set_state_size(&mut state, u32::try_from(size).unwrap_or(u32::MAX));
        let live = &self.engine.live;
        self.put(live, key.clone(), state);
        self.touched.insert(key.clone(), Some(size));
    }

    fn remove_live(&mut self, key: &fjall::Slice) {
        let live = &self.engine.live;
        self.delete(live, key.clone());
        self.touched.insert(key.clone(), None);
    }

    /// Removes `id`'s copy in `kept`, if it has one (an event older than the retention that
    /// leaves the live ones), unless one of `siblings` (other destinations' `live` keys) still
    /// holds it.
    fn unkeep(
        &mut self,
        s: &Shared,
        id: Uuid,
        siblings: &[fjall::Slice],
    ) -> Result<(), SpoolError> {
        if !s.kept_any.load(Ordering::Acquire) {
            return Ok(());
        }
        for sibling in siblings {
            if self.size(sibling)?.is_some() {
                return Ok(());
            }
        }
        let key = record_key(id);
        if self.kept_added.contains(&id) || self.engine.kept.contains_key(key)? {
            let kept = &self.engine.kept;
            self.delete(kept, key.to_vec());
        }
        Ok(())
    }

    fn not_found(key: &fjall::Slice) -> SpoolError {
        SpoolError::NotFound(id_of(key).unwrap_or_else(Uuid::nil))
    }

    /// Adds `op` to the batch; its own answer if the commit succeeds (`Keep` answers how many
    /// it copied, `MetaAdd` the counter's value).
    fn add(&mut self, s: &Shared, op: &mut Op) -> Result<i64, SpoolError> {
        match op {
            Op::Append {
                id,
                lives,
                record,
                state,
                dedup,
                ..
            } => {
                let size = record.len() as u64;
                let weight = weight(lives);
                let events = &self.engine.events;
                self.put(events, record_key(*id).to_vec(), record.clone());
                // Made before retention's cut (an append that waited long in the queue): its
                // table may be dropped, so its record goes to `kept` as well.
                if id_ms(*id).is_some_and(|ms| ms < s.history_from.load(Ordering::Acquire)) {
                    let kept = &self.engine.kept;
                    self.put(kept, record_key(*id).to_vec(), record.clone());
                    self.kept_added.insert(*id);
                    s.kept_any.store(true, Ordering::Release);
                }
                for live in lives.iter() {
                    self.set_live(live, state.clone(), size);
                }
                let dedup = dedup.map(|d| dedup_key(&d));
                if let Some(d) = &dedup {
                    let ks = &self.engine.dedup;
                    self.put(ks, d.to_vec(), b"".to_vec());
                }
                let route = match lives.first() {
                    Some(live) => route_of(live).map(|l| split_lane(l).0.to_owned()),
                    // Filtered out everywhere: the record says where it came.
                    None => record_route(record),
                };
                let marker = lives.first().cloned().unwrap_or_else(|| {
                    live_key(Space::Pending, route.as_deref().unwrap_or(""), *id).into()
                });
                self.appended.push((marker, dedup));
                if let (Some(route), Some(ms)) = (route, id_ms(*id)) {
                    *self.appends.entry((route, ms / 60_000)).or_default() += 1;
                }
                self.delta.pending += lives.len() as i64;
                self.delta.bytes += (size * lives.len() as u64) as i64;
                self.delta.dequeued += weight;
                self.delta.dequeued_bytes += size * weight;
                Ok(0)
            }
            Op::Rewrite { live, state, .. } => {
                let size = self.size(live)?.ok_or_else(|| Self::not_found(live))?;
                self.set_live(live, std::mem::take(state), size);
                Ok(0)
            }
            Op::Move {
                from, to, state, ..
            } => {
                let size = self.size(from)?.ok_or_else(|| Self::not_found(from))?;
                self.remove_live(from);
                self.set_live(to, std::mem::take(state), size);
                self.count(from, -1);
                self.count(to, 1);
                Ok(0)
            }
            Op::Replay {
                id, live, state, ..
            } => {
                let id = *id;
                let gone = || SpoolError::NotFound(id);
                let dead = dead_key_of(live);
                if self.size(live)?.is_some()
                    || self.size(&dead)?.is_some()
                    || self.replayed.contains(live)
                {
                    return Err(gone());
                }
                // Retention may be dropping the range of an event older than its cutoff.
                if id_ms(id).is_none_or(|ms| ms < s.history_from.load(Ordering::Acquire)) {
                    return Err(gone());
                }
                let key = record_key(id);
                let size = match self.engine.events.size_of(key)? {
                    Some(size) => size,
                    None => self.engine.kept.size_of(key)?.ok_or_else(gone)?,
                };
                self.set_live(live, std::mem::take(state), u64::from(size));
                self.replayed.insert(live.clone());
                self.delta.pending += 1;
                self.delta.bytes += i64::from(size);
                Ok(0)
            }
            Op::Purge {
                live,
                done,
                siblings,
                whole,
                ..
            } => {
                let size = self.size(live)?.ok_or_else(|| Self::not_found(live))?;
                self.remove_live(live);
                if let Some(id) = id_of(live) {
                    let ks = &self.engine.done;
                    self.delete(ks, done.clone());
                    if *whole {
                        let events = &self.engine.events;
                        self.delete(events, record_key(id).to_vec());
                    }
                    self.unkeep(s, id, siblings)?;
                }
                self.delta.dead -= 1;
                self.delta.bytes -= size as i64;
                Ok(0)
            }
            Op::Keep { below, .. } => {
                self.synced = true;
                // Tables holding the only other copy are dropped right after this commit: it
                // reaches the disk whatever the durability (but `memory`).
                self.on_disk = true;
                let from = *lock(&s.kept_from);
                let copied = self.keep_below(from, *below)?;
                if copied > 0 {
                    s.kept_any.store(true, Ordering::Release);
                }
                // Where the history starts, kept for the next start: events dropped for size
                // do not come back.
                let cut = s.history_from.load(Ordering::Acquire);
                let meta = &self.engine.meta;
                self.put(meta, HISTORY_FROM.to_vec(), cut.to_le_bytes().to_vec());
                let minute = id_ms(*below).unwrap_or(0) / 60_000;
                let meta = &self.engine.meta;
                for (route, minutes) in lock(&s.tally).iter() {
                    for m in minutes.range(..minute).map(|(m, _)| *m) {
                        self.delete(meta, tally_key(route, m));
                    }
                }
                Ok(copied as i64)
            }
            Op::Meta { key, value, .. } => {
                self.synced = true;
                let meta = &self.engine.meta;
                match value.take() {
                    Some(v) => self.put(meta, key.clone(), v),
                    None => self.delete(meta, key.clone()),
                }
                Ok(0)
            }
            Op::MetaAdd { key, by, .. } => {
                let now = match self.counters.get(key) {
                    Some(n) => *n,
                    None => read_counter(&self.engine.meta, key)?,
                }
                .saturating_add(*by);
                self.counters.insert(key.clone(), now);
                let meta = &self.engine.meta;
                self.put(meta, key.clone(), now.to_le_bytes().to_vec());
                Ok(now)
            }
            Op::Probe { .. } | Op::Sweep { .. } | Op::Deferred => Ok(0),
        }
    }

    /// Adds this batch's appends to the tallies of their route and minute (in memory only
    /// once the batch commits: see [`note_tallies`]).
    fn tally(&mut self, s: &Shared) {
        let tallies = lock(&s.tally);
        let mut writes = Vec::with_capacity(self.appends.len());
        for ((route, minute), n) in &self.appends {
            let before = tallies
                .get(route)
                .and_then(|m| m.get(minute))
                .copied()
                .unwrap_or(0);
            writes.push((tally_key(route, *minute), before + n));
        }
        drop(tallies);
        let meta = &self.engine.meta;
        for (key, n) in writes {
            self.put(meta, key, n.to_le_bytes().to_vec());
        }
    }

    /// Copies to `kept` the records of the live events older than `below` that have no copy
    /// there yet. Each route's live events are one range of `live` in time order: only the old
    /// ones are read.
    fn keep_below(&mut self, from_id: Uuid, below: Uuid) -> Result<usize, SpoolError> {
        let mut copied = 0;
        for space in [Space::Pending, Space::Dead] {
            let mut from = space_prefix(space).to_vec();
            loop {
                // The next route of this space at or after `from`.
                let Some(kv) = self.engine.live.range(from.clone()..).next() else {
                    break;
                };
                let key = kv.key()?;
                if Space::of(&key) != Some(space) {
                    break;
                }
                let Some(route) = route_of(&key) else {
                    break;
                };
                let route = route.to_owned();
                let prefix = live_prefix(space, &route);
                // Only the events since the last copy: those before it were copied then (and
                // no event older than a cut becomes live again: its replay is refused).
                let start = live_key(space, &route, from_id);
                let end = live_key(space, &route, below);
                for kv in self.engine.live.range(start..end) {
                    let key = kv.key()?;
                    // Purged or delivered earlier in this batch.
                    if matches!(self.touched.get(&key), Some(None)) {
                        continue;
                    }
                    let Some(id) = id_of(&key) else { continue };
                    let rk = record_key(id);
                    // Another destination's share copied it already.
                    if self.kept_added.contains(&id) || self.engine.kept.contains_key(rk)? {
                        continue;
                    }
                    if let Some(record) = self.engine.events.get(rk)? {
                        let kept = &self.engine.kept;
                        self.put(kept, rk.to_vec(), record);
                        self.kept_added.insert(id);
                        copied += 1;
                    }
                }
                // Past every key of this route: its prefix with the byte after the 0.
                from = prefix;
                if let Some(last) = from.last_mut() {
                    *last = 1;
                }
            }
        }
        Ok(copied)
    }

    /// A delivered event leaves the pending ones, its final state kept in `done`: nothing if
    /// it is gone already (delivered twice).
    fn add_delete(&mut self, s: &Shared, d: &DeferredDelete) -> Result<(), SpoolError> {
        if let Some(size) = self.size(&d.live)? {
            self.remove_live(&d.live);
            if let Some(id) = id_of(&d.live) {
                let done = &self.engine.done;
                // A copy: a batch that fails to commit leaves the removal for a later one.
                self.put(done, d.done.clone(), d.state.clone());
                self.unkeep(s, id, &d.siblings)?;
            }
            self.delta.pending -= 1;
            self.delta.bytes -= size as i64;
        }
        Ok(())
    }
}

/// The route in an encoded record (`None` if it cannot be read).
fn record_route(record: &[u8]) -> Option<String> {
    match crate::store::record::view("append", record) {
        Ok(Some(v)) => Some(v.route.to_owned()),
        _ => crate::store::record::decode("append", record)
            .ok()
            .map(|e| e.route),
    }
}

/// The dead `live` key of the event at pending `live` key `key`.
fn dead_key_of(key: &fjall::Slice) -> fjall::Slice {
    let mut k = key.to_vec();
    if let Some(first) = k.first_mut() {
        *first = b'd';
    }
    k.into()
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
    let mut b = Batch {
        engine,
        batch: engine.db.batch(),
        touched: HashMap::new(),
        replayed: std::collections::HashSet::new(),
        delta: Delta::default(),
        writes: 0,
        bytes: 0,
        appended: Vec::new(),
        synced: false,
        on_disk: false,
        kept_added: std::collections::HashSet::new(),
        counters: HashMap::new(),
        appends: HashMap::new(),
    };
    let mut answers: Vec<Result<i64, SpoolError>> = Vec::with_capacity(ops.len());
    for op in ops.iter_mut() {
        answers.push(b.add(s, op));
    }
    b.tally(s);
    let synced = b.synced
        || ops
            .iter()
            .any(|op| matches!(op, Op::Append { .. } | Op::Probe { .. }))
        // A delivery someone waits for (an ordered destination's, before the next of its key
        // goes) is written at the configured durability too.
        || deletes.iter().any(|d| d.reply.is_some());
    // Appends, probes, awaited deliveries and retention's copies wait for the configured
    // durability. Retries, dead letters and replays only reach the OS, and removals of
    // delivered events nobody waits for ride with the next write: losing either in a crash
    // means a repeat delivery, never a lost event.
    let mode = if b.on_disk && s.config.durability != Durability::Memory {
        Some(fjall::PersistMode::SyncData)
    } else if synced {
        persist_mode(s.config.durability)
    } else if s.config.durability != Durability::Memory {
        Some(fjall::PersistMode::Buffer)
    } else {
        None
    };
    // A removal whose record cannot be read is tried again with a later batch; the others go.
    let mut unread = Vec::new();
    let mut written = Vec::with_capacity(deletes.len());
    for d in deletes.drain(..) {
        match b.add_delete(s, &d) {
            Ok(()) => written.push(d),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a delivered event's record; its removal waits");
                unread.push(d);
            }
        }
    }
    for key in expired {
        let ks = &engine.dedup;
        b.delete(ks, key.clone());
    }
    let Batch {
        batch,
        delta,
        writes,
        bytes,
        appended,
        appends,
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
        batch.durability(mode).commit()
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
            note_tallies(s, appends, ops, &answers);
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
            | Op::Replay { reply, .. }
            | Op::Purge { reply, .. }
            | Op::Probe { reply } => reply,
            Op::Keep { reply, .. } | Op::MetaAdd { reply, .. } => {
                let _ = reply.send(answer);
                continue;
            }
            Op::Meta { reply, .. } => reply,
            Op::Sweep { .. } | Op::Deferred => continue,
        };
        let _ = reply.send(answer.map(|_| ()));
    }
    if result.is_err() {
        // Not written: they go again with a later batch (a delivered event is never left
        // pending for good by one failed commit).
        unread.append(&mut written);
    } else {
        for d in written {
            if let Some(reply) = d.reply {
                let _ = reply.send(Ok(()));
            }
        }
    }
    if !unread.is_empty() {
        lock(&s.deferred).append(&mut unread);
    }
    match result {
        Ok(()) => Ok(bytes),
        Err(error) => Err(Failure {
            error,
            unwritten: appended,
        }),
    }
}

/// Keeps the oldest-pending search hints true after a commit: a replayed or revived event (an
/// older id) resets them, and so does an append whose id is older than its route's hint (ids are
/// made before their append is queued, so commits can land slightly out of id order).
fn note_oldest(s: &Shared, ops: &[Op], answers: &[Result<i64, SpoolError>]) {
    let mut hint = lock(&s.oldest_hint);
    if hint.by_route.is_empty() {
        return;
    }
    let stale = ops.iter().zip(answers).any(|(op, answer)| {
        answer.is_ok()
            && match op {
                Op::Move { to, .. } => Space::of(to) == Some(Space::Pending),
                Op::Replay { .. } => true,
                Op::Append { id, lives, .. } => lives.iter().any(|live| {
                    route_of(live)
                        .and_then(|r| hint.by_route.get(r))
                        .is_some_and(|h| *id < *h)
                }),
                _ => false,
            }
    });
    if stale {
        hint.generation += 1;
        hint.by_route.clear();
    }
}

/// Applies a committed batch's appends to the tallies in memory, and a `Keep`'s cut.
fn note_tallies(
    s: &Shared,
    appends: HashMap<(String, u64), u64>,
    ops: &[Op],
    answers: &[Result<i64, SpoolError>],
) {
    let mut tallies = lock(&s.tally);
    for ((route, minute), n) in appends {
        *tallies.entry(route).or_default().entry(minute).or_default() += n;
    }
    for (op, answer) in ops.iter().zip(answers) {
        if let (Op::Keep { below, .. }, Ok(_)) = (op, answer) {
            let mut from = lock(&s.kept_from);
            *from = (*from).max(*below);
            drop(from);
            let minute = id_ms(*below).unwrap_or(0) / 60_000;
            for minutes in tallies.values_mut() {
                *minutes = minutes.split_off(&minute);
            }
            tallies.retain(|_, m| !m.is_empty());
        }
    }
}

/// Counter `key`'s value in `meta` (0 when absent).
pub(super) fn read_counter(meta: &fjall::Keyspace, key: &[u8]) -> Result<i64, SpoolError> {
    Ok(meta
        .get(key)?
        .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
        .map_or(0, i64::from_le_bytes))
}

/// The key in `meta` of where the history starts (Unix ms, 8 bytes little endian).
pub(super) const HISTORY_FROM: &[u8] = b"h/history_from";

/// Adds `by` to `counter`; the writer is its only writer, so it never goes below zero.
fn apply(counter: &std::sync::atomic::AtomicU64, by: i64) {
    if by >= 0 {
        counter.fetch_add(by as u64, Ordering::AcqRel);
    } else {
        counter.fetch_sub(by.unsigned_abs(), Ordering::AcqRel);
    }
}
