//! CIDR allowlists for IPv4 and IPv6, looked up in a prefix trie.
//!
//! Lookup walks at most 32 (IPv4) or 128 (IPv6) trie levels whatever the list size; the trie is
//! `prefix-trie`, chosen over `ip_network_table` by the `allowlist` benchmark (see CHANGELOG).
//!
//! ```
//! use hookgate::core::Allowlist;
//! use std::net::IpAddr;
//!
//! let list = Allowlist::new("allow", ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]).unwrap();
//! assert!(list.contains("10.1.2.3".parse::<IpAddr>().unwrap()));
//! assert!(list.contains("::ffff:10.9.9.9".parse::<IpAddr>().unwrap())); // IPv4-mapped
//! assert!(!list.contains("11.0.0.1".parse::<IpAddr>().unwrap()));
//!
//! let err = Allowlist::new("allow", ["10.0.0.1/8"]).unwrap_err();
//! assert!(err.to_string().contains("allow[0]"));
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixSet;

use super::{ConfigError, Rejection};

/// The widest IPv4 network a published list may hold (`/8`).
pub const MIN_PUBLISHED_V4: u8 = 8;
/// The widest IPv6 network a published list may hold (`/16`).
pub const MIN_PUBLISHED_V6: u8 = 16;

/// A set of IPv4 and IPv6 networks. Empty means nothing is allowed.
#[derive(Clone, Default)]
pub struct Allowlist {
    v4: PrefixSet<Ipv4Net>,
    v6: PrefixSet<Ipv6Net>,
    entries: Vec<IpNet>,
}

impl std::fmt::Debug for Allowlist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.entries).finish()
    }
}

impl Allowlist {
    /// Builds a list from CIDR strings (`10.0.0.0/8`, `2001:db8::/32`) or single addresses.
    /// `key` names the setting in errors (`allow[2]: ...`).
    ///
    /// A CIDR with host bits set (`10.0.0.1/8`) is an error rather than silently widened.
    /// IPv4-mapped IPv6 networks (`::ffff:10.0.0.0/104`) are stored as IPv4, since lookups
    /// normalise mapped addresses to IPv4.
    pub fn new<I, S>(key: &str, entries: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Allowlist::default();
        for (i, entry) in entries.into_iter().enumerate() {
            let entry = entry.as_ref();
            let net = parse_net(entry).map_err(|reason| ConfigError::InvalidCidr {
                key: format!("{key}[{i}]"),
                entry: entry.to_owned(),
                reason,
            })?;
            list.insert(net);
        }
        Ok(list)
    }

    /// Loopback only: `127.0.0.0/8` and `::1/128`.
    pub fn loopback() -> Self {
        let mut list = Allowlist::default();
        list.insert(IpNet::V4(
            Ipv4Net::new_assert(Ipv4Addr::LOCALHOST, 8).trunc(),
        ));
        list.insert(IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)));
        list
    }

    fn insert(&mut self, net: IpNet) {
        let net = match net {
            IpNet::V6(n) => match n.addr().to_ipv4_mapped() {
                Some(v4) if n.prefix_len() >= 96 => {
                    IpNet::V4(Ipv4Net::new_assert(v4, n.prefix_len() - 96))
                }
                _ => IpNet::V6(n),
            },
            v4 => v4,
        };
        match net {
            IpNet::V4(n) => self.v4.insert(n),
            IpNet::V6(n) => self.v6.insert(n),
        };
        self.entries.push(net);
    }

    /// Whether `ip` is inside one of the networks. IPv4-mapped IPv6 addresses are looked up as IPv4.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => self.v4.get_spm(&Ipv4Net::from(a)).is_some(),
            IpAddr::V6(a) => self.v6.get_spm(&Ipv6Net::from(a)).is_some(),
        }
    }

    /// [`contains`](Self::contains) as a pipeline step: `Err(Rejection::IpNotAllowed)` outside the list.
    #[inline]
    pub fn check(&self, ip: IpAddr) -> Result<(), Rejection> {
        if self.contains(ip) {
            Ok(())
        } else {
            Err(Rejection::IpNotAllowed)
        }
    }

    /// Number of networks.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list is empty (and so allows nothing).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The networks, as given (mapped IPv6 networks shown as IPv4).
    pub fn networks(&self) -> &[IpNet] {
        &self.entries
    }
}

impl Allowlist {
    /// The networks of a file's text: one CIDR or address a line; blank lines and `#` comments
    /// (whole lines or after an entry) skipped. `key` names the source in errors (with the line).
    pub fn from_lines(key: &str, text: &str) -> Result<Self, ConfigError> {
        let mut list = Allowlist::default();
        for (n, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let net = parse_net(entry).map_err(|reason| ConfigError::InvalidCidr {
                key: format!("{key}: line {}", n + 1),
                entry: entry.to_owned(),
                reason,
            })?;
            list.insert(net);
        }
        Ok(list)
    }

