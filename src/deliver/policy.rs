//! The retry rules of DESIGN §3 as plain functions: what an attempt's result means, and how long
//! to wait before the next one.

use std::time::Duration;

/// How a route's events are delivered and retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Attempts before an event goes to the dead letters (counted from the last replay).
    pub max_attempts: u32,
    /// The first retry delay; doubles each attempt.
    pub backoff: Duration,
    /// The largest retry delay.
    pub max_backoff: Duration,
    /// Age (since receipt or the last replay) after which a failing event is dead-lettered.
    pub max_age: Duration,
    /// Time allowed for one attempt, response included.
    pub timeout: Duration,
    /// Time allowed to connect to an HTTP upstream.
    pub connect_timeout: Duration,
    /// Deliveries in flight at once for the route.
    pub concurrency: usize,
    /// Attempts in a row finding the upstream down (no connection, no answer in time, a 5xx)
    /// that open the route's circuit ([`circuit`](super::circuit)); 0 never opens it.
    pub open_after: u32,
}

impl Default for DeliveryPolicy {
    /// DESIGN §8's defaults: 10 attempts, 1 s doubling to 5 min, 24 h, 30 s per attempt, 16 at
    /// once; the circuit opens after 5 failures in a row.
    fn default() -> Self {
        Self {
            max_attempts: 10,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_age: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            concurrency: 16,
            open_after: 5,
        }
    }
}

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The target answered with this status (and `Retry-After`, if it sent one).
    Status {
        /// The HTTP status code.
        code: u16,
        /// The parsed `Retry-After`, seconds or HTTP date.
        retry_after: Option<Duration>,
    },
    /// The connection could not be made.
    Connect(String),
    /// No answer within the timeout.
    Timeout,
    /// Any other failure (connection reset mid-answer, a service error, a panic).
    Failed(String),
    /// An in-process handler ([`handler_fn`](super::handler_fn)) processed it.
    Processed,
    /// An in-process handler asked to be called again for this event (after `after`, if given).
    Retry {
        /// The earliest time to try again.
        after: Option<Duration>,
        /// Why.
        reason: String,
    },
    /// An in-process handler said what it needs is down (its 503).
    Unavailable {
        /// The earliest time to try again.
        after: Option<Duration>,
        /// Why.
        reason: String,
    },
    /// An in-process handler refused it for good.
    Rejected(String),
}

impl AttemptResult {
    /// A target's HTTP answer: its status and its `Retry-After` (seconds or HTTP date), if any.
    pub fn answered(status: http::StatusCode, headers: &http::HeaderMap) -> Self {
        Self::Status {
            code: status.as_u16(),
            retry_after: headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after),
        }
    }
}

impl std::fmt::Display for AttemptResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptResult::Status { code, .. } => write!(f, "status {code}"),
            AttemptResult::Connect(e) => write!(f, "connect error: {e}"),
            AttemptResult::Timeout => f.write_str("timeout"),
            AttemptResult::Failed(e) => write!(f, "failed: {e}"),
            AttemptResult::Processed => f.write_str("processed"),
            AttemptResult::Retry { reason, .. } => write!(f, "retry: {reason}"),
            AttemptResult::Unavailable { reason, .. } => write!(f, "unavailable: {reason}"),
            AttemptResult::Rejected(reason) => write!(f, "rejected: {reason}"),
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered: remove it from the spool.
    Success,
    /// Try again, not sooner than `not_before` if the target said so.
    Retry {
        /// The target's `Retry-After`.
        not_before: Option<Duration>,
    },
    /// The target refused it for good: dead letters.
    Reject,
}

/// DESIGN §3: 2xx is success; connect errors, timeouts, 408, 429 and 5xx are retried (honouring
/// `Retry-After`); any other status is rejected.
pub fn classify(result: &AttemptResult) -> Verdict {
    match result {
        AttemptResult::Status {
            code: 200..=299, ..
        } => Verdict::Success,
        AttemptResult::Status {
            code: 408 | 429 | 500..=599,
            retry_after,
        } => Verdict::Retry {
            not_before: *retry_after,
        },
        AttemptResult::Status { .. } | AttemptResult::Rejected(_) => Verdict::Reject,
        AttemptResult::Processed => Verdict::Success,
        AttemptResult::Retry { after, .. } | AttemptResult::Unavailable { after, .. } => {
            Verdict::Retry { not_before: *after }
        }
        AttemptResult::Connect(_) | AttemptResult::Timeout | AttemptResult::Failed(_) => {
            Verdict::Retry { not_before: None }
        }
    }
}

