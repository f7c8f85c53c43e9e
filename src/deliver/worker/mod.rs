//! A route's delivery: one lane per destination (DESIGN §13), each with a schedule of due events,
//! a dispatcher, at most `concurrency` attempts in flight, its circuit, its pace, its per-key
//! order and its pause.

mod dispatch;
mod lane;
mod order;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{watch, Notify, Semaphore};
use uuid::Uuid;

use super::circuit::Circuit;
use super::destination::Destination;
use super::policy::DeliveryPolicy;
use super::target::Target;
use crate::core::outcome::{self, Counted, Outcome};
use crate::core::{ConfigError, Pacer};
use crate::metrics::{DeliveryMetrics, Metrics};
use crate::store::{
    lane as lane_name, now_ms, Completion, Event, EventSummary, Fanout, Reserved, Spool,
    SpoolError, DEFAULT_DESTINATION, LANE_SEPARATOR,
};

#[cfg(feature = "gateway")]
pub(crate) use dispatch::each_second_until;
use lane::{pause_key, Lane};

/// Delivers one route's events from the spool to each of its destinations, retrying by each
/// one's policy. Cheap to clone; all clones drive one worker, which stops (leaving undelivered
/// events in the spool) when the last clone is dropped, if [`shutdown`](Deliverer::shutdown)
/// was not called first.
#[derive(Clone)]
pub struct Deliverer {
    inner: Arc<Inner>,
}

/// Held by the handles, not by the worker's own tasks: its drop stops its lane. One per lane:
/// a reload that keeps a destination hands its lane (and this) to the route's new deliverer,
/// so dropping the old one stops only the destinations the reload removed.
struct StopOnDrop(Arc<Lane>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.send_replace(true);
    }
}

struct Inner {
    route: String,
    spool: Arc<dyn Spool>,
    /// One per destination, in the order they were given.
    lanes: Vec<Arc<Lane>>,
    /// Each lane's stop on drop, shared with any other deliverer holding the lane.
    _running: Vec<Arc<StopOnDrop>>,
    /// Some destination filters: an event's payload is read to decide where it goes.
    filters: bool,
    /// Some destination orders its events: each event's keys are read when it is taken in.
    orders: bool,
    /// Whether the event record must list its destinations (anything but the default one
    /// alone, unfiltered and unordered).
    listed: bool,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("route", &self.inner.route)
            .field("destinations", &self.destinations())
            .field("scheduled", &self.scheduled())
            .finish()
    }
}

/// What a destination is doing now, for the admin API and readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationStatus {
    /// The destination's name.
    pub name: String,
    /// Paused by an operator: events are taken and wait.
    pub paused: bool,
    /// Its circuit is open (its upstream is down; one probe per interval).
    pub circuit_open: bool,
    /// Events queued in this process for an attempt (not counting those in flight).
    pub scheduled: usize,
    /// Ordering keys with an event pending here (0 unless it orders, on a spool this process
    /// owns).
    pub order_keys: usize,
}

impl Deliverer {
    /// Starts the worker for `route` on the current tokio runtime, delivering to one destination
    /// ([`DEFAULT_DESTINATION`]) by `policy`: every pending event of the route in `spool` is
    /// scheduled again at its next attempt time. Attempts begin once a target is set
    /// ([`with_target`](Self::with_target) or [`set_target`](Self::set_target)).
    pub fn start(
        route: impl Into<String>,
        spool: Arc<dyn Spool>,
        policy: DeliveryPolicy,
        metrics: DeliveryMetrics,
    ) -> Result<Self, SpoolError> {
        let (deliverer, worker) = Self::new(route, spool, policy, metrics)?;
        tokio::spawn(worker);
        Ok(deliverer)
    }

    /// Like [`start`](Self::start), but returns the worker as a future for the caller to run on
    /// the runtime of its choice (the gateway runs it in a pingora background service). Events
    /// scheduled before the worker runs wait in its queue. The future ends when the worker stops.
    pub fn new(
        route: impl Into<String>,
        spool: Arc<dyn Spool>,
        policy: DeliveryPolicy,
        metrics: DeliveryMetrics,
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), SpoolError> {
        let route = route.into();
        Self::build(
            route,
            spool,
            vec![(Destination::default_for(policy), metrics)],
        )
    }

