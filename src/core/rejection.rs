//! The one enum every refusal goes through: its status, its stable reason and its JSON body.
//!
//! ```
//! use hookgate::core::Rejection;
//!
//! let r = Rejection::IpNotAllowed;
//! assert_eq!(r.status(), http::StatusCode::FORBIDDEN);
//! assert_eq!(r.reason().as_str(), "ip_not_allowed");
//! let body: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
//! assert_eq!(body["error"], "ip_not_allowed");
//! ```

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

use super::outcome::Answer;

/// One field of a payload that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Where the failing value is, as a JSON pointer (`/video_url`; `` for the whole body).
    pub field: String,
    /// What is wrong with it, for a human.
    pub message: String,
}

impl FieldError {
    /// A field error at `field` (a JSON pointer) with `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a request was refused. Each variant maps to one status code and one stable [`Reason`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// The method is not `POST` (405, with `Allow: POST`).
    MethodNotAllowed,
    /// The client address is outside the allowlist (403).
    IpNotAllowed,
    /// The server did not record the peer address, so the allowlist cannot be applied (500).
    /// A setup error: the layer fails closed rather than guessing.
    PeerAddressUnknown,
    /// The declared or streamed body is larger than `limit` bytes (413).
    PayloadTooLarge {
        /// The configured limit in bytes.
        limit: u64,
    },
    /// The `Content-Type` is missing or not JSON (415).
    UnsupportedMediaType {
        /// The `Content-Type` that was sent, if any.
        content_type: Option<String>,
    },
    /// The body did not arrive within the read timeout (408).
    RequestTimeout,
    /// The connection failed while the body was read (400).
    BodyReadFailed,
    /// The body is not well-formed JSON (400).
    MalformedJson {
        /// Where parsing stopped, from the JSON parser.
        detail: String,
    },
    /// An object of the body names a member twice (400): which one counts differs between
    /// parsers, and the body is forwarded byte for byte.
    DuplicateKey {
        /// Which name, where.
        detail: String,
    },
    /// The payload is well-formed but invalid for the route's profile or schema (422).
    InvalidPayload {
        /// The failing fields, at most [`MAX_LISTED_FIELDS`], each message shortened.
        fields: Vec<FieldError>,
        /// How many fields failed in all.
        total: usize,
    },
    /// The request head is not valid HTTP/1.1 (400): two `Content-Length`s, an unknown
    /// `Transfer-Encoding`, too many or too long headers, a target hookgate does not serve.
    MalformedRequest {
        /// What the parser refused.
        detail: String,
    },
    /// An HTTP/1.1 request without `Host` (400, RFC 9112 §3.2).
    MissingHost,
    /// The request header did not arrive within the header timeout (408).
    HeaderTimeout,
    /// The dedup key is absent from the request (422).
    MissingDedupKey {
        /// The configured key (`/generation_id`, `header:X-Id`, ...).
        key: String,
    },
    /// The same key is being processed by another request right now (409, with `Retry-After`).
    DuplicateInFlight,
    /// The dedup store failed to answer (503, with `Retry-After`).
    DedupUnavailable,
    /// The dedup key or the spool needs the parsed payload and no `ValidateLayer` ran first (500).
    PayloadNotParsed,
    /// The spool holds its maximum (503, with `Retry-After`).
    SpoolFull,
    /// The spool failed to commit the event (503, with `Retry-After`).
    SpoolUnavailable,
    /// No route of the gateway has this path (404).
    RouteNotFound,
    /// In `proxy` mode, the upstream could not be reached or failed mid-answer (502).
    UpstreamUnavailable,
    /// In `proxy` mode, the upstream did not answer within the route's delivery timeout (504).
    UpstreamTimeout,
    /// The request's signature is missing, does not verify, or its timestamp is outside the
    /// window (401; step 9).
    Signature(SignatureFailure),
    /// The client sent more than the route's rate limit allows (429, with `Retry-After`).
    RateLimited {
        /// Seconds until the next request would pass.
        retry_after: u32,
    },
}

