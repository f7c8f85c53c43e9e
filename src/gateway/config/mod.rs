//! The gateway's configuration file (DESIGN §8): TOML, unknown keys refused, durations and sizes
//! as strings (`"30s"`, `"1MiB"`).
//!
//! - `file.rs`: the file's shape ([`Config`] and its sections), read by [`Config::load`] and
//!   [`Config::parse`], which run the next two and report every error of both at once;
//! - `check.rs`: the value checks that need nothing built;
//! - `compile.rs`: builds each route's checks and clients, once (a bad CIDR, schema or URL is
//!   found by building it); the gateway starts from what was built, never builds it again.
//!   [`Config::open_storage`] opens the backend `[store]` names.
//!
//! Every error names the file, the key and what is wrong, and every error found is reported at
//! once, not just the first.
//!
//! ```
//! use hookgate::gateway::Config;
//!
//! let config = Config::parse("hookgate.toml", r#"
//!     [server]
//!     listen = "127.0.0.1:8080"
//!     [[route]]
//!     path = "/webhook/o3-video"
//!     upstream = "http://127.0.0.1:3000/webhook/o3-video"
//!     allow = ["127.0.0.1/32"]
//! "#).unwrap();
//! assert_eq!(config.routes[0].delivery.max_attempts, 10);
//!
//! let err = Config::parse("hookgate.toml", "[server]\nlisten = \"127.0.0.1:8080\"\nthreds = 2\n")
//!     .unwrap_err();
//! assert!(err.to_string().contains("hookgate.toml"));
//! assert!(err.to_string().contains("threds"));
//! ```

mod check;
mod compile;
mod file;

pub use compile::CompiledRoute;
pub use file::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Durability;
    use std::time::Duration;

    fn load(text: &str) -> Result<Config, ConfigFileError> {
        Config::parse("t.toml", text)
    }

    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8080"

