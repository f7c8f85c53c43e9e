//! Replay jobs: kept in the spool's records (`replay/{id}`), run where their lease is held,
//! paced by their rate, and resumed from their cursor after a restart or by another instance.
//!
//! A job pages through the events its filter selected when it started (its `until` is fixed
//! then: events acknowledged later are not part of it), in id order, and replays each once:
//! its cursor (the last event handled) is saved twice a second, and an event whose last
//! attempt was made by this job is not replayed again, so a job resumed after a crash sends no
//! event twice. Each replayed delivery counts in the job's `delivered` or `failed` (dead-lettered
//! after the replay) counter, wherever it happens.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{History, HistoryError};
use crate::core::{DedupKey, JsonPointer};
use crate::store::history::{DeliveryStatus, EventFilter, EventQuery, Order, MAX_PAGE};
use crate::store::{now_ms, Spool, SpoolError};

/// How often an instance looks for jobs nobody runs.
pub(super) const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long a job's lease lasts without renewal: an instance silent this long hands it over.
pub(super) const LEASE: Duration = Duration::from_secs(10);
/// How often a running job saves its cursor, renews its lease and looks for a cancel.
const SAVE_EVERY: Duration = Duration::from_millis(500);
/// How far behind its pace a job may fall and still catch up (sending faster than its rate
/// for a moment); beyond, it resumes at its rate from where it is.
const CATCH_UP: Duration = Duration::from_secs(1);
/// Events read per page by a running job.
const PAGE: usize = 100;
/// How long a finished job is kept.
const KEEP_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Replaying.
    Running,
    /// Every matched event was handed to delivery.
    Done,
    /// Stopped by `DELETE /replays/{id}`.
    Cancelled,
}

/// A job's filter as kept (dedup keys in hex, pointers as text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFilter {
    /// The route.
    pub route: Option<String>,
    /// The destination: only its deliveries are replayed (every destination's, without).
    #[serde(default)]
    pub destination: Option<String>,
    /// The status.
    pub status: Option<DeliveryStatus>,
    /// Received at or after (Unix ms).
    pub since_ms: Option<u64>,
    /// Received before (Unix ms): at most the job's start.
    pub until_ms: Option<u64>,
    /// Dedup keys per route, hex.
    pub keys: Option<HashMap<String, Vec<String>>>,
    /// JSON pointers and the values they must equal.
    pub matches: Vec<(String, Value)>,
}

impl StoredFilter {
    fn of(f: &EventFilter) -> Self {
        Self {
            route: f.route.clone(),
            destination: f.destination.clone(),
            status: f.status,
            since_ms: f.since_ms,
            until_ms: f.until_ms,
            keys: f.keys.as_ref().map(|keys| {
                keys.iter()
                    .map(|(r, ks)| {
                        let hex = ks.iter().map(|k| DedupKey::from_bytes(*k).to_hex());
                        (r.clone(), hex.collect())
                    })
                    .collect()
            }),
            matches: f
                .matches
                .iter()
                .map(|(p, v)| (p.as_str().to_owned(), v.clone()))
                .collect(),
        }
    }

    fn filter(&self) -> EventFilter {
        EventFilter {
            route: self.route.clone(),
            destination: self.destination.clone(),
            status: self.status,
            since_ms: self.since_ms,
            until_ms: self.until_ms,
            keys: self.keys.as_ref().map(|keys| {
                keys.iter()
                    .map(|(r, ks)| {
                        let bytes = ks.iter().filter_map(|k| DedupKey::from_hex(k));
                        (r.clone(), bytes.map(DedupKey::to_bytes).collect())
                    })
                    .collect()
            }),
            matches: self
                .matches
                .iter()
                .map(|(p, v)| (JsonPointer::parse(p), v.clone()))
                .collect(),
        }
    }
}

