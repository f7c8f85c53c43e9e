//! The library tests' side of HTTP: an axum app served on a free 127.0.0.1 port (with the peer
//! address recorded, `ConnectInfo<SocketAddr>`, which hookgate's `axum` feature reads), a JSON
//! request to it, and one bounded wait.
#![allow(dead_code)] // each test file uses part of it

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Serves `app` until the returned task is aborted; `http://ADDR`.
pub async fn serve(app: axum::Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    (format!("http://{addr}"), task)
}

/// Sends `body` as JSON with `method`; the status and the answer (its JSON, else its text).
pub async fn send(url: &str, method: reqwest::Method, body: String) -> (u16, Value) {
    let res = reqwest::Client::new()
        .request(method, url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// [`send`] with `POST`.
pub async fn post(url: &str, body: String) -> (u16, Value) {
    send(url, reqwest::Method::POST, body).await
}

/// Waits (at most `within`) until `done` holds.
pub async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
