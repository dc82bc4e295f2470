//! Reload benchmarks: `cargo bench --bench reload`.
//!
//! 1. Save-to-effect: a file in conf.d is saved (atomically, as editors do)
//!    100 times; each time, the time until the new route answers is measured
//!    (polling every millisecond), quiet period included. p50, p99, max.
//! 2. Reload time for a 10,000-location configuration: load and compile,
//!    then put in force (`Shared::apply`), median of 5.

use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn site(port: u16, body: &str) -> String {
    format!("servers:\n  - listen: [\"127.0.0.1:{port}\"]\n    locations:\n      - location: /\n        return: 200 \"{body}\"\n")
}

fn save(dir: &Path, text: &str) {
    std::fs::write(dir.join(".site.tmp"), text).unwrap();
    std::fs::rename(dir.join(".site.tmp"), dir.join("site.yaml")).unwrap();
}

async fn body_of(addr: std::net::SocketAddr) -> String {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn big_config(port: u16, n: usize) -> String {
    let mut yaml = format!("servers:\n  - listen: [\"127.0.0.1:{port}\"]\n    locations:\n");
    for i in 0..n {
        match i % 10 {
            0 => yaml.push_str(&format!(
                "      - {{ location: \"= /x/{i}\", return: \"200 ok\" }}\n"
            )),
            1 if i < 1000 => yaml.push_str(&format!(
                "      - {{ location: \"~ ^/r{i}/[0-9]+$\", return: \"200 ok\" }}\n"
            )),
            _ => yaml.push_str(&format!(
                "      - {{ location: \"/p{}/q{i}/\", return: \"200 ok\" }}\n",
                i / 10
            )),
        }
    }
    yaml
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let conf_d = dir.path().join("conf.d");
        std::fs::create_dir(&conf_d).unwrap();
        std::fs::write(
            dir.path().join("ginx.yaml"),
            "include: [conf.d/*.yaml]\naccess_log: { path: \"off\" }\n",
        )
        .unwrap();
        std::fs::write(conf_d.join("site.yaml"), site(port, "v0")).unwrap();
        let config = ginx::compile::load_and_compile(&dir.path().join("ginx.yaml")).unwrap();
        let running = ginx::serve::start(config, vec![listener]).await.unwrap();
        let _watcher =
            ginx::reload::spawn_watcher(running.shared.clone(), dir.path().join("ginx.yaml"))
                .unwrap();

        let mut times = Vec::new();
        for i in 1..=100 {
            let want = format!("v{i}");
            save(&conf_d, &site(port, &want));
            let saved = Instant::now();
            loop {
                if body_of(addr).await == want {
                    break;
                }
                assert!(
                    saved.elapsed() < Duration::from_secs(10),
                    "save {i} never took effect"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            times.push(saved.elapsed());
        }
        times.sort();
        println!(
            "save-to-effect over {} saves (quiet period {:?} included):",
            times.len(),
            ginx::reload::QUIET
        );
        println!("| p50 | p99 | max |\n| --- | --- | --- |");
        println!(
            "| {:.1} ms | {:.1} ms | {:.1} ms |",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
            times.last().unwrap().as_secs_f64() * 1e3
        );

        // Reload time of a 10,000-location configuration.
        std::fs::write(conf_d.join("site.yaml"), big_config(port, 10_000)).unwrap();
        let mut compile_times = Vec::new();
        let mut apply_times = Vec::new();
        for _ in 0..5 {
            let main = dir.path().join("ginx.yaml");
            let started = Instant::now();
            let config = tokio::task::spawn_blocking(move || {
                ginx::compile::load_and_compile(&main).unwrap()
            })
            .await
            .unwrap();
            compile_times.push(started.elapsed());
            let started = Instant::now();
            running.shared.apply(config).unwrap();
            apply_times.push(started.elapsed());
        }
        compile_times.sort();
        apply_times.sort();
        println!("\nreload of a 10,000-location configuration (median of 5):");
        println!("| load + compile | put in force | total |\n| --- | --- | --- |");
        let (c, a) = (compile_times[2], apply_times[2]);
        println!(
            "| {:.1} ms | {:.2} ms | {:.1} ms |",
            c.as_secs_f64() * 1e3,
            a.as_secs_f64() * 1e3,
            (c + a).as_secs_f64() * 1e3
        );
        running.shutdown(Duration::from_secs(2)).await;
    });
}
