# ctest-labels: e2e
"""The cluster harness itself (netns.py): etcd, the mock and three nodes in one network
namespace, each on its own loopback address; every node relays; a node partitioned from etcd
serves from its cached snapshot and does not see a key made meanwhile until the partition
heals; packet loss on an address drops about the share asked; closing the namespace leaves
no namespace, cgroup or process behind, and stale ones from a crashed run are removed.

Needs root, iproute2, nftables and curl (ops/setup installs them); skipped otherwise."""

import os
import subprocess
import time

import pytest

import harness
import netns
from harness import Route, wait_for

REASON = netns.unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

ETCD_ADDR = "127.0.0.20"
MOCK_ADDR = "127.0.0.30"
NODE_ADDRS = {"n2": "127.0.0.2", "n3": "127.0.0.3", "n4": "127.0.0.4"}
PROPAGATION_BOUND = 10.0
ETCD_NOTICE_BOUND = 30  # the node probes etcd every 2 s with a 5 s request timeout
HEAL_BOUND = 30.0


def _require(name):
    path = harness.binary(name)
    if not os.access(path, os.X_OK):
        pytest.fail("%s not found at %s (set LLMRELAY_BIN to a build directory)" % (name, path),
                    pytrace=False)


class Cluster:
    def __init__(self, workdir):
        self.ns = netns.NetNS().open()
        self.etcd = netns.Etcd(self.ns, os.path.join(workdir, "etcd"), ETCD_ADDR)
        self.mock = netns.Mock(self.ns, os.path.join(workdir, "mock"), MOCK_ADDR)
        prefix = "/llmrelay-test-%s/" % harness.rand_id()
        token = "adm-" + harness.rand_id(32)
        self.nodes = {name: netns.Node(self.ns, workdir, name, self.etcd.url, prefix, addr,
                                       admin_token=token)
                      for name, addr in NODE_ADDRS.items()}

    def start(self):
        self.etcd.start()
        self.mock.start()
        for n in self.nodes.values():
            n.start(wait=False)
        for n in self.nodes.values():
            n.wait_ready()
        return self


@pytest.fixture(scope="module")
def cluster(workdir):
    _require("llmrelay")
    _require("mockprovider")
    c = Cluster(workdir)
    try:
        yield c.start()
    finally:
        c.ns.close()


@pytest.fixture(scope="module")
def route(cluster):
    r = Route(cluster.nodes["n2"], cluster.mock)
    for n in cluster.nodes.values():
        wait_for(lambda n=n: netns.key_visible(n, r.secret, r.model), PROPAGATION_BOUND,
                 "key visible on %s" % n.name)
    return r


def test_loopback_addresses_need_no_setup(cluster):
    # every 127.0.0.x is local in the namespace: listen on several, connect to each
    got = cluster.ns.python(r"""
import json, socket
out = {}
for i in range(2, 10):
    addr = "127.0.0.%d" % i
    ls = socket.socket(); ls.bind((addr, 0)); ls.listen(1)
    c = socket.create_connection(ls.getsockname(), timeout=2)
    s, peer = ls.accept()
    c.sendall(b"x"); out[addr] = s.recv(1).decode()
    for x in (c, s, ls): x.close()
print(json.dumps(out))
""")
    assert got == {"127.0.0.%d" % i: "x" for i in range(2, 10)}
    # and the namespace's servers are not in the host's namespace
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "2",
                        cluster.etcd.url + "/health"])
    assert r.returncode != 0, "etcd of the namespace answered in the host namespace"


def test_every_node_relays(cluster, route):
    before = route.stats()["requests"]
    for n in cluster.nodes.values():
        r = n.chat(route.secret, route.model, text="relay check")
        assert r.status_code == 200, (n.name, r.status_code, r.text[:300])
        assert r.json()["choices"], r.text[:300]
    assert route.stats()["requests"] == before + len(cluster.nodes)
    # the config the nodes share is in etcd, under their prefix
    stored = cluster.etcd.range_prefix(cluster.nodes["n2"].prefix)
    assert any(route.provider in k for k in stored), sorted(stored)


def test_partitioned_node_serves_cached_snapshot(cluster, route):
    ns, n2, n3, n4 = cluster.ns, cluster.nodes["n2"], cluster.nodes["n3"], cluster.nodes["n4"]
    ns.partition([n4.addr], [cluster.etcd.addr])
    try:
        # what n4's address opens to etcd gets no answer; others' connections still do
        with pytest.raises(netns.HttpError):
            ns.http_get(cluster.etcd.url + "/health", timeout=2, as_addr=n4.addr)
        assert ns.http_get(cluster.etcd.url + "/health", as_addr=n3.addr).status_code == 200
        # it still relays with the key it has
        r = n4.chat(route.secret, route.model, text="cut off")
        assert r.status_code == 200, r.text[:300]
        # a key made now reaches n2 and n3 but not n4
        made = n2.admin.create_key(name="k-during-partition", models=[route.model])
        for n in (n2, n3):
            wait_for(lambda n=n: netns.key_visible(n, made["key"], route.model),
                     PROPAGATION_BOUND, "new key on %s" % n.name)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert not netns.key_visible(n4, made["key"], route.model), \
                "n4 saw a key made while it was partitioned from etcd"
            time.sleep(0.2)
        r = n4.chat(made["key"], route.model)
        assert r.status_code == 401, (r.status_code, r.text[:300])
        # the node notices the silent partition (its etcd probe fails) and says so, while
        # staying ready on its cached snapshot
        t_cut = time.monotonic()
        wait_for(lambda: n4.readyz()[1].get("etcd") == "unreachable", ETCD_NOTICE_BOUND,
                 "n4's /readyz to say etcd is unreachable")
        code, body = n4.readyz()
        print("n4 /readyz while partitioned (%.1fs after the checks began): %d %s"
              % (time.monotonic() - t_cut, code, body))
        assert code == 200 and body["ready"] is True and body["snapshot"] == "cached", body
    finally:
        ns.heal()
    wait_for(lambda: n4.readyz()[1].get("etcd") == "ok", HEAL_BOUND,
             "n4's /readyz to say etcd is ok again")
    t0 = time.monotonic()
    wait_for(lambda: netns.key_visible(n4, made["key"], route.model), HEAL_BOUND,
             "n4 to see the new key after the partition healed")
    print("n4 caught up %.1fs after heal" % (time.monotonic() - t0))
    r = n4.chat(made["key"], route.model)
    assert r.status_code == 200, r.text[:300]


