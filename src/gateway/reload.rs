//! Reloading the configuration without a restart (DESIGN §8): on SIGHUP, or `POST /reload` on the
//! admin API (`hookgate reload`), the file is read and checked again; if it passes, the routes
//! (allowlists and their sources, validators, secrets, rate limits, dedup keys, modes), the admin
//! token and the TLS certificate are swapped in at once, each request seeing the old set or the
//! new one, never a mix, and no connection dropped. A file that fails is refused with its errors
//! logged, and the running configuration stays. Counted in `hookgate_config_reloads_total{result}`.
//!
//! What needs a restart (listeners, `[store]`, `[server]` limits, a route's upstream or delivery
//! settings, whose events are delivered by the worker started with it) is named in a warning.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::tls::sign::CertifiedKey;
use tokio::sync::{mpsc, oneshot};

use super::config::Config;
use super::{RouteSet, Shared};
use crate::deliver::Deliverer;

/// What a reload answers: the errors of a refused file, or what needs a restart.
pub(crate) type ReloadResult = Result<Vec<String>, Vec<String>>;

/// A reload asked for (by the admin API), with where its result goes, and whether it may remove
/// destinations that have events waiting (`force`).
pub(crate) type ReloadRequest = (oneshot::Sender<ReloadResult>, bool);

/// The TLS certificate the listeners present, replaceable: every new handshake takes the
/// current one; connections already open keep theirs.
#[derive(Debug)]
pub(crate) struct Certificate(ArcSwap<CertifiedKey>);

impl Certificate {
    /// Reads and checks `cert` and `key` (PEM).
    pub(crate) fn load(
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<CertifiedKey, String> {
        let (certs, key_der) = pingora::tls::load_certs_and_key_files(
            &cert.display().to_string(),
            &key.display().to_string(),
        )
        .map_err(|e| format!("cannot load the certificate or key: {e}"))?
        .ok_or_else(|| {
            format!(
                "no PEM certificate in {} or no PEM private key in {}",
                cert.display(),
                key.display()
            )
        })?;
        pingora::tls::install_default_crypto_provider();
        let provider = pingora::tls::CryptoProvider::get_default()
            .ok_or_else(|| "no TLS crypto provider".to_owned())?;
        let identity = CertifiedKey::from_der(certs, key_der, provider)
            .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
        identity
            .keys_match()
            .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
        Ok(identity)
    }

    pub(crate) fn new(key: CertifiedKey) -> Self {
        Self(ArcSwap::from_pointee(key))
    }

    fn replace(&self, key: CertifiedKey) {
        self.0.store(Arc::new(key));
    }
}

impl pingora::tls::ResolvesServerCert for Certificate {
    fn resolve(&self, _: pingora::tls::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Watches for SIGHUP and admin reloads; holds the running configuration.
pub(crate) struct ReloadService {
    pub shared: Arc<Shared>,
    /// The configuration the process started with: what needs a restart is compared to it.
    pub started: Config,
    /// The route settings each route's deliveries started with (at the start, or at the reload
    /// that added the route): a route's upstream and delivery settings are compared to them.
    pub delivering: Mutex<Delivering>,
    pub config: Mutex<Config>,
    pub requests: Mutex<Option<mpsc::UnboundedReceiver<ReloadRequest>>>,
    /// The first routes' allowlist refreshers, started with the service.
    pub refreshers: Mutex<Vec<crate::store::Background>>,
    pub reloads: super::metrics::Reloads,
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut refreshing: Vec<tokio::task::JoinHandle<()>> =
            std::mem::take(&mut *self.refreshers.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .map(tokio::spawn)
                .collect();
        let Some(mut requests) = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGHUP; reload through the admin API");
                None
            }
        };
        loop {
            let (answer, force) = tokio::select! {
                _ = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    (None, false)
                }
                r = requests.recv() => match r {
                    Some((r, force)) => {
                        tracing::info!(force, "admin API: reloading the configuration");
                        (Some(r), force)
                    }
                    None => return,
                },
                _ = shutdown.changed() => break,
            };
            let result = self.reload(&mut refreshing, force).await;
            if let Some(answer) = answer {
                let _ = answer.send(result);
            }
        }
        for task in refreshing {
            task.abort();
        }
    }
}

