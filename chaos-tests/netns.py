"""A network namespace for the cluster chaos tests, with faults injected by nftables.

NetNS creates a uniquely named namespace (`ip netns add llmr-<pid>-<hex>`) with `lo` up. In it
the whole of 127.0.0.0/8 is local, so every process can listen on its own 127.0.0.x address
without any setup. The test process itself never changes namespace: processes are spawned
through `ip netns exec`, and the test talks to them by running clients in the namespace
(`run`, `http` = curl in the namespace).

Identity of a process. A connection a process opens without binding its source gets source
127.0.0.1 (the loopback route's src), so addresses alone cannot tell who opened it. Each
process started with an address (`proc(..., addr=...)`) is therefore put in its own cgroup (v2),
and an nftables rule marks every connection (conntrack entry, TCP or UDP) a socket of that
cgroup opens with the process's address. A fault on address A then covers the connections
whose original source is A (bound), whose mark is A (opened by the process at A), or whose
original destination is A, in both directions, since the rules match conntrack's original
tuple rather than each packet's addresses.

Faults: partition(a_addrs, b_addrs) drops every packet of a connection between the two groups;
drop(addr, percent) drops that share of the packets (random, per packet) of every connection
of addr; heal() removes partitions, undrop() losses. The ruleset is rebuilt atomically on every
change (`nft -f`, run through nsenter so nft sees the host's /sys/fs/cgroup).

close() (also the context manager's exit, and an atexit hook) kills every process started in
the namespace, then whatever else is left in it, removes the cgroups and deletes the namespace.
At creation, namespaces and cgroups left by a crashed earlier run (prefix llmr-, creator
process gone, or older than STALE_AGE) are removed.

Needs root, iproute2, nftables, nsenter (util-linux), curl and a writable cgroup v2 hierarchy
under /sys/fs/cgroup: `unavailable()` names what is missing, for a pytest skip."""

import atexit
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import harness

PREFIX = "llmr-"
NETNS_DIR = "/run/netns"
CGROUP_FS = "/sys/fs/cgroup"  # nft resolves `socket cgroupv2` paths relative to this
STALE_AGE = 3600.0            # a namespace this old is stale even if its creator lives
ORPHAN_AGE = 30.0             # ... and this old once its creator process is gone
MAX_CGROUP_LEVEL = 8          # cgroup depth is not known inside a cgroup namespace: try all

_OPEN = []
_OPEN_LOCK = threading.Lock()


def _close_all():
    with _OPEN_LOCK:
        spaces = list(_OPEN)
    for ns in spaces:
        ns.close()


atexit.register(_close_all)


def cgroup2_root():
    """Mount point of the cgroup v2 hierarchy if it is at or under /sys/fs/cgroup, else None."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "cgroup2":
                    mnt = fields[1]
                    if mnt == CGROUP_FS or mnt.startswith(CGROUP_FS + "/"):
                        return mnt
    except OSError:
        pass
    return None


def unavailable():
    """None when namespaces can be used here, else the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root; CI does)"
    for tool in ("ip", "nft", "nsenter", "curl"):
        if shutil.which(tool) is None:
            return "%s not found (ops/setup installs iproute2, nftables, util-linux, curl)" % tool
    root = cgroup2_root()
    if root is None:
        return "no cgroup v2 hierarchy under %s (needed to tell processes apart)" % CGROUP_FS
    if not os.access(root, os.W_OK):
        return "cgroup v2 hierarchy %s is not writable" % root
    return None


def _sh(argv, timeout=15, check=True, input=None):
    return subprocess.run(argv, input=input, capture_output=True, timeout=timeout, check=check)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _netns_pids(name):
    r = _sh(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in r.stdout.split() if p.strip().isdigit()]


def _kill_cgroup(path):
    """SIGKILLs every process of a cgroup directory tree and removes it (best effort)."""
    if not os.path.isdir(path):
        return
    for entry in sorted(os.listdir(path)):
        sub = os.path.join(path, entry)
        if os.path.isdir(sub):
            _kill_cgroup(sub)
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
    except OSError:
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                for p in f.read().split():
                    try:
                        os.kill(int(p), signal.SIGKILL)
                    except OSError:
                        pass
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)


