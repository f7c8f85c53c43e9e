//! The standalone gateway (feature `gateway`): DESIGN §2's pipeline on pingora, configured by a
//! TOML file, in front of an upstream handler written in anything.
//!
//! - [`Config`]: the file (DESIGN §8), checked with errors that name the file and the key.
//! - [`run`]: binds the public listeners (HTTP or HTTPS), the admin listener and the delivery
//!   engine, and serves until SIGTERM or SIGINT; then stops accepting, finishes the requests in
//!   flight, lets deliveries in flight end, and flushes the spool.
//!
//! ```
//! use hookgate::gateway::Config;
//!
//! let config = Config::parse("hookgate.toml", include_str!("../../examples/hookgate.toml")).unwrap();
//! assert_eq!(config.server.listen, ["127.0.0.1:8080"]);
//! assert_eq!(config.routes[0].path, "/webhook/o3-video");
//! ```

use std::collections::HashMap;

use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::core::ClientIpResolver;
use crate::deliver::{Deliverer, Forwarder};
use crate::metrics::Metrics;
use crate::store::{Background, Spool, SpoolError};

mod admin;
mod allow;
pub mod config;
mod metrics;
mod reload;
mod service;

pub use admin::{Attempt, DeadLetter};
pub use config::{Config, ConfigFileError};

use service::{Connections, Drain, Gateway, GatewayApp, PeerFilter, Route};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    /// The storage backend cannot be opened (a locked or unreadable data dir).
    #[error("{file}: cannot open the {backend} storage: {error}")]
    Spool {
        /// The config file.
        file: String,
        /// The backend (`store.backend`).
        backend: String,
        /// What failed.
        error: SpoolError,
    },
    /// A listener cannot be bound.
    #[error("{file}: {key}: cannot listen on {addr}: {error}")]
    Listen {
        /// The config file.
        file: String,
        /// The setting (`server.listen[0]`, `server.admin`).
        key: String,
        /// The address.
        addr: String,
        /// The bind error.
        error: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The delivery workers could not start.
    #[error("{0}")]
    Other(String),
}

/// The binary's log filter: `RUST_LOG` (default `info`), with the storage engine's start-up
/// and maintenance lines (fjall and lsm-tree log files created, journals recovered, at INFO)
/// shown only at `debug` or when `RUST_LOG` names them: to an operator they are noise.
pub fn log_filter(rust_log: Option<&str>) -> String {
    let given = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    let names_engine = given.contains("fjall") || given.contains("lsm_tree");
    let verbose = given.split(',').any(|d| {
        let d = d.trim();
        !d.contains('=') && matches!(d.to_ascii_lowercase().as_str(), "debug" | "trace")
    });
    if names_engine || verbose {
        given.to_owned()
    } else {
        format!("{given},fjall=warn,lsm_tree=warn")
    }
}

