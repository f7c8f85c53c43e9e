use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

pin_project! {
    /// Response future of [`IpAllowlist`](super::IpAllowlist): the inner service's, or a refusal.
    #[project = Proj]
    pub enum ResponseFuture<F, B> {
        /// Admitted: the inner service's future.
        Inner { #[pin] fut: F },
        /// Refused before the inner service was called.
        Rejected { response: Option<Response<B>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn inner(fut: F) -> Self {
        Self::Inner { fut }
    }

    pub(crate) fn rejected(response: Response<B>) -> Self {
        Self::Rejected {
            response: Some(response),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Inner { fut } => fut.poll(cx),
            Proj::Rejected { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}
