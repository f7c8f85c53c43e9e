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

mod common;

/// Runs a property: a fixed batch in the suite, fresh batches until a deadline when fuzzing.
mod harness {
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
}

/// Strategies shared by several properties.
mod generate {
    use proptest::prelude::*;
    use proptest::sample::select;
    use serde_json::Value;

    /// Strings as hostile senders write them: any Unicode, NULs, bidi controls, BOMs, astral
    /// characters, escapes that look like JSON, long runs.
    pub fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "\\PC{0,12}",
            2 => any::<String>(),
            1 => select(vec![
                "", "\0", "\u{202e}", "\u{feff}", "😀", "\u{10ffff}", "\\u0000", "\"", "\\",
                "a\0b", "\r\n", "\u{300}", "ｇｅｎｅｒａｔｉｏｎ",
            ])
            .prop_map(str::to_owned),
            1 => (1usize..5_000).prop_map(|n| "x".repeat(n)),
        ]
    }

    /// Any JSON value, up to a few levels deep.
    pub fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| {
                serde_json::Number::from_f64(f).map(Value::Number)
            }),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((key(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Object member names: the contract's own often, so values land where the checks look.
    pub fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => select(vec![
                "generation_id", "status", "video_url", "model", "message", "id", "a", "",
                "a/b", "~", "0",
            ])
            .prop_map(str::to_owned),
            1 => text(),
        ]
    }

    /// A canonical generation id in lower, upper or mixed case.
    pub fn uuid() -> impl Strategy<Value = String> {
        (any::<u128>(), 0..3u8).prop_map(|(n, case)| {
            let s = uuid::Uuid::from_u128(n).hyphenated().to_string();
            match case {
                0 => s,
                1 => s.to_uppercase(),
                _ => s
                    .chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if i % 2 == 0 {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect(),
            }
        })
    }

    /// The reference sender's payload (DESIGN §1): completed or failed, a fresh id.
    pub fn provider_payload() -> impl Strategy<Value = String> {
        (uuid(), any::<bool>(), select(super::validate::KNOWN_CODES.to_vec())).prop_map(
            |(id, completed, code)| {
                if completed {
                    format!(
                        r#"{{"generation_id":"{id}","status":"completed","video_url":"https://cdn.example.com/videos/{id}.mp4","model":"kling-o3-video-10s-pro","message":null}}"#
                    )
                } else {
                    format!(
                        r#"{{"generation_id":"{id}","status":"failed","video_url":null,"model":"kling-o3-video-10s-pro","message":"{code}"}}"#
                    )
                }
            },
        )
    }

    /// Bytes that print as a byte string (`b"{\"a\"..."`), so a minimal failing input reads.
    #[derive(Clone, PartialEq, Eq)]
    pub struct Bytes(pub Vec<u8>);

    impl std::fmt::Debug for Bytes {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "b\"{}\"", self.0.escape_ascii())
        }
    }

    impl std::ops::Deref for Bytes {
        type Target = Vec<u8>;

        fn deref(&self) -> &Vec<u8> {
            &self.0
        }
    }

    impl std::ops::DerefMut for Bytes {
        fn deref_mut(&mut self) -> &mut Vec<u8> {
            &mut self.0
        }
    }

    /// One edit of a byte string.
    #[derive(Debug, Clone)]
    pub enum Mutation {
        Truncate(proptest::sample::Index),
        Delete(proptest::sample::Index),
        Replace(proptest::sample::Index, u8),
        Insert(proptest::sample::Index, &'static [u8]),
        Duplicate(proptest::sample::Index, proptest::sample::Index),
    }

    /// Byte runs that break parsers: NULs, line ends, quotes, brackets, invalid and odd UTF-8.
    pub const NASTY: &[&[u8]] = &[
        b"\0",
        b"\r",
        b"\n",
        b"\r\n",
        b" ",
        b"\t",
        b":",
        b",",
        b"\"",
        b"\\",
        b"{",
        b"}",
        b"[",
        b"]",
        b"\x7f",
        b"\x80",
        b"\xff",
        b"\xc3\xa9",
        b"\xe2\x80\xae",
        b"\xf0\x9f\x98\x80",
        b"\xef\xbb\xbf",
        b"\xed\xa0\x80",
        b"\xc0\xaf",
        b"\\u0000",
        b"\\ud800",
        b"1e999999",
        b"-0",
        b"=",
        b"#",
        b"'''",
        b"\"\"\"",
    ];

    pub fn mutation() -> impl Strategy<Value = Mutation> {
        use proptest::sample::Index;
        prop_oneof![
            1 => any::<Index>().prop_map(Mutation::Truncate),
            2 => any::<Index>().prop_map(Mutation::Delete),
            2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Replace(i, b)),
            3 => (any::<Index>(), select(NASTY.to_vec())).prop_map(|(i, s)| Mutation::Insert(i, s)),
            1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
        ]
    }

    /// `bytes` after `mutations`, in order.
    pub fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
        for m in mutations {
            let len = bytes.len();
            match m {
                Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
                Mutation::Delete(i) if len > 0 => {
                    bytes.remove(i.index(len));
                }
                Mutation::Replace(i, b) if len > 0 => bytes[i.index(len)] = *b,
                Mutation::Insert(i, s) => {
                    let at = i.index(len + 1);
                    bytes.splice(at..at, s.iter().copied());
                }
                Mutation::Duplicate(a, b) if len > 0 => {
                    // A slice copied elsewhere: a repeated line, member or header.
                    let (x, y) = (a.index(len), b.index(len));
                    let (from, to) = (x.min(y), x.max(y));
                    let piece = bytes[from..to.min(from + 4096)].to_vec();
                    bytes.splice(to..to, piece);
                }
                _ => {}
            }
        }
        bytes
    }
}

mod client_ip {
    use std::net::IpAddr;

    use hookgate::core::{Allowlist, ClientIp, ClientIpResolver};
    use ipnet::{IpNet, Ipv4Net, Ipv6Net};
    use proptest::prelude::*;
    use proptest::sample::{select, Index};

    use super::harness::check;

    /// Addresses the generated networks and hops share, so hops often fall inside a trusted
    /// network and the walk goes past them.
    const BASES: [&str; 6] = [
        "10.0.0.0",
        "192.0.2.0",
        "203.0.113.0",
        "127.0.0.0",
        "2001:db8::",
        "fd00::",
    ];

    fn base() -> impl Strategy<Value = IpAddr> {
        select(BASES.to_vec()).prop_map(|b| b.parse().expect("a literal address"))
    }

    fn net(ip: IpAddr, len: u8) -> IpNet {
        match ip {
            IpAddr::V4(a) => IpNet::V4(Ipv4Net::new_assert(a, len.min(32)).trunc()),
            IpAddr::V6(a) => IpNet::V6(Ipv6Net::new_assert(a, len.min(128)).trunc()),
        }
    }

    fn network() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            3 => (base(), 8u8..=128).prop_map(|(ip, len)| net(ip, len)),
            1 => (any::<IpAddr>(), 0u8..=128).prop_map(|(ip, len)| net(ip, len)),
            // Written as IPv4-mapped IPv6 (`::ffff:10.0.0.0/104`).
            1 => (base(), 96u8..=128).prop_map(|(ip, len)| match ip {
                IpAddr::V4(a) => net(IpAddr::V6(a.to_ipv6_mapped()), len),
                v6 => net(v6, len),
            }),
        ]
    }

    /// The model's membership test, by ipnet rather than the allowlist's trie: a network
    /// written as IPv4-mapped IPv6 (prefix /96 or longer) holds IPv4 addresses, as DESIGN §2
    /// normalises every mapped address to IPv4.
    fn trusted(nets: &[IpNet], ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        nets.iter().any(|n| match (n, ip) {
            (IpNet::V6(n), IpAddr::V4(a)) if n.prefix_len() >= 96 => n
                .addr()
                .to_ipv4_mapped()
                .is_some_and(|m| Ipv4Net::new_assert(m, n.prefix_len() - 96).contains(&a)),
            (IpNet::V6(n), IpAddr::V6(a)) => n.addr().to_ipv4_mapped().is_none() && n.contains(&a),
            (IpNet::V4(n), IpAddr::V4(a)) => n.contains(&a),
            _ => false,
        })
    }

    /// An address: any, near a base, or inside one of `nets`.
    fn address(nets: Vec<IpNet>) -> impl Strategy<Value = IpAddr> {
        let inside = (any::<Index>(), any::<u128>()).prop_map(move |(i, bits)| {
            if nets.is_empty() {
                return IpAddr::from([192, 0, 2, 1]);
            }
            match nets[i.index(nets.len())] {
                IpNet::V4(n) => {
                    let host = (bits as u32) & u32::from(n.hostmask());
                    IpAddr::V4((u32::from(n.network()) | host).into())
                }
                IpNet::V6(n) => {
                    let host = bits & u128::from(n.hostmask());
                    IpAddr::V6((u128::from(n.network()) | host).into())
                }
            }
        });
        prop_oneof![
            3 => inside,
            1 => (base(), any::<u8>()).prop_map(|(b, low)| match b {
                IpAddr::V4(a) => IpAddr::V4((u32::from(a) | u32::from(low)).into()),
                IpAddr::V6(a) => IpAddr::V6((u128::from(a) | u128::from(low)).into()),
            }),
            1 => any::<IpAddr>(),
        ]
        .prop_flat_map(|ip| {
            // Sometimes as IPv4-mapped IPv6: the same client.
            prop_oneof![
                3 => Just(ip),
                1 => Just(match ip {
                    IpAddr::V4(a) => IpAddr::V6(a.to_ipv6_mapped()),
                    v6 => v6,
                }),
            ]
        })
    }

    /// One hop of `X-Forwarded-For`: an address in one of the forms proxies write, or garbage.
    #[derive(Debug, Clone)]
    enum Hop {
        Ip(IpAddr, String),
        Garbage(String),
    }

    impl Hop {
        fn text(&self) -> &str {
            match self {
                Hop::Ip(_, t) | Hop::Garbage(t) => t,
            }
        }
    }

    fn render(ip: IpAddr, form: u8, port: u16, pad: (&str, &str)) -> String {
        let text = match (ip, form % 4) {
            (IpAddr::V4(a), 0 | 3) => a.to_string(),
            (IpAddr::V4(a), 1) => format!("{a}:{port}"),
            (IpAddr::V4(a), _) => format!("[::ffff:{a}]:{port}"),
            (IpAddr::V6(a), 0) => a.to_string(),
            (IpAddr::V6(a), 1) => format!("[{a}]:{port}"),
            (IpAddr::V6(a), 2) => format!("[{a}]"),
            (IpAddr::V6(a), _) => a.to_string().to_uppercase(),
        };
        format!("{}{text}{}", pad.0, pad.1)
    }

    /// Hops no parser may read as an address (no commas: a hop never holds one).
    fn garbage() -> impl Strategy<Value = String> {
        prop_oneof![
            select(vec![
                "",
                "unknown",
                "1.2.3",
                "256.1.2.3",
                "01.2.3.4",
                "1.2.3.4:",
                "1.2.3.4:99999",
                "[1.2.3.4]:80",
                "[::1",
                "::1]:80",
                "1.2.3.4/24",
                "::g",
                "１.２.３.４",
                " ",
                "1.2.3.4 5.6.7.8",
                "[]",
                "_hidden",
            ])
            .prop_map(str::to_owned),
            "[a-zA-Z_-]{1,12}",
            "_[a-z0-9]{1,8}",
        ]
    }

    fn hop(nets: Vec<IpNet>) -> impl Strategy<Value = Hop> {
        let pad = select(vec!["", " ", "\t", "  "]);
        prop_oneof![
            8 => (address(nets), any::<u8>(), 1u16.., pad.clone(), pad).prop_map(
                |(ip, form, port, a, b)| Hop::Ip(ip, render(ip, form, port, (a, b)))
            ),
            1 => garbage().prop_map(Hop::Garbage),
        ]
    }

    /// One `X-Forwarded-For` header value.
    #[derive(Debug, Clone)]
    enum Header {
        Hops(Vec<Hop>, &'static str),
        NotUtf8(Vec<u8>),
    }

    impl Header {
        fn bytes(&self) -> Vec<u8> {
            match self {
                Header::Hops(hops, sep) => hops
                    .iter()
                    .map(Hop::text)
                    .collect::<Vec<_>>()
                    .join(sep)
                    .into_bytes(),
                Header::NotUtf8(b) => b.clone(),
            }
        }
    }

    fn header(nets: Vec<IpNet>) -> impl Strategy<Value = Header> {
        prop_oneof![
            12 => (
                proptest::collection::vec(hop(nets), 1..5),
                select(vec![",", ", ", " , "]),
            )
                .prop_map(|(h, sep)| Header::Hops(h, sep)),
            1 => (proptest::collection::vec(any::<u8>(), 0..8), any::<u8>()).prop_map(
                |(mut b, at)| {
                    let at = usize::from(at) % (b.len() + 1);
                    b.insert(at, 0xff);
                    Header::NotUtf8(b)
                }
            ),
        ]
    }

    /// DESIGN §2 step 2, written from the text: the peer, unless it is a trusted proxy; then
    /// the hops right to left, the first untrusted one is the client; all trusted: the leftmost;
    /// anything unreadable: the peer, flagged.
    fn expected(nets: &[IpNet], peer: IpAddr, headers: &[Header]) -> ClientIp {
        let peer = peer.to_canonical();
        let direct = ClientIp {
            ip: peer,
            forwarded: false,
            forwarded_invalid: false,
        };
        let invalid = ClientIp {
            forwarded_invalid: true,
            ..direct
        };
        let forwarded = |ip| ClientIp {
            ip,
            forwarded: true,
            forwarded_invalid: false,
        };
        if !trusted(nets, peer) {
            return direct;
        }
        let mut leftmost = None;
        for h in headers.iter().rev() {
            let Header::Hops(hops, _) = h else {
                return invalid;
            };
            for hop in hops.iter().rev() {
                let Hop::Ip(ip, _) = hop else {
                    return invalid;
                };
                let ip = ip.to_canonical();
                if !trusted(nets, ip) {
                    return forwarded(ip);
                }
                leftmost = Some(ip);
            }
        }
        leftmost.map_or(direct, forwarded)
    }

    fn resolver(nets: &[IpNet]) -> ClientIpResolver {
        let entries: Vec<String> = nets.iter().map(ToString::to_string).collect();
        ClientIpResolver::new(
            Allowlist::new("trusted_proxies", &entries).expect("ipnet prints valid CIDRs"),
        )
    }

    fn resolve(r: &ClientIpResolver, peer: IpAddr, headers: &[Vec<u8>]) -> ClientIp {
        r.resolve(peer, headers.iter().map(Vec::as_slice))
    }

    type Scene = (Vec<IpNet>, IpAddr, Vec<Header>);

    fn scene() -> impl Strategy<Value = Scene> {
        proptest::collection::vec(network(), 0..4).prop_flat_map(|nets| {
            (
                Just(nets.clone()),
                address(nets.clone()),
                proptest::collection::vec(header(nets), 0..4),
            )
        })
    }

    #[test]
    fn client_ip_matches_the_model_of_step_2() {
        check(
            "client_ip_matches_the_model_of_step_2",
            2048,
            scene(),
            |(nets, peer, headers)| {
                let got = resolve(
                    &resolver(&nets),
                    peer,
                    &headers.iter().map(Header::bytes).collect::<Vec<_>>(),
                );
                prop_assert_eq!(got, expected(&nets, peer, &headers));
                Ok(())
            },
        );
    }

    /// A trusted peer, and a header whose rightmost hops are an untrusted client and then zero
    /// or more trusted proxies: the shape every real proxied request has.
    fn proxied() -> impl Strategy<Value = Scene> {
        // An address outside every generated network, so a client can always be found.
        let outside: IpAddr = "198.51.100.77".parse().expect("a literal address");
        proptest::collection::vec(network(), 1..4)
            .prop_filter("leaves room for a client", move |nets| {
                !trusted(nets, outside)
            })
            .prop_flat_map(move |nets| {
                let pad = select(vec!["", " "]);
                let rendered = (any::<u8>(), 1u16.., pad.clone(), pad);
                (
                    Just(nets.clone()),
                    address(nets.clone()),
                    (any::<IpAddr>(), rendered.clone()),
                    proptest::collection::vec((address(nets.clone()), rendered), 0..3),
                )
                    .prop_map(move |(nets, peer, (client, c), proxies)| {
                        let inside = |ip: IpAddr| {
                            if trusted(&nets, ip) {
                                ip
                            } else {
                                match nets[0] {
                                    IpNet::V4(n) => IpAddr::V4(n.network()),
                                    IpNet::V6(n) => IpAddr::V6(n.network()),
                                }
                            }
                        };
                        let client = if trusted(&nets, client) {
                            outside
                        } else {
                            client
                        };
                        let mut hops = vec![Hop::Ip(client, render(client, c.0, c.1, (c.2, c.3)))];
                        hops.extend(proxies.into_iter().map(|(ip, (form, port, a, b))| {
                            let ip = inside(ip);
                            Hop::Ip(ip, render(ip, form, port, (a, b)))
                        }));
                        (nets.clone(), inside(peer), vec![Header::Hops(hops, ", ")])
                    })
            })
    }

    /// A client controls everything left of the hop the trusted proxy appended: nothing there
    /// may move the answer.
    #[test]
    fn client_ip_ignores_hops_left_of_the_client() {
        let strategy = (
            proxied(),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 1..3),
            "[ -~]{0,40}",
        );
        check(
            "client_ip_ignores_hops_left_of_the_client",
            1024,
            strategy,
            |((nets, peer, headers), spoofed, spoofed_text)| {
                let r = resolver(&nets);
                let honest: Vec<Vec<u8>> = headers.iter().map(Header::bytes).collect();
                let want = resolve(&r, peer, &honest);
                prop_assert_eq!(want, expected(&nets, peer, &headers));
                prop_assert!(want.forwarded && !trusted(&nets, want.ip), "{:?}", want);
                // Earlier header lines of the client's own.
                let mut more = spoofed.clone();
                more.extend(honest.iter().cloned());
                prop_assert_eq!(resolve(&r, peer, &more), want);
                // The client's own value, which the proxy appended to.
                let mut joined = honest.clone();
                let mut first = format!("{spoofed_text},").into_bytes();
                first.extend_from_slice(&joined[0]);
                joined[0] = first;
                prop_assert_eq!(resolve(&r, peer, &joined), want);
                Ok(())
            },
        );
    }

    /// Any bytes at all: never a panic, the peer unless the peer is trusted, never both
    /// `forwarded` and `forwarded_invalid`, and several header lines mean their join.
    #[test]
    fn client_ip_survives_arbitrary_bytes() {
        let byte = prop_oneof![
            4 => select(b"0123456789abcdef.:[], \t".to_vec()),
            1 => any::<u8>(),
        ];
        let strategy = (
            proptest::collection::vec(network(), 0..3),
            any::<IpAddr>(),
            proptest::collection::vec(proptest::collection::vec(byte, 0..48), 0..4),
            any::<bool>(),
        )
            .prop_flat_map(|(nets, any_peer, headers, pick_trusted)| {
                let peer = if pick_trusted {
                    address(nets.clone()).boxed()
                } else {
                    Just(any_peer).boxed()
                };
                (Just(nets), peer, Just(headers))
            });
        check(
            "client_ip_survives_arbitrary_bytes",
            2048,
            strategy,
            |(nets, peer, headers)| {
                let r = resolver(&nets);
                let got = resolve(&r, peer, &headers);
                prop_assert!(!(got.forwarded && got.forwarded_invalid));
                if !got.forwarded {
                    prop_assert_eq!(got.ip, peer.to_canonical());
                }
                if !trusted(&nets, peer) {
                    prop_assert!(!got.forwarded && !got.forwarded_invalid);
                }
                if got.forwarded {
                    prop_assert!(trusted(&nets, peer));
                    prop_assert_eq!(got.ip, got.ip.to_canonical());
                }
                if !headers.is_empty() && headers.iter().all(|h| std::str::from_utf8(h).is_ok()) {
                    let joined = headers.join(&b","[..]);
                    prop_assert_eq!(resolve(&r, peer, &[joined]), got);
                }
                Ok(())
            },
        );
    }
}