/// The stable, machine-readable name of a [`Rejection`]: used in the JSON error body, the log line
/// and the `reason` metric label. These strings never change once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// `method_not_allowed`
    MethodNotAllowed,
    /// `ip_not_allowed`
    IpNotAllowed,
    /// `peer_address_unknown`
    PeerAddressUnknown,
    /// `payload_too_large`
    PayloadTooLarge,
    /// `unsupported_media_type`
    UnsupportedMediaType,
    /// `request_timeout`
    RequestTimeout,
    /// `body_read_failed`
    BodyReadFailed,
    /// `malformed_json`
    MalformedJson,
    /// `invalid_payload`
    InvalidPayload,
    /// `missing_dedup_key`
    MissingDedupKey,
    /// `duplicate_in_flight`
    DuplicateInFlight,
    /// `dedup_unavailable`
    DedupUnavailable,
    /// `payload_not_parsed`
    PayloadNotParsed,
    /// `spool_full`
    SpoolFull,
    /// `spool_unavailable`
    SpoolUnavailable,
    /// `route_not_found`
    RouteNotFound,
    /// `upstream_unavailable`
    UpstreamUnavailable,
    /// `upstream_timeout`
    UpstreamTimeout,
    /// `duplicate_key`
    DuplicateKey,
    /// `malformed_request`
    MalformedRequest,
    /// `missing_host`
    MissingHost,
    /// `missing_signature`
    MissingSignature,
    /// `bad_signature`
    BadSignature,
    /// `stale_timestamp`
    StaleTimestamp,
    /// `rate_limited`
    RateLimited,
}

impl Reason {
    /// Every reason, in a fixed order (`ALL[r.index()] == r`).
    pub const ALL: [Reason; 25] = [
        Reason::MethodNotAllowed,
        Reason::IpNotAllowed,
        Reason::PeerAddressUnknown,
        Reason::PayloadTooLarge,
        Reason::UnsupportedMediaType,
        Reason::RequestTimeout,
        Reason::BodyReadFailed,
        Reason::MalformedJson,
        Reason::InvalidPayload,
        Reason::MissingDedupKey,
        Reason::DuplicateInFlight,
        Reason::DedupUnavailable,
        Reason::PayloadNotParsed,
        Reason::SpoolFull,
        Reason::SpoolUnavailable,
        Reason::RouteNotFound,
        Reason::UpstreamUnavailable,
        Reason::UpstreamTimeout,
        Reason::DuplicateKey,
        Reason::MalformedRequest,
        Reason::MissingHost,
        Reason::MissingSignature,
        Reason::BadSignature,
        Reason::StaleTimestamp,
        Reason::RateLimited,
    ];

    /// The stable string form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::IpNotAllowed => "ip_not_allowed",
            Reason::PeerAddressUnknown => "peer_address_unknown",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::UnsupportedMediaType => "unsupported_media_type",
            Reason::RequestTimeout => "request_timeout",
            Reason::BodyReadFailed => "body_read_failed",
            Reason::MalformedJson => "malformed_json",
            Reason::InvalidPayload => "invalid_payload",
            Reason::MissingDedupKey => "missing_dedup_key",
            Reason::DuplicateInFlight => "duplicate_in_flight",
            Reason::DedupUnavailable => "dedup_unavailable",
            Reason::PayloadNotParsed => "payload_not_parsed",
            Reason::SpoolFull => "spool_full",
            Reason::SpoolUnavailable => "spool_unavailable",
            Reason::RouteNotFound => "route_not_found",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::DuplicateKey => "duplicate_key",
            Reason::MalformedRequest => "malformed_request",
            Reason::MissingHost => "missing_host",
            Reason::MissingSignature => "missing_signature",
            Reason::BadSignature => "bad_signature",
            Reason::StaleTimestamp => "stale_timestamp",
            Reason::RateLimited => "rate_limited",
        }
    }

    /// Position in [`Reason::ALL`], for per-reason tables.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The longest prefix of `text` within `max` bytes, cut at a character boundary: for echoing what
/// a client sent without letting it make the answer large.
pub fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The most failing fields a 422 lists (the detail says how many failed in all).
pub const MAX_LISTED_FIELDS: usize = 20;
/// The longest message of a listed field, in bytes: values a message echoes are cut.
const MAX_FIELD_MESSAGE: usize = 200;

