//! Checks on the request head, before any body byte is read: method, declared size, media type
//! ([`check`], steps 4, 6 and 7 in that order, for both faces), and what HTTP/1.1 itself asks of a
//! head ([`check_host`], [`expects_continue`]).
//!
//! ```
//! use hookgate::core::request_head;
//! use http::{HeaderMap, HeaderValue, Method, header};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
//! headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2048"));
//! assert!(request_head::check_method(&Method::POST).is_ok());
//! assert!(request_head::check_content_type(&headers).is_ok());
//! assert_eq!(request_head::check_content_length(&headers, 1024).unwrap_err().status(), 413);
//! ```

use http::{header, HeaderMap, Method, Version};

use super::Rejection;

/// Steps 4, 6 (declared size) and 7, in pipeline order: the declared length, if any.
#[inline]
pub fn check(method: &Method, headers: &HeaderMap, limit: u64) -> Result<Option<u64>, Rejection> {
    check_method(method)?;
    let declared = check_content_length(headers, limit)?;
    check_content_type(headers)?;
    Ok(declared)
}

/// An HTTP/1.1 request must name its `Host` (RFC 9112 §3.2); HTTP/1.0 need not.
#[inline]
pub fn check_host(version: Version, headers: &HeaderMap) -> Result<(), Rejection> {
    if version == Version::HTTP_11 && !headers.contains_key(header::HOST) {
        Err(Rejection::MissingHost)
    } else {
        Ok(())
    }
}

/// Whether the client waits for `100 Continue` before sending the body: an HTTP/1.1 request
/// with `Expect: 100-continue`. HTTP/1.0 has no 1xx answers (RFC 9110 §10.1.1): never for it.
#[inline]
pub fn expects_continue(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Step 2: webhooks are `POST`.
#[inline]
pub fn check_method(method: &Method) -> Result<(), Rejection> {
    if method == Method::POST {
        Ok(())
    } else {
        Err(Rejection::MethodNotAllowed)
    }
}

/// Step 6 (declared part): a `Content-Length` above `limit` is refused before reading.
/// Returns the declared length, if any. The streamed size is checked while the body is read.
#[inline]
pub fn check_content_length(headers: &HeaderMap, limit: u64) -> Result<Option<u64>, Rejection> {
    let Some(value) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    // HTTP servers reject malformed lengths before we see them; an unreadable one is treated as
    // absent and the streamed count enforces the limit. All digits but past u64 is just too large.
    let Ok(text) = value.to_str() else {
        return Ok(None);
    };
    let text = text.trim();
    // RFC 9110 §8.6: 1*DIGIT. `u64`'s parser would also take a sign (`+5`).
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match text.parse::<u64>() {
        Ok(n) if n > limit => Err(Rejection::PayloadTooLarge { limit }),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(Rejection::PayloadTooLarge { limit }),
    }
}

/// Step 7: `Content-Type` is `application/json` or `application/*+json`, with an optional UTF-8
/// (or US-ASCII) charset.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), Rejection> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(Rejection::UnsupportedMediaType { content_type: None });
    };
    let refuse = || Rejection::UnsupportedMediaType {
        content_type: Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
    };
    let mime: mime::Mime = value
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(refuse)?;
    let is_json = mime.type_() == mime::APPLICATION
        && (mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON));
    let charset_ok = match mime.get_param(mime::CHARSET) {
        None => true,
        Some(cs) => cs == mime::UTF_8 || cs.as_str().eq_ignore_ascii_case("us-ascii"),
    };
    if is_json && charset_ok {
        Ok(())
    } else {
        Err(refuse())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn content_types() {
        struct Case {
            input: Option<&'static str>,
            want: bool,
        }
        let cases = [
            Case {
                input: Some("application/json"),
                want: true,
            },
            Case {
                input: Some("application/json; charset=utf-8"),
                want: true,
            },
            Case {
                input: Some("Application/JSON; charset=UTF-8"),
                want: true,
            },
            Case {
                input: Some("application/cloudevents+json"),
                want: true,
            },
            Case {
                input: Some("application/json; charset=latin1"),
                want: false,
            },
            Case {
                input: Some("text/plain"),
                want: false,
            },
            Case {
                input: Some("application/x-www-form-urlencoded"),
                want: false,
            },
            Case {
                input: Some("json"),
                want: false,
            },
            Case {
                input: Some(""),
                want: false,
            },
            Case {
                input: None,
                want: false,
            },
        ];
        for c in cases {
            let mut h = HeaderMap::new();
            if let Some(v) = c.input {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            }
            let got = check_content_type(&h);
            assert_eq!(got.is_ok(), c.want, "{:?}", c.input);
            if let Err(r) = got {
                assert_eq!(r.status(), 415);
            }
        }
    }

    #[test]
    fn content_lengths() {
        struct Case {
            input: Option<&'static str>,
            want: Result<Option<u64>, u16>,
        }
        let cases = [
            Case {
                input: None,
                want: Ok(None),
            },
            Case {
                input: Some("10"),
                want: Ok(Some(10)),
            },
            Case {
                input: Some("100"),
                want: Ok(Some(100)),
            },
            Case {
                input: Some("101"),
                want: Err(413),
            },
            // RFC 9110: digits only. A sign is not a length (the streamed count decides).
            Case {
                input: Some("+5"),
                want: Ok(None),
            },
            Case {
                input: Some("+500"),
                want: Ok(None),
            },
            Case {
                input: Some("99999999999999999999999"),
                want: Err(413),
            },
            Case {
                input: Some("ten"),
                want: Ok(None),
            },
        ];
        for c in cases {
            let mut h = HeaderMap::new();
            if let Some(v) = c.input {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from_static(v));
            }
            let got = check_content_length(&h, 100).map_err(|r| r.status().as_u16());
            assert_eq!(got, c.want, "{:?}", c.input);
        }
    }

    #[test]
    fn methods() {
        assert!(check_method(&Method::POST).is_ok());
        for m in [Method::GET, Method::PUT, Method::DELETE, Method::HEAD] {
            assert_eq!(check_method(&m).unwrap_err().allow(), Some("POST"));
        }
    }

    #[test]
    fn http_1_1_needs_host_and_only_it_gets_100_continue() {
        let mut h = HeaderMap::new();
        assert_eq!(
            check_host(Version::HTTP_11, &h),
            Err(Rejection::MissingHost)
        );
        assert!(check_host(Version::HTTP_10, &h).is_ok());
        h.insert(header::HOST, "x".parse().unwrap());
        assert!(check_host(Version::HTTP_11, &h).is_ok());
        h.insert(header::EXPECT, "100-Continue".parse().unwrap());
        assert!(expects_continue(Version::HTTP_11, &h));
        assert!(!expects_continue(Version::HTTP_10, &h));
    }
}
