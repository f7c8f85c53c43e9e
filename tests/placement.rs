//! Where axum users put hookgate: every placement either works (real requests over real
//! sockets) or does not compile, with a message that names what to write instead.
//!
//! - `WebhookLayer` (the handler's answer acknowledges): `post(h).layer(..)`,
//!   `Router::route_layer` and `Router::layer` all work.
//! - a fast-ack `Webhook` (spool, then a processor): `route_service` and `post_service` work;
//!   the three layer placements are compile errors naming `route_service`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Extension;
use axum::routing::{post, post_service};
use axum::{Json, Router};
use hookgate::deliver::{handler_fn, DeliveredEvent};
use hookgate::metrics::Metrics;
use hookgate::store::memory::MemorySpool;
use hookgate::tower::{ParsedPayload, WebhookLayer};
use serde_json::{json, Value};

#[path = "support/local_http.rs"]
mod local_http;
use local_http::{send, serve, wait_for};

const PATH: &str = "/webhook/o3-video";

fn payload(n: u32) -> String {
    format!(
        r#"{{"generation_id":"550e8400-e29b-41d4-a716-{n:012}","status":"completed","video_url":"https://cdn.example.com/{n}.mp4","model":"kling-o3-video-10s-pro","message":null}}"#
    )
}

/// The handler behind a `WebhookLayer`: the payload hookgate parsed, from the extensions.
async fn handler(Extension(payload): Extension<ParsedPayload>) -> Json<Value> {
    Json(json!({"handled": payload.value["generation_id"]}))
}

