use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::select;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::common::{Gateway, Upstream, PATH};
use super::generate::{json_value, mutate, mutation, provider_payload, Bytes};
use super::harness::check;

/// How long an answer may take. The gateway's own deadlines are 200 ms (header and body),
/// so anything near this bound is a hang.
const BOUND: Duration = Duration::from_secs(5);

/// One request as sent: its bytes, and where the sender pauses (a head split across
/// reads, as TCP may deliver it).
#[derive(Debug, Clone)]
struct Request {
    bytes: Bytes,
    pause_at: Option<proptest::sample::Index>,
}

/// Header lines a careless or hostile client sends.
fn hostile_header() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(vec![
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: xchunked",
            "Transfer-Encoding: chunked, identity",
            "Content-Length: -1",
            "Content-Length: 99999999999999999999",
            "Content-Length: 5, 5",
            "Content-Length: +5",
            "Content-Length: 0x10",
            "Expect: 100-continue",
            "Expect: 200-ok",
            "Connection: close",
            "Connection: keep-alive, Upgrade",
            "Upgrade: websocket",
            " folded continuation",
            "\tfolded continuation",
            "Bad Name: x",
            ": empty name",
            "NoColon",
            "X-Forwarded-For: 1.2.3.4, unknown",
            "X-Forwarded-For: 203.0.113.9",
            "X-Forwarded-For: 127.0.0.1, [::1]:80",
            "X-Forwarded-For: ::ffff:127.0.0.1",
            "X-Forwarded-For: \u{ff}",
            "Host: second.example",
            "Content-Type: text/plain",
            "Content-Type: application/json; charset=latin1",
            "X-Nul: a\0b",
            "X-Ü: ü",
            "X-Bidi: \u{202e}gnp.exe",
            "webhook-signature: v1,AAAA",
        ])
        .prop_map(str::to_owned),
        1 => (1usize..70_000).prop_map(|n| format!("X-Long: {}", "a".repeat(n))),
        1 => (1usize..400).prop_map(|n| (0..n).map(|i| format!("X-H{i}: v")).collect::<Vec<_>>().join("\r\n")),
    ]
}

/// The reference sender's request (DESIGN §1), then edits of its method, target, version,
/// headers, framing and line ends.
fn sender_request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        12 => Just("POST".to_owned()),
        2 => select(vec!["GET", "PUT", "HEAD", "OPTIONS", "CONNECT", "TRACE", "DELETE", "post", "PO ST", "", "P\0ST"])
            .prop_map(str::to_owned),
        1 => (1usize..400).prop_map(|n| "M".repeat(n)),
    ];
    let target = prop_oneof![
        12 => Just(PATH.to_owned()),
        2 => select(vec![
            "/", "*", "http://127.0.0.1/webhook/o3-video", "/webhook/o3-video?x=1",
            "/webhook/o3-video#f", "//", "/%00", "/webhook/o3-video/../x", "/ü", "",
            "/webhook/o3-video ", "/webhook/%6f3-video",
        ])
        .prop_map(str::to_owned),
        1 => (1usize..10_000).prop_map(|n| format!("/{}", "a".repeat(n))),
    ];
    let version = prop_oneof![
        12 => Just("HTTP/1.1"),
        2 => select(vec!["HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTP/9.9", "HTTP/1", "http/1.1", "", "HTTP/1.1 x"]),
    ];
    let body = prop_oneof![
        4 => provider_payload(),
        1 => json_value().prop_map(|v| v.to_string()),
        1 => Just(String::new()),
    ];
    // The declared length: right, short, long, absent, or chunked framing.
    let framing = prop_oneof![6 => Just(0u8), 1 => 1..5u8];
    (
        method,
        target,
        version,
        body,
        framing,
        prop_oneof![
            3 => Just(Vec::new()),
            1 => proptest::collection::vec(hostile_header(), 1..3),
        ],
        proptest::bool::weighted(0.9),
        proptest::bool::weighted(0.1),
    )
        .prop_flat_map(
            |(method, target, version, body, framing, extra, host, lf)| {
                let mut headers = vec![
                    "Content-Type: application/json".to_owned(),
                    "User-Agent: provider-webhooks/1.0".to_owned(),
                    "Accept: */*".to_owned(),
                ];
                if host {
                    headers.push("Host: hooks.example.com".to_owned());
                }
                let (framing_header, sent) = match framing {
                    0 => (
                        Some(format!("Content-Length: {}", body.len())),
                        body.clone(),
                    ),
                    1 => (
                        Some(format!("Content-Length: {}", body.len() + 7)),
                        body.clone(),
                    ),
                    2 => (
                        Some(format!("Content-Length: {}", body.len().saturating_sub(3))),
                        body.clone(),
                    ),
                    3 => (None, body.clone()),
                    _ => (
                        Some("Transfer-Encoding: chunked".to_owned()),
                        format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()),
                    ),
                };
                headers.extend(framing_header);
                headers.extend(extra);
                (
                    Just((method, target, version, sent, lf)),
                    Just(headers).prop_shuffle(),
                )
            },
        )
        .prop_map(|((method, target, version, body, lf), headers)| {
            let eol = if lf { "\n" } else { "\r\n" };
            let head = format!(
                "{method} {target} {version}{eol}{}{eol}{eol}",
                headers.join(eol)
            );
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(body.as_bytes());
            bytes
        })
}

