# ctest-labels: sanitize
"""Bad requests and bad upstreams get the contract's answers (OpenAI error shape, status and
code), the node shuts out HTTP/2 rapid-reset abuse with GOAWAY without starting upstream
work, refuses TLS 1.2 clients unless told otherwise, and stays healthy through all of it.

The node here runs with --max-body 64KiB and --upstream-first-byte-timeout 1s."""

import select
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import httpx
import pytest

import harness
from harness import Route, bound, directive, wait_key_visible

NODE_ARGS = ["--max-body", "64KiB", "--upstream-first-byte-timeout", "1s"]


@pytest.fixture(scope="module")
def enode(nodes, mock):
    return nodes.start("e1", extra_args=NODE_ARGS)


@pytest.fixture(scope="module")
def route(enode, mock):
    r = Route(enode, mock)
    wait_key_visible(enode, r.secret, r.model)
    return r


def fresh_route(node, mock, **kw):
    r = Route(node, mock, **kw)
    wait_key_visible(node, r.secret, r.models[0])
    return r


def openai_error(r, status, code):
    assert r.status_code == status, "expected %d %s, got %d %s" % (status, code, r.status_code,
                                                                  r.text[:300])
    assert r.headers.get("x-request-id"), "no x-request-id on a %d" % status
    body = r.json()
    err = body.get("error")
    assert isinstance(err, dict), body
    assert isinstance(err.get("message"), str) and err["message"]
    assert isinstance(err.get("type"), str) and err["type"]
    if code is not None:
        assert err.get("code") == code, body
    return err


def chat(model, text="hi", **kw):
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    body.update(kw)
    return body


def test_malformed_json(enode, route):
    with enode.client() as c:
        for bad in (b"{not json", b"", b"[1,2,3]", b'{"model": "x", "messages": [}',
                    b'{"model": 42, "messages": []}'):
            r = c.post("/v1/chat/completions", content=bad, headers=route.headers(
                **{"content-type": "application/json"}))
            assert r.http_version == "HTTP/2"
            openai_error(r, 400, "invalid_request")
    assert route.stats()["requests"] == 0


def _big_body(model, size):
    return chat(model, "a" * size)


@pytest.mark.parametrize("http2", [True, False], ids=["h2", "h1"])
def test_body_over_max_body(enode, route, http2):
    kw = {"http2": True} if http2 else {"http1": True, "http2": False}
    before = route.stats()["requests"]
    with httpx.Client(verify=False, base_url=enode.url, timeout=30, **kw) as c:
        r = c.post("/v1/chat/completions", json=_big_body(route.model, 100 * 1024),
                   headers=route.headers())
        assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        openai_error(r, 413, "request_too_large")
        # just under the limit is fine
        r = c.post("/v1/chat/completions", json=_big_body(route.model, 60 * 1024),
                   headers=route.headers())
        assert r.status_code == 200, r.text[:300]
    assert route.stats()["requests"] == before + 1


def test_unknown_model(enode, route):
    with enode.client() as c:
        r = c.post("/v1/chat/completions", json=chat("no-such-model-" + harness.rand_id()),
                   headers=route.headers())
    openai_error(r, 404, "model_not_found")


def test_model_not_allowed(enode, mock):
    tag = harness.rand_id()
    r0 = Route(enode, mock, tag=tag, models=["m-%s-a" % tag, "m-%s-b" % tag],
               key_models=["m-%s-a" % tag])
    wait_key_visible(enode, r0.secret, "m-%s-a" % tag)
    with enode.client() as c:
        r = c.post("/v1/chat/completions", json=chat("m-%s-b" % tag), headers=r0.headers())
    openai_error(r, 403, "model_not_allowed")
    assert r0.stats()["requests"] == 0


def test_missing_or_bad_key(enode, route):
    before = route.stats()["requests"]
    with enode.client() as c:
        cases = [
            {},
            {"authorization": "Bearer sk-lr-" + "0" * 48},
            {"authorization": "Bearer x"},
            {"authorization": "Basic " + route.secret},
            {"authorization": "Bearer " + route.secret[:-1] + ("0" if route.secret[-1] != "0"
                                                               else "1")},
        ]
        for h in cases:
            r = c.post("/v1/chat/completions", json=chat(route.model), headers=h)
            openai_error(r, 401, "invalid_api_key")
            r = c.get("/v1/models", headers=h)
            openai_error(r, 401, "invalid_api_key")
    assert route.stats()["requests"] == before


def test_unknown_path(enode, route):
    with enode.client() as c:
        for method, path in (("GET", "/"), ("GET", "/v1/nowhere"),
                             ("POST", "/v1/chat/completions/extra"), ("GET", "/admin/v1/keys")):
            r = c.request(method, path, headers=route.headers(), json={} if method == "POST"
                          else None)
            assert r.status_code == 404, (method, path, r.status_code)
            assert r.headers.get("x-request-id")


def test_upstream_500_passed_on(enode, mock):
    route = fresh_route(enode, mock)
    with enode.client() as c:
        r = c.post("/v1/chat/completions", json=chat(route.model, "fail " + directive(
            status=500)), headers=route.headers())
    # an upstream 500 surfaces as a 5xx in OpenAI's error shape (passed on as 500, or 502
    # "upstream failed after retries")
    assert r.status_code in (500, 502), r.status_code
    openai_error(r, r.status_code, None)
    assert route.stats()["requests"] >= 1
    rec = enode.wait_metadata(r.headers["x-request-id"])
    assert rec["status"] == r.status_code