impl ReloadService {
    async fn reload(
        &self,
        refreshing: &mut Vec<tokio::task::JoinHandle<()>>,
        force: bool,
    ) -> ReloadResult {
        let source = self
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .source
            .clone();
        // Reading may fetch published allowlists: off the runtime's threads.
        let read = tokio::task::spawn_blocking(move || Config::load(&source)).await;
        let config = match read {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return self.refused(e.to_string().lines().map(str::to_owned).collect()),
            Err(e) => return self.refused(vec![format!("the reload failed: {e}")]),
        };
        let certificate = match (&config.server.tls, &self.shared.certificate) {
            (Some(tls), Some(_)) => {
                match Certificate::load(&config.resolve(&tls.cert), &config.resolve(&tls.key)) {
                    Ok(key) => Some(key),
                    Err(e) => return self.refused(vec![format!("server.tls: {e}")]),
                }
            }
            _ => None,
        };
        // The admin token, read once here (a file or variable gone since the check refuses the
        // reload rather than leaving the API open). The listener stays where it started: a
        // token the running address needs cannot be removed by a reload.
        let token = match &config.server.admin_token {
            Some(t) => match config.secret(t) {
                Ok(t) => Some(t),
                Err(e) => return self.refused(vec![format!("server.admin_token: {e}")]),
            },
            None => None,
        };
        if let Err(e) = token_kept(&self.started.server.admin, token.as_deref()) {
            return self.refused(vec![e]);
        }
        let restart = {
            let delivering = self.delivering.lock().unwrap_or_else(|e| e.into_inner());
            needs_restart(&self.started, &delivering, &config)
        };
        let existing: HashMap<String, Deliverer> = (**self.shared.deliverers.load()).clone();
        let removed = removed_destinations(&existing, &config);
        let waiting: Vec<String> = removed
            .iter()
            .filter(|(d, dest)| d.has_waiting(dest))
            .map(|(d, dest)| {
                format!(
                    "route {:?}: destination {dest:?} has events waiting",
                    d.route()
                )
            })
            .collect();
        if !waiting.is_empty() {
            if !force {
                let mut errors = waiting;
                errors.push("deliver them first (or pause the destination and replay them elsewhere), or reload with force (hookgate reload --force, POST /reload?force=true): its events then stay in the spool, undelivered, until a destination of that name comes back".into());
                return self.refused(errors);
            }
            for w in &waiting {
                tracing::warn!(what = %w, "reload forced: the destination is removed; its events stay in the spool until a destination of that name comes back");
            }
        }
        let set = match super::build_routes(&config, &self.shared, &existing) {
            Ok(set) => set,
            Err(e) => return self.refused(vec![e]),
        };
        for (d, dest) in &removed {
            self.shared.metrics.remove_destination(d.route(), dest);
        }
        let RouteSet {
            routes,
            deliverers,
            workers,
            refreshers,
        } = set;
        for worker in workers {
            tokio::spawn(worker);
        }
        // The swap: each request reads the old set or the new one, whole.
        self.shared.swap_routes(routes, deliverers);
        self.delivering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .started(&config.routes);
        self.shared.admin_token.store(Arc::new(token));
        if let (Some(cert), Some(key)) = (&self.shared.certificate, certificate) {
            cert.replace(key);
        }
        for task in refreshing.drain(..) {
            task.abort();
        }
        refreshing.extend(refreshers.into_iter().map(tokio::spawn));
        for what in &restart {
            tracing::warn!(setting = %what, "changed in the file; takes effect after a restart");
        }
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
        self.reloads.passed(!restart.is_empty());
        tracing::info!(needs_restart = restart.len(), "configuration reloaded");
        Ok(restart)
    }

    fn refused(&self, errors: Vec<String>) -> ReloadResult {
        self.reloads.refused();
        for e in &errors {
            tracing::error!(error = %e, "reload refused; the running configuration stays");
        }
        Err(errors)
    }
}

/// A reload may not remove the token of an admin listener that runs (as started) on a
/// non-loopback address: the file's new `server.admin` only applies after a restart.
fn token_kept(running_admin: &str, token: Option<&str>) -> Result<(), String> {
    let listening = running_admin.parse::<std::net::SocketAddr>();
    if token.is_none() && listening.is_ok_and(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "server.admin_token: the admin listener runs on {running_admin}, not a loopback address; it keeps its token until a restart"
        ));
    }
    Ok(())
}