fn request() -> impl Strategy<Value = Request> {
    let bytes = prop_oneof![
        4 => sender_request(),
        2 => (sender_request(), proptest::collection::vec(mutation(), 1..4))
            .prop_map(|(r, m)| mutate(r, &m)),
        1 => proptest::collection::vec(any::<u8>(), 0..512),
        1 => "[ -~\r\n]{0,300}".prop_map(String::into_bytes),
    ];
    (
        bytes,
        proptest::option::weighted(0.2, any::<proptest::sample::Index>()),
    )
        .prop_map(|(bytes, pause_at)| Request {
            bytes: Bytes(bytes),
            pause_at,
        })
}

/// What came back on one connection.
#[derive(Debug)]
enum Reply {
    /// A complete final answer.
    Answer(Answer),
    /// Closed (or reset) before any byte of an answer.
    Closed,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// The first complete final answer in `buf`, `Ok(None)` while incomplete, or why `buf` is
/// not HTTP/1.1. Interim (1xx) answers are skipped. The answer to a `HEAD` has no body
/// whatever its length says (RFC 9110 §9.3.2).
fn parse_answer(
    mut buf: &[u8],
    closed: bool,
    head_request: bool,
) -> Result<Option<Answer>, String> {
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = std::str::from_utf8(&buf[..end]).map_err(|_| "a head that is not UTF-8")?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|s| (100..600).contains(s))
            .ok_or_else(|| format!("status line {status_line:?}"))?;
        if status_line.len() > 12 && status_line.as_bytes()[12] != b' ' {
            return Err(format!("status line {status_line:?}"));
        }
        let mut length = None;
        let mut chunked = false;
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("header line {line:?}"))?;
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token || line.contains(['\r', '\n']) {
                return Err(format!("header line {line:?}"));
            }
            if name.eq_ignore_ascii_case("content-length") {
                if length.is_some() {
                    return Err("two Content-Lengths".into());
                }
                length = Some(
                    value
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| format!("{line:?}"))?,
                );
            }
            if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.trim().eq_ignore_ascii_case("chunked");
            }
        }
        let rest = &buf[end + 4..];
        let no_body =
            head_request || (100..200).contains(&status) || status == 204 || status == 304;
        let body_len = if no_body {
            0
        } else if let Some(n) = length {
            n
        } else if chunked {
            // The gateway's answers carry a length; an upstream's relayed answer may not.
            match rest.windows(5).position(|w| w == b"0\r\n\r\n") {
                Some(p) => p + 5,
                None if closed => return Err("closed inside a chunked body".into()),
                None => return Ok(None),
            }
        } else if closed {
            rest.len()
        } else {
            return Ok(None);
        };
        if rest.len() < body_len {
            return if closed {
                Err(format!(
                    "closed after {} of {body_len} body bytes",
                    rest.len()
                ))
            } else {
                Ok(None)
            };
        }
        if (100..200).contains(&status) {
            buf = rest;
            continue;
        }
        return Ok(Some(Answer {
            status,
            body: rest[..body_len].to_vec(),
        }));
    }
}

