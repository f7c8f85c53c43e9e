//! The conformance suite every storage backend passes: one set of checks of the [`Spool`] and
//! [`DedupStore`] contracts (reserve / commit / release / expiry; append / recover / dead letter
//! / replay / purge; bounds; exact counts under repeated and concurrent writes). A new backend
//! runs it from a test with a function that opens a fresh instance:
//!
//! ```
//! use hookgate::store::{conformance, memory::MemorySpool, MemoryDedupStore, SharedDedupStore};
//! use std::sync::Arc;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! conformance::spool(|b| {
//!     Arc::new(MemorySpool::new(b.max_events, b.max_bytes).with_retention(b.retention))
//! })
//! .await;
//! conformance::dedup(|| SharedDedupStore::new(MemoryDedupStore::new(1000))).await;
//! # });
//! ```
//!
//! Each check panics with its name and what differed. `tests/conformance.rs` runs it for every
//! backend of this crate.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

use super::history::{DeliveryStatus, EventFilter, EventQuery, Order};
use super::{
    now_ms, AttemptKind, DedupStore, Event, Reserved, SharedDedupStore, Spool, SpoolError,
};
use crate::core::{DedupKey, JsonPointer, Reservation};

/// The bounds a spool under test is opened with.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The most events held.
    pub max_events: u64,
    /// The most bytes held.
    pub max_bytes: u64,
    /// How long delivered events stay in the history.
    pub retention: Duration,
}

const ROOMY: Bounds = Bounds {
    max_events: 10_000,
    max_bytes: 1 << 30,
    retention: Duration::from_secs(72 * 3600),
};

/// The retention of the spool [`retention_drops_delivered_events_only`] checks.
const SHORT_RETENTION: Duration = Duration::from_millis(400);

