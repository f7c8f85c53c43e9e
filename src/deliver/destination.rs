//! One destination of a route (DESIGN §13): where its events go, and how. A route delivers to one
//! or more destinations; each has its own target, delivery policy (retries, timeout,
//! `concurrency`) and circuit, and optionally a `rate`, a `filter` and an `order`. An event is
//! acknowledged once; each destination then has its own status, attempts and dead letters.
//!
//! ```
//! use hookgate::core::{DeliveryRate, Filter, OrderKey};
//! use hookgate::deliver::{handler_fn, DeliveredEvent, Destination};
//!
//! let app = Destination::new("app")
//!     .with_target(handler_fn(|_ev: DeliveredEvent| async { Ok(()) }))
//!     .with_order(OrderKey::parse("order", "/data/object/id").unwrap())
//!     .with_rate("200/s".parse::<DeliveryRate>().unwrap());
//! let alerts = Destination::new("alerts")
//!     .with_target(handler_fn(|_ev: DeliveredEvent| async { Ok(()) }))
//!     .with_filter(Filter::new("filter", [("/type".to_string(), "invoice.payment_failed".into())]).unwrap());
//! assert_eq!((app.name(), alerts.name()), ("app", "alerts"));
//! ```

use std::sync::Arc;

use super::policy::DeliveryPolicy;
use super::target::Target;
use crate::core::{ConfigError, DeliveryRate, Filter, OrderKey};
use crate::store::DEFAULT_DESTINATION;

/// A destination: a name (unique in its route: metrics, logs, the history and the admin API
/// say it), a target, and how events are delivered there.
#[derive(Clone)]
#[must_use]
pub struct Destination {
    pub(crate) name: String,
    pub(crate) target: Option<Arc<dyn Target>>,
    pub(crate) policy: DeliveryPolicy,
    pub(crate) rate: Option<DeliveryRate>,
    pub(crate) filter: Option<Filter>,
    pub(crate) order: Option<OrderKey>,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .field("rate", &self.rate)
            .field("filter", &self.filter)
            .field("order", &self.order)
            .finish_non_exhaustive()
    }
}

impl Destination {
    /// Destination `name`, delivering by [`DeliveryPolicy::default`], unpaced, unfiltered and
    /// unordered. Its target is set with [`with_target`](Self::with_target), or later on the
    /// [`Deliverer`](super::Deliverer).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            target: None,
            policy: DeliveryPolicy::default(),
            rate: None,
            filter: None,
            order: None,
        }
    }

    /// The route's one destination when it has no other: [`DEFAULT_DESTINATION`].
    pub fn default_for(policy: DeliveryPolicy) -> Self {
        Self::new(DEFAULT_DESTINATION).with_policy(policy)
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Delivers to `target`: an HTTP upstream, a tower service, a typed handler.
    pub fn with_target(mut self, target: impl Target) -> Self {
        self.target = Some(Arc::new(target));
        self
    }

    /// Delivers to `target`, shared.
    pub fn with_shared_target(mut self, target: Arc<dyn Target>) -> Self {
        self.target = Some(target);
        self
    }

    /// Retries, timeouts, `concurrency` and circuit by `policy`.
    pub fn with_policy(mut self, policy: DeliveryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// At most `rate` deliveries a second (retries and replays included), across every
    /// instance sharing a Redis store.
    pub fn with_rate(mut self, rate: DeliveryRate) -> Self {
        self.rate = Some(rate);
        self
    }

    /// Only the events `filter` lets through; the others are `filtered` here.
    pub fn with_filter(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Events with the same `order` key one at a time, in arrival order.
    pub fn with_order(mut self, order: OrderKey) -> Self {
        self.order = Some(order);
        self
    }

    /// Checks the name: letters, digits, `-`, `_` and `.`, as the admin API's paths and the
    /// metrics' labels take it.
    pub(crate) fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(())
        } else {
            Err(ConfigError::InvalidValue {
                key: key.to_owned(),
                reason: format!(
                    "{name:?} is not a destination name: use 1 to 64 letters, digits, '-', '_' or '.'"
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_what_a_path_and_a_label_take() {
        for good in ["app", "alerts-2", "a.b_c", "upstream"] {
            assert!(Destination::check_name("k", good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a/b", "a#b", &"x".repeat(65)] {
            let err = Destination::check_name("route[0].destination[1].name", bad).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("route[0].destination[1].name: "),
                "{bad}"
            );
        }
    }
}
