//! Allowlist lookup with 10, 10k and 100k prefixes: hookgate's `Allowlist` (prefix-trie) against
//! `ip_network_table` (the other candidate) on the same prefixes and addresses.
//!
//! `cargo bench --bench allowlist`. Target: ≤ 100 ns per lookup at 100k prefixes.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hookgate::core::Allowlist;
use ip_network::IpNetwork;
use ip_network_table::IpNetworkTable;

/// SplitMix64: deterministic inputs without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `n` prefixes, 80% IPv4 (/8 to /32) and 20% IPv6 (/16 to /64), as CIDR strings.
fn prefixes(n: usize, rng: &mut Rng) -> Vec<String> {
    (0..n)
        .map(|_| {
            if !rng.next().is_multiple_of(5) {
                let len = 8 + (rng.next() % 25) as u8;
                let addr = (rng.next() as u32) & (u32::MAX << (32 - len));
                format!("{}/{len}", Ipv4Addr::from(addr))
            } else {
                let len = 16 + (rng.next() % 49) as u8;
                let raw = ((rng.next() as u128) << 64) | rng.next() as u128;
                let addr = raw & (u128::MAX << (128 - len));
                format!("{}/{len}", Ipv6Addr::from(addr))
            }
        })
        .collect()
}

/// Addresses to look up: half drawn inside the prefixes (hits), half random (mostly misses).
fn addresses(prefixes: &[String], rng: &mut Rng) -> Vec<IpAddr> {
    (0..1024)
        .map(|i| {
            if i % 2 == 0 {
                let p = &prefixes[(rng.next() as usize) % prefixes.len()];
                p.split('/').next().unwrap().parse().unwrap()
            } else if i % 4 == 1 {
                IpAddr::V4(Ipv4Addr::from(rng.next() as u32))
            } else {
                IpAddr::V6(Ipv6Addr::from(
                    ((rng.next() as u128) << 64) | rng.next() as u128,
                ))
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("allowlist_lookup");
    for n in [10usize, 10_000, 100_000] {
        let mut rng = Rng(n as u64);
        let nets = prefixes(n, &mut rng);
        let addrs = addresses(&nets, &mut rng);

        let list = Allowlist::new("allow", &nets).unwrap();
        group.bench_with_input(BenchmarkId::new("prefix_trie", n), &addrs, |b, addrs| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(list.contains(black_box(addrs[i])))
            })
        });

        let mut table = IpNetworkTable::new();
        for net in &nets {
            table.insert(net.parse::<IpNetwork>().unwrap(), ());
        }
        group.bench_with_input(
            BenchmarkId::new("ip_network_table", n),
            &addrs,
            |b, addrs| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) & 1023;
                    black_box(table.longest_match(black_box(addrs[i])).is_some())
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
