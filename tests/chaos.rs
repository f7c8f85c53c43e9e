//! The chaos run of `examples/chaos`, short: 2,000 generations from `examples/sender` through
//! the real gateway to a handler that fails 20% and stalls 5% of deliveries, the gateway
//! SIGKILLed 3 times and SIGTERMed once under load (and on Redis, Redis restarted twice with
//! `appendfsync always`). Every acknowledged generation must reach the handler and still be
//! answered `duplicate`; with a second, ordered destination, each key's generations reach it in
//! order. `scripts/chaos` runs the full one (20,000 generations, 10 kills).

use std::path::{Path, PathBuf};
use std::process::Command;

/// `examples/chaos`, with `examples/sender` beside it, built (or found fresh) by cargo in the
/// profile of the gateway under test; where cargo put it, as cargo reports.
fn chaos_binary() -> PathBuf {
    let gateway = Path::new(env!("CARGO_BIN_EXE_hookgate"));
    let release = gateway
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|p| p == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--locked",
            "--all-features",
            "--message-format=json",
        ])
        .args(["--example", "chaos", "--example", "sender"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        build.arg("--release");
    }
    let out = build.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "cannot build examples/chaos and examples/sender:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "chaos")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reports the chaos example it built")
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

/// Two destinations, the second ordered by a key: both get every acknowledged event, and each
/// key's come in order, through the kills.
#[test]
fn chaos_with_an_ordered_second_destination_loses_nothing_and_keeps_order() {
    let out = chaos(&["--destinations", "2", "--keys", "16"]);
    println!("{out}");
    assert_eq!(count(&out, "lost"), 0);
    assert_eq!(count(&out, "ordered_lost"), 0);
    assert_eq!(count(&out, "out_of_order"), 0);
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
