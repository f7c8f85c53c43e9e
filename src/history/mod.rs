//! Finding and replaying events (DESIGN §13): the query and replay API, the same for the
//! gateway's admin listener, the CLI behind it, and any service that mounts it.
//!
//! A [`History`] reads the spool's event history ([`crate::store::history`]) and replays
//! through the routes' [`Deliverer`]s, so a replayed event goes through its route's delivery
//! policy, circuit and concurrency, with `X-Hookgate-Replay` set. Bulk replays are jobs: kept
//! in the spool (they survive a restart), run by one instance at a time on a shared backend
//! (a lease; an instance that dies hands its jobs over), paced by their `rate`.
//!
//! Every method answers JSON (the admin API's shapes) or a [`HistoryError`] with an HTTP status
//! and a stable reason, so mounting it is a few lines; `examples/history_axum.rs` mounts it on
//! an axum router.
//!
//! ```
//! use std::sync::Arc;
//! use hookgate::history::{History, Params};
//! use hookgate::store::{memory::MemorySpool, Spool};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let spool: Arc<dyn Spool> = Arc::new(MemorySpool::new(1000, 1 << 20));
//! let history = History::new(spool);
//! let page = history.events(&Params::from_query("status=dead&limit=10")).await.unwrap();
//! assert_eq!(page["events"], serde_json::json!([]));
//! # });
//! ```

mod jobs;
pub mod params;
mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde_json::Value;
use uuid::Uuid;

pub(crate) use jobs::{counted, counter_key};
pub use jobs::{JobState, ReplayJob, StoredFilter};
pub use params::Params;

use crate::core::DedupKeySpec;
use crate::deliver::Deliverer;
use crate::store::history::DeliveryStatus;
use crate::store::{Spool, SpoolError};

/// Why a request to the history failed: an HTTP status, a stable reason and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct HistoryError {
    /// The HTTP status to answer.
    pub status: u16,
    /// A stable name for the failure (`unknown_route`, `bad_time`, `bad_pointer`, `not_found`,
    /// `spool_unavailable`, ...).
    pub reason: &'static str,
    /// What went wrong, for a person.
    pub detail: String,
}

impl HistoryError {
    /// A failure with `status` and `reason`.
    pub fn new(status: u16, reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            detail: detail.into(),
        }
    }

    /// A 400 `bad_request`.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(400, "bad_request", detail)
    }

    /// The answer's JSON body: `{"error": reason, "detail": ...}`.
    pub fn body(&self) -> Value {
        serde_json::json!({ "error": self.reason, "detail": self.detail })
    }
}

impl From<SpoolError> for HistoryError {
    fn from(e: SpoolError) -> Self {
        match e {
            SpoolError::NotFound(id) => Self::new(
                404,
                "not_found",
                format!("no event {id} (unknown, or delivered and past the retention)"),
            ),
            e => Self::new(503, "spool_unavailable", e.to_string()),
        }
    }
}

/// A route the history can replay to: its deliverer, and how it finds dedup keys (for
/// `key=`).
#[derive(Clone)]
pub struct HistoryRoute {
    /// The route's deliverer (its name is the route's).
    pub deliverer: Deliverer,
    /// Its dedup key, if it dedups.
    pub dedup: Option<DedupKeySpec>,
}

/// The query and replay API over a spool's history. Cheap to clone.
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

struct Inner {
    spool: Arc<dyn Spool>,
    routes: ArcSwap<HashMap<String, HistoryRoute>>,
    /// This instance's name in job leases.
    owner: String,
    /// The jobs this instance runs now, by id (`None`: being started).
    running: Mutex<HashMap<String, Option<tokio::task::AbortHandle>>>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field(
                "routes",
                &self.inner.routes.load().keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for job in self
            .running
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flatten()
        {
            job.abort();
        }
    }
}

