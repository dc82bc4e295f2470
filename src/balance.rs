//! Choosing an upstream server: the six balancers of the spec, exactly as
//! nginx computes them, over peers whose state (in-flight requests, failure
//! marks, health) lives outside the configuration so that it survives a reload.
//!
//! Selection skips unusable peers (down, failed, unhealthy, at max_conns,
//! already tried for this request) through one bounded loop per algorithm;
//! when no primary peer is usable the backups are tried the same way, and
//! when none of those is either, the caller answers 502.

use crate::compile::upstream::{Balance, Upstream};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What is known of one upstream address, shared by every configuration that
/// has it (keyed by upstream name and address).
#[derive(Default, Debug)]
pub struct PeerState {
    pub in_flight: AtomicU32,
    /// Failures counted in the current fail_timeout window.
    pub fails: AtomicU32,
    /// When the window started, on the coarse clock ([`crate::clock`]; 0 = never).
    window_start_ms: AtomicU64,
    /// Marked down by max_fails until this moment (coarse clock).
    down_until_ms: AtomicU64,
    /// Active health checks' verdict (true until a check says otherwise).
    unhealthy: AtomicBool,
}

impl PeerState {
    pub fn set_healthy(&self, healthy: bool) {
        self.unhealthy.store(!healthy, Relaxed);
    }
    pub fn is_healthy(&self) -> bool {
        !self.unhealthy.load(Relaxed)
    }
    pub fn is_marked_down(&self) -> bool {
        // Read the clock only for a peer that has been marked at all: a pick
        // checks every peer, and the clock is most of that check's cost.
        let until = self.down_until_ms.load(Relaxed);
        until != 0 && until > crate::clock::coarse_ms()
    }
}

/// One address of an upstream server, with its configuration and state.
#[derive(Debug)]
pub struct Peer {
    /// The server's address as written (`host:port`), for the consistent hash.
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub max_conns: u32,
    pub backup: bool,
    pub down: bool,
    pub state: Arc<PeerState>,
}

impl Peer {
    fn usable(&self) -> bool {
        !self.down
            && self.state.is_healthy()
            && !self.state.is_marked_down()
            && (self.max_conns == 0 || self.state.in_flight.load(Relaxed) < self.max_conns)
    }

    /// An attempt failed (error, timeout, or a status listed in next_upstream):
    /// count it in the fail_timeout window; max_fails of them mark the peer down.
    pub fn record_failure(&self) {
        if self.max_fails == 0 {
            return;
        }
        let now = crate::clock::coarse_ms();
        let window = self.fail_timeout.as_millis() as u64;
        let start = self.state.window_start_ms.load(Relaxed);
        if start == 0 || now.saturating_sub(start) >= window {
            self.state.window_start_ms.store(now, Relaxed);
            self.state.fails.store(0, Relaxed);
        }
        let fails = self.state.fails.fetch_add(1, Relaxed) + 1;
        if fails >= self.max_fails {
            self.state.down_until_ms.store(now + window, Relaxed);
            tracing::warn!(peer = %self.addr, fails, "upstream server marked down for {:?}", self.fail_timeout);
        }
    }

    pub fn record_success(&self) {
        if self.state.fails.load(Relaxed) != 0 {
            self.state.fails.store(0, Relaxed);
        }
    }
}

/// The peers of one upstream group and how to choose among them.
#[derive(Debug)]
pub struct Balancer {
    pub algorithm: Balance,
    pub peers: Vec<Peer>,
    primary: Vec<usize>,
    backup: Vec<usize>,
    /// Smooth weighted round robin's current weights, per peer.
    current: Mutex<Vec<i64>>,
    /// Consistent-hash points: (hash, peer), sorted.
    ring: Vec<(u32, usize)>,
}

/// What a pick may depend on.
pub struct PickInput<'a> {
    pub client: IpAddr,
    /// The expanded hash_key for `balance: hash`.
    pub hash_key: &'a [u8],
    /// Peers already tried for this request: never picked again.
    pub tried: &'a [usize],
}

/// A peer's identity across configurations: its upstream's name and its address.
type PeerKey = (Arc<str>, SocketAddr);