mod validate {
    use std::collections::BTreeMap;

    use hookgate::core::{ErrorCode, EventStatus, Rejection, Validator, MAX_LISTED_FIELDS};
    use proptest::prelude::*;
    use proptest::sample::select;
    use serde_json::{json, Value};

    use super::generate::{json_value, key, mutate, mutation, provider_payload, text, uuid, Bytes};
    use super::harness::check;

    /// The six documented error codes (DESIGN §1).
    pub const KNOWN_CODES: [&str; 6] = [
        "CONTENT_POLICY_VIOLATION",
        "IMAGE_INACCESSIBLE",
        "INVALID_IMAGE",
        "TIMEOUT",
        "TASK_FAILED",
        "MAINTENANCE",
    ];

    /// A schema of the kind a provider publishes, for the arbitrary-bytes property.
    fn provider_schema() -> Value {
        json!({
            "type": "object",
            "required": ["id", "type"],
            "properties": {
                "id": {"type": "string", "minLength": 1, "maxLength": 64},
                "type": {"enum": ["invoice.paid", "invoice.failed"]},
                "data": {"type": "object", "additionalProperties": {"type": ["string", "integer", "null"]}}
            }
        })
    }

    fn profiles() -> Vec<(&'static str, Validator)> {
        vec![
            ("runblob", Validator::runblob()),
            ("runblob_strict", Validator::runblob_strict()),
            ("json", Validator::json()),
            (
                "schema",
                Validator::schema("schema", &provider_schema()).expect("a valid schema"),
            ),
        ]
    }

