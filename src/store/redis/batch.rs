//! Appends and deliveries in batches: what queues while one batch is on its way to Redis goes
//! in the next, one script per route (and one `WAIT` per batch), like the embedded spool's
//! group commit. A lone event goes at once; under load a round trip carries many.

use std::collections::HashMap;

use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::scripts::{APPEND, APPEND_FILTERED, DELIVERED};
use super::{storage_error, Conn, WAIT_TIMEOUT_MS};
use crate::store::spool::SpoolError;

/// The most events one batch carries.
const BATCH: usize = 256;

/// One append, queued.
pub(super) struct Append {
    /// The lanes it goes to, joined (appends going to the same lanes share a script).
    pub group: String,
    /// The lanes it goes to (none: every destination filtered it out; then `history` says
    /// where it is kept).
    pub lanes: Vec<String>,
    /// Its ordering key in each lane, hex ('' for none).
    pub orders: Vec<String>,
    /// For an event every destination filtered out: the lane whose history keeps it, and its
    /// state.
    pub history: Option<(String, Vec<u8>)>,
    pub id: String,
    pub blob: Vec<u8>,
    pub id_ms: u64,
    pub due: u64,
    /// The dedup key to commit with it: its hash and expiry (Unix ms).
    pub dedup: Option<(crate::core::DedupKey, u64)>,
    pub done: oneshot::Sender<Result<(), SpoolError>>,
}

/// One delivery, queued.
pub(super) struct Delivered {
    /// The lane it was delivered from.
    pub route: String,
    pub id: String,
    /// Its ordering key there, hex ('' for none).
    pub order: String,
    /// The stream entry this instance claimed it by ('' if none).
    pub entry: String,
    /// Its state as delivered (attempts), kept with its record in the history.
    pub state: Vec<u8>,
    pub done: oneshot::Sender<Result<(), SpoolError>>,
}

/// Takes what is queued now, up to [`BATCH`], after waiting for the first; `None` once every
/// sender is gone.
async fn next_batch<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Groups `batch` by route, keeping each route's order.
fn by_route<T>(batch: Vec<T>, route: impl Fn(&T) -> &str) -> Vec<(String, Vec<T>)> {
    let mut groups: Vec<(String, Vec<T>)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for job in batch {
        let r = route(&job).to_owned();
        match at.get(&r) {
            Some(&i) => groups[i].1.push(job),
            None => {
                at.insert(r.clone(), groups.len());
                groups.push((r, vec![job]));
            }
        }
    }
    groups
}

/// The bounds and durability every append batch checks.
#[derive(Clone, Copy)]
pub(super) struct Limits {
    pub max_events: u64,
    pub max_bytes: u64,
    pub wait_replicas: u32,
}

/// Runs append batches until every sender is gone. With `wait_replicas`, each route's script
/// and its `WAIT` go together on a connection of their own: `WAIT` blocks the connection it is
/// sent on (the shared one would stall every other command), and it covers only the writes sent
/// before it on that same connection.
pub(super) async fn appends(conn: Conn, mut rx: mpsc::UnboundedReceiver<Append>, limits: Limits) {
    let waiting = if limits.wait_replicas > 0 {
        match conn.dedicated(super::COMMAND_TIMEOUT + std::time::Duration::from_millis(500)) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "redis: no connection for WAIT; appends fail");
                None
            }
        }
    } else {
        None
    };
    while let Some(batch) = next_batch(&mut rx).await {
        let mut answered: Vec<(Append, Result<(), SpoolError>)> = Vec::with_capacity(batch.len());
        for (_, jobs) in by_route(batch, |j| &j.group) {
            let results = if jobs[0].lanes.is_empty() {
                append_filtered(&conn, &jobs).await
            } else if limits.wait_replicas == 0 {
                append_route(&conn, &jobs, limits).await
            } else if let Some(waiting) = &waiting {
                append_route_and_wait(&conn, waiting, &jobs, limits).await
            } else {
                Err(SpoolError::Storage("redis: no connection for WAIT".into()))
            };
            match results {
                Ok(results) => answered.extend(jobs.into_iter().zip(results)),
                Err(e) => answered.extend(jobs.into_iter().map(|j| (j, Err(e.clone())))),
            }
        }
        for (job, result) in answered {
            if result.is_ok() {
                if let Some((key, _)) = job.dedup {
                    conn.committed_with_event(key);
                }
            }
            let _ = job.done.send(result);
        }
    }
}

