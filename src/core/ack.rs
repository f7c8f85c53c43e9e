//! The two 200 answers of the pipeline (DESIGN §2 steps 12 and 14), written by both faces.

use bytes::Bytes;
use uuid::Uuid;

/// Step 12: the dedup key was committed within its TTL; the event is not forwarded again.
pub const DUPLICATE_BODY: &[u8] = br#"{"status":"duplicate"}"#;

/// Step 14: the event is in the spool as `id`.
pub fn received_body(id: Uuid) -> Bytes {
    let mut body = String::with_capacity(64);
    body.push_str(r#"{"status":"received","event_id":""#);
    body.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    body.push_str(r#""}"#);
    Bytes::from(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_body_is_json_with_the_id() {
        let id = Uuid::now_v7();
        let body: serde_json::Value = serde_json::from_slice(&received_body(id)).unwrap();
        assert_eq!(body["status"], "received");
        assert_eq!(body["event_id"], id.to_string());
        let dup: serde_json::Value = serde_json::from_slice(DUPLICATE_BODY).unwrap();
        assert_eq!(dup["status"], "duplicate");
    }
}