/// Shared peer states by (upstream name, address), so that a reload keeps them.
#[derive(Default)]
pub struct PeerRegistry {
    states: Mutex<HashMap<PeerKey, Arc<PeerState>>>,
}

impl PeerRegistry {
    /// The state for a peer: the existing one when the previous configuration
    /// had it, else a new one. States no configuration uses any more are dropped.
    pub fn build(&self, upstreams: &[Arc<Upstream>]) -> Vec<Arc<Balancer>> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = HashMap::new();
        let balancers = upstreams
            .iter()
            .map(|u| {
                let peers = u
                    .servers
                    .iter()
                    .flat_map(|s| s.resolved.iter().map(move |a| (s, *a)))
                    .map(|(s, addr)| {
                        let key = (u.name.clone(), addr);
                        let state = states.get(&key).cloned().unwrap_or_default();
                        kept.insert(key, state.clone());
                        Peer {
                            name: s.addr.clone(),
                            addr,
                            weight: s.weight.max(1),
                            max_fails: s.max_fails,
                            fail_timeout: s.fail_timeout,
                            max_conns: s.max_conns,
                            backup: s.backup,
                            down: s.down,
                            state,
                        }
                    })
                    .collect();
                Arc::new(Balancer::new(u.balance, peers))
            })
            .collect();
        *states = kept;
        balancers
    }
}

impl Balancer {
    pub fn new(algorithm: Balance, mut peers: Vec<Peer>) -> Self {
        if peers.len() == 1 {
            // As nginx: the only server of a group is never considered unavailable.
            peers[0].max_fails = 0;
        }
        let primary = (0..peers.len()).filter(|&i| !peers[i].backup).collect();
        let backup = (0..peers.len()).filter(|&i| peers[i].backup).collect();
        let ring = if algorithm == Balance::Hash {
            build_ring(&peers)
        } else {
            Vec::new()
        };
        let current = Mutex::new(vec![0; peers.len()]);
        Balancer {
            algorithm,
            peers,
            primary,
            backup,
            current,
            ring,
        }
    }

    /// The peer for this attempt, or None when no peer is usable (502).
    pub fn pick(&self, input: &PickInput<'_>) -> Option<usize> {
        let ok = |i: usize| !input.tried.contains(&i) && self.peers[i].usable();
        match self.algorithm {
            Balance::Hash => self
                .pick_hash(input.hash_key, &ok)
                .or_else(|| self.round_robin(&self.primary, &ok)),
            Balance::IpHash => self
                .pick_ip_hash(input.client, &ok)
                .or_else(|| self.round_robin(&self.primary, &ok)),
            _ => self
                .pick_in(&self.primary, &ok)
                .or_else(|| self.pick_in(&self.backup, &ok)),
        }
    }

    fn pick_in(&self, set: &[usize], ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        match self.algorithm {
            Balance::LeastConn => self.least_conn(set, ok),
            Balance::Random => self.random(set, ok),
            Balance::TwoChoices => self.two_choices(set, ok),
            _ => self.round_robin(set, ok),
        }
    }

