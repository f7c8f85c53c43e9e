//! [`RedisDedupStore`]: dedup keys in Redis, seen by every instance.
//!
//! - `reserve`: `SET key r:{instance} NX PX {in-flight TTL}` (one script, which also tells a
//!   committed key from one in flight). The in-flight TTL is the visibility timeout: a request
//!   whose instance died holds its key no longer than that.
//! - `commit`: `SET key c PX {ttl}`: the key answers `duplicate` for its full TTL, everywhere.
//! - `release`: deletes the key only while it is still this instance's reservation.
//!
//! `commit` and `release` are fire-and-forget (the trait's contract); a `reserve` of a key with
//! one of them still on its way waits for it, so this instance never answers from before its
//! own last write of that key.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::scripts::{RELEASE, RESERVE};
use super::Conn;
use crate::core::{DedupKey, Reservation};
use crate::store::{BoxReserveFuture, DedupStore, SpoolError, StoreError};

/// A reservation queued for the next batch: the key's name and where its answer goes.
type Reserve = (String, oneshot::Sender<Result<i64, SpoolError>>);

/// The most reservations one batch carries.
const BATCH: usize = 256;

/// Runs reservation batches (one script a round trip) until every sender is gone.
async fn reservations(
    conn: Conn,
    marker: Arc<str>,
    ms: u64,
    mut rx: mpsc::UnboundedReceiver<Reserve>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut invocation = RESERVE.prepare_invoke();
        for (name, _) in &batch {
            invocation.key(name);
        }
        invocation.arg(&*marker).arg(ms);
        let answers = conn
            .run("reserve", |mut c| async move {
                invocation.invoke_async::<Vec<i64>>(&mut c).await
            })
            .await;
        match answers {
            Ok(answers) if answers.len() == batch.len() => {
                for ((_, done), a) in batch.into_iter().zip(answers) {
                    let _ = done.send(Ok(a));
                }
            }
            Ok(answers) => {
                let e = SpoolError::Storage(format!(
                    "reserve: {} answers for {} keys",
                    answers.len(),
                    batch.len()
                ));
                for (_, done) in batch {
                    let _ = done.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for (_, done) in batch {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// A reservation while Redis refuses writes (out of memory, unable to persist): a key already
/// committed is still answered `duplicate` (the sender stops retrying an event that is stored),
/// one in flight `InFlight`, both from a read; a free key cannot be reserved, so it is refused
/// as full (503 `spool_full`), like the append that would follow.
async fn reserve_read_only(
    conn: &Conn,
    name: String,
    why: String,
) -> Result<Reservation, StoreError> {
    let value = conn
        .run("reserve", |mut c| async move {
            redis::cmd("GET")
                .arg(name)
                .query_async::<Option<String>>(&mut c)
                .await
        })
        .await
        .map_err(|e| StoreError::new(e.to_string()))?;
    match value.as_deref() {
        None => Err(StoreError::full(format!("redis refuses writes: {why}"))),
        Some("c") => Ok(Reservation::Duplicate),
        Some(_) => Ok(Reservation::InFlight),
    }
}

/// A [`DedupStore`] in Redis, shared by every instance on one prefix.
#[derive(Clone)]
pub struct RedisDedupStore {
    conn: Conn,
    marker: Arc<str>,
    reserves: mpsc::UnboundedSender<Reserve>,
    /// Keys with a commit or release on its way: closed when it lands.
    writing: Arc<DashMap<u128, Arc<Semaphore>>>,
}

impl std::fmt::Debug for RedisDedupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDedupStore")
            .field("marker", &self.marker)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisDedupStore {
    pub(super) fn new(conn: Conn, instance: String, in_flight: Duration) -> Self {
        let marker: Arc<str> = format!("r:{instance}").into();
        let in_flight_ms = millis(in_flight);
        let (reserves, rx) = mpsc::unbounded_channel();
        conn.spawn(reservations(conn.clone(), marker.clone(), in_flight_ms, rx));
        Self {
            conn,
            marker,
            reserves,
            writing: Arc::new(DashMap::new()),
        }
    }

    fn key(&self, key: DedupKey) -> String {
        self.conn.dedup_key(key)
    }

    /// Sends a fire-and-forget write of `key` on the backend's runtime; `reserve` of the same
    /// key waits for it.
    fn write<F, Fut>(&self, key: DedupKey, command: &'static str, f: F)
    where
        F: FnOnce(redis::aio::ConnectionManager, String, Arc<str>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), redis::RedisError>> + Send + 'static,
    {
        let done = Arc::new(Semaphore::new(0));
        self.writing.insert(key.as_u128(), done.clone());
        let (conn, name, marker, writing) = (
            self.conn.clone(),
            self.key(key),
            self.marker.clone(),
            self.writing.clone(),
        );
        conn.clone().spawn(async move {
            if let Err(e) = conn.run(command, |c| f(c, name, marker)).await {
                tracing::warn!(command, error = %e, "dedup write lost: a later duplicate may be let through, or a retry wait for the in-flight TTL");
            }
            done.close();
            writing.remove_if(&key.as_u128(), |_, v| Arc::ptr_eq(v, &done));
        });
    }
}

impl DedupStore for RedisDedupStore {
    type ReserveFuture = BoxReserveFuture;

    fn reserve(&self, key: DedupKey, _ttl: Duration) -> BoxReserveFuture {
        let earlier = self.writing.get(&key.as_u128()).map(|w| w.clone());
        let (up, name, reserves) = (self.conn.is_up(), self.key(key), self.reserves.clone());
        let refused = if up { self.conn.refusal() } else { None };
        let conn = self.conn.clone();
        Box::pin(async move {
            if !up {
                return Err(StoreError::new("redis is unreachable"));
            }
            if let Some(why) = refused {
                return reserve_read_only(&conn, name, why).await;
            }
            if let Some(earlier) = earlier {
                // Closed when it lands (acquire then fails); bounded by the command timeout.
                let _ = tokio::time::timeout(super::COMMAND_TIMEOUT, earlier.acquire()).await;
            }
            let (done, answer) = oneshot::channel();
            reserves
                .send((name, done))
                .map_err(|_| StoreError::new("the redis dedup store is closed"))?;
            let answer = answer
                .await
                .unwrap_or(Err(SpoolError::Closed))
                .map_err(|e| match e {
                    // Redis refused the reservation's write (out of memory, unable to persist).
                    SpoolError::Full(s) => StoreError::full(s),
                    SpoolError::Storage(s) => StoreError::new(s),
                    other => StoreError::new(other.to_string()),
                })?;
            Ok(match answer {
                0 => Reservation::Reserved,
                1 => Reservation::Duplicate,
                _ => Reservation::InFlight,
            })
        })
    }

    fn commit(&self, key: DedupKey, ttl: Duration) {
        if self.conn.take_committed(key) {
            // The append that stored its event committed it already, in the same script.
            return;
        }
        let ms = millis(ttl);
        self.write(key, "commit", move |mut c, name, _| async move {
            redis::cmd("SET")
                .arg(name)
                .arg("c")
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut c)
                .await
        });
    }

    fn release(&self, key: DedupKey) {
        self.write(key, "release", |mut c, name, marker| async move {
            RELEASE
                .key(name)
                .arg(&*marker)
                .invoke_async::<i64>(&mut c)
                .await
                .map(drop)
        });
    }
}
