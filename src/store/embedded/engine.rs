//! The fjall database under the spool, as one value the writer can close and open again in the
//! running process: after a failed write (fjall refuses every write once one failed, until it is
//! reopened), and to give space back when the engine itself fills the disk (a rebuild).
//!
//! A rebuild copies what is live (pending events, dead letters, unexpired dedup keys) into a
//! fresh database next to the spool, written straight into tables (no journal), then swaps the
//! two directories. fjall deletes a journal only once it passed 64 MB and was flushed: on a
//! small filesystem nothing else gives the journal's space back. Every step leaves a state that
//! [`recover_swap`] finishes or undoes at the next open, so a crash anywhere loses nothing.

use std::path::{Path, PathBuf};

use super::disk::{journal_bytes, statvfs, Measure};
use super::keys::expired_until;
use crate::store::spool::SpoolError;

/// How long a reopen waits for the last reader of the previous engine to let it go.
pub(super) const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Marks a rebuilt copy as complete (every record written and synced): only then may it
/// replace the spool.
const COMPLETE: &str = "hookgate-rebuilt";

/// The engine: the database and its three keyspaces.
pub(super) struct Engine {
    pub db: fjall::Database,
    pub pending: fjall::Keyspace,
    pub dead: fjall::Keyspace,
    pub dedup: fjall::Keyspace,
}

/// How the engine is opened: its memory budget.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tuning {
    pub memory: u64,
}

impl Engine {
    /// Opens (or creates) the database in `path`.
    pub fn open(path: &Path, tuning: Tuning) -> Result<Self, SpoolError> {
        Self::open_engine(path, tuning)
            .map_err(|e| SpoolError::Storage(format!("{}: {e}", path.display())))
    }

    /// Opens the database in `path` once the handles of a previous engine there are gone: a
    /// reader may still hold one for a moment (bounded: [`RELEASE_WAIT`]).
    pub fn reopen(path: &Path, tuning: Tuning) -> Result<Self, SpoolError> {
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
        // pending events (a sealed memtable waits for its flush on the one engine worker).
        let cache = tuning.memory / 4;
        let buffers = tuning.memory - cache;
        let db = fjall::Database::builder(path)
            .manual_journal_persist(true)
            .cache_size(cache)
            .worker_threads(1)
            .open()?;
        let memtable = |share: u64| {
            move || fjall::KeyspaceCreateOptions::default().max_memtable_size(buffers / share)
        };
        let pending = db.keyspace("pending", memtable(2))?;
        let dead = db.keyspace("dead", memtable(4))?;
        let dedup = db.keyspace("dedup", memtable(4))?;
        Ok(Self {
            db,
            pending,
            dead,
            dedup,
        })
    }

    /// What the filesystem under `path` (the engine's directory) holds and has free.
    pub fn measure(&self, path: &Path) -> std::io::Result<Measure> {
        let (free, total) = statvfs(path)?;
        Ok(Measure {
            free,
            total,
            journal: journal_bytes(path),
            tables: self.pending.disk_space() + self.dead.disk_space() + self.dedup.disk_space(),
        })
    }

    /// Copies everything live into a fresh database at `to` (removed first if a previous try
    /// left it), straight into its tables, synced and marked complete. Returns the bytes
    /// written (records' keys and values).
    pub fn copy_live(&self, to: &Path, tuning: Tuning) -> Result<u64, SpoolError> {
        remove_dir(to)?;
        let mut written = 0u64;
        {
            let fresh = Engine::open(to, tuning)?;
            for (from, into) in [(&self.pending, &fresh.pending), (&self.dead, &fresh.dead)] {
                written += ingest(from.iter(), into)?;
            }
            // Expired dedup keys sort first: they are left behind.
            written += ingest(self.dedup.range(expired_until()..), &fresh.dedup)?;
            fresh.db.persist(fjall::PersistMode::SyncAll)?;
        }
        let marker = to.join(COMPLETE);
        std::fs::write(&marker, b"").map_err(|e| io_error(&marker, e))?;
        sync_path(&marker)?;
        sync_path(to)?;
        Ok(written)
    }
}

/// Writes every record of `records` (sorted, as a keyspace iterates) into the empty `into`.
fn ingest(
    records: impl Iterator<Item = fjall::Guard>,
    into: &fjall::Keyspace,
) -> Result<u64, SpoolError> {
    let mut ingestion = into.start_ingestion()?;
    let mut bytes = 0u64;
    for kv in records {
        let (k, v) = kv.into_inner()?;
        bytes += (k.len() + v.len()) as u64;
        ingestion.write(k, v)?;
    }
    ingestion.finish()?;
    Ok(bytes)
}

/// The directory beside `path` named `{name}.{suffix}` (the rebuild's copy, the old spool).
pub(super) fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "spool".into());
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// Puts the complete copy at `fresh` in place of the spool at `path`: the spool moves aside,
/// the copy takes its name, the old one is removed. The parent directory is synced after each
/// rename, so a crash leaves one of the states [`recover_swap`] knows.
pub(super) fn swap_in(path: &Path, fresh: &Path) -> Result<(), SpoolError> {
    let old = beside(path, "old");
    remove_dir(&old)?;
    let parent = parent(path);
    std::fs::rename(path, &old).map_err(|e| io_error(path, e))?;
    sync_path(&parent)?;
    std::fs::rename(fresh, path).map_err(|e| io_error(fresh, e))?;
    sync_path(&parent)?;
    let marker = path.join(COMPLETE);
    std::fs::remove_file(&marker).map_err(|e| io_error(&marker, e))?;
    remove_dir(&old)
}

