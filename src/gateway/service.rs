//! The public listener: DESIGN §2's pipeline over pingora sessions. Every decision is a call
//! into [`crate::core`] (the same functions the tower layers call), steps 13–14 are
//! [`Deliverer::accept`] and `proxy` mode is [`Forwarder::forward`]; this file only moves bytes:
//! it reads heads and bodies, and writes the core's [`Answer`].
//!
//! It is a pingora [`ServerApp`] that runs the HTTP/1.1 connection loop itself (rather than an
//! `HttpServerApp` or a `ProxyHttp`): it keeps pingora's listeners, TLS, connection filter, parser
//! and keep-alive, and adds what those cannot give — a header deadline counted from the first
//! bytes of a request (an idle kept-alive connection waits for them, reads them once and hands
//! them to the session, then `header_timeout` runs), an answered 408, a body read for
//! validation, pipelined requests answered in order, and `server.max_connections`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::apps::ServerApp;
use pingora::http::ResponseHeader;
use pingora::listeners::ConnectionFilter;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

use crate::core::{
    cut, request_head, Answer, ClientIpResolver, Counted, DedupKeySpec, EventClass, LiveAllowlist,
    Outcome, RateLimit, Rejection, SignatureVerifier, Validator,
};
use crate::deliver::{Deliverer, Forwarder};
use crate::metrics::RouteMetrics;
use crate::store::{DedupStore, Event, Reserved, SharedDedupStore};

use super::config::Mode;

/// One configured route, ready to serve.
pub(crate) struct Route {
    pub name: String,
    pub mode: Mode,
    pub allow: LiveAllowlist,
    pub clients: ClientIpResolver,
    pub validator: Validator,
    pub dedup_key: DedupKeySpec,
    pub dedup_ttl: Duration,
    pub max_body: u64,
    /// Step 9, when the route is signed.
    pub signature: Option<SignatureVerifier>,
    /// Step 5, when the route limits each client.
    pub rate_limit: Option<RateLimit>,
    /// Steps 13–14 and delivery (`fast_ack`).
    pub deliverer: Deliverer,
    /// The synchronous forward (`proxy`).
    pub forwarder: Forwarder,
    pub metrics: RouteMetrics,
}

/// What the public listener shares across connections.
pub(crate) struct Gateway {
    /// The routes (swapped whole by a reload), the admin token and the certificate.
    pub shared: Arc<super::Shared>,
    pub dedup: SharedDedupStore,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    /// Requests for no route (and refused before one is known) are counted here.
    pub unmatched: RouteMetrics,
    pub drain: Arc<Drain>,
    pub connections: Connections,
}

/// The client connections open, bounded by `server.max_connections`.
pub(crate) struct Connections {
    /// Open connections, the count that decides.
    pub count: AtomicUsize,
    /// `hookgate_connections_open`, following `count`.
    pub open: prometheus::IntGauge,
    pub max: usize,
    pub refused: prometheus::IntCounter,
    /// When a refusal was last logged (seconds since the epoch): once a minute at most.
    pub warned: AtomicU64,
}

/// One open connection, counted until dropped.
struct Open<'a>(&'a Connections);

impl Connections {
    fn enter(&self) -> Option<Open<'_>> {
        // One atomic add decides: of two connections racing for the last slot, one gets it.
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.count.fetch_sub(1, Ordering::AcqRel);
            self.refuse();
            return None;
        }
        self.open.inc();
        Some(Open(self))
    }

    fn refuse(&self) {
        self.refused.inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.warned.load(Ordering::Relaxed);
        if now >= last + 60
            && self
                .warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                max_connections = self.max,
                "server.max_connections are open: new connections are closed unanswered (counted in hookgate_connections_refused_total{{reason=\"max_connections\"}}; logged once a minute)"
            );
        }
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.dec();
        self.0.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Requests in flight, for a shutdown that waits for them and no longer.
#[derive(Default)]
pub(crate) struct Drain {
    in_flight: AtomicUsize,
    idle: Notify,
    /// Set on SIGTERM: answers close their connection.
    draining: AtomicBool,
}