    /// What every refusal of steps 10–11 must look like: 400 or 422, a bounded field list, a
    /// JSON answer naming its reason, small whatever the body.
    fn well_formed(r: &Rejection) -> Result<(), TestCaseError> {
        let status = r.status().as_u16();
        prop_assert!(status == 400 || status == 422, "status {}", status);
        if let Rejection::InvalidPayload { fields, total } = r {
            prop_assert_eq!(status, 422);
            prop_assert!(!fields.is_empty() && fields.len() <= MAX_LISTED_FIELDS);
            prop_assert!(*total >= fields.len());
            for f in fields {
                // 200 bytes and an ellipsis.
                prop_assert!(f.field.len() <= 203 && f.message.len() <= 203, "{:?}", f);
                prop_assert!(f.field.is_empty() || f.field.starts_with('/'), "{:?}", f);
            }
        }
        let answer = r.answer();
        prop_assert!(
            answer.body.len() < 16 * 1024,
            "a {} byte answer",
            answer.body.len()
        );
        let body: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| TestCaseError::fail(format!("the answer is not JSON: {e}")))?;
        prop_assert_eq!(&body["error"], r.reason().as_str());
        Ok(())
    }

    /// JSON text that may repeat a member name, at any depth, with the parser's own view of
    /// whether it does.
    #[derive(Debug, Clone)]
    enum Doc {
        Leaf(Value),
        Array(Vec<Doc>),
        Object(Vec<(String, Doc)>),
    }

    impl Doc {
        fn has_repeated_name(&self) -> bool {
            match self {
                Doc::Leaf(_) => false,
                Doc::Array(items) => items.iter().any(Doc::has_repeated_name),
                Doc::Object(members) => {
                    let mut seen = std::collections::HashSet::new();
                    members.iter().any(|(k, _)| !seen.insert(k.as_str()))
                        || members.iter().any(|(_, v)| v.has_repeated_name())
                }
            }
        }

        fn write(&self, out: &mut String, spaced: bool) {
            let sep = if spaced { " , " } else { "," };
            match self {
                Doc::Leaf(v) => out.push_str(&v.to_string()),
                Doc::Array(items) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push_str(sep);
                        }
                        item.write(out, spaced);
                    }
                    out.push(']');
                }
                Doc::Object(members) => {
                    out.push('{');
                    for (i, (k, v)) in members.iter().enumerate() {
                        if i > 0 {
                            out.push_str(sep);
                        }
                        out.push_str(&Value::String(k.clone()).to_string());
                        out.push_str(if spaced { " : " } else { ":" });
                        v.write(out, spaced);
                    }
                    out.push('}');
                }
            }
        }
    }

    fn doc() -> impl Strategy<Value = Doc> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<i32>().prop_map(Value::from),
            "[a-z]{0,4}".prop_map(Value::String),
        ]
        .prop_map(Doc::Leaf);
        leaf.prop_recursive(5, 40, 5, |inner| {
            // Few names, so repeats happen; escapes that decode to the same name count too.
            let name = select(vec!["a", "b", "generation_id", "é"]).prop_map(str::to_owned);
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Doc::Array),
                proptest::collection::vec((name, inner), 0..5).prop_map(Doc::Object),
            ]
        })
    }

    /// Bodies from every direction: the provider's, JSON with odd values, JSON mutated byte by
    /// byte, deep nesting at serde_json's limit, and raw bytes.
    fn body() -> impl Strategy<Value = Bytes> {
        prop_oneof![
            2 => provider_payload().prop_map(String::into_bytes),
            2 => json_value().prop_map(|v| serde_json::to_vec(&v).expect("a Value serialises")),
            3 => (
                prop_oneof![
                    provider_payload(),
                    json_value().prop_map(|v| v.to_string()),
                ],
                proptest::collection::vec(mutation(), 1..4),
            )
                .prop_map(|(text, m)| mutate(text.into_bytes(), &m)),
            1 => (120usize..136, any::<bool>(), any::<bool>()).prop_map(|(depth, arrays, closed)| {
                let (open, close) = if arrays { ("[", "]") } else { ("{\"a\":", "}") };
                let mut s = open.repeat(depth);
                s.push('1');
                if closed {
                    s.push_str(&close.repeat(depth));
                }
                s.into_bytes()
            }),
            1 => select(vec![
                &b""[..], b" ", b"null", b"0", b"\"\"", b"[]", b"{}", b"\xef\xbb\xbf{}",
                b"{\"a\":1e999}", b"{\"a\":-0}", b"{\"a\":\"\\ud800\"}", b"{\"a\":\"\0\"}",
                b"{\"a\":1}\0", b"{\"a\" :1 ,}", b"{'a':1}", b"{\"a\":NaN}",
                b"\xfe\xff\0{\0}", b"{\"a\":18446744073709551616}",
            ])
            .prop_map(<[u8]>::to_vec),
            2 => proptest::collection::vec(any::<u8>(), 0..256),
        ]
        .prop_map(Bytes)
    }

    #[test]
    fn validate_answers_any_body_consistently() {
        let profiles = profiles();
        check(
            "validate_answers_any_body_consistently",
            1536,
            body(),
            |bytes| {
                let oracle = serde_json::from_slice::<Value>(&bytes);
                let mut step_10 = None;
                let mut results = Vec::new();
                for (name, v) in &profiles {
                    let got = v.check(&bytes);
                    if let Err(r) = &got {
                        well_formed(r)?;
                    }
                    let refused_as_json = matches!(
                        &got,
                        Err(Rejection::MalformedJson { .. } | Rejection::DuplicateKey { .. })
                    );
                    // Step 10 is the same for every profile.
                    match step_10 {
                        None => step_10 = Some(refused_as_json),
                        Some(first) => prop_assert_eq!(first, refused_as_json, "profile {}", name),
                    }
                    match (&oracle, &got) {
                        // A repeated name before the syntax error is reported first.
                        (Err(_), got) => prop_assert!(
                            matches!(
                                got,
                                Err(Rejection::MalformedJson { .. }
                                    | Rejection::DuplicateKey { .. })
                            ),
                            "serde_json refuses it, {} gave {:?}",
                            name,
                            got
                        ),
                        (Ok(_), Err(Rejection::MalformedJson { detail })) => {
                            prop_assert!(
                                false,
                                "serde_json reads it, {} says malformed: {}",
                                name,
                                detail
                            )
                        }
                        (Ok(value), Ok(payload)) => prop_assert_eq!(&payload.value, value),
                        _ => {}
                    }
                    results.push(got);
                }
                // runblob_strict is runblob that also refuses unknown codes; json wants an object.
                match (&results[0], &results[1]) {
                    (Ok(p), Ok(q)) => {
                        let (c, d) = (
                            p.class.expect("runblob knows the class"),
                            q.class.expect("strict too"),
                        );
                        prop_assert_eq!(c, d);
                        prop_assert!(c.code != ErrorCode::Other);
                    }
                    (Err(_), Ok(_)) => prop_assert!(false, "strict accepted what runblob refused"),
                    _ => {}
                }
                if let Ok(p) = &results[2] {
                    prop_assert!(p.value.is_object());
                }
                if results[0].is_ok() {
                    prop_assert!(results[2].is_ok(), "runblob accepted a body json refused");
                }
                Ok(())
            },
        );
    }

    #[test]
    fn validate_refuses_a_repeated_name_at_any_depth() {
        check(
            "validate_refuses_a_repeated_name_at_any_depth",
            1536,
            (doc(), any::<bool>()),
            |(doc, spaced)| {
                let mut text = String::new();
                doc.write(&mut text, spaced);
                let got = Validator::json().check(text.as_bytes());
                if doc.has_repeated_name() {
                    prop_assert!(
                        matches!(got, Err(Rejection::DuplicateKey { .. })),
                        "{} gave {:?}",
                        text,
                        got
                    );
                } else {
                    prop_assert!(
                        !matches!(
                            got,
                            Err(Rejection::DuplicateKey { .. } | Rejection::MalformedJson { .. })
                        ),
                        "{} gave {:?}",
                        text,
                        got
                    );
                }
                Ok(())
            },
        );
    }

    /// Any JSON value: never a 400 (it is JSON, and a `Value` has no repeated names), `json`
    /// accepts exactly the objects, and a non-object is one failing field, the body.
    #[test]
    fn validate_reads_any_json_value() {
        let profiles = profiles();
        check(
            "validate_reads_any_json_value",
            1024,
            (json_value(), any::<bool>()),
            |(value, pretty)| {
                let bytes = if pretty {
                    serde_json::to_vec_pretty(&value)
                } else {
                    serde_json::to_vec(&value)
                }
                .expect("a Value serialises");
                for (name, v) in &profiles {
                    match v.check(&bytes) {
                        Ok(p) => prop_assert_eq!(&p.value, &value, "{}", name),
                        Err(r) => {
                            well_formed(&r)?;
                            prop_assert_eq!(r.status().as_u16(), 422, "{}: {:?}", name, r);
                            if !value.is_object() && *name != "schema" {
                                let Rejection::InvalidPayload { fields, .. } = &r else {
                                    unreachable!("422 is InvalidPayload")
                                };
                                prop_assert_eq!(fields.len(), 1);
                                prop_assert_eq!(fields[0].field.as_str(), "");
                            }
                        }
                    }
                }
                prop_assert_eq!(Validator::json().check(&bytes).is_ok(), value.is_object());
                Ok(())
            },
        );
    }

    /// One field of a runblob payload as generated: its JSON text (`None`: absent) and what
    /// DESIGN §1 says of it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        /// A value the table accepts for this field (whatever the status).
        Good,
        /// A value the table refuses.
        Bad,
        /// Absent or `null`.
        Absent,
        /// `status` only.
        Completed,
        Failed,
        /// `message` only: a documented code, an unknown code, an empty string.
        Known(usize),
        Unknown,
    }

    #[derive(Debug, Clone)]
    struct Field {
        text: Option<String>,
        kind: Kind,
    }

    fn field(text: impl Into<String>, kind: Kind) -> Field {
        Field {
            text: Some(text.into()),
            kind,
        }
    }

    fn absent() -> impl Strategy<Value = Field> {
        prop_oneof![
            Just(Field {
                text: None,
                kind: Kind::Absent
            }),
            Just(field("null", Kind::Absent)),
        ]
    }

    fn quoted(s: &str) -> String {
        Value::String(s.to_owned()).to_string()
    }

    fn generation_id() -> impl Strategy<Value = Field> {
        let malformed = (uuid(), 0..9u8).prop_map(|(id, how)| match how {
            0 => id.replace('-', ""),
            1 => format!("{{{id}}}"),
            2 => format!("urn:uuid:{id}"),
            3 => id[1..].to_owned(),
            4 => format!("{id} "),
            5 => format!("{}g{}", &id[..5], &id[6..]),
            6 => format!("{}-{}", &id[..7], &id[7..35]).replacen("--", "-", 1),
            7 => String::new(),
            _ => id.replacen('-', "\u{2010}", 1),
        });
        prop_oneof![
            6 => uuid().prop_map(|id| field(quoted(&id), Kind::Good)),
            3 => malformed.prop_map(|id| field(quoted(&id), Kind::Bad)),
            1 => select(vec!["7", "true", "[]", "{}"]).prop_map(|t| field(t, Kind::Bad)),
            1 => absent(),
        ]
    }

    fn model() -> impl Strategy<Value = Field> {
        prop_oneof![
            4 => text()
                .prop_filter("non-empty", |s| !s.is_empty())
                .prop_map(|s| field(quoted(&s), Kind::Good)),
            2 => Just(field(quoted("kling-o3-video-10s-pro"), Kind::Good)),
            1 => select(vec!["\"\"", "0", "false", "[\"m\"]"]).prop_map(|t| field(t, Kind::Bad)),
            1 => absent(),
        ]
    }

    fn status() -> impl Strategy<Value = Field> {
        prop_oneof![
            4 => Just(field("\"completed\"", Kind::Completed)),
            4 => Just(field("\"failed\"", Kind::Failed)),
            1 => select(vec![
                "\"done\"", "\"COMPLETED\"", "\"Failed\"", "\" completed\"", "\"\"", "1",
                "true", "[\"failed\"]", "\"completed\\u0000\"",
            ])
            .prop_map(|t| field(t, Kind::Bad)),
            1 => absent(),
        ]
    }

    fn video_url() -> impl Strategy<Value = Field> {
        let good = select(vec![
            "https://cdn.example.com/videos/550e8400.mp4",
            "http://127.0.0.1:8080/v.mp4",
            "https://[2001:db8::1]/v.mp4",
            "HTTPS://CDN.EXAMPLE.COM/A.MP4",
            "https://cdn.example.com/v.mp4?sig=a%20b&x=1#t=3",
            "https://bücher.example/v.mp4",
        ]);
        let bad = select(vec![
            "ftp://cdn.example.com/v.mp4",
            "/videos/v.mp4",
            "",
            "https://",
            "cdn.example.com/v.mp4",
            "mailto:a@example.com",
            "file:///tmp/v.mp4",
            "javascript:alert(1)",
            "https:// space.example/v.mp4",
            "data:video/mp4;base64,AAAA",
        ]);
        prop_oneof![
            4 => good.prop_map(|u| field(quoted(u), Kind::Good)),
            2 => bad.prop_map(|u| field(quoted(u), Kind::Bad)),
            1 => select(vec!["0", "true", "{}", "[\"https://a.example/v\"]"])
                .prop_map(|t| field(t, Kind::Bad)),
            3 => absent(),
        ]
    }

    fn message() -> impl Strategy<Value = Field> {
        prop_oneof![
            4 => (0..KNOWN_CODES.len()).prop_map(|i| field(quoted(KNOWN_CODES[i]), Kind::Known(i))),
            2 => prop_oneof![
                "[A-Z_]{1,24}",
                Just("timeout".to_owned()),
                Just("TIMEOUT ".to_owned()),
                text(),
            ]
            .prop_filter("unknown, non-empty", |c| !c.is_empty() && !KNOWN_CODES.contains(&c.as_str()))
            .prop_map(|c| field(quoted(&c), Kind::Unknown)),
            1 => select(vec!["\"\"", "5", "[]", "{\"code\":\"TIMEOUT\"}"])
                .prop_map(|t| field(t, Kind::Bad)),
            3 => absent(),
        ]
    }

    /// What DESIGN §1's table says of a payload: the failing fields, in the order the checks
    /// report them, and the event's class when the status is readable.
    fn contract(
        f: &[Field; 5],
        strict: bool,
    ) -> (Vec<&'static str>, Option<(EventStatus, ErrorCode)>) {
        let [id, model, status, url, message] = f;
        let mut failing = Vec::new();
        if id.kind != Kind::Good {
            failing.push("/generation_id");
        }
        if model.kind != Kind::Good {
            failing.push("/model");
        }
        let class = match status.kind {
            Kind::Completed => {
                if url.kind != Kind::Good {
                    failing.push("/video_url");
                }
                if message.kind != Kind::Absent {
                    failing.push("/message");
                }
                Some((EventStatus::Completed, ErrorCode::None))
            }
            Kind::Failed => {
                if url.kind != Kind::Absent {
                    failing.push("/video_url");
                }
                let code = match message.kind {
                    Kind::Known(i) => ErrorCode::FAILED[i],
                    Kind::Unknown => {
                        if strict {
                            failing.push("/message");
                        }
                        ErrorCode::Other
                    }
                    _ => {
                        failing.push("/message");
                        ErrorCode::Other
                    }
                };
                Some((EventStatus::Failed, code))
            }
            _ => {
                failing.push("/status");
                None
            }
        };
        (failing, class)
    }

    /// A runblob payload: each field valid, refused or absent, extra members the sender added,
    /// members in any order, compact or in the provider's spaced style; the fields, and the body.
    fn runblob_payload() -> impl Strategy<Value = ([Field; 5], String)> {
        let extra = (key(), json_value()).prop_filter_map("not a contract field", |(k, v)| {
            (!["generation_id", "status", "video_url", "model", "message"].contains(&k.as_str()))
                .then(|| (k, v.to_string()))
        });
        (
            (generation_id(), model(), status(), video_url(), message()),
            proptest::collection::vec(extra, 0..4),
            any::<bool>(),
        )
            .prop_flat_map(|((a, b, c, d, e), extra, spaced)| {
                let fields = [a, b, c, d, e];
                let names = ["generation_id", "model", "status", "video_url", "message"];
                let mut members: Vec<(String, String)> = names
                    .iter()
                    .zip(&fields)
                    .filter_map(|(k, f)| f.text.clone().map(|t| (quoted(k), t)))
                    .collect();
                // Each extra name once: a repeated name is a 400, and this property is about
                // the 422s.
                let extra: BTreeMap<String, String> = extra.into_iter().collect();
                members.extend(extra.into_iter().map(|(k, v)| (quoted(&k), v)));
                (Just(fields), Just(members).prop_shuffle(), Just(spaced))
            })
            .prop_map(|(fields, members, spaced)| {
                let (colon, comma) = if spaced { (" : ", " ,\n") } else { (":", ",") };
                let body = members
                    .iter()
                    .map(|(k, v)| format!("{k}{colon}{v}"))
                    .collect::<Vec<_>>()
                    .join(comma);
                (fields, format!("{{{body}}}"))
            })
    }

    #[test]
    fn validate_runblob_refuses_exactly_what_the_contract_refuses() {
        check(
            "validate_runblob_refuses_exactly_what_the_contract_refuses",
            1536,
            runblob_payload(),
            |(fields, body)| {
                for (strict, v) in [
                    (false, Validator::runblob()),
                    (true, Validator::runblob_strict()),
                ] {
                    let (failing, class) = contract(&fields, strict);
                    match v.check(body.as_bytes()) {
                        Ok(p) => {
                            prop_assert!(
                                failing.is_empty(),
                                "strict={} accepted; the contract refuses {:?}\n{}",
                                strict,
                                failing,
                                body
                            );
                            let c = p.class.expect("runblob knows the class");
                            prop_assert_eq!(Some((c.status, c.code)), class, "strict={}", strict);
                        }
                        Err(r) => {
                            well_formed(&r)?;
                            let Rejection::InvalidPayload {
                                fields: listed,
                                total,
                            } = &r
                            else {
                                return Err(TestCaseError::fail(format!(
                                    "strict={strict}: {r:?} for\n{body}"
                                )));
                            };
                            let listed: Vec<&str> =
                                listed.iter().map(|f| f.field.as_str()).collect();
                            prop_assert_eq!(&listed, &failing, "strict={}\n{}", strict, body);
                            prop_assert_eq!(*total, failing.len());
                        }
                    }
                }
                Ok(())
            },
        );
    }

    /// A schema that refuses every non-integer member: the 422 lists at most 20 of them, each
    /// by its pointer, and counts them all.
    #[test]
    fn validate_schema_lists_at_most_twenty_fields_and_counts_them_all() {
        let schema = Validator::schema(
            "schema",
            &json!({"type": "object", "additionalProperties": {"type": "integer"}}),
        )
        .expect("a valid schema");
        let member = (
            "[a-z~/]{1,12}",
            prop_oneof![any::<i64>().prop_map(Value::from), json_value(),],
        );
        check(
            "validate_schema_lists_at_most_twenty_fields_and_counts_them_all",
            384,
            proptest::collection::btree_map(member.0, member.1, 0..60),
            |members| {
                let is_integer = |v: &Value| {
                    v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0)
                };
                let failing: Vec<String> = members
                    .iter()
                    .filter(|(_, v)| !is_integer(v))
                    .map(|(k, _)| format!("/{}", k.replace('~', "~0").replace('/', "~1")))
                    .collect();
                let body = serde_json::to_vec(&members).expect("a map serialises");
                match schema.check(&body) {
                    Ok(_) => prop_assert!(failing.is_empty(), "accepted; refuses {:?}", failing),
                    Err(r) => {
                        well_formed(&r)?;
                        let Rejection::InvalidPayload { fields, total } = &r else {
                            return Err(TestCaseError::fail(format!("{r:?}")));
                        };
                        prop_assert_eq!(*total, failing.len());
                        prop_assert_eq!(fields.len(), failing.len().min(MAX_LISTED_FIELDS));
                        for f in fields {
                            prop_assert!(
                                failing.contains(&f.field),
                                "{:?} not among {:?}",
                                f,
                                failing
                            );
                        }
                    }
                }
                Ok(())
            },
        );
    }

    /// Schemas built from JSON Schema's keywords with well- and ill-shaped values.
    fn schema() -> impl Strategy<Value = Value> {
        let odd_value = prop_oneof![
            select(vec![
                json!("string"),
                json!(["object", "null"]),
                json!("nope"),
                json!(0),
                json!(-1),
                json!(1e308),
                json!(0.0000001),
                json!(18446744073709551615u64),
                json!("("),
                json!("[a-"),
                json!("\\"),
                json!("a{99999}"),
                json!("(?=x)"),
                json!("\\p{Foo}"),
                json!("^[a-z]+$"),
                json!("#"),
                json!("#/$defs/a"),
                json!("#/nope"),
                json!("http://example.com/s.json"),
                json!("uuid"),
                json!("date-time"),
                json!(true),
                json!(false),
                json!(null),
                json!([]),
                json!({}),
                json!(["a", "a"]),
            ]),
            json_value(),
        ];
        let keyword = select(vec![
            "type",
            "properties",
            "required",
            "items",
            "minimum",
            "maximum",
            "maxLength",
            "minLength",
            "pattern",
            "enum",
            "const",
            "anyOf",
            "allOf",
            "oneOf",
            "not",
            "$ref",
            "format",
            "additionalProperties",
            "multipleOf",
            "minItems",
            "uniqueItems",
            "if",
            "then",
            "else",
            "$defs",
            "dependentRequired",
            "contains",
            "prefixItems",
            "propertyNames",
            "$schema",
            "$id",
            "$anchor",
            "$dynamicRef",
            "patternProperties",
            "unevaluatedProperties",
        ]);
        let leaf = prop_oneof![
            Just(json!(true)),
            Just(json!(false)),
            proptest::collection::vec((keyword.clone(), odd_value.clone()), 0..4).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ];
        leaf.prop_recursive(3, 24, 4, move |inner| {
            proptest::collection::vec(
                (
                    keyword.clone(),
                    prop_oneof![
                        inner.clone(),
                        proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                        proptest::collection::btree_map("[a-c]", inner, 0..3)
                            .prop_map(|m| Value::Object(m.into_iter().collect())),
                        odd_value.clone(),
                    ],
                ),
                0..5,
            )
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
        })
    }

    #[test]
    fn schema_files_compile_or_name_the_key_and_validate_without_panicking() {
        check(
            "schema_files_compile_or_name_the_key_and_validate_without_panicking",
            512,
            (schema(), proptest::collection::vec(json_value(), 1..4)),
            |(schema, payloads)| {
                match Validator::schema("route[0].schema", &schema) {
                    Err(e) => prop_assert!(e.to_string().starts_with("route[0].schema:"), "{}", e),
                    Ok(v) => {
                        for p in payloads {
                            let bytes = serde_json::to_vec(&p).expect("a Value serialises");
                            if let Err(r) = v.check(&bytes) {
                                well_formed(&r)?;
                            }
                        }
                    }
                }
                Ok(())
            },
        );
    }
}

