use std::net::IpAddr;

use hookgate::core::{Allowlist, ClientIp, ClientIpResolver};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use proptest::sample::{select, Index};

use super::harness::check;

/// Addresses the generated networks and hops share, so hops often fall inside a trusted
/// network and the walk goes past them.
const BASES: [&str; 6] = [
    "10.0.0.0",
    "192.0.2.0",
    "203.0.113.0",
    "127.0.0.0",
    "2001:db8::",
    "fd00::",
];

fn base() -> impl Strategy<Value = IpAddr> {
    select(BASES.to_vec()).prop_map(|b| b.parse().expect("a literal address"))
}

fn net(ip: IpAddr, len: u8) -> IpNet {
    match ip {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new_assert(a, len.min(32)).trunc()),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new_assert(a, len.min(128)).trunc()),
    }
}

fn network() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        3 => (base(), 8u8..=128).prop_map(|(ip, len)| net(ip, len)),
        1 => (any::<IpAddr>(), 0u8..=128).prop_map(|(ip, len)| net(ip, len)),
        // Written as IPv4-mapped IPv6 (`::ffff:10.0.0.0/104`).
        1 => (base(), 96u8..=128).prop_map(|(ip, len)| match ip {
            IpAddr::V4(a) => net(IpAddr::V6(a.to_ipv6_mapped()), len),
            v6 => net(v6, len),
        }),
    ]
}

/// The model's membership test, by ipnet rather than the allowlist's trie: a network
/// written as IPv4-mapped IPv6 (prefix /96 or longer) holds IPv4 addresses, as DESIGN §2
/// normalises every mapped address to IPv4.
fn trusted(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| match (n, ip) {
        (IpNet::V6(n), IpAddr::V4(a)) if n.prefix_len() >= 96 => n
            .addr()
            .to_ipv4_mapped()
            .is_some_and(|m| Ipv4Net::new_assert(m, n.prefix_len() - 96).contains(&a)),
        (IpNet::V6(n), IpAddr::V6(a)) => n.addr().to_ipv4_mapped().is_none() && n.contains(&a),
        (IpNet::V4(n), IpAddr::V4(a)) => n.contains(&a),
        _ => false,
    })
}

/// An address: any, near a base, or inside one of `nets`.
fn address(nets: Vec<IpNet>) -> impl Strategy<Value = IpAddr> {
    let inside = (any::<Index>(), any::<u128>()).prop_map(move |(i, bits)| {
        if nets.is_empty() {
            return IpAddr::from([192, 0, 2, 1]);
        }
        match nets[i.index(nets.len())] {
            IpNet::V4(n) => {
                let host = (bits as u32) & u32::from(n.hostmask());
                IpAddr::V4((u32::from(n.network()) | host).into())
            }
            IpNet::V6(n) => {
                let host = bits & u128::from(n.hostmask());
                IpAddr::V6((u128::from(n.network()) | host).into())
            }
        }
    });
    prop_oneof![
        3 => inside,
        1 => (base(), any::<u8>()).prop_map(|(b, low)| match b {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) | u32::from(low)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) | u128::from(low)).into()),
        }),
        1 => any::<IpAddr>(),
    ]
    .prop_flat_map(|ip| {
        // Sometimes as IPv4-mapped IPv6: the same client.
        prop_oneof![
            3 => Just(ip),
            1 => Just(match ip {
                IpAddr::V4(a) => IpAddr::V6(a.to_ipv6_mapped()),
                v6 => v6,
            }),
        ]
    })
}

/// One hop of `X-Forwarded-For`: an address in one of the forms proxies write, or garbage.
#[derive(Debug, Clone)]
enum Hop {
    Ip(IpAddr, String),
    Garbage(String),
}

impl Hop {
    fn text(&self) -> &str {
        match self {
            Hop::Ip(_, t) | Hop::Garbage(t) => t,
        }
    }
}

fn render(ip: IpAddr, form: u8, port: u16, pad: (&str, &str)) -> String {
    let text = match (ip, form % 4) {
        (IpAddr::V4(a), 0 | 3) => a.to_string(),
        (IpAddr::V4(a), 1) => format!("{a}:{port}"),
        (IpAddr::V4(a), _) => format!("[::ffff:{a}]:{port}"),
        (IpAddr::V6(a), 0) => a.to_string(),
        (IpAddr::V6(a), 1) => format!("[{a}]:{port}"),
        (IpAddr::V6(a), 2) => format!("[{a}]"),
        (IpAddr::V6(a), _) => a.to_string().to_uppercase(),
    };
    format!("{}{text}{}", pad.0, pad.1)
}

