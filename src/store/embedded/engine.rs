//! The fjall database under the spool, as one value the writer can close and open again in the
//! running process: after a failed write (fjall refuses every write once one failed, until it is
//! reopened), and to give space back when the engine itself fills the disk (a rebuild).
//!
//! Everything stays inside the spool's directory:
//!
//! | path | what |
//! | --- | --- |
//! | `engine/` | the fjall database |
//! | `engine.rebuild/` | a rebuild's copy, while it is written (marked complete once synced) |
//! | `engine.old/` | the database a rebuild replaced, until it is removed |
//! | `hookgate.lock` | held while a process has the spool open |
//!
//! A rebuild copies what is live (pending events, dead letters, unexpired dedup keys, the
//! gateway's records, and the history still kept) into a
//! fresh database beside the engine, written straight into tables (no journal), then swaps the
//! two directories. fjall deletes a journal only once it passed 64 MB and was flushed: on a
//! small filesystem nothing else gives the journal's space back; and after a failed write the
//! journal that failed is not trusted with new events. Every step leaves a state that
//! [`recover_swap`] finishes or undoes, and none of them loses a copy that holds data.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::disk::{journal_bytes, statvfs, Measure};
use super::keys::{self, expired_until, Space};
use crate::store::record;
use crate::store::spool::SpoolError;

/// How long a reopen waits for the last reader of the previous engine to let it go.
pub(super) const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Marks a rebuilt copy as complete (every record written and synced): only then may it
/// replace the engine. It stays in the engine it moved into until the one it replaced is gone.
const COMPLETE: &str = "hookgate-rebuilt";

/// The file fjall keeps in every database it created: a directory without it holds none.
const FJALL_VERSION: &str = "version";

/// The engine's directory inside the spool's.
pub(super) fn engine_dir(spool: &Path) -> PathBuf {
    spool.join("engine")
}

/// The directory beside the engine's named `engine.{suffix}` (`rebuild`, `old`).
pub(super) fn beside(engine: &Path, suffix: &str) -> PathBuf {
    let mut name = engine
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "engine".into());
    name.push(".");
    name.push(suffix);
    engine.with_file_name(name)
}

/// Whether `dir` holds a fjall database.
fn holds_database(dir: &Path) -> bool {
    dir.join(FJALL_VERSION).is_file()
}

/// The engine: the database and its keyspaces (the layout is [`super::keys`]').
pub(super) struct Engine {
    pub db: fjall::Database,
    pub events: fjall::Keyspace,
    pub live: fjall::Keyspace,
    pub done: fjall::Keyspace,
    pub kept: fjall::Keyspace,
    pub dedup: fjall::Keyspace,
    pub meta: fjall::Keyspace,
}

/// How the engine is opened: its memory budget.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tuning {
    pub memory: u64,
}

/// What a copy leaves behind: pending events (by `live` key) and their dedup records (the
/// appends answered 503 by a write that failed).
#[derive(Debug, Default)]
pub(super) struct Skip {
    pub pending: HashSet<Vec<u8>>,
    pub dedup: HashSet<Vec<u8>>,
}

impl Skip {
    /// The ids of the skipped events.
    fn ids(&self) -> HashSet<[u8; 16]> {
        self.pending
            .iter()
            .filter_map(|k| keys::id_of(k))
            .map(keys::record_key)
            .collect()
    }
}

impl Engine {
    /// Opens (or creates) the database in `path`.
    pub fn open(path: &Path, tuning: Tuning) -> Result<Self, SpoolError> {
        Self::open_engine(path, tuning)
            .map_err(|e| SpoolError::Storage(format!("{}: {e}", path.display())))
    }

