//! Helpers for integration tests: a gateway started in-process on ports bound
//! by the test (127.0.0.1, ephemeral), configuration written to a temp dir,
//! and a raw-socket HTTP client that reports exactly what came back.
#![allow(dead_code)]

use ginx::serve::Running;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every network wait in a test is bounded by this.
pub const IO_LIMIT: Duration = Duration::from_secs(10);

pub struct Gateway {
    pub running: Option<Running>,
    pub ports: Vec<u16>,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i]))
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(5)).await;
        }
    }
}

/// Write `files` (path relative to a new temp dir, text) after replacing
/// `{p0}`, `{p1}`, ... with the given ports. Returns the dir.
pub fn write_files(files: &[(&str, &str)], ports: &[u16]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        let mut text = text.to_string();
        for (i, p) in ports.iter().enumerate() {
            text = text.replace(&format!("{{p{i}}}"), &p.to_string());
        }
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// Start a gateway whose main file is `ginx.yaml` among `files`, with `nports`
/// listening sockets bound beforehand and named `{p0}`.. in the files.
pub async fn start(files: &[(&str, &str)], nports: usize) -> Gateway {
    let listeners: Vec<std::net::TcpListener> = (0..nports)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let dir = write_files(files, &ports);
    let mut config = ginx::compile::load_and_compile(&dir.path().join("ginx.yaml"))
        .unwrap_or_else(|e| panic!("test configuration does not load:\n{e}"));
    // Keep test output readable: an access log to stdout is off unless a file is named.
    if config.settings.access_log == ginx::compile::AccessLogTarget::Stdout {
        config.settings.access_log = ginx::compile::AccessLogTarget::Off;
    }
    let running = ginx::serve::start(config, listeners).await.expect("start");
    Gateway {
        running: Some(running),
        ports,
        dir,
    }
}

/// Start with a single file as `ginx.yaml`.
pub async fn start_one(yaml: &str, nports: usize) -> Gateway {
    start(&[("ginx.yaml", yaml)], nports).await
}

/// An address on 127.0.0.1 that nothing listens on now (for an admin listener).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The value of the metric `name` (a gauge or counter without labels) on
/// the admin listener at `admin`.
pub async fn metric(admin: SocketAddr, name: &str) -> i64 {
    let metrics = get(admin, "admin", "/metrics").await.text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parse every response in `bytes` (Content-Length bodies; no body for
/// responses to HEAD and for 1xx/204/304).
pub fn parse_responses(mut bytes: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = resp.parse(bytes) else {
            panic!(
                "unparsable response bytes: {:?}",
                String::from_utf8_lossy(bytes)
            );
        };
        let status = resp.code.unwrap();
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let body_len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse::<usize>().unwrap())
            .unwrap_or(0);
        let body = bytes[len..len + body_len].to_vec();
        bytes = &bytes[len + body_len..];
        out.push(Resp {
            status,
            headers,
            body,
        });
    }
    out
}

/// Send raw bytes, read until the server closes (bounded by IO_LIMIT).
/// An HTTP/2 client connection (prior knowledge) to `addr`, driven by its own task.
pub async fn h2_connect<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    sender
}

pub async fn raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    read_to_close(&mut s).await
}

pub async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(IO_LIMIT, s.read_to_end(&mut out)).await;
    match read {
        Ok(_) => out,
        Err(_) => panic!(
            "server did not close within {IO_LIMIT:?}; got {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
}

/// One request with `Connection: close`, parsed.
pub async fn get(addr: SocketAddr, host: &str, target: &str) -> Resp {
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let bytes = raw(addr, req.as_bytes()).await;
    let mut all = parse_responses(&bytes);
    assert_eq!(
        all.len(),
        1,
        "expected one response to {target}, got {all:?}"
    );
    all.remove(0)
}

/// Status and body text of one GET.
pub async fn answer(addr: SocketAddr, host: &str, target: &str) -> (u16, String) {
    let r = get(addr, host, target).await;
    (r.status, r.text())
}

pub fn ginx_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ginx"))
}

/// Run the `ginx` binary in `dir` with `args` (e.g. `-t`) and wait for it.
pub fn run_ginx(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(ginx_bin())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run ginx")
}

