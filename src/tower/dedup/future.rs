use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::layer::Shared;
use super::{DedupReservation, Duplicate};
use crate::core::{DedupKey, Rejection};
use crate::store::{DedupStore, Reservation};
use crate::tower::{json_response, rejection_response};

use crate::core::ack::DUPLICATE_BODY;

/// Holds a reservation: released on drop unless committed, so a cancelled or failed request never
/// blocks the sender's retry.
struct Reserved<D: DedupStore> {
    shared: Arc<Shared<D>>,
    key: DedupKey,
    armed: bool,
}

impl<D: DedupStore> Reserved<D> {
    fn settle(&mut self, success: bool) {
        if std::mem::take(&mut self.armed) {
            if success {
                self.shared.store.commit(self.key, self.shared.ttl);
            } else {
                self.shared.store.release(self.key);
            }
        }
    }
}

impl<D: DedupStore> Drop for Reserved<D> {
    fn drop(&mut self) {
        self.settle(false);
    }
}

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
            reserved: Reserved<D>,
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

fn duplicate_response<B: From<Bytes>>() -> Response<B> {
    let mut res = json_response(StatusCode::OK, Bytes::from_static(DUPLICATE_BODY));
    res.extensions_mut().insert(Duplicate);
    res
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
                    let next = match answer {
                        Ok(Reservation::Reserved) => {
                            let (Some(mut req), Some(mut svc)) = (req.take(), inner.take()) else {
                                unreachable!("Reserving state is left once, right here");
                            };
                            req.extensions_mut().insert(DedupReservation {
                                key: *key,
                                ttl: shared.ttl,
                            });
                            // Armed before the call, so a panic or drop inside still releases.
                            let reserved = Reserved {
                                shared: shared.clone(),
                                key: *key,
                                armed: true,
                            };
                            State::Calling {
                                fut: svc.call(req),
                                reserved,
                            }
                        }
                        Ok(Reservation::Duplicate) => State::Done {
                            response: Some(duplicate_response()),
                        },
                        Ok(Reservation::InFlight) => State::Done {
                            response: Some(rejection_response(Rejection::DuplicateInFlight)),
                        },
                        Err(_) => State::Done {
                            response: Some(rejection_response(Rejection::DedupUnavailable)),
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
