//! An HTTP upstream as a delivery target ([`HttpTarget`], feature `http-target`): hookgate's lean
//! HTTP/1.1 client for `http://`, reqwest for `https://`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::Request;
use http_body_util::Full;

use super::origin::{Exchanged, Failure, Origin};
use super::policy::{AttemptResult, DeliveryPolicy};
use super::target::{attempt_headers, AttemptFuture, Target};
use crate::core::ConfigError;
use crate::store::Event;

/// Delivers to an HTTP upstream over kept-alive HTTP/1.1 connections. An `http://` upstream
/// goes through hookgate's own lean client (the origin parsed once, the connection driven in
/// the caller's task; see `origin.rs`); an `https://` one (or one with credentials in its URL)
/// through reqwest with rustls.
#[derive(Clone, Debug)]
pub struct HttpTarget {
    inner: Arc<TargetInner>,
}

#[derive(Debug)]
struct TargetInner {
    client: Client,
    /// The URL's path, percent-encoded as parsed.
    path: String,
    /// The URL's own query, if any.
    query: Option<String>,
    /// The URL without query, as configured: `scheme://authority/path`.
    base: String,
    /// The request target when the event adds no query (parsed once).
    plain_uri: http::Uri,
    timeout: Duration,
}

#[derive(Clone, Debug)]
enum Client {
    Lean(Arc<Origin>),
    Reqwest(reqwest::Client),
}

/// Why an exchange with the upstream failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ExchangeError {
    /// No answer within the attempt's timeout.
    Timeout,
    /// No connection could be made.
    Connect(String),
    /// Anything else (a reset mid-answer, a malformed answer).
    Failed(String),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("timeout"),
            Self::Connect(e) | Self::Failed(e) => f.write_str(e),
        }
    }
}

impl HttpTarget {
    /// A target POSTing (with the event's own method) to `url`. `key` names the setting in errors.
    /// `https://` upstreams need the `https-upstream` feature (on with `gateway`).
    pub fn new(key: &str, url: &str, policy: &DeliveryPolicy) -> Result<Self, ConfigError> {
        Self::with_ca(key, url, policy, None)
    }

    /// [`new`](Self::new), trusting the certificates of `ca_pem` (a PEM bundle) for an `https://`
    /// upstream besides the system's roots: for an upstream with a private or self-signed CA.
    pub fn with_ca(
        key: &str,
        url: &str,
        policy: &DeliveryPolicy,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidValue {
            key: key.to_owned(),
            reason,
        };
        let url =
            reqwest::Url::parse(url).map_err(|e| invalid(format!("{url:?} is not a URL: {e}")))?;
        match url.scheme() {
            "http" => {}
            #[cfg(feature = "https-upstream")]
            "https" => {}
            #[cfg(not(feature = "https-upstream"))]
            "https" => {
                return Err(invalid(format!(
                    "{url}: https upstreams need hookgate's `https-upstream` feature"
                )))
            }
            other => {
                return Err(invalid(format!(
                    "{url}: the scheme {other:?} is not http or https"
                )))
            }
        }
        let Some(host) = url.host_str() else {
            return Err(invalid(format!("{url} has no host")));
        };
        let lean = url.scheme() == "http"
            && url.username().is_empty()
            && url.password().is_none()
            && ca_pem.is_none();
        let client = if lean {
            let port = url.port_or_known_default().unwrap_or(80);
            let authority = match url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_owned(),
            };
            let host_header = HeaderValue::from_str(&authority)
                .map_err(|e| invalid(format!("{url}: the host is not a header value: {e}")))?;
            Client::Lean(Arc::new(Origin::new(
                format!("{host}:{port}"),
                host_header,
                policy.connect_timeout,
                policy.concurrency,
            )))
        } else {
            Client::Reqwest(reqwest_client(policy, ca_pem).map_err(invalid)?)
        };
        let path = url.path().to_owned();
        let plain_uri = http::Uri::try_from(path.as_str())
            .map_err(|e| invalid(format!("{url}: the path is not a request target: {e}")))?;
        let mut base = url.clone();
        base.set_query(None);
        Ok(Self {
            inner: Arc::new(TargetInner {
                client,
                query: url.query().filter(|q| !q.is_empty()).map(str::to_owned),
                path,
                base: base.to_string(),
                plain_uri,
                timeout: policy.timeout,
            }),
        })
    }

    /// The upstream URL (without its query).
    pub fn url(&self) -> &str {
        &self.inner.base
    }

    #[cfg(test)]
    fn url_for(&self, event: &Event) -> String {
        self.inner.url_for(event)
    }
}