mod dedup_key {
    use hookgate::core::{DedupKeySpec, JsonPointer, Rejection};
    use http::{HeaderMap, HeaderName, HeaderValue};
    use proptest::prelude::*;
    use proptest::sample::{select, Index};
    use serde_json::{json, Value};

    use super::generate::{json_value, text};
    use super::harness::check;

    /// Tokens that probe RFC 6901's corners: indices with signs, zeros and spaces, escapes.
    fn odd_token() -> impl Strategy<Value = String> {
        prop_oneof![
            select(vec![
                "0",
                "1",
                "2",
                "01",
                "00",
                "+1",
                "+0",
                "-1",
                "-",
                " 1",
                "1 ",
                "",
                "~",
                "~0",
                "~1",
                "~2",
                "~01",
                "a/b",
                "a~b",
                "10",
                "99999999999999999999999",
                "1e0",
                "０",
                "1.0",
                "0x1",
                "generation_id",
            ])
            .prop_map(str::to_owned),
            text(),
        ]
    }

    /// A token as written in a pointer: escaped as RFC 6901 says, or raw.
    fn escape(token: &str, raw: bool) -> String {
        if raw {
            token.to_owned()
        } else {
            token.replace('~', "~0").replace('/', "~1")
        }
    }

    /// The tokens of a path that exists in `value`, following `steps`.
    fn path_into(value: &Value, steps: &[Index]) -> Vec<String> {
        let mut at = value;
        let mut tokens = Vec::new();
        for step in steps {
            match at {
                Value::Object(m) if !m.is_empty() => {
                    let (k, v) = m.iter().nth(step.index(m.len())).expect("index in range");
                    tokens.push(k.clone());
                    at = v;
                }
                Value::Array(a) if !a.is_empty() => {
                    let i = step.index(a.len());
                    tokens.push(i.to_string());
                    at = &a[i];
                }
                _ => break,
            }
        }
        tokens
    }

    #[test]
    fn dedup_pointer_lookup_agrees_with_serde_json() {
        let strategy = (
            json_value(),
            proptest::collection::vec(any::<Index>(), 0..5),
            proptest::collection::vec(odd_token(), 0..3),
            any::<bool>(),
        );
        check(
            "dedup_pointer_lookup_agrees_with_serde_json",
            2048,
            strategy,
            |(value, steps, odd, raw)| {
                let mut tokens = path_into(&value, &steps);
                tokens.extend(odd);
                let text: String = tokens
                    .iter()
                    .map(|t| format!("/{}", escape(t, raw)))
                    .collect();
                let pointer = JsonPointer::parse(&text);
                prop_assert_eq!(pointer.as_str(), text.as_str());
                prop_assert_eq!(
                    pointer.lookup(&value),
                    value.pointer(&text),
                    "pointer {:?}",
                    text
                );
                Ok(())
            },
        );
    }

    fn spec_text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("body".to_owned()),
            "/[a-z_~/0-9]{0,16}",
            "header:[ -~]{0,16}",
            select(vec![
                "header:X-GitHub-Delivery",
                "header: webhook-id ",
                "header:",
                "header:bad name",
                "header:é",
                "Body",
                "body ",
                " /id",
                "generation_id",
                "",
                "/",
                "header:x\0",
            ])
            .prop_map(str::to_owned),
            text(),
        ]
    }

    /// A spec that parses prints as text that parses back to itself, and one that does not is
    /// an error naming the setting.
    #[test]
    fn dedup_spec_text_round_trips() {
        check("dedup_spec_text_round_trips", 4096, spec_text(), |s| {
            match DedupKeySpec::parse("route[3].dedup.key", &s) {
                Ok(spec) => {
                    let printed = spec.to_string();
                    let again = printed.parse::<DedupKeySpec>();
                    prop_assert_eq!(again.as_ref(), Ok(&spec));
                    let want = s == "body"
                        || s.starts_with('/')
                        || s.strip_prefix("header:")
                            .is_some_and(|n| HeaderName::from_bytes(n.trim().as_bytes()).is_ok());
                    prop_assert!(want, "{:?} accepted as {:?}", s, spec);
                }
                Err(e) => {
                    prop_assert!(e.to_string().starts_with("route[3].dedup.key: "), "{}", e);
                    prop_assert!(!(s == "body" || s.starts_with('/')));
                }
            }
            Ok(())
        });
    }

    fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
        // What a header value may hold: visible ASCII, space, tab and obs-text.
        let byte = prop_oneof![
            8 => 0x20u8..0x7f,
            1 => Just(b'\t'),
            2 => 0x80u8..=0xff,
        ];
        proptest::collection::vec(byte, 0..40)
    }

    /// The same id always gives the same key; another id, another route, another kind of
    /// key or another JSON type never does.
    #[test]
    fn dedup_keys_are_deterministic_scoped_typed_and_apart() {
        let strategy = (
            ("[a-z/0-9-]{0,12}", "[a-z/0-9-]{0,12}"),
            (json_value(), json_value()),
            (header_bytes(), header_bytes()),
        );
        check(
            "dedup_keys_are_deterministic_scoped_typed_and_apart",
            1024,
            strategy,
            |((scope, other_scope), (a, b), (ha, hb))| {
                let none = HeaderMap::new();
                let pointer = DedupKeySpec::default();
                let key = |scope: &str, v: &Value| {
                    pointer.extract(scope, &none, None, Some(&json!({ "generation_id": v })))
                };
                match key(&scope, &a) {
                    Ok(k) => {
                        prop_assert!(!a.is_null());
                        prop_assert_eq!(key(&scope, &a).ok(), Some(k));
                        if scope != other_scope {
                            prop_assert_ne!(key(&other_scope, &a).ok(), Some(k));
                        }
                        if a != b {
                            prop_assert_ne!(key(&scope, &b).ok(), Some(k), "{:?} and {:?}", a, b);
                        }
                        // A string id and the same text as another JSON type are two ids.
                        if let Some(s) = a.as_str() {
                            if let Ok(parsed) = serde_json::from_str::<Value>(s) {
                                if !parsed.is_string() && !parsed.is_null() {
                                    prop_assert_ne!(key(&scope, &parsed).ok(), Some(k));
                                }
                            }
                        }
                    }
                    Err(r) => {
                        prop_assert!(a.is_null(), "{:?} refused: {:?}", a, r);
                        prop_assert!(matches!(r, Rejection::MissingDedupKey { .. }), "{:?}", r);
                        prop_assert_eq!(r.status().as_u16(), 422);
                    }
                }
                // Header and body keys: bytes in, the same bytes never alias across kinds.
                let mut headers = HeaderMap::new();
                headers.insert(
                    "x-id",
                    HeaderValue::from_bytes(&ha).expect("generated header bytes are valid"),
                );
                let by_header = DedupKeySpec::parse("k", "header:X-Id")
                    .expect("a valid spec")
                    .extract(&scope, &headers, None, None)
                    .expect("the header is there");
                let by_body = DedupKeySpec::Body
                    .extract(&scope, &none, Some(&ha), None)
                    .expect("a body is given");
                prop_assert_ne!(by_header, by_body);
                if let Ok(text) = std::str::from_utf8(&ha) {
                    let by_string =
                        key(&scope, &Value::String(text.to_owned())).expect("a string id");
                    prop_assert_ne!(by_string, by_header);
                    prop_assert_ne!(by_string, by_body);
                }
                if ha != hb {
                    prop_assert_ne!(
                        DedupKeySpec::Body
                            .extract(&scope, &none, Some(&hb), None)
                            .ok(),
                        Some(by_body)
                    );
                }
                // Without what it reads, a key is a 500, not a guess.
                prop_assert!(matches!(
                    pointer.extract(&scope, &none, Some(&ha), None),
                    Err(Rejection::PayloadNotParsed)
                ));
                prop_assert!(matches!(
                    DedupKeySpec::Body.extract(&scope, &none, None, Some(&a)),
                    Err(Rejection::PayloadNotParsed)
                ));
                Ok(())
            },
        );
    }

    /// Several pointers: tuples that differ anywhere, including where one part's end moves into
    /// the next (`("ab","c")` against `("a","bc")`), are different keys.
    #[test]
    fn dedup_composite_keys_do_not_alias() {
        let strategy = (text(), any::<Index>(), any::<Index>(), text());
        check(
            "dedup_composite_keys_do_not_alias",
            2048,
            strategy,
            |(joined, i, j, third)| {
                let chars: Vec<char> = joined.chars().collect();
                let (i, j) = (i.index(chars.len() + 1), j.index(chars.len() + 1));
                let split = |at: usize| {
                    let (a, b) = chars.split_at(at);
                    json!({"a": a.iter().collect::<String>(), "b": b.iter().collect::<String>(), "c": third})
                };
                let spec = DedupKeySpec::pointers("k", ["/a", "/b", "/c"]).expect("valid pointers");
                let none = HeaderMap::new();
                let (x, y) = (split(i), split(j));
                let kx = spec
                    .extract("r", &none, None, Some(&x))
                    .expect("all present");
                let ky = spec
                    .extract("r", &none, None, Some(&y))
                    .expect("all present");
                prop_assert_eq!(kx == ky, x == y, "{} / {}", x, y);
                Ok(())
            },
        );
    }
}

mod signature {
    use std::time::Duration;

    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use hookgate::core::{
        HmacAlgorithm, HmacScheme, Reason, SignatureEncoding, SignatureScheme, SignatureVerifier,
    };
    use http::{HeaderMap, HeaderName, HeaderValue};
    use proptest::prelude::*;
    use proptest::sample::{select, Index};
    use sha2::{Sha256, Sha512};

    use super::generate::Bytes;
    use super::harness::check;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    /// How a generated route signs.
    #[derive(Debug, Clone)]
    enum Scheme {
        Standard,
        Github {
            upper: bool,
        },
        Stripe,
        Hmac {
            header: String,
            sha512: bool,
            base64: bool,
            prefix: String,
        },
    }

    impl Scheme {
        fn core(&self) -> SignatureScheme {
            match self {
                Scheme::Standard => SignatureScheme::StandardWebhooks,
                Scheme::Github { .. } => SignatureScheme::Github,
                Scheme::Stripe => SignatureScheme::Stripe,
                Scheme::Hmac {
                    header,
                    sha512,
                    base64,
                    prefix,
                } => SignatureScheme::Hmac(HmacScheme {
                    header: HeaderName::from_bytes(header.as_bytes()).expect("a generated token"),
                    algorithm: if *sha512 {
                        HmacAlgorithm::Sha512
                    } else {
                        HmacAlgorithm::Sha256
                    },
                    encoding: if *base64 {
                        SignatureEncoding::Base64
                    } else {
                        SignatureEncoding::Hex
                    },
                    prefix: prefix.clone(),
                }),
            }
        }

        /// The headers the scheme reads.
        fn header_names(&self) -> Vec<String> {
            match self {
                Scheme::Standard => vec![
                    "webhook-id".into(),
                    "webhook-timestamp".into(),
                    "webhook-signature".into(),
                ],
                Scheme::Github { .. } => vec!["x-hub-signature-256".into()],
                Scheme::Stripe => vec!["stripe-signature".into()],
                Scheme::Hmac { header, .. } => vec![header.to_ascii_lowercase()],
            }
        }
    }

    fn scheme() -> impl Strategy<Value = Scheme> {
        prop_oneof![
            Just(Scheme::Standard),
            any::<bool>().prop_map(|upper| Scheme::Github { upper }),
            Just(Scheme::Stripe),
            (
                "[Xx]-[A-Za-z][A-Za-z0-9-]{0,15}",
                any::<bool>(),
                any::<bool>(),
                select(vec!["", "sha256=", "v1=", "sha512:", "t "]),
            )
                .prop_map(|(header, sha512, base64, prefix)| Scheme::Hmac {
                    header,
                    sha512,
                    base64,
                    prefix: prefix.to_owned(),
                }),
        ]
    }

    /// A request signed as the scheme's documentation says, by an implementation of its own.
    #[derive(Debug, Clone)]
    struct Signed {
        scheme: Scheme,
        /// The keys, and the secrets as configured.
        keys: Vec<Vec<u8>>,
        secrets: Vec<String>,
        /// Which key signed.
        signer: usize,
        body: Bytes,
        id: String,
        timestamp: i64,
        now: i64,
        tolerance: u64,
        /// Standard Webhooks and Stripe: wrong signatures listed beside the right one.
        decoys: Vec<[u8; 32]>,
    }

    fn mac(sha512: bool, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        if sha512 {
            let mut m = Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes any key");
            parts.iter().for_each(|p| m.update(p));
            m.finalize().into_bytes().to_vec()
        } else {
            let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
            parts.iter().for_each(|p| m.update(p));
            m.finalize().into_bytes().to_vec()
        }
    }

    impl Signed {
        fn verifier(&self) -> SignatureVerifier {
            SignatureVerifier::new(
                "route[0].signature",
                self.scheme.core(),
                &self.secrets,
                Duration::from_secs(self.tolerance),
            )
            .expect("generated secrets are valid")
        }

