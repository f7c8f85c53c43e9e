use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use tower_service::Service;

use super::layer::Shared;
use super::ResponseFuture;
use crate::core::request_head;
use crate::tower::{rejection_response, ResponseBody};

/// Validates webhook requests. Built by [`ValidateLayer`](super::ValidateLayer). Takes any
/// request body (`http_body::Body`, its error into a boxed error: hyper's `Incoming`, axum's
/// `Body`, tower-http's `Limited`); the inner service gets the validated bytes as
/// `Request<Full<Bytes>>`.
#[derive(Clone)]
pub struct Validate<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Validate<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Validate<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validate")
            .field("inner", &self.inner)
            .field("config", &self.shared)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Validate<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone,
    ReqBody: Body,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        if let Err(rejection) = request_head::check(req.method(), req.headers(), shared.max_body) {
            return ResponseFuture::rejected(rejection_response(rejection));
        }
        // The service polled ready is the one that will be called, after the body arrives.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        let limit = usize::try_from(shared.max_body).unwrap_or(usize::MAX);
        ResponseFuture::reading(
            Limited::new(body, limit).collect(),
            tokio::time::sleep(shared.read_timeout),
            parts,
            inner,
            self.shared.clone(),
        )
    }
}
