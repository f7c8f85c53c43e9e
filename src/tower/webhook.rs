//! [`WebhookLayer`]: the whole admission stack from one configuration, as a layer around the
//! handler ([`build`](WebhookLayerBuilder::build)), or answering 200 from a spool with the events
//! handed to a processor ([`with_fast_ack`](WebhookLayerBuilder::with_fast_ack)).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    DedupLayer, FastAck, IpAllowlistLayer, MetricsLayer, PeerIpFn, ResponseBody, ValidateLayer,
};
#[cfg(feature = "rate-limit")]
use crate::core::RateLimit;
#[cfg(feature = "signatures")]
use crate::core::SignatureVerifier;
use crate::core::{Allowlist, ConfigError, DedupKeySpec, LiveAllowlist, Validator};
use crate::deliver::{Deliverer, DeliveryPolicy, Destination, Target};
use crate::metrics::Metrics;
use crate::store::{DedupStore, MemoryDedupStore, Spool, SpoolError};
use crate::tower::validate::{DEFAULT_MAX_BODY, DEFAULT_READ_TIMEOUT};
use crate::tower::{Dedup, IpAllowlist, RecordMetrics, Validate};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The default dedup window: 24 h, far beyond the reference sender's 5 × 30 s retry span.
pub const DEFAULT_DEDUP_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The default capacity of the in-memory dedup store.
pub use crate::store::embedded::DEFAULT_DEDUP_CAPACITY;

/// IP allowlist, validation, dedup and metrics for one route, in pipeline order, around a
/// handler whose answer is the acknowledgement (its 2xx commits the dedup key). A plain layer:
/// [`layer`](Layer::layer) only wraps, so it works wherever axum puts a layer
/// (`post(h).layer(..)`, `route_layer`, `Router::layer`) and in any tower stack. Built by
/// [`WebhookLayer::builder`]; see the [module docs](super) for an example.
#[derive(Clone, Debug)]
#[must_use]
pub struct WebhookLayer<D = MemoryDedupStore> {
    metrics: MetricsLayer,
    allowlist: IpAllowlistLayer,
    validate: ValidateLayer,
    dedup: DedupLayer<D>,
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
            #[cfg(feature = "signatures")]
            signature: None,
            #[cfg(feature = "rate-limit")]
            rate_limit: None,
        }
    }
}

impl<S, D> Layer<S> for WebhookLayer<D> {
    type Service = Webhook<S, D>;

    fn layer(&self, inner: S) -> Self::Service {
        Webhook {
            stack: self.metrics.layer(
                self.allowlist
                    .layer(self.validate.layer(self.dedup.layer(inner))),
            ),
        }
    }
}

type Stack<S, D> = RecordMetrics<IpAllowlist<Validate<Dedup<S, D>>>>;

/// The admission pipeline around `S`: what [`WebhookLayer`] builds around a handler, and what
/// a fast-ack build returns around [`FastAck`] (a service to mount at the route's path).
///
/// It takes any request body (`http_body::Body` with `Bytes`-convertible data and an error that
/// converts into a boxed error: hyper's `Incoming`, axum's `Body`, tower-http's `Limited`); `S`
/// gets the validated bytes as `Request<Full<Bytes>>`, with the resolved
/// [`ClientIp`](crate::core::ClientIp) and the [`ParsedPayload`](super::ParsedPayload) in its
/// extensions. Its answers are `Response<ResponseBody<ResBody>>`: hookgate's own or `S`'s,
/// whatever `S`'s body type.
pub struct Webhook<S, D = MemoryDedupStore> {
    stack: Stack<S, D>,
}

impl<S: Clone, D> Clone for Webhook<S, D> {
    fn clone(&self) -> Self {
        Self {
            stack: self.stack.clone(),
        }
    }
}

impl<S: std::fmt::Debug, D> std::fmt::Debug for Webhook<S, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("stack", &self.stack)
            .finish()
    }
}

