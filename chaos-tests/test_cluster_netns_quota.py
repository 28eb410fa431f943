# ctest-labels: e2e
"""The sharded quota inside the netns harness (issue 4, item 8): etcd, the mock and three
nodes on their own 127.0.0.x addresses in a fresh network namespace (chaos-tests/netns.py),
gossiping and talking peer RPC; steady state (every node relays a key whose counters live at
one owner), then `kill -9` of the key's owner under streaming load from a load generator
running in the namespace: the backup takes the key over, and the tokens billed are at least
what clients were told in completed responses and at most what the mock served.

Needs root, iproute2, nftables and curl (ops/setup installs them); skipped otherwise."""

import json
import os
import sys
import time

import pytest

import harness
import netns
from harness import Route, wait_for

REASON = netns.unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

ADDRS = {"q2": "127.0.0.2", "q3": "127.0.0.3", "q4": "127.0.0.4"}

LOAD = r"""
import asyncio, json, sys, time
import httpx
urls, secret, model, seconds, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
res = {"told": 0, "completed": 0, "failed": 0, "codes": {}}
body = {"model": model, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 40,
        "messages": [{"role": "user", "content": "[[mock:chunks=20,delay_ms=60]] load"}]}
async def client(i):
    end = time.time() + seconds
    k = i
    async with httpx.AsyncClient(timeout=30) as c:
        while time.time() < end:
            url = urls[k % len(urls)]; k += 1
            try:
                async with c.stream("POST", url + "/v1/chat/completions", json=body,
                                    headers={"authorization": "Bearer " + secret}) as r:
                    res["codes"][str(r.status_code)] = res["codes"].get(str(r.status_code), 0) + 1
                    if r.status_code != 200:
                        await r.aread(); await asyncio.sleep(0.05); continue
                    told, done = None, False
                    async for line in r.aiter_lines():
                        if line.startswith("data:"):
                            d = line[5:].strip()
                            if d == "[DONE]":
                                done = True
                            elif '"usage"' in d:
                                u = json.loads(d).get("usage")
                                if u:
                                    told = u["prompt_tokens"] + u["completion_tokens"]
                    if done and told is not None:
                        res["told"] += told; res["completed"] += 1
                    else:
                        res["failed"] += 1
            except (httpx.HTTPError, OSError):
                res["failed"] += 1
                await asyncio.sleep(0.05)
async def main():
    await asyncio.gather(*(client(i) for i in range(12)))
asyncio.run(main())
with open(out, "w") as f:
    json.dump(res, f)
"""


def view(node, key_id=None):
    return node.admin.request("GET", "/admin/v1/cluster" + ("?key=" + key_id if key_id else ""),
                              expect=200).json()


@pytest.fixture(scope="module")
def qcluster(workdir):
    for name in ("llmrelay", "mockprovider"):
        if not os.access(harness.binary(name), os.X_OK):
            pytest.fail("%s not found (set LLMRELAY_BIN)" % name, pytrace=False)
    ns = netns.NetNS().open()
    try:
        etcd = netns.Etcd(ns, os.path.join(workdir, "etcd"), "127.0.0.20")
        mock = netns.Mock(ns, os.path.join(workdir, "mock"), "127.0.0.30")
        etcd.start()
        mock.start()
        ckey = harness.key_file(workdir, "cluster.key")
        prefix = "/llmrelay-test-%s/" % harness.rand_id()
        token = "adm-" + harness.rand_id(32)
        nodes = {}
        for name, addr in ADDRS.items():
            args = ["--gossip", "127.0.0.1:7946", "--peer-listen", "127.0.0.1:7947", "--cluster-key-file", ckey]
            if name != "q2":
                args += ["--join", ADDRS["q2"] + ":7946"]
            nodes[name] = netns.Node(ns, workdir, name, etcd.url, prefix, addr, admin_token=token, workers=1,
                                     extra_args=args)
            nodes[name].start()
        wait_for(lambda: all(sum(m["status"] == "alive" for m in view(n)["members"]) == 3 for n in nodes.values()),
                 harness.bound(20), "three members alive everywhere")
        yield ns, etcd, mock, nodes, workdir
    finally:
        ns.close()


def test_steady_state_and_kill_of_the_owner_under_load(qcluster):
    ns, etcd, mock, nodes, workdir = qcluster
    route = Route(nodes["q2"], mock, key_limits={"budget_tokens": 10 ** 9})
    for n in nodes.values():
        wait_for(lambda n=n: netns.key_visible(n, route.secret, route.model), harness.bound(15),
                 "key visible on %s" % n.name)
    # steady state: every node relays; the key has one owner and one backup
    for n in nodes.values():
        r = n.chat(route.secret, route.model, text="steady")
        assert r.status_code == 200, (n.name, r.status_code, r.text[:300])
    owner = view(nodes["q2"], route.key_id)["key"]["owner"]
    backup = view(nodes["q2"], route.key_id)["key"]["backup"]
    assert owner in nodes and backup in nodes and owner != backup
    out = os.path.join(workdir, "load.json")
    urls = [n.plain_url for n in nodes.values()]
    load = ns.proc("load", [sys.executable, "-c", LOAD, json.dumps(urls), route.secret, route.model, "9", out],
                   workdir, addr="127.0.0.50")
    load.start()
    time.sleep(3)
    nodes[owner].kill()
    t_kill = time.time()
    survivors = [n for n in nodes.values() if n.name != owner]
    wait_for(lambda: view(survivors[0], route.key_id)["key"]["owner"] == backup, harness.bound(20),
             "the backup owns the key")
    takeover = time.time() - t_kill
    assert load.wait(harness.bound(60)) == 0, load.log_tails()
    with open(out) as f:
        res = json.load(f)
    st = route.stats()
    served = st["input_tokens"] + st["output_tokens"]

    def billed():
        k = survivors[0].admin.request("GET", "/admin/v1/keys/" + route.key_id, expect=200).json()
        return k["spent"]["input_tokens"] + k["spent"]["output_tokens"]
    wait_for(lambda: billed() >= res["told"], harness.bound(30), "billing reaches what clients were told")
    b = billed()
    print("netns: owner %s killed, backup %s took over in %.1f s; %d completed (told %d), %d failed, codes %s; "
          "billed %d, served %d" % (owner, backup, takeover, res["completed"], res["told"], res["failed"],
                                   res["codes"], b, served))
    assert res["completed"] > 0
    assert res["told"] <= b <= served
