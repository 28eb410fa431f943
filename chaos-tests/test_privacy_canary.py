# ctest-labels: e2e
"""Content is never kept: the canary test.

Unique canary strings go into every prompt, and the mock providers put another canary in
every answer they write (--reply-text). They travel through every endpoint (chat,
completions, embeddings, responses), stream and non-stream, over HTTP/2 + TLS, HTTP/1.1 +
TLS and cleartext HTTP/1.1, to a cleartext upstream (the node's h2o HTTP/1.1 client) and to
a TLS upstream (libcurl + OpenSSL, HTTP/2), including requests that fail: unknown model,
upstream 500, client abort mid-stream, malformed JSON; and every client API (OpenAI,
Anthropic, Gemini) to Anthropic- and Gemini-type upstreams on both mocks, stream and
non-stream, a translated stream the client aborts, and an untranslatable field (issue 5's
translation paths, whose parsers and writers hold content too). Once every request has its metadata
line and every connection is closed, the test searches for the canaries in:
  - the node's stdout and stderr files;
  - everything under --data-dir (recursively, as bytes) and etcd's data directory;
  - a full dump of etcd (every key and value, through the JSON gateway);
  - /metrics (a notice is printed when the node does not serve it yet);
  - every admin API answer it can GET;
  - the node's process memory (/proc/PID/maps + /proc/PID/mem, as root; memscan.py).
Prompt canaries and response canaries are counted separately; both must be absent
everywhere. The memory scan must prove it works: it reports the bytes it read and finds the
configured model name (which the node must hold).

Set PRIVACY_CANARY_DUMP=FILE to write the memory around every hit (for hunting a leak)."""

import base64
import os
import secrets
import time

import httpx
import pytest

import harness
import memscan
from harness import Mock, Route, bound, directive, wait_key_visible

ENDPOINTS = {
    "chat": ("/v1/chat/completions",
             lambda m, t: {"model": m, "messages": [{"role": "user", "content": t}]}),
    "completions": ("/v1/completions", lambda m, t: {"model": m, "prompt": t}),
    "embeddings": ("/v1/embeddings", lambda m, t: {"model": m, "input": t}),
    "responses": ("/v1/responses", lambda m, t: {"model": m, "input": t}),
}
STREAMING = ("chat", "completions", "responses")

RESPONSE_CANARY_PLAIN = "RSPCANplain" + secrets.token_hex(10)
RESPONSE_CANARY_TLS = "RSPCANtls" + secrets.token_hex(10)
SETTLE_SECONDS = 1.5  # after the last connection closed: a few loop iterations and a timer tick


@pytest.fixture(scope="module")
def pki(workdir):
    import certs
    d = os.path.join(workdir, "pki")
    ca = certs.make_ca(d)
    server = certs.make_server_cert(d, ca, name="mock", dns=("localhost",), ips=("127.0.0.1",))
    return {"ca": ca[0], "server": server}


@pytest.fixture(scope="module")
def plain_mock(workdir):
    m = Mock(os.path.join(workdir, "canary-mock"), name="canary-mock",
             args=["--reply-text", RESPONSE_CANARY_PLAIN])
    try:
        m.start()
        yield m
    finally:
        m.proc.kill()


@pytest.fixture(scope="module")
def tls_mock(workdir, pki):
    m = Mock(os.path.join(workdir, "canary-tls-mock"), name="canary-tls-mock",
             tls=pki["server"], args=["--reply-text", RESPONSE_CANARY_TLS])
    try:
        m.start()
        yield m
    finally:
        m.proc.kill()


class Canaries:
    """Every canary sent, with what carried it (for the report)."""

    def __init__(self):
        self.prompt = {}  # canary -> description

    def new_prompt(self, what):
        c = "PRMCAN" + secrets.token_hex(10)
        self.prompt[c] = what
        return c


def _transports(node):
    return {
        "h2-tls": lambda: node.client(),
        "h1-tls": lambda: node.h1_client(),
        "h1-plain": lambda: httpx.Client(base_url=node.plain_url, timeout=30),
    }