/// The delay before retry number `retry` (1 for the first retry), with `unit` a uniform random
/// number in `[0, 1)`.
///
/// The cap doubles from `backoff` up to `max_backoff`; the delay is drawn uniformly from the upper
/// half of the cap ("equal jitter"). Full jitter (`[0, cap]`) would spread retries as well but let
/// one fire at once; the half-cap floor keeps a failing upstream from being hammered, and is the
/// bound the tests check. A target's `Retry-After` raises the delay, up to `max_backoff`.
pub fn retry_delay(
    policy: &DeliveryPolicy,
    retry: u32,
    unit: f64,
    not_before: Option<Duration>,
) -> Duration {
    let doublings = retry.saturating_sub(1).min(32);
    let cap = policy
        .backoff
        .saturating_mul(1u32 << doublings.min(31))
        .min(policy.max_backoff);
    let half = cap / 2;
    let jittered = half + half.mul_f64(unit.clamp(0.0, 1.0));
    match not_before {
        Some(after) => jittered.max(after.min(policy.max_backoff)),
        None => jittered,
    }
}

/// The shortest delay [`retry_delay`] can return for retry number `retry` without `Retry-After`.
pub fn retry_floor(policy: &DeliveryPolicy, retry: u32) -> Duration {
    retry_delay(policy, retry, 0.0, None)
}

/// Parses `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// An answer with `code` and no `Retry-After`, for tests.
#[cfg(test)]
pub(crate) fn status(code: u16) -> AttemptResult {
    AttemptResult::Status {
        code,
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        struct Case {
            input: AttemptResult,
            want: Verdict,
        }
        let retry = Verdict::Retry { not_before: None };
        let cases = [
            Case {
                input: status(200),
                want: Verdict::Success,
            },
            Case {
                input: status(204),
                want: Verdict::Success,
            },
            Case {
                input: status(400),
                want: Verdict::Reject,
            },
            Case {
                input: status(404),
                want: Verdict::Reject,
            },
            Case {
                input: status(410),
                want: Verdict::Reject,
            },
            Case {
                input: status(408),
                want: retry,
            },
            Case {
                input: status(500),
                want: retry,
            },
            Case {
                input: status(503),
                want: retry,
            },
            Case {
                input: AttemptResult::Status {
                    code: 429,
                    retry_after: Some(Duration::from_secs(7)),
                },
                want: Verdict::Retry {
                    not_before: Some(Duration::from_secs(7)),
                },
            },
            Case {
                input: AttemptResult::Connect("refused".into()),
                want: retry,
            },
            Case {
                input: AttemptResult::Timeout,
                want: retry,
            },
            Case {
                input: AttemptResult::Failed("reset".into()),
                want: retry,
            },
            Case {
                input: status(301),
                want: Verdict::Reject,
            },
        ];
        for c in cases {
            assert_eq!(classify(&c.input), c.want, "{}", c.input);
        }
    }

    #[test]
    fn delays_double_within_bounds() {
        let p = DeliveryPolicy {
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            ..DeliveryPolicy::default()
        };
        struct Case {
            retry: u32,
            min: u64,
            max: u64,
        }
        let cases = [
            Case {
                retry: 1,
                min: 500,
                max: 1000,
            },
            Case {
                retry: 2,
                min: 1000,
                max: 2000,
            },
            Case {
                retry: 3,
                min: 2000,
                max: 4000,
            },
            Case {
                retry: 7,
                min: 30_000,
                max: 60_000,
            },
            Case {
                retry: 40,
                min: 30_000,
                max: 60_000,
            },
        ];
        for c in cases {
            for unit in [0.0, 0.3, 0.999] {
                let d = retry_delay(&p, c.retry, unit, None).as_millis() as u64;
                assert!(
                    (c.min..=c.max).contains(&d),
                    "retry {} unit {unit}: {d}",
                    c.retry
                );
            }
            assert_eq!(retry_floor(&p, c.retry).as_millis() as u64, c.min);
        }
        // Retry-After raises the delay, capped at max_backoff.
        assert_eq!(
            retry_delay(&p, 1, 0.0, Some(Duration::from_secs(10))),
            Duration::from_secs(10)
        );
        assert_eq!(
            retry_delay(&p, 1, 0.0, Some(Duration::from_secs(600))),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
