#!/usr/bin/env bash
# TLS scan of ginx's TLS listener with testssl.sh.
#
# Makes a throwaway CA and two leaves (ECDSA P-256 for a.test, RSA 2048 for
# b.test), starts ginx on 127.0.0.1 with two TLS servers on one port (a.test
# the default) and a TLSv1.3-only server on a second port, then runs testssl:
#   1. 127.0.0.1:PORT                      (no SNI: the default a.test, ECDSA)
#   2. https://b.test:PORT --ip 127.0.0.1   (SNI b.test: the RSA certificate)
#      both with -p -P -s -S -h -U -E (protocols, server preference, cipher
#      categories, server defaults, headers, vulnerabilities, ciphers per proto)
#   3. -p -E against the TLSv1.3-only port (a.test again)
# and prints a summary: protocols offered, cipher suites per protocol, and
# every finding of severity MEDIUM, HIGH or CRITICAL from testssl's JSON.
#
#   benches/tls-scan.sh
#   TLS_SCAN_KEEP=/tmp/scan-out benches/tls-scan.sh   # keep the JSON/logs there
#
# Exit status: 0 clean; 1 a weak protocol (anything but TLS 1.2/1.3, or TLS 1.2
# on the 1.3-only port) or a cipher graded weak is offered; 2 setup or scan
# failure. MEDIUM+ findings alone (e.g. artefacts of the throwaway
# certificates) are printed but do not fail the run.
#
# Installs testssl.sh, openssl, curl and jq with apt-get if missing (needs
# root). Builds ginx in release if the binary is missing; honours
# CARGO_TARGET_DIR (default: the repo's target/). Talks to 127.0.0.1 only.
# Everything it starts is stopped on exit, and its temp dir removed.
# Not run by `cargo test` / `cargo bench`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
GINX="$TARGET_DIR/release/ginx"
SCAN_TIMEOUT=${TLS_SCAN_TIMEOUT:-900}   # seconds, per testssl run
KEEP=${TLS_SCAN_KEEP:-}