impl Drain {
    /// Stops keeping connections alive, and waits (up to `grace`) until no request is in flight.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.draining.store(true, Ordering::SeqCst);
        let wait = async {
            loop {
                let idle = self.idle.notified();
                if self.in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(grace, wait).await.is_ok()
    }

    /// Whether a shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self)
    }
}

struct InFlight<'a>(&'a Drain);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The largest unread body a refusal reads (and drops) to keep the connection. Closing a socket
/// with unread data makes the kernel send a reset, which can destroy the answer before the client
/// has read it (RFC 9112 §9.6); webhook payloads are a few hundred bytes.
const DRAIN_LIMIT: u64 = 64 * 1024;

/// The first read of a kept-alive connection's next request: pingora's own first header read.
const FIRST_READ: usize = 4096;

/// What became of one request, and whether its connection must close.
struct Decided {
    outcome: Outcome,
    class: Option<EventClass>,
    /// The body was left unread (or the connection is unusable): close after the answer.
    close: bool,
}

impl Decided {
    fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            class: None,
            close: false,
        }
    }

    fn reject(rejection: Rejection, close: bool) -> Self {
        Self {
            outcome: Outcome::Rejected(rejection),
            class: None,
            close,
        }
    }
}

/// The public listener's application.
pub(crate) struct GatewayApp(pub Arc<Gateway>);

#[async_trait]
impl ServerApp for GatewayApp {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let gw = &self.0;
        // Over the limit: closed unanswered (pingora drops the stream).
        let _open = gw.connections.enter()?;
        let mut pipelined: Option<BytesMut> = None;
        let mut reused = false;
        loop {
            // A kept-alive connection idles until the next request's first bytes (up to
            // `idle_timeout`); the header deadline starts there. Those bytes are read here (one
            // read, as the parser would make) and handed to the session as a prefix, like a
            // request read along with the previous one (pipelined), which starts now.
            if reused && pipelined.as_ref().is_none_or(|p| p.is_empty()) {
                let mut first = BytesMut::with_capacity(FIRST_READ);
                let mut stop = shutdown.clone();
                let read = tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => return None,
                    read = tokio::time::timeout(gw.idle_timeout, stream.read_buf(&mut first)) => read,
                };
                match read {
                    Ok(Ok(n)) if n > 0 => pipelined = Some(first),
                    // Idle too long, or closed by the client: nothing to answer.
                    _ => return None,
                }
            }
            let limit = gw.header_timeout;
            let mut session = ServerSession::new_http1(stream);
            // pingora's own per-read timer on a kept-alive connection; ours bounds the whole
            // header, so a trickling client is answered 408.
            session.set_keepalive(Some(gw.idle_timeout.as_secs().max(1)));
            // A client that never reads its answer must not hold a request in flight forever.
            session.set_write_timeout(Some(gw.body_timeout));
            session.set_pipelining_enabled(true);
            if let Some(prefix) = pipelined.take() {
                session.set_pipelined_prefix(prefix);
            }
            let (next, prefix) = gw.serve(session, shutdown, limit).await?.into_parts();
            stream = next;
            pipelined = prefix;
            reused = true;
        }
    }
}