def _send_all(node, routes, canaries):
    """Sends every kind of request; returns (request ids, answers' text seen by the client)."""
    rids = []
    seen = []

    def rid():
        r = "canary-" + secrets.token_hex(8)
        rids.append(r)
        return r

    for tname, make_client in _transports(node).items():
        for uname, route in routes.items():
            if route.type != "openai":
                continue  # translated paths: _send_translated
            with make_client() as c:
                for ep, (path, build) in ENDPOINTS.items():
                    # non-stream, then stream
                    text = "%s %s" % (canaries.new_prompt("%s %s %s" % (tname, uname, ep)),
                                      "tell me something")
                    r = c.post(path, json=build(route.model, text),
                               headers=route.headers(**{"x-request-id": rid()}))
                    assert r.status_code == 200, (tname, uname, ep, r.status_code, r.text[:300])
                    seen.append(r.text)
                    if ep in STREAMING:
                        body = build(route.model, canaries.new_prompt(
                            "%s %s %s stream" % (tname, uname, ep)) + " go " +
                            directive(chunks=6))
                        body["stream"] = True
                        with c.stream("POST", path, json=body,
                                      headers=route.headers(**{"x-request-id": rid()})) as s:
                            assert s.status_code == 200, (tname, uname, ep, s.status_code)
                            seen.append(s.read().decode("utf-8", "replace"))
                # upstream 500, non-stream and stream
                for stream in (False, True):
                    body = ENDPOINTS["chat"][1](route.model, "%s %s" % (
                        canaries.new_prompt("%s %s upstream-500 stream=%s" % (tname, uname,
                                                                              stream)),
                        directive(status=500)))
                    body["stream"] = stream
                    r = c.post("/v1/chat/completions", json=body,
                               headers=route.headers(**{"x-request-id": rid()}))
                    # a retryable upstream failure on the only channel: the relay's 502
                    assert r.status_code == 502, (tname, uname, r.status_code, r.text[:300])
                # unknown model
                body = ENDPOINTS["chat"][1]("no-such-model-" + harness.rand_id(),
                                            canaries.new_prompt("%s %s unknown model"
                                                                % (tname, uname)))
                r = c.post("/v1/chat/completions", json=body,
                           headers=route.headers(**{"x-request-id": rid()}))
                assert r.status_code == 404, (tname, r.status_code, r.text[:300])
                # malformed JSON carrying a canary
                raw = ('{"model": "%s", "messages": [{"role": "user", "content": "%s"}]'
                       % (route.model, canaries.new_prompt("%s %s malformed JSON"
                                                           % (tname, uname))))
                r = c.post("/v1/chat/completions", content=raw.encode(),
                           headers=route.headers(**{"x-request-id": rid(),
                                                    "content-type": "application/json"}))
                assert r.status_code == 400, (tname, r.status_code, r.text[:300])
            # client abort mid-stream: a fresh connection, closed after the first piece
            with make_client() as c:
                body = ENDPOINTS["chat"][1](route.model, "%s %s" % (
                    canaries.new_prompt("%s %s client abort" % (tname, uname)),
                    directive(chunks=40, delay_ms=20)))
                body["stream"] = True
                with c.stream("POST", "/v1/chat/completions", json=body,
                              headers=route.headers(**{"x-request-id": rid()})) as s:
                    assert s.status_code == 200
                    next(s.iter_raw())
    _send_translated(node, routes, canaries, rid, seen)
    return rids, seen


def _translated_request(fmt, route, text, stream):
    """(path, headers, params, body) of a chat request in client format fmt, with the text in
    the system prompt and in the user turn."""
    if fmt == "openai":
        return ("/v1/chat/completions", {"authorization": "Bearer " + route.secret}, {},
                {"model": route.model, "stream": stream, "max_tokens": 64,
                 "messages": [{"role": "system", "content": "sys " + text},
                              {"role": "user", "content": text}]})
    if fmt == "anthropic":
        return ("/v1/messages", {"x-api-key": route.secret, "anthropic-version": "2023-06-01"},
                {}, {"model": route.model, "stream": stream, "max_tokens": 64,
                     "system": "sys " + text, "messages": [{"role": "user", "content": text}]})
    path = "/v1beta/models/%s:%s" % (route.model, "streamGenerateContent" if stream
                                     else "generateContent")
    return (path, {"x-goog-api-key": route.secret}, {"alt": "sse"} if stream else {},
            {"systemInstruction": {"parts": [{"text": "sys " + text}]},
             "contents": [{"role": "user", "parts": [{"text": text}]}],
             "generationConfig": {"maxOutputTokens": 64}})