/// An upstream started in-process: a small hyper HTTP/1.1 server that
/// answers with what it received, so tests can see exactly what ginx sent.
pub struct Upstream {
    pub addr: SocketAddr,
    /// TCP connections accepted (to see pooled connections reused).
    pub connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The status `/health` answers (200 at first); checks are not counted in `hits`.
    pub health: std::sync::Arc<std::sync::atomic::AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Stop accepting and drop every connection: later connects are refused.
    pub fn kill(&self) {
        self.task.abort();
    }
    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Paths understood: `/slow/MS...` waits MS milliseconds; `/status/CODE...`
/// answers CODE; `/big/N` sends N bytes; anything else echoes. The body is
/// "NAME\nMETHOD URI\nheader: value\n...\n\nREQUEST BODY".
pub async fn upstream(name: &'static str) -> Upstream {
    upstream_on(name, std::net::TcpListener::bind("127.0.0.1:0").unwrap()).await
}

pub async fn upstream_on(name: &'static str, listener: std::net::TcpListener) -> Upstream {
    use http_body_util::BodyExt;
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let health = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(200));
    let counter = hits.clone();
    let health_status = health.clone();
    let connections_count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = connections_count.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let counter = counter.clone();
            let health_status = health_status.clone();
            connections.spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let counter = counter.clone();
                        let health_status = health_status.clone();
                        async move {
                            if req.uri().path() == "/health" {
                                let code = health_status.load(std::sync::atomic::Ordering::SeqCst);
                                let mut resp = http::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from_static(b"health\n"),
                                ));
                                *resp.status_mut() = http::StatusCode::from_u16(code).unwrap();
                                return Ok::<_, std::convert::Infallible>(resp);
                            }
                            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let path = req.uri().path().to_string();
                            let mut text = format!("{name}\n{} {}\n", req.method(), req.uri());
                            for (k, v) in req.headers() {
                                text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                            }
                            let mut status = 200;
                            if let Some(ms) = path
                                .strip_prefix("/slow/")
                                .and_then(|r| r.split('/').next())
                                .and_then(|m| m.parse().ok())
                            {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            if let Some(code) = path
                                .strip_prefix("/status/")
                                .and_then(|r| r.split('/').next())
                                .and_then(|c| c.parse().ok())
                            {
                                status = code;
                            }
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let bytes = if let Some(n) = path
                                .strip_prefix("/big/")
                                .and_then(|n| n.parse::<usize>().ok())
                            {
                                bytes::Bytes::from(vec![b'x'; n])
                            } else {
                                text.push('\n');
                                let mut all = text.into_bytes();
                                all.extend_from_slice(&body);
                                bytes::Bytes::from(all)
                            };
                            let mut resp = http::Response::new(http_body_util::Full::new(bytes));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            resp.headers_mut()
                                .insert("server", http::HeaderValue::from_static("test-upstream"));
                            resp.headers_mut()
                                .insert("x-powered-by", http::HeaderValue::from_static("tests"));
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        connections: connections_count,
        hits,
        health,
        task,
    }
}

/// An upstream that reads a request and closes the connection without
/// answering (a reset as the client sees it). Counts what it read.
pub async fn resetting_upstream() -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let mut buf = vec![0u8; 65536];
            let n = tokio::time::timeout(IO_LIMIT, stream.read(&mut buf))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            if n > 0 {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            // Linger 0: the close is a reset (RST), not an orderly FIN.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
        }
    });
    Upstream {
        addr,
        connections: Default::default(),
        hits,
        health: Default::default(),
        task,
    }
}

/// Send one request with a body and `Connection: close`, parsed.
pub async fn send(addr: SocketAddr, method: &str, host: &str, target: &str, body: &[u8]) -> Resp {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    req.extend_from_slice(body);
    let bytes = raw(addr, &req).await;
    let mut all = parse_responses(&bytes);
    assert_eq!(
        all.len(),
        1,
        "expected one response to {method} {target}, got {all:?}"
    );
    all.remove(0)
}

/// The ginx binary serving `yaml` (with `{p0}` for a free port), once it
/// listens; SIGTERM, wait-for-exit and RSS helpers; killed when dropped.
pub struct Binary {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Binary {
    pub async fn start(yaml: &str) -> Binary {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = write_files(&[("ginx.yaml", yaml)], &[port]);
        let child = std::process::Command::new(ginx_bin())
            .arg("-c")
            .arg(dir.path().join("ginx.yaml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let ginx = Binary { child, addr, dir };
        let deadline = std::time::Instant::now() + IO_LIMIT;
        while TcpStream::connect(addr).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "ginx did not start listening"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ginx
    }

    pub fn sigterm(&self) {
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
    }

    pub async fn exit_status(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + IO_LIMIT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ginx did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// VmRSS in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// After a request head read by a raw test server from `s` into `buf` (the
/// head already drained from it): its Content-Length body, taken from `buf`
/// and read on as needed. None if the connection ends or stalls first.
pub async fn read_length_body(s: &mut TcpStream, buf: &mut Vec<u8>, head: &str) -> Option<Vec<u8>> {
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < length {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(IO_LIMIT, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
    Some(buf.drain(..length).collect())
}
