//! The file: its TOML shape as serde types (DESIGN §8), read by [`Config::load`] and
//! [`Config::parse`], which also run the value checks of `check.rs`.
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

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::ConfigError;
use crate::deliver::DeliveryPolicy;
use crate::store::Durability;

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: listeners, storage, process settings.
    pub server: Server,
    /// `[store]`: which storage backend (embedded by default).
    #[serde(default)]
    pub store: Store,
    /// `[[route]]`: one per webhook endpoint.
    #[serde(rename = "route", default)]
    pub routes: Vec<Route>,
    /// The file this was read from (for errors and relative paths).
    #[serde(skip)]
    pub source: PathBuf,
    /// What the routes build, in their order: made once by [`Config::parse`].
    #[serde(skip)]
    pub(crate) compiled: Vec<super::CompiledRoute>,
}

/// `[server]`. A key left out takes its value from [`Server::default`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Public listeners: one address or a list.
    #[serde(with = "one_or_many")]
    pub listen: Vec<String>,
    /// Serve the public listeners with HTTPS (rustls) from these PEM files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`, `/dead-letters`.
    pub admin: String,
    /// Bearer token required by the admin API (not by `/metrics`, `/healthz`, `/readyz`): a
    /// string, `{ env = "NAME" }` or `{ file = "path" }`. Required when `admin` is not a
    /// loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<SecretString>,
    /// The embedded spool and its dedup keys live here.
    pub data_dir: PathBuf,
    /// What an acknowledgement survives: `fsync`, `os` or `memory`.
    pub durability: Durability,
    /// Worker threads of the public listener, where requests are answered and fresh events
    /// delivered (default: the machine's cores). Retries and recovery run on one more.
    pub threads: usize,
    /// Time allowed to receive a request's header (408 and close after it).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time allowed to receive a request's whole body (408 and close after it).
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// How long an idle kept-alive connection stays open.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long SIGTERM waits for acknowledgements and deliveries in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The most events the spool holds (pending and dead); beyond, 503 + `Retry-After`.
    pub spool_max_events: u64,
    /// The most bytes the spool holds; beyond, 503 + `Retry-After`.
    pub spool_max_size: Size,
    /// Dedup keys kept in memory, across routes (the oldest are evicted beyond). The whole bound
    /// is allocated at start, the table in powers of two (450,000 keys take 27 MiB, 900,000 take
    /// 55 MiB; see the README's dedup store section).
    pub dedup_capacity: usize,
    /// Client connections open at once, across listeners; one beyond is closed unanswered and
    /// counted (`hookgate_connections_refused_total{reason="max_connections"}`). An idle
    /// connection costs about 26 KiB.
    pub max_connections: usize,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: vec!["127.0.0.1:8080".into()],
            tls: None,
            admin: "127.0.0.1:9090".into(),
            admin_token: None,
            data_dir: PathBuf::from("./data"),
            durability: Durability::Fsync,
            threads: std::thread::available_parallelism().map_or(2, usize::from),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(2),
            spool_max_events: 1_000_000,
            spool_max_size: Size(1 << 30),
            dedup_capacity: crate::store::embedded::DEFAULT_DEDUP_CAPACITY,
            max_connections: 4096,
        }
    }
}

/// `[store]`: where events and dedup keys are kept (DESIGN §5). Changing it needs a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    /// `embedded` (the default), `memory` or `redis`.
    pub backend: Backend,
    /// `embedded`: the memory its engine may use for write buffers and cache (default 32 MiB,
    /// at least 4 MiB). The dedup keys (`server.dedup_capacity`) are counted apart.
    pub memory: Size,
    /// `redis`: the server, `redis://[user:password@]host:port/db` (`rediss://` for TLS), as a
    /// string or `{ env = "NAME" }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<SecretString>,
    /// `redis`: every key starts with `{prefix}:` (instances sharing work share a prefix).
    pub prefix: String,
    /// `redis`: an event held unacknowledged this long by a silent instance is taken over by
    /// another; also how long a dead instance's in-flight dedup reservation lasts.
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Duration,
    /// `redis`: `WAIT` for this many replicas to confirm an event before its acknowledgement.
    pub wait_replicas: u32,
    /// `embedded`: new events get 503 `spool_full` while the data directory's filesystem has
    /// less free space than this, beyond the room the engine keeps for its own work (`auto`,
    /// the default: 256 MiB, or 5% of a smaller filesystem).
    pub min_free_space: FreeSpace,
    /// `embedded`: after a failed write, how long before the engine is reopened and tried again
    /// (new events get 503 at once meanwhile).
    #[serde(with = "humantime_serde")]
    pub write_retry: Duration,
    /// How long delivered events stay in the history (`GET /events`, replays), counted from
    /// their receipt (default 72h). Pending and dead events are never dropped for it.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// `embedded`: the most the history may take on disk (default 1GiB; the oldest delivered
    /// events go first). Below `min_free_space` the history yields before any new event is
    /// refused.
    pub retention_max_size: Size,
}