        /// The signed headers, as (name, value bytes), so a test can change any byte.
        fn headers(&self) -> Vec<(String, Vec<u8>)> {
            let key = &self.keys[self.signer];
            let ts = self.timestamp.to_string();
            match &self.scheme {
                Scheme::Standard => {
                    let sig = B64.encode(mac(
                        false,
                        key,
                        &[self.id.as_bytes(), b".", ts.as_bytes(), b".", &self.body],
                    ));
                    let mut list: Vec<String> = self
                        .decoys
                        .iter()
                        .map(|d| format!("v1,{}", B64.encode(d)))
                        .collect();
                    list.insert(self.decoys.len() / 2, format!("v1,{sig}"));
                    vec![
                        ("webhook-id".into(), self.id.clone().into_bytes()),
                        ("webhook-timestamp".into(), ts.into_bytes()),
                        ("webhook-signature".into(), list.join(" ").into_bytes()),
                    ]
                }
                Scheme::Github { upper } => {
                    let mut hex = hex::encode(mac(false, key, &[&self.body]));
                    if *upper {
                        hex = hex.to_uppercase();
                    }
                    vec![(
                        "x-hub-signature-256".into(),
                        format!("sha256={hex}").into_bytes(),
                    )]
                }
                Scheme::Stripe => {
                    let sig = hex::encode(mac(false, key, &[ts.as_bytes(), b".", &self.body]));
                    let mut items = vec![format!("t={ts}")];
                    items.extend(self.decoys.iter().map(|d| format!("v1={}", hex::encode(d))));
                    items.push(format!("v1={sig}"));
                    vec![("stripe-signature".into(), items.join(",").into_bytes())]
                }
                Scheme::Hmac {
                    header,
                    sha512,
                    base64,
                    prefix,
                } => {
                    let raw = mac(*sha512, key, &[&self.body]);
                    let written = if *base64 {
                        B64.encode(raw)
                    } else {
                        hex::encode(raw)
                    };
                    vec![(
                        header.to_ascii_lowercase(),
                        format!("{prefix}{written}").into_bytes(),
                    )]
                }
            }
        }
    }

    fn header_map(headers: &[(String, Vec<u8>)]) -> Option<HeaderMap> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                HeaderValue::from_bytes(value).ok()?,
            );
        }
        Some(map)
    }

    fn body() -> impl Strategy<Value = Bytes> {
        prop_oneof![
            super::generate::provider_payload().prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..300),
        ]
        .prop_map(Bytes)
    }

    fn signed(decoys: bool) -> impl Strategy<Value = Signed> {
        let key = proptest::collection::vec(any::<u8>(), 16..64);
        let secret_text = "[!-~]{1,40}";
        (
            scheme(),
            proptest::collection::vec((key, secret_text, any::<bool>()), 1..4),
            any::<Index>(),
            body(),
            "msg_[A-Za-z0-9]{1,27}",
            (1_000_000_000i64..4_000_000_000, 1u64..3600, any::<Index>()),
            proptest::collection::vec(any::<[u8; 32]>(), if decoys { 0..3 } else { 0..1 }),
        )
            .prop_map(
                |(scheme, secrets, signer, body, id, (now, tolerance, offset), decoys)| {
                    let (keys, secrets): (Vec<Vec<u8>>, Vec<String>) = secrets
                        .into_iter()
                        .map(|(key, text, prefixed)| match scheme {
                            // The key is the base64 after `whsec_` (which libraries also accept
                            // left out).
                            Scheme::Standard => {
                                let b64 = B64.encode(&key);
                                (
                                    key,
                                    if prefixed {
                                        format!("whsec_{b64}")
                                    } else {
                                        b64
                                    },
                                )
                            }
                            _ => (text.clone().into_bytes(), text),
                        })
                        .unzip();
                    let span = 2 * tolerance + 1;
                    let timestamp = now - tolerance as i64 + offset.index(span as usize) as i64;
                    let decoys = match scheme {
                        Scheme::Standard | Scheme::Stripe => decoys,
                        _ => Vec::new(),
                    };
                    Signed {
                        signer: signer.index(keys.len()),
                        scheme,
                        keys,
                        secrets,
                        body,
                        id,
                        timestamp,
                        now,
                        tolerance,
                        decoys,
                    }
                },
            )
    }

    #[test]
    fn signature_a_correctly_signed_request_verifies() {
        check(
            "signature_a_correctly_signed_request_verifies",
            2048,
            signed(true),
            |s| {
                let headers = header_map(&s.headers()).expect("signed headers are valid");
                let got = s.verifier().verify(&headers, &s.body, s.now);
                prop_assert!(got.is_ok(), "{:?}", got.map_err(|e| e.reason()));
                Ok(())
            },
        );
    }

    /// Where one byte changes.
    #[derive(Debug, Clone)]
    enum Change {
        Body(Index, u8),
        Header(Index, Index, u8),
    }

    /// A byte a header value may hold (visible ASCII, space, tab, obs-text), so the changed
    /// request is one a client can send.
    fn header_byte() -> impl Strategy<Value = u8> {
        prop_oneof![8 => 0x20u8..0x7f, 1 => Just(b'\t'), 1 => 0x80u8..=0xff]
    }

    #[test]
    fn signature_any_single_byte_change_fails() {
        let change = prop_oneof![
            (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Change::Body(i, x)),
            (any::<Index>(), any::<Index>(), header_byte())
                .prop_map(|(h, i, b)| Change::Header(h, i, b)),
        ];
        check(
            "signature_any_single_byte_change_fails",
            4096,
            (signed(false), change),
            |(s, change)| {
                let mut body = s.body.clone();
                let mut headers = s.headers();
                match change {
                    Change::Body(i, x) => {
                        prop_assume!(!body.is_empty());
                        let i = i.index(body.len());
                        body[i] ^= x;
                    }
                    Change::Header(h, i, b) => {
                        let which = h.index(headers.len());
                        let value = &mut headers[which].1;
                        prop_assume!(!value.is_empty());
                        let at = i.index(value.len());
                        let old = &mut value[at];
                        // Hex is read in either case: a change of case is no change.
                        prop_assume!(!old.eq_ignore_ascii_case(&b));
                        *old = b;
                    }
                }
                let map = header_map(&headers).expect("changed to a valid header byte");
                let got = s.verifier().verify(&map, &body, s.now);
                let reason = got.as_ref().err().map(|e| e.reason());
                prop_assert!(
                    matches!(reason, Some(Reason::BadSignature | Reason::StaleTimestamp)),
                    "{:?} after {:?}",
                    reason,
                    change
                );
                Ok(())
            },
        );
    }

    /// The window is exact: `tolerance` seconds either way verify, one more is stale.
    #[test]
    fn signature_the_timestamp_window_is_exact() {
        let strategy = (signed(false), any::<bool>(), 0u64..100_000)
            .prop_filter("schemes with a timestamp", |(s, _, _)| {
                matches!(s.scheme, Scheme::Standard | Scheme::Stripe)
            });
        check(
            "signature_the_timestamp_window_is_exact",
            1024,
            strategy,
            |(mut s, later, beyond)| {
                let headers = header_map(&s.headers()).expect("signed headers are valid");
                let tol = s.tolerance as i64;
                let sign = if later { 1 } else { -1 };
                s.now = s.timestamp + sign * tol;
                prop_assert!(s.verifier().verify(&headers, &s.body, s.now).is_ok());
                s.now = s.timestamp + sign * (tol + 1 + beyond as i64);
                let reason = s
                    .verifier()
                    .verify(&headers, &s.body, s.now)
                    .err()
                    .map(|e| e.reason());
                prop_assert_eq!(reason, Some(Reason::StaleTimestamp));
                Ok(())
            },
        );
    }

    /// Header values a scheme might meet: arbitrary bytes, and near-misses of its own format.
    fn hostile_value(scheme: &Scheme) -> BoxedStrategy<Vec<u8>> {
        let any_bytes = proptest::collection::vec(header_byte(), 0..120);
        let hex = "[0-9a-fA-F]{0,130}";
        let b64 = "[A-Za-z0-9+/]{0,90}={0,2}";
        let near: BoxedStrategy<String> = match scheme {
            Scheme::Standard => prop_oneof![
                b64.prop_map(|s| format!("v1,{s}")),
                (b64, b64).prop_map(|(a, b)| format!("v1,{a} v1,{b}")),
                "-?[0-9]{0,20}",
                Just("9223372036854775807".to_owned()),
                Just("-9223372036854775808".to_owned()),
                "msg_[A-Za-z0-9]{0,30}",
            ]
            .boxed(),
            Scheme::Github { .. } => hex.prop_map(|h| format!("sha256={h}")).boxed(),
            Scheme::Stripe => prop_oneof![
                ("-?[0-9]{0,20}", hex).prop_map(|(t, h)| format!("t={t},v1={h}")),
                (hex, "[0-9]{0,12}").prop_map(|(h, t)| format!("v1={h},t={t},t=,v1=,=,,")),
            ]
            .boxed(),
            Scheme::Hmac { prefix, .. } => {
                let prefix = prefix.clone();
                prop_oneof![hex, b64]
                    .prop_map(move |s| format!("{prefix}{s}"))
                    .boxed()
            }
        };
        prop_oneof![any_bytes, near.prop_map(String::into_bytes)].boxed()
    }

    /// Whatever the headers hold: no panic, a 401 with one of the three reasons, never a pass
    /// (HMAC keys are secret: a guess verifies with probability 2^-256), and `missing` only
    /// when a header the scheme needs is absent.
    #[test]
    fn signature_arbitrary_header_values_never_verify() {
        let strategy =
            (signed(false), any::<i64>(), any::<u64>()).prop_flat_map(|(s, now, tol)| {
                let names = s.scheme.header_names();
                let values: Vec<_> = names
                    .iter()
                    .map(|_| proptest::option::weighted(0.85, hostile_value(&s.scheme)))
                    .collect();
                (Just(s), Just(now), Just(tol), values)
            });
        check(
            "signature_arbitrary_header_values_never_verify",
            4096,
            strategy,
            |(s, now, tolerance, values)| {
                let names = s.scheme.header_names();
                let present: Vec<(String, Vec<u8>)> = names
                    .iter()
                    .zip(&values)
                    .filter_map(|(n, v)| v.clone().map(|v| (n.clone(), v)))
                    .collect();
                let headers = header_map(&present).expect("generated header bytes are valid");
                let verifier = SignatureVerifier::new(
                    "s",
                    s.scheme.core(),
                    &s.secrets,
                    Duration::from_secs(tolerance),
                )
                .expect("generated secrets are valid");
                let got = verifier.verify(&headers, &s.body, now);
                let Err(r) = got else {
                    return Err(TestCaseError::fail("arbitrary headers verified"));
                };
                prop_assert_eq!(r.status().as_u16(), 401);
                let all_present = present.len() == names.len();
                match r.reason() {
                    Reason::MissingSignature => prop_assert!(!all_present),
                    Reason::BadSignature | Reason::StaleTimestamp => {}
                    other => prop_assert!(false, "reason {:?}", other),
                }
                Ok(())
            },
        );
    }

    /// What a secret may be configured as.
    #[derive(Debug, Clone)]
    enum Secret {
        Key(Vec<u8>, bool),
        Short(Vec<u8>),
        NotBase64(String),
        Text(String),
        Empty,
    }

    impl Secret {
        fn text(&self) -> String {
            match self {
                Secret::Key(k, true) | Secret::Short(k) => format!("whsec_{}", B64.encode(k)),
                Secret::Key(k, false) => B64.encode(k),
                Secret::NotBase64(s) | Secret::Text(s) => s.clone(),
                Secret::Empty => String::new(),
            }
        }
    }

    fn secret() -> impl Strategy<Value = Secret> {
        prop_oneof![
            3 => (proptest::collection::vec(any::<u8>(), 16..64), any::<bool>())
                .prop_map(|(k, p)| Secret::Key(k, p)),
            1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(Secret::Short),
            1 => "whsec_[A-Za-z0-9]{10,30}[*!.@][A-Za-z0-9]{0,8}".prop_map(Secret::NotBase64),
            2 => "[A-Za-z0-9]{12,40}".prop_map(Secret::Text),
            1 => Just(Secret::Empty),
        ]
    }

    /// Secrets are checked when the route is built, and an error names the setting but never
    /// holds a secret's value.
    #[test]
    fn signature_secrets_are_checked_and_never_echoed() {
        check(
            "signature_secrets_are_checked_and_never_echoed",
            2048,
            (scheme(), proptest::collection::vec(secret(), 0..4)),
            |(scheme, secrets)| {
                let texts: Vec<String> = secrets.iter().map(Secret::text).collect();
                let got = SignatureVerifier::new(
                    "route[2].signature",
                    scheme.core(),
                    &texts,
                    Duration::from_secs(300),
                );
                let valid = !secrets.is_empty()
                    && secrets.iter().all(|s| match (&scheme, s) {
                        (_, Secret::Empty) => false,
                        (Scheme::Standard, Secret::Key(..)) => true,
                        (Scheme::Standard, Secret::Text(t)) => {
                            B64.decode(t).is_ok_and(|k| k.len() >= 16)
                        }
                        (Scheme::Standard, _) => false,
                        _ => true,
                    });
                match got {
                    Ok(v) => {
                        prop_assert!(valid, "accepted {:?}", texts);
                        let shown = format!("{v:?}");
                        for t in texts.iter().filter(|t| t.len() >= 8) {
                            prop_assert!(!shown.contains(t.as_str()), "{}", shown);
                        }
                    }
                    Err(e) => {
                        prop_assert!(!valid, "refused {:?}: {}", texts, e);
                        let msg = e.to_string();
                        prop_assert!(msg.starts_with("route[2].signature: "), "{}", msg);
                        for t in texts.iter().filter(|t| t.len() >= 8) {
                            prop_assert!(!msg.contains(t.as_str()), "{} echoes a secret", msg);
                        }
                    }
                }
                Ok(())
            },
        );
    }
}

mod request_head {
    use hookgate::core::{request_head, Rejection};
    use http::{header, HeaderMap, HeaderValue, Method, Version};
    use proptest::prelude::*;
    use proptest::sample::select;

    use super::harness::check;

