"""Upstream calls through a real HTTPS proxy (Debian's tinyproxy) when HTTPS_PROXY is set,
straight to the upstream when NO_PROXY names it, and upstream TLS verified against
--upstream-ca-file (the mock runs TLS with a certificate from a throwaway test CA)."""

import os

import pytest

import certs
import harness
from harness import Mock, Route, TinyProxy, wait_key_visible


@pytest.fixture(scope="module")
def pki(workdir):
    d = os.path.join(workdir, "pki")
    ca = certs.make_ca(d)
    server = certs.make_server_cert(d, ca, name="mock", dns=("localhost",), ips=("127.0.0.1",))
    return {"ca": ca[0], "server": server}


@pytest.fixture(scope="module")
def tls_mock(workdir, pki):
    m = Mock(os.path.join(workdir, "tls-mock"), name="tls-mock", tls=pki["server"])
    m.start()
    yield m
    m.proc.kill()


@pytest.fixture(scope="module")
def proxy(workdir, tls_mock):
    p = TinyProxy(os.path.join(workdir, "tinyproxy"), connect_ports=[tls_mock.port]).start()
    yield p
    p.proc.kill()


def make_route(node, tls_mock):
    r = Route(node, tls_mock, base_url="https://localhost:%d/v1" % tls_mock.port)
    wait_key_visible(node, r.secret, r.model)
    return r


def chat(node, route):
    with node.client() as c:
        return c.post("/v1/chat/completions", headers=route.headers(),
                      json={"model": route.model,
                            "messages": [{"role": "user", "content": "through the proxy"}]})


def test_upstream_through_https_proxy(nodes, tls_mock, proxy, pki):
    n = nodes.start("px", upstream_ca=pki["ca"], env={"HTTPS_PROXY": proxy.url})
    route = make_route(n, tls_mock)
    target = "localhost:%d" % tls_mock.port
    before = proxy.connects(target)
    for _ in range(3):
        r = chat(n, route)
        assert r.status_code == 200, r.text[:300]
    assert route.stats()["requests"] == 3
    harness.wait_for(lambda: proxy.connects(target) > before, 5,
                     "tinyproxy to log a CONNECT to %s" % target)
    print("tinyproxy CONNECTs to %s: %d" % (target, proxy.connects(target) - before))
    n.stop()


def test_no_proxy_bypasses_proxy(nodes, tls_mock, proxy, pki):
    n = nodes.start("npx", upstream_ca=pki["ca"],
                    env={"HTTPS_PROXY": proxy.url, "NO_PROXY": "localhost"})
    route = make_route(n, tls_mock)
    target = "localhost:%d" % tls_mock.port
    before = proxy.connects(target)
    r = chat(n, route)
    assert r.status_code == 200, r.text[:300]
    assert route.stats()["requests"] == 1
    assert proxy.connects(target) == before, "NO_PROXY=localhost still went through the proxy"
    n.stop()


def test_upstream_tls_is_verified(nodes, tls_mock):
    # no --upstream-ca-file: the test CA is unknown, the upstream must not be trusted
    n = nodes.start("noca")
    route = make_route(n, tls_mock)
    r = chat(n, route)
    assert r.status_code in (502, 503), r.status_code
    assert r.json()["error"]["code"] == "upstream_error", r.text[:300]
    assert route.stats()["requests"] == 0
    n.stop()
