use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::Response;
use pin_project_lite::pin_project;

use crate::core::{Counted, EventClass};
use crate::metrics::RouteMetrics;
use crate::tower::counted;

pin_project! {
    /// Response future of [`RecordMetrics`](super::RecordMetrics).
    pub struct ResponseFuture<F> {
        #[pin]
        fut: F,
        route: RouteMetrics,
        start: Instant,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(fut: F, route: RouteMetrics, start: Instant) -> Self {
        Self { fut, route, start }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.fut.poll(cx));
        let route = &*this.route;
        match &result {
            Ok(res) => route.record(counted(res), res.extensions().get::<EventClass>().copied()),
            Err(_) => route.record(Counted::Failed, None),
        }
        route.observe_ack(this.start.elapsed());
        Poll::Ready(result)
    }
}
