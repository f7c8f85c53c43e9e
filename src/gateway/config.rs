//! The gateway's configuration file (DESIGN §8): TOML, unknown keys refused, durations and sizes
//! as strings (`"30s"`, `"1MiB"`).
//!
//! [`Config::load`] reads and checks a file; every error names the file, the key and what is
//! wrong, and every error found is reported at once, not just the first.
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

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::{Allowlist, ConfigError, DedupKeySpec, Validator};
use crate::deliver::DeliveryPolicy;
use crate::store::Durability;

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: listeners, storage, process settings.
    pub server: Server,
    /// `[[route]]`: one per webhook endpoint.
    #[serde(rename = "route", default)]
    pub routes: Vec<Route>,
    /// The file this was read from (for errors and relative paths).
    #[serde(skip)]
    pub source: PathBuf,
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
    /// Bearer token required by the admin API (not by `/metrics`, `/healthz`, `/readyz`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted"
    )]
    pub admin_token: Option<String>,
    /// The embedded spool and its dedup keys live here.
    pub data_dir: PathBuf,
    /// What an acknowledgement survives: `fsync`, `os` or `memory`.
    pub durability: Durability,
    /// Worker threads of the public listener.
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
    /// Dedup keys kept in memory, across routes (the oldest are evicted beyond).
    pub dedup_capacity: usize,
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
            threads: 2,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(2),
            spool_max_events: 1_000_000,
            spool_max_size: Size(1 << 30),
            dedup_capacity: 1_000_000,
        }
    }
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
    /// Where events go: an `http://` or `https://` URL.
    pub upstream: String,
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
    /// Allowed client networks (CIDR). Required: write `0.0.0.0/0` and `::/0` to allow all.
    pub allow: Vec<String>,
    /// Peers whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The largest body accepted.
    #[serde(default = "default_max_body")]
    pub max_body: Size,
    /// The dedup key and window.
    #[serde(default)]
    pub dedup: Dedup,
    /// Retries, timeouts and concurrency of deliveries (and of `proxy` forwarding).
    #[serde(default)]
    pub delivery: Delivery,
}