    /// Opens the database in `path` again, in the running process, once the handles of the
    /// previous engine are gone (a reader may hold one for a moment: bounded by
    /// [`RELEASE_WAIT`]). Never creates one: a directory without a database (a swap that
    /// failed half way) is an error, not an empty spool.
    pub fn reopen(path: &Path, tuning: Tuning) -> Result<Self, SpoolError> {
        if !holds_database(path) {
            return Err(SpoolError::Storage(format!(
                "{} holds no database (its {FJALL_VERSION} file is missing): not opening an empty one in its place",
                path.display()
            )));
        }
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        loop {
            match Self::open_engine(path, tuning) {
                Err(fjall::Error::Locked) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => {
                    return other
                        .map_err(|e| SpoolError::Storage(format!("{}: {e}", path.display())))
                }
            }
        }
    }

    fn open_engine(path: &Path, tuning: Tuning) -> fjall::Result<Self> {
        // fjall's defaults (a 64 MiB memtable per keyspace) let a steady load grow the process
        // by hundreds of MiB before anything is flushed, and the fresh pages cost CPU as well: a
        // quarter of the budget caches blocks, the rest bounds the memtables, half of it for the
        // records (a sealed memtable waits for its flush on the one engine worker).
        let cache = tuning.memory / 4;
        let buffers = tuning.memory - cache;
        let db = fjall::Database::builder(path)
            .manual_journal_persist(true)
            .cache_size(cache)
            .worker_threads(1)
            .open()?;
        let memtable = |share: u64| {
            let size = (buffers / share).max(1 << 20);
            move || fjall::KeyspaceCreateOptions::default().max_memtable_size(size)
        };
        Ok(Self {
            // Records are read by id only when they exist (a bloom filter would only cost
            // its building at each flush and compaction), and written once: no filter.
            events: db.keyspace("events", || {
                memtable(2)().filter_policy(fjall::config::FilterPolicy::disabled())
            })?,
            live: db.keyspace("live", memtable(8))?,
            done: db.keyspace("done", memtable(8))?,
            kept: db.keyspace("kept", memtable(32))?,
            dedup: db.keyspace("dedup", memtable(8))?,
            meta: db.keyspace("meta", memtable(64))?,
            db,
        })
    }

    /// The record of event `id`: in `events`, or in `kept` once retention passed it.
    pub fn record(&self, id: uuid::Uuid) -> Result<Option<fjall::Slice>, SpoolError> {
        let key = keys::record_key(id);
        if let Some(v) = self.events.get(key)? {
            return Ok(Some(v));
        }
        Ok(self.kept.get(key)?)
    }

    /// Bytes of history on disk: the tables of the records and their delivered states.
    pub fn history_bytes(&self) -> u64 {
        self.events.disk_space() + self.done.disk_space() + self.kept.disk_space()
    }

    /// What the filesystem under `path` (the engine's directory) holds and has free.
    pub fn measure(&self, path: &Path) -> std::io::Result<Measure> {
        let (free, total) = statvfs(path)?;
        Ok(Measure {
            free,
            total,
            journal: journal_bytes(path),
            tables: self.history_bytes()
                + self.live.disk_space()
                + self.dedup.disk_space()
                + self.meta.disk_space(),
        })
    }

