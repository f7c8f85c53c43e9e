//! Strategies shared by several properties.

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

/// Strings as hostile senders write them: any Unicode, NULs, bidi controls, BOMs, astral
/// characters, escapes that look like JSON, long runs.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{0,12}",
        2 => any::<String>(),
        1 => select(vec![
            "", "\0", "\u{202e}", "\u{feff}", "😀", "\u{10ffff}", "\\u0000", "\"", "\\",
            "a\0b", "\r\n", "\u{300}", "ｇｅｎｅｒａｔｉｏｎ",
        ])
        .prop_map(str::to_owned),
        1 => (1usize..5_000).prop_map(|n| "x".repeat(n)),
    ]
}

/// Any JSON value, up to a few levels deep.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Object member names: the contract's own often, so values land where the checks look.
pub fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => select(vec![
            "generation_id", "status", "video_url", "model", "message", "id", "a", "",
            "a/b", "~", "0",
        ])
        .prop_map(str::to_owned),
        1 => text(),
    ]
}

/// A canonical generation id in lower, upper or mixed case.
pub fn uuid() -> impl Strategy<Value = String> {
    (any::<u128>(), 0..3u8).prop_map(|(n, case)| {
        let s = uuid::Uuid::from_u128(n).hyphenated().to_string();
        match case {
            0 => s,
            1 => s.to_uppercase(),
            _ => s
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect(),
        }
    })
}

/// The reference sender's payload (DESIGN §1): completed or failed, a fresh id.
pub fn provider_payload() -> impl Strategy<Value = String> {
    (uuid(), any::<bool>(), select(super::validate::KNOWN_CODES.to_vec())).prop_map(
        |(id, completed, code)| {
            if completed {
                format!(
                    r#"{{"generation_id":"{id}","status":"completed","video_url":"https://cdn.example.com/videos/{id}.mp4","model":"kling-o3-video-10s-pro","message":null}}"#
                )
            } else {
                format!(
                    r#"{{"generation_id":"{id}","status":"failed","video_url":null,"model":"kling-o3-video-10s-pro","message":"{code}"}}"#
                )
            }
        },
    )
}

/// Bytes that print as a byte string (`b"{\"a\"..."`), so a minimal failing input reads.
#[derive(Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

impl std::ops::Deref for Bytes {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
pub enum Mutation {
    Truncate(proptest::sample::Index),
    Delete(proptest::sample::Index),
    Replace(proptest::sample::Index, u8),
    Insert(proptest::sample::Index, &'static [u8]),
    Duplicate(proptest::sample::Index, proptest::sample::Index),
}

/// Byte runs that break parsers: NULs, line ends, quotes, brackets, invalid and odd UTF-8.
pub const NASTY: &[&[u8]] = &[
    b"\0",
    b"\r",
    b"\n",
    b"\r\n",
    b" ",
    b"\t",
    b":",
    b",",
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\x7f",
    b"\x80",
    b"\xff",
    b"\xc3\xa9",
    b"\xe2\x80\xae",
    b"\xf0\x9f\x98\x80",
    b"\xef\xbb\xbf",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\\u0000",
    b"\\ud800",
    b"1e999999",
    b"-0",
    b"=",
    b"#",
    b"'''",
    b"\"\"\"",
];

pub fn mutation() -> impl Strategy<Value = Mutation> {
    use proptest::sample::Index;
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => any::<Index>().prop_map(Mutation::Delete),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Replace(i, b)),
        3 => (any::<Index>(), select(NASTY.to_vec())).prop_map(|(i, s)| Mutation::Insert(i, s)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
    ]
}

/// `bytes` after `mutations`, in order.
pub fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
            Mutation::Delete(i) if len > 0 => {
                bytes.remove(i.index(len));
            }
            Mutation::Replace(i, b) if len > 0 => bytes[i.index(len)] = *b,
            Mutation::Insert(i, s) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, s.iter().copied());
            }
            Mutation::Duplicate(a, b) if len > 0 => {
                // A slice copied elsewhere: a repeated line, member or header.
                let (x, y) = (a.index(len), b.index(len));
                let (from, to) = (x.min(y), x.max(y));
                let piece = bytes[from..to.min(from + 4096)].to_vec();
                bytes.splice(to..to, piece);
            }
            _ => {}
        }
    }
    bytes
}
