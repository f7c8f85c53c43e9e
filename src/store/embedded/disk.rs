//! The embedded spool's room on disk (DESIGN §3: a full disk is backpressure, not an outage).
//!
//! New events are refused (503 `spool_full`) while the filesystem's free space, less what the
//! engine needs for its own work, is under `min_free_space`. The engine's own work is what it
//! writes with no new event at all: flushing what its journal holds into tables, and compacting
//! tables (rewritten before the old ones go). Keeping room for both means the deliveries that
//! follow a refusal, and the engine's maintenance, never meet `ENOSPC`.
//!
//! The writer thread measures (`statvfs`, the journal files, the tables) every few
//! milliseconds and takes what it commits off the figure in between, so an append decides by
//! loading one atomic: no system call per request.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The default `min_free_space`: this much, or [`DEFAULT_MIN_FREE_PERCENT`] of a smaller
/// filesystem.
pub const DEFAULT_MIN_FREE: u64 = 256 << 20;

/// The default `min_free_space` of a filesystem smaller than 20 × [`DEFAULT_MIN_FREE`], in
/// percent of its size.
pub const DEFAULT_MIN_FREE_PERCENT: u64 = 5;

/// The most room kept for one compaction: fjall's leveled compaction rewrites a level-0 run with
/// the level-1 tables it overlaps (64 MiB each at most), never the whole store.
const COMPACTION_ROOM_MAX: u64 = 128 << 20;

/// What the filesystem under the spool reported, with what the engine holds there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Measure {
    /// Bytes an unprivileged writer may still use (`f_bavail × f_frsize`).
    pub free: u64,
    /// The filesystem's size.
    pub total: u64,
    /// Bytes of journal files (allocated, not their preallocated length).
    pub journal: u64,
    /// Bytes of the engine's tables.
    pub tables: u64,
}

impl Measure {
    /// The room the engine keeps for its own work: flushing its journal, one compaction.
    pub fn engine_room(&self) -> u64 {
        self.journal + self.tables.min(COMPACTION_ROOM_MAX)
    }
}

/// `statvfs` of `path`: (free for unprivileged writers, total), in bytes.
#[cfg(unix)]
pub(super) fn statvfs(path: &Path) -> std::io::Result<(u64, u64)> {
    let s = rustix::fs::statvfs(path)?;
    let unit = if s.f_frsize > 0 {
        s.f_frsize
    } else {
        s.f_bsize
    };
    Ok((
        s.f_bavail.saturating_mul(unit),
        s.f_blocks.saturating_mul(unit),
    ))
}

#[cfg(not(unix))]
pub(super) fn statvfs(_: &Path) -> std::io::Result<(u64, u64)> {
    Err(std::io::Error::other("free space is only measured on Unix"))
}

/// Bytes allocated to the journal files (`*.jnl`) in the engine's directory `dir`. A journal is
/// preallocated to 64 MiB as a sparse file: its blocks, not its length, are what it uses.
pub(super) fn journal_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "jnl"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| allocated(&m))
        .sum()
}

#[cfg(unix)]
fn allocated(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.blocks().saturating_mul(512)
}

#[cfg(not(unix))]
fn allocated(m: &std::fs::Metadata) -> u64 {
    m.len()
}

/// The resolved `min_free_space` of a filesystem of `total` bytes: `configured`, or the default
/// (256 MiB, or 5% of a smaller filesystem). Fails when the configured headroom leaves nothing
/// to store events in.
pub(super) fn min_free(configured: Option<u64>, total: u64, path: &Path) -> Result<u64, String> {
    match configured {
        None => Ok(DEFAULT_MIN_FREE.min(total / 100 * DEFAULT_MIN_FREE_PERCENT)),
        Some(bytes) if total > 0 && bytes >= total => Err(format!(
            "min_free_space ({bytes} bytes) is not less than the size of the filesystem of {} ({total} bytes): no event could ever be stored",
            path.display()
        )),
        Some(bytes) => Ok(bytes),
    }
}

/// The spool's room, shared by the writer (which measures it) and appends (which read it).
#[derive(Debug)]
pub(super) struct Room {
    /// Where the engine's files are.
    pub path: PathBuf,
    /// The resolved `min_free_space`.
    pub min_free: u64,
    /// Free bytes at the last measure, less what was committed since.
    free: AtomicU64,
    /// Free bytes, less the engine's room, less `min_free`, less what was committed since
    /// (twice: a committed byte is used, and must be flushed): appends need it above zero.
    headroom: AtomicI64,
    /// Whether the filesystem can be measured at all (else the check is off, logged once).
    measured: bool,
}

impl Room {
    /// The room of the engine in `path`, whose filesystem reported `first` (`None`: it cannot
    /// be measured, and nothing is refused for room).
    pub fn new(path: PathBuf, min_free: u64, first: Option<Measure>) -> Self {
        let room = Self {
            path,
            min_free,
            free: AtomicU64::new(u64::MAX),
            headroom: AtomicI64::new(i64::MAX),
            measured: first.is_some(),
        };
        if let Some(m) = first {
            room.update(&m);
        }
        room
    }

    /// Takes a new measure.
    pub fn update(&self, m: &Measure) {
        if !self.measured {
            return;
        }
        self.free.store(m.free, Ordering::Release);
        let headroom = i128::from(m.free) - i128::from(m.engine_room()) - i128::from(self.min_free);
        self.headroom.store(clamp(headroom), Ordering::Release);
    }

