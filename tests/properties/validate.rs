use std::collections::BTreeMap;

use hookgate::core::{ErrorCode, EventStatus, Rejection, Validator, MAX_LISTED_FIELDS};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};

use super::generate::{json_value, key, mutate, mutation, provider_payload, text, uuid, Bytes};
use super::harness::check;

/// The six documented error codes (DESIGN §1).
pub const KNOWN_CODES: [&str; 6] = [
    "CONTENT_POLICY_VIOLATION",
    "IMAGE_INACCESSIBLE",
    "INVALID_IMAGE",
    "TIMEOUT",
    "TASK_FAILED",
    "MAINTENANCE",
];

/// A schema of the kind a provider publishes, for the arbitrary-bytes property.
fn provider_schema() -> Value {
    json!({
        "type": "object",
        "required": ["id", "type"],
        "properties": {
            "id": {"type": "string", "minLength": 1, "maxLength": 64},
            "type": {"enum": ["invoice.paid", "invoice.failed"]},
            "data": {"type": "object", "additionalProperties": {"type": ["string", "integer", "null"]}}
        }
    })
}

fn profiles() -> Vec<(&'static str, Validator)> {
    vec![
        ("runblob", Validator::runblob()),
        ("runblob_strict", Validator::runblob_strict()),
        ("json", Validator::json()),
        (
            "schema",
            Validator::schema("schema", &provider_schema()).expect("a valid schema"),
        ),
    ]
}

/// What every refusal of steps 10–11 must look like: 400 or 422, a bounded field list, a
/// JSON answer naming its reason, small whatever the body.
fn well_formed(r: &Rejection) -> Result<(), TestCaseError> {
    let status = r.status().as_u16();
    prop_assert!(status == 400 || status == 422, "status {}", status);
    if let Rejection::InvalidPayload { fields, total } = r {
        prop_assert_eq!(status, 422);
        prop_assert!(!fields.is_empty() && fields.len() <= MAX_LISTED_FIELDS);
        prop_assert!(*total >= fields.len());
        for f in fields {
            // 200 bytes and an ellipsis.
            prop_assert!(f.field.len() <= 203 && f.message.len() <= 203, "{:?}", f);
            prop_assert!(f.field.is_empty() || f.field.starts_with('/'), "{:?}", f);
        }
    }
    let answer = r.answer();
    prop_assert!(
        answer.body.len() < 16 * 1024,
        "a {} byte answer",
        answer.body.len()
    );
    let body: Value = serde_json::from_slice(&answer.body)
        .map_err(|e| TestCaseError::fail(format!("the answer is not JSON: {e}")))?;
    prop_assert_eq!(&body["error"], r.reason().as_str());
    Ok(())
}

/// JSON text that may repeat a member name, at any depth, with the parser's own view of
/// whether it does.
#[derive(Debug, Clone)]
enum Doc {
    Leaf(Value),
    Array(Vec<Doc>),
    Object(Vec<(String, Doc)>),
}

impl Doc {
    fn has_repeated_name(&self) -> bool {
        match self {
            Doc::Leaf(_) => false,
            Doc::Array(items) => items.iter().any(Doc::has_repeated_name),
            Doc::Object(members) => {
                let mut seen = std::collections::HashSet::new();
                members.iter().any(|(k, _)| !seen.insert(k.as_str()))
                    || members.iter().any(|(_, v)| v.has_repeated_name())
            }
        }
    }

    fn write(&self, out: &mut String, spaced: bool) {
        let sep = if spaced { " , " } else { "," };
        match self {
            Doc::Leaf(v) => out.push_str(&v.to_string()),
            Doc::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(sep);
                    }
                    item.write(out, spaced);
                }
                out.push(']');
            }
            Doc::Object(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push_str(sep);
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push_str(if spaced { " : " } else { ":" });
                    v.write(out, spaced);
                }
                out.push('}');
            }
        }
    }
}

