use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;

use crate::deliver::Accepting;
use crate::tower::respond;

/// Response future of [`FastAck`](super::FastAck): resolves when the event is in the spool.
/// Dropped before then (the client hung up), the append still finishes and a committed event
/// is still scheduled, its dedup key kept ([`Deliverer::accept`](crate::deliver::Deliverer::accept)).
pub struct ResponseFuture<B, E> {
    state: State<B>,
    _error: PhantomData<fn() -> E>,
}

// One per request, moved once: boxing the large variant would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum State<B> {
    Accepting(Accepting),
    Done(Option<Response<B>>),
}

impl<B, E> ResponseFuture<B, E> {
    pub(crate) fn done(response: Response<B>) -> Self {
        Self {
            state: State::Done(Some(response)),
            _error: PhantomData,
        }
    }

    pub(crate) fn accepting(accepting: Accepting) -> Self {
        Self {
            state: State::Accepting(accepting),
            _error: PhantomData,
        }
    }
}

// Neither state is pinned: `Accepting` is Unpin and the response only moves out.
impl<B, E> Unpin for ResponseFuture<B, E> {}

impl<B: From<Bytes>, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            State::Accepting(accepting) => {
                let outcome = std::task::ready!(Pin::new(accepting).poll(cx));
                this.state = State::Done(None);
                Poll::Ready(Ok(respond(outcome)))
            }
            State::Done(response) => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}
