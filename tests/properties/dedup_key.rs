use hookgate::core::{DedupKeySpec, JsonPointer, Rejection};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Value};

use super::generate::{json_value, text};
use super::harness::check;

/// Tokens that probe RFC 6901's corners: indices with signs, zeros and spaces, escapes.
fn odd_token() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "0",
            "1",
            "2",
            "01",
            "00",
            "+1",
            "+0",
            "-1",
            "-",
            " 1",
            "1 ",
            "",
            "~",
            "~0",
            "~1",
            "~2",
            "~01",
            "a/b",
            "a~b",
            "10",
            "99999999999999999999999",
            "1e0",
            "０",
            "1.0",
            "0x1",
            "generation_id",
        ])
        .prop_map(str::to_owned),
        text(),
    ]
}

/// A token as written in a pointer: escaped as RFC 6901 says, or raw.
fn escape(token: &str, raw: bool) -> String {
    if raw {
        token.to_owned()
    } else {
        token.replace('~', "~0").replace('/', "~1")
    }
}

/// The tokens of a path that exists in `value`, following `steps`.
fn path_into(value: &Value, steps: &[Index]) -> Vec<String> {
    let mut at = value;
    let mut tokens = Vec::new();
    for step in steps {
        match at {
            Value::Object(m) if !m.is_empty() => {
                let (k, v) = m.iter().nth(step.index(m.len())).expect("index in range");
                tokens.push(k.clone());
                at = v;
            }
            Value::Array(a) if !a.is_empty() => {
                let i = step.index(a.len());
                tokens.push(i.to_string());
                at = &a[i];
            }
            _ => break,
        }
    }
    tokens
}

#[test]
fn dedup_pointer_lookup_agrees_with_serde_json() {
    let strategy = (
        json_value(),
        proptest::collection::vec(any::<Index>(), 0..5),
        proptest::collection::vec(odd_token(), 0..3),
        any::<bool>(),
    );
    check(
        "dedup_pointer_lookup_agrees_with_serde_json",
        2048,
        strategy,
        |(value, steps, odd, raw)| {
            let mut tokens = path_into(&value, &steps);
            tokens.extend(odd);
            let text: String = tokens
                .iter()
                .map(|t| format!("/{}", escape(t, raw)))
                .collect();
            let pointer = JsonPointer::parse(&text);
            prop_assert_eq!(pointer.as_str(), text.as_str());
            prop_assert_eq!(
                pointer.lookup(&value),
                value.pointer(&text),
                "pointer {:?}",
                text
            );
            Ok(())
        },
    );
}

fn spec_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("body".to_owned()),
        "/[a-z_~/0-9]{0,16}",
        "header:[ -~]{0,16}",
        select(vec![
            "header:X-GitHub-Delivery",
            "header: webhook-id ",
            "header:",
            "header:bad name",
            "header:é",
            "Body",
            "body ",
            " /id",
            "generation_id",
            "",
            "/",
            "header:x\0",
        ])
        .prop_map(str::to_owned),
        text(),
    ]
}

/// A spec that parses prints as text that parses back to itself, and one that does not is
/// an error naming the setting.
#[test]
fn dedup_spec_text_round_trips() {
    check("dedup_spec_text_round_trips", 4096, spec_text(), |s| {
        match DedupKeySpec::parse("route[3].dedup.key", &s) {
            Ok(spec) => {
                let printed = spec.to_string();
                let again = printed.parse::<DedupKeySpec>();
                prop_assert_eq!(again.as_ref(), Ok(&spec));
                let want = s == "body"
                    || s.starts_with('/')
                    || s.strip_prefix("header:")
                        .is_some_and(|n| HeaderName::from_bytes(n.trim().as_bytes()).is_ok());
                prop_assert!(want, "{:?} accepted as {:?}", s, spec);
            }
            Err(e) => {
                prop_assert!(e.to_string().starts_with("route[3].dedup.key: "), "{}", e);
                prop_assert!(!(s == "body" || s.starts_with('/')));
            }
        }
        Ok(())
    });
}

fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    // What a header value may hold: visible ASCII, space, tab and obs-text.
    let byte = prop_oneof![
        8 => 0x20u8..0x7f,
        1 => Just(b'\t'),
        2 => 0x80u8..=0xff,
    ];
    proptest::collection::vec(byte, 0..40)
}

