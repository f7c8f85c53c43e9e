//! A lean HTTP/1.1 client for one `http://` upstream origin, on hyper's connection API.
//!
//! Why not a general client: a delivery is one request to one origin, known at start. The
//! upstream's address, `Host` and path are parsed once; an exchange checks out a kept-alive
//! connection from a LIFO list, and drives the connection and the request in the caller's own
//! task (no connection task, no hand-off between tasks per request, no pool lock held across an
//! await), then puts the connection back. A connection the upstream closed while idle is noticed
//! at checkout (one poll) and dropped; a request that a stale connection refused before sending
//! goes out on another.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::http::error_chain;

type Body = Full<Bytes>;

/// What an exchange came to.
#[derive(Debug)]
pub(crate) struct Exchanged {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The whole body, or `Err(bytes read)` once it passed the limit (the rest unread).
    pub body: Result<Bytes, usize>,
}

/// Why an exchange failed (its timeout is the caller's).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection could be made.
    Connect(String),
    /// The connection failed during the exchange.
    Failed(String),
}

/// One origin's connections.
pub(crate) struct Origin {
    /// `host:port`, resolved on each new connection.
    address: String,
    host: HeaderValue,
    connect_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("address", &self.address)
            .field("max_idle", &self.max_idle)
            .finish()
    }
}

struct Conn {
    send: http1::SendRequest<Body>,
    io: Pin<Box<http1::Connection<TokioIo<TcpStream>, Body>>>,
}

