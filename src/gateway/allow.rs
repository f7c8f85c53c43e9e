//! A route's allowlist from its sources (DESIGN §8 `allow`): inline CIDRs, files, and published
//! JSON lists fetched at start and every `refresh`. A failed or refused refresh keeps the last
//! good list (logged, `hookgate_allowlist_refresh_failures_total{route}`); a list that comes
//! back empty or unparseable is refused, never an allow-all. The start fails, naming the entry,
//! when a source cannot be read the first time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::core::{Allowlist, ConfigError, LiveAllowlist};

use super::config::AllowEntry;

/// The most a published list may weigh.
const MAX_LIST: usize = 4 << 20;

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A route's allowlist: what the checks read, and what it is rebuilt from.
#[derive(Clone)]
pub(crate) struct RouteAllow {
    /// What the allowlist checks and the connection filter read.
    pub live: LiveAllowlist,
    /// The inline CIDRs and the files, as read.
    fixed: Allowlist,
    /// The published lists, each with its last good networks.
    published: Vec<Published>,
}

#[derive(Clone)]
struct Published {
    key: String,
    url: String,
    pointer: String,
    refresh: Duration,
    last: Arc<Mutex<Allowlist>>,
}

impl std::fmt::Debug for RouteAllow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteAllow")
            .field("live", &self.live)
            .field("published", &self.published.len())
            .finish()
    }
}