/// Why a signature check refused a request (each a stable [`Reason`](Reason)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureFailure {
    /// A header the scheme needs is absent (`missing_signature`).
    Missing,
    /// No listed signature matches any secret, or one cannot be decoded (`bad_signature`).
    Bad,
    /// The signed timestamp is outside the tolerance, either way (`stale_timestamp`).
    Stale,
}

impl Rejection {
    /// A 422 for `fields` out of `total` failing ones: at most [`MAX_LISTED_FIELDS`] listed,
    /// each message cut to a couple of hundred bytes, so a hostile body cannot make the answer
    /// large.
    pub fn invalid_payload(mut fields: Vec<FieldError>, total: usize) -> Self {
        fields.truncate(MAX_LISTED_FIELDS);
        for f in &mut fields {
            for text in [&mut f.field, &mut f.message] {
                let keep = cut(text, MAX_FIELD_MESSAGE).len();
                if keep < text.len() {
                    text.truncate(keep);
                    text.push('…');
                }
            }
        }
        Rejection::InvalidPayload {
            total: total.max(fields.len()),
            fields,
        }
    }
}

/// How long a sender is asked to wait before retrying a 409 or a dedup 503, in seconds.
pub const RETRY_AFTER_SECS: u32 = 1;
/// How long a sender is asked to wait before retrying when the spool is full or failing, in seconds.
pub const SPOOL_RETRY_AFTER_SECS: u32 = 5;

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<&'a [FieldError]>,
}

impl Rejection {
    /// The stable reason.
    pub fn reason(&self) -> Reason {
        match self {
            Rejection::MethodNotAllowed => Reason::MethodNotAllowed,
            Rejection::IpNotAllowed => Reason::IpNotAllowed,
            Rejection::PeerAddressUnknown => Reason::PeerAddressUnknown,
            Rejection::PayloadTooLarge { .. } => Reason::PayloadTooLarge,
            Rejection::UnsupportedMediaType { .. } => Reason::UnsupportedMediaType,
            Rejection::RequestTimeout => Reason::RequestTimeout,
            Rejection::BodyReadFailed => Reason::BodyReadFailed,
            Rejection::MalformedJson { .. } => Reason::MalformedJson,
            Rejection::InvalidPayload { .. } => Reason::InvalidPayload,
            Rejection::MissingDedupKey { .. } => Reason::MissingDedupKey,
            Rejection::DuplicateInFlight => Reason::DuplicateInFlight,
            Rejection::DedupUnavailable => Reason::DedupUnavailable,
            Rejection::PayloadNotParsed => Reason::PayloadNotParsed,
            Rejection::SpoolFull => Reason::SpoolFull,
            Rejection::SpoolUnavailable => Reason::SpoolUnavailable,
            Rejection::RouteNotFound => Reason::RouteNotFound,
            Rejection::UpstreamUnavailable => Reason::UpstreamUnavailable,
            Rejection::UpstreamTimeout => Reason::UpstreamTimeout,
            Rejection::DuplicateKey { .. } => Reason::DuplicateKey,
            Rejection::MalformedRequest { .. } => Reason::MalformedRequest,
            Rejection::MissingHost => Reason::MissingHost,
            Rejection::HeaderTimeout => Reason::RequestTimeout,
            Rejection::Signature(SignatureFailure::Missing) => Reason::MissingSignature,
            Rejection::Signature(SignatureFailure::Bad) => Reason::BadSignature,
            Rejection::Signature(SignatureFailure::Stale) => Reason::StaleTimestamp,
            Rejection::RateLimited { .. } => Reason::RateLimited,
        }
    }