/// The destinations `config` leaves out of routes it keeps: each with its route's running
/// deliverer.
fn removed_destinations(
    existing: &HashMap<String, Deliverer>,
    config: &Config,
) -> Vec<(Deliverer, String)> {
    let mut removed = Vec::new();
    for (i, route) in config.routes.iter().enumerate() {
        let Some(d) = existing.get(Config::route_name(route)) else {
            continue;
        };
        let kept: Vec<String> = route
            .resolved_destinations(i)
            .iter()
            .map(|r| r.name.to_owned())
            .collect();
        for name in d.destinations() {
            if !kept.contains(&name) {
                removed.push((d.clone(), name));
            }
        }
    }
    removed
}

/// A destination's settings as its deliveries run with them, to compare.
fn settings(d: &super::config::ResolvedDestination<'_>) -> String {
    format!(
        "{:?}",
        (d.url, d.upstream_ca, &d.policy, d.rate, d.filter, d.order)
    )
}

/// The settings each destination's deliveries run with, by route and destination name: set
/// when it starts (with the process, or at the reload that adds it) and kept while it runs (a
/// removed route's keeps delivering its pending events until the stop; a destination a reload
/// removes stops then); and whether each route forwards (`proxy`).
#[derive(Debug, Default)]
pub(crate) struct Delivering {
    destinations: HashMap<(String, String), String>,
    proxy: HashMap<String, bool>,
}

impl Delivering {
    /// The routes the process starts with.
    pub fn of(routes: &[super::config::Route]) -> Self {
        let mut d = Delivering::default();
        d.started(routes);
        d
    }

    /// After a swap: the destinations that had no lane now have one, with these settings; those
    /// a route no longer has are gone.
    fn started(&mut self, routes: &[super::config::Route]) {
        for (i, r) in routes.iter().enumerate() {
            let name = Config::route_name(r).to_owned();
            let resolved = r.resolved_destinations(i);
            self.destinations.retain(|(route, dest), _| {
                route != &name || resolved.iter().any(|d| d.name == dest)
            });
            for d in &resolved {
                self.destinations
                    .entry((name.clone(), d.name.to_owned()))
                    .or_insert_with(|| settings(d));
            }
            self.proxy
                .entry(name)
                .or_insert(r.mode == super::config::Mode::Proxy);
        }
    }
}

