//! One route's delivery worker: a schedule of due events, a dispatcher, and at most
//! `concurrency` attempts in flight.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::policy::{classify, retry_delay, DeliveryPolicy, Verdict};
use super::target::Target;
use crate::metrics::DeliveryMetrics;
use crate::store::{now_ms, Event, Spool, SpoolError};

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
        let schedule = spool.pending_schedule(&route)?;
        let dead = spool
            .dead_letters(usize::MAX)?
            .iter()
            .filter(|e| e.route == route)
            .count();
        metrics.spool_depth.set(schedule.len() as i64);
        metrics.dead_letters.set(dead as i64);
        let queue = schedule
            .into_iter()
            .map(|(id, due)| Reverse((due, id)))
            .collect();
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
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
        });
        let worker = {
            let inner = inner.clone();
            async move {
                tokio::join!(dispatch(inner.clone()), track_oldest(inner));
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

    /// Schedules a newly appended event (already durable in the spool) for an attempt now.
    pub fn schedule_new(&self, event: Event) {
        let inner = &self.inner;
        inner.metrics.spool_depth.inc();
        // The common case, straight to an attempt: a target, a free slot, nobody due before it
        // (and a runtime to run it on: outside one, the worker's dispatcher takes it).
        if let (Some(target), Ok(runtime)) =
            (inner.target.get(), tokio::runtime::Handle::try_current())
        {
            if !*inner.stop.borrow() && inner.lock_queue().is_empty() {
                if let Ok(permit) = inner.permits.clone().try_acquire_owned() {
                    runtime.spawn(attempt(inner.clone(), target.clone(), event, permit));
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

    /// This route's dead letters, oldest first, at most `limit`.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<Event>, SpoolError> {
        Ok(self
            .inner
            .spool
            .dead_letters(usize::MAX)?
            .into_iter()
            .filter(|e| e.route == self.inner.route)
            .take(limit)
            .collect())
    }

    /// Moves dead letter `id` back to the spool and schedules it now (its attempt limit counts
    /// afresh; its id and history are kept).
    pub async fn replay(&self, id: Uuid) -> Result<(), SpoolError> {
        self.owned_dead_letter(id)?;
        self.revive(id).await
    }

    /// Replays every dead letter of the route; returns how many.
    pub async fn replay_all(&self) -> Result<usize, SpoolError> {
        let ids = self.dead_letter_ids()?;
        for id in &ids {
            self.revive(*id).await?;
        }
        Ok(ids.len())
    }

    /// Deletes dead letter `id` for good.
    pub async fn purge(&self, id: Uuid) -> Result<(), SpoolError> {
        self.owned_dead_letter(id)?;
        self.delete_dead_letter(id).await
    }

    /// Deletes every dead letter of the route; returns how many.
    pub async fn purge_all(&self) -> Result<usize, SpoolError> {
        let ids = self.dead_letter_ids()?;
        for id in &ids {
            self.delete_dead_letter(*id).await?;
        }
        Ok(ids.len())
    }

    fn dead_letter_ids(&self) -> Result<Vec<Uuid>, SpoolError> {
        Ok(self
            .dead_letters(usize::MAX)?
            .iter()
            .map(|e| e.id)
            .collect())
    }

    async fn revive(&self, id: Uuid) -> Result<(), SpoolError> {
        let event = self.inner.spool.revive(id).await?;
        self.inner.metrics.dead_letters.dec();
        self.inner.metrics.spool_depth.inc();
        self.inner.push(event.next_attempt_ms, id);
        tracing::info!(route = %self.inner.route, event_id = %id, "dead letter replayed");
        Ok(())
    }

    async fn delete_dead_letter(&self, id: Uuid) -> Result<(), SpoolError> {
        self.inner.spool.purge(id).await?;
        self.inner.metrics.dead_letters.dec();
        tracing::info!(route = %self.inner.route, event_id = %id, "dead letter purged");
        Ok(())
    }

    fn owned_dead_letter(&self, id: Uuid) -> Result<(), SpoolError> {
        match self.inner.spool.get_dead(id)? {
            Some(e) if e.route == self.inner.route => Ok(()),
            _ => Err(SpoolError::NotFound(id)),
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
        self.lock_queue().push(Reverse((due_ms, id)));
        self.wake.notify_one();
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

async fn dispatch(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let target = loop {
        if let Some(t) = inner.target.get() {
            break t.clone();
        }
        tokio::select! {
            _ = inner.target_set.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    };
    loop {
        let permit = tokio::select! {
            p = inner.permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let id = loop {
            match inner.pop_due() {
                Ok(id) => break id,
                Err(wait) => {
                    let sleep = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600)));
                    tokio::select! {
                        _ = sleep => {}
                        _ = inner.wake.notified() => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        };
        let stored = match inner.take_hot(id) {
            Some(e) => Ok(Some(e)),
            None => inner.spool.get(&inner.route, id),
        };
        match stored {
            Ok(Some(event)) => {
                tokio::spawn(attempt(inner.clone(), target.clone(), event, permit));
            }
            // Delivered or dead-lettered meanwhile (a replayed duplicate schedule): nothing to do.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(route = %inner.route, event_id = %id, error = %e, "cannot read event from the spool; retrying in 1s");
                inner.push(now_ms() + 1000, id);
            }
        }
    }
}

async fn attempt(
    inner: Arc<Inner>,
    target: Arc<dyn Target>,
    mut event: Event,
    _permit: OwnedSemaphorePermit,
) {
    let route = &inner.route;
    let id = event.id;
    event.attempts += 1;
    let started = Instant::now();
    let result = target.deliver(&event).await;
    let m = &inner.metrics;
    m.duration.observe(started.elapsed().as_secs_f64());
    let verdict = classify(&result);
    if !matches!(verdict, Verdict::Success) {
        // A delivered event's history goes with it: only failures are worth the formatting.
        event.record_outcome(result.to_string());
    }
    let dead_letter = |reason: &str| {
        m.dead_letter.inc();
        m.attempts.observe(f64::from(event.attempts));
        m.spool_depth.dec();
        m.dead_letters.inc();
        tracing::warn!(%route, event_id = %id, attempt = event.attempts, outcome = %result, reason, "event dead-lettered");
    };
    match verdict {
        Verdict::Success => {
            m.success.inc();
            m.attempts.observe(f64::from(event.attempts));
            m.spool_depth.dec();
            tracing::info!(%route, event_id = %id, attempt = event.attempts, outcome = %result, "event delivered");
            // Not awaited: nobody waits on this record (the writer logs a failed commit), and
            // losing it only means one repeat after a restart.
            inner.spool.forget_delivered(&event);
        }
        Verdict::Reject => {
            dead_letter("rejected by the target");
            if let Err(e) = inner.spool.dead_letter(&event).await {
                tracing::error!(%route, event_id = %id, error = %e, "cannot move the event to the dead letters");
            }
        }
        Verdict::Retry { not_before } => {
            let tries = event.attempts - event.attempts_before_replay;
            let now = now_ms();
            let age = Duration::from_millis(now.saturating_sub(event.window_start_ms));
            if tries >= inner.policy.max_attempts || age >= inner.policy.max_age {
                dead_letter(if tries >= inner.policy.max_attempts {
                    "max_attempts reached"
                } else {
                    "max_age reached"
                });
                if let Err(e) = inner.spool.dead_letter(&event).await {
                    tracing::error!(%route, event_id = %id, error = %e, "cannot move the event to the dead letters");
                }
                return;
            }
            let delay = retry_delay(&inner.policy, tries, fastrand::f64(), not_before);
            event.next_attempt_ms = now + delay.as_millis() as u64;
            m.retry.inc();
            tracing::info!(%route, event_id = %id, attempt = event.attempts, outcome = %result, retry_in_ms = delay.as_millis() as u64, "delivery failed; will retry");
            if let Err(e) = inner.spool.reschedule(&event).await {
                tracing::warn!(%route, event_id = %id, error = %e, "cannot store the retry schedule; retrying from memory");
            }
            let due = event.next_attempt_ms;
            inner.keep_hot(event);
            inner.push(due, id);
        }
    }
}

/// Keeps `hookgate_spool_oldest_age_seconds` current, once a second, and every ten minutes
/// deletes the spool's expired dedup keys.
async fn track_oldest(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        ticks += 1;
        if ticks.is_multiple_of(600) {
            if let Err(e) = inner.spool.sweep_expired_keys() {
                tracing::warn!(route = %inner.route, error = %e, "cannot sweep expired dedup keys");
            }
        }
        let age = inner
            .spool
            .oldest_pending_ms(&inner.route)
            .map(|oldest| now_ms().saturating_sub(oldest) as f64 / 1000.0)
            .unwrap_or(0.0);
        inner.metrics.oldest_age.set(age);
    }
}