fn doc() -> impl Strategy<Value = Doc> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<i32>().prop_map(Value::from),
        "[a-z]{0,4}".prop_map(Value::String),
    ]
    .prop_map(Doc::Leaf);
    leaf.prop_recursive(5, 40, 5, |inner| {
        // Few names, so repeats happen; escapes that decode to the same name count too.
        let name = select(vec!["a", "b", "generation_id", "é"]).prop_map(str::to_owned);
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Doc::Array),
            proptest::collection::vec((name, inner), 0..5).prop_map(Doc::Object),
        ]
    })
}

/// Bodies from every direction: the provider's, JSON with odd values, JSON mutated byte by
/// byte, deep nesting at serde_json's limit, and raw bytes.
fn body() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        2 => provider_payload().prop_map(String::into_bytes),
        2 => json_value().prop_map(|v| serde_json::to_vec(&v).expect("a Value serialises")),
        3 => (
            prop_oneof![
                provider_payload(),
                json_value().prop_map(|v| v.to_string()),
            ],
            proptest::collection::vec(mutation(), 1..4),
        )
            .prop_map(|(text, m)| mutate(text.into_bytes(), &m)),
        1 => (120usize..136, any::<bool>(), any::<bool>()).prop_map(|(depth, arrays, closed)| {
            let (open, close) = if arrays { ("[", "]") } else { ("{\"a\":", "}") };
            let mut s = open.repeat(depth);
            s.push('1');
            if closed {
                s.push_str(&close.repeat(depth));
            }
            s.into_bytes()
        }),
        1 => select(vec![
            &b""[..], b" ", b"null", b"0", b"\"\"", b"[]", b"{}", b"\xef\xbb\xbf{}",
            b"{\"a\":1e999}", b"{\"a\":-0}", b"{\"a\":\"\\ud800\"}", b"{\"a\":\"\0\"}",
            b"{\"a\":1}\0", b"{\"a\" :1 ,}", b"{'a':1}", b"{\"a\":NaN}",
            b"\xfe\xff\0{\0}", b"{\"a\":18446744073709551616}",
        ])
        .prop_map(<[u8]>::to_vec),
        2 => proptest::collection::vec(any::<u8>(), 0..256),
    ]
    .prop_map(Bytes)
}

#[test]
fn validate_answers_any_body_consistently() {
    let profiles = profiles();
    check(
        "validate_answers_any_body_consistently",
        1536,
        body(),
        |bytes| {
            let oracle = serde_json::from_slice::<Value>(&bytes);
            let mut step_10 = None;
            let mut results = Vec::new();
            for (name, v) in &profiles {
                let got = v.check(&bytes);
                if let Err(r) = &got {
                    well_formed(r)?;
                }
                let refused_as_json = matches!(
                    &got,
                    Err(Rejection::MalformedJson { .. } | Rejection::DuplicateKey { .. })
                );
                // Step 10 is the same for every profile.
                match step_10 {
                    None => step_10 = Some(refused_as_json),
                    Some(first) => prop_assert_eq!(first, refused_as_json, "profile {}", name),
                }
                match (&oracle, &got) {
                    // A repeated name before the syntax error is reported first.
                    (Err(_), got) => prop_assert!(
                        matches!(
                            got,
                            Err(Rejection::MalformedJson { .. } | Rejection::DuplicateKey { .. })
                        ),
                        "serde_json refuses it, {} gave {:?}",
                        name,
                        got
                    ),
                    (Ok(_), Err(Rejection::MalformedJson { detail })) => {
                        prop_assert!(
                            false,
                            "serde_json reads it, {} says malformed: {}",
                            name,
                            detail
                        )
                    }
                    (Ok(value), Ok(payload)) => prop_assert_eq!(&payload.value, value),
                    _ => {}
                }
                results.push(got);
            }
            // runblob_strict is runblob that also refuses unknown codes; json wants an object.
            match (&results[0], &results[1]) {
                (Ok(p), Ok(q)) => {
                    let (c, d) = (
                        p.class.expect("runblob knows the class"),
                        q.class.expect("strict too"),
                    );
                    prop_assert_eq!(c, d);
                    prop_assert!(c.code != ErrorCode::Other);
                }
                (Err(_), Ok(_)) => prop_assert!(false, "strict accepted what runblob refused"),
                _ => {}
            }
            if let Ok(p) = &results[2] {
                prop_assert!(p.value.is_object());
            }
            if results[0].is_ok() {
                prop_assert!(results[2].is_ok(), "runblob accepted a body json refused");
            }
            Ok(())
        },
    );
}

