//! A lane's dispatcher (or, on a shared spool, its claimer), its attempts and what each one's
//! result does to its event.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{watch, OwnedSemaphorePermit};
use uuid::Uuid;

use super::lane::{pause_key, Lane};
use crate::deliver::circuit::{Gate, Health};
use crate::deliver::policy::{classify, retry_delay, Verdict};
use crate::deliver::target::Target;
use crate::store::{now_ms, AttemptKind, Event, SpoolError};

/// Reads whether the lane is paused from the spool (the state survives restarts and is shared
/// by every instance on a shared spool); until it is read, nothing is sent. A failed read is
/// tried again every second.
pub(super) async fn load_pause(lane: &Lane) {
    let mut stop = lane.stop.subscribe();
    loop {
        match lane.spool.meta_get(&pause_key(&lane.lane)).await {
            Ok(found) => {
                if found.is_some() {
                    tracing::info!(route = %lane.route, destination = %lane.destination, "destination paused (as it was left): events are taken and wait");
                }
                lane.set_paused(found.is_some());
                return;
            }
            Err(e) => {
                tracing::warn!(route = %lane.route, destination = %lane.destination, error = %e, "cannot read whether the destination is paused; nothing is sent until it can");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

/// Follows another instance's pause or resume of a lane of a shared spool.
async fn poll_pause(lane: &Lane) {
    if let Ok(found) = lane.spool.meta_get(&pause_key(&lane.lane)).await {
        if lane.set_paused(found.is_some()) {
            let state = if found.is_some() { "paused" } else { "resumed" };
            tracing::info!(route = %lane.route, destination = %lane.destination, state, "destination {state} (by another instance)");
        }
    }
}

/// Waits while the lane is paused; `false` if the worker stops first.
async fn unpaused(lane: &Lane, stop: &mut watch::Receiver<bool>) -> bool {
    let mut paused = lane.paused.subscribe();
    tokio::select! {
        r = paused.wait_for(|p| *p == Some(false)) => r.is_ok(),
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// The route's target once it is set; `None` if the worker stops first.
async fn target_of(lane: &Lane, stop: &mut watch::Receiver<bool>) -> Option<Arc<dyn Target>> {
    loop {
        if let Some(t) = lane.target.get() {
            return Some(t.clone());
        }
        tokio::select! {
            _ = lane.target_set.notified() => {}
            _ = stop.wait_for(|s| *s) => return None,
        }
    }
}

/// While the circuit is open: waits until the probe's time (`wait`; none known, an hour) or the
/// circuit changes. `false` if the worker stops first.
async fn circuit_wait(
    lane: &Lane,
    wait: Option<Duration>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let sleep = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600)));
    tokio::select! {
        _ = sleep => true,
        _ = lane.circuit_changed.notified() => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// A free delivery slot; `None` if the worker stops first.
async fn free_slot(lane: &Lane, stop: &mut watch::Receiver<bool>) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        p = lane.permits.clone().acquire_owned() => p.ok(),
        _ = stop.wait_for(|s| *s) => None,
    }
}

/// How long the dispatcher waits after the spool could not be read (reopened, say) before it
/// reads again: one event tried at a time, not the whole queue at once.
const READ_RETRY: Duration = Duration::from_millis(50);

pub(super) async fn dispatch(lane: Arc<Lane>) {
    let mut stop = lane.stop.subscribe();
    let Some(target) = target_of(&lane, &mut stop).await else {
        return;
    };
    // The spool's reads failed last time (logged once until they work again).
    let mut unreadable = false;
    loop {
        if !unpaused(&lane, &mut stop).await {
            return;
        }
        let Some(permit) = free_slot(&lane, &mut stop).await else {
            return;
        };
        let (id, probe) = loop {
            let gate = lane.lock_circuit().gate(Instant::now());
            let probe = match gate {
                Gate::Closed => false,
                Gate::Probe => true,
                // Open: nothing goes out until the probe's time (or the probe's end).
                Gate::Wait(wait) => {
                    if !circuit_wait(&lane, wait, &mut stop).await {
                        return;
                    }
                    continue;
                }
            };
            if lane.is_paused() {
                break (Uuid::nil(), false);
            }
            match lane.pop_due() {
                Ok(id) => {
                    if probe {
                        lane.lock_circuit().probe_sent();
                    }
                    break (id, probe);
                }
                Err(wait) => {
                    let sleep = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600)));
                    let mut paused = lane.paused.subscribe();
                    tokio::select! {
                        _ = sleep => {}
                        _ = lane.wake.notified() => {}
                        _ = lane.circuit_changed.notified() => {}
                        _ = paused.changed() => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        };
        // Paused while waiting: back to waiting for the resume.
        if id.is_nil() {
            continue;
        }
        // At the destination's rate: the slot is this event's (a retry or a replay's too).
        let wait = lane.pace();
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => {
                    lane.push(now_ms(), id);
                    return;
                }
            }
            // Paused while it waited for its slot: back in the queue.
            if lane.is_paused() {
                if probe {
                    lane.lock_circuit().probe_unsent();
                }
                lane.push(now_ms(), id);
                continue;
            }
        }
        let stored = match lane.take_hot(id) {
            Some(e) => Ok(Some(e)),
            None => {
                let read = lane.spool.get(&lane.lane, id);
                if read.is_ok() && unreadable {
                    unreadable = false;
                    tracing::info!(route = %lane.route, "the spool reads again; delivering");
                }
                read
            }
        };
        match stored {
            Ok(Some(event)) => {
                tokio::spawn(attempt(lane.clone(), target.clone(), event, permit, probe));
            }
            // Delivered or dead-lettered meanwhile (a replayed duplicate schedule): nothing to do
            // but let the next of its key go.
            Ok(None) => {
                if probe {
                    lane.lock_circuit().probe_unsent();
                }
                lane.release(id, None);
            }
            // A record that cannot be decoded can never be delivered: it stays in the spool
            // for an operator, and is not scheduled again.
            Err(e @ SpoolError::Corrupt(..)) => {
                if probe {
                    lane.lock_circuit().probe_unsent();
                }
                tracing::error!(route = %lane.route, event_id = %id, error = %e, "an event in the spool cannot be read: it is left there, not delivered");
            }
            Err(e) => {
                if probe {
                    lane.lock_circuit().probe_unsent();
                }
                // The store is being reopened: back at its place in the queue, tried again in a
                // moment. Any other failure: in a second.
                let (due, wait) = match e {
                    SpoolError::Reopening => (now_ms(), READ_RETRY),
                    _ => (now_ms() + 1000, READ_RETRY),
                };
                if !unreadable {
                    unreadable = true;
                    tracing::warn!(route = %lane.route, event_id = %id, error = %e, "cannot read events from the spool; trying again");
                }
                lane.push(due, id);
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
pub(super) async fn attempt(
    lane: Arc<Lane>,
    target: Arc<dyn Target>,
    mut event: Event,
    _permit: OwnedSemaphorePermit,
    probe: bool,
) {
    // A probe whose task ends without a result (a target that panicked) must not leave the
    // circuit waiting for it for good.
    let mut unsent = ProbeGuard {
        inner: probe.then(|| lane.clone()),
    };
    event.attempts += 1;
    let started = Instant::now();
    let result = guarded(&*target, &event, lane.policy.timeout).await;
    let took = started.elapsed();
    lane.metrics.duration.observe(took.as_secs_f64());
    let health = Health::of(&result);
    let open = lane.record_health(health, probe, event.id);
    unsent.inner = None;
    let (route, id) = (&lane.route, event.id);
    match (probe, health) {
        (true, Health::Up) => lane.metrics.probe_success.inc(),
        (true, Health::Down) => {
            lane.metrics.probe_failure.inc();
            tracing::info!(%route, event_id = %id, outcome = %result, "probe failed; the upstream is still down");
        }
        (false, Health::Down) if open => {
            tracing::debug!(%route, event_id = %id, outcome = %result, "attempt failed with the circuit open; not counted");
        }
        (false, _) => {}
    }
    if open && health == Health::Down {
        if lane.shared {
            give_back(&lane, event, probe).await;
        } else {
            lane.put_back(event, probe);
        }
        return;
    }
    settle_attempt(&lane, event, result, took).await;
}

/// One attempt, bounded by `timeout`; a panic in the target (a user's handler) is a failed
/// attempt, retried like any other, rather than an event forgotten until the next start.
fn guarded(
    target: &dyn Target,
    event: &Event,
    timeout: Duration,
) -> impl Future<Output = crate::deliver::AttemptResult> + Send + 'static {
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| target.deliver(event)));
    async move {
        let attempt = match started {
            Ok(attempt) => attempt,
            Err(panic) => return panicked(&*panic),
        };
        tokio::time::timeout(timeout, CatchPanic(attempt))
            .await
            .unwrap_or(crate::deliver::AttemptResult::Timeout)
    }
}

/// Polls an attempt, turning a panic into [`AttemptResult::Failed`](crate::deliver::AttemptResult::Failed).
struct CatchPanic(crate::deliver::target::AttemptFuture);

impl Future for CatchPanic {
    type Output = crate::deliver::AttemptResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let attempt = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| attempt.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => Poll::Ready(panicked(&*panic)),
        }
    }
}

