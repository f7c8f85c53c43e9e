use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use prometheus::Registry;
use tower_service::Service;

/// A `/metrics` route: answers any request with `registry`'s metrics in the Prometheus text
/// format (500 with the error if they cannot be encoded). With axum:
/// `Router::new().route_service("/metrics", ServeMetrics::new(registry))`.
#[derive(Clone, Debug)]
pub struct ServeMetrics {
    registry: Registry,
}

impl ServeMetrics {
    /// Serves `registry` (a `Registry` is a handle: clone it, keep registering into it).
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }
}

impl<B> Service<Request<B>> for ServeMetrics {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let (status, content_type, body) = match crate::metrics::render(&self.registry) {
            Ok((content_type, text)) => (StatusCode::OK, content_type, text),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                format!("the metrics could not be encoded: {e}"),
            ),
        };
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        ready(Ok(res))
    }
}
