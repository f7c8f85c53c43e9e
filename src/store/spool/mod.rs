//! The [`Spool`] trait: where an event is written before it is acknowledged, and kept until it
//! is delivered or dead-lettered. Every backend implements it and passes
//! [`conformance`](crate::store::conformance); the embedded one is
//! [`EmbeddedSpool`](crate::store::EmbeddedSpool).
//!
//! ```
//! use hookgate::store::{Durability, EmbeddedSpool, Event, Spool, SpoolConfig};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let spool = EmbeddedSpool::open(SpoolConfig::new(dir.path(), Durability::Fsync)).unwrap();
//! let event = Event::new("o3-video", "127.0.0.1".parse().unwrap(), "POST", "/webhook", vec![], "{}".into());
//! spool.append(&event).await.unwrap();           // durable once this resolves
//! assert_eq!(spool.stats().pending, 1);
//! spool.delivered(&event).await.unwrap();
//! assert_eq!(spool.stats().pending, 0);
//! # });
//! ```

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::event::{DedupRecord, Event};
use super::history::{DeliveryStatus, DestinationState, EventDetail, EventPage, EventQuery};

/// How much an acknowledged event survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Synced to disk before the acknowledgement: survives power loss (the default).
    Fsync,
    /// Written to the operating system before the acknowledgement: survives a crash or kill of
    /// the process, not of the machine.
    Os,
    /// Kept in a temporary directory deleted when the spool is dropped: survives nothing. For
    /// tests and benchmarks.
    Memory,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "os" => Ok(Durability::Os),
            "memory" => Ok(Durability::Memory),
            other => Err(format!(
                "{other:?} is not a durability: use fsync, os or memory"
            )),
        }
    }
}

/// A spool operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The spool holds its maximum number of events or bytes.
    #[error("the spool is full ({0})")]
    Full(String),
    /// The store failed to read or commit.
    #[error("spool storage: {0}")]
    Storage(String),
    /// A stored event could not be decoded.
    #[error("spool record {0}: {1}")]
    Corrupt(String, String),
    /// No such event.
    #[error("no event {0}")]
    NotFound(Uuid),
    /// The store is being reopened or copied in the running process; a read works again in a
    /// moment.
    #[error("the store is being reopened")]
    Reopening,
    /// The spool is shut down.
    #[error("the spool is closed")]
    Closed,
}

impl crate::core::outcome::StoreFailure for SpoolError {
    fn is_full(&self) -> bool {
        matches!(self, SpoolError::Full(_))
    }
}

/// Resolves when a spool write has reached the configured durability (or failed). Dropping it
/// does not undo the write: it may still commit.
#[derive(Debug)]
#[must_use = "the write is only durable once this resolves"]
pub struct Completion<T = ()>(CompletionInner<T>);

#[derive(Debug)]
enum CompletionInner<T> {
    Waiting(tokio::sync::oneshot::Receiver<Result<T, SpoolError>>),
    Ready(Option<Result<T, SpoolError>>),
}

impl<T> Completion<T> {
    /// Already resolved with `result`.
    pub fn ready(result: Result<T, SpoolError>) -> Self {
        Completion(CompletionInner::Ready(Some(result)))
    }

    /// Resolves with what is sent on the other end of `rx` (closed: [`SpoolError::Closed`]).
    pub fn waiting(rx: tokio::sync::oneshot::Receiver<Result<T, SpoolError>>) -> Self {
        Completion(CompletionInner::Waiting(rx))
    }

    /// Whether it resolved without queueing anything (refused at once).
    pub fn is_ready(&self) -> bool {
        matches!(self.0, CompletionInner::Ready(_))
    }
}

// Completion never pins its result: it only moves it out.
impl<T> Unpin for Completion<T> {}

