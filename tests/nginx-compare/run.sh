#!/usr/bin/env bash
# Differential test: real nginx and ginx, the same virtual hosts and locations,
# the same requests; compares status, Location and body of every answer.
#
#   GINX=/path/to/ginx tests/nginx-compare/run.sh      # default: target/release/ginx
#   KEEP=1 ...   keeps the temp dir (configs, logs) and prints its path
#   ONLY=REGEX   runs only the cases whose name matches
#
# Exits 0 when every case agrees (or differs only where ginx documents that it
# differs: EXPECTED-DIFF), 1 on any DIFF, 2 when the set-up itself failed.
# Only 127.0.0.1 is ever contacted; every wait is bounded.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

# nginx on N0/N1, ginx on G0/G1: the same two "listen addresses" each.
N0=${N0:-18080}
N1=${N1:-18081}
G0=${G0:-18090}
G1=${G1:-18091}
# A port nothing listens on: proxy_pass targets (nginx answers 502 after a
# refused connect, ginx answers 502 because forwarding is not built yet).
DEAD=${DEAD:-1}

die() { echo "nginx-compare: $*" >&2; exit 2; }

# ---------------------------------------------------------------- binaries
GINX=${GINX:-$REPO/target/release/ginx}
if [ ! -x "$GINX" ]; then
    echo "nginx-compare: $GINX missing, building it (cargo build --release)" >&2
    (cd "$REPO" && cargo build --release) || die "cargo build failed"
    [ -x "$GINX" ] || die "no ginx binary at $GINX"
fi

NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
if [ ! -x "$NGINX_BIN" ]; then
    echo "nginx-compare: installing nginx" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >&2 || die "apt-get update failed"
    $SUDO apt-get install -y -qq nginx-light >&2 || $SUDO apt-get install -y -qq nginx >&2 \
        || die "cannot install nginx"
    # The package may start its system service: we did not want it.
    $SUDO service nginx stop >/dev/null 2>&1 || true
    if [ -s /run/nginx.pid ]; then $SUDO kill "$(cat /run/nginx.pid)" 2>/dev/null || true; fi
    NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
    [ -x "$NGINX_BIN" ] || die "nginx still missing after install"
fi
command -v curl >/dev/null || die "curl is needed"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$N0" "$N1" "$G0" "$G1"; do
    port_busy "$p" && die "port $p on 127.0.0.1 is already in use (set N0 N1 G0 G1)"
done

TMP=$(mktemp -d /tmp/nginx-compare.XXXXXX)
chmod 755 "$TMP"
mkdir -p "$TMP/conf.d" "$TMP/temp" "$TMP/out"