/// Hops no parser may read as an address (no commas: a hop never holds one).
fn garbage() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "",
            "unknown",
            "1.2.3",
            "256.1.2.3",
            "01.2.3.4",
            "1.2.3.4:",
            "1.2.3.4:99999",
            "[1.2.3.4]:80",
            "[::1",
            "::1]:80",
            "1.2.3.4/24",
            "::g",
            "１.２.３.４",
            " ",
            "1.2.3.4 5.6.7.8",
            "[]",
            "_hidden",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z_-]{1,12}",
        "_[a-z0-9]{1,8}",
    ]
}

fn hop(nets: Vec<IpNet>) -> impl Strategy<Value = Hop> {
    let pad = select(vec!["", " ", "\t", "  "]);
    prop_oneof![
        8 => (address(nets), any::<u8>(), 1u16.., pad.clone(), pad).prop_map(
            |(ip, form, port, a, b)| Hop::Ip(ip, render(ip, form, port, (a, b)))
        ),
        1 => garbage().prop_map(Hop::Garbage),
    ]
}

/// One `X-Forwarded-For` header value.
#[derive(Debug, Clone)]
enum Header {
    Hops(Vec<Hop>, &'static str),
    NotUtf8(Vec<u8>),
}

impl Header {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Header::Hops(hops, sep) => hops
                .iter()
                .map(Hop::text)
                .collect::<Vec<_>>()
                .join(sep)
                .into_bytes(),
            Header::NotUtf8(b) => b.clone(),
        }
    }
}

fn header(nets: Vec<IpNet>) -> impl Strategy<Value = Header> {
    prop_oneof![
        12 => (
            proptest::collection::vec(hop(nets), 1..5),
            select(vec![",", ", ", " , "]),
        )
            .prop_map(|(h, sep)| Header::Hops(h, sep)),
        1 => (proptest::collection::vec(any::<u8>(), 0..8), any::<u8>()).prop_map(
            |(mut b, at)| {
                let at = usize::from(at) % (b.len() + 1);
                b.insert(at, 0xff);
                Header::NotUtf8(b)
            }
        ),
    ]
}

/// DESIGN §2 step 2, written from the text: the peer, unless it is a trusted proxy; then
/// the hops right to left, the first untrusted one is the client; all trusted: the leftmost;
/// anything unreadable: the peer, flagged.
fn expected(nets: &[IpNet], peer: IpAddr, headers: &[Header]) -> ClientIp {
    let peer = peer.to_canonical();
    let direct = ClientIp {
        ip: peer,
        forwarded: false,
        forwarded_invalid: false,
    };
    let invalid = ClientIp {
        forwarded_invalid: true,
        ..direct
    };
    let forwarded = |ip| ClientIp {
        ip,
        forwarded: true,
        forwarded_invalid: false,
    };
    if !trusted(nets, peer) {
        return direct;
    }
    let mut leftmost = None;
    for h in headers.iter().rev() {
        let Header::Hops(hops, _) = h else {
            return invalid;
        };
        for hop in hops.iter().rev() {
            let Hop::Ip(ip, _) = hop else {
                return invalid;
            };
            let ip = ip.to_canonical();
            if !trusted(nets, ip) {
                return forwarded(ip);
            }
            leftmost = Some(ip);
        }
    }
    leftmost.map_or(direct, forwarded)
}

fn resolver(nets: &[IpNet]) -> ClientIpResolver {
    let entries: Vec<String> = nets.iter().map(ToString::to_string).collect();
    ClientIpResolver::new(
        Allowlist::new("trusted_proxies", &entries).expect("ipnet prints valid CIDRs"),
    )
}

fn resolve(r: &ClientIpResolver, peer: IpAddr, headers: &[Vec<u8>]) -> ClientIp {
    r.resolve(peer, headers.iter().map(Vec::as_slice))
}

type Scene = (Vec<IpNet>, IpAddr, Vec<Header>);

fn scene() -> impl Strategy<Value = Scene> {
    proptest::collection::vec(network(), 0..4).prop_flat_map(|nets| {
        (
            Just(nets.clone()),
            address(nets.clone()),
            proptest::collection::vec(header(nets), 0..4),
        )
    })
}

#[test]
fn client_ip_matches_the_model_of_step_2() {
    check(
        "client_ip_matches_the_model_of_step_2",
        2048,
        scene(),
        |(nets, peer, headers)| {
            let got = resolve(
                &resolver(&nets),
                peer,
                &headers.iter().map(Header::bytes).collect::<Vec<_>>(),
            );
            prop_assert_eq!(got, expected(&nets, peer, &headers));
            Ok(())
        },
    );
}