/// The settings changed between `running` (as the process started) and `new` that only a
/// restart applies; a destination's URL and delivery settings are compared to those its
/// deliveries started with (`delivering`). A proxy route's are not: its forwards are built anew
/// at each reload. Destinations added or removed apply at the reload.
fn needs_restart(running: &Config, delivering: &Delivering, new: &Config) -> Vec<String> {
    let (a, b) = (&running.server, &new.server);
    let show = |v: &dyn std::fmt::Debug| format!("{v:?}");
    let server: [(&str, String, String); 15] = [
        ("server.listen", show(&a.listen), show(&b.listen)),
        ("server.admin", show(&a.admin), show(&b.admin)),
        (
            "server.tls (on or off, its files' paths)",
            show(&a.tls),
            show(&b.tls),
        ),
        ("server.data_dir", show(&a.data_dir), show(&b.data_dir)),
        (
            "server.durability",
            show(&a.durability),
            show(&b.durability),
        ),
        ("server.threads", show(&a.threads), show(&b.threads)),
        (
            "server.max_connections",
            show(&a.max_connections),
            show(&b.max_connections),
        ),
        (
            "server.spool_max_events",
            show(&a.spool_max_events),
            show(&b.spool_max_events),
        ),
        (
            "server.spool_max_size",
            show(&a.spool_max_size),
            show(&b.spool_max_size),
        ),
        (
            "server.dedup_capacity",
            show(&a.dedup_capacity),
            show(&b.dedup_capacity),
        ),
        (
            "server.header_timeout",
            show(&a.header_timeout),
            show(&b.header_timeout),
        ),
        (
            "server.body_timeout",
            show(&a.body_timeout),
            show(&b.body_timeout),
        ),
        (
            "server.idle_timeout",
            show(&a.idle_timeout),
            show(&b.idle_timeout),
        ),
        (
            "server.shutdown_grace",
            show(&a.shutdown_grace),
            show(&b.shutdown_grace),
        ),
        ("[store]", show(&running.store), show(&new.store)),
    ];
    let mut changed: Vec<String> = server
        .into_iter()
        .filter(|(_, x, y)| x != y)
        .map(|(key, _, _)| key.to_owned())
        .collect();
    for (i, route) in new.routes.iter().enumerate() {
        let name = Config::route_name(route);
        let forwarded = route.mode == super::config::Mode::Proxy;
        if forwarded && delivering.proxy.get(name) == Some(&true) {
            continue;
        }
        for d in route.resolved_destinations(i) {
            let Some(old) = delivering
                .destinations
                .get(&(name.to_owned(), d.name.to_owned()))
            else {
                continue;
            };
            if *old != settings(&d) {
                changed.push(if route.upstream.is_some() {
                    format!(
                        "route {name:?}: upstream, upstream_ca or [route.delivery] (its deliveries run as started)"
                    )
                } else {
                    format!(
                        "route {name:?} destination {:?}: url, upstream_ca, delivery, concurrency, rate, filter or order (its deliveries run as started)",
                        d.name
                    )
                });
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::{needs_restart, token_kept, Delivering};
    use crate::gateway::Config;

    fn config(routes: &[(&str, &str, &str)]) -> Config {
        let mut text = String::from("[server]\n");
        for (path, upstream, mode) in routes {
            text += &format!(
                "[[route]]\npath = \"{path}\"\nupstream = \"{upstream}\"\nmode = \"{mode}\"\nallow = [\"127.0.0.1/32\"]\n"
            );
        }
        Config::parse("hookgate.toml", &text).unwrap()
    }

    #[test]
    fn a_route_is_judged_against_the_settings_its_deliveries_run_with() {
        let a = ("/a", "http://127.0.0.1:3000/a", "fast_ack");
        let started = config(&[a]);
        let mut delivering = Delivering::of(&started.routes);
        // A reload adds /b: nothing needs a restart; its deliveries start with this upstream.
        let added = config(&[a, ("/b", "http://127.0.0.1:3000/b", "fast_ack")]);
        assert!(needs_restart(&started, &delivering, &added).is_empty());
        delivering.started(&added.routes);
        // The next reload moves /b's upstream: its deliveries still run to the old one.
        let moved = config(&[a, ("/b", "http://127.0.0.1:4000/b", "fast_ack")]);
        assert_eq!(
            needs_restart(&started, &delivering, &moved),
            [
                r#"route "/b": upstream, upstream_ca or [route.delivery] (its deliveries run as started)"#
            ]
        );
        delivering.started(&moved.routes);
        assert_eq!(
            needs_restart(&started, &delivering, &moved).len(),
            1,
            "still pending"
        );
    }

    #[test]
    fn a_proxy_routes_upstream_applies_at_the_reload() {
        let started = config(&[("/p", "http://127.0.0.1:3000/p", "proxy")]);
        let delivering = Delivering::of(&started.routes);
        let moved = config(&[("/p", "http://127.0.0.1:4000/p", "proxy")]);
        assert!(needs_restart(&started, &delivering, &moved).is_empty());
        // From fast_ack to proxy: the events spooled before are delivered as started.
        let fast = config(&[("/p", "http://127.0.0.1:3000/p", "fast_ack")]);
        let delivering = Delivering::of(&fast.routes);
        assert_eq!(needs_restart(&fast, &delivering, &moved).len(), 1);
    }

    #[test]
    fn a_reload_cannot_open_a_reachable_admin_listener() {
        assert!(
            token_kept("10.0.0.5:9090", None).is_err(),
            "started reachable, token removed"
        );
        assert!(token_kept("[2001:db8::1]:9090", None).is_err());
        assert!(token_kept("10.0.0.5:9090", Some("t")).is_ok());
        assert!(
            token_kept("127.0.0.1:9090", None).is_ok(),
            "loopback needs none"
        );
        assert!(token_kept("[::1]:9090", None).is_ok());
    }
}
