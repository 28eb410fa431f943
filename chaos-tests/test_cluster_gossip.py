# ctest-labels: e2e sanitize
"""SWIM membership in the node (issue 4): three nodes on loopback, gossiping over UDP
sealed with a shared cluster key, see each other alive in GET /admin/v1/cluster and
`llmrelayctl cluster status`; packets that are random bytes, bit-flipped or replayed are
dropped and counted (gossip_packets in the answer) and the node stays healthy; a node
with another cluster key never joins; a node stopped with SIGTERM is seen "left" (never
"dead"); a node killed with SIGKILL is seen "dead" within a bound (the time is printed).

The replayed packet is a real one: a fourth node is started with a Python UDP socket as
its only seed, its first (sealed) join datagram is captured there, then sent to a member
twice (accepted, then dropped as a replay). That member thereby learns of the fourth node,
which joins; it is the one killed with SIGKILL at the end."""

import json
import os
import secrets
import socket
import subprocess
import time

import pytest

import harness
from harness import wait_for

DEAD_BOUND_S = 20


def members(node):
    r = node.admin.request("GET", "/admin/v1/cluster", expect=200)
    return {m["name"]: m for m in r.json()["members"]}


def packets(node):
    return node.admin.request("GET", "/admin/v1/cluster", expect=200).json()["gossip_packets"]


def statuses(node):
    return {name: m["status"] for name, m in members(node).items()}


def ctl(node, *args):
    return subprocess.run([harness.binary("llmrelayctl"), "--admin", node.admin_url, "--token-file",
                           node.token_file] + list(args), capture_output=True, text=True, timeout=30)


def gossip_node(nodes, name, key, join=None, wait=True):
    port = harness.free_port()
    args = ["--gossip", "127.0.0.1:%d" % port, "--cluster-key-file", key, "--region", "r-" + name]
    if join:
        args += ["--join", join]
    n = nodes.make(name, extra_args=args)
    n.gossip_addr = "127.0.0.1:%d" % port
    n.gossip_port = port
    return n.start(wait=wait)


@pytest.fixture(scope="module")
def key(workdir):
    return harness.key_file(workdir, "cluster.key")


@pytest.fixture(scope="module")
def trio(nodes, key):
    g1 = gossip_node(nodes, "g1", key)
    g2 = gossip_node(nodes, "g2", key, join=g1.gossip_addr)
    g3 = gossip_node(nodes, "g3", key, join=g1.gossip_addr)
    return g1, g2, g3


def test_three_nodes_see_each_other_alive(trio):
    names = {"g1", "g2", "g3"}
    t0 = time.monotonic()
    for n in trio:
        wait_for(lambda: {k for k, v in statuses(n).items() if v == "alive"} >= names, 10,
                 "%s to see g1, g2, g3 alive" % n.name)
    print("all three alive everywhere after %.2fs" % (time.monotonic() - t0))
    m = members(trio[1])
    assert m["g1"]["region"] == "r-g1" and m["g1"]["gossip"] == trio[0].gossip_addr
    assert m["g1"]["version"] and m["g1"]["load"] is None
    # keys: every key has exactly one owner among the alive members
    for i in range(5):
        trio[0].admin.request("POST", "/admin/v1/keys", json_body={"name": "gk%d" % i}, expect=201)

    def owners_add_up():
        for n in trio:
            ms = members(n)
            if sum(ms[x]["keys_owned"] for x in names) < 5:
                return False
        return True
    wait_for(owners_add_up, 15, "keys_owned to add up to the 5 keys on every node")
    # the CLI: a table and the same JSON
    out = ctl(trio[2], "cluster", "status")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "REGION", "VERSION", "STATUS"], out.stdout
    for name in names:
        assert any(line.split()[0] == name and "alive" in line.split() for line in lines[1:]), out.stdout
    js = ctl(trio[2], "--json", "cluster", "status")
    assert js.returncode == 0, js.stderr
    got = json.loads(js.stdout)
    assert {m["name"] for m in got["members"]} >= names
    for m in got["members"]:
        assert set(m) >= {"name", "region", "version", "status", "gossip", "keys_owned", "load"}


