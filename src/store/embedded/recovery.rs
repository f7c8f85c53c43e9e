//! What the spool's writer does when the engine cannot go on as it is: after a failed write
//! (every write refused at once, the engine reopened from its journal, then copied to a fresh
//! directory before it takes new events), and when its own garbage fills the disk (a rebuild).
//! The copy and the directory swap themselves are [`super::engine`]'s.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::disk::{self, Measure};
use super::engine::{self, Engine, Skip};
use super::keys;
use super::spool::{lock, Shared};
use super::writer::Op;
use crate::store::event::id_ms;
use crate::store::spool::SpoolError;
use uuid::Uuid;

/// The least time between two rebuilds that give disk space back.
const REBUILD_EVERY: Duration = Duration::from_secs(1);

/// A commit that failed: why, and the appends it answered with the error (their senders got a
/// 503 and will retry them as new events, so none may come back with the recovered engine).
pub(super) struct Failure {
    pub(super) error: fjall::Error,
    pub(super) unwritten: Vec<(fjall::Slice, Option<[u8; 24]>)>,
}

/// What the writer owes after a failed write: a copy of the engine into a fresh directory,
/// without the appends that were answered 503.
#[derive(Default)]
pub(super) struct Owed {
    pub(super) skip: Skip,
    pub(super) last_try: Option<Instant>,
    /// The reason last logged for not copying yet (logged again only when it changes).
    pub(super) reported: Option<String>,
}

impl Owed {
    pub(super) fn skip(&mut self, unwritten: Vec<(fjall::Slice, Option<[u8; 24]>)>) {
        for (key, dedup) in unwritten {
            self.skip.pending.insert(key.to_vec());
            if let Some(d) = dedup {
                self.skip.dedup.insert(d.to_vec());
            }
        }
    }
}

