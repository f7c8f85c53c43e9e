//! The admin listener: metrics, health, readiness and the dead letters.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /metrics` | Prometheus text: the pipeline's, the deliveries' and the gateway's metrics |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when the spool commits and is below its bounds, else 503 |
//! | `GET /dead-letters[?route=NAME&limit=N&after=ID]` | the dead letters, oldest first, a page at a time (bodies not read) |
//! | `GET /dead-letters/{id}` | one dead letter, with its body |
//! | `POST /dead-letters/{id}/replay` | moves one back to delivery |
//! | `POST /dead-letters/replay[?route=NAME]` | moves all (of a route) back |
//! | `DELETE /dead-letters/{id}` | deletes one |
//! | `DELETE /dead-letters[?route=NAME]` | deletes all (of a route) |
//! | `GET /events?route=&status=&since=&until=&key=&where=&order=&limit=&after=` | a page of the event history ([`crate::history`]) |
//! | `GET /events/{id}` | one event: headers, body, attempts |
//! | `POST /events/{id}/replay[?destination=NAME]` | sends it again (to every destination it went to, or one) |
//! | `POST /replays` (the filters and `rate`, as a query or a JSON body) | starts a replay job: 202 `{"id", "matched"}` |
//! | `GET /replays`, `GET /replays/{id}` | replay jobs and their progress |
//! | `DELETE /replays/{id}` | cancels one |
//! | `GET /destinations` | every route's destinations: paused, circuit, queued |
//! | `POST /destinations/{route}/{name}/pause`, `.../resume` | pauses (events wait) or resumes a destination |
//!
//! A route's name may hold `/` (it defaults to its path): write it percent-encoded
//! (`/destinations/%2Fhooks%2Fstripe/app/pause`) or as it is (`/destinations//hooks/stripe/app/pause`).
//! The dead-letter paths are the history's `status=dead` view, kept for the tools that use
//! them.
//!
//! With `admin_token` set, every request but `/metrics`, `/healthz` and `/readyz` needs
//! `Authorization: Bearer <token>` (401 otherwise).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::{header, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::deliver::Deliverer;
use crate::history::{HistoryError, Params};
use crate::store::{Event, EventSummary, Spool, SpoolError};

/// The admin application.
pub(crate) struct Admin {
    pub registry: prometheus::Registry,
    /// The admin token, the deliverers by route name (both swapped by a reload).
    pub shared: Arc<super::Shared>,
    /// Where `POST /reload` asks the reload service.
    pub reload: tokio::sync::mpsc::UnboundedSender<super::reload::ReloadRequest>,
    pub spool: Arc<dyn Spool>,
    pub max_events: u64,
    pub max_bytes: u64,
    /// Set on SIGTERM: not ready any more, so a balancer moves on.
    pub drain: Arc<super::service::Drain>,
}

/// A dead letter as the admin API lists it.
#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    /// The event id (also `X-Hookgate-Event-Id` of every attempt).
    pub id: Uuid,
    /// The route.
    pub route: &'a str,
    /// The destination where it is dead.
    pub destination: &'a str,
    /// When it was acknowledged, RFC 3339.
    pub received_at: String,
    /// The client address.
    pub client_ip: String,
    /// Attempts made.
    pub attempts: u32,
    /// The newest attempts, oldest first.
    pub history: Vec<Attempt<'a>>,
    /// The body's size in bytes.
    pub body_bytes: usize,
}

/// One attempt in a dead letter's history.
#[derive(Debug, Serialize)]
pub struct Attempt<'a> {
    /// When it ended, RFC 3339.
    pub at: String,
    /// What happened.
    pub outcome: &'a str,
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

impl<'a> DeadLetter<'a> {
    fn new(e: &'a EventSummary) -> Self {
        let at = e.destinations.first();
        Self {
            id: e.id,
            route: &e.route,
            destination: at.map_or(crate::store::DEFAULT_DESTINATION, |d| d.name.as_str()),
            received_at: rfc3339(e.received_ms),
            client_ip: e.client_ip.to_string(),
            attempts: e.attempts,
            history: at
                .map(|d| d.history.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|a| Attempt {
                    at: rfc3339(a.at_ms),
                    outcome: &a.outcome,
                })
                .collect(),
            body_bytes: e.body_bytes,
        }
    }
}

/// One dead letter as `GET /dead-letters/{id}` shows it: the listing's fields, the request's
/// method, URI and headers, and its body (as UTF-8, lossily).
#[derive(Debug, Serialize)]
struct DeadLetterShown<'a> {
    #[serde(flatten)]
    listed: DeadLetter<'a>,
    method: &'a str,
    uri: &'a str,
    headers: Vec<(&'a str, String)>,
    body: String,
}

