//! `hookgate`: the webhook gateway binary. See `hookgate --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hookgate::gateway::Config;

#[path = "hookgate/admin.rs"]
mod admin;

/// The configuration `hookgate` runs without `--config`: `examples/hookgate.toml`, built in.
const EMBEDDED: &str = include_str!("../../examples/hookgate.toml");
const EMBEDDED_NAME: &str = "(embedded default: examples/hookgate.toml)";

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXAMPLES: &str = "\
Examples:
  hookgate --config examples/hookgate.toml              run the gateway (same as `run`)
  hookgate                                              run the built-in default (examples/hookgate.toml)
  hookgate check-config examples/hookgate.toml          print the effective config, or every error
  hookgate events list --status dead --since -1h        events of the last hour that were dead-lettered (admin API on 127.0.0.1:9090)
  hookgate events show 0190c5d2-8f3a-7c1e-9b2d-3e4f5a6b7c8d
  hookgate events replay --since 2026-12-07T03:10:00Z --until 2026-12-07T04:00:00Z --rate 200/s
  hookgate replays list
  hookgate dead-letters list                            list the dead letters
  hookgate dead-letters replay --all --route /webhook/o3-video
  hookgate dead-letters purge 0190c5d2-8f3a-7c1e-9b2d-3e4f5a6b7c8d
  hookgate destinations                                 every route's destinations: paused, circuit, queued
  hookgate pause /hooks/stripe/app                      pause one destination (events are acknowledged and wait)
  hookgate resume /hooks/stripe                         resume every destination of a route
  hookgate reload                                       reload the config file (as SIGHUP does)
  hookgate completions bash > /etc/bash_completion.d/hookgate
  RUST_LOG=hookgate=debug hookgate --log-format json --config hookgate.toml";

