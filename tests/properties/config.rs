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
    (variant(3, 5), url, variant(2, 3), variant(2, 3)).prop_map(|(backend, url, memory, retry)| {
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
    })
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
