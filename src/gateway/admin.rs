//! The admin listener: metrics, health, readiness and the dead letters.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /metrics` | Prometheus text: the pipeline's, the deliveries' and the gateway's metrics |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when the spool commits and is below its bounds, else 503 |
//! | `GET /dead-letters[?route=NAME&limit=N]` | the dead letters, oldest first |
//! | `POST /dead-letters/{id}/replay` | moves one back to delivery |
//! | `POST /dead-letters/replay[?route=NAME]` | moves all (of a route) back |
//! | `DELETE /dead-letters/{id}` | deletes one |
//! | `DELETE /dead-letters[?route=NAME]` | deletes all (of a route) |
//!
//! With `admin_token` set, every request but `/metrics`, `/healthz` and `/readyz` needs
//! `Authorization: Bearer <token>` (401 otherwise).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::{header, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, TextEncoder};
use serde::Serialize;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::deliver::Deliverer;
use crate::store::{Event, Spool, SpoolError};

/// The admin application.
pub(crate) struct Admin {
    pub registry: prometheus::Registry,
    pub token: Option<String>,
    pub spool: Arc<dyn Spool>,
    pub max_events: u64,
    pub max_bytes: u64,
    /// By route name.
    pub deliverers: HashMap<String, Deliverer>,
}

/// A dead letter as the admin API lists it.
#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    /// The event id (also `X-Hookgate-Event-Id` of every attempt).
    pub id: Uuid,
    /// The route.
    pub route: &'a str,
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
    fn new(e: &'a Event) -> Self {
        Self {
            id: e.id,
            route: &e.route,
            received_at: rfc3339(e.received_ms),
            client_ip: e.client_ip.to_string(),
            attempts: e.attempts,
            history: e
                .history
                .iter()
                .map(|a| Attempt {
                    at: rfc3339(a.at_ms),
                    outcome: &a.outcome,
                })
                .collect(),
            body_bytes: e.body.len(),
        }
    }
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

/// `?a=b&c=d` into pairs (values percent-decoded).
fn query(q: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // No admin request has a body; reading what a client sent keeps the connection usable.
        let _ = session.drain_request_body().await;
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
        if let Some(token) = &self.token {
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
        let route = params.get("route").map(String::as_str);
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (Method::GET, ["dead-letters"]) => {
                let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
                    None => 1000,
                    Some(Ok(n)) => n,
                    Some(Err(_)) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            "limit must be a number",
                        )
                    }
                };
                self.list(route, limit)
            }
            (Method::POST, ["dead-letters", "replay"]) => {
                self.all(route, |d| Box::pin(async move { d.replay_all().await }))
                    .await
            }
            (Method::DELETE, ["dead-letters"]) => {
                self.all(route, |d| Box::pin(async move { d.purge_all().await }))
                    .await
            }
            (Method::POST, ["dead-letters", id, "replay"]) => self.one(id, true).await,
            (Method::DELETE, ["dead-letters", id]) => self.one(id, false).await,
            (_, ["metrics" | "healthz" | "readyz"])
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

type AllFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, SpoolError>> + Send + 'a>>;

impl Admin {
    fn metrics(&self) -> Response<Vec<u8>> {
        let encoder = TextEncoder::new();
        let mut body = Vec::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut body) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "metrics", e.to_string());
        }
        Response::builder()
            .header(header::CONTENT_TYPE, encoder.format_type())
            .header(header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }

    async fn ready(&self) -> Response<Vec<u8>> {
        let stats = self.spool.stats();
        let held = stats.pending + stats.dead;
        let problem = if held >= self.max_events {
            Some(format!("the spool holds {held} events, its bound"))
        } else if stats.bytes >= self.max_bytes {
            Some(format!("the spool holds {} bytes, its bound", stats.bytes))
        } else if let Err(e) = self.spool.probe().await {
            Some(format!("the spool cannot commit: {e}"))
        } else {
            None
        };
        let body = serde_json::json!({
            "status": if problem.is_some() { "not_ready" } else { "ready" },
            "detail": problem,
            "spool": { "pending": stats.pending, "dead": stats.dead, "bytes": stats.bytes },
        });
        let status = if problem.is_some() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        json(status, &body)
    }

    fn list(&self, route: Option<&str>, limit: usize) -> Response<Vec<u8>> {
        if let Some(name) = route.filter(|r| !self.deliverers.contains_key(*r)) {
            return no_route(name);
        }
        match self.spool.dead_letters(usize::MAX) {
            Ok(events) => {
                let items: Vec<DeadLetter<'_>> = events
                    .iter()
                    .filter(|e| route.is_none_or(|r| e.route == r))
                    .take(limit)
                    .map(DeadLetter::new)
                    .collect();
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "count": items.len(), "dead_letters": items }),
                )
            }
            Err(e) => spool_error(e),
        }
    }

    async fn all<F>(&self, route: Option<&str>, op: F) -> Response<Vec<u8>>
    where
        F: for<'a> Fn(&'a Deliverer) -> AllFuture<'a>,
    {
        let deliverers: Vec<&Deliverer> = match route {
            None => self.deliverers.values().collect(),
            Some(name) => match self.deliverers.get(name) {
                Some(d) => vec![d],
                None => return no_route(name),
            },
        };
        let mut count = 0;
        for d in deliverers {
            match op(d).await {
                Ok(n) => count += n,
                Err(e) => return spool_error(e),
            }
        }
        json(StatusCode::OK, &serde_json::json!({ "count": count }))
    }

    async fn one(&self, id: &str, replay: bool) -> Response<Vec<u8>> {
        let Ok(id) = Uuid::parse_str(id) else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("{id:?} is not an event id"),
            );
        };
        let event = match self.spool.get_dead(id) {
            Ok(Some(e)) => e,
            Ok(None) => return spool_error(SpoolError::NotFound(id)),
            Err(e) => return spool_error(e),
        };
        let Some(deliverer) = self.deliverers.get(&event.route) else {
            return error(
                StatusCode::CONFLICT,
                "route_not_configured",
                format!(
                    "dead letter {id} belongs to route {:?}, which this configuration lacks",
                    event.route
                ),
            );
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
