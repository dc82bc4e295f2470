//! Hot reload from files, every way files really change: plain write, a
//! half-written file then the good one, rename over (editors' atomic save),
//! delete and recreate, a new file in conf.d, a file removed, a Kubernetes
//! ConfigMap `..data` swap, listen addresses added and removed. A bad save
//! changes nothing and is recorded.

mod common;
use std::path::Path;
use std::time::{Duration, Instant};

/// A gateway whose watcher reloads from `dir`.
struct Watched {
    gw: common::Gateway,
    _watcher: tokio::task::JoinHandle<()>,
}

async fn watched(files: &[(&str, &str)], nports: usize, main: &str) -> Watched {
    let gw = common::start(files, nports).await;
    let shared = gw.running.as_ref().unwrap().shared.clone();
    let watcher = ginx::reload::spawn_watcher(shared, gw.dir.path().join(main)).expect("watcher");
    Watched {
        gw,
        _watcher: watcher,
    }
}

fn site(body: &str) -> String {
    format!("servers:\n  - listen: [\"127.0.0.1:{{p0}}\"]\n    locations:\n      - location: /\n        return: 200 \"{body}\"\n")
}

fn write(dir: &Path, name: &str, text: &str, port: u16) {
    std::fs::write(dir.join(name), text.replace("{p0}", &port.to_string())).unwrap();
}

