use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::Dedup;
use crate::core::DedupKeySpec;
use crate::store::{DedupStore, SharedDedupStore};

pub(crate) struct Shared<D> {
    pub(crate) store: Arc<D>,
    /// The same store, as the reservation guard holds it.
    pub(crate) guard_store: SharedDedupStore,
    pub(crate) scope: String,
    pub(crate) spec: DedupKeySpec,
    pub(crate) ttl: Duration,
}

/// Builds [`Dedup`] services.
#[must_use]
pub struct DedupLayer<D> {
    shared: Arc<Shared<D>>,
}

impl<D> Clone for DedupLayer<D> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<D> std::fmt::Debug for DedupLayer<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupLayer")
            .field("scope", &self.shared.scope)
            .field("key", &self.shared.spec)
            .field("ttl", &self.shared.ttl)
            .finish()
    }
}

impl<D: DedupStore> DedupLayer<D> {
    /// Dedups by `spec` in `store` for `ttl`. `scope` (the route name) keeps routes' keys apart.
    pub fn new(store: D, scope: impl Into<String>, spec: DedupKeySpec, ttl: Duration) -> Self {
        let store = Arc::new(store);
        Self {
            shared: Arc::new(Shared {
                guard_store: SharedDedupStore::new(store.clone()),
                store,
                scope: scope.into(),
                spec,
                ttl,
            }),
        }
    }
}

impl<S, D> Layer<S> for DedupLayer<D> {
    type Service = Dedup<S, D>;

    fn layer(&self, inner: S) -> Self::Service {
        Dedup::new(inner, self.shared.clone())
    }
}