def _send_translated(node, routes, canaries, rid, seen):
    """Every client format to every provider type but OpenAI to OpenAI (sent above), stream
    and non-stream, over HTTP/2 + TLS, to both mocks; then a translated stream the client
    aborts, and an untranslatable field (refused before anything goes upstream)."""
    for uname, route in routes.items():
        if route.type == "openai":
            continue
        for fmt in ("openai", "anthropic", "gemini"):
            with node.client() as c:
                for stream in (False, True):
                    text = "%s go %s" % (canaries.new_prompt("h2-tls %s %s->%s stream=%s" % (
                        uname, fmt, route.type, stream)), directive(chunks=6))
                    path, headers, params, body = _translated_request(fmt, route, text, stream)
                    headers["x-request-id"] = rid()
                    r = c.post(path, json=body, headers=headers, params=params)
                    assert r.status_code == 200, (uname, fmt, stream, r.status_code, r.text[:300])
                    seen.append(r.text)
            with node.client() as c:
                text = "%s %s" % (canaries.new_prompt("h2-tls %s %s->%s client abort" % (
                    uname, fmt, route.type)), directive(chunks=40, delay_ms=20))
                path, headers, params, body = _translated_request(fmt, route, text, True)
                headers["x-request-id"] = rid()
                with c.stream("POST", path, json=body, headers=headers, params=params) as s:
                    assert s.status_code == 200
                    next(s.iter_raw())
    route = routes["plain-anthropic"]
    with node.client() as c:
        path, headers, params, body = _translated_request(
            "openai", route, canaries.new_prompt("h2-tls untranslatable n=2"), False)
        body["n"] = 2
        headers["x-request-id"] = rid()
        r = c.post(path, json=body, headers=headers, params=params)
        assert r.status_code == 400, (r.status_code, r.text[:300])


def _search_bytes(data, canaries, where, found):
    """Adds to found[kind][where] the canaries that occur in data."""
    for c, what in canaries.items():
        n = data.count(c.encode())
        if n:
            kind = "response" if c.startswith("RSPCAN") else "prompt"
            found[kind].setdefault(where, []).append("%s x%d (%s)" % (c, n, what))


def _files_under(path):
    for root, _dirs, files in os.walk(path):
        for name in files:
            yield os.path.join(root, name)


def _etcd_dump(etcd):
    """Every key and value in etcd, as one byte string (JSON gateway, range over all keys)."""
    z = base64.b64encode(b"\0").decode()
    r = httpx.post(etcd.url + "/v3/kv/range", json={"key": z, "range_end": z}, timeout=10)
    r.raise_for_status()
    out = []
    for kv in r.json().get("kvs", []):
        out.append(base64.b64decode(kv["key"]))
        out.append(base64.b64decode(kv.get("value", "")))
    return b"\n".join(out), len(out) // 2


def _admin_answers(node, route):
    """(path, body) of every admin GET that answers; notices for those that do not exist."""
    paths = ["/healthz", "/readyz", "/admin/v1/providers",
             "/admin/v1/providers/" + route.provider, "/admin/v1/keys",
             "/admin/v1/keys/" + route.key_id, "/admin/v1/logs", "/admin/v1/usage",
             "/admin/v1/usage?group_by=model", "/admin/v1/audit", "/admin/v1/tokens"]
    out, notices = [], []
    with httpx.Client(base_url=node.admin_url, timeout=10) as c:
        for p in paths:
            r = c.get(p, headers={"authorization": "Bearer " + node.admin_token})
            if r.status_code == 404:
                notices.append("admin GET %s: 404 (not served yet, skipped)" % p)
                continue
            out.append((p, r.content))
        r = c.get("/metrics")
        if r.status_code == 404:
            r = c.get("/metrics", headers={"authorization": "Bearer " + node.admin_token})
        if r.status_code == 404:
            notices.append("GET /metrics: 404 (not served yet, skipped)")
        else:
            out.append(("/metrics", r.content))
    return out, notices


def _dump_hits(pid, result, path):
    with open("/proc/%d/mem" % pid, "rb", buffering=0) as mem, open(path, "a") as out:
        for name, hits in result.hits.items():
            for addr, region in hits:
                try:
                    mem.seek(max(0, addr - 256))
                    ctx = mem.read(768)
                except OSError:
                    ctx = b""
                out.write("== %s at 0x%x in %s\n%r\n" % (name, addr, region, ctx))


