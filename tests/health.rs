//! Active health checks: a server whose checks fail `fall` times is skipped
//! by the balancer; after `rise` good checks it serves again.

mod common;
use common::{get, start_one, upstream};
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

/// Which servers answer 20 requests.
async fn who_answers(addr: std::net::SocketAddr) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let r = get(addr, "x", "/").await;
        assert_eq!(r.status, 200);
        seen.insert(r.text().lines().next().unwrap_or("").to_string());
    }
    seen
}

/// Poll until `who_answers` gives `want` (bounded by time).
async fn until_served_by(addr: std::net::SocketAddr, want: &[&str]) {
    let want: std::collections::BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + common::IO_LIMIT;
    loop {
        let seen = who_answers(addr).await;
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still served by {seen:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn failing_checks_take_a_server_out_and_good_ones_bring_it_back() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let yaml = format!(
        r#"
upstreams:
  app:
    servers: ["{}", "{}"]
    health_check: {{ path: /health, interval: 100ms, timeout: 1s, rise: 3, fall: 2, expect: 200-299 }}
servers:
  - listen: ["127.0.0.1:{{p0}}"]
    locations:
      - location: /
        proxy_pass: http://app
"#,
        a.addr, b.addr
    );
    let gw = start_one(&yaml, 1).await;
    until_served_by(gw.addr(0), &["a", "b"]).await;

    // b's checks fail: after two of them it is out, and only a answers.
    b.health.store(503, SeqCst);
    until_served_by(gw.addr(0), &["a"]).await;
    // It stays out while its checks fail.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(who_answers(gw.addr(0)).await.len(), 1);

    // Good checks again: after three of them, b serves again.
    let back_at = Instant::now();
    b.health.store(200, SeqCst);
    until_served_by(gw.addr(0), &["a", "b"]).await;
    assert!(
        back_at.elapsed() >= Duration::from_millis(200),
        "rejoined before `rise` checks could run"
    );
    gw.stop().await;
}