/// A webhook gateway: IP allowlist, payload validation, dedup, fast acknowledgement from a durable
/// spool, retried delivery to your handler, Prometheus metrics.
#[derive(Debug, Parser)]
#[command(name = "hookgate", version, after_help = EXAMPLES)]
struct Cli {
    /// The configuration file (without it, `run` uses the built-in default:
    /// examples/hookgate.toml).
    #[arg(long, short, global = true, env = "HOOKGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Log line format (the level comes from RUST_LOG, default `info`).
    #[arg(long, value_enum, global = true, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Check a configuration file: print the effective config (defaults filled in) or every error.
    CheckConfig {
        /// The file (defaults to --config, else the built-in default).
        file: Option<PathBuf>,
    },
    /// Dead letters, through the admin API of a running gateway.
    DeadLetters {
        /// The admin listener (default: `server.admin` of --config, else 127.0.0.1:9090).
        #[arg(long, global = true)]
        admin: Option<String>,
        /// The admin token (default: `server.admin_token` of --config).
        #[arg(long, global = true, env = "HOOKGATE_ADMIN_TOKEN")]
        token: Option<String>,
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// The event history of a running gateway, through its admin API: find, show and replay
    /// events.
    Events {
        #[command(flatten)]
        api: Api,
        #[command(subcommand)]
        action: EventAction,
    },
    /// Replay jobs of a running gateway, through its admin API.
    Replays {
        #[command(flatten)]
        api: Api,
        #[command(subcommand)]
        action: ReplayAction,
    },
    /// Reload the configuration file of a running gateway (as SIGHUP does), through its admin
    /// API: prints what was reloaded and what needs a restart, or why the file was refused.
    Reload {
        /// The admin listener (default: `server.admin` of --config, else 127.0.0.1:9090).
        #[arg(long)]
        admin: Option<String>,
        /// The admin token (default: `server.admin_token` of --config).
        #[arg(long, env = "HOOKGATE_ADMIN_TOKEN")]
        token: Option<String>,
        /// Remove destinations even if they have events waiting (their events stay in the
        /// spool, undelivered, until a destination of that name comes back).
        #[arg(long)]
        force: bool,
    },
    /// Every route's destinations on a running gateway: paused, circuit, queued.
    Destinations {
        #[command(flatten)]
        api: Api,
    },
    /// Pause deliveries to a destination (ROUTE/DESTINATION), or to every destination of a
    /// route (ROUTE): events go on being acknowledged and wait. Survives restarts; shared by
    /// every instance on Redis.
    Pause {
        #[command(flatten)]
        api: Api,
        /// ROUTE or ROUTE/DESTINATION (a route's name, or its path when unnamed).
        target: String,
    },
    /// Resume deliveries paused with `hookgate pause`.
    Resume {
        #[command(flatten)]
        api: Api,
        /// ROUTE or ROUTE/DESTINATION.
        target: String,
    },
    /// Print a shell completion script to stdout, e.g.
    /// `hookgate completions bash > /etc/bash_completion.d/hookgate`.
    Completions {
        /// The shell.
        shell: Shell,
    },
}

/// The shells `hookgate completions` writes for.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// List dead letters, oldest first.
    List {
        /// Only this route (its name; the path when unnamed).
        #[arg(long)]
        route: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Deliver dead letters again: one by id, or --all.
    Replay(Selection),
    /// Delete dead letters: one by id, or --all.
    Purge(Selection),
}

/// Where the admin API is, and the output wanted.
#[derive(Debug, clap::Args)]
struct Api {
    /// The admin listener (default: `server.admin` of --config, else 127.0.0.1:9090).
    #[arg(long, global = true)]
    admin: Option<String>,
    /// The admin token (default: `server.admin_token` of --config).
    #[arg(long, global = true, env = "HOOKGATE_ADMIN_TOKEN")]
    token: Option<String>,
    /// JSON for scripts instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// Which events: every filter given must hold.
#[derive(Debug, Clone, clap::Args)]
struct Filters {
    /// The route (its name; the path when unnamed).
    #[arg(long)]
    route: Option<String>,
    /// One destination of the route(s): its status is the one --status looks at, and a replay
    /// sends only there.
    #[arg(long)]
    destination: Option<String>,
    /// pending, delivered, dead or filtered (at any destination, or at --destination).
    #[arg(long)]
    status: Option<String>,
    /// Received at or after: RFC 3339 (2026-12-07T03:10:00Z), now, or before now (-1h).
    #[arg(long, allow_hyphen_values = true)]
    since: Option<String>,
    /// Received before: as --since.
    #[arg(long, allow_hyphen_values = true)]
    until: Option<String>,
    /// The dedup key as the sender sent it (a generation_id), or its 32 hex digits.
    #[arg(long)]
    key: Option<String>,
    /// A JSON pointer into the body and the value it must equal (repeat for several):
    /// --where /status=failed
    #[arg(long = "where", value_name = "POINTER=VALUE")]
    matches: Vec<String>,
}

impl Filters {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        for (k, v) in [
            ("route", &self.route),
            ("destination", &self.destination),
            ("status", &self.status),
            ("since", &self.since),
            ("until", &self.until),
            ("key", &self.key),
        ] {
            if let Some(v) = v {
                p.push((k, v.clone()));
            }
        }
        for w in &self.matches {
            p.push(("where", w.clone()));
        }
        p
    }