NGINX_PID=""
GINX_PID=""
stop_pid() { # pid: TERM, wait up to 5 s, then KILL
    local pid=$1 i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop_pid "$NGINX_PID"
    stop_pid "$GINX_PID"
    if [ -n "${KEEP:-}" ]; then
        echo "nginx-compare: kept $TMP" >&2
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- nginx.conf
# Every server and location here has its twin in ginx.yaml below, in the
# same order. Each `return` body names the location (L-...) or server (S...).
cat > "$TMP/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log info;
events { worker_connections 256; }
http {
    access_log $TMP/nginx-access.log;
    client_body_temp_path $TMP/temp/body;
    proxy_temp_path $TMP/temp/proxy;
    fastcgi_temp_path $TMP/temp/fastcgi;
    uwsgi_temp_path $TMP/temp/uwsgi;
    scgi_temp_path $TMP/temp/scgi;
    default_type text/plain;
    # A missing root: locations without a return serve nothing (404).
    root /nonexistent/nginx-compare;
    # ginx's max_header_size is 32k: give nginx the same room.
    large_client_header_buffers 4 32k;

    # S1: first on N0, but not its default.
    server {
        listen 127.0.0.1:$N0;
        server_name first.test;
        location / { return 200 "S1-first \$uri\n"; }
    }

    # S2: the default on N0; also on N1.
    server {
        listen 127.0.0.1:$N0 default_server;
        listen 127.0.0.1:$N1;
        server_name example.com www.example.com;

        location / { return 200 "L-root \$uri\n"; }
        location = /exact { return 200 "L-exact \$uri\n"; }
        location /exact { return 200 "L-prefix-exact \$uri\n"; }
        location /static/ { return 200 "L-static \$uri\n"; }
        location /static/long/prefix/ { return 200 "L-long \$uri\n"; }
        location ^~ /assets/ { return 200 "L-assets \$uri\n"; }
        location ~ \.php\$ { return 200 "L-php \$uri\n"; }
        location ~ ^/order/ { return 200 "L-order \$uri\n"; }
        location ~* \.(png|jpe?g)\$ { return 200 "L-image \$uri \$1\n"; }
        location ~ ^/static/(.*)\.css\$ { return 200 "L-css \$uri \$1\n"; }
        location ~ ^/users/(?<id>[0-9]+)/?\$ { return 200 "L-user \$id \$1\n"; }
        location ~* ^/kase/k\$ { return 200 "L-kase \$uri\n"; }
        location /assets/deep/ { return 200 "L-assets-deep \$uri\n"; }
        location /pre/ { return 200 "L-pre \$uri\n"; }
        location ^~ /pre/long/ { return 200 "L-pre-long \$uri\n"; }

        location /app/ { proxy_pass http://127.0.0.1:$DEAD/; }
        location = /exact-dir/ { proxy_pass http://127.0.0.1:$DEAD; }
        location /app2/ { proxy_pass http://127.0.0.1:$DEAD; }
        location ~ ^/app2\$ { return 200 "L-app2-regex \$uri\n"; }
        location /app3 { return 200 "L-app3 \$uri\n"; }
        location /app3/ { proxy_pass http://127.0.0.1:$DEAD; }
        location ~ /rx-dir/ { proxy_pass http://127.0.0.1:$DEAD; }

        location /target/ { return 200 "L-target \$uri \$1 args=\$args\n"; }
        location /r-last/ {
            rewrite ^/r-last/(.*)\$ /target/\$1 last;
            return 200 "L-r-last-not-reached\n";
        }
        location /r-break/ {
            rewrite ^/r-break/(.*)\$ /target/\$1 break;
            proxy_pass http://127.0.0.1:$DEAD;
        }
        location /r-break-ret/ {
            rewrite ^/r-break-ret/(.*)\$ /target/\$1 break;
            return 200 "L-r-break-ret \$uri \$1\n";
        }
        location /r-none/ {
            rewrite ^/r-none/(.*)\$ /target/\$1;
            return 200 "L-r-none \$uri \$1\n";
        }
        location /r-none2/ { rewrite ^/r-none2/(.*)\$ /target/\$1; }
        location /r-toapp/ { rewrite ^/r-toapp/ /app last; }
        location /r-chain/ {
            rewrite ^/r-chain/(.*)\$ /r-chain2/\$1;
            rewrite ^/r-chain2/(.*)\$ /target/chained-\$1 last;
        }
        location /r-nomatch/ {
            rewrite ^/zzz /target/ last;
            return 200 "L-r-nomatch \$uri\n";
        }
        location /only-rewrite/ { rewrite ^/only-rewrite/a\$ /target/a last; }
        location /r-redir/ { rewrite ^/r-redir/(.*)\$ /target/\$1 redirect; }
        location /r-perm/ { rewrite ^/r-perm/(.*)\$ /target/\$1 permanent; }
        location /r-https/ { rewrite ^/r-https/(.*)\$ https://secure.example.com/\$1; }
        location /r-https-drop/ { rewrite ^/r-https-drop/(.*)\$ https://secure.example.com/\$1?; }
        location /r-args/ { rewrite ^/r-args/(.*)\$ /target/\$1?x=1 last; }
        location /r-drop/ { rewrite ^/r-drop/(.*)\$ /target/\$1? last; }
        location /r-redir-args/ { rewrite ^/r-redir-args/(.*)\$ /target/\$1?x=1 redirect; }
        location /r-redir-drop/ { rewrite ^/r-redir-drop/(.*)\$ /target/\$1? redirect; }
        location /loop/ { rewrite ^/loop/(.*)\$ /loop/\$1 last; }
        location /chain/ {
            rewrite ^/chain/a/(.*)\$ /chain/\$1 last;
            return 200 "L-chain \$uri\n";
        }

        location /deny-ret/ { deny all; return 200 "L-deny-ret \$uri\n"; }
        location /deny-proxy/ { deny all; proxy_pass http://127.0.0.1:$DEAD; }
        location /allow-proxy/ { allow 127.0.0.1; deny all; proxy_pass http://127.0.0.1:$DEAD; }
        location /deny-other/ { deny 10.0.0.0/8; proxy_pass http://127.0.0.1:$DEAD; }
        location /deny-rewrite/ {
            deny all;
            rewrite ^/deny-rewrite/(.*)\$ /target/\$1 last;
        }

        location = /ret204 { return 204; }
        location = /ret200empty { return 200; }
        location = /ret302 { return 302 /target/x; }
        location = /ret302vars { return 302 /target/v?from=\$request_uri; }
        location = /ret301abs { return 301 https://other.example/p; }
        location = /ret307 { return 307 /target/y; }
        location = /retrel { return 302 target/rel; }
        location = /ret404 { return 404 "custom 404 \$uri\n"; }
        location = /ret403 { return 403; }
        location = /ret444 { return 444; }
        location = /retesc { return 200 "esc a\tb \"q\" back\\\\slash\n"; }
        location = /retvars {
            return 200 "host=\$host ru=\$request_uri uri=\$uri args=\$args ax=\$arg_x sn=\$server_name\n";
        }
    }

    # S3..S8: the server-name rules (ginx: conf.d/10-names.yaml).
    server {
        listen 127.0.0.1:$N0;
        server_name *.example.com;
        location / { return 200 "S3-wild \$host\n"; }
    }
    server {
        listen 127.0.0.1:$N0;
        server_name *.b.example.com;
        location / { return 200 "S4-wild-b \$host\n"; }
    }
    server {
        listen 127.0.0.1:$N0;
        server_name mail.*;
        location / { return 200 "S5-mail-star \$host\n"; }
    }
    server {
        listen 127.0.0.1:$N0;
        server_name ~^(?<tenant>[a-z]+)\.example\.org\$;
        location / { return 200 "S6 tenant=\$tenant one=\$1 host=\$host\n"; }
        location ~ ^/loc/([a-z]+)\$ { return 200 "S6-loc one=\$1 tenant=\$tenant\n"; }
    }
    server {
        listen 127.0.0.1:$N0;
        server_name ~^[a-z]+\.example\.org\$ ~^api\.(?<zone>[a-z]+)\.org\$;
        location / { return 200 "S7 zone=\$zone\n"; }
    }
    server {
        listen 127.0.0.1:$N0;
        server_name .example.net;
        location / { return 200 "S8-dot \$host\n"; }
    }

    # S10 and S11 (ginx: conf.d/20-more.yaml).
    # S10: the default on N1; its example.com loses to S2's (first wins).
    server {
        listen 127.0.0.1:$N1 default_server;
        server_name only1.test example.com;
        location / { return 200 "S10-root \$uri\n"; }
        location /only/ { return 200 "S10-only \$uri\n"; }
    }
    # S11: add_header, and no "/" location at all.
    server {
        listen 127.0.0.1:$N0;
        server_name hdr.test;
        add_header X-Cmp yes;
        location = /ok { return 200 "S11-ok\n"; }
        location = /redir { return 302 /ok; }
    }
}
EOF

# ---------------------------------------------------------------- ginx.yaml
cat > "$TMP/ginx.yaml" <<EOF
worker_threads: 1
error_log: { level: warn, format: text }
access_log: { path: stdout, format: combined }
shutdown_timeout: 1s
http:
  max_header_size: 32k
include: [conf.d/*.yaml]
servers:
  # S1
  - listen: ["127.0.0.1:$G0"]
    server_name: [first.test]
    locations:
      - location: /
        return: 200 "S1-first \$uri\n"

  # S2
  - listen: ["127.0.0.1:$G0 default_server", "127.0.0.1:$G1"]
    server_name: [example.com, www.example.com]
    locations:
      - { location: /, return: '200 "L-root \$uri\n"' }
      - { location: "= /exact", return: '200 "L-exact \$uri\n"' }
      - { location: /exact, return: '200 "L-prefix-exact \$uri\n"' }
      - { location: /static/, return: '200 "L-static \$uri\n"' }
      - { location: /static/long/prefix/, return: '200 "L-long \$uri\n"' }
      - { location: "^~ /assets/", return: '200 "L-assets \$uri\n"' }
      - { location: '~ \.php$', return: '200 "L-php \$uri\n"' }
      - { location: '~ ^/order/', return: '200 "L-order \$uri\n"' }
      - { location: '~* \.(png|jpe?g)$', return: '200 "L-image \$uri \$1\n"' }
      - { location: '~ ^/static/(.*)\.css$', return: '200 "L-css \$uri \$1\n"' }
      - { location: '~ ^/users/(?<id>[0-9]+)/?$', return: '200 "L-user \$id \$1\n"' }
      - { location: '~* ^/kase/k$', return: '200 "L-kase \$uri\n"' }
      - { location: /assets/deep/, return: '200 "L-assets-deep \$uri\n"' }
      - { location: /pre/, return: '200 "L-pre \$uri\n"' }
      - { location: "^~ /pre/long/", return: '200 "L-pre-long \$uri\n"' }

      - { location: /app/, proxy_pass: "http://127.0.0.1:$DEAD/" }
      - { location: "= /exact-dir/", proxy_pass: "http://127.0.0.1:$DEAD" }
      - { location: /app2/, proxy_pass: "http://127.0.0.1:$DEAD" }
      - { location: '~ ^/app2$', return: '200 "L-app2-regex \$uri\n"' }
      - { location: /app3, return: '200 "L-app3 \$uri\n"' }
      - { location: /app3/, proxy_pass: "http://127.0.0.1:$DEAD" }
      - { location: '~ /rx-dir/', proxy_pass: "http://127.0.0.1:$DEAD" }

      - { location: /target/, return: '200 "L-target \$uri \$1 args=\$args\n"' }
      - location: /r-last/
        rewrite: ['^/r-last/(.*)$ /target/\$1 last']
        return: '200 "L-r-last-not-reached\n"'
      - location: /r-break/
        rewrite: ['^/r-break/(.*)$ /target/\$1 break']
        proxy_pass: "http://127.0.0.1:$DEAD"
      - location: /r-break-ret/
        rewrite: ['^/r-break-ret/(.*)$ /target/\$1 break']
        return: '200 "L-r-break-ret \$uri \$1\n"'
      - location: /r-none/
        rewrite: ['^/r-none/(.*)$ /target/\$1']
        return: '200 "L-r-none \$uri \$1\n"'
      - { location: /r-none2/, rewrite: ['^/r-none2/(.*)$ /target/\$1'] }
      - { location: /r-toapp/, rewrite: ['^/r-toapp/ /app last'] }
      - location: /r-chain/
        rewrite: ['^/r-chain/(.*)$ /r-chain2/\$1', '^/r-chain2/(.*)$ /target/chained-\$1 last']
      - location: /r-nomatch/
        rewrite: ['^/zzz /target/ last']
        return: '200 "L-r-nomatch \$uri\n"'
      - { location: /only-rewrite/, rewrite: ['^/only-rewrite/a$ /target/a last'] }
      - { location: /r-redir/, rewrite: ['^/r-redir/(.*)$ /target/\$1 redirect'] }
      - { location: /r-perm/, rewrite: ['^/r-perm/(.*)$ /target/\$1 permanent'] }
      - { location: /r-https/, rewrite: ['^/r-https/(.*)$ https://secure.example.com/\$1'] }
      - { location: /r-https-drop/, rewrite: ['^/r-https-drop/(.*)$ https://secure.example.com/\$1?'] }
      - { location: /r-args/, rewrite: ['^/r-args/(.*)$ /target/\$1?x=1 last'] }
      - { location: /r-drop/, rewrite: ['^/r-drop/(.*)$ /target/\$1? last'] }
      - { location: /r-redir-args/, rewrite: ['^/r-redir-args/(.*)$ /target/\$1?x=1 redirect'] }
      - { location: /r-redir-drop/, rewrite: ['^/r-redir-drop/(.*)$ /target/\$1? redirect'] }
      - { location: /loop/, rewrite: ['^/loop/(.*)$ /loop/\$1 last'] }
      - location: /chain/
        rewrite: ['^/chain/a/(.*)$ /chain/\$1 last']
        return: '200 "L-chain \$uri\n"'

      - { location: /deny-ret/, deny: [all], return: '200 "L-deny-ret \$uri\n"' }
      - { location: /deny-proxy/, deny: [all], proxy_pass: "http://127.0.0.1:$DEAD" }
      - { location: /allow-proxy/, allow: [127.0.0.1], deny: [all], proxy_pass: "http://127.0.0.1:$DEAD" }
      - { location: /deny-other/, deny: [10.0.0.0/8], proxy_pass: "http://127.0.0.1:$DEAD" }
      - location: /deny-rewrite/
        deny: [all]
        rewrite: ['^/deny-rewrite/(.*)$ /target/\$1 last']

      - { location: "= /ret204", return: "204" }
      - { location: "= /ret200empty", return: "200" }
      - { location: "= /ret302", return: "302 /target/x" }
      - { location: "= /ret302vars", return: "302 /target/v?from=\$request_uri" }
      - { location: "= /ret301abs", return: "301 https://other.example/p" }
      - { location: "= /ret307", return: "307 /target/y" }
      - { location: "= /retrel", return: "302 target/rel" }
      - { location: "= /ret404", return: '404 "custom 404 \$uri\n"' }
      - { location: "= /ret403", return: "403" }
      - { location: "= /ret444", return: "444" }
      - { location: "= /retesc", return: '200 "esc a\tb \"q\" back\\\\slash\n"' }
      - location: "= /retvars"
        return: '200 "host=\$host ru=\$request_uri uri=\$uri args=\$args ax=\$arg_x sn=\$server_name\n"'
EOF

cat > "$TMP/conf.d/10-names.yaml" <<EOF
servers:
  # S3
  - listen: ["127.0.0.1:$G0"]
    server_name: ["*.example.com"]
    locations:
      - { location: /, return: '200 "S3-wild \$host\n"' }
  # S4
  - listen: ["127.0.0.1:$G0"]
    server_name: ["*.b.example.com"]
    locations:
      - { location: /, return: '200 "S4-wild-b \$host\n"' }
  # S5
  - listen: ["127.0.0.1:$G0"]
    server_name: ["mail.*"]
    locations:
      - { location: /, return: '200 "S5-mail-star \$host\n"' }
  # S6
  - listen: ["127.0.0.1:$G0"]
    server_name: ['~^(?<tenant>[a-z]+)\.example\.org$']
    locations:
      - { location: /, return: '200 "S6 tenant=\$tenant one=\$1 host=\$host\n"' }
      - { location: '~ ^/loc/([a-z]+)$', return: '200 "S6-loc one=\$1 tenant=\$tenant\n"' }
  # S7
  - listen: ["127.0.0.1:$G0"]
    server_name: ['~^[a-z]+\.example\.org$', '~^api\.(?<zone>[a-z]+)\.org$']
    locations:
      - { location: /, return: '200 "S7 zone=\$zone\n"' }
  # S8
  - listen: ["127.0.0.1:$G0"]
    server_name: [.example.net]
    locations:
      - { location: /, return: '200 "S8-dot \$host\n"' }
EOF

cat > "$TMP/conf.d/20-more.yaml" <<EOF
servers:
  # S10
  - listen: ["127.0.0.1:$G1 default_server"]
    server_name: [only1.test, example.com]
    locations:
      - { location: /, return: '200 "S10-root \$uri\n"' }
      - { location: /only/, return: '200 "S10-only \$uri\n"' }
  # S11
  - listen: ["127.0.0.1:$G0"]
    server_name: [hdr.test]
    add_header: { X-Cmp: "yes" }
    locations:
      - { location: "= /ok", return: '200 "S11-ok\n"' }
      - { location: "= /redir", return: "302 /ok" }
EOF

# ---------------------------------------------------------------- start both
"$NGINX_BIN" -t -e "$TMP/nginx-error.log" -p "$TMP" -c "$TMP/nginx.conf" >"$TMP/nginx-t.log" 2>&1 \
    || { cat "$TMP/nginx-t.log" "$TMP/nginx-error.log" >&2; die "nginx -t failed"; }
"$GINX" -t -c "$TMP/ginx.yaml" >"$TMP/ginx-t.log" 2>&1 \
    || { cat "$TMP/ginx-t.log" >&2; die "ginx -t failed"; }

"$NGINX_BIN" -e "$TMP/nginx-error.log" -p "$TMP" -c "$TMP/nginx.conf" \
    >"$TMP/nginx-stdout.log" 2>&1 &
NGINX_PID=$!
"$GINX" -c "$TMP/ginx.yaml" >"$TMP/ginx.log" 2>&1 &
GINX_PID=$!

CURL=(curl -s --noproxy '*' --max-time 5 --path-as-is)
wait_up() { # name pid port: up to ~10 s for any HTTP answer
    local name=$1 pid=$2 port=$3 i code
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || die "$name exited at start-up (logs: KEEP=1)"
        code=$("${CURL[@]}" --max-time 1 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")
        [ "$code" != 000 ] && return 0
        sleep 0.1
    done
    die "$name does not answer on 127.0.0.1:$port"
}
wait_up nginx "$NGINX_PID" "$N0"
wait_up nginx "$NGINX_PID" "$N1"
wait_up ginx "$GINX_PID" "$G0"
wait_up ginx "$GINX_PID" "$G1"

# ---------------------------------------------------------------- one request
# fetch OUTPREFIX PORT HOST TARGET OPTS...: writes OUT.code OUT.head OUT.body
#   HOST "-" sends no Host header, "EMPTY" an empty one.
#   opts: -0 (HTTP/1.0), --header 'LINE' (one more header; curl sends a
#         CR LF inside it as it is, which is how two Host headers are sent),
#         --big-header N (adds X-Big: N bytes)
fetch() {
    local out=$1 port=$2 host=$3 target=$4
    shift 4
    local args=()
    case "$host" in
        -) args+=(-H 'Host:') ;;
        EMPTY) args+=(-H 'Host;') ;;
        *) args+=(-H "Host: $host") ;;
    esac
    while [ $# -gt 0 ]; do
        case "$1" in
            -0) args+=(-0) ;;
            --header) args+=(-H "$2"); shift ;;
            --big-header) args+=(-H "X-Big: $(head -c "$2" /dev/zero | tr '\0' a)"); shift ;;
            *) die "bad option $1" ;;
        esac
        shift
    done
    : >"$out.head"
    : >"$out.body"
    "${CURL[@]}" "${args[@]}" -D "$out.head" -o "$out.body" -w '%{http_code}' \
        --request-target "$target" "http://127.0.0.1:$port/" >"$out.code" 2>/dev/null
    [ -s "$out.code" ] || echo 000 >"$out.code"
}

# The port numbers differ between the two servers: P0/P1 in what we compare.
normalise() { # file own0 own1
    sed -e "s/:$2\\b/:P0/g" -e "s/:$3\\b/:P1/g" "$1"
}
header_of() { # headfile name
    grep -i "^$2:" "$1" | head -1 | cut -d: -f2- | sed -e 's/^ *//' -e 's/\r$//'
}
is_nginx_page() { grep -q '<center>nginx' "$1"; }
show_body() { # file: one line, escaped, shortened
    if is_nginx_page "$1"; then
        printf '<nginx error page>'
        return
    fi
    local s
    s=$(LC_ALL=C cat -vT "$1"; echo x)
    s=${s%x}
    s=${s//$'\n'/\\n}
    printf '"%.100s"' "$s"
}

TOTAL=0; N_OK=0; N_DIFF=0; N_EXP=0
DIFFS=()
LINE=$(printf '%.0s-' $(seq 1 110))
printf '%-13s %-30s %s\n' RESULT CASE "REQUEST  =>  ANSWER (nginx)"
echo "$LINE"

# c NAME PORT(0|1) HOST TARGET [opts] [--hdr NAME] [--expect "REASON"]
c() {
    local name=$1 pidx=$2 host=$3 target=$4
    shift 4
    local opts=() hdr="" expect=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --hdr) hdr=$2; shift ;;
            --expect) expect=$2; shift ;;
            --header|--big-header) opts+=("$1" "$2"); shift ;;
            *) opts+=("$1") ;;
        esac
        shift
    done
    if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then return; fi
    local np gp
    if [ "$pidx" = 0 ]; then np=$N0; gp=$G0; else np=$N1; gp=$G1; fi
    local o="$TMP/out/$name"
    fetch "$o.n" "$np" "$host" "$target" "${opts[@]}"
    fetch "$o.g" "$gp" "$host" "$target" "${opts[@]}"
    local ns gs nl gl nh="" gh=""
    ns=$(cat "$o.n.code"); gs=$(cat "$o.g.code")
    nl=$(header_of "$o.n.head" location | sed -e "s/:$N0\\b/:P0/g" -e "s/:$N1\\b/:P1/g")
    gl=$(header_of "$o.g.head" location | sed -e "s/:$G0\\b/:P0/g" -e "s/:$G1\\b/:P1/g")
    normalise "$o.n.body" "$N0" "$N1" >"$o.n.nbody"
    normalise "$o.g.body" "$G0" "$G1" >"$o.g.nbody"
    if [ -n "$hdr" ]; then
        nh=$(header_of "$o.n.head" "$hdr"); gh=$(header_of "$o.g.head" "$hdr")
    fi
    local same=1
    [ "$ns" = "$gs" ] || same=0
    [ "$nl" = "$gl" ] || same=0
    [ "$nh" = "$gh" ] || same=0
    # nginx's own error pages name nginx: only ginx's status matters there.
    if ! is_nginx_page "$o.n.nbody" && ! cmp -s "$o.n.nbody" "$o.g.nbody"; then same=0; fi

    local req="$host $target"
    [ "$pidx" = 1 ] && req=":P1 $req"
    [ "${#opts[@]}" -gt 0 ] && req="$req ${opts[*]//$'\r\n'/\\r\\n}"
    [ "${#req}" -gt 70 ] && req="${req:0:60}...(${#req} chars)"
    ans() { # code loc hdrval body
        local a="$1"
        [ "$a" = 000 ] && a="000 (no HTTP answer: connection closed or timed out)"
        [ -n "$2" ] && a="$a Location: $2"
        [ -n "$hdr" ] && a="$a $hdr: ${3:-(none)}"
        printf '%s %s' "$a" "$(show_body "$4")"
    }
    local na ga
    na=$(ans "$ns" "$nl" "$nh" "$o.n.nbody")
    ga=$(ans "$gs" "$gl" "$gh" "$o.g.nbody")
    TOTAL=$((TOTAL + 1))
    local result
    if [ "$same" = 1 ]; then
        result=OK; N_OK=$((N_OK + 1))
        [ -n "$expect" ] && result="OK(no diff)"
    elif [ -n "$expect" ]; then
        result=EXPECTED-DIFF; N_EXP=$((N_EXP + 1))
    else
        result=DIFF; N_DIFF=$((N_DIFF + 1)); DIFFS+=("$name")
    fi
    printf '%-13s %-30s %s  =>  %s\n' "$result" "$name" "$req" "$na"
    if [ "$same" = 0 ]; then
        printf '%13s %-30s nginx: %s\n' "" "" "$na"
        printf '%13s %-30s ginx:  %s\n' "" "" "$ga"
        [ -n "$expect" ] && printf '%13s %-30s why:   %s\n' "" "" "$expect"
    fi
}

E=example.com

# --- server choice -------------------------------------------------------
c srv-first                0 first.test          /
c srv-exact                0 $E                  /
c srv-exact-2nd-name       0 www.example.com     /
c srv-host-case            0 WWW.Example.COM     /
c srv-host-port            0 www.example.com:8888 /
c srv-host-case-port       0 First.TEST:18         /
c srv-host-trailing-dot    0 example.com.        /retvars
c srv-wild-head            0 x.example.com       /
c srv-wild-longest         0 x.b.example.com     /
c srv-wild-not-bare        0 b.example.com       /
c srv-wild-head-beats-tail 0 mail.example.com    /
c srv-wild-tail            0 mail.other.io       /
c srv-wild-tail-deep       0 mail.b.example.com  /
c srv-regex-named          0 acme.example.org    /
c srv-regex-case           0 ACME.Example.Org    /
c srv-regex-loc-captures   0 acme.example.org    /loc/abc
c srv-regex-order          0 api.eu.org          /
c srv-dot-form-bare        0 example.net         /
c srv-dot-form-sub         0 sub.example.net     /
c srv-dot-form-deep        0 deep.sub.example.net /
c srv-unknown-default      0 nobody.test         /
c srv-ip-host              0 127.0.0.1           /retvars
c srv-ipv6-host            0 '[::1]:8080'        /retvars
c srv-absolute-uri         0 first.test          http://www.example.com/exact
c srv-absolute-uri-port    0 $E                  http://First.Test:9999/x
c srv-p1-default           1 nobody.test         /
c srv-p1-not-on-port       1 first.test          /
c srv-p1-own-name          1 only1.test          /only/x
c srv-p1-conflict-first    1 $E                  /
c srv-no-host-http11       0 -                   /
c srv-no-host-http10       0 -                   /retvars -0
c srv-empty-host           0 EMPTY               /
c srv-bad-host-dots        0 'a..b'              /
c srv-bad-host-slash       0 'bad/host'          /
c srv-bad-host-2dots-end   0 'example.com..'     /
c srv-host-leading-dot     0 '.example.com'      /retvars
c srv-host-port-letters    0 'example.com:abc'   /retvars
c srv-host-empty-port      0 'example.com:'      /retvars
c srv-host-userinfo        0 'user@example.com'  /retvars
c srv-dup-host             0 $E /  --header $'X-Pad: 1\r\nHost: first.test'

# --- location precedence -------------------------------------------------
c loc-exact                0 $E /exact
c loc-exact-args           0 $E '/exact?x=1'
c loc-prefix-longer        0 $E /exact/more
c loc-prefix-same-start    0 $E /exactly
c loc-regex-beats-prefix   0 $E /exact.php
c loc-longest-prefix       0 $E /static/a
c loc-longest-prefix-2     0 $E /static/long/prefix/x
c loc-regex-beats-longer   0 $E /static/long/prefix/x.css
c loc-noregex-stops        0 $E /assets/x.php
c loc-noregex-no-slash     0 $E /assets
c loc-noregex-not-longest  0 $E /assets/deep/x.php
c loc-noregex-longer-plain 0 $E /assets/deep/x
c loc-noregex-longest      0 $E /pre/long/x.php
c loc-noregex-shorter-plain 0 $E /pre/x.php
c loc-regex-config-order   0 $E /order/a.php
c loc-regex-second         0 $E /order/a
c loc-regex-caseless       0 $E /img/A.PNG
c loc-regex-case-sensitive 0 $E /x.PHP
c loc-regex-captures       0 $E /users/42
c loc-regex-captures-slash 0 $E /users/42/
c loc-regex-on-decoded     0 $E /users/%34%32
c loc-prefix-case          0 $E /STATIC/a
c loc-regex-non-utf8       0 $E /static/%FF.css
c loc-regex-caseless-ascii 0 $E /kase/K
c loc-regex-caseless-kelvin 0 $E /kase/%E2%84%AA
c loc-prefix-needs-slash   1 only1.test /only
c loc-404-server-no-root   0 hdr.test /missing

# --- trailing slash ------------------------------------------------------
c slash-redirect           0 $E /app
c slash-redirect-args      0 $E '/app?x=1&y=2'
c slash-redirect-host-port 0 Example.COM:8888 /app
c slash-redirect-encoded   0 $E '/ap%70?a=1'
c slash-redirect-dotdot    0 $E /x/../app
c slash-redirect-exact     0 $E /exact-dir
c slash-redirect-p1        1 $E /app
c slash-before-regex       0 $E /app2
c slash-plain-prefix-wins  0 $E /app3
c slash-not-for-return     0 $E /static
c slash-not-for-regex      0 $E /rx-dir
c slash-proxy-502          0 $E /app/x
c slash-http10-no-host     0 - /app -0

# --- normalisation ---------------------------------------------------------
c norm-double-slash        0 $E //static//a
c norm-dot                 0 $E /static/./a
c norm-dotdot              0 $E /x/../static/a
c norm-encoded-dotdot      0 $E /x/%2e%2e/static/a
c norm-encoded-dot         0 $E /static/%2e/a
c norm-encoded-slash       0 $E /static%2Fa
c norm-encoded-slash-dots  0 $E '/static/a%2F..%2Fb'
c norm-trailing-dotdot     0 $E /static/a/..
c norm-encoded-letters     0 $E /st%61tic/%41
c norm-encoded-space       0 $E /a%20b
c norm-encoded-question    0 $E /static/x%3Fy
c norm-plus                0 $E /static/a+b
c norm-double-encoded      0 $E /%252e
c norm-utf8                0 $E /static/%C3%A9
c norm-request-uri-raw     0 $E '/%72etvars?x=%41'
c norm-above-root          0 $E /../x
c norm-above-root-deep     0 $E /a/b/../../../x
c norm-above-root-encoded  0 $E /%2e%2e/x
c norm-bad-escape          0 $E /%zz
c norm-short-escape        0 $E /a%2
c norm-nul                 0 $E /a%00b
c norm-not-a-path          0 $E static
c norm-fragment            0 $E '/retvars#frag' \
    --expect "hyper's URI type drops a #fragment, so \$request_uri lacks it (clients never send one)"

# --- rewrites --------------------------------------------------------------
c rw-last                  0 $E /r-last/abc
c rw-last-args             0 $E '/r-last/abc?y=2'
c rw-last-regex-research   0 $E /r-last/x.php
c rw-last-decoded          0 $E /r-last/a%20b
c rw-last-captured-question 0 $E '/r-last/a%3Fb?y=2'
c rw-last-to-slash-redirect 0 $E '/r-toapp/x?y=2'
c rw-target-direct         0 $E /target/zzz
c rw-break-stays           0 $E /r-break/abc
c rw-break-then-return     0 $E /r-break-ret/abc
c rw-noflag-then-return    0 $E /r-none/abc
c rw-noflag-research       0 $E /r-none2/abc
c rw-noflag-chain          0 $E /r-chain/abc
c rw-nomatch               0 $E /r-nomatch/abc
c rw-only-no-match         0 $E /only-rewrite/b
c rw-only-match            0 $E /only-rewrite/a
c rw-redirect-302          0 $E '/r-redir/abc?y=2'
c rw-redirect-encoded      0 $E /r-redir/a%20b
c rw-redirect-captured-question 0 $E '/r-redir/a%3Fb?y=2'
c rw-permanent-301         0 $E /r-perm/abc
c rw-https-302             0 $E '/r-https/p?y=2'
c rw-https-drop-args       0 $E '/r-https-drop/p?y=2'
c rw-args-append           0 $E '/r-args/a?y=2'
c rw-args-only-new         0 $E /r-args/a
c rw-args-drop             0 $E '/r-drop/a?y=2'
c rw-redirect-args-append  0 $E '/r-redir-args/a?y=2'
c rw-redirect-args-drop    0 $E '/r-redir-drop/a?y=2'
c rw-loop-500              0 $E /loop/x
c rw-10-cycles-ok          0 $E /chain/a/a/a/a/a/a/a/a/a/a/end
c rw-11-cycles-500         0 $E /chain/a/a/a/a/a/a/a/a/a/a/a/end
c rw-host-case-redirect    0 Example.COM:8888 /r-redir/abc

# --- return ------------------------------------------------------------------
c ret-204                  0 $E /ret204
c ret-200-empty            0 $E /ret200empty
c ret-302-path             0 $E /ret302
c ret-302-p1               1 $E /ret302
c ret-302-host-case-port   0 WWW.Example.COM:8888 /ret302
c ret-302-vars             0 $E '/ret302vars?a=1'
c ret-301-absolute         0 $E /ret301abs
c ret-307                  0 $E /ret307
c ret-302-relative         0 $E /retrel
c ret-404-text             0 $E /ret404
c ret-403                  0 $E /ret403
c ret-444                  0 $E /ret444
c ret-escapes              0 $E /retesc
c ret-vars                 0 $E '/retvars?x=5&y=6'
c ret-vars-arg-case        0 $E '/retvars?X=up'
c ret-vars-no-args         0 $E /retvars
c ret-http10-no-host-redir 0 - /ret302 -0

# --- access ------------------------------------------------------------------
c acc-deny-proxy-403       0 $E /deny-proxy/x
c acc-allow-proxy          0 $E /allow-proxy/x
c acc-deny-other-net       0 $E /deny-other/x
c acc-deny-then-return     0 $E /deny-ret/x
c acc-deny-rewrite-first   0 $E /deny-rewrite/x

# --- documented differences and headers --------------------------------------
c hdr-add-header-200       0 hdr.test /ok --hdr X-Cmp
c hdr-add-header-302       0 hdr.test /redir --hdr X-Cmp
c hdr-add-header-404       0 hdr.test /missing --hdr X-Cmp \
    --expect "ginx adds add_header to every answer (nginx needs 'always')"
c big-header               0 $E / --big-header 40000 \
    --expect "ginx answers 431 for oversized headers, nginx 400"
c big-uri-414              0 $E "/static/$(head -c 40000 /dev/zero | tr '\0' a)"

echo "$LINE"
kill -0 "$NGINX_PID" 2>/dev/null || echo "WARNING: nginx exited during the run" >&2
kill -0 "$GINX_PID" 2>/dev/null || echo "WARNING: ginx exited during the run (KEEP=1 keeps its log)" >&2
echo "$TOTAL cases: $N_OK OK, $N_EXP EXPECTED-DIFF, $N_DIFF DIFF  (nginx $("$NGINX_BIN" -v 2>&1 | sed 's/.*nginx\///'), ginx $GINX)"
if [ "$N_DIFF" -gt 0 ]; then
    echo "DIFF: ${DIFFS[*]}"
    exit 1
fi
exit 0