fn panicked(panic: &(dyn std::any::Any + Send)) -> crate::deliver::AttemptResult {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-string payload");
    crate::deliver::AttemptResult::Failed(format!("the handler panicked: {text}"))
}

/// Frees the circuit's probe slot if a probe's task ends before recording its result.
struct ProbeGuard {
    inner: Option<Arc<Lane>>,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(lane) = &self.inner {
            lane.lock_circuit().probe_unsent();
            lane.circuit_changed.notify_one();
        }
    }
}

/// What an attempt's result does to its event: delivered, dead-lettered, or rescheduled. The
/// attempt (`took` long) goes in the event's record whichever.
async fn settle_attempt(
    lane: &Arc<Lane>,
    mut event: Event,
    result: crate::deliver::AttemptResult,
    took: Duration,
) {
    let route = &lane.route;
    let id = event.id;
    let m = &lane.metrics;
    let verdict = classify(&result);
    let kind = match verdict {
        Verdict::Success => AttemptKind::Delivered,
        Verdict::Retry { .. } => AttemptKind::Failed,
        Verdict::Reject => AttemptKind::Rejected,
    };
    let status = match &result {
        crate::deliver::AttemptResult::Status { code, .. } => Some(*code),
        _ => None,
    };
    let took_ms = u32::try_from(took.as_millis()).unwrap_or(u32::MAX);
    event.record_attempt(kind, result.to_string(), status, took_ms);
    match verdict {
        Verdict::Success => {
            m.success.inc();
            m.attempts.observe(f64::from(event.attempts));
            if !lane.shared {
                m.spool_depth.dec();
            }
            tracing::debug!(%route, event_id = %id, attempt = event.attempts, outcome = %result, "event delivered");
            replay_settled(lane, &event, "delivered");
            if lane.order.is_some() && event.order_key().is_some() && !lane.shared {
                // The next of its key goes once this delivery is recorded: a process killed
                // after the next was sent cannot send this one again after it.
                if let Err(e) = lane.spool.delivered(&event).await {
                    tracing::warn!(%route, destination = %lane.destination, event_id = %id, error = %e, "cannot record an ordered delivery; the next of its key goes on (after a restart this one may come again)");
                }
            } else {
                // Not awaited: nobody waits on this record (the writer logs a failed commit),
                // and losing it only means one repeat after a restart.
                lane.spool.forget_delivered(&event);
            }
            lane.release(id, event.order_key());
        }
        Verdict::Reject => {
            dead_letter(lane, event, &result.to_string(), "rejected by the target").await;
        }
        Verdict::Retry { not_before } => {
            let tries = event.attempts - event.attempts_before_replay;
            let now = now_ms();
            let age = Duration::from_millis(now.saturating_sub(event.window_start_ms));
            if tries >= lane.policy.max_attempts || age >= lane.policy.max_age {
                let reason = if tries >= lane.policy.max_attempts {
                    "max_attempts reached"
                } else {
                    "max_age reached"
                };
                dead_letter(lane, event, &result.to_string(), reason).await;
                return;
            }
            let delay = retry_delay(&lane.policy, tries, fastrand::f64(), not_before);
            event.next_attempt_ms = now + delay.as_millis() as u64;
            m.retry.inc();
            tracing::info!(%route, event_id = %id, attempt = event.attempts, outcome = %result, retry_in_ms = delay.as_millis() as u64, "delivery failed; will retry");
            match lane.spool.reschedule(&event).await {
                // A shared spool queues it again when due, for whichever instance.
                Ok(()) if lane.shared => return,
                Ok(()) => {}
                // Gone meanwhile (delivered by a duplicate schedule, or dead-lettered).
                Err(SpoolError::NotFound(_)) => return,
                Err(e) if lane.shared => {
                    tracing::warn!(%route, event_id = %id, error = %e, "cannot store the retry schedule; the event is retried once its hold times out");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%route, event_id = %id, error = %e, "cannot store the retry schedule; retrying from memory")
                }
            }
            let due = event.next_attempt_ms;
            lane.keep_hot(event);
            lane.push(due, id);
        }
    }
}