def test_upstream_first_byte_timeout(enode, mock):
    route = fresh_route(enode, mock)
    t0 = time.monotonic()
    with enode.client() as c:
        r = c.post("/v1/chat/completions", json=chat(route.model, "wait " + directive(
            first_byte_delay_ms=6000)), headers=route.headers())
    elapsed = time.monotonic() - t0
    openai_error(r, 504, "upstream_timeout")
    assert elapsed < bound(5.0), "504 came after %.1fs with a 1s first-byte timeout" % elapsed


def _tls_socket(node, alpn=("h2",), max_version=None, min_version=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version:
        ctx.maximum_version = max_version
    if min_version:
        ctx.minimum_version = min_version
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    raw = socket.create_connection(("127.0.0.1", node.port), timeout=bound(10))
    try:
        return ctx.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def test_rapid_reset_burst(enode, mock):
    route = fresh_route(enode, mock)
    s = _tls_socket(enode)
    assert s.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding="utf-8"))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    body = b'{"model":"%s","messages":[{"role":"user","content":"reset me"}]}' % \
        route.model.encode()
    headers = [(":method", "POST"), (":scheme", "https"), (":authority", "127.0.0.1"),
               (":path", "/v1/chat/completions"), ("content-type", "application/json"),
               ("authorization", "Bearer " + route.secret)]
    sent = 0
    state = {"goaway": None, "closed": False}

    def pump(wait):
        """Reads what the node sent (GOAWAY among it) for up to wait seconds."""
        s.settimeout(wait)
        try:
            data = s.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return
        except (OSError, ssl.SSLError):
            state["closed"] = True
            return
        if not data:
            state["closed"] = True
            return
        try:
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ConnectionTerminated):
                    state["goaway"] = state["goaway"] or ev
                    state.setdefault("all", []).append(ev)
            s.sendall(conn.data_to_send())
        except (h2.exceptions.ProtocolError, OSError):
            pass

    try:
        for _ in range(1000):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers)
            conn.send_data(sid, body, end_stream=True)
            conn.reset_stream(sid, error_code=8)  # CANCEL
            # one TLS record per stream: the node sees each request and its reset together
            s.settimeout(bound(10))
            s.sendall(conn.data_to_send())
            sent += 1
            # read as we go: once the node closes, writing on would make the kernel
            # answer with a TCP reset that discards the GOAWAY still unread
            while (select.select([s], [], [], 0)[0] or s.pending()) and not state["closed"]:
                pump(0.2)
            if state["goaway"] is not None or state["closed"]:
                break
    except (OSError, h2.exceptions.ProtocolError):
        pass
    deadline = time.monotonic() + bound(10)
    while state["goaway"] is None and not state["closed"] and time.monotonic() < deadline:
        pump(0.5)
    goaway, closed = state["goaway"], state["closed"]
    print("GOAWAYs:", state.get("all"))
    s.close()
    print("rapid reset: sent %d reset streams; goaway=%r closed=%r" % (sent, goaway, closed))
    assert goaway is not None, "the node did not send GOAWAY after %d reset streams" % sent
    # no upstream call was started for any of the reset streams
    time.sleep(0.3)
    assert route.stats()["requests"] == 0, route.stats()
    # the node is still healthy: a new connection works
    with enode.client() as c:
        r = c.post("/v1/chat/completions", json=chat(route.model), headers=route.headers())
        assert r.status_code == 200 and r.http_version == "HTTP/2"
    assert route.stats()["requests"] == 1


def test_tls12_refused_by_default(enode):
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        s = _tls_socket(enode, max_version=ssl.TLSVersion.TLSv1_2)
        # some servers complete the handshake lazily: make sure no exchange succeeds
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        data = s.recv(100)
        s.close()
        if not data:
            raise ConnectionError("closed")
    # TLS 1.3 on the same listener works
    s = _tls_socket(enode)
    assert s.version() == "TLSv1.3"
    s.close()


def test_tls12_accepted_when_allowed(nodes, mock):
    n = nodes.start("e12", extra_args=["--tls-min-version", "1.2"])
    route = Route(n, mock)
    wait_key_visible(n, route.secret, route.model)
    s = _tls_socket(n, max_version=ssl.TLSVersion.TLSv1_2)
    assert s.version() == "TLSv1.2"
    s.close()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with httpx.Client(verify=ctx, http2=True, base_url=n.url, timeout=30) as c:
        r = c.post("/v1/chat/completions", json=chat(route.model), headers=route.headers())
        assert r.status_code == 200 and r.http_version == "HTTP/2"
    n.stop()


def test_zz_node_still_healthy(enode, route):
    assert enode.running()
    r = httpx.get(enode.admin_url + "/healthz", timeout=5)
    assert r.status_code == 200 and r.json().get("status") == "ok"
    code, body = enode.readyz()
    assert code == 200 and body.get("ready") is True
    with enode.client() as c:
        r = c.post("/v1/chat/completions", json=chat(route.model), headers=route.headers())
        assert r.status_code == 200 and r.http_version == "HTTP/2"