/// Whether `e`, or what caused it, says the disk (or the user's quota) is full.
pub(super) fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull
                || matches!(io.raw_os_error(), Some(ENOSPC | EDQUOT))
            {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

/// Records that a write failed with `error`: from now on new events (and readiness probes)
/// are refused at once with what this returns, until the engine is recovered. fjall may not
/// say why (a background flush that failed poisons it too): a disk with no room left is why,
/// then.
pub(super) fn fail(s: &Shared, error: &fjall::Error) -> SpoolError {
    let retry = s.config.write_retry;
    let no_room = s.room.headroom() < 0
        || disk::statvfs(&s.path).is_ok_and(|(free, total)| total > 0 && free < (1 << 20));
    let full = is_disk_full(error) || no_room;
    let refusal = if full {
        SpoolError::Full(format!(
            "the disk of {} is full ({error}); the store recovers by itself (tried every {retry:?})",
            s.path.display()
        ))
    } else {
        SpoolError::Storage(format!(
            "the store failed to write ({error}); it recovers by itself (tried every {retry:?})"
        ))
    };
    // The reason first, then the flag: an append that sees the flag finds the reason.
    let first = lock(&s.failure).replace(refusal.clone()).is_none();
    s.failed.store(true, Ordering::Release);
    if first {
        tracing::error!(path = %s.path.display(), error = %error, disk_full = full, retry_ms = retry.as_millis() as u64, "spool write failed: new events get 503 at once until the store is recovered");
    }
    refusal
}

/// After a failed write (already recorded by [`fail`]): the engine is closed (fjall refuses every
/// write once one failed) and opened again from its journal every `write_retry`, until it opens.
/// Meanwhile every op is answered at once with the refusal. Returns the reopened engine, for
/// reads and the deliveries' bookkeeping; new events stay refused until the copy owed is done.
/// `None` if the spool was dropped meanwhile (its queue closed).
pub(super) fn recover(
    s: &Shared,
    engine: impl Into<Option<Arc<Engine>>>,
    rx: &mpsc::Receiver<Op>,
    held: &mut Vec<Op>,
) -> Option<Arc<Engine>> {
    let retry = s.config.write_retry;
    // Every handle must go before the directory can be opened again; the last one is closed
    // here, on the writer's thread (closing waits for fjall's worker).
    s.engine.store(None);
    if let Some(engine) = engine.into() {
        let deadline = Instant::now() + engine::RELEASE_WAIT;
        let mut engine = engine;
        loop {
            match Arc::try_unwrap(engine) {
                Ok(last) => {
                    drop(last);
                    break;
                }
                Err(still) if Instant::now() < deadline => {
                    engine = still;
                    std::thread::sleep(Duration::from_millis(5));
                }
                // A reader holds it longer: it closes when that reader lets go.
                Err(_) => break,
            }
        }
    }
    // What was queued behind the failed commit is answered now, not after the wait: no caller
    // waits on a store that is failing (the delivery engine retries its own writes).
    for op in std::mem::take(held) {
        refuse(s, op, held);
    }
    loop {
        // The wait; ops that were already on their way are refused as they come.
        let until = Instant::now() + retry;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(left) {
                Ok(op) => refuse(s, op, held),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
        // A swap that failed half way is finished or undone first; a reopen never creates.
        let reopened =
            engine::recover_swap(&s.path).and_then(|()| Engine::reopen(&s.path, s.tuning));
        match reopened.and_then(|engine| {
            let (pending, dead, bytes) = Shared::count(&engine)?;
            Ok((engine, pending, dead, bytes))
        }) {
            Ok((engine, pending, dead, bytes)) => {
                s.pending_count.store(pending, Ordering::Release);
                s.dead_count.store(dead, Ordering::Release);
                s.bytes.store(bytes, Ordering::Release);
                if let Ok(m) = engine.measure(&s.path) {
                    s.room.update(&m);
                }
                let engine = Arc::new(engine);
                s.engine.store(Some(engine.clone()));
                tracing::warn!(path = %s.path.display(), "spool store reopened from its journal: deliveries go on; new events wait for its copy to a fresh directory");
                return Some(engine);
            }
            Err(e) => {
                tracing::warn!(path = %s.path.display(), error = %e, retry_ms = retry.as_millis() as u64, "the spool store cannot be reopened yet; trying again");
            }
        }
    }
}

/// Answers `op` with the store's refusal (an append leaves the queue's count); a sweep or a
/// wake-up is kept in `held` for the reopened engine.
pub(super) fn refuse(s: &Shared, op: Op, held: &mut Vec<Op>) {
    let refusal = || Err(lock(&s.failure).clone().unwrap_or(SpoolError::Reopening));
    match op {
        Op::Append {
            record,
            reply,
            lives,
            ..
        } => {
            let weight = super::writer::weight(&lives);
            s.queued.fetch_sub(weight, Ordering::AcqRel);
            s.queued_bytes
                .fetch_sub(record.len() as u64 * weight, Ordering::AcqRel);
            let _ = reply.send(refusal());
        }
        Op::Rewrite { reply, .. }
        | Op::Move { reply, .. }
        | Op::Replay { reply, .. }
        | Op::Purge { reply, .. }
        | Op::Probe { reply } => {
            let _ = reply.send(refusal());
        }
        Op::Keep { reply, .. } | Op::MetaAdd { reply, .. } => {
            let _ = reply.send(refusal().map(|()| 0));
        }
        Op::Meta { reply, .. } => {
            let _ = reply.send(refusal());
        }
        op @ (Op::Sweep { .. } | Op::Deferred) => held.push(op),
    }
}

/// Whether a rebuild should give space back now: the spool is short of room (within
/// `min_free_space` of refusing, or refusing), most of what the engine holds on disk is its own
/// garbage (a journal fjall never deletes below 64 MB, overwritten records), the copy gives back
/// enough to matter, and it fits in the free space. At most one a [`REBUILD_EVERY`].
pub(super) fn wants_rebuild(
    s: &Shared,
    engine: &Engine,
    m: &Measure,
    last: Option<Instant>,
) -> bool {
    if last.is_some_and(|t| t.elapsed() < REBUILD_EVERY) {
        return false;
    }
    let min_free = s.room.min_free;
    if s.room.headroom() >= i64::try_from(min_free).unwrap_or(i64::MAX) {
        return false;
    }
    let live = live_bytes(s, engine);
    let footprint = m.journal + m.tables;
    let gain = footprint.saturating_sub(live);
    gain > live && gain > (min_free / 4).max(1 << 20) && fits_copy(m, live)
}

/// About what a copy of the engine writes: the stored records and the dedup keys.
pub(super) fn live_bytes(s: &Shared, engine: &Engine) -> u64 {
    s.bytes.load(Ordering::Acquire) + engine.dedup.approximate_len() as u64 * 40
}

/// Whether a copy of `live` bytes fits in the free space, with some to spare.
pub(super) fn fits_copy(m: &Measure, live: u64) -> bool {
    m.free > live + live / 2 + (1 << 20)
}

/// The first id of the newest history that fits in `budget` bytes, from `visible` on (the
/// history's start, when all of it fits). Reads the records newest first, and stops once the
/// budget is spent.
fn history_cut(engine: &Engine, visible: Uuid, budget: u64) -> Result<Uuid, SpoolError> {
    /// About what a delivered event's state adds to its record.
    const STATE: u64 = 64;
    let mut total = 0u64;
    for kv in engine.events.range(keys::record_key(visible)..).rev() {
        let (k, v) = kv.into_inner()?;
        total += (k.len() + v.len()) as u64 + STATE;
        if total > budget {
            // Past the budget: the history starts after this event (the last millisecond that
            // fits whole; a few events more or less).
            return Ok(
                keys::first_id_at(keys::id_of(&k).and_then(id_ms).map_or(0, |ms| ms + 1))
                    .max(visible),
            );
        }
    }
    Ok(visible)
}

/// Why a rebuild runs.
pub(super) enum Why<'a> {
    /// To give disk space back.
    Room,
    /// To recover from a failed write: the journal that failed is left behind, and with it
    /// what `skip` names.
    Recover(&'a Skip),
}

/// What became of a rebuild.
pub(super) enum Rebuilt {
    /// The copy is in; the engine is the fresh one.
    Done(Arc<Engine>),
    /// Not now (no room for the copy, or the copy failed): the engine as it was, and why.
    NotNow(Arc<Engine>, String),
    /// The swap failed and the engine could not be opened again: recover.
    Lost(Failure),
}

/// Above this much live data a rebuild refuses new events while it copies, rather than have
/// them wait for it (a copy of a few MiB takes milliseconds).
const REBUILD_WAITS_UP_TO: u64 = 16 << 20;

/// Copies what is live into a fresh engine and swaps it in (see [`super::engine`]). A copy that
/// fails or does not fit leaves the engine as it was; a swap that fails is finished or undone by
/// [`engine::recover_swap`], and only then is the engine opened again.
pub(super) fn rebuild(s: &Shared, engine: Arc<Engine>, why: Why<'_>) -> Rebuilt {
    let started = Instant::now();
    let live = live_bytes(s, &engine);
    let before = engine.measure(&s.path).ok();
    if let (Why::Recover(_), Some(m)) = (&why, &before) {
        if s.room.is_measured() && !fits_copy(m, live) {
            return Rebuilt::NotNow(
                engine,
                format!(
                    "a copy of about {live} bytes does not fit in the {} bytes free",
                    m.free
                ),
            );
        }
    }
    let empty = Skip::default();
    let skip = match &why {
        Why::Recover(skip) => skip,
        Why::Room => &empty,
    };
    // The history goes along as far as it fits: all of it after a failed write if the disk
    // has the room, the newest half at most when the copy is to give room back (history yields
    // to the disk: the oldest delivered events go first).
    let fits = match &before {
        Some(m) if s.room.is_measured() => {
            (m.free.saturating_sub(1 << 20) * 2 / 3).saturating_sub(live)
        }
        _ => u64::MAX,
    };
    let budget = match (&why, &before) {
        (Why::Room, Some(m)) => fits.min(((m.journal + m.tables) / 2).saturating_sub(live)),
        _ => fits,
    };
    let visible = keys::first_id_at(s.visible_from_ms());
    let from = match history_cut(&engine, visible, budget) {
        Ok(from) => from,
        Err(e) => return Rebuilt::NotNow(engine, format!("cannot read the history: {e}")),
    };
    let fresh = engine::beside(&s.path, "rebuild");
    let long = live > REBUILD_WAITS_UP_TO;
    s.rebuilding.store(long, Ordering::Release);
    let copied = engine.copy_live(&fresh, s.tuning, skip, from);
    if let Err(e) = copied {
        s.rebuilding.store(false, Ordering::Release);
        let _ = std::fs::remove_dir_all(&fresh);
        return Rebuilt::NotNow(engine, format!("the copy failed: {e}"));
    }
    // Readers let go of the old engine (they get "being reopened" meanwhile), then it closes.
    s.engine.store(None);
    let deadline = Instant::now() + engine::RELEASE_WAIT;
    let mut engine = engine;
    let old = loop {
        match Arc::try_unwrap(engine) {
            Ok(old) => break old,
            Err(still) if Instant::now() < deadline => {
                engine = still;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(still) => {
                s.rebuilding.store(false, Ordering::Release);
                let _ = std::fs::remove_dir_all(&fresh);
                s.engine.store(Some(still.clone()));
                return Rebuilt::NotNow(still, "the engine is still in use".into());
            }
        }
    };
    drop(old);
    let swapped = engine::swap_in(&s.path, &fresh);
    if let Err(e) = &swapped {
        tracing::error!(error = %e, "the spool's rebuild could not swap its copy in; finishing or undoing it");
    }
    // Whatever the swap did, the engine's directory holds one of the two copies once
    // recover_swap has run; a reopen never creates an empty one.
    let reopened = swapped
        .or_else(|_| engine::recover_swap(&s.path))
        .and_then(|()| Engine::reopen(&s.path, s.tuning));
    s.rebuilding.store(false, Ordering::Release);
    if from > visible {
        let cut = id_ms(from).unwrap_or(0);
        s.history_from.fetch_max(cut, Ordering::AcqRel);
        tracing::warn!(path = %s.path.display(), history_from_ms = cut, "the history was cut to make room on the disk: delivered events received before are dropped");
    }
    let engine = match reopened {
        Ok(e) => Arc::new(e),
        Err(e) => {
            return Rebuilt::Lost(Failure {
                error: fjall::Error::Io(std::io::Error::other(e.to_string())),
                unwritten: Vec::new(),
            })
        }
    };
    if engine.kept.first_key_value().is_some() {
        s.kept_any.store(true, Ordering::Release);
    }
    if let Why::Recover(_) = why {
        // What was skipped is not counted any more.
        if let Ok((pending, dead, bytes)) = Shared::count(&engine) {
            s.pending_count.store(pending, Ordering::Release);
            s.dead_count.store(dead, Ordering::Release);
            s.bytes.store(bytes, Ordering::Release);
        }
    } else {
        s.rebuilt.fetch_add(1, Ordering::AcqRel);
    }
    let after = engine.measure(&s.path).ok();
    if let Some(after) = &after {
        s.room.update(after);
    }
    tracing::info!(
        path = %s.path.display(),
        before_bytes = before.map(|b| b.journal + b.tables),
        after_bytes = after.map(|a| a.journal + a.tables),
        free_bytes = after.map(|a| a.free),
        took_ms = started.elapsed().as_millis() as u64,
        "spool copied to a fresh directory"
    );
    s.engine.store(Some(engine.clone()));
    Rebuilt::Done(engine)
}
