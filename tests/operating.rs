//! What an operator installs from `deploy/`: the Grafana dashboard and the Prometheus alert rules
//! read only metrics the real gateway exports (checked against a real Prometheus scraping a
//! real gateway on a real Redis), the rules' unit tests pin every threshold, and the shell
//! completions complete.

mod common;
#[path = "support/redis.rs"]
mod redis_server;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A metric name an expression reads, with its label matchers (`label`, `op`, `value`).
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

/// The `hookgate_*` selectors of a PromQL expression (label names in `by (...)` never start with
/// the prefix, so a scan for it finds exactly the metric names).
fn selectors(expr: &str) -> Vec<Selector> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("hookgate_") {
        let start = i + at;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        i = end;
        if !boundary {
            continue;
        }
        let mut matchers = Vec::new();
        if bytes.get(end) == Some(&b'{') {
            let close = expr[end..].find('}').expect("a closed selector") + end;
            for part in expr[end + 1..close].split(',') {
                let part = part.trim();
                if part.is_empty() {
                    continue;
                }
                let op_at = part.find(['=', '!']).expect("a label matcher");
                let (label, rest) = part.split_at(op_at);
                let op_len =
                    if rest.starts_with("=~") || rest.starts_with("!=") || rest.starts_with("!~") {
                        2
                    } else {
                        1
                    };
                let value = rest[op_len..].trim().trim_matches('"');
                matchers.push((
                    label.trim().to_owned(),
                    rest[..op_len].to_owned(),
                    value.to_owned(),
                ));
            }
            i = close + 1;
        }
        out.push(Selector {
            name: expr[start..end].to_owned(),
            matchers,
        });
    }
    out
}

/// The samples of an exposition: name → the label sets it has.
fn exported(text: &str) -> HashMap<String, Vec<HashMap<String, String>>> {
    let mut out: HashMap<String, Vec<HashMap<String, String>>> = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let mut labels = HashMap::new();
        if line[name_end..].starts_with('{') {
            let close = line.rfind('}').expect("closed labels");
            for pair in line[name_end + 1..close].split("\",") {
                if let Some((k, v)) = pair.split_once('=') {
                    labels.insert(k.trim().to_owned(), v.trim_matches('"').to_owned());
                }
            }
        }
        out.entry(line[..name_end].to_owned())
            .or_default()
            .push(labels);
    }
    out
}

/// Every selector of `expr` names a metric in `exported`, and each `label="value"` matcher with
/// a literal value matches some series of it.
fn check_expr(origin: &str, expr: &str, exported: &HashMap<String, Vec<HashMap<String, String>>>) {
    for s in selectors(expr) {
        let Some(series) = exported.get(&s.name) else {
            panic!(
                "{origin}: `{}` is not exported by the gateway (expr: {expr})",
                s.name
            );
        };
        for (label, op, value) in &s.matchers {
            if op != "=" || value.contains('$') {
                continue;
            }
            assert!(
                series.iter().any(|l| l.get(label) == Some(value)),
                "{origin}: no series {}{{{label}=\"{value}\"}} is exported (expr: {expr})",
                s.name
            );
        }
    }
}

/// The dashboard's PromQL: every panel target, with where it comes from.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target has an expr");
            out.push((format!("panel {:?}", panel["title"]), expr.to_owned()));
        }
    }
    out
}

/// A real Prometheus on a free loopback port, SIGKILLed (by PID) when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts it on `config` (a file in `dir`), its data under `dir`; waits until it is ready.
    async fn start(dir: &Path, config: &Path) -> Prometheus {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus is installed (scripts/test installs Debian's prometheus)");
        let p = Prometheus { child, addr, log };
        let ready = async || {
            let r = reqwest::get(format!("http://{}/-/ready", p.addr))
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        };
        if poll(Duration::from_secs(30), Duration::from_millis(100), ready)
            .await
            .is_none()
        {
            panic!("prometheus did not get ready; its log:\n{}", read(&p.log));
        }
        p
    }

    /// `GET /api/v1/{path}` with `params`; the `data` of a successful answer, else `Err(error)`.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let url =
            url::Url::parse_with_params(&format!("http://{}/api/v1/{path}", self.addr), params)
                .expect("a URL");
        let body: Value = reqwest::get(url)
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!("{}: {}", body["errorType"], body["error"]))
        }
    }

    /// An instant query's result vector.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("query", &[("query", expr)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The dashboard and the alert rules against the real thing: a gateway on Redis (so the store's
