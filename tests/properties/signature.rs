use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use hookgate::core::{
    HmacAlgorithm, HmacScheme, Reason, SignatureEncoding, SignatureScheme, SignatureVerifier,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use sha2::{Sha256, Sha512};

use super::generate::Bytes;
use super::harness::check;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// How a generated route signs.
#[derive(Debug, Clone)]
enum Scheme {
    Standard,
    Github {
        upper: bool,
    },
    Stripe,
    Hmac {
        header: String,
        sha512: bool,
        base64: bool,
        prefix: String,
    },
}

impl Scheme {
    fn core(&self) -> SignatureScheme {
        match self {
            Scheme::Standard => SignatureScheme::StandardWebhooks,
            Scheme::Github { .. } => SignatureScheme::Github,
            Scheme::Stripe => SignatureScheme::Stripe,
            Scheme::Hmac {
                header,
                sha512,
                base64,
                prefix,
            } => SignatureScheme::Hmac(HmacScheme {
                header: HeaderName::from_bytes(header.as_bytes()).expect("a generated token"),
                algorithm: if *sha512 {
                    HmacAlgorithm::Sha512
                } else {
                    HmacAlgorithm::Sha256
                },
                encoding: if *base64 {
                    SignatureEncoding::Base64
                } else {
                    SignatureEncoding::Hex
                },
                prefix: prefix.clone(),
            }),
        }
    }

    /// The headers the scheme reads.
    fn header_names(&self) -> Vec<String> {
        match self {
            Scheme::Standard => vec![
                "webhook-id".into(),
                "webhook-timestamp".into(),
                "webhook-signature".into(),
            ],
            Scheme::Github { .. } => vec!["x-hub-signature-256".into()],
            Scheme::Stripe => vec!["stripe-signature".into()],
            Scheme::Hmac { header, .. } => vec![header.to_ascii_lowercase()],
        }
    }
}

fn scheme() -> impl Strategy<Value = Scheme> {
    prop_oneof![
        Just(Scheme::Standard),
        any::<bool>().prop_map(|upper| Scheme::Github { upper }),
        Just(Scheme::Stripe),
        (
            "[Xx]-[A-Za-z][A-Za-z0-9-]{0,15}",
            any::<bool>(),
            any::<bool>(),
            select(vec!["", "sha256=", "v1=", "sha512:", "t "]),
        )
            .prop_map(|(header, sha512, base64, prefix)| Scheme::Hmac {
                header,
                sha512,
                base64,
                prefix: prefix.to_owned(),
            }),
    ]
}

/// A request signed as the scheme's documentation says, by an implementation of its own.
#[derive(Debug, Clone)]
struct Signed {
    scheme: Scheme,
    /// The keys, and the secrets as configured.
    keys: Vec<Vec<u8>>,
    secrets: Vec<String>,
    /// Which key signed.
    signer: usize,
    body: Bytes,
    id: String,
    timestamp: i64,
    now: i64,
    tolerance: u64,
    /// Standard Webhooks and Stripe: wrong signatures listed beside the right one.
    decoys: Vec<[u8; 32]>,
}

fn mac(sha512: bool, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    if sha512 {
        let mut m = Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes any key");
        parts.iter().for_each(|p| m.update(p));
        m.finalize().into_bytes().to_vec()
    } else {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
        parts.iter().for_each(|p| m.update(p));
        m.finalize().into_bytes().to_vec()
    }
}

impl Signed {
    fn verifier(&self) -> SignatureVerifier {
        SignatureVerifier::new(
            "route[0].signature",
            self.scheme.core(),
            &self.secrets,
            Duration::from_secs(self.tolerance),
        )
        .expect("generated secrets are valid")
    }

    /// The signed headers, as (name, value bytes), so a test can change any byte.
    fn headers(&self) -> Vec<(String, Vec<u8>)> {
        let key = &self.keys[self.signer];
        let ts = self.timestamp.to_string();
        match &self.scheme {
            Scheme::Standard => {
                let sig = B64.encode(mac(
                    false,
                    key,
                    &[self.id.as_bytes(), b".", ts.as_bytes(), b".", &self.body],
                ));
                let mut list: Vec<String> = self
                    .decoys
                    .iter()
                    .map(|d| format!("v1,{}", B64.encode(d)))
                    .collect();
                list.insert(self.decoys.len() / 2, format!("v1,{sig}"));
                vec![
                    ("webhook-id".into(), self.id.clone().into_bytes()),
                    ("webhook-timestamp".into(), ts.into_bytes()),
                    ("webhook-signature".into(), list.join(" ").into_bytes()),
                ]
            }
            Scheme::Github { upper } => {
                let mut hex = hex::encode(mac(false, key, &[&self.body]));
                if *upper {
                    hex = hex.to_uppercase();
                }
                vec![(
                    "x-hub-signature-256".into(),
                    format!("sha256={hex}").into_bytes(),
                )]
            }
            Scheme::Stripe => {
                let sig = hex::encode(mac(false, key, &[ts.as_bytes(), b".", &self.body]));
                let mut items = vec![format!("t={ts}")];
                items.extend(self.decoys.iter().map(|d| format!("v1={}", hex::encode(d))));
                items.push(format!("v1={sig}"));
                vec![("stripe-signature".into(), items.join(",").into_bytes())]
            }
            Scheme::Hmac {
                header,
                sha512,
                base64,
                prefix,
            } => {
                let raw = mac(*sha512, key, &[&self.body]);
                let written = if *base64 {
                    B64.encode(raw)
                } else {
                    hex::encode(raw)
                };
                vec![(
                    header.to_ascii_lowercase(),
                    format!("{prefix}{written}").into_bytes(),
                )]
            }
        }
    }
}

fn header_map(headers: &[(String, Vec<u8>)]) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_bytes(value).ok()?,
        );
    }
    Some(map)
}