    /// The HTTP status this rejection is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::IpNotAllowed => StatusCode::FORBIDDEN,
            Rejection::PeerAddressUnknown | Rejection::PayloadNotParsed => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Rejection::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::RequestTimeout | Rejection::HeaderTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::BodyReadFailed
            | Rejection::MalformedJson { .. }
            | Rejection::DuplicateKey { .. }
            | Rejection::MalformedRequest { .. }
            | Rejection::MissingHost => StatusCode::BAD_REQUEST,
            Rejection::InvalidPayload { .. } | Rejection::MissingDedupKey { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Rejection::DuplicateInFlight => StatusCode::CONFLICT,
            Rejection::DedupUnavailable | Rejection::SpoolFull | Rejection::SpoolUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Rejection::RouteNotFound => StatusCode::NOT_FOUND,
            Rejection::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Rejection::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Rejection::Signature(_) => StatusCode::UNAUTHORIZED,
            Rejection::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// `Retry-After` seconds to send with the answer, if any.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Rejection::DuplicateInFlight | Rejection::DedupUnavailable => Some(RETRY_AFTER_SECS),
            // A full or failing disk takes longer than a race to clear.
            Rejection::SpoolFull | Rejection::SpoolUnavailable => Some(SPOOL_RETRY_AFTER_SECS),
            Rejection::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// `Allow` header value to send with the answer, if any.
    pub fn allow(&self) -> Option<&'static str> {
        matches!(self, Rejection::MethodNotAllowed).then_some("POST")
    }

    /// A sentence for humans; part of the JSON body.
    pub fn detail(&self) -> String {
        match self {
            Rejection::MethodNotAllowed => "webhooks are delivered with POST".into(),
            Rejection::IpNotAllowed => "the client address is not in the allowlist".into(),
            Rejection::PeerAddressUnknown => {
                "the server did not record the peer address (serve with connect info, or insert hookgate::tower::PeerAddr)".into()
            }
            Rejection::PayloadTooLarge { limit } => {
                format!("the body is larger than the limit of {limit} bytes")
            }
            Rejection::UnsupportedMediaType { content_type: Some(ct) } => {
                format!("Content-Type must be application/json, got {ct:?}")
            }
            Rejection::UnsupportedMediaType { content_type: None } => {
                "Content-Type must be application/json, none was sent".into()
            }
            Rejection::RequestTimeout => "the body did not arrive within the read timeout".into(),
            Rejection::BodyReadFailed => "the connection failed while the body was read".into(),
            Rejection::MalformedJson { detail } => format!("the body is not valid JSON: {detail}"),
            Rejection::InvalidPayload { fields, total } => match (*total, fields.len()) {
                (1, _) => "1 field is invalid".into(),
                (n, listed) if listed < n => {
                    format!("{n} fields are invalid; the first {listed} are listed")
                }
                (n, _) => format!("{n} fields are invalid"),
            },
            Rejection::DuplicateKey { detail } => {
                format!("the body names a member twice: {detail}")
            }
            Rejection::MalformedRequest { detail } => {
                format!("the request is not valid HTTP/1.1: {detail}")
            }
            Rejection::MissingHost => "an HTTP/1.1 request must carry a Host header".into(),
            Rejection::HeaderTimeout => {
                "the request header did not arrive within the header timeout".into()
            }
            Rejection::MissingDedupKey { key } => format!("the dedup key {key} is missing"),
            Rejection::DuplicateInFlight => {
                "the same event is being processed right now; retry later".into()
            }
            Rejection::DedupUnavailable => "the dedup store is unavailable; retry later".into(),
            Rejection::PayloadNotParsed => {
                "this layer needs the payload parsed by ValidateLayer in front of it".into()
            }
            Rejection::SpoolFull => "the spool is full; retry later".into(),
            Rejection::SpoolUnavailable => "the event could not be stored; retry later".into(),
            Rejection::RouteNotFound => "no webhook route has this path".into(),
            Rejection::UpstreamUnavailable => "the upstream could not be reached; retry later".into(),
            Rejection::UpstreamTimeout => "the upstream did not answer in time; retry later".into(),
            Rejection::Signature(SignatureFailure::Missing) => {
                "the request carries no signature of the route's scheme".into()
            }
            Rejection::Signature(SignatureFailure::Bad) => {
                "the signature does not match the body with any of the route's secrets".into()
            }
            Rejection::Signature(SignatureFailure::Stale) => {
                "the signed timestamp is outside the route's tolerance".into()
            }
            Rejection::RateLimited { retry_after } => {
                format!("too many requests from this address; retry in {retry_after} s")
            }
        }
    }