    /// A route delivering to several `destinations` (at least one, names unique), each with
    /// its own target, policy, circuit and series in `metrics`; the worker is returned as a
    /// future, as [`new`](Self::new) does. An event is acknowledged once and then delivered to
    /// each destination whose filter it passes.
    ///
    /// ```
    /// use hookgate::deliver::{handler_fn, DeliveredEvent, Deliverer, Destination};
    /// use hookgate::metrics::Metrics;
    /// use hookgate::store::memory::MemorySpool;
    /// use std::sync::Arc;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    /// let ok = || handler_fn(|_ev: DeliveredEvent| async { Ok(()) });
    /// let (deliverer, worker) = Deliverer::with_destinations(
    ///     "stripe",
    ///     Arc::new(MemorySpool::new(1000, 1 << 20)),
    ///     &metrics,
    ///     vec![Destination::new("app").with_target(ok()), Destination::new("audit").with_target(ok())],
    /// )
    /// .unwrap();
    /// tokio::spawn(worker);
    /// assert_eq!(deliverer.destinations(), ["app", "audit"]);
    /// # });
    /// ```
    pub fn with_destinations(
        route: impl Into<String>,
        spool: Arc<dyn Spool>,
        metrics: &Metrics,
        destinations: Vec<Destination>,
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), ConfigError> {
        let route = route.into();
        check_destinations(&route, &destinations)?;
        let with_metrics = destinations
            .into_iter()
            .map(|d| {
                let m = metrics.destination(&route, &d.name);
                (d, m)
            })
            .collect();
        Self::build(route, spool, with_metrics).map_err(|e| ConfigError::InvalidValue {
            key: "spool".into(),
            reason: e.to_string(),
        })
    }

    fn build(
        route: String,
        spool: Arc<dyn Spool>,
        destinations: Vec<(Destination, DeliveryMetrics)>,
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), SpoolError> {
        Self::assemble(route, spool, destinations, &[])
    }

