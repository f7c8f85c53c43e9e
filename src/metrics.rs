//! Prometheus metrics (DESIGN §6), registered into a registry the caller passes.
//!
//! Label values are bounded: routes are configured names, reasons are [`Reason`]s, and event codes
//! are the documented six plus `none` and `other`. Per-route series are resolved once by
//! [`Metrics::route`], so the request path does no label lookup.
//!
//! [`render`] gives a registry's text exposition and its content type, for a `/metrics` route
//! ([`ServeMetrics`](crate::tower::ServeMetrics) is that route as a tower service). The
//! `prometheus` crate is re-exported as `hookgate::prometheus`, so the registry type is always
//! the one hookgate registers into.
//!
//! ```
//! use hookgate::core::Counted;
//! use hookgate::metrics::{render, Metrics};
//!
//! let registry = hookgate::prometheus::Registry::new();
//! let metrics = Metrics::new(&registry).unwrap();
//! let route = metrics.route("o3-video");
//! route.record(Counted::Accepted, None);
//! let (content_type, text) = render(&registry).unwrap();
//! assert_eq!(content_type, "text/plain; version=0.0.4");
//! assert!(text.contains(r#"hookgate_requests_total{outcome="accepted",route="o3-video"} 1"#));
//! ```

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::core::{Counted, ErrorCode, EventClass, EventStatus, Reason};
use crate::store::DEFAULT_DESTINATION;

/// `registry`'s metrics in the Prometheus text format, with the content type to answer it with.
pub fn render(registry: &Registry) -> Result<(&'static str, String), prometheus::Error> {
    let encoder = prometheus::TextEncoder::new();
    let mut text = String::new();
    encoder.encode_utf8(&registry.gather(), &mut text)?;
    Ok((prometheus::TEXT_FORMAT, text))
}

/// Buckets for the time from first byte to acknowledgement: 50 µs to 10 s.
const ACK_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// The metric families. Cheap to clone; register once per registry.
#[derive(Clone)]
pub struct Metrics {
    requests: IntCounterVec,
    rejections: IntCounterVec,
    ack_duration: HistogramVec,
    events: IntCounterVec,
    forwarded_invalid: IntCounterVec,
    dedup_entries: IntGauge,
    dedup_evictions: IntCounter,
    deliveries: IntCounterVec,
    delivery_duration: HistogramVec,
    delivery_attempts: HistogramVec,
    spool_depth: IntGaugeVec,
    spool_oldest_age: GaugeVec,
    dead_letters: IntGaugeVec,
    upstream_up: IntGaugeVec,
    probes: IntCounterVec,
    events_retained: IntGaugeVec,
    replay_events: IntCounterVec,
    destination_paused: IntGaugeVec,
    order_released: IntCounterVec,
    store: StoreMetrics,
}

/// The storage backend's health: whether it answers, how long its commands take, and (for a
/// backend several instances share) how many events this instance took over from a silent one.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// `hookgate_store_up`: 1 while the backend answers its health check.
    pub up: IntGauge,
    /// `hookgate_store_command_duration_seconds{command}`.
    pub commands: HistogramVec,
    /// `hookgate_store_takeovers_total{route}`.
    pub takeovers: IntCounterVec,
    /// `hookgate_store_writable`: 1 while new events are taken, 0 while they get 503 (the
    /// disk under its headroom, a failed store being reopened, Redis out of memory).
    pub writable: IntGauge,
    /// `hookgate_store_free_bytes`: free space where the store keeps its data.
    pub free_bytes: IntGauge,
    /// `hookgate_store_min_free_bytes`: under this much free space new events are refused.
    pub min_free_bytes: IntGauge,
    /// `hookgate_store_headroom_bytes`: how far the free space is above the refusal point.
    pub headroom_bytes: IntGauge,
    /// `hookgate_store_recoveries_total{action}`: `reopen` after a failed write, `rebuild` to
    /// give disk space back.
    pub recoveries: IntCounterVec,
}

