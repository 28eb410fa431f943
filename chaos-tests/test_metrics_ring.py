# ctest-labels: e2e, sanitize
"""The metrics ring in etcd (issue 4): every node writes its 5-minute roll-ups to
<prefix>metrics/<node>/<slot> (protobuf MetricSlot); a slot survives a restart and the
restarted node adds to it (it reads the slot back) instead of replacing it; two nodes'
slots are both read by /admin/v1/metrics and cluster-wide /admin/v1/usage; when the test
clock moves 7 days on, every older slot — a departed node's included — is deleted by the
sweep and never returned.

Slots are decoded here with a few lines of protobuf wire format (no python protobuf)."""

import base64
import time

import httpx
import pytest

import harness
from harness import Route, TestClock, wait_for, wait_key_visible

SLOT_MS = 300000
RING = 2016
DAY_MS = 86400 * 1000
P_IN, P_OUT = 2.0, 10.0


# ---- protobuf wire format, just enough for MetricSlot ----

def _varint(buf, i):
    v = shift = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return v, i


def _fields(buf):
    i, out = 0, []
    while i < len(buf):
        tag, i = _varint(buf, i)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 2:
            n, i = _varint(buf, i)
            v, i = buf[i:i + n], i + n
        else:
            raise AssertionError("unexpected wire type %d" % wt)
        out.append((num, v))
    return out


def decode_slot(buf):
    s = {"models": []}
    for num, v in _fields(buf):
        if num == 2:
            s["node"] = v.decode()
        elif num == 3:
            s["start_ms"] = v
        elif num == 6:
            m = {}
            for n2, v2 in _fields(v):
                key = {1: "model", 2: "requests", 3: "errors", 4: "input_tokens",
                       5: "output_tokens", 8: "nano_usd"}.get(n2)
                if key:
                    m[key] = v2.decode() if n2 == 1 else v2
            s["models"].append(m)
    s["requests"] = sum(m.get("requests", 0) for m in s["models"])
    return s


def _enc_varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_field(num, v):
    if isinstance(v, int):
        return _enc_varint(num << 3) + _enc_varint(v)
    return _enc_varint(num << 3 | 2) + _enc_varint(len(v)) + v


def encode_slot(node, start_ms, model, requests):
    m = _enc_field(1, model.encode()) + _enc_field(2, requests) + _enc_field(4, 7)
    return (_enc_field(1, 1) + _enc_field(2, node.encode()) + _enc_field(3, start_ms) +
            _enc_field(4, start_ms) + _enc_field(6, m))


# ---- fixtures and helpers ----

@pytest.fixture(scope="module")
def clock(workdir):
    return TestClock(workdir)


@pytest.fixture(scope="module")
def n1(nodes, clock):
    return nodes.start("r1", env=clock.env())


@pytest.fixture(scope="module")
def route(n1, mock):
    tag = harness.rand_id()
    n1.admin.put_price("m-" + tag, P_IN, P_OUT)
    r = Route(n1, mock, tag=tag)
    wait_key_visible(n1, r.secret, r.model)
    return r


def ring_slots(etcd, prefix, node=None):
    """{key: decoded slot} under <prefix>metrics/ (one node's if given)."""
    p = prefix + "metrics/" + (node + "/" if node else "")
    return {k: decode_slot(v) for k, v in etcd.range_prefix(p).items()}


def served(etcd, prefix, model, node=None):
    """Requests of one model in the ring's slots (GET /v1/models calls count as "other")."""
    return sum(m.get("requests", 0) for s in ring_slots(etcd, prefix, node).values()
               for m in s["models"] if m["model"] == model)


def model_row(m, model):
    rows = [x for x in m["totals"]["models"] if x["model"] == model]
    return rows[0] if rows else {"requests": 0}


def serve(node, route, n):
    with node.client() as c:
        for i in range(n):
            r = c.post("/v1/chat/completions", headers=route.headers(),
                       json={"model": route.model, "max_tokens": 10 + i,
                             "messages": [{"role": "user", "content": "ring %d" % i}]})
            assert r.status_code == 200, r.text[:200]


def metrics(relay, **params):
    return relay.admin.request("GET", "/admin/v1/metrics", params=params, expect=200).json()