#[test]
fn validate_refuses_a_repeated_name_at_any_depth() {
    check(
        "validate_refuses_a_repeated_name_at_any_depth",
        1536,
        (doc(), any::<bool>()),
        |(doc, spaced)| {
            let mut text = String::new();
            doc.write(&mut text, spaced);
            let got = Validator::json().check(text.as_bytes());
            if doc.has_repeated_name() {
                prop_assert!(
                    matches!(got, Err(Rejection::DuplicateKey { .. })),
                    "{} gave {:?}",
                    text,
                    got
                );
            } else {
                prop_assert!(
                    !matches!(
                        got,
                        Err(Rejection::DuplicateKey { .. } | Rejection::MalformedJson { .. })
                    ),
                    "{} gave {:?}",
                    text,
                    got
                );
            }
            Ok(())
        },
    );
}

/// Any JSON value: never a 400 (it is JSON, and a `Value` has no repeated names), `json`
/// accepts exactly the objects, and a non-object is one failing field, the body.
#[test]
fn validate_reads_any_json_value() {
    let profiles = profiles();
    check(
        "validate_reads_any_json_value",
        1024,
        (json_value(), any::<bool>()),
        |(value, pretty)| {
            let bytes = if pretty {
                serde_json::to_vec_pretty(&value)
            } else {
                serde_json::to_vec(&value)
            }
            .expect("a Value serialises");
            for (name, v) in &profiles {
                match v.check(&bytes) {
                    Ok(p) => prop_assert_eq!(&p.value, &value, "{}", name),
                    Err(r) => {
                        well_formed(&r)?;
                        prop_assert_eq!(r.status().as_u16(), 422, "{}: {:?}", name, r);
                        if !value.is_object() && *name != "schema" {
                            let Rejection::InvalidPayload { fields, .. } = &r else {
                                unreachable!("422 is InvalidPayload")
                            };
                            prop_assert_eq!(fields.len(), 1);
                            prop_assert_eq!(fields[0].field.as_str(), "");
                        }
                    }
                }
            }
            prop_assert_eq!(Validator::json().check(&bytes).is_ok(), value.is_object());
            Ok(())
        },
    );
}

/// One field of a runblob payload as generated: its JSON text (`None`: absent) and what
/// DESIGN §1 says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A value the table accepts for this field (whatever the status).
    Good,
    /// A value the table refuses.
    Bad,
    /// Absent or `null`.
    Absent,
    /// `status` only.
    Completed,
    Failed,
    /// `message` only: a documented code, an unknown code, an empty string.
    Known(usize),
    Unknown,
}

#[derive(Debug, Clone)]
struct Field {
    text: Option<String>,
    kind: Kind,
}

fn field(text: impl Into<String>, kind: Kind) -> Field {
    Field {
        text: Some(text.into()),
        kind,
    }
}

fn absent() -> impl Strategy<Value = Field> {
    prop_oneof![
        Just(Field {
            text: None,
            kind: Kind::Absent
        }),
        Just(field("null", Kind::Absent)),
    ]
}

fn quoted(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

fn generation_id() -> impl Strategy<Value = Field> {
    let malformed = (uuid(), 0..9u8).prop_map(|(id, how)| match how {
        0 => id.replace('-', ""),
        1 => format!("{{{id}}}"),
        2 => format!("urn:uuid:{id}"),
        3 => id[1..].to_owned(),
        4 => format!("{id} "),
        5 => format!("{}g{}", &id[..5], &id[6..]),
        6 => format!("{}-{}", &id[..7], &id[7..35]).replacen("--", "-", 1),
        7 => String::new(),
        _ => id.replacen('-', "\u{2010}", 1),
    });
    prop_oneof![
        6 => uuid().prop_map(|id| field(quoted(&id), Kind::Good)),
        3 => malformed.prop_map(|id| field(quoted(&id), Kind::Bad)),
        1 => select(vec!["7", "true", "[]", "{}"]).prop_map(|t| field(t, Kind::Bad)),
        1 => absent(),
    ]
}

fn model() -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => text()
            .prop_filter("non-empty", |s| !s.is_empty())
            .prop_map(|s| field(quoted(&s), Kind::Good)),
        2 => Just(field(quoted("kling-o3-video-10s-pro"), Kind::Good)),
        1 => select(vec!["\"\"", "0", "false", "[\"m\"]"]).prop_map(|t| field(t, Kind::Bad)),
        1 => absent(),
    ]
}