    fn value() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![8 => 0x20u8..0x7f, 1 => Just(b'\t'), 1 => 0x80u8..=0xff];
        prop_oneof![
            select(vec![
                "application/json",
                "application/json; charset=utf-8",
                "Application/JSON",
                "application/cloudevents+json",
                "application/json; charset=latin1",
                "text/plain",
                "application/json;",
                "application/json; charset=\"utf-8\"",
                "application/",
                "/json",
                "json",
                "application/jsonx",
                "application/json+x",
                "application/json; charset=us-ascii",
                "0",
                "00",
                "+5",
                "-1",
                " 7 ",
                "1e3",
                "18446744073709551615",
                "18446744073709551616",
                "99999999999999999999999",
                "100-continue",
                "100-Continue",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            "[0-9]{1,25}".prop_map(String::into_bytes),
            proptest::collection::vec(byte, 0..40),
        ]
    }

    /// The head checks of steps 4, 6 and 7 over any header values: no panic; a declared
    /// length is returned only when it is the header's number and within the limit; all
    /// digits beyond the limit is 413; an accepted media type is JSON.
    #[test]
    fn request_head_checks_answer_any_values() {
        let strategy = (
            proptest::option::of(value()),
            proptest::option::of(value()),
            proptest::option::of(value()),
            0u64..2048,
            select(vec![
                Method::POST,
                Method::GET,
                Method::PUT,
                Method::OPTIONS,
            ]),
            any::<bool>(),
        );
        check(
            "request_head_checks_answer_any_values",
            4096,
            strategy,
            |(length, media, expect, limit, method, http_11)| {
                let mut h = HeaderMap::new();
                for (name, v) in [
                    (header::CONTENT_LENGTH, &length),
                    (header::CONTENT_TYPE, &media),
                    (header::EXPECT, &expect),
                ] {
                    if let Some(v) = v {
                        h.insert(
                            name,
                            HeaderValue::from_bytes(v).expect("valid header bytes"),
                        );
                    }
                }
                let text = length
                    .as_deref()
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .map(str::trim);
                match request_head::check_content_length(&h, limit) {
                    Ok(Some(n)) => {
                        prop_assert!(n <= limit);
                        prop_assert_eq!(text.and_then(|t| t.parse::<u64>().ok()), Some(n));
                    }
                    Ok(None) => {
                        prop_assert!(
                            !text.is_some_and(
                                |t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())
                            ),
                            "digits {:?} read as no length",
                            text
                        )
                    }
                    Err(r) => {
                        prop_assert!(matches!(r, Rejection::PayloadTooLarge { .. }), "{:?}", r);
                        let t = text.unwrap_or("");
                        prop_assert!(t.parse::<u64>().map_or(
                            !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()),
                            |n| n > limit
                        ));
                    }
                }
                if request_head::check_content_type(&h).is_ok() {
                    let m = String::from_utf8_lossy(media.as_deref().unwrap_or(b""))
                        .to_ascii_lowercase();
                    prop_assert!(
                        m.trim_start().starts_with("application/") && m.contains("json"),
                        "{}",
                        m
                    );
                }
                let version = if http_11 {
                    Version::HTTP_11
                } else {
                    Version::HTTP_10
                };
                if request_head::expects_continue(version, &h) {
                    prop_assert!(http_11);
                }
                let all = request_head::check(&method, &h, limit);
                if method != Method::POST {
                    prop_assert!(matches!(all, Err(Rejection::MethodNotAllowed)));
                }
                Ok(())
            },
        );
    }
}

mod config {
    use hookgate::gateway::{Config, ConfigFileError};
    use proptest::prelude::*;
    use proptest::sample::select;

    use super::generate::{mutate, mutation};
    use super::harness::check;

    /// What DESIGN §8 says of one generated setting.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Bad {
        /// Valid.
        No,
        /// Refused while the file is read (wrong type, unknown name or value): the error names
        /// this key.
        Syntax(&'static str),
        /// Refused by the checks after reading: an error line starts with this key.
        Check(String),
    }

    #[derive(Debug, Clone)]
    struct Setting {
        line: String,
        bad: Bad,
    }

    fn ok(line: impl Into<String>) -> Setting {
        Setting {
            line: line.into(),
            bad: Bad::No,
        }
    }

    fn syntax(line: impl Into<String>, key: &'static str) -> Setting {
        Setting {
            line: line.into(),
            bad: Bad::Syntax(key),
        }
    }

    fn refused(line: impl Into<String>, key: impl Into<String>) -> Setting {
        Setting {
            line: line.into(),
            bad: Bad::Check(key.into()),
        }
    }

    /// How often a setting is valid, refused by the checks, or refused while reading: a file
    /// has a couple of dozen settings, and each kind of outcome should be common.
    const VALID: u32 = 60;
    const CHECKED: u32 = 2;
    const MISREAD: u32 = 1;

    /// Picks one of `settings` by those weights, or leaves the key out (its default is valid)
    /// when `optional`.
    fn one_of(settings: Vec<Setting>, optional: bool) -> BoxedStrategy<Option<Setting>> {
        let mut groups: [Vec<Setting>; 3] = Default::default();
        for s in settings {
            let class = match s.bad {
                Bad::No => 0,
                Bad::Check(_) => 1,
                Bad::Syntax(_) => 2,
            };
            groups[class].push(s);
        }
        let mut choices = Vec::new();
        if optional {
            choices.push((VALID / 2, Just(None).boxed()));
        }
        for (group, weight) in groups.into_iter().zip([VALID, CHECKED, MISREAD]) {
            if !group.is_empty() {
                choices.push((weight, select(group).prop_map(Some).boxed()));
            }
        }
        proptest::strategy::Union::new_weighted(choices).boxed()
    }

    /// An index into a list of variants whose first `valid` are valid, by the same weights.
    fn variant(valid: u8, all: u8) -> impl Strategy<Value = u8> {
        prop_oneof![
            VALID => 0..valid,
            CHECKED + MISREAD => valid..all,
        ]
    }

    fn secret() -> impl Strategy<Value = String> {
        "[A-Za-z0-9]{16,24}"
    }

    /// `[server]`, with the admin listener and its token decided together (a reachable admin
    /// needs a token).
    fn server() -> impl Strategy<Value = (Vec<Setting>, Vec<String>)> {
        let listen = one_of(
            vec![
                ok("listen = \"127.0.0.1:18080\""),
                ok("listen = [\"127.0.0.1:18080\", \"[::1]:18081\"]"),
                refused("listen = \"localhost\"", "server.listen[0]"),
                refused("listen = \"127.0.0.1:99999\"", "server.listen[0]"),
                refused("listen = []", "server.listen"),
                syntax("listen = 5", "listen"),
            ],
            true,
        );
        let simple = vec![
            one_of(
                vec![
                    ok("threads = 2"),
                    refused("threads = 0", "server.threads"),
                    syntax("threads = -1", "threads"),
                    syntax("threads = \"two\"", "threads"),
                ],
                true,
            ),
            (
                select(vec!["header_timeout", "body_timeout", "idle_timeout"]),
                variant(2, 5),
            )
                .prop_map(|(k, v)| {
                    Some(match v {
                        0 => ok(format!("{k} = \"250ms\"")),
                        1 => ok(format!("{k} = \"1m 30s\"")),
                        2 => refused(format!("{k} = \"50ms\""), format!("server.{k}")),
                        3 => syntax(format!("{k} = \"soon\""), k),
                        _ => syntax(format!("{k} = 5"), k),
                    })
                })
                .boxed(),
            one_of(
                vec![
                    ok("durability = \"memory\""),
                    ok("durability = \"os\""),
                    syntax("durability = \"disk\"", "durability"),
                ],
                true,
            ),
            one_of(
                vec![
                    ok("spool_max_events = 1000"),
                    refused("spool_max_events = 0", "server.spool_max_events"),
                ],
                true,
            ),
            one_of(
                vec![
                    ok("spool_max_size = \"1GiB\""),
                    ok("spool_max_size = 4096"),
                    syntax("spool_max_size = \"lots\"", "spool_max_size"),
                ],
                true,
            ),
            one_of(
                vec![
                    ok("dedup_capacity = 1000"),
                    refused("dedup_capacity = 0", "server.dedup_capacity"),
                ],
                true,
            ),
            one_of(
                vec![
                    ok("max_connections = 64"),
                    refused("max_connections = 0", "server.max_connections"),
                ],
                true,
            ),
            // A typo: an unknown name.
            prop_oneof![VALID => Just(None), MISREAD => Just(Some(syntax("threds = 2", "threds")))]
                .boxed(),
        ];
        // Admin: default, loopback, reachable (needs a token), not an address; token: none
        // (twice as likely), inline, empty.
        let admin = (variant(3, 4), variant(3, 4), secret());
        (listen, simple, admin).prop_map(|(listen, simple, (admin, token, secret))| {
            let mut settings: Vec<Setting> = listen
                .into_iter()
                .chain(simple.into_iter().flatten())
                .collect();
            let mut secrets = Vec::new();
            let (admin_line, reachable, parses) = match admin {
                0 => (None, false, true),
                1 => (Some("admin = \"[::1]:19090\""), false, true),
                2 => (Some("admin = \"0.0.0.0:19090\""), true, true),
                _ => (Some("admin = \"nope\""), false, false),
            };
            let token_line = match token {
                0 | 1 => None,
                2 => {
                    secrets.push(secret.clone());
                    Some((format!("admin_token = \"{secret}\""), Bad::No))
                }
                _ => Some((
                    "admin_token = \"\"".to_owned(),
                    Bad::Check("server.admin_token".into()),
                )),
            };
            let admin_bad = if !parses || (reachable && token_line.is_none()) {
                Bad::Check("server.admin".into())
            } else {
                Bad::No
            };
            if let Some(line) = admin_line {
                settings.push(Setting {
                    line: line.into(),
                    bad: admin_bad,
                });
            } else if admin_bad != Bad::No {
                unreachable!("the default admin is valid");
            }
            if let Some((line, bad)) = token_line {
                settings.push(Setting { line, bad });
            }
            (settings, secrets)
        })
    }

    /// `[store]`, its backend and the keys that belong to one backend only.
    fn store() -> impl Strategy<Value = Option<Vec<Setting>>> {
        // Backend: none, memory, embedded, redis (needs the url), not a backend; the url is a
        // key of redis only.
        let url = prop_oneof![VALID => Just(false), CHECKED => Just(true)];
        (variant(3, 5), url, variant(2, 3), variant(2, 3)).prop_map(
            |(backend, url, memory, retry)| {
                let mut s = Vec::new();
                let redis = backend == 3;
                match backend {
                    0 => return None,
                    1 => s.push(ok("backend = \"memory\"")),
                    2 => s.push(ok("backend = \"embedded\"")),
                    3 => s.push(Setting {
                        line: "backend = \"redis\"".into(),
                        bad: if url {
                            Bad::No
                        } else {
                            Bad::Check("store.url".into())
                        },
                    }),
                    _ => s.push(syntax("backend = \"disk\"", "backend")),
                }
                if url {
                    s.push(Setting {
                        line: "url = \"redis://127.0.0.1:6379/0\"".into(),
                        bad: if redis || backend == 4 {
                            Bad::No
                        } else {
                            Bad::Check("store.url".into())
                        },
                    });
                }
                match memory {
                    0 => {}
                    1 => s.push(ok("memory = \"64MiB\"")),
                    _ => s.push(refused("memory = \"2MiB\"", "store.memory")),
                }
                match retry {
                    0 => {}
                    1 => s.push(ok("write_retry = \"2s\"")),
                    _ => s.push(refused("write_retry = \"5ms\"", "store.write_retry")),
                }
                Some(s)
            },
        )
    }

