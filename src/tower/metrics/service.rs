use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use tower_service::Service;

use super::ResponseFuture;
use crate::metrics::RouteMetrics;

/// Records request metrics. Built by [`MetricsLayer`](super::MetricsLayer).
#[derive(Clone, Debug)]
pub struct RecordMetrics<S> {
    inner: S,
    route: RouteMetrics,
}

impl<S> RecordMetrics<S> {
    pub(crate) fn new(inner: S, route: RouteMetrics) -> Self {
        Self { inner, route }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RecordMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        ResponseFuture::new(self.inner.call(req), self.route.clone(), Instant::now())
    }
}