/// Finishes or undoes a rebuild that a crash interrupted, before the spool at `path` opens:
///
/// | found | means | done |
/// | --- | --- | --- |
/// | `path` and a copy not marked complete | the copy was being written | the copy removed |
/// | no `path`, a complete copy | the spool moved aside, the copy not yet in | the copy moved in |
/// | no `path`, no complete copy, `path.old` | (a copy lost) | `path.old` moved back |
/// | `path` marked complete | the copy moved in, its marker not yet removed | the marker removed |
/// | `path` and `path.old` | the old one not yet removed | `path.old` removed |
pub(super) fn recover_swap(path: &Path) -> Result<(), SpoolError> {
    let fresh = beside(path, "rebuild");
    let old = beside(path, "old");
    let fresh_complete = fresh.join(COMPLETE).exists();
    if !path.exists() {
        if fresh_complete {
            tracing::warn!(path = %path.display(), "finishing a spool rebuild that was interrupted: the rebuilt copy moves in");
            std::fs::rename(&fresh, path).map_err(|e| io_error(&fresh, e))?;
            sync_path(&parent(path))?;
        } else if old.exists() {
            tracing::warn!(path = %path.display(), "undoing a spool rebuild that was interrupted: the spool moves back");
            std::fs::rename(&old, path).map_err(|e| io_error(&old, e))?;
            sync_path(&parent(path))?;
        }
    }
    if fresh.exists() {
        remove_dir(&fresh)?;
    }
    let marker = path.join(COMPLETE);
    if marker.exists() {
        std::fs::remove_file(&marker).map_err(|e| io_error(&marker, e))?;
    }
    if old.exists() {
        remove_dir(&old)?;
    }
    Ok(())
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

    fn filled(path: &Path) -> Engine {
        let e = Engine::open(path, TUNING).unwrap();
        e.pending.insert(b"r\0a", b"one").unwrap();
        e.dead.insert(b"r\0b", b"two").unwrap();
        // One expired key (expiry 1 ms after the epoch) and one that is not.
        e.dedup.insert(1u64.to_be_bytes(), b"").unwrap();
        e.dedup.insert(u64::MAX.to_be_bytes(), b"").unwrap();
        e.db.persist(fjall::PersistMode::SyncAll).unwrap();
        e
    }

    fn contents(path: &Path) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, usize) {
        let e = Engine::open(path, TUNING).unwrap();
        let keys = |ks: &fjall::Keyspace| {
            ks.iter()
                .map(|kv| kv.key().unwrap().to_vec())
                .collect::<Vec<_>>()
        };
        let n = e.dedup.iter().count();
        (keys(&e.pending), keys(&e.dead), n)
    }

    #[test]
    fn a_rebuild_keeps_what_is_live_and_leaves_expired_dedup_keys_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let e = filled(&path);
        let fresh = beside(&path, "rebuild");
        e.copy_live(&fresh, TUNING).unwrap();
        drop(e);
        swap_in(&path, &fresh).unwrap();
        assert!(!fresh.exists() && !beside(&path, "old").exists());
        let (pending, dead, dedup) = contents(&path);
        assert_eq!(pending, [b"r\0a".to_vec()]);
        assert_eq!(dead, [b"r\0b".to_vec()]);
        assert_eq!(dedup, 1);
        // The copy takes writes like any database: its sequence numbers go on from its tables.
        let e = Engine::open(&path, TUNING).unwrap();
        e.pending.remove(b"r\0a").unwrap();
        e.pending.insert(b"r\0c", b"three").unwrap();
        assert_eq!(e.pending.get(b"r\0a").unwrap(), None);
        assert_eq!(
            e.pending.get(b"r\0c").unwrap().as_deref(),
            Some(&b"three"[..])
        );
    }

    #[test]
    fn an_interrupted_rebuild_is_finished_or_undone_at_open() {
        struct Case {
            name: &'static str,
            /// Builds the leftovers in (spool, its copy, the old spool).
            setup: fn(&Path, &Path, &Path),
        }
        let cases = [
            Case {
                name: "copy half written",
                setup: |path, fresh, _| {
                    drop(filled(path));
                    drop(Engine::open(fresh, TUNING).unwrap());
                },
            },
            Case {
                name: "spool moved aside, copy complete",
                setup: |path, fresh, old| {
                    let e = filled(path);
                    e.copy_live(fresh, TUNING).unwrap();
                    drop(e);
                    std::fs::rename(path, old).unwrap();
                },
            },
            Case {
                name: "spool moved aside, copy incomplete",
                setup: |path, fresh, old| {
                    drop(filled(path));
                    drop(Engine::open(fresh, TUNING).unwrap());
                    std::fs::rename(path, old).unwrap();
                },
            },
            Case {
                name: "copy in, old one left",
                setup: |path, fresh, old| {
                    let e = filled(path);
                    e.copy_live(fresh, TUNING).unwrap();
                    drop(e);
                    std::fs::rename(path, old).unwrap();
                    std::fs::rename(fresh, path).unwrap();
                },
            },
        ];
        for c in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("spool");
            let (fresh, old) = (beside(&path, "rebuild"), beside(&path, "old"));
            (c.setup)(&path, &fresh, &old);
            recover_swap(&path).unwrap();
            assert!(!fresh.exists(), "{}: copy left", c.name);
            assert!(!old.exists(), "{}: old spool left", c.name);
            assert!(!path.join(COMPLETE).exists(), "{}: marker left", c.name);
            let (pending, dead, _) = contents(&path);
            assert_eq!(pending, [b"r\0a".to_vec()], "{}", c.name);
            assert_eq!(dead, [b"r\0b".to_vec()], "{}", c.name);
        }
    }
}