    fn cidrs(key: String) -> impl Strategy<Value = Option<Setting>> {
        let entry = prop_oneof![
            VALID => select(vec!["127.0.0.1/32", "::1/128", "10.0.0.0/8", "0.0.0.0/0", "192.0.2.7", "::ffff:10.0.0.0/104", " 10.0.0.0/8 "])
                .prop_map(|c| (c, true)),
            CHECKED => select(vec!["10.0.0.300/8", "10.0.0.1/8", "::1/129", "nope", "", " ", "10.0.0.0/8/8"])
                .prop_map(|c| (c, false)),
        ];
        let empty = prop_oneof![VALID => Just(false), CHECKED => Just(true)];
        (proptest::collection::vec(entry, 1..4), empty).prop_map(move |(mut entries, empty)| {
            if empty {
                entries.clear();
            }
            let list = entries
                .iter()
                .map(|(c, _)| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            let line = format!("{} = [{list}]", key.rsplit('.').next().unwrap_or(&key));
            let first_bad = entries.iter().position(|(_, valid)| !valid);
            Some(match first_bad {
                Some(i) => refused(line, format!("{key}[{i}]")),
                None if entries.is_empty() && key.ends_with(".allow") => refused(line, key.clone()),
                None => ok(line),
            })
        })
    }

    /// One `[[route]]`, its sub-tables after its keys.
    fn route(i: usize) -> impl Strategy<Value = (String, Vec<Bad>, Vec<String>, bool)> {
        let k = move |key: &str| format!("route[{i}].{key}");
        let keys = vec![
            one_of(vec![ok(format!("name = \"r{i}\""))], true),
            prop_oneof![
                VALID => Just(Some(ok(format!("path = \"/webhook/{i}\"")))),
                CHECKED => Just(Some(refused(format!("path = \"webhook/{i}\""), k("path")))),
                // Left out: it is required.
                MISREAD => Just(Some(syntax("", "path"))),
            ]
            .boxed(),
            one_of(
                vec![
                    ok(format!("upstream = \"http://127.0.0.1:3000/h{i}\"")),
                    refused("upstream = \"ftp://127.0.0.1/x\"", k("upstream")),
                    refused("upstream = \"not a url\"", k("upstream")),
                ],
                false,
            ),
            one_of(
                vec![
                    ok("mode = \"fast_ack\""),
                    ok("mode = \"proxy\""),
                    syntax("mode = \"later\"", "mode"),
                ],
                true,
            ),
            one_of(
                vec![
                    ok("profile = \"runblob_strict\""),
                    ok("profile = \"json\""),
                    refused("profile = \"schema\"", k("schema")),
                    syntax("profile = \"xml\"", "profile"),
                ],
                true,
            ),
            cidrs(k("allow")).boxed(),
            prop_oneof![2 => Just(None), 1 => cidrs(k("trusted_proxies"))].boxed(),
            one_of(
                vec![
                    ok("max_body = \"64KiB\""),
                    ok("max_body = 1048576"),
                    refused("max_body = 0", k("max_body")),
                    syntax("max_body = \"lots\"", "max_body"),
                ],
                true,
            ),
            (variant(3, 4), variant(1, 4))
                .prop_map(move |(key, ttl)| {
                    let (key_text, key_bad) = match key {
                        0 => ("key = \"/generation_id\"", Bad::No),
                        1 => ("key = \"header:X-Id\"", Bad::No),
                        2 => ("key = \"body\"", Bad::No),
                        _ => ("key = \"generation_id\"", Bad::Check(k("dedup.key"))),
                    };
                    let (ttl_text, ttl_bad) = match ttl {
                        0 => ("ttl = \"90m\"", Bad::No),
                        1 => ("ttl = \"0s\"", Bad::Check(k("dedup.ttl"))),
                        2 => ("ttl = \"soon\"", Bad::Syntax("ttl")),
                        _ => ("kee = \"body\"", Bad::Syntax("kee")),
                    };
                    let line = format!("dedup = {{ {key_text}, {ttl_text} }}");
                    // Two faults in one table: either may be the one named.
                    let bad = match (key_bad, ttl_bad) {
                        (_, Bad::Syntax(s)) => Bad::Syntax(s),
                        (Bad::No, b) => b,
                        (b, _) => b,
                    };
                    Some(Setting { line, bad })
                })
                .boxed(),
            one_of(
                vec![
                    ok("rate_limit = { per_ip = \"50/s\", burst = 100 }"),
                    refused("rate_limit = { per_ip = \"fast\" }", k("rate_limit")),
                    refused(
                        "rate_limit = { per_ip = \"5/s\", burst = 0 }",
                        k("rate_limit"),
                    ),
                ],
                true,
            ),
        ];
        let delivery = one_of(
            vec![
                ok("max_attempts = 3\ntimeout = \"5s\""),
                refused("max_attempts = 0", k("delivery.max_attempts")),
                refused("concurrency = 0", k("delivery.concurrency")),
                refused(
                    "backoff = \"10s\"\nmax_backoff = \"1s\"",
                    k("delivery.backoff"),
                ),
            ],
            true,
        );
        let how = prop_oneof![
            2 * VALID => Just(0u8),
            VALID => Just(1u8),
            VALID => Just(2u8),
            VALID => Just(8u8),
            CHECKED + MISREAD => 3..8u8,
        ];
        let signature = (how, secret(), proptest::collection::vec(any::<u8>(), 24..32)).prop_map(
            move |(how, secret, key)| {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(key);
                let (lines, bad, secret) = match how {
                    0 => return None,
                    1 => (format!("scheme = \"github\"\nsecrets = [\"{secret}\"]"), Bad::No, secret),
                    2 => (format!("scheme = \"standard_webhooks\"\nsecrets = [\"whsec_{b64}\"]"), Bad::No, b64),
                    3 => (
                        format!("scheme = \"standard_webhooks\"\nsecrets = [\"whsec_not*{secret}\"]"),
                        Bad::Check(k("signature")),
                        secret,
                    ),
                    4 => ("scheme = \"github\"\nsecrets = []".to_owned(), Bad::Check(k("signature")), secret),
                    5 => (format!("scheme = \"rsa\"\nsecrets = [\"{secret}\"]"), Bad::Syntax("scheme"), secret),
                    6 => (format!("scheme = \"github\"\nsecrets = \"{secret}\""), Bad::Syntax("secrets"), secret),
                    7 => (
                        format!("scheme = \"hmac\"\nsecrets = [\"{secret}\"]"),
                        Bad::Check(k("signature.header")),
                        secret,
                    ),
                    _ => (
                        format!("scheme = \"hmac\"\nsecrets = [\"{secret}\"]\nheader = \"X-Sig\"\nencoding = \"base64\""),
                        Bad::No,
                        secret,
                    ),
                };
                Some((Setting { line: lines, bad }, secret))
            },
        );
        (keys, delivery, signature, any::<bool>())
            .prop_flat_map(|(keys, delivery, signature, order)| {
                let keys: Vec<Setting> = keys.into_iter().flatten().collect();
                (
                    Just(keys).prop_shuffle(),
                    Just((delivery, signature, order)),
                )
            })
            .prop_map(|(keys, (delivery, signature, order))| {
                let mut text = String::from("[[route]]\n");
                let mut bad = Vec::new();
                for s in &keys {
                    text.push_str(&s.line);
                    text.push('\n');
                    bad.push(s.bad.clone());
                }
                let mut tables = Vec::new();
                if let Some(d) = delivery {
                    tables.push(format!("[route.delivery]\n{}\n", d.line));
                    bad.push(d.bad);
                }
                let mut secrets = Vec::new();
                let signed = signature.is_some();
                if let Some((s, secret)) = signature {
                    tables.push(format!("[route.signature]\n{}\n", s.line));
                    bad.push(s.bad);
                    secrets.push(secret);
                }
                if order {
                    tables.reverse();
                }
                text.extend(tables);
                (text, bad, secrets, signed)
            })
    }

    /// A whole file and what DESIGN §8 says of it.
    #[derive(Debug, Clone)]
    struct Case {
        text: String,
        syntax: Vec<&'static str>,
        check: Vec<String>,
        secrets: Vec<String>,
        signed: bool,
    }

    fn case() -> impl Strategy<Value = Case> {
        let routes = prop_oneof![CHECKED => Just(0usize), VALID => 1usize..=3]
            .prop_flat_map(|n| (0..n).map(route).collect::<Vec<_>>());
        (server(), store(), routes).prop_flat_map(|((server, mut secrets), store, routes)| {
            let mut text = String::from("[server]\n");
            let mut bad: Vec<Bad> = Vec::new();
            for s in &server {
                text.push_str(&s.line);
                text.push('\n');
                bad.push(s.bad.clone());
            }
            if let Some(store) = store {
                text.push_str("\n[store]\n");
                for s in store {
                    text.push_str(&s.line);
                    text.push('\n');
                    bad.push(s.bad);
                }
            }
            let mut signed = false;
            if routes.is_empty() {
                bad.push(Bad::Check("route".into()));
            }
            for (route, route_bad, route_secrets, route_signed) in routes {
                text.push('\n');
                text.push_str(&route);
                bad.extend(route_bad);
                secrets.extend(route_secrets);
                signed |= route_signed;
            }
            let syntax: Vec<&'static str> = bad
                .iter()
                .filter_map(|b| match b {
                    Bad::Syntax(k) => Some(*k),
                    _ => None,
                })
                .collect();
            let check: Vec<String> = bad
                .iter()
                .filter_map(|b| match b {
                    Bad::Check(k) => Some(k.clone()),
                    _ => None,
                })
                .collect();
            Just(Case {
                text,
                syntax,
                check,
                secrets,
                signed,
            })
        })
    }

    /// Whether an error line (the file's name stripped) names a key or a position: `key.path:`,
    /// `line N, column M`, or a field name in serde's backticks.
    fn names_a_key_or_position(rest: &str) -> bool {
        let position = rest
            .strip_prefix("line ")
            .and_then(|r| r.split_once(", column "))
            .is_some_and(|(l, c)| {
                l.bytes().all(|b| b.is_ascii_digit())
                    && c.bytes().take_while(u8::is_ascii_digit).count() > 0
            });
        let key = rest.split_once(": ").is_some_and(|(k, _)| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.[]".contains(&b))
        });
        position || key || rest.contains('`')
    }

    fn every_line_names_the_file(text: &str) -> Result<(), TestCaseError> {
        prop_assert!(!text.is_empty());
        for line in text.lines() {
            let rest = line.strip_prefix("t.toml: ");
            prop_assert!(rest.is_some(), "{:?} does not name the file", line);
            let rest = rest.unwrap_or_default();
            prop_assert!(
                names_a_key_or_position(rest),
                "{:?} names neither a key nor a position",
                line
            );
        }
        Ok(())
    }

    #[test]
    fn config_is_accepted_exactly_when_every_value_is_valid() {
        check(
            "config_is_accepted_exactly_when_every_value_is_valid",
            768,
            case(),
            |case| {
                let got = Config::parse("t.toml", &case.text);
                let shown = match &got {
                    Ok(c) => c.to_toml(),
                    Err(e) => e.to_string(),
                };
                for s in &case.secrets {
                    prop_assert!(!shown.contains(s.as_str()), "a secret shown:\n{}", shown);
                }
                match got {
                    Err(ConfigFileError::Syntax { message, .. }) => {
                        prop_assert!(
                            !case.syntax.is_empty(),
                            "refused while reading: {}\n{}",
                            message,
                            case.text
                        );
                        prop_assert!(
                            case.syntax.iter().any(|k| message.contains(k)),
                            "{} names none of {:?}\n{}",
                            message,
                            case.syntax,
                            case.text
                        );
                        every_line_names_the_file(&shown)?;
                    }
                    Err(ConfigFileError::Invalid { .. }) => {
                        prop_assert!(
                            case.syntax.is_empty(),
                            "read despite {:?}: {}",
                            case.syntax,
                            shown
                        );
                        prop_assert!(!case.check.is_empty(), "refused:\n{}\n{}", shown, case.text);
                        for k in &case.check {
                            prop_assert!(
                                shown.contains(&format!("t.toml: {k}")),
                                "{} not named:\n{}\n{}",
                                k,
                                shown,
                                case.text
                            );
                        }
                        every_line_names_the_file(&shown)?;
                    }
                    Err(other) => prop_assert!(false, "{}", other),
                    Ok(config) => {
                        prop_assert!(
                            case.syntax.is_empty() && case.check.is_empty(),
                            "accepted despite {:?} {:?}\n{}",
                            case.syntax,
                            case.check,
                            case.text
                        );
                        // The effective config reads back the same (a signature's secrets are
                        // printed as `***`, which is not a Standard Webhooks secret).
                        if !case.signed {
                            let again = Config::parse("t.toml", &shown).map_err(|e| {
                                TestCaseError::fail(format!(
                                    "the printed config is refused: {e}\n{shown}"
                                ))
                            })?;
                            prop_assert_eq!(again.to_toml(), shown);
                        }
                        prop_assert!(!config.routes.is_empty());
                    }
                }
                Ok(())
            },
        );
    }

    /// Text lines of the kind a config holds, any of them broken.
    fn tomlish() -> impl Strategy<Value = String> {
        let line = prop_oneof![
            "\\[[a-z_.]{0,12}\\]",
            "\\[\\[[a-z_.]{0,8}\\]\\]",
            "[a-z_]{1,12} = \"[ -~]{0,16}\"",
            "[a-z_]{1,12} = [0-9-]{1,20}",
            "[a-z_]{1,12} = \\[[\"a-z0-9, ]{0,20}\\]",
            "[a-z_]{1,12} = \\{[ -~]{0,24}\\}",
            "[a-z_.\"]{1,16} = (true|false|inf|nan|1e999|0x1F|1979-05-27)",
            "#[ -~]{0,20}",
            // Escapes that decode to control characters, in names serde echoes back.
            "(mode|profile|durability|backend|scheme|upstream_ca|schema) = \"[a-z]{0,4}\\\\(n|r|t|b|u001b)[a-z :.0-9\\[\\]]{0,12}\"",
            any::<String>(),
        ];
        proptest::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
    }

    /// Arbitrary and mutated files: never a panic, and every error names the file and a key or
    /// a position.
    #[test]
    fn config_text_never_panics_and_errors_name_the_file() {
        let strategy = prop_oneof![
            3 => (case(), proptest::collection::vec(mutation(), 1..5)).prop_map(|(c, m)| {
                String::from_utf8_lossy(&mutate(c.text.into_bytes(), &m)).into_owned()
            }),
            2 => tomlish(),
            1 => tomlish().prop_map(|t| format!("[server]\n{t}\n[[route]]\npath = \"/a\"\nupstream = \"http://127.0.0.1:1/\"\nallow = [\"::1/128\"]\n")),
        ];
        check(
            "config_text_never_panics_and_errors_name_the_file",
            1024,
            strategy,
            |text| {
                match Config::parse("t.toml", &text) {
                    Ok(config) => {
                        let printed = config.to_toml();
                        prop_assert!(!printed.starts_with("# cannot print"), "{}", printed);
                    }
                    Err(e) => every_line_names_the_file(&e.to_string())?,
                }
                Ok(())
            },
        );
    }
}

mod gateway {
    use std::time::Duration;

    use proptest::prelude::*;
    use proptest::sample::select;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::common::{Gateway, Upstream, PATH};
    use super::generate::{json_value, mutate, mutation, provider_payload, Bytes};
    use super::harness::check;

    /// How long an answer may take. The gateway's own deadlines are 200 ms (header and body),
    /// so anything near this bound is a hang.
    const BOUND: Duration = Duration::from_secs(5);

    /// One request as sent: its bytes, and where the sender pauses (a head split across
    /// reads, as TCP may deliver it).
    #[derive(Debug, Clone)]
    struct Request {
        bytes: Bytes,
        pause_at: Option<proptest::sample::Index>,
    }