    /// The answer: status, JSON body, and `Allow` or `Retry-After` where they apply. The one
    /// place a refusal becomes bytes, for both faces.
    pub fn answer(&self) -> Answer {
        let mut answer = Answer::json(self.status(), Bytes::from(self.to_json()));
        if let Some(allow) = self.allow() {
            answer
                .headers
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(secs) = self.retry_after() {
            answer
                .headers
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        answer
    }

    /// The JSON error body: `{"error": reason, "detail": "...", "fields": [...]}` (`fields` only
    /// for `invalid_payload`).
    pub fn to_json(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: self.reason().as_str(),
            detail: self.detail(),
            fields: match self {
                Rejection::InvalidPayload { fields, .. } => Some(fields),
                _ => None,
            },
        };
        // Serialising a struct of strings cannot fail; fall back to the reason alone regardless.
        serde_json::to_vec(&body).unwrap_or_else(|_| {
            format!("{{\"error\":\"{}\"}}", self.reason().as_str()).into_bytes()
        })
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason().as_str(), self.detail())
    }
}

impl std::error::Error for Rejection {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{}", r.as_str());
        }
    }

    #[test]
    fn statuses_and_bodies() {
        struct Case {
            input: Rejection,
            status: u16,
            reason: &'static str,
        }
        let cases = [
            Case {
                input: Rejection::MethodNotAllowed,
                status: 405,
                reason: "method_not_allowed",
            },
            Case {
                input: Rejection::IpNotAllowed,
                status: 403,
                reason: "ip_not_allowed",
            },
            Case {
                input: Rejection::PayloadTooLarge { limit: 10 },
                status: 413,
                reason: "payload_too_large",
            },
            Case {
                input: Rejection::UnsupportedMediaType { content_type: None },
                status: 415,
                reason: "unsupported_media_type",
            },
            Case {
                input: Rejection::RequestTimeout,
                status: 408,
                reason: "request_timeout",
            },
            Case {
                input: Rejection::MalformedJson { detail: "x".into() },
                status: 400,
                reason: "malformed_json",
            },
            Case {
                input: Rejection::invalid_payload(vec![FieldError::new("/a", "b")], 1),
                status: 422,
                reason: "invalid_payload",
            },
            Case {
                input: Rejection::DuplicateKey { detail: "a".into() },
                status: 400,
                reason: "duplicate_key",
            },
            Case {
                input: Rejection::MalformedRequest { detail: "a".into() },
                status: 400,
                reason: "malformed_request",
            },
            Case {
                input: Rejection::MissingHost,
                status: 400,
                reason: "missing_host",
            },
            Case {
                input: Rejection::HeaderTimeout,
                status: 408,
                reason: "request_timeout",
            },
            Case {
                input: Rejection::DuplicateInFlight,
                status: 409,
                reason: "duplicate_in_flight",
            },
            Case {
                input: Rejection::DedupUnavailable,
                status: 503,
                reason: "dedup_unavailable",
            },
        ];
        for c in cases {
            assert_eq!(c.input.status().as_u16(), c.status, "{}", c.reason);
            let v: serde_json::Value = serde_json::from_slice(&c.input.to_json()).unwrap();
            assert_eq!(v["error"], c.reason);
            assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
        }
    }

    #[test]
    fn invalid_payload_lists_fields() {
        let r = Rejection::invalid_payload(
            vec![
                FieldError::new("/status", "bad"),
                FieldError::new("/model", "missing"),
            ],
            2,
        );
        let v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(v["fields"][1]["field"], "/model");
        assert_eq!(v["detail"], "2 fields are invalid");
    }

    #[test]
    fn a_422_lists_a_bounded_number_of_short_fields() {
        let fields = (0..100)
            .map(|i| FieldError::new(format!("/f{i}"), "é".repeat(500)))
            .collect();
        let r = Rejection::invalid_payload(fields, 100);
        let v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        let listed = v["fields"].as_array().unwrap();
        assert_eq!(listed.len(), MAX_LISTED_FIELDS);
        assert!(listed[0]["message"].as_str().unwrap().len() <= MAX_FIELD_MESSAGE + 3);
        assert_eq!(
            v["detail"],
            "100 fields are invalid; the first 20 are listed"
        );
    }
}