def test_partition_applies_to_marked_and_bound_sources(cluster):
    """A process at an address opens connections from 127.0.0.1 (the loopback route's
    source): they still count as its address. A bound source counts too."""
    ns = cluster.ns
    url = cluster.mock.url + "/mock/stats"
    assert ns.http_get(url, as_addr="127.0.0.50").status_code == 200
    ns.partition(["127.0.0.50"], [MOCK_ADDR])
    try:
        with pytest.raises(netns.HttpError):
            ns.http_get(url, timeout=2, as_addr="127.0.0.50")
        r = ns.run(["curl", "-s", "-o", "/dev/null", "--max-time", "2", "--interface",
                    "127.0.0.50", url])
        assert r.returncode == 28, r  # bound to the address: timed out too
        assert ns.http_get(url).status_code == 200  # anyone else: unaffected
        assert ns.http_get(url, as_addr="127.0.0.51").status_code == 200
    finally:
        ns.heal()
    assert ns.http_get(url, as_addr="127.0.0.50").status_code == 200


def test_packet_loss_and_udp_partition(cluster):
    ns = cluster.ns
    lossy, clean = "127.0.0.60", "127.0.0.61"
    base = netns.udp_probe(ns, lossy)
    assert base["received"] == base["sent"] and base["replies"] == base["sent"], base
    ns.drop(lossy, 30)
    try:
        got = netns.udp_probe(ns, lossy)
        other = netns.udp_probe(ns, clean)
    finally:
        ns.undrop(lossy)
    print("30%% loss on %s: %s (other address: %s)" % (lossy, got, other))
    # each way 30 % lost: ~70 % reach the server, ~70 % of its answers come back
    # (n = 400: one standard deviation is ~2.3 points)
    assert 0.55 <= got["received"] / got["sent"] <= 0.85, got
    assert 0.55 <= got["replies"] / max(1, got["received"]) <= 0.85, got
    assert other["received"] == other["sent"] and other["replies"] == other["sent"], other
    after = netns.udp_probe(ns, lossy)
    assert after["replies"] == after["sent"], after
    # a partition drops UDP too
    ns.partition([lossy], ["127.0.0.1"])
    try:
        cut = netns.udp_probe(ns, lossy, count=50)
    finally:
        ns.heal()
    assert cut["received"] == 0 and cut["replies"] == 0, cut


def test_close_removes_everything_and_stale_ones_go(tmp_path, request):
    ns = netns.NetNS().open()
    request.addfinalizer(ns.close)
    member = ns.proc("member", ["sleep", "600"], str(tmp_path), addr="127.0.0.7").start()
    # a process the harness did not start, left behind in the namespace
    ns.run(["/bin/sh", "-c", "setsid sleep 600 >/dev/null 2>&1 < /dev/null &"])
    wait_for(lambda: len(ns.pids()) == 2, 5, "both processes in the namespace")
    cg_dir = ns.cg_dir
    ns.close()
    assert not ns.exists()
    assert not os.path.exists(cg_dir)
    assert not member.running()
    assert ns.name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                         text=True).stdout

    # a namespace (with a process in it) whose creator died: removed at the next start
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = "%s%d-%s" % (netns.PREFIX, dead.pid, harness.rand_id(6))
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", stale, "/bin/sh", "-c",
                        "setsid sleep 600 >/dev/null 2>&1 < /dev/null &"], check=True)
        assert netns._netns_pids(stale)
        # a live creator's namespace is kept, however young
        mine = netns.NetNS().open()
        try:
            removed = netns.cleanup_stale(orphan_age=0)
            assert stale in removed and mine.name not in removed
            assert mine.exists()
        finally:
            mine.close()
        assert not os.path.exists(os.path.join(netns.NETNS_DIR, stale))
    finally:
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True)


def test_cluster_cleanup(cluster):
    """Last: the nodes stop cleanly on SIGTERM; then nothing of the namespace is left."""
    ns = cluster.ns
    for n in cluster.nodes.values():
        assert n.stop(timeout=15) == 0, n.proc.log_tails()
    for n in cluster.nodes.values():
        err = n.proc.stderr_text()
        assert "ERROR: AddressSanitizer" not in err and "runtime error:" not in err, err[-3000:]
    pids = [p.pid for p in ns.procs if p.popen is not None]
    cg_dir = ns.cg_dir
    ns.close()
    assert not ns.exists()
    assert not os.path.exists(cg_dir)
    assert not [p for p in ns.procs if p.running()]
    for pid in pids:
        assert not os.path.exists("/proc/%d" % pid) or _zombie(pid), pid


def _zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