def test_garbage_and_replays_are_dropped(nodes, trio, key):
    g1 = trio[0]
    # a spy seed: capture the first sealed datagram of a real node (g4) sent to it
    spy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    spy.bind(("127.0.0.1", 0))
    spy.settimeout(bound_s(10))
    g4 = gossip_node(nodes, "g4", key, join="127.0.0.1:%d" % spy.getsockname()[1])
    try:
        packet, _ = spy.recvfrom(4096)
    finally:
        spy.close()
    assert packet[0] == 1 and len(packet) > 41, "not a sealed gossip packet"
    before = packets(g1)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = ("127.0.0.1", g1.gossip_port)
    n_random = 50
    for i in range(n_random):
        tx.sendto(secrets.token_bytes(20 + i * 7), target)
    flipped = bytearray(packet)
    flipped[30] ^= 0x01  # in the ciphertext: the tag no longer verifies
    tx.sendto(bytes(flipped), target)
    time.sleep(0.2)
    tx.sendto(packet, target)  # first time: a valid packet, accepted
    time.sleep(0.2)
    tx.sendto(packet, target)  # again: a replay
    tx.close()

    def counted():
        now = packets(g1)
        dropped = (now["malformed"] - before["malformed"]) + (now["forged"] - before["forged"])
        return dropped >= n_random + 1 and now["replayed"] - before["replayed"] >= 1 and now
    now = wait_for(counted, 10, "g1 to count the garbage and the replay as dropped")
    print("g1 gossip packets before %s after %s" % (before, now))
    # still healthy, still a member of a working cluster; g4 joined through the replayed
    # packet's first (accepted) copy
    r = harness.httpx.get(g1.admin_url + "/healthz", timeout=5)
    assert r.status_code == 200
    for n in list(trio) + [g4]:
        wait_for(lambda: {k for k, v in statuses(n).items() if v == "alive"} >= {"g1", "g2", "g3", "g4"}, 15,
                 "%s to see g1..g4 alive" % n.name)


def bound_s(s):
    return harness.bound(s)


def test_other_cluster_key_never_joins(nodes, trio, workdir):
    g1 = trio[0]
    before = packets(g1)["forged"]
    other = gossip_node(nodes, "stranger", harness.key_file(workdir, "other.key"), join=g1.gossip_addr)
    wait_for(lambda: packets(g1)["forged"] > before, 10, "g1 to drop the stranger's packets as forged")
    time.sleep(3)
    for n in trio:
        assert "stranger" not in members(n), "a node with another cluster key joined"
    assert set(members(other)) == {"stranger"}
    assert other.stop() == 0


def test_sigterm_is_seen_as_left(trio):
    g1, g2, g3 = trio
    t0 = time.monotonic()
    assert g3.stop() == 0
    seen = []

    def left():
        s1, s2 = statuses(g1).get("g3"), statuses(g2).get("g3")
        seen.extend([s1, s2])
        return s1 == "left" and s2 == "left"
    wait_for(left, 10, "g1 and g2 to see g3 left")
    print("g3 seen left after %.2fs" % (time.monotonic() - t0))
    assert "dead" not in seen, "a gracefully stopped node was seen dead"
    assert "leaving the cluster" in g3.logs_text()


def test_sigkill_is_seen_as_dead(nodes, trio):
    g1, g2 = trio[0], trio[1]
    g4 = [n for n in nodes.nodes if n.name == "g4"][0]
    wait_for(lambda: statuses(g1).get("g4") == "alive" and statuses(g2).get("g4") == "alive", 10, "g4 alive")
    t0 = time.monotonic()
    g4.kill()
    seen = {}

    def dead():
        for n in (g1, g2):
            if n.name not in seen and statuses(n).get("g4") == "dead":
                seen[n.name] = time.monotonic() - t0
        return len(seen) == 2
    wait_for(dead, DEAD_BOUND_S, "g1 and g2 to see g4 dead", interval=0.1)
    print("g4 (SIGKILL) seen dead by g1 after %.2fs, by g2 after %.2fs" % (seen["g1"], seen["g2"]))
    assert "member g4 dead" in g1.logs_text()
    assert harness.httpx.get(g1.admin_url + "/healthz", timeout=5).status_code == 200


# ------------------------------------------------------------------ push-pull over TCP
PP_ENV = dict(os.environ, LLMRELAY_GOSSIP_PUSHPULL_MS="300")  # hidden test knob: push-pull often


def pp_node(nodes, name, key, join=None):
    port = harness.free_port()
    args = ["--gossip", "127.0.0.1:%d" % port, "--cluster-key-file", key, "--region", "r-" + name]
    if join:
        args += ["--join", join]
    n = nodes.make(name, extra_args=args, env=PP_ENV)
    n.gossip_addr = "127.0.0.1:%d" % port
    n.gossip_port = port
    return n.start()


def pp_lines(node, direction="with"):
    return [line for line in node.logs_text().splitlines() if "gossip: push-pull %s" % direction in line]


@pytest.fixture(scope="module")
def pp_trio(nodes, key):
    p1 = pp_node(nodes, "p1", key)
    p2 = pp_node(nodes, "p2", key, join=p1.gossip_addr)
    wait_for(lambda: statuses(p2).get("p1") == "alive", 10, "p2 to see p1")
    p3 = pp_node(nodes, "p3", key, join=p2.gossip_addr)
    return p1, p2, p3


