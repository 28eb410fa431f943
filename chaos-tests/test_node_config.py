# ctest-labels: sanitize
"""Shared configuration through etcd: a key made on one node works on another without a
restart and a revoked key is refused everywhere (propagation times are printed); a node cut
off from etcd keeps serving on its cached snapshot and says so in /readyz, a node restarted
while cut off serves from the snapshot in --data-dir, and once etcd is reachable again the
changes made meanwhile apply. Also: upstream keep-alive (the mock counts connections).

Node n3 reaches etcd through a cuttable TCP relay, so etcd stays up for n1 and n2 (through
which the "meanwhile" changes are made) while n3 cannot reach it."""

import time

import httpx
import pytest

from harness import Route, TcpRelay, wait_for, wait_key_visible

PROPAGATION_BOUND = 10.0


@pytest.fixture(scope="module")
def n1(nodes, mock):
    return nodes.start("n1")


@pytest.fixture(scope="module")
def n2(nodes, mock):
    return nodes.start("n2")


@pytest.fixture(scope="module")
def relay(etcd):
    r = TcpRelay("127.0.0.1", etcd.client_port).start()
    yield r
    r.close()


@pytest.fixture(scope="module")
def n3(nodes, mock, relay):
    return nodes.start("n3", etcd_urls=relay.url)


def key_status(node, secret, model=None):
    """Status of GET /v1/models with this key on node (200 known, 401 refused)."""
    with node.client(timeout=5) as c:
        r = c.get("/v1/models", headers={"authorization": "Bearer " + secret})
        if model is not None and r.status_code == 200:
            if not any(m.get("id") == model for m in r.json().get("data", [])):
                return 0  # key known, provider not yet
        return r.status_code


def chat_ok(node, route, secret=None):
    with node.client() as c:
        r = c.post("/v1/chat/completions",
                   headers={"authorization": "Bearer " + (secret or route.secret)},
                   json={"model": route.model, "messages": [{"role": "user", "content": "hi"}]})
    return r


def timed_wait(pred, what):
    t0 = time.monotonic()
    wait_for(pred, PROPAGATION_BOUND, what, interval=0.01)
    return time.monotonic() - t0


def test_key_propagates_to_second_node(n1, n2, mock):
    route = Route(n1, mock)  # provider + key written through n1
    t_new = timed_wait(lambda: key_status(n2, route.secret, route.model) == 200,
                       "new key usable on n2")
    r = chat_ok(n2, route)
    assert r.status_code == 200, r.text[:300]
    n1.admin.revoke_key(route.key_id)
    t_rev = timed_wait(lambda: key_status(n2, route.secret) == 401, "revoked key refused on n2")
    assert chat_ok(n2, route).status_code == 401
    wait_for(lambda: key_status(n1, route.secret) == 401, PROPAGATION_BOUND,
             "revoked key refused on n1")
    assert n2.admin.key(route.key_id)["status"] == "revoked"
    print("config propagation n1 -> n2: new key+provider %.0f ms, revocation %.0f ms"
          % (t_new * 1000, t_rev * 1000))


def test_keepalive_reuse(n1, mock):
    route = Route(n1, mock)
    wait_key_visible(n1, route.secret, route.model)
    with n1.client() as c:
        for i in range(60):
            r = c.post("/v1/chat/completions", headers=route.headers(),
                       json={"model": route.model,
                             "messages": [{"role": "user", "content": "again %d" % i}]})
            assert r.status_code == 200
    st = route.stats()
    print("60 sequential requests -> %d upstream connections (%d workers)"
          % (st["connections"], n1.workers))
    assert st["requests"] == 60
    assert 1 <= st["connections"] <= 2 * n1.workers, st


def readyz_is(node, **want):
    try:
        code, body = node.readyz()
    except httpx.HTTPError:
        return False
    return all(body.get(k) == v for k, v in want.items()) and \
        code == (200 if body.get("ready") else 503)


