use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

use super::layer::Shared;
use super::ResponseFuture;
use crate::core::{ClientIp, Rejection};
use crate::store::{Event, Reserved};
use crate::tower::{default_peer_ip, rejection_response, ParsedPayload};

/// Acknowledges requests once spooled. Built by [`FastAckLayer`](super::FastAckLayer); the
/// wrapped service is called by the delivery engine, not here.
pub struct FastAck<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for FastAck<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S> FastAck<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service (the delivery target).
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> std::fmt::Debug for FastAck<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastAck")
            .field("route", &self.shared.route)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for FastAck<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The wrapped service is called later by the delivery engine; the spool pushes back
        // through its own bound (503), so this layer is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        if self.shared.wrapped.load(Ordering::Acquire) > 1 {
            return ResponseFuture::done(rejection_response(Rejection::AmbiguousDeliveryTarget));
        }
        // The reservation is this layer's from here: held until the append ends, whatever the
        // layers outside do with the request meanwhile.
        let reservation = req.extensions_mut().remove::<Reserved>();
        if let Some(r) = &reservation {
            r.hand_over();
        }
        let ext = req.extensions();
        let Some(payload) = ext.get::<ParsedPayload>() else {
            return ResponseFuture::done(rejection_response(Rejection::PayloadNotParsed));
        };
        let client_ip = ext
            .get::<ClientIp>()
            .map(|c| c.ip)
            .or_else(|| default_peer_ip(ext))
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let uri = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let event = Event::received(
            &self.shared.route,
            client_ip,
            req.method(),
            uri,
            req.headers(),
            payload.raw.clone(),
            reservation.as_ref(),
        );
        ResponseFuture::accepting(self.shared.deliverer.accept(event, reservation))
    }
}
