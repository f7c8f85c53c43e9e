//! One route's delivery worker: a schedule of due events, a dispatcher, and at most
//! `concurrency` attempts in flight.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::circuit::{Change, Circuit, Gate, Health};
use super::policy::{classify, retry_delay, DeliveryPolicy, Verdict};
use super::target::Target;
use crate::core::outcome::{self, Counted, Outcome};
use crate::metrics::DeliveryMetrics;
use crate::store::{
    now_ms, AttemptKind, Completion, Event, EventSummary, Reserved, Spool, SpoolError,
};

/// Events kept in memory for their next attempt, at most (about 4 MiB of webhook payloads).
const HOT_EVENTS: usize = 4096;

/// Delivers one route's events from the spool to its target, retrying by the policy. Cheap to
/// clone; all clones drive one worker, which stops (leaving undelivered events in the spool)
/// when the last clone is dropped, if [`shutdown`](Deliverer::shutdown) was not called first.
#[derive(Clone)]
pub struct Deliverer {
    inner: Arc<Inner>,
    _running: Arc<StopOnDrop>,
}

/// Held by the handles, not by the worker's own tasks: its drop stops them.
struct StopOnDrop(Arc<Inner>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.send_replace(true);
    }
}

struct Inner {
    route: String,
    spool: Arc<dyn Spool>,
    target: OnceLock<Arc<dyn Target>>,
    target_set: Notify,
    policy: DeliveryPolicy,
    metrics: DeliveryMetrics,
    queue: Mutex<BinaryHeap<Reverse<(u64, Uuid)>>>,
    /// Events handed over in memory (fresh appends, retries), so an attempt need not read them
    /// back from the spool; bounded by [`HOT_EVENTS`], beyond which attempts read the spool.
    hot: Mutex<HashMap<Uuid, Event>>,
    wake: Notify,
    stop: watch::Sender<bool>,
    permits: Arc<Semaphore>,
    /// The route's circuit breaker; `open` mirrors it for the per-event fast path.
    circuit: Mutex<Circuit>,
    open: AtomicBool,
    /// The circuit changed (closed, or a probe ended): the dispatcher looks again.
    circuit_changed: Notify,
    /// The spool is shared by several instances: events are claimed from it, never scheduled
    /// here, and the gauges are read from it.
    shared: bool,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("route", &self.inner.route)
            .field("policy", &self.inner.policy)
            .field("scheduled", &self.scheduled())
            .finish()
    }
}

