//! Which address a request comes from: the peer, or `X-Forwarded-For` when the peer is trusted.
//!
//! The header is believed only when the TCP peer is inside `trusted_proxies`. Hops are read right
//! to left, skipping trusted proxies; the first untrusted hop is the client. A hop that does not
//! parse makes the whole header untrustworthy: the peer address is used and the result says so,
//! so a garbled header can never widen access.
//!
//! ```
//! use hookgate::core::{Allowlist, ClientIpResolver};
//! use std::net::IpAddr;
//!
//! let resolver = ClientIpResolver::new(Allowlist::new("trusted_proxies", ["10.0.0.0/8"]).unwrap());
//! let peer: IpAddr = "10.0.0.5".parse().unwrap();
//! let got = resolver.resolve(peer, [&b"203.0.113.9, 10.0.0.7"[..]]);
//! assert_eq!(got.ip, "203.0.113.9".parse::<IpAddr>().unwrap());
//! assert!(got.forwarded);
//!
//! // The same header from an untrusted peer is ignored.
//! let got = resolver.resolve("198.51.100.1".parse().unwrap(), [&b"203.0.113.9"[..]]);
//! assert_eq!(got.ip, "198.51.100.1".parse::<IpAddr>().unwrap());
//! ```

use std::net::{IpAddr, SocketAddr};

use super::Allowlist;

/// The resolved client address of a request. Inserted into request extensions by the tower layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp {
    /// The address the allowlist is applied to (IPv4-mapped IPv6 normalised to IPv4).
    pub ip: IpAddr,
    /// Whether `ip` came from `X-Forwarded-For`.
    pub forwarded: bool,
    /// Whether a trusted peer sent an `X-Forwarded-For` that did not parse (so `ip` is the peer).
    pub forwarded_invalid: bool,
}

/// Resolves the client address given the peer address and the `X-Forwarded-For` header values.
#[derive(Debug, Clone, Default)]
pub struct ClientIpResolver {
    trusted: Allowlist,
}

impl ClientIpResolver {
    /// A resolver that believes `X-Forwarded-For` from peers inside `trusted_proxies`.
    pub fn new(trusted_proxies: Allowlist) -> Self {
        Self {
            trusted: trusted_proxies,
        }
    }

    /// Whether any proxy is trusted (if not, the header is never read).
    pub fn trusts_proxies(&self) -> bool {
        !self.trusted.is_empty()
    }

    /// Resolves the client address. `xff` yields each `X-Forwarded-For` header value in the order
    /// received (several headers are one list, joined in order).
    pub fn resolve<'a, I>(&self, peer: IpAddr, xff: I) -> ClientIp
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let peer = peer.to_canonical();
        let direct = ClientIp {
            ip: peer,
            forwarded: false,
            forwarded_invalid: false,
        };
        if self.trusted.is_empty() || !self.trusted.contains(peer) {
            return direct;
        }
        // Header values are few (usually one); collecting lets us walk them right to left.
        let values: Vec<&[u8]> = xff.into_iter().collect();
        let mut leftmost = None;
        for value in values.iter().rev() {
            let Ok(value) = std::str::from_utf8(value) else {
                return ClientIp {
                    forwarded_invalid: true,
                    ..direct
                };
            };
            for hop in value.rsplit(',') {
                let Some(ip) = parse_hop(hop) else {
                    return ClientIp {
                        forwarded_invalid: true,
                        ..direct
                    };
                };
                if !self.trusted.contains(ip) {
                    return ClientIp {
                        ip,
                        forwarded: true,
                        forwarded_invalid: false,
                    };
                }
                leftmost = Some(ip);
            }
        }
        // Every hop is a trusted proxy: the furthest one is the best we know.
        match leftmost {
            Some(ip) => ClientIp {
                ip,
                forwarded: true,
                forwarded_invalid: false,
            },
            None => direct,
        }
    }
}

