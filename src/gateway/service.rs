//! The public listener: DESIGN §2's pipeline over pingora sessions, each step a call into
//! [`crate::core`] (the same functions the tower layers call).
//!
//! It is a pingora [`HttpServerApp`] rather than a `ProxyHttp`: `ProxyHttp` reads the request
//! header inside pingora with no deadline of ours, so a slow-header client could neither be timed
//! out nor answered 408, and the gateway never uses pingora's upstream path anyway (a body read
//! to validate it cannot be proxied, DESIGN §9; both modes forward with the delivery client).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, StatusCode};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::listeners::ConnectionFilter;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;

use crate::core::ack::{received_body, DUPLICATE_BODY};
use crate::core::{
    request_head, Allowlist, ClientIpResolver, DedupKey, DedupKeySpec, Rejection, Validator,
};
use crate::deliver::{end_to_end_headers, forwardable_headers, Deliverer, HttpTarget};
use crate::metrics::RouteMetrics;
use crate::store::{now_ms, DedupStore, Event, MemoryDedupStore, Reservation, Spool, SpoolError};
use crate::tower::rejection_response;

use super::config::Mode;

/// One configured route, ready to serve.
pub(crate) struct Route {
    pub name: String,
    pub mode: Mode,
    pub allow: Allowlist,
    pub clients: ClientIpResolver,
    pub validator: Validator,
    pub dedup_key: DedupKeySpec,
    pub dedup_ttl: Duration,
    pub max_body: u64,
    pub upstream: HttpTarget,
    pub deliverer: Deliverer,
    pub metrics: RouteMetrics,
}

/// What the public listener shares across connections.
pub(crate) struct Gateway {
    pub routes: HashMap<String, Arc<Route>>,
    pub spool: Arc<dyn Spool>,
    pub dedup: Arc<MemoryDedupStore>,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    /// Requests for no route are counted here.
    pub unmatched: RouteMetrics,
}

/// The largest unread body a refusal reads (and drops) to keep the connection. Closing a socket
/// with unread data makes the kernel send a reset, which can destroy the answer before the client
/// has read it (RFC 9112 §9.6); webhook payloads are a few hundred bytes.
const DRAIN_LIMIT: u64 = 64 * 1024;

/// Marks a connection that has served a request (its next header wait is a keep-alive wait).
struct Served;

/// The answer to one request.
struct Answer {
    status: StatusCode,
    body: Bytes,
    /// `application/json` for the gateway's own answers; the upstream's in `proxy` mode.
    content_type: Option<HeaderValue>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    /// Close the connection after the answer (the body was not read to its end).
    close: bool,
    rejection: Option<Rejection>,
    duplicate: bool,
    event_id: Option<uuid::Uuid>,
    class: Option<crate::core::EventClass>,
}

impl Answer {
    fn json(status: StatusCode, body: Bytes) -> Self {
        Self {
            status,
            body,
            content_type: Some(HeaderValue::from_static("application/json")),
            headers: Vec::new(),
            close: false,
            rejection: None,
            duplicate: false,
            event_id: None,
            class: None,
        }
    }

    /// A refusal (as [`rejection_response`] writes it for the layers: status, JSON body, `Allow`,
    /// `Retry-After`); `close` when the request body was left unread.
    fn reject(rejection: Rejection, close: bool) -> Self {
        let (mut parts, body) = rejection_response::<Bytes>(rejection).into_parts();
        let content_type = parts.headers.remove(header::CONTENT_TYPE);
        Self {
            status: parts.status,
            body,
            content_type,
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            close,
            rejection: parts.extensions.remove::<Rejection>(),
            duplicate: false,
            event_id: None,
            class: None,
        }
    }
}

/// A dedup reservation released on drop unless committed: a cancelled request (shutdown, a
/// vanished client) never blocks the sender's retry.
struct Reserved<'a> {
    store: &'a MemoryDedupStore,
    key: DedupKey,
    ttl: Duration,
    armed: bool,
}

impl Reserved<'_> {
    fn commit(mut self) {
        self.armed = false;
        self.store.commit(self.key, self.ttl);
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.store.release(self.key);
        }
    }
}

/// The public listener's application.
pub(crate) struct GatewayApp(pub Arc<Gateway>);

