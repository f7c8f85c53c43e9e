//! The event history on Redis: every route keeps its pending events (`ev`, by time in
//! `pending`), its dead letters (`dead`, by id in `deadix`) and its delivered events (`hist`,
//! by id in `hix`). A query reads each of those (of each route it covers) in id order, a chunk
//! at a time, and merges them: a page reads a bounded number of events however many match.

use std::collections::VecDeque;

use redis::streams::StreamRangeReply;
use uuid::Uuid;

use super::Conn;
use crate::store::event::{id_ms, Event};
use crate::store::history::{self, DeliveryStatus, EventPage, EventQuery, Order, PageBuilder};
use crate::store::record::{decode, decode_state};
use crate::store::spool::{EventSummary, SpoolError};

/// Index members read per round trip from one source.
const CHUNK: usize = 200;

/// An event found by id: where it stands, its route, and where its record is (the index
/// member of a dead letter or a delivered event; empty for a pending one).
pub(super) struct Found {
    pub event: Event,
    pub status: DeliveryStatus,
    pub route: String,
    pub locator: String,
}

/// Reads the history (queries, lookups by id) on the backend's shared connection.
pub(super) struct HistoryReader {
    conn: Conn,
}

/// One route's events of one status, read in id order a chunk at a time.
struct Source {
    route: String,
    status: DeliveryStatus,
    /// Read and not yet merged.
    buf: VecDeque<Event>,
    /// Where the next chunk starts (exclusive): the last id read.
    cursor: Option<String>,
    /// Nothing more to read.
    done: bool,
}

/// A query's id window as the indexes take it.
struct Window {
    lo_ms: Option<u64>,
    hi_ms: Option<u64>,
    order: Order,
}

impl Window {
    fn lo_u(&self) -> Option<String> {
        self.lo_ms.map(|ms| history::first_id_at(ms).to_string())
    }

    fn hi_u(&self) -> Option<String> {
        self.hi_ms.map(|ms| history::first_id_at(ms).to_string())
    }
}

/// The stream entry in an index member (`u:entry` or `u|entry`).
fn entry_of(member: &str) -> &str {
    member.get(37..).unwrap_or("")
}

/// The id in an index member.
fn id_of(member: &str) -> &str {
    member.get(..36).unwrap_or(member)
}

impl HistoryReader {
    pub(super) fn new(conn: Conn) -> Self {
        Self { conn }
    }

    /// Where the history starts now (delivered events received before are past the retention).
    fn visible_from_ms(&self) -> u64 {
        self.conn.history_cutoff().0
    }

    /// Every route that ever stored an event, by name.
    pub(super) async fn routes(&self) -> Result<Vec<String>, SpoolError> {
        let key = self.conn.key(&["routes"]);
        let mut routes: Vec<String> = self
            .conn
            .run("read", |mut c| async move {
                redis::cmd("SMEMBERS").arg(&key).query_async(&mut c).await
            })
            .await?;
        routes.sort();
        Ok(routes)
    }

