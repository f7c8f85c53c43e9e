use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::layer::Shared;
use crate::core::{outcome, DedupKey};
use crate::store::{DedupStore, Reserved};
use crate::tower::respond;

pin_project! {
    /// Response future of [`Dedup`](super::Dedup).
    pub struct ResponseFuture<S, D, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
        D: DedupStore,
    {
        #[pin]
        state: State<S, S::Future, D, ReqBody, ResBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, D, ReqBody, ResBody>
    where
        D: DedupStore,
    {
        Reserving {
            #[pin]
            reserve: D::ReserveFuture,
            key: DedupKey,
            req: Option<Request<ReqBody>>,
            inner: Option<S>,
            shared: Arc<Shared<D>>,
        },
        Calling {
            #[pin]
            fut: F,
            reserved: Reserved,
        },
        Done {
            response: Option<Response<ResBody>>,
        },
    }
}

impl<S, D, ReqBody, ResBody> ResponseFuture<S, D, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
    D: DedupStore,
{
    pub(crate) fn done(response: Response<ResBody>) -> Self {
        Self {
            state: State::Done {
                response: Some(response),
            },
        }
    }

    pub(crate) fn reserving(
        reserve: D::ReserveFuture,
        key: DedupKey,
        req: Request<ReqBody>,
        inner: S,
        shared: Arc<Shared<D>>,
    ) -> Self {
        Self {
            state: State::Reserving {
                reserve,
                key,
                req: Some(req),
                inner: Some(inner),
                shared,
            },
        }
    }
}

impl<S, D, ReqBody, ResBody> Future for ResponseFuture<S, D, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    D: DedupStore,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Reserving {
                    reserve,
                    key,
                    req,
                    inner,
                    shared,
                } => {
                    let answer = std::task::ready!(reserve.poll(cx));
                    let next = match outcome::reserved(&shared.scope, answer) {
                        None => {
                            let (Some(mut req), Some(mut svc)) = (req.take(), inner.take()) else {
                                unreachable!("Reserving state is left once, right here");
                            };
                            // Held before the call, so a panic or drop inside still releases; a
                            // clone rides in the request for a spooling layer to keep.
                            let reserved =
                                Reserved::new(shared.guard_store.clone(), *key, shared.ttl);
                            req.extensions_mut().insert(reserved.clone());
                            State::Calling {
                                fut: svc.call(req),
                                reserved,
                            }
                        }
                        Some(outcome) => State::Done {
                            response: Some(respond(outcome)),
                        },
                    };
                    state.set(next);
                }
                StateProj::Calling { fut, reserved } => {
                    let result = std::task::ready!(fut.poll(cx));
                    let success = matches!(&result, Ok(res) if res.status().is_success());
                    reserved.settle(success);
                    return Poll::Ready(result);
                }
                StateProj::Done { response } => {
                    return Poll::Ready(Ok(response.take().expect("polled after completion")));
                }
            }
        }
    }
}