    /// Copies everything live, but what `skip` names, into a fresh database at `to` (removed
    /// first if a previous try left it), straight into its tables, synced and marked complete:
    /// the pending and dead events, the unexpired dedup keys, the gateway's records, and the history
    /// from `history_from` on (the records of older events still live go to `kept`). Returns
    /// the bytes written (records' keys and values).
    pub fn copy_live(
        &self,
        to: &Path,
        tuning: Tuning,
        skip: &Skip,
        history_from: uuid::Uuid,
    ) -> Result<u64, SpoolError> {
        remove_dir(to)?;
        let mut written = 0u64;
        let from = keys::record_key(history_from);
        {
            let fresh = Engine::open(to, tuning)?;
            let skipped = skip.ids();
            let none = HashSet::new();
            written += ingest(self.live.iter(), &fresh.live, &skip.pending)?;
            // The records of live events older than the history copied, and of those kept
            // already, go to `kept` (read one at a time: only their ids are held).
            let mut old_live = std::collections::BTreeSet::new();
            for kv in self.live.iter() {
                let k = kv.key()?;
                if skip.pending.contains(&k[..]) {
                    continue;
                }
                if let Some(id) = keys::id_of(&k).map(keys::record_key) {
                    if id < from || self.kept.contains_key(id)? {
                        old_live.insert(id);
                    }
                }
            }
            let mut ingestion = fresh.kept.start_ingestion()?;
            for id in &old_live {
                let value = match self.events.get(id)? {
                    Some(v) => Some(v),
                    None => self.kept.get(id)?,
                };
                if let Some(v) = value {
                    written += (id.len() + v.len()) as u64;
                    ingestion.write(id.to_vec(), v)?;
                }
            }
            ingestion.finish()?;
            let id_skip: HashSet<Vec<u8>> = skipped.iter().map(|k| k.to_vec()).collect();
            written += ingest(self.events.range(from..), &fresh.events, &id_skip)?;
            written += ingest(self.done.range(from..), &fresh.done, &none)?;
            written += ingest(self.meta.iter(), &fresh.meta, &none)?;
            // Expired dedup keys sort first: they are left behind.
            written += ingest(
                self.dedup.range(expired_until()..),
                &fresh.dedup,
                &skip.dedup,
            )?;
            fresh.db.persist(fjall::PersistMode::SyncAll)?;
        }
        let marker = to.join(COMPLETE);
        std::fs::write(&marker, b"").map_err(|e| io_error(&marker, e))?;
        sync_path(&marker)?;
        sync_path(to)?;
        Ok(written)
    }

    /// Moves the events of layout 1 (whole events in `pending` and `dead`, keyed by route then
    /// id, or by id alone in the first releases) into layout 2, a chunk per commit; each commit writes a
    /// chunk's new records and removes its old ones, so a crash half way is finished at the
    /// next start. The old keyspaces are deleted at the end. Returns how many events moved.
    pub fn migrate_records(
        &self,
        durability: Option<fjall::PersistMode>,
    ) -> Result<usize, SpoolError> {
        let mut moved = 0;
        for (name, space) in [("pending", Space::Pending), ("dead", Space::Dead)] {
            if !self.db.keyspace_exists(name) {
                continue;
            }
            let old = self
                .db
                .keyspace(name, fjall::KeyspaceCreateOptions::default)?;
            loop {
                let chunk: Vec<(fjall::Slice, fjall::Slice)> = old
                    .iter()
                    .take(MIGRATE_CHUNK)
                    .map(|kv| kv.into_inner())
                    .collect::<Result<_, _>>()?;
                if chunk.is_empty() {
                    break;
                }
                let mut batch = self.db.batch().durability(durability);
                for (k, v) in &chunk {
                    let event = record::decode(&format!("{name} record"), v)?;
                    let value = record::encode(&event)?;
                    let size = u32::try_from(value.len()).unwrap_or(u32::MAX);
                    batch.insert(
                        &self.live,
                        keys::live_key(space, &event.route, event.id),
                        record::encode_state(&event, size, 0)?,
                    );
                    batch.insert(&self.events, keys::record_key(event.id), value);
                    batch.remove(&old, k.clone());
                }
                batch.commit()?;
                moved += chunk.len();
            }
            // The moved records reach the disk before the only other copy goes.
            if durability.is_some() {
                self.db.persist(fjall::PersistMode::SyncAll)?;
            }
            self.db.delete_keyspace(old)?;
        }
        if moved > 0 {
            tracing::info!(moved, "spool events moved into the layout of this release (history kept apart from state)");
        }
        Ok(moved)
    }
}

/// Events moved per commit by [`Engine::migrate_records`].
const MIGRATE_CHUNK: usize = 1024;

