//! Steps 10 and 11: the body is well-formed JSON, and valid for the route's profile.
//!
//! Profiles: `runblob` (the reference sender's contract, DESIGN §1), `json` (any JSON object),
//! `schema` (a JSON Schema, draft 2020-12, compiled once) and a user-supplied [`PayloadValidator`].
//! Every failing field is reported at once.
//!
//! ```
//! use hookgate::core::Validator;
//!
//! let v = Validator::runblob();
//! let ok = br#"{"generation_id":"550e8400-e29b-41d4-a716-446655440000","status":"completed",
//!              "video_url":"https://cdn.example.com/v.mp4","model":"kling-o3-video-10s-pro","message":null}"#;
//! let payload = v.check(ok).unwrap();
//! assert_eq!(payload.class.unwrap().code.as_str(), "none");
//!
//! let bad = br#"{"generation_id":"nope","status":"completed","model":""}"#;
//! let err = v.check(bad).unwrap_err();
//! assert_eq!(err.status(), 422);
//! assert!(err.to_string().contains("3 fields"));
//! ```

use std::sync::Arc;

use serde_json::Value;

#[cfg(feature = "schema")]
use super::{ConfigError, MAX_LISTED_FIELDS};
use super::{FieldError, Rejection};

/// Checks a parsed payload; returns every failing field. Implemented for closures.
pub trait PayloadValidator: Send + Sync + 'static {
    /// `Ok(())` when `payload` is acceptable, else every failing field.
    fn validate(&self, payload: &Value) -> Result<(), Vec<FieldError>>;
}

impl<F> PayloadValidator for F
where
    F: Fn(&Value) -> Result<(), Vec<FieldError>> + Send + Sync + 'static,
{
    fn validate(&self, payload: &Value) -> Result<(), Vec<FieldError>> {
        self(payload)
    }
}

/// The payload's own outcome, as the runblob profile reads it (`status` and error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventClass {
    /// `completed` or `failed`.
    pub status: EventStatus,
    /// The error code of a failed event; [`ErrorCode::None`] for a completed one.
    pub code: ErrorCode,
}

/// The `status` field of a runblob payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventStatus {
    /// `"completed"`
    Completed,
    /// `"failed"`
    Failed,
}

impl EventStatus {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventStatus::Completed => "completed",
            EventStatus::Failed => "failed",
        }
    }
}

/// The error code of a failed runblob event, bounded: unknown codes are [`ErrorCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum ErrorCode {
    None,
    ContentPolicyViolation,
    ImageInaccessible,
    InvalidImage,
    Timeout,
    TaskFailed,
    Maintenance,
    Other,
}

impl ErrorCode {
    /// The codes a failed event can carry, `Other` last.
    pub const FAILED: [ErrorCode; 7] = [
        ErrorCode::ContentPolicyViolation,
        ErrorCode::ImageInaccessible,
        ErrorCode::InvalidImage,
        ErrorCode::Timeout,
        ErrorCode::TaskFailed,
        ErrorCode::Maintenance,
        ErrorCode::Other,
    ];

    /// The label value (the code itself, `none` or `other`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::None => "none",
            ErrorCode::ContentPolicyViolation => "CONTENT_POLICY_VIOLATION",
            ErrorCode::ImageInaccessible => "IMAGE_INACCESSIBLE",
            ErrorCode::InvalidImage => "INVALID_IMAGE",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::TaskFailed => "TASK_FAILED",
            ErrorCode::Maintenance => "MAINTENANCE",
            ErrorCode::Other => "other",
        }
    }

    /// Parses a failure code; unknown codes are `Other`.
    pub fn from_code(code: &str) -> Self {
        ErrorCode::FAILED
            .into_iter()
            .find(|c| c.as_str() == code && *c != ErrorCode::Other)
            .unwrap_or(ErrorCode::Other)
    }
}

/// A body that passed steps 10 and 11.
#[derive(Debug, Clone)]
pub struct Payload {
    /// The parsed body.
    pub value: Value,
    /// The event's status and code, for profiles that know them (runblob).
    pub class: Option<EventClass>,
}

#[derive(Clone)]
enum Profile {
    Runblob {
        strict_codes: bool,
    },
    Json,
    #[cfg(feature = "schema")]
    Schema(Arc<jsonschema::Validator>),
    Custom(Arc<dyn PayloadValidator>),
}

