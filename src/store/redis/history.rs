//! The event history on Redis: every lane (a route's destination) keeps its pending events
//! (`ev`, by time in `pending`), its dead letters (`dead`, by id in `deadix`) and its delivered
//! events (`hist`, by id in `hix`). A query reads each of those (of each lane it covers) in id
//! order, a chunk at a time, and merges them, an event's copies in its route's lanes into one:
//! a page reads a bounded number of events however many match.

use std::collections::VecDeque;

use redis::streams::StreamRangeReply;
use uuid::Uuid;

use super::Conn;
use crate::store::event::{id_ms, Event};
use crate::store::history::{
    self, DeliveryStatus, DestinationState, EventDetail, EventPage, EventQuery, Order, PageBuilder,
};
use crate::store::record::{decode, decode_state};
use crate::store::spool::{EventSummary, SpoolError};

/// Index members read per round trip from one source.
const CHUNK: usize = 200;

/// One destination's copy of an event found by id: where it stands, its lane, and where its
/// record is (the index member of a dead letter or a delivered event; empty for a pending one).
pub(super) struct FoundLane {
    pub event: Event,
    pub status: DeliveryStatus,
    pub lane: String,
    pub locator: String,
}

/// An event found by id: its record, and its copy in each lane that has one.
pub(super) struct Found {
    pub record: Event,
    pub lanes: Vec<FoundLane>,
}

impl Found {
    /// The event with where each destination stands (a filtered one as its record says).
    pub(super) fn detail(self) -> EventDetail {
        let destinations = states(
            &self.record,
            self.lanes.iter().map(|l| (&l.event, l.status)),
        );
        EventDetail {
            event: self.record,
            destinations,
        }
    }
}

/// Where each destination of `record` stands, from its copies (each with its status) and the
/// destinations its record says filtered it out.
fn states<'a>(
    record: &Event,
    copies: impl Iterator<Item = (&'a Event, DeliveryStatus)>,
) -> Vec<DestinationState> {
    let filtered: Vec<&str> = record
        .fanout()
        .filter(|(_, f)| *f)
        .map(|(d, _)| d)
        .collect();
    let mut out: Vec<DestinationState> = copies
        .filter(|(e, _)| !filtered.contains(&e.destination_name()))
        .map(|(e, status)| DestinationState::of(e, status))
        .collect();
    out.extend(filtered.into_iter().map(DestinationState::filtered));
    // In the record's order of destinations.
    let order: Vec<&str> = record.fanout().map(|(d, _)| d).collect();
    out.sort_by_key(|d| {
        order
            .iter()
            .position(|o| *o == d.name)
            .unwrap_or(usize::MAX)
    });
    out
}

/// Reads the history (queries, lookups by id) on the backend's shared connection.
pub(super) struct HistoryReader {
    conn: Conn,
}

/// One lane's events of one status, read in id order a chunk at a time.
struct Source {
    route: String,
    /// The destination of the lane (`route`).
    destination: String,
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

    /// Event `id`, wherever it stands, in every lane that has it (a delivered copy only
    /// within the retention).
    pub(super) async fn find(&self, id: Uuid) -> Result<Option<Found>, SpoolError> {
        let u = id.to_string();
        let lanes = self.routes().await?;
        if lanes.is_empty() {
            return Ok(None);
        }
        let mut pipe = redis::pipe();
        for lane in &lanes {
            pipe.cmd("HGET").arg(self.conn.key(&["ev", lane])).arg(&u);
            pipe.cmd("ZRANGEBYLEX")
                .arg(self.conn.key(&["deadix", lane]))
                .arg(format!("[{u}:"))
                .arg(format!("({u};"))
                .arg("LIMIT")
                .arg(0)
                .arg(1);
            pipe.cmd("ZRANGEBYLEX")
                .arg(self.conn.key(&["hix", lane]))
                .arg(format!("[{u}|"))
                .arg(format!("({u}}}"))
                .arg("LIMIT")
                .arg(0)
                .arg(1);
        }
        let answers: Vec<redis::Value> = self
            .conn
            .run(
                "read",
                |mut c| async move { pipe.query_async(&mut c).await },
            )
            .await?;
        let visible = history::retained(id, self.visible_from_ms());
        let mut found = Vec::new();
        for (lane, a) in lanes.iter().zip(answers.chunks_exact(3)) {
            let destination = crate::store::split_lane(lane).1;
            let blob: Option<Vec<u8>> =
                redis::from_redis_value(a[0].clone()).map_err(super::storage_error)?;
            let dead: Vec<String> =
                redis::from_redis_value(a[1].clone()).map_err(super::storage_error)?;
            let done: Vec<String> =
                redis::from_redis_value(a[2].clone()).map_err(super::storage_error)?;
            if let Some(blob) = blob {
                found.push(FoundLane {
                    event: decode(&u, &blob)?.for_destination(destination),
                    status: DeliveryStatus::Pending,
                    lane: lane.clone(),
                    locator: String::new(),
                });
            } else if let Some(member) = dead.into_iter().next() {
                let key = self.conn.key(&["dead", lane]);
                let Some(entry) = self.entries(&key, &[entry_of(&member)]).await?.pop() else {
                    continue;
                };
                let event = decode(&u, &entry.get::<Vec<u8>>("e").unwrap_or_default())?;
                found.push(FoundLane {
                    event: event.for_destination(destination),
                    status: DeliveryStatus::Dead,
                    lane: lane.clone(),
                    locator: member,
                });
            } else if let Some(member) = done.into_iter().next() {
                if !visible {
                    continue;
                }
                let key = self.conn.key(&["hist", lane]);
                let Some(entry) = self.entries(&key, &[entry_of(&member)]).await?.pop() else {
                    continue;
                };
                found.push(FoundLane {
                    event: Self::delivered(&u, &entry)?.for_destination(destination),
                    status: DeliveryStatus::Delivered,
                    lane: lane.clone(),
                    locator: member,
                });
            }
        }
        let Some(first) = found.first() else {
            return Ok(None);
        };
        let record = first
            .event
            .clone()
            .for_destination(crate::store::DEFAULT_DESTINATION);
        Ok(Some(Found {
            record,
            lanes: found,
        }))
    }