def _delete_netns(name):
    for pid in _netns_pids(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while _netns_pids(name) and time.monotonic() < deadline:
        time.sleep(0.02)
    _sh(["ip", "netns", "delete", name], check=False)


def cleanup_stale(max_age=STALE_AGE, orphan_age=ORPHAN_AGE):
    """Removes namespaces, cgroups and temp dirs named llmr-* that an earlier run left: their
    creator (the pid in the name) is gone and they are older than orphan_age, or they are
    older than max_age. Returns the names removed."""
    removed = []
    now = time.time()
    try:
        names = [n for n in os.listdir(NETNS_DIR) if n.startswith(PREFIX)]
    except OSError:
        names = []
    for name in names:
        try:
            age = now - os.stat(os.path.join(NETNS_DIR, name)).st_mtime
        except OSError:
            continue
        try:
            creator = int(name[len(PREFIX):].split("-")[0])
        except ValueError:
            creator = None
        orphan = creator is None or not _pid_alive(creator)
        if age > max_age or (orphan and age > orphan_age):
            _delete_netns(name)
            removed.append(name)
    root = cgroup2_root()
    if root:
        try:
            groups = [g for g in os.listdir(root) if g.startswith(PREFIX)]
        except OSError:
            groups = []
        for g in groups:
            # a namespace's cgroups are made after it and removed before it
            if not os.path.exists(os.path.join(NETNS_DIR, g)):
                _kill_cgroup(os.path.join(root, g))
                removed.append("cgroup " + g)
    tmp = tempfile.gettempdir()
    for t in os.listdir(tmp):
        # a namespace's temp dir (<name>-<random>) is made after it and removed after it
        m = re.match(re.escape(PREFIX) + r"\d+-[0-9a-f]{6}(?=-)", t)
        if m and not os.path.exists(os.path.join(NETNS_DIR, m.group(0))):
            shutil.rmtree(os.path.join(tmp, t), ignore_errors=True)
            removed.append("tmp " + t)
    return removed


def _addr_value(addr):
    return int(ipaddress.IPv4Address(addr))


class HttpError(ConnectionError):
    """curl could not complete the request (refused, timed out...)."""


class Response:
    """The parts of an httpx.Response the tests use."""

    def __init__(self, status_code, headers, content):
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self):
        return self.content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)

    def raise_for_status(self):
        if self.status_code >= 400:
            raise AssertionError("HTTP %d: %s" % (self.status_code, self.text[:300]))


def _parse_curl_output(out):
    """curl -i output -> (status, headers, body), skipping 1xx header blocks."""
    while True:
        head, sep, rest = out.partition(b"\r\n\r\n")
        if not sep:
            raise HttpError("no HTTP header block in curl output")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if 100 <= status < 200:
            out = rest
            continue
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers, rest


