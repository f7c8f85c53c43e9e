//! Property tests over every parser of untrusted input (issue 20, item 5): what a sender, a
//! proxy in front of the gateway, or an operator's config file can hand hookgate, generated from
//! what real senders send (DESIGN §1's payload, the signature schemes' documented headers, the
//! config of DESIGN §8) plus hostile mutations (truncation, odd Unicode, NULs, repeated names,
//! deep nesting, long headers). DESIGN §2: "No input can panic the process"; these check it
//! where a table of hand-picked cases cannot reach.
//!
//! | property | asserts | why |
//! | --- | --- | --- |
//! | `client_ip_*` | the resolved address equals a model of DESIGN §2 step 2 (rightmost untrusted hop, mapped IPv6 normalised, a garbled header falls back to the peer); hops left of the client never change it; several headers are one list | a spoofed `X-Forwarded-For` must never widen the allowlist |
//! | `validate_*` | every profile answers any bytes with `Ok`, 400 or a bounded 422 and never panics; step 10 agrees with serde_json and does not depend on the profile; repeated names are 400 at any depth; `runblob` lists exactly the fields DESIGN §1's table refuses; a schema's 422 lists at most 20 fields and counts them all | the sender contract is the gateway's core promise, and a 422 must stay small whatever the body |
//! | `schema_*` | any JSON value given as a schema compiles or is an error naming the key, and what compiles validates without panicking | a schema file is one more input the gateway parses |
//! | `dedup_*` | pointer lookup agrees with serde_json (RFC 6901); a spec's text round-trips; keys are deterministic, scoped, typed and never alias across kinds | a dedup key that aliases drops a real event as a duplicate |
//! | `signature_*` | a body signed as each scheme documents verifies (any rotated secret); any single-byte change of body, signature, id or timestamp fails; arbitrary header values never panic and never verify; the window is exact; secrets are never echoed | step 9 fails closed or it is no check at all |
//! | `request_head_*` | the head checks never panic and agree with the declared length and media type | steps 4, 6 and 7 run before any body byte |
//! | `config_*` | arbitrary and mutated TOML never panics and every error names the file and a key or a position; a generated config is accepted exactly when every value is valid, each refused key is named, secrets never printed, and the effective config reads back the same | a typo in a security gateway's config must fail loudly and precisely |
//! | `gateway_*` | the real binary answers any mutated or random request head with a well-formed HTTP/1.1 answer or a clean close within a bound, stays alive, and `/healthz` answers after | the parser in front of every step is pingora's plus ours |
//!
//! Each property runs a fixed number of cases from a fixed seed in the normal suite: a suite that
//! fails at random is a defect, and new ground is what `scripts/fuzz` is for. With
//! `HOOKGATE_FUZZ_SECONDS=N` each property keeps running fresh batches (random seeds) for `N`
//! seconds and prints how many cases it ran; a failure prints proptest's minimal input and the
//! batch's seed, which `HOOKGATE_PROPTEST_SEED` replays. Defects these found are the named
//! tests of `regressions` at the end.

#[path = "../common/mod.rs"]
mod common;

mod client_ip;
mod config;
mod dedup_key;
mod gateway;
mod generate;
mod harness;
mod regressions;
mod request_head;
mod signature;
mod validate;