[[route]]
path = "/webhook/o3-video"
upstream = "http://127.0.0.1:3000/webhook/o3-video"
allow = ["127.0.0.1/32", "::1/128"]
"#;

    #[test]
    fn defaults_fill_the_minimal_file() {
        let c = Config::parse("t.toml", MINIMAL).unwrap();
        assert_eq!(c.server.admin, "127.0.0.1:9090");
        assert_eq!(c.server.durability, Durability::Fsync);
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        assert_eq!(c.server.threads, cores);
        assert_eq!(c.server.max_connections, 4096);
        assert_eq!(c.server.dedup_capacity, 450_000);
        assert_eq!(c.store.memory.as_u64(), 32 << 20);
        assert_eq!(c.routes[0].delivery.open_after, 5);
        let r = &c.routes[0];
        assert_eq!(r.mode, Mode::FastAck);
        assert_eq!(r.profile, Profile::Runblob);
        assert_eq!(r.max_body.as_u64(), 1 << 20);
        assert_eq!(r.dedup.key.as_deref(), Some("/generation_id"));
        assert_eq!(r.dedup.ttl, Duration::from_secs(86400));
        assert_eq!(r.delivery.max_backoff, Duration::from_secs(300));
        assert_eq!(Config::route_name(r), "/webhook/o3-video");
        // The printed effective config reads back the same.
        let again = Config::parse("t.toml", &c.to_toml()).unwrap();
        assert_eq!(again.to_toml(), c.to_toml());
    }

    #[test]
    fn humane_values_parse() {
        let text = MINIMAL.replace(
            "allow = [",
            "max_body = \"64KiB\"\ndedup = { key = \"header:X-Id\", ttl = \"90m\" }\nallow = [",
        ) + "[route.delivery]\nbackoff = \"250ms\"\nmax_age = \"2h\"\n";
        let c = Config::parse("t.toml", &text).unwrap();
        let r = &c.routes[0];
        assert_eq!(r.max_body.as_u64(), 64 * 1024);
        assert_eq!(r.dedup.ttl, Duration::from_secs(90 * 60));
        assert_eq!(r.delivery.backoff, Duration::from_millis(250));
        assert_eq!(r.delivery.max_age, Duration::from_secs(7200));
    }

    struct Case {
        name: &'static str,
        edit: (&'static str, &'static str),
        want: &'static [&'static str],
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let cases = [
            Case {
                name: "unknown server key",
                edit: ("[server]\n", "[server]\nthreds = 4\n"),
                want: &["t.toml", "threds"],
            },
            Case {
                name: "unknown route key",
                edit: ("allow = [", "alow = []\nallow = ["),
                want: &["t.toml", "alow"],
            },
            Case {
                name: "bad duration",
                edit: ("allow = [", "dedup = { ttl = \"soon\" }\nallow = ["),
                want: &["t.toml", "ttl"],
            },
            Case {
                name: "bad size",
                edit: ("allow = [", "max_body = \"lots\"\nallow = ["),
                want: &["t.toml", "max_body"],
            },
            Case {
                name: "bad cidr",
                edit: ("\"::1/128\"", "\"10.0.0.300/8\""),
                want: &["t.toml: route[0].allow[1]", "10.0.0.300/8"],
            },
            Case {
                name: "bad listen",
                edit: ("\"127.0.0.1:8080\"", "\"localhost\""),
                want: &["t.toml: server.listen[0]"],
            },
            Case {
                name: "unknown upstream scheme",
                edit: ("http://127.0.0.1:3000", "ftp://127.0.0.1:3000"),
                want: &["t.toml: route[0].upstream"],
            },
            Case {
                name: "missing upstream CA",
                edit: ("allow = [", "upstream_ca = \"nope.pem\"\nallow = ["),
                want: &["t.toml: route[0].upstream_ca: cannot read"],
            },
            Case {
                name: "upstream CA not PEM",
                edit: ("allow = [", "upstream_ca = \"Cargo.toml\"\nallow = ["),
                want: &["t.toml: route[0].upstream_ca"],
            },
            Case {
                name: "schema without file",
                edit: ("allow = [", "profile = \"schema\"\nallow = ["),
                want: &["t.toml: route[0].schema"],
            },
            Case {
                name: "bad mode",
                edit: ("allow = [", "mode = \"later\"\nallow = ["),
                want: &["t.toml", "mode", "fast_ack"],
            },
            Case {
                name: "bad durability",
                edit: ("[server]\n", "[server]\ndurability = \"disk\"\n"),
                want: &["t.toml", "durability"],
            },
            Case {
                name: "empty allow",
                edit: ("allow = [\"127.0.0.1/32\", \"::1/128\"]", "allow = []"),
                want: &["t.toml: route[0].allow: is empty"],
            },
            Case {
                name: "bad dedup key",
                edit: (
                    "allow = [",
                    "dedup = { key = \"generation_id\" }\nallow = [",
                ),
                want: &["t.toml: route[0].dedup.key"],
            },
            Case {
                name: "missing tls files",
                edit: (
                    "[server]\n",
                    "[server]\ntls = { cert = \"nope.pem\", key = \"nope.key\" }\n",
                ),
                want: &["t.toml: server.tls: cert: cannot read"],
            },
        ];
        for case in cases {
            assert!(MINIMAL.contains(case.edit.0), "{}: edit target", case.name);
            let text = MINIMAL.replacen(case.edit.0, case.edit.1, 1);
            let err = load(&text).expect_err(case.name).to_string();
            for want in case.want {
                assert!(err.contains(want), "{}: {err:?} lacks {want:?}", case.name);
            }
        }
    }

    /// MINIMAL's route with its upstream given as destinations instead.
    fn with_destinations(tables: &str) -> String {
        MINIMAL.replace(
            "upstream = \"http://127.0.0.1:3000/webhook/o3-video\"\n",
            "",
        ) + tables
    }

    #[test]
    fn destinations_read_and_resolve() {
        let text = with_destinations(
            r#"
[route.delivery]
max_attempts = 3

[[route.destination]]
name = "app"
url = "http://127.0.0.1:3000/app"
order = "/data/object/id"
rate = "200/s"
concurrency = 1

[[route.destination]]
name = "alerts"
url = "http://127.0.0.1:4000/alerts"
filter = { "/type" = ["invoice.payment_failed", "charge.failed"], "/livemode" = true }

[route.destination.delivery]
max_attempts = 20
"#,
        );
        let c = Config::parse("t.toml", &text).unwrap();
        let d = c.routes[0].resolved_destinations(0);
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].name, d[0].order, d[0].rate),
            ("app", Some("/data/object/id"), Some("200/s"))
        );
        assert_eq!(d[0].policy.max_attempts, 3, "the route's [route.delivery]");
        assert_eq!(d[0].policy.concurrency, 1, "its own concurrency");
        assert_eq!(
            d[1].policy.max_attempts, 20,
            "its own [route.destination.delivery]"
        );
        assert_eq!(d[1].filter.unwrap().len(), 2);
        assert_eq!(c.compiled[0].destinations.len(), 2);
        // The shorthand is one destination named upstream, by the route's delivery.
        let short = Config::parse("t.toml", MINIMAL).unwrap();
        let d = short.routes[0].resolved_destinations(0);
        assert_eq!((d.len(), d[0].name), (1, "upstream"));
        // The printed effective config reads back the same.
        let again = Config::parse("t.toml", &c.to_toml()).unwrap();
        assert_eq!(again.to_toml(), c.to_toml());
    }

    #[test]
    fn destination_mistakes_name_their_key() {
        let dest = |extra: &str| {
            format!("[[route.destination]]\nname = \"app\"\nurl = \"http://127.0.0.1:3000/a\"\n{extra}\n")
        };
        let cases: [(&str, String, &[&str]); 10] = [
            (
                "neither",
                with_destinations(""),
                &["t.toml: route[0].upstream: is missing"],
            ),
            (
                "both",
                MINIMAL.to_owned() + &dest(""),
                &["t.toml: route[0].upstream: and [[route.destination]] are both set"],
            ),
            (
                "bad name",
                with_destinations(&dest("").replace("\"app\"", "\"a b\"")),
                &[
                    "t.toml: route[0].destination[0].name",
                    "not a destination name",
                ],
            ),
            (
                "twice",
                with_destinations(&(dest("") + &dest(""))),
                &[
                    "t.toml: route[0].destination[1].name",
                    "used by another destination",
                ],
            ),
            (
                "bad url",
                with_destinations(&dest("").replace("http://", "ftp://")),
                &["t.toml: route[0].destination[0].url"],
            ),
            (
                "bad rate",
                with_destinations(&dest("rate = \"fast\"")),
                &["t.toml: route[0].destination[0].rate"],
            ),
            (
                "bad filter",
                with_destinations(&dest("filter = { \"type\" = 1 }")),
                &[
                    "t.toml: route[0].destination[0].filter",
                    "not a JSON pointer",
                ],
            ),
            (
                "bad order",
                with_destinations(&dest("order = \"id\"")),
                &[
                    "t.toml: route[0].destination[0].order",
                    "not an ordering key",
                ],
            ),
            (
                "proxy",
                with_destinations(&dest("")).replace("allow = [", "mode = \"proxy\"\nallow = ["),
                &["t.toml: route[0].destination", "proxy"],
            ),
            (
                "route name",
                MINIMAL.replace("allow = [", "name = \"a#b\"\nallow = ["),
                &["t.toml: route[0].name", "cannot hold"],
            ),
        ];
        for (name, text, want) in cases {
            let err = load(&text).expect_err(name).to_string();
            for w in want {
                assert!(err.contains(w), "{name}: {err:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn the_redis_store_is_configured_and_checked() {
        let redis =
            |store: &str| MINIMAL.replace("[[route]]", &format!("[store]\n{store}\n[[route]]"));
        let c = load(&redis(
            "backend = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1:6379/0\"\nprefix = \"hg\"\nvisibility_timeout = \"10s\"\nwait_replicas = 1",
        ))
        .unwrap();
        assert_eq!(c.store.backend, Backend::Redis);
        assert_eq!(c.store.prefix, "hg");
        assert_eq!(c.store.visibility_timeout, Duration::from_secs(10));
        assert_eq!(c.store.wait_replicas, 1);
        let printed = c.to_toml();
        assert!(
            !printed.contains("hunter2"),
            "the password is never printed:\n{printed}"
        );
        assert!(
            printed.contains("redis://:***@127.0.0.1:6379/0"),
            "{printed}"
        );
        let defaults = load(&redis("backend = \"redis\"\nurl = \"redis://127.0.0.1\"")).unwrap();
        assert_eq!(defaults.store.prefix, "hookgate");
        assert_eq!(defaults.store.visibility_timeout, Duration::from_secs(30));
        assert_eq!(defaults.store.wait_replicas, 0);
        std::env::set_var("HOOKGATE_TEST_CONFIG_REDIS_URL", "redis://127.0.0.1:6390");
        let env = load(&redis(
            "backend = \"redis\"\nurl = { env = \"HOOKGATE_TEST_CONFIG_REDIS_URL\" }",
        ))
        .unwrap();
        assert!(env.to_toml().contains("HOOKGATE_TEST_CONFIG_REDIS_URL"));
        for (store, want) in [
            ("backend = \"redis\"", "store.url"),
            (
                "backend = \"redis\"\nurl = { env = \"HOOKGATE_TEST_UNSET_VARIABLE\" }",
                "HOOKGATE_TEST_UNSET_VARIABLE is not set",
            ),
            (
                "backend = \"redis\"\nurl = \"http://127.0.0.1\"",
                "not a redis URL",
            ),
            (
                "backend = \"redis\"\nurl = \"rediss://127.0.0.1\"",
                "TLS to Redis (rediss://) is not supported",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://127.0.0.1\"\nvisibility_timeout = \"100ms\"",
                "store.visibility_timeout",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://127.0.0.1\"\nprefix = \"\"",
                "store.prefix",
            ),
            ("url = \"redis://127.0.0.1\"", "store.url"),
            (
                "backend = \"redis\"\nurl = \"redis://127.0.0.1\"\npassword = \"x\"",
                "password",
            ),
        ] {
            let err = load(&redis(store)).expect_err(store).to_string();
            assert!(
                err.contains(want) && err.contains("t.toml"),
                "{store}: {err}"
            );
        }
    }

    #[test]
    fn a_reachable_admin_needs_a_token_from_the_file_the_environment_or_a_file() {
        let admin = |extra: &str| {
            MINIMAL.replace(
                "[server]\n",
                &format!("[server]\nadmin = \"0.0.0.0:9090\"\n{extra}"),
            )
        };
        let err = load(&admin("")).expect_err("no token").to_string();
        assert!(
            err.contains("server.admin") && err.contains("not a loopback address"),
            "{err}"
        );
        assert!(load(&MINIMAL.replace("[server]\n", "[server]\nadmin = \"[::1]:9090\"\n")).is_ok());
        let c = load(&admin("admin_token = \"s3cret\"\n")).unwrap();
        assert_eq!(c.admin_token().as_deref(), Some("s3cret"));
        assert!(!c.to_toml().contains("s3cret"), "never printed");
        std::env::set_var("HOOKGATE_TEST_ADMIN_TOKEN", "from-env");
        let c = load(&admin(
            "admin_token = { env = \"HOOKGATE_TEST_ADMIN_TOKEN\" }\n",
        ))
        .unwrap();
        assert_eq!(c.admin_token().as_deref(), Some("from-env"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "from-file\n").unwrap();
        let text = admin("admin_token = { file = \"token\" }\n");
        let c = Config::parse(dir.path().join("t.toml"), &text).unwrap();
        assert_eq!(
            c.admin_token().as_deref(),
            Some("from-file"),
            "trailing newline trimmed"
        );
        let err = load(&admin("admin_token = { file = \"/nonexistent/token\" }\n"))
            .expect_err("unreadable")
            .to_string();
        assert!(
            err.contains("server.admin_token") && err.contains("cannot read"),
            "{err}"
        );
    }

    #[test]
    fn signatures_are_configured_and_checked() {
        let signed =
            |sig: &str| MINIMAL.to_owned() + "profile = \"json\"\n[route.signature]\n" + sig + "\n";
        let c = load(&signed(
            "scheme = \"standard_webhooks\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]",
        ))
        .unwrap();
        assert_eq!(c.routes[0].dedup.key.as_deref(), Some("header:webhook-id"));
        assert!(c.compiled[0].signature.is_some());
        assert!(!c.to_toml().contains("MfKQ9r8"), "secrets never printed");
        let gh = load(&signed("scheme = \"github\"\nsecrets = [\"s\"]")).unwrap();
        assert_eq!(
            gh.routes[0].dedup.key.as_deref(),
            Some("header:X-GitHub-Delivery")
        );
        // A secret mistyped where the file's syntax refuses it is never echoed.
        let err = load(&signed("scheme = \"github\"\nsecrets = \"SECRETVALUE\""))
            .expect_err("a string")
            .to_string();
        assert!(
            err.contains("secrets") && !err.contains("SECRETVALUE"),
            "{err}"
        );
        let stripe = load(&signed(
            "scheme = \"stripe\"\nsecrets = [\"whsec_x\"]\ntolerance = \"1m\"",
        ))
        .unwrap();
        assert_eq!(stripe.routes[0].dedup.key.as_deref(), Some("/id"));
        let explicit = load(
            &(signed("scheme = \"github\"\nsecrets = [\"s\"]").replace(
                "allow = [",
                "dedup = { key = \"header:X-Other\" }\nallow = [",
            )),
        )
        .unwrap();
        assert_eq!(
            explicit.routes[0].dedup.key.as_deref(),
            Some("header:X-Other"),
            "a set key stays"
        );
        let hmac = load(&signed(
            "scheme = \"hmac\"\nsecrets = [\"s\"]\nheader = \"X-Signature\"\nalgorithm = \"sha512\"\nencoding = \"base64\"\nprefix = \"v1=\"",
        ))
        .unwrap();
        assert_eq!(hmac.routes[0].dedup.key.as_deref(), Some("/generation_id"));
        for (sig, want) in [
            ("scheme = \"hmac\"\nsecrets = [\"s\"]", "route[0].signature.header"),
            ("scheme = \"github\"\nsecrets = [\"s\"]\nheader = \"X-Sig\"", "route[0].signature.header: is a key of scheme = \"hmac\" only"),
            ("scheme = \"github\"\nsecrets = []", "at least one secret"),
            ("scheme = \"standard_webhooks\"\nsecrets = [\"whsec_not*base64\"]", "not a Standard Webhooks secret"),
            ("scheme = \"github\"\nsecrets = [{ env = \"HOOKGATE_TEST_UNSET_SECRET\" }]", "route[0].signature.secrets[0]: the environment variable HOOKGATE_TEST_UNSET_SECRET is not set"),
            ("scheme = \"rsa\"\nsecrets = [\"s\"]", "scheme"),
            ("scheme = \"github\"\nsecrets = [\"s\"]\nsecret = \"s\"", "secret"),
        ] {
            let err = load(&signed(sig)).expect_err(sig).to_string();
            assert!(err.contains(want) && err.contains("t.toml"), "{sig}: {err}");
            assert!(!err.contains("not*base64"), "a secret's value never in an error: {err}");
        }
    }

    #[test]
    fn rate_limits_are_configured_and_checked() {
        let limited =
            |rl: &str| MINIMAL.replace("allow = [", &format!("rate_limit = {rl}\nallow = ["));
        let c = load(&limited("{ per_ip = \"50/s\", burst = 100 }")).unwrap();
        assert!(c.compiled[0].rate_limit.is_some());
        assert!(load(&limited("{ per_ip = \"600/m\" }")).is_ok());
        for (rl, want) in [
            (
                "{ per_ip = \"fast\" }",
                "route[0].rate_limit: per_ip = \"fast\"",
            ),
            ("{ per_ip = \"5/d\" }", "not a unit"),
            (
                "{ per_ip = \"5/s\", burst = 0 }",
                "burst must be at least 1",
            ),
            ("{ per_ip = \"5/s\", brust = 3 }", "brust"),
        ] {
            let err = load(&limited(rl)).expect_err(rl).to_string();
            assert!(err.contains(want) && err.contains("t.toml"), "{rl}: {err}");
        }
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let text = MINIMAL
            .replace("\"::1/128\"", "\"::1/129\"")
            .replace("[server]\n", "[server]\nthreads = 0\n");
        let err = Config::parse("t.toml", &text).unwrap_err().to_string();
        assert!(err.contains("server.threads"), "{err}");
        assert!(err.contains("route[0].allow[1]"), "{err}");
        assert_eq!(err.lines().count(), 2, "{err}");
    }
}