    fn is_empty(&self) -> bool {
        self.pairs().is_empty()
    }
}

#[derive(Debug, Subcommand)]
enum EventAction {
    /// List events (oldest first), a page at a time.
    List {
        #[command(flatten)]
        filters: Filters,
        /// Newest first.
        #[arg(long)]
        desc: bool,
        /// At most this many (up to 1000 a page).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Go on after this event (the previous page's last).
        #[arg(long)]
        after: Option<String>,
        /// Every page, not only the first.
        #[arg(long)]
        all: bool,
    },
    /// Show one event: its request, body and attempts.
    Show {
        /// The event id.
        id: String,
    },
    /// Send events again: one by id, or a replay job over the filters, paced by --rate (and by
    /// each destination's own rate, concurrency and order).
    Replay {
        /// One event's id (with --destination: only there).
        #[arg(conflicts_with_all = ["route", "status", "since", "until", "key", "matches"])]
        id: Option<String>,
        #[command(flatten)]
        filters: Filters,
        /// A job's pace: 200/s, 600/m, 3600/h.
        #[arg(long, default_value = "100/s")]
        rate: String,
        /// Follow the job until it ends, even without a terminal.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ReplayAction {
    /// Every replay job, newest first.
    List,
    /// One job's progress.
    Show {
        /// The job id.
        id: String,
        /// Follow it until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Stop a job.
    Cancel {
        /// The job id.
        id: String,
    },
}

/// One dead letter, or all (of a route).
#[derive(Debug, clap::Args)]
struct Selection {
    /// The event id.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    id: Option<String>,
    /// Every dead letter (of --route).
    #[arg(long)]
    all: bool,
    /// With --all: only this route.
    #[arg(long, requires = "all")]
    route: Option<String>,
}

fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter =
        tracing_subscriber::EnvFilter::try_new(hookgate::gateway::log_filter(rust_log.as_deref()))
            .unwrap_or_else(|e| {
                eprintln!("RUST_LOG={rust_log:?} is not a log filter ({e}); logging at info");
                tracing_subscriber::EnvFilter::new(hookgate::gateway::log_filter(None))
            });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let loaded = match &cli.config {
                Some(path) => Config::load(path),
                None => {
                    tracing::info!(
                        "no --config: running the embedded default (examples/hookgate.toml)"
                    );
                    Config::parse(EMBEDDED_NAME, EMBEDDED)
                }
            };
            let config = match loaded {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            match hookgate::gateway::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hookgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { file } => {
            let loaded = match file.or(cli.config) {
                Some(path) => Config::load(path),
                None => Config::parse(EMBEDDED_NAME, EMBEDDED),
            };
            match loaded {
                Ok(c) => {
                    println!("# {}: OK. The effective configuration:", c.source.display());
                    print!("{}", c.to_toml());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::DeadLetters {
            admin,
            token,
            action,
        } => dead_letters(cli.config, admin, token, Some(action), false),
        Command::Reload {
            admin,
            token,
            force,
        } => dead_letters(cli.config, admin, token, None, force),
        Command::Destinations { api } => {
            let json = api.json;
            match connect(cli.config, api) {
                Ok(admin) => admin::destinations(&admin, json),
                Err(code) => code,
            }
        }
        Command::Pause { api, target } => pause(cli.config, api, &target, true),
        Command::Resume { api, target } => pause(cli.config, api, &target, false),
        Command::Events { api, action } => {
            let json = api.json;
            let admin = match connect(cli.config, api) {
                Ok(a) => a,
                Err(code) => return code,
            };
            match action {
                EventAction::List {
                    filters,
                    desc,
                    limit,
                    after,
                    all,
                } => {
                    let mut pairs = filters.pairs();
                    if desc {
                        pairs.push(("order", "desc".into()));
                    }
                    pairs.push(("limit", limit.to_string()));
                    if let Some(a) = after {
                        pairs.push(("after", a));
                    }
                    admin::events_list(&admin, pairs, all, json)
                }
                EventAction::Show { id } => admin::events_show(&admin, &id, json),
                EventAction::Replay {
                    id: Some(id),
                    filters,
                    ..
                } => admin::events_replay_one(&admin, &id, filters.destination.as_deref(), json),
                EventAction::Replay {
                    id: None,
                    filters,
                    rate,
                    wait,
                } => {
                    if filters.is_empty() {
                        eprintln!("hookgate: events replay needs an event id, or filters (--since, --until, --route, --status, --key, --where) for a replay job");
                        return ExitCode::from(2);
                    }
                    let mut body = serde_json::Map::new();
                    let mut wheres = Vec::new();
                    for (k, v) in filters.pairs() {
                        if k == "where" {
                            wheres.push(serde_json::Value::String(v));
                        } else {
                            body.insert(k.into(), serde_json::Value::String(v));
                        }
                    }
                    if !wheres.is_empty() {
                        body.insert("where".into(), serde_json::Value::Array(wheres));
                    }
                    body.insert("rate".into(), serde_json::Value::String(rate));
                    admin::replay_job(&admin, serde_json::Value::Object(body), wait, json)
                }
            }
        }
        Command::Replays { api, action } => {
            let json = api.json;
            let admin = match connect(cli.config, api) {
                Ok(a) => a,
                Err(code) => return code,
            };
            match action {
                ReplayAction::List => admin::replays_list(&admin, json),
                ReplayAction::Show { id, watch } => admin::replays_show(&admin, &id, watch, json),
                ReplayAction::Cancel { id } => admin::replays_cancel(&admin, &id, json),
            }
        }
        Command::Completions { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            let mut command = <Cli as clap::CommandFactory>::command();
            // Into memory first: clap_complete panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "hookgate", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("hookgate: writing the completion script: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `hookgate pause|resume TARGET`.
fn pause(config: Option<PathBuf>, api: Api, target: &str, pause: bool) -> ExitCode {
    let json = api.json;
    match connect(config, api) {
        Ok(admin) => admin::pause(&admin, target, pause, json),
        Err(code) => code,
    }
}

/// The admin API `api` names (else the one of the config file, else 127.0.0.1:9090).
fn connect(config: Option<PathBuf>, api: Api) -> Result<admin::Admin, ExitCode> {
    let loaded = match config.map(Config::admin_endpoint).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Err(ExitCode::from(2));
        }
    };
    let address = api
        .admin
        .or_else(|| loaded.as_ref().map(|(a, _)| a.clone()))
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    let token = api.token.or_else(|| loaded.and_then(|(_, t)| t));
    admin::Admin::new(address, token).map_err(admin::Failed::report)
}

/// One admin API call: a dead-letter `action`, or (`None`) a reload (`force`: removing
/// destinations with events waiting).
fn dead_letters(
    config: Option<PathBuf>,
    admin: Option<String>,
    token: Option<String>,
    action: Option<DeadLetterAction>,
    force: bool,
) -> ExitCode {
    // Only the admin listener and token of the file: no route secret or published list needed.
    let loaded = match config.map(Config::admin_endpoint).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let admin = admin
        .or_else(|| loaded.as_ref().map(|(a, _)| a.clone()))
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    let token = token.or_else(|| loaded.and_then(|(_, t)| t));
    let base = format!("http://{admin}");
    let route_query = |route: &Option<String>| {
        route
            .as_ref()
            .map(|r| {
                let encoded: String = url::form_urlencoded::byte_serialize(r.as_bytes()).collect();
                format!("?route={encoded}")
            })
            .unwrap_or_default()
    };
    let (method, url) = match &action {
        None if force => (reqwest::Method::POST, format!("{base}/reload?force=true")),
        None => (reqwest::Method::POST, format!("{base}/reload")),
        Some(action) => match action {
            DeadLetterAction::List { route, limit } => {
                let q = route_query(route);
                let sep = if q.is_empty() { '?' } else { '&' };
                (
                    reqwest::Method::GET,
                    format!("{base}/dead-letters{q}{sep}limit={limit}"),
                )
            }
            DeadLetterAction::Replay(Selection { id: Some(id), .. }) => (
                reqwest::Method::POST,
                format!("{base}/dead-letters/{id}/replay"),
            ),
            DeadLetterAction::Replay(Selection { route, .. }) => (
                reqwest::Method::POST,
                format!("{base}/dead-letters/replay{}", route_query(route)),
            ),
            DeadLetterAction::Purge(Selection { id: Some(id), .. }) => {
                (reqwest::Method::DELETE, format!("{base}/dead-letters/{id}"))
            }
            DeadLetterAction::Purge(Selection { route, .. }) => (
                reqwest::Method::DELETE,
                format!("{base}/dead-letters{}", route_query(route)),
            ),
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hookgate: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(reqwest::StatusCode, String), reqwest::Error> = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let mutating = method != reqwest::Method::GET;
        let mut request = client.request(method, &url);
        if mutating {
            // The admin API takes changes only as JSON (never from a web page's form).
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body("{}");
        }
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        Ok((status, response.text().await?))
    });
    match result {
        Ok((status, body)) => {
            let pretty = serde_json::from_str::<serde_json::Value>(&body)
                .and_then(|v| serde_json::to_string_pretty(&v))
                .unwrap_or(body);
            if status.is_success() {
                println!("{pretty}");
                ExitCode::SUCCESS
            } else {
                eprintln!("hookgate: {url}: {status}\n{pretty}");
                ExitCode::FAILURE
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
            eprintln!("hookgate: cannot reach the admin API at {base}: {why}");
            ExitCode::FAILURE
        }
    }
}