    /// Header lines a careless or hostile client sends.
    fn hostile_header() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => select(vec![
                "Transfer-Encoding: chunked",
                "Transfer-Encoding: xchunked",
                "Transfer-Encoding: chunked, identity",
                "Content-Length: -1",
                "Content-Length: 99999999999999999999",
                "Content-Length: 5, 5",
                "Content-Length: +5",
                "Content-Length: 0x10",
                "Expect: 100-continue",
                "Expect: 200-ok",
                "Connection: close",
                "Connection: keep-alive, Upgrade",
                "Upgrade: websocket",
                " folded continuation",
                "\tfolded continuation",
                "Bad Name: x",
                ": empty name",
                "NoColon",
                "X-Forwarded-For: 1.2.3.4, unknown",
                "X-Forwarded-For: 203.0.113.9",
                "X-Forwarded-For: 127.0.0.1, [::1]:80",
                "X-Forwarded-For: ::ffff:127.0.0.1",
                "X-Forwarded-For: \u{ff}",
                "Host: second.example",
                "Content-Type: text/plain",
                "Content-Type: application/json; charset=latin1",
                "X-Nul: a\0b",
                "X-Ü: ü",
                "X-Bidi: \u{202e}gnp.exe",
                "webhook-signature: v1,AAAA",
            ])
            .prop_map(str::to_owned),
            1 => (1usize..70_000).prop_map(|n| format!("X-Long: {}", "a".repeat(n))),
            1 => (1usize..400).prop_map(|n| (0..n).map(|i| format!("X-H{i}: v")).collect::<Vec<_>>().join("\r\n")),
        ]
    }

    /// The reference sender's request (DESIGN §1), then edits of its method, target, version,
    /// headers, framing and line ends.
    fn sender_request() -> impl Strategy<Value = Vec<u8>> {
        let method = prop_oneof![
            12 => Just("POST".to_owned()),
            2 => select(vec!["GET", "PUT", "HEAD", "OPTIONS", "CONNECT", "TRACE", "DELETE", "post", "PO ST", "", "P\0ST"])
                .prop_map(str::to_owned),
            1 => (1usize..400).prop_map(|n| "M".repeat(n)),
        ];
        let target = prop_oneof![
            12 => Just(PATH.to_owned()),
            2 => select(vec![
                "/", "*", "http://127.0.0.1/webhook/o3-video", "/webhook/o3-video?x=1",
                "/webhook/o3-video#f", "//", "/%00", "/webhook/o3-video/../x", "/ü", "",
                "/webhook/o3-video ", "/webhook/%6f3-video",
            ])
            .prop_map(str::to_owned),
            1 => (1usize..10_000).prop_map(|n| format!("/{}", "a".repeat(n))),
        ];
        let version = prop_oneof![
            12 => Just("HTTP/1.1"),
            2 => select(vec!["HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTP/9.9", "HTTP/1", "http/1.1", "", "HTTP/1.1 x"]),
        ];
        let body = prop_oneof![
            4 => provider_payload(),
            1 => json_value().prop_map(|v| v.to_string()),
            1 => Just(String::new()),
        ];
        // The declared length: right, short, long, absent, or chunked framing.
        let framing = prop_oneof![6 => Just(0u8), 1 => 1..5u8];
        (
            method,
            target,
            version,
            body,
            framing,
            prop_oneof![
                3 => Just(Vec::new()),
                1 => proptest::collection::vec(hostile_header(), 1..3),
            ],
            proptest::bool::weighted(0.9),
            proptest::bool::weighted(0.1),
        )
            .prop_flat_map(
                |(method, target, version, body, framing, extra, host, lf)| {
                    let mut headers = vec![
                        "Content-Type: application/json".to_owned(),
                        "User-Agent: provider-webhooks/1.0".to_owned(),
                        "Accept: */*".to_owned(),
                    ];
                    if host {
                        headers.push("Host: hooks.example.com".to_owned());
                    }
                    let (framing_header, sent) = match framing {
                        0 => (
                            Some(format!("Content-Length: {}", body.len())),
                            body.clone(),
                        ),
                        1 => (
                            Some(format!("Content-Length: {}", body.len() + 7)),
                            body.clone(),
                        ),
                        2 => (
                            Some(format!("Content-Length: {}", body.len().saturating_sub(3))),
                            body.clone(),
                        ),
                        3 => (None, body.clone()),
                        _ => (
                            Some("Transfer-Encoding: chunked".to_owned()),
                            format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()),
                        ),
                    };
                    headers.extend(framing_header);
                    headers.extend(extra);
                    (
                        Just((method, target, version, sent, lf)),
                        Just(headers).prop_shuffle(),
                    )
                },
            )
            .prop_map(|((method, target, version, body, lf), headers)| {
                let eol = if lf { "\n" } else { "\r\n" };
                let head = format!(
                    "{method} {target} {version}{eol}{}{eol}{eol}",
                    headers.join(eol)
                );
                let mut bytes = head.into_bytes();
                bytes.extend_from_slice(body.as_bytes());
                bytes
            })
    }

    fn request() -> impl Strategy<Value = Request> {
        let bytes = prop_oneof![
            4 => sender_request(),
            2 => (sender_request(), proptest::collection::vec(mutation(), 1..4))
                .prop_map(|(r, m)| mutate(r, &m)),
            1 => proptest::collection::vec(any::<u8>(), 0..512),
            1 => "[ -~\r\n]{0,300}".prop_map(String::into_bytes),
        ];
        (
            bytes,
            proptest::option::weighted(0.2, any::<proptest::sample::Index>()),
        )
            .prop_map(|(bytes, pause_at)| Request {
                bytes: Bytes(bytes),
                pause_at,
            })
    }

    /// What came back on one connection.
    #[derive(Debug)]
    enum Reply {
        /// A complete final answer.
        Answer(Answer),
        /// Closed (or reset) before any byte of an answer.
        Closed,
    }

    #[derive(Debug)]
    struct Answer {
        status: u16,
        body: Vec<u8>,
    }

    /// The first complete final answer in `buf`, `Ok(None)` while incomplete, or why `buf` is
    /// not HTTP/1.1. Interim (1xx) answers are skipped. The answer to a `HEAD` has no body
    /// whatever its length says (RFC 9110 §9.3.2).
    fn parse_answer(
        mut buf: &[u8],
        closed: bool,
        head_request: bool,
    ) -> Result<Option<Answer>, String> {
        loop {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(None);
            };
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| "a head that is not UTF-8")?;
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let status = status_line
                .strip_prefix("HTTP/1.1 ")
                .and_then(|r| r.get(..3))
                .and_then(|s| s.parse::<u16>().ok())
                .filter(|s| (100..600).contains(s))
                .ok_or_else(|| format!("status line {status_line:?}"))?;
            if status_line.len() > 12 && status_line.as_bytes()[12] != b' ' {
                return Err(format!("status line {status_line:?}"));
            }
            let mut length = None;
            let mut chunked = false;
            for line in lines {
                let (name, value) = line
                    .split_once(':')
                    .ok_or_else(|| format!("header line {line:?}"))?;
                let token = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !token || line.contains(['\r', '\n']) {
                    return Err(format!("header line {line:?}"));
                }
                if name.eq_ignore_ascii_case("content-length") {
                    if length.is_some() {
                        return Err("two Content-Lengths".into());
                    }
                    length = Some(
                        value
                            .trim()
                            .parse::<usize>()
                            .map_err(|_| format!("{line:?}"))?,
                    );
                }
                if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.trim().eq_ignore_ascii_case("chunked");
                }
            }
            let rest = &buf[end + 4..];
            let no_body =
                head_request || (100..200).contains(&status) || status == 204 || status == 304;
            let body_len = if no_body {
                0
            } else if let Some(n) = length {
                n
            } else if chunked {
                // The gateway's answers carry a length; an upstream's relayed answer may not.
                match rest.windows(5).position(|w| w == b"0\r\n\r\n") {
                    Some(p) => p + 5,
                    None if closed => return Err("closed inside a chunked body".into()),
                    None => return Ok(None),
                }
            } else if closed {
                rest.len()
            } else {
                return Ok(None);
            };
            if rest.len() < body_len {
                return if closed {
                    Err(format!(
                        "closed after {} of {body_len} body bytes",
                        rest.len()
                    ))
                } else {
                    Ok(None)
                };
            }
            if (100..200).contains(&status) {
                buf = rest;
                continue;
            }
            return Ok(Some(Answer {
                status,
                body: rest[..body_len].to_vec(),
            }));
        }
    }

    /// Sends `request` on a fresh connection and reads until a complete answer, a close, or
    /// [`BOUND`].
    async fn exchange(addr: std::net::SocketAddr, request: &Request) -> Result<Reply, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut rd, mut wr) = stream.into_split();
        let bytes = request.bytes.0.clone();
        let pause = request.pause_at.map(|i| i.index(bytes.len() + 1));
        let head_request = bytes.starts_with(b"HEAD ");
        // Written beside the read: a gateway that answers early and stops reading must not
        // stall the test; write errors (a closed connection) are the gateway's right.
        let writer = tokio::spawn(async move {
            let split = pause.unwrap_or(bytes.len());
            if wr.write_all(&bytes[..split]).await.is_err() {
                return wr;
            }
            if pause.is_some() {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            let _ = wr.write_all(&bytes[split..]).await;
            wr
        });
        let read = async {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match rd.read(&mut chunk).await {
                    Ok(0) => {
                        return match parse_answer(&buf, true, head_request)? {
                            Some(answer) => Ok(Reply::Answer(answer)),
                            None if buf.is_empty() => Ok(Reply::Closed),
                            None => Err(format!(
                                "closed inside an answer: {:?}",
                                buf.escape_ascii().to_string()
                            )),
                        };
                    }
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(answer) = parse_answer(&buf, false, head_request)? {
                            return Ok(Reply::Answer(answer));
                        }
                    }
                    // A close with unread input is a reset; before any answer byte it is a close.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && buf.is_empty() => {
                        return Ok(Reply::Closed)
                    }
                    Err(e) => {
                        return Err(format!(
                            "read: {e} after {:?}",
                            buf.escape_ascii().to_string()
                        ))
                    }
                }
            }
        };
        let got = tokio::time::timeout(BOUND, read).await;
        writer.abort();
        got.unwrap_or_else(|_| Err(format!("no answer and no close within {BOUND:?}")))
    }

    /// Whether the process is still running (not exited, not a zombie).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
    }

    /// The real binary against request heads as senders write them, and mutated past
    /// recognition, several connections at once: a well-formed HTTP/1.1 answer or a clean close
    /// within [`BOUND`], the process alive, `/healthz` answering after each batch.
    #[test]
    fn gateway_answers_any_request_head_and_stays_up() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (upstream, gateway) = rt.block_on(async {
            let upstream = Upstream::start().await;
            let gateway = Gateway::for_upstream_edited(
                dir.path(),
                &upstream.url(),
                "header_timeout = \"200ms\"\nbody_timeout = \"200ms\"\nidle_timeout = \"2s\"",
                // The peer is a trusted proxy, so each `X-Forwarded-For` is read (step 2).
                "max_body = \"64KiB\"\ntrusted_proxies = [\"127.0.0.0/8\"]",
                |text| text.replace("[[route]]", "[store]\nbackend = \"memory\"\n\n[[route]]"),
            )
            .await;
            (upstream, gateway)
        });
        let health = reqwest::Client::builder()
            .timeout(BOUND)
            .build()
            .expect("a client");
        let (public, pid) = (gateway.public, gateway.pid());
        check(
            "gateway_answers_any_request_head_and_stays_up",
            128,
            proptest::collection::vec(request(), 1..6),
            |requests| {
                rt.block_on(async {
                    let sends = requests
                        .iter()
                        .cloned()
                        .map(|r| async move { exchange(public, &r).await });
                    let replies = join_all(sends).await;
                    for (request, reply) in requests.iter().zip(replies) {
                        match reply {
                            Err(why) => {
                                return Err(TestCaseError::fail(format!("{why}\nfor {request:?}")))
                            }
                            // Every answer is one the core wrote: JSON naming a reason or a
                            // status (DESIGN §2).
                            Ok(Reply::Answer(a)) if !request.bytes.starts_with(b"HEAD ") => {
                                let body: serde_json::Value = serde_json::from_slice(&a.body)
                                    .unwrap_or(serde_json::Value::Null);
                                prop_assert!(
                                    body["error"].is_string() || body["status"].is_string(),
                                    "a {} answer with body {:?}\nfor {:?}",
                                    a.status,
                                    a.body.escape_ascii().to_string(),
                                    request
                                );
                            }
                            Ok(_) => {}
                        }
                    }
                    prop_assert!(
                        alive(pid),
                        "the gateway exited; its log:\n{}",
                        gateway.log_text()
                    );
                    let healthz = health.get(gateway.admin_url("/healthz")).send().await;
                    prop_assert!(
                        healthz.as_ref().is_ok_and(|r| r.status() == 200),
                        "/healthz: {:?}",
                        healthz
                    );
                    Ok(())
                })
            },
        );
        drop(upstream);
    }

    /// Joins the futures of one batch (their connections run at once).
    async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futures.map(tokio::spawn).collect();
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.expect("an exchange does not panic"));
        }
        out
    }
}

/// The defects these properties found, each as its minimal input.
mod regressions {
    use hookgate::core::{DedupKeySpec, JsonPointer, Rejection, Validator};
    use hookgate::gateway::Config;
    use http::HeaderMap;
    use serde_json::json;

    /// `validate_runblob_refuses_exactly_what_the_contract_refuses`: `runblob_strict` listed an
    /// unknown error code only when nothing else failed, so a sender fixing the listed fields
    /// got a second 422 for a field the first did not name (DESIGN §1: every failing field at
    /// once).
    #[test]
    fn runblob_strict_lists_an_unknown_code_beside_the_other_failing_fields() {
        let body = br#"{"generation_id":"00000000000000000000000000000000","model":"0","status":"failed","video_url":"https://cdn.example.com/videos/550e8400.mp4","message":"_"}"#;
        let err = Validator::runblob_strict().check(body).unwrap_err();
        let Rejection::InvalidPayload { fields, total } = err else {
            panic!("not a 422: {err:?}");
        };
        let listed: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(listed, ["/generation_id", "/video_url", "/message"]);
        assert_eq!(total, 3);
        // The lenient profile still counts the code as `other` and lists the rest.
        let err = Validator::runblob().check(body).unwrap_err();
        let Rejection::InvalidPayload { fields, .. } = err else {
            panic!("not a 422: {err:?}");
        };
        assert_eq!(fields.len(), 2);
    }

    /// `dedup_pointer_lookup_agrees_with_serde_json`: `/+0` designated an array's first item
    /// (`usize` parses a leading `+`); RFC 6901 indices are digits only, and serde_json's
    /// `Value::pointer` finds nothing there.
    #[test]
    fn a_dedup_pointer_index_with_a_sign_designates_nothing() {
        let value = json!([[null]]);
        assert_eq!(value.pointer("/+0"), None);
        assert_eq!(JsonPointer::parse("/+0").lookup(&value), None);
        let payload = json!({"events": [{"id": "evt_1"}]});
        let spec = DedupKeySpec::parse("dedup.key", "/events/+0/id").unwrap();
        let got = spec.extract("r", &HeaderMap::new(), None, Some(&payload));
        assert!(
            matches!(got, Err(Rejection::MissingDedupKey { .. })),
            "{got:?}"
        );
        let plain = DedupKeySpec::parse("dedup.key", "/events/0/id").unwrap();
        assert!(plain
            .extract("r", &HeaderMap::new(), None, Some(&payload))
            .is_ok());
    }

    /// `config_text_never_panics_and_errors_name_the_file` (scripts/fuzz): a value holding a
    /// line break was echoed as it was (serde quotes a refused variant in backticks, and a path
    /// is shown as written), so one problem took two lines, the second naming neither the file
    /// nor a key, and a config file could forge an error line.
    #[test]
    fn a_config_error_is_one_line_per_problem_whatever_the_file_holds() {
        let route = "[server]\n[[route]]\npath = \"/a\"\nupstream = \"http://127.0.0.1:1/\"\nallow = [\"::1/128\"]\n";
        let forged = format!("{route}profile = \"j\\nt.toml: route[0].allow: forged\"\n");
        let err = Config::parse("t.toml", &forged).unwrap_err().to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("t.toml: line 6, column 11, profile: "),
            "{err}"
        );
        let path = format!("{route}upstream_ca = \"x\\ny\"\nmax_body = 0\n");
        let err = Config::parse("t.toml", &path).unwrap_err().to_string();
        assert_eq!(err.lines().count(), 2, "{err}");
        assert!(
            err.lines().all(|l| l.starts_with("t.toml: route[0].")),
            "{err}"
        );
        assert!(err.contains("x\\ny"), "the path, escaped: {err}");
    }
}
