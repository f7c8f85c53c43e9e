//! [`WebhookLayer`]: the whole admission stack from one configuration.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::{Identity, Layer};

use super::{DedupLayer, IpAllowlistLayer, MetricsLayer, PeerIpFn, ValidateLayer};
use crate::core::{
    Allowlist, ConfigError, DedupKeySpec, LiveAllowlist, RateLimit, SignatureVerifier, Validator,
};
use crate::deliver::{Deliverer, DeliveryPolicy};
use crate::metrics::{Metrics, RouteMetrics};
use crate::store::{DedupStore, MemoryDedupStore, Spool, SpoolError};
use crate::tower::validate::{DEFAULT_MAX_BODY, DEFAULT_READ_TIMEOUT};
use crate::tower::FastAckLayer;
use crate::tower::{Dedup, IpAllowlist, RecordMetrics, Validate};

/// The default dedup window: 24 h, far beyond the reference sender's 5 × 30 s retry span.
pub const DEFAULT_DEDUP_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The default capacity of the in-memory dedup store.
pub use crate::store::embedded::DEFAULT_DEDUP_CAPACITY;

/// IP allowlist, validation, dedup and metrics for one route, stacked in pipeline order:
/// `RecordMetrics<IpAllowlist<Validate<Dedup<A::Service>>>>`, where `A` is
/// [`Identity`] (the handler's answer is the acknowledgement) or, after
/// [`with_fast_ack`](WebhookLayerBuilder::with_fast_ack), a [`FastAckLayer`]. See the
/// [module docs](super) for an example.
#[derive(Clone, Debug)]
#[must_use]
pub struct WebhookLayer<D = MemoryDedupStore, A = Identity> {
    metrics: MetricsLayer,
    allowlist: IpAllowlistLayer,
    validate: ValidateLayer,
    dedup: DedupLayer<D>,
    ack: A,
}

impl<D, B> WebhookLayer<D, FastAckLayer<B>> {
    /// The delivery worker behind the fast acknowledgement: dead letters, replay, shutdown.
    pub fn deliverer(&self) -> &Deliverer {
        self.ack.deliverer()
    }
}

/// How a [`WebhookLayer`] acknowledges: builds the innermost layer once the route is known.
pub trait AckMode {
    /// The layer between dedup and the handler.
    type Layer;

    /// Builds the layer for `route`, and refills `store` with the keys it persisted.
    fn build<D: DedupStore>(
        self,
        route: &str,
        metrics: &RouteMetrics,
        store: &D,
    ) -> Result<Self::Layer, ConfigError>;
}

/// The handler's own answer is the acknowledgement (no spool).
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectAck;

impl AckMode for DirectAck {
    type Layer = Identity;

    fn build<D: DedupStore>(
        self,
        _: &str,
        _: &RouteMetrics,
        _: &D,
    ) -> Result<Identity, ConfigError> {
        Ok(Identity::new())
    }
}

/// Spool, answer 200 at once, deliver to the handler later (see [`FastAckLayer`]). `B` is the
/// handler's request body type.
pub struct FastAckMode<B> {
    spool: Arc<dyn Spool>,
    policy: DeliveryPolicy,
    _body: PhantomData<fn() -> B>,
}

impl<B> AckMode for FastAckMode<B> {
    type Layer = FastAckLayer<B>;

    fn build<D: DedupStore>(
        self,
        route: &str,
        metrics: &RouteMetrics,
        store: &D,
    ) -> Result<FastAckLayer<B>, ConfigError> {
        let spool_error = |e: SpoolError| ConfigError::InvalidValue {
            key: "spool".into(),
            reason: e.to_string(),
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::InvalidValue {
                key: "fast_ack".into(),
                reason: "build inside a tokio runtime: the delivery worker runs on it".into(),
            });
        }
        // Keys accepted before a restart answer `duplicate` again for the rest of their TTL.
        crate::store::refill_dedup(self.spool.as_ref(), store).map_err(spool_error)?;
        FastAckLayer::new(route, self.spool, self.policy, metrics).map_err(spool_error)
    }
}

impl WebhookLayer {
    /// Starts configuring the stack for the route named `route` (used in metric labels and to
    /// keep routes' dedup keys apart).
    pub fn builder(route: impl Into<String>) -> WebhookLayerBuilder {
        WebhookLayerBuilder {
            ack: DirectAck,
            route: route.into(),
            allow: None,
            trusted_proxies: Allowlist::default(),
            peer_ip: None,
            validator: Validator::runblob(),
            max_body: DEFAULT_MAX_BODY,
            read_timeout: DEFAULT_READ_TIMEOUT,
            dedup_key: None,
            dedup_ttl: DEFAULT_DEDUP_TTL,
            dedup_capacity: DEFAULT_DEDUP_CAPACITY,
            metrics: None,
            signature: None,
            rate_limit: None,
        }
    }
}

impl<S, D, A: Layer<S>> Layer<S> for WebhookLayer<D, A> {
    type Service = RecordMetrics<IpAllowlist<Validate<Dedup<A::Service, D>>>>;