/// One `X-Forwarded-For` hop: `1.2.3.4`, `2001:db8::1`, `1.2.3.4:5678`, `[2001:db8::1]:443` or
/// `[2001:db8::1]`. Anything else (`unknown`, obfuscated identifiers, empty) is `None`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = hop.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn resolution() {
        struct Case {
            name: &'static str,
            peer: &'static str,
            xff: &'static [&'static str],
            want: &'static str,
            forwarded: bool,
            invalid: bool,
        }
        let cases = [
            Case {
                name: "no proxy, no header",
                peer: "198.51.100.1",
                xff: &[],
                want: "198.51.100.1",
                forwarded: false,
                invalid: false,
            },
            Case {
                name: "untrusted peer spoofs",
                peer: "198.51.100.1",
                xff: &["127.0.0.1"],
                want: "198.51.100.1",
                forwarded: false,
                invalid: false,
            },
            Case {
                name: "trusted peer, one hop",
                peer: "10.0.0.1",
                xff: &["203.0.113.9"],
                want: "203.0.113.9",
                forwarded: true,
                invalid: false,
            },
            Case {
                name: "rightmost untrusted wins",
                peer: "10.0.0.1",
                xff: &["1.1.1.1, 203.0.113.9, 10.0.0.2"],
                want: "203.0.113.9",
                forwarded: true,
                invalid: false,
            },
            Case {
                name: "spoofed left hop ignored",
                peer: "10.0.0.1",
                xff: &["127.0.0.1, 203.0.113.9"],
                want: "203.0.113.9",
                forwarded: true,
                invalid: false,
            },
            Case {
                name: "several headers are one list",
                peer: "10.0.0.1",
                xff: &["203.0.113.9", "10.0.0.3"],
                want: "203.0.113.9",
                forwarded: true,
                invalid: false,
            },
            Case {
                name: "all trusted: leftmost",
                peer: "10.0.0.1",
                xff: &["10.0.0.9, 10.0.0.3"],
                want: "10.0.0.9",
                forwarded: true,
                invalid: false,
            },
            Case {
                name: "trusted peer, no header",
                peer: "10.0.0.1",
                xff: &[],
                want: "10.0.0.1",
                forwarded: false,
                invalid: false,
            },
            Case {
                name: "garbage falls back to peer",
                peer: "10.0.0.1",
                xff: &["not-an-ip"],
                want: "10.0.0.1",
                forwarded: false,
                invalid: true,
            },
            Case {
                name: "empty hop is garbage",
                peer: "10.0.0.1",
                xff: &["203.0.113.9,,10.0.0.2"],
                want: "10.0.0.1",
                forwarded: false,
                invalid: true,
            },
            Case {
                name: "garbage right of client",
                peer: "10.0.0.1",
                xff: &["203.0.113.9, unknown"],
                want: "10.0.0.1",
                forwarded: false,
                invalid: true,
            },
            Case {
                name: "ports accepted",
                peer: "10.0.0.1",
                xff: &["203.0.113.9:4711"],
                want: "203.0.113.9",
                forwarded: true,
                invalid: false,
            },
            Case {
                name: "bracketed v6 with port",
                peer: "10.0.0.1",
                xff: &["[2001:db8::1]:443"],
                want: "2001:db8::1",
                forwarded: true,
                invalid: false,
            },
            Case {
                name: "mapped hop normalised",
                peer: "10.0.0.1",
                xff: &["::ffff:203.0.113.9"],
                want: "203.0.113.9",
                forwarded: true,
                invalid: false,
            },
            Case {
                name: "mapped peer normalised",
                peer: "::ffff:10.0.0.1",
                xff: &["203.0.113.9"],
                want: "203.0.113.9",
                forwarded: true,
                invalid: false,
            },
            Case {
                name: "mapped untrusted peer",
                peer: "::ffff:127.0.0.1",
                xff: &[],
                want: "127.0.0.1",
                forwarded: false,
                invalid: false,
            },
        ];
        let resolver =
            ClientIpResolver::new(Allowlist::new("trusted_proxies", ["10.0.0.0/8"]).unwrap());
        for c in cases {
            let got = resolver.resolve(ip(c.peer), c.xff.iter().map(|s| s.as_bytes()));
            assert_eq!(got.ip, ip(c.want), "{}", c.name);
            assert_eq!(got.forwarded, c.forwarded, "{}", c.name);
            assert_eq!(got.forwarded_invalid, c.invalid, "{}", c.name);
        }
    }

    #[test]
    fn invalid_utf8_falls_back() {
        let resolver = ClientIpResolver::new(Allowlist::new("t", ["10.0.0.0/8"]).unwrap());
        let got = resolver.resolve(ip("10.0.0.1"), [&[0xff, 0xfe][..]]);
        assert_eq!(got.ip, ip("10.0.0.1"));
        assert!(got.forwarded_invalid);
    }

    #[test]
    fn no_trusted_proxies_never_reads_header() {
        let resolver = ClientIpResolver::default();
        assert!(!resolver.trusts_proxies());
        let got = resolver.resolve(ip("10.0.0.1"), [&b"garbage"[..]]);
        assert_eq!(got.ip, ip("10.0.0.1"));
        assert!(!got.forwarded_invalid);
    }
}