/// `dedup = { key = "/generation_id", ttl = "24h" }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dedup {
    /// A JSON pointer, `header:NAME` or `body`.
    pub key: String,
    /// How long an accepted key answers `duplicate`.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for Dedup {
    fn default() -> Self {
        Self {
            key: "/generation_id".into(),
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[route.delivery]`; a key left out takes [`DeliveryPolicy::default`]'s value.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(Size(n)),
            Raw::Text(t) => t
                .parse::<bytesize::ByteSize>()
                .map(|b| Size(b.as_u64()))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{t:?} is not a size: write e.g. \"1MiB\", \"512KB\" or a number of bytes"
                    ))
                }),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn redacted<S: serde::Serializer>(token: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match token {
        Some(_) => s.serialize_str("(set)"),
        None => s.serialize_none(),
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
    #[error("{}", .errors.iter().map(|e| format!("{}: {e}", .file)).collect::<Vec<_>>().join("\n"))]
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
    /// paths are taken from its directory).
    pub fn parse(path: impl AsRef<Path>, text: &str) -> Result<Self, ConfigFileError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigFileError::Syntax {
            file: file.clone(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.source = path.to_owned();
        let errors = config.check();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigFileError::Invalid { file, errors })
        }
    }

    /// The directory relative paths in the file are taken from.
    pub fn base_dir(&self) -> PathBuf {
        self.source
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."))
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

    fn check(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let invalid = |key: String, reason: String| ConfigError::InvalidValue { key, reason };
        let s = &self.server;
        if s.listen.is_empty() {
            errors.push(invalid(
                "server.listen".into(),
                "at least one address is needed".into(),
            ));
        }
        for (i, addr) in s.listen.iter().enumerate() {
            if let Err(e) = addr.parse::<SocketAddr>() {
                errors.push(invalid(
                    format!("server.listen[{i}]"),
                    format!("{addr:?} is not an IP:port address: {e}"),
                ));
            }
        }
        if let Err(e) = s.admin.parse::<SocketAddr>() {
            errors.push(invalid(
                "server.admin".into(),
                format!("{:?} is not an IP:port address: {e}", s.admin),
            ));
        }
        if s.listen.contains(&s.admin) {
            errors.push(invalid(
                "server.admin".into(),
                "must differ from every server.listen address".into(),
            ));
        }
        if let Some(token) = &s.admin_token {
            if token.trim().is_empty() {
                errors.push(invalid(
                    "server.admin_token".into(),
                    "is empty; remove the key to disable the token".into(),
                ));
            }
        }
        if s.threads == 0 {
            errors.push(invalid(
                "server.threads".into(),
                "must be at least 1".into(),
            ));
        }
        for (key, d) in [
            ("server.header_timeout", s.header_timeout),
            ("server.body_timeout", s.body_timeout),
            ("server.idle_timeout", s.idle_timeout),
        ] {
            if d < Duration::from_millis(100) {
                errors.push(invalid(key.into(), "must be at least 100ms".into()));
            }
        }
        if s.spool_max_events == 0 {
            errors.push(invalid(
                "server.spool_max_events".into(),
                "must be at least 1".into(),
            ));
        }
        if s.dedup_capacity == 0 {
            errors.push(invalid(
                "server.dedup_capacity".into(),
                "must be at least 1".into(),
            ));
        }
        if let Some(tls) = &s.tls {
            if let Err(reason) = check_tls(&self.resolve(&tls.cert), &self.resolve(&tls.key)) {
                errors.push(invalid("server.tls".into(), reason));
            }
        }
        if self.routes.is_empty() {
            errors.push(invalid(
                "route".into(),
                "no [[route]] is configured; add one".into(),
            ));
        }
        let mut paths = HashSet::new();
        let mut names = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = |k: &str| format!("route[{i}].{k}");
            if !route.path.starts_with('/') {
                errors.push(invalid(key("path"), "must start with /".into()));
            }
            if !paths.insert(route.path.as_str()) {
                errors.push(invalid(
                    key("path"),
                    format!("{:?} is used by another route", route.path),
                ));
            }
            if !names.insert(Config::route_name(route)) {
                errors.push(invalid(
                    key("name"),
                    format!("{:?} is used by another route", Config::route_name(route)),
                ));
            }
            errors.extend(self.compile_route(i, route).err().into_iter().flatten());
            if route.allow.is_empty() {
                errors.push(invalid(
                    key("allow"),
                    "is empty; list the sender's CIDRs (write 0.0.0.0/0 and ::/0 to allow all)"
                        .into(),
                ));
            }
            if route.max_body.as_u64() == 0 {
                errors.push(invalid(key("max_body"), "must be at least 1 byte".into()));
            }
            if route.dedup.ttl < Duration::from_secs(1) {
                errors.push(invalid(key("dedup.ttl"), "must be at least 1s".into()));
            }
            let d = &route.delivery;
            if d.max_attempts == 0 {
                errors.push(invalid(
                    key("delivery.max_attempts"),
                    "must be at least 1".into(),
                ));
            }
            if d.concurrency == 0 {
                errors.push(invalid(
                    key("delivery.concurrency"),
                    "must be at least 1".into(),
                ));
            }
            if d.backoff > d.max_backoff {
                errors.push(invalid(
                    key("delivery.backoff"),
                    "is larger than delivery.max_backoff".into(),
                ));
            }
            for (k, v) in [
                ("delivery.timeout", d.timeout),
                ("delivery.connect_timeout", d.connect_timeout),
                ("delivery.backoff", d.backoff),
            ] {
                if v.is_zero() {
                    errors.push(invalid(key(k), "must be more than 0s".into()));
                }
            }
        }
        errors
    }

    /// Builds route `i`'s checks, or every error found in them.
    pub(crate) fn compile_route(
        &self,
        i: usize,
        route: &Route,
    ) -> Result<Compiled, Vec<ConfigError>> {
        let key = |k: &str| format!("route[{i}].{k}");
        let allow = Allowlist::new(&key("allow"), &route.allow);
        let trusted = Allowlist::new(&key("trusted_proxies"), &route.trusted_proxies);
        let validator = self.validator(i, route);
        let dedup_key = DedupKeySpec::parse(&key("dedup.key"), &route.dedup.key);
        let upstream = match &route.upstream_ca {
            None => crate::deliver::HttpTarget::new(
                &key("upstream"),
                &route.upstream,
                &route.delivery.policy(),
            ),
            Some(file) => {
                let path = self.resolve(file);
                std::fs::read(&path)
                    .map_err(|e| ConfigError::InvalidValue {
                        key: key("upstream_ca"),
                        reason: format!("cannot read {}: {e}", path.display()),
                    })
                    .and_then(|pem| {
                        crate::deliver::HttpTarget::with_ca(
                            &key("upstream_ca"),
                            &route.upstream,
                            &route.delivery.policy(),
                            Some(&pem),
                        )
                    })
            }
        };
        match (allow, trusted, validator, dedup_key, upstream) {
            (Ok(allow), Ok(trusted), Ok(validator), Ok(dedup_key), Ok(upstream)) => Ok(Compiled {
                allow,
                trusted,
                validator,
                dedup_key,
                upstream,
            }),
            (allow, trusted, validator, dedup_key, upstream) => Err([
                allow.err(),
                trusted.err(),
                validator.err(),
                dedup_key.err(),
                upstream.err(),
            ]
            .into_iter()
            .flatten()
            .collect()),
        }
    }

    fn validator(&self, i: usize, route: &Route) -> Result<Validator, ConfigError> {
        let key = format!("route[{i}].schema");
        match (route.profile, &route.schema) {
            (Profile::Schema, None) => Err(ConfigError::InvalidValue {
                key,
                reason: "profile = \"schema\" needs schema = \"path/to/schema.json\"".into(),
            }),
            (Profile::Schema, Some(file)) => {
                let path = self.resolve(file);
                let text =
                    std::fs::read_to_string(&path).map_err(|e| ConfigError::InvalidValue {
                        key: key.clone(),
                        reason: format!("cannot read {}: {e}", path.display()),
                    })?;
                let schema: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| ConfigError::InvalidSchema {
                        key: key.clone(),
                        reason: format!("{} is not JSON: {e}", path.display()),
                    })?;
                Validator::schema(&key, &schema)
            }
            (_, Some(_)) => Err(ConfigError::InvalidValue {
                key,
                reason: "is only used with profile = \"schema\"".into(),
            }),
            (Profile::Runblob, None) => Ok(Validator::runblob()),
            (Profile::RunblobStrict, None) => Ok(Validator::runblob_strict()),
            (Profile::Json, None) => Ok(Validator::json()),
        }
    }
}

/// A route's checks, built from its configuration.
pub(crate) struct Compiled {
    pub allow: Allowlist,
    pub trusted: Allowlist,
    pub validator: Validator,
    pub dedup_key: DedupKeySpec,
    pub upstream: crate::deliver::HttpTarget,
}

/// Loads the certificate chain and key as the TLS listener will, so a bad file is a startup
/// error instead of pingora's panic at listen time.
fn check_tls(cert: &Path, key: &Path) -> Result<(), String> {
    use pingora::tls::{version, ServerConfig};
    for (what, path) in [("cert", cert), ("key", key)] {
        if let Err(e) = std::fs::metadata(path) {
            return Err(format!("{what}: cannot read {}: {e}", path.display()));
        }
    }
    let (certs, key_der) = pingora::tls::load_certs_and_key_files(
        &cert.display().to_string(),
        &key.display().to_string(),
    )
    .map_err(|e| format!("cannot load the certificate or key: {e}"))?
    .ok_or_else(|| {
        format!(
            "no PEM certificate in {} or no PEM private key in {}",
            cert.display(),
            key.display()
        )
    })?;
    pingora::tls::install_default_crypto_provider();
    ServerConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.server.threads, 2);
        let r = &c.routes[0];
        assert_eq!(r.mode, Mode::FastAck);
        assert_eq!(r.profile, Profile::Runblob);
        assert_eq!(r.max_body.as_u64(), 1 << 20);
        assert_eq!(r.dedup.key, "/generation_id");
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
            let err = Config::parse("t.toml", &text)
                .expect_err(case.name)
                .to_string();
            for want in case.want {
                assert!(err.contains(want), "{}: {err:?} lacks {want:?}", case.name);
            }
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
