#!/usr/bin/env python3
"""Linearizability run: real `ringstore` processes, S3 clients, a nemesis and Porcupine.

A generator of client operations, a nemesis that injects faults on a schedule and a checker
that judges the recorded history afterwards, the way Jepsen tests databases:

- a cluster of `--nodes` real `ringstore server` processes on loopback addresses;
- `--clients` threads run random GET / PUT / DELETE (and, with `--conditional`, If-None-Match
  and If-Match PUTs) on `--keys` keys, each operation through a node picked at random, with
  boto3 and no retries; every invocation, completion and result is recorded. A timeout, a
  5xx or a broken connection is recorded as "unknown": it may or may not have taken effect;
- the nemesis, in turn and together: kill -9 and restart, SIGSTOP and SIGCONT, restarts
  with the clock minutes ahead or behind (libfaketime preloaded into the server itself, so
  that the process it stops is the server), a clock stepped back across a restart;
- after the run every node is healed, each key is read through every node, and the
  history of each key is checked for linearizability by the Go program in `checker/`
  (Porcupine). It also counts acknowledged writes lost and deletes that came back.

Exit status 0 when every key is linearizable and nothing was lost or resurrected.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import boto3
import botocore
from botocore.config import Config

ACCESS_KEY = "ringstore-lin-access"
SECRET_KEY = "ringstore-lin-secret-key"
CLUSTER_SECRET = "ringstore-lin-cluster-secret"
BUCKET = "lin"
FAKETIME_LIBS = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
]
# Above this, PUT bodies are shard files rather than inline frames in the records.
LARGE = 200 * 1024


def free_port(ip):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Node:
    def __init__(self, i, base, binary, drives, seeds_of, args):
        self.i = i
        self.name = f"lin-{i}"
        self.ip = f"127.0.{base}.{10 + i}"
        self.s3 = (self.ip, free_port(self.ip))
        self.rpc = (self.ip, free_port(self.ip))
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix=f"ringstore-lin-{i}-")
        self.drives = [os.path.join(self.dir, f"drive{d}") for d in range(drives)]
        self.seeds_of = seeds_of
        self.args = args
        self.proc = None
        self.stopped = False
        self.offset = 0  # seconds the clock is moved by libfaketime
        self.log = open(os.path.join(self.dir, "server.log"), "ab")

    def endpoint(self):
        return f"http://{self.s3[0]}:{self.s3[1]}"

    def start(self, offset=None):
        if offset is not None:
            self.offset = offset
        cmd = [self.binary, "server", "--address", f"{self.s3[0]}:{self.s3[1]}",
               "--node-name", self.name, "--rpc-address", f"{self.rpc[0]}:{self.rpc[1]}",
               "--seeds", self.seeds_of()]
        for d in self.drives:
            cmd += ["--data", d]
        cmd += self.args
        env = dict(os.environ)
        env.update({
            "RINGSTORE_ACCESS_KEY": ACCESS_KEY,
            "RINGSTORE_SECRET_KEY": SECRET_KEY,
            "RINGSTORE_CLUSTER_SECRET": CLUSTER_SECRET,
            "RUST_LOG": os.environ.get("RINGSTORE_LIN_LOG", "warn,s3s=off,openraft=off"),
        })
        if self.offset:
            lib = next((p for p in FAKETIME_LIBS if os.path.exists(p)), None)
            if lib is None:
                sys.exit("libfaketime is not installed (Debian package: faketime)")
            env["LD_PRELOAD"] = lib
            env["FAKETIME"] = f"{self.offset:+d}"
            # timers and timeouts keep real time; only the wall clock moves
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
        self.log.write(f"--- start, clock offset {self.offset:+d} s\n".encode())
        self.log.flush()
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)
        self.stopped = False

    def ready(self):
        try:
            with urllib.request.urlopen(self.endpoint() + "/health/ready", timeout=1) as r:
                return r.status == 200
        except Exception:
            return False

    def wait_ready(self, timeout=90):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.proc.returncode} (log: {self.dir})")
            if self.ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become ready (log: {self.dir})")

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            if self.stopped:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.stopped = False

    def stop(self):
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def cont(self):
        if self.stopped:
            self.proc.send_signal(signal.SIGCONT)
            self.stopped = False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class History:
    def __init__(self, path):
        self.file = open(path, "w")
        self.lock = threading.Lock()
        self.counts = {}

    def add(self, rec):
        with self.lock:
            self.file.write(json.dumps(rec) + "\n")
            k = (rec["op"], rec["result"])
            self.counts[k] = self.counts.get(k, 0) + 1

    def close(self):
        self.file.close()


def s3_client(endpoint, timeout):
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      connect_timeout=2, read_timeout=timeout,
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"))


def body_for(value, large):
    head = value.encode() + b"\n"
    if not large:
        return head
    return head + bytes(random.Random(value).getrandbits(8) for _ in range(64)) * (LARGE // 64)


def value_of(body):
    return body.split(b"\n", 1)[0].decode()


class Unexpected(Exception):
    pass


def classify(e):
    """The result an exception means: fail (a definite refusal), missing, or unknown."""
    if isinstance(e, botocore.exceptions.ClientError):
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = e.response.get("Error", {}).get("Code", "")
        if status == 404 and code in ("NoSuchKey", "404"):
            return "missing"
        if status == 412:
            return "fail"
        if status >= 500 or status == 0:
            return "unknown"
        raise Unexpected(f"{status} {code}: {e}")
    return "unknown"  # timeouts, refused or broken connections


def client_loop(cid, nodes, keys, args, history, stop_at, errors, etags):
    rng = random.Random(args.seed * 1000 + cid)
    clients = [s3_client(n.endpoint(), args.timeout) for n in nodes]
    seq = 0
    while time.time() < stop_at:
        key = rng.choice(keys)
        via = rng.randrange(len(clients))
        c = clients[via]
        r = rng.random()
        if r < 0.45:
            op = "get"
        elif r < 0.80:
            op = "put"
        elif r < 0.90 or not args.conditional:
            op = "delete"
        elif r < 0.95:
            op = "put_if_absent"
        else:
            op = "put_if_match"
        seq += 1
        value = f"c{cid}-{seq}"
        rec = {"client": cid, "key": key, "op": op, "node": via, "call": time.monotonic_ns()}
        try:
            if op == "get":
                try:
                    got = c.get_object(Bucket=BUCKET, Key=key)
                    rec["read"] = value_of(got["Body"].read())
                    with etags["lock"]:
                        etags["of"][key] = (rec["read"], got["ETag"])
                except Exception as e:
                    if classify(e) != "missing":
                        raise
                    rec["read"] = ""
            elif op == "delete":
                c.delete_object(Bucket=BUCKET, Key=key)
            else:
                rec["value"] = value
                extra = {}
                if op == "put_if_absent":
                    extra["IfNoneMatch"] = "*"
                elif op == "put_if_match":
                    # the ETag of the value last seen for the key: often still current
                    with etags["lock"]:
                        known = etags["of"].get(key)
                    if not known:
                        continue
                    rec["match"], extra["IfMatch"] = known
                large = rng.random() < args.large_fraction
                out = c.put_object(Bucket=BUCKET, Key=key, Body=body_for(value, large), **extra)
                with etags["lock"]:
                    etags["of"][key] = (value, out["ETag"])
            rec["result"] = "ok"
        except Exception as e:
            try:
                rec["result"] = classify(e)
            except Unexpected as u:
                # an answer no fault explains (a 4xx for a valid request): the run fails
                rec["result"] = "unknown"
                errors.append(f"client {cid} {op} {key}: {u}")
        rec["ret"] = time.monotonic_ns()
        history.add(rec)


class Nemesis:
    KINDS = ["kill", "stop", "clock", "clock-back"]

    def __init__(self, nodes, kinds, interval, tolerate, rng):
        self.nodes = nodes
        self.kinds = kinds
        self.interval = interval
        self.tolerate = tolerate
        self.rng = rng
        self.injected = {k: 0 for k in self.KINDS}
        self.together = 0

    def run(self, stop_at):
        turn = 0
        while time.time() + self.interval < stop_at:
            time.sleep(self.interval / 2)
            # every third round faults as many nodes at once as the redundancy tolerates
            at_once = self.tolerate if turn % 3 == 2 and self.tolerate > 1 else 1
            victims = self.rng.sample(self.nodes, at_once)
            if at_once > 1:
                self.together += 1
            kinds = []
            for v in victims:
                kind = self.kinds[turn % len(self.kinds)] if at_once == 1 else self.rng.choice(self.kinds)
                kinds.append(kind)
                self.inject(v, kind)
            log(f"nemesis: {', '.join(f'{k} {v.name}' for k, v in zip(kinds, victims))}")
            time.sleep(self.interval / 2)
            for v, kind in zip(victims, kinds):
                self.recover(v, kind)
            turn += 1

    def inject(self, node, kind):
        self.injected[kind] += 1
        if kind == "kill":
            node.kill9()
        elif kind == "stop":
            node.stop()
        elif kind == "clock":
            # minutes ahead or behind, up to 10
            offset = self.rng.choice([-1, 1]) * self.rng.randint(60, 600)
            node.kill9()
            node.start(offset)
        elif kind == "clock-back":
            # the clock is stepped back across a restart: ahead first, then behind
            node.kill9()
            node.start(self.rng.randint(120, 600))
            try:
                node.wait_ready(30)
            except RuntimeError:
                pass
            time.sleep(1)
            node.kill9()
            node.start(-self.rng.randint(60, 300))

    def recover(self, node, kind):
        if kind == "stop":
            node.cont()
        elif kind == "kill":
            node.start()
        try:
            node.wait_ready(60)
        except RuntimeError as e:
            log(f"nemesis: {e}")


def count_lost_and_resurrected(path):
    """Acknowledged writes lost and deletes come back, judged from the final reads."""
    by_key = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            by_key.setdefault(r["key"], []).append(r)
    lost = resurrected = 0
    for key, ops in by_key.items():
        finals = [o for o in ops if o.get("final")]
        writes = [o for o in ops if o["op"] != "get" and not o.get("final")
                  and o["result"] in ("ok", "unknown")]
        oks = [o for o in writes if o["result"] == "ok"]
        inf = float("inf")
        # a write may be the last one applied unless an acknowledged write started after it ended
        candidates = [w for w in writes
                      if not any(o["call"] > (w["ret"] if w["result"] == "ok" else inf) for o in oks)]
        values = {"" if w["op"] == "delete" else w["value"] for w in candidates}
        if not writes:
            values = {""}
        for fin in finals:
            if fin["result"] != "ok" or fin["read"] in values:
                continue
            if fin["read"] == "" or all(v != "" for v in values):
                lost += 1
                log(f"key {key}: final read {fin['read'] or 'none'}, expected one of {sorted(values)}")
            else:
                resurrected += 1
                log(f"key {key}: deleted, but the final read found {fin['read']}")
    return lost, resurrected


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", required=True, help="the ringstore binary")
    p.add_argument("--checker", required=True, help="the built checker (checker/)")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--drives", type=int, default=1, help="drives per node")
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--keys", type=int, default=16)
    p.add_argument("--duration", type=float, default=60, help="seconds of client operations")
    p.add_argument("--nemesis", default="kill,stop,clock,clock-back",
                   help="comma-separated fault kinds (kill, stop, clock, clock-back) or none")
    p.add_argument("--interval", type=float, default=8, help="seconds per nemesis round")
    p.add_argument("--timeout", type=float, default=10, help="client read timeout in seconds")
    p.add_argument("--large-fraction", type=float, default=0.25,
                   help="share of PUTs big enough for shard files")
    p.add_argument("--conditional", action="store_true", help="also If-None-Match and If-Match PUTs")
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--ip-block", type=int, default=7, help="the x in 127.0.x.y the nodes use")
    p.add_argument("--out", default=None, help="folder for the history and visualizations")
    p.add_argument("--keep", action="store_true", help="keep the nodes' folders")
    args = p.parse_args()

    kinds = [] if args.nemesis == "none" else args.nemesis.split(",")
    for k in kinds:
        if k not in Nemesis.KINDS:
            sys.exit(f"unknown nemesis kind {k!r}: use {', '.join(Nemesis.KINDS)} or none")
    out = args.out or tempfile.mkdtemp(prefix="ringstore-lin-")
    os.makedirs(out, exist_ok=True)
    rng = random.Random(args.seed)
    log(f"seed {args.seed}; {args.nodes} nodes x {args.drives} drives, {args.clients} clients, "
        f"{args.keys} keys, {args.duration:.0f} s, nemesis {args.nemesis}; output in {out}")

    nodes = []
    seeds = lambda: ",".join(f"{n.rpc[0]}:{n.rpc[1]}" for n in nodes)  # noqa: E731
    extra = ["--scrub-interval", "5"]
    for i in range(args.nodes):
        nodes.append(Node(i, args.ip_block, args.binary, args.drives, seeds, extra))
    history = History(os.path.join(out, "history.jsonl"))
    errors = []
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        admin = s3_client(nodes[0].endpoint(), 10)
        deadline = time.time() + 30
        while True:
            try:
                admin.create_bucket(Bucket=BUCKET)
                break
            except Exception as e:
                if time.time() > deadline:
                    raise
                log(f"create bucket: {e}; retrying")
                time.sleep(1)
        status = json.load(urllib.request.urlopen(urllib.request.Request(
            nodes[0].endpoint() + "/_ringstore/admin/v1/status",
            headers={"Authorization": f"Bearer {SECRET_KEY}"}), timeout=5))
        red = status.get("redundancy", "1+1")
        m = int(red.split("+")[1])
        log(f"cluster ready; redundancy {red}")

        keys = [f"k{i:02d}" for i in range(args.keys)]
        etags = {"lock": threading.Lock(), "of": {}}
        stop_at = time.time() + args.duration
        threads = [threading.Thread(target=client_loop,
                                    args=(c, nodes, keys, args, history, stop_at, errors, etags))
                   for c in range(args.clients)]
        for t in threads:
            t.start()
        nemesis = Nemesis(nodes, kinds, args.interval, max(1, m), rng)
        if kinds:
            nemesis.run(stop_at)
        for t in threads:
            t.join()

        log("healing: every node running with its true clock")
        for n in nodes:
            n.cont()
            if n.offset or not n.alive():
                n.kill9()
                n.start(0)
        for n in nodes:
            n.wait_ready()
        time.sleep(3)
        finals = [s3_client(n.endpoint(), 30) for n in nodes]
        for key in keys:
            for i, c in enumerate(finals):
                rec = {"client": args.clients + i, "key": key, "op": "get", "final": True,
                       "call": time.monotonic_ns()}
                for attempt in range(20):
                    try:
                        rec["read"] = value_of(c.get_object(Bucket=BUCKET, Key=key)["Body"].read())
                        rec["result"] = "ok"
                    except Exception as e:
                        rec["result"] = classify(e)
                        if rec["result"] == "missing":
                            rec["read"], rec["result"] = "", "ok"
                    if rec["result"] == "ok":
                        break
                    time.sleep(1)
                rec["ret"] = time.monotonic_ns()
                history.add(rec)
    finally:
        history.close()
        for n in nodes:
            n.kill9()

    ops = sum(history.counts.values())
    unknown = sum(v for (op, res), v in history.counts.items() if res == "unknown")
    by_kind = ", ".join(f"{op} {res} {v}" for (op, res), v in sorted(history.counts.items()))
    log(f"operations: {ops} ({by_kind}); indeterminate: {unknown}")
    if kinds:
        log(f"faults injected: {', '.join(f'{k} {v}' for k, v in nemesis.injected.items())}; "
            f"rounds with several nodes at once: {nemesis.together}")
    for e in errors[:20]:
        log(f"unexpected answer: {e}")
    lost, resurrected = count_lost_and_resurrected(os.path.join(out, "history.jsonl"))
    log(f"acknowledged writes lost: {lost}; deletes resurrected: {resurrected}")
    check = subprocess.run([args.checker, "-history", os.path.join(out, "history.jsonl"),
                            "-visualize", os.path.join(out, "visualize")])
    ok = check.returncode == 0 and not errors and lost == 0 and resurrected == 0
    if not args.keep and ok:
        for n in nodes:
            shutil.rmtree(n.dir, ignore_errors=True)
    else:
        log(f"nodes' folders and logs kept: {' '.join(n.dir for n in nodes)}")
    log("linearizable" if ok else "NOT linearizable, or data lost")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