impl<T> std::future::Future for Completion<T> {
    type Output = Result<T, SpoolError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.get_mut().0 {
            CompletionInner::Waiting(rx) => std::pin::Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(SpoolError::Closed))),
            CompletionInner::Ready(r) => {
                std::task::Poll::Ready(r.take().unwrap_or(Err(SpoolError::Closed)))
            }
        }
    }
}

/// Counts of what the spool holds, exact: each changes only with a committed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Events awaiting delivery.
    pub pending: u64,
    /// Events in the dead letters.
    pub dead: u64,
    /// Bytes of the stored records of pending and dead events.
    pub bytes: u64,
    /// Commits synced to disk so far (`fsync` durability; for readiness and tuning).
    pub syncs: u64,
}

/// Whether a store takes new events now, and the room it has (for readiness, the log and the
/// `hookgate_store_*` gauges).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// Why new events are refused now, if they are: the disk under its headroom, a failed store
    /// waiting to be reopened, Redis out of memory or unable to persist.
    pub refusing: Option<String>,
    /// Free bytes where the store keeps its data (the embedded spool's filesystem, Redis's
    /// `maxmemory` less what it uses), when known.
    pub free_bytes: Option<u64>,
    /// Under this much free space new events are refused (the embedded spool's resolved
    /// `min_free_space`), when it applies.
    pub min_free_bytes: Option<u64>,
    /// How far the free space is above the point where new events are refused (`min_free_space`
    /// plus the room the engine keeps for its own work); negative while they are refused.
    pub headroom_bytes: Option<i64>,
    /// Times the store was reopened in the running process after a failed write.
    pub reopened: u64,
    /// Times the store was rebuilt in the running process to give disk space back.
    pub rebuilt: u64,
}

/// An event as listed: everything but its body, which is never copied for a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSummary {
    /// The event id.
    pub id: Uuid,
    /// The route.
    pub route: String,
    /// When it was acknowledged, in Unix milliseconds.
    pub received_ms: u64,
    /// The resolved client address.
    pub client_ip: IpAddr,
    /// Delivery attempts made, at every destination.
    pub attempts: u32,
    /// The body's size in bytes.
    pub body_bytes: usize,
    /// Where it stands as a whole (see [`DeliveryStatus::overall`]).
    pub status: DeliveryStatus,
    /// Where each destination stands, with its attempts.
    pub destinations: Vec<DestinationState>,
    /// Its dedup key's 16 bytes, if the route dedups.
    pub dedup: Option<[u8; 16]>,
}

