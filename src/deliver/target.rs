//! Where a fast-ack route's events are delivered (its processor): a [`Target`]. hookgate has
//! three: an HTTP upstream (`HttpTarget`, feature `http-target`), a tower service
//! ([`ServiceTarget`]) and a typed async function ([`handler_fn`](super::handler_fn)). The first
//! two send the stored request byte for byte with the headers of DESIGN §3.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use tower_service::Service;

use super::policy::AttemptResult;
use crate::core::forward::{ATTEMPT, EVENT_ID, RECEIVED_AT, REPLAY, X_FORWARDED_FOR};
use crate::core::ClientIp;
use crate::store::Event;

/// A boxed attempt, as targets return it (one allocation per delivery attempt, off the ack path).
pub type AttemptFuture = Pin<Box<dyn Future<Output = AttemptResult> + Send>>;

/// Somewhere events can be delivered: what a fast-ack route hands each event to, and what the
/// delivery worker retries. The worker bounds each attempt by the policy's `timeout` and turns a
/// panic in it into a failed attempt (retried).
pub trait Target: Send + Sync + 'static {
    /// Makes one attempt to deliver `event` (its `attempts` already counts this one).
    fn deliver(&self, event: &Event) -> AttemptFuture;
}

impl<T: Target + ?Sized> Target for Arc<T> {
    fn deliver(&self, event: &Event) -> AttemptFuture {
        (**self).deliver(event)
    }
}

/// The headers one attempt carries: the stored ones plus `X-Forwarded-For` (the resolved client
/// address), `X-Hookgate-Event-Id`, `X-Hookgate-Attempt`, `X-Hookgate-Received-At`, and
/// `X-Hookgate-Replay` when a replay job sent it again.
pub fn attempt_headers(event: &Event) -> HeaderMap {
    let mut map = stored_headers(event, 5);
    let received = UNIX_EPOCH + Duration::from_millis(event.received_ms);
    let mut id = uuid::Uuid::encode_buffer();
    for (name, value) in [
        (
            X_FORWARDED_FOR,
            formatted(format_args!("{}", event.client_ip)),
        ),
        (
            EVENT_ID,
            HeaderValue::from_str(event.id.hyphenated().encode_lower(&mut id)).ok(),
        ),
        (ATTEMPT, Some(HeaderValue::from(event.attempts))),
        (
            RECEIVED_AT,
            formatted(format_args!(
                "{}",
                humantime::format_rfc3339_millis(received)
            )),
        ),
        (
            REPLAY,
            event
                .replay
                .as_deref()
                .and_then(|job| HeaderValue::from_str(job).ok()),
        ),
    ] {
        if let Some(v) = value {
            map.insert(name, v);
        }
    }
    map
}

/// The headers `event` was received with (valid when stored; any that somehow are not is
/// skipped), with room for `extra` more.
pub(crate) fn stored_headers(event: &Event, extra: usize) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(event.headers.len() + extra);
    for (name, value) in &event.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

/// A header value formatted on the stack (these are short): one allocation, for the value.
fn formatted(args: std::fmt::Arguments<'_>) -> Option<HeaderValue> {
    struct Buf {
        bytes: [u8; 64],
        len: usize,
    }
    impl std::fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let end = self.len + s.len();
            self.bytes
                .get_mut(self.len..end)
                .ok_or(std::fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
    let mut buf = Buf {
        bytes: [0; 64],
        len: 0,
    };
    std::fmt::write(&mut buf, args).ok()?;
    HeaderValue::from_bytes(&buf.bytes[..buf.len]).ok()
}

/// Delivers to a tower service: the stored method, URI, headers (plus those of
/// [`attempt_headers`]) and body as a `Request<Full<Bytes>>`, with the client address as
/// [`ClientIp`] (and, with the `axum` feature, `ConnectInfo<SocketAddr>`) in the extensions. A
/// 2xx answer delivers the event; the others are classified as an HTTP upstream's
/// ([`classify`](super::classify)), `Retry-After` included; a service error is retried.
///
/// Any service taking `Request<Full<Bytes>>` fits: an axum `Router` or `MethodRouter` (whatever
/// body type its handlers extract from), a hyper `service_fn`, a tower stack.
///
/// ```
/// use hookgate::deliver::{ServiceTarget, Target};
/// use hookgate::store::Event;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let target = ServiceTarget::new(tower::service_fn(|req: Request<Full<Bytes>>| async move {
///     let status = if req.headers().contains_key("x-hookgate-event-id") { 204 } else { 400 };
///     Ok::<_, std::convert::Infallible>(Response::builder().status(status).body(Full::<Bytes>::default()).unwrap())
/// }));
/// let event = Event::new("r", "127.0.0.1".parse().unwrap(), "POST", "/w", vec![], Bytes::from("{}"));
/// assert_eq!(target.deliver(&event).await.to_string(), "status 204");
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct ServiceTarget<S> {
    service: S,
}

impl<S> ServiceTarget<S> {
    /// Delivers to `service` (the route's `delivery.timeout` bounds each attempt).
    pub fn new(service: S) -> Self {
        Self { service }
    }
}

/// The request a [`ServiceTarget`] sends for `event`.
pub(crate) fn stored_request(event: &Event) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(event.body.clone()));
    *request.method_mut() =
        http::Method::from_bytes(event.method.as_bytes()).unwrap_or(http::Method::POST);
    *request.uri_mut() = event
        .uri
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    *request.headers_mut() = attempt_headers(event);
    request.extensions_mut().insert(ClientIp {
        ip: event.client_ip,
        forwarded: false,
        forwarded_invalid: false,
    });
    #[cfg(feature = "axum")]
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::new(
            event.client_ip,
            0,
        )));
    request
}

impl<S, ResBody> Target for ServiceTarget<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: std::fmt::Display,
    ResBody: Send + 'static,
{
    fn deliver(&self, event: &Event) -> AttemptFuture {
        let request = stored_request(event);
        let mut service = self.service.clone();
        Box::pin(async move {
            let answer = async {
                std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                service.call(request).await
            };
            match answer.await {
                Ok(res) => AttemptResult::answered(res.status(), res.headers()),
                Err(e) => AttemptResult::Failed(e.to_string()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_headers_carry_the_event() {
        let mut e = Event::new(
            "r",
            "203.0.113.9".parse().unwrap(),
            "POST",
            "/w",
            vec![("content-type".into(), b"application/json".to_vec())],
            Bytes::new(),
        );
        e.attempts = 3;
        e.received_ms = 1_700_000_000_123;
        let h = attempt_headers(&e);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-hookgate-attempt"], "3");
        assert_eq!(h["x-hookgate-event-id"], e.id.to_string().as_str());
        assert_eq!(h["x-hookgate-received-at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(h["content-type"], "application/json");
        assert!(h.get("x-hookgate-replay").is_none());
        e.replay = Some("job-1".into());
        assert_eq!(attempt_headers(&e)["x-hookgate-replay"], "job-1");
    }
}