impl TargetInner {
    /// The query to send: the URL's own, then the request's (a reverse proxy forwards it:
    /// senders put tokens and tags there).
    fn query_for(&self, event: &Event) -> Option<String> {
        let theirs = event
            .uri
            .split_once('?')
            .map(|(_, q)| q)
            .filter(|q| !q.is_empty());
        match (&self.query, theirs) {
            (None, None) => None,
            (Some(own), None) => Some(own.clone()),
            (None, Some(q)) => Some(q.to_owned()),
            (Some(own), Some(q)) => Some(format!("{own}&{q}")),
        }
    }

    /// The full URL of `event`'s attempt.
    fn url_for(&self, event: &Event) -> String {
        match self.query_for(event) {
            Some(q) => format!("{}?{q}", self.base),
            None => self.base.clone(),
        }
    }
}

impl HttpTarget {
    /// One exchange for `event` within the attempt's timeout: the upstream's status, headers and
    /// body (read up to `limit` bytes). The request is built now; the future owns what it needs.
    pub(crate) fn exchange(
        &self,
        event: &Event,
        limit: usize,
    ) -> impl Future<Output = Result<Exchanged, ExchangeError>> + Send + 'static {
        let method =
            http::Method::from_bytes(event.method.as_bytes()).unwrap_or(http::Method::POST);
        let inner = self.inner.clone();
        let prepared = match &inner.client {
            Client::Lean(origin) => {
                let uri = match inner.query_for(event) {
                    None => Ok(inner.plain_uri.clone()),
                    Some(q) => http::Uri::try_from(format!("{}?{q}", inner.path))
                        .map_err(|e| ExchangeError::Failed(format!("bad query: {e}"))),
                };
                uri.map(|uri| {
                    let mut request = Request::new(Full::new(event.body.clone()));
                    *request.method_mut() = method;
                    *request.uri_mut() = uri;
                    *request.headers_mut() = attempt_headers(event);
                    Prepared::Lean(origin.clone(), request)
                })
            }
            Client::Reqwest(client) => Ok(Prepared::Reqwest(
                client
                    .request(method, inner.url_for(event))
                    .headers(attempt_headers(event))
                    .body(event.body.clone()),
            )),
        };
        async move {
            let exchange = async {
                match prepared? {
                    Prepared::Lean(origin, request) => {
                        origin.exchange(request, limit).await.map_err(|e| match e {
                            Failure::Connect(e) => ExchangeError::Connect(e),
                            Failure::Failed(e) => ExchangeError::Failed(e),
                        })
                    }
                    Prepared::Reqwest(request) => {
                        let response = request.send().await.map_err(reqwest_error)?;
                        let status = response.status();
                        let headers = response.headers().clone();
                        let body = read_capped(response, limit).await.map_err(reqwest_error)?;
                        Ok(Exchanged {
                            status,
                            headers,
                            body,
                        })
                    }
                }
            };
            tokio::time::timeout(inner.timeout, exchange)
                .await
                .unwrap_or(Err(ExchangeError::Timeout))
        }
    }
}

/// A request built for its client.
enum Prepared {
    Lean(Arc<Origin>, Request<Full<Bytes>>),
    Reqwest(reqwest::RequestBuilder),
}

fn reqwest_error(e: reqwest::Error) -> ExchangeError {
    if e.is_timeout() {
        ExchangeError::Timeout
    } else if e.is_connect() {
        ExchangeError::Connect(error_chain(&e))
    } else {
        ExchangeError::Failed(error_chain(&e))
    }
}

