//! The CLI's side of the admin API: `events`, `replays`, `destinations`, `pause`, `resume`,
//! `dead-letters` and `reload`, each one
//! or a few requests to a running gateway, answered as a table for people or as JSON
//! (`--json`) for scripts.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

/// Where the admin API is and how to authenticate.
pub struct Admin {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

/// A failed call: what to print, and the exit code.
pub struct Failed(pub String);

impl Failed {
    /// Prints why on stderr; the exit code of a failed command.
    pub fn report(self) -> ExitCode {
        eprintln!("{}", self.0);
        ExitCode::FAILURE
    }
}

impl Admin {
    /// The admin API at `admin` (`host:port`) with `token`.
    pub fn new(admin: String, token: Option<String>) -> Result<Self, Failed> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failed(format!("hookgate: cannot start: {e}")))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Failed(format!("hookgate: cannot start: {e}")))?;
        Ok(Self {
            base: format!("http://{admin}"),
            token,
            client,
            runtime,
        })
    }

    /// One request: `method` on `path` (with its query), with `body` for a change (JSON: the
    /// admin API takes changes only as JSON). The answer's JSON when it succeeded.
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failed> {
        let url = format!("{}{path}", self.base);
        let result: Result<(reqwest::StatusCode, String), reqwest::Error> =
            self.runtime.block_on(async {
                let mutating = method != reqwest::Method::GET;
                let mut request = self.client.request(method, &url);
                if mutating {
                    request = request
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(
                            body.unwrap_or(Value::Object(Default::default()))
                                .to_string(),
                        );
                }
                if let Some(token) = &self.token {
                    request = request.bearer_auth(token);
                }
                let response = request.send().await?;
                let status = response.status();
                Ok((status, response.text().await?))
            });
        match result {
            Ok((status, text)) => {
                let value = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
                if status.is_success() {
                    Ok(value)
                } else {
                    let shown = match &value {
                        Value::Object(m) if m.contains_key("error") => format!(
                            "{}: {}",
                            m["error"].as_str().unwrap_or("error"),
                            m.get("detail").and_then(Value::as_str).unwrap_or("")
                        ),
                        other => pretty(other),
                    };
                    Err(Failed(format!("hookgate: {url}: {status}\n{shown}")))
                }
            }
            Err(e) => {
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why.push_str(": ");
                    why.push_str(&s.to_string());
                    source = s.source();
                }
                Err(Failed(format!(
                    "hookgate: cannot reach the admin API at {}: {why}",
                    self.base
                )))
            }
        }
    }

    fn get(&self, path: &str) -> Result<Value, Failed> {
        self.call(reqwest::Method::GET, path, None)
    }
}

/// `v` as indented JSON.
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// Prints `v` as JSON; success.
pub fn print_json(v: &Value) -> ExitCode {
    println!("{}", pretty(v));
    ExitCode::SUCCESS
}

/// `name=value` pairs as a query string (values percent-encoded).
pub fn query(pairs: &[(&str, String)]) -> String {
    let encoded: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
            format!("{k}={v}")
        })
        .collect();
    if encoded.is_empty() {
        String::new()
    } else {
        format!("?{}", encoded.join("&"))
    }
}

/// Rows as a table: each column as wide as its widest cell, the last one free.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An attempt in one line: `status 200 (12 ms)`, `connect error: ...`, with its replay.
fn attempt_line(a: &Value) -> String {
    let mut line = format!("{} ({} ms)", text(&a["outcome"]), text(&a["duration_ms"]));
    if let Some(r) = a["replay"].as_str() {
        line.push_str(&format!(" [replay {r}]"));
    }
    line
}

/// `hookgate events list`: one page (or every page with `all`), as a table or JSON.
pub fn events_list(admin: &Admin, pairs: Vec<(&str, String)>, all: bool, json: bool) -> ExitCode {
    let mut pairs = pairs;
    let mut events: Vec<Value> = Vec::new();
    let next = loop {
        let page = match admin.get(&format!("/events{}", query(&pairs))) {
            Ok(p) => p,
            Err(failed) => return failed.report(),
        };
        events.extend(page["events"].as_array().cloned().unwrap_or_default());
        match (&page["next"], all) {
            (Value::String(n), true) => {
                pairs.retain(|(k, _)| *k != "after");
                pairs.push(("after", n.clone()));
            }
            (next, _) => break next.clone(),
        }
    };
    if json {
        return print_json(&serde_json::json!({ "events": events, "next": next }));
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                text(&e["id"]),
                text(&e["received_at"]),
                text(&e["route"]),
                text(&e["status"]),
                text(&e["attempts"]),
                e["last_attempt"]
                    .as_object()
                    .map(|_| attempt_line(&e["last_attempt"]))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID",
                "RECEIVED",
                "ROUTE",
                "STATUS",
                "ATTEMPTS",
                "LAST ATTEMPT"
            ],
            &rows
        )
    );
    if let Value::String(n) = next {
        eprintln!("(more: --after {n}, or --all)");
    }
    ExitCode::SUCCESS
}

