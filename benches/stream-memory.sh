#!/usr/bin/env bash
# Memory and throughput of ginx while it streams large bodies both ways.
#
# Builds ginx in release, starts a Python 3 upstream and ginx on 127.0.0.1,
# uploads STREAM_BYTES (default 1 GiB) through ginx with curl and downloads as
# much through it, sampling ginx's VmRSS every 100 ms; then runs the same two
# transfers straight to the upstream for a baseline. Prints a markdown table.
#
#   benches/stream-memory.sh                 # 1 GiB each way
#   STREAM_BYTES=268435456 benches/stream-memory.sh
#
# Honours CARGO_TARGET_DIR. Not run by `cargo test` / `cargo bench`.
# Needs: cargo, python3, curl, truncate. Everything it starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BYTES=${STREAM_BYTES:-1073741824}
MAX_TIME=${MAX_TIME:-600}          # seconds, per transfer
SAMPLE_LIMIT=$((MAX_TIME * 10 + 100)) # samples at 100 ms, per phase

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ginx-stream-memory.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }

# --- build ---------------------------------------------------------------
log "building ginx (release) in $TARGET_DIR ..."
(cd "$ROOT" && cargo build --release --bin ginx --quiet)
GINX="$TARGET_DIR/release/ginx"
[ -x "$GINX" ] || { log "no binary at $GINX"; exit 1; }

# --- upstream ------------------------------------------------------------
cat >"$WORK/upstream.py" <<'PY'
import http.server, socketserver, sys, urllib.parse

CHUNK = 1 << 20
ZEROS = memoryview(bytes(CHUNK))

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _discard_body(self):
        """Read and drop the request body in 1 MiB pieces; return its size."""
        total = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return total
                while size:
                    got = len(self.rfile.read(min(size, CHUNK)))
                    if not got:
                        raise ConnectionError("body cut short")
                    size -= got
                    total += got
                self.rfile.readline()
        remaining = int(self.headers.get("Content-Length", "0"))
        while remaining:
            got = len(self.rfile.read(min(remaining, CHUNK)))
            if not got:
                raise ConnectionError("body cut short")
            remaining -= got
            total += got
        return total

    def _answer(self, text):
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self._answer("%d\n" % self._discard_body())

    do_PUT = do_POST

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/big":
            return self._answer("ok\n")
        n = int(urllib.parse.parse_qs(url.query).get("n", ["0"])[0])
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        while n:
            piece = min(n, CHUNK)
            self.wfile.write(ZEROS[:piece])
            n -= piece

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

