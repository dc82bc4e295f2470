//! Server and location choice over real sockets, rule by rule, with nginx's
//! classic traps. Each location answers with a body naming itself.

mod common;
use common::{answer, get, start_one};

const SITES: &str = r#"
servers:
  # The first server on {p0}, but not its default: default_server is below.
  - listen: ["127.0.0.1:{p0}"]
    server_name: [first.test]
    locations:
      - location: /
        return: 200 "first"

  - listen: ["127.0.0.1:{p0} default_server", "127.0.0.1:{p1}"]
    server_name: [example.com, www.example.com]
    locations:
      - location: /
        return: 200 "root $uri"
      - location: "= /exact"
        return: 200 "exact"
      - location: /exact
        return: 200 "prefix-exact"
      - location: /static/
        return: 200 "static"
      - location: /static/long/prefix/
        return: 200 "long"
      - location: "^~ /assets/"
        return: 200 "assets"
      - location: "~ \\.php$"
        return: 200 "php"
      - location: "~ ^/order/"
        return: 200 "order"
      - location: "~* \\.(png|jpe?g)$"
        return: 200 "image"
      - location: "~ ^/static/(.*)\\.css$"
        return: 200 "css $1"
      - location: "~ ^/users/(?<id>[0-9]+)/?$"
        return: 200 "user $id $1"
      - location: /app/
        proxy_pass: http://127.0.0.1:1/
      - location: "= /exact-dir/"
        proxy_pass: http://127.0.0.1:1

  - listen: ["127.0.0.1:{p0}"]
    server_name: ["*.example.com"]
    locations:
      - location: /
        return: 200 "wild $host"

  - listen: ["127.0.0.1:{p0}"]
    server_name: ["*.b.example.com"]
    locations:
      - location: /
        return: 200 "wild-b"

  - listen: ["127.0.0.1:{p0}"]
    server_name: ["mail.*"]
    locations:
      - location: /
        return: 200 "mail-star"

  - listen: ["127.0.0.1:{p0}"]
    server_name: ["~^(?<tenant>[a-z]+)\\.example\\.org$", "~^api\\.(?<zone>[a-z]+)\\.org$"]
    locations:
      - location: /
        return: 200 "tenant $tenant zone $zone"

  - listen: ["127.0.0.1:{p0}"]
    server_name: ["~^[a-z]+\\.example\\.org$"]
    locations:
      - location: /
        return: 200 "second-regex"

  - listen: ["127.0.0.1:{p0}"]
    server_name: [.example.net]
    locations:
      - location: /
        return: 200 "dot-form"

  # Only on {p2}: a different set of servers.
  - listen: ["127.0.0.1:{p2}"]
    server_name: [example.com]
    locations:
      - location: /
        return: 200 "other-port"
"#;

#[tokio::test]
async fn server_choice_follows_nginx_order() {
    let gw = start_one(SITES, 3).await;
    let a = gw.addr(0);
    let cases = [
        ("first.test", "first"),
        ("example.com", "root /"),
        ("www.example.com", "root /"),
        // case-insensitive, port stripped, trailing dot removed
        ("WWW.Example.COM:80", "root /"),
        ("example.com.", "root /"),
        // leading wildcard: longest wins
        ("x.example.com", "wild x.example.com"),
        ("x.b.example.com", "wild-b"),
        // `*.b.example.com` does not match `b.example.com`
        ("b.example.com", "wild b.example.com"),
        // `*.x` beats `mail.*`
        ("mail.example.com", "wild mail.example.com"),
        ("mail.other.io", "mail-star"),
        // first regex in configuration order, with named captures
        ("acme.example.org", "tenant acme zone "),
        ("api.eu.org", "tenant  zone eu"),
        // `.example.net` is both the name and its subdomains
        ("example.net", "dot-form"),
        ("deep.sub.example.net", "dot-form"),
        // unknown: the default_server, not the first server
        ("nobody.test", "root /"),
    ];
    for (host, want) in cases {
        assert_eq!(
            answer(a, host, "/").await,
            (200, want.to_string()),
            "Host: {host}"
        );
    }
    // The second address has its own set: first.test does not listen there.
    assert_eq!(answer(gw.addr(1), "first.test", "/").await.1, "root /");
    assert_eq!(answer(gw.addr(2), "anything", "/").await.1, "other-port");
    gw.stop().await;
}

