#!/usr/bin/env bash
# Cluster benchmark, all in one run on this machine (release build):
#   1. baseline: one node with 4 drive folders, EC 2+2 (first in odd rounds, last in even ones);
#   2. a 4-node cluster (one drive each, EC 2+2) on 127.0.0.21-24, the load generator's
#      workers spread over the four nodes;
#   3. the same cluster with one node killed (load on the three survivors).
# Each phase PUTs then GETs (verified) 4 KiB and 1 MiB objects, then GETs them again
# ("reget": the same reads once the data shards are in the page cache); the summary prints the
# cluster's throughput as a share of the single node's and of the healthy cluster's, and
# the server processes' CPU time per operation (user + system, all nodes together): on a
# shared machine it drifts much less than throughput, and shows what each setup costs.
#
# Environment: BENCH_DURATION (seconds per phase, default 10), BENCH_CONCURRENCY (default 32),
# BENCH_ROUNDS (default 1: how many times the three setups run, one after the other; with
# more, the table shows medians and each round's ratios are printed, because a shared
# machine's disk and CPU drift between phases), BENCH_TMPDIR (parent of the temporary data
# folder), BENCH_SERVER (a ringstore binary to measure instead of building this tree's),
# BENCH_BASE (a ringstore binary of another build, for example the previous commit's: then
# each round runs the healthy 4-node cluster once with it and once with this build, in
# alternating order, and the summary prints each build's medians and this build's figures
# as a share of the base's, per round and over the rounds; `make bench-ab` builds one).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
DURATION="${BENCH_DURATION:-10}"
CONC="${BENCH_CONCURRENCY:-32}"
ROUNDS="${BENCH_ROUNDS:-1}"
WORK="$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/ringstore-cluster-bench.XXXXXX")"
PIDS=()

cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "bench-cluster: $*" >&2; }
random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"; }