/// Buckets for one delivery attempt: 1 ms to 60 s.
const DELIVERY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets for the attempts an event took until delivered or dead-lettered.
const ATTEMPT_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates the families and registers them into `registry`. Fails if they are registered
    /// there already: share one `Metrics` across routes.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new("hookgate_requests_total", "webhook requests by outcome (accepted, duplicate, rejected, failed)"),
                &["route", "outcome"],
            )?,
            rejections: IntCounterVec::new(
                Opts::new("hookgate_rejections_total", "rejected webhook requests by reason"),
                &["route", "reason"],
            )?,
            ack_duration: HistogramVec::new(
                HistogramOpts::new(
                    "hookgate_ack_duration_seconds",
                    "time from the request reaching hookgate to its answer",
                )
                .buckets(ACK_BUCKETS.to_vec()),
                &["route"],
            )?,
            events: IntCounterVec::new(
                Opts::new("hookgate_events_total", "accepted events by the payload's own status and error code"),
                &["route", "status", "code"],
            )?,
            forwarded_invalid: IntCounterVec::new(
                Opts::new(
                    "hookgate_forwarded_for_invalid_total",
                    "X-Forwarded-For headers from trusted proxies that did not parse (the peer address was used)",
                ),
                &["route"],
            )?,
            dedup_entries: IntGauge::new("hookgate_dedup_entries", "keys in the dedup store")?,
            dedup_evictions: IntCounter::new(
                "hookgate_dedup_evictions_total",
                "keys evicted because the dedup store was full",
            )?,
            deliveries: IntCounterVec::new(
                Opts::new("hookgate_deliveries_total", "delivery attempts by destination and result (success, retry, dead_letter)"),
                &["route", "destination", "result"],
            )?,
            delivery_duration: HistogramVec::new(
                HistogramOpts::new("hookgate_delivery_duration_seconds", "duration of one delivery attempt")
                    .buckets(DELIVERY_BUCKETS.to_vec()),
                &["route", "destination"],
            )?,
            delivery_attempts: HistogramVec::new(
                HistogramOpts::new(
                    "hookgate_delivery_attempts",
                    "attempts an event took until delivered or dead-lettered",
                )
                .buckets(ATTEMPT_BUCKETS.to_vec()),
                &["route", "destination"],
            )?,
            spool_depth: IntGaugeVec::new(
                Opts::new("hookgate_spool_depth", "events in the spool awaiting delivery to the destination"),
                &["route", "destination"],
            )?,
            spool_oldest_age: GaugeVec::new(
                Opts::new(
                    "hookgate_spool_oldest_age_seconds",
                    "age of the oldest event awaiting delivery to the destination (0 when none)",
                ),
                &["route", "destination"],
            )?,
            dead_letters: IntGaugeVec::new(
                Opts::new("hookgate_dead_letters", "events in the destination's dead letters"),
                &["route", "destination"],
            )?,
            upstream_up: IntGaugeVec::new(
                Opts::new(
                    "hookgate_upstream_up",
                    "1 while the destination's circuit is closed (deliveries flow), 0 while it is open (the upstream is down; one probe per interval)",
                ),
                &["route", "destination"],
            )?,
            probes: IntCounterVec::new(
                Opts::new(
                    "hookgate_upstream_probes_total",
                    "deliveries sent as the probe of an open circuit, by result (success closes it)",
                ),
                &["route", "destination", "result"],
            )?,
            events_retained: IntGaugeVec::new(
                Opts::new(
                    "hookgate_events_retained",
                    "events the store keeps for the route: pending, dead, and delivered within the retention",
                ),
                &["route"],
            )?,
            replay_events: IntCounterVec::new(
                Opts::new(
                    "hookgate_replay_events_total",
                    "events of replays by destination and result: queued (sent to delivery again), skipped (pending already, filtered, or gone), delivered, failed (dead-lettered after the replay)",
                ),
                &["route", "destination", "result"],
            )?,
            destination_paused: IntGaugeVec::new(
                Opts::new(
                    "hookgate_destination_paused",
                    "1 while the destination is paused (events are acknowledged and wait; no attempt is made)",
                ),
                &["route", "destination"],
            )?,
            order_released: IntCounterVec::new(
                Opts::new(
                    "hookgate_order_released_total",
                    "ordered events dead-lettered (each was the head of its key): the events after it of its key went on without it",
                ),
                &["route", "destination"],
            )?,
            store: StoreMetrics {
                up: IntGauge::new(
                    "hookgate_store_up",
                    "1 while the storage backend answers (Redis: its health check, every 250 ms); 0 while new events get 503",
                )?,
                commands: HistogramVec::new(
                    HistogramOpts::new(
                        "hookgate_store_command_duration_seconds",
                        "duration of one storage backend command (Redis round trip), by command",
                    )
                    .buckets(ACK_BUCKETS.to_vec()),
                    &["command"],
                )?,
                takeovers: IntCounterVec::new(
                    Opts::new(
                        "hookgate_store_takeovers_total",
                        "events this instance took over after they sat unacknowledged with another (silent) instance for the visibility timeout",
                    ),
                    &["route"],
                )?,
                writable: IntGauge::new(
                    "hookgate_store_writable",
                    "1 while the store takes new events; 0 while they get 503 (free space under its headroom, a failed store being reopened, Redis out of memory or unable to persist, or unreachable)",
                )?,
                free_bytes: IntGauge::new(
                    "hookgate_store_free_bytes",
                    "free space where the store keeps its data: the embedded spool's filesystem (statvfs), Redis's maxmemory less used_memory (when maxmemory is set)",
                )?,
                min_free_bytes: IntGauge::new(
                    "hookgate_store_min_free_bytes",
                    "embedded: store.min_free_space as resolved for the filesystem; under it (plus the room the engine keeps for its own work) new events get 503 spool_full",
                )?,
                headroom_bytes: IntGauge::new(
                    "hookgate_store_headroom_bytes",
                    "embedded: free bytes above the point where new events get 503 spool_full (store.min_free_space plus the room the engine keeps for flushing its journal and one compaction); negative while they do. 0 where the disk is not measured",
                )?,
                recoveries: IntCounterVec::new(
                    Opts::new(
                        "hookgate_store_recoveries_total",
                        "times the store recovered in the running process: reopen (after a failed write), rebuild (copied to give disk space back)",
                    ),
                    &["action"],
                )?,
            },
        };
        m.store.up.set(1);
        m.store.writable.set(1);
        for action in ["reopen", "rebuild"] {
            m.store.recoveries.with_label_values(&[action]);
        }
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.rejections.clone()))?;
        registry.register(Box::new(m.ack_duration.clone()))?;
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.forwarded_invalid.clone()))?;
        registry.register(Box::new(m.dedup_entries.clone()))?;
        registry.register(Box::new(m.dedup_evictions.clone()))?;
        registry.register(Box::new(m.deliveries.clone()))?;
        registry.register(Box::new(m.delivery_duration.clone()))?;
        registry.register(Box::new(m.delivery_attempts.clone()))?;
        registry.register(Box::new(m.spool_depth.clone()))?;
        registry.register(Box::new(m.spool_oldest_age.clone()))?;
        registry.register(Box::new(m.dead_letters.clone()))?;
        registry.register(Box::new(m.upstream_up.clone()))?;
        registry.register(Box::new(m.probes.clone()))?;
        registry.register(Box::new(m.events_retained.clone()))?;
        registry.register(Box::new(m.replay_events.clone()))?;
        registry.register(Box::new(m.destination_paused.clone()))?;
        registry.register(Box::new(m.order_released.clone()))?;
        registry.register(Box::new(m.store.up.clone()))?;
        registry.register(Box::new(m.store.commands.clone()))?;
        registry.register(Box::new(m.store.takeovers.clone()))?;
        registry.register(Box::new(m.store.writable.clone()))?;
        registry.register(Box::new(m.store.free_bytes.clone()))?;
        registry.register(Box::new(m.store.min_free_bytes.clone()))?;
        registry.register(Box::new(m.store.headroom_bytes.clone()))?;
        registry.register(Box::new(m.store.recoveries.clone()))?;
        Ok(m)
    }

    /// The families registered in `prometheus::default_registry()`, created on first use. Fails
    /// (every time) if something else registered the same names there first.
    pub fn global() -> Result<&'static Metrics, prometheus::Error> {
        static GLOBAL: OnceLock<Result<Metrics, String>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| Metrics::new(prometheus::default_registry()).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| prometheus::Error::Msg(format!("default registry: {e}")))
    }

    /// The series of requests that reach no route (the gateway's 404s and header timeouts):
    /// like [`route`](Self::route), without the delivery and spool series, which would only
    /// ever read zero.
    pub fn unrouted(&self, name: &str) -> RouteMetrics {
        let route = self.route(name);
        self.remove_destination(name, DEFAULT_DESTINATION);
        let _ = self.events_retained.remove_label_values(&[name]);
        let _ = self.forwarded_invalid.remove_label_values(&[name]);
        let completed = [EventStatus::Completed.as_str(), ErrorCode::None.as_str()];
        let _ = self
            .events
            .remove_label_values(&[name, completed[0], completed[1]]);
        for code in ErrorCode::FAILED {
            let labels = [name, EventStatus::Failed.as_str(), code.as_str()];
            let _ = self.events.remove_label_values(&labels);
        }
        route
    }

    /// The series of one route, resolved once. Every series starts at zero so dashboards see it.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let events = EventCounters {
            completed: self.events.with_label_values(&[
                route,
                EventStatus::Completed.as_str(),
                ErrorCode::None.as_str(),
            ]),
            failed: ErrorCode::FAILED.map(|code| {
                self.events
                    .with_label_values(&[route, EventStatus::Failed.as_str(), code.as_str()])
            }),
        };
        RouteMetrics(Arc::new(RouteInner {
            accepted: self.requests.with_label_values(&[route, "accepted"]),
            duplicate: self.requests.with_label_values(&[route, "duplicate"]),
            rejected: self.requests.with_label_values(&[route, "rejected"]),
            failed: self.requests.with_label_values(&[route, "failed"]),
            rejections: Reason::ALL
                .map(|r| self.rejections.with_label_values(&[route, r.as_str()])),
            ack_duration: self.ack_duration.with_label_values(&[route]),
            events,
            forwarded_invalid: self.forwarded_invalid.with_label_values(&[route]),
            delivery: self.destination(route, DEFAULT_DESTINATION),
        }))
    }

    /// The delivery series of destination `destination` of `route`, resolved once; every series
    /// starts at zero so dashboards see it. (A route's [`delivery`](RouteMetrics::delivery)
    /// series are its default destination's.)
    pub fn destination(&self, route: &str, destination: &str) -> DeliveryMetrics {
        let d = [route, destination];
        let with = |r: &'static str| [route, destination, r];
        DeliveryMetrics {
            success: self.deliveries.with_label_values(&with("success")),
            retry: self.deliveries.with_label_values(&with("retry")),
            dead_letter: self.deliveries.with_label_values(&with("dead_letter")),
            duration: self.delivery_duration.with_label_values(&d),
            attempts: self.delivery_attempts.with_label_values(&d),
            spool_depth: self.spool_depth.with_label_values(&d),
            oldest_age: self.spool_oldest_age.with_label_values(&d),
            dead_letters: self.dead_letters.with_label_values(&d),
            upstream_up: self.upstream_up.with_label_values(&d),
            probe_success: self.probes.with_label_values(&with("success")),
            probe_failure: self.probes.with_label_values(&with("failure")),
            retained: self.events_retained.with_label_values(&[route]),
            replay_queued: self.replay_events.with_label_values(&with("queued")),
            replay_skipped: self.replay_events.with_label_values(&with("skipped")),
            replay_delivered: self.replay_events.with_label_values(&with("delivered")),
            replay_failed: self.replay_events.with_label_values(&with("failed")),
            paused: self.destination_paused.with_label_values(&d),
            order_released: self.order_released.with_label_values(&d),
        }
    }

    /// Removes the series of destination `destination` of `route` (a destination a reload
    /// removed, or the gateway's series of requests that reach no route).
    pub fn remove_destination(&self, route: &str, destination: &str) {
        let d = [route, destination];
        for result in ["success", "retry", "dead_letter"] {
            let _ = self
                .deliveries
                .remove_label_values(&[route, destination, result]);
        }
        let _ = self.delivery_duration.remove_label_values(&d);
        let _ = self.delivery_attempts.remove_label_values(&d);
        let _ = self.spool_depth.remove_label_values(&d);
        let _ = self.spool_oldest_age.remove_label_values(&d);
        let _ = self.dead_letters.remove_label_values(&d);
        let _ = self.upstream_up.remove_label_values(&d);
        for result in ["success", "failure"] {
            let _ = self
                .probes
                .remove_label_values(&[route, destination, result]);
        }
        for result in ["queued", "skipped", "delivered", "failed"] {
            let _ = self
                .replay_events
                .remove_label_values(&[route, destination, result]);
        }
        let _ = self.destination_paused.remove_label_values(&d);
        let _ = self.order_released.remove_label_values(&d);
    }

    /// The storage backend's metrics.
    pub fn store(&self) -> &StoreMetrics {
        &self.store
    }

    /// `hookgate_dedup_entries`.
    pub fn dedup_entries(&self) -> &IntGauge {
        &self.dedup_entries
    }

    /// `hookgate_dedup_evictions_total`.
    pub fn dedup_evictions(&self) -> &IntCounter {
        &self.dedup_evictions
    }
}

