//! Routing and compile benchmarks: `cargo bench --bench routing`.
//!
//! Each size N writes one configuration into a temporary directory (a main
//! file that includes `conf.d/*.yaml`), with N server names and N locations on
//! one listen address:
//!
//! - server names: N/10 servers of 10 names each, mostly exact
//!   (`www.site7.test`), two leading wildcards (`*.dom7.test`), one trailing
//!   (`mail7.*`) and, on every tenth server, one regex name;
//! - locations, all in the first server (the one the benchmarked hosts reach),
//!   each answering `return: "200 ok"`: half plain prefixes (`/`, then nested
//!   `/a17/b0/c0/d0/`), a tenth exact (`= /x/123`), min(100, N/10) regexes
//!   (`~ ^/r42/[0-9]+$`), and the rest `^~` prefixes (`^~ /n9/static/`). The
//!   other servers have one location each.
//!
//! `lookup/N/ID` times one `ginx::route::route` call (host, path
//! normalisation, location search, building the outcome); the request is built
//! once outside the loop. `compile/10000` times `load_and_compile` of the
//! 10,000-location files.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use ginx::compile::{load_and_compile, Config};
use ginx::route::{route, Outcome, RequestInfo};
use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use std::fmt::Write as _;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tempfile::TempDir;

const SIZES: [usize; 3] = [10, 1000, 10_000];
const LISTEN: &str = "127.0.0.1:8080";

/// One benchmarked request: its id, Host, target, and the location it must reach.
struct Case {
    id: &'static str,
    host: String,
    uri: String,
    expect: String,
}

/// A configuration of size N written to disk, with the requests to time.
struct Setup {
    _dir: TempDir,
    main: PathBuf,
    cases: Vec<Case>,
}

/// Location counts for size N: (plain prefixes, exact, regex, `^~`).
fn counts(n: usize) -> (usize, usize, usize, usize) {
    let prefix = n / 2;
    let exact = n / 10;
    let regex = (n / 10).clamp(1, 100);
    let no_regex = n - prefix - exact - regex;
    (prefix, exact, regex, no_regex)
}

/// Plain prefix paths, in groups of up to 10 nested under `/a{g}/`; the first is `/`.
fn prefix_paths(count: usize) -> Vec<String> {
    const GROUP: [&str; 10] = [
        "",
        "b0/",
        "b0/c0/",
        "b0/c0/d0/",
        "b1/",
        "b1/c0/",
        "b2/",
        "b3/",
        "b1/c1/",
        "b0/c1/",
    ];
    let mut paths = vec!["/".to_string()];
    let mut g = 0;
    while paths.len() < count {
        for tail in GROUP {
            if paths.len() == count {
                break;
            }
            paths.push(format!("/a{g}/{tail}"));
        }
        g += 1;
    }
    paths
}

/// The ten names of server `k`.
fn server_names(k: usize) -> Vec<String> {
    let mut names = vec![
        format!("www.site{k}.test"),
        format!("site{k}.test"),
        format!("api.site{k}.test"),
        format!("cdn.site{k}.test"),
        format!("m.site{k}.test"),
        format!("static.site{k}.test"),
        format!("*.dom{k}.test"),
        format!("*.site{k}.example"),
        format!("mail{k}.*"),
    ];
    if k % 10 == 0 {
        names.push(format!(r"~^t{k}-[a-z0-9]+\.regex\.test$"));
    } else {
        names.push(format!("admin.site{k}.test"));
    }
    names
}

fn write_server(out: &mut String, names: &[String], locations: &[String]) {
    writeln!(out, "  - listen: [\"{LISTEN}\"]").unwrap();
    out.push_str("    server_name:\n");
    for name in names {
        // Single-quoted YAML: no escapes, `*` and `\` taken literally.
        writeln!(out, "      - '{name}'").unwrap();
    }
    out.push_str("    locations:\n");
    for location in locations {
        writeln!(out, "      - location: '{location}'").unwrap();
        out.push_str("        return: \"200 ok\"\n");
    }
}

