//! Forwarding over real sockets to upstreams started in the test: the URI and
//! header rules, the balancers seen from outside, retries and failures.

mod common;
use common::{get, resetting_upstream, send, start_one, upstream};
use std::time::Duration;

fn lines(r: &common::Resp) -> Vec<String> {
    r.text().lines().map(str::to_string).collect()
}

fn upstream_header(r: &common::Resp, name: &str) -> Option<String> {
    let prefix = format!("{name}: ");
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

#[tokio::test]
async fn uri_rules_and_request_headers() {
    let up = upstream("a").await;
    let yaml = r#"
upstreams:
  app:
    servers: ["{UP}"]
servers:
  - listen: ["127.0.0.1:{p0}"]
    server_name: [site.test]
    locations:
      - location: /api/
        proxy_pass: http://app/v2/
        proxy_set_header: { X-Tenant: "t-$arg_t", User-Agent: "" }
      - location: /raw/
        proxy_pass: http://app
      - location: /rw/
        rewrite: ["^/rw/(.*)$ /new/$1 break"]
        proxy_pass: http://app
      - location: /literal/
        proxy_pass: http://{UP}
"#
    .replace("{UP}", &up.addr.to_string());
    let gw = start_one(&yaml, 1).await;
    let a = gw.addr(0);

    // A URI part replaces the matched prefix; arguments are kept.
    let r = get(a, "site.test", "/api/users?t=7").await;
    assert_eq!(r.status, 200);
    assert_eq!(lines(&r)[1], "GET /v2/users?t=7");
    // No URI part: the client's URI exactly as sent.
    let r = get(a, "site.test", "/raw/./x/%41?q").await;
    assert_eq!(lines(&r)[1], "GET /raw/./x/%41?q");
    // After rewrite ... break: the rewritten URI, encoded, with the arguments.
    let r = get(a, "site.test", "/rw/a%20b?z=1").await;
    assert_eq!(lines(&r)[1], "GET /new/a%20b?z=1");
    // A literal host:port works as an implicit group.
    assert_eq!(lines(&get(a, "site.test", "/literal/x").await)[0], "a");

    // Headers: Host unchanged (port included), X-Forwarded-*, hop-by-hop removed.
    let req = format!(
        "GET /api/h?t=1 HTTP/1.1\r\nHost: site.test:{}\r\nX-Forwarded-For: 10.1.1.1\r\nConnection: close, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nUser-Agent: curl\r\n\r\n",
        gw.ports[0]
    );
    let r = common::parse_responses(&common::raw(a, req.as_bytes()).await).remove(0);
    assert_eq!(
        upstream_header(&r, "host"),
        Some(format!("site.test:{}", gw.ports[0]))
    );
    assert_eq!(
        upstream_header(&r, "x-forwarded-for").as_deref(),
        Some("10.1.1.1, 127.0.0.1")
    );
    assert_eq!(
        upstream_header(&r, "x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        upstream_header(&r, "x-forwarded-host"),
        Some(format!("site.test:{}", gw.ports[0]))
    );
    assert_eq!(upstream_header(&r, "x-tenant").as_deref(), Some("t-1"));
    assert_eq!(
        upstream_header(&r, "user-agent"),
        None,
        "proxy_set_header \"\" removes"
    );
    assert_eq!(
        upstream_header(&r, "x-secret"),
        None,
        "a header named by Connection is hop-by-hop"
    );
    assert_eq!(upstream_header(&r, "keep-alive"), None);
    // Response: the upstream's Server is replaced by ginx's.
    assert_eq!(r.header("server"), Some("ginx"));
    gw.stop().await;
}

#[tokio::test]
async fn response_headers_hide_and_add() {
    let up = upstream("a").await;
    let yaml = r#"
upstreams:
  app: { servers: ["{UP}"] }
servers:
  - listen: ["127.0.0.1:{p0}"]
    add_header: { X-Server-Level: "yes" }
    locations:
      - location: /
        proxy_pass: http://app
        proxy_hide_header: [X-Powered-By]
        add_header: { X-Location-Level: "$upstream_ok" }
"#
    .replace("{UP}", &up.addr.to_string())
    .replace("$upstream_ok", "loc");
    let gw = start_one(&yaml, 1).await;
    let r = get(gw.addr(0), "x", "/").await;
    assert_eq!(r.header("x-powered-by"), None);
    assert_eq!(r.header("x-location-level"), Some("loc"));
    assert_eq!(
        r.header("x-server-level"),
        None,
        "a level that sets add_header replaces the inherited map"
    );
    gw.stop().await;
}

async fn balanced(balance: &str, weights: [u32; 3]) -> (common::Gateway, Vec<common::Upstream>) {
    let ups = vec![
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    ];
    let servers: Vec<String> = ups
        .iter()
        .zip(weights)
        .map(|(u, w)| format!("{{ addr: \"{}\", weight: {w} }}", u.addr))
        .collect();
    let yaml = format!(
        r#"
upstreams:
  app:
    balance: {balance}
    hash_key: "$request_uri"
    servers: [{}]
servers:
  - listen: ["127.0.0.1:{{p0}}"]
    locations:
      - location: /
        proxy_pass: http://app
"#,
        servers.join(", ")
    );
    (start_one(&yaml, 1).await, ups)
}

#[tokio::test]
async fn round_robin_is_smooth_and_exact_over_700_requests() {
    let (gw, _ups) = balanced("round_robin", [5, 1, 1]).await;
    let mut seq = String::new();
    for _ in 0..7 {
        seq.push_str(&lines(&get(gw.addr(0), "x", "/").await)[0]);
    }
    assert_eq!(seq, "aabacaa");
    let mut counts = std::collections::HashMap::new();
    for _ in 0..693 {
        *counts
            .entry(lines(&get(gw.addr(0), "x", "/").await)[0].clone())
            .or_insert(0) += 1;
    }
    assert_eq!(
        (counts["a"], counts["b"], counts["c"]),
        (495, 99, 99),
        "700 in all: 500/100/100"
    );
    gw.stop().await;
}

#[tokio::test]
async fn hash_keeps_a_key_on_one_server() {
    let (gw, _ups) = balanced("hash", [1, 1, 1]).await;
    for k in 0..20 {
        let path = format!("/item/{k}");
        let first = lines(&get(gw.addr(0), "x", &path).await)[0].clone();
        for _ in 0..3 {
            assert_eq!(lines(&get(gw.addr(0), "x", &path).await)[0], first);
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn least_conn_and_two_choices_avoid_the_busy_server() {
    for balance in ["least_conn", "two_choices"] {
        let ups = [upstream("a").await, upstream("b").await];
        let yaml = format!(
            r#"
upstreams:
  app:
    balance: {balance}
    servers: ["{}", "{}"]
servers:
  - listen: ["127.0.0.1:{{p0}}"]
    locations:
      - location: /
        proxy_pass: http://app
"#,
            ups[0].addr, ups[1].addr
        );
        let gw = start_one(&yaml, 1).await;
        let a = gw.addr(0);
        // One slow request holds one server...
        let slow = tokio::spawn(async move { get(a, "x", "/slow/1500").await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // ...and every quick request meanwhile goes to the other.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            seen.insert(lines(&get(a, "x", "/").await)[0].clone());
        }
        let busy = lines(&slow.await.unwrap())[0].clone();
        assert_eq!(seen.len(), 1, "{balance}: quick requests went to {seen:?}");
        assert!(
            !seen.contains(&busy),
            "{balance}: a quick request went to the busy server"
        );
        gw.stop().await;
    }
}

#[tokio::test]
async fn backups_only_when_every_primary_is_down() {
    let primary = upstream("primary").await;
    let backup = upstream("backup").await;
    let yaml = format!(
        r#"
upstreams:
  app:
    servers: ["{}", {{ addr: "{}", backup: true }}]
servers:
  - listen: ["127.0.0.1:{{p0}}"]
    locations:
      - location: /
        proxy_pass: http://app
"#,
        primary.addr, backup.addr
    );
    let gw = start_one(&yaml, 1).await;
    for _ in 0..5 {
        assert_eq!(lines(&get(gw.addr(0), "x", "/").await)[0], "primary");
    }
    primary.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..5 {
        let r = get(gw.addr(0), "x", "/").await;
        assert_eq!((r.status, lines(&r)[0].as_str()), (200, "backup"));
    }
    backup.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(gw.addr(0), "x", "/").await.status, 502);
    gw.stop().await;
}

#[tokio::test]
async fn a_dead_server_costs_no_request_and_a_reset_post_is_not_retried() {
    let (gw, ups) = balanced("round_robin", [1, 1, 1]).await;
    let a = gw.addr(0);
    for _ in 0..6 {
        assert_eq!(get(a, "x", "/").await.status, 200);
    }
    ups[1].kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..30 {
        let r = get(a, "x", "/").await;
        assert_eq!(r.status, 200, "request {i} failed: {r:?}");
        assert_ne!(lines(&r)[0], "b");
    }
    gw.stop().await;

    // A POST sent to a server that resets is not sent again.
    let reset = resetting_upstream().await;
    let good = upstream("good").await;
    let yaml = format!(
        r#"
upstreams:
  app:
    servers: ["{}", "{}"]
servers:
  - listen: ["127.0.0.1:{{p0}}"]
    locations:
      - location: /
        proxy_pass: http://app
"#,
        reset.addr, good.addr
    );
    let gw = start_one(&yaml, 1).await;
    let r = send(gw.addr(0), "POST", "x", "/once", b"payload").await;
    assert_eq!(r.status, 502);
    assert_eq!(reset.hits(), 1);
    assert_eq!(
        good.hits(),
        0,
        "a non-idempotent request already sent is not retried"
    );
    // A GET to the same pair is retried on the good server.
    let r = get(gw.addr(0), "x", "/again").await;
    assert_eq!((r.status, lines(&r)[0].as_str()), (200, "good"));
    gw.stop().await;
}

#[tokio::test]
async fn refused_and_timed_out_upstreams_get_502_and_504() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let slow = upstream("slow").await;
    let yaml = format!(
        r#"
upstreams:
  dead: {{ servers: ["{dead_addr}"] }}
  slow: {{ servers: ["{}"], read_timeout: 300ms }}
servers:
  - listen: ["127.0.0.1:{{p0}}"]
    locations:
      - location: /dead/
        proxy_pass: http://dead
      - location: /slow/
        proxy_pass: http://slow
"#,
        slow.addr
    );
    let gw = start_one(&yaml, 1).await;
    assert_eq!(get(gw.addr(0), "x", "/dead/").await.status, 502);
    assert_eq!(get(gw.addr(0), "x", "/slow/2000").await.status, 504);
    assert_eq!(get(gw.addr(0), "x", "/slow/10").await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn bodies_pass_both_ways_and_the_size_limit_holds() {
    let up = upstream("a").await;
    let yaml = format!(
        r#"
http:
  client_max_body_size: 100k
upstreams:
  app: {{ servers: ["{}"] }}
servers:
  - listen: ["127.0.0.1:{{p0}}"]
    locations:
      - location: /
        proxy_pass: http://app
"#,
        up.addr
    );
    let gw = start_one(&yaml, 1).await;
    let a = gw.addr(0);
    let small = send(a, "POST", "x", "/echo", b"hello body").await;
    assert!(small.text().ends_with("\n\nhello body"), "{}", small.text());
    let streamed = vec![b'z'; 90 * 1024];
    let r = send(a, "PUT", "x", "/echo", &streamed).await;
    assert!(
        r.body.ends_with(&streamed),
        "a 90k body (streamed) arrives whole"
    );
    let big = get(a, "x", "/big/3000000").await;
    assert_eq!(big.body.len(), 3_000_000);
    // Over the limit by Content-Length: 413 before the upstream sees it.
    let hits = up.hits();
    let r = send(a, "POST", "x", "/echo", &vec![b'y'; 200 * 1024]).await;
    assert_eq!(r.status, 413);
    assert_eq!(up.hits(), hits);
    // Over the limit in a chunked body: 413 too.
    let mut chunked = b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..150 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'c'; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = common::parse_responses(&common::raw(a, &chunked).await);
    assert_eq!(r[0].status, 413);
    gw.stop().await;
}

/// Read the access log until it has `n` lines (bounded by time).
async fn log_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + common::IO_LIMIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "access log has {} lines, wanted {n}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn access_log_json_and_combined() {
    let up = upstream("a").await;
    for format in ["json", "combined"] {
        let yaml = format!(
            r#"
access_log: {{ path: access.log, format: {format} }}
upstreams:
  app: {{ servers: ["{}"] }}
servers:
  - listen: ["127.0.0.1:{{p0}}"]
    locations:
      - location: /api/
        proxy_pass: http://app
"#,
            up.addr
        );
        let gw = start_one(&yaml, 1).await;
        let proxied = get(gw.addr(0), "log.test", "/api/x?y=1").await;
        assert_eq!(get(gw.addr(0), "log.test", "/nothing").await.status, 404);
        let lines = log_lines(&gw.dir.path().join("access.log"), 2).await;
        if format == "json" {
            let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
            assert_eq!(first["request"], "GET /api/x?y=1 HTTP/1.1");
            assert_eq!(first["status"], 200);
            assert_eq!(first["upstream_addr"], up.addr.to_string());
            assert_eq!(first["upstream_status"], 200);
            assert_eq!(first["bytes_sent"], proxied.body.len());
            assert!(first["upstream_response_time"].as_f64().is_some());
            let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
            assert_eq!(second["status"], 404);
            assert_eq!(second["reason"], "no location matches");
        } else {
            assert!(lines[0].starts_with("127.0.0.1 - - ["), "{}", lines[0]);
            assert!(
                lines[0].contains(&format!(
                    "\"GET /api/x?y=1 HTTP/1.1\" 200 {} \"-\" \"-\" rt=",
                    proxied.body.len()
                )),
                "{}",
                lines[0]
            );
            assert!(
                lines[0].contains(&format!("ua=\"{}\" us=200 urt=", up.addr)),
                "{}",
                lines[0]
            );
            assert!(
                lines[1].contains("\"GET /nothing HTTP/1.1\" 404 "),
                "{}",
                lines[1]
            );
        }
        gw.stop().await;
    }
}

#[tokio::test]
async fn killing_one_of_three_under_concurrent_load_fails_no_request() {
    let (gw, ups) = balanced("round_robin", [1, 1, 1]).await;
    let a = gw.addr(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            // Bounded: at most 2,000 requests or until told to stop.
            for _ in 0..2000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let r = get(a, "x", "/").await;
                if r.status == 200 {
                    ok += 1;
                } else {
                    failed.push(r.status);
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    ups[1].kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total > 20, "the load ran ({total} requests)");
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_upstream_request() {
    let up = upstream("a").await;
    let yaml = format!(
        r#"
upstreams:
  app: {{ servers: ["{}"] }}
servers:
  - listen: ["127.0.0.1:{{p0}}"]
    locations:
      - location: /
        proxy_pass: http://app
"#,
        up.addr
    );
    let gw = start_one(&yaml, 1).await;
    let shared = gw.running.as_ref().unwrap().shared.clone();
    let in_flight = || {
        shared.current().upstreams[0].balancer.peers[0]
            .state
            .in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    {
        use tokio::io::AsyncWriteExt;
        let mut client = tokio::net::TcpStream::connect(gw.addr(0)).await.unwrap();
        client
            .write_all(b"GET /slow/5000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + common::IO_LIMIT;
        while in_flight() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the request never reached the upstream"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The client hangs up while the upstream is still working.
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while in_flight() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream request was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.stop().await;
}

/// An upstream that reads each request head and answers with `reply` as
/// raw bytes, then closes the connection.
async fn raw_upstream(reply: Vec<u8>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(&reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Upstreams that answer wrongly: each gets a 502 (never a 200, never a
/// hang), and ginx goes on serving.
#[tokio::test]
async fn malformed_or_oversized_upstream_heads_get_502() {
    let huge_head = {
        let mut h = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..20_000 {
            h.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(40)).as_bytes());
        }
        h.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
        h
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not-http", b"HELLO THERE\r\n\r\n".to_vec()),
        (
            "bad-status",
            b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        ),
        (
            "bad-length",
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok".to_vec(),
        ),
        (
            "two-lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!".to_vec(),
        ),
        (
            "nul-in-header",
            b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        ),
        ("closed-at-once", Vec::new()),
        ("huge-head", huge_head),
    ];
    let mut upstreams = String::new();
    let mut locations = String::new();
    for (name, reply) in &cases {
        let addr = raw_upstream(reply.clone()).await;
        upstreams.push_str(&format!("  {name}: {{ servers: [\"{addr}\"] }}\n"));
        locations.push_str(&format!(
            "      - location: /{name}/\n        proxy_pass: http://{name}\n"
        ));
    }
    let yaml = format!(
        "upstreams:\n{upstreams}servers:\n  - listen: [\"127.0.0.1:{{p0}}\"]\n    locations:\n{locations}      - location: = /alive\n        return: 200 \"yes\"\n"
    );
    let gw = start_one(&yaml, 1).await;
    for (name, _) in &cases {
        let r = get(gw.addr(0), "x", &format!("/{name}/")).await;
        assert_eq!(r.status, 502, "{name}: {r:?}");
    }
    assert_eq!(get(gw.addr(0), "x", "/alive").await.status, 200);
    gw.stop().await;
}

/// An upstream that accepts and reads but never answers: read_timeout
/// gives 504, and the held connection does not stop other requests.
#[tokio::test]
async fn an_upstream_that_never_answers_gets_504_at_read_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s); // read nothing, answer nothing, close nothing
        }
    });
    let yaml = format!(
        "upstreams:\n  mute: {{ servers: [\"{addr}\"], read_timeout: 300ms }}\nservers:\n  - listen: [\"127.0.0.1:{{p0}}\"]\n    locations:\n      - location: /mute/\n        proxy_pass: http://mute\n      - location: = /alive\n        return: 200 \"yes\"\n"
    );
    let gw = start_one(&yaml, 1).await;
    let a = gw.addr(0);
    let (mute, alive) = tokio::join!(get(a, "x", "/mute/"), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        get(a, "x", "/alive").await
    });
    assert_eq!(mute.status, 504);
    assert_eq!(alive.status, 200);
    holder.abort();
    gw.stop().await;
}

/// A killed server is marked down (fail_timeout) while the others answer,
/// and is used again once it is back and the mark has passed.
#[tokio::test]
async fn a_killed_server_is_marked_down_and_comes_back() {
    let ups = [upstream("a").await, upstream("b").await];
    let yaml = format!(
        "upstreams:\n  app:\n    servers:\n      - {{ addr: \"{}\", fail_timeout: 1s }}\n      - {{ addr: \"{}\", fail_timeout: 1s }}\nservers:\n  - listen: [\"127.0.0.1:{{p0}}\"]\n    locations:\n      - location: /\n        proxy_pass: http://app\n",
        ups[0].addr, ups[1].addr
    );
    let gw = start_one(&yaml, 1).await;
    let a = gw.addr(0);
    let back_addr = ups[1].addr;
    ups[1].kill();
    // While it is down every request is answered by "a", without errors.
    for _ in 0..20 {
        let r = get(a, "x", "/").await;
        assert_eq!(r.status, 200);
        assert!(r.text().starts_with("a\n"), "{}", r.text());
    }
    // It returns on the same address; after fail_timeout it is picked again.
    let listener = std::net::TcpListener::bind(back_addr).unwrap();
    let back = common::upstream_on("b", listener).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..10 {
        assert_eq!(get(a, "x", "/").await.status, 200);
    }
    assert!(back.hits() > 0, "the returned server got no request");
    gw.stop().await;
}
/// Keep-alive connections to a server: reused request after request (empty,
/// sized and HEAD responses alike), and replaced when the server has closed
/// them, without sending a request twice.
#[tokio::test]
async fn upstream_connections_are_reused_and_replaced() {
    use std::sync::atomic::Ordering::SeqCst;
    let up = upstream("a").await;
    let addr = up.addr;
    let yaml = r#"
upstreams:
  app:
    servers: ["{UP}"]
servers:
  - listen: ["127.0.0.1:{p0}"]
    locations:
      - location: /
        proxy_pass: http://app
"#
    .replace("{UP}", &addr.to_string());
    let gw = start_one(&yaml, 1).await;
    for i in 0..20 {
        let r = if i % 2 == 0 {
            get(gw.addr(0), "x", "/").await
        } else {
            send(gw.addr(0), "POST", "x", "/", b"body").await
        };
        assert_eq!(r.status, 200);
    }
    // Empty bodies, sized bodies and HEAD all give the connection back.
    let head = common::raw(
        gw.addr(0),
        b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    assert_eq!(
        get(gw.addr(0), "x", "/big/100000").await.body.len(),
        100_000
    );
    assert_eq!(up.connections.load(SeqCst), 1, "one connection, reused");

    // The server goes away and another takes its port: the pooled connection
    // is dead; the next requests (a POST among them) go on a new one, once each.
    up.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let listener = std::net::TcpListener::bind(addr).expect("the port is free again");
    let up2 = common::upstream_on("b", listener).await;
    let r = send(gw.addr(0), "POST", "x", "/", b"once").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(lines(&r)[0], "b");
    assert_eq!(up2.hits(), 1, "the POST was sent once");
    assert_eq!(get(gw.addr(0), "x", "/").await.status, 200);
    assert_eq!(up2.connections.load(SeqCst), 1);

    gw.stop().await;
}

/// What an upstream's response says about its own hop (Connection and the
/// headers it names, Keep-Alive, Proxy-Connection) and what ginx sends
/// itself (Server, Date) do not reach the client; its other headers and
/// body do.
#[tokio::test]
async fn response_hop_by_hop_headers_stay_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let answer: &[u8] = b"HTTP/1.1 200 OK\r\nServer: upstream/1\r\n\
        Date: Mon, 01 Jan 2001 00:00:00 GMT\r\nConnection: keep-alive, X-Secret\r\n\
        X-Secret: s\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
        X-Kept: yes\r\nContent-Length: 2\r\n\r\nok";
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request head did not arrive");
            head.extend_from_slice(&buf[..n]);
        }
        s.write_all(answer).await.unwrap();
    });
    let yaml = r#"
servers:
  - listen: ["127.0.0.1:{p0}"]
    locations:
      - location: /
        proxy_pass: http://{UP}
"#
    .replace("{UP}", &up.to_string());
    let gw = start_one(&yaml, 1).await;
    let r = get(gw.addr(0), "x", "/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(r.header("x-kept"), Some("yes"));
    for gone in ["x-secret", "keep-alive", "proxy-connection"] {
        assert_eq!(r.header(gone), None, "{gone} reached the client: {r:?}");
    }
    assert_ne!(r.header("server"), Some("upstream/1"));
    assert!(r.header("date").is_some());
    assert_ne!(r.header("date"), Some("Mon, 01 Jan 2001 00:00:00 GMT"));
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    gw.stop().await;
}

/// A request without a Host (HTTP/1.0) goes to an HTTP/1 upstream with the
/// server's address as its Host, whatever name ginx's pool knows it by.
#[tokio::test]
async fn a_request_without_host_goes_up_with_the_servers_address() {
    let up = upstream("a").await;
    let yaml = r#"
upstreams:
  app:
    servers: ["{UP}"]
servers:
  - listen: ["127.0.0.1:{p0}"]
    locations:
      - location: /
        proxy_pass: http://app
"#
    .replace("{UP}", &up.addr.to_string());
    let gw = start_one(&yaml, 1).await;
    for _ in 0..2 {
        let answer = common::raw(gw.addr(0), b"GET /x HTTP/1.0\r\n\r\n").await;
        let r = &common::parse_responses(&answer)[0];
        assert_eq!(r.status, 200);
        assert_eq!(upstream_header(r, "host"), Some(up.addr.to_string()));
    }
    gw.stop().await;
}