/// A replay job as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayJob {
    /// Its id (a UUIDv7; also `X-Hookgate-Replay` of its deliveries).
    pub id: String,
    /// Where it stands.
    pub state: JobState,
    /// When it started, Unix ms.
    pub created_ms: u64,
    /// When it ended, Unix ms.
    pub finished_ms: Option<u64>,
    /// Which events.
    pub filter: StoredFilter,
    /// Events per second.
    pub rate: f64,
    /// Events the filter selected when it started.
    pub matched: u64,
    /// Events handed to delivery again.
    pub queued: u64,
    /// Events not replayed: pending already, or gone (past the retention, purged).
    pub skipped: u64,
    /// The last event handled.
    pub cursor: Option<Uuid>,
}

fn record_key(id: &str) -> String {
    format!("replay/{id}")
}

fn cancel_key(id: &str) -> String {
    format!("replay-cancel/{id}")
}

/// The lease of job `id`.
pub(super) fn lease_key(id: &str) -> String {
    format!("replay/{id}")
}

/// Job `id`'s counter `what` (`delivered`, `failed`), added to by the deliveries it caused.
pub(crate) fn counter_key(id: &str, what: &str) -> String {
    format!("replay/{id}/{what}")
}

/// Whether replay `job` is a job's (manual replays of one event keep no counters).
pub(crate) fn counted(job: &str) -> bool {
    !job.starts_with("manual-")
}

async fn save(spool: &Arc<dyn Spool>, job: &ReplayJob) -> Result<(), SpoolError> {
    let bytes =
        serde_json::to_vec(job).map_err(|e| SpoolError::Corrupt(job.id.clone(), e.to_string()))?;
    spool.meta_put(&record_key(&job.id), Some(bytes)).await
}

/// Job `id`, as last saved (cancelled if it has a cancel mark).
pub(super) async fn load(
    spool: &Arc<dyn Spool>,
    id: &str,
) -> Result<Option<ReplayJob>, SpoolError> {
    let Some(bytes) = spool.meta_get(&record_key(id)).await? else {
        return Ok(None);
    };
    let mut job: ReplayJob = serde_json::from_slice(&bytes)
        .map_err(|e| SpoolError::Corrupt(id.into(), e.to_string()))?;
    if job.state == JobState::Running && spool.meta_get(&cancel_key(id)).await?.is_some() {
        job.state = JobState::Cancelled;
    }
    Ok(Some(job))
}

/// Every job, newest first. A job with a cancel mark is cancelled, whatever its record says
/// (the mark is the one word on it: a runner saving its progress never undoes a cancel).
pub(super) async fn list(spool: &Arc<dyn Spool>) -> Result<Vec<ReplayJob>, SpoolError> {
    let cancelled: std::collections::HashSet<String> = spool
        .meta_list("replay-cancel/")
        .await?
        .into_iter()
        .filter_map(|(k, _)| k.strip_prefix("replay-cancel/").map(str::to_owned))
        .collect();
    let mut jobs: Vec<ReplayJob> = spool
        .meta_list("replay/")
        .await?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice::<ReplayJob>(&v).ok())
        .map(|mut job| {
            if cancelled.contains(&job.id) && job.state == JobState::Running {
                job.state = JobState::Cancelled;
            }
            job
        })
        .collect();
    jobs.sort_by(|a, b| b.id.cmp(&a.id));
    Ok(jobs)
}

/// Counts what `filter` selects (its `until` fixed at now at most), saves the job, and takes
/// its lease for this instance.
pub(super) async fn create(
    h: &History,
    id: String,
    mut filter: EventFilter,
    rate: f64,
) -> Result<ReplayJob, HistoryError> {
    let spool = h.spool();
    let now = now_ms();
    filter.until_ms = Some(filter.until_ms.map_or(now + 1, |u| u.min(now + 1)));
    let mut q = EventQuery {
        filter,
        order: Order::Asc,
        limit: MAX_PAGE,
        after: None,
    };
    let mut matched = 0u64;
    loop {
        let page = spool.events(&q).await?;
        matched += page.events.len() as u64;
        match page.next {
            Some(next) => q.after = Some(next),
            None => break,
        }
    }
    let job = ReplayJob {
        id,
        state: JobState::Running,
        created_ms: now,
        finished_ms: None,
        filter: StoredFilter::of(&q.filter),
        rate,
        matched,
        queued: 0,
        skipped: 0,
        cursor: None,
    };
    spool.lease(&lease_key(&job.id), h.owner(), LEASE).await?;
    save(spool, &job).await?;
    tracing::info!(replay = %job.id, matched, rate, "replay job started");
    Ok(job)
}