/// `min_free_space`: `"auto"` or a size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FreeSpace {
    /// 256 MiB, or 5% of a smaller filesystem.
    #[default]
    Auto,
    /// This many bytes.
    Bytes(Size),
}

impl FreeSpace {
    /// The configured bytes (`None`: the default for the filesystem).
    pub fn bytes(self) -> Option<u64> {
        match self {
            FreeSpace::Auto => None,
            FreeSpace::Bytes(s) => Some(s.as_u64()),
        }
    }
}

impl<'de> Deserialize<'de> for FreeSpace {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match SizeText::deserialize(d)? {
            SizeText::Text(t) if t == "auto" => Ok(FreeSpace::Auto),
            raw => raw.size("\"auto\", ").map(FreeSpace::Bytes),
        }
    }
}

impl Serialize for FreeSpace {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FreeSpace::Auto => s.serialize_str("auto"),
            FreeSpace::Bytes(b) => b.serialize(s),
        }
    }
}

impl Default for Store {
    fn default() -> Self {
        Self {
            backend: Backend::default(),
            memory: Size(32 << 20),
            url: None,
            prefix: "hookgate".into(),
            visibility_timeout: Duration::from_secs(30),
            wait_replicas: 0,
            min_free_space: FreeSpace::Auto,
            write_retry: Duration::from_secs(1),
            retention: Duration::from_secs(72 * 3600),
            retention_max_size: Size(1 << 30),
        }
    }
}

/// A value that may be kept out of the file: inline, `{ env = "NAME" }` or `{ file = "path" }`
/// (relative to the config file; its content, trailing whitespace trimmed). Never printed: the
/// effective config (`check-config`) shows a URL's password, or any other inline value, as
/// `***`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SecretString {
    /// The value itself.
    Inline(String),
    /// The value of an environment variable, read at start.
    Env {
        /// The variable's name.
        env: String,
    },
    /// The content of a file, read at start.
    File {
        /// The file.
        file: PathBuf,
    },
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretString::Inline(_) => f.write_str("Inline(***)"),
            SecretString::Env { env } => f.debug_struct("Env").field("env", env).finish(),
            SecretString::File { file } => f.debug_struct("File").field("file", file).finish(),
        }
    }
}

impl Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            SecretString::Inline(v) => s.serialize_str(&redact(v)),
            SecretString::Env { env } => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("env", env)?;
                m.end()
            }
            SecretString::File { file } => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("file", file)?;
                m.end()
            }
        }
    }
}

/// `value` fit to print: a URL with its password as `***`, a URL without one as it is, anything
/// else as `***`.
fn redact(value: &str) -> String {
    // A store URL is shown (its password masked); any other inline value is a secret.
    match url::Url::parse(value) {
        Ok(u) if u.scheme().starts_with("redis") || u.scheme().starts_with("valkey") => {
            redacted_url(value)
        }
        _ => "***".into(),
    }
}

#[cfg(feature = "redis")]
fn redacted_url(url: &str) -> String {
    crate::store::redis::redacted(url)
}

#[cfg(not(feature = "redis"))]
fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) if u.password().is_none() && u.query().is_none() => u.to_string(),
        _ => "***".into(),
    }
}

impl SecretString {
    /// The value, or why it cannot be had; a relative `file` is taken from `base`.
    pub fn resolve_in(&self, base: &Path) -> Result<String, String> {
        match self {
            SecretString::Inline(v) => Ok(v.clone()),
            SecretString::Env { env } => {
                std::env::var(env).map_err(|_| format!("the environment variable {env} is not set"))
            }
            SecretString::File { file } => {
                let path = if file.is_absolute() {
                    file.clone()
                } else {
                    base.join(file)
                };
                std::fs::read_to_string(&path)
                    .map(|v| v.trim_end().to_owned())
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
            }
        }
    }
}