/// Where acknowledged events wait for delivery. Writes resolve at the configured durability.
///
/// An event is stored once, with the destinations it was fanned out to
/// ([`Event::destinations`]); each destination then has its own copy of the changing part
/// (attempts, schedule, status) in its own queue, its *lane* ([`lane`](super::lane): the route's
/// name for the default destination, `route#destination` for another). The methods that take
/// a `lane` work on one destination's share; the ones that take an [`Event`] on the share of
/// [`Event::destination`]. Each destination's share counts as one event against the bounds.
///
/// Pending events and dead letters are both keyed by lane, then id (UUIDv7: oldest first).
/// Writes that find their event gone (delivered, dead-lettered or replayed meanwhile) change
/// nothing and answer [`SpoolError::NotFound`], so concurrent or repeated calls never count an
/// event twice.
pub trait Spool: Send + Sync + 'static {
    /// Stores a new event (and its dedup key), pending for each destination of
    /// [`Event::delivered_to`], all or none. Fails when full or when the commit fails.
    fn append(&self, event: &Event) -> Completion;
    /// The pending event `id` of `lane` (that destination's copy).
    fn get(&self, lane: &str, id: Uuid) -> Result<Option<Event>, SpoolError>;
    /// Removes a delivered event (its destination's share), keeping its final state in the
    /// history; resolves once that is written at the spool's durability.
    fn delivered(&self, event: &Event) -> Completion;
    /// Removes a delivered event without waiting for the record (a crash before it is written
    /// means one repeat delivery after the restart). The delivery engine's way: cheaper.
    fn forget_delivered(&self, event: &Event) {
        drop(self.delivered(event));
    }
    /// Stores a pending event's new attempt count, history and next attempt time.
    fn reschedule(&self, event: &Event) -> Completion;
    /// Moves a pending event to the dead letters.
    fn dead_letter(&self, event: &Event) -> Completion;
    /// Every pending event.
    fn pending(&self) -> Result<Vec<Event>, SpoolError>;
    /// The id and next attempt time of every pending event of `lane` (for recovery at start).
    fn pending_schedule(&self, lane: &str) -> Result<Vec<(Uuid, u64)>, SpoolError>;
    /// The persisted dedup keys still inside their TTL.
    fn dedup_keys(&self) -> Result<Vec<DedupRecord>, SpoolError>;
    /// Up to `limit` dead letters of `lane`, oldest first, starting after `after`; bodies are
    /// not read.
    fn dead_letters(
        &self,
        lane: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<EventSummary>, SpoolError>;
    /// The dead letter `id` of `lane`, whole.
    fn get_dead(&self, lane: &str, id: Uuid) -> Result<Option<Event>, SpoolError>;
    /// Moves dead letter `id` of `lane` back to pending, due now; returns it.
    fn revive(&self, lane: &str, id: Uuid) -> Completion<Event>;
    /// Deletes dead letter `id` of `lane` (and the event's record once no destination
    /// holds it any more).
    fn purge(&self, lane: &str, id: Uuid) -> Completion;
    /// A page of the event history (see [`history`](super::history)): pending, dead and
    /// delivered events still kept, in id order, bodies left out.
    fn events(&self, query: &EventQuery) -> SpoolFuture<'_, EventPage>;
    /// Event `id`, whole, and where each destination stands (`None`: unknown, or delivered and
    /// past the retention).
    fn event(&self, id: Uuid) -> SpoolFuture<'_, Option<EventDetail>>;
    /// Makes event `id` pending again for `destination`, due now, its deliveries marked with
    /// replay `job`: a dead letter (as [`revive`](Self::revive) does) or a delivered event still
    /// kept. Resolves with that destination's copy as queued and where it stood before; `None`
    /// if it is pending there already (its delivery is on its way) or was filtered out;
    /// [`SpoolError::NotFound`] if it is unknown, past the retention, or never went there.
    fn replay(
        &self,
        id: Uuid,
        destination: &str,
        job: &str,
    ) -> Completion<Option<(Event, DeliveryStatus)>>;
    /// What the spool holds.
    fn stats(&self) -> SpoolStats;
    /// The receive time of the oldest pending event of `lane`, in Unix milliseconds.
    fn oldest_pending_ms(&self, lane: &str) -> Option<u64>;
    /// Deletes persisted dedup keys whose TTL has passed, in chunks that never hold up appends;
    /// resolves with how many. A backend may also sweep on its own schedule.
    fn sweep_expired_keys(&self) -> Completion<usize>;
    /// Commits a write that changes nothing, at the spool's durability (synced under `fsync`):
    /// resolves `Ok` when the spool can store events now (for readiness checks).
    fn probe(&self) -> Completion;
    /// How many events each route keeps now (pending, dead and delivered within the retention),
    /// by route. Exact or close: a backend may count delivered ones by the minute.
    fn retained(&self) -> SpoolFuture<'_, Vec<(String, u64)>>;
    /// The small record `key` the gateway keeps beside the events (a replay job, a pause), if
    /// any. Such records are as durable as the events, and shared by every instance on a
    /// shared backend.
    fn meta_get(&self, key: &str) -> SpoolFuture<'_, Option<Vec<u8>>>;
    /// Writes record `key` (`None`: deletes it).
    fn meta_put(&self, key: &str, value: Option<Vec<u8>>) -> Completion;
    /// Every record whose key starts with `prefix`, by key.
    fn meta_list(&self, prefix: &str) -> SpoolFuture<'_, Vec<(String, Vec<u8>)>>;
    /// Adds `by` to counter `key` (0 when new); resolves with its new value. Counters are apart
    /// from the records.
    fn meta_add(&self, key: &str, by: i64) -> Completion<i64>;
    /// Counter `key`'s value (0 when new).
    fn meta_counter(&self, key: &str) -> SpoolFuture<'_, i64>;
    /// Takes or renews the lease `key` for `owner` for `ttl`: whether `owner` holds it now. On a
    /// spool one process owns, every lease is its own (the default).
    fn lease(&self, key: &str, owner: &str, ttl: Duration) -> SpoolFuture<'_, bool> {
        let _ = (key, owner, ttl);
        Box::pin(async { Ok(true) })
    }
    /// Whether new events are taken now, and the room left. The default: always, room unknown.
    fn health(&self) -> StoreHealth {
        StoreHealth::default()
    }
    /// How several instances share this spool's work, for a backend they share (Redis): each
    /// instance then claims due events from the spool rather than scheduling what it appended.
    /// `None` (the default) for a spool one process owns: its deliverer schedules each append
    /// and recovers the rest from [`pending_schedule`](Self::pending_schedule) at start.
    fn shared(&self) -> Option<&dyn SharedSpool> {
        None
    }
}