    /// The entries `ids` of stream `key`, each as `(id, fields)` (absent ones skipped).
    async fn entries(
        &self,
        key: &str,
        ids: &[&str],
    ) -> Result<Vec<redis::streams::StreamId>, SpoolError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("XRANGE").arg(key).arg(*id).arg(*id);
        }
        let pages: Vec<StreamRangeReply> = self
            .conn
            .run(
                "read",
                |mut c| async move { pipe.query_async(&mut c).await },
            )
            .await?;
        Ok(pages
            .into_iter()
            .filter_map(|p| p.ids.into_iter().next())
            .collect())
    }

    /// The event of a history entry: its record with its state as delivered.
    fn delivered(u: &str, entry: &redis::streams::StreamId) -> Result<Event, SpoolError> {
        let mut event = decode(u, &entry.get::<Vec<u8>>("e").unwrap_or_default())?;
        if let Some(state) = entry.get::<Vec<u8>>("a") {
            decode_state(u, &state)?.apply(&mut event);
        }
        Ok(event)
    }

    /// Event `id`, wherever it stands.
    pub(super) async fn find(&self, id: Uuid) -> Result<Option<Found>, SpoolError> {
        let u = id.to_string();
        for route in self.routes().await? {
            let ev = self.conn.key(&["ev", &route]);
            let deadix = self.conn.key(&["deadix", &route]);
            let hix = self.conn.key(&["hix", &route]);
            let mut pipe = redis::pipe();
            pipe.cmd("HGET").arg(&ev).arg(&u);
            pipe.cmd("ZRANGEBYLEX")
                .arg(&deadix)
                .arg(format!("[{u}:"))
                .arg(format!("({u};"))
                .arg("LIMIT")
                .arg(0)
                .arg(1);
            pipe.cmd("ZRANGEBYLEX")
                .arg(&hix)
                .arg(format!("[{u}|"))
                .arg(format!("({u}}}"))
                .arg("LIMIT")
                .arg(0)
                .arg(1);
            let (blob, dead, done): (Option<Vec<u8>>, Vec<String>, Vec<String>) = self
                .conn
                .run(
                    "read",
                    |mut c| async move { pipe.query_async(&mut c).await },
                )
                .await?;
            if let Some(blob) = blob {
                return Ok(Some(Found {
                    event: decode(&u, &blob)?,
                    status: DeliveryStatus::Pending,
                    route,
                    locator: String::new(),
                }));
            }
            if let Some(member) = dead.into_iter().next() {
                let key = self.conn.key(&["dead", &route]);
                let Some(entry) = self.entries(&key, &[entry_of(&member)]).await?.pop() else {
                    continue;
                };
                let event = decode(&u, &entry.get::<Vec<u8>>("e").unwrap_or_default())?;
                return Ok(Some(Found {
                    event,
                    status: DeliveryStatus::Dead,
                    route,
                    locator: member,
                }));
            }
            if let Some(member) = done.into_iter().next() {
                if !history::retained(id, self.visible_from_ms()) {
                    return Ok(None);
                }
                let key = self.conn.key(&["hist", &route]);
                let Some(entry) = self.entries(&key, &[entry_of(&member)]).await?.pop() else {
                    continue;
                };
                return Ok(Some(Found {
                    event: Self::delivered(&u, &entry)?,
                    status: DeliveryStatus::Delivered,
                    route,
                    locator: member,
                }));
            }
        }
        Ok(None)
    }

    /// A page of `q`.
    pub(super) async fn query(&self, q: &EventQuery) -> Result<EventPage, SpoolError> {
        let f = &q.filter;
        let routes = match &f.route {
            Some(r) => vec![r.clone()],
            None => self.routes().await?,
        };
        let statuses = match f.status {
            Some(s) => vec![s],
            None => vec![
                DeliveryStatus::Pending,
                DeliveryStatus::Dead,
                DeliveryStatus::Delivered,
            ],
        };
        let (lo_ms, hi_ms) = f.id_window();
        let window = Window {
            lo_ms,
            hi_ms,
            order: q.order,
        };
        let after = q.after.map(|a| a.to_string());
        let mut sources: Vec<Source> = routes
            .iter()
            .flat_map(|r| {
                statuses.iter().map(|&status| Source {
                    route: r.clone(),
                    status,
                    buf: VecDeque::new(),
                    cursor: after.clone(),
                    done: false,
                })
            })
            .collect();
        let visible_from = self.visible_from_ms();
        let mut page = PageBuilder::new(q.limit);
        loop {
            for s in sources.iter_mut() {
                if s.buf.is_empty() && !s.done {
                    self.refill(s, &window).await?;
                }
            }
            let next = sources
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.buf.front().map(|e| (i, e.id)))
                .reduce(|a, b| match (q.order, b.1 < a.1) {
                    (Order::Asc, true) | (Order::Desc, false) => b,
                    _ => a,
                });
            let Some((i, _)) = next else {
                return Ok(page.finish(true));
            };
            let status = sources[i].status;
            let Some(e) = sources[i].buf.pop_front() else {
                continue;
            };
            let shown =
                status != DeliveryStatus::Delivered || history::retained(e.id, visible_from);
            let matched = (shown
                && f.admits(
                    &e.route,
                    e.received_ms,
                    e.dedup.as_ref().map(|d| &d.key),
                    status,
                )
                && f.matches_body(&e.body))
            .then(|| EventSummary::of(&e, status));
            if !page.offer(e.id, matched) {
                return Ok(page.finish(false));
            }
        }
    }

    /// Reads the next chunk of `s` into its buffer (or marks it done).
    async fn refill(&self, s: &mut Source, w: &Window) -> Result<(), SpoolError> {
        let desc = w.order == Order::Desc;
        match s.status {
            DeliveryStatus::Pending => self.refill_pending(s, w).await,
            DeliveryStatus::Dead | DeliveryStatus::Delivered => {
                // Members are `u:entry` (dead letters) or `u|entry` (history): the first name
                // past every member of id `u` is `u;` or `u}`.
                let (index, stream, past) = match s.status {
                    DeliveryStatus::Dead => ("deadix", "dead", ';'),
                    _ => ("hix", "hist", '}'),
                };
                let index = self.conn.key(&[index, &s.route]);
                let (min, max) = if desc {
                    (
                        w.lo_u().map_or("-".into(), |u| format!("[{u}")),
                        match (&s.cursor, w.hi_u()) {
                            (Some(c), _) => format!("({c}"),
                            (None, Some(u)) => format!("({u}"),
                            (None, None) => "+".into(),
                        },
                    )
                } else {
                    (
                        match (&s.cursor, w.lo_u()) {
                            (Some(c), _) => format!("({c}{past}"),
                            (None, Some(u)) => format!("[{u}"),
                            (None, None) => "-".into(),
                        },
                        w.hi_u().map_or("+".into(), |u| format!("({u}")),
                    )
                };
                let (first, second) = if desc { (&max, &min) } else { (&min, &max) };
                let (first, second) = (first.clone(), second.clone());
                let members: Vec<String> = self
                    .conn
                    .run("read", |mut c| async move {
                        redis::cmd(if desc {
                            "ZREVRANGEBYLEX"
                        } else {
                            "ZRANGEBYLEX"
                        })
                        .arg(&index)
                        .arg(&first)
                        .arg(&second)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(CHUNK)
                        .query_async(&mut c)
                        .await
                    })
                    .await?;
                s.done = members.len() < CHUNK;
                let Some(last) = members.last() else {
                    return Ok(());
                };
                s.cursor = Some(id_of(last).to_owned());
                let key = self.conn.key(&[stream, &s.route]);
                let ids: Vec<&str> = members.iter().map(|m| entry_of(m)).collect();
                let entries = self.entries(&key, &ids).await?;
                for entry in entries {
                    let u = entry.get::<String>("u").unwrap_or_default();
                    let event = if s.status == DeliveryStatus::Dead {
                        decode(&u, &entry.get::<Vec<u8>>("e").unwrap_or_default())
                    } else {
                        Self::delivered(&u, &entry)
                    };
                    match event {
                        Ok(e) => s.buf.push_back(e),
                        // One this release cannot read is left out, not the page's end.
                        Err(e) => {
                            tracing::warn!(event_id = %u, error = %e, "an event in the history cannot be read: left out of the query")
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// The next chunk of a route's pending events: `pending` scores them by their id's time,
    /// and ids of one millisecond sort by name.
    async fn refill_pending(&self, s: &mut Source, w: &Window) -> Result<(), SpoolError> {
        let desc = w.order == Order::Desc;
        let cursor_ms = s
            .cursor
            .as_deref()
            .and_then(|c| Uuid::parse_str(c).ok())
            .and_then(id_ms);
        let bound = |ms: Option<u64>, open: &str| ms.map_or(open.to_owned(), |m| m.to_string());
        let (from, to) = if desc {
            (bound(cursor_ms.or(w.hi_ms), "+inf"), bound(w.lo_ms, "-inf"))
        } else {
            (bound(cursor_ms.or(w.lo_ms), "-inf"), bound(w.hi_ms, "+inf"))
        };
        let key = self.conn.key(&["pending", &s.route]);
        let mut fetch = CHUNK;
        let fresh: Vec<String> = loop {
            let (k, a, b) = (key.clone(), from.clone(), to.clone());
            let members: Vec<String> = self
                .conn
                .run("read", |mut c| async move {
                    redis::cmd(if desc {
                        "ZREVRANGEBYSCORE"
                    } else {
                        "ZRANGEBYSCORE"
                    })
                    .arg(&k)
                    .arg(&a)
                    .arg(&b)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(fetch)
                    .query_async(&mut c)
                    .await
                })
                .await?;
            let short = members.len() < fetch;
            // The cursor's millisecond is read again: what was read of it already is skipped.
            let fresh: Vec<String> = members
                .into_iter()
                .filter(|m| match &s.cursor {
                    Some(c) if desc => m.as_str() < c.as_str(),
                    Some(c) => m.as_str() > c.as_str(),
                    None => true,
                })
                .collect();
            if short {
                s.done = true;
                break fresh;
            }
            if !fresh.is_empty() {
                break fresh;
            }
            // A whole chunk of one millisecond read already: a bigger one.
            fetch *= 2;
        };
        let Some(last) = fresh.last() else {
            s.done = true;
            return Ok(());
        };
        s.cursor = Some(last.clone());
        let ev = self.conn.key(&["ev", &s.route]);
        let ids = fresh.clone();
        let blobs: Vec<Option<Vec<u8>>> = self
            .conn
            .run("read", |mut c| async move {
                redis::cmd("HMGET")
                    .arg(&ev)
                    .arg(&ids)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        for (u, blob) in fresh.iter().zip(blobs) {
            // Delivered or dead-lettered meanwhile: read where it went, in its turn.
            match blob.map(|b| decode(u, &b)) {
                Some(Ok(e)) => s.buf.push_back(e),
                Some(Err(e)) => {
                    tracing::warn!(event_id = %u, error = %e, "an event in the history cannot be read: left out of the query")
                }
                None => {}
            }
        }
        Ok(())
    }
}