/// A storage backend, one module of [`crate::store`] each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// fjall under `server.data_dir` with group commit, dedup in memory refilled from it.
    #[default]
    Embedded,
    /// Everything in memory, nothing on disk: an acknowledgement survives nothing. For tests
    /// and trying hookgate out.
    Memory,
    /// Redis, shared by several gateway instances: dedup keys, the spool (Streams) and dead
    /// letters (feature `redis`).
    Redis,
}

/// `tls = { cert = "...", key = "..." }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The certificate chain, PEM.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How a route answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Spool, answer 200 at once, deliver asynchronously (the default).
    #[default]
    FastAck,
    /// Forward synchronously and relay the upstream's answer.
    Proxy,
}

/// Which payloads a route accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// The reference sender's contract (DESIGN §1); unknown error codes accepted (the default).
    #[default]
    Runblob,
    /// `runblob`, and unknown error codes refused.
    RunblobStrict,
    /// Any JSON.
    Json,
    /// A JSON Schema file (`schema = "..."`).
    Schema,
}

/// `[[route]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The route's name in metrics, logs and dead letters; defaults to the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The exact request path.
    pub path: String,
    /// Where events go: an `http://` or `https://` URL. The one-destination shorthand: a
    /// destination named `upstream` ([`DEFAULT_DESTINATION`](crate::store::DEFAULT_DESTINATION)),
    /// delivering by `[route.delivery]`. Either this or `[[route.destination]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// For an `https://` upstream with a private CA: a PEM file of CA certificates to trust
    /// besides the system's (relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ca: Option<PathBuf>,
    /// `fast_ack` or `proxy`.
    #[serde(default)]
    pub mode: Mode,
    /// `runblob`, `runblob_strict`, `json` or `schema`.
    #[serde(default)]
    pub profile: Profile,
    /// With `profile = "schema"`: the JSON Schema file (relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<PathBuf>,
    /// Allowed client networks: CIDRs, `{ file = "..." }` (one a line, `#` comments) and
    /// `{ url = "...", pointer = "/hooks", refresh = "1h" }` (a published JSON list, refreshed).
    /// Required: write `0.0.0.0/0` and `::/0` to allow all.
    pub allow: Vec<AllowEntry>,
    /// Peers whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The largest body accepted.
    #[serde(default = "default_max_body")]
    pub max_body: Size,
    /// The dedup key and window.
    #[serde(default)]
    pub dedup: Dedup,
    /// `rate_limit = { per_ip = "50/s", burst = 100 }`: step 5 (429 + `Retry-After` beyond).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// `[route.signature]`: step 9 (401 when the request's signature does not verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
    /// Retries, timeouts and concurrency of deliveries (and of `proxy` forwarding); what a
    /// destination without its own `[route.destination.delivery]` delivers by.
    #[serde(default)]
    pub delivery: Delivery,
    /// `[[route.destination]]`: where events go when there are several places (fan-out), or one
    /// with a name, a rate, a filter or an order. Either these or `upstream`.
    #[serde(default, rename = "destination", skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<DestinationConfig>,
}

/// `[[route.destination]]` (DESIGN §13).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Its name (unique in the route): letters, digits, `-`, `_` and `.`. Metrics, logs, the
    /// history and the admin API say it.
    pub name: String,
    /// Where its events go: an `http://` or `https://` URL.
    pub url: String,
    /// For an `https://` URL with a private CA: a PEM file of CA certificates to trust besides
    /// the system's (relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ca: Option<PathBuf>,
    /// `[route.destination.delivery]`: its own retries, timeouts and circuit; left out, the
    /// route's `[route.delivery]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// Deliveries in flight at once (1: one at a time); left out, its delivery's `concurrency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// At most this many deliveries a second (`"200/s"`, `"600/m"`), retries and replays
    /// included, across every instance sharing a Redis store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// `{ "/pointer" = value }` or `{ "/pointer" = [values] }`: only the events whose JSON holds
    /// one of the values at each pointer come here; the others are `filtered` for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// `"/json/pointer"` or `"header:NAME"`: events with the same value are delivered one at a
    /// time, in arrival order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