def etcd_put(etcd, key, value):
    r = httpx.post(etcd.url + "/v3/kv/put", timeout=5,
                   json={"key": base64.b64encode(key.encode()).decode(),
                         "value": base64.b64encode(value).decode()})
    r.raise_for_status()


# ---- tests ----

def test_slot_in_etcd_and_survives_restart(n1, route, nodes, etcd, clock, mock):
    serve(n1, route, 3)
    # The node's own current counts are answered from memory at once.
    m = metrics(n1, range="1h")
    assert "r1" in m["nodes"]
    assert model_row(m, route.model)["requests"] == 3, m
    # Closing the slot (the clock moves into the next 5 minutes) puts it to etcd.
    clock.advance(SLOT_MS, nodes=[n1])
    wait_for(lambda: served(etcd, nodes.prefix, route.model, "r1") == 3,
             10, "r1's slot in etcd")
    slots = ring_slots(etcd, nodes.prefix, "r1")
    for key, s in slots.items():
        assert s["node"] == "r1"
        assert s["start_ms"] % SLOT_MS == 0
        assert key.endswith("/%04d" % (s["start_ms"] // SLOT_MS % RING))
    sizes = [len(v) for v in etcd.range_prefix(nodes.prefix + "metrics/").values()]
    print("slot value sizes (bytes):", sizes)
    assert sizes and max(sizes) < 1024  # far below the 8 KiB budget for a small config
    rows = [m for s in slots.values() for m in s["models"] if m["model"] == route.model]
    st = route.stats()
    assert sum(r["requests"] for r in rows) == 3
    assert sum(r.get("input_tokens", 0) for r in rows) == st["input_tokens"]
    assert sum(r.get("output_tokens", 0) for r in rows) == st["output_tokens"]
    want_nano = (st["input_tokens"] * P_IN + st["output_tokens"] * P_OUT) * 1000
    assert abs(sum(r.get("nano_usd", 0) for r in rows) - want_nano) <= 3

    # Restart inside one slot: the new process reads the slot back and adds to it.
    serve(n1, route, 2)
    n1.restart()
    wait_for(lambda: served(etcd, nodes.prefix, route.model, "r1") == 5,
             10, "r1's last slot written at exit")
    wait_for(lambda: "slot" in n1.proc.stderr_text() and "read back" in n1.proc.stderr_text(),
             10, "the restarted node to read its slot back")
    serve(n1, route, 1)
    assert model_row(metrics(n1, range="1h"), route.model)["requests"] == 6
    n1.restart()
    wait_for(lambda: served(etcd, nodes.prefix, route.model, "r1") == 6,
             10, "the restarted node's writes to add to the slot, not replace it")
    assert mock is not None


def test_two_nodes_and_cluster_usage(n1, route, nodes, etcd, clock):
    n2 = nodes.start("r2", env=clock.env())
    wait_key_visible(n2, route.secret, route.model)
    serve(n2, route, 4)
    clock.advance(SLOT_MS, nodes=[n1, n2])
    wait_for(lambda: served(etcd, nodes.prefix, route.model, "r2") == 4,
             10, "r2's slot in etcd")
    for node in (n1, n2):  # either node answers for the whole cluster
        m = metrics(node, range="1h")
        assert {"r1", "r2"} <= set(m["nodes"]), m["nodes"]
        assert model_row(m, route.model)["requests"] == 10, m["totals"]
        assert {s["node"] for s in m["slots"]} >= {"r1", "r2"}
        assert sum(s["requests"] for s in m["slots"]) == m["totals"]["requests"]
        u = node.admin.usage(by="node", since="1h")
        assert u["source"] == "metrics_ring"
        groups = {g["group"]: g["requests"] for g in u["groups"]}
        assert set(groups) == {"r1", "r2"} and groups["r1"] >= 6 and groups["r2"] >= 4, u
        assert u["totals"]["requests"] == m["totals"]["requests"]
        bym = node.admin.usage(by="model", since="1h")
        assert {g["group"]: g["requests"] for g in bym["groups"]}[route.model] == 10
    only = metrics(n1, range="1h", node="r2")
    assert only["nodes"] == ["r2"] and model_row(only, route.model)["requests"] == 4
    assert bym["totals"]["usd"] > 0
    # A key's usage still comes from the metadata store.
    assert "source" not in n1.admin.usage(key=route.key_id, since="1h")
    n1.admin.request("GET", "/admin/v1/metrics", params={"range": "soon"}, expect=400)
    n1.admin.request("GET", "/admin/v1/metrics", params={"node": "a/b"}, expect=400)
    viewer = n1.admin.create_token("ring-viewer", "viewer")["token"]
    n1.admin.request("GET", "/admin/v1/metrics", token=viewer, expect=200)
    n2.stop()


def puts_so_far(etcd, prefix, node):
    """How many times the node's slot keys were written (sum of the keys' etcd versions)."""
    p = (prefix + "metrics/" + node + "/").encode()
    end = bytearray(p)
    end[-1] += 1
    r = httpx.post(etcd.url + "/v3/kv/range", timeout=5,
                   json={"key": base64.b64encode(p).decode(),
                         "range_end": base64.b64encode(bytes(end)).decode()})
    r.raise_for_status()
    return sum(int(kv.get("version", 0)) for kv in r.json().get("kvs", []))


def test_one_put_per_minute_when_busy_none_when_idle(n1, route, nodes, etcd, clock):
    """The etcd write rate: a busy node puts its slot once per minute of its clock (and when
    the slot closes), an idle node not at all."""
    clock.advance(SLOT_MS, nodes=[n1])  # a fresh slot
    time.sleep(1.5)  # the closing slot's put is done
    base = puts_so_far(etcd, nodes.prefix, "r1")
    for minute in range(1, 4):
        serve(n1, route, 1)
        clock.advance(60 * 1000, nodes=[n1])
        wait_for(lambda: puts_so_far(etcd, nodes.prefix, "r1") >= base + minute, 5,
                 "the put of minute %d" % minute)
    busy = puts_so_far(etcd, nodes.prefix, "r1") - base
    assert busy == 3, busy
    for _ in range(3):  # idle minutes: nothing changes, nothing is written
        clock.advance(60 * 1000, nodes=[n1])
    time.sleep(2.5)  # the node's 1 s tick has run for each step
    assert puts_so_far(etcd, nodes.prefix, "r1") - base == busy


def test_slots_wait_for_etcd(n1, route, nodes, etcd, clock):
    """Fail static: while etcd is down the node keeps serving and queues its closed slots;
    they reach etcd once it is back. Reads of the ring answer 503 meanwhile."""
    before = served(etcd, nodes.prefix, route.model, "r1")
    etcd.stop()
    try:
        serve(n1, route, 2)
        clock.advance(SLOT_MS, nodes=[n1])  # the slot closes while etcd is away
        r = n1.admin.request("GET", "/admin/v1/metrics", params={"range": "1h"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_available"
    finally:
        etcd.start()
    wait_for(lambda: served(etcd, nodes.prefix, route.model, "r1") == before + 2, 15,
             "the queued slot to reach etcd")


def test_aged_slots_are_swept(n1, route, nodes, etcd, clock):
    # A departed node's slot (written in the same encoding), an hour old.
    start = (clock.now_ms() - 3600 * 1000) // SLOT_MS * SLOT_MS
    etcd_put(etcd, "%smetrics/gone/%04d" % (nodes.prefix, start // SLOT_MS % RING),
             encode_slot("gone", start, route.model, 7))
    m = metrics(n1, range="7d")
    assert "gone" in m["nodes"] and model_row(m, route.model)["requests"] == 22, m["totals"]
    before = ring_slots(etcd, nodes.prefix)
    assert {s["node"] for s in before.values()} == {"r1", "r2", "gone"}
    # Seven days and ten minutes later every one of those slots is older than the retention.
    clock.advance(7 * DAY_MS + 2 * SLOT_MS, nodes=[n1])
    wait_for(lambda: not (set(before) & set(ring_slots(etcd, nodes.prefix))), 15,
             "the sweep to delete every aged slot")
    m = metrics(n1, range="7d")
    assert m["totals"]["requests"] == 0 and m["slots"] == [], m
    u = n1.admin.usage(by="node", since="7d")
    assert u["totals"]["requests"] == 0 and u["groups"] == []
    # The ring keeps working after the jump.
    serve(n1, route, 2)
    assert model_row(metrics(n1, range="1h"), route.model)["requests"] == 2