/// Counts a replayed event's end (`delivered`, or `failed`: dead-lettered) in the metrics and
/// in its replay job's counter (wherever the job runs).
fn replay_settled(lane: &Lane, event: &Event, result: &str) {
    let Some(job) = &event.replay else {
        return;
    };
    let m = &lane.metrics;
    match result {
        "delivered" => m.replay_delivered.inc(),
        _ => m.replay_failed.inc(),
    }
    if crate::history::counted(job) {
        // Not awaited: progress, not an event.
        drop(
            lane.spool
                .meta_add(&crate::history::counter_key(job, result), 1),
        );
    }
}

/// How long a dead letter that could not be stored waits before the next try.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(5);

/// Moves `event` to the dead letters. If the spool cannot store the move, the event goes back
/// in the queue (a later attempt decides again) rather than staying off it until a restart.
async fn dead_letter(lane: &Arc<Lane>, event: Event, outcome: &str, reason: &str) {
    let (route, id, m) = (&lane.route, event.id, &lane.metrics);
    match lane.spool.dead_letter(&event).await {
        Ok(()) => {
            m.dead_letter.inc();
            m.attempts.observe(f64::from(event.attempts));
            if !lane.shared {
                m.spool_depth.dec();
                m.dead_letters.inc();
            }
            tracing::warn!(%route, destination = %lane.destination, event_id = %id, attempt = event.attempts, outcome, reason, "event dead-lettered");
            replay_settled(lane, &event, "failed");
            lane.dead_lettered_in_order(&event);
            lane.release(id, event.order_key());
        }
        // Delivered or dead-lettered already by a duplicate schedule: counted there.
        Err(SpoolError::NotFound(_)) => {}
        Err(e) if lane.shared => {
            tracing::error!(%route, event_id = %id, error = %e, "cannot move the event to the dead letters; it is attempted again once its hold times out");
        }
        Err(e) => {
            tracing::error!(%route, event_id = %id, error = %e, retry_in_ms = DEAD_LETTER_RETRY.as_millis() as u64, "cannot move the event to the dead letters; it stays queued");
            let due = now_ms() + DEAD_LETTER_RETRY.as_millis() as u64;
            lane.keep_hot(event);
            lane.push(due, id);
        }
    }
}