fn body() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        super::generate::provider_payload().prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..300),
    ]
    .prop_map(Bytes)
}

fn signed(decoys: bool) -> impl Strategy<Value = Signed> {
    let key = proptest::collection::vec(any::<u8>(), 16..64);
    let secret_text = "[!-~]{1,40}";
    (
        scheme(),
        proptest::collection::vec((key, secret_text, any::<bool>()), 1..4),
        any::<Index>(),
        body(),
        "msg_[A-Za-z0-9]{1,27}",
        (1_000_000_000i64..4_000_000_000, 1u64..3600, any::<Index>()),
        proptest::collection::vec(any::<[u8; 32]>(), if decoys { 0..3 } else { 0..1 }),
    )
        .prop_map(
            |(scheme, secrets, signer, body, id, (now, tolerance, offset), decoys)| {
                let (keys, secrets): (Vec<Vec<u8>>, Vec<String>) = secrets
                    .into_iter()
                    .map(|(key, text, prefixed)| match scheme {
                        // The key is the base64 after `whsec_` (which libraries also accept
                        // left out).
                        Scheme::Standard => {
                            let b64 = B64.encode(&key);
                            (
                                key,
                                if prefixed {
                                    format!("whsec_{b64}")
                                } else {
                                    b64
                                },
                            )
                        }
                        _ => (text.clone().into_bytes(), text),
                    })
                    .unzip();
                let span = 2 * tolerance + 1;
                let timestamp = now - tolerance as i64 + offset.index(span as usize) as i64;
                let decoys = match scheme {
                    Scheme::Standard | Scheme::Stripe => decoys,
                    _ => Vec::new(),
                };
                Signed {
                    signer: signer.index(keys.len()),
                    scheme,
                    keys,
                    secrets,
                    body,
                    id,
                    timestamp,
                    now,
                    tolerance,
                    decoys,
                }
            },
        )
}

#[test]
fn signature_a_correctly_signed_request_verifies() {
    check(
        "signature_a_correctly_signed_request_verifies",
        2048,
        signed(true),
        |s| {
            let headers = header_map(&s.headers()).expect("signed headers are valid");
            let got = s.verifier().verify(&headers, &s.body, s.now);
            prop_assert!(got.is_ok(), "{:?}", got.map_err(|e| e.reason()));
            Ok(())
        },
    );
}

/// Where one byte changes.
#[derive(Debug, Clone)]
enum Change {
    Body(Index, u8),
    Header(Index, Index, u8),
}

/// A byte a header value may hold (visible ASCII, space, tab, obs-text), so the changed
/// request is one a client can send.
fn header_byte() -> impl Strategy<Value = u8> {
    prop_oneof![8 => 0x20u8..0x7f, 1 => Just(b'\t'), 1 => 0x80u8..=0xff]
}

