//! Path consistency: the path used for routing is the path forwarded, so a
//! deny rule on `/admin/` cannot be bypassed by any encoding. For each
//! attempt, either ginx refuses it (403 by the rule, 400 for a malformed
//! path), or the upstream receives a path whose normalised form is not
//! under `/admin/` (e.g. `/ADMIN/`, another path for a case-sensitive
//! server, as in nginx).

mod common;

const ATTEMPTS: &[&str] = &[
    "/admin/",
    "/admin/x",
    "/%61dmin/",
    "/%61%64%6d%69%6e/",
    "/%41dmin/",
    "/a%64min/x",
    "/admin%2f",
    "/admin%2Fx",
    "//admin/",
    "///admin//x",
    "/./admin/",
    "/././admin/./x",
    "/x/../admin/",
    "/x/%2e%2e/admin/",
    "/x/%2E%2E/admin/",
    "/x/.%2e/admin/",
    "/x/%2e./admin/",
    "/%2e/admin/",
    "/x/..%2fadmin/",
    "/x%2f..%2fadmin/",
    "/admin/.",
    "/admin/./",
    "/admin/x/..",
    "/admin/%2e",
    "/admin/;x",
    "/admin/;/x",
    "/admin/x;y",
    "/ADMIN/",
    "/Admin/",
    "/admin%20/",
    "/admin%00/",
    "/admin%zz/",
    "/%2561dmin/",
    "/admin/%2e%2e/admin/",
    "/static/../admin/",
    "/static/%2e%2e/admin/x",
    "/static/..%2F..%2Fadmin/",
    "/%2e%2e/admin/",
    "/../admin/",
    "/admin\\x/",
    "/ad%6din/",
    "/admi%6e/",
    "/admin/..%2fadmin/",
    "http://site.test/admin/",
];

#[tokio::test]
async fn a_deny_on_admin_cannot_be_bypassed_by_encoding() {
    let up = common::upstream("up").await;
    let yaml = format!(
        r#"
upstreams:
  app: {{ servers: ["{}"] }}
servers:
  - listen: ["127.0.0.1:{{p0}}"]
    server_name: [site.test]
    locations:
      - location: /admin/
        deny: [all]
        proxy_pass: http://app
      - location: /
        proxy_pass: http://app
"#,
        up.addr
    );
    let gw = common::start_one(&yaml, 1).await;
    let mut report = Vec::new();
    for target in ATTEMPTS {
        let req = format!("GET {target} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n");
        let bytes = common::raw(gw.addr(0), req.as_bytes()).await;
        let r = common::parse_responses(&bytes).remove(0);
        match r.status {
            403 | 400 => report.push(format!("{target:32} -> {}", r.status)),
            200 => {
                // What the upstream got: its request line is the echo's second line.
                let line = r.text().lines().nth(1).unwrap_or("").to_string();
                let sent = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let path = sent.split('?').next().unwrap_or("");
                let normalised = ginx::route::path::normalize(path.as_bytes())
                    .map(|p| String::from_utf8_lossy(&p).into_owned())
                    .unwrap_or_else(|_| "<malformed>".to_string());
                assert!(
                    !normalised.starts_with("/admin/") && normalised != "/admin",
                    "BYPASS: {target} reached the upstream as {sent} (normalised {normalised})"
                );
                report.push(format!("{target:32} -> 200, upstream got {sent}"));
            }
            other => panic!("{target}: unexpected status {other}"),
        }
    }
    assert!(ATTEMPTS.len() >= 40);
    eprintln!("{}", report.join("\n"));
    gw.stop().await;
}
