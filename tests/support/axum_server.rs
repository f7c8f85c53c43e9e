//! An axum app served on a free 127.0.0.1 port for one test, with the peer address recorded
//! (`ConnectInfo<SocketAddr>`, which hookgate's `axum` feature reads).

use std::net::SocketAddr;

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