impl<S, D, ReqBody, ResBody> Service<Request<ReqBody>> for Webhook<S, D>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone,
    D: DedupStore,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<<Stack<S, D> as Service<Request<ReqBody>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<ReqBody>>::poll_ready(&mut self.stack, cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        ResponseFuture {
            fut: self.stack.call(req),
        }
    }
}

pin_project! {
    /// Response future of [`Webhook`]: the stack's answer, its body as one [`ResponseBody`].
    pub struct ResponseFuture<F> {
        #[pin]
        fut: F,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody<ResponseBody<ResponseBody<B>>>>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .fut
            .poll(cx)
            .map_ok(|res| res.map(|body| body.flatten().flatten()))
    }
}

/// Never implemented: it turns "a fast-ack `Webhook` is not a layer" into a compile error that
/// says what to write instead, where axum or tower asks for a layer.
#[diagnostic::on_unimplemented(
    message = "a fast-ack `Webhook` is a service to mount at a path, not a layer: it answers every request itself and hands the events to its processor",
    label = "a layer is expected here",
    note = "mount it with axum: `Router::new().route_service(\"/path\", webhook)`; to keep your handler, give it as the processor: `.with_fast_ack(spool, ServiceTarget::new(post(handler)))`",
    note = "or drop `with_fast_ack` to wrap the handler with a `WebhookLayer`: its answer is then the acknowledgement"
)]
pub trait FastAckIsNotALayer: sealed::Sealed {}

mod sealed {
    /// Keeps [`FastAckIsNotALayer`](super::FastAckIsNotALayer) unimplemented.
    pub trait Sealed {}
}

impl<L: FastAckIsNotALayer, D> Layer<L> for Webhook<FastAck, D> {
    type Service = L;

    /// Unreachable: no type implements [`FastAckIsNotALayer`].
    fn layer(&self, inner: L) -> L {
        inner
    }
}

/// The handler's own answer is the acknowledgement (no spool): [`build`](WebhookLayerBuilder::build)
/// makes a [`WebhookLayer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectAck;

/// Spool, answer 200 at once, hand the event to a processor afterwards:
/// [`build`](WebhookLayerBuilder::build) makes a `Webhook<FastAck>` and its [`Deliverer`].
#[derive(Clone)]
pub struct FastAckMode {
    spool: Arc<dyn Spool>,
    /// The processor given to `with_fast_ack`: the destination named `upstream`.
    processor: Option<Arc<dyn Target>>,
    policy: DeliveryPolicy,
    /// Destinations besides (or instead of) the processor.
    destinations: Vec<Destination>,
}

impl std::fmt::Debug for FastAckMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastAckMode")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Configures a [`WebhookLayer`] (or, with [`with_fast_ack`](Self::with_fast_ack), a fast-ack
/// [`Webhook`]). Defaults: `runblob` profile, 1 MiB body limit, 10 s read timeout, dedup by
/// `/generation_id` for 24 h, metrics in the default registry. The allowlist has no default: it
/// must be set. Cloning it gives a second configuration to change.
#[derive(Clone)]
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
    #[cfg(feature = "signatures")]
    signature: Option<SignatureVerifier>,
    #[cfg(feature = "rate-limit")]
    rate_limit: Option<RateLimit>,
}

impl<M: std::fmt::Debug> std::fmt::Debug for WebhookLayerBuilder<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookLayerBuilder")
            .field("route", &self.route)
            .field("ack", &self.ack)
            .field("allow", &self.allow)
            .field("validator", &self.validator)
            .field("max_body", &self.max_body)
            .field("dedup_key", &self.dedup_key)
            .field("dedup_ttl", &self.dedup_ttl)
            .finish_non_exhaustive()
    }
}