/// Runs the gateway described by `config` until SIGTERM or SIGINT (both graceful).
pub fn run(config: Config) -> Result<(), StartError> {
    let file = config.source.display().to_string();
    let built = build(&config)?;
    let server = built.server;
    let signals = GracefulSignals {
        drain: built.drain,
        shared: built.shared.clone(),
        grace: config.server.shutdown_grace,
    };
    tracing::info!(
        listen = ?config.server.listen,
        tls = config.server.tls.is_some(),
        admin = %config.server.admin,
        routes = config.routes.len(),
        backend = ?config.store.backend,
        durability = ?config.server.durability,
        data_dir = %config.server.data_dir.display(),
        "hookgate serving (config {file})"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    // Every runtime has stopped; the last spool handles drop here and the writer commits what
    // was queued before the process exits.
    drop(built.spool);
    tracing::info!("hookgate stopped");
    Ok(())
}

struct Built {
    server: Server,
    spool: Arc<dyn Spool>,
    drain: Arc<Drain>,
    shared: Arc<Shared>,
}

/// What the listeners, the admin API and the reload share: swapped whole by a reload.
pub(crate) struct Shared {
    /// The routes by path.
    pub routes: ArcSwap<HashMap<String, Arc<Route>>>,
    /// The deliverers by route name (a removed route's keeps running until the stop).
    pub deliverers: ArcSwap<HashMap<String, Deliverer>>,
    pub admin_token: ArcSwap<Option<String>>,
    /// The TLS certificate, when the listeners serve HTTPS.
    pub certificate: Option<Arc<reload::Certificate>>,
    pub metrics: Metrics,
    pub spool: Arc<dyn Spool>,
    pub allow_entries: prometheus::IntGaugeVec,
    pub allow_failures: prometheus::IntCounterVec,
    /// The event history's query and replay API (the admin listener's `/events`, `/replays`).
    pub history: crate::history::History,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("routes", &self.routes.load().len())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Puts `routes` in place at once; `deliverers` join the ones already running.
    pub(crate) fn swap_routes(
        &self,
        routes: HashMap<String, Arc<Route>>,
        deliverers: HashMap<String, Deliverer>,
    ) {
        let mut all = (**self.deliverers.load()).clone();
        all.extend(deliverers);
        // Replays reach every deliverer running (a removed route's too, until the stop); a
        // route's dedup key finds its events by key.
        let keys: HashMap<&str, &crate::core::DedupKeySpec> = routes
            .values()
            .map(|r| (r.name.as_str(), &r.dedup_key))
            .collect();
        self.history
            .set_routes(all.values().map(|d| crate::history::HistoryRoute {
                deliverer: d.clone(),
                dedup: keys.get(d.route()).map(|k| (*k).clone()),
            }));
        self.deliverers.store(Arc::new(all));
        self.routes.store(Arc::new(routes));
    }

    /// Every deliverer started, removed routes' included.
    pub(crate) fn all_deliverers(&self) -> Vec<Deliverer> {
        self.deliverers.load().values().cloned().collect()
    }
}

/// Routes built from a config: by path, their deliverers by name, the workers of the deliverers
/// started for them, and their allowlists' refreshers.
pub(crate) struct RouteSet {
    pub routes: HashMap<String, Arc<Route>>,
    pub deliverers: HashMap<String, Deliverer>,
    pub workers: Vec<Background>,
    pub refreshers: Vec<Background>,
}

/// Builds the routes of `config`, reusing the running deliverer of a route of the same name
/// (its events keep flowing through a reload; a route whose destinations changed keeps the
/// ones it still has) and starting one for a new route.
pub(crate) fn build_routes(
    config: &Config,
    shared: &Shared,
    existing: &HashMap<String, Deliverer>,
) -> Result<RouteSet, String> {
    let mut set = RouteSet {
        routes: HashMap::new(),
        deliverers: HashMap::new(),
        workers: Vec::new(),
        refreshers: Vec::new(),
    };
    for (rc, compiled) in config.compiled_routes() {
        let name = Config::route_name(rc).to_owned();
        let route_metrics = shared.metrics.route(&name);
        let names: Vec<String> = compiled
            .destinations
            .iter()
            .map(|d| d.name.clone())
            .collect();
        if !names.iter().any(|n| n == crate::store::DEFAULT_DESTINATION) {
            // A route's default series, made with its others, read nothing here.
            shared
                .metrics
                .remove_destination(&name, crate::store::DEFAULT_DESTINATION);
        }
        let destinations = || {
            compiled
                .destinations
                .iter()
                .map(|d| d.destination())
                .collect::<Vec<_>>()
        };
        let failed = |e: crate::core::ConfigError| format!("route {name:?}: {e}");
        let deliverer = match existing.get(&name) {
            Some(d) if d.destinations() == names => d.clone(),
            Some(d) => {
                let (deliverer, worker) = d
                    .reconfigure(&shared.metrics, destinations())
                    .map_err(failed)?;
                set.workers.push(Box::pin(worker));
                deliverer
            }
            None => {
                let (deliverer, worker) = Deliverer::with_destinations(
                    name.clone(),
                    shared.spool.clone(),
                    &shared.metrics,
                    destinations(),
                )
                .map_err(failed)?;
                set.workers.push(Box::pin(worker));
                deliverer
            }
        };
        let entries = shared.allow_entries.with_label_values(&[&name]);
        entries.set(compiled.allow.live.len() as i64);
        let failures = shared.allow_failures.with_label_values(&[&name]);
        if compiled.allow.refreshes() {
            set.refreshers.push(Box::pin(compiled.allow.clone().refresh(
                name.clone(),
                entries,
                failures,
            )));
        }
        let policy = rc.delivery.policy();
        set.deliverers.insert(name.clone(), deliverer.clone());
        set.routes.insert(
            rc.path.clone(),
            Arc::new(Route {
                forwarder: Forwarder::new(name.clone(), compiled.upstream().clone(), &policy),
                name,
                mode: rc.mode,
                allow: compiled.allow.live.clone(),
                clients: ClientIpResolver::new(compiled.trusted.clone()),
                validator: compiled.validator.clone(),
                dedup_key: compiled.dedup_key.clone(),
                signature: compiled.signature.clone(),
                rate_limit: compiled.rate_limit.clone(),
                dedup_ttl: rc.dedup.ttl,
                max_body: rc.max_body.as_u64(),
                deliverer,
                metrics: route_metrics,
            }),
        );
    }
    Ok(set)
}

fn build(config: &Config) -> Result<Built, StartError> {
    let file = config.source.display().to_string();
    let s = &config.server;
    // Bind every address once first: pingora panics on a bind error; this names the key.
    let mut addrs: Vec<(String, &String)> = s
        .listen
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("server.listen[{i}]"), a))
        .collect();
    addrs.push(("server.admin".into(), &s.admin));
    for (key, addr) in addrs {
        if let Err(error) = std::net::TcpListener::bind(addr.as_str()) {
            return Err(StartError::Listen {
                file,
                key,
                addr: addr.clone(),
                error,
            });
        }
    }

    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry)?;
    let own = metrics::GatewayMetrics::register(
        &registry,
        s.spool_max_events,
        s.spool_max_size.as_u64(),
    )?;
    let connections = Connections {
        count: std::sync::atomic::AtomicUsize::new(0),
        open: own.open_connections.clone(),
        max: s.max_connections,
        refused: own.refused.with_label_values(&["max_connections"]),
        warned: std::sync::atomic::AtomicU64::new(0),
    };
    let storage_error = |error| StartError::Spool {
        file: file.clone(),
        backend: format!("{:?}", config.store.backend).to_lowercase(),
        error,
    };
    let storage = config.open_storage(&metrics).map_err(storage_error)?;

    let certificate = match &s.tls {
        Some(tls) => Some(Arc::new(reload::Certificate::new(
            reload::Certificate::load(&config.resolve(&tls.cert), &config.resolve(&tls.key))
                .map_err(|e| StartError::Other(format!("{file}: server.tls: {e}")))?,
        ))),
        None => None,
    };
    let shared = Arc::new(Shared {
        routes: ArcSwap::default(),
        deliverers: ArcSwap::default(),
        admin_token: ArcSwap::new(Arc::new(config.admin_token())),
        certificate,
        metrics: metrics.clone(),
        spool: storage.spool.clone(),
        allow_entries: own.allow_entries.clone(),
        allow_failures: own.allow_failures.clone(),
        history: crate::history::History::new(storage.spool.clone()),
    });
    let mut workers: Vec<Background> = storage.background;
    // Replay jobs: resumed after a restart, handed over from an instance that died.
    workers.push(Box::pin(shared.history.clone().run()));
    let set = build_routes(config, &shared, &HashMap::new())
        .map_err(|e| StartError::Other(format!("{file}: cannot start the deliveries: {e}")))?;
    workers.extend(set.workers);
    let refreshers = set.refreshers;
    let filter_wanted = !set.routes.values().any(|r| r.clients.trusts_proxies());
    shared.swap_routes(set.routes, set.deliverers);
    let filter = filter_wanted.then(|| PeerFilter {
        shared: shared.clone(),
        refused: own.refused.with_label_values(&["ip_not_allowed"]),
    });

    let conf = ServerConf {
        threads: s.threads,
        // Our own shutdown signal waits for the requests and deliveries in flight (up to
        // `shutdown_grace`) before pingora is told; pingora's grace is a fixed sleep.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let drain = Arc::new(Drain::default());
    let gateway = Arc::new(Gateway {
        shared: shared.clone(),
        dedup: storage.dedup.clone(),
        header_timeout: s.header_timeout,
        body_timeout: s.body_timeout,
        idle_timeout: s.idle_timeout,
        unmatched: metrics.unrouted("(none)"),
        drain: drain.clone(),
        connections,
    });
    let mut public = Service::new("hookgate".into(), GatewayApp(gateway));
    if let Some(filter) = filter {
        public.set_connection_filter(Arc::new(filter));
    }
    // No read buffer in front of each connection: pingora's default is 64 KiB a connection
    // (most of an idle connection's cost), and the request parser reads into its own buffer
    // anyway. The small write buffer stays: an answer goes out in one write.
    let buffers = L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE);
    for addr in &s.listen {
        let listener = ListenerConfig::tcp(addr.as_str()).l4_buffer(buffers);
        let listener = match &s.tls {
            None => listener,
            Some(tls) => {
                let cert = config.resolve(&tls.cert).display().to_string();
                let key = config.resolve(&tls.key).display().to_string();
                let mut settings = TlsSettings::intermediate(&cert, &key)
                    .map_err(|e| StartError::Other(format!("{file}: server.tls: {e}")))?;
                // Each handshake takes the certificate of now: a reload replaces it.
                if let Some(cert) = &shared.certificate {
                    settings.set_cert_resolver(cert.clone());
                }
                listener.tls(settings)
            }
        };
        public.add_listener(listener);
    }
    server.add_service(public);

    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut admin = Service::new(
        "hookgate-admin".into(),
        admin::Admin {
            registry,
            shared: shared.clone(),
            reload: reload_tx,
            spool: storage.spool.clone(),
            max_events: s.spool_max_events,
            max_bytes: s.spool_max_size.as_u64(),
            drain: drain.clone(),
        },
    );
    admin.add_tcp(&s.admin);
    admin.threads = Some(1);
    server.add_service(admin);

    let delivery = background_service(
        "hookgate-delivery",
        DeliveryService {
            workers: Mutex::new(workers),
            shared: shared.clone(),
            grace: s.shutdown_grace,
            fill: own.spool,
        },
    );
    server.add_service(delivery);
    let reloader = background_service(
        "hookgate-reload",
        reload::ReloadService {
            shared: shared.clone(),
            started: config.clone(),
            delivering: Mutex::new(reload::Delivering::of(&config.routes)),
            config: Mutex::new(config.clone()),
            requests: Mutex::new(Some(reload_rx)),
            refreshers: Mutex::new(refreshers),
            reloads: own.reloads,
        },
    );
    server.add_service(reloader);
    Ok(Built {
        server,
        spool: storage.spool,
        drain,
        shared,
    })
}