/// The most dead letters one page lists.
const MAX_PAGE: usize = 10_000;

/// A client's text, cut short before it is echoed in an error.
fn quoted(text: &str) -> String {
    let shown = crate::core::cut(text, 40);
    if shown.len() < text.len() {
        format!("{shown:?}… ({} bytes)", text.len())
    } else {
        format!("{text:?}")
    }
}

/// An answer given instead of a result (boxed: a response is large).
type Refusal = Box<Response<Vec<u8>>>;

fn parse_id(text: &str) -> Result<Uuid, Refusal> {
    Uuid::parse_str(text).map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{} is not an event id", quoted(text)),
        ))
    })
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

fn error(status: StatusCode, reason: &str, detail: impl Into<String>) -> Response<Vec<u8>> {
    json(
        status,
        &serde_json::json!({ "error": reason, "detail": detail.into() }),
    )
}

fn no_route(name: &str) -> Response<Vec<u8>> {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route named {name:?}"),
    )
}

fn spool_error(e: SpoolError) -> Response<Vec<u8>> {
    match e {
        SpoolError::NotFound(id) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dead letter {id}"),
        ),
        e => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "spool_unavailable",
            e.to_string(),
        ),
    }
}

/// Whether the request's `Host` is an IP address or `localhost` (or absent, as from HTTP/1.0
/// tools): a page that rebinds its own DNS name to the loopback address sends its name instead.
fn addressed_directly(headers: &http::HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.eq_ignore_ascii_case("localhost.")
        || name.parse::<std::net::IpAddr>().is_ok()
}

/// Why a request that changes something (a replay, a purge) is refused, if it is: a web page's
/// (a cross-site form or script aimed at the loopback admin port carries `Origin`, or a
/// `Sec-Fetch-Site` other than `none`), or one without `Content-Type: application/json` (which
/// a form cannot send, and a script cannot send cross-origin without a preflight this API never
/// answers). The CLI and curl send neither browser header.
fn refuse_mutation(headers: &http::HeaderMap) -> Option<Response<Vec<u8>>> {
    let fetch_site = headers
        .get("sec-fetch-site")
        .map(|v| v.to_str().unwrap_or("?"));
    if headers.contains_key(header::ORIGIN) || fetch_site.is_some_and(|s| s != "none") {
        return Some(error(
            StatusCode::FORBIDDEN,
            "cross_site_request",
            "the admin API does not take changes from web pages (Origin or Sec-Fetch-Site sent); use the CLI or curl",
        ));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|m| m.essence_str() == "application/json");
    if !json {
        return Some(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "json_required",
            "a request that replays or purges needs Content-Type: application/json (a body of {} will do)",
        ));
    }
    None
}

/// The most bytes of a request body the admin API reads (`POST /replays`' parameters).
const MAX_BODY: usize = 64 << 10;

/// The request's body, at most [`MAX_BODY`] (413 beyond).
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Refusal> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    let _ = session.drain_request_body().await;
                    return Err(Box::new(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!("an admin request's body is at most {MAX_BODY} bytes"),
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(Box::new(error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("cannot read the request body: {e}"),
                )))
            }
        }
    }
}

/// The parameters in a JSON body (none for an empty one or `{}`).
fn body_params(body: &[u8]) -> Result<Params, HistoryError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Params::default());
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| HistoryError::bad_request(format!("the body is not JSON: {e}")))?;
    Params::from_json(&value)
}

fn history_error(e: &HistoryError) -> Response<Vec<u8>> {
    json(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.body(),
    )
}

/// The history's answer: `ok` with its JSON, or its error.
fn answer(result: Result<serde_json::Value, HistoryError>, ok: StatusCode) -> Response<Vec<u8>> {
    match result {
        Ok(v) => json(ok, &v),
        Err(e) => history_error(&e),
    }
}

