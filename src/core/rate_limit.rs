//! Step 5: a rate limit per client address per route (`governor`'s GCRA), answered 429 with
//! `Retry-After`. An IPv6 client counts by its /64 (one subscriber's allocation: rotating
//! addresses inside it gains nothing); an IPv4-mapped address as the IPv4 one.
//!
//! The state is bounded: past `max_keys` addresses tracked, the idle ones (full buckets, which
//! behave exactly like new ones) are dropped; if that is not enough (an attacker rotating
//! through more addresses than the bound within one refill), the whole table starts afresh. So
//! rotating addresses cannot grow memory, and buys nothing a fresh address would not.
//!
//! ```
//! use hookgate::core::{RateLimit, Reason};
//!
//! let limit = RateLimit::parse("rate_limit", "2/s", Some(2)).unwrap();
//! let ip = "192.0.2.1".parse().unwrap();
//! assert!(limit.check(ip).is_ok());
//! assert!(limit.check(ip).is_ok());
//! let refused = limit.check(ip).unwrap_err();
//! assert_eq!(refused.reason(), Reason::RateLimited);
//! assert_eq!(refused.retry_after(), Some(1));
//! assert!(limit.check("192.0.2.2".parse().unwrap()).is_ok(), "another address is not affected");
//! ```

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::{ConfigError, Rejection};

type Limiter = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>;

/// The addresses tracked at most, by default (about 6 MiB of state).
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// How many checks pass between looks at the table's size.
const LOOK_EVERY: u64 = 1024;

/// A per-address rate limit. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct RateLimit(Arc<Inner>);

struct Inner {
    quota: Quota,
    limiter: RwLock<Arc<Limiter>>,
    clock: DefaultClock,
    max_keys: usize,
    checks: AtomicU64,
    /// How the limit was written (`50/s`, burst 100), for logs and `Debug`.
    written: String,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("limit", &self.0.written)
            .field("max_keys", &self.0.max_keys)
            .finish()
    }
}

/// The address a client counts as: an IPv6 one by its /64, a mapped IPv4 one as IPv4.
fn bucket_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