fn status() -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => Just(field("\"completed\"", Kind::Completed)),
        4 => Just(field("\"failed\"", Kind::Failed)),
        1 => select(vec![
            "\"done\"", "\"COMPLETED\"", "\"Failed\"", "\" completed\"", "\"\"", "1",
            "true", "[\"failed\"]", "\"completed\\u0000\"",
        ])
        .prop_map(|t| field(t, Kind::Bad)),
        1 => absent(),
    ]
}

fn video_url() -> impl Strategy<Value = Field> {
    let good = select(vec![
        "https://cdn.example.com/videos/550e8400.mp4",
        "http://127.0.0.1:8080/v.mp4",
        "https://[2001:db8::1]/v.mp4",
        "HTTPS://CDN.EXAMPLE.COM/A.MP4",
        "https://cdn.example.com/v.mp4?sig=a%20b&x=1#t=3",
        "https://bücher.example/v.mp4",
    ]);
    let bad = select(vec![
        "ftp://cdn.example.com/v.mp4",
        "/videos/v.mp4",
        "",
        "https://",
        "cdn.example.com/v.mp4",
        "mailto:a@example.com",
        "file:///tmp/v.mp4",
        "javascript:alert(1)",
        "https:// space.example/v.mp4",
        "data:video/mp4;base64,AAAA",
    ]);
    prop_oneof![
        4 => good.prop_map(|u| field(quoted(u), Kind::Good)),
        2 => bad.prop_map(|u| field(quoted(u), Kind::Bad)),
        1 => select(vec!["0", "true", "{}", "[\"https://a.example/v\"]"])
            .prop_map(|t| field(t, Kind::Bad)),
        3 => absent(),
    ]
}

fn message() -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => (0..KNOWN_CODES.len()).prop_map(|i| field(quoted(KNOWN_CODES[i]), Kind::Known(i))),
        2 => prop_oneof![
            "[A-Z_]{1,24}",
            Just("timeout".to_owned()),
            Just("TIMEOUT ".to_owned()),
            text(),
        ]
        .prop_filter("unknown, non-empty", |c| !c.is_empty() && !KNOWN_CODES.contains(&c.as_str()))
        .prop_map(|c| field(quoted(&c), Kind::Unknown)),
        1 => select(vec!["\"\"", "5", "[]", "{\"code\":\"TIMEOUT\"}"])
            .prop_map(|t| field(t, Kind::Bad)),
        3 => absent(),
    ]
}

/// What DESIGN §1's table says of a payload: the failing fields, in the order the checks
/// report them, and the event's class when the status is readable.
fn contract(f: &[Field; 5], strict: bool) -> (Vec<&'static str>, Option<(EventStatus, ErrorCode)>) {
    let [id, model, status, url, message] = f;
    let mut failing = Vec::new();
    if id.kind != Kind::Good {
        failing.push("/generation_id");
    }
    if model.kind != Kind::Good {
        failing.push("/model");
    }
    let class = match status.kind {
        Kind::Completed => {
            if url.kind != Kind::Good {
                failing.push("/video_url");
            }
            if message.kind != Kind::Absent {
                failing.push("/message");
            }
            Some((EventStatus::Completed, ErrorCode::None))
        }
        Kind::Failed => {
            if url.kind != Kind::Absent {
                failing.push("/video_url");
            }
            let code = match message.kind {
                Kind::Known(i) => ErrorCode::FAILED[i],
                Kind::Unknown => {
                    if strict {
                        failing.push("/message");
                    }
                    ErrorCode::Other
                }
                _ => {
                    failing.push("/message");
                    ErrorCode::Other
                }
            };
            Some((EventStatus::Failed, code))
        }
        _ => {
            failing.push("/status");
            None
        }
    };
    (failing, class)
}