/// A boxed future borrowing its spool.
pub type SpoolFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, SpoolError>> + Send + 'a>>;

/// The work-sharing side of a spool several gateway instances use at once (DESIGN §5).
///
/// An event is *held* by the instance that claimed it until that instance records its
/// delivery, reschedule or dead letter through the [`Spool`] methods. If the instance goes
/// silent (killed, partitioned) for the backend's visibility timeout, another instance's
/// `claim` takes the event over: nothing acknowledged waits on a dead instance.
pub trait SharedSpool: Send + Sync {
    /// Up to `max` events of `lane` that are due and held by no live instance, now held by
    /// this one; waits up to `wait` for the first.
    fn claim<'a>(
        &'a self,
        lane: &'a str,
        max: usize,
        wait: Duration,
    ) -> SpoolFuture<'a, Vec<Event>>;
    /// What `lane` holds across every instance.
    fn gauges<'a>(&'a self, lane: &'a str) -> SpoolFuture<'a, RouteGauges>;
    /// Reserves `lane`'s next delivery slot at one per `interval`, shared by every instance
    /// (a destination's `rate`): resolves with how long to wait for it. Slots are taken in
    /// turn, none saved up while idle.
    fn pace<'a>(&'a self, lane: &'a str, interval: Duration) -> SpoolFuture<'a, Duration>;
}

/// One route's share of a shared spool, for its gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteGauges {
    /// Events awaiting delivery (due, retrying, or held by an instance).
    pub pending: u64,
    /// Dead letters.
    pub dead: u64,
    /// When the oldest pending event was received, in Unix milliseconds.
    pub oldest_ms: Option<u64>,
}

impl EventSummary {
    /// The summary of `e`'s copy (one destination's), standing at `status`.
    pub fn of(e: &Event, status: DeliveryStatus) -> Self {
        Self::with_destinations(e, vec![DestinationState::of(e, status)])
    }

    /// The summary of `e` whose destinations stand at `states` (at least one).
    pub fn with_destinations(e: &Event, states: Vec<DestinationState>) -> Self {
        Self {
            id: e.id,
            route: e.route.clone(),
            received_ms: e.received_ms,
            client_ip: e.client_ip,
            attempts: states.iter().map(|d| d.attempts).sum(),
            body_bytes: e.body.len(),
            status: DeliveryStatus::overall(&states).unwrap_or(DeliveryStatus::Delivered),
            destinations: states,
            dedup: e.dedup.map(|d| d.key),
        }
    }
}
