//! Building what a checked file describes, once: each route's allowlists, validator, dedup key
//! and upstream client (a CIDR, a schema or a URL is checked by building it), and the storage
//! backend `[store] backend` names — the one place a backend is chosen.

use super::{Backend, Config, Profile, Route};
use crate::core::{
    Allowlist, ConfigError, DedupKeySpec, HmacAlgorithm, HmacScheme, RateLimit, SignatureEncoding,
    SignatureScheme, SignatureVerifier, Validator,
};
use std::sync::Arc;

use crate::core::{DeliveryRate, Filter, OrderKey};
use crate::deliver::{DeliveryPolicy, Destination, HttpTarget};
use crate::metrics::Metrics;
use crate::store::{embedded, memory, SpoolConfig, SpoolError, Storage};

/// One route as [`Config::parse`] built it: its allowlists, validator, dedup key and
/// destinations.
#[derive(Clone)]
pub struct CompiledRoute {
    pub(crate) allow: crate::gateway::allow::RouteAllow,
    pub(crate) trusted: Allowlist,
    pub(crate) validator: Validator,
    pub(crate) dedup_key: DedupKeySpec,
    pub(crate) signature: Option<SignatureVerifier>,
    pub(crate) rate_limit: Option<RateLimit>,
    /// At least one; a `proxy` route's one is its upstream.
    pub(crate) destinations: Vec<CompiledDestination>,
}

/// A destination as built: its client, policy, rate, filter and order.
#[derive(Clone, Debug)]
pub(crate) struct CompiledDestination {
    pub name: String,
    pub target: HttpTarget,
    pub policy: DeliveryPolicy,
    pub rate: Option<DeliveryRate>,
    pub filter: Option<Filter>,
    pub order: Option<OrderKey>,
}

impl CompiledDestination {
    /// As the delivery engine takes it.
    pub(crate) fn destination(&self) -> Destination {
        let mut d = Destination::new(&self.name)
            .with_shared_target(Arc::new(self.target.clone()))
            .with_policy(self.policy.clone());
        if let Some(r) = &self.rate {
            d = d.with_rate(r.clone());
        }
        if let Some(f) = &self.filter {
            d = d.with_filter(f.clone());
        }
        if let Some(o) = &self.order {
            d = d.with_order(o.clone());
        }
        d
    }
}

impl CompiledRoute {
    /// The route's upstream, for `proxy` mode: its first destination's client.
    pub(crate) fn upstream(&self) -> &HttpTarget {
        &self.destinations[0].target
    }
}