class NetNS:
    """One network namespace with its processes, cgroups and nftables faults."""

    def __init__(self, name=None):
        self.name = name or "%s%d-%s" % (PREFIX, os.getpid(), secrets.token_hex(3))
        self.procs = []
        self.members = []     # (addr, cgroup path relative to CGROUP_FS)
        self.partitions = []  # (frozenset a, frozenset b)
        self.losses = {}      # addr -> percent
        self.cg_root = None
        self.cg_dir = None
        self.opened = False
        self.closed = False
        self._tmp = None
        self._lock = threading.Lock()

    # -------------------------------------------------------------------- lifecycle

    def open(self):
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        cleanup_stale()
        _sh(["ip", "netns", "add", self.name])
        with _OPEN_LOCK:
            _OPEN.append(self)
        self.opened = True
        try:
            _sh(["ip", "-n", self.name, "link", "set", "lo", "up"])
            self.cg_root = cgroup2_root()
            self.cg_dir = os.path.join(self.cg_root, self.name)
            os.mkdir(self.cg_dir)
            self._tmp = tempfile.mkdtemp(prefix=self.name + "-")
            self._apply()
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()
        return False

    def exists(self):
        return os.path.exists(os.path.join(NETNS_DIR, self.name))

    def pids(self):
        """Every process in the namespace now."""
        return _netns_pids(self.name) if self.exists() else []

    def close(self):
        """Kills every process started here, then any left in the namespace; removes the
        cgroups, the namespace and the temp files. Idempotent."""
        with self._lock:
            if self.closed or not self.opened:
                return
            self.closed = True
        for p in self.procs:
            p.kill()
        if self.cg_dir:
            _kill_cgroup(self.cg_dir)
        _delete_netns(self.name)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        with _OPEN_LOCK:
            if self in _OPEN:
                _OPEN.remove(self)

    # -------------------------------------------------------------------- processes

    def exec_prefix(self):
        return ["ip", "netns", "exec", self.name]

    def _member_prefix(self, addr, group):
        """Command prefix running a program in the namespace in cgroup `group` of addr (made
        and registered on first use): the connections it opens count as addr's."""
        ipaddress.IPv4Address(addr)
        path = os.path.join(self.cg_dir, group)
        if not os.path.isdir(path):
            os.mkdir(path)
            with self._lock:
                self.members.append((addr, os.path.relpath(path, CGROUP_FS)))
            self._apply()
        # the shell moves itself into the cgroup before exec: every socket the program ever
        # opens belongs to it
        return ["/bin/sh", "-c", 'echo $$ > "$1" && shift && exec "$@"', "sh",
                os.path.join(path, "cgroup.procs")] + self.exec_prefix()

    def proc(self, name, argv, directory, addr=None, env=None):
        """A harness.Proc (not started) that runs argv in the namespace. With addr, the
        process gets its own cgroup and the connections it opens count as addr's."""
        if addr is None:
            prefix = self.exec_prefix()
        else:
            prefix = self._member_prefix(addr, name + "-" + secrets.token_hex(2))
        p = harness.Proc(name, prefix + list(argv), directory, env=env)
        self.procs.append(p)
        return p

    def run(self, argv, timeout=10, input=None, check=False, as_addr=None):
        """Runs argv in the namespace; CompletedProcess with stdout/stderr as bytes. With
        as_addr, the connections it opens count as that address's (as the process there)."""
        prefix = self.exec_prefix() if as_addr is None else \
            self._member_prefix(as_addr, "run-" + as_addr.replace(".", "-"))
        return subprocess.run(prefix + list(argv), input=input, capture_output=True,
                              timeout=harness.bound(timeout) + 5, check=check)

    def python(self, code, *args, timeout=20):
        """Runs a Python snippet in the namespace; its stdout parsed as JSON."""
        r = self.run(["/usr/bin/python3", "-c", code] + [str(a) for a in args], timeout=timeout)
        if r.returncode != 0:
            raise AssertionError("python in %s exited %d: %s" % (self.name, r.returncode,
                                                                 r.stderr.decode()[-2000:]))
        return json.loads(r.stdout)

    def http(self, method, url, json_body=None, body=None, headers=None, timeout=10,
             http2=False, params=None, as_addr=None):
        """One HTTP request from inside the namespace (curl; as_addr: as for run). Headers
        and body go through files (0600, removed at once), never on a command line.
        HttpError when curl fails."""
        if params:
            from urllib.parse import urlencode
            url += ("&" if "?" in url else "?") + urlencode(params)
        hdrs = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("content-type", "application/json")
        fd, hfile = tempfile.mkstemp(dir=self._tmp)
        with os.fdopen(fd, "w") as f:
            for k, v in hdrs.items():
                f.write("%s: %s\n" % (k, v))
            f.write("Expect:\n")
        argv = ["curl", "-sS", "-i", "-k", "-X", method, "-H", "@" + hfile,
                "--max-time", "%.1f" % harness.bound(timeout),
                "--http2" if http2 else "--http1.1"]
        if body is not None:
            argv += ["--data-binary", "@-"]
        argv.append(url)
        try:
            r = self.run(argv, timeout=timeout, input=body if body is not None else b"",
                         as_addr=as_addr)
        finally:
            os.unlink(hfile)
        if r.returncode != 0:
            raise HttpError("curl %s %s: exit %d %s" % (method, url, r.returncode,
                                                       r.stderr.decode("utf-8", "replace").strip()))
        return Response(*_parse_curl_output(r.stdout))

    def http_get(self, url, **kw):
        return self.http("GET", url, **kw)

    # ----------------------------------------------------------------------- faults

    def partition(self, a_addrs, b_addrs):
        """Drops every packet of every connection between the two groups of addresses."""
        a, b = frozenset(a_addrs), frozenset(b_addrs)
        assert a and b and not (a & b), "partition groups must be disjoint and non-empty"
        for x in a | b:
            ipaddress.IPv4Address(x)
        with self._lock:
            self.partitions.append((a, b))
        self._apply()

    def heal(self):
        with self._lock:
            self.partitions = []
        self._apply()

    def drop(self, addr, percent):
        """Drops percent % (random, per packet, both directions) of addr's traffic."""
        ipaddress.IPv4Address(addr)
        assert 0 <= percent <= 100
        with self._lock:
            self.losses[addr] = int(percent)
        self._apply()

    def undrop(self, addr=None):
        with self._lock:
            if addr is None:
                self.losses = {}
            else:
                self.losses.pop(addr, None)
        self._apply()

    def ruleset(self):
        """The nft script for the current members and faults."""
        with self._lock:
            members = list(self.members)
            partitions = list(self.partitions)
            losses = dict(self.losses)
        marks = {}
        for addr, _ in members:
            marks.setdefault(addr, _addr_value(addr))

        def aset(addrs):
            return "{ %s }" % ", ".join(sorted(addrs))

        def mset(addrs):
            ms = sorted({marks[a] for a in addrs if a in marks})
            return "{ %s }" % ", ".join("0x%08x" % m for m in ms) if ms else None

        out = ["table inet llmr", "delete table inet llmr", "table inet llmr {",
               "  chain members {", "    type filter hook output priority -150; policy accept;"]
        for addr, rel in members:
            for level in range(1, MAX_CGROUP_LEVEL + 1):
                out.append('    socket cgroupv2 level %d "%s" ct state new ct mark set 0x%08x'
                           % (level, rel, marks[addr]))
        out.append("  }")
        for i, (addr, pct) in enumerate(sorted(losses.items())):
            out += ["  chain loss%d {" % i, "    numgen random mod 100 < %d drop" % pct,
                    "    accept", "  }"]
        out += ["  chain faults {", "    type filter hook output priority 0; policy accept;"]
        for a, b in partitions:
            for x, y in ((a, b), (b, a)):
                out.append("    ct original ip saddr %s ct original ip daddr %s drop"
                           % (aset(x), aset(y)))
                if mset(x):
                    out.append("    ct mark %s ct original ip daddr %s drop" % (mset(x), aset(y)))
        for i, (addr, pct) in enumerate(sorted(losses.items())):
            # the loss chain accepts what it does not drop: one roll per packet
            out.append("    ct original ip daddr %s jump loss%d" % (addr, i))
            out.append("    ct original ip saddr %s jump loss%d" % (addr, i))
            if addr in marks:
                out.append("    ct mark 0x%08x jump loss%d" % (marks[addr], i))
        out += ["  }", "}"]
        return "\n".join(out) + "\n"

    def _apply(self):
        script = self.ruleset()
        r = _sh(["nsenter", "--net=" + os.path.join(NETNS_DIR, self.name), "nft", "-f", "-"],
                input=script.encode(), check=False)
        if r.returncode != 0:
            raise RuntimeError("nft failed in %s: %s\n%s" % (self.name, r.stderr.decode(), script))

    def nft_list(self):
        r = _sh(["nsenter", "--net=" + os.path.join(NETNS_DIR, self.name), "nft", "list",
                 "table", "inet", "llmr"])
        return r.stdout.decode()


