use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::layer::Shared;
use crate::core::{Counted, DedupKey};
use crate::store::{DedupStore, Reserved};
use crate::tower::{counted, respond, ResponseBody};

pin_project! {
    /// Response future of [`Dedup`](super::Dedup).
    pub struct ResponseFuture<S, D, ReqBody>
    where
        S: Service<Request<ReqBody>>,
        D: DedupStore,
    {
        #[pin]
        state: State<S, S::Future, D, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, D, ReqBody>
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
            response: Option<Response<Full<Bytes>>>,
        },
    }
}

impl<S, D, ReqBody> ResponseFuture<S, D, ReqBody>
where
    S: Service<Request<ReqBody>>,
    D: DedupStore,
{
    pub(crate) fn done(response: Response<Full<Bytes>>) -> Self {
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

impl<S, D, ReqBody, ResBody> Future for ResponseFuture<S, D, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    D: DedupStore,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

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
                    let held = Reserved::hold(
                        &shared.guard_store,
                        &shared.scope,
                        *key,
                        shared.ttl,
                        answer,
                    );
                    let next = match held {
                        Ok(reserved) => {
                            let (Some(mut req), Some(mut svc)) = (req.take(), inner.take()) else {
                                unreachable!("Reserving state is left once, right here");
                            };
                            // Held before the call, so a panic or drop inside still releases; a
                            // clone rides in the request for a spooling layer to take over.
                            req.extensions_mut().insert(reserved.clone());
                            State::Calling {
                                fut: svc.call(req),
                                reserved,
                            }
                        }
                        Err(outcome) => State::Done {
                            response: Some(respond(outcome)),
                        },
                    };
                    state.set(next);
                }
                StateProj::Calling { fut, reserved } => {
                    let result = std::task::ready!(fut.poll(cx));
                    // A layer that took the key over (fast ack) settles it when its append ends.
                    if !reserved.is_handed_over() {
                        let accepted =
                            matches!(&result, Ok(res) if counted(res) == Counted::Accepted);
                        reserved.settle(accepted);
                    }
                    return Poll::Ready(result.map(ResponseBody::wrap));
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