def test_no_canary_anywhere(etcd, nodes, plain_mock, tls_mock, pki, workdir):
    if os.geteuid() != 0:
        pytest.skip("the memory scan needs root (/proc/PID/mem of a non-dumpable process)")
    t0 = time.monotonic()
    node = nodes.start("canary", upstream_ca=pki["ca"])
    routes = {"plain-upstream": Route(node, plain_mock), "tls-upstream": Route(node, tls_mock),
              "plain-anthropic": Route(node, plain_mock, type_="anthropic"),
              "tls-anthropic": Route(node, tls_mock, type_="anthropic"),
              "plain-gemini": Route(node, plain_mock, type_="gemini"),
              "tls-gemini": Route(node, tls_mock, type_="gemini")}
    for r in routes.values():
        wait_key_visible(node, r.secret, r.model)
    canaries = Canaries()
    rids, seen = _send_all(node, routes, canaries)
    t_sent = time.monotonic()

    # The traffic really carried the canaries: the clients saw both answer canaries.
    answers = "".join(seen)
    assert RESPONSE_CANARY_PLAIN in answers and RESPONSE_CANARY_TLS in answers, \
        "the mocks did not put the response canaries in their answers"
    # Every request is over (aborted streams included: the node drains them) ...
    for rid in rids:
        node.wait_metadata(rid, timeout=15)
    # ... every client connection is closed (the `with` blocks above); let the node settle.
    time.sleep(SETTLE_SECONDS)

    every = dict(canaries.prompt)
    every[RESPONSE_CANARY_PLAIN] = "plain mock's answers"
    every[RESPONSE_CANARY_TLS] = "TLS mock's answers"
    found = {"prompt": {}, "response": {}}
    notices = []
    for path in (node.proc.stdout_path, node.proc.stderr_path):
        with open(path, "rb") as f:
            _search_bytes(f.read(), every, os.path.basename(path), found)
    n_files = 0
    for top in (node.data_dir, os.path.join(etcd.directory, "etcd-data")):
        for path in _files_under(top):
            n_files += 1
            with open(path, "rb") as f:
                _search_bytes(f.read(), every, path, found)
    dump, n_keys = _etcd_dump(etcd)
    assert n_keys > 0, "the etcd dump is empty: it cannot prove anything"
    _search_bytes(dump, every, "etcd dump (%d keys)" % n_keys, found)
    answers, more = _admin_answers(node, routes["plain-upstream"])
    notices += more
    for path, body in answers:
        _search_bytes(body, every, "admin GET " + path, found)

    # Memory last, after the admin connections above are closed too.
    time.sleep(0.5)
    needles = dict((c, c) for c in every)
    model = routes["plain-upstream"].model
    needles["__model__"] = model
    t_scan = time.monotonic()
    res = memscan.scan(node.pid, needles)
    t_scan = time.monotonic() - t_scan
    if os.environ.get("PRIVACY_CANARY_DUMP"):
        _dump_hits(node.pid, res, os.environ["PRIVACY_CANARY_DUMP"])
    for c, what in every.items():
        if res.counts[c]:
            kind = "response" if c.startswith("RSPCAN") else "prompt"
            regions = sorted(set(d for _a, d in res.hits[c]))
            found[kind].setdefault("process memory", []).append(
                "%s x%d (%s) in %s" % (c, res.counts[c], what, "; ".join(regions[:4])))

    print("\ncanary test: %d requests, %d prompt canaries, 2 response canaries; sent in %.1fs"
          % (len(rids), len(canaries.prompt), t_sent - t0))
    print("searched: node stdout/stderr, %d files under --data-dir and etcd's data dir, "
          "etcd dump of %d keys, %d admin answers" % (n_files, n_keys, len(answers)))
    print("memory scan of pid %d: %d bytes read in %d regions (%d skipped, %d bytes "
          "unreadable) in %.2fs; model name %r found %d times"
          % (node.pid, res.bytes_scanned, res.regions_scanned, res.regions_skipped,
             res.bytes_unreadable, t_scan, model, res.counts["__model__"]))
    for n in notices:
        print("notice: " + n)
    for kind in ("prompt", "response"):
        total = sum(len(v) for v in found[kind].values())
        print("%s canaries found: %d" % (kind, total))
        for where, items in found[kind].items():
            print("  %s: %d canaries, e.g. %s" % (where, len(items), items[0]))

    assert res.bytes_scanned > 1024 * 1024, "the memory scan read almost nothing"
    assert res.counts["__model__"] > 0, \
        "the memory scan did not find the configured model name: it proves nothing"
    problems = []
    for kind in ("prompt", "response"):
        for where, items in found[kind].items():
            problems.append("%s canaries in %s (%d): %s" % (kind, where, len(items),
                                                           "; ".join(items[:5])))
    assert not problems, "content was kept:\n" + "\n".join(problems)
    assert time.monotonic() - t0 < bound(60), "the canary test took %.1fs" % (
        time.monotonic() - t0)
