//! `proxy` mode's synchronous forward (DESIGN §4): the event goes to the upstream now and its
//! answer is relayed, with at most `concurrency` forwards in flight per route and an answer no
//! larger than [`MAX_ANSWER`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::http::{ExchangeError, HttpTarget};
use super::DeliveryPolicy;
use crate::core::outcome::{self, Outcome};
use crate::store::Event;

/// The largest upstream answer relayed (webhook answers are a few bytes); a larger one is a 502.
pub const MAX_ANSWER: usize = 1 << 20;

/// Forwards one route's events synchronously.
#[derive(Clone, Debug)]
pub struct Forwarder {
    route: String,
    target: HttpTarget,
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl Forwarder {
    /// Forwards `route`'s events to `target`, `policy.concurrency` at a time; waiting for a slot
    /// and the exchange share `policy.timeout`.
    pub fn new(route: impl Into<String>, target: HttpTarget, policy: &DeliveryPolicy) -> Self {
        Self {
            route: route.into(),
            target,
            permits: Arc::new(Semaphore::new(policy.concurrency.max(1))),
            timeout: policy.timeout,
        }
    }

    /// Forwards `event` and returns the outcome: the upstream's answer relayed, or 502 / 504.
    pub async fn forward(&self, event: &Event) -> Outcome {
        let (route, id) = (self.route.as_str(), event.id);
        let deadline = Instant::now() + self.timeout;
        let _permit = match tokio::time::timeout_at(deadline, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => {
                return outcome::forward_failed(route, id, false, &"the forwarder is closed")
            }
            Err(_) => return outcome::forward_failed(route, id, true, &"no forward slot in time"),
        };
        let exchange = self.target.exchange(event, MAX_ANSWER);
        match tokio::time::timeout_at(deadline, exchange).await {
            Err(_) | Ok(Err(ExchangeError::Timeout)) => {
                outcome::forward_failed(route, id, true, &"timeout")
            }
            Ok(Err(e)) => outcome::forward_failed(route, id, false, &e),
            Ok(Ok(answer)) => match answer.body {
                Err(size) => outcome::forward_failed(
                    route,
                    id,
                    false,
                    &format!("the answer is larger than {MAX_ANSWER} bytes ({size} read)"),
                ),
                Ok(body) => outcome::relayed(id, answer.status, &answer.headers, body),
            },
        }
    }
}