/// metrics exist too) fronting a real upstream, scraped every second by a real Prometheus loaded
/// with `deploy/prometheus/alerts.yml` and a scrape config made from `prometheus.yml`.
///
/// Every metric name and literal label value in the dashboard's and the rules' expressions must
/// be in the gateway's `/metrics`; every dashboard query must be valid PromQL and return series;
/// every rule must evaluate, and none fires on a healthy gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_rules_read_only_metrics_the_gateway_exports() {
    let dir = tempfile::tempdir().unwrap();
    let (redis_url, _redis) = redis_server::shared(dir.path());
    let upstream = Upstream::start().await;
    let prefix = redis_server::prefix();
    let (public, admin, text) =
        redis_gateway_config(dir.path(), &redis_url, &prefix, &upstream.url(), "");
    let gateway = Gateway::start(dir.path(), public, admin, &text).await;

    let scrape = read(&deploy("prometheus/prometheus.yml"));
    assert!(scrape.contains("job_name: hookgate") && scrape.contains("127.0.0.1:9090"));
    let scrape = scrape
        .replace("127.0.0.1:9090", &gateway.admin.to_string())
        .replace("15s", "1s");
    std::fs::write(dir.path().join("prometheus.yml"), scrape).unwrap();
    std::fs::copy(
        deploy("prometheus/alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    let prometheus = Prometheus::start(dir.path(), &dir.path().join("prometheus.yml")).await;
    let scraped = async || {
        let up = prometheus.query("up{job=\"hookgate\"} == 1").await.ok()?;
        (!up.is_empty()).then_some(())
    };
    assert!(
        poll(Duration::from_secs(30), Duration::from_millis(200), scraped)
            .await
            .is_some(),
        "prometheus never scraped the gateway; its log:\n{}",
        read(&prometheus.log)
    );

    // Traffic after the first scrape, so the rates see it: accepted, duplicate, rejected events,
    // their deliveries, and a reload.
    let client = client();
    let ids: Vec<String> = (0..10).map(|_| generation()).collect();
    for id in &ids {
        let (status, _, body) = post(&client, &gateway.url(PATH), completed(id)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _, _) = post(&client, &gateway.url(PATH), completed(&ids[0])).await;
    assert_eq!(status, 200);
    let (status, _, _) = post(&client, &gateway.url(PATH), "{not json").await;
    assert_eq!(status, 400);
    assert_eq!(upstream.wait_arrived(10, Duration::from_secs(20)).await, 10);
    let res = client
        .post(gateway.admin_url("/reload"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "{}",
        res.text().await.unwrap_or_default()
    );

    // Wait until Prometheus has the traffic in several scrapes, and has evaluated every rule.
    let caught_up = async || {
        let r = prometheus
            .query("sum(count_over_time(hookgate_requests_total{outcome=\"accepted\"}[1m])) >= 4 and sum(hookgate_requests_total{outcome=\"accepted\"}) == 10 and sum(hookgate_deliveries_total{result=\"success\"}) == 10")
            .await
            .ok()?;
        (!r.is_empty()).then_some(())
    };
    assert!(
        poll(
            Duration::from_secs(30),
            Duration::from_millis(250),
            caught_up
        )
        .await
        .is_some(),
        "prometheus did not catch up with the traffic"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let metrics = gateway.metrics().await;
    let exported = exported(&metrics);

    // The rules, as Prometheus parsed and evaluated them.
    let rules_file = read(&deploy("prometheus/alerts.yml"));
    let alerts_in_file: BTreeSet<String> = rules_file
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect();
    let evaluated = async || {
        let data = prometheus.api("rules", &[]).await.ok()?;
        let rules: Vec<Value> = data["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        rules
            .iter()
            .all(|r| r["health"] != "unknown")
            .then_some(rules)
    };
    let rules = poll(
        Duration::from_secs(20),
        Duration::from_millis(200),
        evaluated,
    )
    .await
    .expect("prometheus evaluated the rules");
    let loaded: BTreeSet<String> = rules
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        loaded, alerts_in_file,
        "prometheus loaded every alert of alerts.yml"
    );
    for rule in &rules {
        let name = rule["name"].as_str().unwrap();
        assert_eq!(rule["health"], "ok", "{name}: {}", rule["lastError"]);
        assert_eq!(
            rule["state"], "inactive",
            "{name} is not inactive on a healthy gateway: {rule}"
        );
        check_expr(
            &format!("alert {name}"),
            rule["query"].as_str().unwrap(),
            &exported,
        );
    }

    // The dashboard: its structure, then each query against the real data.
    let dashboard: Value = serde_json::from_str(&read(&deploy("grafana/hookgate.json")))
        .expect("the dashboard is JSON");
    check_layout(&dashboard);
    let variables: HashSet<String> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    for want in ["datasource", "instance", "route"] {
        assert!(
            variables.contains(want),
            "the dashboard has a `{want}` variable"
        );
    }
    let instance = gateway.admin.to_string();
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(query) = var["query"]["query"].as_str() else {
            continue;
        };
        // label_values(metric{...}, label): the label's values over the metric's series.
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: not label_values(...): {query}", var["name"]));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        check_expr(&format!("variable {}", var["name"]), selector, &exported);
        let selector = selector.replace("$instance", ".*");
        let values = prometheus
            .api(
                &format!("label/{}/values", label.trim()),
                &[("match[]", &selector)],
            )
            .await
            .unwrap_or_else(|e| panic!("variable {}: {e}", var["name"]));
        let want = if label.trim() == "instance" {
            instance.as_str()
        } else {
            PATH
        };
        assert!(
            values.as_array().unwrap().iter().any(|v| v == want),
            "variable {} offers {want}: {values}",
            var["name"]
        );
    }
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 30, "{} queries", exprs.len());
    for (origin, expr) in &exprs {
        check_expr(origin, expr, &exported);
        // Each selector follows the variables: the instance always, the route where it has one.
        for sel in selectors(expr) {
            let has = |label: &str, var: &str| {
                sel.matchers
                    .iter()
                    .any(|(l, op, v)| l == label && op == "=~" && v == var)
            };
            assert!(
                has("instance", "$instance"),
                "{origin}: {} without instance=~\"$instance\"",
                sel.name
            );
            let routed = exported[&sel.name].iter().any(|l| l.contains_key("route"));
            assert!(
                !routed || has("route", "$route"),
                "{origin}: {} without route=~\"$route\"",
                sel.name
            );
        }
        let concrete = expr
            .replace("$instance", &instance)
            .replace("$route", PATH)
            .replace("$__rate_interval", "30s");
        let result = prometheus
            .query(&concrete)
            .await
            .unwrap_or_else(|e| panic!("{origin}: {e}\n{concrete}"));
        assert!(!result.is_empty(), "{origin}: no series for {concrete}");
    }
}

/// Grafana's grid is 24 wide: every panel within it, no two overlapping, ids unique, every query
/// on the `datasource` variable.
fn check_layout(dashboard: &Value) {
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = HashSet::new();
    let mut boxes: Vec<(String, [i64; 4])> = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap().to_owned();
        assert!(
            ids.insert(p["id"].as_i64().unwrap()),
            "{title}: duplicate id"
        );
        let g = &p["gridPos"];
        let b = ["x", "y", "w", "h"].map(|k| g[k].as_i64().unwrap());
        assert!(
            b[0] >= 0 && b[0] + b[2] <= 24 && b[2] > 0 && b[3] > 0,
            "{title}: gridPos {g}"
        );
        for (other, o) in &boxes {
            let apart = b[0] + b[2] <= o[0]
                || o[0] + o[2] <= b[0]
                || b[1] + b[3] <= o[1]
                || o[1] + o[3] <= b[1];
            assert!(apart, "panels {title:?} and {other:?} overlap");
        }
        boxes.push((title.clone(), b));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title}: the datasource variable"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
        assert!(
            p["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title}: a description"
        );
    }
}

/// `promtool test rules` passes on the rules as shipped, and fails on a copy with any one
/// threshold or `for` changed: every number in alerts.yml is pinned by alerts_test.yml.
#[test]
fn alert_tests_catch_a_changed_threshold() {
    // (alert, text in its rule, replaced by)
    const MUTANTS: &[(&str, &str, &str)] = &[
        ("HookgateDown", "== 0", "== 1"),
        ("HookgateDown", "for: 1m", "for: 3m"),
        (
            "HookgateDown",
            "unless on(job, instance) hookgate_connections_open",
            "unless on(job, instance) up",
        ),
        ("HookgateAbsent", "for: 5m", "for: 10m"),
        ("HookgateAbsent", "up{job=\"hookgate\"}", "up{job=\"node\"}"),
        (
            "HookgateSpoolFilling",
            "hookgate_spool_max_events > 0.8",
            "hookgate_spool_max_events > 0.82",
        ),
        (
            "HookgateSpoolFilling",
            "hookgate_spool_max_events > 0.8",
            "hookgate_spool_max_events > 0.78",
        ),
        (
            "HookgateSpoolFilling",
            "hookgate_spool_max_bytes > 0.8",
            "hookgate_spool_max_bytes > 0.82",
        ),
        (
            "HookgateSpoolFilling",
            "hookgate_spool_max_bytes > 0.8",
            "hookgate_spool_max_bytes > 0.78",
        ),
        ("HookgateSpoolFilling", "for: 5m", "for: 10m"),
        ("HookgateDeliveryBacklog", "> 1800", "> 2000"),
        ("HookgateDeliveryBacklog", "> 1800", "> 1600"),
        ("HookgateDeliveryBacklog", "for: 5m", "for: 10m"),
        (
            "HookgateDeliveryBacklog",
            "hookgate_destination_paused == 1",
            "hookgate_destination_paused == 2",
        ),
        ("HookgateDestinationPaused", "== 1", "== 0"),
        ("HookgateDestinationPaused", "for: 1h", "for: 2h"),
        ("HookgateDeadLettersGrowing", "> 0", "> 5"),
        ("HookgateDeadLettersGrowing", "[15m]", "[5m]"),
        (
            "HookgateDeadLettersGrowing",
            "result=\"dead_letter\"",
            "result=~\".+\"",
        ),
        ("HookgateUpstreamDown", "== 0", "== 1"),
        ("HookgateUpstreamDown", "for: 5m", "for: 10m"),
        (
            "HookgateUpstreamDown",
            "hookgate_spool_depth > 0",
            "hookgate_spool_depth > 5",
        ),
        ("HookgateRejectionsHigh", "> 0.2", "> 0.25"),
        ("HookgateRejectionsHigh", "> 0.2", "> 0.15"),
        ("HookgateRejectionsHigh", "> 0.05", "> 0.01"),
        ("HookgateRejectionsHigh", "for: 10m", "for: 20m"),
        ("HookgateRejectionsHigh", ", route!=\"(none)\"", ""),
        ("HookgateAckSlow", "[5m]))) > 1", "[5m]))) > 2.5"),
        ("HookgateAckSlow", "0.99", "0.9"),
        ("HookgateAckSlow", "for: 10m", "for: 20m"),
        ("HookgateStoreDown", "== 0", "== 1"),
        ("HookgateStoreDown", "for: 1m", "for: 5m"),
        ("HookgateStoreRefusing", "< 0.5", "< 0.3"),
        ("HookgateStoreRefusing", "< 0.5", "< 0.9"),
        ("HookgateStoreRefusing", "writable[2m]", "writable[1m]"),
        (
            "HookgateStoreRefusing",
            "hookgate_store_up == 1",
            "hookgate_store_up >= 0",
        ),
        ("HookgateStoreRefusing", "for: 30s", "for: 2m"),
        (
            "HookgateDiskLow",
            "< hookgate_store_min_free_bytes",
            "< 2 * hookgate_store_min_free_bytes",
        ),
        (
            "HookgateDiskLow",
            "< hookgate_store_min_free_bytes",
            "< 0.5 * hookgate_store_min_free_bytes",
        ),
        ("HookgateDiskLow", "for: 10m", "for: 20m"),
        ("HookgateReloadFailed", "== 0", "== 1"),
        ("HookgateReloadFailed", "for: 1m", "for: 5m"),
        ("HookgateRestartPending", "== 1", "== 0"),
        ("HookgateRestartPending", "for: 1h", "for: 2h"),
        ("HookgateAllowlistRefreshFailing", "for: 2h", "for: 1h"),
        ("HookgateAllowlistRefreshFailing", "> 0", "> 20"),
        ("HookgateConnectionsAtLimit", "> 0", "> 5"),
        (
            "HookgateConnectionsAtLimit",
            "reason=\"max_connections\"",
            "reason=~\".+\"",
        ),
    ];
    let rules = read(&deploy("prometheus/alerts.yml"));
    let tests = read(&deploy("prometheus/alerts_test.yml"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("alerts_test.yml"), &tests).unwrap();
    let run = |rules: &str| {
        std::fs::write(dir.path().join("alerts.yml"), rules).unwrap();
        let out = Command::new("promtool")
            .args(["test", "rules", "alerts_test.yml"])
            .current_dir(dir.path())
            .output()
            .expect("promtool is installed (scripts/test installs Debian's prometheus)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (passed, output) = run(&rules);
    assert!(passed, "the rules as shipped fail their tests:\n{output}");

    // Each alert's rule text runs from its `- alert:` line to the next one.
    let starts: Vec<usize> = rules
        .match_indices("      - alert: ")
        .map(|(i, _)| i)
        .collect();
    let block = |alert: &str| {
        let start = rules
            .find(&format!("      - alert: {alert}\n"))
            .unwrap_or_else(|| panic!("{alert} is not in alerts.yml"));
        let end = starts
            .iter()
            .copied()
            .find(|&s| s > start)
            .unwrap_or(rules.len());
        (start, end)
    };
    let mut covered = HashSet::new();
    for (alert, from, to) in MUTANTS {
        let (start, end) = block(alert);
        let rule = &rules[start..end];
        assert_eq!(
            rule.matches(from).count(),
            1,
            "{alert}: `{from}` occurs once in its rule"
        );
        let mutant = format!(
            "{}{}{}",
            &rules[..start],
            rule.replacen(from, to, 1),
            &rules[end..]
        );
        let (passed, output) = run(&mutant);
        assert!(
            !passed,
            "{alert} with `{from}` changed to `{to}` still passes alerts_test.yml"
        );
        assert!(
            output.contains(alert),
            "{alert}: promtool names it:\n{output}"
        );
        covered.insert(*alert);
    }
    for line in rules.lines() {
        if let Some(alert) = line.trim().strip_prefix("- alert: ") {
            assert!(
                covered.contains(alert),
                "{alert} has no mutant: its thresholds are unpinned"
            );
        }
    }
}

/// `hookgate completions SHELL` writes a script each shell loads, and bash's (and fish's, where
/// installed) complete the subcommands; zsh's is syntax-checked where zsh is installed.
#[test]
fn completions_complete_the_subcommands() {
    let script = |shell: &str| {
        let out = Command::new(binary())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "completions {shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let bash = dir.path().join("hookgate.bash");
    std::fs::write(&bash, script("bash")).unwrap();
    let complete = |words: &str, cword: usize, cur_prev: &str| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; _hookgate hookgate {cur_prev}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                bash.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bash: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect::<HashSet<_>>()
    };
    let top = complete("hookgate ''", 1, "'' hookgate");
    for want in [
        "run",
        "check-config",
        "dead-letters",
        "reload",
        "completions",
        "--config",
    ] {
        assert!(
            top.contains(want),
            "bash offers {want} after `hookgate`: {top:?}"
        );
    }
    let dl = complete("hookgate dead-letters ''", 2, "'' dead-letters");
    for want in ["list", "replay", "purge", "--admin", "--token"] {
        assert!(
            dl.contains(want),
            "bash offers {want} after `hookgate dead-letters`: {dl:?}"
        );
    }
    let shells = complete("hookgate completions ''", 2, "'' completions");
    assert!(
        ["bash", "zsh", "fish"].iter().all(|s| shells.contains(*s)),
        "{shells:?}"
    );

    let zsh_script = script("zsh");
    assert!(
        zsh_script.starts_with("#compdef hookgate"),
        "{}",
        &zsh_script[..40]
    );
    let zsh = dir.path().join("_hookgate");
    std::fs::write(&zsh, &zsh_script).unwrap();
    match Command::new("zsh").arg("-n").arg(&zsh).output() {
        Ok(out) => assert!(out.status.success(), "zsh -n: {}", String::from_utf8_lossy(&out.stderr)),
        Err(_) => eprintln!("zsh is not installed: its completion script was not syntax-checked (scripts/test installs it)"),
    }
    let fish = dir.path().join("hookgate.fish");
    std::fs::write(&fish, script("fish")).unwrap();
    match Command::new("fish")
        .arg("--no-config")
        .arg("-c")
        .arg(format!(
            "source {}; complete -C 'hookgate dead-letters '",
            fish.display()
        ))
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "fish: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let offered: HashSet<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split('\t').next().map(str::to_owned))
                .collect();
            for want in ["list", "replay", "purge"] {
                assert!(offered.contains(want), "fish offers {want}: {offered:?}");
            }
        }
        Err(_) => eprintln!(
            "fish is not installed: its completion script was not run (scripts/test installs it)"
        ),
    }
}