#[test]
fn signature_any_single_byte_change_fails() {
    let change = prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Change::Body(i, x)),
        (any::<Index>(), any::<Index>(), header_byte())
            .prop_map(|(h, i, b)| Change::Header(h, i, b)),
    ];
    check(
        "signature_any_single_byte_change_fails",
        4096,
        (signed(false), change),
        |(s, change)| {
            let mut body = s.body.clone();
            let mut headers = s.headers();
            match change {
                Change::Body(i, x) => {
                    prop_assume!(!body.is_empty());
                    let i = i.index(body.len());
                    body[i] ^= x;
                }
                Change::Header(h, i, b) => {
                    let which = h.index(headers.len());
                    let value = &mut headers[which].1;
                    prop_assume!(!value.is_empty());
                    let at = i.index(value.len());
                    let old = &mut value[at];
                    // Hex is read in either case: a change of case is no change.
                    prop_assume!(!old.eq_ignore_ascii_case(&b));
                    *old = b;
                }
            }
            let map = header_map(&headers).expect("changed to a valid header byte");
            let got = s.verifier().verify(&map, &body, s.now);
            let reason = got.as_ref().err().map(|e| e.reason());
            prop_assert!(
                matches!(reason, Some(Reason::BadSignature | Reason::StaleTimestamp)),
                "{:?} after {:?}",
                reason,
                change
            );
            Ok(())
        },
    );
}

/// The window is exact: `tolerance` seconds either way verify, one more is stale.
#[test]
fn signature_the_timestamp_window_is_exact() {
    let strategy = (signed(false), any::<bool>(), 0u64..100_000)
        .prop_filter("schemes with a timestamp", |(s, _, _)| {
            matches!(s.scheme, Scheme::Standard | Scheme::Stripe)
        });
    check(
        "signature_the_timestamp_window_is_exact",
        1024,
        strategy,
        |(mut s, later, beyond)| {
            let headers = header_map(&s.headers()).expect("signed headers are valid");
            let tol = s.tolerance as i64;
            let sign = if later { 1 } else { -1 };
            s.now = s.timestamp + sign * tol;
            prop_assert!(s.verifier().verify(&headers, &s.body, s.now).is_ok());
            s.now = s.timestamp + sign * (tol + 1 + beyond as i64);
            let reason = s
                .verifier()
                .verify(&headers, &s.body, s.now)
                .err()
                .map(|e| e.reason());
            prop_assert_eq!(reason, Some(Reason::StaleTimestamp));
            Ok(())
        },
    );
}

/// Header values a scheme might meet: arbitrary bytes, and near-misses of its own format.
fn hostile_value(scheme: &Scheme) -> BoxedStrategy<Vec<u8>> {
    let any_bytes = proptest::collection::vec(header_byte(), 0..120);
    let hex = "[0-9a-fA-F]{0,130}";
    let b64 = "[A-Za-z0-9+/]{0,90}={0,2}";
    let near: BoxedStrategy<String> = match scheme {
        Scheme::Standard => prop_oneof![
            b64.prop_map(|s| format!("v1,{s}")),
            (b64, b64).prop_map(|(a, b)| format!("v1,{a} v1,{b}")),
            "-?[0-9]{0,20}",
            Just("9223372036854775807".to_owned()),
            Just("-9223372036854775808".to_owned()),
            "msg_[A-Za-z0-9]{0,30}",
        ]
        .boxed(),
        Scheme::Github { .. } => hex.prop_map(|h| format!("sha256={h}")).boxed(),
        Scheme::Stripe => prop_oneof![
            ("-?[0-9]{0,20}", hex).prop_map(|(t, h)| format!("t={t},v1={h}")),
            (hex, "[0-9]{0,12}").prop_map(|(h, t)| format!("v1={h},t={t},t=,v1=,=,,")),
        ]
        .boxed(),
        Scheme::Hmac { prefix, .. } => {
            let prefix = prefix.clone();
            prop_oneof![hex, b64]
                .prop_map(move |s| format!("{prefix}{s}"))
                .boxed()
        }
    };
    prop_oneof![any_bytes, near.prop_map(String::into_bytes)].boxed()
}