    /// The networks of a published JSON list: the array of CIDR strings at `pointer` (a JSON
    /// pointer such as GitHub meta's `/hooks`; empty for a top-level array). An empty array, a
    /// missing pointer or an entry that is not a CIDR is refused: never an allow-all, never a
    /// silently shorter list.
    pub fn from_json(key: &str, body: &[u8], pointer: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidValue {
            key: key.to_owned(),
            reason,
        };
        let doc: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let at = doc
            .pointer(pointer)
            .ok_or_else(|| invalid(format!("no {pointer:?} in the document")))?;
        let items = at
            .as_array()
            .ok_or_else(|| invalid(format!("{pointer:?} is not an array")))?;
        if items.is_empty() {
            return Err(invalid(format!("{pointer:?} is an empty list; refused (it would allow nothing, or be a publishing mistake)")));
        }
        let mut list = Allowlist::default();
        for (i, item) in items.iter().enumerate() {
            let entry = item
                .as_str()
                .ok_or_else(|| invalid(format!("{pointer}/{i} is not a string")))?;
            let net = parse_net(entry).map_err(|reason| ConfigError::InvalidCidr {
                key: format!("{key}: {pointer}/{i}"),
                entry: entry.to_owned(),
                reason,
            })?;
            // A provider publishes its own ranges, never a large part of the Internet: a list
            // that does is a mistake or an attack, not a list to trust.
            let widest = match net {
                IpNet::V4(_) => MIN_PUBLISHED_V4,
                IpNet::V6(_) => MIN_PUBLISHED_V6,
            };
            if net.prefix_len() < widest {
                return Err(ConfigError::InvalidCidr {
                    key: format!("{key}: {pointer}/{i}"),
                    entry: entry.to_owned(),
                    reason: format!("wider than /{widest}: a published list is refused with it (write wide networks in the file itself)"),
                });
            }
            list.insert(net);
        }
        Ok(list)
    }

    /// Every network of `lists`, in one list.
    pub fn union<'a>(lists: impl IntoIterator<Item = &'a Allowlist>) -> Allowlist {
        let mut all = Allowlist::default();
        for list in lists {
            for net in &list.entries {
                all.insert(*net);
            }
        }
        all
    }
}

/// An [`Allowlist`] whose networks can be replaced while it is in use (a refreshed published
/// list, a reloaded file): every clone sees the new networks at once, and a lookup never waits
/// for a replacement. Cheap to clone.
///
/// ```
/// use hookgate::core::{Allowlist, LiveAllowlist};
///
/// let live = LiveAllowlist::new(Allowlist::new("allow", ["10.0.0.0/8"]).unwrap());
/// let seen_by_a_listener = live.clone();
/// live.replace(Allowlist::new("allow", ["192.0.2.0/24"]).unwrap());
/// assert!(!seen_by_a_listener.contains("10.0.0.1".parse().unwrap()));
/// assert!(seen_by_a_listener.contains("192.0.2.1".parse().unwrap()));
/// ```
#[derive(Clone)]
pub struct LiveAllowlist(std::sync::Arc<arc_swap::ArcSwap<Allowlist>>);

impl std::fmt::Debug for LiveAllowlist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.load().fmt(f)
    }
}

impl Default for LiveAllowlist {
    fn default() -> Self {
        Self::new(Allowlist::default())
    }
}

impl From<Allowlist> for LiveAllowlist {
    fn from(list: Allowlist) -> Self {
        Self::new(list)
    }
}

impl LiveAllowlist {
    /// Starts with `list`.
    pub fn new(list: Allowlist) -> Self {
        Self(std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(list)))
    }

    /// Replaces the networks for every clone.
    pub fn replace(&self, list: Allowlist) {
        self.0.store(std::sync::Arc::new(list));
    }

    /// The networks now.
    pub fn current(&self) -> std::sync::Arc<Allowlist> {
        self.0.load_full()
    }

    /// [`Allowlist::contains`] on the networks now.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.load().contains(ip)
    }

    /// [`Allowlist::check`] on the networks now.
    #[inline]
    pub fn check(&self, ip: IpAddr) -> Result<(), Rejection> {
        self.0.load().check(ip)
    }

    /// Networks now.
    pub fn len(&self) -> usize {
        self.0.load().len()
    }

    /// Whether there are none now.
    pub fn is_empty(&self) -> bool {
        self.0.load().is_empty()
    }
}

