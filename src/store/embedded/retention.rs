//! Retention of the embedded history: a thread that drops delivered events older than
//! `retention`, and the oldest ones beyond `retention_max_size`, by whole tables.
//!
//! Each pass:
//! 1. finds the cut: `now - retention`, or later if the history's tables outgrow
//!    `retention_max_size` (the oldest records summed until the excess is covered);
//! 2. moves the history's start there ([`Shared::history_from`]): queries and replays stop
//!    seeing delivered events before it at once;
//! 3. has the writer copy to `kept` the records of pending and dead events before the cut
//!    (synced, and in the writer's order: a replay queued after it is refused for an event
//!    before the cut, so no record of a live event is dropped);
//! 4. drops every table of `events` and `done` wholly before the cut (`drop_range`: files
//!    deleted, no tombstones written). A table that straddles the cut waits for a later pass,
//!    so the history on disk exceeds its bounds by at most a table.
//!
//! Under disk pressure the history also yields through the writer's rebuild, which copies only
//! the newest history that fits (see [`super::recovery`]).

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use fjall::AbstractTree;

use super::keys;
use super::spool::{lock, Shared};
use super::writer::Op;
use crate::store::event::{id_ms, now_ms};
use crate::store::spool::SpoolError;

/// How often retention runs.
const EVERY: Duration = Duration::from_secs(10);

/// The retention thread; stopped (and joined) when dropped.
pub(super) struct Retainer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Retainer {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *lock(stopped) = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts retention for the spool of `s`, whose writer takes `tx`.
pub(super) fn start(s: Arc<Shared>, tx: mpsc::SyncSender<Op>) -> std::io::Result<Retainer> {
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let signal = stop.clone();
    let thread = std::thread::Builder::new()
        .name("hookgate-retention".into())
        .spawn(move || loop {
            {
                let (stopped, wake) = &*signal;
                let guard = lock(stopped);
                let (guard, _) = wake
                    .wait_timeout_while(guard, EVERY, |stopped| !*stopped)
                    .unwrap_or_else(|e| e.into_inner());
                if *guard {
                    return;
                }
            }
            if let Err(e) = pass(&s, &tx) {
                tracing::warn!(error = %e, "history retention did not run; it tries again");
            }
        })?;
    Ok(Retainer {
        stop,
        thread: Some(thread),
    })
}

/// One pass; returns the bytes of history tables dropped.
pub(super) fn pass(s: &Shared, tx: &mpsc::SyncSender<Op>) -> Result<u64, SpoolError> {
    let engine = s.engine()?;
    let by_time = now_ms().saturating_sub(s.config.retention.as_millis() as u64);
    let by_size = match s.config.retention_max_size {
        Some(max) => size_cut(&engine, max)?,
        None => 0,
    };
    let cut = by_time
        .max(by_size)
        .max(s.history_from.load(Ordering::Acquire));
    s.history_from.fetch_max(cut, Ordering::AcqRel);
    let below = keys::first_id_at(cut);
    let older = |ks: &fjall::Keyspace| -> Result<bool, SpoolError> {
        Ok(match ks.first_key_value() {
            Some(kv) => kv.key()?.as_ref() < &keys::record_key(below)[..],
            None => false,
        })
    };
    if !older(&engine.events)? && !older(&engine.done)? {
        return Ok(0);
    }
    // The writer copies the live events' records before the cut, in its order.
    let (reply, answer) = tokio::sync::oneshot::channel();
    tx.try_send(Op::Keep { below, reply })
        .map_err(|_| SpoolError::Full("the write queue is full".into()))?;
    let kept = answer.blocking_recv().unwrap_or(Err(SpoolError::Closed))?;
    let before = engine.history_bytes();
    let end = keys::record_key(below).to_vec();
    let lsm = |e: fjall::LsmError| SpoolError::Storage(e.to_string());
    engine.events.tree.drop_range(..end.clone()).map_err(lsm)?;
    engine.done.tree.drop_range(..end).map_err(lsm)?;
    let dropped = before.saturating_sub(engine.history_bytes());
    if dropped > 0 || kept > 0 {
        tracing::debug!(
            history_from_ms = cut,
            dropped_bytes = dropped,
            kept,
            "history retention dropped its oldest tables"
        );
    }
    Ok(dropped)
}

/// Where the history must start for its tables to fit in `max` bytes: the oldest records,
/// summed until they cover the excess (0: it fits).
fn size_cut(engine: &super::engine::Engine, max: u64) -> Result<u64, SpoolError> {
    let size = engine.events.disk_space() + engine.done.disk_space();
    if size <= max {
        return Ok(0);
    }
    /// About what a delivered event's state in `done` adds to its record.
    const DONE: u64 = 64;
    let excess = size - max;
    let mut summed = 0u64;
    let mut last = 0;
    for kv in engine.events.iter() {
        let (k, v) = kv.into_inner()?;
        summed += (k.len() + v.len()) as u64 + DONE;
        last = keys::id_of(&k).and_then(id_ms).map_or(last, |ms| ms + 1);
        if summed >= excess {
            break;
        }
    }
    // At most past the newest record: never a cut ahead of what is stored.
    Ok(last)
}
