use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Request, Response};
use tower_service::Service;

use super::layer::Shared;
use super::ResponseFuture;
use crate::core::Rejection;
use crate::tower::rejection_response;

/// Refuses requests from outside the allowlist. Built by [`IpAllowlistLayer`](super::IpAllowlistLayer).
#[derive(Clone)]
pub struct IpAllowlist<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> IpAllowlist<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for IpAllowlist<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpAllowlist")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for IpAllowlist<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        let Some(peer) = (shared.peer_ip)(req.extensions()) else {
            return ResponseFuture::rejected(rejection_response(Rejection::PeerAddressUnknown));
        };
        let client = shared.resolver.resolve(
            peer,
            req.headers()
                .get_all(header::HeaderName::from_static("x-forwarded-for"))
                .iter()
                .map(|v| v.as_bytes()),
        );
        if client.forwarded_invalid {
            if let Some(m) = &shared.metrics {
                m.record_forwarded_invalid();
            }
        }
        if let Err(rejection) = shared.allow.check(client.ip) {
            return ResponseFuture::rejected(rejection_response(rejection));
        }
        req.extensions_mut().insert(client);
        ResponseFuture::inner(self.inner.call(req))
    }
}