impl History {
    /// The history of `spool`, with no route yet (queries work; replays need the route).
    pub fn new(spool: Arc<dyn Spool>) -> Self {
        Self {
            inner: Arc::new(Inner {
                spool,
                routes: ArcSwap::from_pointee(HashMap::new()),
                owner: format!("{}-{}", std::process::id(), Uuid::now_v7().simple()),
                running: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Adds the route of `deliverer` (replays of its events go through it).
    #[must_use]
    pub fn with_route(self, deliverer: Deliverer, dedup: Option<DedupKeySpec>) -> Self {
        let mut routes = (**self.inner.routes.load()).clone();
        routes.insert(
            deliverer.route().to_owned(),
            HistoryRoute { deliverer, dedup },
        );
        self.inner.routes.store(Arc::new(routes));
        self
    }

    /// Replaces the routes (a reload).
    pub fn set_routes(&self, routes: impl IntoIterator<Item = HistoryRoute>) {
        let routes = routes
            .into_iter()
            .map(|r| (r.deliverer.route().to_owned(), r))
            .collect();
        self.inner.routes.store(Arc::new(routes));
    }

    /// The spool.
    pub fn spool(&self) -> &Arc<dyn Spool> {
        &self.inner.spool
    }

    fn parse(&self, p: &Params, job: bool) -> Result<crate::store::EventQuery, HistoryError> {
        let routes = self.inner.routes.load();
        let keys: Vec<params::RouteKeys<'_>> = routes
            .iter()
            .map(|(name, r)| params::RouteKeys {
                name,
                dedup: r.dedup.as_ref(),
                destinations: r.deliverer.destinations(),
            })
            .collect();
        params::query(p, &keys, job)
    }

    /// `GET /events`: a page, `{"events": [...], "next": CURSOR|null}`.
    pub async fn events(&self, p: &Params) -> Result<Value, HistoryError> {
        let q = self.parse(p, false)?;
        let page = self.inner.spool.events(&q).await?;
        Ok(serde_json::json!({
            "events": page.events.iter().map(view::listed).collect::<Vec<_>>(),
            "next": page.next,
        }))
    }

    /// `GET /events/{id}`: the event whole (its body as JSON when it is JSON, else base64) with
    /// its attempts.
    pub async fn event(&self, id: &str) -> Result<Value, HistoryError> {
        let id = parse_id(id)?;
        match self.inner.spool.event(id).await? {
            Some(detail) => Ok(view::shown(&detail)),
            None => Err(SpoolError::NotFound(id).into()),
        }
    }

    /// `POST /events/{id}/replay`: sends event `id` again (where it was delivered or
    /// dead-lettered; at `destination` only, if given), through each destination's delivery.
    /// Its deliveries carry `X-Hookgate-Replay` with a fresh replay id (`manual-...`),
    /// answered here with what happened at each destination (`replayed`, or `pending`
    /// already; a destination that filtered the event out is left out).
    pub async fn replay(&self, id: &str, destination: Option<&str>) -> Result<Value, HistoryError> {
        let id = parse_id(id)?;
        let job = format!("manual-{}", Uuid::now_v7());
        let at = self.replay_one(id, destination, &job).await?;
        if let (Some(d), true) = (destination, at.is_empty()) {
            return Err(HistoryError::new(
                404,
                "not_found",
                format!("event {id} never went to a destination named {d:?}"),
            ));
        }
        let queued = at.iter().any(|(_, q)| *q);
        Ok(serde_json::json!({
            "id": id,
            "status": if queued { "replayed" } else { "pending" },
            "replay": job,
            "destinations": at.iter().map(|(name, q)| serde_json::json!({
                "name": name,
                "status": if *q { "replayed" } else { "pending" },
            })).collect::<Vec<_>>(),
        }))
    }

    /// Makes event `id` pending again for replay `job` at each of its destinations (or at
    /// `destination` only) where it was delivered or dead-lettered, and hands each copy to
    /// its destination's delivery; returns each destination tried and whether it was queued
    /// (`false`: pending there already).
    ///
    /// Once started it runs to its end even if the caller goes away (a cancelled job, a client
    /// that hung up): an event made pending is always handed to its delivery.
    pub(crate) async fn replay_one(
        &self,
        id: Uuid,
        destination: Option<&str>,
        job: &str,
    ) -> Result<Vec<(String, bool)>, HistoryError> {
        let (inner, job) = (self.inner.clone(), job.to_owned());
        let destination = destination.map(str::to_owned);
        let step = tokio::spawn(async move {
            let Some(detail) = inner.spool.event(id).await? else {
                return Err(SpoolError::NotFound(id).into());
            };
            let mut at = Vec::new();
            for d in &detail.destinations {
                if d.status == DeliveryStatus::Filtered
                    || destination.as_deref().is_some_and(|n| n != d.name)
                {
                    continue;
                }
                let replayed = match inner.spool.replay(id, &d.name, &job).await {
                    Ok(r) => r,
                    // Gone meanwhile (retention, a purge): nothing to send there.
                    Err(SpoolError::NotFound(_)) => continue,
                    Err(e) => return Err(e.into()),
                };
                let Some((event, was)) = replayed else {
                    at.push((d.name.clone(), false));
                    continue;
                };
                at.push((d.name.clone(), true));
                let route = inner.routes.load().get(&event.route).cloned();
                match route {
                    Some(r) if r.deliverer.has_destination(&d.name) => {
                        r.deliverer.replayed(event, was == DeliveryStatus::Dead)
                    }
                    _ => {
                        tracing::warn!(route = %event.route, destination = %d.name, event_id = %id, "replayed an event to a destination this gateway no longer has: it waits in the spool until the destination comes back")
                    }
                }
            }
            Ok::<_, HistoryError>(at)
        });
        step.await
            .map_err(|e| HistoryError::new(503, "spool_unavailable", e.to_string()))?
    }

    /// `POST /replays`: starts a replay job over the events `p` selects (the same filters as
    /// [`events`](Self::events)) at `rate`; `{"id", "matched"}` (answer 202).
    pub async fn start_replay(&self, p: &Params) -> Result<Value, HistoryError> {
        let q = self.parse(p, true)?;
        let rate = params::rate(p.get("rate").unwrap_or("100/s"))?;
        let id = Uuid::now_v7().to_string();
        // Claimed here before it is saved: this instance's look for jobs nobody runs must not
        // start it a second time.
        self.inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), None);
        let job = match jobs::create(self, id.clone(), q.filter, rate).await {
            Ok(job) => job,
            Err(e) => {
                self.inner
                    .running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                return Err(e);
            }
        };
        self.start_runner(job.clone());
        Ok(serde_json::json!({ "id": job.id, "matched": job.matched }))
    }

    /// `GET /replays`: every job, newest first, with its progress.
    pub async fn replays(&self) -> Result<Value, HistoryError> {
        let mut all = Vec::new();
        for job in jobs::list(&self.inner.spool).await? {
            all.push(jobs::progress(&self.inner.spool, &job).await?);
        }
        Ok(serde_json::json!({ "replays": all }))
    }

    /// `GET /replays/{id}`: one job's progress.
    pub async fn replay_job(&self, id: &str) -> Result<Value, HistoryError> {
        let job = jobs::load(&self.inner.spool, id)
            .await?
            .ok_or_else(|| no_job(id))?;
        Ok(jobs::progress(&self.inner.spool, &job).await?)
    }

    /// `DELETE /replays/{id}`: cancels a job (it stops within a second, wherever it runs: its
    /// runner looks for the cancel twice a second, and finishes the event in hand first).
    pub async fn cancel_replay(&self, id: &str) -> Result<Value, HistoryError> {
        let job = jobs::cancel(&self.inner.spool, id)
            .await?
            .ok_or_else(|| no_job(id))?;
        Ok(jobs::progress(&self.inner.spool, &job).await?)
    }

    /// Runs this instance's share of the replay jobs until dropped: every second, takes the
    /// lease of each running job nobody runs (all of them after a restart; on a shared
    /// backend, a job whose instance died) and runs it. Spawn it on the runtime.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(jobs::LOOK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tick.tick().await;
            if ticks.is_multiple_of(RETAINED_EVERY) {
                self.gauge_retained().await;
            }
            ticks += 1;
            let jobs = match jobs::list(&self.inner.spool).await {
                Ok(j) => j,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the replay jobs");
                    continue;
                }
            };
            for job in jobs.into_iter().filter(|j| j.state == JobState::Running) {
                if self.is_running(&job.id) {
                    continue;
                }
                let leased = self
                    .inner
                    .spool
                    .lease(&jobs::lease_key(&job.id), &self.inner.owner, jobs::LEASE)
                    .await;
                if matches!(leased, Ok(true)) {
                    tracing::info!(replay = %job.id, cursor = ?job.cursor, "resuming a replay job");
                    self.start_runner(job);
                }
            }
            if ticks.is_multiple_of(FORGET_EVERY) {
                jobs::forget_old(&self.inner.spool).await;
            }
        }
    }

    fn is_running(&self, id: &str) -> bool {
        let mut running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|_, h| h.as_ref().is_none_or(|h| !h.is_finished()));
        running.contains_key(id)
    }

    fn start_runner(&self, job: ReplayJob) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let id = job.id.clone();
        let task = rt.spawn(jobs::run(self.clone(), job));
        self.inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Some(task.abort_handle()));
    }

    fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Counts a replay job's event at `destination` in its route's metrics.
    fn count(&self, route: &str, destination: &str, queued: bool) {
        if let Some(r) = self.inner.routes.load().get(route) {
            r.deliverer.count_replay(destination, queued);
        }
    }

    /// Sets each route's `hookgate_events_retained`.
    async fn gauge_retained(&self) {
        match self.inner.spool.retained().await {
            Ok(counts) => {
                let routes = self.inner.routes.load();
                for (route, n) in counts {
                    if let Some(r) = routes.get(&route) {
                        r.deliverer.set_retained(n);
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot count the events retained"),
        }
    }
}

/// How often (in looks for jobs) `hookgate_events_retained` is counted again.
const RETAINED_EVERY: u64 = 10;

/// How often (in looks for jobs) the records of jobs finished long ago are deleted.
const FORGET_EVERY: u64 = 600;

fn no_job(id: &str) -> HistoryError {
    HistoryError::new(404, "not_found", format!("no replay job {id:?}"))
}

fn parse_id(text: &str) -> Result<Uuid, HistoryError> {
    Uuid::parse_str(text)
        .map_err(|_| HistoryError::new(400, "bad_request", format!("{text:?} is not an event id")))
}
