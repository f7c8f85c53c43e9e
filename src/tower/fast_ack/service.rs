use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower_service::Service;

use super::ResponseFuture;
use crate::core::{ClientIp, Rejection};
use crate::deliver::Deliverer;
use crate::store::{Event, Reserved};
use crate::tower::{default_peer_ip, rejection_response, ParsedPayload};

/// Steps 13–14 as a service: appends each request to the spool and answers 200
/// `{"status":"received","event_id":...}` once it is there; the [`Deliverer`] hands the event to
/// its processor afterwards. A terminal service, not a layer: there is no inner service to call.
///
/// It reads the payload [`ValidateLayer`](super::super::ValidateLayer) parsed (without one in
/// front: 500 `payload_not_parsed`) and takes over the dedup reservation
/// [`DedupLayer`](super::super::DedupLayer) left in the request. The request body is not read,
/// so any body type works.
#[derive(Clone)]
pub struct FastAck {
    deliverer: Deliverer,
}

impl FastAck {
    /// Spools into `deliverer`'s spool, for `deliverer` to deliver.
    pub fn new(deliverer: Deliverer) -> Self {
        Self { deliverer }
    }

    /// The delivery worker: dead letters, replay, graceful shutdown.
    pub fn deliverer(&self) -> &Deliverer {
        &self.deliverer
    }
}

impl std::fmt::Debug for FastAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastAck")
            .field("route", &self.deliverer.route())
            .finish()
    }
}

impl<B> Service<Request<B>> for FastAck {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The spool pushes back through its own bound (503), so this service is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The reservation is this service's from here: held until the append ends, whatever the
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
            self.deliverer.route(),
            client_ip,
            req.method(),
            uri,
            req.headers(),
            payload.raw.clone(),
            reservation.as_ref(),
        );
        // The payload parsed already decides the destinations' filters and ordering keys.
        ResponseFuture::accepting(self.deliverer.accept_parsed(
            event,
            reservation,
            Some(&payload.value),
        ))
    }
}