struct EventCounters {
    completed: IntCounter,
    failed: [IntCounter; 7],
}

struct RouteInner {
    accepted: IntCounter,
    duplicate: IntCounter,
    rejected: IntCounter,
    failed: IntCounter,
    rejections: [IntCounter; Reason::ALL.len()],
    ack_duration: Histogram,
    events: EventCounters,
    forwarded_invalid: IntCounter,
    delivery: DeliveryMetrics,
}

/// One destination's delivery series (from [`Metrics::destination`]; a route's default one
/// from [`RouteMetrics::delivery`]).
#[derive(Clone)]
pub struct DeliveryMetrics {
    /// `hookgate_deliveries_total{result="success"}`
    pub success: IntCounter,
    /// `hookgate_deliveries_total{result="retry"}`
    pub retry: IntCounter,
    /// `hookgate_deliveries_total{result="dead_letter"}`
    pub dead_letter: IntCounter,
    /// `hookgate_delivery_duration_seconds`
    pub duration: Histogram,
    /// `hookgate_delivery_attempts`
    pub attempts: Histogram,
    /// `hookgate_spool_depth`
    pub spool_depth: IntGauge,
    /// `hookgate_spool_oldest_age_seconds`
    pub oldest_age: Gauge,
    /// `hookgate_dead_letters`
    pub dead_letters: IntGauge,
    /// `hookgate_upstream_up`: 1 closed, 0 open.
    pub upstream_up: IntGauge,
    /// `hookgate_upstream_probes_total{result="success"}`
    pub probe_success: IntCounter,
    /// `hookgate_upstream_probes_total{result="failure"}`
    pub probe_failure: IntCounter,
    /// `hookgate_events_retained`
    pub retained: IntGauge,
    /// `hookgate_replay_events_total{result="queued"}`
    pub replay_queued: IntCounter,
    /// `hookgate_replay_events_total{result="skipped"}`
    pub replay_skipped: IntCounter,
    /// `hookgate_replay_events_total{result="delivered"}`
    pub replay_delivered: IntCounter,
    /// `hookgate_replay_events_total{result="failed"}`
    pub replay_failed: IntCounter,
    /// `hookgate_destination_paused`
    pub paused: IntGauge,
    /// `hookgate_order_released_total`
    pub order_released: IntCounter,
}