    /// nginx's smooth weighted round robin over the usable peers of `set`.
    fn round_robin(&self, set: &[usize], ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for &i in set {
            if !ok(i) {
                continue;
            }
            let w = self.peers[i].weight as i64;
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        current[b] -= total;
        Some(b)
    }

    /// Fewest in-flight requests per weight; ties go round robin among the tied.
    fn least_conn(&self, set: &[usize], ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let load = |i: usize| {
            (
                self.peers[i].state.in_flight.load(Relaxed) as u64,
                self.peers[i].weight as u64,
            )
        };
        let mut best: Option<(u64, u64)> = None;
        for &i in set.iter().filter(|&&i| ok(i)) {
            let (n, w) = load(i);
            // n/w < bn/bw without division.
            if best.is_none_or(|(bn, bw)| n * bw < bn * w) {
                best = Some((n, w));
            }
        }
        let (bn, bw) = best?;
        let tied: Vec<usize> = set
            .iter()
            .copied()
            .filter(|&i| {
                ok(i) && {
                    let (n, w) = load(i);
                    n * bw == bn * w
                }
            })
            .collect();
        if tied.len() == 1 {
            return Some(tied[0]);
        }
        self.round_robin(&tied, ok)
    }

    /// A usable peer drawn by weight.
    fn random(&self, set: &[usize], ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let usable: Vec<usize> = set.iter().copied().filter(|&i| ok(i)).collect();
        self.draw(&usable)
    }

    fn draw(&self, usable: &[usize]) -> Option<usize> {
        let total: u64 = usable.iter().map(|&i| self.peers[i].weight as u64).sum();
        if total == 0 {
            return None;
        }
        let mut r = fastrand::u64(0..total);
        for &i in usable {
            let w = self.peers[i].weight as u64;
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        usable.last().copied()
    }

    /// Two peers drawn by weight; the one with fewer in-flight requests wins.
    fn two_choices(&self, set: &[usize], ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let usable: Vec<usize> = set.iter().copied().filter(|&i| ok(i)).collect();
        let a = self.draw(&usable)?;
        let rest: Vec<usize> = usable.iter().copied().filter(|&i| i != a).collect();
        let Some(b) = self.draw(&rest) else {
            return Some(a);
        };
        let load = |i: usize| {
            self.peers[i].state.in_flight.load(Relaxed) as u64 * 1_000_000
                / self.peers[i].weight as u64
        };
        Some(if load(b) < load(a) { b } else { a })
    }

    /// nginx's ip_hash: the first three octets of IPv4 (all of IPv6), hashed
    /// with h = (h * 113 + byte) % 6271 from 89, then walked by weight; an
    /// unusable pick hashes again, and after 20 tries round robin takes over.
    fn pick_ip_hash(&self, client: IpAddr, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let octets: Vec<u8> = match client {
            IpAddr::V4(v4) => v4.octets()[..3].to_vec(),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.octets()[..3].to_vec(),
                None => v6.octets().to_vec(),
            },
        };
        let total: u64 = self
            .primary
            .iter()
            .map(|&i| self.peers[i].weight as u64)
            .sum();
        if total == 0 {
            return None;
        }
        let mut hash: u64 = 89;
        for _ in 0..20 {
            for b in &octets {
                hash = (hash * 113 + *b as u64) % 6271;
            }
            let mut w = hash % total;
            let mut pick = None;
            for &i in &self.primary {
                let weight = self.peers[i].weight as u64;
                if w < weight {
                    pick = Some(i);
                    break;
                }
                w -= weight;
            }
            if let Some(i) = pick.filter(|&i| ok(i)) {
                return Some(i);
            }
        }
        None
    }

    /// nginx's `hash KEY consistent`: the key's CRC32 goes to the first ring
    /// point at or above it, wrapping; an unusable peer passes to the next point.
    fn pick_hash(&self, key: &[u8], ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let hash = crc32fast::hash(key);
        let start = self.ring.partition_point(|(h, _)| *h < hash);
        (0..self.ring.len().min(20))
            .map(|k| self.ring[(start + k) % self.ring.len()].1)
            .find(|&i| ok(i))
    }
}

/// 160 × weight points per server: CRC32 of `host` NUL `port`, then the
/// previous point's hash (4 bytes, little-endian, as nginx on x86), sorted.
fn build_ring(peers: &[Peer]) -> Vec<(u32, usize)> {
    let mut ring = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        if p.backup {
            continue;
        }
        let (host, port) = p.name.rsplit_once(':').unwrap_or((&p.name, ""));
        let mut base = crc32fast::Hasher::new();
        base.update(host.as_bytes());
        base.update(b"\0");
        base.update(port.as_bytes());
        let mut prev: u32 = 0;
        for _ in 0..160 * p.weight {
            let mut h = base.clone();
            h.update(&prev.to_le_bytes());
            let point = h.finalize();
            ring.push((point, i));
            prev = point;
        }
    }
    ring.sort_unstable();
    ring
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn peer(name: &str, weight: u32) -> Peer {
        Peer {
            name: Arc::from(name),
            addr: name.parse().unwrap(),
            weight,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            max_conns: 0,
            backup: false,
            down: false,
            state: Arc::default(),
        }
    }

