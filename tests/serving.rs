//! HTTP/1.1 serving over real sockets: the client limits of the spec
//! (header timeout, header size, keep-alive time and count), pipelining,
//! Host rules, the headers every response gets, and graceful stop.

mod common;
use common::{get, parse_responses, raw, read_to_close, start_one, Binary, IO_LIMIT};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMITS: &str = r#"
server_tokens: true
http:
  client_header_timeout: 1s
  keepalive_timeout: 1s
  keepalive_requests: 3
  max_header_size: 4k
servers:
  - listen: ["127.0.0.1:{p0}"]
    add_header: { X-Site: "limits" }
    locations:
      - location: "= /"
        return: 200 "hi\n"
"#;

#[tokio::test]
async fn every_response_has_server_date_and_add_header_errors_included() {
    let gw = start_one(LIMITS, 1).await;
    let ok = get(gw.addr(0), "x", "/").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("server"), Some("ginx"));
    assert!(
        ok.header("date").is_some_and(|d| d.ends_with(" GMT")),
        "{ok:?}"
    );
    assert_eq!(ok.header("x-site"), Some("limits"));
    let missing = get(gw.addr(0), "x", "/nothing").await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.header("x-site"),
        Some("limits"),
        "add_header applies to errors too"
    );
    assert_eq!(missing.header("content-type"), Some("text/html"));
    gw.stop().await;
}

#[tokio::test]
async fn server_tokens_off_hides_the_server_header() {
    let yaml = LIMITS.replace("server_tokens: true", "server_tokens: false");
    let gw = start_one(&yaml, 1).await;
    let r = get(gw.addr(0), "x", "/nothing").await;
    assert_eq!(r.header("server"), None);
    assert!(!r.text().contains("ginx"), "{}", r.text());
    gw.stop().await;
}