/// Whatever the headers hold: no panic, a 401 with one of the three reasons, never a pass
/// (HMAC keys are secret: a guess verifies with probability 2^-256), and `missing` only
/// when a header the scheme needs is absent.
#[test]
fn signature_arbitrary_header_values_never_verify() {
    let strategy = (signed(false), any::<i64>(), any::<u64>()).prop_flat_map(|(s, now, tol)| {
        let names = s.scheme.header_names();
        let values: Vec<_> = names
            .iter()
            .map(|_| proptest::option::weighted(0.85, hostile_value(&s.scheme)))
            .collect();
        (Just(s), Just(now), Just(tol), values)
    });
    check(
        "signature_arbitrary_header_values_never_verify",
        4096,
        strategy,
        |(s, now, tolerance, values)| {
            let names = s.scheme.header_names();
            let present: Vec<(String, Vec<u8>)> = names
                .iter()
                .zip(&values)
                .filter_map(|(n, v)| v.clone().map(|v| (n.clone(), v)))
                .collect();
            let headers = header_map(&present).expect("generated header bytes are valid");
            let verifier = SignatureVerifier::new(
                "s",
                s.scheme.core(),
                &s.secrets,
                Duration::from_secs(tolerance),
            )
            .expect("generated secrets are valid");
            let got = verifier.verify(&headers, &s.body, now);
            let Err(r) = got else {
                return Err(TestCaseError::fail("arbitrary headers verified"));
            };
            prop_assert_eq!(r.status().as_u16(), 401);
            let all_present = present.len() == names.len();
            match r.reason() {
                Reason::MissingSignature => prop_assert!(!all_present),
                Reason::BadSignature | Reason::StaleTimestamp => {}
                other => prop_assert!(false, "reason {:?}", other),
            }
            Ok(())
        },
    );
}

/// What a secret may be configured as.
#[derive(Debug, Clone)]
enum Secret {
    Key(Vec<u8>, bool),
    Short(Vec<u8>),
    NotBase64(String),
    Text(String),
    Empty,
}

impl Secret {
    fn text(&self) -> String {
        match self {
            Secret::Key(k, true) | Secret::Short(k) => format!("whsec_{}", B64.encode(k)),
            Secret::Key(k, false) => B64.encode(k),
            Secret::NotBase64(s) | Secret::Text(s) => s.clone(),
            Secret::Empty => String::new(),
        }
    }
}

fn secret() -> impl Strategy<Value = Secret> {
    prop_oneof![
        3 => (proptest::collection::vec(any::<u8>(), 16..64), any::<bool>())
            .prop_map(|(k, p)| Secret::Key(k, p)),
        1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(Secret::Short),
        1 => "whsec_[A-Za-z0-9]{10,30}[*!.@][A-Za-z0-9]{0,8}".prop_map(Secret::NotBase64),
        2 => "[A-Za-z0-9]{12,40}".prop_map(Secret::Text),
        1 => Just(Secret::Empty),
    ]
}

/// Secrets are checked when the route is built, and an error names the setting but never
/// holds a secret's value.
#[test]
fn signature_secrets_are_checked_and_never_echoed() {
    check(
        "signature_secrets_are_checked_and_never_echoed",
        2048,
        (scheme(), proptest::collection::vec(secret(), 0..4)),
        |(scheme, secrets)| {
            let texts: Vec<String> = secrets.iter().map(Secret::text).collect();
            let got = SignatureVerifier::new(
                "route[2].signature",
                scheme.core(),
                &texts,
                Duration::from_secs(300),
            );
            let valid = !secrets.is_empty()
                && secrets.iter().all(|s| match (&scheme, s) {
                    (_, Secret::Empty) => false,
                    (Scheme::Standard, Secret::Key(..)) => true,
                    (Scheme::Standard, Secret::Text(t)) => {
                        B64.decode(t).is_ok_and(|k| k.len() >= 16)
                    }
                    (Scheme::Standard, _) => false,
                    _ => true,
                });
            match got {
                Ok(v) => {
                    prop_assert!(valid, "accepted {:?}", texts);
                    let shown = format!("{v:?}");
                    for t in texts.iter().filter(|t| t.len() >= 8) {
                        prop_assert!(!shown.contains(t.as_str()), "{}", shown);
                    }
                }
                Err(e) => {
                    prop_assert!(!valid, "refused {:?}: {}", texts, e);
                    let msg = e.to_string();
                    prop_assert!(msg.starts_with("route[2].signature: "), "{}", msg);
                    for t in texts.iter().filter(|t| t.len() >= 8) {
                        prop_assert!(!msg.contains(t.as_str()), "{} echoes a secret", msg);
                    }
                }
            }
            Ok(())
        },
    );
}
