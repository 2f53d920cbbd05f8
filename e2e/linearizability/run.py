#!/usr/bin/env python3
"""Linearizability run: real `ringstore` processes, S3 clients, a nemesis and Porcupine.

A generator of client operations, a nemesis that injects faults on a schedule and a checker
that judges the recorded history afterwards, the way Jepsen tests databases:

- a cluster of `--nodes` real `ringstore server` processes on loopback addresses
  (127.0.<ip-block>.10, .11, ...), or with `--netns` each in a network namespace of its own
  (see below);
- `--clients` threads run random GET / PUT / DELETE (and, with `--conditional`, If-None-Match
  and If-Match PUTs) on `--keys` keys, each operation through a node picked at random, with
  boto3 and no retries; every invocation, completion and result is recorded. A timeout, a
  5xx or a broken connection is recorded as "unknown": it may or may not have taken effect;
- the nemesis, in turn and together: kill -9 and restart, SIGSTOP and SIGCONT, restarts
  with the clock minutes ahead or behind (libfaketime preloaded into the server itself, so
  that the process it stops is the server), a clock stepped back across a restart, and
  network partitions (`partition`; it implies `--netns`): the cluster cut in two, a random
  minority (sometimes a single node) against the rest, or a "bridge" where one node still
  sees both sides, which do not see each other. Every node-to-node packet between the two
  sides is dropped while the harness's clients still reach every node's S3 port (a client
  going through a cut-off node sees timeouts or 503: unknown), and the rules are removed
  at the end of the round. A partition lasts from half the interval to `--partition-max`
  seconds (the other faults of its round as long): short ones only delay packets, which
  TCP retransmits once healed, long ones outlast the nodes' RPC timeout and the clients'
  (10 s). Each partition is checked from inside the namespaces: a cut peer's RPC port must
  not answer, a kept one must, and the harness must still reach the cut-off node's S3 port;
- after the run every node is healed, each key is read through every node, and the
  history of each key is checked for linearizability by the Go program in `checker/`
  (Porcupine). It also counts acknowledged writes lost and deletes that came back. Beside
  `history.jsonl` the output folder holds `nemesis.jsonl`: each fault and recovery on the
  history's monotonic clock, to line a checker's illegal prefix up with the faults.

`--netns` needs root and `ip` (iproute2); partitions drop packets with `nft` (Debian package
nftables), else `iptables`, else blackhole routes (`--partition-tool`). Node i runs in the
namespace `ringstore-lin<B>-<i>` with the address 10.77.<B>.<10+i>/24 (<B> = `--ip-block`, so
runs with different blocks do not collide) on a veth pair to a bridge in the namespace
`ringstore-lin<B>-hub`; the harness reaches the bridge through the veth `rslin<B>`
(10.77.<B>.1). All traffic stays inside the machine. The servers are started with `ip netns
exec`, which execs them, so the pid the nemesis signals is the server's own (checked in
/proc). The namespaces and links are removed at exit, on an error, Ctrl-C, SIGTERM or SIGHUP
too, and those that a crashed earlier run with the same block left are removed (with the
processes in them) at the start.

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
# Set when the run is cut short (an error, Ctrl-C): the clients stop.
HALT = threading.Event()


def free_port(ip):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_cmd(cmd, input=None, check=True):
    r = subprocess.run(cmd, input=input, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip() or r.returncode}")
    return r


PROBE = """
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    print(f"error {e}")
"""


def probe(ns, ip, port, timeout=1.0):
    """Connect to ip:port from inside network namespace ns (None: the harness's own)."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [sys.executable, "-c", PROBE, ip,
                                                         str(port), str(timeout)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        return "error: the probe did not finish"
    return r.stdout.strip() or f"error {r.stderr.strip()}"


class Netns:
    """Every node in a network namespace of its own, on a bridge the harness reaches.

    ringstore-lin<B>-hub holds the bridge br0; node i's namespace ringstore-lin<B>-<i> holds
    eth0 (10.77.<B>.<10+i>/24), a veth whose other end is a port of br0; the veth rslin<B>
    (10.77.<B>.1/24) in the harness's namespace is another. A partition drops, inside the
    nodes' namespaces, every packet to and from the peers on the other side; the harness's
    address is never dropped, so clients reach every node throughout.
    """

    S3_PORT = 9000
    RPC_PORT = 9100
    TABLE = "ringstore_lin"
    TOOLS = ["nft", "iptables", "route"]
    PACKAGES = {"nft": "nftables", "iptables": "iptables"}

    def __init__(self, block, count, tool="auto"):
        if not 0 <= block <= 255:
            sys.exit(f"--ip-block {block}: must be 0 to 255 with --netns (10.77.<block>.0/24)")
        if count > 240:
            sys.exit("--netns: at most 240 nodes")
        self.block = block
        self.count = count
        self.prefix = f"ringstore-lin{block}-"
        self.hub = self.prefix + "hub"
        self.uplink = f"rslin{block}"
        self.subnet = f"10.77.{block}"
        self.wanted = tool
        self.tool = None
        self.cut = {}  # node index -> indexes of the peers it cannot reach
        self.made = False

    def ns(self, i):
        return f"{self.prefix}{i}"

    def ip(self, i):
        return f"{self.subnet}.{10 + i}"

    def ours(self):
        r = run_cmd(["ip", "netns", "list"], check=False)
        names = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
        return [n for n in names if n.startswith(self.prefix)]

    def remove(self):
        """Every namespace and link of this block, with any process left inside."""
        names = self.ours()
        pids = []
        for name in names:
            r = run_cmd(["ip", "netns", "pids", name], check=False)
            pids += [int(p) for p in r.stdout.split() if p.isdigit()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.time() + 5
        while time.time() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
            time.sleep(0.05)
        for name in names:
            run_cmd(["ip", "netns", "del", name], check=False)
        # the veth pair goes with either end; the namespaces themselves go asynchronously
        if run_cmd(["ip", "link", "show", self.uplink], check=False).returncode == 0:
            run_cmd(["ip", "link", "del", self.uplink], check=False)
        return names, pids

    def setup(self):
        if os.geteuid() != 0:
            sys.exit("--netns (and the partition nemesis) must run as root: "
                     "it makes network namespaces")
        if not shutil.which("ip"):
            sys.exit("--netns needs `ip` (Debian package iproute2)")
        self.made = True
        names, pids = self.remove()
        if names:
            log(f"netns: removed {len(names)} namespaces an earlier run left "
                f"({len(pids)} processes in them killed)")
        used = run_cmd(["ip", "-o", "-4", "addr", "show", "to", f"{self.subnet}.0/24"])
        used = used.stdout.strip()
        if used:
            sys.exit(f"{self.subnet}.0/24 is already in use on this machine ({used.split()[1]}): "
                     "choose another --ip-block")
        hub = ["ip", "-n", self.hub]
        run_cmd(["ip", "netns", "add", self.hub])
        run_cmd(hub + ["link", "set", "lo", "up"])
        run_cmd(hub + ["link", "add", "br0", "type", "bridge"])
        run_cmd(hub + ["link", "set", "br0", "up"])
        run_cmd(["ip", "link", "add", self.uplink, "type", "veth", "peer", "name", "uplink",
                 "netns", self.hub])
        run_cmd(hub + ["link", "set", "dev", "uplink", "master", "br0", "up"])
        run_cmd(["ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.uplink])
        run_cmd(["ip", "link", "set", self.uplink, "up"])
        for i in range(self.count):
            ns = ["ip", "-n", self.ns(i)]
            run_cmd(["ip", "netns", "add", self.ns(i)])
            run_cmd(ns + ["link", "set", "lo", "up"])
            run_cmd(hub + ["link", "add", f"n{i}", "type", "veth", "peer", "name", "eth0",
                           "netns", self.ns(i)])
            run_cmd(hub + ["link", "set", "dev", f"n{i}", "master", "br0", "up"])
            run_cmd(ns + ["addr", "add", f"{self.ip(i)}/24", "dev", "eth0"])
            run_cmd(ns + ["link", "set", "eth0", "up"])
        self.tool = self.pick_tool()
        log(f"netns: {self.count} namespaces {self.ns(0)}..{self.ns(self.count - 1)} on "
            f"{self.subnet}.0/24 (harness {self.subnet}.1 on {self.uplink}); "
            f"partitions with {self.tool}")

    def pick_tool(self):
        tools = self.TOOLS if self.wanted == "auto" else [self.wanted]
        for t in tools:
            if t != "route" and not shutil.which(t):
                if self.wanted != "auto":
                    sys.exit(f"--partition-tool {t}: `{t}` is not installed "
                             f"(Debian package {self.PACKAGES[t]})")
                continue
            try:
                for i in range(self.count):
                    self.prepare(t, i)
                return t
            except RuntimeError as e:
                if self.wanted != "auto":
                    sys.exit(f"--partition-tool {t} does not work here: {e}")
                log(f"netns: {t} does not work here ({e}); trying the next tool")
        sys.exit("no way to cut nodes apart")

    def exec(self, i, cmd, input=None, check=True):
        return run_cmd(["ip", "netns", "exec", self.ns(i)] + cmd, input=input, check=check)

    def prepare(self, tool, i):
        if tool == "nft":
            # an empty set of cut peers, dropped both ways; a partition fills it
            self.exec(i, ["nft", "-f", "-"], input=f"""
table inet {self.TABLE} {{
    set cut {{ type ipv4_addr; }}
    chain input {{ type filter hook input priority 0; policy accept; ip saddr @cut drop; }}
    chain output {{ type filter hook output priority 0; policy accept; ip daddr @cut drop; }}
}}
""")
        elif tool == "iptables":
            self.exec(i, ["iptables", "-w", "-n", "-L", "INPUT"])

    def partition(self, cut):
        """Drop every packet between node i and each node in cut[i] (cut is symmetric)."""
        self.cut = {i: set(peers) for i, peers in cut.items() if peers}
        for i, peers in self.cut.items():
            ips = [self.ip(j) for j in sorted(peers)]
            if self.tool == "nft":
                self.exec(i, ["nft", "add", "element", "inet", self.TABLE, "cut",
                              "{ " + ", ".join(ips) + " }"])
            elif self.tool == "iptables":
                for ip in ips:
                    self.exec(i, ["iptables", "-w", "-A", "INPUT", "-s", ip, "-j", "DROP"])
                    self.exec(i, ["iptables", "-w", "-A", "OUTPUT", "-d", ip, "-j", "DROP"])
            else:
                # no packet filter: the kernel refuses to route to the cut peers (a connect
                # fails at once with EINVAL instead of timing out)
                for ip in ips:
                    run_cmd(["ip", "-n", self.ns(i), "route", "add", "blackhole", f"{ip}/32"])

    def heal(self):
        for i, peers in self.cut.items():
            try:
                if self.tool == "nft":
                    self.exec(i, ["nft", "flush", "set", "inet", self.TABLE, "cut"])
                elif self.tool == "iptables":
                    self.exec(i, ["iptables", "-w", "-F", "INPUT"])
                    self.exec(i, ["iptables", "-w", "-F", "OUTPUT"])
                else:
                    for j in peers:
                        run_cmd(["ip", "-n", self.ns(i), "route", "del", "blackhole",
                                 f"{self.ip(j)}/32"])
            except RuntimeError as e:
                log(f"netns: healing {self.ns(i)}: {e}")
        self.cut = {}

    def teardown(self):
        if not self.made:
            return
        names, pids = self.remove()
        left = self.ours()
        if left or run_cmd(["ip", "link", "show", self.uplink], check=False).returncode == 0:
            log(f"netns: could not remove {' '.join(left)} {self.uplink}")
        else:
            log(f"netns: removed {len(names)} namespaces and the veth {self.uplink}")


class Node:
    def __init__(self, i, base, binary, drives, seeds_of, args, net=None):
        self.i = i
        self.name = f"lin-{i}"
        self.net = net
        if net:
            # a namespace of its own: the ports are free there
            self.ns = net.ns(i)
            self.ip = net.ip(i)
            self.s3 = (self.ip, Netns.S3_PORT)
            self.rpc = (self.ip, Netns.RPC_PORT)
        else:
            self.ns = None
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
        if self.ns:
            # `ip netns exec` execs the server: the pid stays the server's own (wait_ready checks)
            cmd = ["ip", "netns", "exec", self.ns] + cmd
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
                if self.ns:
                    self.check_pid()
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become ready (log: {self.dir})")

    def check_pid(self):
        """The pid the nemesis signals is the server's own, not a wrapper's, in its namespace."""
        want = os.path.basename(self.binary)[:15]
        pid = self.proc.pid
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            inside = (os.stat(f"/proc/{pid}/ns/net").st_ino
                      == os.stat(f"/run/netns/{self.ns}").st_ino)
        except OSError:
            return  # gone since: poll() tells
        if comm != want or not inside:
            where = "" if inside else f" outside {self.ns}"
            raise RuntimeError(f"{self.name}: pid {pid} is {comm!r}{where}, not the server {want!r}")

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
        config=Config(s3={"addressing_style": "path"},
                      # one attempt: botocore's max_attempts counts retries, so 1 meant one retry
                      retries={"total_max_attempts": 1},
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
    while time.time() < stop_at and not HALT.is_set():
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
    KINDS = ["kill", "stop", "clock", "clock-back", "partition"]

    def __init__(self, nodes, kinds, interval, tolerate, rng, net=None, events=None,
                 partition_max=0):
        self.nodes = nodes
        self.kinds = kinds
        self.interval = interval
        self.partition_max = partition_max
        self.tolerate = tolerate
        self.rng = rng
        self.net = net
        self.events = events  # nemesis.jsonl: faults and recoveries on the history's clock
        self.injected = {k: 0 for k in self.KINDS}
        self.shapes = {}  # partitions by shape
        self.together = 0
        self.probes = 0  # partitions confirmed from inside the namespaces
        self.problems = []  # partitions that did not cut, or cut the clients off

    def event(self, what, **fields):
        if self.events:
            rec = {"t": time.monotonic_ns(), "event": what, **fields}
            self.events.write(json.dumps(rec) + "\n")
            self.events.flush()

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
                if kind != "partition":
                    self.inject(v, kind)
            # the victims of a partition are cut off together, once the other faults are in
            cut_off = [v for v, k in zip(victims, kinds) if k == "partition"]
            started = time.time()
            hold = self.interval / 2
            what = [f"{k} {v.name}" for k, v in zip(kinds, victims) if k != "partition"]
            if cut_off:
                # some partitions only delay packets (TCP retransmits them once healed), longer
                # ones outlast the RPC and client timeouts (10 s); the round's faults last as long
                hold = self.rng.uniform(hold, max(hold, self.partition_max))
                # healed before the clients stop, so the run is not longer for it
                hold = min(hold, max(self.interval / 2, stop_at - time.time()))
                what.append(self.partition(cut_off, hold))
            log(f"nemesis: {', '.join(what)}")
            time.sleep(max(0.0, hold - (time.time() - started)))
            if cut_off:
                self.net.heal()
                self.event("heal", kind="partition")
            for v, kind in zip(victims, kinds):
                self.recover(v, kind)
            turn += 1

    def inject(self, node, kind):
        self.injected[kind] += 1
        self.event("inject", kind=kind, node=node.name)
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

    def partition(self, cut_off, hold):
        """Cut the cluster in two with cut_off on one side for hold seconds; says what it did."""
        n = len(self.nodes)
        side = sorted(v.i for v in cut_off)
        rest = [x.i for x in self.nodes if x.i not in side]
        bridge = None
        if len(rest) >= 2 and self.rng.random() < 1 / 3:
            # one node sees both sides, which do not see each other
            bridge = self.rng.choice(rest)
            other = [j for j in rest if j != bridge]
            shape = "bridge"
        else:
            # a minority (sometimes a single node) against the rest
            size = self.rng.randint(len(side), max(len(side), (n - 1) // 2))
            side = sorted(side + self.rng.sample(rest, size - len(side)))
            other = [j for j in rest if j not in side]
            shape = "isolated" if len(side) == 1 else "half" if 2 * len(side) == n else "minority"
        cut = {a: set(other) for a in side}
        cut.update({b: set(side) for b in other})
        self.net.partition(cut)
        self.injected["partition"] += 1
        self.shapes[shape] = self.shapes.get(shape, 0) + 1
        names = lambda ids: " ".join(self.nodes[j].name for j in ids)  # noqa: E731
        self.event("inject", kind="partition", shape=shape, side=names(side), other=names(other),
                   bridge=names([bridge]) if bridge is not None else None, seconds=round(hold, 1))
        desc = f"partition {names(side)} | {names(other)}"
        if bridge is not None:
            desc += f", {self.nodes[bridge].name} sees both"
        return f"{desc} ({shape}, {hold:.0f} s; {self.check(side, other, bridge)})"

    def check(self, side, other, bridge):
        """From inside the namespaces: a cut peer's RPC port is dropped, a kept one answers
        (or refuses, if that node is down), and the harness still reaches the S3 port."""
        a, b = side[0], other[0]
        kept = None
        if len(side) > 1:
            kept = (side[0], side[1])
        elif bridge is not None:
            kept = (a, bridge)
        elif len(other) > 1:
            kept = (other[0], other[1])
        na, nb = self.nodes[a], self.nodes[b]
        results = [(f"{na.name} -> {nb.name} rpc", probe(na.ns, *nb.rpc), ("timeout",) if
                    self.net.tool != "route" else ("error [Errno 22] Invalid argument",))]
        if kept:
            x, y = self.nodes[kept[0]], self.nodes[kept[1]]
            results.append((f"{x.name} -> {y.name} rpc", probe(x.ns, *y.rpc),
                            ("connected", "refused")))
        results.append((f"harness -> {na.name} s3", probe(None, *na.s3), ("connected", "refused")))
        bad = [f"{what}: {got}" for what, got, ok in results if got not in ok]
        if bad:
            self.problems += bad
            return "CHECK FAILED: " + "; ".join(bad)
        self.probes += 1
        return "checked: " + ", ".join(f"{what} {got}" for what, got, ok in results)

    def recover(self, node, kind):
        if kind == "stop":
            node.cont()
        elif kind == "kill":
            node.start()
        if kind in ("stop", "kill"):
            self.event("recover", kind=kind, node=node.name)
        try:
            node.wait_ready(60)
        except RuntimeError as e:
            log(f"nemesis: {e}")

    def summary(self):
        shown = [k for k in self.KINDS if k != "partition" or k in self.kinds]
        parts = []
        for k in shown:
            part = f"{k} {self.injected[k]}"
            if k == "partition" and self.shapes:
                part += f" ({', '.join(f'{s} {c}' for s, c in sorted(self.shapes.items()))})"
            parts.append(part)
        return ", ".join(parts)


def admin_call(node, path, body=None, timeout=5):
    """A node's admin API: the JSON answer, or None when it did not answer with one."""
    req = urllib.request.Request(node.endpoint() + "/_ringstore/admin/v1/" + path,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {SECRET_KEY}"},
                                 method="GET" if body is None else "POST")
    try:
        return json.load(urllib.request.urlopen(req, timeout=timeout))
    except Exception as e:
        return {"error": str(e)}


def grow(joining, targets, through, at, stop_at, events, out):
    """At `at`, starts the nodes `joining`, applies a layout of every registered node through
    the first node of `through` that takes it, and follows the transition that moves data
    onto them until `stop_at` (the nemesis goes on meanwhile and may pick them)."""
    while time.time() < at and not HALT.is_set():
        time.sleep(0.2)
    for n in joining:
        n.start()
    for n in joining:
        n.wait_ready()
    targets.extend(joining)
    applied = None
    deadline = time.time() + 60
    while applied is None and time.time() < deadline and not HALT.is_set():
        for n in through:
            doc = admin_call(n, "layout", {})
            if "version" in doc:
                applied = doc
                break
        else:
            time.sleep(1)
    if applied is None:
        out["summary"] = "the layout change was not accepted within 60 s"
        log(f"grow: {out['summary']}")
        return
    if events:
        events.write(json.dumps({"t": time.monotonic_ns(), "event": "layout",
                                 "version": applied["version"]}) + "\n")
        events.flush()
    log(f"grow: {', '.join(n.name for n in joining)} joined; layout {applied['version']} "
        f"applied over {len(applied.get('nodes', []))} nodes")
    started, phase, last = time.time(), None, {}
    # (each node counts what its mover did since it started: a restart forgets it)
    most = {"objects_moved": 0, "bytes_moved": 0, "errors": 0}
    while not HALT.is_set():
        for n in through + joining:
            doc = admin_call(n, "transition")
            if isinstance(doc.get("transition"), dict):
                last = doc["transition"]
                for k in most:
                    most[k] = max(most[k], last.get(k) or 0)
                break
        if last.get("phase") != phase:
            phase = last.get("phase")
            log(f"grow: transition to layout {last.get('to')} is {phase} "
                f"({last.get('percent')}% after {time.time() - started:.0f} s)")
        if phase == "finished" or time.time() > stop_at:
            break
        time.sleep(1)
    out["summary"] = (f"layout {applied['version']}, transition {phase} after "
                      f"{time.time() - started:.0f} s, at least {most['objects_moved']} objects "
                      f"switched and {most['bytes_moved']} bytes copied, {most['errors']} move "
                      f"errors (retried)")


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
                   help="comma-separated fault kinds (kill, stop, clock, clock-back, partition) "
                   "or none; partition implies --netns")
    p.add_argument("--interval", type=float, default=8, help="seconds per nemesis round")
    p.add_argument("--timeout", type=float, default=10, help="client read timeout in seconds")
    p.add_argument("--large-fraction", type=float, default=0.25,
                   help="share of PUTs big enough for shard files")
    p.add_argument("--conditional", action="store_true", help="also If-None-Match and If-Match PUTs")
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--ip-block", type=int, default=7,
                   help="the x in 127.0.x.y the nodes use, or with --netns in 10.77.x.y and in the "
                   "names of the namespaces (ringstore-lin<x>-*) and of the veth rslin<x>: runs at "
                   "the same time need different blocks")
    p.add_argument("--netns", action="store_true",
                   help="run every node in a network namespace of its own, on a bridge the harness "
                   "reaches (root, `ip`); needed for partitions")
    p.add_argument("--partition-max", type=float, default=15,
                   help="a partition lasts a random time from half the interval to this many "
                   "seconds (the other faults of its round as long)")
    p.add_argument("--partition-tool", choices=["auto"] + Netns.TOOLS, default="auto",
                   help="how partitions drop packets inside the namespaces: nft, iptables, or "
                   "blackhole routes (iproute2 only; connects then fail at once instead of timing "
                   "out); auto takes the first that works in that order")
    p.add_argument("--grow", type=int, default=0,
                   help="nodes (of --nodes) that join during the run: a layout change then "
                        "moves data onto them while the clients and the nemesis go on")
    p.add_argument("--grow-at", type=float, default=0.3,
                   help="when they join, as a fraction of --duration")
    p.add_argument("--cold", type=int, default=0,
                   help="keys written once before the clients start and never again (every "
                        "other one large): with --grow they are what the transition has to "
                        "move; each is read back through every node at the end")
    p.add_argument("--out", default=None, help="folder for the history and visualizations")
    p.add_argument("--keep", action="store_true", help="keep the nodes' folders")
    args = p.parse_args()

    kinds = [] if args.nemesis == "none" else args.nemesis.split(",")
    for k in kinds:
        if k not in Nemesis.KINDS:
            sys.exit(f"unknown nemesis kind {k!r}: use {', '.join(Nemesis.KINDS)} or none")
    if "partition" in kinds:
        if args.nodes < 2:
            sys.exit("the partition nemesis needs at least 2 nodes")
        if not args.netns:
            log("the partition nemesis runs the nodes in network namespaces (--netns)")
            args.netns = True
    out = args.out or tempfile.mkdtemp(prefix="ringstore-lin-")
    os.makedirs(out, exist_ok=True)
    rng = random.Random(args.seed)
    log(f"seed {args.seed}; {args.nodes} nodes x {args.drives} drives, {args.clients} clients, "
        f"{args.keys} keys, {args.duration:.0f} s, nemesis {args.nemesis}"
        f"{', network namespaces' if args.netns else ''}; output in {out}")

    # SIGTERM and SIGHUP end the run like Ctrl-C: the finally below cleans up
    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    net = Netns(args.ip_block, args.nodes, args.partition_tool) if args.netns else None
    nodes = []
    initial = args.nodes - args.grow
    if args.grow < 0 or initial < 1:
        p.error(f"--grow {args.grow} leaves no node to start with of --nodes {args.nodes}")
    # the nodes that join later find the cluster through the first ones
    seeds = lambda: ",".join(f"{n.rpc[0]}:{n.rpc[1]}" for n in nodes[:initial])  # noqa: E731
    extra = ["--scrub-interval", "5"]
    for i in range(args.nodes):
        nodes.append(Node(i, args.ip_block, args.binary, args.drives, seeds, extra, net))
    history = History(os.path.join(out, "history.jsonl"))
    events = open(os.path.join(out, "nemesis.jsonl"), "w")
    errors = []
    threads = []
    cold = {}
    cold_bad = []  # cold keys that did not read back whole, through some node
    try:
        if net:
            net.setup()
        for n in nodes[:initial]:
            n.start()
        for n in nodes[:initial]:
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

        cold = {f"cold/{i:04d}": body_for(f"cold{i}", i % 2 == 1) for i in range(args.cold)}
        for key, body in cold.items():
            admin.put_object(Bucket=BUCKET, Key=key, Body=body)
        if cold:
            log(f"{len(cold)} cold keys written")
        keys = [f"k{i:02d}" for i in range(args.keys)]
        etags = {"lock": threading.Lock(), "of": {}}
        stop_at = time.time() + args.duration
        serving = nodes[:initial]
        threads = [threading.Thread(target=client_loop,
                                    args=(c, serving, keys, args, history, stop_at, errors, etags))
                   for c in range(args.clients)]
        for t in threads:
            t.start()
        # the nemesis picks its victims among the nodes started so far
        targets = list(serving)
        nemesis = Nemesis(targets, kinds, args.interval, max(1, m), rng, net, events,
                          args.partition_max)
        grown = {}
        if args.grow:
            grower = threading.Thread(
                target=grow, args=(nodes[initial:], targets, nodes[:initial],
                                   time.time() + args.grow_at * args.duration, stop_at, events,
                                   grown))
            grower.start()
            threads.append(grower)
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
        for key, body in cold.items():
            for i, c in enumerate(finals):
                got = None
                for attempt in range(10):
                    try:
                        got = c.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                        break
                    except Exception as e:
                        got = f"{classify(e)}: {e}"
                        time.sleep(1)
                if got != body:
                    what = got if isinstance(got, str) else f"{len(got)} bytes that differ"
                    cold_bad.append(f"{key} through {nodes[i].name}: {what}")
    finally:
        # a second Ctrl-C must not leave namespaces behind
        handlers = {sig: signal.signal(sig, signal.SIG_IGN)
                    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        HALT.set()
        for n in nodes:
            n.kill9()
        for t in threads:
            if t.is_alive():
                t.join(args.timeout + 5)
        history.close()
        events.close()
        if net:
            net.teardown()
        for sig, h in handlers.items():
            signal.signal(sig, h)

    ops = sum(history.counts.values())
    unknown = sum(v for (op, res), v in history.counts.items() if res == "unknown")
    by_kind = ", ".join(f"{op} {res} {v}" for (op, res), v in sorted(history.counts.items()))
    log(f"operations: {ops} ({by_kind}); indeterminate: {unknown}")
    if kinds:
        log(f"faults injected: {nemesis.summary()}; "
            f"rounds with several nodes at once: {nemesis.together}")
    if "partition" in kinds:
        log(f"partitions confirmed from inside the namespaces: {nemesis.probes} of "
            f"{nemesis.injected['partition']}")
        for e in nemesis.problems:
            log(f"partition check failed: {e}")
    for e in errors[:20]:
        log(f"unexpected answer: {e}")
    if args.grow:
        log(f"layout change: {grown.get('summary', 'not applied')}")
    lost, resurrected = count_lost_and_resurrected(os.path.join(out, "history.jsonl"))
    log(f"acknowledged writes lost: {lost}; deletes resurrected: {resurrected}")
    if cold:
        log(f"cold keys: {len(cold)}, read back whole through every node: "
            f"{len(cold) - len({b.split(' ')[0] for b in cold_bad})}")
        for b in cold_bad[:20]:
            log(f"cold key not read back: {b}")
    check = subprocess.run([args.checker, "-history", os.path.join(out, "history.jsonl"),
                            "-visualize", os.path.join(out, "visualize")])
    ok = check.returncode == 0 and not errors and lost == 0 and resurrected == 0 and not cold_bad
    if kinds and nemesis.problems:
        log("a partition did not cut the nodes apart, or cut the clients off: "
            "the run proves nothing")
        ok = False
    if not args.keep and ok:
        for n in nodes:
            shutil.rmtree(n.dir, ignore_errors=True)
    else:
        log(f"nodes' folders and logs kept: {' '.join(n.dir for n in nodes)}")
    log("linearizable" if ok else "NOT linearizable, or data lost")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as e:
        log(f"interrupted{f' ({e})' if str(e) else ''}: nodes stopped, namespaces removed")
        sys.exit(130)