impl RateLimit {
    /// `per_ip` requests per address, written `N/s`, `N/m` or `N/h`, with bursts of `burst`
    /// (default `N`). `key` names the setting in errors.
    pub fn parse(key: &str, per_ip: &str, burst: Option<u32>) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidValue {
            key: key.to_owned(),
            reason,
        };
        let (n, unit) = per_ip.split_once('/').ok_or_else(|| {
            invalid(format!("per_ip = {per_ip:?}: write a count per unit, such as \"50/s\", \"600/m\" or \"1000/h\""))
        })?;
        let n: u32 = n.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            invalid(format!(
                "per_ip = {per_ip:?}: the count must be a whole number above 0"
            ))
        })?;
        let unit = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => {
                return Err(invalid(format!(
                    "per_ip = {per_ip:?}: {other:?} is not a unit (s, m or h)"
                )))
            }
        };
        let burst = burst.unwrap_or(n);
        let burst =
            NonZeroU32::new(burst).ok_or_else(|| invalid("burst must be at least 1".into()))?;
        let period = unit / n;
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .ok_or_else(|| invalid(format!("per_ip = {per_ip:?} is too fast")))?
            .allow_burst(burst);
        Ok(Self::from_quota(
            quota,
            format!("{per_ip}, burst {burst}"),
            DEFAULT_MAX_KEYS,
        ))
    }

    fn from_quota(quota: Quota, written: String, max_keys: usize) -> Self {
        Self(Arc::new(Inner {
            quota,
            limiter: RwLock::new(Arc::new(RateLimiter::dashmap(quota))),
            clock: DefaultClock::default(),
            max_keys: max_keys.max(1),
            checks: AtomicU64::new(0),
            written,
        }))
    }

    /// The same limit, tracking at most `max_keys` addresses (default [`DEFAULT_MAX_KEYS`]).
    #[must_use]
    pub fn with_max_keys(self, max_keys: usize) -> Self {
        Self::from_quota(self.0.quota, self.0.written.clone(), max_keys)
    }

    /// Step 5 for a request from `ip`: `Ok` within the limit, else 429 with `Retry-After`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Rejection> {
        let limiter = self.limiter();
        let outcome = limiter.check_key(&bucket_of(ip));
        if self.0.checks.fetch_add(1, Ordering::Relaxed) % LOOK_EVERY == LOOK_EVERY - 1 {
            self.bound(&limiter);
        }
        outcome.map_err(|not_until| {
            let wait = not_until.wait_time_from(self.0.clock.now());
            let secs = u32::try_from(wait.as_secs()).unwrap_or(u32::MAX);
            Rejection::RateLimited {
                retry_after: secs + u32::from(wait.subsec_nanos() > 0 || secs == 0),
            }
        })
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.limiter().len()
    }

    fn limiter(&self) -> Arc<Limiter> {
        self.0
            .limiter
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keeps the table within `max_keys`: idle entries dropped, or the table started afresh.
    fn bound(&self, limiter: &Limiter) {
        if limiter.len() <= self.0.max_keys {
            return;
        }
        limiter.retain_recent();
        if limiter.len() > self.0.max_keys {
            let fresh = Arc::new(RateLimiter::dashmap(self.0.quota));
            *self.0.limiter.write().unwrap_or_else(|e| e.into_inner()) = fresh;
            tracing::warn!(limit = %self.0.written, max_keys = self.0.max_keys, "rate limit: more client addresses than the bound within one refill; the table starts afresh");
        } else {
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Reason;

    #[test]
    fn a_burst_beyond_the_limit_is_refused_and_other_addresses_are_not() {
        let limit = RateLimit::parse("r", "10/s", Some(5)).unwrap();
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let passed = (0..20).filter(|_| limit.check(a).is_ok()).count();
        assert_eq!(passed, 5, "the burst");
        let refused = limit.check(a).unwrap_err();
        assert_eq!(
            (
                refused.reason(),
                refused.status().as_u16(),
                refused.retry_after()
            ),
            (Reason::RateLimited, 429, Some(1))
        );
        assert!(limit.check("198.51.100.8".parse().unwrap()).is_ok());
        // The allowed rate passes: one request per period, after the wait.
        std::thread::sleep(Duration::from_millis(110));
        assert!(limit.check(a).is_ok(), "a token back after 100 ms");
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64_and_a_mapped_one_as_ipv4() {
        let limit = RateLimit::parse("r", "1/h", Some(1)).unwrap();
        assert!(limit.check("2001:db8:1:2::1".parse().unwrap()).is_ok());
        assert!(
            limit
                .check("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_err(),
            "same /64"
        );
        assert!(
            limit.check("2001:db8:1:3::1".parse().unwrap()).is_ok(),
            "another /64"
        );
        assert!(limit.check("192.0.2.9".parse().unwrap()).is_ok());
        assert!(
            limit.check("::ffff:192.0.2.9".parse().unwrap()).is_err(),
            "mapped = the IPv4 one"
        );
        let refused = limit.check("192.0.2.9".parse().unwrap()).unwrap_err();
        assert!(
            refused.retry_after().unwrap() > 3000,
            "an hour's wait: {refused:?}"
        );
    }

    #[test]
    fn a_million_distinct_addresses_keep_the_state_under_its_bound() {
        let limit = RateLimit::parse("r", "50/s", Some(100))
            .unwrap()
            .with_max_keys(10_000);
        let mut peak = 0;
        for n in 0..1_000_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            assert!(limit.check(ip).is_ok(), "a fresh address is never refused");
            if n % 1024 == 1023 {
                peak = peak.max(limit.tracked());
            }
        }
        // Between two looks at most LOOK_EVERY more are added.
        assert!(peak <= 10_000 + LOOK_EVERY as usize, "peak {peak}");
        assert!(limit.tracked() <= 10_000 + LOOK_EVERY as usize);
    }

    #[test]
    fn limits_are_parsed_with_errors_naming_the_setting() {
        assert!(RateLimit::parse("r", "600/m", None).is_ok());
        assert!(RateLimit::parse("r", "1000/h", Some(10)).is_ok());
        for (bad, want) in [
            ("50", "count per unit"),
            ("0/s", "above 0"),
            ("x/s", "above 0"),
            ("5/d", "not a unit"),
        ] {
            let err = RateLimit::parse("route[0].rate_limit", bad, None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("route[0].rate_limit") && err.contains(want),
                "{bad}: {err}"
            );
        }
        assert!(RateLimit::parse("r", "5/s", Some(0)).is_err());
    }
}