/// A route's destination as its deliveries take it: the shorthand `upstream` made one, or a
/// `[[route.destination]]`, its delivery policy resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedDestination<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its URL.
    pub url: &'a str,
    /// Its private CA, if any.
    pub upstream_ca: Option<&'a Path>,
    /// How events are delivered there.
    pub policy: DeliveryPolicy,
    /// `rate`, as written.
    pub rate: Option<&'a str>,
    /// `filter`, as written.
    pub filter: Option<&'a std::collections::BTreeMap<String, serde_json::Value>>,
    /// `order`, as written.
    pub order: Option<&'a str>,
    /// Where it is in the file (`route[0]`, `route[0].destination[1]`).
    pub key: String,
    /// The key of its URL (`route[0].upstream`, `route[0].destination[1].url`).
    pub url_key: String,
    /// The key of its CA file.
    pub ca_key: String,
}

impl Route {
    /// The route's destinations: `upstream` as one named `upstream`, or each
    /// `[[route.destination]]`. `i` is the route's place in the file, for the keys.
    pub fn resolved_destinations(&self, i: usize) -> Vec<ResolvedDestination<'_>> {
        match &self.upstream {
            Some(url) => vec![ResolvedDestination {
                name: crate::store::DEFAULT_DESTINATION,
                url,
                upstream_ca: self.upstream_ca.as_deref(),
                policy: self.delivery.policy(),
                rate: None,
                filter: None,
                order: None,
                key: format!("route[{i}]"),
                url_key: format!("route[{i}].upstream"),
                ca_key: format!("route[{i}].upstream_ca"),
            }],
            None => self
                .destinations
                .iter()
                .enumerate()
                .map(|(j, d)| {
                    let mut policy = d.delivery.as_ref().unwrap_or(&self.delivery).policy();
                    if let Some(n) = d.concurrency {
                        policy.concurrency = n;
                    }
                    ResolvedDestination {
                        name: &d.name,
                        url: &d.url,
                        upstream_ca: d.upstream_ca.as_deref(),
                        policy,
                        rate: d.rate.as_deref(),
                        filter: d.filter.as_ref(),
                        order: d.order.as_deref(),
                        key: format!("route[{i}].destination[{j}]"),
                        url_key: format!("route[{i}].destination[{j}].url"),
                        ca_key: format!("route[{i}].destination[{j}].upstream_ca"),
                    }
                })
                .collect(),
        }
    }
}