/// A trusted peer, and a header whose rightmost hops are an untrusted client and then zero
/// or more trusted proxies: the shape every real proxied request has.
fn proxied() -> impl Strategy<Value = Scene> {
    // An address outside every generated network, so a client can always be found.
    let outside: IpAddr = "198.51.100.77".parse().expect("a literal address");
    proptest::collection::vec(network(), 1..4)
        .prop_filter("leaves room for a client", move |nets| {
            !trusted(nets, outside)
        })
        .prop_flat_map(move |nets| {
            let pad = select(vec!["", " "]);
            let rendered = (any::<u8>(), 1u16.., pad.clone(), pad);
            (
                Just(nets.clone()),
                address(nets.clone()),
                (any::<IpAddr>(), rendered.clone()),
                proptest::collection::vec((address(nets.clone()), rendered), 0..3),
            )
                .prop_map(move |(nets, peer, (client, c), proxies)| {
                    let inside = |ip: IpAddr| {
                        if trusted(&nets, ip) {
                            ip
                        } else {
                            match nets[0] {
                                IpNet::V4(n) => IpAddr::V4(n.network()),
                                IpNet::V6(n) => IpAddr::V6(n.network()),
                            }
                        }
                    };
                    let client = if trusted(&nets, client) {
                        outside
                    } else {
                        client
                    };
                    let mut hops = vec![Hop::Ip(client, render(client, c.0, c.1, (c.2, c.3)))];
                    hops.extend(proxies.into_iter().map(|(ip, (form, port, a, b))| {
                        let ip = inside(ip);
                        Hop::Ip(ip, render(ip, form, port, (a, b)))
                    }));
                    (nets.clone(), inside(peer), vec![Header::Hops(hops, ", ")])
                })
        })
}

/// A client controls everything left of the hop the trusted proxy appended: nothing there
/// may move the answer.
#[test]
fn client_ip_ignores_hops_left_of_the_client() {
    let strategy = (
        proxied(),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 1..3),
        "[ -~]{0,40}",
    );
    check(
        "client_ip_ignores_hops_left_of_the_client",
        1024,
        strategy,
        |((nets, peer, headers), spoofed, spoofed_text)| {
            let r = resolver(&nets);
            let honest: Vec<Vec<u8>> = headers.iter().map(Header::bytes).collect();
            let want = resolve(&r, peer, &honest);
            prop_assert_eq!(want, expected(&nets, peer, &headers));
            prop_assert!(want.forwarded && !trusted(&nets, want.ip), "{:?}", want);
            // Earlier header lines of the client's own.
            let mut more = spoofed.clone();
            more.extend(honest.iter().cloned());
            prop_assert_eq!(resolve(&r, peer, &more), want);
            // The client's own value, which the proxy appended to.
            let mut joined = honest.clone();
            let mut first = format!("{spoofed_text},").into_bytes();
            first.extend_from_slice(&joined[0]);
            joined[0] = first;
            prop_assert_eq!(resolve(&r, peer, &joined), want);
            Ok(())
        },
    );
}

/// Any bytes at all: never a panic, the peer unless the peer is trusted, never both
/// `forwarded` and `forwarded_invalid`, and several header lines mean their join.
#[test]
fn client_ip_survives_arbitrary_bytes() {
    let byte = prop_oneof![
        4 => select(b"0123456789abcdef.:[], \t".to_vec()),
        1 => any::<u8>(),
    ];
    let strategy = (
        proptest::collection::vec(network(), 0..3),
        any::<IpAddr>(),
        proptest::collection::vec(proptest::collection::vec(byte, 0..48), 0..4),
        any::<bool>(),
    )
        .prop_flat_map(|(nets, any_peer, headers, pick_trusted)| {
            let peer = if pick_trusted {
                address(nets.clone()).boxed()
            } else {
                Just(any_peer).boxed()
            };
            (Just(nets), peer, Just(headers))
        });
    check(
        "client_ip_survives_arbitrary_bytes",
        2048,
        strategy,
        |(nets, peer, headers)| {
            let r = resolver(&nets);
            let got = resolve(&r, peer, &headers);
            prop_assert!(!(got.forwarded && got.forwarded_invalid));
            if !got.forwarded {
                prop_assert_eq!(got.ip, peer.to_canonical());
            }
            if !trusted(&nets, peer) {
                prop_assert!(!got.forwarded && !got.forwarded_invalid);
            }
            if got.forwarded {
                prop_assert!(trusted(&nets, peer));
                prop_assert_eq!(got.ip, got.ip.to_canonical());
            }
            if !headers.is_empty() && headers.iter().all(|h| std::str::from_utf8(h).is_ok()) {
                let joined = headers.join(&b","[..]);
                prop_assert_eq!(resolve(&r, peer, &[joined]), got);
            }
            Ok(())
        },
    );
}
