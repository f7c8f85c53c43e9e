//! Steps 12–14 decided once (DESIGN §2): what became of a request, the answer it gets (status,
//! headers, body bytes) and how it is counted. Both faces call these and only write the
//! [`Answer`] to their own transport.
//!
//! ```
//! use hookgate::core::{outcome, Counted, Outcome, Rejection, Reservation};
//!
//! // Step 12: a key seen before is a duplicate, answered 200 and not forwarded.
//! let dup = outcome::reserved("o3-video", Ok::<_, std::io::Error>(Reservation::Duplicate)).unwrap();
//! assert_eq!(dup.counted(), Counted::Duplicate);
//! let answer = dup.answer();
//! assert_eq!(answer.status, 200);
//! assert_eq!(&answer.body[..], br#"{"status":"duplicate"}"#);
//! // A free key goes on to step 13.
//! assert!(outcome::reserved("o3-video", Ok::<_, std::io::Error>(Reservation::Reserved)).is_none());
//! // A refusal carries its reason to the metrics and its headers to the answer.
//! let busy = Outcome::Rejected(Rejection::DuplicateInFlight);
//! assert_eq!(busy.counted().as_str(), "rejected");
//! assert_eq!(busy.answer().headers["retry-after"], "1");
//! ```

use std::fmt::Display;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use uuid::Uuid;

use super::forward::end_to_end_headers;
use super::{Reason, Rejection};

/// The answer to one request, as both faces write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// Every header but `Content-Length`, which [`content_length`](Self::content_length) decides.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Answer {
    /// A JSON answer.
    pub fn json(status: StatusCode, body: Bytes) -> Self {
        let mut headers = HeaderMap::with_capacity(3);
        headers.insert(header::CONTENT_TYPE, JSON);
        Self {
            status,
            headers,
            body,
        }
    }

    /// The `Content-Length` to send: none for a status that has no content (1xx, 204) or whose
    /// length describes another representation (304), RFC 9110 §8.6.
    pub fn content_length(&self) -> Option<usize> {
        let s = self.status;
        (!(s.is_informational() || s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED))
            .then_some(self.body.len())
    }
}

/// Step 12's answer for a key committed within its TTL.
pub const DUPLICATE_BODY: &[u8] = br#"{"status":"duplicate"}"#;

/// Step 14's answer body: the event is in the spool as `id`.
pub fn received_body(id: Uuid) -> Bytes {
    let mut body = String::with_capacity(64);
    body.push_str(r#"{"status":"received","event_id":""#);
    body.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    body.push_str(r#""}"#);
    Bytes::from(body)
}

/// The answer of a dedup store to a reservation (step 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The key was free and is now reserved by the caller, who must commit or release it.
    Reserved,
    /// The key was committed within its TTL: the event was already accepted.
    Duplicate,
    /// Another request holds the reservation right now.
    InFlight,
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Refused at some step.
    Rejected(Rejection),
    /// Its dedup key was accepted before (step 12): answered 200, not forwarded.
    Duplicate,
    /// Durably spooled as `event_id` (step 14).
    Received {
        /// The event's id.
        event_id: Uuid,
    },
    /// `proxy` mode: the upstream's answer, relayed.
    Relayed {
        /// The event's id (sent upstream as `X-Hookgate-Event-Id`).
        event_id: Uuid,
        /// What the upstream answered, as relayed (boxed: the other outcomes are small).
        answer: Box<Answer>,
    },
}

/// How an outcome is counted in `hookgate_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Received, or relayed with a 2xx.
    Accepted,
    /// A duplicate.
    Duplicate,
    /// Refused, with its reason (also counted in `hookgate_rejections_total`).
    Rejected(Reason),
    /// The handler or upstream answered with an error of its own.
    Failed,
}

impl Counted {
    /// An answer hookgate did not decide (a handler's or an upstream's), by its status.
    pub fn of_status(status: StatusCode) -> Self {
        if status.is_success() {
            Counted::Accepted
        } else {
            Counted::Failed
        }
    }