/// Writes every record of `records` (sorted, as a keyspace iterates) but those `skip` names
/// into the empty `into`.
fn ingest(
    records: impl Iterator<Item = fjall::Guard>,
    into: &fjall::Keyspace,
    skip: &HashSet<Vec<u8>>,
) -> Result<u64, SpoolError> {
    let mut ingestion = into.start_ingestion()?;
    let mut bytes = 0u64;
    for kv in records {
        let (k, v) = kv.into_inner()?;
        if !skip.is_empty() && skip.contains(&k[..]) {
            continue;
        }
        bytes += (k.len() + v.len()) as u64;
        ingestion.write(k, v)?;
    }
    ingestion.finish()?;
    Ok(bytes)
}

/// Puts the complete copy at `fresh` in place of the engine at `path`: the engine moves aside,
/// the copy takes its name, the old one is removed, then the copy's marker. The parent is synced
/// after each step, so a crash (or a failed step) leaves one of the states [`recover_swap`]
/// knows; on an error here the caller runs it.
pub(super) fn swap_in(path: &Path, fresh: &Path) -> Result<(), SpoolError> {
    let old = beside(path, "old");
    if old.exists() {
        return Err(SpoolError::Storage(format!(
            "{} is still there: the last swap did not finish",
            old.display()
        )));
    }
    let parent = parent(path);
    std::fs::rename(path, &old).map_err(|e| io_error(path, e))?;
    sync_path(&parent)?;
    std::fs::rename(fresh, path).map_err(|e| io_error(fresh, e))?;
    sync_path(&parent)?;
    remove_dir(&old)?;
    sync_path(&parent)?;
    let marker = path.join(COMPLETE);
    std::fs::remove_file(&marker).map_err(|e| io_error(&marker, e))?;
    sync_path(path)
}

/// Finishes or undoes a swap that a crash (or a failed step) interrupted, before the engine at
/// `path` opens. A copy that holds data is removed only when another complete one takes its
/// place; a state the swap never leaves is refused, with the directories named, for an operator
/// to look at.
///
/// | found | means | done |
/// | --- | --- | --- |
/// | no `path`, a complete copy | the engine moved aside, the copy not yet in | the copy moved in |
/// | no `path`, no complete copy, `old` | the copy lost | `old` moved back |
/// | `path` marked complete | the copy moved in, the old one not yet removed | `old` removed, then the marker |
/// | `path` unmarked, a copy | the copy was being written (or was not swapped yet) | the copy removed |
/// | `path` unmarked and `old`, or `path` not a database beside either | never left by a swap | refused |
pub(super) fn recover_swap(path: &Path) -> Result<(), SpoolError> {
    let fresh = beside(path, "rebuild");
    let old = beside(path, "old");
    let refuse = |why: &str| {
        Err(SpoolError::Storage(format!(
            "{why}: {} / {} / {} need an operator's look before anything is removed",
            path.display(),
            old.display(),
            fresh.display()
        )))
    };
    if !path.exists() {
        if fresh.join(COMPLETE).exists() {
            tracing::warn!(path = %path.display(), "finishing a spool rebuild that was interrupted: the rebuilt copy moves in");
            std::fs::rename(&fresh, path).map_err(|e| io_error(&fresh, e))?;
            sync_path(&parent(path))?;
        } else if old.exists() {
            tracing::warn!(path = %path.display(), "undoing a spool rebuild that was interrupted: the engine moves back");
            std::fs::rename(&old, path).map_err(|e| io_error(&old, e))?;
            sync_path(&parent(path))?;
        } else {
            // A new spool (or one whose rebuild copy was never complete).
            return remove_dir(&fresh);
        }
    }
    let marked = path.join(COMPLETE).exists();
    if (old.exists() || fresh.exists()) && !holds_database(path) {
        return refuse("the engine's directory holds no database");
    }
    if marked {
        remove_dir(&old)?;
        sync_path(&parent(path))?;
        let marker = path.join(COMPLETE);
        std::fs::remove_file(&marker).map_err(|e| io_error(&marker, e))?;
        sync_path(path)?;
    } else if old.exists() {
        return refuse("an old engine is left beside one that is not a rebuilt copy");
    }
    remove_dir(&fresh)
}

