//! Which destinations of a route an event goes to, and in what order each gets its events
//! (DESIGN §13): a destination's [`Filter`] and its [`OrderKey`], decided over the event's
//! payload and headers. Plain functions over plain data: the delivery engine calls them when an
//! event is acknowledged, and again over the stored event after a restart.
//!
//! ```
//! use hookgate::core::{Filter, OrderKey};
//! use serde_json::json;
//!
//! let failed = Filter::new("filter", [("/type".to_string(), json!(["invoice.payment_failed", "charge.failed"]))]).unwrap();
//! let event = json!({"type": "charge.failed", "data": {"object": {"id": "ch_1"}}});
//! assert!(failed.matches(Some(&event)));
//! assert!(!failed.matches(Some(&json!({"type": "charge.succeeded"}))));
//!
//! let per_object = OrderKey::parse("order", "/data/object/id").unwrap();
//! let key = per_object.of(&[], Some(&event)).unwrap();
//! assert_eq!(Some(key), per_object.of(&[], Some(&json!({"data": {"object": {"id": "ch_1"}}}))));
//! assert_eq!(per_object.of(&[], Some(&json!({"data": {}}))), None, "no key: not ordered");
//! ```

use serde_json::Value;
use xxhash_rust::xxh3::xxh3_128_with_seed;

use super::{ConfigError, JsonPointer};

/// A destination's filter: each JSON pointer must designate one of its values (equal as JSON:
/// `"3"` is not `3`). An event whose body is not JSON matches no filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    rules: Vec<(JsonPointer, Vec<Value>)>,
}

impl Filter {
    /// A filter of `rules`, each a JSON pointer and the value it must equal, or an array of the
    /// values it may equal. `key` names the setting in errors.
    pub fn new<I>(key: &str, rules: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, Value)>,
    {
        let invalid = |reason: String| ConfigError::InvalidValue {
            key: key.to_owned(),
            reason,
        };
        let mut out = Vec::new();
        for (pointer, want) in rules {
            if !pointer.starts_with('/') {
                return Err(invalid(format!(
                    "{pointer:?} is not a JSON pointer (it must start with '/', e.g. \"/type\")"
                )));
            }
            let values = match want {
                Value::Array(values) if values.is_empty() => {
                    return Err(invalid(format!(
                        "{pointer:?}: an empty list matches nothing; list the values to let through"
                    )))
                }
                Value::Array(values) => values,
                one => vec![one],
            };
            out.push((JsonPointer::parse(&pointer), values));
        }
        if out.is_empty() {
            return Err(invalid(
                "is empty; write { \"/pointer\" = value } (or leave the filter out to take every event)"
                    .into(),
            ));
        }
        Ok(Self { rules: out })
    }

    /// Whether `payload` (the parsed body; `None`: not JSON) passes every rule.
    pub fn matches(&self, payload: Option<&Value>) -> bool {
        let Some(payload) = payload else {
            return false;
        };
        self.rules.iter().all(|(pointer, values)| {
            pointer
                .lookup(payload)
                .is_some_and(|got| values.iter().any(|v| v == got))
        })
    }

    /// The rules, as written: pointer and the values it may equal.
    pub fn rules(&self) -> impl Iterator<Item = (&str, &[Value])> {
        self.rules.iter().map(|(p, v)| (p.as_str(), v.as_slice()))
    }
}

/// Where a destination's ordering key comes from: a JSON pointer into the payload, or a header
/// (`header:NAME`). Events with the same key are delivered one at a time, in arrival order; an
/// event without the key (the pointer designates nothing or `null`, the header is absent) is
/// not ordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderKey {
    /// A JSON pointer into the payload.
    Pointer(JsonPointer),
    /// A request header, by its lowercase name.
    Header(String),
}

// Seed tweaks per kind, so a header value and a JSON string never share a key.
const SEED_STRING: u64 = 0x6f72_6465_7273_0001;
const SEED_JSON: u64 = 0x6f72_6465_726a_0002;
const SEED_HEADER: u64 = 0x6f72_6465_7268_0003;

impl OrderKey {
    /// `"/pointer"` or `"header:NAME"`; `key` names the setting in errors.
    pub fn parse(key: &str, spec: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidValue {
            key: key.to_owned(),
            reason,
        };
        if let Some(name) = spec.strip_prefix("header:") {
            let name = name.trim();
            http::HeaderName::from_bytes(name.as_bytes())
                .map(|h| OrderKey::Header(h.as_str().to_owned()))
                .map_err(|_| invalid(format!("{name:?} is not a header name")))
        } else if spec.starts_with('/') {
            Ok(OrderKey::Pointer(JsonPointer::parse(spec)))
        } else {
            Err(invalid(format!(
                "{spec:?} is not an ordering key: use a JSON pointer (\"/data/object/id\") or \"header:NAME\""
            )))
        }
    }