/// The append script's invocation for `jobs`, all going to the same lanes.
fn invocation(conn: &Conn, jobs: &[Append], limits: Limits) -> redis::ScriptInvocation<'static> {
    let lanes = &jobs[0].lanes;
    let mut keys = vec![conn.key(&["stats"]), conn.key(&["routes"])];
    for lane in lanes {
        for what in ["ev", "pending", "queue"] {
            keys.push(conn.key(&[what, lane]));
        }
    }
    let mut invocation = APPEND.prepare_invoke();
    invocation
        .arg(limits.max_events)
        .arg(limits.max_bytes)
        .arg(lanes.len());
    for lane in lanes {
        invocation.arg(lane);
    }
    for lane in lanes {
        invocation.arg(conn.order_prefix(lane));
    }
    for job in jobs {
        let (index, expiry) = match job.dedup {
            Some((key, expiry)) => {
                keys.push(conn.dedup_key(key));
                (keys.len(), expiry.max(1))
            }
            None => (0, 0),
        };
        invocation
            .arg(&job.id)
            .arg(&job.blob[..])
            .arg(job.id_ms)
            .arg(job.due)
            .arg(index)
            .arg(expiry);
        for order in &job.orders {
            invocation.arg(order);
        }
    }
    for k in &keys {
        invocation.key(k);
    }
    invocation
}

/// The script's answers, one per job.
fn answers(answers: Vec<Value>, jobs: usize) -> Result<Vec<Result<(), SpoolError>>, SpoolError> {
    if answers.len() != jobs {
        return Err(storage_error(format!(
            "append: {} answers for {jobs} events",
            answers.len()
        )));
    }
    Ok(answers
        .into_iter()
        .map(|a| match a {
            Value::Int(1) => Ok(()),
            Value::BulkString(full) => Err(SpoolError::Full(
                String::from_utf8_lossy(&full).into_owned(),
            )),
            Value::SimpleString(full) => Err(SpoolError::Full(full)),
            other => Err(storage_error(format!(
                "append: unexpected answer {other:?}"
            ))),
        })
        .collect())
}

/// Appends of events every destination filtered out: into their route's history at once.
async fn append_filtered(
    conn: &Conn,
    jobs: &[Append],
) -> Result<Vec<Result<(), SpoolError>>, SpoolError> {
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let Some((lane, state)) = &job.history else {
            out.push(Err(storage_error("append: no lane for the event")));
            continue;
        };
        let mut invocation = APPEND_FILTERED.prepare_invoke();
        invocation
            .key(conn.key(&["routes"]))
            .key(conn.key(&["hist", lane]))
            .key(conn.key(&["hix", lane]));
        if let Some((key, _)) = job.dedup {
            invocation.key(conn.dedup_key(key));
        }
        let (cutoff, _) = conn.history_cutoff();
        invocation
            .arg(lane)
            .arg(&job.id)
            .arg(&job.blob[..])
            .arg(&state[..])
            .arg(cutoff)
            .arg(job.dedup.map_or(0, |(_, e)| e.max(1)));
        let done: Result<i64, SpoolError> = conn
            .run("append", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await;
        out.push(done.map(drop));
    }
    Ok(out)
}