# ------------------------------------------------------- the harness's servers, in a netns

class Etcd(harness.Etcd):
    """harness.Etcd listening on addr inside ns."""

    def __init__(self, ns, directory, addr, client_port=2379, peer_port=2380):
        super().__init__(directory)
        self.ns = ns
        self.addr = addr
        argv = []
        for a in self.proc.argv:
            a = a.replace("127.0.0.1:%d" % self.client_port, "%s:%d" % (addr, client_port))
            a = a.replace("127.0.0.1:%d" % self.peer_port, "%s:%d" % (addr, peer_port))
            argv.append(a)
        self.client_port, self.peer_port = client_port, peer_port
        self.url = "http://%s:%d" % (addr, client_port)
        self.proc = ns.proc("etcd", argv, directory, addr=addr)

    def healthy(self):
        if not self.proc.running():
            raise harness.Fatal("etcd exited:\n" + self.proc.log_tails())
        r = self.ns.http_get(self.url + "/health", timeout=2)
        return r.status_code == 200 and r.json().get("health") == "true"

    def range_prefix(self, prefix):
        import base64
        key = base64.b64encode(prefix.encode()).decode()
        end = base64.b64encode(harness._prefix_end(prefix.encode())).decode()
        r = self.ns.http("POST", self.url + "/v3/kv/range",
                         json_body={"key": key, "range_end": end}, timeout=5)
        r.raise_for_status()
        return {base64.b64decode(kv["key"]).decode("utf-8", "replace"):
                base64.b64decode(kv.get("value", "")) for kv in r.json().get("kvs", [])}


