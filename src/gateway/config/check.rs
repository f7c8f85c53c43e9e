//! The value checks of a parsed file that need nothing built: addresses, timeouts, names,
//! bounds, TLS files. What needs building to be checked (CIDRs, schemas, dedup keys, upstreams)
//! is checked by building it once, in `compile.rs`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::Config;
use crate::core::ConfigError;

impl Config {
    /// `[store]`: the keys of the chosen backend, and none of another's.
    fn check_store(&self) -> Vec<ConfigError> {
        use super::Backend;
        let invalid = |key: &str, reason: String| ConfigError::InvalidValue {
            key: key.into(),
            reason,
        };
        let st = &self.store;
        let mut errors = Vec::new();
        if st.backend != Backend::Redis {
            if st.url.is_some() {
                errors.push(invalid(
                    "store.url",
                    "is a key of backend = \"redis\"; set that backend or remove the key".into(),
                ));
            }
            return errors;
        }
        if !cfg!(feature = "redis") {
            errors.push(invalid(
                "store.backend",
                "this hookgate was built without the redis feature".into(),
            ));
        }
        match st.url.as_ref().map(|u| self.secret(u)) {
            None => errors.push(invalid(
                "store.url",
                "backend = \"redis\" needs the server's URL, e.g. url = \"redis://127.0.0.1:6379/0\" or url = { env = \"REDIS_URL\" }".into(),
            )),
            Some(Err(reason)) => errors.push(invalid("store.url", reason)),
            Some(Ok(url)) => {
                #[cfg(feature = "redis")]
                if url.starts_with("rediss:") || url.starts_with("valkeys:") {
                    errors.push(invalid(
                        "store.url",
                        "TLS to Redis (rediss://) is not supported by this build; use redis:// on a private network, or a TLS tunnel (stunnel, spiped) to the server".into(),
                    ));
                } else if let Err(e) = ::redis::Client::open(url.as_str()) {
                    errors.push(invalid(
                        "store.url",
                        format!("not a redis URL: {e}"),
                    ));
                }
                #[cfg(not(feature = "redis"))]
                let _ = url;
            }
        }
        if st.prefix.is_empty() || st.prefix.contains(char::is_whitespace) {
            errors.push(invalid(
                "store.prefix",
                "must be a non-empty name without spaces".into(),
            ));
        }
        if st.visibility_timeout < Duration::from_secs(3) {
            errors.push(invalid(
                "store.visibility_timeout",
                "must be at least 3s (an instance renews its holds every third of it)".into(),
            ));
        }
        errors
    }