    fn input<'a>(tried: &'a [usize]) -> PickInput<'a> {
        PickInput {
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
            hash_key: b"",
            tried,
        }
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        let b = Balancer::new(
            Balance::RoundRobin,
            vec![
                peer("10.0.0.1:80", 5),
                peer("10.0.0.2:80", 1),
                peer("10.0.0.3:80", 1),
            ],
        );
        let seq: String = (0..7)
            .map(|_| ["a", "b", "c"][b.pick(&input(&[])).unwrap()])
            .collect();
        assert_eq!(seq, "aabacaa");
        let mut counts = [0; 3];
        for _ in 0..693 {
            counts[b.pick(&input(&[])).unwrap()] += 1;
        }
        // 700 picks in all: exactly 500, 100, 100.
        assert_eq!(counts, [495, 99, 99]);
    }

    #[test]
    fn tried_and_down_peers_are_skipped_then_backups_then_none() {
        let mut peers = vec![
            peer("10.0.0.1:80", 1),
            peer("10.0.0.2:80", 1),
            peer("10.0.0.3:80", 1),
        ];
        peers[2].backup = true;
        peers[1].down = true;
        let b = Balancer::new(Balance::RoundRobin, peers);
        assert_eq!(b.pick(&input(&[])), Some(0));
        assert_eq!(
            b.pick(&input(&[0])),
            Some(2),
            "backup once every primary is out"
        );
        assert_eq!(b.pick(&input(&[0, 2])), None);
        b.peers[0].record_failure();
        assert!(b.peers[0].state.is_marked_down());
        assert_eq!(b.pick(&input(&[])), Some(2));
    }

    #[test]
    fn consistent_hash_moves_only_the_removed_servers_keys() {
        let names = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];
        let all = Balancer::new(Balance::Hash, names.iter().map(|n| peer(n, 1)).collect());
        let fewer = Balancer::new(
            Balance::Hash,
            names[..3].iter().map(|n| peer(n, 1)).collect(),
        );
        let mut moved = 0;
        let mut on_removed = 0;
        for k in 0..10_000 {
            let key = format!("/item/{k}");
            let pick = |b: &Balancer| {
                let i = b
                    .pick(&PickInput {
                        client: IpAddr::V4(Ipv4Addr::LOCALHOST),
                        hash_key: key.as_bytes(),
                        tried: &[],
                    })
                    .unwrap();
                b.peers[i].name.to_string()
            };
            let (before, after) = (pick(&all), pick(&fewer));
            if before == names[3] {
                on_removed += 1;
            } else if before != after {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "keys of the remaining servers must stay");
        assert!(
            (1500..=3500).contains(&on_removed),
            "the removed server held {on_removed} of 10000 keys"
        );
    }

    #[test]
    fn ip_hash_sticks_and_uses_three_octets() {
        let b = Balancer::new(
            Balance::IpHash,
            (1..=5)
                .map(|i| peer(&format!("10.0.0.{i}:80"), 1))
                .collect(),
        );
        let pick = |ip: &str| {
            b.pick(&PickInput {
                client: ip.parse().unwrap(),
                hash_key: b"",
                tried: &[],
            })
            .unwrap()
        };
        let first = pick("192.168.7.10");
        for _ in 0..50 {
            assert_eq!(pick("192.168.7.10"), first);
        }
        assert_eq!(
            pick("192.168.7.200"),
            first,
            "the last octet does not count"
        );
        // nginx's arithmetic: h = 89; h = (h*113 + o) % 6271 for 192, 168, 7; then h % 5.
        let mut h: u64 = 89;
        for o in [192u64, 168, 7] {
            h = (h * 113 + o) % 6271;
        }
        assert_eq!(first as u64, h % 5);
    }

    #[test]
    fn least_conn_and_two_choices_prefer_the_idle_peer() {
        for algo in [Balance::LeastConn, Balance::TwoChoices] {
            let b = Balancer::new(algo, vec![peer("10.0.0.1:80", 1), peer("10.0.0.2:80", 1)]);
            b.peers[0].state.in_flight.store(5, Relaxed);
            for _ in 0..50 {
                assert_eq!(b.pick(&input(&[])), Some(1), "{algo:?}");
            }
        }
    }
}