/// Parses and validates a body for one route. Cheap to clone.
#[derive(Clone)]
pub struct Validator {
    profile: Profile,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match &self.profile {
            Profile::Runblob {
                strict_codes: false,
            } => "runblob",
            Profile::Runblob { strict_codes: true } => "runblob (strict codes)",
            Profile::Json => "json",
            #[cfg(feature = "schema")]
            Profile::Schema(_) => "schema",
            Profile::Custom(_) => "custom",
        };
        f.debug_tuple("Validator").field(&name).finish()
    }
}

impl Validator {
    /// The reference sender's contract (DESIGN §1). Unknown error codes are accepted (counted as `other`).
    pub fn runblob() -> Self {
        Self {
            profile: Profile::Runblob {
                strict_codes: false,
            },
        }
    }

    /// The runblob contract, refusing error codes outside the documented six.
    pub fn runblob_strict() -> Self {
        Self {
            profile: Profile::Runblob { strict_codes: true },
        }
    }

    /// Any well-formed JSON object.
    pub fn json() -> Self {
        Self {
            profile: Profile::Json,
        }
    }

    /// A JSON Schema, compiled once here (draft 2020-12 unless the schema's `$schema` says
    /// otherwise). `key` names the setting in errors.
    #[cfg(feature = "schema")]
    pub fn schema(key: &str, schema: &Value) -> Result<Self, ConfigError> {
        let compiled =
            jsonschema::draft202012::new(schema).map_err(|e| ConfigError::InvalidSchema {
                key: key.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            profile: Profile::Schema(Arc::new(compiled)),
        })
    }

    /// A user-supplied check, run on the parsed body after the JSON-object check.
    pub fn custom(check: impl PayloadValidator) -> Self {
        Self {
            profile: Profile::Custom(Arc::new(check)),
        }
    }

    /// Steps 10 and 11 on a complete body. An object naming a member twice is refused
    /// (`duplicate_key`): parsers disagree on which one counts, and the body is forwarded as is.
    pub fn check(&self, body: &[u8]) -> Result<Payload, Rejection> {
        let value = parse(body)?;
        let mut fields = Vec::new();
        let class = match &self.profile {
            Profile::Runblob { strict_codes } => runblob(&value, *strict_codes, &mut fields),
            Profile::Json => {
                require_object(&value, &mut fields);
                None
            }
            #[cfg(feature = "schema")]
            Profile::Schema(schema) => {
                // Only the listed errors are formatted; the rest are counted.
                let mut total = 0;
                for e in schema.iter_errors(&value) {
                    total += 1;
                    if fields.len() < MAX_LISTED_FIELDS {
                        fields.push(FieldError::new(e.instance_path().as_str(), e.to_string()));
                    }
                }
                if total > fields.len() {
                    return Err(Rejection::invalid_payload(fields, total));
                }
                None
            }
            Profile::Custom(check) => {
                if require_object(&value, &mut fields) {
                    if let Err(errs) = check.validate(&value) {
                        fields.extend(errs);
                    }
                }
                None
            }
        };
        if fields.is_empty() {
            Ok(Payload { value, class })
        } else {
            let total = fields.len();
            Err(Rejection::invalid_payload(fields, total))
        }
    }
}

/// Step 10: the body as JSON, refusing an object that names a member twice.
fn parse(body: &[u8]) -> Result<Value, Rejection> {
    use serde::de::Deserializer as _;
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = de
        .deserialize_any(UniqueMembers)
        .and_then(|value| de.end().map(|()| value));
    parsed.map_err(|e| {
        let detail = e.to_string();
        match detail.strip_prefix(DUPLICATE_MEMBER) {
            Some(rest) => Rejection::DuplicateKey {
                detail: rest.trim_start().to_owned(),
            },
            None => Rejection::MalformedJson { detail },
        }
    })
}

const DUPLICATE_MEMBER: &str = "duplicate member:";

/// Builds a [`Value`] as serde_json does, but fails on a repeated member name. serde_json keeps
/// the last of repeated names without a word; no option of it refuses them.
struct UniqueMembers;