log() { printf '%s\n' "$*" >&2; }
die() { log "tls-scan: $*"; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ginx-tls-scan.XXXXXX")
GINX_PID=
cleanup() {
    if [ -n "$GINX_PID" ]; then
        kill "$GINX_PID" 2>/dev/null || true
        wait "$GINX_PID" 2>/dev/null || true
    fi
    if [ -n "$KEEP" ]; then
        mkdir -p "$KEEP" && cp -f "$WORK"/*.json "$WORK"/*.log "$KEEP"/ 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools ---------------------------------------------------------------
need=()
command -v testssl >/dev/null 2>&1 || need+=(testssl.sh)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v jq >/dev/null 2>&1 || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
    log "installing: ${need[*]}"
    SUDO=
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq >&2 || die "apt-get update failed"
    if [[ " ${need[*]} " == *" testssl.sh "* ]] &&
        ! apt-cache policy testssl.sh 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        die "no testssl.sh package in the apt sources"
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >&2 ||
        die "apt-get install ${need[*]} failed"
fi
command -v testssl >/dev/null 2>&1 || die "testssl not found after install"

# --- build ---------------------------------------------------------------
if [ ! -x "$GINX" ]; then
    log "building ginx (release) in $TARGET_DIR ..."
    (cd "$ROOT" && cargo build --release --bin ginx --quiet) || die "build failed"
fi
[ -x "$GINX" ] || die "no binary at $GINX"

# --- certificates --------------------------------------------------------
log "making a throwaway CA and leaves in $WORK ..."
(
    cd "$WORK"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout ca.key -out ca.pem -days 30 -subj "/CN=ginx tls-scan throwaway CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    # 90 days: testssl warns (MEDIUM/HIGH) on certificates expiring within 60.
    leaf() { # name keyalg-args... ; keyUsage
        local name=$1 ku=$2; shift 2
        openssl req -new -newkey "$@" -nodes -keyout "$name.key" -out "$name.csr" \
            -subj "/CN=$name" 2>/dev/null
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,$ku" \
            "extendedKeyUsage=serverAuth" "subjectAltName=DNS:$name" >"$name.ext"
        openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
            -days 90 -sha256 -extfile "$name.ext" -out "$name.pem" 2>/dev/null
    }
    leaf a.test digitalSignature ec -pkeyopt ec_paramgen_curve:P-256
    leaf b.test digitalSignature,keyEncipherment rsa:2048
) || die "openssl could not make the certificates"

# --- ports ---------------------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
    local i p
    for i in $(seq 1 50); do
        p=$((20000 + RANDOM % 40000))
        if port_free "$p" && [ "$p" != "${1:-}" ]; then
            echo "$p"
            return 0
        fi
    done
    return 1
}
PORT=$(pick_port) || die "no free port"
PORT13=$(pick_port "$PORT") || die "no free port"

# --- ginx ----------------------------------------------------------------
cat >"$WORK/ginx.yaml" <<EOF
worker_threads: 2
access_log: { path: "off" }
error_log: { level: warn }
servers:
  - listen: ["127.0.0.1:$PORT tls default_server"]
    server_name: [a.test]
    tls: { certificate: a.test.pem, key: a.test.key }
    locations: [{ location: /, return: '200 "ok"' }]
  - listen: ["127.0.0.1:$PORT tls"]
    server_name: [b.test]
    tls: { certificate: b.test.pem, key: b.test.key }
    locations: [{ location: /, return: '200 "ok"' }]
  - listen: ["127.0.0.1:$PORT13 tls"]
    server_name: [a.test]
    tls: { certificate: a.test.pem, key: a.test.key, protocols: [TLSv1.3] }
    locations: [{ location: /, return: '200 "ok"' }]
EOF

log "starting ginx on 127.0.0.1:$PORT and 127.0.0.1:$PORT13 (TLSv1.3 only) ..."
"$GINX" -c "$WORK/ginx.yaml" >"$WORK/ginx.log" 2>&1 &
GINX_PID=$!

ready() {
    curl -s --max-time 2 --cacert "$WORK/ca.pem" \
        --resolve "$2:$1:127.0.0.1" "https://$2:$1/" 2>/dev/null | grep -qx ok
}
up=
for _ in $(seq 1 100); do
    kill -0 "$GINX_PID" 2>/dev/null || break
    if ready "$PORT" a.test && ready "$PORT" b.test && ready "$PORT13" a.test; then
        up=1
        break
    fi
    sleep 0.1
done
if [ -z "$up" ]; then
    cat "$WORK/ginx.log" >&2
    die "ginx did not answer on 127.0.0.1:$PORT / $PORT13"
fi

# --- scans ---------------------------------------------------------------
# --add-ca trusts the throwaway CA, so "chain of trust" reflects ginx rather
# than the test PKI. --warnings off keeps testssl from asking questions.
COMMON=(--quiet --color 0 --warnings off --sneaky --nodns none
    --connect-timeout 10 --openssl-timeout 10 --add-ca "$WORK/ca.pem")
FULL=(-p -P -s -S -h -U -E)

scan() { # name uri args...
    local name=$1 uri=$2 rc=0
    shift 2
    log "testssl $* $uri  (log: $name.log)"
    timeout "$SCAN_TIMEOUT" testssl "${COMMON[@]}" --jsonfile-pretty "$WORK/$name.json" \
        "$@" "$uri" >"$WORK/$name.log" 2>&1 || rc=$?
    # testssl's own exit code counts findings in some versions; only a missing
    # or empty JSON, or the timeout, is a failure of the scan.
    if [ "$rc" -eq 124 ]; then
        die "testssl timed out after ${SCAN_TIMEOUT}s on $uri"
    fi
    if ! jq -e '.scanResult | length > 0' "$WORK/$name.json" >/dev/null 2>&1; then
        tail -20 "$WORK/$name.log" >&2
        die "testssl produced no results for $uri (exit $rc)"
    fi
}

scan a-default "127.0.0.1:$PORT" "${FULL[@]}"
scan b-sni "https://b.test:$PORT" --ip 127.0.0.1 "${FULL[@]}"
scan tls13-only "https://a.test:$PORT13" --ip 127.0.0.1 -p -E

# --- summary -------------------------------------------------------------
# Every finding of a scan as one flat list of {id, severity, finding}.
findings() {
    jq -c '[.scanResult[] | to_entries[] | select(.value | type == "array")
            | .value[] | select(type == "object" and has("id"))
            | {id, severity: (.severity // ""), finding: (.finding // "")}]' "$1"
}

# A hint for the findings this setup is known to produce; the reading is the
# reader's, the hint only says where the finding comes from.
note() {
    case "$1" in
    *" cert_trust: "*) echo "  [scan by IP, no SNI: name check of the test setup]" ;;
    *" cert_revocation: "* | *" OCSP_"* | *" cert_chain_of_trust: "* | *" cert_expirationStatus: "*)
        echo "  [throwaway test certificate]" ;;
    *" cipher_order: "*) echo "  [ginx/rustls lets the client pick among the suites above]" ;;
    *" security_headers: "* | *" HSTS: "*) echo "  [response headers: configuration (add_header), not TLS]" ;;
    esac
}

FAIL=0
summarize() { # name label allowed-protocols...
    local name=$1 label=$2
    shift 2
    local allowed=" $* " all p f offered=() weak
    all=$(findings "$WORK/$name.json")
    echo "== $label"

    for p in SSLv2 SSLv3 TLS1 TLS1_1 TLS1_2 TLS1_3; do
        f=$(jq -r --arg id "$p" '.[] | select(.id == $id) | .finding' <<<"$all" | head -1)
        case "$f" in
        "") ;;
        "not offered"* | *"not offered"*) ;;
        offered*)
            offered+=("$p")
            if [[ "$allowed" != *" $p "* ]]; then
                echo "   WEAK: protocol $p offered ($f)"
                FAIL=1
            fi
            ;;
        *) echo "   note: protocol $p: $f" ;;
        esac
    done
    echo "   protocols offered: ${offered[*]:-none}"

    # Ciphers per protocol (-E): ids cipher-<proto>_x<hex>.
    for p in tls1 tls1_1 tls1_2 tls1_3; do
        local names
        names=$(jq -r --arg p "cipher-${p}_x" '.[] | select(.id | startswith($p))
                | .finding' <<<"$all" | awk '{print $NF}' | paste -sd' ' -)
        [ -n "$names" ] && echo "   ciphers $p: $names"
    done

    # Cipher categories (-s) offered that are graded weak (AVERAGE = CBC
    # without AEAD counts too); any single suite (-E) testssl rates MEDIUM+.
    # Not cipher_order: that is about who picks, reported below.
    weak=$(jq -r '.[] | select(
              ((.id | test("^cipherlist_(NULL|aNULL|EXPORT|LOW|3DES_IDEA|OBSOLETED|AVERAGE)$"))
                and (.finding | test("^offered")))
              or ((.id | startswith("cipher-")) and
                  (.severity | test("^(MEDIUM|HIGH|CRITICAL)$"))))
           | "\(.id) [\(.severity)] \(.finding)"' <<<"$all")
    if [ -n "$weak" ]; then
        sed 's/^/   WEAK cipher: /' <<<"$weak"
        FAIL=1
    fi

    local bad
    bad=$(jq -r '.[] | select(.severity | test("^(MEDIUM|HIGH|CRITICAL)$"))
                 | "\(.severity) \(.id): \(.finding)"' <<<"$all")
    if [ -n "$bad" ]; then
        echo "   MEDIUM+ findings:"
        local line
        while IFS= read -r line; do
            echo "     $line$(note "$line")"
        done <<<"$bad"
    else
        echo "   MEDIUM+ findings: none"
    fi
}

echo
echo "ginx TLS scan (testssl $(testssl --version 2>/dev/null | sed -n 's/.*testssl *\([0-9][^ ]*\).*/\1/p' | head -1))"
summarize a-default "127.0.0.1:$PORT, no SNI (default a.test, ECDSA P-256)" TLS1_2 TLS1_3
summarize b-sni "b.test:$PORT via SNI (RSA 2048)" TLS1_2 TLS1_3
summarize tls13-only "a.test:$PORT13, protocols: [TLSv1.3]" TLS1_3
if [ "$FAIL" -ne 0 ]; then
    echo "RESULT: FAIL (weak protocol or cipher offered)"
    exit 1
fi
echo "RESULT: OK (TLS 1.2/1.3 only, no weak ciphers)"
