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
