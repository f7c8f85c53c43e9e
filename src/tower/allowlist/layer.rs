use std::sync::Arc;

use tower_layer::Layer;

use super::IpAllowlist;
#[cfg(feature = "rate-limit")]
use crate::core::RateLimit;
use crate::core::{Allowlist, ClientIpResolver, LiveAllowlist};
use crate::metrics::RouteMetrics;
use crate::tower::{default_peer_ip, PeerIpFn};

#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) allow: LiveAllowlist,
    pub(crate) resolver: ClientIpResolver,
    pub(crate) peer_ip: PeerIpFn,
    pub(crate) metrics: Option<RouteMetrics>,
    #[cfg(feature = "rate-limit")]
    pub(crate) rate_limit: Option<RateLimit>,
}

/// Builds [`IpAllowlist`] services.
#[derive(Clone)]
#[must_use]
pub struct IpAllowlistLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for IpAllowlistLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpAllowlistLayer")
            .field("allow", &self.shared.allow)
            .field("trusted_proxies", &self.shared.resolver)
            .finish()
    }
}

impl IpAllowlistLayer {
    /// Admits clients inside `allow`; trusts no proxy. A [`LiveAllowlist`] can be replaced while
    /// the layer serves (a refreshed published list: `Allowlist::from_json`), every request
    /// then checked against the new networks.
    pub fn new(allow: impl Into<LiveAllowlist>) -> Self {
        Self {
            shared: Arc::new(Shared {
                allow: allow.into(),
                resolver: ClientIpResolver::default(),
                peer_ip: default_peer_ip,
                metrics: None,
                #[cfg(feature = "rate-limit")]
                rate_limit: None,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        f(Arc::make_mut(&mut self.shared));
        self
    }

    /// Believes `X-Forwarded-For` from peers inside `proxies`.
    pub fn with_trusted_proxies(self, proxies: Allowlist) -> Self {
        self.edit(|s| s.resolver = ClientIpResolver::new(proxies))
    }

    /// Reads the peer address with `f` instead of [`default_peer_ip`].
    pub fn with_peer_ip(self, f: PeerIpFn) -> Self {
        self.edit(|s| s.peer_ip = f)
    }

    /// Step 5 right after the allowlist: a client (its resolved address; IPv6 by /64) sending
    /// `POST`s beyond `limit` gets 429 with `Retry-After`. Feature `rate-limit`.
    #[cfg(feature = "rate-limit")]
    pub fn with_rate_limit(self, limit: RateLimit) -> Self {
        self.edit(|s| s.rate_limit = Some(limit))
    }

    /// Counts unparseable `X-Forwarded-For` headers from trusted proxies.
    pub fn with_metrics(self, metrics: RouteMetrics) -> Self {
        self.edit(|s| s.metrics = Some(metrics))
    }
}

impl<S> Layer<S> for IpAllowlistLayer {
    type Service = IpAllowlist<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IpAllowlist::new(inner, self.shared.clone())
    }
}
