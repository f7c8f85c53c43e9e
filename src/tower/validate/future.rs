use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{Full, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::layer::Shared;
use super::ParsedPayload;
use crate::core::{EventClass, Rejection};
use crate::tower::{rejection_response, ResponseBody};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// Response future of [`Validate`](super::Validate).
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<Full<Bytes>>>,
        ReqBody: Body,
        ReqBody::Error: Into<BoxError>,
    {
        #[pin]
        state: State<S, S::Future, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, ReqBody>
    where
        ReqBody: Body,
        ReqBody::Error: Into<BoxError>,
    {
        Reading {
            #[pin]
            collect: Collect<Limited<ReqBody>>,
            #[pin]
            deadline: Sleep,
            parts: Option<Parts>,
            inner: Option<S>,
            shared: Arc<Shared>,
        },
        Calling {
            #[pin]
            fut: F,
            class: Option<EventClass>,
        },
        Done {
            response: Option<Response<Full<Bytes>>>,
        },
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<Full<Bytes>>>,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
{
    pub(crate) fn rejected(response: Response<Full<Bytes>>) -> Self {
        Self {
            state: State::Done {
                response: Some(response),
            },
        }
    }

    pub(crate) fn reading(
        collect: Collect<Limited<ReqBody>>,
        deadline: Sleep,
        parts: Parts,
        inner: S,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            state: State::Reading {
                collect,
                deadline,
                parts: Some(parts),
                inner: Some(inner),
                shared,
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Reading {
                    collect,
                    deadline,
                    parts,
                    inner,
                    shared,
                } => {
                    let collected = match collect.poll(cx) {
                        Poll::Ready(r) => r,
                        Poll::Pending => {
                            if deadline.poll(cx).is_ready() {
                                let response = rejection_response(Rejection::RequestTimeout);
                                state.set(State::Done {
                                    response: Some(response),
                                });
                                continue;
                            }
                            return Poll::Pending;
                        }
                    };
                    let checked = match collected {
                        Ok(c) => {
                            let raw = c.to_bytes();
                            signed(shared, parts.as_ref(), &raw)
                                .and_then(|()| shared.validator.check(&raw).map(|p| (p, raw)))
                        }
                        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                            Err(Rejection::PayloadTooLarge {
                                limit: shared.max_body,
                            })
                        }
                        Err(_) => Err(Rejection::BodyReadFailed),
                    };
                    let next = match checked {
                        Ok((payload, raw)) => {
                            let (Some(mut parts), Some(mut svc)) = (parts.take(), inner.take())
                            else {
                                unreachable!("Reading state is left once, right here");
                            };
                            parts.extensions.insert(ParsedPayload {
                                value: Arc::new(payload.value),
                                raw: raw.clone(),
                            });
                            let req = Request::from_parts(parts, Full::new(raw));
                            State::Calling {
                                fut: svc.call(req),
                                class: payload.class,
                            }
                        }
                        Err(rejection) => State::Done {
                            response: Some(rejection_response(rejection)),
                        },
                    };
                    state.set(next);
                }
                StateProj::Calling { fut, class } => {
                    let mut response = std::task::ready!(fut.poll(cx))?;
                    if let Some(class) = *class {
                        response.extensions_mut().insert(class);
                    }
                    return Poll::Ready(Ok(ResponseBody::wrap(response)));
                }
                StateProj::Done { response } => {
                    return Poll::Ready(Ok(ResponseBody::answered(
                        response.take().expect("polled after completion"),
                    )));
                }
            }
        }
    }
}

/// Step 9: the signature over the raw body, when the route is signed.
#[cfg(feature = "signatures")]
fn signed(shared: &Shared, parts: Option<&Parts>, raw: &[u8]) -> Result<(), Rejection> {
    match (&shared.signature, parts) {
        (Some(sig), Some(p)) => sig.verify_now(&p.headers, raw),
        // No headers to check: refused, never passed.
        (Some(_), None) => Err(Rejection::Signature(crate::core::SignatureFailure::Missing)),
        (None, _) => Ok(()),
    }
}

/// Step 9 without the `signatures` feature: no route is signed.
#[cfg(not(feature = "signatures"))]
fn signed(_: &Shared, _: Option<&Parts>, _: &[u8]) -> Result<(), Rejection> {
    Ok(())
}