fn direct(metrics: &Metrics) -> WebhookLayer {
    WebhookLayer::builder("o3-video")
        .with_allow(["127.0.0.0/8"])
        .unwrap()
        .with_metrics(metrics)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_webhook_layer_works_wherever_axum_puts_a_layer() {
    let metrics = Metrics::new(&hookgate::prometheus::Registry::new()).unwrap();
    let placements: [(&str, Router); 3] = [
        (
            "post(h).layer",
            Router::new().route(PATH, post(handler).layer(direct(&metrics))),
        ),
        (
            "Router::route_layer",
            Router::new()
                .route(PATH, post(handler))
                .route_layer(direct(&metrics)),
        ),
        (
            "Router::layer",
            Router::new()
                .route(PATH, post(handler))
                .layer(direct(&metrics)),
        ),
    ];
    for (n, (name, app)) in placements.into_iter().enumerate() {
        let (base, server) = serve(app).await;
        let url = format!("{base}{PATH}");
        let body = payload(n as u32);
        let (status, answer) = send(&url, reqwest::Method::POST, body.clone()).await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(
            answer["handled"],
            format!("550e8400-e29b-41d4-a716-{n:012}"),
            "{name}: the handler got the ParsedPayload"
        );
        let (status, answer) = send(&url, reqwest::Method::POST, body).await;
        assert_eq!(
            (status, answer),
            (200, json!({"status": "duplicate"})),
            "{name}"
        );
        let (status, answer) =
            send(&url, reqwest::Method::POST, r#"{"status":"done"}"#.into()).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (422, Some("invalid_payload")),
            "{name}"
        );
        // Not a POST: hookgate's 405 (the method router's fallback is wrapped too).
        let (status, _) = send(&url, reqwest::Method::GET, String::new()).await;
        assert_eq!(status, 405, "{name}");
        server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_ack_webhook_is_mounted_as_a_service() {
    for name in ["route_service", "post_service"] {
        let metrics = Metrics::new(&hookgate::prometheus::Registry::new()).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        let (webhook, deliverer) = WebhookLayer::builder("o3-video")
            .with_allow(["127.0.0.0/8"])
            .unwrap()
            .with_metrics(&metrics)
            .with_fast_ack(
                Arc::new(MemorySpool::new(1000, 1 << 20)),
                handler_fn(move |ev: DeliveredEvent| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().push(ev.id().to_string());
                        Ok(())
                    }
                }),
            )
            .build()
            .unwrap();
        let app = match name {
            "route_service" => Router::new().route_service(PATH, webhook),
            _ => Router::new().route(PATH, post_service(webhook)),
        };
        let (base, server) = serve(app).await;
        let url = format!("{base}{PATH}");
        let (status, ack) = send(&url, reqwest::Method::POST, payload(7)).await;
        assert_eq!(
            (status, ack["status"].as_str()),
            (200, Some("received")),
            "{name}"
        );
        let id = ack["event_id"].as_str().unwrap().to_owned();
        wait_for("the processing", Duration::from_secs(10), || {
            !got.lock().unwrap().is_empty()
        })
        .await;
        assert_eq!(*got.lock().unwrap(), vec![id], "{name}: processed once");
        deliverer.shutdown(Duration::from_secs(1)).await;
        server.abort();
    }
}

/// The placements a fast-ack `Webhook` refuses, each checked by the compiler in a scratch crate
/// that depends on this one (its own target directory, `default-features = false`: the light
/// build), with a control that does compile.
#[test]
fn a_fast_ack_webhook_as_a_layer_does_not_compile_and_names_the_fix() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    std::fs::create_dir_all(root.join("src/bin")).unwrap();
    std::fs::write(
        root.join("Cargo.toml"),
        format!(
            r#"[package]
name = "placement"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
hookgate = {{ path = {:?}, default-features = false }}
axum = {{ version = "0.8.9", default-features = false, features = ["tokio"] }}
tokio = {{ version = "1", features = ["rt"] }}

[workspace]
"#,
            manifest.display().to_string()
        ),
    )
    .unwrap();
    std::fs::copy(manifest.join("Cargo.lock"), root.join("Cargo.lock")).unwrap();
    let setup = r#"
use std::sync::Arc;
use axum::routing::post;
use axum::Router;
use hookgate::deliver::{handler_fn, DeliveredEvent};
use hookgate::store::memory::MemorySpool;
use hookgate::tower::WebhookLayer;

async fn h() -> &'static str { "ok" }

fn main() {
    let (webhook, _deliverer) = WebhookLayer::builder("r")
        .with_allow(["127.0.0.0/8"]).unwrap()
        .with_fast_ack(Arc::new(MemorySpool::new(10, 1 << 20)), handler_fn(|_ev: DeliveredEvent| async { Ok(()) }))
        .build().unwrap();
"#;
    let cases = [
        (
            "control",
            "let _: Router = Router::new().route_service(\"/w\", webhook);",
        ),
        (
            "method_router_layer",
            "let _: Router = Router::new().route(\"/w\", post(h).layer(webhook));",
        ),
        (
            "route_layer",
            "let _: Router = Router::new().route(\"/w\", post(h)).route_layer(webhook);",
        ),
        (
            "router_layer",
            "let _: Router = Router::new().route(\"/w\", post(h)).layer(webhook);",
        ),
    ];
    for (name, line) in cases {
        std::fs::write(
            root.join(format!("src/bin/{name}.rs")),
            format!("{setup}    {line}\n    let _ = h;\n}}\n"),
        )
        .unwrap();
    }
    // Cargo reads a relative CARGO_TARGET_DIR from where it ran: this package's root, the
    // directory tests run in.
    let target: PathBuf = std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| std::env::current_dir().unwrap().join(dir))
        .unwrap_or_else(|| manifest.join("target"))
        .join("placement-check");
    let check = |bin: &str| {
        let out = Command::new(env!("CARGO"))
            .args(["check", "--offline", "--quiet", "--bin", bin])
            .current_dir(root)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stderr) = check("control");
    assert!(ok, "the control must compile:\n{stderr}");
    for (name, _) in &cases[1..] {
        let (ok, stderr) = check(name);
        assert!(!ok, "{name} compiled");
        assert!(
            stderr.contains("a fast-ack `Webhook` is a service to mount at a path, not a layer"),
            "{name}: the message says what is wrong:\n{stderr}"
        );
        assert!(
            stderr.contains("Router::new().route_service(\"/path\", webhook)"),
            "{name}: the message names the fix:\n{stderr}"
        );
    }
}