def test_cut_off_from_etcd_serves_cached_and_catches_up(n1, n3, mock, relay):
    route = Route(n1, mock)
    doomed = n1.admin.create_key(name="doomed")
    wait_key_visible(n3, route.secret, route.model)
    wait_key_visible(n3, doomed["key"], route.model)
    assert readyz_is(n3, ready=True, snapshot="etcd", etcd="ok")

    relay.cut()
    wait_for(lambda: readyz_is(n3, ready=True, snapshot="cached", etcd="unreachable"), 20,
             "n3 /readyz to report a cached snapshot with etcd unreachable")
    assert chat_ok(n3, route).status_code == 200
    # writes need etcd: refused with 503 etcd_unavailable, not half-done
    r = n3.admin.request("POST", "/admin/v1/keys", {"name": "while-cut"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "etcd_unavailable", r.text

    # meanwhile, through n1: a new key, a revocation, a new provider + model
    fresh = n1.admin.create_key(name="made-meanwhile")
    n1.admin.revoke_key(doomed["id"])
    later = Route(n1, mock)
    wait_key_visible(n1, later.secret, later.model)
    # n3 cannot know yet
    assert key_status(n3, fresh["key"]) == 401
    assert key_status(n3, doomed["key"]) == 200

    # a restart while cut off serves from the snapshot in --data-dir
    assert n3.stop() == 0
    n3.start(wait=False)
    n3.wait_ready(30)
    code, body = n3.readyz()
    assert code == 200 and body["snapshot"] == "cached" and body["etcd"] == "unreachable", body
    assert chat_ok(n3, route).status_code == 200

    # etcd reachable again: everything made meanwhile applies
    relay.restore()
    t_back = timed_wait(lambda: readyz_is(n3, ready=True, snapshot="etcd", etcd="ok"),
                        "n3 back on etcd")
    wait_for(lambda: key_status(n3, fresh["key"]) == 200, PROPAGATION_BOUND,
             "key made meanwhile usable on n3")
    wait_for(lambda: key_status(n3, doomed["key"]) == 401, PROPAGATION_BOUND,
             "key revoked meanwhile refused on n3")
    wait_for(lambda: key_status(n3, later.secret, later.model) == 200, PROPAGATION_BOUND,
             "provider made meanwhile usable on n3")
    assert chat_ok(n3, later).status_code == 200
    assert chat_ok(n3, route, secret=fresh["key"]).status_code == 200
    print("n3 back on etcd %.0f ms after the relay was restored" % (t_back * 1000))


def test_zz_etcd_stopped_and_back(n1, n2, etcd, mock):
    """Runs last: stops the module's etcd itself."""
    route = Route(n1, mock)
    wait_key_visible(n2, route.secret, route.model)
    etcd.stop()
    try:
        for n in (n1, n2):
            wait_for(lambda n=n: readyz_is(n, ready=True, snapshot="cached", etcd="unreachable"),
                     20, "%s /readyz to report the cached snapshot" % n.name)
            assert chat_ok(n, route).status_code == 200
        # n2 restarted while etcd is down serves from its snapshot
        assert n2.stop() == 0
        n2.start(wait=False)
        n2.wait_ready(30)
        code, body = n2.readyz()
        assert code == 200 and body["snapshot"] == "cached", body
        assert chat_ok(n2, route).status_code == 200
    finally:
        etcd.start()
    for n in (n1, n2):
        wait_for(lambda n=n: readyz_is(n, ready=True, snapshot="etcd", etcd="ok"), 30,
                 "%s back on etcd" % n.name)
    # changes after the outage propagate again (the watch was re-established)
    after = Route(n1, mock)
    wait_for(lambda: key_status(n2, after.secret, after.model) == 200, PROPAGATION_BOUND,
             "key made after the outage usable on n2")
    n1.admin.revoke_key(route.key_id)
    wait_for(lambda: key_status(n2, route.secret) == 401, PROPAGATION_BOUND,
             "revocation after the outage applied on n2")