impl WebhookLayerBuilder<DirectAck> {
    /// Acknowledges from the spool instead of the handler: each accepted request is stored in
    /// `spool` and answered 200 `{"status":"received","event_id":...}` as soon as it is there;
    /// a [`Deliverer`] then hands it to `processor` and retries it by the delivery policy
    /// ([`with_delivery_policy`](WebhookLayerBuilder::with_delivery_policy)).
    ///
    /// The processor is a [`handler_fn`](crate::deliver::handler_fn) (a typed async function),
    /// a [`ServiceTarget`](crate::deliver::ServiceTarget) (any tower service: an axum handler
    /// or router) or an `HttpTarget` (an HTTP upstream, feature `http-target`).
    /// [`build`](WebhookLayerBuilder::build) then returns a service to mount at the route's
    /// path, not a layer. Build once per spool and route: each build starts a delivery worker,
    /// and two workers on one embedded spool's route would each deliver its events.
    pub fn with_fast_ack(
        self,
        spool: Arc<dyn Spool>,
        processor: impl Target,
    ) -> WebhookLayerBuilder<FastAckMode> {
        self.with_ack(FastAckMode {
            spool,
            processor: Some(Arc::new(processor)),
            policy: DeliveryPolicy::default(),
            destinations: Vec::new(),
        })
    }

    /// Like [`with_fast_ack`](Self::with_fast_ack), delivering each event to several
    /// `destinations` (fan-out, DESIGN §13): each its own target (an in-process handler, a
    /// tower service, an HTTP upstream), delivery policy, circuit, and optionally a rate, a
    /// filter and an order, exactly as the gateway's `[[route.destination]]`. An event is
    /// acknowledged once; each destination then has its own status, attempts and dead letters.
    ///
    /// ```
    /// use hookgate::core::{Filter, OrderKey};
    /// use hookgate::deliver::{handler_fn, DeliveredEvent, Destination};
    /// use hookgate::store::memory::MemorySpool;
    /// use hookgate::tower::WebhookLayer;
    /// use std::sync::Arc;
    ///
    /// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
    /// # let metrics = hookgate::metrics::Metrics::new(&prometheus::Registry::new()).unwrap();
    /// let app = Destination::new("app")
    ///     .with_target(handler_fn(|_ev: DeliveredEvent| async { Ok(()) }))
    ///     .with_order(OrderKey::parse("order", "/generation_id")?);
    /// let alerts = Destination::new("alerts")
    ///     .with_target(handler_fn(|_ev: DeliveredEvent| async { Ok(()) }))
    ///     .with_filter(Filter::new("filter", [("/status".to_string(), "failed".into())])?);
    /// let (webhook, deliverer) = WebhookLayer::builder("o3-video")
    ///     .with_allow(["127.0.0.0/8"])?
    /// #   .with_metrics(&metrics)
    ///     .with_fast_ack_destinations(Arc::new(MemorySpool::new(10_000, 64 << 20)), [app, alerts])
    ///     .build()?;
    /// assert_eq!(deliverer.destinations(), ["app", "alerts"]);
    /// # let _ = webhook;
    /// # Ok::<(), hookgate::core::ConfigError>(())
    /// # }).unwrap();
    /// ```
    pub fn with_fast_ack_destinations(
        self,
        spool: Arc<dyn Spool>,
        destinations: impl IntoIterator<Item = Destination>,
    ) -> WebhookLayerBuilder<FastAckMode> {
        self.with_ack(FastAckMode {
            spool,
            processor: None,
            policy: DeliveryPolicy::default(),
            destinations: destinations.into_iter().collect(),
        })
    }

    /// Builds the layer with a new [`MemoryDedupStore`] reporting to the metrics. Inside a tokio
    /// runtime a sweeper removes its expired keys every 30 s; outside one, expired keys are still
    /// treated as absent and the capacity bound still holds.
    pub fn build(mut self) -> Result<WebhookLayer, ConfigError> {
        let store = self.memory_store()?;
        let layer = self.build_with_store(store.clone())?;
        sweep(&store);
        Ok(layer)
    }