/// reqwest's pooled client, for `https://` upstreams (and URLs with credentials).
fn reqwest_client(
    policy: &DeliveryPolicy,
    ca_pem: Option<&[u8]>,
) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder()
        .connect_timeout(policy.connect_timeout)
        .pool_max_idle_per_host(policy.concurrency.max(1))
        .redirect(reqwest::redirect::Policy::none());
    #[cfg(feature = "https-upstream")]
    let builder = match ca_pem {
        Some(pem) => {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("the CA file is not PEM: {e}"))?;
            if certs.is_empty() {
                return Err("the CA file holds no certificate".into());
            }
            builder.tls_certs_merge(certs)
        }
        None => builder,
    };
    #[cfg(not(feature = "https-upstream"))]
    if ca_pem.is_some() {
        return Err("a CA file needs hookgate's `https-upstream` feature".into());
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

impl Target for HttpTarget {
    fn deliver(&self, event: &Event) -> AttemptFuture {
        // Read a small body so the connection can carry the next attempt; a larger one is left
        // unread and its connection closed.
        let exchange = self.exchange(event, DRAINED_ANSWER);
        Box::pin(async move {
            match exchange.await {
                Ok(answer) => AttemptResult::answered(answer.status, &answer.headers),
                Err(ExchangeError::Timeout) => AttemptResult::Timeout,
                Err(ExchangeError::Connect(e)) => AttemptResult::Connect(e),
                Err(ExchangeError::Failed(e)) => AttemptResult::Failed(e),
            }
        })
    }
}

/// The most of an upstream's answer a delivery reads (to reuse the connection); it only needs
/// the status.
const DRAINED_ANSWER: usize = 64 * 1024;

/// An answer's body read to its end, or `Err` once it passes `limit` bytes (the rest unread).
async fn read_capped(
    mut res: reqwest::Response,
    limit: usize,
) -> Result<Result<Bytes, usize>, reqwest::Error> {
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = res.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(Err(body.len() + chunk.len()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(body.freeze()))
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_query_is_added_to_the_upstream_url() {
        struct Case {
            name: &'static str,
            upstream: &'static str,
            uri: &'static str,
            want: &'static str,
        }
        let cases = [
            Case {
                name: "no query",
                upstream: "http://127.0.0.1:3000/w",
                uri: "/hook",
                want: "http://127.0.0.1:3000/w",
            },
            Case {
                name: "empty query",
                upstream: "http://127.0.0.1:3000/w",
                uri: "/hook?",
                want: "http://127.0.0.1:3000/w",
            },
            Case {
                name: "request query",
                upstream: "http://127.0.0.1:3000/w",
                uri: "/hook?token=a%20b&x=1",
                want: "http://127.0.0.1:3000/w?token=a%20b&x=1",
            },
            Case {
                name: "both",
                upstream: "http://127.0.0.1:3000/w?src=gw",
                uri: "/hook?token=t",
                want: "http://127.0.0.1:3000/w?src=gw&token=t",
            },
        ];
        for case in cases {
            let target =
                HttpTarget::new("upstream", case.upstream, &DeliveryPolicy::default()).unwrap();
            let e = Event::new(
                "r",
                "127.0.0.1".parse().unwrap(),
                "POST",
                case.uri,
                vec![],
                Bytes::new(),
            );
            assert_eq!(target.url_for(&e), case.want, "{}", case.name);
        }
    }

    #[test]
    fn only_http_and_https_upstreams() {
        let p = DeliveryPolicy::default();
        assert!(HttpTarget::new("upstream", "http://127.0.0.1:3000/w", &p).is_ok());
        assert_eq!(
            HttpTarget::new("upstream", "https://x/w", &p).is_ok(),
            cfg!(feature = "https-upstream")
        );
        let ca = HttpTarget::with_ca("route[0].upstream_ca", "https://x/w", &p, Some(b"nope"));
        assert!(ca.unwrap_err().to_string().contains("route[0].upstream_ca"));
        for bad in ["nope", "ftp://x", "http://"] {
            let err = HttpTarget::new("route[0].upstream", bad, &p)
                .unwrap_err()
                .to_string();
            assert!(err.contains("route[0].upstream"), "{err}");
        }
    }
}