#[tokio::test]
async fn location_choice_follows_nginx_precedence() {
    let gw = start_one(SITES, 3).await;
    let a = gw.addr(0);
    let cases = [
        // `=` beats a prefix of the same text and longer prefixes
        ("/exact", 200, "exact"),
        ("/exact/more", 200, "prefix-exact"),
        ("/exactly", 200, "prefix-exact"),
        // longest prefix
        ("/static/a", 200, "static"),
        ("/static/long/prefix/x", 200, "long"),
        // a regex beats the longest prefix...
        ("/static/long/prefix/x.css", 200, "css long/prefix/x"),
        // ...unless that prefix is `^~`
        ("/assets/x.php", 200, "assets"),
        // regexes in configuration order: both match, `\.php$` is listed first
        ("/order/a.php", 200, "php"),
        ("/order/a", 200, "order"),
        // `~*` is case-insensitive, `~` is not
        ("/img/A.PNG", 200, "image"),
        ("/x.PHP", 200, "root /x.PHP"),
        // positional and named groups
        ("/users/42", 200, "user 42 42"),
        // no location: the `/` prefix catches everything here
        ("/nothing", 200, "root /nothing"),
    ];
    for (path, status, body) in cases {
        assert_eq!(
            answer(a, "example.com", path).await,
            (status, body.to_string()),
            "path {path}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn no_location_is_404() {
    let yaml = r#"
servers:
  - listen: ["127.0.0.1:{p0}"]
    locations:
      - location: /only/
        return: 200 "only"
"#;
    let gw = start_one(yaml, 1).await;
    let r = get(gw.addr(0), "x", "/elsewhere").await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("404 Not Found"), "{}", r.text());
    gw.stop().await;
}

#[tokio::test]
async fn trailing_slash_redirect_for_proxying_prefixes() {
    let gw = start_one(SITES, 3).await;
    let a = gw.addr(0);
    let r = get(a, "example.com", "/app?x=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("http://example.com:{}/app/?x=1", gw.ports[0]).as_str())
    );
    // An exact location ending in / redirects too (nginx sets auto_redirect on it).
    let r = get(a, "example.com", "/exact-dir").await;
    assert_eq!(r.status, 301);
    // A `return` location ending in / does not redirect.
    assert_eq!(answer(a, "example.com", "/static").await.1, "root /static");
    gw.stop().await;
}

#[tokio::test]
async fn paths_are_normalised_before_matching() {
    let gw = start_one(SITES, 3).await;
    let a = gw.addr(0);
    let cases = [
        ("//static//a", 200, "static"),
        ("/static/./a", 200, "static"),
        ("/x/../static/a", 200, "static"),
        ("/%73tatic/a", 200, "static"),
        ("/static%2Fa", 200, "static"),
        ("/a/%2e%2e/static/b", 200, "static"),
        ("/a/%2E%2E/exact", 200, "exact"),
        ("/a%20b", 200, "root /a b"),
    ];
    for (path, status, body) in cases {
        assert_eq!(
            answer(a, "example.com", path).await,
            (status, body.to_string()),
            "path {path}"
        );
    }
    for path in [
        "/../x",
        "/a/../../x",
        "/%2e%2e/x",
        "/a%zz",
        "/a%2",
        "/a%00b",
    ] {
        let r = get(a, "example.com", path).await;
        assert_eq!(r.status, 400, "path {path} gave {r:?}");
    }
    gw.stop().await;
}

const REWRITES: &str = r#"
servers:
  - listen: ["127.0.0.1:{p0}"]
    server_name: [rw.test]
    locations:
      - location: /old/
        rewrite: ["^/old/(.*)$ /new/$1 permanent"]
      - location: /temp/
        rewrite: ["^/temp/(.*)$ /new/$1 redirect"]
      - location: /away/
        rewrite: ["^/away/(.*)$ https://elsewhere.test/$1"]
      - location: /last/
        rewrite: ["^/last/(.*)$ /new/$1 last"]
        return: 200 "not reached"
      - location: /break/
        rewrite: ["^/break/(.*)$ /new/$1 break"]
        return: 200 "break stops this return, as nginx"
      - location: /noflag-ret/
        rewrite: ["^/noflag-ret/(.*)$ /elsewhere/$1"]
        return: 200 "stayed $uri"
      - location: /captured/
        rewrite: ["^/captured/(.*)$ /new/$1 last"]
      - location: /redir-enc/
        rewrite: ["^/redir-enc/(.*)$ /target/$1 redirect"]
      - location: /close/
        return: 444
      - location: "~ ^/bin/(.*)\\.dat$"
        return: 200 "bin"
      - location: /noflag/
        rewrite: ["^/noflag/(.*)$ /mid/$1", "^/mid/(.*)$ /new/$1"]
      - location: /args/
        rewrite: ["^/args/(.*)$ /new/$1?added=1 last"]
      - location: /dropargs/
        rewrite: ["^/dropargs/(.*)$ /new/$1? last"]
      - location: /loop/
        rewrite: ["^/loop/(.*)$ /loop/$1 last"]
      - location: /new/
        return: 200 "new $uri args=$args a=$arg_a"
      - location: /ret/
        return: 302 /target/path
      - location: /ret-url/
        return: https://other.test$request_uri
      - location: /text/
        return: "200 line one\n"
      - location: /quoted/
        return: 200 "a\tb \"q\"\n"
      - location: /empty/
        return: 204
      - location: /vars/
        return: 200 "$request_method $host $server_port $scheme $remote_addr $http_x_user_id $cookie_sid"
"#;

#[tokio::test]
async fn rewrites_and_returns() {
    let gw = start_one(REWRITES, 1).await;
    let a = gw.addr(0);
    let port = gw.ports[0];

    let r = get(a, "rw.test", "/old/x?a=1").await;
    assert_eq!(
        (r.status, r.header("location")),
        (
            301,
            Some(format!("http://rw.test:{port}/new/x?a=1").as_str())
        )
    );
    let r = get(a, "rw.test", "/temp/y").await;
    assert_eq!(
        (r.status, r.header("location")),
        (302, Some(format!("http://rw.test:{port}/new/y").as_str()))
    );
    let r = get(a, "rw.test", "/away/z?a=1").await;
    assert_eq!(
        (r.status, r.header("location")),
        (302, Some("https://elsewhere.test/z?a=1"))
    );

    assert_eq!(
        answer(a, "rw.test", "/last/p?a=1").await,
        (200, "new /new/p args=a=1 a=1".into())
    );
    // `break` stops the rewrite directives, `return` included: nothing answers (nginx: 404).
    assert_eq!(get(a, "rw.test", "/break/p").await.status, 404);
    // Without a flag, the location's own `return` still answers, with the new $uri.
    assert_eq!(
        answer(a, "rw.test", "/noflag-ret/x").await,
        (200, "stayed /elsewhere/x".into())
    );
    // Only a `?` written in the replacement starts arguments; a decoded %3F does not.
    assert_eq!(
        answer(a, "rw.test", "/captured/a%3Fb?y=2").await,
        (200, "new /new/a?b args=y=2 a=".into())
    );
    // Groups are escaped inside a redirect.
    let r = get(a, "rw.test", "/redir-enc/a%20b").await;
    assert_eq!(
        r.header("location"),
        Some(format!("http://rw.test:{port}/target/a%20b").as_str())
    );
    // return 444 closes without an answer.
    assert!(
        common::raw(a, b"GET /close/ HTTP/1.1\r\nHost: rw.test\r\n\r\n")
            .await
            .is_empty()
    );
    // Paths are bytes for regexes: %FF is matched by `.`.
    assert_eq!(
        answer(a, "rw.test", "/bin/%FF.dat").await,
        (200, "bin".into())
    );
    // Rewrites without a flag run in order, then the locations are searched again.
    assert_eq!(
        answer(a, "rw.test", "/noflag/q").await,
        (200, "new /new/q args= a=".into())
    );
    assert_eq!(
        answer(a, "rw.test", "/args/p?a=2").await,
        (200, "new /new/p args=added=1&a=2 a=2".into())
    );
    assert_eq!(
        answer(a, "rw.test", "/dropargs/p?a=2").await,
        (200, "new /new/p args= a=".into())
    );
    // More than 10 cycles: 500.
    assert_eq!(get(a, "rw.test", "/loop/x").await.status, 500);

    let r = get(a, "rw.test", "/ret/").await;
    assert_eq!(
        (r.status, r.header("location")),
        (
            302,
            Some(format!("http://rw.test:{port}/target/path").as_str())
        )
    );
    let r = get(a, "rw.test", "/ret-url/x?y=1").await;
    assert_eq!(
        (r.status, r.header("location")),
        (302, Some("https://other.test/ret-url/x?y=1"))
    );
    assert_eq!(
        answer(a, "rw.test", "/text/").await,
        (200, "line one\n".into())
    );
    assert_eq!(
        answer(a, "rw.test", "/quoted/").await,
        (200, "a\tb \"q\"\n".into())
    );
    let r = get(a, "rw.test", "/empty/").await;
    assert_eq!((r.status, r.body.len()), (204, 0));

    let req = format!(
        "GET /vars/ HTTP/1.1\r\nHost: RW.test:{port}\r\nX-User-Id: u7\r\nCookie: a=1; sid=s3\r\nConnection: close\r\n\r\n"
    );
    let r = common::parse_responses(&common::raw(a, req.as_bytes()).await).remove(0);
    assert_eq!(r.text(), format!("GET rw.test {port} http 127.0.0.1 u7 s3"));
    gw.stop().await;
}

#[tokio::test]
async fn absolute_form_target_picks_the_server_by_its_host() {
    let gw = start_one(SITES, 3).await;
    let req = "GET http://first.test/x HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n";
    let r = common::parse_responses(&common::raw(gw.addr(0), req.as_bytes()).await).remove(0);
    assert_eq!(r.text(), "first");
    gw.stop().await;
}

#[tokio::test]
async fn allow_and_deny_in_written_order() {
    let yaml = r#"
servers:
  - listen: ["127.0.0.1:{p0}"]
    allow: [127.0.0.1]
    deny: [all]
    locations:
      - location: /
        return: 200 "in"
      - location: /closed/
        deny: [127.0.0.0/8]
        allow: [all]
        proxy_pass: http://127.0.0.1:1
      # As nginx, `return` answers before allow/deny are checked.
      - location: /returned/
        deny: [all]
        return: 200 "return runs first"
"#;
    let gw = start_one(yaml, 1).await;
    assert_eq!(answer(gw.addr(0), "x", "/").await, (200, "in".into()));
    assert_eq!(get(gw.addr(0), "x", "/closed/").await.status, 403);
    assert_eq!(
        answer(gw.addr(0), "x", "/returned/").await,
        (200, "return runs first".into())
    );
    gw.stop().await;
}