impl Config {
    /// Builds every route's checks and clients, or every error found in them.
    pub(super) fn compile_routes(&self) -> Result<Vec<CompiledRoute>, Vec<ConfigError>> {
        let mut compiled = Vec::with_capacity(self.routes.len());
        let mut errors = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            match self.compile_route(i, route) {
                Ok(c) => compiled.push(c),
                Err(e) => errors.extend(e),
            }
        }
        if errors.is_empty() {
            Ok(compiled)
        } else {
            Err(errors)
        }
    }

    /// Each route with what it built, in the file's order.
    pub(crate) fn compiled_routes(&self) -> impl Iterator<Item = (&Route, &CompiledRoute)> {
        self.routes.iter().zip(&self.compiled)
    }

    /// Opens the storage backend of `[store]`, reporting into `metrics`. Adding a backend is a
    /// module of [`crate::store`] and an arm here.
    pub fn open_storage(&self, metrics: &Metrics) -> Result<Storage, SpoolError> {
        let s = &self.server;
        match self.store.backend {
            Backend::Embedded => embedded::open(
                SpoolConfig::new(s.data_dir.join("spool"), s.durability)
                    .with_max_events(s.spool_max_events)
                    .with_max_bytes(s.spool_max_size.as_u64())
                    .with_memory(self.store.memory.as_u64())
                    .with_write_retry(self.store.write_retry)
                    .with_min_free(self.store.min_free_space.bytes())
                    .with_retention(
                        self.store.retention,
                        Some(self.store.retention_max_size.as_u64()),
                    ),
                s.dedup_capacity,
                metrics,
            ),
            Backend::Memory => Ok(memory::open(
                s.spool_max_events,
                s.spool_max_size.as_u64(),
                s.dedup_capacity,
                self.store.retention,
                metrics,
            )),
            #[cfg(feature = "redis")]
            Backend::Redis => {
                let st = &self.store;
                let url = st
                    .url
                    .as_ref()
                    .ok_or_else(|| SpoolError::Storage("store.url is not set".into()))
                    .and_then(|u| self.secret(u).map_err(SpoolError::Storage))?;
                let mut config = crate::store::redis::RedisConfig::new(url);
                config.prefix = st.prefix.clone();
                config.visibility_timeout = st.visibility_timeout;
                config.wait_replicas = st.wait_replicas;
                config.max_events = s.spool_max_events;
                config.max_bytes = s.spool_max_size.as_u64();
                config.retention = self.store.retention;
                crate::store::redis::open(config, metrics)
            }
            #[cfg(not(feature = "redis"))]
            Backend::Redis => Err(SpoolError::Storage(
                "this hookgate was built without the redis feature".into(),
            )),
        }
    }

    /// `[route.signature]` as a verifier: its secrets read, the scheme's keys checked.
    fn signature(
        &self,
        key: &str,
        sig: &super::Signature,
    ) -> Result<SignatureVerifier, ConfigError> {
        use super::{HmacAlgorithmName, SignatureEncodingName, SignatureSchemeName};
        let invalid = |k: &str, reason: String| ConfigError::InvalidValue {
            key: format!("{key}.{k}"),
            reason,
        };
        let hmac_only = [
            ("header", sig.header.is_some()),
            ("algorithm", sig.algorithm.is_some()),
            ("encoding", sig.encoding.is_some()),
            ("prefix", sig.prefix.is_some()),
        ];
        let scheme = match sig.scheme {
            SignatureSchemeName::Hmac => {
                let header = sig.header.as_deref().ok_or_else(|| {
                    invalid(
                        "header",
                        "scheme = \"hmac\" needs the header that carries the signature".into(),
                    )
                })?;
                let header = http::HeaderName::from_bytes(header.as_bytes()).map_err(|e| {
                    invalid("header", format!("{header:?} is not a header name: {e}"))
                })?;
                SignatureScheme::Hmac(HmacScheme {
                    header,
                    algorithm: match sig.algorithm {
                        Some(HmacAlgorithmName::Sha512) => HmacAlgorithm::Sha512,
                        _ => HmacAlgorithm::Sha256,
                    },
                    encoding: match sig.encoding {
                        Some(SignatureEncodingName::Base64) => SignatureEncoding::Base64,
                        _ => SignatureEncoding::Hex,
                    },
                    prefix: sig.prefix.clone().unwrap_or_default(),
                })
            }
            other => {
                if let Some((k, _)) = hmac_only.iter().find(|(_, set)| *set) {
                    return Err(invalid(k, "is a key of scheme = \"hmac\" only".into()));
                }
                match other {
                    SignatureSchemeName::StandardWebhooks => SignatureScheme::StandardWebhooks,
                    SignatureSchemeName::Github => SignatureScheme::Github,
                    _ => SignatureScheme::Stripe,
                }
            }
        };
        let mut secrets = Vec::with_capacity(sig.secrets.len());
        for (j, secret) in sig.secrets.iter().enumerate() {
            secrets.push(
                self.secret(secret)
                    .map_err(|reason| invalid(&format!("secrets[{j}]"), reason))?,
            );
        }
        SignatureVerifier::new(key, scheme, &secrets, sig.tolerance)
    }

    fn compile_route(&self, i: usize, route: &Route) -> Result<CompiledRoute, Vec<ConfigError>> {
        let key = |k: &str| format!("route[{i}].{k}");
        let allow =
            crate::gateway::allow::RouteAllow::build(&key("allow"), &route.allow, &self.base_dir());
        let trusted = Allowlist::new(&key("trusted_proxies"), &route.trusted_proxies);
        let validator = self.validator(i, route);
        let dedup_key = DedupKeySpec::parse(
            &key("dedup.key"),
            route.dedup.key.as_deref().unwrap_or("/generation_id"),
        );
        let signature = match &route.signature {
            None => Ok(None),
            Some(sig) => self.signature(&key("signature"), sig).map(Some),
        };
        let rate_limit = route
            .rate_limit
            .as_ref()
            .map(|r| RateLimit::parse(&key("rate_limit"), &r.per_ip, r.burst))
            .transpose();
        let mut destinations = Vec::new();
        let mut destination_errors = Vec::new();
        for d in route.resolved_destinations(i) {
            match self.compile_destination(&d) {
                Ok(c) => destinations.push(c),
                Err(e) => destination_errors.extend(e),
            }
        }
        let upstream: Result<Vec<CompiledDestination>, Vec<ConfigError>> =
            if destination_errors.is_empty() {
                Ok(destinations)
            } else {
                Err(destination_errors)
            };
        match (
            allow, trusted, validator, dedup_key, signature, rate_limit, upstream,
        ) {
            (
                Ok(allow),
                Ok(trusted),
                Ok(validator),
                Ok(dedup_key),
                Ok(signature),
                Ok(rate_limit),
                Ok(destinations),
            ) => Ok(CompiledRoute {
                allow,
                trusted,
                validator,
                dedup_key,
                signature,
                rate_limit,
                destinations,
            }),
            (allow, trusted, validator, dedup_key, signature, rate_limit, destinations) => {
                let mut errors: Vec<ConfigError> = [
                    allow.err(),
                    trusted.err(),
                    validator.err(),
                    dedup_key.err(),
                    signature.err(),
                    rate_limit.err(),
                ]
                .into_iter()
                .flatten()
                .collect();
                errors.extend(destinations.err().into_iter().flatten());
                Err(errors)
            }
        }
    }

    /// A destination's client (its URL, its private CA), rate, filter and order, or every
    /// error found in them.
    fn compile_destination(
        &self,
        d: &super::ResolvedDestination<'_>,
    ) -> Result<CompiledDestination, Vec<ConfigError>> {
        let key = |k: &str| format!("{}.{k}", d.key);
        let mut errors = Vec::new();
        let target = match d.upstream_ca {
            None => HttpTarget::new(&d.url_key, d.url, &d.policy),
            Some(file) => {
                let path = self.resolve(file);
                std::fs::read(&path)
                    .map_err(|e| ConfigError::InvalidValue {
                        key: d.ca_key.clone(),
                        reason: format!("cannot read {}: {e}", path.display()),
                    })
                    .and_then(|pem| HttpTarget::with_ca(&d.ca_key, d.url, &d.policy, Some(&pem)))
            }
        };
        // Each setting's value, or its error kept for the list.
        fn kept<T>(errors: &mut Vec<ConfigError>, r: Result<T, ConfigError>) -> Option<T> {
            r.map_err(|e| errors.push(e)).ok()
        }
        let target = kept(&mut errors, target);
        let rate = d
            .rate
            .and_then(|r| kept(&mut errors, DeliveryRate::parse(&key("rate"), r)));
        let filter = d.filter.and_then(|f| {
            let rules = f.iter().map(|(k, v)| (k.clone(), v.clone()));
            kept(&mut errors, Filter::new(&key("filter"), rules))
        });
        let order = d
            .order
            .and_then(|o| kept(&mut errors, OrderKey::parse(&key("order"), o)));
        match target {
            Some(target) if errors.is_empty() => Ok(CompiledDestination {
                name: d.name.to_owned(),
                target,
                policy: d.policy.clone(),
                rate,
                filter,
                order,
            }),
            _ => Err(errors),
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

impl std::fmt::Debug for CompiledRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRoute")
            .field("destinations", &self.destinations)
            .finish_non_exhaustive()
    }
}