/// A runblob payload: each field valid, refused or absent, extra members the sender added,
/// members in any order, compact or in the provider's spaced style; the fields, and the body.
fn runblob_payload() -> impl Strategy<Value = ([Field; 5], String)> {
    let extra = (key(), json_value()).prop_filter_map("not a contract field", |(k, v)| {
        (!["generation_id", "status", "video_url", "model", "message"].contains(&k.as_str()))
            .then(|| (k, v.to_string()))
    });
    (
        (generation_id(), model(), status(), video_url(), message()),
        proptest::collection::vec(extra, 0..4),
        any::<bool>(),
    )
        .prop_flat_map(|((a, b, c, d, e), extra, spaced)| {
            let fields = [a, b, c, d, e];
            let names = ["generation_id", "model", "status", "video_url", "message"];
            let mut members: Vec<(String, String)> = names
                .iter()
                .zip(&fields)
                .filter_map(|(k, f)| f.text.clone().map(|t| (quoted(k), t)))
                .collect();
            // Each extra name once: a repeated name is a 400, and this property is about
            // the 422s.
            let extra: BTreeMap<String, String> = extra.into_iter().collect();
            members.extend(extra.into_iter().map(|(k, v)| (quoted(&k), v)));
            (Just(fields), Just(members).prop_shuffle(), Just(spaced))
        })
        .prop_map(|(fields, members, spaced)| {
            let (colon, comma) = if spaced { (" : ", " ,\n") } else { (":", ",") };
            let body = members
                .iter()
                .map(|(k, v)| format!("{k}{colon}{v}"))
                .collect::<Vec<_>>()
                .join(comma);
            (fields, format!("{{{body}}}"))
        })
}

#[test]
fn validate_runblob_refuses_exactly_what_the_contract_refuses() {
    check(
        "validate_runblob_refuses_exactly_what_the_contract_refuses",
        1536,
        runblob_payload(),
        |(fields, body)| {
            for (strict, v) in [
                (false, Validator::runblob()),
                (true, Validator::runblob_strict()),
            ] {
                let (failing, class) = contract(&fields, strict);
                match v.check(body.as_bytes()) {
                    Ok(p) => {
                        prop_assert!(
                            failing.is_empty(),
                            "strict={} accepted; the contract refuses {:?}\n{}",
                            strict,
                            failing,
                            body
                        );
                        let c = p.class.expect("runblob knows the class");
                        prop_assert_eq!(Some((c.status, c.code)), class, "strict={}", strict);
                    }
                    Err(r) => {
                        well_formed(&r)?;
                        let Rejection::InvalidPayload {
                            fields: listed,
                            total,
                        } = &r
                        else {
                            return Err(TestCaseError::fail(format!(
                                "strict={strict}: {r:?} for\n{body}"
                            )));
                        };
                        let listed: Vec<&str> = listed.iter().map(|f| f.field.as_str()).collect();
                        prop_assert_eq!(&listed, &failing, "strict={}\n{}", strict, body);
                        prop_assert_eq!(*total, failing.len());
                    }
                }
            }
            Ok(())
        },
    );
}