    /// A page of `q`.
    pub(super) async fn query(&self, q: &EventQuery) -> Result<EventPage, SpoolError> {
        let f = &q.filter;
        let lanes: Vec<String> = self
            .routes()
            .await?
            .into_iter()
            .filter(|l| {
                f.route
                    .as_deref()
                    .is_none_or(|r| crate::store::split_lane(l).0 == r)
            })
            .collect();
        // A route of one lane shows its events' status where they are: only the sources of
        // the status asked for are read. A route of several needs every copy of an event to
        // tell where it stands.
        let mut per_route: std::collections::HashMap<&str, usize> = Default::default();
        for l in &lanes {
            *per_route.entry(crate::store::split_lane(l).0).or_default() += 1;
        }
        let single = per_route.values().all(|n| *n == 1);
        let statuses = match f.status {
            Some(s) if single && s != DeliveryStatus::Filtered => vec![s],
            _ => vec![
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
        let mut sources: Vec<Source> = lanes
            .iter()
            .flat_map(|l| {
                statuses.iter().map(|&status| Source {
                    route: l.clone(),
                    destination: crate::store::split_lane(l).1.to_owned(),
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
                .filter_map(|s| s.buf.front().map(|e| e.id))
                .reduce(|a, b| match (q.order, b < a) {
                    (Order::Asc, true) | (Order::Desc, false) => b,
                    _ => a,
                });
            let Some(id) = next else {
                return Ok(page.finish(true));
            };
            // Every copy of the event, from each source holding it now.
            let mut copies: Vec<(Event, DeliveryStatus)> = Vec::new();
            for s in sources.iter_mut() {
                if s.buf.front().is_some_and(|e| e.id == id) {
                    if let Some(e) = s.buf.pop_front() {
                        copies.push((e, s.status));
                    }
                }
            }
            let shown = copies
                .iter()
                .filter(|(_, status)| {
                    *status != DeliveryStatus::Delivered || history::retained(id, visible_from)
                })
                .map(|(e, s)| (e, *s));
            let matched = match copies.first() {
                Some((record, _)) => {
                    let states = states(record, shown);
                    (!states.is_empty()
                        && f.admits(
                            &record.route,
                            record.received_ms,
                            record.dedup.as_ref().map(|d| &d.key),
                        )
                        && f.admits_destinations(&states)
                        && f.matches_body(&record.body))
                    .then(|| EventSummary::with_destinations(record, states))
                }
                None => None,
            };
            if !page.offer(id, matched) {
                return Ok(page.finish(false));
            }
        }
    }

    /// Reads the next chunk of `s` into its buffer (or marks it done).
    async fn refill(&self, s: &mut Source, w: &Window) -> Result<(), SpoolError> {
        let desc = w.order == Order::Desc;
        match s.status {
            DeliveryStatus::Pending => self.refill_pending(s, w).await,
            // Never read: a filtered destination's status is in its record.
            DeliveryStatus::Filtered => {
                s.done = true;
                Ok(())
            }
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
                        Ok(e) => s.buf.push_back(e.for_destination(&s.destination)),
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
                Some(Ok(e)) => s.buf.push_back(e.for_destination(&s.destination)),
                Some(Err(e)) => {
                    tracing::warn!(event_id = %u, error = %e, "an event in the history cannot be read: left out of the query")
                }
                None => {}
            }
        }
        Ok(())
    }
}
