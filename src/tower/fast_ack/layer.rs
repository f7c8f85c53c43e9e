use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tower_layer::Layer;

use super::FastAck;
use crate::deliver::{Deliverer, DeliveryPolicy, ServiceTarget, Target};
use crate::metrics::RouteMetrics;
use crate::store::{Spool, SpoolError};

pub(crate) struct Shared {
    pub(crate) route: String,
    pub(crate) deliverer: Deliverer,
    pub(crate) policy: DeliveryPolicy,
    /// How many services this layer wrapped; more than one is refused (see `layer`).
    pub(crate) wrapped: AtomicUsize,
}

/// Builds [`FastAck`] services. `B` is the request body type the wrapped service takes
/// (`axum::body::Body` behind axum, `Full<Bytes>` for a plain tower service).
#[must_use]
pub struct FastAckLayer<B> {
    pub(crate) shared: Arc<Shared>,
    _body: PhantomData<fn() -> B>,
}

impl<B> Clone for FastAckLayer<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _body: PhantomData,
        }
    }
}

impl<B> std::fmt::Debug for FastAckLayer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastAckLayer")
            .field("route", &self.shared.route)
            .field("deliverer", &self.shared.deliverer)
            .finish()
    }
}

impl<B> FastAckLayer<B> {
    /// Spools the route's requests in `spool` and starts its delivery worker on the current tokio
    /// runtime (events left in the spool by an earlier run are scheduled again).
    pub fn new(
        route: impl Into<String>,
        spool: Arc<dyn Spool>,
        policy: DeliveryPolicy,
        metrics: &RouteMetrics,
    ) -> Result<Self, SpoolError> {
        let route = route.into();
        let deliverer = Deliverer::start(
            route.clone(),
            spool,
            policy.clone(),
            metrics.delivery().clone(),
        )?;
        Ok(Self {
            shared: Arc::new(Shared {
                route,
                deliverer,
                policy,
                wrapped: AtomicUsize::new(0),
            }),
            _body: PhantomData,
        })
    }

    /// The delivery worker: dead letters, replay, graceful shutdown.
    pub fn deliverer(&self) -> &Deliverer {
        &self.shared.deliverer
    }
}

// Whatever `ServiceTarget` can deliver to, this layer can wrap: the bounds live there once.
impl<S: Clone, B> Layer<S> for FastAckLayer<B>
where
    ServiceTarget<S, B>: Target,
{
    type Service = FastAck<S>;

    /// Makes `inner` the delivery target. Wrapping a second service makes the target ambiguous
    /// (axum's `MethodRouter::layer` also wraps the 405 fallback, and in no fixed order): the
    /// worker then stops and every request is refused with 500 `ambiguous_delivery_target`,
    /// rather than delivering events to the wrong service.
    fn layer(&self, inner: S) -> Self::Service {
        if self.shared.wrapped.fetch_add(1, Ordering::AcqRel) == 0 {
            let target = ServiceTarget::<S, B>::new(inner.clone(), self.shared.policy.timeout);
            self.shared.deliverer.set_target(Arc::new(target));
        } else {
            tracing::error!(
                route = %self.shared.route,
                "FastAckLayer wrapped a second service; refusing requests (with axum, use Router::route_service(path, layer.layer(method_router)))"
            );
            self.shared.deliverer.halt();
        }
        FastAck::new(inner, self.shared.clone())
    }
}
