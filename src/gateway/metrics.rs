//! The gateway's own metric families, beside the pipeline's ([`crate::metrics`]): connections,
//! allowlist sources, configuration reloads, and how full the spool is against its bounds (what
//! the alert rules in `deploy/prometheus/alerts.yml` compare).

use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::store::Spool;

/// Registered once per gateway process, into the admin listener's registry.
pub(crate) struct GatewayMetrics {
    /// `hookgate_connections_refused_total{reason}`.
    pub refused: IntCounterVec,
    /// `hookgate_connections_open`.
    pub open_connections: IntGauge,
    /// `hookgate_allowlist_entries{route}`.
    pub allow_entries: IntGaugeVec,
    /// `hookgate_allowlist_refresh_failures_total{route}`.
    pub allow_failures: IntCounterVec,
    pub reloads: Reloads,
    pub spool: SpoolFill,
}

/// What the reloads did: counted by result, and whether the file on disk is what runs.
#[derive(Clone)]
pub(crate) struct Reloads {
    /// `hookgate_config_reloads_total{result="success"}`.
    pub success: IntCounter,
    /// `hookgate_config_reloads_total{result="failure"}`.
    pub failure: IntCounter,
    /// `hookgate_config_last_reload_successful`: 0 from a refused reload until one passes, so an
    /// alert can tell "the file on disk is not what runs" from a failure already fixed.
    pub last_successful: IntGauge,
    /// `hookgate_config_restart_pending`: 1 once a reload read settings only a restart applies.
    pub restart_pending: IntGauge,
}

impl Reloads {
    /// A reload that passed; `needs_restart` settings changed that only a restart applies.
    pub fn passed(&self, needs_restart: bool) {
        self.success.inc();
        self.last_successful.set(1);
        self.restart_pending.set(i64::from(needs_restart));
    }

    /// A reload that was refused.
    pub fn refused(&self) {
        self.failure.inc();
        self.last_successful.set(0);
    }
}

/// The spool against its bounds (`server.spool_max_events`, `server.spool_max_size`): at either
/// one new events are refused with 503 `spool_full`.
pub(crate) struct SpoolFill {
    stored_events: IntGauge,
    stored_bytes: IntGauge,
}

impl GatewayMetrics {
    /// Creates the families and registers them; the bounds are the configured ones.
    pub fn register(
        registry: &Registry,
        max_events: u64,
        max_bytes: u64,
    ) -> Result<Self, prometheus::Error> {
        let refused = IntCounterVec::new(
            Opts::new(
                "hookgate_connections_refused_total",
                "Connections closed before any byte was read: the peer is in no route's allowlist (ip_not_allowed), or server.max_connections are open (max_connections).",
            ),
            &["reason"],
        )?;
        let open_connections = IntGauge::new(
            "hookgate_connections_open",
            "Client connections open now (bounded by server.max_connections).",
        )?;
        let allow_entries = IntGaugeVec::new(
            Opts::new(
                "hookgate_allowlist_entries",
                "Networks in the route's allowlist now (inline, files and published lists together).",
            ),
            &["route"],
        )?;
        let allow_failures = IntCounterVec::new(
            Opts::new(
                "hookgate_allowlist_refresh_failures_total",
                "Refreshes of a published allowlist that failed or were refused (unreachable, not 2xx, not JSON, empty, a bad entry); the last good list stays.",
            ),
            &["route"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "hookgate_config_reloads_total",
                "Configuration reloads (SIGHUP, POST /reload), by result: success, or failure (the file was refused; the running configuration stays).",
            ),
            &["result"],
        )?;
        let last_successful = IntGauge::new(
            "hookgate_config_last_reload_successful",
            "1 while the last reload passed (or none was asked since the start), 0 after a refused one: the file on disk is not what runs.",
        )?;
        let restart_pending = IntGauge::new(
            "hookgate_config_restart_pending",
            "1 once a reload read settings that only a restart applies (listeners, [store], [server] limits, a route's upstream or delivery): the process runs older ones.",
        )?;
        let stored_events = IntGauge::new(
            "hookgate_spool_stored_events",
            "Events the spool holds, awaiting delivery or dead-lettered: what server.spool_max_events bounds (shared by every instance of a Redis store).",
        )?;
        let stored_bytes = IntGauge::new(
            "hookgate_spool_stored_bytes",
            "Bytes of the records the spool holds: what server.spool_max_size bounds.",
        )?;
        let max_events = gauge(
            "hookgate_spool_max_events",
            "server.spool_max_events: at this many stored events new ones get 503 spool_full.",
            max_events,
        )?;
        let max_bytes = gauge(
            "hookgate_spool_max_bytes",
            "server.spool_max_size in bytes: at this size new events get 503 spool_full.",
            max_bytes,
        )?;
        for family in [
            Box::new(refused.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(open_connections.clone()),
            Box::new(allow_entries.clone()),
            Box::new(allow_failures.clone()),
            Box::new(reloads.clone()),
            Box::new(last_successful.clone()),
            Box::new(restart_pending.clone()),
            Box::new(stored_events.clone()),
            Box::new(stored_bytes.clone()),
            Box::new(max_events),
            Box::new(max_bytes),
        ] {
            registry.register(family)?;
        }
        last_successful.set(1);
        Ok(GatewayMetrics {
            refused,
            open_connections,
            allow_entries,
            allow_failures,
            reloads: Reloads {
                success: reloads.with_label_values(&["success"]),
                failure: reloads.with_label_values(&["failure"]),
                last_successful,
                restart_pending,
            },
            spool: SpoolFill {
                stored_events,
                stored_bytes,
            },
        })
    }
}

fn gauge(name: &str, help: &str, value: u64) -> Result<IntGauge, prometheus::Error> {
    let g = IntGauge::new(name, help)?;
    g.set(saturating_i64(value));
    Ok(g)
}

/// A count as a gauge's value.
fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SpoolFill {
    /// Keeps the stored counts current, once a second, until `stop`. The counts are read off the
    /// blocking pool: a Redis store answers them with a round trip (bounded at 2.5 s).
    pub async fn track(&self, spool: Arc<dyn Spool>, stop: pingora::server::ShutdownWatch) {
        crate::deliver::each_second_until(stop, || async {
            let spool = spool.clone();
            if let Ok(stats) = tokio::task::spawn_blocking(move || spool.stats()).await {
                self.stored_events
                    .set(saturating_i64(stats.pending + stats.dead));
                self.stored_bytes.set(saturating_i64(stats.bytes));
            }
        })
        .await;
    }
}