/// `?a=b&c=d` into pairs (values percent-decoded).
fn query(q: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // Only `POST /replays` reads a body (its parameters, bounded); what any other request
        // sent is read and dropped, which keeps the connection usable.
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(res) => return *res,
        };
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_owned();
        let params = query(req.uri.query());
        let authorization = req.headers.get(header::AUTHORIZATION).cloned();
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => return self.metrics(),
            ("GET", "/healthz") => {
                return json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
            }
            ("GET", "/readyz") => return self.ready().await,
            _ => {}
        }
        let token = self.shared.admin_token.load_full();
        if token.is_none() && !addressed_directly(&req.headers) {
            return error(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                "without server.admin_token the admin API answers only requests addressed to an IP address or localhost (a web page rebinding its own name to this address must not read it)",
            );
        }
        if let Some(token) = token.as_ref() {
            let given = authorization
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
                let mut res = error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "send Authorization: Bearer <admin_token>",
                );
                res.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
                return res;
            }
        }
        if matches!(method, Method::POST | Method::DELETE) {
            if let Some(refusal) = refuse_mutation(&req.headers) {
                return refusal;
            }
        }
        let route = params.get("route").map(String::as_str);
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (Method::GET, ["dead-letters"]) => {
                let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
                    None => 1000,
                    Some(Ok(n)) => n.min(MAX_PAGE),
                    Some(Err(_)) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            "limit must be a number",
                        )
                    }
                };
                let after = match params.get("after").map(|a| parse_id(a)).transpose() {
                    Ok(after) => after,
                    Err(res) => return *res,
                };
                self.list(route, limit, after)
            }
            (Method::GET, ["dead-letters", id]) => self.show(id),
            (Method::POST, ["dead-letters", "replay"]) => {
                self.all(route, |d| Box::pin(async move { d.replay_all().await }))
                    .await
            }
            (Method::DELETE, ["dead-letters"]) => {
                self.all(route, |d| Box::pin(async move { d.purge_all().await }))
                    .await
            }
            (Method::POST, ["reload"]) => {
                let force = params.get("force").is_some_and(|f| f == "true" || f == "1");
                self.reload(force).await
            }
            (Method::GET, ["destinations"]) => self.destinations(),
            (Method::POST, ["destinations", ..]) => self.pause(&path).await,
            (Method::GET, ["events"]) => {
                let p = Params::from_query(req.uri.query().unwrap_or(""));
                answer(self.shared.history.events(&p).await, StatusCode::OK)
            }
            (Method::GET, ["events", id]) => {
                answer(self.shared.history.event(id).await, StatusCode::OK)
            }
            (Method::POST, ["events", id, "replay"]) => {
                let mut destination = params.get("destination").cloned();
                match body_params(&body) {
                    Ok(p) => {
                        if let Some(d) = p.get("destination") {
                            destination = Some(d.to_owned());
                        }
                    }
                    Err(e) => return history_error(&e),
                }
                answer(
                    self.shared.history.replay(id, destination.as_deref()).await,
                    StatusCode::OK,
                )
            }
            (Method::POST, ["replays"]) => {
                let mut p = Params::from_query(req.uri.query().unwrap_or(""));
                match body_params(&body) {
                    Ok(more) => p.0.extend(more.0),
                    Err(e) => return history_error(&e),
                }
                answer(
                    self.shared.history.start_replay(&p).await,
                    StatusCode::ACCEPTED,
                )
            }
            (Method::GET, ["replays"]) => {
                answer(self.shared.history.replays().await, StatusCode::OK)
            }
            (Method::GET, ["replays", id]) => {
                answer(self.shared.history.replay_job(id).await, StatusCode::OK)
            }
            (Method::DELETE, ["replays", id]) => {
                answer(self.shared.history.cancel_replay(id).await, StatusCode::OK)
            }
            (Method::POST, ["dead-letters", id, "replay"]) => self.one(id, true).await,
            (Method::DELETE, ["dead-letters", id]) => self.one(id, false).await,
            (
                _,
                ["metrics" | "healthz" | "readyz" | "reload" | "events" | "replays" | "destinations"],
            )
            | (_, ["destinations", ..])
            | (_, ["events", _])
            | (_, ["events", _, "replay"])
            | (_, ["replays", _])
            | (_, ["dead-letters"])
            | (_, ["dead-letters", "replay"])
            | (_, ["dead-letters", _, "replay"])
            | (_, ["dead-letters", _]) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "see the admin API in the README",
            ),
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }
}

/// How long `/readyz` waits for the spool's probe: a writer busy with a long copy answers
/// "not ready" rather than hold the balancer's check.
const PROBE_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The probe's failure, or its not answering within `within`; `None` when it committed.
async fn probe_within(
    probe: crate::store::Completion,
    within: std::time::Duration,
) -> Option<String> {
    match tokio::time::timeout(within, probe).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {} ms", within.as_millis())),
    }
}

type AllFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, SpoolError>> + Send + 'a>>;