impl<'de> serde::de::DeserializeSeed<'de> for UniqueMembers {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(UniqueMembers)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueMembers {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(UniqueMembers)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if object.contains_key(&name) {
                let shown: String = name.chars().take(64).collect();
                return Err(serde::de::Error::custom(format!(
                    "{DUPLICATE_MEMBER} the name {shown:?} appears twice in one object"
                )));
            }
            let value = map.next_value_seed(UniqueMembers)?;
            object.insert(name, value);
        }
        Ok(Value::Object(object))
    }
}

fn require_object(value: &Value, fields: &mut Vec<FieldError>) -> bool {
    let ok = value.is_object();
    if !ok {
        fields.push(FieldError::new("", "the body must be a JSON object"));
    }
    ok
}

/// DESIGN §1, field by field; returns the event's class when `status` is readable.
fn runblob(value: &Value, strict_codes: bool, fields: &mut Vec<FieldError>) -> Option<EventClass> {
    let Some(obj) = value.as_object() else {
        require_object(value, fields);
        return None;
    };
    match obj.get("generation_id") {
        None | Some(Value::Null) => fields.push(FieldError::new("/generation_id", "is required")),
        Some(Value::String(s)) if is_canonical_uuid(s) => {}
        Some(Value::String(_)) => fields.push(FieldError::new(
            "/generation_id",
            "must be a UUID in canonical hyphenated form",
        )),
        Some(_) => fields.push(FieldError::new("/generation_id", "must be a string")),
    }
    match obj.get("model") {
        Some(Value::String(s)) if !s.is_empty() => {}
        None | Some(Value::Null) => fields.push(FieldError::new("/model", "is required")),
        Some(_) => fields.push(FieldError::new("/model", "must be a non-empty string")),
    }
    let status = match obj.get("status") {
        Some(Value::String(s)) if s == "completed" => Some(EventStatus::Completed),
        Some(Value::String(s)) if s == "failed" => Some(EventStatus::Failed),
        None | Some(Value::Null) => {
            fields.push(FieldError::new("/status", "is required"));
            None
        }
        Some(_) => {
            fields.push(FieldError::new(
                "/status",
                "must be \"completed\" or \"failed\"",
            ));
            None
        }
    };
    let video_url = obj.get("video_url").filter(|v| !v.is_null());
    let message = obj.get("message").filter(|v| !v.is_null());
    match status? {
        EventStatus::Completed => {
            match video_url {
                None => fields.push(FieldError::new(
                    "/video_url",
                    "is required when status is completed",
                )),
                Some(Value::String(u)) if is_http_url(u) => {}
                Some(_) => fields.push(FieldError::new(
                    "/video_url",
                    "must be an absolute http or https URL",
                )),
            }
            if message.is_some() {
                fields.push(FieldError::new(
                    "/message",
                    "must be null when status is completed",
                ));
            }
            Some(EventClass {
                status: EventStatus::Completed,
                code: ErrorCode::None,
            })
        }
        EventStatus::Failed => {
            if video_url.is_some() {
                fields.push(FieldError::new(
                    "/video_url",
                    "must be null when status is failed",
                ));
            }
            let code = match message {
                Some(Value::String(m)) if !m.is_empty() => {
                    let code = ErrorCode::from_code(m);
                    // Listed beside the other failing fields: DESIGN §1 reports them all at once.
                    if strict_codes && code == ErrorCode::Other {
                        fields.push(FieldError::new("/message", "is not a known error code"));
                    }
                    code
                }
                None => {
                    fields.push(FieldError::new(
                        "/message",
                        "is required when status is failed",
                    ));
                    ErrorCode::Other
                }
                Some(_) => {
                    fields.push(FieldError::new(
                        "/message",
                        "must be a non-empty error code",
                    ));
                    ErrorCode::Other
                }
            };
            Some(EventClass {
                status: EventStatus::Failed,
                code,
            })
        }
    }
}