    /// `bytes` were committed since the last measure.
    pub fn committed(&self, bytes: u64) {
        if !self.measured || bytes == 0 {
            return;
        }
        let b = i64::try_from(bytes).unwrap_or(i64::MAX);
        let _ = self
            .free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                Some(f.saturating_sub(bytes))
            });
        let _ = self
            .headroom
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                Some(h.saturating_sub(b.saturating_mul(2)))
            });
    }

    /// Whether `bytes` more (queued appends and this one) fit above the headroom.
    pub fn fits(&self, bytes: u64) -> bool {
        let needed = i64::try_from(bytes.saturating_mul(2)).unwrap_or(i64::MAX);
        self.headroom.load(Ordering::Acquire) > needed
    }

    /// Whether a record of `bytes` that moves or reschedules an event already stored (a dead
    /// letter, a retry's schedule, a replay) fits: such writes may use the first half of
    /// `min_free_space` beyond the point where new events are refused, so dead-lettering and
    /// retries go on while appends are refused, and still never bring the engine to ENOSPC.
    pub fn fits_bookkeeping(&self, bytes: u64) -> bool {
        let needed = i64::try_from(bytes.saturating_mul(2)).unwrap_or(i64::MAX);
        let allowance = i64::try_from(self.min_free / 2).unwrap_or(i64::MAX);
        self.headroom
            .load(Ordering::Acquire)
            .saturating_add(allowance)
            > needed
    }

    /// Free bytes at the last measure, less what was committed since (`None`: not measured).
    pub fn free(&self) -> Option<u64> {
        self.measured.then(|| self.free.load(Ordering::Acquire))
    }

    /// Bytes left above the headroom (negative: under it).
    pub fn headroom(&self) -> i64 {
        self.headroom.load(Ordering::Acquire)
    }

    /// Whether the filesystem is measured.
    pub fn is_measured(&self) -> bool {
        self.measured
    }
}

fn clamp(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measure(free: u64, journal: u64, tables: u64) -> Measure {
        Measure {
            free,
            total: 1 << 30,
            journal,
            tables,
        }
    }

    #[test]
    fn the_default_headroom_is_256_mib_or_5_percent_of_a_smaller_filesystem() {
        struct Case {
            name: &'static str,
            configured: Option<u64>,
            total: u64,
            want: Result<u64, ()>,
        }
        let cases = [
            Case {
                name: "large filesystem",
                configured: None,
                total: 100 << 30,
                want: Ok(256 << 20),
            },
            Case {
                name: "24 MiB tmpfs",
                configured: None,
                total: 24 << 20,
                want: Ok((24 << 20) / 100 * 5),
            },
            Case {
                name: "configured",
                configured: Some(1 << 20),
                total: 24 << 20,
                want: Ok(1 << 20),
            },
            Case {
                name: "configured beyond the filesystem",
                configured: Some(256 << 20),
                total: 24 << 20,
                want: Err(()),
            },
        ];
        for c in cases {
            let got = min_free(c.configured, c.total, Path::new("/data")).map_err(|_| ());
            assert_eq!(got, c.want, "{}", c.name);
        }
    }

    #[test]
    fn appends_fit_while_free_space_less_the_engines_room_stays_above_the_headroom() {
        let room = Room::new("/d".into(), 1000, Some(measure(10_000, 2000, 3000)));
        // 10,000 free - (2,000 journal + 3,000 tables) - 1,000 = 4,000 left, and each byte
        // appended counts twice (stored, and to flush).
        assert_eq!(room.headroom(), 4000);
        assert!(room.fits(1999));
        assert!(!room.fits(2000));
        room.committed(1000);
        assert_eq!(room.headroom(), 2000);
        assert_eq!(room.free(), Some(9000));
        assert!(!room.fits(1000));
        // Deliveries free space: the next measure says so.
        room.update(&measure(20_000, 0, 3000));
        assert!(room.fits(1000));
    }

    #[test]
    fn bookkeeping_may_use_half_the_headroom_that_appends_may_not() {
        struct Case {
            name: &'static str,
            free: u64,
            append: bool,
            bookkeeping: bool,
        }
        // min_free 1,000, the engine's room 5,000; 100 bytes ask for 200 of headroom.
        let cases = [
            Case {
                name: "room for both",
                free: 6_300,
                append: true,
                bookkeeping: true,
            },
            Case {
                name: "appends refused, bookkeeping goes on",
                free: 6_000,
                append: false,
                bookkeeping: true,
            },
            Case {
                name: "half the headroom used: both refused",
                free: 5_600,
                append: false,
                bookkeeping: false,
            },
        ];
        for c in cases {
            let room = Room::new("/d".into(), 1000, Some(measure(c.free, 2000, 3000)));
            assert_eq!(room.fits(100), c.append, "{}", c.name);
            assert_eq!(room.fits_bookkeeping(100), c.bookkeeping, "{}", c.name);
        }
    }

    #[test]
    fn compaction_room_is_capped() {
        let m = measure(0, 1 << 20, 10 << 30);
        assert_eq!(m.engine_room(), (1 << 20) + COMPACTION_ROOM_MAX);
    }

    #[test]
    fn an_unmeasured_filesystem_refuses_nothing_for_room() {
        let room = Room::new("/d".into(), 1000, None);
        room.committed(1 << 40);
        assert!(room.fits(1 << 40));
        assert_eq!(room.free(), None);
    }

    #[test]
    fn statvfs_reads_a_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = statvfs(dir.path()).unwrap();
        assert!(total > 0 && free <= total, "{free} of {total}");
    }
}
