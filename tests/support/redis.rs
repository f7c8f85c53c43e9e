//! A real `redis-server` for the tests, on a free loopback port with its own directory and
//! `appendonly yes`; stopped (by PID) when dropped. `scripts/test` starts one for the whole run
//! and exports `HOOKGATE_TEST_REDIS`; a test run without it starts one per test.
#![allow(dead_code)] // each test file uses part of it

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` process this test started.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    extra: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl RedisServer {
    /// Starts one on a free port, its files under `dir`; waits until it answers.
    pub fn start(dir: &Path) -> RedisServer {
        Self::start_with(dir, &[])
    }

    /// [`start`](Self::start) with more `redis-server` arguments.
    pub fn start_with(dir: &Path, extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: dir.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.restart();
        server
    }

    /// A replica of the server on `primary`, its files under `dir`.
    pub fn replica_of(dir: &Path, primary: u16) -> RedisServer {
        Self::start_with(dir, &["--replicaof", "127.0.0.1", &primary.to_string()])
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port and directory (after [`kill`](Self::kill)): it reloads
    /// its append-only file.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::File::create(self.dir.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .args([
                // everysec (the default): an acknowledged write is in the kernel before the answer,
                // so a SIGKILL of the server loses none.
                "--appendonly",
                "yes",
                "--save",
                "",
                "--daemonize",
                "no",
            ])
            .args(&self.extra)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs Debian's redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if ping(self.port) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "redis-server did not answer on port {}; its log:\n{}",
                    self.port,
                    std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to it, by PID.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGKILLs it (by PID) and waits for the exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A stopped process does not die of SIGKILL until it is continued on some systems.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(self.child.as_ref().map(|c| c.id()).unwrap_or(0).to_string())
                .status();
        }
        self.kill();
    }
}

/// Whether a server on `port` answers `PING` (and is done loading its data).
pub fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// The Redis the tests share: `HOOKGATE_TEST_REDIS` (set by `scripts/test`), or a server this
/// test starts under `dir` (returned, to keep it running).
pub fn shared(dir: &Path) -> (String, Option<RedisServer>) {
    match std::env::var("HOOKGATE_TEST_REDIS") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let server = RedisServer::start(&dir.join("redis"));
            (server.url(), Some(server))
        }
    }
}

/// A key prefix no other test uses.
pub fn prefix() -> String {
    format!("test-{}", uuid::Uuid::now_v7().simple())
}