fn is_canonical_uuid(s: &str) -> bool {
    // Only the 36-character hyphenated form: uuid also parses simple, braced and URN forms.
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// An absolute `http`/`https` URL with a host, as `http::Uri` parses it (RFC 3986).
///
/// `http::Uri` is ASCII-only, and a sender may write an IRI (RFC 3987: `https://bücher.example/`,
/// `/vidéo.mp4`) that a client sends encoded (punycode in the host, `%XX` elsewhere). So each
/// non-ASCII letter, digit, mark or symbol stands in as one ASCII letter, and a non-ASCII space
/// or control character as a character `http::Uri` refuses. Unlike the WHATWG parser, an ASCII
/// space or another character RFC 3986 forbids is refused in the path too.
fn is_http_url(s: &str) -> bool {
    let ascii: std::borrow::Cow<'_, str> = if s.is_ascii() {
        s.into()
    } else {
        s.chars()
            .map(|c| match c {
                c if c.is_ascii() => c,
                c if c.is_whitespace() || c.is_control() => ' ',
                _ => 'a',
            })
            .collect::<String>()
            .into()
    };
    http::Uri::try_from(ascii.as_ref()).is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GID: &str = "550e8400-e29b-41d4-a716-446655440000";

    fn fields_of(r: Rejection) -> Vec<String> {
        match r {
            Rejection::InvalidPayload { fields, .. } => {
                fields.into_iter().map(|f| f.field).collect()
            }
            other => panic!("not invalid_payload: {other}"),
        }
    }

    #[test]
    fn runblob_cases() {
        struct Case {
            name: &'static str,
            input: Value,
            want: Result<(&'static str, &'static str), &'static [&'static str]>,
        }
        let cases = [
            Case {
                name: "completed",
                input: json!({"generation_id": GID, "status": "completed", "video_url": "https://cdn.example.com/a.mp4", "model": "m", "message": null}),
                want: Ok(("completed", "none")),
            },
            Case {
                name: "failed",
                input: json!({"generation_id": GID, "status": "failed", "video_url": null, "model": "m", "message": "CONTENT_POLICY_VIOLATION"}),
                want: Ok(("failed", "CONTENT_POLICY_VIOLATION")),
            },
            Case {
                name: "timeout",
                input: json!({"generation_id": GID, "status": "failed", "model": "m", "message": "TIMEOUT"}),
                want: Ok(("failed", "TIMEOUT")),
            },
            Case {
                name: "unknown code is other",
                input: json!({"generation_id": GID, "status": "failed", "model": "m", "message": "NEW_CODE"}),
                want: Ok(("failed", "other")),
            },
            Case {
                name: "uppercase uuid",
                input: json!({"generation_id": GID.to_uppercase(), "status": "failed", "model": "m", "message": "TIMEOUT"}),
                want: Ok(("failed", "TIMEOUT")),
            },
            Case {
                name: "extra fields allowed",
                input: json!({"generation_id": GID, "status": "failed", "model": "m", "message": "TIMEOUT", "extra": [1]}),
                want: Ok(("failed", "TIMEOUT")),
            },
            Case {
                name: "empty object",
                input: json!({}),
                want: Err(&["/generation_id", "/model", "/status"]),
            },
            Case {
                name: "not an object",
                input: json!([1, 2]),
                want: Err(&[""]),
            },
            Case {
                name: "simple uuid form",
                input: json!({"generation_id": GID.replace('-', ""), "status": "failed", "model": "m", "message": "TIMEOUT"}),
                want: Err(&["/generation_id"]),
            },
            Case {
                name: "uuid is number",
                input: json!({"generation_id": 7, "status": "failed", "model": "m", "message": "TIMEOUT"}),
                want: Err(&["/generation_id"]),
            },
            Case {
                name: "bad status",
                input: json!({"generation_id": GID, "status": "done", "model": "m"}),
                want: Err(&["/status"]),
            },
            Case {
                name: "completed without url",
                input: json!({"generation_id": GID, "status": "completed", "model": "m"}),
                want: Err(&["/video_url"]),
            },
            Case {
                name: "completed with ftp url and message",
                input: json!({"generation_id": GID, "status": "completed", "video_url": "ftp://x/y", "model": "m", "message": "X"}),
                want: Err(&["/video_url", "/message"]),
            },
            Case {
                name: "relative url",
                input: json!({"generation_id": GID, "status": "completed", "video_url": "/a.mp4", "model": "m"}),
                want: Err(&["/video_url"]),
            },
            Case {
                name: "failed with url, no message",
                input: json!({"generation_id": GID, "status": "failed", "video_url": "https://a/b", "model": "m"}),
                want: Err(&["/video_url", "/message"]),
            },
            Case {
                name: "failed with empty message",
                input: json!({"generation_id": GID, "status": "failed", "model": "m", "message": ""}),
                want: Err(&["/message"]),
            },
            Case {
                name: "empty model",
                input: json!({"generation_id": GID, "status": "failed", "model": "", "message": "TIMEOUT"}),
                want: Err(&["/model"]),
            },
        ];
        let v = Validator::runblob();
        for c in cases {
            let got = v.check(&serde_json::to_vec(&c.input).unwrap());
            match c.want {
                Ok((status, code)) => {
                    let p = got.unwrap_or_else(|e| panic!("{}: {e}", c.name));
                    let class = p.class.unwrap();
                    assert_eq!(
                        (class.status.as_str(), class.code.as_str()),
                        (status, code),
                        "{}",
                        c.name
                    );
                }
                Err(want) => assert_eq!(fields_of(got.unwrap_err()), want, "{}", c.name),
            }
        }
    }

    #[test]
    fn strict_codes_refuse_unknown() {
        let body =
            json!({"generation_id": GID, "status": "failed", "model": "m", "message": "NEW_CODE"});
        let err = Validator::runblob_strict()
            .check(&serde_json::to_vec(&body).unwrap())
            .unwrap_err();
        assert_eq!(fields_of(err), ["/message"]);
    }

    #[test]
    fn malformed_json() {
        for input in [&b"{"[..], b"", b"{\"a\":1}x", b"\xff\xfe", b"nul"] {
            let err = Validator::json().check(input).unwrap_err();
            assert_eq!(err.status(), 400, "{input:?}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let body = "[".repeat(100_000);
        assert_eq!(
            Validator::json()
                .check(body.as_bytes())
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn json_profile_wants_an_object() {
        assert!(Validator::json().check(b"{\"a\":1}").is_ok());
        assert_eq!(Validator::json().check(b"[1]").unwrap_err().status(), 422);
    }

    #[test]
    fn video_urls() {
        let cases = [
            ("https://cdn.example.com/videos/550e8400.mp4", true),
            ("http://127.0.0.1:8080/v.mp4?sig=a%20b&x=1", true),
            ("https://cdn.example.com/v.mp4#t=10", true),
            ("https://[2001:db8::1]/v.mp4", true),
            ("https://user:pw@cdn.example.com/v", true),
            ("HTTPS://cdn.example.com/v", true),
            ("ftp://cdn.example.com/v.mp4", false),
            ("/a.mp4", false),
            ("cdn.example.com/v.mp4", false),
            ("https://", false),
            ("https:///v.mp4", false),
            ("https://cdn example.com/v", false),
            ("https://cdn.example.com/a b.mp4", false),
            ("https://bücher.example/v", true),
            ("https://cdn.example.com/vidéo.mp4", true),
            ("https://cdn\u{3000}example.com/v", false),
            ("https://cdn.example.com/v\u{85}", false),
            ("", false),
        ];
        for (url, want) in cases {
            assert_eq!(is_http_url(url), want, "{url}");
        }
    }

    #[test]
    #[cfg(feature = "schema")]
    fn schema_profile_reports_each_field() {
        let schema = json!({
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "string"}, "n": {"type": "integer", "minimum": 1}}
        });
        let v = Validator::schema("schema", &schema).unwrap();
        assert!(v.check(br#"{"id":"a","n":2}"#).is_ok());
        let fields = fields_of(v.check(br#"{"id":5,"n":0}"#).unwrap_err());
        assert_eq!(fields.len(), 2);
        assert!(fields.contains(&"/id".to_string()) && fields.contains(&"/n".to_string()));
    }

    #[test]
    #[cfg(feature = "schema")]
    fn bad_schema_is_a_config_error() {
        let err = Validator::schema("route[0].schema", &json!({"type": 12})).unwrap_err();
        assert!(err.to_string().contains("route[0].schema"), "{err}");
    }

    #[test]
    fn custom_validator() {
        let v = Validator::custom(|p: &Value| {
            if p.get("id").is_some() {
                Ok(())
            } else {
                Err(vec![FieldError::new("/id", "is required")])
            }
        });
        assert!(v.check(br#"{"id":1}"#).is_ok());
        assert_eq!(fields_of(v.check(br#"{}"#).unwrap_err()), ["/id"]);
        assert_eq!(fields_of(v.check(br#"3"#).unwrap_err()), [""]);
    }
}
