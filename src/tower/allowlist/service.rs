use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderName;
use http::{Request, Response};
use tower_service::Service;

use super::layer::Shared;
use super::ResponseFuture;
use crate::core::Rejection;
use crate::tower::{rejection_response, ResponseBody};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

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
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

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
                .get_all(X_FORWARDED_FOR)
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
        #[cfg(feature = "rate-limit")]
        if let Some(limit) = &shared.rate_limit {
            // A method refused anyway (405, further in) is not counted against the client.
            if req.method() == http::Method::POST {
                if let Err(rejection) = limit.check(client.ip) {
                    return ResponseFuture::rejected(rejection_response(rejection));
                }
            }
        }
        req.extensions_mut().insert(client);
        ResponseFuture::inner(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Allowlist;
    use crate::tower::IpAllowlistLayer;
    use bytes::Bytes;
    use http_body_util::Full;
    use tower::{service_fn, Layer, ServiceExt};

    #[tokio::test]
    async fn missing_peer_address_fails_closed() {
        let called = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = called.clone();
        let svc = IpAllowlistLayer::new(Allowlist::new("allow", ["0.0.0.0/0", "::/0"]).unwrap())
            .layer(service_fn(move |_req: Request<Full<Bytes>>| {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
                async { Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default())) }
            }));
        let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
        assert_eq!(res.status(), 500);
        assert_eq!(
            res.extensions().get::<Rejection>(),
            Some(&Rejection::PeerAddressUnknown)
        );
        assert!(!called.load(std::sync::atomic::Ordering::SeqCst));
    }
}