    fn layer(&self, inner: S) -> Self::Service {
        let acked = self.ack.layer(inner);
        self.metrics.layer(
            self.allowlist
                .layer(self.validate.layer(self.dedup.layer(acked))),
        )
    }
}

/// Configures a [`WebhookLayer`]. Defaults: `runblob` profile, 1 MiB body limit, 10 s read
/// timeout, dedup by `/generation_id` for 24 h, metrics in the default registry. The allowlist has
/// no default: it must be set.
#[must_use]
pub struct WebhookLayerBuilder<M = DirectAck> {
    ack: M,
    route: String,
    allow: Option<LiveAllowlist>,
    trusted_proxies: Allowlist,
    peer_ip: Option<PeerIpFn>,
    validator: Validator,
    max_body: u64,
    read_timeout: Duration,
    dedup_key: Option<DedupKeySpec>,
    dedup_ttl: Duration,
    dedup_capacity: usize,
    metrics: Option<Metrics>,
    signature: Option<SignatureVerifier>,
    rate_limit: Option<RateLimit>,
}

impl<M: AckMode> WebhookLayerBuilder<M> {
    /// Acknowledges from the spool: each accepted request is stored in `spool` and answered 200
    /// `{"status":"received","event_id":...}` at once, then delivered to the handler by `policy`.
    /// `B` is the handler's request body type (`axum::body::Body` behind axum). The dedup store
    /// is refilled from the spool at build, which must run inside a tokio runtime.
    pub fn with_fast_ack<B>(
        self,
        spool: Arc<dyn Spool>,
        policy: DeliveryPolicy,
    ) -> WebhookLayerBuilder<FastAckMode<B>> {
        WebhookLayerBuilder {
            ack: FastAckMode {
                spool,
                policy,
                _body: PhantomData,
            },
            route: self.route,
            allow: self.allow,
            trusted_proxies: self.trusted_proxies,
            peer_ip: self.peer_ip,
            validator: self.validator,
            max_body: self.max_body,
            read_timeout: self.read_timeout,
            dedup_key: self.dedup_key,
            dedup_ttl: self.dedup_ttl,
            dedup_capacity: self.dedup_capacity,
            metrics: self.metrics,
            signature: self.signature,
            rate_limit: self.rate_limit,
        }
    }

    /// Admits clients inside `allow`, whose networks can be replaced while the layer serves (a
    /// published list refreshed by the application: [`Allowlist::from_json`]).
    pub fn with_live_allow(mut self, allow: LiveAllowlist) -> Self {
        self.allow = Some(allow);
        self
    }

    /// Admits clients inside these CIDRs (`"0.0.0.0/0"` and `"::/0"` must be written out to allow all).
    pub fn with_allow<I, S>(mut self, cidrs: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.allow = Some(Allowlist::new("allow", cidrs)?.into());
        Ok(self)
    }

    /// Believes `X-Forwarded-For` from peers inside these CIDRs.
    pub fn with_trusted_proxies<I, S>(mut self, cidrs: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.trusted_proxies = Allowlist::new("trusted_proxies", cidrs)?;
        Ok(self)
    }

    /// Reads the peer address with `f` (default: [`PeerAddr`](super::PeerAddr), then axum's
    /// `ConnectInfo<SocketAddr>` with the `axum` feature).
    pub fn with_peer_ip(mut self, f: PeerIpFn) -> Self {
        self.peer_ip = Some(f);
        self
    }

    /// Validates with `validator` (default: `runblob`).
    pub fn with_validator(mut self, validator: Validator) -> Self {
        self.validator = validator;
        self
    }

