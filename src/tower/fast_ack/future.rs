use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

use crate::deliver::Accepting;
use crate::tower::respond;

/// Response future of [`FastAck`](super::FastAck): resolves when the event is in the spool.
/// Dropped before then (the client hung up), the append still finishes and a committed event
/// is still scheduled, its dedup key kept ([`Deliverer::accept`](crate::deliver::Deliverer::accept)).
pub struct ResponseFuture {
    state: State,
}

// One per request, moved once: boxing the large variant would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum State {
    Accepting(Accepting),
    Done(Option<Response<Full<Bytes>>>),
}

impl ResponseFuture {
    pub(crate) fn done(response: Response<Full<Bytes>>) -> Self {
        Self {
            state: State::Done(Some(response)),
        }
    }

    pub(crate) fn accepting(accepting: Accepting) -> Self {
        Self {
            state: State::Accepting(accepting),
        }
    }
}

// Neither state is pinned: `Accepting` is Unpin and the response only moves out.
impl Unpin for ResponseFuture {}

impl Future for ResponseFuture {
    type Output = Result<Response<Full<Bytes>>, Infallible>;

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