impl Deliverer {
    /// Starts the worker for `route` on the current tokio runtime: every pending event of the
    /// route in `spool` is scheduled again at its next attempt time. Attempts begin once a target
    /// is set ([`with_target`](Self::with_target) or [`set_target`](Self::set_target)).
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
    ) -> Result<(Self, impl std::future::Future<Output = ()> + Send + 'static), SpoolError> {
        let route = route.into();
        let shared = spool.shared().is_some();
        // A shared spool's events are claimed as they come due, by whichever instance; its
        // gauges are read from it once a second.
        let schedule = if shared {
            Vec::new()
        } else {
            let schedule = spool.pending_schedule(&route)?;
            let dead = spool.dead_letters(&route, None, usize::MAX)?.len();
            metrics.spool_depth.set(schedule.len() as i64);
            metrics.dead_letters.set(dead as i64);
            schedule
        };
        let queue = schedule
            .into_iter()
            .map(|(id, due)| Reverse((due, id)))
            .collect();
        let (stop, _) = watch::channel(false);
        metrics.upstream_up.set(1);
        let inner = Arc::new(Inner {
            circuit: Mutex::new(Circuit::new(
                policy.open_after,
                policy.backoff,
                policy.max_backoff,
            )),
            open: AtomicBool::new(false),
            circuit_changed: Notify::new(),
            permits: Arc::new(Semaphore::new(policy.concurrency.max(1))),
            route,
            spool,
            target: OnceLock::new(),
            target_set: Notify::new(),
            policy,
            metrics,
            queue: Mutex::new(queue),
            hot: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stop,
            shared,
        });
        let worker = {
            let inner = inner.clone();
            async move {
                if inner.shared {
                    tokio::join!(claim(inner.clone()), track_shared(inner));
                } else {
                    tokio::join!(dispatch(inner.clone()), track_oldest(inner));
                }
            }
        };
        let deliverer = Self {
            _running: Arc::new(StopOnDrop(inner.clone())),
            inner,
        };
        Ok((deliverer, worker))
    }

    /// Sets the target; returns `false` (and changes nothing) if one is set already.
    pub fn set_target(&self, target: Arc<dyn Target>) -> bool {
        let set = self.inner.target.set(target).is_ok();
        if set {
            self.inner.target_set.notify_one();
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

    /// The spool.
    pub fn spool(&self) -> &Arc<dyn Spool> {
        &self.inner.spool
    }

    /// Steps 13–14: appends `event` and, once it commits, commits its dedup `reservation` and
    /// schedules it; resolves with the outcome to answer. If the returned future is dropped
    /// before the append resolves (the sender hung up), the rest still happens, on the current
    /// tokio runtime: an event that commits is always delivered, and the sender's retry of it is a
    /// duplicate, never a second event (DESIGN §3).
    pub fn accept(&self, event: Event, reservation: Option<Reserved>) -> Accepting {
        Accepting {
            completion: self.inner.spool.append(&event),
            pending: Some((event, reservation)),
            deliverer: self.clone(),
        }
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

    /// Schedules a newly appended event (already durable in the spool) for an attempt now.
    pub fn schedule_new(&self, event: Event) {
        let inner = &self.inner;
        if inner.shared {
            // Claimed from the shared spool by whichever instance reads it first.
            return;
        }
        inner.metrics.spool_depth.inc();
        // The common case, straight to an attempt: a target, a free slot, nobody due before it
        // (and a runtime to run it on: outside one, the worker's dispatcher takes it).
        if let (Some(target), Ok(runtime)) =
            (inner.target.get(), tokio::runtime::Handle::try_current())
        {
            if !*inner.stop.borrow()
                && !inner.open.load(Ordering::Relaxed)
                && inner.lock_queue().is_empty()
            {
                if let Ok(permit) = inner.permits.clone().try_acquire_owned() {
                    runtime.spawn(attempt(inner.clone(), target.clone(), event, permit, false));
                    return;
                }
            }
        }
        let id = event.id;
        inner.keep_hot(event);
        inner.push(now_ms(), id);
    }

    /// Events waiting for an attempt (not counting those in flight).
    pub fn scheduled(&self) -> usize {
        self.inner.lock_queue().len()
    }

    /// Up to `limit` of this route's dead letters, oldest first, after `after` (bodies not read).
    pub fn dead_letters(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<EventSummary>, SpoolError> {
        self.inner
            .spool
            .dead_letters(&self.inner.route, after, limit)
    }

    /// This route's dead letter `id`, with its body.
    pub fn dead_letter(&self, id: Uuid) -> Result<Option<Event>, SpoolError> {
        self.inner.spool.get_dead(&self.inner.route, id)
    }

    /// Moves dead letter `id` back to the spool and schedules it now (its attempt limit counts
    /// afresh; its id and history are kept).
    pub async fn replay(&self, id: Uuid) -> Result<(), SpoolError> {
        let event = self.inner.spool.revive(&self.inner.route, id).await?;
        if !self.inner.shared {
            self.inner.metrics.dead_letters.dec();
            self.inner.metrics.spool_depth.inc();
            self.inner.push(event.next_attempt_ms, id);
        }
        tracing::info!(route = %self.inner.route, event_id = %id, "dead letter replayed");
        Ok(())
    }

    /// Takes over an event a replay made pending again (from the dead letters if `was_dead`):
    /// queued for an attempt now (a shared spool's instances claim it themselves).
    pub(crate) fn replayed(&self, event: Event, was_dead: bool) {
        let inner = &self.inner;
        if inner.shared {
            return;
        }
        if was_dead {
            inner.metrics.dead_letters.dec();
        }
        inner.metrics.spool_depth.inc();
        let (due, id) = (event.next_attempt_ms, event.id);
        inner.keep_hot(event);
        inner.push(due, id);
    }

    /// Counts an event of a replay job: queued for delivery again, or skipped.
    pub(crate) fn count_replay(&self, queued: bool) {
        let m = &self.inner.metrics;
        if queued {
            m.replay_queued.inc();
        } else {
            m.replay_skipped.inc();
        }
    }

    /// Sets `hookgate_events_retained` of the route.
    pub(crate) fn set_retained(&self, n: u64) {
        self.inner
            .metrics
            .retained
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Replays every dead letter of the route; returns how many. One replayed concurrently by
    /// someone else is not counted twice.
    pub async fn replay_all(&self) -> Result<usize, SpoolError> {
        self.each_dead_letter(|id| self.replay(id)).await
    }

    /// Deletes dead letter `id` for good.
    pub async fn purge(&self, id: Uuid) -> Result<(), SpoolError> {
        self.inner.spool.purge(&self.inner.route, id).await?;
        if !self.inner.shared {
            self.inner.metrics.dead_letters.dec();
        }
        tracing::info!(route = %self.inner.route, event_id = %id, "dead letter purged");
        Ok(())
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
            for d in &page {
                match f(d.id).await {
                    Ok(()) => done += 1,
                    // Replayed or purged by another call meanwhile.
                    Err(SpoolError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = Some(last.id),
                _ => return Ok(done),
            }
        }
    }

    /// Stops dispatching at once, leaving every event in the spool (for a misconfiguration that
    /// makes delivering unsafe).
    pub fn halt(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Stops dispatching and waits up to `grace` for attempts in flight to finish. Events not
    /// delivered stay in the spool for the next start. Dropping every handle stops the worker
    /// too, without waiting.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stop.send_replace(true);
        let all = u32::try_from(self.inner.policy.concurrency.max(1)).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(grace, self.inner.permits.acquire_many(all)).await;
    }
}

impl Inner {
    fn lock_queue(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Reverse<(u64, Uuid)>>> {
        // The heap stays a valid heap whatever a panicking holder did between operations.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn keep_hot(&self, event: Event) {
        let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        if hot.len() < HOT_EVENTS {
            hot.insert(event.id, event);
        }
    }

    fn take_hot(&self, id: Uuid) -> Option<Event> {
        self.hot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
    }

    fn push(&self, due_ms: u64, id: Uuid) {
        let first = {
            let mut queue = self.lock_queue();
            queue.push(Reverse((due_ms, id)));
            queue.len() == 1
        };
        // While the circuit is open the dispatcher waits for the probe's time, not for each
        // event (a down upstream costs no wake-up per event); but an empty queue's first event
        // must wake it, or the probe would wait for a sleep set when nothing was queued.
        if first || !self.open.load(Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    fn lock_circuit(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.circuit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what an attempt showed of the upstream, and logs and counts a change. Returns
    /// whether the circuit is open now.
    fn record_health(&self, health: Health, probe: bool, event: Uuid) -> bool {
        let (change, interval) = {
            let mut circuit = self.lock_circuit();
            let change = circuit.record(health, probe, event.as_u128(), Instant::now());
            self.open.store(circuit.is_open(), Ordering::Relaxed);
            (change, circuit.interval())
        };
        let route = &self.route;
        match change {
            Change::None => {}
            Change::Opened => {
                self.metrics.upstream_up.set(0);
                tracing::warn!(
                    %route,
                    failures = self.policy.open_after,
                    probe_every_ms = interval.unwrap_or_default().as_millis() as u64,
                    "upstream down: circuit open; events wait in the spool, one probe per interval"
                );
            }
            Change::Closed => {
                self.metrics.upstream_up.set(1);
                tracing::info!(
                    %route,
                    waiting = self.lock_queue().len(),
                    "upstream back: circuit closed; delivering the backlog, oldest first"
                );
                self.wake.notify_one();
            }
        }
        if probe || change != Change::None {
            self.circuit_changed.notify_one();
        }
        interval.is_some()
    }

    /// An attempt that failed with the circuit open (the probe, one in flight when it opened, or
    /// the one that opened it): its event goes back in the queue, no attempt counted. A failed
    /// probe's event goes behind the events already due, so the next probe is another one: an
    /// event only this upstream refuses cannot be the probe for ever.
    fn put_back(&self, mut event: Event, probe: bool) {
        event.attempts -= 1;
        if probe {
            event.next_attempt_ms = event.next_attempt_ms.max(now_ms());
        }
        let (id, due) = (event.id, event.next_attempt_ms);
        self.keep_hot(event);
        self.push(due, id);
    }

    /// Removes and returns the earliest event if due; otherwise how long until it is.
    fn pop_due(&self) -> Result<Uuid, Option<Duration>> {
        let mut queue = self.lock_queue();
        let now = now_ms();
        match queue.peek() {
            Some(Reverse((due, _))) if *due <= now => {
                Ok(queue.pop().map(|Reverse((_, id))| id).unwrap_or_default())
            }
            Some(Reverse((due, _))) => Err(Some(Duration::from_millis(due - now))),
            None => Err(None),
        }
    }
}

/// The route's target once it is set; `None` if the worker stops first.
async fn target_of(inner: &Inner, stop: &mut watch::Receiver<bool>) -> Option<Arc<dyn Target>> {
    loop {
        if let Some(t) = inner.target.get() {
            return Some(t.clone());
        }
        tokio::select! {
            _ = inner.target_set.notified() => {}
            _ = stop.wait_for(|s| *s) => return None,
        }
    }
}

/// While the circuit is open: waits until the probe's time (`wait`; none known, an hour) or the
/// circuit changes. `false` if the worker stops first.
async fn circuit_wait(
    inner: &Inner,
    wait: Option<Duration>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let sleep = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600)));
    tokio::select! {
        _ = sleep => true,
        _ = inner.circuit_changed.notified() => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// A free delivery slot; `None` if the worker stops first.
async fn free_slot(
    inner: &Inner,
    stop: &mut watch::Receiver<bool>,
) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        p = inner.permits.clone().acquire_owned() => p.ok(),
        _ = stop.wait_for(|s| *s) => None,
    }
}

/// How long the dispatcher waits after the spool could not be read (reopened, say) before it
/// reads again: one event tried at a time, not the whole queue at once.
const READ_RETRY: Duration = Duration::from_millis(50);

async fn dispatch(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let Some(target) = target_of(&inner, &mut stop).await else {
        return;
    };
    // The spool's reads failed last time (logged once until they work again).
    let mut unreadable = false;
    loop {
        let Some(permit) = free_slot(&inner, &mut stop).await else {
            return;
        };
        let (id, probe) = loop {
            let gate = inner.lock_circuit().gate(Instant::now());
            let probe = match gate {
                Gate::Closed => false,
                Gate::Probe => true,
                // Open: nothing goes out until the probe's time (or the probe's end).
                Gate::Wait(wait) => {
                    if !circuit_wait(&inner, wait, &mut stop).await {
                        return;
                    }
                    continue;
                }
            };
            match inner.pop_due() {
                Ok(id) => {
                    if probe {
                        inner.lock_circuit().probe_sent();
                    }
                    break (id, probe);
                }
                Err(wait) => {
                    let sleep = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600)));
                    tokio::select! {
                        _ = sleep => {}
                        _ = inner.wake.notified() => {}
                        _ = inner.circuit_changed.notified() => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        };
        let stored = match inner.take_hot(id) {
            Some(e) => Ok(Some(e)),
            None => {
                let read = inner.spool.get(&inner.route, id);
                if read.is_ok() && unreadable {
                    unreadable = false;
                    tracing::info!(route = %inner.route, "the spool reads again; delivering");
                }
                read
            }
        };
        match stored {
            Ok(Some(event)) => {
                tokio::spawn(attempt(inner.clone(), target.clone(), event, permit, probe));
            }
            // Delivered or dead-lettered meanwhile (a replayed duplicate schedule): nothing to do.
            Ok(None) => {
                if probe {
                    inner.lock_circuit().probe_unsent();
                }
            }
            // A record that cannot be decoded can never be delivered: it stays in the spool
            // for an operator, and is not scheduled again.
            Err(e @ SpoolError::Corrupt(..)) => {
                if probe {
                    inner.lock_circuit().probe_unsent();
                }
                tracing::error!(route = %inner.route, event_id = %id, error = %e, "an event in the spool cannot be read: it is left there, not delivered");
            }
            Err(e) => {
                if probe {
                    inner.lock_circuit().probe_unsent();
                }
                // The store is being reopened: back at its place in the queue, tried again in a
                // moment. Any other failure: in a second.
                let (due, wait) = match e {
                    SpoolError::Reopening => (now_ms(), READ_RETRY),
                    _ => (now_ms() + 1000, READ_RETRY),
                };
                if !unreadable {
                    unreadable = true;
                    tracing::warn!(route = %inner.route, event_id = %id, error = %e, "cannot read events from the spool; trying again");
                }
                inner.push(due, id);
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

/// One attempt at `event`. A `probe` (of an open circuit) is counted as one; an attempt that fails
/// with the circuit open (the probe, one in flight when it opened, or the one that opened it)
/// counts nothing against its event, which goes back in the queue.
async fn attempt(
    inner: Arc<Inner>,
    target: Arc<dyn Target>,
    mut event: Event,
    _permit: OwnedSemaphorePermit,
    probe: bool,
) {
    // A probe whose task ends without a result (a target that panicked) must not leave the
    // circuit waiting for it for good.
    let mut unsent = ProbeGuard {
        inner: probe.then(|| inner.clone()),
    };
    event.attempts += 1;
    let started = Instant::now();
    let result = guarded(&*target, &event, inner.policy.timeout).await;
    let took = started.elapsed();
    inner.metrics.duration.observe(took.as_secs_f64());
    let health = Health::of(&result);
    let open = inner.record_health(health, probe, event.id);
    unsent.inner = None;
    let (route, id) = (&inner.route, event.id);
    match (probe, health) {
        (true, Health::Up) => inner.metrics.probe_success.inc(),
        (true, Health::Down) => {
            inner.metrics.probe_failure.inc();
            tracing::info!(%route, event_id = %id, outcome = %result, "probe failed; the upstream is still down");
        }
        (false, Health::Down) if open => {
            tracing::debug!(%route, event_id = %id, outcome = %result, "attempt failed with the circuit open; not counted");
        }
        (false, _) => {}
    }
    if open && health == Health::Down {
        if inner.shared {
            give_back(&inner, event, probe).await;
        } else {
            inner.put_back(event, probe);
        }
        return;
    }
    settle_attempt(&inner, event, result, took).await;
}

/// One attempt, bounded by `timeout`; a panic in the target (a user's handler) is a failed
/// attempt, retried like any other, rather than an event forgotten until the next start.
fn guarded(
    target: &dyn Target,
    event: &Event,
    timeout: Duration,
) -> impl Future<Output = super::AttemptResult> + Send + 'static {
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| target.deliver(event)));
    async move {
        let attempt = match started {
            Ok(attempt) => attempt,
            Err(panic) => return panicked(&*panic),
        };
        tokio::time::timeout(timeout, CatchPanic(attempt))
            .await
            .unwrap_or(super::AttemptResult::Timeout)
    }
}

/// Polls an attempt, turning a panic into [`AttemptResult::Failed`](super::AttemptResult::Failed).
struct CatchPanic(super::target::AttemptFuture);

impl Future for CatchPanic {
    type Output = super::AttemptResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let attempt = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| attempt.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => Poll::Ready(panicked(&*panic)),
        }
    }
}

fn panicked(panic: &(dyn std::any::Any + Send)) -> super::AttemptResult {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-string payload");
    super::AttemptResult::Failed(format!("the handler panicked: {text}"))
}

/// Frees the circuit's probe slot if a probe's task ends before recording its result.
struct ProbeGuard {
    inner: Option<Arc<Inner>>,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(inner) = &self.inner {
            inner.lock_circuit().probe_unsent();
            inner.circuit_changed.notify_one();
        }
    }
}

/// What an attempt's result does to its event: delivered, dead-lettered, or rescheduled. The
/// attempt (`took` long) goes in the event's record whichever.
async fn settle_attempt(
    inner: &Arc<Inner>,
    mut event: Event,
    result: super::AttemptResult,
    took: Duration,
) {
    let route = &inner.route;
    let id = event.id;
    let m = &inner.metrics;
    let verdict = classify(&result);
    let kind = match verdict {
        Verdict::Success => AttemptKind::Delivered,
        Verdict::Retry { .. } => AttemptKind::Failed,
        Verdict::Reject => AttemptKind::Rejected,
    };
    let status = match &result {
        super::AttemptResult::Status { code, .. } => Some(*code),
        _ => None,
    };
    let took_ms = u32::try_from(took.as_millis()).unwrap_or(u32::MAX);
    event.record_attempt(kind, result.to_string(), status, took_ms);
    match verdict {
        Verdict::Success => {
            m.success.inc();
            m.attempts.observe(f64::from(event.attempts));
            if !inner.shared {
                m.spool_depth.dec();
            }
            tracing::debug!(%route, event_id = %id, attempt = event.attempts, outcome = %result, "event delivered");
            replay_settled(inner, &event, "delivered");
            // Not awaited: nobody waits on this record (the writer logs a failed commit), and
            // losing it only means one repeat after a restart.
            inner.spool.forget_delivered(&event);
        }
        Verdict::Reject => {
            dead_letter(inner, event, &result.to_string(), "rejected by the target").await;
        }
        Verdict::Retry { not_before } => {
            let tries = event.attempts - event.attempts_before_replay;
            let now = now_ms();
            let age = Duration::from_millis(now.saturating_sub(event.window_start_ms));
            if tries >= inner.policy.max_attempts || age >= inner.policy.max_age {
                let reason = if tries >= inner.policy.max_attempts {
                    "max_attempts reached"
                } else {
                    "max_age reached"
                };
                dead_letter(inner, event, &result.to_string(), reason).await;
                return;
            }
            let delay = retry_delay(&inner.policy, tries, fastrand::f64(), not_before);
            event.next_attempt_ms = now + delay.as_millis() as u64;
            m.retry.inc();
            tracing::info!(%route, event_id = %id, attempt = event.attempts, outcome = %result, retry_in_ms = delay.as_millis() as u64, "delivery failed; will retry");
            match inner.spool.reschedule(&event).await {
                // A shared spool queues it again when due, for whichever instance.
                Ok(()) if inner.shared => return,
                Ok(()) => {}
                // Gone meanwhile (delivered by a duplicate schedule, or dead-lettered).
                Err(SpoolError::NotFound(_)) => return,
                Err(e) if inner.shared => {
                    tracing::warn!(%route, event_id = %id, error = %e, "cannot store the retry schedule; the event is retried once its hold times out");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%route, event_id = %id, error = %e, "cannot store the retry schedule; retrying from memory")
                }
            }
            let due = event.next_attempt_ms;
            inner.keep_hot(event);
            inner.push(due, id);
        }
    }
}

/// Counts a replayed event's end (`delivered`, or `failed`: dead-lettered) in the metrics and
/// in its replay job's counter (wherever the job runs).
fn replay_settled(inner: &Inner, event: &Event, result: &str) {
    let Some(job) = &event.replay else {
        return;
    };
    let m = &inner.metrics;
    match result {
        "delivered" => m.replay_delivered.inc(),
        _ => m.replay_failed.inc(),
    }
    if crate::history::counted(job) {
        // Not awaited: progress, not an event.
        drop(
            inner
                .spool
                .meta_add(&crate::history::counter_key(job, result), 1),
        );
    }
}

/// How long a dead letter that could not be stored waits before the next try.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(5);

/// Moves `event` to the dead letters. If the spool cannot store the move, the event goes back
/// in the queue (a later attempt decides again) rather than staying off it until a restart.
async fn dead_letter(inner: &Arc<Inner>, event: Event, outcome: &str, reason: &str) {
    let (route, id, m) = (&inner.route, event.id, &inner.metrics);
    match inner.spool.dead_letter(&event).await {
        Ok(()) => {
            m.dead_letter.inc();
            m.attempts.observe(f64::from(event.attempts));
            if !inner.shared {
                m.spool_depth.dec();
                m.dead_letters.inc();
            }
            tracing::warn!(%route, event_id = %id, attempt = event.attempts, outcome, reason, "event dead-lettered");
            replay_settled(inner, &event, "failed");
        }
        // Delivered or dead-lettered already by a duplicate schedule: counted there.
        Err(SpoolError::NotFound(_)) => {}
        Err(e) if inner.shared => {
            tracing::error!(%route, event_id = %id, error = %e, "cannot move the event to the dead letters; it is attempted again once its hold times out");
        }
        Err(e) => {
            tracing::error!(%route, event_id = %id, error = %e, retry_in_ms = DEAD_LETTER_RETRY.as_millis() as u64, "cannot move the event to the dead letters; it stays queued");
            let due = now_ms() + DEAD_LETTER_RETRY.as_millis() as u64;
            inner.keep_hot(event);
            inner.push(due, id);
        }
    }
}

/// [`Inner::put_back`] for a shared spool: the event goes back to it, no attempt counted, due
/// as `put_back` would queue it (a failed probe's behind the others), for whichever instance's
/// circuit is closed.
async fn give_back(inner: &Arc<Inner>, mut event: Event, probe: bool) {
    event.attempts -= 1;
    event.next_attempt_ms = event.next_attempt_ms.max(now_ms());
    if probe {
        event.next_attempt_ms = now_ms() + 1;
    }
    if let Err(e) = inner.spool.reschedule(&event).await {
        tracing::warn!(route = %inner.route, event_id = %event.id, error = %e, "cannot give the event back to the shared spool; it is attempted again once its hold times out");
    }
}

/// The dispatcher of a shared spool: claims as many due events as there are free delivery
/// slots (one while the circuit wants a probe, none while it is open) and attempts each.
async fn claim(inner: Arc<Inner>) {
    /// The most events claimed at once.
    const BATCH: usize = 64;
    /// How long one claim waits for an event before looking again.
    const WAIT: Duration = Duration::from_secs(1);
    let Some(shared) = inner.spool.shared() else {
        return;
    };
    let mut stop = inner.stop.subscribe();
    let Some(target) = target_of(&inner, &mut stop).await else {
        return;
    };
    let mut failing = false;
    loop {
        let Some(first) = free_slot(&inner, &mut stop).await else {
            return;
        };
        let gate = inner.lock_circuit().gate(Instant::now());
        let probe = match gate {
            Gate::Closed => false,
            Gate::Probe => true,
            Gate::Wait(wait) => {
                drop(first);
                if !circuit_wait(&inner, wait, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        let mut permits = vec![first];
        while !probe && permits.len() < BATCH {
            match inner.permits.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        if probe {
            inner.lock_circuit().probe_sent();
        }
        let claiming = shared.claim(&inner.route, permits.len(), WAIT);
        tokio::pin!(claiming);
        let claimed = tokio::select! {
            c = &mut claiming => Some(c),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(claimed) = claimed else {
            if probe {
                inner.lock_circuit().probe_unsent();
            }
            // Let the read in flight end (a second at most): what it brings goes back to the
            // spool for another instance now, not after the visibility timeout.
            if let Ok(Ok(events)) = tokio::time::timeout(WAIT * 3, claiming).await {
                for event in events {
                    let _ = inner.spool.reschedule(&event).await;
                }
            }
            return;
        };
        match claimed {
            Ok(events) => {
                if failing {
                    failing = false;
                    tracing::info!(route = %inner.route, "claiming from the shared spool again");
                }
                if probe && events.is_empty() {
                    inner.lock_circuit().probe_unsent();
                }
                for (event, permit) in events.into_iter().zip(permits) {
                    tokio::spawn(attempt(inner.clone(), target.clone(), event, permit, probe));
                }
            }
            Err(e) => {
                if probe {
                    inner.lock_circuit().probe_unsent();
                }
                if !failing {
                    failing = true;
                    tracing::warn!(route = %inner.route, error = %e, "cannot claim events from the shared spool; trying again every second");
                }
                drop(permits);
                tokio::select! {
                    _ = tokio::time::sleep(WAIT) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

/// Runs `work` once a second until `stop` turns true, also giving up a `work` still running then
/// (the gauge readers here and in the gateway: a hung store must not hold the stop up).
pub(crate) async fn each_second_until<F, Fut>(mut stop: watch::Receiver<bool>, mut work: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = work() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Seconds since `oldest_ms`, the age gauges' value (0 with nothing pending).
fn age_seconds(oldest_ms: Option<u64>) -> f64 {
    oldest_ms
        .map(|oldest| now_ms().saturating_sub(oldest) as f64 / 1000.0)
        .unwrap_or(0.0)
}

/// Keeps a shared spool's gauges of the route current (depth, dead letters, oldest pending,
/// across every instance), once a second.
async fn track_shared(inner: Arc<Inner>) {
    let Some(shared) = inner.spool.shared() else {
        return;
    };
    each_second_until(inner.stop.subscribe(), || async {
        if let Ok(g) = shared.gauges(&inner.route).await {
            let m = &inner.metrics;
            m.spool_depth.set(g.pending as i64);
            m.dead_letters.set(g.dead as i64);
            m.oldest_age.set(age_seconds(g.oldest_ms));
        }
    })
    .await;
}

/// Keeps `hookgate_spool_oldest_age_seconds` current, once a second.
async fn track_oldest(inner: Arc<Inner>) {
    each_second_until(inner.stop.subscribe(), || async {
        let oldest = inner.spool.oldest_pending_ms(&inner.route);
        inner.metrics.oldest_age.set(age_seconds(oldest));
    })
    .await;
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
        Completion, DedupRecord, DeliveryStatus, EventPage, EventQuery, SpoolFuture, SpoolStats,
    };

    /// A spool whose first `failures` moves to the dead letters fail (a disk error), over a
    /// real in-memory spool.
    struct FailingDeadLetters {
        spool: MemorySpool,
        failures: AtomicUsize,
    }

    impl Spool for FailingDeadLetters {
        fn append(&self, e: &Event) -> Completion {
            self.spool.append(e)
        }
        fn get(&self, r: &str, id: Uuid) -> Result<Option<Event>, SpoolError> {
            self.spool.get(r, id)
        }
        fn delivered(&self, e: &Event) -> Completion {
            self.spool.delivered(e)
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
        fn event(&self, id: Uuid) -> SpoolFuture<'_, Option<(Event, DeliveryStatus)>> {
            self.spool.event(id)
        }
        fn replay(&self, id: Uuid, job: &str) -> Completion<Option<(Event, DeliveryStatus)>> {
            self.spool.replay(id, job)
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
}