server = Server(("127.0.0.1", 0), Handler)
with open(sys.argv[1], "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
PY
python3 "$WORK/upstream.py" "$WORK/upstream.port" 2>"$WORK/upstream.log" &
PIDS+=($!)
for _ in $(seq 1 100); do
    [ -s "$WORK/upstream.port" ] && break
    sleep 0.1
done
[ -s "$WORK/upstream.port" ] || { log "upstream did not start"; cat "$WORK/upstream.log" >&2; exit 1; }
UP_PORT=$(cat "$WORK/upstream.port")

# --- ginx ----------------------------------------------------------------
GINX_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/ginx.yaml" <<YAML
error_log: { level: warn, format: text }
access_log: { path: "off" }
http:
  client_max_body_size: 2g
upstreams:
  up:
    servers: ["127.0.0.1:$UP_PORT"]
servers:
  - listen: ["127.0.0.1:$GINX_PORT"]
    locations:
      - location: /
        proxy_pass: http://up
YAML
"$GINX" -c "$WORK/ginx.yaml" 2>"$WORK/ginx.log" &
GINX_PID=$!
PIDS+=("$GINX_PID")
ready=""
for _ in $(seq 1 100); do
    if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$GINX_PORT/big?n=1"; then
        ready=1
        break
    fi
    kill -0 "$GINX_PID" 2>/dev/null || break
    sleep 0.1
done
[ -n "$ready" ] || { log "ginx did not start"; cat "$WORK/ginx.log" >&2; exit 1; }

# --- measuring -------------------------------------------------------------
kib() { awk -v k="$1" '$1 == k":" { print $2 }' "/proc/$GINX_PID/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# Sample VmRSS (KiB) every 100 ms into FILE until killed or SAMPLE_LIMIT samples.
sampler() {
    local out=$1 i=0
    while [ "$i" -lt "$SAMPLE_LIMIT" ] && kill -0 "$GINX_PID" 2>/dev/null; do
        kib VmRSS >>"$out" || true
        sleep 0.1
        i=$((i + 1))
    done
}

# Reset VmHWM so each phase reports its own peak (Linux: clear_refs 5).
reset_hwm() { echo 5 >"/proc/$GINX_PID/clear_refs" 2>/dev/null || true; }

truncate -s "$BYTES" "$WORK/payload.bin" # sparse: no disk, zeroes

# transfer KIND URL -> prints "seconds bytes"; checks the byte count.
transfer() {
    local kind=$1 url=$2 out
    if [ "$kind" = upload ]; then
        out=$(curl -sS --fail --max-time "$MAX_TIME" -H 'Expect:' -T "$WORK/payload.bin" \
            -o "$WORK/upload.answer" -w '%{time_total} %{size_upload}' "$url")
        local answered
        answered=$(tr -d '\n' <"$WORK/upload.answer")
        [ "$answered" = "$BYTES" ] || { log "upstream counted $answered bytes, not $BYTES"; exit 1; }
    else
        out=$(curl -sS --fail --max-time "$MAX_TIME" -o /dev/null \
            -w '%{time_total} %{size_download}' "$url?n=$BYTES")
    fi
    [ "${out#* }" = "$BYTES" ] || { log "$kind moved ${out#* } bytes, not $BYTES"; exit 1; }
    echo "${out% *}"
}

rate() { awk -v b="$BYTES" -v s="$1" 'BEGIN { printf "%.0f", b / 1048576 / s }'; }

# phase NAME KIND URL: a transfer through ginx with sampling.
declare -A SECS PEAK HWM
START_RSS=$(kib VmRSS)
START_HWM=$(kib VmHWM)
phase() {
    local kind=$1 url=$2 samples="$WORK/rss.$1" spid
    : >"$samples"
    reset_hwm
    sampler "$samples" &
    spid=$!
    PIDS+=("$spid")
    SECS[$kind]=$(transfer "$kind" "$url")
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    kib VmRSS >>"$samples"
    PEAK[$kind]=$(sort -n "$samples" | tail -1)
    HWM[$kind]=$(kib VmHWM)
}

GIB=$(awk -v b="$BYTES" 'BEGIN { printf "%.2f", b / 1073741824 }')
log "upload ${GIB} GiB through ginx ..."
phase upload "http://127.0.0.1:$GINX_PORT/upload"
log "download ${GIB} GiB through ginx ..."
phase download "http://127.0.0.1:$GINX_PORT/big"
END_RSS=$(kib VmRSS)

log "baseline: the same transfers straight to the upstream ..."
DIRECT_UP=$(transfer upload "http://127.0.0.1:$UP_PORT/upload")
DIRECT_DOWN=$(transfer download "http://127.0.0.1:$UP_PORT/big")

# --- report ----------------------------------------------------------------
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo
echo "ginx stream memory: $GIB GiB each way, $(nproc) CPUs ($CPU), 127.0.0.1, curl and a Python upstream"
echo "ginx RSS at start (idle, after one tiny request): $(mib "$START_RSS") MiB (VmHWM $(mib "$START_HWM") MiB); after both transfers: $(mib "$END_RSS") MiB"
echo
echo "| transfer | path | MiB/s | seconds | ginx peak VmRSS (100 ms samples) | ginx VmHWM in phase |"
echo "|---|---|---:|---:|---:|---:|"
for kind in upload download; do
    echo "| $kind | through ginx | $(rate "${SECS[$kind]}") | ${SECS[$kind]} | $(mib "${PEAK[$kind]}") MiB | $(mib "${HWM[$kind]}") MiB |"
done
echo "| upload | direct to upstream | $(rate "$DIRECT_UP") | $DIRECT_UP | – | – |"
echo "| download | direct to upstream | $(rate "$DIRECT_DOWN") | $DIRECT_DOWN | – | – |"
if [ -s "$WORK/ginx.log" ]; then
    echo
    echo "ginx logged (warn and above):"
    head -20 "$WORK/ginx.log"
fi
