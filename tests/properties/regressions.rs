//! The defects these properties found, each as its minimal input.

use hookgate::core::{DedupKeySpec, JsonPointer, Rejection, Validator};
use hookgate::gateway::Config;
use http::HeaderMap;
use serde_json::json;

/// `validate_runblob_refuses_exactly_what_the_contract_refuses`: `runblob_strict` listed an
/// unknown error code only when nothing else failed, so a sender fixing the listed fields
/// got a second 422 for a field the first did not name (DESIGN §1: every failing field at
/// once).
#[test]
fn runblob_strict_lists_an_unknown_code_beside_the_other_failing_fields() {
    let body = br#"{"generation_id":"00000000000000000000000000000000","model":"0","status":"failed","video_url":"https://cdn.example.com/videos/550e8400.mp4","message":"_"}"#;
    let err = Validator::runblob_strict().check(body).unwrap_err();
    let Rejection::InvalidPayload { fields, total } = err else {
        panic!("not a 422: {err:?}");
    };
    let listed: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(listed, ["/generation_id", "/video_url", "/message"]);
    assert_eq!(total, 3);
    // The lenient profile still counts the code as `other` and lists the rest.
    let err = Validator::runblob().check(body).unwrap_err();
    let Rejection::InvalidPayload { fields, .. } = err else {
        panic!("not a 422: {err:?}");
    };
    assert_eq!(fields.len(), 2);
}

/// `dedup_pointer_lookup_agrees_with_serde_json`: `/+0` designated an array's first item
/// (`usize` parses a leading `+`); RFC 6901 indices are digits only, and serde_json's
/// `Value::pointer` finds nothing there.
#[test]
fn a_dedup_pointer_index_with_a_sign_designates_nothing() {
    let value = json!([[null]]);
    assert_eq!(value.pointer("/+0"), None);
    assert_eq!(JsonPointer::parse("/+0").lookup(&value), None);
    let payload = json!({"events": [{"id": "evt_1"}]});
    let spec = DedupKeySpec::parse("dedup.key", "/events/+0/id").unwrap();
    let got = spec.extract("r", &HeaderMap::new(), None, Some(&payload));
    assert!(
        matches!(got, Err(Rejection::MissingDedupKey { .. })),
        "{got:?}"
    );
    let plain = DedupKeySpec::parse("dedup.key", "/events/0/id").unwrap();
    assert!(plain
        .extract("r", &HeaderMap::new(), None, Some(&payload))
        .is_ok());
}

/// `config_text_never_panics_and_errors_name_the_file` (scripts/fuzz): a value holding a
/// line break was echoed as it was (serde quotes a refused variant in backticks, and a path
/// is shown as written), so one problem took two lines, the second naming neither the file
/// nor a key, and a config file could forge an error line.
#[test]
fn a_config_error_is_one_line_per_problem_whatever_the_file_holds() {
    let route = "[server]\n[[route]]\npath = \"/a\"\nupstream = \"http://127.0.0.1:1/\"\nallow = [\"::1/128\"]\n";
    let forged = format!("{route}profile = \"j\\nt.toml: route[0].allow: forged\"\n");
    let err = Config::parse("t.toml", &forged).unwrap_err().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("t.toml: line 6, column 11, profile: "),
        "{err}"
    );
    let path = format!("{route}upstream_ca = \"x\\ny\"\nmax_body = 0\n");
    let err = Config::parse("t.toml", &path).unwrap_err().to_string();
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(
        err.lines().all(|l| l.starts_with("t.toml: route[0].")),
        "{err}"
    );
    assert!(err.contains("x\\ny"), "the path, escaped: {err}");
}