impl Gateway {
    /// One request on `session`: read its head within `limit`, run the pipeline, write the
    /// answer. Returns the connection when it can serve another request.
    async fn serve(
        &self,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
        limit: Duration,
    ) -> Option<pingora::protocols::http::ReusableHttpStream> {
        let mut stop = shutdown.clone();
        let read = tokio::select! {
            biased;
            read = tokio::time::timeout(limit, session.read_request()) => read,
            _ = stop.wait_for(|s| *s) => return None,
        };
        match read {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return None,
            Err(_) => {
                self.refuse_head(&mut session, Rejection::HeaderTimeout)
                    .await;
                return None;
            }
            Ok(Err(e)) if matches!(e.etype, pingora::ErrorType::InvalidHTTPHeader) => {
                // The parser's message may quote the client's bytes: a short prefix of it.
                let context = e.context.as_ref().map(|c| c.as_str()).unwrap_or("invalid");
                let rejection = Rejection::MalformedRequest {
                    detail: cut(context, 120).to_owned(),
                };
                self.refuse_head(&mut session, rejection).await;
                return None;
            }
            // The connection failed mid-header: nobody to answer.
            Ok(Err(_)) => return None,
        }
        let _in_flight = self.drain.enter();
        if *shutdown.borrow() || self.drain.is_draining() {
            session.set_keepalive(None);
        }
        let started = Instant::now();
        let (route, decided) = self.handle(&mut session).await;
        let metrics = route
            .as_ref()
            .map(|r| &r.metrics)
            .unwrap_or(&self.unmatched);
        let name = route.as_ref().map(|r| r.name.as_str()).unwrap_or("");
        record(metrics, name, &decided, peer_ip(&session));
        let close = decided.close;
        if !write_answer(&mut session, decided.outcome.answer(), close).await {
            return None;
        }
        metrics.observe_ack(started.elapsed());
        match session.finish().await {
            Ok(Some(stream)) => Some(stream),
            _ => None,
        }
    }

    /// A head refused before any route is known (timeout, a parser's refusal): answered,
    /// logged and counted as `(none)`, and the connection closed.
    async fn refuse_head(&self, session: &mut ServerSession, rejection: Rejection) {
        let decided = Decided::reject(rejection, true);
        record(&self.unmatched, "", &decided, peer_ip(session));
        // A parser's refusal left no request header to answer; pingora still writes ours.
        write_answer(session, decided.outcome.answer(), true).await;
    }

    /// Steps 1–14 for one request; the route it matched and what became of it.
    async fn handle(&self, session: &mut ServerSession) -> (Option<Arc<Route>>, Decided) {
        let req = session.req_header();
        if let Err(r) = request_head::check_host(req.version, &req.headers) {
            return (None, refuse_unread(session, r, self.body_timeout));
        }
        // The routes as they are now: a reload meanwhile does not change this request's.
        let Some(route) = self.shared.routes.load().get(req.uri.path()).cloned() else {
            let decided = refuse_unread(session, Rejection::RouteNotFound, self.body_timeout);
            return (None, decided);
        };
        let decided = route.handle(self, session).await;
        (Some(route), decided)
    }
}

