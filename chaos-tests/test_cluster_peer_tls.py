# ctest-labels: e2e
"""Peer RPC with operator-given certificates (issue 4, "TLS when peer certificates are
configured"): two nodes present certificates of the cluster's CA on --peer-listen
(--peer-tls-cert/--peer-tls-key) and verify each other against it (--peer-ca-file); the
sharded quota works between them (a request on the key's non-owner is admitted from a
lease and its final settle acknowledged). A third node with a throw-away certificate is a
gossip member, but the verifying nodes refuse to talk peer RPC to it: a drain forwarded to
it never arrives (the batch fails, counted) and it keeps serving."""

import os
import time

import pytest

import certs
import harness
from harness import Route, wait_for, wait_key_visible


def member(nodes, name, ckey, ca_dir, ca=None, join=None):
    g, p = harness.free_port(), harness.free_port()
    args = ["--gossip", "127.0.0.1:%d" % g, "--peer-listen", "127.0.0.1:%d" % p, "--cluster-key-file", ckey]
    if ca is not None:
        cert, key = certs.make_server_cert(ca_dir, ca, name="peer-" + name)
        args += ["--peer-tls-cert", cert, "--peer-tls-key", key, "--peer-ca-file", ca[0]]
    if join:
        args += ["--join", join]
    n = nodes.make(name, workers=1, extra_args=args)
    n.gossip_addr = "127.0.0.1:%d" % g
    return n.start()


def quota(node, key_id=None):
    path = "/admin/v1/cluster" + ("?key=" + key_id if key_id else "")
    return node.admin.request("GET", path, expect=200).json()


@pytest.fixture(scope="module")
def pair(nodes, workdir):
    ca_dir = os.path.join(workdir, "ca")
    ca = certs.make_ca(ca_dir)
    ckey = harness.key_file(workdir, "cluster.key")
    a = member(nodes, "t1", ckey, ca_dir, ca=ca)
    b = member(nodes, "t2", ckey, ca_dir, ca=ca, join=a.gossip_addr)
    wait_for(lambda: all(len([m for m in quota(x)["members"] if m["status"] == "alive"]) == 2 for x in (a, b)),
             harness.bound(15), "t1 and t2 alive to each other")
    return a, b, ckey, ca_dir


def test_verified_peers_share_a_key(pair, mock):
    a, b, _, _ = pair
    route = Route(a, mock, key_limits={"budget_tokens": 100000})
    for n in (a, b):
        wait_key_visible(n, route.secret, route.model)
    owner = quota(a, route.key_id)["key"]["owner"]
    other = b if owner == a.name else a
    owner_node = a if owner == a.name else b
    for _ in range(3):
        with other.client(timeout=harness.bound(20)) as c:
            r = c.post("/v1/chat/completions", headers=route.headers(),
                       json={"model": route.model, "max_tokens": 5, "messages": [{"role": "user", "content": "tls"}]})
            assert r.status_code == 200, r.text[:300]
    q = quota(owner_node)["quota"]
    assert q["settles_acked"] >= 3 and q["reports_received"] >= 1, q
    for n in (a, b):
        assert quota(n)["quota"]["peer_batches_failed"] == 0


def test_a_peer_without_the_clusters_certificate_is_refused(pair, nodes, mock):
    a, b, ckey, ca_dir = pair
    c = member(nodes, "t3", ckey, ca_dir, ca=None, join=a.gossip_addr)
    wait_for(lambda: any(m["name"] == "t3" and m["status"] == "alive" for m in quota(a)["members"]),
             harness.bound(15), "t3 alive in t1's view")
    before = quota(a)["quota"]["peer_batches_failed"]
    r = a.admin.request("POST", "/admin/v1/drain", {"node": "t3"}, expect=202).json()
    assert r["via"] == "t1"
    wait_for(lambda: quota(a)["quota"]["peer_batches_failed"] > before, harness.bound(10),
             "t1's batch to t3 fails certificate verification")
    time.sleep(1)
    assert c.running() and c.readyz()[0] == 200, "t3 drained on a message from an unverified channel"