class Mock(harness.Mock):
    """harness.Mock (cleartext) listening on addr inside ns."""

    def __init__(self, ns, directory, addr, name="mock", args=(), port=0):
        super().__init__(directory, name=name, args=args, port=port)
        self.ns = ns
        self.addr = addr
        argv = [a.replace("127.0.0.1:%d" % port, "%s:%d" % (addr, port)) for a in self.proc.argv]
        self.proc = ns.proc(name, argv, directory, addr=addr)

    def start(self):
        self.proc.start()
        pat = re.compile(r"mockprovider listening on [^\s:]+:(\d+)")

        def listening():
            if not self.proc.running():
                raise harness.Fatal("mockprovider exited:\n" + self.proc.log_tails())
            m = pat.search(self.proc.stdout_text())
            return m and int(m.group(1))

        self.port = harness.wait_for(listening, 15, "mockprovider to listen")
        self.url = "http://%s:%d" % (self.addr, self.port)
        self.base_url = self.url + "/v1"
        harness.wait_for(lambda: self.stats() is not None, 10, "mockprovider /mock/stats")
        return self

    def stats(self):
        r = self.ns.http_get(self.url + "/mock/stats")
        r.raise_for_status()
        return r.json()

    def requests(self):
        r = self.ns.http_get(self.url + "/mock/requests")
        r.raise_for_status()
        body = r.json()
        return body["requests"] if isinstance(body, dict) else body

    def configure(self, **cfg):
        self.ns.http("POST", self.url + "/mock/config", json_body=cfg).raise_for_status()

    def reset(self):
        self.ns.http("POST", self.url + "/mock/reset").raise_for_status()


class Admin(harness.Admin):
    """harness.Admin whose requests run in the namespace."""

    def __init__(self, ns, url, token):
        super().__init__(url, token)
        self.ns = ns

    def request(self, method, path, json_body=None, token=None, expect=None, params=None):
        headers = {"authorization": "Bearer " + (token if token is not None else self.token)}
        r = self.ns.http(method, self.url + path, json_body=json_body, headers=headers,
                         timeout=15, params=params)
        self.calls.append({"method": method, "path": path, "status": r.status_code,
                           "request_id": r.headers.get("x-request-id"),
                           "token": token if token is not None else self.token})
        if expect is not None:
            assert r.status_code == expect, "%s %s -> %d %s" % (method, path, r.status_code,
                                                                r.text[:500])
        return r

    def as_token(self, token):
        return Admin(self.ns, self.url, token)