    pub(super) fn check(&self) -> Vec<ConfigError> {
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
        match s.admin_token.as_ref().map(|t| self.secret(t)) {
            Some(Ok(token)) if token.trim().is_empty() => errors.push(invalid(
                "server.admin_token".into(),
                "is empty; remove the key to disable the token".into(),
            )),
            Some(Err(reason)) => errors.push(invalid("server.admin_token".into(), reason)),
            Some(Ok(_)) => {}
            None => {
                // Without a token the admin API replays and deletes dead letters for anyone who
                // can reach it: only the machine itself, then.
                if let Ok(addr) = s.admin.parse::<SocketAddr>() {
                    if !addr.ip().is_loopback() {
                        errors.push(invalid(
                            "server.admin".into(),
                            format!("{addr} is not a loopback address: set server.admin_token (a string, {{ env = \"NAME\" }} or {{ file = \"path\" }}), or bind the admin listener to 127.0.0.1 or [::1]"),
                        ));
                    }
                }
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
        if self.store.memory.as_u64() < crate::store::embedded::MIN_MEMORY {
            errors.push(invalid(
                "store.memory".into(),
                "must be at least 4MiB".into(),
            ));
        }
        // Each try replays the whole journal: not more often than ten times a second.
        if !(Duration::from_millis(100)..=Duration::from_secs(3600))
            .contains(&self.store.write_retry)
        {
            errors.push(invalid(
                "store.write_retry".into(),
                "must be between 100ms and 1h".into(),
            ));
        }
        if self.store.retention < Duration::from_secs(1) {
            errors.push(invalid(
                "store.retention".into(),
                "must be at least 1s".into(),
            ));
        }
        if self.store.retention_max_size.as_u64() < (1 << 20) {
            errors.push(invalid(
                "store.retention_max_size".into(),
                "must be at least 1MiB".into(),
            ));
        }
        errors.extend(self.check_store());
        if s.max_connections == 0 {
            errors.push(invalid(
                "server.max_connections".into(),
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
            check_delivery(&key("delivery"), &route.delivery, &mut errors);
            let name = Config::route_name(route);
            if name.contains(crate::store::LANE_SEPARATOR) {
                errors.push(invalid(
                    key("name"),
                    format!(
                        "{name:?}: a route's name cannot hold {:?} (it separates a route from a destination)",
                        crate::store::LANE_SEPARATOR
                    ),
                ));
            }
            match (&route.upstream, route.destinations.is_empty()) {
                (Some(_), false) => errors.push(invalid(
                    key("upstream"),
                    "and [[route.destination]] are both set: write the upstream as a destination (name = \"upstream\", url = ...) or keep upstream alone".into(),
                )),
                (None, true) => errors.push(invalid(
                    key("upstream"),
                    "is missing: set upstream = \"http://...\" or add [[route.destination]] tables".into(),
                )),
                _ => {}
            }
            if route.mode == super::Mode::Proxy && route.upstream.is_none() {
                errors.push(invalid(
                    key("destination"),
                    "mode = \"proxy\" forwards to one upstream and answers with its answer: set upstream = \"http://...\" (destinations are for fast_ack)".into(),
                ));
            }
            if route.upstream.is_none() && route.upstream_ca.is_some() {
                errors.push(invalid(
                    key("upstream_ca"),
                    "is set without upstream: give each [[route.destination]] its own upstream_ca"
                        .into(),
                ));
            }
            let mut names = HashSet::new();
            for (j, d) in route.destinations.iter().enumerate() {
                let dkey = |k: &str| format!("route[{i}].destination[{j}].{k}");
                if let Err(e) = crate::deliver::Destination::check_name(&dkey("name"), &d.name) {
                    errors.push(e);
                }
                if !names.insert(d.name.as_str()) {
                    errors.push(invalid(
                        dkey("name"),
                        format!("{:?} is used by another destination of the route", d.name),
                    ));
                }
                if let Some(delivery) = &d.delivery {
                    check_delivery(&dkey("delivery"), delivery, &mut errors);
                }
                if d.concurrency == Some(0) {
                    errors.push(invalid(dkey("concurrency"), "must be at least 1".into()));
                }
            }
        }
        errors
    }
}

/// The value checks of a `[route.delivery]` (or a destination's), `key` its place in the file.
fn check_delivery(key: &str, d: &super::Delivery, errors: &mut Vec<crate::core::ConfigError>) {
    let invalid = |k: &str, reason: &str| crate::core::ConfigError::InvalidValue {
        key: format!("{key}.{k}"),
        reason: reason.to_owned(),
    };
    if d.max_attempts == 0 {
        errors.push(invalid("max_attempts", "must be at least 1"));
    }
    if d.concurrency == 0 {
        errors.push(invalid("concurrency", "must be at least 1"));
    }
    if d.backoff > d.max_backoff {
        errors.push(invalid(
            "backoff",
            &format!("is larger than {key}.max_backoff"),
        ));
    }
    for (k, v) in [
        ("timeout", d.timeout),
        ("connect_timeout", d.connect_timeout),
        ("backoff", d.backoff),
    ] {
        if v.is_zero() {
            errors.push(invalid(k, "must be more than 0s"));
        }
    }
}

fn check_tls(cert: &Path, key: &Path) -> Result<(), String> {
    for (what, path) in [("cert", cert), ("key", key)] {
        if let Err(e) = std::fs::metadata(path) {
            return Err(format!("{what}: cannot read {}: {e}", path.display()));
        }
    }
    // What the listeners load (at start and at each reload): loading it is the check.
    crate::gateway::reload::Certificate::load(cert, key).map(drop)
}
