//! [`ResponseBody`]: the body of every response a hookgate layer returns, hookgate's own
//! answers and the inner service's in one type (as tower-http's layers do), so the layers never
//! need anything of the user's body type but [`http_body::Body`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

pin_project! {
    /// A hookgate layer's response body: its own answer (a refusal, `duplicate`, `received`),
    /// or the inner service's body, untouched.
    #[project = Proj]
    #[derive(Debug)]
    #[allow(missing_docs)] // each variant's one field is its `body`
    pub enum ResponseBody<B> {
        /// An answer hookgate wrote (the core's JSON).
        Answer {
            #[pin]
            body: Full<Bytes>,
        },
        /// The inner service's body.
        Inner {
            #[pin]
            body: B,
        },
    }
}

impl<B> ResponseBody<B> {
    /// hookgate's own answer.
    pub fn answer(bytes: Bytes) -> Self {
        Self::Answer {
            body: Full::new(bytes),
        }
    }

    /// The inner service's body.
    pub fn inner(body: B) -> Self {
        Self::Inner { body }
    }

    /// `response` with its body as [`ResponseBody::inner`].
    pub(crate) fn wrap(response: Response<B>) -> Response<Self> {
        response.map(Self::inner)
    }

    /// `response`, one of hookgate's answers.
    pub(crate) fn answered(response: Response<Full<Bytes>>) -> Response<Self> {
        response.map(|body| Self::Answer { body })
    }
}

impl<B> ResponseBody<ResponseBody<B>> {
    /// One level of nesting removed: what stacked layers return, as one layer's body.
    pub fn flatten(self) -> ResponseBody<B> {
        match self {
            Self::Answer { body } => ResponseBody::Answer { body },
            Self::Inner { body } => body,
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            Proj::Answer { body } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Proj::Inner { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Answer { body } => body.is_end_stream(),
            Self::Inner { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Answer { body } => body.size_hint(),
            Self::Inner { body } => body.size_hint(),
        }
    }
}
