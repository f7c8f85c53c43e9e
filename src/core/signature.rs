//! Step 9: the sender's signature over the raw body bytes, exactly as received, by the route's
//! scheme (DESIGN §2). HMAC with `hmac` and `sha2`; every comparison in constant time
//! (`Mac::verify_slice`); several secrets per route, so a secret can be rotated with both the
//! old and the new one listed. It fails closed: a missing header, an undecodable signature or a
//! timestamp outside the window is a refusal (401), never a pass.
//!
//! | scheme | headers | signed content | key |
//! | --- | --- | --- | --- |
//! | `standard_webhooks` | `webhook-id`, `webhook-timestamp`, `webhook-signature` (`v1,<base64>`, space-separated, any match) | `{id}.{timestamp}.{body}` | the base64 after `whsec_` |
//! | `github` | `X-Hub-Signature-256: sha256=<hex>` | the body | the secret's bytes |
//! | `stripe` | `Stripe-Signature: t=<ts>,v1=<hex>[,v1=...]` | `{t}.{body}` | the secret's bytes (`whsec_...` whole) |
//! | `hmac` | a configured header, optional prefix, hex or base64 | the body | the secret's bytes |
//!
//! ```
//! use hookgate::core::{SignatureScheme, SignatureVerifier, Reason};
//! use http::HeaderMap;
//! use std::time::Duration;
//!
//! let v = SignatureVerifier::new("signature", SignatureScheme::StandardWebhooks,
//!     &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()], Duration::from_secs(300)).unwrap();
//! let mut h = HeaderMap::new();
//! h.insert("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".parse().unwrap());
//! h.insert("webhook-timestamp", "1614265330".parse().unwrap());
//! h.insert("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".parse().unwrap());
//! assert!(v.verify(&h, br#"{"test": 2432232314}"#, 1614265330).is_ok());
//! let err = v.verify(&h, br#"{"test": 2432232315}"#, 1614265330).unwrap_err();
//! assert_eq!(err.reason(), Reason::BadSignature);
//! ```

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName};
use sha2::{Sha256, Sha512};

use super::{ConfigError, Rejection};

/// The shortest Standard Webhooks key accepted, in bytes.
const MIN_KEY_BYTES: usize = 16;

/// How a route's sender signs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureScheme {
    /// [Standard Webhooks](https://www.standardwebhooks.com) (Svix, and every sender following it).
    StandardWebhooks,
    /// GitHub's `X-Hub-Signature-256`.
    Github,
    /// Stripe's `Stripe-Signature`.
    Stripe,
    /// An HMAC of the body in a header of your choosing.
    Hmac(HmacScheme),
}

/// The `hmac` scheme's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacScheme {
    /// The header carrying the signature.
    pub header: HeaderName,
    /// The hash.
    pub algorithm: HmacAlgorithm,
    /// How the signature is written.
    pub encoding: SignatureEncoding,
    /// Text before the signature (`sha256=`), stripped; empty for none.
    pub prefix: String,
}

/// An HMAC's hash function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacAlgorithm {
    /// HMAC-SHA-256.
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

/// How a signature's bytes are written in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureEncoding {
    /// Lowercase or uppercase hexadecimal.
    Hex,
    /// Standard base64, padded.
    Base64,
}

use super::rejection::SignatureFailure;

/// Checks requests against one route's scheme and secrets. Cheap to clone.
#[derive(Clone)]
pub struct SignatureVerifier {
    scheme: SignatureScheme,
    keys: Vec<Vec<u8>>,
    tolerance_s: i64,
}

impl std::fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys are never printed.
        f.debug_struct("SignatureVerifier")
            .field("scheme", &self.scheme)
            .field("secrets", &self.keys.len())
            .field("tolerance_s", &self.tolerance_s)
            .finish()
    }
}