#[tokio::test]
async fn oversized_heads_get_431_and_long_request_lines_414() {
    let gw = start_one(LIMITS, 1).await;
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(5000));
    let r = parse_responses(&raw(gw.addr(0), long_uri.as_bytes()).await);
    assert_eq!(r[0].status, 414);
    assert_eq!(r[0].header("connection"), Some("close"));
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(5000)
    );
    let r = parse_responses(&raw(gw.addr(0), big_header.as_bytes()).await);
    assert_eq!(r[0].status, 431);
    // Many small headers add up.
    let many: String = (0..400).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = parse_responses(
        &raw(
            gw.addr(0),
            format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
        )
        .await,
    );
    assert_eq!(r[0].status, 431);
    // Just under the limit is fine.
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Fit: {}\r\nConnection: close\r\n\r\n",
        "c".repeat(3500)
    );
    assert_eq!(
        parse_responses(&raw(gw.addr(0), fits.as_bytes()).await)[0].status,
        200
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_slow_head_gets_408_while_others_are_served() {
    let gw = start_one(LIMITS, 1).await;
    let mut slow = TcpStream::connect(gw.addr(0)).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // Meanwhile another client is served at once.
    assert_eq!(get(gw.addr(0), "x", "/").await.status, 200);
    let bytes = read_to_close(&mut slow).await;
    let waited = started.elapsed();
    let r = parse_responses(&bytes);
    assert_eq!(r[0].status, 408);
    assert!(
        waited >= Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_without_an_answer() {
    let gw = start_one(LIMITS, 1).await;
    let mut silent = TcpStream::connect(gw.addr(0)).await.unwrap();
    let bytes = read_to_close(&mut silent).await;
    assert!(
        bytes.is_empty(),
        "nothing was asked, nothing is answered: {bytes:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed_after_keepalive_timeout() {
    let gw = start_one(LIMITS, 1).await;
    let mut s = TcpStream::connect(gw.addr(0)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(IO_LIMIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parse_responses(&buf[..n])[0].status, 200);
    let idle_from = Instant::now();
    let rest = read_to_close(&mut s).await;
    assert!(rest.is_empty());
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
        "closed after {idle:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn keepalive_requests_closes_after_the_nth_response_and_pipelining_works() {
    let gw = start_one(LIMITS, 1).await;
    // Four pipelined requests in one write: three are answered, the third
    // says Connection: close, the fourth is never read.
    let one = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let bytes = raw(gw.addr(0), one.repeat(4).as_bytes()).await;
    let r = parse_responses(&bytes);
    assert_eq!(r.len(), 3, "{r:?}");
    assert!(r.iter().all(|x| x.status == 200 && x.text() == "hi\n"));
    assert_eq!(r[0].header("connection"), None);
    assert_eq!(r[2].header("connection"), Some("close"));
    gw.stop().await;
}

#[tokio::test]
async fn host_rules() {
    let gw = start_one(LIMITS, 1).await;
    let a = gw.addr(0);
    let no_host = parse_responses(&raw(a, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await);
    assert_eq!(no_host[0].status, 400);
    let two_hosts = parse_responses(
        &raw(
            a,
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        )
        .await,
    );
    assert_eq!(two_hosts[0].status, 400);
    let bad_host = parse_responses(
        &raw(
            a,
            b"GET / HTTP/1.1\r\nHost: a/b\r\nConnection: close\r\n\r\n",
        )
        .await,
    );
    assert_eq!(bad_host[0].status, 400);
    let http10 = parse_responses(&raw(a, b"GET / HTTP/1.0\r\n\r\n").await);
    assert_eq!(http10[0].status, 200);
    let garbage = parse_responses(&raw(a, b"BLAH\r\n\r\n").await);
    assert_eq!(garbage[0].status, 400);
    gw.stop().await;
}

#[tokio::test]
async fn head_requests_get_headers_only() {
    let gw = start_one(LIMITS, 1).await;
    let bytes = raw(
        gw.addr(0),
        b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("content-length: 3\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with("\r\n\r\n"),
        "no body after the head: {text:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn sigterm_stops_the_binary_gracefully() {
    let mut ginx = Binary::start(LIMITS).await;
    // A keep-alive client is connected when the signal comes.
    let mut client = TcpStream::connect(ginx.addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = client.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    ginx.sigterm();
    let status = ginx.exit_status().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        TcpStream::connect(ginx.addr).await.is_err(),
        "still accepting after stop"
    );
}

#[tokio::test]
async fn past_max_connections_new_connections_wait() {
    let yaml = LIMITS.replace("http:\n", "http:\n  max_connections: 1\n");
    let gw = start_one(&yaml, 1).await;
    // The first client holds the only slot with a keep-alive connection.
    let mut first = TcpStream::connect(gw.addr(0)).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(IO_LIMIT, first.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // The second is not served while the first is open...
    let mut second = TcpStream::connect(gw.addr(0)).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(early.is_err(), "served past max_connections");
    // ...and is served as soon as the first goes away.
    drop(first);
    let rest = read_to_close(&mut second).await;
    assert_eq!(parse_responses(&rest)[0].status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn trickling_a_head_byte_by_byte_buys_no_time() {
    let gw = start_one(LIMITS, 1).await;
    let mut s = TcpStream::connect(gw.addr(0)).await.unwrap();
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut answer = Vec::new();
    // One byte every 100 ms; client_header_timeout is 1s from the accept.
    for b in head.iter() {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await
        {
            answer.extend_from_slice(&buf[..n]);
            break;
        }
        assert!(started.elapsed() < IO_LIMIT);
    }
    answer.extend(read_to_close(&mut s).await);
    let closed_after = started.elapsed();
    assert_eq!(parse_responses(&answer)[0].status, 408);
    assert!(
        closed_after < Duration::from_secs(4),
        "the trickle kept the connection for {closed_after:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    let up = common::upstream("slow").await;
    let yaml = format!(
        "shutdown_timeout: 10s\naccess_log: {{ path: \"off\" }}\nupstreams:\n  app: {{ servers: [\"{}\"] }}\nservers:\n  - listen: [\"127.0.0.1:{{p0}}\"]\n    locations:\n      - location: /\n        proxy_pass: http://app\n",
        up.addr
    );
    let mut ginx = Binary::start(&yaml).await;
    let addr = ginx.addr;
    // A request that takes 1.5 s upstream is in flight when SIGTERM comes.
    let slow = tokio::spawn(async move { get(addr, "x", "/slow/1500").await });
    let deadline = Instant::now() + IO_LIMIT;
    while up.hits() == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ginx.sigterm();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "new connections are refused while draining"
    );
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request completed");
    assert_eq!(r.text().lines().next(), Some("slow"));
    let status = ginx.exit_status().await;
    assert!(status.success(), "exit status {status:?}");
}

/// `worker_threads: 1` runs tokio's current-thread scheduler: a slow
/// proxied request does not hold up others, and a saved file still reloads
/// (loading runs on the blocking pool).
#[tokio::test]
async fn one_worker_thread_serves_concurrently_and_reloads() {
    let up = common::upstream("one-thread").await;
    let yaml = format!(
        "worker_threads: 1\naccess_log: {{ path: \"off\" }}\nupstreams:\n  app: {{ servers: [\"{}\"] }}\nservers:\n  - listen: [\"127.0.0.1:{{p0}}\"]\n    locations:\n      - location: /\n        proxy_pass: http://app\n      - location: = /version\n        return: 200 \"one\"\n",
        up.addr
    );
    let ginx = Binary::start(&yaml).await;
    let addr = ginx.addr;
    let slow = tokio::spawn(async move { get(addr, "x", "/slow/1500").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..20 {
        assert_eq!(get(addr, "x", "/fast").await.status, 200);
    }
    assert!(!slow.is_finished(), "fast requests waited for the slow one");
    assert_eq!(slow.await.unwrap().status, 200);

    let path = ginx.dir.path().join("ginx.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"one\"", "\"two\"")).unwrap();
    let deadline = Instant::now() + IO_LIMIT;
    while common::answer(addr, "x", "/version").await.1 != "two" {
        assert!(Instant::now() < deadline, "the saved file was not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ginx binary runs without transparent huge pages from its first
/// allocation (src/alloc.rs): the kernel reports THP disabled for the
/// process, and none of its memory is in huge pages, even though mimalloc
/// asks for them and this kernel may grant them.
#[tokio::test]
async fn the_binary_keeps_transparent_huge_pages_out_of_its_memory() {
    let ginx = Binary::start(
        "access_log: { path: \"off\" }\nservers:\n  - listen: [\"127.0.0.1:{p0}\"]\n    locations:\n      - location: /\n        return: 200 \"ok\"\n",
    )
    .await;
    for _ in 0..200 {
        assert_eq!(get(ginx.addr, "x", "/").await.status, 200);
    }
    let pid = ginx.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let Some(thp) = status.lines().find_map(|l| l.strip_prefix("THP_enabled:")) else {
        eprintln!("this kernel has no transparent huge pages: nothing to check");
        return;
    };
    assert_eq!(thp.trim(), "0", "THP is still enabled for ginx");
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let huge = rollup
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .map(|v| v.trim().to_string());
    assert_eq!(huge.as_deref(), Some("0 kB"), "huge pages in ginx's memory");
}

/// An HTTP/1 connection idle past PARK_AFTER (1 s) is parked: hyper's state
/// is dropped and the socket kept. The client sees nothing of it: the next
/// request (and a pipelined pair after that) is answered on the same
/// connection, the head limits still apply to it, and keepalive_timeout
/// still closes it.
#[tokio::test]
async fn a_parked_idle_connection_serves_its_next_requests() {
    let admin = common::free_addr();
    let yaml = LIMITS
        .replace("keepalive_timeout: 1s", "keepalive_timeout: 4s")
        .replace("keepalive_requests: 3", "keepalive_requests: 100")
        .replace(
            "http:\n",
            &format!("admin: {{ listen: \"{admin}\" }}\nhttp:\n"),
        );
    let gw = start_one(&yaml, 1).await;
    let parked = || common::metric(admin, "ginx_parked_connections");
    let mut s = TcpStream::connect(gw.addr(0)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_answers(&mut s, 1).await;
    assert_eq!(r[0].status, 200);
    assert_eq!(parked().await, 0);
    for round in 0..2 {
        // Idle past the park delay, then two pipelined requests.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            parked().await,
            1,
            "round {round}: the idle connection is parked"
        );
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let r = read_answers(&mut s, 2).await;
        assert!(r.iter().all(|r| r.status == 200), "round {round}: {r:?}");
    }
    // After parking, a head over max_header_size still gets 431.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
        "a".repeat(5000)
    );
    s.write_all(big.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut s).await;
    assert_eq!(parse_responses(&answer)[0].status, 431);

    // A parked connection is still closed at keepalive_timeout (4 s).
    let open_for = open_after_one_request(gw.addr(0)).await;
    assert!(
        open_for >= Duration::from_secs(3),
        "closed after {open_for:?}, before keepalive_timeout"
    );
    gw.stop().await;
}

/// A parked connection is held without a task, but it is still a
/// connection: it counts as active (and against max_connections) until its
/// client closes, and it is closed when its listener is removed by a reload
/// and when ginx stops, which then does not wait for it.
#[tokio::test]
async fn parked_connections_keep_their_slot_and_close_with_their_listener() {
    let admin = common::free_addr();
    let yaml = format!(
        r#"
admin: {{ listen: "{admin}" }}
http:
  keepalive_timeout: 30s
servers:
  - listen: ["127.0.0.1:{{p0}}", "127.0.0.1:{{p1}}"]
    locations:
      - location: /
        return: 200 "hi\n"
"#
    );
    let mut gw = start_one(&yaml, 2).await;
    // Until `want` holds, or IO_LIMIT.
    let settle = |name: &'static str, want: i64| async move {
        let deadline = Instant::now() + IO_LIMIT;
        loop {
            let now = common::metric(admin, name).await;
            if now == want || Instant::now() > deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut open = Vec::new();
    for port in [0, 0, 1] {
        let mut s = TcpStream::connect(gw.addr(port)).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_answers(&mut s, 1).await[0].status, 200);
        open.push(s);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(settle("ginx_parked_connections", 3).await, 3);
    let active = common::metric(admin, "ginx_active_connections").await;
    assert!(active >= 3, "parked connections are active ones: {active}");

    // The client of a parked connection closes: its slot is given back.
    drop(open.remove(0));
    assert_eq!(settle("ginx_parked_connections", 2).await, 2);
    assert_eq!(
        settle("ginx_active_connections", active - 1).await,
        active - 1
    );

    // A reload removes the second address: its parked connection is closed.
    let path = gw.dir.path().join("ginx.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let p1 = format!(", \"127.0.0.1:{}\"", gw.ports[1]);
    assert!(text.contains(&p1));
    std::fs::write(&path, text.replace(&p1, "")).unwrap();
    let config = ginx::compile::load_and_compile(&path).unwrap();
    let running = gw.running.take().unwrap();
    running.shared.apply(config).unwrap();
    let mut removed = open.pop().unwrap();
    let closed = read_to_close(&mut removed).await;
    assert!(closed.is_empty(), "{:?}", String::from_utf8_lossy(&closed));
    assert_eq!(settle("ginx_parked_connections", 1).await, 1);

    // The one left still serves after being parked.
    let mut kept = open.pop().unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answers(&mut kept, 1).await[0].status, 200);

    // Stopping closes a parked connection rather than waiting for it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(settle("ginx_parked_connections", 1).await, 1);
    assert!(
        running.shutdown(Duration::from_secs(5)).await,
        "a parked connection held up the stop"
    );
    assert!(read_to_close(&mut kept).await.is_empty());
}

/// Read until `want` whole responses have arrived on `s`.
async fn read_answers(s: &mut TcpStream, want: usize) -> Vec<common::Resp> {
    let mut got = Vec::new();
    let deadline = Instant::now() + IO_LIMIT;
    let mut buf = vec![0u8; 4096];
    while parse_responses(&got).len() < want {
        assert!(Instant::now() < deadline, "no answer");
        let n = tokio::time::timeout(IO_LIMIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    parse_responses(&got)
}

/// keepalive_timeout counts from the end of the last response even when it
/// is shorter than client_header_timeout (the watchdog's deadline moves
/// when a request ends, without waiting for the header deadline first).
#[tokio::test]
async fn keepalive_timeout_shorter_than_header_timeout_closes_on_time() {
    let yaml = LIMITS.replace("client_header_timeout: 1s", "client_header_timeout: 20s");
    let gw = start_one(&yaml, 1).await;
    let open_for = open_after_one_request(gw.addr(0)).await;
    assert!(
        open_for < Duration::from_secs(10),
        "idle connection kept {open_for:?} with keepalive_timeout 1s"
    );
    gw.stop().await;
}

/// One request on a new keep-alive connection: how long the connection
/// stayed open after it was sent (until ginx closed it).
async fn open_after_one_request(addr: std::net::SocketAddr) -> Duration {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut s).await;
    assert_eq!(parse_responses(&answer)[0].status, 200);
    started.elapsed()
}

const DEFERRED: &str = r#"
access_log: { path: off }
servers:
  - listen: ["127.0.0.1:{p0} deferred"]
    locations:
      - location: /
        return: 200 "hi\n"
"#;

/// TCP_DEFER_ACCEPT on a listening socket, in seconds (0: off).
fn defer_accept(socket: &std::net::TcpListener) -> i32 {
    use std::os::fd::AsRawFd;
    let mut value: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid descriptor and an int-sized out value.
    let done = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(done, 0, "getsockopt: {}", std::io::Error::last_os_error());
    value
}

/// `listen ... deferred` (nginx's): the socket gets TCP_DEFER_ACCEPT, so a
/// client that has connected and said nothing is not accepted yet (it does
/// not count as a connection) while one that sent its request is served;
/// the silent one is served once it speaks. A reload without the flag
/// clears it on the socket that keeps listening: a silent client is then
/// accepted at once.
#[tokio::test]
async fn a_deferred_listener_accepts_a_connection_once_its_request_has_come() {
    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let probe = listener.try_clone().unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = common::write_files(&[("ginx.yaml", DEFERRED)], &[addr.port()]);
    let path = dir.path().join("ginx.yaml");
    let config = ginx::compile::load_and_compile(&path).unwrap();
    let running = ginx::serve::start(config, vec![listener]).await.unwrap();
    assert_eq!(
        defer_accept(&probe),
        1,
        "deferred sets a 1 s period, as nginx"
    );
    let active = || running.shared.metrics.active_connections.get();
    let settle = |want: i64| async move {
        let deadline = Instant::now() + IO_LIMIT;
        while active() != want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        active()
    };

    // The kernel hands a silent connection over at the end of the period
    // (1 s): an attempt that took longer than that proves nothing, and is made again.
    let mut held = None;
    for _ in 0..3 {
        assert_eq!(settle(0).await, 0);
        let silent = TcpStream::connect(addr).await.unwrap();
        let since = Instant::now();
        let mut talker = TcpStream::connect(addr).await.unwrap();
        talker.write_all(GET).await.unwrap();
        assert_eq!(read_answers(&mut talker, 1).await[0].status, 200);
        let counted = active();
        if since.elapsed() < Duration::from_millis(800) {
            assert_eq!(counted, 1, "the silent connection was accepted");
            held = Some((silent, talker));
            break;
        }
    }
    let (mut silent, talker) = held.expect("three attempts each took over 800 ms");
    silent.write_all(GET).await.unwrap();
    assert_eq!(read_answers(&mut silent, 1).await[0].status, 200);
    assert_eq!(settle(2).await, 2);
    drop((silent, talker));

    std::fs::write(
        &path,
        DEFERRED
            .replace(" deferred", "")
            .replace("{p0}", &addr.port().to_string()),
    )
    .unwrap();
    running
        .shared
        .apply(ginx::compile::load_and_compile(&path).unwrap())
        .unwrap();
    assert_eq!(defer_accept(&probe), 0, "the reload turned deferred off");
    assert_eq!(settle(0).await, 0);
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut talker = TcpStream::connect(addr).await.unwrap();
    talker.write_all(GET).await.unwrap();
    assert_eq!(read_answers(&mut talker, 1).await[0].status, 200);
    assert_eq!(settle(2).await, 2, "a silent client is accepted at once");
    silent.write_all(GET).await.unwrap();
    assert_eq!(read_answers(&mut silent, 1).await[0].status, 200);
    drop((silent, talker));
    running.shutdown(Duration::from_secs(5)).await;
}
