//! The chaos run of `examples/chaos`, short: 2,000 generations from `examples/sender` through
//! the real gateway to a handler that fails 20% and stalls 5% of deliveries, the gateway
//! SIGKILLed 3 times and SIGTERMed once under load (and on Redis, Redis restarted twice with
//! `appendfsync always`). Every acknowledged generation must reach the handler and still be
//! answered `duplicate`. `scripts/chaos` runs the full one (20,000 generations, 10 kills).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The example binaries next to the gateway under test, built (or found fresh) by cargo.
fn chaos_binary() -> PathBuf {
    let gateway = Path::new(env!("CARGO_BIN_EXE_hookgate"));
    let examples = gateway
        .parent()
        .expect("a target directory")
        .join("examples");
    // The same profile and features as this test's gateway: cargo finds them fresh (after
    // scripts/test's build) or builds the two examples.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--all-features",
            "--example",
            "chaos",
            "--example",
            "sender",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "cannot build examples/chaos and examples/sender"
    );
    examples.join("chaos")
}

fn chaos(args: &[&str]) -> String {
    let out = Command::new(chaos_binary())
        .args([
            "--generations",
            "2000",
            "--concurrency",
            "16",
            "--rate",
            "250",
        ])
        .args(["--kills", "3", "--terms", "1", "--seconds", "240"])
        .args(args)
        .output()
        .expect("examples/chaos runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chaos failed:\n{text}\n{errors}");
    text
}

/// The `chaos:` line's count `name`.
fn count(out: &str, name: &str) -> u64 {
    out.lines()
        .find(|l| l.starts_with("chaos: backend="))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
}

#[test]
fn chaos_on_the_embedded_store_loses_no_acknowledged_event() {
    let out = chaos(&[]);
    println!("{out}");
    assert_eq!(count(&out, "lost"), 0);
    assert_eq!(count(&out, "not_duplicate"), 0);
    assert_eq!(count(&out, "kills"), 3);
    assert!(count(&out, "acked") >= 1900, "{out}");
}

#[test]
fn chaos_on_redis_loses_no_acknowledged_event() {
    let out = chaos(&["--backend", "redis", "--redis-restarts", "2"]);
    println!("{out}");
    assert_eq!(count(&out, "lost"), 0);
    assert_eq!(count(&out, "not_duplicate"), 0);
    assert_eq!(count(&out, "redis_restarts"), 2);
    assert!(count(&out, "acked") >= 1900, "{out}");
}
