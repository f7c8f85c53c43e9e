use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::layer::Shared;
use super::ResponseFuture;
use crate::store::DedupStore;
use crate::tower::{rejection_response, ParsedPayload, ResponseBody};

/// Drops duplicate webhook requests. Built by [`DedupLayer`](super::DedupLayer).
pub struct Dedup<S, D> {
    inner: S,
    shared: Arc<Shared<D>>,
}

impl<S: Clone, D> Clone for Dedup<S, D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, D> Dedup<S, D> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<D>>) -> Self {
        Self { inner, shared }
    }
}

impl<S: std::fmt::Debug, D> std::fmt::Debug for Dedup<S, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("inner", &self.inner)
            .field("key", &self.shared.spec)
            .finish()
    }
}

impl<S, D, ReqBody, ResBody> Service<Request<ReqBody>> for Dedup<S, D>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    D: DedupStore,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, D, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        let payload = req.extensions().get::<ParsedPayload>();
        let key = shared.spec.extract(
            &shared.scope,
            req.headers(),
            payload.map(|p| &p.raw[..]),
            payload.map(|p| &*p.value),
        );
        let key = match key {
            Ok(key) => key,
            Err(rejection) => return ResponseFuture::done(rejection_response(rejection)),
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::reserving(
            shared.store.reserve(key, shared.ttl),
            key,
            req,
            inner,
            self.shared.clone(),
        )
    }
}