/// The same id always gives the same key; another id, another route, another kind of
/// key or another JSON type never does.
#[test]
fn dedup_keys_are_deterministic_scoped_typed_and_apart() {
    let strategy = (
        ("[a-z/0-9-]{0,12}", "[a-z/0-9-]{0,12}"),
        (json_value(), json_value()),
        (header_bytes(), header_bytes()),
    );
    check(
        "dedup_keys_are_deterministic_scoped_typed_and_apart",
        1024,
        strategy,
        |((scope, other_scope), (a, b), (ha, hb))| {
            let none = HeaderMap::new();
            let pointer = DedupKeySpec::default();
            let key = |scope: &str, v: &Value| {
                pointer.extract(scope, &none, None, Some(&json!({ "generation_id": v })))
            };
            match key(&scope, &a) {
                Ok(k) => {
                    prop_assert!(!a.is_null());
                    prop_assert_eq!(key(&scope, &a).ok(), Some(k));
                    if scope != other_scope {
                        prop_assert_ne!(key(&other_scope, &a).ok(), Some(k));
                    }
                    if a != b {
                        prop_assert_ne!(key(&scope, &b).ok(), Some(k), "{:?} and {:?}", a, b);
                    }
                    // A string id and the same text as another JSON type are two ids.
                    if let Some(s) = a.as_str() {
                        if let Ok(parsed) = serde_json::from_str::<Value>(s) {
                            if !parsed.is_string() && !parsed.is_null() {
                                prop_assert_ne!(key(&scope, &parsed).ok(), Some(k));
                            }
                        }
                    }
                }
                Err(r) => {
                    prop_assert!(a.is_null(), "{:?} refused: {:?}", a, r);
                    prop_assert!(matches!(r, Rejection::MissingDedupKey { .. }), "{:?}", r);
                    prop_assert_eq!(r.status().as_u16(), 422);
                }
            }
            // Header and body keys: bytes in, the same bytes never alias across kinds.
            let mut headers = HeaderMap::new();
            headers.insert(
                "x-id",
                HeaderValue::from_bytes(&ha).expect("generated header bytes are valid"),
            );
            let by_header = DedupKeySpec::parse("k", "header:X-Id")
                .expect("a valid spec")
                .extract(&scope, &headers, None, None)
                .expect("the header is there");
            let by_body = DedupKeySpec::Body
                .extract(&scope, &none, Some(&ha), None)
                .expect("a body is given");
            prop_assert_ne!(by_header, by_body);
            if let Ok(text) = std::str::from_utf8(&ha) {
                let by_string = key(&scope, &Value::String(text.to_owned())).expect("a string id");
                prop_assert_ne!(by_string, by_header);
                prop_assert_ne!(by_string, by_body);
            }
            if ha != hb {
                prop_assert_ne!(
                    DedupKeySpec::Body
                        .extract(&scope, &none, Some(&hb), None)
                        .ok(),
                    Some(by_body)
                );
            }
            // Without what it reads, a key is a 500, not a guess.
            prop_assert!(matches!(
                pointer.extract(&scope, &none, Some(&ha), None),
                Err(Rejection::PayloadNotParsed)
            ));
            prop_assert!(matches!(
                DedupKeySpec::Body.extract(&scope, &none, None, Some(&a)),
                Err(Rejection::PayloadNotParsed)
            ));
            Ok(())
        },
    );
}

/// Several pointers: tuples that differ anywhere, including where one part's end moves into
/// the next (`("ab","c")` against `("a","bc")`), are different keys.
#[test]
fn dedup_composite_keys_do_not_alias() {
    let strategy = (text(), any::<Index>(), any::<Index>(), text());
    check(
        "dedup_composite_keys_do_not_alias",
        2048,
        strategy,
        |(joined, i, j, third)| {
            let chars: Vec<char> = joined.chars().collect();
            let (i, j) = (i.index(chars.len() + 1), j.index(chars.len() + 1));
            let split = |at: usize| {
                let (a, b) = chars.split_at(at);
                json!({"a": a.iter().collect::<String>(), "b": b.iter().collect::<String>(), "c": third})
            };
            let spec = DedupKeySpec::pointers("k", ["/a", "/b", "/c"]).expect("valid pointers");
            let none = HeaderMap::new();
            let (x, y) = (split(i), split(j));
            let kx = spec
                .extract("r", &none, None, Some(&x))
                .expect("all present");
            let ky = spec
                .extract("r", &none, None, Some(&y))
                .expect("all present");
            prop_assert_eq!(kx == ky, x == y, "{} / {}", x, y);
            Ok(())
        },
    );
}