    /// Refuses bodies over `bytes` (default 1 MiB).
    pub fn with_max_body(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// Refuses bodies not received within `timeout` (default 10 s).
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Dedups by `key` (default `/generation_id`).
    pub fn with_dedup_key(mut self, key: DedupKeySpec) -> Self {
        self.dedup_key = Some(key);
        self
    }

    /// Step 5: each client address (IPv6 by /64) gets `limit`; beyond, 429 + `Retry-After`.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Step 9: refuses (401) a request whose signature `verifier` does not accept, checked over
    /// the raw body before it is parsed. Unless a dedup key is set, the scheme's delivery id
    /// becomes it ([`SignatureVerifier::default_dedup_key`]).
    pub fn with_signature(mut self, verifier: SignatureVerifier) -> Self {
        self.signature = Some(verifier);
        self
    }

    /// Keeps accepted keys for `ttl` (default 24 h; at least one second).
    pub fn with_dedup_ttl(mut self, ttl: Duration) -> Self {
        self.dedup_ttl = ttl;
        self
    }

    /// Bounds the in-memory dedup store [`build`](Self::build) makes (default 450,000 keys, about 27 MiB, taken at start).
    pub fn with_dedup_capacity(mut self, keys: usize) -> Self {
        self.dedup_capacity = keys;
        self
    }

    /// Records into `metrics` (default: [`Metrics::global`], the default registry).
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// The metrics given, or the default registry's, remembered for the next call.
    fn resolve_metrics(&mut self) -> Result<Metrics, ConfigError> {
        let metrics = match &self.metrics {
            Some(m) => m.clone(),
            None => Metrics::global()?.clone(),
        };
        self.metrics = Some(metrics.clone());
        Ok(metrics)
    }

    /// Builds the layer with a new [`MemoryDedupStore`] reporting to the metrics. Inside a tokio
    /// runtime a sweeper removes its expired keys every 30 s; outside one, expired keys are still
    /// treated as absent and the capacity bound still holds.
    pub fn build(mut self) -> Result<WebhookLayer<MemoryDedupStore, M::Layer>, ConfigError> {
        let metrics = self.resolve_metrics()?;
        let store = MemoryDedupStore::with_metrics(self.dedup_capacity, &metrics);
        let layer = self.build_with_store(store.clone())?;
        if tokio::runtime::Handle::try_current().is_ok() {
            store.spawn_sweeper(Duration::from_secs(30));
        }
        Ok(layer)
    }

    /// Builds the layer around the dedup `store` given.
    pub fn build_with_store<D: DedupStore>(
        mut self,
        store: D,
    ) -> Result<WebhookLayer<D, M::Layer>, ConfigError> {
        let metrics = self.resolve_metrics()?;
        let allow = self.allow.ok_or_else(|| ConfigError::InvalidValue {
            key: "allow".into(),
            reason:
                "no allowlist set; list the sender's CIDRs (write 0.0.0.0/0 and ::/0 to allow all)"
                    .into(),
        })?;
        if self.dedup_ttl < Duration::from_secs(1) {
            return Err(ConfigError::InvalidValue {
                key: "dedup.ttl".into(),
                reason: "must be at least 1s".into(),
            });
        }
        let dedup_key = match (self.dedup_key, &self.signature) {
            (Some(key), _) => key,
            (None, Some(sig)) => match sig.default_dedup_key() {
                Some(k) => DedupKeySpec::parse("dedup.key", k)?,
                None => DedupKeySpec::default(),
            },
            (None, None) => DedupKeySpec::default(),
        };
        let route = metrics.route(&self.route);
        let ack = self.ack.build(&self.route, &route, &store)?;
        let mut allowlist = IpAllowlistLayer::new(allow)
            .with_trusted_proxies(self.trusted_proxies)
            .with_metrics(route.clone());
        if let Some(f) = self.peer_ip {
            allowlist = allowlist.with_peer_ip(f);
        }
        if let Some(limit) = self.rate_limit {
            allowlist = allowlist.with_rate_limit(limit);
        }
        Ok(WebhookLayer {
            metrics: MetricsLayer::new(route),
            allowlist,
            validate: {
                let v = ValidateLayer::new(self.validator)
                    .with_max_body(self.max_body)
                    .with_read_timeout(self.read_timeout);
                match self.signature {
                    Some(sig) => v.with_signature(sig),
                    None => v,
                }
            },
            dedup: DedupLayer::new(store, self.route, dedup_key, self.dedup_ttl),
            ack,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(&prometheus::Registry::new()).unwrap()
    }

    #[test]
    fn configuration_errors_name_the_setting() {
        struct Case {
            name: &'static str,
            build: fn(Metrics) -> Result<WebhookLayer, ConfigError>,
            want: &'static str,
        }
        let cases = [
            Case {
                name: "no allowlist",
                build: |m| WebhookLayer::builder("r").with_metrics(&m).build(),
                want: "allow: no allowlist set",
            },
            Case {
                name: "bad cidr",
                build: |m| {
                    WebhookLayer::builder("r")
                        .with_metrics(&m)
                        .with_allow(["10.0.0.0/8", "x"])?
                        .build()
                },
                want: "allow[1]",
            },
            Case {
                name: "bad proxy",
                build: |m| {
                    WebhookLayer::builder("r")
                        .with_metrics(&m)
                        .with_allow(["10.0.0.0/8"])?
                        .with_trusted_proxies(["10.0.0.1/8"])?
                        .build()
                },
                want: "trusted_proxies[0]",
            },
            Case {
                name: "ttl below resolution",
                build: |m| {
                    WebhookLayer::builder("r")
                        .with_metrics(&m)
                        .with_allow(["10.0.0.0/8"])?
                        .with_dedup_ttl(Duration::from_millis(10))
                        .build()
                },
                want: "dedup.ttl",
            },
        ];
        for c in cases {
            let err = (c.build)(metrics()).unwrap_err().to_string();
            assert!(err.contains(c.want), "{}: {err}", c.name);
        }
    }

    #[test]
    fn builds_outside_a_runtime() {
        let layer = WebhookLayer::builder("r")
            .with_metrics(&metrics())
            .with_allow(["127.0.0.1"])
            .unwrap()
            .build();
        assert!(layer.is_ok());
    }
}