/// `hookgate events show ID`.
pub fn events_show(admin: &Admin, id: &str, json: bool) -> ExitCode {
    let e = match admin.get(&format!("/events/{id}")) {
        Ok(e) => e,
        Err(failed) => return failed.report(),
    };
    if json {
        return print_json(&e);
    }
    let mut out = String::new();
    for (label, key) in [
        ("id", "id"),
        ("route", "route"),
        ("status", "status"),
        ("received", "received_at"),
        ("client", "client_ip"),
        ("dedup key", "dedup_key"),
        ("attempts", "attempts"),
    ] {
        out.push_str(&format!("{label:<10} {}\n", text(&e[key])));
    }
    out.push_str(&format!(
        "{:<10} {} {}\n",
        "request",
        text(&e["method"]),
        text(&e["uri"])
    ));
    out.push_str("\nheaders\n");
    for h in e["headers"].as_array().into_iter().flatten() {
        out.push_str(&format!("  {}: {}\n", text(&h[0]), text(&h[1])));
    }
    out.push_str(&format!("\nbody ({} bytes)\n", text(&e["body_bytes"])));
    match (&e.get("body"), &e.get("body_base64")) {
        (Some(body), _) => out.push_str(&pretty(body)),
        (None, Some(b64)) => out.push_str(&format!("(not JSON; base64) {}", text(b64))),
        _ => {}
    }
    out.push_str("\n\ndestinations\n");
    let rows: Vec<Vec<String>> = e["destinations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            vec![
                text(&d["name"]),
                text(&d["status"]),
                text(&d["attempts"]),
                text(&d["next_attempt_at"]),
            ]
        })
        .collect();
    out.push_str(&table(
        &["NAME", "STATUS", "ATTEMPTS", "NEXT ATTEMPT"],
        &rows,
    ));
    out.push_str("\nattempts\n");
    let rows: Vec<Vec<String>> = e["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![
                text(&a["at"]),
                text(&a["destination"]),
                text(&a["result"]),
                text(&a["status"]),
                format!("{} ms", text(&a["duration_ms"])),
                text(&a["outcome"]),
                text(&a["replay"]),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "AT",
            "DESTINATION",
            "RESULT",
            "STATUS",
            "TOOK",
            "OUTCOME",
            "REPLAY",
        ],
        &rows,
    ));
    print!("{out}");
    ExitCode::SUCCESS
}

/// `hookgate events replay ID [--destination NAME]`.
pub fn events_replay_one(
    admin: &Admin,
    id: &str,
    destination: Option<&str>,
    json: bool,
) -> ExitCode {
    let body = destination.map(|d| serde_json::json!({ "destination": d }));
    match admin.call(reqwest::Method::POST, &format!("/events/{id}/replay"), body) {
        Ok(v) if json => print_json(&v),
        Ok(v) => {
            let at: Vec<&Value> = v["destinations"].as_array().into_iter().flatten().collect();
            if at.len() > 1 {
                for d in at {
                    match d["status"].as_str() {
                        Some("pending") => println!(
                            "{id} at {}: pending already (its delivery is on its way)",
                            text(&d["name"])
                        ),
                        _ => println!("{id} at {}: replayed", text(&d["name"])),
                    }
                }
                println!("X-Hookgate-Replay: {}", text(&v["replay"]));
            } else {
                match v["status"].as_str() {
                    Some("pending") => {
                        println!("{id} is pending already: its delivery is on its way")
                    }
                    _ => println!("{id} replayed (X-Hookgate-Replay: {})", text(&v["replay"])),
                }
            }
            ExitCode::SUCCESS
        }
        Err(failed) => failed.report(),
    }
}