fn parse_net(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err("empty entry".into());
    }
    if !entry.contains('/') {
        return entry
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| "not an IP address or CIDR".into());
    }
    let net: IpNet = entry
        .parse()
        .map_err(|_| "not a CIDR (expected address/prefix, e.g. 10.0.0.0/8)".to_string())?;
    if net.trunc() != net {
        return Err(format!("host bits are set; did you mean {}?", net.trunc()));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_from_files_and_published_json() {
        let file = "# the sender's ranges\n10.0.0.0/8\n\n192.0.2.7  # one host\n2001:db8::/32\n";
        let list = Allowlist::from_lines("allow[1]", file).unwrap();
        assert_eq!(list.len(), 3);
        assert!(list.contains(ip("192.0.2.7")));
        let err = Allowlist::from_lines("allow[1]", "10.0.0.0/8\nnope\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("allow[1]: line 2") && err.contains("nope"),
            "{err}"
        );
        // GitHub's meta document shape.
        let meta = br#"{"verifiable_password_authentication":false,"hooks":["192.30.252.0/22","185.199.108.0/22","2a0a:a440::/29"],"web":["140.82.112.0/20"]}"#;
        let hooks = Allowlist::from_json("allow[2]", meta, "/hooks").unwrap();
        assert_eq!(hooks.len(), 3);
        assert!(hooks.contains(ip("192.30.252.1")) && !hooks.contains(ip("140.82.112.1")));
        assert_eq!(
            Allowlist::from_json("a", br#"["10.0.0.0/8"]"#, "")
                .unwrap()
                .len(),
            1
        );
        for (body, pointer, want) in [
            (&br#"{"hooks":[]}"#[..], "/hooks", "empty list"),
            (br#"{"hooks":["10.0.0.0/8","bogus"]}"#, "/hooks", "bogus"),
            (br#"{"web":["10.0.0.0/8"]}"#, "/hooks", "no \"/hooks\""),
            (br#"{"hooks":"10.0.0.0/8"}"#, "/hooks", "not an array"),
            (b"<html>", "/hooks", "not JSON"),
            (br#"{"hooks":["0.0.0.0/0"]}"#, "/hooks", "wider than /8"),
            (
                br#"{"hooks":["10.0.0.0/8","::/0"]}"#,
                "/hooks",
                "wider than /16",
            ),
        ] {
            let err = Allowlist::from_json("allow[2]", body, pointer)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
        let all = Allowlist::union([&list, &hooks]);
        assert_eq!(all.len(), 6);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lookups() {
        struct Case {
            name: &'static str,
            list: &'static [&'static str],
            input: &'static str,
            want: bool,
        }
        let cases = [
            Case {
                name: "inside v4",
                list: &["10.0.0.0/8"],
                input: "10.255.0.1",
                want: true,
            },
            Case {
                name: "outside v4",
                list: &["10.0.0.0/8"],
                input: "11.0.0.1",
                want: false,
            },
            Case {
                name: "single address",
                list: &["192.0.2.7"],
                input: "192.0.2.7",
                want: true,
            },
            Case {
                name: "single address neighbour",
                list: &["192.0.2.7"],
                input: "192.0.2.8",
                want: false,
            },
            Case {
                name: "mapped v6 looked up as v4",
                list: &["10.0.0.0/8"],
                input: "::ffff:10.1.1.1",
                want: true,
            },
            Case {
                name: "mapped network entry",
                list: &["::ffff:10.0.0.0/104"],
                input: "10.1.1.1",
                want: true,
            },
            Case {
                name: "v6",
                list: &["2001:db8::/32"],
                input: "2001:db8:1::1",
                want: true,
            },
            Case {
                name: "v6 outside",
                list: &["2001:db8::/32"],
                input: "2001:db9::1",
                want: false,
            },
            Case {
                name: "::/0 does not admit v4",
                list: &["::/0"],
                input: "1.2.3.4",
                want: false,
            },
            Case {
                name: "all v4",
                list: &["0.0.0.0/0"],
                input: "1.2.3.4",
                want: true,
            },
            Case {
                name: "empty allows nothing",
                list: &[],
                input: "127.0.0.1",
                want: false,
            },
            Case {
                name: "overlap",
                list: &["10.0.0.0/8", "10.1.0.0/16"],
                input: "10.2.0.1",
                want: true,
            },
        ];
        for c in cases {
            let list = Allowlist::new("allow", c.list).unwrap();
            assert_eq!(list.contains(ip(c.input)), c.want, "{}", c.name);
        }
    }

    #[test]
    fn errors_name_the_entry() {
        struct Case {
            input: &'static str,
            want: &'static str,
        }
        let cases = [
            Case {
                input: "10.0.0.1/8",
                want: "did you mean 10.0.0.0/8",
            },
            Case {
                input: "10.0.0.0/33",
                want: "not a CIDR",
            },
            Case {
                input: "banana",
                want: "not an IP address",
            },
            Case {
                input: "",
                want: "empty entry",
            },
        ];
        for c in cases {
            let err = Allowlist::new("route.allow", ["127.0.0.1/32", c.input]).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("route.allow[1]"), "{msg}");
            assert!(msg.contains(c.want), "{msg}");
        }
    }

    #[test]
    fn loopback() {
        let list = Allowlist::loopback();
        assert!(list.contains(ip("127.0.0.2")));
        assert!(list.contains(ip("::1")));
        assert!(!list.contains(ip("10.0.0.1")));
    }
}
