//! One destination's share of a route's delivery: its queue of due events, its circuit, its
//! slots, its pace, its per-key order and whether it is paused.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify, Semaphore};
use uuid::Uuid;

use super::order::KeyQueues;
use crate::core::{DeliveryRate, Filter, OrderKey, Pacer};
use crate::deliver::circuit::{Change, Circuit, Health};
use crate::deliver::policy::DeliveryPolicy;
use crate::deliver::target::Target;
use crate::metrics::DeliveryMetrics;
use crate::store::{now_ms, Event, Spool};

/// Events kept in memory for their next attempt, at most (about 4 MiB of webhook payloads).
const HOT_EVENTS: usize = 4096;

/// The record in the spool's `meta` that says a lane is paused.
pub(crate) fn pause_key(lane: &str) -> String {
    format!("pause/{lane}")
}

pub(crate) struct Lane {
    /// The route, for logs.
    pub route: String,
    /// The destination's name.
    pub destination: String,
    /// Its queue in the spool (see [`crate::store::lane`]).
    pub lane: String,
    pub spool: Arc<dyn Spool>,
    pub target: OnceLock<Arc<dyn Target>>,
    pub target_set: Notify,
    pub policy: DeliveryPolicy,
    pub metrics: DeliveryMetrics,
    pub filter: Option<Filter>,
    /// Events with the same key go one at a time: where the key is read when an event is taken
    /// in (each event's record keeps its key).
    pub order: Option<OrderKey>,
    /// Waiting events per key, on a spool this process owns (a shared one keeps them).
    pub keys: Mutex<KeyQueues>,
    pub rate: Option<DeliveryRate>,
    pub pacer: Option<Mutex<Pacer>>,
    pub queue: Mutex<BinaryHeap<Reverse<(u64, Uuid)>>>,
    /// Events handed over in memory (fresh appends, retries), so an attempt need not read them
    /// back from the spool; bounded by [`HOT_EVENTS`], beyond which attempts read the spool.
    pub hot: Mutex<HashMap<Uuid, Event>>,
    pub wake: Notify,
    pub stop: watch::Sender<bool>,
    pub permits: Arc<Semaphore>,
    /// The destination's circuit breaker; `open` mirrors it for the per-event fast path.
    pub circuit: Mutex<Circuit>,
    pub open: AtomicBool,
    /// The circuit changed (closed, or a probe ended): the dispatcher looks again.
    pub circuit_changed: Notify,
    /// Paused: events are taken and wait; no attempt starts. `None` until the stored state
    /// was read at start (nothing starts before).
    pub paused: watch::Sender<Option<bool>>,
    /// The spool is shared by several instances: events are claimed from it, never scheduled
    /// here, and the gauges are read from it.
    pub shared: bool,
}

impl Lane {
    pub(super) fn lock_queue(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Reverse<(u64, Uuid)>>> {
        // The heap stays a valid heap whatever a panicking holder did between operations.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn keep_hot(&self, event: Event) {
        let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        if hot.len() < HOT_EVENTS {
            hot.insert(event.id, event);
        }
    }

    pub(super) fn take_hot(&self, id: Uuid) -> Option<Event> {
        self.hot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
    }

    pub(super) fn push(&self, due_ms: u64, id: Uuid) {
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

    pub(super) fn lock_circuit(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.circuit.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_keys(&self) -> std::sync::MutexGuard<'_, KeyQueues> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether deliveries are paused now (or the stored state is not read yet).
    pub(super) fn is_paused(&self) -> bool {
        *self.paused.borrow() != Some(false)
    }

    /// Sets the paused state (read from the spool, or changed by an operator); `true` if it
    /// changed.
    pub(crate) fn set_paused(&self, paused: bool) -> bool {
        let changed = self.paused.send_replace(Some(paused)) != Some(paused);
        self.metrics.paused.set(i64::from(paused));
        if changed {
            // A resumed lane's dispatcher looks at its queue again.
            self.wake.notify_one();
        }
        changed
    }

    /// Takes in event `id` (ordering key `key`, if any) on a spool this process owns: whether
    /// to schedule it now. An event behind another of its key waits for it; it is counted as
    /// pending all the same.
    pub(super) fn admit(&self, id: Uuid, key: Option<[u8; 16]>) -> bool {
        match key {
            Some(key) if self.order.is_some() && !self.shared => self.lock_keys().admit(id, key),
            _ => true,
        }
    }

    /// Event `id` (ordering key `key`, if known) left the lane (delivered, dead-lettered,
    /// gone): the next event of its key, if it was the head of one, is due now.
    pub(super) fn release(&self, id: Uuid, key: Option<[u8; 16]>) {
        if self.order.is_none() || self.shared {
            return;
        }
        let next = self.lock_keys().release(id, key);
        if let Some(next) = next {
            self.push(now_ms(), next);
        }
    }

    /// An ordered event was dead-lettered: the events after it of its key go on without it
    /// (on a shared spool, the store lets the next one go). Logged and counted.
    pub(super) fn dead_lettered_in_order(&self, event: &Event) {
        if self.order.is_some() && event.order_key().is_some() {
            self.metrics.order_released.inc();
            tracing::warn!(route = %self.route, destination = %self.destination, event_id = %event.id, "the head of an ordering key was dead-lettered; the next event of the key goes on without it");
        }
    }

    /// Keys with an event pending here (a process-owned spool's ordered lane).
    pub(crate) fn order_keys(&self) -> usize {
        self.lock_keys().keys()
    }

    /// How long to wait before the next delivery, at the destination's rate (none: go now).
    pub(super) fn pace(&self) -> Duration {
        match &self.pacer {
            Some(p) => p
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(Instant::now()),
            None => Duration::ZERO,
        }
    }

    /// Records what an attempt showed of the upstream, and logs and counts a change. Returns
    /// whether the circuit is open now.
    pub(super) fn record_health(&self, health: Health, probe: bool, event: Uuid) -> bool {
        let (change, interval) = {
            let mut circuit = self.lock_circuit();
            let change = circuit.record(health, probe, event.as_u128(), Instant::now());
            self.open.store(circuit.is_open(), Ordering::Relaxed);
            (change, circuit.interval())
        };
        let (route, destination) = (&self.route, &self.destination);
        match change {
            Change::None => {}
            Change::Opened => {
                self.metrics.upstream_up.set(0);
                tracing::warn!(
                    %route,
                    %destination,
                    failures = self.policy.open_after,
                    probe_every_ms = interval.unwrap_or_default().as_millis() as u64,
                    "upstream down: circuit open; events wait in the spool, one probe per interval"
                );
            }
            Change::Closed => {
                self.metrics.upstream_up.set(1);
                tracing::info!(
                    %route,
                    %destination,
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
    pub(super) fn put_back(&self, mut event: Event, probe: bool) {
        event.attempts -= 1;
        if probe {
            event.next_attempt_ms = event.next_attempt_ms.max(now_ms());
        }
        let (id, due) = (event.id, event.next_attempt_ms);
        self.keep_hot(event);
        self.push(due, id);
    }

    /// Removes and returns the earliest event if due; otherwise how long until it is.
    pub(super) fn pop_due(&self) -> Result<Uuid, Option<Duration>> {
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