/// Sends `request` on a fresh connection and reads until a complete answer, a close, or
/// [`BOUND`].
async fn exchange(addr: std::net::SocketAddr, request: &Request) -> Result<Reply, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut rd, mut wr) = stream.into_split();
    let bytes = request.bytes.0.clone();
    let pause = request.pause_at.map(|i| i.index(bytes.len() + 1));
    let head_request = bytes.starts_with(b"HEAD ");
    // Written beside the read: a gateway that answers early and stops reading must not
    // stall the test; write errors (a closed connection) are the gateway's right.
    let writer = tokio::spawn(async move {
        let split = pause.unwrap_or(bytes.len());
        if wr.write_all(&bytes[..split]).await.is_err() {
            return wr;
        }
        if pause.is_some() {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let _ = wr.write_all(&bytes[split..]).await;
        wr
    });
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) => {
                    return match parse_answer(&buf, true, head_request)? {
                        Some(answer) => Ok(Reply::Answer(answer)),
                        None if buf.is_empty() => Ok(Reply::Closed),
                        None => Err(format!(
                            "closed inside an answer: {:?}",
                            buf.escape_ascii().to_string()
                        )),
                    };
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(answer) = parse_answer(&buf, false, head_request)? {
                        return Ok(Reply::Answer(answer));
                    }
                }
                // A close with unread input is a reset; before any answer byte it is a close.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && buf.is_empty() => {
                    return Ok(Reply::Closed)
                }
                Err(e) => {
                    return Err(format!(
                        "read: {e} after {:?}",
                        buf.escape_ascii().to_string()
                    ))
                }
            }
        }
    };
    let got = tokio::time::timeout(BOUND, read).await;
    writer.abort();
    got.unwrap_or_else(|_| Err(format!("no answer and no close within {BOUND:?}")))
}

/// Whether the process is still running (not exited, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// The real binary against request heads as senders write them, and mutated past
/// recognition, several connections at once: a well-formed HTTP/1.1 answer or a clean close
/// within [`BOUND`], the process alive, `/healthz` answering after each batch.
#[test]
fn gateway_answers_any_request_head_and_stays_up() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (upstream, gateway) = rt.block_on(async {
        let upstream = Upstream::start().await;
        let gateway = Gateway::for_upstream_edited(
            dir.path(),
            &upstream.url(),
            "header_timeout = \"200ms\"\nbody_timeout = \"200ms\"\nidle_timeout = \"2s\"",
            // The peer is a trusted proxy, so each `X-Forwarded-For` is read (step 2).
            "max_body = \"64KiB\"\ntrusted_proxies = [\"127.0.0.0/8\"]",
            |text| text.replace("[[route]]", "[store]\nbackend = \"memory\"\n\n[[route]]"),
        )
        .await;
        (upstream, gateway)
    });
    let health = reqwest::Client::builder()
        .timeout(BOUND)
        .build()
        .expect("a client");
    let (public, pid) = (gateway.public, gateway.pid());
    check(
        "gateway_answers_any_request_head_and_stays_up",
        128,
        proptest::collection::vec(request(), 1..6),
        |requests| {
            rt.block_on(async {
                let sends = requests
                    .iter()
                    .cloned()
                    .map(|r| async move { exchange(public, &r).await });
                let replies = join_all(sends).await;
                for (request, reply) in requests.iter().zip(replies) {
                    match reply {
                        Err(why) => {
                            return Err(TestCaseError::fail(format!("{why}\nfor {request:?}")))
                        }
                        // Every answer is one the core wrote: JSON naming a reason or a
                        // status (DESIGN §2).
                        Ok(Reply::Answer(a)) if !request.bytes.starts_with(b"HEAD ") => {
                            let body: serde_json::Value =
                                serde_json::from_slice(&a.body).unwrap_or(serde_json::Value::Null);
                            prop_assert!(
                                body["error"].is_string() || body["status"].is_string(),
                                "a {} answer with body {:?}\nfor {:?}",
                                a.status,
                                a.body.escape_ascii().to_string(),
                                request
                            );
                        }
                        Ok(_) => {}
                    }
                }
                prop_assert!(
                    alive(pid),
                    "the gateway exited; its log:\n{}",
                    gateway.log_text()
                );
                let healthz = health.get(gateway.admin_url("/healthz")).send().await;
                prop_assert!(
                    healthz.as_ref().is_ok_and(|r| r.status() == 200),
                    "/healthz: {:?}",
                    healthz
                );
                Ok(())
            })
        },
    );
    drop(upstream);
}

/// Joins the futures of one batch (their connections run at once).
async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("an exchange does not panic"));
    }
    out
}
