//! Step 12's input: the key that identifies an event, stored as a 128-bit hash.
//!
//! A key is read from JSON pointer(s) into the payload (default `/generation_id`), from a header
//! (`header:NAME`), or is the whole raw body (`body`). The key's bytes, prefixed by a scope (the
//! route name, so two routes never share keys), are hashed with XXH3-128.
//!
//! Why XXH3-128 and not SHA-256: keys come only from allowlisted senders, and a forged collision
//! would need a future `generation_id` in advance; at 128 bits an accidental collision is
//! negligible (birthday bound ~2^64 keys). XXH3 hashes a 36-byte id in a few nanoseconds and a
//! 1 MiB body (the `body` key) in tens of microseconds, an order of magnitude below SHA-256.
//!
//! ```
//! use hookgate::core::DedupKeySpec;
//! use http::HeaderMap;
//!
//! let spec: DedupKeySpec = "/generation_id".parse().unwrap();
//! let a = serde_json::json!({"generation_id": "550e8400-e29b-41d4-a716-446655440000"});
//! let k1 = spec.extract("o3-video", &HeaderMap::new(), None, Some(&a)).unwrap();
//! let k2 = spec.extract("o3-video", &HeaderMap::new(), None, Some(&a)).unwrap();
//! let other_route = spec.extract("other", &HeaderMap::new(), None, Some(&a)).unwrap();
//! assert_eq!(k1, k2);
//! assert_ne!(k1, other_route);
//! ```

use std::str::FromStr;

use http::{HeaderMap, HeaderName};
use serde_json::Value;
use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64};

use super::{ConfigError, Rejection};

/// A 128-bit dedup key (a hash of the scope and the key's bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupKey([u8; 16]);

impl DedupKey {
    /// From a 128-bit value.
    pub const fn from_u128(v: u128) -> Self {
        Self(v.to_le_bytes())
    }

    /// As a 128-bit value.
    pub const fn as_u128(self) -> u128 {
        u128::from_le_bytes(self.0)
    }

    /// From the 16 bytes [`to_bytes`](Self::to_bytes) gave.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 bytes (little endian), e.g. to persist the key.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0
    }
}

// The key is already a uniform hash: feeding one 64-bit fold lets a pass-through hasher use it
// directly (see store::memory). Any other hasher still works.
impl std::hash::Hash for DedupKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let v = self.as_u128();
        state.write_u64((v as u64) ^ ((v >> 64) as u64));
    }
}

/// Where the dedup key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupKeySpec {
    /// One or more JSON pointers into the payload; all must be present and non-null.
    Pointers(Vec<JsonPointer>),
    /// A request header.
    Header(HeaderName),
    /// The raw body bytes.
    Body,
}

impl Default for DedupKeySpec {
    fn default() -> Self {
        DedupKeySpec::Pointers(vec![JsonPointer::parse("/generation_id")])
    }
}

impl FromStr for DedupKeySpec {
    type Err = String;

    /// `/pointer`, `header:NAME` or `body`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "body" {
            Ok(DedupKeySpec::Body)
        } else if let Some(name) = s.strip_prefix("header:") {
            HeaderName::from_str(name.trim())
                .map(DedupKeySpec::Header)
                .map_err(|_| format!("{name:?} is not a valid header name"))
        } else if s.starts_with('/') {
            Ok(DedupKeySpec::Pointers(vec![JsonPointer::parse(s)]))
        } else {
            Err(format!(
                "{s:?} is not a dedup key: use a JSON pointer (\"/generation_id\"), \"header:NAME\" or \"body\""
            ))
        }
    }
}

impl std::fmt::Display for DedupKeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DedupKeySpec::Pointers(p) => {
                for (i, p) in p.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(&p.text)?;
                }
                Ok(())
            }
            DedupKeySpec::Header(h) => write!(f, "header:{h}"),
            DedupKeySpec::Body => f.write_str("body"),
        }
    }
}

impl DedupKeySpec {
    /// Parses a spec, naming `key` in the error.
    pub fn parse(key: &str, s: &str) -> Result<Self, ConfigError> {
        s.parse().map_err(|reason| ConfigError::InvalidDedupKey {
            key: key.to_owned(),
            reason,
        })
    }

