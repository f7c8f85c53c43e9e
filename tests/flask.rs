//! A real Flask upstream — the provider's own example handler (`tests/flask/provider_handler.py`)
//! — receiving through the `hookgate` binary. `scripts/test` installs Flask (`pip install flask`).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// The Flask process; killed (by PID) when dropped.
struct Flask {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Flask {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Flask {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn start_flask(dir: &std::path::Path, port: u16) -> Flask {
    let probe = Command::new("python3")
        .args(["-c", "import flask"])
        .output()
        .expect("python3 runs");
    assert!(
        probe.status.success(),
        "Flask is not installed: run scripts/test (it runs `python3 -m pip install flask`)"
    );
    let log = dir.join("flask.log");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/flask/provider_handler.py"
    );
    let child = Command::new("python3")
        .args(["-u", script, &port.to_string()])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start Flask");
    let flask = Flask { child, log };
    let listening = async || {
        let connected = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
        connected.is_ok().then_some(())
    };
    if poll(
        Duration::from_secs(30),
        Duration::from_millis(50),
        listening,
    )
    .await
    .is_none()
    {
        panic!("Flask did not start: {}", flask.log());
    }
    flask
}

#[tokio::test(flavor = "multi_thread")]
async fn the_providers_flask_handler_receives_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let flask_port = free_port();
    let flask = start_flask(dir.path(), flask_port).await;
    let upstream = format!("http://127.0.0.1:{flask_port}{PATH}");
    let gateway = Gateway::for_upstream(dir.path(), &upstream, "", "").await;
    let client = reqwest::Client::new();
    for payload in [PROVIDER_COMPLETED, PROVIDER_FAILED, PROVIDER_TIMEOUT] {
        let (status, _, body) = post(&client, &gateway.url(PATH), payload).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("received"), "{body}");
    }
    // The sender's retry of the first: answered duplicate, not forwarded.
    let (status, _, body) = post(&client, &gateway.url(PATH), PROVIDER_COMPLETED).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"duplicate"}"#));

    let want = [
        "INFO Video ready for 550e8400-e29b-41d4-a716-446655440000: https://cdn.example.com/videos/550e8400.mp4 (kling-o3-video-10s-pro)",
        "ERROR Generation failed for 550e8400-e29b-41d4-a716-446655440001: CONTENT_POLICY_VIOLATION",
        "ERROR Generation failed for 550e8400-e29b-41d4-a716-446655440002: TIMEOUT",
    ];
    // Flask writes its access line after the handler returns: wait for those too.
    let access = "\"POST /webhook/o3-video HTTP/1.1\" 200";
    let logged = async || {
        let log = flask.log();
        (want.iter().all(|w| log.contains(w)) && log.matches(access).count() >= 3).then_some(())
    };
    poll(Duration::from_secs(15), Duration::from_millis(50), logged).await;
    let log = flask.log();
    for line in want {
        assert_eq!(
            log.matches(line).count(),
            1,
            "{line:?} once in Flask's log:\n{log}"
        );
    }
    // Flask's access log: three POSTs answered 200, nothing else.
    assert_eq!(log.matches(access).count(), 3, "{log}");
    // Counted once the gateway has read the answer, a moment after Flask logged it.
    let success = r#"hookgate_deliveries_total{destination="upstream",result="success",route="/webhook/o3-video"} 3"#;
    let counted = async || Some(gateway.metrics().await).filter(|m| m.contains(success));
    let metrics = poll(Duration::from_secs(10), Duration::from_millis(50), counted).await;
    assert!(metrics.is_some(), "{}", gateway.metrics().await);
}