/// Wait (bounded) until `/` answers `want`.
async fn until_answer(w: &Watched, want: &str) {
    let deadline = Instant::now() + common::IO_LIMIT;
    loop {
        let (status, body) = common::answer(w.gw.addr(0), "x", "/").await;
        if status == 200 && body == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still answering {status} {body:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const MAIN: &str = "include: [conf.d/*.yaml]\naccess_log: { path: \"off\" }\n";

async fn conf_d(body: &str) -> Watched {
    watched(
        &[("ginx.yaml", MAIN), ("conf.d/site.yaml", &site(body))],
        1,
        "ginx.yaml",
    )
    .await
}

#[tokio::test]
async fn a_plain_write_reloads() {
    let w = conf_d("one").await;
    until_answer(&w, "one").await;
    write(
        &w.gw.dir.path().join("conf.d"),
        "site.yaml",
        &site("two"),
        w.gw.ports[0],
    );
    until_answer(&w, "two").await;
    let state =
        w.gw.running
            .as_ref()
            .unwrap()
            .shared
            .reload
            .lock()
            .unwrap()
            .clone();
    assert_eq!(state.generation, 2);
    assert!(state.last.unwrap().ok);
}

#[tokio::test]
async fn a_half_written_file_fails_then_the_whole_one_reloads() {
    let w = conf_d("one").await;
    let dir = w.gw.dir.path().join("conf.d");
    let whole = site("two").replace("{p0}", &w.gw.ports[0].to_string());
    std::fs::write(dir.join("site.yaml"), &whole[..whole.len() / 2]).unwrap();
    // The half file fails: the old configuration keeps serving, the failure is recorded.
    let shared = w.gw.running.as_ref().unwrap().shared.clone();
    let deadline = Instant::now() + common::IO_LIMIT;
    while shared.reload.lock().unwrap().failed == 0 {
        assert!(
            Instant::now() < deadline,
            "the half-written file was never tried"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until_answer(&w, "one").await;
    let last = shared.reload.lock().unwrap().last.clone().unwrap();
    assert!(!last.ok);
    assert!(
        last.error.unwrap().contains("conf.d/site.yaml:"),
        "the error names the file and line"
    );
    std::fs::write(dir.join("site.yaml"), &whole).unwrap();
    until_answer(&w, "two").await;
}

#[tokio::test]
async fn an_atomic_rename_over_reloads() {
    let w = conf_d("one").await;
    let dir = w.gw.dir.path().join("conf.d");
    // vim, VS Code, sed -i: write a temporary file, rename it over.
    write(&dir, ".site.yaml.swp", &site("renamed"), w.gw.ports[0]);
    std::fs::rename(dir.join(".site.yaml.swp"), dir.join("site.yaml")).unwrap();
    until_answer(&w, "renamed").await;
    // And again: the watch survives the first rename.
    write(&dir, ".site.yaml.swp", &site("again"), w.gw.ports[0]);
    std::fs::rename(dir.join(".site.yaml.swp"), dir.join("site.yaml")).unwrap();
    until_answer(&w, "again").await;
}

#[tokio::test]
async fn delete_and_recreate_reloads() {
    let w = conf_d("one").await;
    let dir = w.gw.dir.path().join("conf.d");
    std::fs::remove_file(dir.join("site.yaml")).unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    write(&dir, "site.yaml", &site("recreated"), w.gw.ports[0]);
    until_answer(&w, "recreated").await;
}

#[tokio::test]
async fn files_appearing_and_leaving_conf_d_reload() {
    let w = conf_d("one").await;
    let dir = w.gw.dir.path().join("conf.d");
    // A new file with a more specific location.
    let extra = "servers:\n  - listen: [\"127.0.0.1:{p0}\"]\n    server_name: [new.test]\n    locations:\n      - location: /\n        return: 200 \"new site\"\n";
    write(&dir, "zz-new.yaml", extra, w.gw.ports[0]);
    let deadline = Instant::now() + common::IO_LIMIT;
    while common::answer(w.gw.addr(0), "new.test", "/").await.1 != "new site" {
        assert!(Instant::now() < deadline, "the new file was not picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_file(dir.join("zz-new.yaml")).unwrap();
    let deadline = Instant::now() + common::IO_LIMIT;
    while common::answer(w.gw.addr(0), "new.test", "/").await.1 != "one" {
        assert!(Instant::now() < deadline, "the removed file still serves");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_kubernetes_configmap_swap_reloads() {
    use std::os::unix::fs::symlink;
    // The kubelet's layout: ginx.yaml -> ..data/ginx.yaml, ..data -> ..2026_11_24_1.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let version = |name: &str, body: &str| {
        std::fs::create_dir(root.join(name)).unwrap();
        let text = format!(
            "access_log: {{ path: \"off\" }}\n{}",
            site(body).replace("{p0}", &port.to_string())
        );
        std::fs::write(root.join(name).join("ginx.yaml"), text).unwrap();
    };
    version("..2026_11_24_1", "first");
    symlink("..2026_11_24_1", root.join("..data")).unwrap();
    symlink("..data/ginx.yaml", root.join("ginx.yaml")).unwrap();
    let config = ginx::compile::load_and_compile(&root.join("ginx.yaml")).unwrap();
    let running = ginx::serve::start(config, vec![listener]).await.unwrap();
    let _watcher =
        ginx::reload::spawn_watcher(running.shared.clone(), root.join("ginx.yaml")).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(common::answer(addr, "x", "/").await.1, "first");
    // The update: a new directory, a temporary link, renamed over ..data.
    version("..2026_11_24_2", "second");
    symlink("..2026_11_24_2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..2026_11_24_1")).unwrap();
    let deadline = Instant::now() + common::IO_LIMIT;
    while common::answer(addr, "x", "/").await.1 != "second" {
        assert!(
            Instant::now() < deadline,
            "the ConfigMap update was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn listen_addresses_are_bound_and_released_by_reload() {
    let w = conf_d("one").await;
    let dir = w.gw.dir.path().join("conf.d");
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let new_port = free.local_addr().unwrap().port();
    drop(free);
    let second = format!(
        "servers:\n  - listen: [\"127.0.0.1:{new_port}\"]\n    locations:\n      - location: /\n        return: 200 \"second port\"\n"
    );
    std::fs::write(dir.join("second.yaml"), &second).unwrap();
    let new_addr = std::net::SocketAddr::from(([127, 0, 0, 1], new_port));
    let deadline = Instant::now() + common::IO_LIMIT;
    loop {
        if tokio::net::TcpStream::connect(new_addr).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the new address was not bound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(common::answer(new_addr, "x", "/").await.1, "second port");
    // An open keep-alive connection on it, then the address goes away.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut open = tokio::net::TcpStream::connect(new_addr).await.unwrap();
    open.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = open.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    std::fs::remove_file(dir.join("second.yaml")).unwrap();
    let deadline = Instant::now() + common::IO_LIMIT;
    while tokio::net::TcpStream::connect(new_addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the removed address still accepts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The open connection is closed gracefully, not left hanging.
    let rest = common::read_to_close(&mut open).await;
    assert!(rest.is_empty(), "{rest:?}");
    // The other address kept serving throughout.
    until_answer(&w, "one").await;
}

#[tokio::test]
async fn balancer_state_and_pooled_connections_survive_a_reload() {
    let a = common::upstream("a").await;
    let b = common::upstream("b").await;
    let conf = |body: &str| {
        format!(
            "upstreams:\n  app:\n    servers: [\"{}\", {{ addr: \"{}\", max_fails: 1, fail_timeout: 60s }}]\nservers:\n  - listen: [\"127.0.0.1:{{p0}}\"]\n    locations:\n      - location: /api/\n        proxy_pass: http://app\n      - location: /\n        return: 200 \"{body}\"\n",
            a.addr, b.addr
        )
    };
    let w = watched(&[("ginx.yaml", &conf("v1"))], 1, "ginx.yaml").await;
    let shared = w.gw.running.as_ref().unwrap().shared.clone();
    // Warm the pool: keep-alive connections to both servers.
    for _ in 0..4 {
        assert_eq!(common::get(w.gw.addr(0), "x", "/api/").await.status, 200);
    }
    let before = (
        a.connections.load(std::sync::atomic::Ordering::SeqCst),
        b.connections.load(std::sync::atomic::Ordering::SeqCst),
    );
    // Mark b failed (as a failed attempt would) and note its state.
    let state_before = shared.current().upstreams[0].balancer.peers[1]
        .state
        .clone();
    shared.current().upstreams[0].balancer.peers[1].record_failure();
    assert!(state_before.is_marked_down());

    write(w.gw.dir.path(), "ginx.yaml", &conf("v2"), w.gw.ports[0]);
    until_answer(&w, "v2").await;
    let peers = &shared.current().upstreams[0].balancer.peers;
    assert!(
        std::sync::Arc::ptr_eq(&peers[1].state, &state_before),
        "the same state object carries over"
    );
    assert!(
        peers[1].state.is_marked_down(),
        "the failure mark survived the reload"
    );
    // b is down: every request goes to a, over the connection pooled before the reload.
    for _ in 0..4 {
        let r = common::get(w.gw.addr(0), "x", "/api/").await;
        assert_eq!(r.text().lines().next(), Some("a"));
    }
    assert_eq!(
        a.connections.load(std::sync::atomic::Ordering::SeqCst),
        before.0,
        "pooled connections were reused"
    );
    assert_eq!(
        b.connections.load(std::sync::atomic::Ordering::SeqCst),
        before.1
    );
}

#[tokio::test]
async fn a_replaced_certificate_is_used_by_the_next_handshake() {
    let make = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    };
    let (c1, k1, der1) = make("site.test");
    let (c2, k2, der2) = make("site.test");
    let yaml = "access_log: { path: \"off\" }\nservers:\n  - listen: [\"127.0.0.1:{p0} tls\"]\n    tls: { certificate: certs/site.pem, key: certs/site.key }\n    locations: [{ location: /, return: 204 }]\n";
    let w = watched(
        &[
            ("certs/site.pem", &c1),
            ("certs/site.key", &k1),
            ("ginx.yaml", yaml),
        ],
        1,
        "ginx.yaml",
    )
    .await;
    let served = || async {
        let verifier = std::sync::Arc::new(AcceptAny(std::sync::Mutex::new(Vec::new())));
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(w.gw.addr(0)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("site.test").unwrap();
        let _ = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        let seen = verifier.0.lock().unwrap()[0].clone();
        seen
    };
    assert_eq!(served().await, der1);
    // Certificate and key replaced together (key first, then the certificate).
    let certs = w.gw.dir.path().join("certs");
    std::fs::write(certs.join("site.key.tmp"), &k2).unwrap();
    std::fs::rename(certs.join("site.key.tmp"), certs.join("site.key")).unwrap();
    std::fs::write(certs.join("site.pem.tmp"), &c2).unwrap();
    std::fs::rename(certs.join("site.pem.tmp"), certs.join("site.pem")).unwrap();
    let deadline = Instant::now() + common::IO_LIMIT;
    while served().await != der2 {
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Accepts any server certificate and keeps it (the test checks which one was served).
#[derive(Debug)]
struct AcceptAny(std::sync::Mutex<Vec<Vec<u8>>>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.0.lock().unwrap().push(end_entity.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn a_hundred_reloads_under_load_fail_no_request() {
    let w = conf_d("alpha").await;
    let addr = w.gw.addr(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let (mut served, mut wrong) = (0u64, Vec::new());
            // Bounded: stops when told, or after 500,000 requests.
            for _ in 0..500_000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let (status, body) = common::answer(addr, "x", "/").await;
                if status == 200 && (body == "alpha" || body == "beta") {
                    served += 1;
                } else {
                    wrong.push((status, body));
                }
            }
            (served, wrong)
        }));
    }
    let dir = w.gw.dir.path().join("conf.d");
    let port = w.gw.ports[0];
    let shared = w.gw.running.as_ref().unwrap().shared.clone();
    let mut good_saves = 0;
    for i in 0..130 {
        let text = if i % 10 == 9 {
            "servers: [ this is not yaml\n".to_string() // a bad save now and then
        } else {
            good_saves += 1;
            site(if good_saves % 2 == 0 { "alpha" } else { "beta" })
        };
        // Atomic saves, as editors do; each waits for the watcher to act.
        write(&dir, ".site.tmp", &text, port);
        std::fs::rename(dir.join(".site.tmp"), dir.join("site.yaml")).unwrap();
        let before = {
            let s = shared.reload.lock().unwrap();
            s.succeeded + s.failed
        };
        let deadline = Instant::now() + common::IO_LIMIT;
        while {
            let s = shared.reload.lock().unwrap();
            s.succeeded + s.failed
        } == before
        {
            assert!(Instant::now() < deadline, "save {i} was not acted on");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for c in clients {
        let (served, wrong) = c.await.unwrap();
        assert!(
            wrong.is_empty(),
            "answers from neither configuration: {wrong:?}"
        );
        total += served;
    }
    let state = shared.reload.lock().unwrap().clone();
    assert!(state.succeeded >= 100, "reloads: {state:?}");
    assert!(
        state.failed >= 13,
        "bad saves recorded as failures: {state:?}"
    );
    eprintln!(
        "served {total} requests across {} reloads ({} failed saves), none failed",
        state.succeeded, state.failed
    );
}

#[tokio::test]
async fn the_watcher_goes_quiet_after_a_reload() {
    let w = conf_d("one").await;
    let dir = w.gw.dir.path().join("conf.d");
    let shared = w.gw.running.as_ref().unwrap().shared.clone();
    let attempts = || {
        let s = shared.reload.lock().unwrap();
        s.succeeded + s.failed
    };
    write(&dir, "site.yaml", &site("two"), w.gw.ports[0]);
    until_answer(&w, "two").await;
    // Reading the files (as a reload does, or `cat`) is not a change.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let settled = attempts();
    let _ = std::fs::read_to_string(dir.join("site.yaml")).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(attempts(), settled, "reloads kept happening with no change");
    // A bad save is tried and counted once, not over and over.
    std::fs::write(dir.join("site.yaml"), "servers: [ broken\n").unwrap();
    let deadline = Instant::now() + common::IO_LIMIT;
    while shared.reload.lock().unwrap().failed == 0 {
        assert!(Instant::now() < deadline, "the bad save was not tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        shared.reload.lock().unwrap().failed,
        1,
        "one bad save, one failure"
    );
}

/// Writes to other files in the watched directories (a log beside the main
/// file, a file in conf.d that its pattern does not match) start no reload,
/// not even one that finds nothing changed; a new file the pattern matches
/// still does.
#[tokio::test]
async fn other_files_in_watched_directories_start_no_reload() {
    use std::io::Write;
    let w = conf_d("one").await;
    let root = w.gw.dir.path().to_path_buf();
    let shared = w.gw.running.as_ref().unwrap().shared.clone();
    let counts = || {
        let s = shared.reload.lock().unwrap();
        (s.succeeded, s.failed, s.unchanged)
    };
    let before = counts();
    let append = |path: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
    };
    let (mut log, mut notes) = (
        append(&root.join("access.log")),
        append(&root.join("conf.d/notes.txt")),
    );
    for i in 0..40 {
        writeln!(log, "GET / {i}").unwrap();
        writeln!(notes, "note {i}").unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    drop((log, notes));
    std::fs::write(root.join("conf.d/site.yaml.bak"), "not yaml: [").unwrap();
    // Past the quiet period and the longest coalescing: a reload would have run.
    tokio::time::sleep(ginx::reload::QUIET + Duration::from_millis(1200)).await;
    assert_eq!(
        counts(),
        before,
        "a reload ran for files that are not the configuration"
    );

    write(&root, "conf.d/more.yaml", "servers: []\n", w.gw.ports[0]);
    let deadline = Instant::now() + common::IO_LIMIT;
    while counts().0 == before.0 {
        assert!(
            Instant::now() < deadline,
            "a new file in conf.d did not reload: {:?}",
            counts()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until_answer(&w, "one").await;
}

/// A configuration put in force by SIGHUP that names a directory of its
/// own: a save there afterwards is a reload, as it would be had a save put
/// that configuration in force.
#[tokio::test]
async fn a_directory_that_a_sighup_reload_names_is_watched() {
    let gw = common::start(
        &[("ginx.yaml", MAIN), ("conf.d/site.yaml", &site("one"))],
        1,
    )
    .await;
    let root = gw.dir.path().to_path_buf();
    // Changed before the watcher starts: only the SIGHUP reload reads them.
    std::fs::create_dir(root.join("more")).unwrap();
    write(&root, "more/site.yaml", &site("two"), gw.ports[0]);
    let main = root.join("ginx.yaml");
    std::fs::write(
        &main,
        "include: [more/*.yaml]\naccess_log: { path: \"off\" }\n",
    )
    .unwrap();
    let shared = gw.running.as_ref().unwrap().shared.clone();
    let w = Watched {
        _watcher: ginx::reload::spawn_watcher(shared.clone(), main.clone()).expect("watcher"),
        gw,
    };
    assert!(ginx::reload::reload(&shared, &main, "SIGHUP").await);
    until_answer(&w, "two").await;
    // The watcher follows on its own task, right after the reload.
    tokio::time::sleep(Duration::from_millis(300)).await;
    write(&root, "more/site.yaml", &site("three"), w.gw.ports[0]);
    until_answer(&w, "three").await;
}