impl Origin {
    /// An origin at `address` (`host:port`), sent `host` as its `Host`, keeping up to `max_idle`
    /// connections alive.
    pub(crate) fn new(
        address: String,
        host: HeaderValue,
        connect_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        Self {
            address,
            host,
            connect_timeout,
            max_idle: max_idle.max(1),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `request` (its `Host` set here) and reads the answer's body up to `limit` bytes.
    pub(crate) async fn exchange(
        &self,
        mut request: Request<Body>,
        limit: usize,
    ) -> Result<Exchanged, Failure> {
        request
            .headers_mut()
            .insert(http::header::HOST, self.host.clone());
        loop {
            let (conn, fresh) = match self.checkout() {
                Some(conn) => (conn, false),
                None => (self.connect().await?, true),
            };
            match conn.round_trip(request, limit).await {
                Ok((answer, conn)) => {
                    if let Some(conn) = conn {
                        self.checkin(conn);
                    }
                    return Ok(answer);
                }
                // A kept-alive connection the upstream had closed: the request did not leave.
                Err(Trip::NotSent(back)) if !fresh => request = *back,
                Err(Trip::NotSent(_)) => {
                    return Err(Failure::Failed(
                        "the upstream closed the connection before the request was sent".into(),
                    ))
                }
                Err(Trip::Failed(e)) => return Err(Failure::Failed(e)),
            }
        }
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<Conn> {
        loop {
            let mut conn = self.lock().pop()?;
            if conn.still_open() {
                return Some(conn);
            }
        }
    }

    fn checkin(&self, conn: Conn) {
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn connect(&self) -> Result<Conn, Failure> {
        let connect = TcpStream::connect(self.address.as_str());
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(Failure::Connect(format!("{}: {e}", self.address))),
            Err(_) => {
                return Err(Failure::Connect(format!(
                    "{}: no connection within {:?}",
                    self.address, self.connect_timeout
                )))
            }
        };
        // Requests are small and written at once: do not hold them back.
        let _ = stream.set_nodelay(true);
        let (send, io) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Connect(format!("{}: {e}", self.address)))?;
        Ok(Conn {
            send,
            io: Box::pin(io),
        })
    }
}

enum Trip {
    /// Refused before sending: the request, to send elsewhere.
    NotSent(Box<Request<Body>>),
    Failed(String),
}

impl Conn {
    /// Polls the idle connection once: an upstream that closed it (or sent anything unasked) ends
    /// it here, instead of failing the next request.
    fn still_open(&mut self) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match self.io.as_mut().poll(&mut cx) {
            Poll::Pending => !self.send.is_closed(),
            Poll::Ready(_) => false,
        }
    }

    /// One request and its answer, driving the connection in this task; gives the connection
    /// back when it can carry another request.
    async fn round_trip(
        self,
        request: Request<Body>,
        limit: usize,
    ) -> Result<(Exchanged, Option<Conn>), Trip> {
        let Conn { mut send, io } = self;
        // Dropped as soon as it ends: a request it had queued but not sent then comes back.
        let mut io = Some(io);
        let result = {
            let mut work = std::pin::pin!(async {
                if std::future::poll_fn(|cx| send.poll_ready(cx))
                    .await
                    .is_err()
                {
                    return Err(Trip::NotSent(Box::new(request)));
                }
                let response = match send.try_send_request(request).await {
                    Ok(response) => response,
                    Err(mut e) => {
                        return Err(match e.take_message() {
                            Some(request) => Trip::NotSent(Box::new(request)),
                            None => Trip::Failed(error_chain(e.error())),
                        })
                    }
                };
                let (parts, mut body) = response.into_parts();
                let mut read = BytesMut::new();
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|e| Trip::Failed(error_chain(&e)))?;
                    if let Ok(data) = frame.into_data() {
                        if read.len() + data.len() > limit {
                            return Ok((parts, Err(read.len() + data.len())));
                        }
                        read.extend_from_slice(&data);
                    }
                }
                Ok((parts, Ok(read.freeze())))
            });
            std::future::poll_fn(|cx| {
                if io.as_mut().is_some_and(|c| c.as_mut().poll(cx).is_ready()) {
                    io = None;
                }
                let polled = work.as_mut().poll(cx);
                if polled.is_ready() {
                    return polled;
                }
                // The request may have just been queued for the connection: let it write now.
                // A connection that ends here (the upstream closed it while idle) is dropped,
                // which hands the unsent request back instead of leaving it queued.
                if io.as_mut().is_some_and(|c| c.as_mut().poll(cx).is_ready()) {
                    io = None;
                    return work.as_mut().poll(cx);
                }
                std::task::Poll::Pending
            })
            .await?
        };
        let (parts, body) = result;
        // An answer left partly unread spoils the connection.
        let conn = match (io, body.is_ok()) {
            (Some(io), true) => Some(Conn { send, io }),
            _ => None,
        };
        Ok((
            Exchanged {
                status: parts.status,
                headers: parts.headers,
                body,
            },
            conn,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An upstream that answers `answer` to one request per connection, then closes it without
    /// saying so (as a server whose keep-alive timeout just ran out does).
    async fn one_per_connection(answer: &'static [u8]) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    let _ = s.write_all(answer).await;
                    // Closed when dropped.
                });
            }
        });
        (addr, task)
    }

    fn request() -> Request<Body> {
        Request::builder()
            .method("POST")
            .uri("/w")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_not_used_again() {
        let (addr, task) =
            one_per_connection(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let origin = Origin::new(
            addr,
            HeaderValue::from_static("up"),
            Duration::from_secs(5),
            4,
        );
        for _ in 0..5 {
            let answer = origin.exchange(request(), 1024).await.unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(answer.body.unwrap(), "ok");
            // Let the upstream's close arrive before the next checkout.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
    }

    #[tokio::test]
    async fn an_answer_past_the_limit_is_cut_and_its_connection_dropped() {
        let (addr, task) =
            one_per_connection(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 10\r\n\r\n0123456789")
                .await;
        let origin = Origin::new(
            addr,
            HeaderValue::from_static("up"),
            Duration::from_secs(5),
            4,
        );
        let answer = origin.exchange(request(), 4).await.unwrap();
        assert_eq!(answer.status, 502);
        assert_eq!(answer.body, Err(10));
        assert!(
            origin.lock().is_empty(),
            "a spoiled connection went back to the pool"
        );
        task.abort();
    }

    #[tokio::test]
    async fn no_upstream_is_a_connect_failure() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let origin = Origin::new(
            addr,
            HeaderValue::from_static("up"),
            Duration::from_secs(5),
            4,
        );
        let err = origin.exchange(request(), 1024).await.unwrap_err();
        assert!(matches!(err, Failure::Connect(_)), "{err:?}");
    }
}
