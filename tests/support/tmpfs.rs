//! A small tmpfs mounted for one test (a disk that really fills up), unmounted when dropped.
//! Mounting needs root: without it the test is skipped, and says so loudly on stderr.
#![allow(dead_code)] // each test file uses part of it

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, and the directory holding its mount point.
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

/// Whether this process runs as root (the uid `id -u` prints).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Says loudly that `test` did not run, and why.
pub fn skipped(test: &str, why: &str) {
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SKIPPED {test}: {why}\n\
         !!! run the suite as root (scripts/test under sudo, or CI) to run it.\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`"16m"`), or says why not (the caller skips, loudly).
    pub fn mount(size: &str) -> Result<Tmpfs, String> {
        if !is_root() {
            return Err("mounting a tmpfs needs root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { path, _dir: dir })
    }

    /// Fills what is left of the disk with a file of zeros at `name`, until the disk is full;
    /// returns its size.
    pub fn fill(&self, name: &str) -> u64 {
        Self::fill_at(&self.path, name)
    }

    /// [`fill`](Self::fill) in the directory `dir` (from another thread).
    pub fn fill_at(dir: &Path, name: &str) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(dir.join(name)).expect("create the ballast");
        let chunk = vec![0u8; 256 << 10];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        // The last pages, a byte at a time from the kernel's point of view.
        loop {
            match f.write(&chunk[..512]) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        written
    }

    /// Removes `name` (a ballast from [`fill`](Self::fill)).
    pub fn free(&self, name: &str) {
        std::fs::remove_file(self.path.join(name)).expect("remove the ballast");
    }

    /// Free bytes now (`df`).
    pub fn available(&self) -> u64 {
        available(&self.path)
    }
}

/// Free bytes of the filesystem of `path`, as `df` reports them.
pub fn available(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process the test started may still hold a file there for a moment.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