    /// Several JSON pointers combined into one key (all must be present).
    pub fn pointers<I, S>(key: &str, pointers: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let pointers: Vec<String> = pointers.into_iter().map(Into::into).collect();
        if pointers.is_empty() {
            return Err(ConfigError::InvalidDedupKey {
                key: key.to_owned(),
                reason: "no JSON pointer given".into(),
            });
        }
        if let Some(bad) = pointers.iter().find(|p| !p.starts_with('/')) {
            return Err(ConfigError::InvalidDedupKey {
                key: key.to_owned(),
                reason: format!("{bad:?} is not a JSON pointer (must start with '/')"),
            });
        }
        Ok(DedupKeySpec::Pointers(
            pointers.iter().map(|p| JsonPointer::parse(p)).collect(),
        ))
    }

    /// Whether extraction needs the parsed payload.
    pub fn needs_payload(&self) -> bool {
        matches!(self, DedupKeySpec::Pointers(_))
    }

    /// Extracts and hashes the key. Pointer keys need the parsed `payload` and `body` keys the
    /// `raw` body; without them the answer is [`Rejection::PayloadNotParsed`].
    pub fn extract(
        &self,
        scope: &str,
        headers: &HeaderMap,
        raw: Option<&[u8]>,
        payload: Option<&Value>,
    ) -> Result<DedupKey, Rejection> {
        let seed = xxh3_64(scope.as_bytes());
        let missing = || Rejection::MissingDedupKey {
            key: self.to_string(),
        };
        let hash = match self {
            DedupKeySpec::Pointers(pointers) => {
                let payload = payload.ok_or(Rejection::PayloadNotParsed)?;
                match pointers.as_slice() {
                    // The common case, one string id: hashed in place, no allocation.
                    [p] => match p.lookup(payload) {
                        None | Some(Value::Null) => return Err(missing()),
                        Some(Value::String(s)) => {
                            xxh3_128_with_seed(s.as_bytes(), seed ^ KIND_STRING)
                        }
                        Some(other) => {
                            xxh3_128_with_seed(other.to_string().as_bytes(), seed ^ KIND_JSON)
                        }
                    },
                    _ => {
                        // Each part length-prefixed and typed, so ("ab","c") != ("a","bc").
                        let mut buf = Vec::with_capacity(64 * pointers.len());
                        for p in pointers {
                            let (tag, text) = match p.lookup(payload) {
                                None | Some(Value::Null) => return Err(missing()),
                                Some(Value::String(s)) => {
                                    (b's', std::borrow::Cow::Borrowed(s.as_str()))
                                }
                                Some(other) => (b'j', std::borrow::Cow::Owned(other.to_string())),
                            };
                            buf.push(tag);
                            buf.extend_from_slice(&(text.len() as u64).to_le_bytes());
                            buf.extend_from_slice(text.as_bytes());
                        }
                        xxh3_128_with_seed(&buf, seed ^ KIND_COMPOSITE)
                    }
                }
            }
            DedupKeySpec::Header(name) => {
                let value = headers.get(name).ok_or_else(missing)?;
                xxh3_128_with_seed(value.as_bytes(), seed ^ KIND_HEADER)
            }
            DedupKeySpec::Body => {
                xxh3_128_with_seed(raw.ok_or(Rejection::PayloadNotParsed)?, seed ^ KIND_BODY)
            }
        };
        Ok(DedupKey::from_u128(hash))
    }
}

impl DedupKeySpec {
    /// The keys an event whose dedup key reads `value` may have been stored with, for a search
    /// by key (`hookgate events list --key`): the value as the sender sent it (one pointer: a
    /// JSON string, or a number or other JSON value written out; a header's value), and `value`
    /// itself when it is a key's 32 hex digits as the history shows them. A composite or
    /// `body` key is found by its hex digits only.
    pub fn candidates(&self, scope: &str, value: &str) -> Vec<DedupKey> {
        let seed = xxh3_64(scope.as_bytes());
        let mut keys = Vec::new();
        match self {
            DedupKeySpec::Pointers(pointers) if pointers.len() == 1 => {
                keys.push(xxh3_128_with_seed(value.as_bytes(), seed ^ KIND_STRING));
                if let Ok(json) = serde_json::from_str::<Value>(value) {
                    if !json.is_string() && !json.is_null() {
                        keys.push(xxh3_128_with_seed(
                            json.to_string().as_bytes(),
                            seed ^ KIND_JSON,
                        ));
                    }
                }
            }
            DedupKeySpec::Header(_) => {
                keys.push(xxh3_128_with_seed(value.as_bytes(), seed ^ KIND_HEADER));
            }
            DedupKeySpec::Pointers(_) | DedupKeySpec::Body => {}
        }
        let mut out: Vec<DedupKey> = keys.into_iter().map(DedupKey::from_u128).collect();
        out.extend(DedupKey::from_hex(value));
        out
    }
}