/// Write the size-N configuration and choose the requests.
fn setup(n: usize) -> Setup {
    let (prefix, exact, regex, no_regex) = counts(n);
    let prefixes = prefix_paths(prefix);
    let mut locations: Vec<String> = prefixes.clone();
    locations.extend((0..exact).map(|i| format!("= /x/{i}")));
    locations.extend((0..regex).map(|i| format!("~ ^/r{i}/[0-9]+$")));
    locations.extend((0..no_regex).map(|i| format!("^~ /n{i}/static/")));
    assert_eq!(locations.len(), n);

    let dir = tempfile::tempdir().expect("temporary directory");
    let conf_d = dir.path().join("conf.d");
    std::fs::create_dir(&conf_d).expect("conf.d");
    let main = dir.path().join("ginx.yaml");
    std::fs::write(
        &main,
        "access_log: { path: \"off\" }\ninclude: [conf.d/*.yaml]\n",
    )
    .expect("write main file");

    let mut big = String::from("servers:\n");
    write_server(&mut big, &server_names(0), &locations);
    std::fs::write(conf_d.join("00-big.yaml"), big).expect("write conf.d/00-big.yaml");
    let servers = (n / 10).max(1);
    if servers > 1 {
        let mut rest = String::from("servers:\n");
        for k in 1..servers {
            write_server(&mut rest, &server_names(k), &["/".to_string()]);
        }
        std::fs::write(conf_d.join("10-sites.yaml"), rest).expect("write conf.d/10-sites.yaml");
    }

    // A deep prefix in the middle of the sorted table; every size has one.
    let deep = prefixes
        .iter()
        .filter(|p| p.ends_with("/c0/d0/"))
        .nth(prefix / 20)
        .or_else(|| prefixes.iter().rfind(|p| p.ends_with("/c0/d0/")))
        .expect("a deep prefix")
        .clone();
    let host = "www.site0.test".to_string();
    let case = |id, host: &str, uri: String, expect: &str| Case {
        id,
        host: host.to_string(),
        uri,
        expect: expect.to_string(),
    };
    let last_regex = regex - 1;
    let mid_no_regex = no_regex / 2;
    let cases = vec![
        case(
            "exact",
            &host,
            format!("/x/{}", exact / 2),
            &format!("/x/{}", exact / 2),
        ),
        case("prefix", &host, format!("{deep}index.html"), &deep),
        case(
            "regex",
            &host,
            format!("/r{last_regex}/12345"),
            &format!("^/r{last_regex}/[0-9]+$"),
        ),
        case(
            "prefix_no_regex",
            &host,
            format!("/n{mid_no_regex}/static/css/app.css"),
            &format!("/n{mid_no_regex}/static/"),
        ),
        // Only `*.dom0.test` matches; two suffixes are looked up. Same path as `prefix`.
        case(
            "wildcard_host",
            "cdn.eu.dom0.test",
            format!("{deep}index.html"),
            &deep,
        ),
    ];
    Setup {
        _dir: dir,
        main,
        cases,
    }
}

fn compile(setup: &Setup) -> Config {
    match load_and_compile(&setup.main) {
        Ok(config) => config,
        Err(e) => panic!("benchmark configuration does not compile:\n{e}"),
    }
}

fn bench_lookup(c: &mut Criterion) {
    let local: SocketAddr = LISTEN.parse().unwrap();
    let remote: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let method = Method::GET;
    let mut group = c.benchmark_group("lookup");
    for n in SIZES {
        let setup = setup(n);
        let config = compile(&setup);
        let listener = config.listener_for(local).expect("the listener");
        assert_eq!(listener.servers.len(), (n / 10).max(1));
        assert_eq!(listener.servers[0].locations.len(), n);
        for case in &setup.cases {
            let uri: Uri = case.uri.parse().unwrap();
            let mut headers = HeaderMap::new();
            headers.insert(
                http::header::HOST,
                HeaderValue::from_str(&case.host).unwrap(),
            );
            let req = RequestInfo {
                method: &method,
                uri: &uri,
                headers: (&headers).into(),
                version: Version::HTTP_11,
                local,
                remote,
                tls: false,
            };
            // The request must reach the intended server and location.
            let routed = route(listener, &req, None);
            assert!(
                std::ptr::eq(&**routed.server, &*listener.servers[0]),
                "{n}/{}: wrong server",
                case.id
            );
            let location = routed.location.expect("a location");
            assert_eq!(location.pattern, case.expect, "{n}/{}", case.id);
            assert_eq!(
                routed.outcome,
                Outcome::Respond {
                    status: http::StatusCode::OK,
                    body: b"ok".to_vec()
                },
                "{n}/{}",
                case.id
            );

            group.bench_function(BenchmarkId::new(n.to_string(), case.id), |b| {
                b.iter(|| route(black_box(listener), black_box(&req), None))
            });
        }
    }
    group.finish();
}

fn bench_compile(c: &mut Criterion) {
    let n = 10_000;
    let setup = setup(n);
    let mut group = c.benchmark_group("compile");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.bench_function(BenchmarkId::from_parameter(n), |b| {
        b.iter(|| compile(black_box(&setup)))
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_lookup, bench_compile
}
criterion_main!(benches);
