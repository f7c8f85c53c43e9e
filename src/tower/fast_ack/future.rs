use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode};

use super::layer::Shared;
use crate::core::ack::received_body;
use crate::core::Rejection;
use crate::store::{Completion, Event, SpoolError};
use crate::tower::{json_response, rejection_response};

/// Response future of [`FastAck`](super::FastAck): resolves when the event is in the spool.
pub struct ResponseFuture<B, E> {
    state: State<B>,
    _error: PhantomData<fn() -> E>,
}

enum State<B> {
    Appending {
        completion: Completion,
        event: Option<Event>,
        shared: Arc<Shared>,
    },
    Done(Option<Response<B>>),
}

impl<B, E> ResponseFuture<B, E> {
    pub(crate) fn done(response: Response<B>) -> Self {
        Self {
            state: State::Done(Some(response)),
            _error: PhantomData,
        }
    }

    pub(crate) fn appending(completion: Completion, event: Event, shared: Arc<Shared>) -> Self {
        Self {
            state: State::Appending {
                completion,
                event: Some(event),
                shared,
            },
            _error: PhantomData,
        }
    }
}

// Neither state is pinned: the completion is Unpin and the response only moves out.
impl<B, E> Unpin for ResponseFuture<B, E> {}

impl<B: From<Bytes>, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            State::Appending {
                completion,
                event,
                shared,
            } => {
                let stored = std::task::ready!(Pin::new(completion).poll(cx));
                let response = match (stored, event.take()) {
                    (Ok(()), Some(event)) => {
                        let id = event.id;
                        shared.deliverer.schedule_new(event);
                        json_response(StatusCode::OK, received_body(id))
                    }
                    (Ok(()), None) => unreachable!("the event is taken once, with the answer"),
                    (Err(SpoolError::Full(why)), _) => {
                        tracing::warn!(route = %shared.route, %why, "spool full: answering 503");
                        rejection_response(Rejection::SpoolFull)
                    }
                    (Err(e), _) => {
                        tracing::error!(route = %shared.route, error = %e, "spool append failed: answering 503");
                        rejection_response(Rejection::SpoolUnavailable)
                    }
                };
                this.state = State::Done(None);
                Poll::Ready(Ok(response))
            }
            State::Done(response) => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}