/// Marks job `id` cancelled (the instance running it stops at its next look); the job as it is
/// now, `None` if there is none.
pub(super) async fn cancel(
    spool: &Arc<dyn Spool>,
    id: &str,
) -> Result<Option<ReplayJob>, SpoolError> {
    let Some(mut job) = load(spool, id).await? else {
        return Ok(None);
    };
    if job.state == JobState::Running {
        spool.meta_put(&cancel_key(id), Some(b"1".to_vec())).await?;
        job.state = JobState::Cancelled;
        job.finished_ms = Some(now_ms());
        save(spool, &job).await?;
        tracing::info!(replay = %id, queued = job.queued, matched = job.matched, "replay job cancelled");
    }
    Ok(Some(job))
}

/// The job's progress as the API shows it.
pub(super) async fn progress(spool: &Arc<dyn Spool>, job: &ReplayJob) -> Result<Value, SpoolError> {
    let delivered = spool
        .meta_counter(&counter_key(&job.id, "delivered"))
        .await?;
    let failed = spool.meta_counter(&counter_key(&job.id, "failed")).await?;
    Ok(json!({
        "id": job.id,
        "state": job.state,
        "matched": job.matched,
        "queued": job.queued,
        "delivered": delivered,
        "failed": failed,
        "skipped": job.skipped,
        "rate": job.rate,
        "created_at": super::view::rfc3339(job.created_ms),
        "finished_at": job.finished_ms.map(super::view::rfc3339),
        "filter": job.filter,
    }))
}

/// Deletes the records of jobs finished more than a week ago.
pub(super) async fn forget_old(spool: &Arc<dyn Spool>) {
    let Ok(jobs) = list(spool).await else {
        return;
    };
    let before = now_ms().saturating_sub(KEEP_FINISHED.as_millis() as u64);
    for job in jobs {
        if job.finished_ms.is_some_and(|t| t < before) {
            let _ = spool.meta_put(&record_key(&job.id), None).await;
            let _ = spool.meta_put(&cancel_key(&job.id), None).await;
        }
    }
}

/// How a running job's look at its record went.
enum Look {
    Go,
    /// Cancelled, or another instance holds its lease now.
    Stop,
}

/// Saves the cursor and counts, renews the lease, and looks for a cancel. Called at least every
/// [`SAVE_EVERY`] while the job runs, whatever it is doing (pacing, waiting for the store), so
/// its lease never lapses while it runs and a cancel stops it within a second.
async fn look(h: &History, job: &ReplayJob) -> Look {
    let spool = h.spool();
    if matches!(spool.meta_get(&cancel_key(&job.id)).await, Ok(Some(_))) {
        tracing::info!(replay = %job.id, "replay job stopped: cancelled");
        return Look::Stop;
    }
    match spool.lease(&lease_key(&job.id), h.owner(), LEASE).await {
        Ok(false) => {
            tracing::warn!(replay = %job.id, "another instance took this replay job over (this one was silent too long); stopping here");
            return Look::Stop;
        }
        Ok(true) => {}
        Err(e) => {
            tracing::warn!(replay = %job.id, error = %e, "cannot renew the replay job's lease")
        }
    }
    if let Err(e) = save(spool, job).await {
        tracing::warn!(replay = %job.id, error = %e, "cannot save the replay job's progress");
    }
    Look::Go
}