#[async_trait]
impl HttpServerApp for GatewayApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let gw = &self.0;
        let reused = session.take_connection_user_context().is_some();
        // pingora's own per-read keep-alive timer closes a connection that sends nothing for
        // `idle_timeout`; ours bounds the whole header, so a trickling client is answered 408.
        session.set_keepalive(Some(gw.idle_timeout.as_secs().max(1)));
        let limit = if reused {
            gw.idle_timeout + gw.header_timeout
        } else {
            gw.header_timeout
        };
        let mut stop = shutdown.clone();
        let read = tokio::select! {
            biased;
            read = tokio::time::timeout(limit, session.read_request()) => read,
            _ = stop.wait_for(|s| *s) => return None,
        };
        match read {
            Err(_) => {
                tracing::info!(
                    reason = "request_timeout",
                    "request header not received in time"
                );
                gw.unmatched
                    .record_rejected(Rejection::RequestTimeout.reason());
                write_answer(
                    &mut session,
                    Answer::reject(Rejection::RequestTimeout, true),
                )
                .await;
                return None;
            }
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return None,
            Ok(Err(e)) => {
                if matches!(e.etype, pingora::ErrorType::InvalidHTTPHeader) {
                    let _ = session.respond_error(400).await;
                }
                return None;
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        let started = Instant::now();
        let (route, answer) = gw.handle(&mut session).await;
        let metrics = route.map(|r| &r.metrics).unwrap_or(&gw.unmatched);
        let name = route.map(|r| r.name.as_str()).unwrap_or("");
        if let Some(rejection) = &answer.rejection {
            metrics.record_rejected(rejection.reason());
            tracing::info!(
                route = name,
                status = answer.status.as_u16(),
                reason = rejection.reason().as_str(),
                client = %peer_ip(&session).map(|ip| ip.to_string()).unwrap_or_default(),
                "request rejected"
            );
        } else if answer.duplicate {
            metrics.record_duplicate();
            tracing::debug!(route = name, "duplicate acknowledged");
        } else if answer.status.is_success() {
            metrics.record_accepted(answer.class);
            tracing::debug!(route = name, event_id = ?answer.event_id, "event accepted");
        } else {
            metrics.record_failed();
            tracing::info!(route = name, status = answer.status.as_u16(), event_id = ?answer.event_id, "upstream refused the event");
        }
        if !write_answer(&mut session, answer).await {
            return None;
        }
        metrics.observe_ack(started.elapsed());
        let mut settings = HttpPersistentSettings::for_session(&session);
        settings.set_user_context(Box::new(Served));
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }
}

/// Writes `answer`; false when the connection is gone or must close.
async fn write_answer(session: &mut ServerSession, answer: Answer) -> bool {
    if answer.close {
        session.set_keepalive(None);
    }
    let Ok(mut head) = ResponseHeader::build(answer.status, Some(4 + answer.headers.len())) else {
        return false;
    };
    let ok = answer
        .content_type
        .is_none_or(|ct| head.insert_header(header::CONTENT_TYPE, ct).is_ok())
        && head
            .insert_header(header::CONTENT_LENGTH, answer.body.len())
            .is_ok()
        && answer
            .headers
            .into_iter()
            .all(|(name, value)| head.insert_header(name, value).is_ok());
    if !ok {
        return false;
    }
    if answer.close {
        let _ = head.insert_header(header::CONNECTION, "close");
    }
    session.write_response_header(Box::new(head)).await.is_ok()
        && session.write_response_body(answer.body, true).await.is_ok()
        && !answer.close
}

fn peer_ip(session: &ServerSession) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

impl Gateway {
    /// Steps 1–14 for one request; the route it matched and the answer.
    async fn handle(&self, session: &mut ServerSession) -> (Option<&Route>, Answer) {
        let req = session.req_header();
        let Some(route) = self.routes.get(req.uri.path()) else {
            let answer = refuse_unread(session, Rejection::RouteNotFound, self.body_timeout);
            return (None, answer);
        };
        (Some(route), route.handle(self, session).await)
    }
}

impl Route {
    async fn handle(&self, gw: &Gateway, session: &mut ServerSession) -> Answer {
        let req = session.req_header();
        // Steps 2–7: nothing of the body is read before the head passes. The address is checked
        // before the method, as in the tower layers: a client outside the allowlist learns nothing.
        let Some(peer) = peer_ip(session) else {
            return Answer::reject(Rejection::PeerAddressUnknown, true);
        };
        let forwarded = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(HeaderValue::as_bytes);
        let client = self.clients.resolve(peer, forwarded);
        if client.forwarded_invalid {
            self.metrics.record_forwarded_invalid();
        }
        if let Err(r) = self.allow.check(client.ip) {
            return refuse_unread(session, r, gw.body_timeout);
        }
        if let Err(r) = request_head::check_method(&req.method) {
            return refuse_unread(session, r, gw.body_timeout);
        }
        let declared = match request_head::check_content_length(&req.headers, self.max_body) {
            Ok(n) => n,
            Err(r) => return Answer::reject(r, true),
        };
        if let Err(r) = request_head::check_content_type(&req.headers) {
            return refuse_unread(session, r, gw.body_timeout);
        }
        // A client that asked to be told before sending the body (curl does for large bodies)
        // would otherwise wait a second or more for nothing.
        if expects_continue(&req.headers) && session.write_continue_response().await.is_err() {
            return Answer::reject(Rejection::BodyReadFailed, true);
        }
        // Step 8.
        let body = match read_body(session, declared, self.max_body, gw.body_timeout).await {
            Ok(body) => body,
            Err(r) => return Answer::reject(r, true),
        };
        // Steps 10–11.
        let payload = match self.validator.check(&body) {
            Ok(p) => p,
            Err(r) => return Answer::reject(r, false),
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
            Err(r) => return Answer::reject(r, false),
        };
        match gw.dedup.reserve(key, self.dedup_ttl).await {
            Ok(Reservation::Reserved) => {}
            Ok(Reservation::Duplicate) => {
                let mut answer = Answer::json(StatusCode::OK, Bytes::from_static(DUPLICATE_BODY));
                answer.duplicate = true;
                return answer;
            }
            Ok(Reservation::InFlight) => {
                return Answer::reject(Rejection::DuplicateInFlight, false)
            }
            Err(_) => return Answer::reject(Rejection::DedupUnavailable, false),
        }
        let reserved = Reserved {
            store: &gw.dedup,
            key,
            ttl: self.dedup_ttl,
            armed: true,
        };
        let uri = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let event = Event::new(
            self.name.as_str(),
            client.ip,
            req.method.as_str(),
            uri,
            forwardable_headers(&req.headers),
            body,
        );
        let mut answer = match self.mode {
            Mode::FastAck => self.spool(gw, event, reserved).await,
            Mode::Proxy => self.forward(event, reserved).await,
        };
        answer.class = payload.class;
        answer
    }