/// `dedup = { key = "/generation_id", ttl = "24h" }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dedup {
    /// A JSON pointer, `header:NAME` or `body`. Left out: on a signed route the sender's delivery
    /// id (`header:webhook-id`, `header:X-GitHub-Delivery`, `/id` for Stripe), else
    /// `/generation_id`; filled in when the file is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// How long an accepted key answers `duplicate`.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for Dedup {
    fn default() -> Self {
        Self {
            key: None,
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// `message` with every double-quoted value masked: serde quotes the value it refused, which may
/// be a secret (`invalid type: string "whsec_...", expected a sequence`). Names quoted with
/// backticks stay.
fn unquoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.chars() {
        if c == '"' {
            if !inside {
                out.push_str("\"…");
            } else {
                out.push('"');
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

/// `message` as one line: control characters escaped. serde echoes a refused name or variant in
/// backticks, and a path from the file is shown as written: the file's text may put a line
/// break there, which would forge an error line of its own (or move the cursor, for other
/// controls).
fn one_line(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One `allow` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AllowEntry {
    /// A CIDR or an address.
    Cidr(String),
    /// A file of CIDRs, one a line (`#` comments), relative to the config file; read at start
    /// (and at each reload).
    File {
        /// The file.
        file: PathBuf,
    },
    /// A published JSON list (GitHub's meta `hooks` array is the model), fetched at start and
    /// every `refresh`; a failed refresh keeps the last good list.
    Url {
        /// `https://...` (or `http://` on a private network).
        url: String,
        /// A JSON pointer to the array of CIDR strings (`/hooks`); empty for a top-level array.
        #[serde(default)]
        pointer: String,
        /// How often it is fetched again (default 1 h, at least 1 s).
        #[serde(default = "default_refresh", with = "humantime_serde")]
        refresh: Duration,
    },
}

fn default_refresh() -> Duration {
    Duration::from_secs(3600)
}

/// `rate_limit = { per_ip = "50/s", burst = 100 }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per client address: `N/s`, `N/m` or `N/h` (IPv6 counted by /64).
    pub per_ip: String,
    /// Requests an address may send at once (default: the `N` of `per_ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// `[route.signature]`: the sender's scheme and the secrets it signs with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// `standard_webhooks`, `github`, `stripe` or `hmac`.
    pub scheme: SignatureSchemeName,
    /// One or more (several while rotating): strings, `{ env = "NAME" }` or `{ file = "path" }`.
    pub secrets: Vec<SecretString>,
    /// `standard_webhooks`, `stripe`: how far the signed timestamp may be from now, either way.
    #[serde(default = "default_tolerance", with = "humantime_serde")]
    pub tolerance: Duration,
    /// `hmac`: the header carrying the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// `hmac`: `sha256` (default) or `sha512`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<HmacAlgorithmName>,
    /// `hmac`: `hex` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<SignatureEncodingName>,
    /// `hmac`: text before the signature (`"sha256="`); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}

/// `signature.scheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureSchemeName {
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    StandardWebhooks,
    /// GitHub (`X-Hub-Signature-256`).
    Github,
    /// Stripe (`Stripe-Signature`).
    Stripe,
    /// An HMAC of the body in a configured header.
    Hmac,
}

/// `signature.algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HmacAlgorithmName {
    /// HMAC-SHA-256.
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

/// `signature.encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncodingName {
    /// Hexadecimal.
    Hex,
    /// Standard base64.
    Base64,
}

/// `[route.delivery]`; a key left out takes [`DeliveryPolicy::default`]'s value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// Attempts before the dead letters.
    pub max_attempts: u32,
    /// The first retry delay; doubles each attempt, with jitter.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// The largest retry delay.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Age after which a failing event goes to the dead letters.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Time allowed for one attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Time allowed to connect to the upstream.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Failed attempts in a row (no connection, timeout, 5xx) that open the route's circuit:
    /// then one probe per interval (`backoff` doubling to `max_backoff`) until the upstream
    /// answers. 0 turns the breaker off.
    pub open_after: u32,
}

impl Default for Delivery {
    fn default() -> Self {
        let p = DeliveryPolicy::default();
        Self {
            max_attempts: p.max_attempts,
            backoff: p.backoff,
            max_backoff: p.max_backoff,
            max_age: p.max_age,
            timeout: p.timeout,
            connect_timeout: p.connect_timeout,
            concurrency: p.concurrency,
            open_after: p.open_after,
        }
    }
}

impl Delivery {
    /// As the delivery engine's policy.
    pub fn policy(&self) -> DeliveryPolicy {
        DeliveryPolicy {
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            max_backoff: self.max_backoff,
            max_age: self.max_age,
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
            concurrency: self.concurrency,
            open_after: self.open_after,
        }
    }
}

fn default_max_body() -> Size {
    Size(1 << 20)
}

/// A size in bytes, written `"1MiB"`, `"512KB"`, `"64 KiB"` or as a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    /// The size in bytes.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (unit, n) in UNITS {
            if self.0 >= n && self.0.is_multiple_of(n) {
                return write!(f, "{}{unit}", self.0 / n);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// A size as the file writes it: a number of bytes, or text such as `"1MiB"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Bytes(u64),
    Text(String),
}

impl SizeText {
    /// The size; `also` names what else the key takes, for the error.
    fn size<E: serde::de::Error>(self, also: &str) -> Result<Size, E> {
        match self {
            SizeText::Bytes(n) => Ok(Size(n)),
            SizeText::Text(t) => t
                .parse::<bytesize::ByteSize>()
                .map(|b| Size(b.as_u64()))
                .map_err(|_| {
                    E::custom(format!(
                        "{t:?} is not a size: write {also}e.g. \"1MiB\", \"512KB\" or a number of bytes"
                    ))
                }),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SizeText::deserialize(d)?.size("")
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `listen = "a"` or `listen = ["a", "b"]`.
mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        })
    }

    pub fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }
}

/// What is wrong with a configuration file: every problem found, each naming the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("{file}: cannot read: {error}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown key or a value of the wrong type.
    #[error("{file}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// The parser's message, with the line and the key.
        message: String,
    },
    /// Values that parse but do not make sense, one line each.
    #[error("{}", .errors.iter().map(|e| format!("{}: {}", .file, one_line(&e.to_string()))).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        file: String,
        /// Each problem, naming its key.
        errors: Vec<ConfigError>,
    },
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigFileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigFileError::Read {
            file: path.display().to_string(),
            error,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks `text`, read from `path` (named in errors; relative schema and TLS
    /// paths are taken from its directory), building each route's checks and clients once.
    pub fn parse(path: impl AsRef<Path>, text: &str) -> Result<Self, ConfigFileError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        // toml's own message quotes the offending line, which may hold a secret: the position
        // and the message only.
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| {
                let before = text.get(..span.start.min(text.len())).unwrap_or("");
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let line = before.matches('\n').count() + 1;
                let column = before.len() - line_start + 1;
                // The key being set there (the word before the last `=`), never its value.
                let head = &before[line_start..];
                let key = head
                    .rfind('=')
                    .and_then(|eq| {
                        head[..eq]
                            .trim_end()
                            .rsplit(|c: char| c.is_whitespace() || c == '{' || c == ',')
                            .next()
                    })
                    .map(|k| k.trim_matches('"'))
                    .filter(|k| !k.is_empty());
                match key {
                    Some(key) => format!("line {line}, column {column}, {key}: "),
                    None => format!("line {line}, column {column}: "),
                }
            });
            ConfigFileError::Syntax {
                file: file.clone(),
                message: one_line(&format!(
                    "{}{}",
                    at.unwrap_or_default(),
                    unquoted(e.message().trim_end())
                )),
            }
        })?;
        config.source = path.to_owned();
        config.fill_in_dedup_keys();
        // The values that need nothing built, then what the routes build (each CIDR, schema,
        // dedup key and upstream is checked by building it, once; the gateway keeps the result).
        let mut errors = config.check();
        match config.compile_routes() {
            Ok(compiled) => config.compiled = compiled,
            Err(more) => errors.extend(more),
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigFileError::Invalid { file, errors })
        }
    }

    /// Each route's dedup key left out: its signature scheme's delivery id, else
    /// `/generation_id` (so the effective config shows it).
    fn fill_in_dedup_keys(&mut self) {
        for route in &mut self.routes {
            if route.dedup.key.is_none() {
                let key = match route.signature.as_ref().map(|s| s.scheme) {
                    Some(SignatureSchemeName::StandardWebhooks) => "header:webhook-id",
                    Some(SignatureSchemeName::Github) => "header:X-GitHub-Delivery",
                    Some(SignatureSchemeName::Stripe) => "/id",
                    Some(SignatureSchemeName::Hmac) | None => "/generation_id",
                };
                route.dedup.key = Some(key.into());
            }
        }
    }

    /// The directory relative paths in the file are taken from.
    pub fn base_dir(&self) -> PathBuf {
        self.source
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// The admin listener and token of the file at `path`, read without building the rest (no
    /// route secret read, no published list fetched): what the CLI needs to talk to a running
    /// gateway from a shell that does not hold the gateway's secrets.
    pub fn admin_endpoint(
        path: impl AsRef<Path>,
    ) -> Result<(String, Option<String>), ConfigFileError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigFileError::Read {
            file: file.clone(),
            error,
        })?;
        #[derive(Deserialize, Default)]
        struct Admin {
            #[serde(default)]
            admin: Option<String>,
            #[serde(default)]
            admin_token: Option<SecretString>,
        }
        #[derive(Deserialize)]
        struct Only {
            #[serde(default)]
            server: Admin,
        }
        // Like `load`'s: one line, no quoted value (a secret) repeated.
        let only: Only = toml::from_str(&text).map_err(|e| ConfigFileError::Syntax {
            file: file.clone(),
            message: one_line(&unquoted(e.message().trim_end())),
        })?;
        let base = path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        let token = only
            .server
            .admin_token
            .map(|t| t.resolve_in(&base))
            .transpose()
            .map_err(|reason| ConfigFileError::Invalid {
                file,
                errors: vec![ConfigError::InvalidValue {
                    key: "server.admin_token".into(),
                    reason,
                }],
            })?;
        Ok((
            only.server.admin.unwrap_or_else(|| Server::default().admin),
            token,
        ))
    }

    /// The value of `secret` (a relative `file` taken from the config file's directory).
    pub fn secret(&self, secret: &SecretString) -> Result<String, String> {
        secret.resolve_in(&self.base_dir())
    }

    /// The admin token, if one is set (checked when the file was loaded).
    pub fn admin_token(&self) -> Option<String> {
        self.server
            .admin_token
            .as_ref()
            .and_then(|t| self.secret(t).ok())
    }

    /// `path` as written, or relative to the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base_dir().join(path)
        }
    }

    /// The effective configuration, defaults filled in, as TOML (the admin token redacted).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    /// A route's name (its `name`, or its path).
    pub fn route_name(route: &Route) -> &str {
        route.name.as_deref().unwrap_or(&route.path)
    }
}