impl Admin {
    fn metrics(&self) -> Response<Vec<u8>> {
        let (content_type, body) = match crate::metrics::render(&self.registry) {
            Ok((content_type, text)) => (content_type, text.into_bytes()),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "metrics", e.to_string()),
        };
        Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }

    async fn ready(&self) -> Response<Vec<u8>> {
        let stats = self.spool.stats();
        let health = self.spool.health();
        let held = stats.pending + stats.dead;
        let problem = if self.drain.is_draining() {
            Some("shutting down".to_owned())
        } else if held >= self.max_events {
            Some(format!("the spool holds {held} events, its bound"))
        } else if stats.bytes >= self.max_bytes {
            Some(format!("the spool holds {} bytes, its bound", stats.bytes))
        } else if let Some(why) = &health.refusing {
            Some(format!("new events are refused: {why}"))
        } else {
            probe_within(self.spool.probe(), PROBE_WITHIN)
                .await
                .map(|e| format!("the spool cannot commit: {e}"))
        };
        // Paused destinations are information, not a reason to be unready: their events are
        // acknowledged and wait.
        let paused: Vec<serde_json::Value> = self
            .all_deliverers()
            .iter()
            .flat_map(|d| {
                d.status()
                    .into_iter()
                    .filter(|s| s.paused)
                    .map(|s| serde_json::json!({ "route": d.route(), "destination": s.name }))
                    .collect::<Vec<_>>()
            })
            .collect();
        let body = serde_json::json!({
            "status": if problem.is_some() { "not_ready" } else { "ready" },
            "detail": problem,
            "paused": paused,
            "spool": { "pending": stats.pending, "dead": stats.dead, "bytes": stats.bytes },
            "store": {
                "writable": health.refusing.is_none(),
                "free_bytes": health.free_bytes,
                "min_free_bytes": health.min_free_bytes,
                "reopened": health.reopened,
                "rebuilt": health.rebuilt,
            },
        });
        let status = if problem.is_some() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        json(status, &body)
    }

    /// The deliverers `route` names (all of them without one), by route name.
    fn routes(&self, route: Option<&str>) -> Result<Vec<Deliverer>, Refusal> {
        let deliverers = self.shared.deliverers.load();
        match route {
            None => {
                let mut all: Vec<Deliverer> = deliverers.values().cloned().collect();
                all.sort_by(|a, b| a.route().cmp(b.route()));
                Ok(all)
            }
            Some(name) => match deliverers.get(name) {
                Some(d) => Ok(vec![d.clone()]),
                None => Err(Box::new(no_route(name))),
            },
        }
    }

    fn list(&self, route: Option<&str>, limit: usize, after: Option<Uuid>) -> Response<Vec<u8>> {
        let deliverers = match self.routes(route) {
            Ok(d) => d,
            Err(res) => return *res,
        };
        // Each route's page, merged by id (UUIDv7: by time), so a page spans routes in order.
        let mut page: Vec<EventSummary> = Vec::new();
        for d in deliverers {
            match d.dead_letters(after, limit) {
                Ok(mut some) => page.append(&mut some),
                Err(e) => return spool_error(e),
            }
        }
        page.sort_by_key(|d| d.id);
        page.truncate(limit);
        let items: Vec<DeadLetter<'_>> = page.iter().map(DeadLetter::new).collect();
        let next = (items.len() == limit)
            .then(|| items.last().map(|d| d.id))
            .flatten();
        json(
            StatusCode::OK,
            &serde_json::json!({ "count": items.len(), "dead_letters": items, "next_after": next }),
        )
    }

    /// The dead letter `id` (whichever route's) and its route's deliverer.
    fn find(&self, id: Uuid) -> Result<(Event, Deliverer), Refusal> {
        for d in self.shared.deliverers.load().values() {
            match d.dead_letter(id) {
                Ok(Some(e)) => return Ok((e, d.clone())),
                Ok(None) => {}
                Err(e) => return Err(Box::new(spool_error(e))),
            }
        }
        Err(Box::new(spool_error(SpoolError::NotFound(id))))
    }

    fn show(&self, id: &str) -> Response<Vec<u8>> {
        let event = match parse_id(id).and_then(|id| self.find(id)) {
            Ok((e, _)) => e,
            Err(res) => return *res,
        };
        let summary = EventSummary::of(&event, crate::store::DeliveryStatus::Dead);
        let shown = DeadLetterShown {
            listed: DeadLetter::new(&summary),
            method: &event.method,
            uri: &event.uri,
            headers: event
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            body: String::from_utf8_lossy(&event.body).into_owned(),
        };
        match serde_json::to_value(&shown) {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }

    async fn all<F>(&self, route: Option<&str>, op: F) -> Response<Vec<u8>>
    where
        F: for<'a> Fn(&'a Deliverer) -> AllFuture<'a>,
    {
        let deliverers = match self.routes(route) {
            Ok(d) => d,
            Err(res) => return *res,
        };
        let mut count = 0;
        for d in &deliverers {
            match op(d).await {
                Ok(n) => count += n,
                Err(e) => return spool_error(e),
            }
        }
        json(StatusCode::OK, &serde_json::json!({ "count": count }))
    }

    /// Every route's deliverer (the running configuration's), by route name.
    fn all_deliverers(&self) -> Vec<Deliverer> {
        let routes = self.shared.routes.load();
        let mut all: Vec<Deliverer> = routes.values().map(|r| r.deliverer.clone()).collect();
        all.sort_by(|a, b| a.route().cmp(b.route()));
        all
    }

    /// `GET /destinations`: every route's destinations and what each is doing.
    fn destinations(&self) -> Response<Vec<u8>> {
        let list: Vec<serde_json::Value> = self
            .all_deliverers()
            .iter()
            .flat_map(|d| {
                d.status()
                    .into_iter()
                    .map(|s| {
                        serde_json::json!({
                            "route": d.route(),
                            "name": s.name,
                            "paused": s.paused,
                            "circuit": if s.circuit_open { "open" } else { "closed" },
                            "scheduled": s.scheduled,
                            "order_keys": s.order_keys,
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        json(StatusCode::OK, &serde_json::json!({ "destinations": list }))
    }

    /// `POST /destinations/{route}/{name}/pause|resume`.
    async fn pause(&self, path: &str) -> Response<Vec<u8>> {
        let usage = || {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "POST /destinations/{route}/{destination}/pause or /resume (a route's name percent-encoded)",
            )
        };
        let Some(rest) = path.strip_prefix("/destinations/") else {
            return usage();
        };
        let Some((rest, action)) = rest.rsplit_once('/') else {
            return usage();
        };
        let Some((route, name)) = rest.rsplit_once('/') else {
            return usage();
        };
        let pause = match action {
            "pause" => true,
            "resume" => false,
            _ => return usage(),
        };
        let route: String = url::form_urlencoded::parse(route.replace('+', "%2B").as_bytes())
            .map(|(k, v)| {
                if v.is_empty() {
                    k.into_owned()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        let Some(d) = self
            .all_deliverers()
            .into_iter()
            .find(|d| d.route() == route)
        else {
            return no_route(&route);
        };
        if !d.has_destination(name) {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "route {route:?} has no destination named {} (its destinations: {})",
                    quoted(name),
                    d.destinations().join(", ")
                ),
            );
        }
        let result = if pause {
            d.pause(name).await
        } else {
            d.resume(name).await
        };
        match result {
            Ok(changed) => json(
                StatusCode::OK,
                &serde_json::json!({
                    "route": route,
                    "destination": name,
                    "paused": pause,
                    "changed": changed,
                }),
            ),
            Err(e) => spool_error(e),
        }
    }

    /// Reloads the configuration file (as SIGHUP does) and answers how it went; `force`
    /// removes destinations that still have events waiting.
    async fn reload(&self, force: bool) -> Response<Vec<u8>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.reload.send((tx, force)).is_err() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "reload_unavailable",
                "the gateway is stopping",
            );
        }
        match rx.await {
            Ok(Ok(restart)) => json(
                StatusCode::OK,
                &serde_json::json!({ "status": "reloaded", "needs_restart": restart }),
            ),
            Ok(Err(errors)) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &serde_json::json!({
                    "error": "config_invalid",
                    "detail": "the file was refused; the running configuration stays",
                    "errors": errors,
                }),
            ),
            Err(_) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "reload_unavailable",
                "the gateway is stopping",
            ),
        }
    }

    async fn one(&self, id: &str, replay: bool) -> Response<Vec<u8>> {
        let (id, deliverer) = match parse_id(id).and_then(|id| self.find(id)) {
            Ok((e, d)) => (e.id, d),
            Err(res) => return *res,
        };
        let result = if replay {
            deliverer.replay(id).await
        } else {
            deliverer.purge(id).await
        };
        match result {
            Ok(()) => json(
                StatusCode::OK,
                &serde_json::json!({ "id": id, "status": if replay { "replayed" } else { "purged" } }),
            ),
            Err(e) => spool_error(e),
        }
    }
}