/// A schema that refuses every non-integer member: the 422 lists at most 20 of them, each
/// by its pointer, and counts them all.
#[test]
fn validate_schema_lists_at_most_twenty_fields_and_counts_them_all() {
    let schema = Validator::schema(
        "schema",
        &json!({"type": "object", "additionalProperties": {"type": "integer"}}),
    )
    .expect("a valid schema");
    let member = (
        "[a-z~/]{1,12}",
        prop_oneof![any::<i64>().prop_map(Value::from), json_value(),],
    );
    check(
        "validate_schema_lists_at_most_twenty_fields_and_counts_them_all",
        384,
        proptest::collection::btree_map(member.0, member.1, 0..60),
        |members| {
            let is_integer = |v: &Value| {
                v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0)
            };
            let failing: Vec<String> = members
                .iter()
                .filter(|(_, v)| !is_integer(v))
                .map(|(k, _)| format!("/{}", k.replace('~', "~0").replace('/', "~1")))
                .collect();
            let body = serde_json::to_vec(&members).expect("a map serialises");
            match schema.check(&body) {
                Ok(_) => prop_assert!(failing.is_empty(), "accepted; refuses {:?}", failing),
                Err(r) => {
                    well_formed(&r)?;
                    let Rejection::InvalidPayload { fields, total } = &r else {
                        return Err(TestCaseError::fail(format!("{r:?}")));
                    };
                    prop_assert_eq!(*total, failing.len());
                    prop_assert_eq!(fields.len(), failing.len().min(MAX_LISTED_FIELDS));
                    for f in fields {
                        prop_assert!(
                            failing.contains(&f.field),
                            "{:?} not among {:?}",
                            f,
                            failing
                        );
                    }
                }
            }
            Ok(())
        },
    );
}

/// Schemas built from JSON Schema's keywords with well- and ill-shaped values.
fn schema() -> impl Strategy<Value = Value> {
    let odd_value = prop_oneof![
        select(vec![
            json!("string"),
            json!(["object", "null"]),
            json!("nope"),
            json!(0),
            json!(-1),
            json!(1e308),
            json!(0.0000001),
            json!(18446744073709551615u64),
            json!("("),
            json!("[a-"),
            json!("\\"),
            json!("a{99999}"),
            json!("(?=x)"),
            json!("\\p{Foo}"),
            json!("^[a-z]+$"),
            json!("#"),
            json!("#/$defs/a"),
            json!("#/nope"),
            json!("http://example.com/s.json"),
            json!("uuid"),
            json!("date-time"),
            json!(true),
            json!(false),
            json!(null),
            json!([]),
            json!({}),
            json!(["a", "a"]),
        ]),
        json_value(),
    ];
    let keyword = select(vec![
        "type",
        "properties",
        "required",
        "items",
        "minimum",
        "maximum",
        "maxLength",
        "minLength",
        "pattern",
        "enum",
        "const",
        "anyOf",
        "allOf",
        "oneOf",
        "not",
        "$ref",
        "format",
        "additionalProperties",
        "multipleOf",
        "minItems",
        "uniqueItems",
        "if",
        "then",
        "else",
        "$defs",
        "dependentRequired",
        "contains",
        "prefixItems",
        "propertyNames",
        "$schema",
        "$id",
        "$anchor",
        "$dynamicRef",
        "patternProperties",
        "unevaluatedProperties",
    ]);
    let leaf = prop_oneof![
        Just(json!(true)),
        Just(json!(false)),
        proptest::collection::vec((keyword.clone(), odd_value.clone()), 0..4).prop_map(|kv| {
            Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        }),
    ];
    leaf.prop_recursive(3, 24, 4, move |inner| {
        proptest::collection::vec(
            (
                keyword.clone(),
                prop_oneof![
                    inner.clone(),
                    proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                    proptest::collection::btree_map("[a-c]", inner, 0..3)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                    odd_value.clone(),
                ],
            ),
            0..5,
        )
        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    })
}

#[test]
fn schema_files_compile_or_name_the_key_and_validate_without_panicking() {
    check(
        "schema_files_compile_or_name_the_key_and_validate_without_panicking",
        512,
        (schema(), proptest::collection::vec(json_value(), 1..4)),
        |(schema, payloads)| {
            match Validator::schema("route[0].schema", &schema) {
                Err(e) => prop_assert!(e.to_string().starts_with("route[0].schema:"), "{}", e),
                Ok(v) => {
                    for p in payloads {
                        let bytes = serde_json::to_vec(&p).expect("a Value serialises");
                        if let Err(r) = v.check(&bytes) {
                            well_formed(&r)?;
                        }
                    }
                }
            }
            Ok(())
        },
    );
}
