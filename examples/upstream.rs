//! A demo webhook handler, like the provider's Flask example: prints each event that arrives and
//! answers 200 `{"status":"received"}`. Put hookgate in front of it:
//!
//! ```sh
//! cargo run --example upstream                         # listens on 127.0.0.1:3000
//! cargo run --release -- --config examples/hookgate.toml
//! ```
//!
//! Options: `--listen ADDR` (default 127.0.0.1:3000), `--status CODE` (answer every request with
//! CODE instead of 200, to watch hookgate retry and dead-letter).

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen = "127.0.0.1:3000".to_owned();
    let mut status = StatusCode::OK;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            ("--status", Some(v)) => status = StatusCode::from_u16(v.parse()?)?,
            _ => {
                eprintln!("usage: upstream [--listen ADDR] [--status CODE]");
                std::process::exit(2);
            }
        }
    }
    let handler = move |headers: HeaderMap, body: Bytes| async move {
        let event = header(&headers, "x-hookgate-event-id");
        let attempt = header(&headers, "x-hookgate-attempt");
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(data) if data["status"] == "completed" => println!(
                "Video ready: {} (generation {}, event {event}, attempt {attempt})",
                data["video_url"], data["generation_id"]
            ),
            Ok(data) => println!(
                "Generation failed: {} (generation {}, event {event}, attempt {attempt})",
                data["message"], data["generation_id"]
            ),
            Err(e) => println!("not JSON ({e}): {} bytes", body.len()),
        }
        (
            status,
            [("content-type", "application/json")],
            r#"{"status":"received"}"#,
        )
    };
    let app = Router::new().fallback(post(handler));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("upstream: listening on http://{listen} (answering {status})");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
