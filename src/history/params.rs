//! The parameters of `GET /events` and `POST /replays`, as a query string or a JSON object, read
//! into an [`EventQuery`]: every mistake a clear 400 with a stable reason.

use std::collections::HashMap;

use serde_json::Value;
use uuid::Uuid;

use super::HistoryError;
use crate::core::{DedupKeySpec, JsonPointer};
use crate::store::history::{DeliveryStatus, EventFilter, EventQuery, Order, MAX_PAGE};
use crate::store::now_ms;

/// The parameters of a request: name and value pairs, in order (`where` may repeat).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// The parameters of a query string (`route=a&status=dead`, percent-decoded).
    pub fn from_query(query: &str) -> Self {
        Self(
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    /// The parameters of a JSON object: strings and numbers as they are; `where` as an object
    /// (`{"/status": "failed"}`) or a list of `pointer=value` strings.
    pub fn from_json(body: &Value) -> Result<Self, HistoryError> {
        let Value::Object(map) = body else {
            return Err(HistoryError::bad_request(
                "the body must be a JSON object of parameters",
            ));
        };
        let mut pairs = Vec::new();
        for (k, v) in map {
            match (k.as_str(), v) {
                (_, Value::Null) => {}
                ("where", Value::Object(m)) => {
                    for (pointer, value) in m {
                        pairs.push(("where".into(), format!("{pointer}={}", text_of(value))));
                    }
                }
                ("where", Value::Array(items)) => {
                    for item in items {
                        pairs.push(("where".into(), text_of(item)));
                    }
                }
                (_, v) => pairs.push((k.clone(), text_of(v))),
            }
        }
        Ok(Self(pairs))
    }

    /// The value of `name` (the last one given).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A JSON value as a parameter's text: a string as it is, anything else as JSON.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Percent-decodes `s` (`+` is a space), leaving malformed escapes as they are.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], escaped) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a route contributes to reading a query: its name and how it finds dedup keys.
pub(crate) struct RouteKeys<'a> {
    pub name: &'a str,
    pub dedup: Option<&'a DedupKeySpec>,
    /// Its destinations' names.
    pub destinations: Vec<String>,
}

/// The parameters a page takes.
const PAGE: &[&str] = &[
    "route",
    "destination",
    "status",
    "since",
    "until",
    "key",
    "where",
    "order",
    "limit",
    "after",
];

/// The parameters a replay job takes besides a page's filters.
const JOB: &[&str] = &["rate"];

/// Reads `p` into a query over `routes` (the routes the gateway has now). `job`: the parameters
/// of `POST /replays` (no paging, a `rate`).
pub(crate) fn query(
    p: &Params,
    routes: &[RouteKeys<'_>],
    job: bool,
) -> Result<EventQuery, HistoryError> {
    for (name, _) in &p.0 {
        let known = if job {
            PAGE.contains(&name.as_str()) && !["order", "limit", "after"].contains(&name.as_str())
                || JOB.contains(&name.as_str())
        } else {
            PAGE.contains(&name.as_str())
        };
        if !known {
            return Err(HistoryError::new(
                400,
                "unknown_parameter",
                format!(
                    "{name:?} is not a parameter here; use {}",
                    if job {
                        "route, destination, status, since, until, key, where and rate"
                    } else {
                        "route, destination, status, since, until, key, where, order, limit and after"
                    }
                ),
            ));
        }
    }
    let route = p.get("route").map(str::to_owned);
    if let Some(r) = &route {
        if !routes.iter().any(|k| k.name == r) {
            let mut names: Vec<&str> = routes.iter().map(|k| k.name).collect();
            names.sort_unstable();
            return Err(HistoryError::new(
                400,
                "unknown_route",
                format!("no route named {r:?} (routes: {})", names.join(", ")),
            ));
        }
    }
    let destination = p.get("destination").map(str::to_owned);
    if let Some(d) = &destination {
        let has = |r: &&RouteKeys<'_>| {
            route.as_deref().is_none_or(|n| n == r.name) && r.destinations.iter().any(|x| x == d)
        };
        if !routes.iter().any(|r| has(&r)) {
            let mut names: Vec<String> = routes
                .iter()
                .filter(|r| route.as_deref().is_none_or(|n| n == r.name))
                .flat_map(|r| {
                    r.destinations
                        .iter()
                        .map(move |d| format!("{}/{d}", r.name))
                })
                .collect();
            names.sort_unstable();
            return Err(HistoryError::new(
                400,
                "unknown_destination",
                format!(
                    "no destination named {d:?} (destinations: {})",
                    names.join(", ")
                ),
            ));
        }
    }
    let status = p
        .get("status")
        .map(|s| s.parse::<DeliveryStatus>())
        .transpose()
        .map_err(|e| HistoryError::new(400, "bad_status", e))?;
    let now = now_ms();
    let since_ms = p.get("since").map(|t| time("since", t, now)).transpose()?;
    let until_ms = p.get("until").map(|t| time("until", t, now)).transpose()?;
    if let (Some(s), Some(u)) = (since_ms, until_ms) {
        if s >= u {
            return Err(HistoryError::new(
                400,
                "bad_time",
                "since must be before until",
            ));
        }
    }
    let keys = match p.get("key") {
        None => None,
        Some(value) => {
            let mut keys = HashMap::new();
            for r in routes
                .iter()
                .filter(|r| route.as_deref().is_none_or(|n| n == r.name))
            {
                let found: Vec<[u8; 16]> = match r.dedup {
                    Some(spec) => spec.candidates(r.name, value),
                    None => crate::core::DedupKey::from_hex(value).into_iter().collect(),
                }
                .into_iter()
                .map(|k| k.to_bytes())
                .collect();
                if !found.is_empty() {
                    keys.insert(r.name.to_owned(), found);
                }
            }
            Some(keys)
        }
    };
    let mut matches = Vec::new();
    for w in p.all("where") {
        matches.push(pointer_equality(w)?);
    }
    let order = match p.get("order") {
        None | Some("asc") => Order::Asc,
        Some("desc") => Order::Desc,
        Some(other) => {
            return Err(HistoryError::new(
                400,
                "bad_order",
                format!("order={other:?}: use asc or desc"),
            ))
        }
    };
    let limit = match p.get("limit") {
        None => 100,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(HistoryError::new(
                    400,
                    "bad_limit",
                    format!("limit={l:?}: a number from 1 to {MAX_PAGE}"),
                ))
            }
        },
    };
    let after = p
        .get("after")
        .map(|a| {
            Uuid::parse_str(a).map_err(|_| {
                HistoryError::new(400, "bad_cursor", format!("after={a:?} is not an event id"))
            })
        })
        .transpose()?;
    Ok(EventQuery {
        filter: EventFilter {
            route,
            destination,
            status,
            since_ms,
            until_ms,
            keys,
            matches,
        },
        order,
        limit,
        after,
    })
}