fn event(route: &str) -> Event {
    Event::new(
        route,
        "127.0.0.1".parse().expect("a literal address"),
        "POST",
        "/w",
        vec![("content-type".into(), b"application/json".to_vec())],
        Bytes::from_static(br#"{"generation_id":"550e8400-e29b-41d4-a716-446655440000"}"#),
    )
}

fn ids(events: &[Event]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

/// Runs every spool check, each on a fresh spool from `open`.
pub async fn spool<S: Spool + ?Sized>(open: impl Fn(Bounds) -> Arc<S>) {
    append_get_deliver(&*open(ROOMY)).await;
    dedup_keys_persist_and_expire(&*open(ROOMY)).await;
    dead_letters_by_route_page_replay_purge(&*open(ROOMY)).await;
    repeated_and_concurrent_writes_count_once(&*open(ROOMY)).await;
    bounds_refuse_then_free(&*open(Bounds {
        max_events: 2,
        ..ROOMY
    }))
    .await;
    bounds_on_bytes(&*open(Bounds {
        max_events: 100,
        max_bytes: 200,
        ..ROOMY
    }))
    .await;
    oldest_pending_is_per_route(&*open(ROOMY)).await;
    history_finds_pages_and_replays(&*open(ROOMY)).await;
    records_counters_and_leases(&*open(ROOMY)).await;
    fan_out_keeps_each_destinations_state(&*open(ROOMY)).await;
    retention_drops_delivered_events_only(&*open(Bounds {
        retention: SHORT_RETENTION,
        ..ROOMY
    }))
    .await;
}

async fn append_get_deliver<S: Spool + ?Sized>(spool: &S) {
    let (a, b) = (event("r"), event("r"));
    spool.append(&a).await.expect("append a");
    spool.append(&b).await.expect("append b");
    assert_eq!(spool.get("r", a.id).expect("get"), Some(a.clone()), "get a");
    assert_eq!(
        spool.get("other", a.id).expect("get"),
        None,
        "get is per route"
    );
    assert_eq!(
        ids(&spool.pending().expect("pending")),
        [a.id, b.id],
        "pending, oldest first"
    );
    let schedule = spool.pending_schedule("r").expect("schedule");
    assert_eq!(
        schedule,
        [(a.id, a.next_attempt_ms), (b.id, b.next_attempt_ms)],
        "pending_schedule"
    );
    assert!(spool
        .pending_schedule("other")
        .expect("schedule")
        .is_empty());
    let stats = spool.stats();
    assert_eq!((stats.pending, stats.dead), (2, 0), "{stats:?}");
    assert!(stats.bytes > 0, "bytes counted: {stats:?}");
    let mut later = a.clone();
    later.attempts = 1;
    later.next_attempt_ms += 60_000;
    later.record_outcome("status 503".into());
    spool.reschedule(&later).await.expect("reschedule");
    assert_eq!(
        spool.get("r", a.id).expect("get"),
        Some(later.clone()),
        "rescheduled"
    );
    spool.delivered(&a).await.expect("delivered a");
    spool.forget_delivered(&b);
    wait_pending(spool, 0).await;
    assert_eq!(spool.stats().bytes, 0, "no bytes left: {:?}", spool.stats());
    spool.probe().await.expect("probe");
}

/// Waits (bounded) until the spool counts `n` pending events: removals of delivered events may
/// ride a later batch.
async fn wait_pending<S: Spool + ?Sized>(spool: &S, n: u64) {
    for _ in 0..500 {
        if spool.stats().pending == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("pending stayed at {} (want {n})", spool.stats().pending);
}

async fn dedup_keys_persist_and_expire<S: Spool + ?Sized>(spool: &S) {
    if spool.shared().is_some() {
        // A shared backend's dedup store is itself durable and shared (Redis keys with their
        // TTL): the spool keeps no copy to refill one from, and has nothing to sweep.
        let e = event("r").with_dedup(DedupKey::from_u128(1), now_ms() + 60_000);
        spool.append(&e).await.expect("append");
        assert_eq!(spool.dedup_keys().expect("keys"), [], "no copy kept");
        assert_eq!(spool.sweep_expired_keys().await.expect("sweep"), 0);
        return;
    }
    let live = event("r").with_dedup(DedupKey::from_u128(1), now_ms() + 60_000);
    let dead = event("r").with_dedup(DedupKey::from_u128(2), now_ms().saturating_sub(1));
    spool.append(&live).await.expect("append");
    spool.append(&dead).await.expect("append");
    let live_record = live.dedup.expect("set above");
    assert_eq!(
        spool.dedup_keys().expect("keys"),
        [live_record],
        "only live keys"
    );
    assert_eq!(
        spool.sweep_expired_keys().await.expect("sweep"),
        1,
        "one expired"
    );
    assert_eq!(
        spool.sweep_expired_keys().await.expect("sweep"),
        0,
        "swept once"
    );
    assert_eq!(spool.dedup_keys().expect("keys"), [live_record]);
    // A delivered event's key stays for its TTL: the sender's retry is still a duplicate.
    spool.delivered(&live).await.expect("delivered");
    assert_eq!(
        spool.dedup_keys().expect("keys"),
        [live_record],
        "kept after delivery"
    );
}

async fn dead_letters_by_route_page_replay_purge<S: Spool + ?Sized>(spool: &S) {
    let mut events: Vec<Event> = (0..3).map(|_| event("r")).collect();
    let mut other = event("s");
    for e in events.iter().chain(std::iter::once(&other)) {
        spool.append(e).await.expect("append");
    }
    for e in events.iter_mut().chain(std::iter::once(&mut other)) {
        e.attempts += 1;
        e.record_outcome("status 400".into());
        spool.dead_letter(e).await.expect("dead letter");
    }
    let stats = spool.stats();
    assert_eq!((stats.pending, stats.dead), (0, 4), "{stats:?}");
    let listed = spool.dead_letters("r", None, 10).expect("list");
    assert_eq!(
        listed.iter().map(|d| d.id).collect::<Vec<_>>(),
        ids(&events),
        "one route's, oldest first"
    );
    assert_eq!(
        listed[0].destinations[0].history[0].outcome, "status 400",
        "history kept"
    );
    assert_eq!(listed[0].body_bytes, events[0].body.len(), "body size");
    let page = spool.dead_letters("r", None, 2).expect("page");
    let rest = spool.dead_letters("r", Some(page[1].id), 2).expect("rest");
    assert_eq!(
        page.iter().chain(&rest).map(|d| d.id).collect::<Vec<_>>(),
        ids(&events),
        "pages"
    );
    assert_eq!(spool.dead_letters("s", None, 10).expect("list").len(), 1);
    let whole = spool.get_dead("r", events[0].id).expect("get dead");
    assert_eq!(
        whole.as_ref().map(|e| &e.body),
        Some(&events[0].body),
        "with its body"
    );
    assert_eq!(
        spool.get_dead("s", events[0].id).expect("get dead"),
        None,
        "per route"
    );

    let revived = spool.revive("r", events[0].id).await.expect("revive");
    assert_eq!(
        (revived.id, revived.attempts, revived.attempts_before_replay),
        (events[0].id, 1, 1),
        "revived keeps its id and counts afresh"
    );
    assert_eq!(spool.get("r", events[0].id).expect("get"), Some(revived));
    assert!(matches!(
        spool.revive("r", events[0].id).await,
        Err(SpoolError::NotFound(_))
    ));
    spool.purge("r", events[1].id).await.expect("purge");
    assert!(matches!(
        spool.purge("r", events[1].id).await,
        Err(SpoolError::NotFound(_))
    ));
    assert!(matches!(
        spool.purge("s", events[2].id).await,
        Err(SpoolError::NotFound(_))
    ));
    let stats = spool.stats();
    assert_eq!((stats.pending, stats.dead), (1, 2), "{stats:?}");
}

async fn repeated_and_concurrent_writes_count_once<S: Spool + ?Sized>(spool: &S) {
    // A delivery recorded twice (a duplicate schedule racing a deferred delete).
    let e = event("r");
    spool.append(&e).await.expect("append");
    spool.delivered(&e).await.expect("delivered");
    let _ = spool.delivered(&e).await;
    wait_pending(spool, 0).await;
    assert_eq!(spool.stats().bytes, 0, "{:?}", spool.stats());
    // Nothing written for an event no longer pending: no resurrection, no count.
    assert!(matches!(
        spool.reschedule(&e).await,
        Err(SpoolError::NotFound(_))
    ));
    assert!(matches!(
        spool.dead_letter(&e).await,
        Err(SpoolError::NotFound(_))
    ));
    assert_eq!(spool.get("r", e.id).expect("get"), None, "not resurrected");
    let stats = spool.stats();
    assert_eq!(
        (stats.pending, stats.dead, stats.bytes),
        (0, 0, 0),
        "{stats:?}"
    );
    // Two replays of one dead letter at once (`replay ID` racing `replay --all`).
    let d = event("r");
    spool.append(&d).await.expect("append");
    spool.dead_letter(&d).await.expect("dead letter");
    let (a, b) = tokio::join!(spool.revive("r", d.id), spool.revive("r", d.id));
    assert_eq!(
        u8::from(a.is_ok()) + u8::from(b.is_ok()),
        1,
        "one replay wins"
    );
    let stats = spool.stats();
    assert_eq!((stats.pending, stats.dead), (1, 0), "{stats:?}");
    // Two purges at once.
    spool.dead_letter(&d).await.expect("dead letter");
    let (a, b) = tokio::join!(spool.purge("r", d.id), spool.purge("r", d.id));
    assert_eq!(
        u8::from(a.is_ok()) + u8::from(b.is_ok()),
        1,
        "one purge wins"
    );
    let stats = spool.stats();
    assert_eq!(
        (stats.pending, stats.dead, stats.bytes),
        (0, 0, 0),
        "{stats:?}"
    );
}

async fn bounds_refuse_then_free<S: Spool + ?Sized>(spool: &S) {
    let (a, b) = (event("r"), event("r"));
    spool.append(&a).await.expect("first");
    spool.append(&b).await.expect("second");
    let refused = spool.append(&event("r")).await;
    assert!(matches!(refused, Err(SpoolError::Full(_))), "{refused:?}");
    assert_eq!(spool.stats().pending, 2, "a refused append counts nothing");
    spool.delivered(&a).await.expect("delivered");
    wait_pending(spool, 1).await;
    spool.append(&event("r")).await.expect("room again");
    // Dead letters count against the bound too.
    spool.dead_letter(&b).await.expect("dead letter");
    let refused = spool.append(&event("r")).await;
    assert!(matches!(refused, Err(SpoolError::Full(_))), "{refused:?}");
}

/// Every page of `q` in turn (bounded), the ids found.
async fn all_pages<S: Spool + ?Sized>(spool: &S, mut q: EventQuery) -> Vec<Uuid> {
    let mut found = Vec::new();
    for _ in 0..1000 {
        let page = spool.events(&q).await.expect("query");
        found.extend(page.events.iter().map(|e| e.id));
        match page.next {
            Some(next) => q.after = Some(next),
            None => return found,
        }
    }
    panic!("a query that never ends: {q:?}");
}

/// Delivered events stay, and are found with the pending and dead ones: filtered by route,
/// status, time, dedup key and body, paged both ways; found whole by id; replayed from the
/// dead letters or the history.
async fn history_finds_pages_and_replays<S: Spool + ?Sized>(spool: &S) {
    let mut all = Vec::new();
    for i in 0..40u32 {
        let route = if i % 4 == 3 { "s" } else { "r" };
        let mut e = event(route).with_dedup(DedupKey::from_u128(u128::from(i)), now_ms() + 60_000);
        let kind = if i % 2 == 0 { "even" } else { "odd" };
        e.body = Bytes::from(format!(r#"{{"n":{i},"kind":"{kind}"}}"#));
        spool.append(&e).await.expect("append");
        all.push(e);
        if i == 19 {
            // A later half, for the time window.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for e in &mut all[..20] {
        e.attempts = 1;
        e.record_attempt(AttemptKind::Delivered, "status 200".into(), Some(200), 3);
        spool.delivered(e).await.expect("delivered");
    }
    for e in &mut all[20..25] {
        e.attempts = 1;
        e.record_attempt(AttemptKind::Rejected, "status 400".into(), Some(400), 2);
        spool.dead_letter(e).await.expect("dead letter");
    }
    let want = |pick: &dyn Fn(usize, &Event) -> bool| -> Vec<Uuid> {
        all.iter()
            .enumerate()
            .filter(|(i, e)| pick(*i, e))
            .map(|(_, e)| e.id)
            .collect()
    };
    let query = |filter: EventFilter| EventQuery {
        filter,
        limit: 7,
        ..EventQuery::default()
    };
    assert_eq!(
        all_pages(spool, query(EventFilter::default())).await,
        ids(&all),
        "every event, oldest first, across pages"
    );
    let mut newest_first = ids(&all);
    newest_first.reverse();
    assert_eq!(
        all_pages(
            spool,
            EventQuery {
                order: Order::Desc,
                ..query(EventFilter::default())
            }
        )
        .await,
        newest_first,
        "newest first"
    );
    let status = |s| EventFilter {
        status: Some(s),
        ..EventFilter::default()
    };
    assert_eq!(
        all_pages(spool, query(status(DeliveryStatus::Delivered))).await,
        want(&|i, _| i < 20),
        "delivered"
    );
    assert_eq!(
        all_pages(spool, query(status(DeliveryStatus::Dead))).await,
        want(&|i, _| (20..25).contains(&i)),
        "dead"
    );
    for order in [Order::Asc, Order::Desc] {
        let mut pending_r = want(&|i, e| i >= 25 && e.route == "r");
        if order == Order::Desc {
            pending_r.reverse();
        }
        let q = EventQuery {
            order,
            ..query(EventFilter {
                route: Some("r".into()),
                ..status(DeliveryStatus::Pending)
            })
        };
        assert_eq!(
            all_pages(spool, q).await,
            pending_r,
            "one route's pending, {order:?}"
        );
    }
    let even = EventFilter {
        route: Some("r".into()),
        matches: vec![(JsonPointer::parse("/kind"), serde_json::json!("even"))],
        ..EventFilter::default()
    };
    assert_eq!(
        all_pages(spool, query(even.clone())).await,
        want(&|i, e| i % 2 == 0 && e.route == "r"),
        "a JSON pointer"
    );
    let since = all[20].received_ms;
    let window = EventFilter {
        since_ms: Some(since),
        until_ms: Some(now_ms() + 1),
        ..status(DeliveryStatus::Dead)
    };
    assert_eq!(
        all_pages(spool, query(window)).await,
        want(&|i, e| (20..25).contains(&i) && e.received_ms >= since),
        "a time window"
    );
    let before = EventFilter {
        until_ms: Some(since),
        ..EventFilter::default()
    };
    assert_eq!(
        all_pages(spool, query(before)).await,
        want(&|_, e| e.received_ms < since),
        "until"
    );
    let key = EventFilter {
        keys: Some([("s".to_string(), vec![DedupKey::from_u128(7).to_bytes()])].into()),
        ..EventFilter::default()
    };
    assert_eq!(
        all_pages(spool, query(key)).await,
        [all[7].id],
        "a dedup key"
    );
    // A cursor outside the window: an empty page, either way.
    for order in [Order::Asc, Order::Desc] {
        let outside = EventQuery {
            filter: EventFilter {
                until_ms: Some(all[0].received_ms.saturating_sub(60_000)),
                since_ms: Some(all[0].received_ms.saturating_sub(120_000)),
                ..EventFilter::default()
            },
            order,
            after: Some(if order == Order::Asc {
                all[39].id
            } else {
                Uuid::nil()
            }),
            ..EventQuery::default()
        };
        let page = spool.events(&outside).await.expect("query");
        assert!(page.events.is_empty() && page.next.is_none(), "{order:?}");
    }
    // A listed event: its attempts, not its body.
    let page = spool
        .events(&query(status(DeliveryStatus::Delivered)))
        .await
        .expect("query");
    let first = &page.events[0];
    assert_eq!(
        (first.status, first.attempts, first.body_bytes),
        (DeliveryStatus::Delivered, 1, all[0].body.len())
    );
    assert_eq!(first.destinations.len(), 1);
    assert_eq!(first.destinations[0].name, super::DEFAULT_DESTINATION);
    assert_eq!(
        first.destinations[0].history[0].kind,
        AttemptKind::Delivered
    );
    assert_eq!(first.destinations[0].history[0].status, Some(200));
    assert_eq!(first.dedup, all[0].dedup.map(|d| d.key));

    // One event, whole.
    let whole = spool.event(all[3].id).await.expect("event").expect("found");
    assert_eq!(whole.status(), DeliveryStatus::Delivered);
    assert_eq!(
        (&whole.event.body, &whole.event.headers),
        (&all[3].body, &all[3].headers)
    );
    assert_eq!(whole.destinations[0].history, all[3].history);
    assert_eq!(
        spool.event(Uuid::now_v7()).await.expect("event"),
        None,
        "unknown"
    );

    // Replays: from the history, from the dead letters; of a pending event, nothing.
    let (replayed, was) = spool
        .replay(all[0].id, super::DEFAULT_DESTINATION, "job-1")
        .await
        .expect("replay")
        .expect("queued");
    assert_eq!(was, DeliveryStatus::Delivered);
    assert_eq!(replayed.replay.as_deref(), Some("job-1"));
    assert_eq!(replayed.attempts_before_replay, 1);
    assert_eq!(
        spool.get(&all[0].route, all[0].id).expect("get"),
        Some(replayed)
    );
    assert_eq!(
        spool
            .event(all[0].id)
            .await
            .expect("event")
            .map(|d| d.status()),
        Some(DeliveryStatus::Pending)
    );
    assert_eq!(
        spool
            .replay(all[0].id, super::DEFAULT_DESTINATION, "job-2")
            .await
            .expect("replay"),
        None
    );
    let (dead, was) = spool
        .replay(all[20].id, super::DEFAULT_DESTINATION, "job-1")
        .await
        .expect("replay")
        .expect("queued");
    assert_eq!(was, DeliveryStatus::Dead);
    assert_eq!(dead.history, all[20].history);
    let stats = spool.stats();
    assert_eq!((stats.pending, stats.dead), (17, 4), "{stats:?}");
    assert!(matches!(
        spool
            .replay(Uuid::now_v7(), super::DEFAULT_DESTINATION, "job-1")
            .await,
        Err(SpoolError::NotFound(_))
    ));
    // Delivered again: delivered, with both deliveries' attempts, once in the history.
    let mut again = spool
        .get(&all[0].route, all[0].id)
        .expect("get")
        .expect("pending");
    again.attempts += 1;
    again.record_attempt(AttemptKind::Delivered, "status 200".into(), Some(200), 1);
    spool.delivered(&again).await.expect("delivered");
    let found = spool.event(all[0].id).await.expect("event").expect("found");
    assert_eq!(found.status(), DeliveryStatus::Delivered);
    let history = &found.destinations[0].history;
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].replay.as_deref(), Some("job-1"));
    assert_eq!(
        all_pages(spool, query(EventFilter::default())).await,
        ids(&all),
        "a replayed event is listed once"
    );
}

/// An event fanned out to several destinations: stored once, each destination's share with its
/// own status, attempts, dead letters and replays; a filtered one recorded as such; an event
/// every destination filtered out kept as history.
async fn fan_out_keeps_each_destinations_state<S: Spool + ?Sized>(spool: &S) {
    use super::{lane, Fanout};
    let share = |d: &str, filtered: bool, order: Option<[u8; 16]>| Fanout {
        destination: d.into(),
        filtered,
        order,
    };
    let mut e = event("f");
    e.destinations = vec![
        share("app", false, Some([9; 16])),
        share("alerts", true, None),
        share("audit", false, None),
    ];
    spool.append(&e).await.expect("append");
    let stats = spool.stats();
    assert_eq!(
        (stats.pending, stats.dead),
        (2, 0),
        "a share per destination: {stats:?}"
    );
    let app = spool
        .get(&lane("f", "app"), e.id)
        .expect("get")
        .expect("app's share");
    assert_eq!(app.destination_name(), "app");
    assert_eq!(app.order_key(), Some([9; 16]), "its ordering key");
    let audit = spool
        .get(&lane("f", "audit"), e.id)
        .expect("get")
        .expect("audit's share");
    assert_eq!(audit.destination_name(), "audit");
    assert_eq!(spool.get("f", e.id).expect("get"), None, "no default share");
    assert_eq!(
        spool.get(&lane("f", "alerts"), e.id).expect("get"),
        None,
        "filtered: none"
    );
    let statuses = |d: &super::EventDetail| -> Vec<(String, DeliveryStatus)> {
        d.destinations
            .iter()
            .map(|s| (s.name.clone(), s.status))
            .collect()
    };
    let found = spool.event(e.id).await.expect("event").expect("found");
    assert_eq!(
        statuses(&found),
        [
            ("app".to_string(), DeliveryStatus::Pending),
            ("alerts".to_string(), DeliveryStatus::Filtered),
            ("audit".to_string(), DeliveryStatus::Pending),
        ]
    );
    // Delivered to one, dead at another.
    let mut app = app;
    app.attempts = 1;
    app.record_attempt(AttemptKind::Delivered, "status 200".into(), Some(200), 3);
    spool.delivered(&app).await.expect("delivered");
    let mut audit = audit;
    audit.attempts = 2;
    audit.record_attempt(AttemptKind::Rejected, "status 400".into(), Some(400), 1);
    spool.dead_letter(&audit).await.expect("dead letter");
    let stats = spool.stats();
    assert_eq!((stats.pending, stats.dead), (0, 1), "{stats:?}");
    let found = spool.event(e.id).await.expect("event").expect("found");
    assert_eq!(found.status(), DeliveryStatus::Dead);
    assert_eq!(
        statuses(&found),
        [
            ("app".to_string(), DeliveryStatus::Delivered),
            ("alerts".to_string(), DeliveryStatus::Filtered),
            ("audit".to_string(), DeliveryStatus::Dead),
        ]
    );
    let at = |name: &str| found.destination(name).cloned().expect(name);
    assert_eq!(
        (at("app").attempts, at("audit").attempts),
        (1, 2),
        "each its own attempts"
    );
    assert_eq!(at("audit").history[0].status, Some(400));
    let dead = spool
        .dead_letters(&lane("f", "audit"), None, 10)
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].destinations[0].name, "audit");
    assert!(spool
        .dead_letters(&lane("f", "app"), None, 10)
        .expect("dead letters")
        .is_empty());
    // Queries by destination and status.
    let q = |destination: Option<&str>, status| EventQuery {
        filter: EventFilter {
            route: Some("f".into()),
            destination: destination.map(str::to_owned),
            status: Some(status),
            ..EventFilter::default()
        },
        ..EventQuery::default()
    };
    for (destination, status, want) in [
        (Some("audit"), DeliveryStatus::Dead, vec![e.id]),
        (Some("app"), DeliveryStatus::Dead, vec![]),
        (Some("app"), DeliveryStatus::Delivered, vec![e.id]),
        (None, DeliveryStatus::Dead, vec![e.id]),
        (None, DeliveryStatus::Filtered, vec![e.id]),
        (Some("alerts"), DeliveryStatus::Filtered, vec![e.id]),
        (None, DeliveryStatus::Pending, vec![]),
    ] {
        assert_eq!(
            all_pages(spool, q(destination, status)).await,
            want,
            "destination {destination:?}, status {status:?}"
        );
    }
    let page = spool
        .events(&q(Some("audit"), DeliveryStatus::Dead))
        .await
        .expect("query");
    assert_eq!(
        page.events[0].destinations.len(),
        3,
        "every destination listed"
    );
    assert_eq!(page.events[0].attempts, 3, "attempts at every destination");
    // Replays, one destination at a time; none where it was filtered out.
    let (again, was) = spool
        .replay(e.id, "app", "job")
        .await
        .expect("replay")
        .expect("queued");
    assert_eq!(
        (again.destination_name(), was),
        ("app", DeliveryStatus::Delivered)
    );
    assert_eq!(
        spool.replay(e.id, "alerts", "job").await.expect("replay"),
        None
    );
    assert!(matches!(
        spool.replay(e.id, "nope", "job").await,
        Err(SpoolError::NotFound(_))
    ));
    assert_eq!(
        spool
            .get(&lane("f", "app"), e.id)
            .expect("get")
            .map(|e| e.replay),
        Some(Some("job".to_string()))
    );
    // A dead letter purged at one destination: the event stays for the others.
    spool.purge(&lane("f", "audit"), e.id).await.expect("purge");
    let found = spool
        .event(e.id)
        .await
        .expect("event")
        .expect("still found");
    assert_eq!(found.status(), DeliveryStatus::Pending);
    assert!(found.destination("audit").is_none(), "purged there");
    // Filtered out everywhere: acknowledged, nothing to deliver, kept as history.
    let mut none = event("f");
    none.destinations = vec![share("app", true, None), share("audit", true, None)];
    let before = spool.stats();
    spool.append(&none).await.expect("append");
    assert_eq!(spool.stats().pending, before.pending, "nothing pending");
    let found = spool.event(none.id).await.expect("event").expect("kept");
    assert_eq!(found.status(), DeliveryStatus::Filtered);
    assert_eq!(
        statuses(&found),
        [
            ("app".to_string(), DeliveryStatus::Filtered),
            ("audit".to_string(), DeliveryStatus::Filtered),
        ]
    );
    assert!(all_pages(spool, q(None, DeliveryStatus::Filtered))
        .await
        .contains(&none.id));
}

/// The gateway's records (written, listed by prefix, deleted), counters (added to from zero)
/// and leases (held by one owner until they lapse), and what each route retains.
async fn records_counters_and_leases<S: Spool + ?Sized>(spool: &S) {
    assert_eq!(spool.meta_get("replay/a").await.expect("get"), None);
    spool
        .meta_put("replay/a", Some(b"one".to_vec()))
        .await
        .expect("put");
    spool
        .meta_put("replay/b", Some(b"two".to_vec()))
        .await
        .expect("put");
    spool
        .meta_put("other", Some(b"three".to_vec()))
        .await
        .expect("put");
    assert_eq!(
        spool.meta_get("replay/a").await.expect("get").as_deref(),
        Some(&b"one"[..])
    );
    assert_eq!(
        spool.meta_list("replay/").await.expect("list"),
        [
            ("replay/a".to_string(), b"one".to_vec()),
            ("replay/b".to_string(), b"two".to_vec())
        ]
    );
    spool.meta_put("replay/a", None).await.expect("delete");
    assert_eq!(spool.meta_list("replay/").await.expect("list").len(), 1);
    assert_eq!(spool.meta_counter("n").await.expect("counter"), 0);
    assert_eq!(spool.meta_add("n", 2).await.expect("add"), 2);
    let (a, b) = tokio::join!(spool.meta_add("n", 1), spool.meta_add("n", 1));
    assert_eq!(a.expect("add").max(b.expect("add")), 4, "no add lost");
    assert_eq!(spool.meta_counter("n").await.expect("counter"), 4);
    let ttl = Duration::from_millis(300);
    assert!(spool.lease("job", "me", ttl).await.expect("lease"));
    assert!(spool.lease("job", "me", ttl).await.expect("renew"));
    if spool.shared().is_some() {
        assert!(
            !spool.lease("job", "you", ttl).await.expect("lease"),
            "held"
        );
        tokio::time::sleep(ttl + Duration::from_millis(200)).await;
        assert!(
            spool.lease("job", "you", ttl).await.expect("lease"),
            "lapsed"
        );
    }
    // What each route keeps: every event, whatever its status.
    let (a, b, c) = (event("r"), event("r"), event("s"));
    for e in [&a, &b, &c] {
        spool.append(e).await.expect("append");
    }
    spool.delivered(&a).await.expect("delivered");
    spool.dead_letter(&b).await.expect("dead letter");
    assert_eq!(
        spool.retained().await.expect("retained"),
        [("r".to_string(), 2), ("s".to_string(), 1)]
    );
}

/// Past the retention, delivered events are gone from queries, lookups and replays; pending and
/// dead ones stay.
async fn retention_drops_delivered_events_only<S: Spool + ?Sized>(spool: &S) {
    let (mut a, mut b, c) = (event("r"), event("r"), event("r"));
    for e in [&a, &b, &c] {
        spool.append(e).await.expect("append");
    }
    a.attempts = 1;
    spool.delivered(&a).await.expect("delivered");
    b.attempts = 1;
    spool.dead_letter(&b).await.expect("dead letter");
    let q = EventQuery::default();
    assert_eq!(all_pages(spool, q.clone()).await, [a.id, b.id, c.id]);
    tokio::time::sleep(SHORT_RETENTION + Duration::from_millis(200)).await;
    assert_eq!(
        all_pages(spool, q).await,
        [b.id, c.id],
        "the delivered one is gone"
    );
    assert_eq!(spool.event(a.id).await.expect("event"), None);
    assert!(matches!(
        spool.replay(a.id, super::DEFAULT_DESTINATION, "job").await,
        Err(SpoolError::NotFound(_))
    ));
    assert!(spool.event(b.id).await.expect("event").is_some());
    assert!(spool.event(c.id).await.expect("event").is_some());
    // And a dead letter replayed and delivered after that goes too, in its turn.
    b = spool
        .replay(b.id, super::DEFAULT_DESTINATION, "job")
        .await
        .expect("replay")
        .expect("queued")
        .0;
    spool.delivered(&b).await.expect("delivered");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(spool.event(b.id).await.expect("event"), None);
}

async fn bounds_on_bytes<S: Spool + ?Sized>(spool: &S) {
    let mut big = event("r");
    big.body = Bytes::from(vec![b' '; 300]);
    let refused = spool.append(&big).await;
    assert!(matches!(refused, Err(SpoolError::Full(_))), "{refused:?}");
    assert_eq!(spool.stats().bytes, 0, "nothing held for a refused append");
}

async fn oldest_pending_is_per_route<S: Spool + ?Sized>(spool: &S) {
    assert_eq!(spool.oldest_pending_ms("a"), None);
    let events: Vec<Event> = (0..3).map(|_| event("a")).collect();
    for e in &events {
        spool.append(e).await.expect("append");
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    spool.append(&event("b")).await.expect("append");
    let id_ms = |e: &Event| super::event::id_ms(e.id);
    assert_eq!(spool.oldest_pending_ms("a"), id_ms(&events[0]));
    spool.dead_letter(&events[0]).await.expect("dead letter");
    spool.delivered(&events[1]).await.expect("delivered");
    assert_eq!(spool.oldest_pending_ms("a"), id_ms(&events[2]));
    // Replayed, the first (an older id) is the oldest again.
    spool.revive("a", events[0].id).await.expect("revive");
    assert_eq!(spool.oldest_pending_ms("a"), id_ms(&events[0]));
    assert_eq!(spool.oldest_pending_ms("c"), None);
}

/// Runs every dedup check, each on a fresh store from `open` (holding at least 100 keys).
pub async fn dedup(open: impl Fn() -> SharedDedupStore) {
    let ttl = Duration::from_secs(60);
    let store = open();
    let k = DedupKey::from_u128;
    assert_eq!(
        store.reserve(k(1), ttl).await.expect("reserve"),
        Reservation::Reserved
    );
    assert_eq!(
        store.reserve(k(1), ttl).await.expect("reserve"),
        Reservation::InFlight
    );
    store.release(k(1));
    assert_eq!(
        store.reserve(k(1), ttl).await.expect("reserve"),
        Reservation::Reserved
    );
    store.commit(k(1), ttl);
    assert_eq!(
        store.reserve(k(1), ttl).await.expect("reserve"),
        Reservation::Duplicate
    );
    store.release(k(1));
    assert_eq!(
        store.reserve(k(1), ttl).await.expect("reserve"),
        Reservation::Duplicate,
        "release never frees a committed key"
    );
    // Keys are independent.
    assert_eq!(
        store.reserve(k(2), ttl).await.expect("reserve"),
        Reservation::Reserved
    );

    // The guard: released when the last clone drops, the first settlement wins.
    let store = open();
    assert_eq!(
        store.reserve(k(3), ttl).await.expect("reserve"),
        Reservation::Reserved
    );
    let held = Reserved::new(store.clone(), k(3), ttl);
    let handed_over = held.clone();
    drop(held);
    assert_eq!(
        store.reserve(k(3), ttl).await.expect("reserve"),
        Reservation::InFlight,
        "a clone still holds the key"
    );
    handed_over.commit();
    handed_over.release();
    drop(handed_over);
    assert_eq!(
        store.reserve(k(3), ttl).await.expect("reserve"),
        Reservation::Duplicate,
        "committed, and the later release did nothing"
    );
    assert_eq!(
        store.reserve(k(4), ttl).await.expect("reserve"),
        Reservation::Reserved
    );
    drop(Reserved::new(store.clone(), k(4), ttl));
    assert_eq!(
        store.reserve(k(4), ttl).await.expect("reserve"),
        Reservation::Reserved,
        "dropped unsettled: released"
    );

    // Expiry: a committed key is free again after its TTL (one-second resolution).
    let store = open();
    let short = Duration::from_secs(1);
    assert_eq!(
        store.reserve(k(5), short).await.expect("reserve"),
        Reservation::Reserved
    );
    store.commit(k(5), short);
    let mut free = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if store.reserve(k(5), short).await.expect("reserve") == Reservation::Reserved {
            free = true;
            break;
        }
    }
    assert!(free, "a committed key expires after its TTL");
}
