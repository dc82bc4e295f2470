//! Balancer benchmarks: `cargo bench --bench balance`.
//!
//! `pick/ALGORITHM/N` times what the forward path does around one attempt on
//! a healthy group, minus the network: `Balancer::pick` (nothing tried yet),
//! the in-flight count taken and released as `forward::InFlight` does (an
//! `Arc<PeerState>` clone and an atomic increment, then the decrement and the
//! drop), and `Peer::record_success`.
//!
//! Groups: N = 3 servers with weights 1, 2, 3, and N = 32 servers with
//! weights cycling 1, 2, 3; nginx's defaults otherwise (max_fails 1,
//! fail_timeout 10s, no max_conns), all up and healthy. Every request is
//! idle again before the next, so least_conn always sees all peers tied (its
//! tie-break path). Each iteration takes the next of 1024 client addresses
//! (distinct /24s, for ip_hash) and hash keys (`/item/K`, for hash), built
//! once outside the loop; the other algorithms ignore them.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ginx::balance::{Balancer, Peer, PeerState, PickInput};
use ginx::compile::upstream::Balance;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

const ALGORITHMS: [Balance; 6] = [
    Balance::RoundRobin,
    Balance::LeastConn,
    Balance::IpHash,
    Balance::Hash,
    Balance::Random,
    Balance::TwoChoices,
];

/// The weight of server i in a group.
type Weight = fn(usize) -> u32;

/// Group sizes and their weights.
const GROUPS: [(usize, Weight); 2] = [(3, |i| i as u32 + 1), (32, |i| (i % 3) as u32 + 1)];

/// Distinct inputs cycled through (a power of two).
const INPUTS: usize = 1024;

fn peer(i: usize, weight: u32) -> Peer {
    let name = format!("10.0.{}.{}:8080", i / 250, i % 250 + 1);
    Peer {
        addr: name.parse().unwrap(),
        name: Arc::from(name),
        weight,
        max_fails: 1,
        fail_timeout: Duration::from_secs(10),
        max_conns: 0,
        backup: false,
        down: false,
        state: Arc::new(PeerState::default()),
    }
}

fn balancer(algorithm: Balance, n: usize, weight: Weight) -> Balancer {
    Balancer::new(algorithm, (0..n).map(|i| peer(i, weight(i))).collect())
}

/// Client addresses in distinct /24s, and consistent-hash keys.
fn inputs() -> (Vec<IpAddr>, Vec<Vec<u8>>) {
    let clients = (0..INPUTS as u32)
        .map(|k| IpAddr::V4(Ipv4Addr::new(10, (k >> 8) as u8, k as u8, 7)))
        .collect();
    let keys = (0..INPUTS)
        .map(|k| format!("/item/{k}").into_bytes())
        .collect();
    (clients, keys)
}

/// One attempt's balancer work on the forward path: pick, count in flight,
/// record the success, release. Returns the peer picked.
#[inline(always)]
fn attempt(b: &Balancer, client: IpAddr, hash_key: &[u8]) -> usize {
    let i = b
        .pick(&PickInput {
            client,
            hash_key,
            tried: &[],
        })
        .expect("a usable peer");
    let peer = &b.peers[i];
    let in_flight = peer.state.clone();
    in_flight.in_flight.fetch_add(1, Relaxed);
    peer.record_success();
    in_flight.in_flight.fetch_sub(1, Relaxed);
    drop(in_flight);
    i
}

/// Every server must be reachable with these inputs, and smooth weighted
/// round robin must keep its exact proportions.
fn check(algorithm: Balance, n: usize, weight: Weight) {
    let b = balancer(algorithm, n, weight);
    let (clients, keys) = inputs();
    let total: u32 = (0..n).map(weight).sum();
    let rounds = 64 * total as usize;
    let mut counts = vec![0u32; n];
    for k in 0..rounds {
        counts[attempt(&b, clients[k % INPUTS], &keys[k % INPUTS])] += 1;
    }
    let name = algorithm.name();
    assert!(
        counts.iter().all(|&c| c > 0),
        "{name}/{n}: a server is never picked: {counts:?}"
    );
    if algorithm == Balance::RoundRobin {
        let expect: Vec<u32> = (0..n).map(|i| 64 * weight(i)).collect();
        assert_eq!(counts, expect, "{name}/{n}: proportions");
    }
    assert!(b.peers.iter().all(|p| p.state.in_flight.load(Relaxed) == 0));
}

fn bench_pick(c: &mut Criterion) {
    let (clients, keys) = inputs();
    let mut group = c.benchmark_group("pick");
    for algorithm in ALGORITHMS {
        for (n, weight) in GROUPS {
            check(algorithm, n, weight);
            let b = balancer(algorithm, n, weight);
            let mut k = 0usize;
            group.bench_function(BenchmarkId::new(algorithm.name(), n), |bench| {
                bench.iter(|| {
                    k = (k + 1) & (INPUTS - 1);
                    attempt(black_box(&b), clients[k], &keys[k])
                })
            });
        }
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(500))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_pick
}
criterion_main!(benches);