def test_pushpull_on_join_and_periodic(pp_trio):
    p1, p2, p3 = pp_trio
    # p3 only knows p2's address; its first push-pull with p2 brings p2's whole table (p1 too)
    wait_for(lambda: statuses(p3).get("p1") == "alive", 10, "p3 to learn p1")
    first = wait_for(lambda: [line for line in pp_lines(p3) if p2.gossip_addr in line], 10,
                     "p3 to push-pull with its seed p2")
    received = int(first[0].split("received ")[1].split()[0])
    assert received >= 2, first[0]  # p2 and p1 (p2's table when p3 connected)
    # the periodic push-pull (every 300 ms here) runs on every node, both ways
    for n in pp_trio:
        wait_for(lambda: len(pp_lines(n)) >= 3, 10, "%s to run periodic push-pulls" % n.name)
    assert "dropped" not in "\n".join(pp_lines(p1) + pp_lines(p2) + pp_lines(p3))
    for n in pp_trio:
        wait_for(lambda: {k for k, v in statuses(n).items() if v == "alive"} >= {"p1", "p2", "p3"}, 10,
                 "%s to see p1..p3 alive" % n.name)


def test_pushpull_garbage_is_dropped(pp_trio):
    p1 = pp_trio[0]
    target = ("127.0.0.1", p1.gossip_port)

    def conn():
        s = socket.create_connection(target, timeout=5)
        hello = b""
        while len(hello) < 21:
            chunk = s.recv(21 - len(hello))
            assert chunk, "no hello"
            hello += chunk
        assert hello[:5] == b"LRPP\x01"
        return s

    def port_of(s):
        return "127.0.0.1:%d" % s.getsockname()[1]

    cases = {}
    # a well-formed frame under no key at all: the tag does not verify
    s = conn()
    body = secrets.token_bytes(300)
    s.sendall(secrets.token_bytes(16) + b"\x01" + len(body).to_bytes(4, "big") + body + secrets.token_bytes(16))
    cases[port_of(s)] = ("forged", s)
    # random bytes: another frame version
    s = conn()
    s.sendall(secrets.token_bytes(16) + b"\x07" + secrets.token_bytes(100))
    cases[port_of(s)] = ("malformed", s)
    # a declared length over the bound: refused before anything is buffered
    s = conn()
    s.sendall(secrets.token_bytes(16) + b"\x01\x7f\xff\xff\xff")
    cases[port_of(s)] = ("oversized", s)
    # silent: closed by the node after ~2 s
    t0 = time.monotonic()
    s = conn()
    cases[port_of(s)] = ("timed out", s)
    for addr, (why, s) in cases.items():
        s.settimeout(5)
        try:
            assert s.recv(100) == b"", "%s: the node answered" % why
        except ConnectionResetError:
            pass
        s.close()
    assert time.monotonic() - t0 < 4, "a silent connection was held too long"
    text = p1.logs_text()
    for addr, (why, _) in cases.items():
        assert ("push-pull from %s dropped (%s" % (addr, why)) in text, (addr, why)
    # healthy, and push-pull still works
    assert harness.httpx.get(p1.admin_url + "/healthz", timeout=5).status_code == 200
    n = len(pp_lines(p1))
    wait_for(lambda: len(pp_lines(p1)) > n, 10, "p1 to push-pull again")


# ------------------------------------------------------------------ discovery through etcd
def test_etcd_discovery_without_join(nodes, etcd, key):
    """Three nodes started with no --join find each other through members/<name> in etcd
    (they also find the module's other nodes: same etcd prefix); a graceful stop revokes
    the registration's lease, so the key is gone at once (not after its 10 s TTL)."""
    ds = [gossip_node(nodes, name, key) for name in ("d1", "d2", "d3")]
    t0 = time.monotonic()
    for n in ds:
        wait_for(lambda: {k for k, v in statuses(n).items() if v == "alive"} >= {"d1", "d2", "d3"}, 15,
                 "%s to see d1..d3 alive with no --join" % n.name)
    print("d1..d3 found each other through etcd after %.2fs" % (time.monotonic() - t0))
    regs = etcd.range_prefix(nodes.prefix + "members/")
    for n in ds:
        value = regs.get(nodes.prefix + "members/" + n.name)
        assert value is not None, sorted(regs)
        # MemberRegistration: the gossip address and the region are in it (protobuf strings)
        assert n.gossip_addr.encode() in value and ("r-" + n.name).encode() in value
    assert "etcd lists" in ds[0].logs_text() or "etcd lists" in ds[1].logs_text()
    t0 = time.monotonic()
    assert ds[2].stop() == 0
    assert nodes.prefix + "members/d3" not in etcd.range_prefix(nodes.prefix + "members/")
    assert time.monotonic() - t0 < 8, "the registration outlived a graceful stop"
    assert "registration %smembers/d3 revoked" % nodes.prefix in ds[2].logs_text()
    for n in ds[:2]:
        wait_for(lambda: statuses(n).get("d3") == "left", 10, "%s to see d3 left" % n.name)
