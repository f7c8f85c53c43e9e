//! The JSON shapes of the history API (DESIGN §13).

use base64::Engine as _;
use serde_json::{json, Value};

use crate::core::DedupKey;
use crate::store::history::{DestinationState, EventDetail};
use crate::store::{AttemptKind, AttemptRecord, EventSummary};

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

/// One destination's standing: its status, attempts, newest attempt (or every attempt kept,
/// `whole`), when its next attempt is due (pending) and the replay it is pending for.
fn destination(d: &DestinationState, whole: bool) -> Value {
    let mut v = json!({
        "name": d.name,
        "status": d.status.as_str(),
        "attempts": d.attempts,
        "last_attempt": d.history.last().map(attempt),
        "next_attempt_at": d.next_attempt_ms.map(rfc3339),
        "replay": d.replay,
    });
    if whole {
        v["history"] = d.history.iter().map(attempt).collect();
    }
    v
}

/// Every destination's attempts, oldest first, each with its destination's name.
fn history(states: &[DestinationState]) -> Vec<Value> {
    let mut all: Vec<(&str, &AttemptRecord)> = states
        .iter()
        .flat_map(|d| d.history.iter().map(move |a| (d.name.as_str(), a)))
        .collect();
    all.sort_by_key(|(_, a)| a.at_ms);
    all.into_iter()
        .map(|(name, a)| {
            let mut v = attempt(a);
            v["destination"] = Value::String(name.to_owned());
            v
        })
        .collect()
}

/// An event in a page: everything but its headers and body.
pub(crate) fn listed(e: &EventSummary) -> Value {
    let last = e
        .destinations
        .iter()
        .filter_map(|d| d.history.last())
        .max_by_key(|a| a.at_ms);
    json!({
        "id": e.id,
        "route": e.route,
        "received_at": rfc3339(e.received_ms),
        "status": e.status.as_str(),
        "attempts": e.attempts,
        "client_ip": e.client_ip.to_string(),
        "dedup_key": dedup_key(e.dedup),
        "body_bytes": e.body_bytes,
        "last_attempt": last.map(attempt),
        "destinations": e.destinations.iter().map(|d| destination(d, false)).collect::<Vec<_>>(),
    })
}

/// An event whole: its request (headers, and the body as JSON when it is JSON, else base64 in
/// `body_base64`), where each destination stands with every attempt kept, and every attempt
/// in time order (`history`).
pub(crate) fn shown(d: &EventDetail) -> Value {
    let e = &d.event;
    let mut v = json!({
        "id": e.id,
        "route": e.route,
        "received_at": rfc3339(e.received_ms),
        "status": d.status().as_str(),
        "attempts": d.destinations.iter().map(|d| d.attempts).sum::<u32>(),
        "client_ip": e.client_ip.to_string(),
        "dedup_key": dedup_key(e.dedup.map(|d| d.key)),
        "method": e.method,
        "uri": e.uri,
        "headers": e.headers.iter()
            .map(|(k, v)| json!([k, String::from_utf8_lossy(v)]))
            .collect::<Vec<_>>(),
        "body_bytes": e.body.len(),
        "destinations": d.destinations.iter().map(|d| destination(d, true)).collect::<Vec<_>>(),
        "history": history(&d.destinations),
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