impl DedupKey {
    /// The key's 16 bytes as 32 lowercase hex digits (as the event history shows it).
    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key of 32 hex digits ([`to_hex`](Self::to_hex)'s form).
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 32 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(bytes))
    }
}

// Seed tweaks per key kind, so a header value and a body with the same bytes never share a key.
const KIND_STRING: u64 = 0x7374_7269_6e67_0001;
const KIND_JSON: u64 = 0x6a73_6f6e_0000_0002;
const KIND_COMPOSITE: u64 = 0x636f_6d70_0000_0003;
const KIND_HEADER: u64 = 0x6865_6164_0000_0004;
const KIND_BODY: u64 = 0x626f_6479_0000_0005;

/// A JSON pointer (RFC 6901), split into unescaped tokens once, at configuration time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPointer {
    text: String,
    tokens: Vec<String>,
}

impl JsonPointer {
    /// Parses `/a/b~1c` into tokens `a`, `b/c`. The caller checks the leading `/`.
    pub fn parse(text: &str) -> Self {
        let tokens = text
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        Self {
            text: text.to_owned(),
            tokens,
        }
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value the pointer designates, like `Value::pointer` without re-parsing the pointer.
    pub fn lookup<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        self.tokens.iter().try_fold(value, |v, token| match v {
            Value::Object(map) => map.get(token),
            Value::Array(items) => {
                // RFC 6901: decimal digits without leading zeros; `usize`'s parser would also
                // take a sign (`+0`).
                if !token.bytes().all(|b| b.is_ascii_digit())
                    || (token.len() > 1 && token.starts_with('0'))
                {
                    return None;
                }
                token.parse::<usize>().ok().and_then(|i| items.get(i))
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_key_is_found_by_the_value_the_sender_sent_or_its_hex() {
        let spec: DedupKeySpec = "/generation_id".parse().unwrap();
        let body = serde_json::json!({"generation_id": "g-1", "n": 7});
        let key = spec
            .extract("r", &HeaderMap::new(), None, Some(&body))
            .unwrap();
        assert!(spec.candidates("r", "g-1").contains(&key));
        assert!(!spec.candidates("other", "g-1").contains(&key));
        assert_eq!(DedupKey::from_hex(&key.to_hex()), Some(key));
        assert!(spec.candidates("r", &key.to_hex()).contains(&key));
        let number: DedupKeySpec = "/n".parse().unwrap();
        let key = number
            .extract("r", &HeaderMap::new(), None, Some(&body))
            .unwrap();
        assert!(number.candidates("r", "7").contains(&key));
        let mut headers = HeaderMap::new();
        headers.insert("x-id", "abc".parse().unwrap());
        let spec: DedupKeySpec = "header:x-id".parse().unwrap();
        let key = spec.extract("r", &headers, None, None).unwrap();
        assert!(spec.candidates("r", "abc").contains(&key));
        assert_eq!(DedupKey::from_hex("zz"), None);
    }

    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    #[test]
    fn parse_specs() {
        struct Case {
            input: &'static str,
            want: Result<DedupKeySpec, ()>,
        }
        let cases = [
            Case {
                input: "/generation_id",
                want: Ok(DedupKeySpec::default()),
            },
            Case {
                input: "body",
                want: Ok(DedupKeySpec::Body),
            },
            Case {
                input: "header:X-Event-Id",
                want: Ok(DedupKeySpec::Header(HeaderName::from_static("x-event-id"))),
            },
            Case {
                input: "header:bad name",
                want: Err(()),
            },
            Case {
                input: "generation_id",
                want: Err(()),
            },
        ];
        for c in cases {
            assert_eq!(
                DedupKeySpec::parse("dedup.key", c.input).map_err(|_| ()),
                c.want,
                "{}",
                c.input
            );
        }
        let err = DedupKeySpec::parse("route[1].dedup.key", "nope").unwrap_err();
        assert!(err.to_string().contains("route[1].dedup.key"));
    }

    #[test]
    fn extraction() {
        let h = HeaderMap::new();
        let spec = DedupKeySpec::default();
        let a = json!({"generation_id": "x", "other": 1});
        let b = json!({"generation_id": "x", "other": 2});
        let c = json!({"generation_id": "y"});
        let ka = spec.extract("r", &h, None, Some(&a)).unwrap();
        assert_eq!(ka, spec.extract("r", &h, None, Some(&b)).unwrap());
        assert_ne!(ka, spec.extract("r", &h, None, Some(&c)).unwrap());
        assert_ne!(ka, spec.extract("r2", &h, None, Some(&a)).unwrap());
        // A string "1" and a number 1 are different keys.
        let s = spec
            .extract("r", &h, None, Some(&json!({"generation_id": "1"})))
            .unwrap();
        let n = spec
            .extract("r", &h, None, Some(&json!({"generation_id": 1})))
            .unwrap();
        assert_ne!(s, n);
        assert_eq!(
            spec.extract("r", &h, None, Some(&json!({})))
                .unwrap_err()
                .status(),
            422
        );
        assert_eq!(
            spec.extract("r", &h, None, Some(&json!({"generation_id": null})))
                .unwrap_err()
                .status(),
            422
        );
        assert_eq!(spec.extract("r", &h, None, None).unwrap_err().status(), 500);
    }

    #[test]
    fn pointer_lookup_matches_serde_json() {
        let v = json!({"a": {"b/c": [10, {"~k": 3}]}, "": 1});
        for p in [
            "/a",
            "/a/b~1c",
            "/a/b~1c/0",
            "/a/b~1c/1/~0k",
            "/a/b~1c/01",
            "/a/b~1c/9",
            "/",
            "/x/y",
        ] {
            assert_eq!(JsonPointer::parse(p).lookup(&v), v.pointer(p), "{p}");
        }
    }

    #[test]
    fn kinds_do_not_alias() {
        let mut h = HeaderMap::new();
        h.insert("x-id", HeaderValue::from_static("abc"));
        let header = DedupKeySpec::parse("k", "header:X-Id")
            .unwrap()
            .extract("r", &h, None, None)
            .unwrap();
        let body = DedupKeySpec::Body
            .extract("r", &h, Some(b"abc"), None)
            .unwrap();
        let pointer = DedupKeySpec::default()
            .extract("r", &h, None, Some(&json!({"generation_id": "abc"})))
            .unwrap();
        assert_ne!(header, body);
        assert_ne!(header, pointer);
        assert_ne!(body, pointer);
    }

    #[test]
    fn composite_pointers_do_not_alias() {
        let h = HeaderMap::new();
        let spec = DedupKeySpec::pointers("k", ["/a", "/b"]).unwrap();
        let k1 = spec
            .extract("r", &h, None, Some(&json!({"a": "xy", "b": "z"})))
            .unwrap();
        let k2 = spec
            .extract("r", &h, None, Some(&json!({"a": "x", "b": "yz"})))
            .unwrap();
        assert_ne!(k1, k2);
    }

    #[test]
    fn header_and_body_keys() {
        let mut h = HeaderMap::new();
        let spec = DedupKeySpec::parse("k", "header:X-Id").unwrap();
        assert_eq!(spec.extract("r", &h, None, None).unwrap_err().status(), 422);
        h.insert("x-id", HeaderValue::from_static("42"));
        assert!(spec.extract("r", &h, None, None).is_ok());
        let body = DedupKeySpec::Body;
        assert_eq!(
            body.extract("r", &h, Some(b"abc"), None).unwrap(),
            body.extract("r", &h, Some(b"abc"), None).unwrap()
        );
        assert_ne!(
            body.extract("r", &h, Some(b"abc"), None).unwrap(),
            body.extract("r", &h, Some(b"abd"), None).unwrap()
        );
    }
}