    /// The `outcome` label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Counted::Accepted => "accepted",
            Counted::Duplicate => "duplicate",
            Counted::Rejected(_) => "rejected",
            Counted::Failed => "failed",
        }
    }
}

impl Outcome {
    /// How it is counted.
    pub fn counted(&self) -> Counted {
        match self {
            Outcome::Rejected(r) => Counted::Rejected(r.reason()),
            Outcome::Duplicate => Counted::Duplicate,
            Outcome::Received { .. } => Counted::Accepted,
            Outcome::Relayed { answer, .. } => Counted::of_status(answer.status),
        }
    }

    /// The event id, once there is an event.
    pub fn event_id(&self) -> Option<Uuid> {
        match self {
            Outcome::Received { event_id } | Outcome::Relayed { event_id, .. } => Some(*event_id),
            _ => None,
        }
    }

    /// The answer to write.
    pub fn answer(self) -> Answer {
        match self {
            Outcome::Rejected(r) => r.answer(),
            Outcome::Duplicate => Answer::json(StatusCode::OK, Bytes::from_static(DUPLICATE_BODY)),
            Outcome::Received { event_id } => Answer::json(StatusCode::OK, received_body(event_id)),
            Outcome::Relayed { answer, .. } => *answer,
        }
    }
}

/// Step 12: `None` when the key is now reserved (go on to step 13), else the outcome. A store
/// that cannot answer fails closed: 503 `dedup_unavailable`, and the sender retries; one that
/// answers but has no room to store the key (Redis out of memory) is full: 503 `spool_full`.
pub fn reserved<E: StoreFailure>(route: &str, result: Result<Reservation, E>) -> Option<Outcome> {
    match result {
        Ok(Reservation::Reserved) => None,
        Ok(Reservation::Duplicate) => Some(Outcome::Duplicate),
        Ok(Reservation::InFlight) => Some(Outcome::Rejected(Rejection::DuplicateInFlight)),
        // Debug only, like a full spool's: the store logs once when it starts refusing.
        Err(e) if e.is_full() => {
            tracing::debug!(route, why = %e, "store full: answering 503");
            Some(Outcome::Rejected(Rejection::SpoolFull))
        }
        Err(e) => {
            tracing::warn!(route, error = %e, "dedup store unavailable: answering 503");
            Some(Outcome::Rejected(Rejection::DedupUnavailable))
        }
    }
}

/// A store's failure, as steps 12 and 13 tell them apart.
pub trait StoreFailure: Display {
    /// The store has no room (its bound, its disk, Redis's memory), rather than failing.
    fn is_full(&self) -> bool;
}

/// An I/O error is full when the disk is.
impl StoreFailure for std::io::Error {
    fn is_full(&self) -> bool {
        self.kind() == std::io::ErrorKind::StorageFull
    }
}

/// Steps 13–14: the append of event `event_id` committed (received) or did not (503).
pub fn appended<E: StoreFailure>(route: &str, event_id: Uuid, result: Result<(), E>) -> Outcome {
    match result {
        Ok(()) => {
            tracing::debug!(route, %event_id, "event accepted");
            Outcome::Received { event_id }
        }
        // Debug only: a full or failing store refuses every request, and the store's own log
        // says once when it starts and stops refusing (`store::watch_health`).
        Err(e) if e.is_full() => {
            tracing::debug!(route, why = %e, "spool full: answering 503");
            Outcome::Rejected(Rejection::SpoolFull)
        }
        Err(e) => {
            tracing::debug!(route, error = %e, "spool append failed: answering 503");
            Outcome::Rejected(Rejection::SpoolUnavailable)
        }
    }
}

/// `proxy` mode: the upstream answered `status` with `headers` and `body`; relay it with its
/// end-to-end headers, every value of a repeated one (`Set-Cookie`, `Vary`, `Link`) kept.
pub fn relayed(event_id: Uuid, status: StatusCode, headers: &HeaderMap, body: Bytes) -> Outcome {
    let mut relayed = HeaderMap::with_capacity(headers.len());
    for (name, value) in end_to_end_headers(headers) {
        relayed.append(name.clone(), value.clone());
    }
    Outcome::Relayed {
        event_id,
        answer: Box::new(Answer {
            status,
            headers: relayed,
            body,
        }),
    }
}