/// `/json/pointer=value`: the value is JSON when it reads as JSON (`3`, `true`, `"x"`), else
/// the text itself.
fn pointer_equality(w: &str) -> Result<(JsonPointer, Value), HistoryError> {
    let bad = |why: String| HistoryError::new(400, "bad_pointer", why);
    if !w.starts_with('/') {
        return Err(bad(format!(
            "where={w:?}: write a JSON pointer and a value, such as where=/status=failed"
        )));
    }
    let Some((pointer, value)) = w.split_once('=') else {
        return Err(bad(format!(
            "where={w:?} has no value: write where={w}=VALUE"
        )));
    };
    let value =
        serde_json::from_str::<Value>(value).unwrap_or_else(|_| Value::String(value.into()));
    Ok((JsonPointer::parse(pointer), value))
}

/// A time parameter: RFC 3339 (`2026-12-07T03:10:00Z`), `now`, or relative to now (`-1h`,
/// `-90m`), in Unix milliseconds.
pub(crate) fn time(name: &str, text: &str, now: u64) -> Result<u64, HistoryError> {
    let bad = || {
        HistoryError::new(
            400,
            "bad_time",
            format!(
                "{name}={text:?}: write an RFC 3339 time (2026-12-07T03:10:00Z), now, or a time before now such as -1h or -30m"
            ),
        )
    };
    if text == "now" {
        return Ok(now);
    }
    if let Some(ago) = text.strip_prefix('-') {
        let d = humantime::parse_duration(ago).map_err(|_| bad())?;
        return Ok(now.saturating_sub(d.as_millis() as u64));
    }
    let at = humantime::parse_rfc3339_weak(text).map_err(|_| bad())?;
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| bad())
}

