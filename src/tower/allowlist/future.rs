use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use pin_project_lite::pin_project;

use crate::tower::ResponseBody;

pin_project! {
    /// Response future of [`IpAllowlist`](super::IpAllowlist): the inner service's, or a refusal.
    #[project = Proj]
    pub enum ResponseFuture<F> {
        /// Admitted: the inner service's future.
        Inner { #[pin] fut: F },
        /// Refused before the inner service was called.
        Rejected { response: Option<Response<Full<Bytes>>> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn inner(fut: F) -> Self {
        Self::Inner { fut }
    }

    pub(crate) fn rejected(response: Response<Full<Bytes>>) -> Self {
        Self::Rejected {
            response: Some(response),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Inner { fut } => fut.poll(cx).map_ok(ResponseBody::wrap),
            Proj::Rejected { response } => Poll::Ready(Ok(ResponseBody::answered(
                response.take().expect("polled after completion"),
            ))),
        }
    }
}