/// [`Inner::put_back`] for a shared spool: the event goes back to it, no attempt counted, due
/// as `put_back` would queue it (a failed probe's behind the others), for whichever instance's
/// circuit is closed.
async fn give_back(lane: &Arc<Lane>, mut event: Event, probe: bool) {
    event.attempts -= 1;
    event.next_attempt_ms = event.next_attempt_ms.max(now_ms());
    if probe {
        event.next_attempt_ms = now_ms() + 1;
    }
    if let Err(e) = lane.spool.reschedule(&event).await {
        tracing::warn!(route = %lane.route, event_id = %event.id, error = %e, "cannot give the event back to the shared spool; it is attempted again once its hold times out");
    }
}

/// The dispatcher of a shared spool: claims as many due events as there are free delivery
/// slots (one while the circuit wants a probe, none while it is open) and attempts each.
pub(super) async fn claim(lane: Arc<Lane>) {
    /// The most events claimed at once.
    const BATCH: usize = 64;
    /// How long one claim waits for an event before looking again.
    const WAIT: Duration = Duration::from_secs(1);
    let Some(shared) = lane.spool.shared() else {
        return;
    };
    let mut stop = lane.stop.subscribe();
    let Some(target) = target_of(&lane, &mut stop).await else {
        return;
    };
    let mut failing = false;
    // A paced destination claims no more than it may send within about a second: what it
    // holds waiting for its slots is renewed, but a large batch would wait long.
    let batch = match &lane.rate {
        Some(rate) => (rate.per_second() as usize).clamp(1, BATCH),
        None => BATCH,
    };
    loop {
        if !unpaused(&lane, &mut stop).await {
            return;
        }
        let Some(first) = free_slot(&lane, &mut stop).await else {
            return;
        };
        let gate = lane.lock_circuit().gate(Instant::now());
        let probe = match gate {
            Gate::Closed => false,
            Gate::Probe => true,
            Gate::Wait(wait) => {
                drop(first);
                if !circuit_wait(&lane, wait, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        let mut permits = vec![first];
        while !probe && permits.len() < batch {
            match lane.permits.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        if probe {
            lane.lock_circuit().probe_sent();
        }
        let claiming = shared.claim(&lane.lane, permits.len(), WAIT);
        tokio::pin!(claiming);
        let claimed = tokio::select! {
            c = &mut claiming => Some(c),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(claimed) = claimed else {
            if probe {
                lane.lock_circuit().probe_unsent();
            }
            // Let the read in flight end (a second at most): what it brings goes back to the
            // spool for another instance now, not after the visibility timeout.
            if let Ok(Ok(events)) = tokio::time::timeout(WAIT * 3, claiming).await {
                for event in events {
                    let _ = lane.spool.reschedule(&event).await;
                }
            }
            return;
        };
        // Paused while the claim waited: what it brought goes back, untried, for the resume.
        let claimed = match claimed {
            Ok(events) if lane.is_paused() => {
                if probe {
                    lane.lock_circuit().probe_unsent();
                }
                for event in events {
                    let _ = lane.spool.reschedule(&event).await;
                }
                continue;
            }
            other => other,
        };
        match claimed {
            Ok(events) => {
                if failing {
                    failing = false;
                    tracing::info!(route = %lane.route, "claiming from the shared spool again");
                }
                if probe && events.is_empty() {
                    lane.lock_circuit().probe_unsent();
                }
                for (event, permit) in events.into_iter().zip(permits) {
                    // At the destination's rate across every instance: each waits for the slot
                    // it reserved in the shared store.
                    if let Some(rate) = &lane.rate {
                        let wait = match shared.pace(&lane.lane, rate.interval()).await {
                            Ok(wait) => wait,
                            // The store cannot pace now: this instance's own pace instead.
                            Err(_) => lane.pace(),
                        };
                        if !wait.is_zero() {
                            let stopped = tokio::select! {
                                _ = tokio::time::sleep(wait) => false,
                                _ = stop.wait_for(|s| *s) => true,
                            };
                            if stopped {
                                // Back to the spool for another instance now.
                                let _ = lane.spool.reschedule(&event).await;
                                return;
                            }
                        }
                    }
                    tokio::spawn(attempt(lane.clone(), target.clone(), event, permit, probe));
                }
            }
            Err(e) => {
                if probe {
                    lane.lock_circuit().probe_unsent();
                }
                if !failing {
                    failing = true;
                    tracing::warn!(route = %lane.route, error = %e, "cannot claim events from the shared spool; trying again every second");
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
pub(super) async fn track_shared(lane: Arc<Lane>) {
    let Some(shared) = lane.spool.shared() else {
        return;
    };
    each_second_until(lane.stop.subscribe(), || async {
        poll_pause(&lane).await;
        if let Ok(g) = shared.gauges(&lane.lane).await {
            let m = &lane.metrics;
            m.spool_depth.set(g.pending as i64);
            m.dead_letters.set(g.dead as i64);
            m.oldest_age.set(age_seconds(g.oldest_ms));
        }
    })
    .await;
}

/// Keeps `hookgate_spool_oldest_age_seconds` current, once a second.
pub(super) async fn track_oldest(lane: Arc<Lane>) {
    each_second_until(lane.stop.subscribe(), || async {
        let oldest = lane.spool.oldest_pending_ms(&lane.lane);
        lane.metrics.oldest_age.set(age_seconds(oldest));
    })
    .await;
}