    /// Steps 13–14: durable, then acknowledged.
    async fn spool(&self, gw: &Gateway, event: Event, reserved: Reserved<'_>) -> Answer {
        let ttl_ms = u64::try_from(self.dedup_ttl.as_millis()).unwrap_or(u64::MAX);
        let event = event.with_dedup(reserved.key, now_ms().saturating_add(ttl_ms));
        match gw.spool.append(&event).await {
            Ok(()) => {
                reserved.commit();
                let id = event.id;
                self.deliverer.schedule_new(event);
                let mut answer = Answer::json(StatusCode::OK, received_body(id));
                answer.event_id = Some(id);
                answer
            }
            Err(SpoolError::Full(why)) => {
                tracing::warn!(route = %self.name, %why, "spool full: answering 503");
                Answer::reject(Rejection::SpoolFull, false)
            }
            Err(e) => {
                tracing::error!(route = %self.name, error = %e, "spool append failed: answering 503");
                Answer::reject(Rejection::SpoolUnavailable, false)
            }
        }
    }

    /// `proxy` mode: forward now and relay the upstream's answer; the key is committed on 2xx.
    async fn forward(&self, event: Event, reserved: Reserved<'_>) -> Answer {
        let id = event.id;
        let response = match self.upstream.send(&event).await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                tracing::warn!(route = %self.name, event_id = %id, "upstream timed out");
                return Answer::reject(Rejection::UpstreamTimeout, false);
            }
            Err(e) => {
                tracing::warn!(route = %self.name, event_id = %id, error = %e, "upstream unreachable");
                return Answer::reject(Rejection::UpstreamUnavailable, false);
            }
        };
        let status = response.status();
        let headers = end_to_end_headers(response.headers())
            .filter(|(name, _)| **name != header::CONTENT_TYPE)
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(route = %self.name, event_id = %id, error = %e, "upstream failed mid-answer");
                return Answer::reject(Rejection::UpstreamUnavailable, false);
            }
        };
        if status.is_success() {
            reserved.commit();
        }
        let mut answer = Answer::json(status, body);
        answer.event_id = Some(id);
        answer.headers = headers;
        answer.content_type = content_type;
        answer
    }
}

fn expects_continue(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
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
) -> Answer {
    let headers = &session.req_header().headers;
    // The declared length by the rule of step 6; an unreadable one (`None` though present) is
    // not drained.
    let small = match request_head::check_content_length(headers, DRAIN_LIMIT) {
        Ok(declared) => declared.is_some() || !headers.contains_key(header::CONTENT_LENGTH),
        Err(_) => false,
    };
    let drain =
        small && !headers.contains_key(header::TRANSFER_ENCODING) && !expects_continue(headers);
    if drain {
        // Answer now, without pingora's `Connection: close` for an unread body; `finish` drains.
        session.set_close_on_response_before_downstream_finish(false);
        session.set_total_drain_timeout(Some(drain_within));
    }
    Answer::reject(rejection, !drain)
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
    pub allow: Vec<Allowlist>,
    pub refused: prometheus::IntCounter,
}

#[async_trait]
impl ConnectionFilter for PeerFilter {
    async fn should_accept(&self, addr: Option<&std::net::SocketAddr>) -> bool {
        let Some(addr) = addr else {
            return true; // not an IP connection: the per-request check decides
        };
        let ip = addr.ip().to_canonical();
        let ok = self.allow.iter().any(|a| a.contains(ip));
        if !ok {
            self.refused.inc();
            tracing::info!(client = %ip, reason = "ip_not_allowed", "connection refused");
        }
        ok
    }
}
