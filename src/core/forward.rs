//! Which headers travel (DESIGN §3): what an event stores from the sender's request and replays
//! upstream, and what `proxy` mode relays back from the upstream's answer.
//!
//! ```
//! use hookgate::core::forward::forwardable_headers;
//! use http::HeaderMap;
//!
//! let mut h = HeaderMap::new();
//! h.insert("content-type", "application/json".parse().unwrap());
//! h.insert("x-real-ip", "6.6.6.6".parse().unwrap());   // a client cannot speak for the gateway
//! h.insert("expect", "100-continue".parse().unwrap()); // one connection's business
//! let kept: Vec<String> = forwardable_headers(&h).into_iter().map(|(k, _)| k).collect();
//! assert_eq!(kept, ["content-type"]);
//! ```

use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;

/// `X-Hookgate-Event-Id`
pub const EVENT_ID: HeaderName = HeaderName::from_static("x-hookgate-event-id");
/// `X-Hookgate-Attempt`: 1 for the first attempt.
pub const ATTEMPT: HeaderName = HeaderName::from_static("x-hookgate-attempt");
/// `X-Hookgate-Received-At`: when hookgate acknowledged the event, RFC 3339 UTC.
pub const RECEIVED_AT: HeaderName = HeaderName::from_static("x-hookgate-received-at");
/// `X-Hookgate-Replay`: the replay job that sent this delivery again (absent on a first
/// delivery and its retries).
pub const REPLAY: HeaderName = HeaderName::from_static("x-hookgate-replay");
/// `X-Forwarded-For`
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, never passed on.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Headers not stored with an event: `Host` (the upstream's own is sent); hookgate's own, set
/// fresh on each attempt; the ones a proxy-fix middleware upstream believes about the original
/// client (`Forwarded`, `X-Real-IP`, `X-Forwarded-Proto`, `X-Forwarded-Host`), which a sender must
/// not be able to forge through the gateway; and `Expect`, which asked this connection for a
/// `100 Continue` and would make every delivery wait for one.
const NOT_STORED: [HeaderName; 11] = [
    header::HOST,
    X_FORWARDED_FOR,
    EVENT_ID,
    ATTEMPT,
    RECEIVED_AT,
    REPLAY,
    header::FORWARDED,
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    header::EXPECT,
];

/// The end-to-end headers of a message, as a proxy passes them on: all but the hop-by-hop ones
/// (with `Upgrade` and those named in `Connection`) and `Content-Length`, which the next hop's
/// framing sets. Repeated headers are all kept, in order.
pub fn end_to_end_headers(
    headers: &HeaderMap,
) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    let named_in_connection: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    headers.iter().filter(move |(name, _)| {
        !HOP_BY_HOP.contains(name)
            && *name != header::UPGRADE
            && *name != header::CONTENT_LENGTH
            && !named_in_connection
                .iter()
                .any(|c| c.eq_ignore_ascii_case(name.as_str()))
    })
}

/// The headers of a sender's request to store with its event and forward: the
/// [end-to-end ones](end_to_end_headers) but those of `NOT_STORED` (see its docs).
pub fn forwardable_headers(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    end_to_end_headers(headers)
        .filter(|(name, _)| !NOT_STORED.contains(name))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_end_to_end_headers_of_the_sender_are_stored() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/json"),
            ("host", "example.com"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("content-length", "10"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-hookgate-attempt", "9"),
            ("x-hookgate-replay", "forged"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "bank.example"),
            ("expect", "100-continue"),
            ("x-signature", "abc"),
            ("x-signature", "def"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let kept: Vec<(String, Vec<u8>)> = forwardable_headers(&h);
        let names: Vec<&str> = kept.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-signature", "x-signature"]);
        assert_eq!(kept[2].1, b"def");
    }
}