/// Runs the delivery workers and the storage's own tasks; on shutdown lets attempts in flight
/// finish (up to the grace).
struct DeliveryService {
    workers: Mutex<Vec<Background>>,
    shared: Arc<Shared>,
    grace: Duration,
    /// The spool's stored counts against its bounds, kept current while the gateway runs.
    fill: metrics::SpoolFill,
}

#[async_trait]
impl BackgroundService for DeliveryService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        let tasks: Vec<_> = workers.into_iter().map(tokio::spawn).collect();
        // Returns at the shutdown signal.
        self.fill.track(self.shared.spool.clone(), shutdown).await;
        stop_deliveries(&self.shared.all_deliverers(), self.grace).await;
        for task in tasks {
            task.abort();
        }
        tracing::info!("deliveries stopped; undelivered events stay in the spool");
    }
}

/// Stops every route's deliveries at once and waits, `grace` at most in all, for the attempts in
/// flight; undelivered events stay in the spool.
async fn stop_deliveries(deliverers: &[Deliverer], grace: Duration) {
    for d in deliverers {
        d.halt();
    }
    let deadline = tokio::time::Instant::now() + grace;
    for d in deliverers {
        d.shutdown(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await;
    }
}

/// SIGTERM and SIGINT both stop gracefully (pingora's own SIGINT handling gives services no
/// notice): connections stop being kept alive, deliveries stop starting, and the signal is
/// passed on to pingora (which stops the listeners) as soon as no request and no delivery is in
/// flight, or when `grace` has passed. SIGQUIT keeps pingora's meaning (graceful upgrade).
struct GracefulSignals {
    drain: Arc<Drain>,
    shared: Arc<Shared>,
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for GracefulSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping gracefully"),
            _ = int.recv() => tracing::info!("SIGINT: stopping gracefully"),
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: graceful upgrade");
                return ShutdownSignal::GracefulUpgrade;
            }
        }
        let started = std::time::Instant::now();
        let deliverers = self.shared.all_deliverers();
        let in_flight = async {
            tokio::join!(
                self.drain.drain(self.grace),
                stop_deliveries(&deliverers, self.grace)
            )
            .0
        };
        tokio::select! {
            finished = in_flight => tracing::info!(
                waited_ms = started.elapsed().as_millis() as u64,
                requests_finished = finished,
                "in-flight work done; stopping the listeners"
            ),
            _ = term.recv() => tracing::info!("second SIGTERM: stopping the listeners now"),
            _ = int.recv() => tracing::info!("second SIGINT: stopping the listeners now"),
        }
        ShutdownSignal::GracefulTerminate
    }
}

#[cfg(test)]
mod log_filter_tests {
    #[test]
    fn the_engine_logs_at_debug_only() {
        let cases = [
            (None, "info,fjall=warn,lsm_tree=warn"),
            (Some(""), "info,fjall=warn,lsm_tree=warn"),
            (Some("info"), "info,fjall=warn,lsm_tree=warn"),
            (
                Some("hookgate=debug"),
                "hookgate=debug,fjall=warn,lsm_tree=warn",
            ),
            (
                Some("warn,hookgate=info"),
                "warn,hookgate=info,fjall=warn,lsm_tree=warn",
            ),
            (Some("debug"), "debug"),
            (Some("info,fjall=info"), "info,fjall=info"),
            (Some("TRACE"), "TRACE"),
        ];
        for (given, want) in cases {
            assert_eq!(super::log_filter(given), want, "{given:?}");
        }
    }
}