impl Route {
    async fn handle(&self, gw: &Gateway, session: &mut ServerSession) -> Decided {
        let req = session.req_header();
        // Steps 2–7: nothing of the body is read before the head passes. The address is checked
        // before the method, as in the tower layers: a client outside the allowlist learns nothing.
        let Some(peer) = peer_ip(session) else {
            return Decided::reject(Rejection::PeerAddressUnknown, true);
        };
        let forwarded = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(http::HeaderValue::as_bytes);
        let client = self.clients.resolve(peer, forwarded);
        if client.forwarded_invalid {
            self.metrics.record_forwarded_invalid();
        }
        if let Err(r) = self.allow.check(client.ip) {
            return refuse_unread(session, r, gw.body_timeout);
        }
        // Steps 4–5: a method that is refused anyway is not counted against the client.
        if let Some(limit) = &self.rate_limit {
            if let Err(r) =
                request_head::check_method(&req.method).and_then(|()| limit.check(client.ip))
            {
                return refuse_unread(session, r, gw.body_timeout);
            }
        }
        let declared = match request_head::check(&req.method, &req.headers, self.max_body) {
            Ok(n) => n,
            // Too large: not read, the connection closes.
            Err(r @ Rejection::PayloadTooLarge { .. }) => return Decided::reject(r, true),
            Err(r) => return refuse_unread(session, r, gw.body_timeout),
        };
        // A client that asked to be told before sending the body (curl does for large bodies)
        // would otherwise wait a second or more for nothing.
        if request_head::expects_continue(req.version, &req.headers)
            && session.write_continue_response().await.is_err()
        {
            return Decided::reject(Rejection::BodyReadFailed, true);
        }
        // Step 8.
        let body = match read_body(session, declared, self.max_body, gw.body_timeout).await {
            Ok(body) => body,
            Err(r) => return Decided::reject(r, true),
        };
        // Step 9: over the raw bytes, as received.
        if let Some(signature) = &self.signature {
            if let Err(r) = signature.verify_now(&session.req_header().headers, &body) {
                return Decided::reject(r, false);
            }
        }
        // Steps 10–11.
        let payload = match self.validator.check(&body) {
            Ok(p) => p,
            Err(r) => return Decided::reject(r, false),
        };
        let req = session.req_header();
        // Step 12.
        let key = match self.dedup_key.extract(
            &self.name,
            &req.headers,
            Some(&body),
            Some(&payload.value),
        ) {
            Ok(key) => key,
            Err(r) => return Decided::reject(r, false),
        };
        let answer = gw.dedup.reserve(key, self.dedup_ttl).await;
        let reserved = match Reserved::hold(&gw.dedup, &self.name, key, self.dedup_ttl, answer) {
            Ok(reserved) => reserved,
            Err(outcome) => return Decided::new(outcome),
        };
        let uri = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let event = Event::received(
            &self.name,
            client.ip,
            &req.method,
            uri,
            &req.headers,
            body,
            Some(&reserved),
        );
        let outcome = match self.mode {
            // Steps 13–14.
            Mode::FastAck => {
                self.deliverer
                    .accept_parsed(event, Some(reserved), Some(&payload.value))
                    .await
            }
            // The key is committed only on the upstream's 2xx.
            Mode::Proxy => {
                let outcome = self.forwarder.forward(&event).await;
                reserved.settle(outcome.counted() == Counted::Accepted);
                outcome
            }
        };
        Decided {
            outcome,
            class: payload.class,
            close: false,
        }
    }
}

/// Counts and logs one request's outcome: the one line per decision (DESIGN §7).
fn record(metrics: &RouteMetrics, route: &str, decided: &Decided, client: Option<IpAddr>) {
    let outcome = &decided.outcome;
    let counted = outcome.counted();
    metrics.record(counted, decided.class);
    match (counted, outcome) {
        (Counted::Rejected(reason), _) => tracing::info!(
            route,
            reason = reason.as_str(),
            client = %client.map(|ip| ip.to_string()).unwrap_or_default(),
            event_id = ?outcome.event_id(),
            "request rejected"
        ),
        (Counted::Duplicate, _) => tracing::debug!(route, "duplicate acknowledged"),
        (Counted::Accepted, _) => {
            tracing::debug!(route, event_id = ?outcome.event_id(), "request accepted")
        }
        (Counted::Failed, Outcome::Relayed { answer, event_id }) => tracing::info!(
            route,
            status = answer.status.as_u16(),
            %event_id,
            "upstream refused the event"
        ),
        (Counted::Failed, _) => tracing::info!(route, "request failed"),
    }
}

/// Writes `answer` (with `Connection: close` when `close`); false when the connection is gone
/// or must close.
async fn write_answer(session: &mut ServerSession, answer: Answer, close: bool) -> bool {
    if close {
        session.set_keepalive(None);
    }
    let Ok(mut head) = ResponseHeader::build(answer.status, Some(3 + answer.headers.len())) else {
        return false;
    };
    let length = answer.content_length();
    let mut ok = answer
        .headers
        .into_iter()
        .scan(None, |last, (name, value)| {
            // `HeaderMap::into_iter` names a repeated header once, then gives its values.
            if let Some(name) = name {
                *last = Some(name);
            }
            Some((last.clone(), value))
        })
        .all(|(name, value)| name.is_some_and(|n| head.append_header(n, value).is_ok()));
    if let Some(length) = length {
        ok &= head.insert_header(header::CONTENT_LENGTH, length).is_ok();
    }
    if close {
        ok &= head.insert_header(header::CONNECTION, "close").is_ok();
    }
    ok && session.write_response_header(Box::new(head)).await.is_ok()
        && session.write_response_body(answer.body, true).await.is_ok()
        && !close
}

