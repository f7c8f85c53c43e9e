//! The JSON shapes of the history API (DESIGN §13).

use base64::Engine as _;
use serde_json::{json, Value};

use crate::core::DedupKey;
use crate::store::history::DeliveryStatus;
use crate::store::{AttemptKind, AttemptRecord, Event, EventSummary};

/// Unix milliseconds as RFC 3339 (UTC, milliseconds).
pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn kind(k: AttemptKind) -> &'static str {
    match k {
        AttemptKind::Delivered => "delivered",
        AttemptKind::Failed => "failed",
        AttemptKind::Rejected => "rejected",
    }
}

/// One attempt: when it ended, what it came to, the HTTP status, how long it took, what
/// happened (an error's text, cut at 512 bytes) and the replay that made it.
pub(crate) fn attempt(a: &AttemptRecord) -> Value {
    json!({
        "at": rfc3339(a.at_ms),
        "result": kind(a.kind),
        "status": a.status,
        "duration_ms": a.duration_ms,
        "outcome": a.outcome,
        "replay": a.replay,
    })
}

fn dedup_key(key: Option<[u8; 16]>) -> Option<String> {
    key.map(|k| DedupKey::from_bytes(k).to_hex())
}

/// An event in a page: everything but its headers and body.
pub(crate) fn listed(e: &EventSummary) -> Value {
    json!({
        "id": e.id,
        "route": e.route,
        "received_at": rfc3339(e.received_ms),
        "status": e.status.as_str(),
        "attempts": e.attempts,
        "client_ip": e.client_ip.to_string(),
        "dedup_key": dedup_key(e.dedup),
        "body_bytes": e.body_bytes,
        "last_attempt": e.history.last().map(attempt),
    })
}

/// An event whole: its request (headers, and the body as JSON when it is JSON, else base64 in
/// `body_base64`), and every attempt kept.
pub(crate) fn shown(e: &Event, status: DeliveryStatus) -> Value {
    let mut v = json!({
        "id": e.id,
        "route": e.route,
        "received_at": rfc3339(e.received_ms),
        "status": status.as_str(),
        "attempts": e.attempts,
        "client_ip": e.client_ip.to_string(),
        "dedup_key": dedup_key(e.dedup.map(|d| d.key)),
        "method": e.method,
        "uri": e.uri,
        "headers": e.headers.iter()
            .map(|(k, v)| json!([k, String::from_utf8_lossy(v)]))
            .collect::<Vec<_>>(),
        "body_bytes": e.body.len(),
        "history": e.history.iter().map(attempt).collect::<Vec<_>>(),
        "replay": e.replay,
    });
    match serde_json::from_slice::<Value>(&e.body) {
        Ok(body) => v["body"] = body,
        Err(_) => {
            v["body_base64"] =
                Value::String(base64::engine::general_purpose::STANDARD.encode(&e.body))
        }
    }
    v
}
