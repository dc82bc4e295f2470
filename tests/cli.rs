//! The `ginx` command: `-t` reports every error with file:line:column (golden
//! text), `-T` prints the merged files, `explain` shows the decision, and every
//! shipped configuration (ginx.yaml, examples/) passes `-t`.

mod common;
use std::process::Output;

fn ginx(dir: &std::path::Path, args: &[&str]) -> Output {
    common::run_ginx(dir, args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const BROKEN_MAIN: &str = r#"include: [conf.d/*.yaml]
http:
  client_max_body_size: 10 MB
  keepalive_timeout: 5 minutes
upstreams:
  api:
    servers: [127.0.0.1:9001]
servers:
  - listen: ["127.0.0.1:8080 defualt_server", "127.0.0.1"]
    locations:
      - location: "~ ^/(abc"
        return: 200 "x"
      - location: "~ ^/api/"
        proxy_pass: http://api/v2/
      - location: /x/
        proxy_pass: http://apii
      - location: /y/
        return: 200 "$hots"
      - location: /y/
        return: 200 "again"
  - listen: ["8081"]
  - listen: ["127.0.0.1:8081 deferred"]
"#;

#[test]
fn semantic_errors_are_all_reported_with_positions() {
    let dir = common::write_files(
        &[
            ("ginx.yaml", BROKEN_MAIN),
            (
                "conf.d/a.yaml",
                "upstreams:\n  api:\n    servers: [127.0.0.1:9002]\n",
            ),
        ],
        &[],
    );
    let out = ginx(dir.path(), &["-t"]);
    assert_eq!(out.status.code(), Some(1));
    let want = r#"ginx.yaml:3:25: client_max_body_size: bad size "10 MB": expected a number of bytes with an optional k, m or g suffix, e.g. 512, 16k, 8m, 1g
ginx.yaml:4:22: keepalive_timeout: bad duration "5 minutes": expected a number with an optional unit ms, s, m, h or d, e.g. 500ms, 30s, 5m, 1h
ginx.yaml:9:14: listen: unknown listen flag "defualt_server" (did you mean "default_server"?): known flags are tls, http2, default_server, deferred
ginx.yaml:9:47: listen: bad listen address "127.0.0.1": no port; expected ADDR:PORT or PORT (e.g. 127.0.0.1:8080, [::1]:8080, 8080), then any of the flags tls, http2, default_server, deferred
ginx.yaml:11:19: location: bad regex "^/(abc": unclosed group at character 3 of the pattern
ginx.yaml:14:21: proxy_pass: a URI part ("/v2/") cannot be used in a regex location (as nginx); remove it, or set the path with rewrite ... break
ginx.yaml:16:21: unknown upstream "apii" in proxy_pass (did you mean "api"?) (known: api); a literal address needs a port, e.g. 127.0.0.1:8080
ginx.yaml:18:17: return: unknown variable $hots (did you mean $host?); known: $host, $hostname, $remote_addr, $remote_port, $server_addr, $server_port, $server_name, $scheme, $request_method, $request_uri, $uri, $args, $query_string, $proxy_host, $proxy_add_x_forwarded_for, $request_id, $arg_NAME, $http_NAME, $cookie_NAME, $1..$9 and named regex groups
ginx.yaml:19:19: duplicate location "/y/": first at ginx.yaml:17:19
ginx.yaml:22:14: listen 127.0.0.1:8081 deferred: connections to 127.0.0.1:8081 are accepted by the socket of 0.0.0.0:8081 (at ginx.yaml:21:14), which is not deferred; put `deferred` on that listen entry instead
conf.d/a.yaml:2:3: upstream "api" is defined twice: first at ginx.yaml:6:3
ginx: configuration file ginx.yaml test failed (11 errors)
"#;
    assert_eq!(stderr(&out), want);
}

#[test]
fn file_level_errors_are_all_reported_with_positions() {
    let dir = common::write_files(
        &[
            ("ginx.yaml", "include: [conf.d/*.yaml, missing.yaml]\n"),
            (
                "conf.d/b.yaml",
                "servers:\n  - listen: [\"127.0.0.1:81\"]\n    locatoins: []\n",
            ),
            ("conf.d/c.yaml", "servers:\n  - listen: [127.0.0.1:82\n"),
            (
                "conf.d/d.yaml",
                "servers:\n  - listen: [\"127.0.0.1:83\"]\n    locations: 5\n",
            ),
            ("conf.d/e.yaml", "worker_threads: 4\n"),
            (
                "conf.d/f.yaml",
                "servers:\n  - listen: 80\n    server_name: {a: b}\n",
            ),
        ],
        &[],
    );
    let out = ginx(dir.path(), &["-t"]);
    assert_eq!(out.status.code(), Some(1));
    let missing = dir.path().join("missing.yaml");
    let want = format!(
        r#"conf.d/b.yaml:3:5: unknown key "locatoins" (did you mean "locations"?); expected one of: listen, server_name, tls, client_max_body_size, client_header_timeout, client_body_timeout, keepalive_timeout, send_timeout, keepalive_requests, max_header_size, add_header, proxy_set_header, proxy_hide_header, allow, deny, locations
conf.d/c.yaml:2:13: unclosed bracket '['
conf.d/d.yaml:3:16: expected a list here, e.g. [a, b] or lines starting with "- "
conf.d/e.yaml:1:1: unknown key "worker_threads"; expected one of: upstreams, servers; global settings belong in the main file, an included file holds upstreams and servers only
conf.d/f.yaml:3:18: invalid type: map, expected a string or a list of strings
ginx.yaml:1:26: include "missing.yaml": no such file {}
ginx: configuration file ginx.yaml test failed (6 errors)
"#,
        missing.display()
    );
    assert_eq!(stderr(&out), want);
}

#[test]
fn a_good_configuration_passes_and_dumps_every_file() {
    let dir = common::write_files(
        &[
            ("ginx.yaml", "include: [conf.d/*.yaml, extra/one.yaml]\n"),
            ("conf.d/b.yaml", "servers:\n  - listen: 8081\n    locations: [{location: /, return: 204}]\n"),
            ("conf.d/a.yaml", "upstreams:\n  api: {servers: [127.0.0.1:9000]}\n"),
            ("extra/one.yaml", "servers:\n  - listen: 8082\n    locations: [{location: /, proxy_pass: http://api}]\n"),
            ("conf.d/not-yaml.txt", "ignored: [\n"),
        ],
        &[],
    );
    let out = ginx(dir.path(), &["-t"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "ginx: configuration file ginx.yaml test is successful\n"
    );

    let out = ginx(dir.path(), &["-T"]);
    assert_eq!(out.status.code(), Some(0));
    let dump = stdout(&out);
    // Main first, then includes in load order (each pattern's matches sorted).
    let order: Vec<&str> = dump
        .lines()
        .filter(|l| l.starts_with("# configuration file"))
        .collect();
    assert_eq!(
        order,
        vec![
            "# configuration file ginx.yaml:",
            "# configuration file conf.d/a.yaml:",
            "# configuration file conf.d/b.yaml:",
            "# configuration file extra/one.yaml:",
        ]
    );
    assert!(dump.contains("upstreams:\n  api: {servers: [127.0.0.1:9000]}\n"));
}

#[test]
fn explain_shows_server_location_and_what_is_sent() {
    let dir = common::write_files(
        &[(
            "ginx.yaml",
            r#"upstreams:
  api:
    servers: [127.0.0.1:9001, {addr: 127.0.0.1:9002, weight: 3}]
servers:
  - listen: ["127.0.0.1:8080"]
    server_name: [example.com]
    locations:
      - location: /api/
        rewrite: ["^/api/old/(.*)$ /api/new/$1 break"]
        proxy_pass: http://api/v2/
      - location: /legacy/
        rewrite: ["^/legacy/(.*)$ /api/$1 last"]
"#,
        )],
        &[],
    );
    let out = ginx(
        dir.path(),
        &["explain", "http://example.com:8080/api/users?x=1"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = stdout(&out);
    assert!(
        report.contains("server:   example.com at ginx.yaml:5:5"),
        "{report}"
    );
    assert!(
        report.contains("location: \"/api/\" at ginx.yaml:8:19"),
        "{report}"
    );
    assert!(
        report.contains("proxy_pass http://api/v2/ sends GET /v2/users?x=1"),
        "{report}"
    );
    assert!(report.contains("to upstream \"api\" at ginx.yaml:2:3 (round_robin, http): 127.0.0.1:9001, 127.0.0.1:9002 weight=3"), "{report}");

    // The rewrite chain: last into /api/, then break keeps the rewritten URI.
    let out = ginx(
        dir.path(),
        &["explain", "http://example.com:8080/legacy/old/x?y=2"],
    );
    let report = stdout(&out);
    assert!(report.contains("rewrite \"^/legacy/(.*)$ /api/$1 last\" at ginx.yaml:12:19: /legacy/old/x -> /api/old/x"), "{report}");
    assert!(report.contains("rewrite \"^/api/old/(.*)$ /api/new/$1 break\" at ginx.yaml:9:19: /api/old/x -> /api/new/x"), "{report}");
    assert!(report.contains("sends GET /api/new/x?y=2"), "{report}");

    let out = ginx(dir.path(), &["explain", "http://example.com:9999/"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no server listens on port 9999"),
        "{}",
        stderr(&out)
    );
}

/// Every configuration the project ships must load.
#[test]
fn shipped_configurations_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut mains = vec![root.join("ginx.yaml")];
    for entry in std::fs::read_dir(root.join("examples")).expect("examples/") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            mains.push(path);
        } else if path.join("ginx.yaml").is_file() && !path.join("make-certs.sh").exists() {
            // A directory example (a conf.d split). One that needs certificates
            // made first (make-certs.sh) is checked by hand, not here.
            mains.push(path.join("ginx.yaml"));
        }
    }
    assert!(
        mains.len() >= 2,
        "examples/ should hold at least one configuration"
    );
    for main in mains {
        if let Err(e) = ginx::compile::load_and_compile(&main) {
            panic!("{} does not load:\n{e}", main.display());
        }
    }
}