class Node(harness.Node):
    """harness.Node on addr inside ns: client API (TLS) on addr:8443, cleartext on addr:8080,
    admin API on addr:9090 unless ports says otherwise. Clients: chat() and admin (curl)."""

    def __init__(self, ns, directory, name, etcd_urls, prefix, addr, ports=None, **kw):
        self.ns = ns
        self.addr = addr
        ports = dict({"listen": 8443, "plain": 8080, "admin": 9090}, **(ports or {}))
        super().__init__(directory, name, etcd_urls, prefix, ports=ports, **kw)
        self.url = "https://%s:%d" % (addr, self.port)
        self.plain_url = "http://%s:%d" % (addr, self.plain_port)
        self.admin_url = "http://%s:%d" % (addr, self.admin_port)
        self.proc = ns.proc("node-" + name, self.argv(), self.directory, addr=addr,
                            env=self.proc.env)
        self.admin = Admin(ns, self.admin_url, self.admin_token)

    def argv(self):
        a = super().argv()
        return [x.replace("127.0.0.1:", self.addr + ":") for x in a]

    def readyz(self):
        r = self.ns.http_get(self.admin_url + "/readyz", timeout=5)
        return r.status_code, r.json()

    def wait_ready(self, timeout=20):
        def ready():
            if not self.proc.running():
                raise harness.Fatal("llmrelay %s exited with %r:\n%s"
                                    % (self.name, self.proc.popen.poll(), self.proc.log_tails()))
            code, body = self.readyz()
            return code == 200 and body.get("ready") is True
        harness.wait_for(ready, timeout, "node %s /readyz" % self.name)

    def client(self, **kw):
        raise NotImplementedError("the node is in a network namespace: use chat() / ns.http()")

    h1_client = client

    def chat(self, secret, model, text="hello there", timeout=30, **kw):
        """POST /v1/chat/completions on the cleartext listener; the Response."""
        return self.ns.http("POST", self.plain_url + "/v1/chat/completions",
                            json_body=harness.chat_body(text, model=model, **kw),
                            headers={"authorization": "Bearer " + secret}, timeout=timeout)

    def models(self, secret, timeout=5):
        """Model ids GET /v1/models lists for secret, or None if it is refused."""
        r = self.ns.http_get(self.plain_url + "/v1/models",
                             headers={"authorization": "Bearer " + secret}, timeout=timeout)
        if r.status_code != 200:
            return None
        return [m.get("id") for m in r.json().get("data", [])]


def key_visible(node, secret, model):
    """True when node accepts secret and lists model (its config has reached the node)."""
    ids = node.models(secret)
    return ids is not None and model in ids


# A UDP echo probe run inside the namespace: an echo server on argv[1] (a thread), a client
# on 127.0.0.1 sending argv[2] datagrams; prints what got through each way.
UDP_PROBE = r"""
import json, socket, sys, threading, time
addr, n = sys.argv[1], int(sys.argv[2])
def sock(host):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 1 << 22)  # SO_RCVBUFFORCE: no overflow drops
    s.bind((host, 0))
    return s
srv, cli = sock(addr), sock("127.0.0.1")
got, replies = [0], [0]
def serve():
    while True:
        data, peer = srv.recvfrom(64)
        if data == b"stop":
            return
        got[0] += 1
        try:
            srv.sendto(data, peer)
        except PermissionError:  # dropped by nftables on the way out: lost
            pass
def collect():
    cli.settimeout(0.5)
    try:
        while True:
            cli.recvfrom(64)
            replies[0] += 1
    except socket.timeout:
        pass
threads = [threading.Thread(target=f, daemon=True) for f in (serve, collect)]
for t in threads:
    t.start()
for i in range(n):
    try:
        cli.sendto(b"%d" % i, srv.getsockname())
    except PermissionError:
        pass
    if i % 20 == 19:
        time.sleep(0.002)
threads[1].join()
print(json.dumps({"sent": n, "received": got[0], "replies": replies[0]}))
"""


def udp_probe(ns, addr, count=400):
    """{"sent", "received" (by the server on addr), "replies" (back at the client)}."""
    return ns.python(UDP_PROBE, addr, count)
