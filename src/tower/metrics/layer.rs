use tower_layer::Layer;

use super::RecordMetrics;
use crate::metrics::RouteMetrics;

/// Builds [`RecordMetrics`] services for one route.
#[derive(Clone, Debug)]
#[must_use]
pub struct MetricsLayer {
    route: RouteMetrics,
}

impl MetricsLayer {
    /// Records into `route` (from [`Metrics::route`](crate::metrics::Metrics::route)).
    pub fn new(route: RouteMetrics) -> Self {
        Self { route }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = RecordMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordMetrics::new(inner, self.route.clone())
    }
}
