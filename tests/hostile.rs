//! The `hookgate` binary against a hostile or careless client, and the defects a review found:
//! pipelined requests, requests pingora's parser refuses, forged forwarding headers, repeated
//! JSON names, oversized answers, clients that hang up. Real process, real sockets, real upstream.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway on free ports in `dir` with one route to `upstream`, its config text passed
/// through `edit` first (for keys `setup` sets already).
async fn start_edited(
    dir: &std::path::Path,
    upstream: &Upstream,
    edit: impl FnOnce(String) -> String,
) -> Gateway {
    Gateway::for_upstream_edited(dir, &upstream.url(), "", "", edit).await
}

/// A raw HTTP/1.1 POST of `body` to `path`.
fn post_raw(path: &str, body: &str, content_type: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// One parsed answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads answers from `stream` until `n` have arrived, the server closes, or 10 s pass.
async fn read_answers(stream: &mut TcpStream, n: usize) -> Vec<Answer> {
    let mut got: Vec<u8> = Vec::new();
    let mut answers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 8192];
    while answers.len() < n {
        // Parse what is buffered.
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_owned();
            let length = content_length(&head);
            if got.len() >= end + 4 + length {
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let body = String::from_utf8_lossy(&got[end + 4..end + 4 + length]).into_owned();
                // A 100 Continue is not an answer.
                if status != 100 {
                    answers.push(Answer { status, head, body });
                }
                got.drain(..end + 4 + length);
                continue;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
        }
    }
    answers
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_all_answered_in_order() {
    let s = setup("", "").await;
    let ids: Vec<String> = (0..3).map(|_| generation()).collect();
    let mut three = String::new();
    for id in &ids {
        three.push_str(&post_raw(PATH, &completed(id), "application/json"));
    }
    let mut stream = TcpStream::connect(s.gateway.public).await.unwrap();
    stream.write_all(three.as_bytes()).await.unwrap();
    let answers = read_answers(&mut stream, 3).await;
    assert_eq!(answers.len(), 3, "{answers:?}");
    let mut events = HashSet::new();
    for a in &answers {
        assert_eq!(a.status, 200, "{a:?}");
        let v: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["status"], "received", "{a:?}");
        events.insert(v["event_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(events.len(), 3);
    let got = s.upstream.wait_for(3, Duration::from_secs(10)).await;
    let delivered: HashSet<String> = got
        .iter()
        .map(|r| r.json()["generation_id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(delivered, ids.iter().cloned().collect::<HashSet<_>>());

    // A refusal, then a valid POST, in one write: both answered, in order.
    let id = generation();
    let two =
        post_raw(PATH, "{}", "text/plain") + &post_raw(PATH, &completed(&id), "application/json");
    let mut stream = TcpStream::connect(s.gateway.public).await.unwrap();
    stream.write_all(two.as_bytes()).await.unwrap();
    let answers = read_answers(&mut stream, 2).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [415, 200], "{answers:?}");
    assert_eq!(reason(&answers[0].body), "unsupported_media_type");
    s.upstream.wait_for(4, Duration::from_secs(10)).await;
    assert!(s
        .upstream
        .received()
        .iter()
        .any(|r| r.json()["generation_id"] == id.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_json_names_are_refused() {
    let s = setup("", "").await;
    let id = generation();
    // A parser that keeps the first would see a generation id nobody validated or deduplicated.
    let body = completed(&id).replacen('{', "{\"generation_id\":\"not-a-uuid\",", 1);
    let (status, _, text) = post(&client(), &s.gateway.url(PATH), body).await;
    assert_eq!(
        (status, reason(&text).as_str()),
        (400, "duplicate_key"),
        "{text}"
    );
    // Nested objects too.
    let nested = r#"{"generation_id":"550e8400-e29b-41d4-a716-446655440000","status":"completed","video_url":"https://x/v.mp4","model":"m","message":null,"meta":{"a":1,"a":2}}"#;
    let (status, _, text) = post(&client(), &s.gateway.url(PATH), nested).await;
    assert_eq!(
        (status, reason(&text).as_str()),
        (400, "duplicate_key"),
        "{text}"
    );
    assert!(s.upstream.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_the_parser_refuses_are_answered_logged_and_counted() {
    let s = setup("", "").await;
    let body = completed(&generation());
    let cases = [
        (
            "two content-lengths",
            format!("POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nContent-Length: 3\r\n\r\n{body}", body.len()),
        ),
        (
            "obfuscated transfer-encoding",
            format!("POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: xchunked\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
        ),
        (
            "too many headers",
            format!(
                "POST {PATH} HTTP/1.1\r\nHost: x\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                (0..300).map(|i| format!("X-H{i}: v\r\n")).collect::<String>(),
                body.len()
            ),
        ),
    ];
    for (name, request) in &cases {
        let mut stream = TcpStream::connect(s.gateway.public).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let answers = read_answers(&mut stream, 1).await;
        assert_eq!(answers.len(), 1, "{name}: no answer");
        assert_eq!(answers[0].status, 400, "{name}: {answers:?}");
        assert_eq!(
            reason(&answers[0].body),
            "malformed_request",
            "{name}: {answers:?}"
        );
    }
    let metrics = s.gateway.metrics().await;
    assert_eq!(
        series(
            &metrics,
            r#"hookgate_rejections_total{reason="malformed_request",route="(none)"}"#
        ),
        3.0,
        "{metrics}"
    );
    let log = s.gateway.log_text();
    assert_eq!(log.matches("malformed_request").count(), 3, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_1_1_without_host_is_refused() {
    let s = setup("", "").await;
    let body = completed(&generation());
    // HTTP/1.1 without Host (RFC 9112 §3.2).
    let no_host = format!("POST {PATH} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let mut stream = TcpStream::connect(s.gateway.public).await.unwrap();
    stream.write_all(no_host.as_bytes()).await.unwrap();
    let answers = read_answers(&mut stream, 1).await;
    assert_eq!(answers.len(), 1);
    assert_eq!(
        (answers[0].status, reason(&answers[0].body).as_str()),
        (400, "missing_host"),
        "{answers:?}"
    );
    assert!(s.upstream.received().is_empty());
    let metrics = s.gateway.metrics().await;
    assert_eq!(
        series(
            &metrics,
            r#"hookgate_rejections_total{reason="missing_host",route="(none)"}"#
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_1_0_gets_no_100_continue() {
    let s = setup("header_timeout = \"1s\"", "").await;
    let body = completed(&generation());
    let request = format!("POST {PATH} HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    let mut stream = TcpStream::connect(s.gateway.public).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    // An HTTP/1.0 client does not know 100 (RFC 9110 §10.1.1): nothing comes before the body.
    let mut early = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut early)).await;
    assert!(
        read.is_err(),
        "the gateway sent {:?} before the body",
        read.map(|r| String::from_utf8_lossy(&early[..r.unwrap_or(0)]).into_owned())
    );
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"),
        "{out}"
    );
    assert!(!out.contains("100 Continue"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_header_timeout_says_the_header_did_not_arrive() {
    let s = setup("header_timeout = \"1s\"", "").await;
    // A header that never ends: 408, and the detail says the header.
    let mut stream = TcpStream::connect(s.gateway.public).await.unwrap();
    stream
        .write_all(format!("POST {PATH} HTTP/1.1\r\nHost: x\r\n").as_bytes())
        .await
        .unwrap();
    let answers = read_answers(&mut stream, 1).await;
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].status, 408);
    let detail: Value = serde_json::from_str(&answers[0].body).unwrap();
    let detail = detail["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("header") && !detail.contains("body"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_kept_alive_connection_the_header_deadline_runs_from_its_first_byte() {
    let s = setup("header_timeout = \"1s\"\nidle_timeout = \"20s\"", "").await;
    let mut stream = TcpStream::connect(s.gateway.public).await.unwrap();
    let first = post_raw(PATH, &completed(&generation()), "application/json");
    stream.write_all(first.as_bytes()).await.unwrap();
    assert_eq!(read_answers(&mut stream, 1).await[0].status, 200);
    // Idle a while (well inside idle_timeout), then a header that stalls.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stream
        .write_all(format!("POST {PATH} HTTP/1.1\r\nHost: x\r\n").as_bytes())
        .await
        .unwrap();
    let sent = Instant::now();
    let answers = read_answers(&mut stream, 1).await;
    let took = sent.elapsed();
    assert_eq!(answers.first().map(|a| a.status), Some(408), "{answers:?}");
    // header_timeout is 1 s; idle_timeout + header_timeout would be 21 s from the last answer.
    assert!(
        took < Duration::from_secs(8),
        "408 came {took:?} after the first byte"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_nothing_in_flight_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let mut gateway = start_edited(dir.path(), &upstream, |text| {
        text.replace("shutdown_grace = \"1s\"", "shutdown_grace = \"15s\"")
    })
    .await;
    assert_eq!(
        post(&client(), &gateway.url(PATH), completed(&generation()))
            .await
            .0,
        200
    );
    upstream.wait_for(1, Duration::from_secs(10)).await;
    let took = gateway.signal_and_wait("TERM");
    assert!(
        took < Duration::from_secs(8),
        "SIGTERM took {took:?} with nothing in flight"
    );
    let log = gateway.log_text();
    assert!(log.contains("hookgate stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_forwarding_headers_and_expect_never_reach_the_upstream() {
    let s = setup("", "").await;
    let res = client()
        .post(s.gateway.url(PATH))
        .header("content-type", "application/json")
        .header("forwarded", "for=6.6.6.6;proto=https")
        .header("x-real-ip", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "bank.example")
        .header("expect", "100-continue")
        .header("x-signature", "kept")
        .body(completed(&generation()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let got = s.upstream.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    for name in [
        "forwarded",
        "x-real-ip",
        "x-forwarded-proto",
        "x-forwarded-host",
        "expect",
    ] {
        assert!(
            got[0].headers.get(name).is_none(),
            "{name} reached the upstream"
        );
    }
    assert_eq!(got[0].header("x-signature"), "kept");
    assert_eq!(got[0].header("x-forwarded-for"), "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_mode_relays_every_value_of_a_repeated_header() {
    let s = proxy_setup().await;
    // Repeated headers all relayed.
    s.upstream.set(Behavior {
        headers: &[
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("vary", "x"),
            ("vary", "y"),
        ],
        ..Behavior::default()
    });
    let res = client()
        .post(s.gateway.url(PATH))
        .header("content-type", "application/json")
        .body(completed(&generation()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cookies: Vec<&str> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    let vary: Vec<&str> = res
        .headers()
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(vary, ["x", "y"]);
}

async fn proxy_setup() -> Setup {
    setup(
        "",
        "mode = \"proxy\"\ndedup = { key = \"body\" }\n[route.delivery]\nconcurrency = 2\ntimeout = \"20s\"",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_mode_relays_a_204_without_content_length() {
    let s = proxy_setup().await;
    // 204: no Content-Length (RFC 9110 §8.6).
    s.upstream.set(Behavior {
        status: 204,
        body: "",
        ..Behavior::default()
    });
    let mut stream = TcpStream::connect(s.gateway.public).await.unwrap();
    stream
        .write_all(post_raw(PATH, &completed(&generation()), "application/json").as_bytes())
        .await
        .unwrap();
    let answers = read_answers(&mut stream, 1).await;
    assert_eq!(answers[0].status, 204, "{answers:?}");
    assert_eq!(answers[0].header("content-length"), None, "{answers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_mode_refuses_an_oversized_upstream_answer() {
    let s = proxy_setup().await;
    // An answer larger than any webhook's is not relayed whole.
    let huge: &'static str = Box::leak("x".repeat(3 << 20).into_boxed_str());
    s.upstream.set(Behavior {
        body: huge,
        ..Behavior::default()
    });
    let (status, _, text) = post(&client(), &s.gateway.url(PATH), completed(&generation())).await;
    assert_eq!(
        (status, reason(&text).as_str()),
        (502, "upstream_unavailable"),
        "{}",
        &text[..text.len().min(200)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_mode_bounds_forwards_in_flight() {
    let s = proxy_setup().await;
    // At most `concurrency` forwards in flight.
    s.upstream.set(Behavior {
        delay: Duration::from_millis(1500),
        ..Behavior::default()
    });
    let before = s.upstream.arrived();
    let sends: Vec<_> = (0..6)
        .map(|_| {
            let (c, url, body) = (client(), s.gateway.url(PATH), completed(&generation()));
            tokio::spawn(async move { post(&c, &url, body).await.0 })
        })
        .collect();
    // Two arrive; no third while they are held (1.5 s each).
    s.upstream
        .wait_arrived(before + 2, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let in_flight = s.upstream.arrived() - before;
    assert_eq!(
        in_flight, 2,
        "{in_flight} forwards in flight with concurrency = 2"
    );
    for send in sends {
        assert_eq!(send.await.unwrap(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_422_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("schema.json"),
        r#"{"type":"object","additionalProperties":{"type":"integer"}}"#,
    )
    .unwrap();
    let upstream = Upstream::start().await;
    let gateway = Gateway::for_upstream(
        dir.path(),
        &upstream.url(),
        "",
        &format!(
            "profile = \"schema\"\nschema = {:?}\ndedup = {{ key = \"body\" }}",
            dir.path().join("schema.json")
        ),
    )
    .await;
    let long = "v".repeat(2000);
    let fields: Vec<String> = (0..200).map(|i| format!("\"f{i}\":\"{long}\"")).collect();
    let body = format!("{{{}}}", fields.join(","));
    let (status, _, text) = post(&client(), &gateway.url(PATH), body).await;
    assert_eq!(status, 422);
    let v: Value = serde_json::from_str(&text).unwrap();
    let listed = v["fields"].as_array().unwrap().len();
    assert!(listed <= 20, "{listed} fields listed");
    assert!(text.len() < 16 * 1024, "a 422 of {} bytes", text.len());
    assert!(v["detail"].as_str().unwrap().contains("200"), "{text:.300}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_by_page() {
    let s = setup("", "[route.delivery]\nmax_attempts = 1").await;
    let ids = dead_lettered(&s, 3).await;
    let c = client();
    let list = async |query: &str| -> Value {
        let res = c
            .get(s.gateway.admin_url(&format!("/dead-letters{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    };
    let all = poll(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || {
            let v = list("").await;
            (v["dead_letters"].as_array().map(Vec::len) == Some(3)).then_some(v)
        },
    )
    .await
    .expect("three dead letters");
    let listed: Vec<&str> = all["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
    // A page of two, then the rest after the second.
    let page = list(&format!("?route={PATH}&limit=2")).await;
    let first: Vec<&str> = page["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(first, [ids[0].as_str(), ids[1].as_str()]);
    let rest = list(&format!("?route={PATH}&limit=2&after={}", ids[1])).await;
    let rest: Vec<&str> = rest["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(rest, [ids[2].as_str()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_is_shown_with_its_body() {
    let s = setup("", "[route.delivery]\nmax_attempts = 1").await;
    let ids = dead_lettered(&s, 1).await;
    let c = client();
    // One, with its body.
    let res = c
        .get(s.gateway.admin_url(&format!("/dead-letters/{}", ids[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let one: Value = res.json().await.unwrap();
    assert_eq!(one["id"], ids[0].as_str());
    assert!(
        one["body"].as_str().unwrap().contains("generation_id"),
        "{one}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_does_not_echo_a_long_id() {
    let s = setup("", "").await;
    let c = client();
    // A 10 KB id is refused without being echoed.
    let long = "z".repeat(10_000);
    let res = c
        .post(s.gateway.admin_url(&format!("/dead-letters/{long}/replay")))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let text = res.text().await.unwrap();
    assert!(text.len() < 512, "a 400 of {} bytes", text.len());
}

/// Sends `body` and closes the connection as soon as it is written, reading nothing.
async fn send_and_hang_up(addr: std::net::SocketAddr, body: String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(post_raw(PATH, &body, "application/json").as_bytes())
        .await
        .unwrap();
    drop(stream);
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_hang_up_get_one_event_each() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gateway = start_edited(dir.path(), &upstream, |text| text).await;
    let ids: Vec<String> = (0..300).map(|_| generation()).collect();
    let hangups: Vec<_> = ids
        .iter()
        .map(|id| tokio::spawn(send_and_hang_up(gateway.public, completed(id))))
        .collect();
    for h in hangups {
        h.await.unwrap();
    }
    // The sender's retries, read to the end: each received or duplicate, after a 409 while the
    // first is still in flight (retried, as the sender does).
    let c = client();
    for id in &ids {
        let answered = async || {
            let (status, _, text) = post(&c, &gateway.url(PATH), completed(id)).await;
            (status != 409).then_some((status, text))
        };
        let got = poll(Duration::from_secs(10), Duration::from_millis(50), answered).await;
        assert_eq!(got.as_ref().map(|g| g.0), Some(200), "{got:?}");
    }
    upstream.wait_for(300, Duration::from_secs(30)).await;
    // Drained; a restart delivers whatever was left unscheduled.
    let (config_file, public, admin) = (
        gateway.config.clone(),
        gateway.public.port(),
        gateway.admin.port(),
    );
    drop(gateway);
    let _again = Gateway::start_file(dir.path(), public, admin, &config_file).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut events: HashMap<String, HashSet<String>> = HashMap::new();
    for r in upstream.received() {
        events
            .entry(r.json()["generation_id"].as_str().unwrap_or("").to_owned())
            .or_default()
            .insert(r.header("x-hookgate-event-id").to_owned());
    }
    for id in &ids {
        let got = events.get(id).map(HashSet::len).unwrap_or(0);
        assert_eq!(
            got, 1,
            "generation {id} reached the upstream under {got} event ids"
        );
    }
}