    /// The key of an event with `headers` (as stored: lowercase names) and `payload` (the parsed
    /// body, `None` if it is not JSON), hashed to 16 bytes; `None` if it has none.
    pub fn of(&self, headers: &[(String, Vec<u8>)], payload: Option<&Value>) -> Option<[u8; 16]> {
        let hash = match self {
            OrderKey::Pointer(p) => match p.lookup(payload?)? {
                Value::Null => return None,
                Value::String(s) => xxh3_128_with_seed(s.as_bytes(), SEED_STRING),
                other => xxh3_128_with_seed(other.to_string().as_bytes(), SEED_JSON),
            },
            OrderKey::Header(name) => {
                let (_, value) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))?;
                xxh3_128_with_seed(value, SEED_HEADER)
            }
        };
        Some(hash.to_le_bytes())
    }
}

impl std::fmt::Display for OrderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderKey::Pointer(p) => f.write_str(p.as_str()),
            OrderKey::Header(h) => write!(f, "header:{h}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_filter_lets_through_what_every_rule_allows() {
        struct Case {
            name: &'static str,
            rules: Vec<(&'static str, Value)>,
            payload: Option<Value>,
            want: bool,
        }
        let cases = [
            Case {
                name: "equal",
                rules: vec![("/status", json!("failed"))],
                payload: Some(json!({"status": "failed"})),
                want: true,
            },
            Case {
                name: "not equal",
                rules: vec![("/status", json!("failed"))],
                payload: Some(json!({"status": "completed"})),
                want: false,
            },
            Case {
                name: "missing",
                rules: vec![("/status", json!("failed"))],
                payload: Some(json!({})),
                want: false,
            },
            Case {
                name: "one of a list",
                rules: vec![("/type", json!(["a", "b"]))],
                payload: Some(json!({"type": "b"})),
                want: true,
            },
            Case {
                name: "none of a list",
                rules: vec![("/type", json!(["a", "b"]))],
                payload: Some(json!({"type": "c"})),
                want: false,
            },
            Case {
                name: "a number is not its text",
                rules: vec![("/n", json!(3))],
                payload: Some(json!({"n": "3"})),
                want: false,
            },
            Case {
                name: "every rule",
                rules: vec![("/a", json!(1)), ("/b/c", json!(true))],
                payload: Some(json!({"a": 1, "b": {"c": true}})),
                want: true,
            },
            Case {
                name: "every rule, one fails",
                rules: vec![("/a", json!(1)), ("/b/c", json!(true))],
                payload: Some(json!({"a": 1, "b": {"c": false}})),
                want: false,
            },
            Case {
                name: "not JSON",
                rules: vec![("/a", json!(1))],
                payload: None,
                want: false,
            },
        ];
        for c in cases {
            let f = Filter::new("f", c.rules.into_iter().map(|(p, v)| (p.to_string(), v))).unwrap();
            assert_eq!(f.matches(c.payload.as_ref()), c.want, "{}", c.name);
        }
    }

    #[test]
    fn a_filter_that_could_match_nothing_is_refused_by_name() {
        let err = |rules: Vec<(String, Value)>| {
            Filter::new("route[0].destination[1].filter", rules)
                .unwrap_err()
                .to_string()
        };
        assert!(err(vec![]).contains("route[0].destination[1].filter: is empty"));
        assert!(err(vec![("type".into(), json!(1))]).contains("not a JSON pointer"));
        assert!(err(vec![("/type".into(), json!([]))]).contains("empty list"));
    }

    #[test]
    fn an_order_key_comes_from_a_pointer_or_a_header() {
        let by_id = OrderKey::parse("o", "/data/object/id").unwrap();
        let a = by_id.of(&[], Some(&json!({"data": {"object": {"id": "x"}}})));
        let b = by_id.of(&[], Some(&json!({"data": {"object": {"id": "y"}}})));
        assert!(a.is_some() && a != b);
        assert_eq!(
            by_id.of(&[], Some(&json!({"data": {"object": {"id": null}}}))),
            None
        );
        assert_eq!(by_id.of(&[], None), None);
        let number = by_id.of(&[], Some(&json!({"data": {"object": {"id": 7}}})));
        let text = by_id.of(&[], Some(&json!({"data": {"object": {"id": "7"}}})));
        assert_ne!(number, text);
        let by_header = OrderKey::parse("o", "header:X-Shop-Id").unwrap();
        assert_eq!(by_header.to_string(), "header:x-shop-id");
        let headers = [("x-shop-id".to_string(), b"7".to_vec())];
        assert!(by_header.of(&headers, None).is_some());
        assert_ne!(
            by_header.of(&headers, None),
            text,
            "a header never shares a JSON string's key"
        );
        assert_eq!(by_header.of(&[], None), None);
        assert!(OrderKey::parse("o", "id")
            .unwrap_err()
            .to_string()
            .contains("not an ordering key"));
        assert!(OrderKey::parse("o", "header:a b").is_err());
    }
}
