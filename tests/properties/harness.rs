//! Runs a property: a fixed batch in the suite, fresh batches until a deadline when fuzzing.

use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestCaseResult, TestError, TestRunner};

/// Seconds each property fuzzes for (`scripts/fuzz`); unset in the normal suite.
fn fuzz_for() -> Option<Duration> {
    std::env::var("HOOKGATE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
}

/// A seed that depends only on the property's name, so the suite runs the same cases each
/// time (FNV-1a).
fn fixed_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs `test` on `cases` values of `strategy`; when fuzzing, batch after batch with fresh
/// seeds until the time is up. Panics with the minimal failing input and the seed.
pub fn check<S>(name: &str, cases: u32, strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let fuzz = fuzz_for();
    let replay = std::env::var("HOOKGATE_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let started = Instant::now();
    let mut seed = match (replay, fuzz) {
        (Some(seed), _) => seed,
        (None, Some(_)) => fastrand::u64(..),
        (None, None) => fixed_seed(name),
    };
    let (mut ran, mut batches) = (0u64, 0u64);
    loop {
        let config = Config {
            cases,
            rng_seed: RngSeed::Fixed(seed),
            // The named regression tests keep what was found; no files beside the sources.
            failure_persistence: None,
            // Shrinking a gateway case takes real time; a bounded search still prints a
            // small input.
            max_shrink_time: 30_000,
            max_shrink_iters: 1_000_000,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let failure = match runner.run(&strategy, &test) {
            Ok(()) => None,
            Err(TestError::Fail(why, minimal)) => {
                let shown = format!("{minimal:#?}");
                Some(format!(
                    "property {name} failed (after {ran} passing cases): {why}\n\
                     minimal failing input:\n{}\n\
                     replay: HOOKGATE_PROPTEST_SEED={seed} cargo test --all-features --test properties {name}",
                    hookgate::core::cut(&shown, 20_000)
                ))
            }
            Err(TestError::Abort(why)) => {
                Some(format!("property {name} aborted (seed {seed}): {why}"))
            }
        };
        batches += 1;
        if let Some(failure) = failure {
            if fuzz.is_some() {
                println!(
                    "fuzz: property {name}: {ran} cases in {batches} batches, {:.1}s, FAILED",
                    started.elapsed().as_secs_f64()
                );
            }
            panic!("{failure}");
        }
        ran += u64::from(cases);
        match fuzz {
            Some(limit) if replay.is_none() && started.elapsed() < limit => {
                seed = fastrand::u64(..)
            }
            _ => break,
        }
    }
    if fuzz.is_some() {
        println!(
            "fuzz: property {name}: {ran} cases in {batches} batches, {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
}