    /// Builds the layer around the dedup `store` given.
    pub fn build_with_store<D: DedupStore>(
        mut self,
        store: D,
    ) -> Result<WebhookLayer<D>, ConfigError> {
        self.layer(store)
    }
}

impl WebhookLayerBuilder<FastAckMode> {
    /// Delivers by `policy` (default [`DeliveryPolicy::default`]: 10 attempts within 24 h,
    /// exponential backoff, 8 at once, 10 s per attempt).
    pub fn with_delivery_policy(mut self, policy: DeliveryPolicy) -> Self {
        self.ack.policy = policy;
        self
    }

    /// Delivers each event to `destination` as well (fan-out; see
    /// [`with_fast_ack_destinations`](WebhookLayerBuilder::with_fast_ack_destinations)).
    /// The processor given to `with_fast_ack` is the destination named `upstream`.
    pub fn with_destination(mut self, destination: Destination) -> Self {
        self.ack.destinations.push(destination);
        self
    }

    /// Builds, inside a tokio runtime: refills a new [`MemoryDedupStore`] with the keys the
    /// spool kept (so a restart still answers `duplicate`), starts the delivery worker (events
    /// left in the spool by an earlier run are delivered again), and returns the service to
    /// mount at the route's path with its [`Deliverer`] (dead letters, replay, shutdown).
    ///
    /// ```
    /// use hookgate::deliver::{handler_fn, DeliveredEvent};
    /// use hookgate::store::memory::MemorySpool;
    /// use hookgate::tower::WebhookLayer;
    /// use std::sync::Arc;
    ///
    /// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
    /// # let metrics = hookgate::metrics::Metrics::new(&prometheus::Registry::new()).unwrap();
    /// let (webhook, deliverer) = WebhookLayer::builder("o3-video")
    ///     .with_allow(["127.0.0.0/8"])?
    /// #   .with_metrics(&metrics)
    ///     .with_fast_ack(
    ///         Arc::new(MemorySpool::new(10_000, 64 << 20)),
    ///         handler_fn(|ev: DeliveredEvent| async move {
    ///             println!("{}", ev.body().len());
    ///             Ok(())
    ///         }),
    ///     )
    ///     .build()?;
    /// // axum: Router::new().route_service("/webhook/o3-video", webhook)
    /// # let _ = (webhook, deliverer);
    /// # Ok::<(), hookgate::core::ConfigError>(())
    /// # }).unwrap();
    /// ```
    pub fn build(mut self) -> Result<(Webhook<FastAck>, Deliverer), ConfigError> {
        let store = self.memory_store()?;
        let built = self.build_with_store(store.clone())?;
        sweep(&store);
        Ok(built)
    }

    /// [`build`](Self::build) around the dedup `store` given.
    pub fn build_with_store<D: DedupStore>(
        mut self,
        store: D,
    ) -> Result<(Webhook<FastAck, D>, Deliverer), ConfigError> {
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
        let metrics = self.resolve_metrics()?;
        let FastAckMode {
            spool,
            processor,
            policy,
            destinations,
        } = self.ack.clone();
        // Keys accepted before a restart answer `duplicate` again for the rest of their TTL.
        crate::store::refill_dedup(spool.as_ref(), &store).map_err(spool_error)?;
        let layer = self.layer(store)?;
        let mut all: Vec<Destination> = processor
            .map(|p| Destination::default_for(policy).with_shared_target(p))
            .into_iter()
            .collect();
        all.extend(destinations);
        let (deliverer, worker) =
            Deliverer::with_destinations(self.route.clone(), spool, &metrics, all)?;
        tokio::spawn(worker);
        Ok((layer.layer(FastAck::new(deliverer.clone())), deliverer))
    }
}

/// Starts `store`'s sweeper when there is a runtime to run it.
fn sweep(store: &MemoryDedupStore) {
    if tokio::runtime::Handle::try_current().is_ok() {
        store.spawn_sweeper(Duration::from_secs(30));
    }
}