/// `hookgate destinations`: every route's destinations, as a table or JSON.
pub fn destinations(admin: &Admin, json: bool) -> ExitCode {
    let list = match admin.get("/destinations") {
        Ok(v) => v,
        Err(failed) => return failed.report(),
    };
    if json {
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list["destinations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            vec![
                text(&d["route"]),
                text(&d["name"]),
                if d["paused"] == Value::Bool(true) {
                    "paused".into()
                } else {
                    "running".into()
                },
                text(&d["circuit"]),
                text(&d["scheduled"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["ROUTE", "DESTINATION", "STATE", "CIRCUIT", "QUEUED HERE"],
            &rows
        )
    );
    ExitCode::SUCCESS
}

/// The destinations `target` names among `listed` (`GET /destinations`): a route's name alone
/// (each of its destinations), or `ROUTE/DESTINATION` (a route's name may hold `/`: it is read
/// from the end).
pub fn targets(listed: &Value, target: &str) -> Result<Vec<(String, String)>, String> {
    let all: Vec<(String, String)> = listed["destinations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| (text(&d["route"]), text(&d["name"])))
        .collect();
    let whole: Vec<(String, String)> = all.iter().filter(|(r, _)| r == target).cloned().collect();
    if !whole.is_empty() {
        return Ok(whole);
    }
    if let Some((route, name)) = target.rsplit_once('/') {
        if let Some(one) = all.iter().find(|(r, d)| r == route && d == name) {
            return Ok(vec![one.clone()]);
        }
    }
    let mut known: Vec<String> = all.iter().map(|(r, d)| format!("{r}/{d}")).collect();
    known.sort();
    Err(format!(
        "hookgate: no route or destination {target:?} (ROUTE or ROUTE/DESTINATION; known: {})",
        known.join(", ")
    ))
}

/// `hookgate pause|resume ROUTE[/DESTINATION]`.
pub fn pause(admin: &Admin, target: &str, pause: bool, json: bool) -> ExitCode {
    let listed = match admin.get("/destinations") {
        Ok(v) => v,
        Err(failed) => return failed.report(),
    };
    let chosen = match targets(&listed, target) {
        Ok(c) => c,
        Err(why) => return Failed(why).report(),
    };
    let action = if pause { "pause" } else { "resume" };
    let mut answers = Vec::new();
    for (route, name) in chosen {
        let encoded: String = url::form_urlencoded::byte_serialize(route.as_bytes()).collect();
        let path = format!("/destinations/{encoded}/{name}/{action}");
        match admin.call(reqwest::Method::POST, &path, None) {
            Ok(v) => {
                if !json {
                    let was = if v["changed"] == Value::Bool(true) {
                        ""
                    } else {
                        " (it was already)"
                    };
                    let state = if pause { "paused" } else { "resumed" };
                    println!("{route}/{name}: {state}{was}");
                }
                answers.push(v);
            }
            Err(failed) => return failed.report(),
        }
    }
    if json {
        return print_json(&Value::Array(answers));
    }
    ExitCode::SUCCESS
}

/// `hookgate events replay --since ... --rate ...`: starts a job; with a terminal, follows it
/// with a progress bar until it ends (Ctrl-C leaves it running).
pub fn replay_job(admin: &Admin, body: Value, wait: bool, json: bool) -> ExitCode {
    let started = match admin.call(reqwest::Method::POST, "/replays", Some(body)) {
        Ok(v) => v,
        Err(failed) => return failed.report(),
    };
    let id = text(&started["id"]);
    if json && !wait {
        return print_json(&started);
    }
    let follow = wait || std::io::stderr().is_terminal();
    if !follow {
        println!(
            "replay {id} started: {} events matched (follow it: hookgate replays show {id})",
            text(&started["matched"])
        );
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "replay {id}: {} events matched; following it (Ctrl-C stops following, not the replay; hookgate replays cancel {id} stops it)",
        text(&started["matched"])
    );
    follow_job(admin, &id, json)
}

/// Polls job `id` until it ends, drawing its progress on stderr.
pub fn follow_job(admin: &Admin, id: &str, json: bool) -> ExitCode {
    let terminal = std::io::stderr().is_terminal();
    loop {
        let job = match admin.get(&format!("/replays/{id}")) {
            Ok(j) => j,
            Err(failed) => return failed.report(),
        };
        let n = |k: &str| job[k].as_u64().unwrap_or(0);
        let (matched, delivered, failed, skipped) =
            (n("matched"), n("delivered"), n("failed"), n("skipped"));
        let finished = delivered + failed + skipped;
        let running = job["state"] == "running"
            || (job["state"] == "done" && finished < n("queued") + skipped);
        if terminal {
            let width = 30usize;
            let filled = if matched == 0 {
                width
            } else {
                ((finished.min(matched) as f64 / matched as f64) * width as f64) as usize
            };
            eprint!(
                "\r[{}{}] {finished}/{matched}  delivered {delivered}  failed {failed}  skipped {skipped}  {}   ",
                "#".repeat(filled),
                ".".repeat(width - filled),
                text(&job["state"])
            );
            let _ = std::io::stderr().flush();
        }
        if !running {
            if terminal {
                eprintln!();
            }
            return if json {
                print_json(&job)
            } else {
                println!(
                    "replay {id} {}: {matched} matched, {delivered} delivered, {failed} failed, {skipped} skipped",
                    text(&job["state"])
                );
                ExitCode::SUCCESS
            };
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `hookgate replays list`.
pub fn replays_list(admin: &Admin, json: bool) -> ExitCode {
    let all = match admin.get("/replays") {
        Ok(v) => v,
        Err(failed) => return failed.report(),
    };
    if json {
        return print_json(&all);
    }
    let rows: Vec<Vec<String>> = all["replays"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|j| {
            vec![
                text(&j["id"]),
                text(&j["state"]),
                text(&j["matched"]),
                text(&j["queued"]),
                text(&j["delivered"]),
                text(&j["failed"]),
                text(&j["skipped"]),
                format!("{}/s", text(&j["rate"])),
                text(&j["created_at"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID",
                "STATE",
                "MATCHED",
                "QUEUED",
                "DELIVERED",
                "FAILED",
                "SKIPPED",
                "RATE",
                "STARTED"
            ],
            &rows
        )
    );
    ExitCode::SUCCESS
}

/// `hookgate replays show ID` (`--watch`: follow it).
pub fn replays_show(admin: &Admin, id: &str, watch: bool, json: bool) -> ExitCode {
    if watch {
        return follow_job(admin, id, json);
    }
    match admin.get(&format!("/replays/{id}")) {
        Ok(v) if json => print_json(&v),
        Ok(j) => {
            let mut out = String::new();
            for key in [
                "id",
                "state",
                "matched",
                "queued",
                "delivered",
                "failed",
                "skipped",
                "rate",
                "created_at",
                "finished_at",
            ] {
                out.push_str(&format!("{key:<12} {}\n", text(&j[key])));
            }
            out.push_str(&format!("{:<12} {}\n", "filter", j["filter"]));
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(failed) => failed.report(),
    }
}

/// `hookgate replays cancel ID`.
pub fn replays_cancel(admin: &Admin, id: &str, json: bool) -> ExitCode {
    match admin.call(reqwest::Method::DELETE, &format!("/replays/{id}"), None) {
        Ok(v) if json => print_json(&v),
        Ok(v) => {
            println!(
                "replay {id} {}: {} of {} queued",
                text(&v["state"]),
                text(&v["queued"]),
                text(&v["matched"])
            );
            ExitCode::SUCCESS
        }
        Err(failed) => failed.report(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_a_route_or_a_route_and_destination_read_from_the_end() {
        let listed = serde_json::json!({"destinations": [
            {"route": "/hooks/stripe", "name": "app"},
            {"route": "/hooks/stripe", "name": "alerts"},
            {"route": "/hooks/stripe/app", "name": "upstream"},
            {"route": "github", "name": "upstream"},
        ]});
        type Targets = Vec<(String, String)>;
        let pair = |r: &str, d: &str| (r.to_string(), d.to_string());
        let cases: [(&str, Result<Targets, &str>); 5] = [
            (
                "/hooks/stripe",
                Ok(vec![
                    pair("/hooks/stripe", "app"),
                    pair("/hooks/stripe", "alerts"),
                ]),
            ),
            (
                "/hooks/stripe/alerts",
                Ok(vec![pair("/hooks/stripe", "alerts")]),
            ),
            // A route of that very name wins over a route and destination.
            (
                "/hooks/stripe/app",
                Ok(vec![pair("/hooks/stripe/app", "upstream")]),
            ),
            ("github/upstream", Ok(vec![pair("github", "upstream")])),
            (
                "github/nope",
                Err("no route or destination \"github/nope\""),
            ),
        ];
        for (target, want) in cases {
            match (targets(&listed, target), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{target}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{target}: {got}"),
                (got, want) => panic!("{target}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_table_pads_every_column_but_the_last() {
        let t = table(
            &["ID", "STATUS", "LAST"],
            &[vec![
                "a".into(),
                "delivered".into(),
                "status 200 (1 ms)".into(),
            ]],
        );
        assert_eq!(t, "ID  STATUS     LAST\na   delivered  status 200 (1 ms)\n");
        assert_eq!(
            query(&[("route", "/a b".into()), ("limit", "5".into())]),
            "?route=%2Fa+b&limit=5"
        );
    }
}