fn hmac_matches(algorithm: HmacAlgorithm, key: &[u8], parts: &[&[u8]], signature: &[u8]) -> bool {
    match algorithm {
        HmacAlgorithm::Sha256 => {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
                return false;
            };
            parts.iter().for_each(|p| mac.update(p));
            mac.verify_slice(signature).is_ok()
        }
        HmacAlgorithm::Sha512 => {
            let Ok(mut mac) = Hmac::<Sha512>::new_from_slice(key) else {
                return false;
            };
            parts.iter().for_each(|p| mac.update(p));
            mac.verify_slice(signature).is_ok()
        }
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, SignatureFailure> {
    let value = headers.get(name).ok_or(SignatureFailure::Missing)?;
    value.to_str().map_err(|_| SignatureFailure::Bad)
}

impl SignatureVerifier {
    /// A verifier for `scheme` with `secrets` (at least one; several while rotating) and a
    /// timestamp `tolerance` either way (`standard_webhooks`, `stripe`). `key` names the setting
    /// in errors; a secret's value never appears in one.
    pub fn new(
        key: &str,
        scheme: SignatureScheme,
        secrets: &[String],
        tolerance: Duration,
    ) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidValue {
            key: key.to_owned(),
            reason,
        };
        if secrets.is_empty() {
            return Err(invalid("secrets: at least one secret is needed".into()));
        }
        let mut keys = Vec::with_capacity(secrets.len());
        for (i, secret) in secrets.iter().enumerate() {
            if secret.is_empty() {
                return Err(invalid(format!("secrets[{i}] is empty")));
            }
            let k = match scheme {
                SignatureScheme::StandardWebhooks => {
                    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
                    let key = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|_| {
                            invalid(format!(
                                "secrets[{i}] is not a Standard Webhooks secret (whsec_ and base64)"
                            ))
                        })?;
                    // The spec's secrets are 24 to 64 bytes; an empty or tiny key is forgeable.
                    if key.len() < MIN_KEY_BYTES {
                        return Err(invalid(format!(
                            "secrets[{i}] decodes to {} bytes; a Standard Webhooks secret has at least {MIN_KEY_BYTES}",
                            key.len()
                        )));
                    }
                    key
                }
                _ => secret.as_bytes().to_vec(),
            };
            keys.push(k);
        }
        Ok(Self {
            scheme,
            keys,
            tolerance_s: i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX),
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> &SignatureScheme {
        &self.scheme
    }

    /// The dedup key a route of this scheme uses unless one is configured: the sender's delivery
    /// id (`header:webhook-id`, signed with the body; Stripe's event `/id`; GitHub's
    /// `header:X-GitHub-Delivery`, which GitHub does not sign).
    pub fn default_dedup_key(&self) -> Option<&'static str> {
        match self.scheme {
            SignatureScheme::StandardWebhooks => Some("header:webhook-id"),
            // GitHub's own advice. It signs neither this id nor a time: where a captured
            // delivery replayed under a new id matters, set `dedup = { key = "body" }`.
            SignatureScheme::Github => Some("header:X-GitHub-Delivery"),
            SignatureScheme::Stripe => Some("/id"),
            SignatureScheme::Hmac(_) => None,
        }
    }

    /// Step 9 for a request with `headers` and the raw `body`, at `now` (Unix seconds).
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), Rejection> {
        self.check(headers, body, now).map_err(Rejection::Signature)
    }

    /// [`verify`](Self::verify) at the current time.
    pub fn verify_now(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Rejection> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.verify(headers, body, now)
    }

    fn in_window(&self, timestamp: &str, now: i64) -> Result<(), SignatureFailure> {
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| SignatureFailure::Bad)?;
        if now.abs_diff(ts) > self.tolerance_s.unsigned_abs() {
            return Err(SignatureFailure::Stale);
        }
        Ok(())
    }

    fn any_key(&self, algorithm: HmacAlgorithm, parts: &[&[u8]], signature: &[u8]) -> bool {
        // Every key is tried (no early exit on the first): the time taken does not tell which.
        self.keys.iter().fold(false, |ok, k| {
            hmac_matches(algorithm, k, parts, signature) | ok
        })
    }

    fn check(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), SignatureFailure> {
        let b64 = &base64::engine::general_purpose::STANDARD;
        match &self.scheme {
            SignatureScheme::StandardWebhooks => {
                let id = header(headers, "webhook-id")?;
                let timestamp = header(headers, "webhook-timestamp")?;
                let signatures = header(headers, "webhook-signature")?;
                self.in_window(timestamp, now)?;
                let parts: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body];
                let mut matched = false;
                for candidate in signatures.split(' ') {
                    let Some(("v1", sig)) = candidate.split_once(',') else {
                        continue;
                    };
                    if let Ok(sig) = b64.decode(sig) {
                        matched |= self.any_key(HmacAlgorithm::Sha256, &parts, &sig);
                    }
                }
                matched.then_some(()).ok_or(SignatureFailure::Bad)
            }
            SignatureScheme::Github => {
                let value = header(headers, "x-hub-signature-256")?;
                let sig = value
                    .strip_prefix("sha256=")
                    .and_then(|h| hex::decode(h).ok())
                    .ok_or(SignatureFailure::Bad)?;
                self.any_key(HmacAlgorithm::Sha256, &[body], &sig)
                    .then_some(())
                    .ok_or(SignatureFailure::Bad)
            }
            SignatureScheme::Stripe => {
                let value = header(headers, "stripe-signature")?;
                let mut timestamp = None;
                let mut signatures = Vec::new();
                for item in value.split(',') {
                    match item.trim().split_once('=') {
                        Some(("t", t)) => timestamp = Some(t),
                        Some(("v1", s)) => signatures.push(s),
                        _ => {}
                    }
                }
                let timestamp = timestamp.ok_or(SignatureFailure::Bad)?;
                self.in_window(timestamp, now)?;
                let parts: [&[u8]; 3] = [timestamp.as_bytes(), b".", body];
                let mut matched = false;
                for sig in signatures {
                    if let Ok(sig) = hex::decode(sig) {
                        matched |= self.any_key(HmacAlgorithm::Sha256, &parts, &sig);
                    }
                }
                matched.then_some(()).ok_or(SignatureFailure::Bad)
            }
            SignatureScheme::Hmac(spec) => {
                let value = header(headers, spec.header.as_str())?;
                let written = value
                    .strip_prefix(spec.prefix.as_str())
                    .ok_or(SignatureFailure::Bad)?
                    .trim();
                let sig = match spec.encoding {
                    SignatureEncoding::Hex => hex::decode(written).ok(),
                    SignatureEncoding::Base64 => b64.decode(written).ok(),
                }
                .ok_or(SignatureFailure::Bad)?;
                self.any_key(spec.algorithm, &[body], &sig)
                    .then_some(())
                    .ok_or(SignatureFailure::Bad)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Fixed vectors: Standard Webhooks' own (its libraries' tests); for GitHub, Stripe and
    //! `hmac`, vectors computed here with each documented construction by an independent
    //! implementation (Python's `hmac`), written out as literals.
    use super::*;
    use crate::core::Reason;

    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: i64 = 1614265330;
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const FIVE_MIN: Duration = Duration::from_secs(300);

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn reason(r: Result<(), Rejection>) -> Option<Reason> {
        r.err().map(|e| e.reason())
    }

    fn sw(secrets: &[&str]) -> SignatureVerifier {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        SignatureVerifier::new("s", SignatureScheme::StandardWebhooks, &secrets, FIVE_MIN).unwrap()
    }

    fn sw_headers(sig: &str, ts: i64) -> HeaderMap {
        headers(&[
            ("webhook-id", SW_ID),
            ("webhook-timestamp", &ts.to_string()),
            ("webhook-signature", sig),
        ])
    }

    #[test]
    fn standard_webhooks_official_vector_and_its_negatives() {
        let v = sw(&[SW_SECRET]);
        assert_eq!(
            reason(v.verify(&sw_headers(SW_SIG, SW_TS), SW_BODY, SW_TS)),
            None
        );
        // The secret without its prefix (the libraries accept both).
        assert_eq!(
            reason(sw(&["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).verify(
                &sw_headers(SW_SIG, SW_TS),
                SW_BODY,
                SW_TS
            )),
            None
        );
        // One byte of the body changed.
        assert_eq!(
            reason(v.verify(
                &sw_headers(SW_SIG, SW_TS),
                br#"{"test": 2432232315}"#,
                SW_TS
            )),
            Some(Reason::BadSignature)
        );
        // The libraries' invalid-signature case (last character changed), and a truncated one.
        let wrong = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
        assert_eq!(
            reason(v.verify(&sw_headers(wrong, SW_TS), SW_BODY, SW_TS)),
            Some(Reason::BadSignature)
        );
        assert_eq!(
            reason(v.verify(&sw_headers(&SW_SIG[..20], SW_TS), SW_BODY, SW_TS)),
            Some(Reason::BadSignature)
        );
        // A decoy list with one valid entry (the libraries' multi-signature case).
        let decoys = format!(
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {SW_SIG} v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
        );
        assert_eq!(
            reason(v.verify(&sw_headers(&decoys, SW_TS), SW_BODY, SW_TS)),
            None
        );
        // The right signature under another version tag is not accepted.
        assert_eq!(
            reason(v.verify(
                &sw_headers(&SW_SIG.replace("v1,", "v2,"), SW_TS),
                SW_BODY,
                SW_TS
            )),
            Some(Reason::BadSignature)
        );
        // Each header missing.
        for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            let mut h = sw_headers(SW_SIG, SW_TS);
            h.remove(missing);
            assert_eq!(
                reason(v.verify(&h, SW_BODY, SW_TS)),
                Some(Reason::MissingSignature),
                "{missing}"
            );
        }
        // A timestamp that is not a number.
        let mut h = sw_headers(SW_SIG, SW_TS);
        h.insert("webhook-timestamp", "hello".parse().unwrap());
        assert_eq!(
            reason(v.verify(&h, SW_BODY, SW_TS)),
            Some(Reason::BadSignature)
        );
        // Just inside and just outside the tolerance, on either side.
        for (now, want) in [
            (SW_TS + 300, None),
            (SW_TS - 300, None),
            (SW_TS + 301, Some(Reason::StaleTimestamp)),
            (SW_TS - 301, Some(Reason::StaleTimestamp)),
        ] {
            assert_eq!(
                reason(v.verify(&sw_headers(SW_SIG, SW_TS), SW_BODY, now)),
                want,
                "now = ts {:+}",
                now - SW_TS
            );
        }
    }

    #[test]
    fn rotated_secrets_both_accepted_while_both_are_listed() {
        let other = "whsec_dGhlIG5ldyBzZWNyZXQgYWZ0ZXIgcm90YXRpb24=";
        assert_eq!(
            reason(sw(&[other, SW_SECRET]).verify(&sw_headers(SW_SIG, SW_TS), SW_BODY, SW_TS)),
            None
        );
        assert_eq!(
            reason(sw(&[SW_SECRET, other]).verify(&sw_headers(SW_SIG, SW_TS), SW_BODY, SW_TS)),
            None
        );
        assert_eq!(
            reason(sw(&[other]).verify(&sw_headers(SW_SIG, SW_TS), SW_BODY, SW_TS)),
            Some(Reason::BadSignature),
            "the old one removed"
        );
    }

    // GitHub's documented example (docs.github.com, "Validating webhook deliveries"): secret
    // "It's a Secret to Everybody", payload "Hello, World!" (Python's hmac agrees).
    const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_vector_and_its_negatives() {
        let v = SignatureVerifier::new(
            "s",
            SignatureScheme::Github,
            &["It's a Secret to Everybody".into()],
            FIVE_MIN,
        )
        .unwrap();
        let h = headers(&[("x-hub-signature-256", GH_SIG)]);
        assert_eq!(reason(v.verify(&h, b"Hello, World!", 0)), None);
        assert_eq!(
            reason(v.verify(&h, b"Hello, World?", 0)),
            Some(Reason::BadSignature)
        );
        let truncated = headers(&[("x-hub-signature-256", &GH_SIG[..GH_SIG.len() - 2])]);
        assert_eq!(
            reason(v.verify(&truncated, b"Hello, World!", 0)),
            Some(Reason::BadSignature)
        );
        let unprefixed = headers(&[("x-hub-signature-256", &GH_SIG["sha256=".len()..])]);
        assert_eq!(
            reason(v.verify(&unprefixed, b"Hello, World!", 0)),
            Some(Reason::BadSignature)
        );
        assert_eq!(
            reason(v.verify(&HeaderMap::new(), b"Hello, World!", 0)),
            Some(Reason::MissingSignature)
        );
        assert_eq!(v.default_dedup_key(), Some("header:X-GitHub-Delivery"));
    }

    // HMAC-SHA256("whsec_test_secret", "1700000000.{\"id\":\"evt_1\"}"), hex, by Python's hmac.
    const STRIPE_SIG: &str = "248a374f50f943a28b0f6ab50faf9a7e7e29b710fa26df9fb1618b9bf8ea9c9a";

    #[test]
    fn stripe_vector_and_its_negatives() {
        let v = SignatureVerifier::new(
            "s",
            SignatureScheme::Stripe,
            &["whsec_test_secret".into()],
            FIVE_MIN,
        )
        .unwrap();
        let body = br#"{"id":"evt_1"}"#;
        let ts = 1_700_000_000;
        let h = |value: &str| headers(&[("stripe-signature", value)]);
        assert_eq!(
            reason(v.verify(&h(&format!("t={ts},v1={STRIPE_SIG}")), body, ts)),
            None
        );
        // A decoy list with one valid entry, and a v0 that is ignored.
        let decoys = format!("t={ts},v1=00{},v0=abcd,v1={STRIPE_SIG}", &STRIPE_SIG[2..]);
        assert_eq!(reason(v.verify(&h(&decoys), body, ts)), None);
        assert_eq!(
            reason(v.verify(
                &h(&format!("t={ts},v1={STRIPE_SIG}")),
                br#"{"id":"evt_2"}"#,
                ts
            )),
            Some(Reason::BadSignature)
        );
        assert_eq!(
            reason(v.verify(&h(&format!("t={ts},v1={}", &STRIPE_SIG[..60])), body, ts)),
            Some(Reason::BadSignature)
        );
        // The timestamp is signed: another one with the same v1 does not verify.
        assert_eq!(
            reason(v.verify(&h(&format!("t={},v1={STRIPE_SIG}", ts + 1)), body, ts)),
            Some(Reason::BadSignature)
        );
        assert_eq!(
            reason(v.verify(&h(&format!("v1={STRIPE_SIG}")), body, ts)),
            Some(Reason::BadSignature)
        );
        assert_eq!(
            reason(v.verify(&HeaderMap::new(), body, ts)),
            Some(Reason::MissingSignature)
        );
        for (now, want) in [
            (ts + 300, None),
            (ts - 300, None),
            (ts + 301, Some(Reason::StaleTimestamp)),
            (ts - 301, Some(Reason::StaleTimestamp)),
        ] {
            assert_eq!(
                reason(v.verify(&h(&format!("t={ts},v1={STRIPE_SIG}")), body, now)),
                want,
                "{}",
                now - ts
            );
        }
        assert_eq!(v.default_dedup_key(), Some("/id"));
    }

    // HMAC-SHA512("key", "The quick brown fox jumps over the lazy dog"), base64, and HMAC-SHA256
    // of the same, hex, both by Python's hmac (the SHA-256 one is also the widely published value).
    const SHA512_B64: &str =
        "tCrwkFe6weLUFwjkipAuCbX/fxKrQopP6GZTxz3SSPuC+UilSfe3kaW0GRXuTR7Dk1NX5OIxclDQNyr6Lr7rOg==";
    const SHA256_HEX: &str = "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8";

    #[test]
    fn hmac_vectors_in_each_encoding_with_a_prefix() {
        let body = b"The quick brown fox jumps over the lazy dog";
        let scheme = |algorithm, encoding, prefix: &str| {
            SignatureScheme::Hmac(HmacScheme {
                header: HeaderName::from_static("x-signature"),
                algorithm,
                encoding,
                prefix: prefix.into(),
            })
        };
        let b64 = SignatureVerifier::new(
            "s",
            scheme(HmacAlgorithm::Sha512, SignatureEncoding::Base64, ""),
            &["key".into()],
            FIVE_MIN,
        )
        .unwrap();
        assert_eq!(
            reason(b64.verify(&headers(&[("x-signature", SHA512_B64)]), body, 0)),
            None
        );
        assert_eq!(
            reason(b64.verify(
                &headers(&[("x-signature", SHA512_B64)]),
                b"The quick brown fox jumps over the lazy cog",
                0
            )),
            Some(Reason::BadSignature)
        );
        let hexed = SignatureVerifier::new(
            "s",
            scheme(HmacAlgorithm::Sha256, SignatureEncoding::Hex, "sha256="),
            &["key".into()],
            FIVE_MIN,
        )
        .unwrap();
        let with_prefix = format!("sha256={SHA256_HEX}");
        assert_eq!(
            reason(hexed.verify(&headers(&[("x-signature", &with_prefix)]), body, 0)),
            None
        );
        assert_eq!(
            reason(hexed.verify(&headers(&[("x-signature", SHA256_HEX)]), body, 0)),
            Some(Reason::BadSignature),
            "prefix required"
        );
        assert_eq!(
            reason(hexed.verify(
                &headers(&[("x-signature", &with_prefix[..with_prefix.len() - 1])]),
                body,
                0
            )),
            Some(Reason::BadSignature)
        );
        assert_eq!(
            reason(hexed.verify(&HeaderMap::new(), body, 0)),
            Some(Reason::MissingSignature)
        );
        assert_eq!(hexed.default_dedup_key(), None);
    }

    #[test]
    fn bad_secrets_are_refused_at_configuration_without_their_value() {
        let err = SignatureVerifier::new(
            "route[0].signature",
            SignatureScheme::StandardWebhooks,
            &["whsec_not*base64".into()],
            FIVE_MIN,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("route[0].signature") && !err.contains("not*base64"),
            "{err}"
        );
        assert!(SignatureVerifier::new("s", SignatureScheme::Github, &[], FIVE_MIN).is_err());
        for short in ["whsec_", "whsec_AA=="] {
            let err = SignatureVerifier::new(
                "s",
                SignatureScheme::StandardWebhooks,
                &[short.into()],
                FIVE_MIN,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("at least 16"), "{short}: {err}");
        }
        assert!(
            SignatureVerifier::new("s", SignatureScheme::Github, &[String::new()], FIVE_MIN)
                .is_err()
        );
        let v = SignatureVerifier::new("s", SignatureScheme::Github, &["hunter2".into()], FIVE_MIN)
            .unwrap();
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
