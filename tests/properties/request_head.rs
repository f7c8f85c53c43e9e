use hookgate::core::{request_head, Rejection};
use http::{header, HeaderMap, HeaderValue, Method, Version};
use proptest::prelude::*;
use proptest::sample::select;

use super::harness::check;

fn value() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![8 => 0x20u8..0x7f, 1 => Just(b'\t'), 1 => 0x80u8..=0xff];
    prop_oneof![
        select(vec![
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/cloudevents+json",
            "application/json; charset=latin1",
            "text/plain",
            "application/json;",
            "application/json; charset=\"utf-8\"",
            "application/",
            "/json",
            "json",
            "application/jsonx",
            "application/json+x",
            "application/json; charset=us-ascii",
            "0",
            "00",
            "+5",
            "-1",
            " 7 ",
            "1e3",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
            "100-continue",
            "100-Continue",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        "[0-9]{1,25}".prop_map(String::into_bytes),
        proptest::collection::vec(byte, 0..40),
    ]
}

/// The head checks of steps 4, 6 and 7 over any header values: no panic; a declared
/// length is returned only when it is the header's number and within the limit; all
/// digits beyond the limit is 413; an accepted media type is JSON.
#[test]
fn request_head_checks_answer_any_values() {
    let strategy = (
        proptest::option::of(value()),
        proptest::option::of(value()),
        proptest::option::of(value()),
        0u64..2048,
        select(vec![
            Method::POST,
            Method::GET,
            Method::PUT,
            Method::OPTIONS,
        ]),
        any::<bool>(),
    );
    check(
        "request_head_checks_answer_any_values",
        4096,
        strategy,
        |(length, media, expect, limit, method, http_11)| {
            let mut h = HeaderMap::new();
            for (name, v) in [
                (header::CONTENT_LENGTH, &length),
                (header::CONTENT_TYPE, &media),
                (header::EXPECT, &expect),
            ] {
                if let Some(v) = v {
                    h.insert(
                        name,
                        HeaderValue::from_bytes(v).expect("valid header bytes"),
                    );
                }
            }
            let text = length
                .as_deref()
                .and_then(|b| std::str::from_utf8(b).ok())
                .map(str::trim);
            match request_head::check_content_length(&h, limit) {
                Ok(Some(n)) => {
                    prop_assert!(n <= limit);
                    prop_assert_eq!(text.and_then(|t| t.parse::<u64>().ok()), Some(n));
                }
                Ok(None) => {
                    prop_assert!(
                        !text.is_some_and(
                            |t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())
                        ),
                        "digits {:?} read as no length",
                        text
                    )
                }
                Err(r) => {
                    prop_assert!(matches!(r, Rejection::PayloadTooLarge { .. }), "{:?}", r);
                    let t = text.unwrap_or("");
                    prop_assert!(t.parse::<u64>().map_or(
                        !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()),
                        |n| n > limit
                    ));
                }
            }
            if request_head::check_content_type(&h).is_ok() {
                let m =
                    String::from_utf8_lossy(media.as_deref().unwrap_or(b"")).to_ascii_lowercase();
                prop_assert!(
                    m.trim_start().starts_with("application/") && m.contains("json"),
                    "{}",
                    m
                );
            }
            let version = if http_11 {
                Version::HTTP_11
            } else {
                Version::HTTP_10
            };
            if request_head::expects_continue(version, &h) {
                prop_assert!(http_11);
            }
            let all = request_head::check(&method, &h, limit);
            if method != Method::POST {
                prop_assert!(matches!(all, Err(Rejection::MethodNotAllowed)));
            }
            Ok(())
        },
    );
}
