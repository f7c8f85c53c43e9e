//! A bare hyper HTTP/1.1 server that reads each request's body and answers 200: the baseline row
//! of `scripts/bench`, and its upstream (`--delay 50` for the slow one). Nothing else is in the
//! way: no routing, no validation, no logging.
//!
//! `scripts/bench` runs it as `bare_hyper --listen 127.0.0.1:PORT [--delay MS] [--threads N]`
//! and stops it by PID. Run any other way (`cargo test --all-targets` runs benches once in test
//! mode) it prints what it is and exits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let Some(listen) = arg("--listen") else {
        println!("bare_hyper: the baseline server of scripts/bench (--listen ADDR [--delay MS] [--threads N]); nothing to run here");
        return;
    };
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bare_hyper: --listen {listen:?}: {e}");
            std::process::exit(2);
        }
    };
    let delay = Duration::from_millis(arg("--delay").and_then(|d| d.parse().ok()).unwrap_or(0));
    let threads = arg("--threads").and_then(|t| t.parse().ok()).unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bare_hyper: cannot listen on {addr}: {e}");
                std::process::exit(2);
            }
        };
        println!("bare_hyper: listening on {addr} (delay {delay:?})");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut res =
                        Response::new(Full::new(Bytes::from_static(br#"{"status":"received"}"#)));
                    res.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(res)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