wait_ready() { # HOST:PORT
    for _ in $(seq 300); do
        if python3 - "$1" <<'EOF' 2>/dev/null; then return 0; fi
import sys, urllib.request
urllib.request.urlopen(f"http://{sys.argv[1]}/health/ready", timeout=1)
EOF
        sleep 0.1
    done
    log "node $1 not ready after 30 s"; tail -n 30 "$WORK"/*.log >&2; return 1
}

cd "$ROOT"
if [ -n "${BENCH_SERVER:-}" ]; then
    # A/B runs: a server binary built elsewhere (another commit), the same load generator
    log "building loadgen (release); server: $BENCH_SERVER"
    cargo build --release -p ringstore-loadgen
    BIN="$BENCH_SERVER"
else
    log "building server and loadgen (release)"
    cargo build --release -p ringstore-server -p ringstore-loadgen
    BIN="$TARGET_DIR/release/ringstore"
fi
LOADGEN="$TARGET_DIR/release/ringstore-loadgen"
export RINGSTORE_ACCESS_KEY="RS$(random_hex 9 | tr 'a-f' 'A-F')"
export RINGSTORE_SECRET_KEY="$(random_hex 20)"
export RINGSTORE_CLUSTER_SECRET="$(random_hex 20)"
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

# User + system CPU clock ticks the server processes have used so far.
server_ticks() { # PID...
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo "$t"
}

# Appends a loadgen JSON line to the results, with its setup, round and the servers' CPU
# time per operation during that phase.
record() { # LABEL ROUND TICKS JSON [OP]
    python3 - "$@" >>"$RESULTS" <<'EOF'
import json, os, sys
label, rnd, ticks, line = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
r = json.loads(line)
if len(sys.argv) > 5:
    r["op"] = sys.argv[5]
hz = os.sysconf("SC_CLK_TCK")
cpu = ticks * 1000 / hz / r["ops"] if r["ops"] else 0
print(json.dumps({"setup": label, "round": rnd, **r, "server_cpu_ms": round(cpu, 3)}))
EOF
}

# Empties the page cache before a setup, where this user may (root): on a virtual machine the
# first reads of fresh objects (GET, not reget) cost several times more CPU when the kernel
# hands out page-cache pages the host has reclaimed than when it reuses pages freed moments
# ago, so without this the setup that follows a large free (the previous one's data) reads
# cheaply and the one that does not pays.
fresh_cache() {
    sync
    if [ -w /proc/sys/vm/drop_caches ]; then
        echo 1 >/proc/sys/vm/drop_caches
    fi
}

run_load() { # LABEL ENDPOINTS ROUND SERVER_PID...
    local label="$1" endpoints="$2" r="$3" size t0 t1 t2 t3 put get reget written
    shift 3
    fresh_cache
    for size in 4KiB 1MiB; do
        log "round $r, $label: $size, concurrency $CONC, ${DURATION}s per phase"
        t0=$(server_ticks "$@")
        put=$("$LOADGEN" --endpoint "$endpoints" --size "$size" --concurrency "$CONC" \
            --duration "$DURATION" --ops put --prefix "$label" --json | grep '^{')
        t1=$(server_ticks "$@")
        # the GET phase reads (and verifies) random objects among those just written
        written=$(python3 -c 'import json,sys; print(max(1, json.loads(sys.argv[1])["ops"]))' "$put")
        get=$("$LOADGEN" --endpoint "$endpoints" --size "$size" --concurrency "$CONC" \
            --duration "$DURATION" --ops get --population "$written" --prefix "$label" --json |
            grep '^{')
        t2=$(server_ticks "$@")
        # the first GETs of fresh objects fill the page cache, whose cost on a virtual machine
        # varies with the memory the kernel hands out; the second pass reads cached shards
        reget=$("$LOADGEN" --endpoint "$endpoints" --size "$size" --concurrency "$CONC" \
            --duration "$DURATION" --ops get --population "$written" --prefix "$label" --json |
            grep '^{')
        t3=$(server_ticks "$@")
        record "$label" "$r" $((t1 - t0)) "$put"
        record "$label" "$r" $((t2 - t1)) "$get"
        record "$label" "$r" $((t3 - t2)) "$reget" reget
    done
}

# 1. single node, 4 drives
single_setup() { # ROUND
    local r="$1" port single_pid
    port=$(free_port 127.0.0.1)
    mkdir -p "$WORK/r$r/single/"d{1,2,3,4}
    "$BIN" server --address "127.0.0.1:$port" --redundancy 2+2 \
        --data "$WORK/r$r/single/d1" --data "$WORK/r$r/single/d2" \
        --data "$WORK/r$r/single/d3" --data "$WORK/r$r/single/d4" \
        >"$WORK/r$r/single.log" 2>&1 &
    single_pid=$!
    PIDS+=("$single_pid")
    wait_ready "127.0.0.1:$port"
    run_load single "http://127.0.0.1:$port" "$r" "$single_pid"
    kill "$single_pid"; wait "$single_pid" 2>/dev/null || true
    rm -rf "$WORK/r$r/single"
}

# 2. four nodes, then 3. one of them down (with a LABEL other than "cluster": the four
# nodes only, run from BINARY)
cluster_setups() { # ROUND [LABEL BINARY]
    local r="$1" label="${2:-cluster}" bin="${3:-$BIN}" i ip
    local -a S3 RPC NODES
    for i in 0 1 2 3; do
        ip="127.0.0.$((21 + i))"
        S3[i]="$ip:$(free_port "$ip")"
        RPC[i]="$ip:$(free_port "$ip")"
    done
    local seeds
    seeds="$(IFS=,; echo "${RPC[*]}")"
    for i in 0 1 2 3; do
        mkdir -p "$WORK/r$r/n$i"
        "$bin" server --node-name "node-$i" --address "${S3[i]}" --rpc-address "${RPC[i]}" \
            --seeds "$seeds" --redundancy 2+2 --data "$WORK/r$r/n$i" >"$WORK/r$r/n$i.log" 2>&1 &
        NODES+=($!)
        PIDS+=($!)
    done
    for i in 0 1 2 3; do wait_ready "${S3[i]}"; done
    run_load "$label" "http://${S3[0]},http://${S3[1]},http://${S3[2]},http://${S3[3]}" "$r" "${NODES[@]}"

    # 3. one node down
    if [ "$label" = cluster ]; then
        kill -9 "${NODES[3]}"
        run_load degraded "http://${S3[0]},http://${S3[1]},http://${S3[2]}" "$r" "${NODES[@]:0:3}"
    fi
    for i in 0 1 2 3; do kill "${NODES[i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK/r$r"/n*
}

# Which setup goes first alternates between rounds, so that what is left of the effect
# fresh_cache works against (or all of it, for a user who cannot drop the cache) does not
# always favour the same setup.
round() { # N
    local r="$1"
    if [ -n "${BENCH_BASE:-}" ]; then
        # A/B: the base build first in odd rounds, this build first in even ones
        if [ $((r % 2)) = 1 ]; then
            cluster_setups "$r" base "$BENCH_BASE"; cluster_setups "$r" this "$BIN"
        else
            cluster_setups "$r" this "$BIN"; cluster_setups "$r" base "$BENCH_BASE"
        fi
    elif [ $((r % 2)) = 1 ]; then
        single_setup "$r"; cluster_setups "$r"
    else
        cluster_setups "$r"; single_setup "$r"
    fi
    rm -rf "$WORK/r$r"
}

# a setup keeps what it wrote until it ends: the cluster and degraded ones about 12 GB with
# 10 s phases on a 2-core machine; a full disk shows up as failed PUTs ("1 shards written durably, 3 needed")
need_kb=$((16 * 1024 * 1024 * DURATION / 10))
free_kb="$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')"
if [ "$free_kb" -lt "$need_kb" ]; then
    log "warning: $((free_kb / 1024 / 1024)) GiB free under $WORK; a round may need $((need_kb / 1024 / 1024)) GiB"
fi
for r in $(seq "$ROUNDS"); do round "$r"; done

if [ -n "${BENCH_BASE:-}" ]; then
    echo
    echo "ringstore A/B cluster benchmark (4 nodes, EC 2+2): this build against $BENCH_BASE, ${DURATION}s per phase, concurrency $CONC, $ROUNDS round(s) in alternating order"
    python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rounds = sorted({r["round"] for r in rows})
val = {(r["round"], r["setup"], r["size_label"], r["op"]): r for r in rows}
print(f"{'size':<5} {'op':<5} {'base ops/s':>10} {'this ops/s':>10} {'this/base':>9} {'base cpu':>8} {'this cpu':>8} {'cpu this/base':>13}  per round: ops/s this/base")
for size in ("4KiB", "1MiB"):
    for op in ("put", "get", "reget"):
        def get(setup, field):
            return [val[(n, setup, size, op)][field] for n in rounds if (n, setup, size, op) in val]
        b, t = get("base", "ops_per_sec"), get("this", "ops_per_sec")
        bc, tc = get("base", "server_cpu_ms"), get("this", "server_cpu_ms")
        if not b or not t:
            continue
        per = [x / y if y else 0 for x, y in zip(t, b)]
        mb, mt, mbc, mtc = (statistics.median(v) for v in (b, t, bc, tc))
        print(f"{size:<5} {op:<5} {mb:>10.1f} {mt:>10.1f} {mt / mb if mb else 0:>9.3f} {mbc:>8.3f} {mtc:>8.3f} {mtc / mbc if mbc else 0:>13.3f}  "
              + " ".join(f"{v:.2f}" for v in per))
print(f"client errors: {sum(r['errors'] for r in rows)}")
EOF
    exit 0
fi

echo
echo "ringstore cluster benchmark: ${DURATION}s per phase, concurrency $CONC, $ROUNDS round(s), all processes on this machine"
python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
keys = list(dict.fromkeys((r["setup"], r["size_label"], r["op"]) for r in rows))
rounds = sorted({r["round"] for r in rows})
def med(key, field):
    vals = [r[field] for r in rows if (r["setup"], r["size_label"], r["op"]) == key]
    return statistics.median(vals) if vals else 0
def ratio(a, b):
    return a / b if b else 0
if len(rounds) > 1:
    print("medians over the rounds")
print(f"{'setup':<9} {'size':<6} {'op':<4} {'ops/s':>9} {'MiB/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'vs single':>9} {'vs cluster':>10} {'cpu ms/op':>9}")
for key in keys:
    setup, size, op = key
    ops = med(key, "ops_per_sec")
    errors = sum(r["errors"] for r in rows if (r["setup"], r["size_label"], r["op"]) == key)
    print(f"{setup:<9} {size:<6} {op:<4} {ops:>9.1f} {med(key, 'mib_per_sec'):>8.1f} "
          f"{med(key, 'p50_ms'):>8.2f} {med(key, 'p99_ms'):>8.2f} {errors:>6} "
          f"{ratio(ops, med(('single', size, op), 'ops_per_sec')):>9.2f} "
          f"{ratio(ops, med(('cluster', size, op), 'ops_per_sec')):>10.2f} "
          f"{med(key, 'server_cpu_ms'):>9.3f}")
if len(rounds) > 1:
    # each round's own ratios: the setups of one round ran minutes apart, not hours
    by = {(r["round"], r["setup"], r["size_label"], r["op"]): r["ops_per_sec"] for r in rows}
    print()
    print("per round: cluster / single, degraded / cluster")
    for setup, base in (("cluster", "single"), ("degraded", "cluster")):
        for size in ("4KiB", "1MiB"):
            for op in ("put", "get", "reget"):
                vals = [ratio(by.get((n, setup, size, op), 0), by.get((n, base, size, op), 0)) for n in rounds]
                print(f"  {setup:<9} {size:<5} {op:<4} " + " ".join(f"{v:.2f}" for v in vals))
    # a round whose ratio stands out: did the machine slow down, or did the servers work harder?
    cpu = {(r["round"], r["setup"], r["size_label"], r["op"]): r.get("server_cpu_ms", 0) for r in rows}
    print()
    print("per round: ops/s (server cpu ms/op)")
    for setup, size, op in keys:
        print(f"  {setup:<9} {size:<5} {op:<4} " + " ".join(
            f"{by.get((n, setup, size, op), 0):>8.1f} ({cpu.get((n, setup, size, op), 0):.2f})" for n in rounds))
EOF