/// `proxy` mode: the forward of `event_id` failed before an answer (timeout: 504, else 502).
pub fn forward_failed(route: &str, event_id: Uuid, timeout: bool, error: &dyn Display) -> Outcome {
    if timeout {
        tracing::warn!(route, %event_id, "upstream timed out");
        Outcome::Rejected(Rejection::UpstreamTimeout)
    } else {
        tracing::warn!(route, %event_id, %error, "upstream unreachable");
        Outcome::Rejected(Rejection::UpstreamUnavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Failure(bool);
    impl Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("disk")
        }
    }
    impl StoreFailure for Failure {
        fn is_full(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn every_outcome_answers_and_counts() {
        struct Case {
            name: &'static str,
            outcome: Outcome,
            status: u16,
            counted: &'static str,
            retry_after: Option<&'static str>,
        }
        let id = Uuid::now_v7();
        let cases = [
            Case {
                name: "duplicate",
                outcome: reserved("r", Ok::<_, Failure>(Reservation::Duplicate)).unwrap(),
                status: 200,
                counted: "duplicate",
                retry_after: None,
            },
            Case {
                name: "in flight",
                outcome: reserved("r", Ok::<_, Failure>(Reservation::InFlight)).unwrap(),
                status: 409,
                counted: "rejected",
                retry_after: Some("1"),
            },
            Case {
                name: "dedup down",
                outcome: reserved::<Failure>("r", Err(Failure(false))).unwrap(),
                status: 503,
                counted: "rejected",
                retry_after: Some("1"),
            },
            Case {
                name: "received",
                outcome: appended::<Failure>("r", id, Ok(())),
                status: 200,
                counted: "accepted",
                retry_after: None,
            },
            Case {
                name: "spool full",
                outcome: appended("r", id, Err(Failure(true))),
                status: 503,
                counted: "rejected",
                retry_after: Some("5"),
            },
            Case {
                name: "spool failed",
                outcome: appended("r", id, Err(Failure(false))),
                status: 503,
                counted: "rejected",
                retry_after: Some("5"),
            },
            Case {
                name: "relayed error",
                outcome: relayed(id, StatusCode::BAD_REQUEST, &HeaderMap::new(), Bytes::new()),
                status: 400,
                counted: "failed",
                retry_after: None,
            },
            Case {
                name: "upstream timeout",
                outcome: forward_failed("r", id, true, &"t"),
                status: 504,
                counted: "rejected",
                retry_after: None,
            },
        ];
        for c in cases {
            assert_eq!(c.outcome.counted().as_str(), c.counted, "{}", c.name);
            let answer = c.outcome.answer();
            assert_eq!(answer.status.as_u16(), c.status, "{}", c.name);
            let retry = answer
                .headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap());
            assert_eq!(retry, c.retry_after, "{}", c.name);
        }
        assert!(reserved("r", Ok::<_, Failure>(Reservation::Reserved)).is_none());
    }

    #[test]
    fn received_body_is_json_with_the_id() {
        let id = Uuid::now_v7();
        let body: serde_json::Value = serde_json::from_slice(&received_body(id)).unwrap();
        assert_eq!(body["status"], "received");
        assert_eq!(body["event_id"], id.to_string());
    }

    #[test]
    fn content_length_is_left_out_where_rfc_9110_forbids_it() {
        for (status, want) in [(200, Some(3)), (204, None), (304, None), (404, Some(3))] {
            let answer = Answer {
                status: StatusCode::from_u16(status).unwrap(),
                headers: HeaderMap::new(),
                body: Bytes::from_static(b"abc"),
            };
            assert_eq!(answer.content_length(), want, "{status}");
        }
    }
}