fn peer_ip(session: &ServerSession) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// A refusal before the body was read. A small body with a declared length is read and dropped
/// after the answer is written (pingora drains it when the connection is reused, here within
/// `drain_within`), so the client reads the answer instead of a reset and keeps its connection.
/// A larger or chunked body, or one the client holds back for `100 Continue`, closes the
/// connection instead: the refused request costs no more than `DRAIN_LIMIT` bytes.
fn refuse_unread(
    session: &mut ServerSession,
    rejection: Rejection,
    drain_within: Duration,
) -> Decided {
    let req = session.req_header();
    let headers = &req.headers;
    // The declared length by the rule of step 6; an unreadable one (`None` though present) is
    // not drained.
    let small = match request_head::check_content_length(headers, DRAIN_LIMIT) {
        Ok(declared) => declared.is_some() || !headers.contains_key(header::CONTENT_LENGTH),
        Err(_) => false,
    };
    let drain = small
        && !headers.contains_key(header::TRANSFER_ENCODING)
        && !request_head::expects_continue(req.version, headers);
    if drain {
        // Answer now, without pingora's `Connection: close` for an unread body; `finish` drains.
        session.set_close_on_response_before_downstream_finish(false);
        session.set_total_drain_timeout(Some(drain_within));
    }
    Decided::reject(rejection, !drain)
}

/// Reads the whole body within `deadline`, refusing it once it passes `limit` bytes.
async fn read_body(
    session: &mut ServerSession,
    declared: Option<u64>,
    limit: u64,
    deadline: Duration,
) -> Result<Bytes, Rejection> {
    let capacity = usize::try_from(declared.unwrap_or(0).min(limit)).unwrap_or(0);
    let read = async {
        // A body usually arrives as one chunk: keep it as is, copy only when a second comes.
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        let mut total = 0u64;
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    total += chunk.len() as u64;
                    if total > limit {
                        return Err(Rejection::PayloadTooLarge { limit });
                    }
                    if first.is_none() && buf.is_empty() {
                        first = Some(chunk);
                    } else {
                        if let Some(f) = first.take() {
                            buf.reserve(capacity.max(f.len() + chunk.len()));
                            buf.extend_from_slice(&f);
                        }
                        buf.extend_from_slice(&chunk);
                    }
                }
                Ok(None) => return Ok(first.unwrap_or_else(|| buf.freeze())),
                Err(e) => return Err(body_error(&e)),
            }
        }
    };
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or(Err(Rejection::RequestTimeout))
}

fn body_error(e: &pingora::Error) -> Rejection {
    if matches!(e.etype, pingora::ErrorType::ReadTimedout) {
        Rejection::RequestTimeout
    } else {
        Rejection::BodyReadFailed
    }
}

/// Drops connections from outside every route's allowlist before any byte is read (and before
/// TLS), when no route believes `X-Forwarded-For` (the peer is then the client).
#[derive(Debug)]
pub(crate) struct PeerFilter {
    pub shared: Arc<super::Shared>,
    pub refused: prometheus::IntCounter,
}

#[async_trait]
impl ConnectionFilter for PeerFilter {
    async fn should_accept(&self, addr: Option<&std::net::SocketAddr>) -> bool {
        let Some(addr) = addr else {
            return true; // not an IP connection: the per-request check decides
        };
        let routes = self.shared.routes.load();
        // A reload that made a route trust a proxy turns the filter off: the peer is the proxy.
        if routes.values().any(|r| r.clients.trusts_proxies()) {
            return true;
        }
        let ip = addr.ip().to_canonical();
        let ok = routes.values().any(|r| r.allow.contains(ip));
        if !ok {
            self.refused.inc();
            tracing::info!(client = %ip, reason = "ip_not_allowed", "connection refused");
        }
        ok
    }
}