/// Moves a spool of the first layout (fjall's files straight in the spool's directory) into
/// `engine/`, once, before anything opens it. Each file moves by a rename, and a move that a
/// crash interrupted is finished at the next start (`engine.moving/` tells).
pub(super) fn migrate_layout(spool: &Path) -> Result<(), SpoolError> {
    let engine = engine_dir(spool);
    let moving = spool.join("engine.moving");
    if engine.exists() || !(holds_database(spool) || moving.exists()) {
        return Ok(());
    }
    tracing::info!(path = %spool.display(), "moving the spool's database into engine/ (the layout of this release)");
    std::fs::create_dir_all(&moving).map_err(|e| io_error(&moving, e))?;
    let entries = std::fs::read_dir(spool).map_err(|e| io_error(spool, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(spool, e))?;
        let name = entry.file_name();
        let fjall_owns = name == FJALL_VERSION
            || name == "lock"
            || name == "keyspaces"
            || Path::new(&name).extension().is_some_and(|x| x == "jnl");
        if fjall_owns {
            let to = moving.join(&name);
            std::fs::rename(entry.path(), &to).map_err(|e| io_error(&to, e))?;
        }
    }
    sync_path(&moving)?;
    sync_path(spool)?;
    std::fs::rename(&moving, &engine).map_err(|e| io_error(&moving, e))?;
    sync_path(spool)
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn remove_dir(path: &Path) -> Result<(), SpoolError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Syncs a file or a directory (a directory's entries: a rename in it is durable after this).
fn sync_path(path: &Path) -> Result<(), SpoolError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, e: std::io::Error) -> SpoolError {
    SpoolError::Storage(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TUNING: Tuning = Tuning { memory: 4 << 20 };

    use uuid::Uuid;

    // Pending a and z (z's append was refused), dead b, delivered d: ids in that order.
    const A: Uuid = Uuid::from_u128(1);
    const Z: Uuid = Uuid::from_u128(2);
    const B: Uuid = Uuid::from_u128(3);
    const D: Uuid = Uuid::from_u128(4);

    fn filled(path: &Path) -> Engine {
        let e = Engine::open(path, TUNING).unwrap();
        for (space, id) in [(Space::Pending, A), (Space::Pending, Z), (Space::Dead, B)] {
            e.live
                .insert(keys::live_key(space, "r", id), b"state")
                .unwrap();
            e.events.insert(keys::record_key(id), b"record").unwrap();
        }
        e.events.insert(keys::record_key(D), b"record").unwrap();
        e.done.insert(keys::record_key(D), b"state").unwrap();
        // One expired key (expiry 1 ms after the epoch) and one that is not.
        e.dedup.insert(1u64.to_be_bytes(), b"").unwrap();
        e.dedup.insert(u64::MAX.to_be_bytes(), b"").unwrap();
        e.db.persist(fjall::PersistMode::SyncAll).unwrap();
        e
    }

    /// What the engine at `path` holds: pending ids, dead ids, records, delivered, kept, dedup
    /// keys.
    #[derive(Debug, PartialEq)]
    struct Contents {
        pending: Vec<Uuid>,
        dead: Vec<Uuid>,
        events: Vec<Uuid>,
        done: Vec<Uuid>,
        kept: Vec<Uuid>,
        dedup: usize,
    }

    fn contents(path: &Path) -> Contents {
        let e = Engine::open(path, TUNING).unwrap();
        let ids = |ks: &fjall::Keyspace, space: Option<Space>| {
            ks.iter()
                .map(|kv| kv.key().unwrap().to_vec())
                .filter(|k| space.is_none_or(|s| Space::of(k) == Some(s)))
                .filter_map(|k| keys::id_of(&k))
                .collect::<Vec<_>>()
        };
        Contents {
            pending: ids(&e.live, Some(Space::Pending)),
            dead: ids(&e.live, Some(Space::Dead)),
            events: ids(&e.events, None),
            done: ids(&e.done, None),
            kept: ids(&e.kept, None),
            dedup: e.dedup.iter().count(),
        }
    }

    fn skip_z() -> Skip {
        Skip {
            pending: [keys::live_key(Space::Pending, "r", Z)].into(),
            dedup: HashSet::new(),
        }
    }

    #[test]
    fn a_rebuild_keeps_what_is_live_and_the_history_but_the_skipped_and_expired() {
        let dir = tempfile::tempdir().unwrap();
        let path = engine_dir(dir.path());
        let e = filled(&path);
        let fresh = beside(&path, "rebuild");
        e.copy_live(&fresh, TUNING, &skip_z(), Uuid::nil()).unwrap();
        drop(e);
        swap_in(&path, &fresh).unwrap();
        assert!(!fresh.exists() && !beside(&path, "old").exists());
        assert!(!path.join(COMPLETE).exists());
        assert_eq!(
            contents(&path),
            Contents {
                pending: vec![A],
                dead: vec![B],
                events: vec![A, B, D],
                done: vec![D],
                kept: vec![],
                dedup: 1
            }
        );
        // The copy takes writes like any database: its sequence numbers go on from its tables.
        let e = Engine::open(&path, TUNING).unwrap();
        let a = keys::live_key(Space::Pending, "r", A);
        e.live.remove(a.clone()).unwrap();
        e.live.insert(b"pr\0c", b"three").unwrap();
        assert_eq!(e.live.get(&a).unwrap(), None);
        assert_eq!(
            e.live.get(b"pr\0c").unwrap().as_deref(),
            Some(&b"three"[..])
        );
    }

    #[test]
    fn a_rebuild_short_of_room_keeps_the_newest_history_and_every_live_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = engine_dir(dir.path());
        let e = filled(&path);
        let fresh = beside(&path, "rebuild");
        // The history from D on: the live records before it go to `kept`.
        e.copy_live(&fresh, TUNING, &skip_z(), D).unwrap();
        drop(e);
        swap_in(&path, &fresh).unwrap();
        assert_eq!(
            contents(&path),
            Contents {
                pending: vec![A],
                dead: vec![B],
                events: vec![D],
                done: vec![D],
                kept: vec![A, B],
                dedup: 1
            }
        );
        let e = Engine::open(&path, TUNING).unwrap();
        assert_eq!(e.record(A).unwrap().as_deref(), Some(&b"record"[..]));
        assert_eq!(e.record(Z).unwrap(), None);
    }

    #[test]
    fn a_reopen_never_creates_an_empty_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = engine_dir(dir.path());
        assert!(Engine::reopen(&path, TUNING).is_err());
        assert!(!path.exists());
        drop(filled(&path));
        assert!(Engine::reopen(&path, TUNING).is_ok());
    }

    #[test]
    fn an_interrupted_swap_is_finished_or_undone_and_never_loses_a_copy() {
        struct Case {
            name: &'static str,
            /// Builds the leftovers in (engine, its copy, the old engine).
            setup: fn(&Path, &Path, &Path),
            /// Whether the state is refused (for an operator) rather than resolved.
            refused: bool,
        }
        let cases = [
            Case {
                name: "copy half written",
                setup: |path, fresh, _| {
                    drop(filled(path));
                    drop(Engine::open(fresh, TUNING).unwrap());
                },
                refused: false,
            },
            Case {
                name: "copy complete, not swapped yet",
                setup: |path, fresh, _| {
                    let e = filled(path);
                    e.copy_live(fresh, TUNING, &Skip::default(), Uuid::nil())
                        .unwrap();
                },
                refused: false,
            },
            Case {
                name: "engine moved aside, copy complete",
                setup: |path, fresh, old| {
                    let e = filled(path);
                    e.copy_live(fresh, TUNING, &Skip::default(), Uuid::nil())
                        .unwrap();
                    drop(e);
                    std::fs::rename(path, old).unwrap();
                },
                refused: false,
            },
            Case {
                name: "engine moved aside, copy incomplete",
                setup: |path, fresh, old| {
                    drop(filled(path));
                    drop(Engine::open(fresh, TUNING).unwrap());
                    std::fs::rename(path, old).unwrap();
                },
                refused: false,
            },
            Case {
                name: "copy in, old one left",
                setup: |path, fresh, old| {
                    let e = filled(path);
                    e.copy_live(fresh, TUNING, &Skip::default(), Uuid::nil())
                        .unwrap();
                    drop(e);
                    std::fs::rename(path, old).unwrap();
                    std::fs::rename(fresh, path).unwrap();
                },
                refused: false,
            },
            Case {
                name: "copy in, old one removed, marker left",
                setup: |path, fresh, _| {
                    let e = filled(path);
                    e.copy_live(fresh, TUNING, &Skip::default(), Uuid::nil())
                        .unwrap();
                    drop(e);
                    std::fs::remove_dir_all(path).unwrap();
                    std::fs::rename(fresh, path).unwrap();
                },
                refused: false,
            },
            Case {
                // A database made in the engine's place after its swap failed half way.
                name: "an empty engine beside a complete copy and the old one",
                setup: |path, fresh, old| {
                    let e = filled(path);
                    e.copy_live(fresh, TUNING, &Skip::default(), Uuid::nil())
                        .unwrap();
                    drop(e);
                    std::fs::rename(path, old).unwrap();
                    drop(Engine::open(path, TUNING).unwrap());
                },
                refused: true,
            },
            Case {
                name: "the engine's directory empty beside the old one",
                setup: |path, _, old| {
                    drop(filled(path));
                    std::fs::rename(path, old).unwrap();
                    std::fs::create_dir_all(path).unwrap();
                },
                refused: true,
            },
        ];
        for c in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = engine_dir(dir.path());
            let (fresh, old) = (beside(&path, "rebuild"), beside(&path, "old"));
            (c.setup)(&path, &fresh, &old);
            let result = recover_swap(&path);
            if c.refused {
                assert!(result.is_err(), "{}: not refused", c.name);
                assert!(
                    fresh.exists() || old.exists(),
                    "{}: a copy was removed",
                    c.name
                );
                continue;
            }
            result.unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert!(!fresh.exists(), "{}: copy left", c.name);
            assert!(!old.exists(), "{}: old engine left", c.name);
            assert!(!path.join(COMPLETE).exists(), "{}: marker left", c.name);
            let found = contents(&path);
            assert_eq!(found.pending, [A, Z], "{}", c.name);
            assert_eq!(found.dead, [B], "{}", c.name);
        }
    }

    #[test]
    fn a_spool_of_the_first_layout_moves_into_engine() {
        let dir = tempfile::tempdir().unwrap();
        drop(filled(dir.path()));
        migrate_layout(dir.path()).unwrap();
        assert!(!dir.path().join(FJALL_VERSION).exists());
        let found = contents(&engine_dir(dir.path()));
        assert_eq!(found.pending, [A, Z]);
        assert_eq!(found.dead, [B]);
        // Interrupted after some files moved: finished at the next start.
        let dir = tempfile::tempdir().unwrap();
        drop(filled(dir.path()));
        let moving = dir.path().join("engine.moving");
        std::fs::create_dir(&moving).unwrap();
        std::fs::rename(dir.path().join(FJALL_VERSION), moving.join(FJALL_VERSION)).unwrap();
        migrate_layout(dir.path()).unwrap();
        assert_eq!(contents(&engine_dir(dir.path())).pending, [A, Z]);
        // Nothing to move: nothing happens.
        migrate_layout(dir.path()).unwrap();
        assert!(engine_dir(dir.path()).join(FJALL_VERSION).exists());
    }
}