/// A replay job's `rate`: `200/s`, `600/m`, `3600/h` or a number per second.
pub(crate) fn rate(text: &str) -> Result<f64, HistoryError> {
    text.parse::<crate::core::DeliveryRate>()
        .map(|r| r.per_second())
        .map_err(|reason| HistoryError::new(400, "bad_rate", format!("rate={reason}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Vec<RouteKeys<'static>> {
        static SPEC: std::sync::LazyLock<DedupKeySpec> =
            std::sync::LazyLock::new(|| "/generation_id".parse().unwrap());
        vec![
            RouteKeys {
                name: "a",
                dedup: Some(&SPEC),
                destinations: vec!["app".into(), "alerts".into()],
            },
            RouteKeys {
                name: "b",
                dedup: None,
                destinations: vec!["upstream".into()],
            },
        ]
    }

    fn reason(p: &str) -> &'static str {
        query(&Params::from_query(p), &routes(), false)
            .unwrap_err()
            .reason
    }

    #[test]
    fn a_query_string_reads_into_a_query() {
        let q = query(
            &Params::from_query(
                "route=a&status=dead&since=2026-12-07T03:10:00Z&until=2026-12-07T04:00:00Z&where=/status=failed&where=/n=3&order=desc&limit=5&key=g-1",
            ),
            &routes(),
            false,
        )
        .unwrap();
        assert_eq!(q.filter.route.as_deref(), Some("a"));
        assert_eq!(q.filter.status, Some(DeliveryStatus::Dead));
        assert_eq!(
            q.filter.until_ms.unwrap() - q.filter.since_ms.unwrap(),
            50 * 60 * 1000
        );
        assert_eq!(q.filter.matches.len(), 2);
        assert_eq!(q.filter.matches[1].1, serde_json::json!(3));
        assert_eq!((q.order, q.limit), (Order::Desc, 5));
        assert_eq!(q.filter.keys.unwrap()["a"].len(), 1);
        let q = query(&Params::from_query("destination=alerts"), &routes(), false).unwrap();
        assert_eq!(q.filter.destination.as_deref(), Some("alerts"));
    }

    #[test]
    fn every_mistake_is_a_400_with_its_reason() {
        assert_eq!(reason("route=nope"), "unknown_route");
        assert_eq!(reason("destination=nope"), "unknown_destination");
        assert_eq!(reason("route=b&destination=alerts"), "unknown_destination");
        assert_eq!(reason("since=yesterday"), "bad_time");
        assert_eq!(reason("since=-1h&until=-2h"), "bad_time");
        assert_eq!(reason("where=status=failed"), "bad_pointer");
        assert_eq!(reason("where=/status"), "bad_pointer");
        assert_eq!(reason("status=lost"), "bad_status");
        assert_eq!(reason("limit=0"), "bad_limit");
        assert_eq!(reason("limit=100000"), "bad_limit");
        assert_eq!(reason("after=x"), "bad_cursor");
        assert_eq!(reason("order=up"), "bad_order");
        assert_eq!(reason("satus=dead"), "unknown_parameter");
        assert_eq!(reason("rate=200/s"), "unknown_parameter");
    }

    #[test]
    fn times_are_rfc_3339_or_before_now() {
        let now = 1_700_000_000_000;
        assert_eq!(time("t", "now", now).unwrap(), now);
        assert_eq!(time("t", "-1h", now).unwrap(), now - 3_600_000);
        assert_eq!(
            time("t", "2023-11-14T22:13:20.123Z", now).unwrap(),
            1_700_000_000_123
        );
    }

    #[test]
    fn rates_and_json_bodies() {
        assert_eq!(rate("200/s").unwrap(), 200.0);
        assert_eq!(rate("600/m").unwrap(), 10.0);
        assert_eq!(rate("5").unwrap(), 5.0);
        assert!(rate("0/s").is_err() && rate("fast").is_err() && rate("1/d").is_err());
        assert!(rate("1e-20").is_err() && rate("0.5/h").is_err() && rate("1/h").is_ok());
        let p = Params::from_json(&serde_json::json!({
            "route": "a", "rate": "200/s", "where": {"/n": 3}, "since": null
        }))
        .unwrap();
        assert_eq!(p.get("where"), Some("/n=3"));
        let q = query(&p, &routes(), true).unwrap();
        assert_eq!(q.filter.matches[0].1, serde_json::json!(3));
        assert!(Params::from_json(&serde_json::json!([1])).is_err());
        assert_eq!(
            Params::from_query("where=%2Fa%3Db+c").get("where"),
            Some("/a=b c")
        );
    }
}