impl std::fmt::Debug for DeliveryMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryMetrics").finish_non_exhaustive()
    }
}

/// One route's series. Cheap to clone.
#[derive(Clone)]
pub struct RouteMetrics(Arc<RouteInner>);

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics").finish_non_exhaustive()
    }
}

impl RouteMetrics {
    /// One request's outcome, as the core counts it ([`Outcome::counted`]); `class` is the
    /// payload's, for an accepted one.
    ///
    /// [`Outcome::counted`]: crate::core::Outcome::counted
    #[inline]
    pub fn record(&self, counted: Counted, class: Option<EventClass>) {
        match counted {
            Counted::Accepted => self.record_accepted(class),
            Counted::Duplicate => self.0.duplicate.inc(),
            Counted::Rejected(reason) => self.record_rejected(reason),
            Counted::Failed => self.0.failed.inc(),
        }
    }

    /// An accepted request, with the payload's class when the profile knows it.
    #[inline]
    fn record_accepted(&self, class: Option<EventClass>) {
        self.0.accepted.inc();
        if let Some(class) = class {
            match class.status {
                EventStatus::Completed => self.0.events.completed.inc(),
                EventStatus::Failed => {
                    let i = ErrorCode::FAILED
                        .iter()
                        .position(|c| *c == class.code)
                        .unwrap_or(ErrorCode::FAILED.len() - 1);
                    self.0.events.failed[i].inc();
                }
            }
        }
    }

    /// A rejection.
    #[inline]
    fn record_rejected(&self, reason: Reason) {
        self.0.rejected.inc();
        self.0.rejections[reason.index()].inc();
    }

    /// Time from the request reaching hookgate to its answer.
    #[inline]
    pub fn observe_ack(&self, elapsed: Duration) {
        self.0.ack_duration.observe(elapsed.as_secs_f64());
    }

    /// The route's delivery series.
    pub fn delivery(&self) -> &DeliveryMetrics {
        &self.0.delivery
    }

    /// A trusted proxy's `X-Forwarded-For` did not parse.
    #[inline]
    pub fn record_forwarded_invalid(&self) {
        self.0.forwarded_invalid.inc();
    }
}