/// Fetches the list at `url` and reads the array at `pointer`.
async fn fetch(
    client: &reqwest::Client,
    key: &str,
    url: &str,
    pointer: &str,
) -> Result<Allowlist, String> {
    let mut res = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("cannot fetch {url}: {}", crate::deliver::error_chain(&e)))?;
    if !res.status().is_success() {
        return Err(format!("{url} answered {}", res.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| format!("cannot read {url}: {e}"))?
    {
        if body.len() + chunk.len() > MAX_LIST {
            return Err(format!("{url}: the list is larger than {MAX_LIST} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Allowlist::from_json(key, &body, pointer).map_err(|e| e.to_string())
}

fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        // GitHub's API refuses requests without one.
        .user_agent(concat!("hookgate/", env!("CARGO_PKG_VERSION")))
        // A redirect could lead anywhere, plain HTTP included: the configured URL or nothing.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// The last list each published source gave this process, by URL and pointer: a reload whose
/// fetch fails keeps it (a provider's outage must not block a certificate or secret rotation).
static LAST_GOOD: std::sync::LazyLock<
    Mutex<std::collections::HashMap<(String, String), Allowlist>>,
> = std::sync::LazyLock::new(Default::default);

fn remember(url: &str, pointer: &str, list: &Allowlist) {
    LAST_GOOD
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((url.to_owned(), pointer.to_owned()), list.clone());
}

/// Whether `url` may be fetched: `https`, or `http` to a loopback address (a list served on the
/// machine itself); a published list over plain HTTP could be replaced on the way.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Ipv4(a)) => a.is_loopback(),
                Some(url::Host::Ipv6(a)) => a.is_loopback(),
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(format!("{url}: a published list must be fetched over https (http only from a loopback address)"))
            }
        }
        other => Err(format!("{url}: the scheme {other:?} is not http or https")),
    }
}

impl RouteAllow {
    /// Reads every source of `entries` once (files relative to `base`); `key` is the setting
    /// (`route[0].allow`). Published lists are fetched on a thread of their own, so this works
    /// inside or outside a runtime.
    pub(crate) fn build(
        key: &str,
        entries: &[AllowEntry],
        base: &std::path::Path,
    ) -> Result<Self, ConfigError> {
        let mut fixed = Vec::new();
        let mut lists = Vec::new();
        let mut published = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let k = format!("{key}[{i}]");
            match entry {
                AllowEntry::Cidr(cidr) => fixed.push((i, cidr.clone())),
                AllowEntry::File { file } => {
                    let path = if file.is_absolute() {
                        file.clone()
                    } else {
                        base.join(file)
                    };
                    let text =
                        std::fs::read_to_string(&path).map_err(|e| ConfigError::InvalidValue {
                            key: k.clone(),
                            reason: format!("cannot read {}: {e}", path.display()),
                        })?;
                    let list = Allowlist::from_lines(&format!("{k} ({})", path.display()), &text)?;
                    if list.is_empty() {
                        return Err(ConfigError::InvalidValue {
                            key: k,
                            reason: format!("{} lists no network", path.display()),
                        });
                    }
                    lists.push(list);
                }
                AllowEntry::Url {
                    url,
                    pointer,
                    refresh,
                } => {
                    let invalid = |reason: String| ConfigError::InvalidValue {
                        key: k.clone(),
                        reason,
                    };
                    if *refresh < Duration::from_secs(1) {
                        return Err(invalid("refresh must be at least 1s".into()));
                    }
                    check_url(url).map_err(&invalid)?;
                    let first = std::thread::scope(|s| {
                        s.spawn(|| {
                            let rt = tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()
                                .map_err(|e| e.to_string())?;
                            let client = client()?;
                            rt.block_on(fetch(&client, &k, url, pointer))
                        })
                        .join()
                        .unwrap_or_else(|_| Err("the fetch panicked".into()))
                    });
                    let first = match first {
                        Ok(list) => {
                            remember(url, pointer, &list);
                            list
                        }
                        // A reload: the list this process fetched before stands in.
                        Err(e) => match LAST_GOOD
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(&(url.clone(), pointer.clone()))
                        {
                            Some(last) => {
                                tracing::warn!(key = %k, error = %e, "published allowlist unreachable: keeping the list fetched before");
                                last.clone()
                            }
                            None => return Err(invalid(e)),
                        },
                    };
                    published.push(Published {
                        key: k.clone(),
                        url: url.clone(),
                        pointer: pointer.clone(),
                        refresh: *refresh,
                        last: Arc::new(Mutex::new(first)),
                    });
                }
            }
        }
        // Inline entries keep their own index in errors.
        let mut inline = Allowlist::default();
        for (i, cidr) in fixed {
            let one = Allowlist::new(key, std::iter::once(cidr)).map_err(|e| match e {
                ConfigError::InvalidCidr { entry, reason, .. } => ConfigError::InvalidCidr {
                    key: format!("{key}[{i}]"),
                    entry,
                    reason,
                },
                other => other,
            })?;
            inline = Allowlist::union([&inline, &one]);
        }
        lists.push(inline);
        let fixed = Allowlist::union(&lists);
        let allow = Self {
            live: LiveAllowlist::default(),
            fixed,
            published,
        };
        allow.live.replace(allow.assemble());
        Ok(allow)
    }

    fn assemble(&self) -> Allowlist {
        let published: Vec<Allowlist> = self
            .published
            .iter()
            .map(|p| p.last.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        Allowlist::union(std::iter::once(&self.fixed).chain(&published))
    }

    /// Whether some source is fetched again from time to time.
    pub(crate) fn refreshes(&self) -> bool {
        !self.published.is_empty()
    }

    /// Fetches each published list every `refresh` until dropped, replacing the live list on
    /// success; a failure keeps the last good one, is logged and counted.
    pub(crate) async fn refresh(
        self,
        route: String,
        entries: prometheus::IntGauge,
        failures: prometheus::IntCounter,
    ) {
        entries.set(self.live.len() as i64);
        let client = match client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(%route, error = %e, "allowlist: no refresh");
                return;
            }
        };
        // One task per source, ended with this future (the set aborts them when dropped).
        let mut tasks = tokio::task::JoinSet::new();
        for p in self.published.clone() {
            let (me, client, route, entries, failures) = (
                self.clone(),
                client.clone(),
                route.clone(),
                entries.clone(),
                failures.clone(),
            );
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(p.refresh);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await; // fetched at start already
                loop {
                    tick.tick().await;
                    match fetch(&client, &p.key, &p.url, &p.pointer).await {
                        Ok(list) => {
                            remember(&p.url, &p.pointer, &list);
                            let changed = {
                                let mut last = p.last.lock().unwrap_or_else(|e| e.into_inner());
                                let changed = last.networks() != list.networks();
                                *last = list;
                                changed
                            };
                            if changed {
                                me.live.replace(me.assemble());
                                entries.set(me.live.len() as i64);
                                tracing::info!(%route, source = %p.url, networks = me.live.len(), "allowlist refreshed: the published list changed");
                            }
                        }
                        Err(e) => {
                            failures.inc();
                            tracing::warn!(%route, source = %p.url, error = %e, "allowlist refresh failed; keeping the last good list");
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}
