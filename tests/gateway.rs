//! The `hookgate` binary end to end: the real process, configured by a file, in front of a real
//! upstream on 127.0.0.1, driven by real clients.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

async fn metrics(gateway: &Gateway) -> String {
    gateway.metrics().await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_pipeline_row_answers_as_designed() {
    let s = setup(
        "header_timeout = \"500ms\"\nbody_timeout = \"500ms\"",
        "max_body = \"1KiB\"",
    )
    .await;
    let c = client();
    let url = s.gateway.url(PATH);
    let id = generation();

    // 1. route match.
    let (status, _, body) = post(&c, &s.gateway.url("/elsewhere"), completed(&id)).await;
    assert_eq!((status, reason(&body).as_str()), (404, "route_not_found"));
    // 2. method.
    let res = c.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "POST");
    assert_eq!(reason(&res.text().await.unwrap()), "method_not_allowed");
    // 6. declared size.
    let (status, _, body) = post(&c, &url, "x".repeat(2000)).await;
    assert_eq!((status, reason(&body).as_str()), (413, "payload_too_large"));
    // 6. streamed size (chunked, no Content-Length): refused once past the limit, connection closed.
    let chunk = "a".repeat(600);
    let chunked = format!(
        "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = raw(s.gateway.public, chunked.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // 7. content type.
    let res = c
        .post(&url)
        .header("content-type", "text/plain")
        .body(completed(&id))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    assert_eq!(reason(&res.text().await.unwrap()), "unsupported_media_type");
    // 8. body read timeout: 100 bytes announced, 10 sent.
    let slow = format!(
        "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"generati"
    );
    let answer = raw(s.gateway.public, slow.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    // 8'. header read timeout: a header that never ends.
    let answer = raw(
        s.gateway.public,
        b"POST /webhook/o3-video HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // 8''. a client that expects 100-continue is told to send the body once the head passes.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = completed(&generation());
        let head = format!(
            "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(s.gateway.public)
            .await
            .unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("100 Continue before the body")
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 100"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        stream.write_all(body.as_bytes()).await.unwrap();
        let mut answer = String::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // 10. well-formed JSON.
    let (status, _, body) = post(&c, &url, "{\"generation_id\":").await;
    assert_eq!((status, reason(&body).as_str()), (400, "malformed_json"));
    // 11. profile: every failing field listed.
    let (status, _, body) = post(&c, &url, r#"{"status":"completed","video_url":"nope"}"#).await;
    assert_eq!((status, reason(&body).as_str()), (422, "invalid_payload"));
    let fields: Vec<String> = serde_json::from_str::<Value>(&body).unwrap()["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fields, ["/generation_id", "/model", "/video_url"], "{body}");
    // 13–14. accepted, then 12. duplicate.
    let (status, _, body) = post(&c, &url, completed(&id)).await;
    assert_eq!(status, 200, "{body}");
    let ack: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ack["status"], "received");
    let (status, _, body) = post(&c, &url, completed(&id)).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"duplicate"}"#));
    let got = s.upstream.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    assert!(got
        .iter()
        .any(|r| r.header("x-hookgate-event-id") == ack["event_id"]));

    // Each outcome counted under its reason.
    let m = metrics(&s.gateway).await;
    let r = r#"route="/webhook/o3-video""#;
    for (reason, n) in [
        ("method_not_allowed", 1.0),
        ("payload_too_large", 2.0),
        ("unsupported_media_type", 1.0),
        ("request_timeout", 1.0),
        ("malformed_json", 1.0),
        ("invalid_payload", 1.0),
    ] {
        let name = format!("hookgate_rejections_total{{reason=\"{reason}\",{r}}}");
        assert_eq!(series(&m, &name), n, "{name}");
    }
    let unmatched = r#"hookgate_rejections_total{reason="route_not_found",route="(none)"}"#;
    assert_eq!(series(&m, unmatched), 1.0);
    let header_timeouts = r#"hookgate_rejections_total{reason="request_timeout",route="(none)"}"#;
    assert_eq!(series(&m, header_timeouts), 1.0);
    for absent in [
        "hookgate_spool_depth",
        "hookgate_deliveries_total",
        "hookgate_events_total",
    ] {
        let unrouted = m
            .lines()
            .filter(|l| l.starts_with(absent) && l.contains(r#"route="(none)""#))
            .count();
        assert_eq!(
            unrouted, 0,
            "{absent} has no series for requests that reach no route"
        );
    }
    let accepted = format!("hookgate_requests_total{{outcome=\"accepted\",{r}}}");
    assert_eq!(series(&m, &accepted), 2.0);
    let duplicate = format!("hookgate_requests_total{{outcome=\"duplicate\",{r}}}");
    assert_eq!(series(&m, &duplicate), 1.0);
    let delivered =
        format!("hookgate_deliveries_total{{destination=\"upstream\",result=\"success\",{r}}}");
    assert_eq!(series(&m, &delivered), 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_payloads_reach_the_upstream_byte_for_byte() {
    let s = setup("", "").await;
    let c = client();
    let mut acks = Vec::new();
    for payload in [PROVIDER_COMPLETED, PROVIDER_FAILED, PROVIDER_TIMEOUT] {
        let res = c
            .post(s.gateway.url(&format!("{PATH}?source=runblob")))
            .header("content-type", "application/json")
            .header("user-agent", "RunBlob-Webhooks/1.0")
            .header("x-custom", "kept")
            .body(payload)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let ack: Value = res.json().await.unwrap();
        acks.push(ack["event_id"].as_str().unwrap().to_owned());
    }
    let got = s.upstream.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3);
    for (payload, id) in [PROVIDER_COMPLETED, PROVIDER_FAILED, PROVIDER_TIMEOUT]
        .iter()
        .zip(&acks)
    {
        let r = got
            .iter()
            .find(|r| r.header("x-hookgate-event-id") == id)
            .expect("delivered with its event id");
        assert_eq!(r.body.as_ref(), payload.as_bytes(), "byte for byte");
        assert_eq!(
            r.uri,
            format!("{PATH}?source=runblob"),
            "the query is forwarded"
        );
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.header("user-agent"), "RunBlob-Webhooks/1.0");
        assert_eq!(r.header("x-custom"), "kept");
        assert_eq!(r.header("x-forwarded-for"), "127.0.0.1");
        assert_eq!(r.header("x-hookgate-attempt"), "1");
        assert!(!r.header("x-hookgate-received-at").is_empty());
        assert_ne!(r.header("host"), s.gateway.public.to_string());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_outside_the_allowlist_is_refused_before_any_byte() {
    let s = setup("", "").await;
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(IpAddr::from(ip))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let refused = from([127, 0, 0, 2])
        .post(s.gateway.url(PATH))
        .header("content-type", "application/json")
        .body(completed(&generation()))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "127.0.0.2 must get no answer: {refused:?}"
    );
    let (status, _, _) = post(
        &from([127, 0, 0, 1]),
        &s.gateway.url(PATH),
        completed(&generation()),
    )
    .await;
    assert_eq!(status, 200);
    let m = metrics(&s.gateway).await;
    assert_eq!(
        series(
            &m,
            r#"hookgate_connections_refused_total{reason="ip_not_allowed"}"#
        ),
        1.0
    );
    assert_eq!(
        s.upstream.wait_for(1, Duration::from_secs(10)).await.len(),
        1
    );
    assert!(s.gateway.log_text().contains("client=127.0.0.2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_the_forwarded_client_is_checked() {
    // A route that trusts a proxy cannot refuse connections by peer: the check is per request.
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let (public, admin) = (free_port(), free_port());
    let routes = format!(
        "[[route]]\npath = \"{PATH}\"\nupstream = \"{}\"\nallow = [\"203.0.113.0/24\", \"127.0.0.1/32\"]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        upstream.url()
    );
    let text = config(public, admin, &dir.path().join("data"), "", &routes);
    let gateway = Gateway::start(dir.path(), public, admin, &text).await;
    let c = client();
    let send = |xff: &'static str| {
        c.post(gateway.url(PATH))
            .header("content-type", "application/json")
            .header("x-forwarded-for", xff)
            .body(completed(&generation()))
            .send()
    };
    let res = send("10.9.9.9").await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(reason(&res.text().await.unwrap()), "ip_not_allowed");
    assert_eq!(
        send("198.51.100.1, 203.0.113.7").await.unwrap().status(),
        200
    );
    let from_2 = reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let res = from_2
        .post(gateway.url(PATH))
        .header("content-type", "application/json")
        .body(completed(&generation()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        403,
        "127.0.0.2 is neither allowed nor a trusted proxy"
    );
    let got = upstream.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("x-forwarded-for"), "203.0.113.7");
}

/// Reads one HTTP/1.1 answer (head and `Content-Length` body) from `stream`, bounded in time.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = content_length(&text[..end]);
                if got.len() >= end + 4 + length {
                    return text;
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return String::from_utf8_lossy(&got).into_owned();
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer in time")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_reads_a_small_body_and_keeps_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup("", "").await;
    let id = generation();
    let body = completed(&id);
    let request = |path: &str, content_type: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // Three requests in turn on one connection: the refused ones' bodies are read and dropped
    // (not left to reset the connection under the answer), and the connection stays usable.
    let mut stream = tokio::net::TcpStream::connect(s.gateway.public)
        .await
        .unwrap();
    for (path, content_type, status) in [
        ("/elsewhere", "application/json", "404"),
        (PATH, "text/plain", "415"),
        (PATH, "application/json", "200"),
    ] {
        stream
            .write_all(request(path, content_type, &body).as_bytes())
            .await
            .unwrap();
        let answer = read_answer(&mut stream).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{path} {content_type}: {answer}"
        );
        assert!(
            !answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    assert_eq!(
        s.upstream.wait_for(1, Duration::from_secs(10)).await.len(),
        1
    );

    // A body past the drain limit is not read for a refusal: answered, then closed.
    let big = "x".repeat(100 * 1024);
    let stream = tokio::net::TcpStream::connect(s.gateway.public)
        .await
        .unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = request("/elsewhere", "application/json", "");
    let head = head.replace(
        "Content-Length: 0",
        &format!("Content-Length: {}", big.len()),
    );
    let writer = tokio::spawn(async move {
        // The gateway may close while this is still sending: errors are expected.
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(big.as_bytes()).await;
        wr
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    drop(writer.await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_answers_503_and_the_retry_is_accepted() {
    let s = setup(
        "spool_max_events = 2",
        "[route.delivery]\nbackoff = \"200ms\"\nmax_backoff = \"200ms\"",
    )
    .await;
    s.upstream.set(Behavior {
        status: 503,
        ..Behavior::default()
    });
    let c = client();
    let url = s.gateway.url(PATH);
    for _ in 0..2 {
        assert_eq!(post(&c, &url, completed(&generation())).await.0, 200);
    }
    let third = generation();
    let (status, headers, body) = post(&c, &url, completed(&third)).await;
    assert_eq!((status, reason(&body).as_str()), (503, "spool_full"));
    assert_eq!(headers["retry-after"], "5");
    let ready = c.get(s.gateway.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while full");
    // The fill gauges (what HookgateSpoolFilling compares) read full: 2 of 2, bytes held.
    let full = async || {
        let m = metrics(&s.gateway).await;
        (series(&m, "hookgate_spool_stored_events") == 2.0).then_some(m)
    };
    let m = poll(Duration::from_secs(5), Duration::from_millis(100), full)
        .await
        .expect("hookgate_spool_stored_events reads 2");
    assert_eq!(series(&m, "hookgate_spool_max_events"), 2.0);
    assert_eq!(series(&m, "hookgate_spool_max_bytes"), (1u64 << 30) as f64);
    assert!(series(&m, "hookgate_spool_stored_bytes") > 200.0, "{m}");
    s.upstream.set(Behavior::default());
    // The backlog drains; the sender's retry is then accepted, not taken for a duplicate.
    let retry = async || {
        let (status, _, body) = post(&c, &url, completed(&third)).await;
        if status != 200 {
            assert_eq!(status, 503);
        }
        (status == 200).then_some(body)
    };
    let body = poll(Duration::from_secs(15), Duration::from_millis(100), retry)
        .await
        .expect("the spool never drained");
    assert!(body.contains("received"), "{body}");
    // Ready again once the spool is below its bound; right after the retry it may still hold
    // two events (the retry and one not yet delivered), which is full, so wait for the drain.
    let ready = async || {
        let status = c
            .get(s.gateway.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status();
        if status != 200 {
            assert_eq!(status, 503);
        }
        (status == 200).then_some(())
    };
    poll(Duration::from_secs(15), Duration::from_millis(50), ready)
        .await
        .expect("never ready again after the drain");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_mode_relays_the_upstream_and_commits_dedup_only_on_2xx() {
    let s = setup("", "mode = \"proxy\"\n[route.delivery]\ntimeout = \"2s\"").await;
    let c = client();
    let url = s.gateway.url(PATH);
    let id = generation();

    s.upstream.set(Behavior {
        status: 500,
        body: r#"{"error":"db down"}"#,
        ..Behavior::default()
    });
    let (status, headers, body) = post(&c, &url, completed(&id)).await;
    assert_eq!((status, body.as_str()), (500, r#"{"error":"db down"}"#));
    assert_eq!(headers["x-upstream"], "demo");
    // Not committed: the sender's retry is forwarded again.
    s.upstream.set(Behavior {
        status: 201,
        body: r#"{"stored":true}"#,
        ..Behavior::default()
    });
    let (status, headers, body) = post(&c, &url, completed(&id)).await;
    assert_eq!((status, body.as_str()), (201, r#"{"stored":true}"#));
    assert_eq!(headers["content-type"], "application/json");
    // Committed on 2xx.
    let (status, _, body) = post(&c, &url, completed(&id)).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"duplicate"}"#));
    assert_eq!(s.upstream.received().len(), 2);

    // A duplicate while the first is in flight: 409 + Retry-After.
    s.upstream.set(Behavior {
        delay: Duration::from_millis(1500),
        ..Behavior::default()
    });
    let slow = generation();
    let first = {
        let (c, url, body) = (c.clone(), url.clone(), completed(&slow));
        tokio::spawn(async move { post(&c, &url, body).await })
    };
    // In flight once the upstream has it (the reservation is taken before forwarding).
    assert_eq!(s.upstream.wait_arrived(3, Duration::from_secs(10)).await, 3);
    let (status, headers, body) = post(&c, &url, completed(&slow)).await;
    assert_eq!(
        (status, reason(&body).as_str()),
        (409, "duplicate_in_flight")
    );
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(first.await.unwrap().0, 200);

    // The upstream too slow: 504; gone: 502.
    s.upstream.set(Behavior {
        delay: Duration::from_secs(4),
        ..Behavior::default()
    });
    let (status, _, body) = post(&c, &url, completed(&generation())).await;
    assert_eq!((status, reason(&body).as_str()), (504, "upstream_timeout"));
    let closed = format!("http://127.0.0.1:{}{PATH}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let gone = Gateway::for_upstream(dir.path(), &closed, "", "mode = \"proxy\"").await;
    let id = generation();
    let (status, _, body) = post(&c, &gone.url(PATH), completed(&id)).await;
    assert_eq!(
        (status, reason(&body).as_str()),
        (502, "upstream_unavailable")
    );
    // Released: the retry is tried again, not answered from the dedup store.
    let (status, _, _) = post(&c, &gone.url(PATH), completed(&id)).await;
    assert_eq!(status, 502);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_dead_letters_token_and_metrics() {
    let s = setup(
        "admin_token = \"s3cret\"",
        "[route.delivery]\nmax_attempts = 1",
    )
    .await;
    let c = client();
    let admin = |path: &str| s.gateway.admin_url(path);
    let ids = dead_lettered(&s, 2).await;

    // Open without the token: metrics, health, readiness.
    assert_eq!(c.get(admin("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(admin("/readyz")).send().await.unwrap().status(), 200);
    let m = c.get(admin("/metrics")).send().await.unwrap();
    assert_eq!(m.status(), 200);
    common::promtool::check(m.text().await.unwrap().as_bytes());
    // Everything else needs it.
    let denied = c.get(admin("/dead-letters")).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    assert_eq!(denied.headers()["www-authenticate"], "Bearer");
    let wrong = c
        .get(admin("/dead-letters"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let denied = c
        .post(admin(&format!("/dead-letters/{}/replay", ids[0])))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);

    // Both dead-lettered (a 400 is not retried).
    let mut list = Value::Null;
    let both = async || {
        list = c
            .get(admin("/dead-letters"))
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (list["count"] == 2).then_some(())
    };
    poll(Duration::from_secs(10), Duration::from_millis(50), both).await;
    assert_eq!(list["count"], 2, "{list}");
    let first = &list["dead_letters"][0];
    assert_eq!(first["route"], PATH);
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["history"][0]["outcome"], "status 400");

    // Replay one after the upstream is fixed: delivered once, same id.
    s.upstream.set(Behavior::default());
    let res = c
        .post(admin(&format!("/dead-letters/{}/replay", ids[0])))
        .bearer_auth("s3cret")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let got = s.upstream.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].header("x-hookgate-event-id"), ids[0]);
    assert_eq!(got[2].header("x-hookgate-attempt"), "2");
    // Purge the other with the CLI, through the admin API.
    let out = std::process::Command::new(binary())
        .args(["dead-letters", "--admin", &s.gateway.admin.to_string()])
        .args(["--token", "s3cret", "purge", &ids[1]])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(binary())
        .arg("--config")
        .arg(&s.gateway.config)
        .args(["dead-letters", "list"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["count"], 0, "{listed}");
    // Errors are JSON with a reason.
    let res = c
        .delete(admin(&format!("/dead-letters/{}", ids[1])))
        .bearer_auth("s3cret")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(reason(&res.text().await.unwrap()), "not_found");
    let res = c
        .post(admin("/dead-letters/replay?route=nope"))
        .bearer_auth("s3cret")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = c
        .post(admin("/dead-letters/replay"))
        .bearer_auth("s3cret")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["count"], 0);
    let m = metrics(&s.gateway).await;
    let dead = r#"hookgate_deliveries_total{destination="upstream",result="dead_letter",route="/webhook/o3-video"}"#;
    assert_eq!(series(&m, dead), 2.0);
    assert_eq!(
        series(
            &m,
            r#"hookgate_dead_letters{destination="upstream",route="/webhook/o3-video"}"#
        ),
        0.0
    );
}

fn tls_files(
    dir: &std::path::Path,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    pingora::tls::CertificateDer<'static>,
) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, cert.cert.der().clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_listener_with_a_certificate_made_here() {
    use pingora::tls::{ClientConfig, RootCertStore, ServerName, TlsConnector};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = tls_files(dir.path());
    let upstream = Upstream::start().await;
    let tls = format!("tls = {{ cert = {cert:?}, key = {key:?} }}");
    let gateway = Gateway::for_upstream(dir.path(), &upstream.url(), &tls, "").await;

    pingora::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    roots.add(der).unwrap();
    let tls = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(gateway.public)
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.expect("TLS handshake");
    let body = completed(&generation());
    let request = format!(
        "POST {PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""status":"received""#), "{answer}");
    let got = upstream.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body.as_ref(), body.as_bytes());
    // Plain HTTP on the TLS port gets no webhook answer.
    let plain = raw(
        gateway.public,
        b"POST /webhook/o3-video HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(!plain.contains("received"), "{plain}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_certificate_or_key_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _, _) = tls_files(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, other_key, _) = tls_files(other.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a pem file\n").unwrap();
    for (name, key) in [("mismatched key", &other_key), ("garbage key", &garbage)] {
        let text = config(
            free_port(),
            free_port(),
            &dir.path().join("data"),
            &format!("tls = {{ cert = {cert:?}, key = {key:?} }}"),
            &route("http://127.0.0.1:9/", ""),
        );
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(binary())
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains("bad.toml: server.tls:"), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

#[test]
fn check_config_prints_the_effective_config_or_every_error() {
    let out = std::process::Command::new(binary())
        .args(["check-config", "examples/hookgate.toml"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("header_timeout = \"10s\""), "{stdout}");
    assert!(stdout.contains("path = \"/webhook/o3-video\""), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    std::fs::write(
        &file,
        "[server]\n[[route]]\npath = \"/w\"\nupstream = \"http://127.0.0.1:3000/\"\nallow = [\"10.0.0.0/33\"]\ndedup = { key = \"generation_id\" }\n",
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("typo.toml: route[0].allow[0]"), "{stderr}");
    assert!(stderr.contains("typo.toml: route[0].dedup.key"), "{stderr}");

    // Without a file: the built-in default, which is examples/hookgate.toml.
    let out = std::process::Command::new(binary())
        .arg("check-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let embedded = String::from_utf8_lossy(&out.stdout);
    assert!(embedded.starts_with("# (embedded default: examples/hookgate.toml): OK"));
    assert_eq!(
        embedded.lines().skip(1).collect::<Vec<_>>(),
        stdout.lines().skip(1).collect::<Vec<_>>()
    );

    let out = std::process::Command::new(binary())
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hookgate "));
}

/// Posts distinct events from `senders` tasks until told to stop or the gateway stops answering;
/// returns the generation ids that got 200 received.
fn spawn_senders(
    url: String,
    senders: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..senders)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let c = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut acked = Vec::new();
                let mut failures = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && failures < 20 {
                    let id = generation();
                    match c
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(completed(&id))
                        .send()
                        .await
                    {
                        Ok(res) if res.status() == 200 => {
                            let body = res.text().await.unwrap_or_default();
                            if body.contains("received") {
                                acked.push(id);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                acked
            })
        })
        .collect()
}

async fn delivered_ids(upstream: &Upstream) -> HashSet<String> {
    upstream
        .received()
        .iter()
        .filter_map(|r| r.json()["generation_id"].as_str().map(str::to_owned))
        .collect()
}

async fn wait_all_delivered(upstream: &Upstream, acked: &HashSet<String>) -> HashSet<String> {
    let all = async || Some(delivered_ids(upstream).await).filter(|got| acked.is_subset(got));
    match poll(Duration::from_secs(60), Duration::from_millis(100), all).await {
        Some(got) => got,
        None => delivered_ids(upstream).await,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    // Slow deliveries: a backlog is pending when the signal comes.
    upstream.set(Behavior {
        delay: Duration::from_millis(20),
        ..Behavior::default()
    });
    let (public, admin) = (free_port(), free_port());
    let text = config(
        public,
        admin,
        &dir.path().join("data"),
        "",
        &route(&upstream.url(), "[route.delivery]\nconcurrency = 2"),
    );
    let mut gateway = Gateway::start(dir.path(), public, admin, &text).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders = spawn_senders(gateway.url(PATH), 8, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let took = tokio::task::spawn_blocking(move || {
        let took = gateway.signal_and_wait("TERM");
        (took, gateway)
    })
    .await
    .unwrap();
    let (took, gateway) = took;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = HashSet::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    let log = gateway.log_text();
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let before_restart = delivered_ids(&upstream).await;
    assert!(
        acked.len() > 50,
        "the load was too light: {} acked",
        acked.len()
    );
    upstream.set(Behavior::default());
    let _again = Gateway::start_file(dir.path(), public, admin, &gateway.config).await;
    let got = wait_all_delivered(&upstream, &acked).await;
    let lost: Vec<_> = acked.difference(&got).collect();
    println!(
        "SIGTERM after {took:?}: {} acknowledged, {} delivered before the restart, {} lost",
        acked.len(),
        before_restart.intersection(&acked).count(),
        lost.len()
    );
    assert!(lost.is_empty(), "{} acknowledged events lost", lost.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_stops_gracefully_too() {
    let mut s = setup("", "").await;
    assert_eq!(
        post(&client(), &s.gateway.url(PATH), completed(&generation()))
            .await
            .0,
        200
    );
    let took = s.gateway.signal_and_wait("INT");
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    let log = s.gateway.log_text();
    assert!(log.contains("SIGINT: stopping gracefully"), "{log}");
    assert!(log.contains("hookgate stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_and_restart_delivers_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    // The upstream refuses at first: every kill hits a backlog.
    upstream.set(Behavior {
        status: 503,
        ..Behavior::default()
    });
    let (public, admin) = (free_port(), free_port());
    let text = config(
        public,
        admin,
        &dir.path().join("data"),
        "",
        &route(
            &upstream.url(),
            "[route.delivery]\nbackoff = \"100ms\"\nmax_backoff = \"300ms\"",
        ),
    );
    let config_file = dir.path().join("hookgate.toml");
    std::fs::write(&config_file, &text).unwrap();
    let mut acked = HashSet::new();
    let mut kills = 0;
    for round in 0..3 {
        let mut gateway = Gateway::start_file(dir.path(), public, admin, &config_file).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let senders = spawn_senders(gateway.url(PATH), 6, stop.clone());
        tokio::time::sleep(Duration::from_millis(700 + 200 * round)).await;
        tokio::task::spawn_blocking(move || gateway.signal_and_wait("KILL"))
            .await
            .unwrap();
        kills += 1;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for s in senders {
            acked.extend(s.await.unwrap());
        }
    }
    assert!(acked.len() > 100, "the load was too light: {}", acked.len());
    upstream.set(Behavior::default());
    let _last = Gateway::start_file(dir.path(), public, admin, &config_file).await;
    let got = wait_all_delivered(&upstream, &acked).await;
    let lost = acked.difference(&got).count();
    let received = upstream.received();
    let mut seen = HashSet::new();
    let twice = received
        .iter()
        .filter(|r| r.status == 200 && !seen.insert(r.json()["generation_id"].to_string()))
        .count();
    println!(
        "{kills} SIGKILLs: {} acknowledged, {} lost, {} attempts in all, {twice} delivered twice",
        acked.len(),
        lost,
        received.len()
    );
    assert_eq!(
        lost, 0,
        "{lost} acknowledged events never reached the upstream"
    );
}

/// An HTTPS upstream on 127.0.0.1 with a certificate made here: a minimal HTTP/1.1 responder over
/// rustls (keep-alive, `Content-Length` bodies) that records each body and answers 200.
async fn https_upstream(
    dir: &std::path::Path,
) -> (
    std::net::SocketAddr,
    std::path::PathBuf,
    Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    use pingora::tls::{ServerConfig, TlsAcceptor};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    let ca =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let ca_path = dir.join("upstream-ca.pem");
    std::fs::write(&ca_path, ca.cert.pem()).unwrap();
    pingora::tls::install_default_crypto_provider();
    let key = pingora::tls::PrivateKeyDer::try_from(ca.signing_key.serialize_der()).unwrap();
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![ca.cert.der().clone()], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = bodies.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, bodies) = (acceptor.clone(), recorded.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut stream = tokio::io::BufReader::new(tls);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    bodies.lock().unwrap().push(body);
                    let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{\"status\":\"received\"}";
                    if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, ca_path, bodies)
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_with_its_own_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, ca, bodies) = https_upstream(dir.path()).await;
    let url = format!("https://{addr}{PATH}");
    let gateway = Gateway::for_upstream(
        dir.path(),
        &url,
        "",
        &format!("upstream_ca = {ca:?}\n[route.delivery]\nbackoff = \"100ms\""),
    )
    .await;
    let body = completed(&generation());
    assert_eq!(
        post(&client(), &gateway.url(PATH), body.clone()).await.0,
        200
    );
    let arrived = async || (!bodies.lock().unwrap().is_empty()).then_some(());
    poll(Duration::from_secs(10), Duration::from_millis(20), arrived).await;
    assert_eq!(bodies.lock().unwrap().as_slice(), [body.into_bytes()]);

    // Without the CA the certificate is not trusted: the event waits in the spool, retried.
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::for_upstream(
        dir.path(),
        &url,
        "",
        "[route.delivery]\nbackoff = \"100ms\"",
    )
    .await;
    assert_eq!(
        post(&client(), &gateway.url(PATH), completed(&generation()))
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        bodies.lock().unwrap().len(),
        1,
        "an untrusted upstream got the event"
    );
    let m = metrics(&gateway).await;
    let retries = r#"hookgate_deliveries_total{destination="upstream",result="retry",route="/webhook/o3-video"}"#;
    assert!(series(&m, retries) >= 1.0, "{m}");
    assert!(
        gateway.log_text().contains("certificate"),
        "{}",
        gateway.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_storage_backend_is_chosen_by_the_config() {
    // `[store] backend = "memory"`: a second backend, chosen in the file alone.
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let (public, admin) = (free_port(), free_port());
    let data = dir.path().join("data");
    let text = config(public, admin, &data, "", &route(&upstream.url(), ""))
        .replace("[[route]]", "[store]\nbackend = \"memory\"\n\n[[route]]");
    let gateway = Gateway::start(dir.path(), public, admin, &text).await;
    let c = client();
    let id = generation();
    let (status, _, body) = post(&c, &gateway.url(PATH), completed(&id)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = post(&c, &gateway.url(PATH), completed(&id)).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"duplicate"}"#));
    let got = upstream.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["generation_id"], id.as_str());
    // Nothing on disk: the embedded spool was never opened.
    assert!(
        !data.join("spool").exists(),
        "the embedded spool was opened"
    );
    let log = gateway.log_text();
    assert!(log.contains("backend=Memory"), "{log}");
    // An unknown backend is a config error naming the key.
    let bad = text.replace("backend = \"memory\"", "backend = \"disk\"");
    std::fs::write(dir.path().join("bad.toml"), bad).unwrap();
    let out = std::process::Command::new(binary())
        .args(["check-config"])
        .arg(dir.path().join("bad.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("backend"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_upstream_opens_the_circuit_and_the_backlog_drains_when_it_returns() {
    // Nothing listens on the upstream's port until the end.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}{PATH}");
    let dir = tempfile::tempdir().unwrap();
    // Three attempts per event at most: were a probe counted against its event, the probed
    // events would be dead letters by the end.
    let delivery = "[route.delivery]\nopen_after = 3\nbackoff = \"300ms\"\nmax_backoff = \"600ms\"\nmax_attempts = 3\nconcurrency = 4";
    let gateway = Gateway::for_upstream(dir.path(), &url, "", delivery).await;
    let r = r#"route="/webhook/o3-video""#;
    let up = format!("hookgate_upstream_up{{destination=\"upstream\",{r}}}");
    assert_eq!(series(&metrics(&gateway).await, &up), 1.0);

    let mut sent = HashSet::new();
    for _ in 0..40 {
        let id = generation();
        let (status, _, body) = post(&client(), &gateway.url(PATH), completed(&id)).await;
        assert_eq!(status, 200, "{body}");
        sent.insert(id);
    }
    let opened = poll(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || {
            let m = metrics(&gateway).await;
            (series(&m, &up) == 0.0).then_some(m)
        },
    )
    .await
    .expect("the circuit opens");

    // While it is open: no attempt counted against the waiting events, a probe per interval.
    let retries =
        format!("hookgate_deliveries_total{{destination=\"upstream\",result=\"retry\",{r}}}");
    let probes = format!(
        "hookgate_upstream_probes_total{{destination=\"upstream\",result=\"failure\",{r}}}"
    );
    let before = opened;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = metrics(&gateway).await;
    assert_eq!(
        series(&after, &retries),
        series(&before, &retries),
        "{after}"
    );
    let probed = series(&after, &probes) - series(&before, &probes);
    // 3 s at one probe per 300 ms doubling to 600 ms: 5 or 6; never one per event.
    assert!(
        (1.0..=7.0).contains(&probed),
        "{probed} probes in 3 s\n{after}"
    );
    assert!(
        gateway.log_text().contains("circuit open"),
        "{}",
        gateway.log_text()
    );

    // The upstream comes back: every event is delivered, once.
    let upstream = Upstream::start_on(port).await;
    let got = upstream.wait_for(sent.len(), Duration::from_secs(15)).await;
    let ids: Vec<String> = got
        .iter()
        .map(|r| r.json()["generation_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids.len(),
        sent.len(),
        "delivered {} of {}",
        ids.len(),
        sent.len()
    );
    assert_eq!(ids.iter().cloned().collect::<HashSet<_>>(), sent);
    let closed = poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        async || {
            let m = metrics(&gateway).await;
            (series(&m, &up) == 1.0
                && series(
                    &m,
                    &format!("hookgate_spool_depth{{destination=\"upstream\",{r}}}"),
                ) == 0.0)
                .then_some(m)
        },
    )
    .await
    .expect("the circuit closes and the spool empties");
    assert_eq!(
        series(
            &closed,
            &format!("hookgate_dead_letters{{destination=\"upstream\",{r}}}")
        ),
        0.0,
        "{closed}"
    );
    let succeeded = format!(
        "hookgate_upstream_probes_total{{destination=\"upstream\",result=\"success\",{r}}}"
    );
    assert_eq!(series(&closed, &succeeded), 1.0, "{closed}");
    assert!(
        gateway.log_text().contains("circuit closed"),
        "{}",
        gateway.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_holds_and_the_next_one_is_refused_and_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup("max_connections = 3", "").await;
    let request = |body: &str| {
        format!(
            "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // Three connections, each answered and kept alive.
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = tokio::net::TcpStream::connect(s.gateway.public)
            .await
            .unwrap();
        c.write_all(request(&completed(&generation())).as_bytes())
            .await
            .unwrap();
        let answer = read_answer(&mut c).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        open.push(c);
    }
    let m = metrics(&s.gateway).await;
    assert_eq!(series(&m, "hookgate_connections_open"), 3.0, "{m}");

    // The fourth is closed unanswered.
    let mut fourth = tokio::net::TcpStream::connect(s.gateway.public)
        .await
        .unwrap();
    let _ = fourth
        .write_all(request(&completed(&generation())).as_bytes())
        .await;
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(10), fourth.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let over = r#"hookgate_connections_refused_total{reason="max_connections"}"#;
    let m = metrics(&s.gateway).await;
    assert_eq!(series(&m, over), 1.0, "{m}");
    assert!(s.gateway.log_text().contains("max_connections"));

    // One closes: a new connection is served again.
    drop(open.pop());
    let served = poll(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || {
            let mut c = tokio::net::TcpStream::connect(s.gateway.public)
                .await
                .ok()?;
            c.write_all(request(&completed(&generation())).as_bytes())
                .await
                .ok()?;
            let mut got = vec![0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut got))
                .await
                .ok()?
                .ok()?;
            String::from_utf8_lossy(&got[..n])
                .starts_with("HTTP/1.1 200")
                .then_some(())
        },
    )
    .await;
    assert!(served.is_some(), "no connection served after one closed");
    // The others still work.
    for c in &mut open {
        c.write_all(request(&completed(&generation())).as_bytes())
            .await
            .unwrap();
        assert!(read_answer(c).await.starts_with("HTTP/1.1 200"));
    }
}

/// A web page cannot make the browser replay or purge dead letters through the loopback admin
/// port: a cross-site form POST (no token configured) is refused and replays nothing, and so is
/// any change without `Content-Type: application/json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_refuse_web_pages_and_non_json_requests() {
    let s = setup("", "[route.delivery]\nmax_attempts = 1\n").await;
    let ids = dead_lettered(&s, 2).await;
    let c = client();
    let admin = |path: &str| s.gateway.admin_url(path);
    let count = async || -> u64 {
        let list: Value = c
            .get(admin("/dead-letters"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list["count"].as_u64().unwrap_or(0)
    };
    assert!(
        poll(
            Duration::from_secs(10),
            Duration::from_millis(50),
            async || (count().await == 2).then_some(())
        )
        .await
        .is_some(),
        "two dead letters"
    );
    // What a browser sends for <form method=post action=http://127.0.0.1:9090/dead-letters/replay>.
    let form = c
        .post(admin("/dead-letters/replay"))
        .header("origin", "http://evil.example")
        .header("sec-fetch-site", "cross-site")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 403);
    assert_eq!(reason(&form.text().await.unwrap()), "cross_site_request");
    for (name, value) in [("origin", "null"), ("sec-fetch-site", "same-site")] {
        let res = c
            .delete(admin(&format!("/dead-letters/{}", ids[0])))
            .header(name, value)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{name}: {value}");
    }
    for content_type in [
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        None,
    ] {
        let mut req = c.post(admin(&format!("/dead-letters/{}/replay", ids[0])));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 415, "{content_type:?}");
        assert_eq!(reason(&res.text().await.unwrap()), "json_required");
    }
    // A page rebinding its own name to the loopback address sends its name as Host: refused
    // (no token is set), so it cannot read the dead letters' bodies either.
    let rebound = c
        .get(admin("/dead-letters"))
        .header("host", "attacker.example:9090")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    assert_eq!(reason(&rebound.text().await.unwrap()), "host_not_allowed");
    assert_eq!(count().await, 2, "nothing replayed or purged");
    assert_eq!(s.upstream.received().len(), 2, "nothing delivered again");
    // The CLI's (and curl's) way is taken.
    let res = c
        .post(admin("/dead-letters/replay"))
        .header("content-type", "application/json; charset=utf-8")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["count"], 2);
}

/// Step 9 on a Standard Webhooks route: two secrets (one inline, one from a file: rotation), the
/// sender's `webhook-id` as the default dedup key, and each refusal counted by its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_route_verifies_standard_webhooks_signatures() {
    use base64::Engine as _;
    use hmac::Mac as _;
    let dir = tempfile::tempdir().unwrap();
    // The old secret inline, the new one in a file next to the config.
    let (old, new) = (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_dGhlIG5ldyBzZWNyZXQgYWZ0ZXIgcm90YXRpb24=",
    );
    std::fs::write(dir.path().join("new-secret"), format!("{new}\n")).unwrap();
    let upstream = Upstream::start().await;
    let gateway = Gateway::for_upstream(
        dir.path(),
        &upstream.url(),
        "",
        &format!(
            "profile = \"json\"\n[route.signature]\nscheme = \"standard_webhooks\"\nsecrets = [\"{old}\", {{ file = \"new-secret\" }}]\ntolerance = \"5m\"\n"
        ),
    )
    .await;
    let sign = |secret: &str, id: &str, ts: i64, body: &str| {
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.trim_start_matches("whsec_"))
            .unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.{body}").as_bytes());
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let c = client();
    let send = async |id: &str, ts: i64, sig: Option<&str>, body: &str| {
        let mut req = c
            .post(gateway.url(PATH))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string());
        if let Some(sig) = sig {
            req = req.header("webhook-signature", sig);
        }
        let res = req.body(body.to_owned()).send().await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    };
    let body = r#"{"type":"video.ready","data":{"id":1}}"#;
    // Signed with either secret: accepted.
    let (status, text) = send("msg_1", now, Some(&sign(old, "msg_1", now, body)), body).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = send("msg_2", now, Some(&sign(new, "msg_2", now, body)), body).await;
    assert_eq!(status, 200, "{text}");
    // The sender's retry of msg_1 (signed again) is a duplicate: webhook-id is the dedup key.
    let (status, text) = send("msg_1", now, Some(&sign(new, "msg_1", now, body)), body).await;
    assert_eq!((status, text.contains("duplicate")), (200, true), "{text}");
    // Refusals, each with its reason (the timestamps 30 s beyond the window: the clock moves on
    // between here and the gateway; the exact edges are the core's unit vectors).
    let tampered = r#"{"type":"video.ready","data":{"id":2}}"#;
    let sig3 = sign(old, "msg_3", now, body);
    for (what, (status, text), want) in [
        (
            "one byte changed",
            send("msg_3", now, Some(&sig3), tampered).await,
            "bad_signature",
        ),
        (
            "no signature",
            send("msg_3", now, None, body).await,
            "missing_signature",
        ),
        (
            "signed by another secret",
            send(
                "msg_3",
                now,
                Some(&sign("whsec_c2VjcmV0", "msg_3", now, body)),
                body,
            )
            .await,
            "bad_signature",
        ),
        (
            "too old",
            send(
                "msg_4",
                now - 330,
                Some(&sign(old, "msg_4", now - 330, body)),
                body,
            )
            .await,
            "stale_timestamp",
        ),
        (
            "from the future",
            send(
                "msg_4",
                now + 330,
                Some(&sign(old, "msg_4", now + 330, body)),
                body,
            )
            .await,
            "stale_timestamp",
        ),
    ] {
        assert_eq!(
            (status, reason(&text)),
            (401, want.to_owned()),
            "{what}: {text}"
        );
    }
    let got = upstream.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2, "the two accepted, once each");
    assert!(
        !got[0].header("webhook-signature").is_empty(),
        "signature headers forwarded"
    );
    let m = metrics(&gateway).await;
    assert_eq!(
        series(
            &m,
            &format!("hookgate_rejections_total{{reason=\"bad_signature\",route=\"{PATH}\"}}")
        ),
        2.0
    );
    assert_eq!(
        series(
            &m,
            &format!("hookgate_rejections_total{{reason=\"stale_timestamp\",route=\"{PATH}\"}}")
        ),
        2.0
    );
    assert_eq!(
        series(
            &m,
            &format!("hookgate_rejections_total{{reason=\"missing_signature\",route=\"{PATH}\"}}")
        ),
        1.0
    );
    // check-config never prints a secret.
    let out = std::process::Command::new(binary())
        .args(["check-config"])
        .arg(&gateway.config)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !printed.contains("MfKQ9r8GKYqr") && !printed.contains("dGhlIG5ldyBz"),
        "{printed}"
    );
    assert!(
        printed.contains("header:webhook-id"),
        "the default dedup key shown:\n{printed}"
    );
}

/// Step 5: a burst beyond the route's limit gets 429 + `Retry-After`, another address is not
/// affected, and the allowed rate passes again after the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_rate_limit_gets_429_and_other_clients_pass() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    // 127.0.0.2 is a second client (Linux answers the whole of 127/8).
    let gateway = Gateway::for_upstream_edited(
        dir.path(),
        &upstream.url(),
        "",
        "rate_limit = { per_ip = \"5/s\", burst = 5 }\n",
        |text| text.replace("\"127.0.0.1/32\"", "\"127.0.0.0/8\""),
    )
    .await;
    let s = Setup {
        dir,
        upstream,
        gateway,
    };
    let c = client();
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let (status, headers, text) =
            post(&c, &s.gateway.url(PATH), completed(&generation())).await;
        if status == 429 {
            assert_eq!(reason(&text), "rate_limited");
            assert_eq!(headers["retry-after"], "1");
        }
        statuses.push(status);
    }
    // The burst passes; beyond it 429s (a token comes back every 200 ms, so a slow machine may
    // see one or two more pass: the count is what the metric says).
    assert!(statuses[..5].iter().all(|s| *s == 200), "{statuses:?}");
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert!(refused >= 3, "{statuses:?}");
    assert_eq!(
        refused + statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    let other = from([127, 0, 0, 2]);
    let (status, _, text) = post(&other, &s.gateway.url(PATH), completed(&generation())).await;
    assert_eq!(status, 200, "another address is not affected: {text}");
    // At the allowed rate (one per 200 ms) every request passes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        let (status, _, text) = post(&c, &s.gateway.url(PATH), completed(&generation())).await;
        assert_eq!(status, 200, "{text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let m = metrics(&s.gateway).await;
    assert_eq!(
        series(
            &m,
            &format!("hookgate_rejections_total{{reason=\"rate_limited\",route=\"{PATH}\"}}")
        ),
        refused as f64
    );
}

/// Allowlist sources: a published JSON list (fetched every second from a server on loopback)
/// and a file. A client allowed throughout never fails while the list changes; an address dropped
/// from the list is refused after the refresh; an empty or failing list keeps the last good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_allowlist_is_refreshed_without_failing_a_request() {
    use axum::routing::get;
    let list = Arc::new(Mutex::new((
        200u16,
        r#"{"hooks":["127.0.0.1/32","127.0.0.2/32"]}"#.to_owned(),
    )));
    let served = list.clone();
    let app = axum::Router::new().route(
        "/meta",
        get(move || {
            let (status, body) = served.lock().unwrap().clone();
            async move { (axum::http::StatusCode::from_u16(status).unwrap(), body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let meta = format!("http://{}/meta", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ranges.txt"), "# a partner\n127.0.0.3/32\n").unwrap();
    let upstream = Upstream::start().await;
    let gateway = Gateway::for_upstream_edited(dir.path(), &upstream.url(), "", "", |text| {
        text.replace(
            "allow = [\"127.0.0.1/32\", \"::1/128\"]",
            &format!("allow = [{{ url = \"{meta}\", pointer = \"/hooks\", refresh = \"1s\" }}, {{ file = \"ranges.txt\" }}]"),
        )
    })
    .await;
    let from = |last: u8| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let accepted = async |c: &reqwest::Client| {
        c.post(gateway.url(PATH))
            .header("content-type", "application/json")
            .body(completed(&generation()))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    };
    assert!(
        accepted(&from(2)).await,
        "127.0.0.2 is on the published list"
    );
    assert!(accepted(&from(3)).await, "127.0.0.3 is in the file");

    // 127.0.0.1 sends without pause (bounded) while the list changes under it.
    let steady = steady_load(gateway.url(PATH), Duration::from_secs(6));
    *list.lock().unwrap() = (200, r#"{"hooks":["127.0.0.1/32"]}"#.to_owned());
    let dropped = poll(
        Duration::from_secs(5),
        Duration::from_millis(100),
        async || (!accepted(&from(2)).await).then_some(()),
    )
    .await;
    assert!(
        dropped.is_some(),
        "127.0.0.2 refused once the list dropped it"
    );
    // An empty list and a failing server are refused: the last good list stays.
    *list.lock().unwrap() = (200, r#"{"hooks":[]}"#.to_owned());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    *list.lock().unwrap() = (500, "oops".to_owned());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(accepted(&from(3)).await, "the file's entry stays");
    steady.await.unwrap();
    let m = metrics(&gateway).await;
    assert!(
        series(
            &m,
            &format!("hookgate_allowlist_refresh_failures_total{{route=\"{PATH}\"}}")
        ) >= 2.0,
        "{m}"
    );
    assert_eq!(
        series(
            &m,
            &format!("hookgate_allowlist_entries{{route=\"{PATH}\"}}")
        ),
        2.0
    );
    let log = gateway.log_text();
    assert!(
        log.contains("allowlist refresh failed; keeping the last good list"),
        "{log}"
    );
    server.abort();

    // A source that cannot be read the first time: the start (and check-config) fails, naming it.
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&gateway.config)
        .unwrap()
        .replace(&meta, "http://127.0.0.1:9/meta");
    std::fs::write(&bad, text).unwrap();
    let out = std::process::Command::new(binary())
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("route[0].allow[0]") && err.contains("cannot fetch"),
        "{err}"
    );
}

/// Posts fresh events to `url` from 127.0.0.1 without pause for `within` (and at most 20,000),
/// then asserts none failed and some went through: the load an allowlist change runs under.
fn steady_load(url: String, within: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let c = client_from(1);
        let (mut ok, mut failed) = (0usize, Vec::new());
        let started = std::time::Instant::now();
        while started.elapsed() < within && ok < 20_000 {
            let res = c
                .post(&url)
                .header("content-type", "application/json")
                .body(completed(&generation()))
                .send()
                .await;
            match res {
                Ok(r) if r.status() == 200 => ok += 1,
                other => failed.push(format!("{other:?}")),
            }
        }
        assert!(
            failed.is_empty(),
            "{} of {} requests from an address allowed throughout failed: {:?}",
            failed.len(),
            ok + failed.len(),
            &failed[..failed.len().min(3)]
        );
        assert!(ok > 50, "the load went through: {ok}");
    })
}

/// A client on 127.0.0.`last` (Linux answers the whole of 127/8).
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, last]))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// SIGHUP reloads the whole file: an allowlist file changed under continuous load (no request
/// from an address allowed in both fails; the dropped one is refused after), a broken file
/// refused with the old config serving, and `hookgate reload` adding a route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("allow.txt"), "127.0.0.1/32\n127.0.0.2/32\n").unwrap();
    let upstream = Upstream::start().await;
    let mut gateway = Gateway::for_upstream_edited(dir.path(), &upstream.url(), "", "", |text| {
        text.replace(
            "allow = [\"127.0.0.1/32\", \"::1/128\"]",
            "allow = [{ file = \"allow.txt\" }]",
        )
    })
    .await;
    let accepted = async |c: &reqwest::Client, path: &str| {
        c.post(gateway.url(path))
            .header("content-type", "application/json")
            .body(completed(&generation()))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    };
    assert!(accepted(&client_from(2), PATH).await);
    let steady = steady_load(gateway.url(PATH), Duration::from_secs(6));
    let hup = |pid: u32| {
        assert!(std::process::Command::new("kill")
            .arg("-HUP")
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success());
    };
    std::fs::write(dir.path().join("allow.txt"), "127.0.0.1/32\n").unwrap();
    hup(gateway.pid());
    let dropped = poll(
        Duration::from_secs(5),
        Duration::from_millis(100),
        async || (!accepted(&client_from(2), PATH).await).then_some(()),
    )
    .await;
    assert!(dropped.is_some(), "127.0.0.2 refused after the reload");
    // A broken file: refused, logged, counted; the running config stays.
    let good = std::fs::read_to_string(&gateway.config).unwrap();
    std::fs::write(
        &gateway.config,
        good.replace("[[route]]", "[[route]]\nallow_typo = 1"),
    )
    .unwrap();
    hup(gateway.pid());
    tokio::time::sleep(Duration::from_millis(500)).await;
    steady.await.unwrap();
    assert!(
        accepted(&client_from(1), PATH).await,
        "the old config serves"
    );
    let m = metrics(&gateway).await;
    assert_eq!(
        series(&m, "hookgate_config_reloads_total{result=\"success\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        series(&m, "hookgate_config_reloads_total{result=\"failure\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        series(&m, "hookgate_config_last_reload_successful"),
        0.0,
        "the file on disk is not what runs: {m}"
    );
    let log = gateway.log_text();
    assert!(
        log.contains("reload refused; the running configuration stays")
            && log.contains("allow_typo"),
        "{log}"
    );

    // `hookgate reload` (through the admin API) with a second route added.
    let second = good.clone() + &format!("[[route]]\npath = \"/webhook/second\"\nupstream = \"{}\"\nallow = [\"127.0.0.1/32\"]\n", upstream.url());
    std::fs::write(&gateway.config, second).unwrap();
    let out = std::process::Command::new(binary())
        .args(["reload", "--admin", &gateway.admin.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("reloaded"));
    let m = metrics(&gateway).await;
    assert_eq!(series(&m, "hookgate_config_last_reload_successful"), 1.0);
    assert_eq!(series(&m, "hookgate_config_restart_pending"), 0.0);
    let before = upstream.received().len();
    assert!(
        accepted(&client_from(1), "/webhook/second").await,
        "the new route serves"
    );
    assert!(
        upstream
            .wait_for(before + 1, Duration::from_secs(10))
            .await
            .len()
            > before,
        "and delivers"
    );
    // A setting only a restart applies: reloaded, and the restart is pending.
    let slower = std::fs::read_to_string(&gateway.config)
        .unwrap()
        .replace("shutdown_grace = \"1s\"", "shutdown_grace = \"2s\"");
    std::fs::write(&gateway.config, slower).unwrap();
    let out = std::process::Command::new(binary())
        .args(["reload", "--admin", &gateway.admin.to_string()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("server.shutdown_grace"));
    let m = metrics(&gateway).await;
    assert_eq!(series(&m, "hookgate_config_restart_pending"), 1.0, "{m}");
    // A refused file through the CLI: exit 1, the errors printed.
    std::fs::write(&gateway.config, "[server\n").unwrap();
    let out = std::process::Command::new(binary())
        .args(["reload", "--admin", &gateway.admin.to_string()])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("config_invalid")
    );
    gateway.signal_and_wait("TERM");
}

/// The TLS certificate replaced on disk and SIGHUP: new handshakes get the new certificate, and a
/// connection opened before keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_tls_certificate_without_dropping_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, first) = tls_files(dir.path());
    let upstream = Upstream::start().await;
    let tls = format!("tls = {{ cert = {cert:?}, key = {key:?} }}");
    let gateway = Gateway::for_upstream(dir.path(), &upstream.url(), &tls, "").await;
    let trusting = |der: &pingora::tls::CertificateDer<'static>| {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_der(der).unwrap()])
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let url = format!("https://localhost:{}{PATH}", gateway.public.port());
    let send = async |c: &reqwest::Client| {
        c.post(&url)
            .header("content-type", "application/json")
            .body(completed(&generation()))
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    let old_client = trusting(&first);
    assert_eq!(
        send(&old_client).await.unwrap(),
        200,
        "the first certificate"
    );
    // A new certificate on disk, then SIGHUP.
    let renewed = tempfile::tempdir().unwrap();
    let (new_cert, new_key, second) = tls_files(renewed.path());
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    assert!(std::process::Command::new("kill")
        .arg("-HUP")
        .arg(gateway.pid().to_string())
        .status()
        .unwrap()
        .success());
    let swapped = poll(
        Duration::from_secs(5),
        Duration::from_millis(100),
        async || send(&trusting(&second)).await.ok().filter(|s| *s == 200),
    )
    .await;
    assert!(
        swapped.is_some(),
        "a new handshake gets the new certificate"
    );
    assert!(
        send(&trusting(&first)).await.is_err(),
        "and no longer the old one"
    );
    // The connection opened before the swap (kept alive in the old client's pool) still works.
    assert_eq!(
        send(&old_client).await.unwrap(),
        200,
        "no connection dropped"
    );
}