/// Sleeps until `until`, looking at the job every [`SAVE_EVERY`] meanwhile.
async fn wait(
    h: &History,
    job: &ReplayJob,
    until: tokio::time::Instant,
    looked: &mut Instant,
) -> Look {
    loop {
        if looked.elapsed() >= SAVE_EVERY {
            *looked = Instant::now();
            if let Look::Stop = look(h, job).await {
                return Look::Stop;
            }
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return Look::Go;
        }
        tokio::time::sleep_until(until.min(now + SAVE_EVERY)).await;
    }
}

/// Runs `job` to its end (or its cancel, or another instance taking it over).
pub(super) async fn run(h: History, mut job: ReplayJob) {
    let spool = h.spool().clone();
    let filter = job.filter.filter();
    let gap = Duration::try_from_secs_f64(1.0 / job.rate).unwrap_or(Duration::from_secs(3600));
    let mut next_send = tokio::time::Instant::now();
    let mut looked = Instant::now();
    // A job cancelled before this instance took it runs nothing.
    if let Look::Stop = look(&h, &job).await {
        return;
    }
    'pages: loop {
        let q = EventQuery {
            filter: filter.clone(),
            order: Order::Asc,
            limit: PAGE,
            after: job.cursor,
        };
        let page = match spool.events(&q).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(replay = %job.id, error = %e, "cannot read the events to replay; trying again in a second");
                let again = tokio::time::Instant::now() + Duration::from_secs(1);
                if let Look::Stop = wait(&h, &job, again, &mut looked).await {
                    return;
                }
                continue;
            }
        };
        for e in &page.events {
            // Replayed by this job already, before a restart or a handover: at every
            // destination it replays.
            let done = e
                .destinations
                .iter()
                .filter(|d| filter.destination.as_deref().is_none_or(|n| n == d.name))
                .filter(|d| d.status != DeliveryStatus::Filtered)
                .all(|d| {
                    d.replay.as_deref() == Some(job.id.as_str())
                        || d.history
                            .last()
                            .is_some_and(|a| a.replay.as_deref() == Some(job.id.as_str()))
                });
            if !done {
                if let Look::Stop = wait(&h, &job, next_send, &mut looked).await {
                    return;
                }
                // The pace holds on average: a send a little late (a look at the job, a slow
                // commit) is made up for by the next ones; after a long stall (a store down),
                // the job goes on at its rate rather than sending the arrears at once.
                let now = tokio::time::Instant::now();
                if now > next_send + CATCH_UP {
                    next_send = now;
                }
                next_send += gap;
                let replayed = h
                    .replay_one(e.id, filter.destination.as_deref(), &job.id)
                    .await;
                let queued = match replayed {
                    Ok(at) => {
                        for (destination, queued) in &at {
                            h.count(&e.route, destination, *queued);
                        }
                        at.iter().any(|(_, q)| *q)
                    }
                    Err(err) if err.status == 404 => false,
                    Err(err) => {
                        tracing::warn!(replay = %job.id, event_id = %e.id, error = %err, "cannot replay an event; trying again in a second");
                        let again = tokio::time::Instant::now() + Duration::from_secs(1);
                        if let Look::Stop = wait(&h, &job, again, &mut looked).await {
                            return;
                        }
                        continue 'pages;
                    }
                };
                if queued {
                    job.queued += 1;
                } else {
                    job.skipped += 1;
                }
            }
            job.cursor = Some(e.id);
        }
        match page.next {
            Some(next) => job.cursor = Some(next.max(job.cursor.unwrap_or(next))),
            None => break,
        }
    }
    if let Look::Stop = look(&h, &job).await {
        return;
    }
    job.state = JobState::Done;
    job.finished_ms = Some(now_ms());
    if let Err(e) = save(&spool, &job).await {
        tracing::warn!(replay = %job.id, error = %e, "cannot save the finished replay job");
    }
    tracing::info!(replay = %job.id, queued = job.queued, skipped = job.skipped, matched = job.matched, "replay job done");
}