    /// The route's deliverer with `destinations`, reusing the lanes of `running` (a reload's
    /// destinations kept: their queues, circuits and attempts in flight go on); the worker
    /// returned runs the new lanes only.
    fn assemble(
        route: String,
        spool: Arc<dyn Spool>,
        destinations: Vec<(Destination, DeliveryMetrics)>,
        running: &[(Arc<Lane>, Arc<StopOnDrop>)],
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), SpoolError> {
        let shared = spool.shared().is_some();
        let filters = destinations.iter().any(|(d, _)| d.filter.is_some());
        let orders = destinations.iter().any(|(d, _)| d.order.is_some());
        let listed = filters
            || orders
            || destinations.len() > 1
            || destinations
                .iter()
                .any(|(d, _)| d.name != DEFAULT_DESTINATION);
        let mut lanes = Vec::with_capacity(destinations.len());
        let mut stops = Vec::with_capacity(destinations.len());
        let mut fresh = Vec::new();
        for (d, metrics) in destinations {
            if let Some((lane, stop)) = running.iter().find(|(l, _)| l.destination == d.name) {
                lanes.push(lane.clone());
                stops.push(stop.clone());
                continue;
            }
            let lane = lane_name(&route, &d.name).into_owned();
            let (stop, _) = watch::channel(false);
            let (paused, _) = watch::channel(None);
            metrics.upstream_up.set(1);
            let policy = d.policy;
            let lane = Arc::new(Lane {
                route: route.clone(),
                destination: d.name,
                lane,
                spool: spool.clone(),
                target: OnceLock::new(),
                target_set: Notify::new(),
                circuit: Mutex::new(Circuit::new(
                    policy.open_after,
                    policy.backoff,
                    policy.max_backoff,
                )),
                open: AtomicBool::new(false),
                circuit_changed: Notify::new(),
                permits: Arc::new(Semaphore::new(policy.concurrency.max(1))),
                policy,
                metrics,
                filter: d.filter,
                order: d.order,
                keys: Mutex::new(order::KeyQueues::default()),
                pacer: d.rate.as_ref().map(|r| Mutex::new(Pacer::new(r))),
                rate: d.rate,
                queue: Mutex::new(Default::default()),
                hot: Mutex::new(Default::default()),
                wake: Notify::new(),
                stop,
                paused,
                shared,
            });
            if let Some(target) = d.target {
                let _ = lane.target.set(target);
            }
            // A shared spool's events are claimed as they come due, by whichever instance; its
            // gauges are read from it once a second.
            if !shared {
                recover(&lane)?;
            }
            stops.push(Arc::new(StopOnDrop(lane.clone())));
            fresh.push(lane.clone());
            lanes.push(lane);
        }
        let inner = Arc::new(Inner {
            route,
            spool,
            lanes,
            _running: stops,
            filters,
            orders,
            listed,
        });
        let worker = async move {
            let lanes = fresh.into_iter().map(|lane| async move {
                dispatch::load_pause(&lane).await;
                if lane.shared {
                    tokio::join!(dispatch::claim(lane.clone()), dispatch::track_shared(lane));
                } else {
                    tokio::join!(
                        dispatch::dispatch(lane.clone()),
                        dispatch::track_oldest(lane)
                    );
                }
            });
            // Every lane in this one task (a handful: polling each on a wake is cheap).
            let mut lanes: Vec<Pin<Box<_>>> = lanes.map(Box::pin).collect();
            std::future::poll_fn(move |cx| {
                lanes.retain_mut(|lane| lane.as_mut().poll(cx).is_pending());
                if lanes.is_empty() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        };
        Ok((Self { inner }, worker))
    }

    /// This route with `destinations` instead (a reload): the destinations it had already keep
    /// running as they are (their queue, circuit and settings: a changed setting of a kept
    /// destination takes a restart), new ones start with the returned worker, and the ones
    /// left out stop once this deliverer is dropped (their events stay in the spool).
    pub fn reconfigure(
        &self,
        metrics: &Metrics,
        destinations: Vec<Destination>,
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), ConfigError> {
        check_destinations(&self.inner.route, &destinations)?;
        let running: Vec<(Arc<Lane>, Arc<StopOnDrop>)> = self
            .inner
            .lanes
            .iter()
            .cloned()
            .zip(self.inner._running.iter().cloned())
            .collect();
        let route = self.inner.route.clone();
        let with_metrics = destinations
            .into_iter()
            .map(|d| {
                let m = metrics.destination(&route, &d.name);
                (d, m)
            })
            .collect();
        Self::assemble(route, self.inner.spool.clone(), with_metrics, &running).map_err(|e| {
            ConfigError::InvalidValue {
                key: "spool".into(),
                reason: e.to_string(),
            }
        })
    }

    /// Whether destination `destination` has events waiting for delivery (in any instance).
    pub fn has_waiting(&self, destination: &str) -> bool {
        let lane = lane_name(&self.inner.route, destination);
        self.inner.spool.oldest_pending_ms(&lane).is_some()
    }

    /// Sets the target of the route's first destination; returns `false` (and changes
    /// nothing) if it has one already.
    pub fn set_target(&self, target: Arc<dyn Target>) -> bool {
        self.set_destination_target(&self.inner.lanes[0].destination.clone(), target)
    }

    /// Sets destination `destination`'s target; `false` (nothing changed) if it has one
    /// already or there is no such destination.
    pub fn set_destination_target(&self, destination: &str, target: Arc<dyn Target>) -> bool {
        let Some(lane) = self.lane(destination) else {
            return false;
        };
        let set = lane.target.set(target).is_ok();
        if set {
            lane.target_set.notify_one();
        }
        set
    }

    /// [`set_target`](Self::set_target), builder style.
    #[must_use]
    pub fn with_target(self, target: Arc<dyn Target>) -> Self {
        self.set_target(target);
        self
    }

    /// The route.
    pub fn route(&self) -> &str {
        &self.inner.route
    }

    /// The destinations' names, in the order they were given.
    pub fn destinations(&self) -> Vec<String> {
        self.inner
            .lanes
            .iter()
            .map(|l| l.destination.clone())
            .collect()
    }

    /// Whether the route has destination `destination`.
    pub fn has_destination(&self, destination: &str) -> bool {
        self.lane(destination).is_some()
    }

    /// What each destination is doing now.
    pub fn status(&self) -> Vec<DestinationStatus> {
        self.inner
            .lanes
            .iter()
            .map(|l| DestinationStatus {
                name: l.destination.clone(),
                paused: l.is_paused(),
                circuit_open: l.open.load(std::sync::atomic::Ordering::Relaxed),
                scheduled: l.lock_queue().len(),
                order_keys: l.order_keys(),
            })
            .collect()
    }

    /// The spool.
    pub fn spool(&self) -> &Arc<dyn Spool> {
        &self.inner.spool
    }

    fn lane(&self, destination: &str) -> Option<&Arc<Lane>> {
        self.inner
            .lanes
            .iter()
            .find(|l| l.destination == destination)
    }

    /// The lane holding `event`'s copy.
    fn lane_of(&self, event: &Event) -> Option<&Arc<Lane>> {
        self.lane(event.destination_name())
    }

    /// Steps 13–14: appends `event` and, once it commits, commits its dedup `reservation` and
    /// schedules it at each destination it goes to; resolves with the outcome to answer. If the
    /// returned future is dropped before the append resolves (the sender hung up), the rest
    /// still happens, on the current tokio runtime: an event that commits is always delivered,
    /// and the sender's retry of it is a duplicate, never a second event (DESIGN §3). A route
    /// whose destinations filter or order reads the body as JSON to decide (see
    /// [`accept_parsed`](Self::accept_parsed) to pass the payload already parsed).
    pub fn accept(&self, event: Event, reservation: Option<Reserved>) -> Accepting {
        if self.inner.filters || self.inner.orders {
            let payload = serde_json::from_slice::<Value>(&event.body).ok();
            self.accept_parsed(event, reservation, payload.as_ref())
        } else {
            self.accept_parsed(event, reservation, None)
        }
    }

    /// [`accept`](Self::accept) with the payload parsed already (`None`: not JSON), to decide
    /// the destinations' filters and ordering keys.
    pub fn accept_parsed(
        &self,
        mut event: Event,
        reservation: Option<Reserved>,
        payload: Option<&Value>,
    ) -> Accepting {
        if self.inner.listed {
            event.destinations = self.fan_out(&event, payload);
        }
        Accepting {
            completion: self.inner.spool.append(&event),
            pending: Some((event, reservation)),
            deliverer: self.clone(),
        }
    }

    /// Where `event` goes: each destination, filtered out or not, with its ordering key.
    fn fan_out(&self, event: &Event, payload: Option<&Value>) -> Vec<Fanout> {
        self.inner
            .lanes
            .iter()
            .map(|l| {
                let filtered = l.filter.as_ref().is_some_and(|f| !f.matches(payload));
                let order = match (&l.order, filtered) {
                    (Some(spec), false) => spec.of(&event.headers, payload),
                    _ => None,
                };
                Fanout {
                    destination: l.destination.clone(),
                    filtered,
                    order,
                }
            })
            .collect()
    }

    /// The outcome of an append: on commit, the key is kept and the event scheduled.
    fn settle(
        &self,
        event: Event,
        reservation: Option<Reserved>,
        result: Result<(), SpoolError>,
    ) -> Outcome {
        let outcome = outcome::appended(&self.inner.route, event.id, result);
        let accepted = outcome.counted() == Counted::Accepted;
        if let Some(r) = &reservation {
            r.settle(accepted);
        }
        if accepted {
            self.schedule_new(event);
        }
        outcome
    }

    /// Schedules a newly appended event (already durable in the spool) for an attempt now at
    /// each destination it goes to.
    pub fn schedule_new(&self, event: Event) {
        if self.inner.lanes.len() == 1 && event.destinations.is_empty() {
            let lane = &self.inner.lanes[0];
            schedule_on(lane, event.for_destination(&lane.destination));
            return;
        }
        let goes: Vec<&Arc<Lane>> = self
            .inner
            .lanes
            .iter()
            .filter(|l| event.delivered_to().any(|d| d == l.destination))
            .collect();
        let Some((last, first)) = goes.split_last() else {
            return;
        };
        for lane in first {
            schedule_on(lane, event.clone().for_destination(&lane.destination));
        }
        schedule_on(last, event.for_destination(&last.destination));
    }

    /// Events waiting for an attempt in this process, at every destination (not counting those
    /// in flight).
    pub fn scheduled(&self) -> usize {
        self.inner.lanes.iter().map(|l| l.lock_queue().len()).sum()
    }

    /// Up to `limit` of this route's dead letters, at every destination, oldest first, after
    /// `after` (bodies not read). An event dead at two destinations is listed once for each,
    /// together on one page.
    pub fn dead_letters(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<EventSummary>, SpoolError> {
        let mut all = Vec::new();
        for lane in &self.inner.lanes {
            all.extend(self.inner.spool.dead_letters(&lane.lane, after, limit)?);
        }
        all.sort_by_key(|s| s.id);
        // Never cut between two destinations' entries of one event: the next page starts
        // after its id.
        if all.len() > limit {
            let last = all[limit.max(1) - 1].id;
            let end = all.iter().position(|s| s.id > last).unwrap_or(all.len());
            all.truncate(end);
        }
        Ok(all)
    }

    /// This route's dead letter `id`, with its body (its first destination's copy holding it).
    pub fn dead_letter(&self, id: Uuid) -> Result<Option<Event>, SpoolError> {
        for lane in &self.inner.lanes {
            if let Some(e) = self.inner.spool.get_dead(&lane.lane, id)? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// Moves dead letter `id` back to the spool, at every destination where it is dead, and
    /// schedules it now (its attempt limit counts afresh; its id and history are kept).
    pub async fn replay(&self, id: Uuid) -> Result<(), SpoolError> {
        self.at_each_destination(id, |lane| async move {
            let event = self.inner.spool.revive(&lane.lane, id).await?;
            if !lane.shared {
                lane.metrics.dead_letters.dec();
                lane.metrics.spool_depth.inc();
                let event = event.for_destination(&lane.destination);
                if lane.admit(id, event.order_key()) {
                    lane.push(event.next_attempt_ms, id);
                }
            }
            tracing::info!(route = %self.inner.route, destination = %lane.destination, event_id = %id, "dead letter replayed");
            Ok(())
        })
        .await
    }

    /// Runs `op` at every destination; [`SpoolError::NotFound`] unless it found `id` at one.
    async fn at_each_destination<'a, F, Fut>(&'a self, id: Uuid, op: F) -> Result<(), SpoolError>
    where
        F: Fn(&'a Arc<Lane>) -> Fut,
        Fut: Future<Output = Result<(), SpoolError>>,
    {
        let mut found = false;
        for lane in &self.inner.lanes {
            match op(lane).await {
                Ok(()) => found = true,
                Err(SpoolError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if found {
            Ok(())
        } else {
            Err(SpoolError::NotFound(id))
        }
    }

    /// Takes over an event a replay made pending again at its destination (from the dead
    /// letters if `was_dead`): queued for an attempt now (a shared spool's instances claim it
    /// themselves).
    pub(crate) fn replayed(&self, event: Event, was_dead: bool) {
        let Some(lane) = self.lane_of(&event) else {
            return;
        };
        if lane.shared {
            return;
        }
        if was_dead {
            lane.metrics.dead_letters.dec();
        }
        lane.metrics.spool_depth.inc();
        let (due, id) = (event.next_attempt_ms, event.id);
        if lane.admit(id, event.order_key()) {
            lane.keep_hot(event);
            lane.push(due, id);
        }
    }

    /// Counts an event of a replay job at `destination`: queued for delivery again, or
    /// skipped.
    pub(crate) fn count_replay(&self, destination: &str, queued: bool) {
        let Some(lane) = self.lane(destination) else {
            return;
        };
        let m = &lane.metrics;
        if queued {
            m.replay_queued.inc();
        } else {
            m.replay_skipped.inc();
        }
    }

    /// Sets `hookgate_events_retained` of the route.
    pub(crate) fn set_retained(&self, n: u64) {
        self.inner.lanes[0]
            .metrics
            .retained
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Replays every dead letter of the route; returns how many. One replayed concurrently by
    /// someone else is not counted twice.
    pub async fn replay_all(&self) -> Result<usize, SpoolError> {
        self.each_dead_letter(|id| self.replay(id)).await
    }

    /// Deletes dead letter `id` for good, at every destination where it is dead.
    pub async fn purge(&self, id: Uuid) -> Result<(), SpoolError> {
        self.at_each_destination(id, |lane| async move {
            self.inner.spool.purge(&lane.lane, id).await?;
            if !lane.shared {
                lane.metrics.dead_letters.dec();
            }
            tracing::info!(route = %self.inner.route, destination = %lane.destination, event_id = %id, "dead letter purged");
            Ok(())
        })
        .await
    }

    /// Deletes every dead letter of the route; returns how many.
    pub async fn purge_all(&self) -> Result<usize, SpoolError> {
        self.each_dead_letter(|id| self.purge(id)).await
    }

    /// Applies `f` to every dead letter, a page at a time; counts those it did.
    async fn each_dead_letter<F, Fut>(&self, f: F) -> Result<usize, SpoolError>
    where
        F: Fn(Uuid) -> Fut,
        Fut: Future<Output = Result<(), SpoolError>>,
    {
        const PAGE: usize = 256;
        let mut done = 0;
        let mut after = None;
        loop {
            let page = self.dead_letters(after, PAGE)?;
            let mut seen = HashSet::new();
            for d in &page {
                if !seen.insert(d.id) {
                    continue;
                }
                match f(d.id).await {
                    Ok(()) => done += 1,
                    // Replayed or purged by another call meanwhile.
                    Err(SpoolError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            match page.last() {
                Some(last) if page.len() >= PAGE => after = Some(last.id),
                _ => return Ok(done),
            }
        }
    }

    /// Pauses destination `destination`: events go on being acknowledged and wait; no attempt
    /// starts (those in flight end), and its circuit is left as it is. Stored in the spool, so
    /// it survives a restart and holds for every instance sharing the spool. Returns whether
    /// it was running; [`SpoolError::NotFound`] (a nil id) if there is no such destination.
    pub async fn pause(&self, destination: &str) -> Result<bool, SpoolError> {
        self.set_paused(destination, true).await
    }

    /// Resumes destination `destination` (see [`pause`](Self::pause)): returns whether it was
    /// paused.
    pub async fn resume(&self, destination: &str) -> Result<bool, SpoolError> {
        self.set_paused(destination, false).await
    }

    async fn set_paused(&self, destination: &str, paused: bool) -> Result<bool, SpoolError> {
        let lane = self
            .lane(destination)
            .ok_or(SpoolError::NotFound(Uuid::nil()))?;
        let value = paused.then(|| format!("{{\"at_ms\":{}}}", now_ms()).into_bytes());
        self.inner
            .spool
            .meta_put(&pause_key(&lane.lane), value)
            .await?;
        let was = lane.is_paused();
        lane.set_paused(paused);
        let state = if paused { "paused" } else { "resumed" };
        tracing::info!(route = %self.inner.route, destination, state, "destination {state}");
        Ok(was != paused)
    }

    /// Whether destination `destination` is paused (`None`: no such destination).
    pub fn is_paused(&self, destination: &str) -> Option<bool> {
        self.lane(destination).map(|l| l.is_paused())
    }

    /// Stops dispatching at once, leaving every event in the spool (for a misconfiguration that
    /// makes delivering unsafe).
    pub fn halt(&self) {
        for lane in &self.inner.lanes {
            lane.stop.send_replace(true);
        }
    }

    /// Stops dispatching and waits up to `grace` for attempts in flight to finish. Events not
    /// delivered stay in the spool for the next start. Dropping every handle stops the worker
    /// too, without waiting.
    pub async fn shutdown(&self, grace: Duration) {
        self.halt();
        let deadline = tokio::time::Instant::now() + grace;
        for lane in &self.inner.lanes {
            let all = u32::try_from(lane.policy.concurrency.max(1)).unwrap_or(u32::MAX);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let _ = tokio::time::timeout(left, lane.permits.acquire_many(all)).await;
        }
    }
}

/// Checks a route's name and its destinations: at least one, names valid and unique.
fn check_destinations(route: &str, destinations: &[Destination]) -> Result<(), ConfigError> {
    let invalid = |key: &str, reason: String| ConfigError::InvalidValue {
        key: key.to_owned(),
        reason,
    };
    if route.contains(LANE_SEPARATOR) {
        return Err(invalid(
            "route",
            format!("{route:?}: a route's name cannot hold {LANE_SEPARATOR:?}"),
        ));
    }
    if destinations.is_empty() {
        return Err(invalid(
            "destinations",
            "a route needs a destination".into(),
        ));
    }
    let mut names = HashSet::new();
    for (i, d) in destinations.iter().enumerate() {
        Destination::check_name(&format!("destinations[{i}].name"), &d.name)?;
        if !names.insert(d.name.as_str()) {
            return Err(invalid(
                &format!("destinations[{i}].name"),
                format!("{:?} is used by another destination of the route", d.name),
            ));
        }
    }
    Ok(())
}

/// Schedules `event` (its destination's copy, already durable) on `lane`: straight to an
/// attempt when it can go now, else in the queue; an ordered event behind another of its key
/// waits for it.
fn schedule_on(lane: &Arc<Lane>, event: Event) {
    if lane.shared {
        // Claimed from the shared spool by whichever instance reads it first.
        return;
    }
    lane.metrics.spool_depth.inc();
    if !lane.admit(event.id, event.order_key()) {
        return;
    }
    // The common case, straight to an attempt: a target, a free slot, nobody due before it,
    // not paused, not paced (and a runtime to run it on: outside one, the worker's dispatcher
    // takes it).
    if let (Some(target), Ok(runtime)) = (lane.target.get(), tokio::runtime::Handle::try_current())
    {
        if !*lane.stop.borrow()
            && !lane.open.load(std::sync::atomic::Ordering::Relaxed)
            && !lane.is_paused()
            && lane.pacer.is_none()
            && lane.lock_queue().is_empty()
        {
            if let Ok(permit) = lane.permits.clone().try_acquire_owned() {
                runtime.spawn(dispatch::attempt(
                    lane.clone(),
                    target.clone(),
                    event,
                    permit,
                    false,
                ));
                return;
            }
        }
    }
    let id = event.id;
    lane.keep_hot(event);
    lane.push(now_ms(), id);
}

/// Schedules every pending event of `lane` again at its next attempt time (a spool this process
/// owns, at start), and sets its gauges. An ordered lane reads each event's key: only the first
/// of each key is scheduled.
fn recover(lane: &Lane) -> Result<(), SpoolError> {
    let schedule = lane.spool.pending_schedule(&lane.lane)?;
    let dead = lane.spool.dead_letters(&lane.lane, None, usize::MAX)?.len();
    lane.metrics.spool_depth.set(schedule.len() as i64);
    lane.metrics.dead_letters.set(dead as i64);
    let mut queue = lane.lock_queue();
    for (id, due) in schedule {
        let key = if lane.order.is_some() {
            match lane.spool.get(&lane.lane, id) {
                Ok(Some(e)) => e.order_key(),
                Ok(None) => continue,
                Err(e @ SpoolError::Corrupt(..)) => {
                    tracing::error!(route = %lane.route, destination = %lane.destination, event_id = %id, error = %e, "an event in the spool cannot be read: it is left there, not delivered");
                    continue;
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        if lane.admit(id, key) {
            queue.push(std::cmp::Reverse((due, id)));
        }
    }
    Ok(())
}

/// The future of [`Deliverer::accept`]: resolves with the outcome of steps 13–14. Dropped before
/// then, it finishes in the background (see `accept`).
#[must_use = "the outcome is the answer to send; dropping it only gives up the answer"]
pub struct Accepting {
    completion: Completion,
    pending: Option<(Event, Option<Reserved>)>,
    deliverer: Deliverer,
}

impl Future for Accepting {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        // Every field is Unpin.
        let this = self.get_mut();
        let result = std::task::ready!(Pin::new(&mut this.completion).poll(cx));
        let Some((event, reservation)) = this.pending.take() else {
            return Poll::Ready(Outcome::Rejected(crate::core::Rejection::SpoolUnavailable));
        };
        Poll::Ready(this.deliverer.settle(event, reservation, result))
    }
}

impl Drop for Accepting {
    fn drop(&mut self) {
        let Some((event, reservation)) = self.pending.take() else {
            return;
        };
        // The caller left before the append resolved; it may still commit.
        let completion = std::mem::replace(&mut self.completion, Completion::ready(Ok(())));
        let deliverer = self.deliverer.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let result = completion.await;
                    deliverer.settle(event, reservation, result);
                });
            }
            Err(_) => {
                // No runtime to finish on: a committed event is delivered after the next start
                // (recovery schedules every pending event); the reservation is released.
                tracing::warn!(route = %deliverer.inner.route, event_id = %event.id, "append abandoned outside a runtime; delivered after a restart if it committed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::deliver::target::AttemptFuture;
    use crate::deliver::AttemptResult;
    use crate::metrics::Metrics;
    use crate::store::memory::MemorySpool;
    use crate::store::{
        Completion, DedupRecord, DeliveryStatus, EventDetail, EventPage, EventQuery, SpoolFuture,
        SpoolStats,
    };

    /// A spool whose first `failures` moves to the dead letters fail (a disk error), over a
    /// real in-memory spool.
    struct FailingDeadLetters {
        spool: MemorySpool,
        failures: AtomicUsize,
        /// When set, a delivery's record is written only once a permit is added here (a slow
        /// disk): `delivered` resolves then.
        slow_records: Option<Arc<tokio::sync::Semaphore>>,
    }

    impl Spool for FailingDeadLetters {
        fn append(&self, e: &Event) -> Completion {
            self.spool.append(e)
        }
        fn get(&self, r: &str, id: Uuid) -> Result<Option<Event>, SpoolError> {
            self.spool.get(r, id)
        }
        fn delivered(&self, e: &Event) -> Completion {
            let Some(gate) = self.slow_records.clone() else {
                return self.spool.delivered(e);
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let written = self.spool.delivered(e);
            tokio::spawn(async move {
                let _permit = gate.acquire().await;
                let _ = tx.send(written.await);
            });
            Completion::waiting(rx)
        }
        fn reschedule(&self, e: &Event) -> Completion {
            self.spool.reschedule(e)
        }
        fn dead_letter(&self, e: &Event) -> Completion {
            let left = self.failures.load(Ordering::SeqCst);
            if left > 0 {
                self.failures.store(left - 1, Ordering::SeqCst);
                return Completion::ready(Err(SpoolError::Storage("disk full".into())));
            }
            self.spool.dead_letter(e)
        }
        fn pending(&self) -> Result<Vec<Event>, SpoolError> {
            self.spool.pending()
        }
        fn pending_schedule(&self, r: &str) -> Result<Vec<(Uuid, u64)>, SpoolError> {
            self.spool.pending_schedule(r)
        }
        fn dedup_keys(&self) -> Result<Vec<DedupRecord>, SpoolError> {
            self.spool.dedup_keys()
        }
        fn dead_letters(
            &self,
            r: &str,
            after: Option<Uuid>,
            limit: usize,
        ) -> Result<Vec<EventSummary>, SpoolError> {
            self.spool.dead_letters(r, after, limit)
        }
        fn get_dead(&self, r: &str, id: Uuid) -> Result<Option<Event>, SpoolError> {
            self.spool.get_dead(r, id)
        }
        fn revive(&self, r: &str, id: Uuid) -> Completion<Event> {
            self.spool.revive(r, id)
        }
        fn purge(&self, r: &str, id: Uuid) -> Completion {
            self.spool.purge(r, id)
        }
        fn events(&self, q: &EventQuery) -> SpoolFuture<'_, EventPage> {
            self.spool.events(q)
        }
        fn event(&self, id: Uuid) -> SpoolFuture<'_, Option<EventDetail>> {
            self.spool.event(id)
        }
        fn replay(
            &self,
            id: Uuid,
            d: &str,
            job: &str,
        ) -> Completion<Option<(Event, DeliveryStatus)>> {
            self.spool.replay(id, d, job)
        }
        fn retained(&self) -> SpoolFuture<'_, Vec<(String, u64)>> {
            self.spool.retained()
        }
        fn meta_get(&self, key: &str) -> SpoolFuture<'_, Option<Vec<u8>>> {
            self.spool.meta_get(key)
        }
        fn meta_put(&self, key: &str, value: Option<Vec<u8>>) -> Completion {
            self.spool.meta_put(key, value)
        }
        fn meta_list(&self, prefix: &str) -> SpoolFuture<'_, Vec<(String, Vec<u8>)>> {
            self.spool.meta_list(prefix)
        }
        fn meta_add(&self, key: &str, by: i64) -> Completion<i64> {
            self.spool.meta_add(key, by)
        }
        fn meta_counter(&self, key: &str) -> SpoolFuture<'_, i64> {
            self.spool.meta_counter(key)
        }
        fn stats(&self) -> SpoolStats {
            self.spool.stats()
        }
        fn oldest_pending_ms(&self, r: &str) -> Option<u64> {
            self.spool.oldest_pending_ms(r)
        }
        fn sweep_expired_keys(&self) -> Completion<usize> {
            self.spool.sweep_expired_keys()
        }
        fn probe(&self) -> Completion {
            self.spool.probe()
        }
    }

    /// Answers every attempt 400: straight to the dead letters.
    struct Refuses;

    impl Target for Refuses {
        fn deliver(&self, _: &Event) -> AttemptFuture {
            Box::pin(async {
                AttemptResult::Status {
                    code: 400,
                    retry_after: None,
                }
            })
        }
    }

    #[tokio::test]
    async fn a_dead_letter_that_cannot_be_stored_stays_queued_and_is_tried_again() {
        let spool = Arc::new(FailingDeadLetters {
            spool: MemorySpool::new(100, 1 << 20),
            failures: AtomicUsize::new(1),
            slow_records: None,
        });
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        let deliverer = Deliverer::start(
            "r",
            spool.clone(),
            DeliveryPolicy::default(),
            metrics.route("r").delivery().clone(),
        )
        .unwrap()
        .with_target(Arc::new(Refuses));
        let e = Event::new(
            "r",
            "127.0.0.1".parse().unwrap(),
            "POST",
            "/",
            vec![],
            "{}".into(),
        );
        spool.append(&e).await.unwrap();
        deliverer.schedule_new(e.clone());
        // The first move fails; the event is not left off the queue until a restart.
        // (A bounded wait: the retry comes DEAD_LETTER_RETRY later.)
        for _ in 0..300 {
            if spool.stats().dead == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stats = spool.stats();
        assert_eq!((stats.pending, stats.dead), (0, 1), "{stats:?}");
        assert_eq!(metrics.route("r").delivery().dead_letters.get(), 1);
    }

    /// An ordered destination sends the next event of a key only once the one before it is
    /// recorded delivered: a process killed in between cannot send the first again after the
    /// second.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_of_a_key_waits_for_the_record_of_the_one_before() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let spool = Arc::new(FailingDeadLetters {
            spool: MemorySpool::new(100, 1 << 20),
            failures: AtomicUsize::new(0),
            slow_records: Some(gate.clone()),
        });
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let s = seen.clone();
        let app = Destination::new("app")
            .with_target(crate::deliver::handler_fn(
                move |ev: crate::deliver::DeliveredEvent| {
                    let s = s.clone();
                    async move {
                        s.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(ev.body()).into_owned());
                        Ok(())
                    }
                },
            ))
            .with_order(crate::core::OrderKey::parse("order", "/k").unwrap());
        let (deliverer, worker) =
            Deliverer::with_destinations("r", spool.clone(), &metrics, vec![app]).unwrap();
        tokio::spawn(worker);
        let event = |n: u32| {
            Event::new(
                "r",
                "127.0.0.1".parse().unwrap(),
                "POST",
                "/",
                vec![],
                format!(r#"{{"k":"a","n":{n}}}"#).into(),
            )
        };
        for n in 0..2 {
            let outcome = deliverer.accept(event(n), None).await;
            assert_eq!(outcome.counted(), Counted::Accepted);
        }
        let first = wait(|| !seen.lock().unwrap().is_empty()).await;
        assert!(first, "the first is delivered");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "the second waits while the first's record is being written"
        );
        gate.add_permits(10);
        assert!(wait(|| seen.lock().unwrap().len() == 2).await);
        assert_eq!(
            *seen.lock().unwrap(),
            [r#"{"k":"a","n":0}"#, r#"{"k":"a","n":1}"#]
        );
    }

    /// Waits (5 s at most) until `done` holds.
    async fn wait(done: impl Fn() -> bool) -> bool {
        for _ in 0..250 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}