async fn append_route(
    conn: &Conn,
    jobs: &[Append],
    limits: Limits,
) -> Result<Vec<Result<(), SpoolError>>, SpoolError> {
    let invocation = invocation(conn, jobs, limits);
    let got: Vec<Value> = conn
        .run("append", |mut c| async move {
            invocation.invoke_async(&mut c).await
        })
        .await?;
    answers(got, jobs.len())
}

/// [`append_route`], then `WAIT wait_replicas`, pipelined on `waiting`: an event fewer replicas
/// confirmed in time is refused (503), and its dedup key given up, so the sender's retry is
/// stored again rather than answered `duplicate` (the first copy stays and is delivered too:
/// at least once).
async fn append_route_and_wait(
    conn: &Conn,
    waiting: &redis::aio::ConnectionManager,
    jobs: &[Append],
    limits: Limits,
) -> Result<Vec<Result<(), SpoolError>>, SpoolError> {
    let invocation = invocation(conn, jobs, limits);
    let replicas = limits.wait_replicas;
    let (got, acked): (Vec<Value>, i64) = conn
        .run_on(waiting.clone(), "append", |mut c| async move {
            let mut pipe = redis::pipe();
            pipe.invoke_script(&invocation)
                .cmd("WAIT")
                .arg(replicas)
                .arg(WAIT_TIMEOUT_MS);
            match pipe.query_async(&mut c).await {
                // A pipeline does not load a script Redis does not know yet.
                Err(e) if e.code() == Some("NOSCRIPT") => {
                    invocation.load_async(&mut c).await?;
                    pipe.query_async(&mut c).await
                }
                other => other,
            }
        })
        .await?;
    let mut results = answers(got, jobs.len())?;
    if acked < i64::from(replicas) {
        let refused = SpoolError::Storage(format!(
            "redis: only {acked} of {replicas} replicas confirmed the event within {WAIT_TIMEOUT_MS} ms"
        ));
        let keys: Vec<String> = jobs
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .filter_map(|(j, _)| j.dedup.map(|(k, _)| conn.dedup_key(k)))
            .collect();
        if !keys.is_empty() {
            let given_up = conn
                .run("commit", |mut c| async move {
                    redis::cmd("DEL")
                        .arg(&keys)
                        .query_async::<i64>(&mut c)
                        .await
                })
                .await;
            if let Err(e) = given_up {
                tracing::warn!(error = %e, "cannot give up the dedup keys of unconfirmed events: their retries are answered duplicate");
            }
        }
        for r in results.iter_mut().filter(|r| r.is_ok()) {
            *r = Err(refused.clone());
        }
    }
    Ok(results)
}

/// Runs delivery batches until every sender is gone.
pub(super) async fn deliveries(conn: Conn, mut rx: mpsc::UnboundedReceiver<Delivered>) {
    while let Some(batch) = next_batch(&mut rx).await {
        for (route, jobs) in by_route(batch, |j| &j.route) {
            let keys =
                conn.script_keys(&route, &["ev", "pending", "queue", "retry", "hist", "hix"]);
            let mut invocation = DELIVERED.prepare_invoke();
            for k in &keys {
                invocation.key(k);
            }
            let (cutoff, cut_u) = conn.history_cutoff();
            invocation
                .arg(if conn.keeps_history() { "1" } else { "0" })
                .arg(cutoff)
                .arg(cut_u)
                .arg(conn.order_prefix(&route));
            for job in &jobs {
                invocation
                    .arg(&job.id)
                    .arg(&job.entry)
                    .arg(&job.state[..])
                    .arg(&job.order);
            }
            let result = conn
                .run("deliver", |mut c| async move {
                    invocation.invoke_async::<i64>(&mut c).await
                })
                .await;
            if let Err(e) = &result {
                tracing::warn!(%route, events = jobs.len(), error = %e, "cannot record deliveries; their events are delivered again once their hold times out");
            }
            for job in jobs {
                let _ = job.done.send(result.clone().map(drop));
            }
        }
    }
}
