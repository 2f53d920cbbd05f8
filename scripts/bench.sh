#!/usr/bin/env bash
# Benchmark: builds release binaries, starts a fresh 4-drive ringstore server on a temp folder and
# runs ringstore-loadgen PUT then GET phases for several object sizes, then prints a summary table.
#
# Environment overrides:
#   BENCH_DURATION     seconds per phase (default 10)
#   BENCH_SIZES        space/comma separated "size[:concurrency]" list
#                      (default "4KiB:32 1MiB:32 64MiB:4"; concurrency defaults to BENCH_CONCURRENCY)
#   BENCH_CONCURRENCY  concurrency for sizes given without one (default 32)
#   BENCH_PORT         server port (default: a random free port)
#   BENCH_TMPDIR       parent folder of the temporary data folder (default $TMPDIR or /tmp)
#   ENDPOINT           if set, no server is started: benchmark this endpoint instead; credentials
#                      then come from RINGSTORE_ACCESS_KEY/RINGSTORE_SECRET_KEY (or AWS_* variables)
#   LOADGEN_ARGS       extra arguments passed to every ringstore-loadgen run
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
DURATION="${BENCH_DURATION:-10}"
SIZES="${BENCH_SIZES:-4KiB:32 1MiB:32 64MiB:4}"
DEFAULT_CONC="${BENCH_CONCURRENCY:-32}"
SERVER_PID=""
WORK="$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/ringstore-bench.XXXXXX")"

cleanup() {
    local rc=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "bench: $*" >&2; }

# http_ok HOST PORT PATH: true if GET returns 200 (curl if present, else bash /dev/tcp).
http_ok() {
    if command -v curl >/dev/null 2>&1; then
        [[ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$1:$2$3" 2>/dev/null)" == 200 ]]
        return
    fi
    (
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf 'GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$3" "$1" "$2" >&3
        IFS= read -r -t 2 line <&3 || exit 1
        [[ "$line" == "HTTP/1."?" 200"* ]]
    ) 2>/dev/null
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

cd "$ROOT"
if [[ -n "${ENDPOINT:-}" ]]; then
    log "building loadgen (release)"
    cargo build --release -p ringstore-loadgen
else
    log "building server and loadgen (release)"
    cargo build --release -p ringstore-server -p ringstore-loadgen
fi
LOADGEN="$TARGET_DIR/release/ringstore-loadgen"

if [[ -z "${ENDPOINT:-}" ]]; then
    PORT="${BENCH_PORT:-}"
    if [[ -z "$PORT" ]]; then
        for _ in $(seq 50); do
            PORT=$((20000 + RANDOM % 20000))
            port_in_use "$PORT" || break
        done
    fi
    RINGSTORE_ACCESS_KEY="RS$(random_hex 9 | tr 'a-f' 'A-F')"
    RINGSTORE_SECRET_KEY="$(random_hex 20)"
    export RINGSTORE_ACCESS_KEY RINGSTORE_SECRET_KEY
    mkdir -p "$WORK"/d{1,2,3,4}
    log "starting server on 127.0.0.1:$PORT (data in $WORK)"
    "$TARGET_DIR/release/ringstore" server \
        --data "$WORK/d1" --data "$WORK/d2" --data "$WORK/d3" --data "$WORK/d4" \
        --address "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    ready=""
    for _ in $(seq 300); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "server exited early; log:"
            tail -n 50 "$WORK/server.log" >&2
            exit 1
        fi
        if http_ok 127.0.0.1 "$PORT" /health/ready; then ready=1; break; fi
        sleep 0.1
    done
    if [[ -z "$ready" ]]; then
        log "server not ready after 30s; log:"
        tail -n 50 "$WORK/server.log" >&2
        exit 1
    fi
    ENDPOINT="http://127.0.0.1:$PORT"
fi

# field(key): the value of "key" in the JSON line being read (no jq needed)
AWK_FIELD='
function field(key,    re) {
    re = "\"" key "\":(\"[^\"]*\"|[^,}]*)"
    if (!match($0, re)) return ""
    v = substr($0, RSTART + length(key) + 3, RLENGTH - length(key) - 3)
    gsub(/"/, "", v)
    return v
}
'

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
failed=0
for entry in ${SIZES//,/ }; do
    size="${entry%%:*}"
    conc="$DEFAULT_CONC"
    [[ "$entry" == *:* ]] && conc="${entry#*:}"
    log "size $size, concurrency $conc, ${DURATION}s per phase"
    out="$WORK/run-$size.out"
    rc=0
    # shellcheck disable=SC2086
    "$LOADGEN" --endpoint "$ENDPOINT" --size "$size" --concurrency "$conc" --duration "$DURATION" \
        --ops put,get --json ${LOADGEN_ARGS:-} | tee "$out" | awk '!/^\{/ { print; fflush() }' || rc=$?
    grep '^{' "$out" >>"$RESULTS" || true
    if [[ "$rc" -ne 0 ]]; then
        log "loadgen failed for size $size (exit $rc)"
        failed=1
    fi
done

if [[ -n "$SERVER_PID" ]] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "server died during the benchmark; log:"
    tail -n 50 "$WORK/server.log" >&2
    failed=1
fi

echo
echo "ringstore benchmark: endpoint $ENDPOINT, ${DURATION}s per phase"
awk "$AWK_FIELD"'
BEGIN {
    printf "%-8s %-4s %5s %10s %9s %9s %9s %7s\n", "size", "op", "conc", "ops/s", "MiB/s", "p50 ms", "p99 ms", "errors"
}
/^\{/ {
    printf "%-8s %-4s %5s %10.1f %9.1f %9.2f %9.2f %7s\n", field("size_label"), field("op"), field("concurrency"),
        field("ops_per_sec"), field("mib_per_sec"), field("p50_ms"), field("p99_ms"), field("errors")
}
' "$RESULTS"

# Baselines measured in this same run, so figures compare against what this machine can do
# right now: the ETag hash on one core, and direct / fsynced sequential writes to the disk
# that holds the drive folders.
echo
echo "machine baseline (same run):"
md5_mib=$(python3 -c '
import hashlib, os, time
buf = os.urandom(64 << 20); t = time.perf_counter(); h = hashlib.md5()
for _ in range(4): h.update(buf)
print(f"{256 / (time.perf_counter() - t):.0f}")')
direct_mib=$(dd if=/dev/zero of="$WORK/dd.direct" bs=1M count=512 oflag=direct 2>&1 | awk '/copied/ { print $(NF-1) * ($NF == "GB/s" ? 1000 : 1) / 1.048576 }')
synced_mib=$(dd if=/dev/zero of="$WORK/dd.synced" bs=1M count=512 conv=fdatasync 2>&1 | awk '/copied/ { print $(NF-1) * ($NF == "GB/s" ? 1000 : 1) / 1.048576 }')
rm -f "$WORK"/dd.*
printf "  MD5 on one core          %8.0f MiB/s\n" "$md5_mib"
printf "  direct sequential write  %8.0f MiB/s\n" "$direct_mib"
printf "  buffered write + fsync   %8.0f MiB/s\n" "$synced_mib"
awk -v md5="$md5_mib" -v direct="$direct_mib" "$AWK_FIELD"'
/^\{/ && field("size_label") == "1MiB" {
    r = field("mib_per_sec")
    printf "  1MiB %s: %.2f x one-core MD5, %.2f x direct disk write (EC 2+2 writes 2x the data)\n", field("op"), r / md5, r / direct
}' "$RESULTS"

exit "$failed"