impl<M> WebhookLayerBuilder<M> {
    fn with_ack<N>(self, ack: N) -> WebhookLayerBuilder<N> {
        WebhookLayerBuilder {
            ack,
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
            #[cfg(feature = "signatures")]
            signature: self.signature,
            #[cfg(feature = "rate-limit")]
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
    /// Feature `rate-limit`.
    #[cfg(feature = "rate-limit")]
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Step 9: refuses (401) a request whose signature `verifier` does not accept, checked over
    /// the raw body before it is parsed. Unless a dedup key is set, the scheme's delivery id
    /// becomes it ([`SignatureVerifier::default_dedup_key`]). Feature `signatures`.
    #[cfg(feature = "signatures")]
    pub fn with_signature(mut self, verifier: SignatureVerifier) -> Self {
        self.signature = Some(verifier);
        self
    }

    /// Keeps accepted keys for `ttl` (default 24 h; at least one second).
    pub fn with_dedup_ttl(mut self, ttl: Duration) -> Self {
        self.dedup_ttl = ttl;
        self
    }

    /// Bounds the in-memory dedup store [`build`](WebhookLayerBuilder::build) makes (default
    /// 450,000 keys, about 27 MiB, taken at start).
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

    /// A new in-memory dedup store of the configured capacity, reporting to the metrics.
    fn memory_store(&mut self) -> Result<MemoryDedupStore, ConfigError> {
        let metrics = self.resolve_metrics()?;
        Ok(MemoryDedupStore::with_metrics(
            self.dedup_capacity,
            &metrics,
        ))
    }

    /// The layers, around the dedup `store`.
    fn layer<D: DedupStore>(&mut self, store: D) -> Result<WebhookLayer<D>, ConfigError> {
        let metrics = self.resolve_metrics()?;
        let allow =
            self.allow.clone().ok_or_else(|| {
                ConfigError::InvalidValue {
            key: "allow".into(),
            reason:
                "no allowlist set; list the sender's CIDRs (write 0.0.0.0/0 and ::/0 to allow all)"
                    .into(),
        }
            })?;
        if self.dedup_ttl < Duration::from_secs(1) {
            return Err(ConfigError::InvalidValue {
                key: "dedup.ttl".into(),
                reason: "must be at least 1s".into(),
            });
        }
        let dedup_key = match self.dedup_key.clone() {
            Some(key) => key,
            None => self.signed_dedup_key()?,
        };
        let route = metrics.route(&self.route);
        let mut allowlist = IpAllowlistLayer::new(allow)
            .with_trusted_proxies(self.trusted_proxies.clone())
            .with_metrics(route.clone());
        if let Some(f) = self.peer_ip {
            allowlist = allowlist.with_peer_ip(f);
        }
        #[cfg(feature = "rate-limit")]
        if let Some(limit) = self.rate_limit.clone() {
            allowlist = allowlist.with_rate_limit(limit);
        }
        #[allow(unused_mut)]
        let mut validate = ValidateLayer::new(self.validator.clone())
            .with_max_body(self.max_body)
            .with_read_timeout(self.read_timeout);
        #[cfg(feature = "signatures")]
        if let Some(sig) = self.signature.clone() {
            validate = validate.with_signature(sig);
        }
        Ok(WebhookLayer {
            metrics: MetricsLayer::new(route),
            allowlist,
            validate,
            dedup: DedupLayer::new(store, self.route.clone(), dedup_key, self.dedup_ttl),
        })
    }

    /// The dedup key when none is set: the signature scheme's delivery id, else `/generation_id`.
    fn signed_dedup_key(&self) -> Result<DedupKeySpec, ConfigError> {
        #[cfg(feature = "signatures")]
        if let Some(k) = self.signature.as_ref().and_then(|s| s.default_dedup_key()) {
            return DedupKeySpec::parse("dedup.key", k);
        }
        Ok(DedupKeySpec::default())
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
