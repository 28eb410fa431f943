# ctest-labels: e2e sanitize
"""The Anthropic and Gemini client endpoints (issue 5 item 1), over TLS + HTTP/2 against
providers of the same type on the mock (pass-through):

- Anthropic `POST /v1/messages`, stream and not, key in `x-api-key` or Bearer,
  `anthropic-version` accepted but not required; the relay calls the upstream with
  `x-api-key` and `anthropic-version: 2023-06-01`.
- Gemini `:generateContent`, `:streamGenerateContent?alt=sse` and the JSON-array stream, key
  in `x-goog-api-key`, `?key=` or Bearer; the relay calls the upstream with
  `x-goog-api-key`, and a key given in the URL never reaches the node's output or its logs.
- Errors in each API's own shape with DESIGN.md's statuses and types: 401, 403, 404, 400,
  413, budget 429, rate-limit 429 + Retry-After, 502 (upstream down), 504 (no first byte
  within --upstream-first-byte-timeout, 2s here).
- `anthropic-ratelimit-*` headers for a key with rpm/tpm; `GET /v1/models` in Anthropic's
  shape when the request carries `anthropic-version`; the client's x-request-id echoed;
  the cleartext HTTP/1.1 listener; /v1/completions, /v1/embeddings, /v1/responses refused
  for models of anthropic/gemini providers.
- Hostile paths, keys and model names get a 4xx and the node stays healthy.

The node here runs with --max-body 256KiB and --upstream-first-byte-timeout 2s.

Billing: what the key shows as spent equals what the mock says it served."""

import json
import re
import time
from datetime import datetime, timezone

import httpx
import pytest

import harness
from harness import Route, bound, directive, wait_for, wait_key_visible

NODE_ARGS = ["--max-body", "256KiB", "--upstream-first-byte-timeout", "2s"]
APIS = ["openai", "anthropic", "gemini"]


def toks(n):
    """The mock's answer text of n tokens (no --reply-text)."""
    return "".join(" tok%d" % i for i in range(1, n + 1))


@pytest.fixture(scope="module")
def nnode(nodes, mock):
    return nodes.start("na1", extra_args=NODE_ARGS)


def fresh_route(node, mock, type_, **kw):
    r = Route(node, mock, type_=type_, **kw)
    wait_key_visible(node, r.secret, r.models[0])
    return r


# ------------------------------------------------------------------------ helpers

def anth_headers(secret, how="x-api-key", version="2023-06-01"):
    h = {"x-api-key": secret} if how == "x-api-key" else {"authorization": "Bearer " + secret}
    if version is not None:
        h["anthropic-version"] = version
    return h


def anth_body(model, text, **kw):
    body = {"model": model, "max_tokens": 50, "system": "be brief",
            "messages": [{"role": "user", "content": text}]}
    body.update(kw)
    return body


def gem_path(model, stream=False):
    return "/v1beta/models/%s:%s" % (model, "streamGenerateContent" if stream else
                                     "generateContent")


def gem_body(text, **kw):
    body = {"systemInstruction": {"parts": [{"text": "be brief"}]},
            "contents": [{"role": "user", "parts": [{"text": text}]}],
            "generationConfig": {"maxOutputTokens": 50}}
    body.update(kw)
    return body


def gem_auth(secret, how):
    """(headers, params) carrying the key the way `how` says."""
    if how == "header":
        return {"x-goog-api-key": secret}, {}
    if how == "query":
        return {}, {"key": secret}
    return {"authorization": "Bearer " + secret}, {}


def sse_blocks(text):
    """The event blocks of an SSE body, as (event name or None, data dict) pairs."""
    return [(name, json.loads(data)) for name, data in harness.sse(text)]


def anth_events(text):
    ev = sse_blocks(text)
    for name, data in ev:
        assert name == data.get("type"), (name, data)
    return ev


def gem_text(chunks):
    out = ""
    for ch in chunks:
        for cand in ch.get("candidates") or []:
            for part in (cand.get("content") or {}).get("parts") or []:
                out += part.get("text", "")
    return out


def openai_error(r, status, code):
    assert r.status_code == status, "expected %d, got %d %s" % (status, r.status_code, r.text[:300])
    err = r.json().get("error")
    assert isinstance(err, dict), r.text[:300]
    assert isinstance(err.get("message"), str) and err["message"], err
    if code is not None:
        assert err.get("code") == code, err
    return err["message"]


def anthropic_error(r, status, type_):
    assert r.status_code == status, "expected %d, got %d %s" % (status, r.status_code, r.text[:300])
    j = r.json()
    assert j.get("type") == "error", j
    err = j.get("error")
    assert isinstance(err, dict) and set(err) >= {"type", "message"}, j
    assert isinstance(err["message"], str) and err["message"], j
    assert err["type"] == type_, j
    return err["message"]


def gemini_error(r, status, status_word):
    assert r.status_code == status, "expected %d, got %d %s" % (status, r.status_code, r.text[:300])
    err = r.json().get("error")
    assert isinstance(err, dict), r.text[:300]
    assert err.get("code") == status, err
    assert isinstance(err.get("message"), str) and err["message"], err
    assert err.get("status") == status_word, err
    return err["message"]


ERROR_WORDS = {
    # case: (status, openai code, anthropic type, gemini status)
    "auth": (401, "invalid_api_key", "authentication_error", "UNAUTHENTICATED"),
    "not_allowed": (403, "model_not_allowed", "permission_error", "PERMISSION_DENIED"),
    "unknown": (404, "model_not_found", "not_found_error", "NOT_FOUND"),
    "malformed": (400, "invalid_request", "invalid_request_error", "INVALID_ARGUMENT"),
    "too_large": (413, "request_too_large", "request_too_large", "INVALID_ARGUMENT"),
    "rate": (429, "rate_limit_exceeded", "rate_limit_error", "RESOURCE_EXHAUSTED"),
    "budget": (429, "insufficient_quota", "rate_limit_error", "RESOURCE_EXHAUSTED"),
    "upstream_down": (502, "upstream_error", "api_error", "UNAVAILABLE"),
    "timeout": (504, "upstream_timeout", "api_error", "DEADLINE_EXCEEDED"),
}


def check_error(api, r, case):
    status, code, atype, gstatus = ERROR_WORDS[case]
    assert r.headers.get("x-request-id"), "no x-request-id on a %d" % r.status_code
    if api == "openai":
        return openai_error(r, status, code)
    if api == "anthropic":
        assert r.headers.get("request-id"), "no request-id on an Anthropic %d" % r.status_code
        return anthropic_error(r, status, atype)
    return gemini_error(r, status, gstatus)


def call(c, api, model, secret, text="hello relay", raw=None, auth=True, stream=False):
    """One request in the API's own format (no stream). raw: a body sent as is."""
    if api == "openai":
        path = "/v1/chat/completions"
        headers = {"authorization": "Bearer " + secret} if auth else {}
        body = {"model": model, "max_tokens": 50,
                "messages": [{"role": "user", "content": text}]}
        params = {}
    elif api == "anthropic":
        path = "/v1/messages"
        headers = anth_headers(secret) if auth else {"anthropic-version": "2023-06-01"}
        body = anth_body(model, text)
        params = {}
    else:
        path = gem_path(model, stream)
        headers = {"x-goog-api-key": secret} if auth else {}
        body = gem_body(text)
        params = {"alt": "sse"} if stream else {}
    if stream and api != "gemini":
        body["stream"] = True
    headers["content-type"] = "application/json"
    content = raw if raw is not None else json.dumps(body).encode()
    return c.post(path, content=content, headers=headers, params=params)


def check_billed(node, route, served=None):
    """The key's spent tokens reach what the mock served for its upstream key."""
    served = served or route.stats()

    def same():
        spent = node.admin.key(route.key_id)["spent"]
        return (spent["input_tokens"], spent["output_tokens"]) == \
            (served["input_tokens"], served["output_tokens"]) and spent
    try:
        wait_for(same, 10, "key spent == mock served")
    except AssertionError:
        raise AssertionError("billed %r != served %r" % (node.admin.key(route.key_id)["spent"],
                                                         served))


RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def parse_rfc3339(value):
    assert RFC3339.match(value), "not an RFC 3339 time: %r" % value
    v = value.replace("Z", "+00:00")
    if "." in v:  # fromisoformat in 3.11 wants at most 6 fraction digits
        head, rest = v.split(".", 1)
        frac = re.match(r"\d+", rest).group(0)
        v = head + "." + frac[:6].ljust(6, "0") + rest[len(frac):]
    return datetime.fromisoformat(v)


# ------------------------------------------------------------------------ Anthropic

@pytest.mark.parametrize("how", ["x-api-key", "bearer"])
def test_anthropic_non_stream(nnode, mock, how):
    route = fresh_route(nnode, mock, "anthropic")
    with nnode.client() as c:
        body = anth_body(route.model, "hello relay " + directive(chunks=5))
        r = c.post("/v1/messages", json=body, headers=anth_headers(route.secret, how))
    assert r.http_version == "HTTP/2"
    assert r.status_code == 200, r.text[:500]
    assert r.headers.get("content-type", "").startswith("application/json")
    assert r.headers.get("x-request-id") and r.headers.get("request-id")
    j = r.json()
    assert j["type"] == "message" and j["role"] == "assistant", j
    assert j["id"].startswith("msg_"), j
    assert j["content"] == [{"type": "text", "text": toks(5)}], j
    assert j["stop_reason"] == "end_turn", j
    served = route.stats()
    assert served["requests"] == 1 and served["output_tokens"] == 5, served
    u = j["usage"]
    assert u["input_tokens"] + u.get("cache_read_input_tokens", 0) == served["input_tokens"], u
    assert u["output_tokens"] == 5, u
    recs = mock.requests_of(route.upstream_key)
    assert len(recs) == 1, recs
    rec = recs[0]
    assert rec["path"] == "/v1/messages", rec
    assert rec["auth"] == "x-api-key" and rec["anthropic_version"] == "2023-06-01", rec
    assert rec["model"] == route.model and rec["max_tokens"] == 50 and rec["stream"] is False, rec
    assert rec["parts"] == ["system:text", "user:text"], rec
    meta = nnode.wait_metadata(r.headers["x-request-id"])
    assert meta["status"] == 200 and meta["model"] == route.model, meta
    assert meta["provider"] == route.provider and meta["stream"] is False, meta
    assert (meta["input_tokens"], meta["output_tokens"]) == \
        (served["input_tokens"], served["output_tokens"]), (meta, served)
    check_billed(nnode, route, served)


def test_client_request_id_echoed(nnode, mock):
    """A sane x-request-id of the client's is the answer's (Anthropic: request-id too)."""
    for type_ in ("anthropic", "gemini"):
        route = fresh_route(nnode, mock, type_)
        rid = "e2e-native-" + harness.rand_id(12)
        with nnode.client() as c:
            if type_ == "anthropic":
                r = c.post("/v1/messages", json=anth_body(route.model, "x " + directive(chunks=1)),
                           headers=dict(anth_headers(route.secret), **{"x-request-id": rid}))
            else:
                r = c.post(gem_path(route.model), json=gem_body("x " + directive(chunks=1)),
                           headers={"x-goog-api-key": route.secret, "x-request-id": rid})
        assert r.status_code == 200, r.text[:300]
        assert r.headers.get("x-request-id") == rid, dict(r.headers)
        if type_ == "anthropic":
            assert r.headers.get("request-id"), dict(r.headers)
        assert nnode.wait_metadata(rid)["status"] == 200


def test_plain_listener_http1(nnode, mock):
    """The cleartext listener over HTTP/1.1: an Anthropic stream and a Gemini array stream
    (chunked) arrive whole."""
    a = fresh_route(nnode, mock, "anthropic")
    g = fresh_route(nnode, mock, "gemini")
    with httpx.Client(http1=True, http2=False, base_url=nnode.plain_url, timeout=30) as c:
        r = c.post("/v1/messages", headers=anth_headers(a.secret),
                   json=anth_body(a.model, "h1 " + directive(chunks=7), stream=True))
        assert r.status_code == 200 and r.http_version == "HTTP/1.1", r.text[:300]
        ev = anth_events(r.text)
        assert ev[-1][0] == "message_stop"
        assert "".join(d["delta"].get("text", "") for n, d in ev
                       if n == "content_block_delta") == toks(7)
        r = c.post(gem_path(g.model, stream=True), headers={"x-goog-api-key": g.secret},
                   json=gem_body("h1 " + directive(chunks=7)))
        assert r.status_code == 200 and r.http_version == "HTTP/1.1", r.text[:300]
        assert gem_text(json.loads(r.text)) == toks(7)
    check_billed(nnode, a)
    check_billed(nnode, g)


@pytest.mark.parametrize("how", ["x-api-key", "bearer"])
def test_anthropic_stream(nnode, mock, how):
    route = fresh_route(nnode, mock, "anthropic")
    body = anth_body(route.model, "stream please " + directive(chunks=6), stream=True)
    with nnode.client() as c:
        with c.stream("POST", "/v1/messages", json=body,
                      headers=anth_headers(route.secret, how)) as r:
            assert r.http_version == "HTTP/2"
            assert r.status_code == 200, r.read()[:500]
            assert r.headers.get("content-type", "").startswith("text/event-stream")
            assert r.headers.get("x-request-id") and r.headers.get("request-id")
            rid = r.headers["x-request-id"]
            text = r.read().decode()
    ev = anth_events(text)
    names = [n for n, _ in ev]
    assert names[0] == "message_start" and names[-1] == "message_stop", names
    for needed in ("content_block_start", "content_block_delta", "content_block_stop",
                   "message_delta"):
        assert needed in names, names
    deltas = [d["delta"] for n, d in ev if n == "content_block_delta"]
    assert all(d["type"] == "text_delta" for d in deltas), deltas
    assert "".join(d["text"] for d in deltas) == toks(6)
    final = [d for n, d in ev if n == "message_delta"][-1]
    assert final["delta"]["stop_reason"] == "end_turn", final
    assert final["usage"]["output_tokens"] == 6, final
    served = route.stats()
    assert served["output_tokens"] == 6, served
    start = ev[0][1]["message"]["usage"]
    assert start["input_tokens"] + start.get("cache_read_input_tokens", 0) == \
        served["input_tokens"], start
    rec = mock.requests_of(route.upstream_key)[-1]
    assert rec["stream"] is True and rec["auth"] == "x-api-key", rec
    meta = nnode.wait_metadata(rid)
    assert meta["stream"] is True and meta["status"] == 200, meta
    assert (meta["input_tokens"], meta["output_tokens"]) == \
        (served["input_tokens"], served["output_tokens"]), (meta, served)
    check_billed(nnode, route, served)


def test_anthropic_version_optional(nnode, mock):
    """anthropic-version is accepted, not required; upstream always gets 2023-06-01."""
    route = fresh_route(nnode, mock, "anthropic")
    with nnode.client() as c:
        for version in (None, "2023-06-01", "2023-01-01"):
            r = c.post("/v1/messages", json=anth_body(route.model, "hi " + directive(chunks=2)),
                       headers=anth_headers(route.secret, version=version))
            assert r.status_code == 200, (version, r.text[:300])
            assert r.json()["content"][0]["text"] == toks(2)
    recs = mock.requests_of(route.upstream_key)
    assert len(recs) == 3, recs
    assert all(q["anthropic_version"] == "2023-06-01" for q in recs), recs
    check_billed(nnode, route)


@pytest.mark.parametrize("upstream", ["anthropic", "openai", "gemini"])
def test_anthropic_ratelimit_headers(nnode, mock, upstream):
    """On every Anthropic-format answer of a key with rpm/tpm, whatever the provider type."""
    route = fresh_route(nnode, mock, upstream, key_limits={"rpm": 50, "tpm": 200000})
    now = datetime.now(timezone.utc)
    with nnode.client() as c:
        for stream in (False, True):
            body = anth_body(route.model, "limits " + directive(chunks=2), stream=stream)
            r = c.post("/v1/messages", json=body, headers=anth_headers(route.secret))
            assert r.status_code == 200, r.text[:300]
            h = r.headers
            for name in ("requests-limit", "requests-remaining", "requests-reset",
                         "tokens-limit", "tokens-remaining", "tokens-reset"):
                assert h.get("anthropic-ratelimit-" + name), \
                    "no anthropic-ratelimit-%s (stream=%s): %r" % (name, stream, dict(h))
            assert int(h["anthropic-ratelimit-requests-limit"]) == 50
            assert 0 <= int(h["anthropic-ratelimit-requests-remaining"]) <= 49
            assert int(h["anthropic-ratelimit-tokens-limit"]) == 200000
            assert 0 <= int(h["anthropic-ratelimit-tokens-remaining"]) <= 200000
            for name in ("requests-reset", "tokens-reset"):
                t = parse_rfc3339(h["anthropic-ratelimit-" + name])
                delta = (t - now).total_seconds()
                assert -5 <= delta <= 120, (name, h["anthropic-ratelimit-" + name])
    check_billed(nnode, route)


def test_models_anthropic_shape(nnode, mock):
    tag = harness.rand_id()
    models = ["m-%s-a" % tag, "m-%s-b" % tag]
    route = fresh_route(nnode, mock, "anthropic", tag=tag, models=models, key_models=models)
    with nnode.client() as c:
        r = c.get("/v1/models", headers={"authorization": "Bearer " + route.secret,
                                         "anthropic-version": "2023-06-01"})
        assert r.status_code == 200, r.text[:300]
        j = r.json()
        assert j.get("has_more") is False, j
        data = j["data"]
        assert sorted(m["id"] for m in data) == sorted(models), j
        for m in data:
            assert m["type"] == "model", m
            assert isinstance(m["display_name"], str) and m["display_name"], m
            parse_rfc3339(m["created_at"])
        assert j["first_id"] == data[0]["id"] and j["last_id"] == data[-1]["id"], j
        # without anthropic-version: OpenAI's shape
        r = c.get("/v1/models", headers={"authorization": "Bearer " + route.secret})
        assert r.status_code == 200 and r.json().get("object") == "list", r.text[:300]
        assert sorted(m["id"] for m in r.json()["data"]) == sorted(models)


def test_models_anthropic_shape_x_api_key(nnode, mock):
    """An Anthropic SDK lists models with x-api-key + anthropic-version."""
    route = fresh_route(nnode, mock, "anthropic", key_models=None)
    with nnode.client() as c:
        r = c.get("/v1/models", headers=anth_headers(route.secret))
    assert r.status_code == 200, r.text[:300]
    j = r.json()
    assert route.model in [m["id"] for m in j["data"]] and j["has_more"] is False, j


# --------------------------------------------------------------------------- Gemini

@pytest.mark.parametrize("how", ["header", "query", "bearer"])
def test_gemini_generate_content(nnode, mock, how):
    route = fresh_route(nnode, mock, "gemini")
    headers, params = gem_auth(route.secret, how)
    with nnode.client() as c:
        r = c.post(gem_path(route.model), json=gem_body("hello gemini " + directive(chunks=4)),
                   headers=headers, params=params)
    assert r.http_version == "HTTP/2"
    assert r.status_code == 200, r.text[:500]
    assert r.headers.get("content-type", "").startswith("application/json")
    assert r.headers.get("x-request-id")
    j = r.json()
    cand = j["candidates"][0]
    assert cand["content"]["role"] == "model", j
    assert gem_text([j]) == toks(4), j
    assert cand["finishReason"] == "STOP", j
    served = route.stats()
    assert served["requests"] == 1 and served["output_tokens"] == 4, served
    assert j["usageMetadata"]["promptTokenCount"] == served["input_tokens"], j
    assert j["usageMetadata"]["candidatesTokenCount"] == 4, j
    rec = mock.requests_of(route.upstream_key)[-1]
    assert rec["path"] == gem_path(route.model), rec
    assert rec["auth"] == "x-goog-api-key", rec  # never the URL, whatever the client did
    assert rec["model"] == route.model and rec["max_tokens"] == 50 and rec["stream"] is False, rec
    assert rec["parts"] == ["system:text", "user:text"], rec
    meta = nnode.wait_metadata(r.headers["x-request-id"])
    assert meta["status"] == 200 and meta["model"] == route.model and meta["stream"] is False
    check_billed(nnode, route, served)


@pytest.mark.parametrize("form", ["sse", "array"])
def test_gemini_stream(nnode, mock, form):
    route = fresh_route(nnode, mock, "gemini")
    params = {"alt": "sse"} if form == "sse" else {}
    with nnode.client() as c:
        with c.stream("POST", gem_path(route.model, stream=True), params=params,
                      json=gem_body("stream gemini " + directive(chunks=5)),
                      headers={"x-goog-api-key": route.secret}) as r:
            assert r.http_version == "HTTP/2"
            assert r.status_code == 200, r.read()[:500]
            ctype = r.headers.get("content-type", "")
            rid = r.headers.get("x-request-id")
            text = r.read().decode()
    assert rid
    if form == "sse":
        assert ctype.startswith("text/event-stream"), ctype
        blocks = sse_blocks(text)
        assert all(name is None for name, _ in blocks), blocks
        chunks = [d for _, d in blocks]
    else:
        assert ctype.startswith("application/json"), ctype
        # Gemini's own framing: "[" chunk ",\r\n" chunk ... "]"
        assert text.startswith("[{") and text.endswith("}]"), (text[:40], text[-40:])
        assert text.count("},\r\n{") == text.count("\"candidates\"") - 1, text[:400]
        chunks = json.loads(text)
        assert isinstance(chunks, list)
    assert len(chunks) >= 2, chunks
    assert gem_text(chunks) == toks(5), chunks
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP", chunks[-1]
    assert all("finishReason" not in (ch.get("candidates") or [{}])[0] for ch in chunks[:-1])
    served = route.stats()
    assert served["output_tokens"] == 5, served
    usage = chunks[-1]["usageMetadata"]
    assert usage["promptTokenCount"] == served["input_tokens"], usage
    assert usage["candidatesTokenCount"] == 5, usage
    rec = mock.requests_of(route.upstream_key)[-1]
    assert rec["path"] == gem_path(route.model, stream=True), rec
    assert rec["stream"] is True and rec["auth"] == "x-goog-api-key", rec
    meta = nnode.wait_metadata(rid)
    assert meta["stream"] is True and meta["status"] == 200, meta
    assert (meta["input_tokens"], meta["output_tokens"]) == \
        (served["input_tokens"], served["output_tokens"]), (meta, served)
    check_billed(nnode, route, served)


def test_gemini_key_in_url_never_logged(nnode, mock):
    """A key given as ?key= (the good one and a wrong one) appears neither in the node's
    stdout/stderr nor in /admin/v1/logs, whatever the request's outcome."""
    route = fresh_route(nnode, mock, "gemini")
    wrong = "sk-wrong-" + harness.rand_id(16)
    with nnode.client() as c:
        for stream, params in ((False, {}), (True, {"alt": "sse"}), (True, {})):
            r = c.post(gem_path(route.model, stream), json=gem_body("x " + directive(chunks=1)),
                       params=dict(params, key=route.secret))
            assert r.status_code == 200, r.text[:300]
        r = c.post(gem_path(route.model), json=gem_body("x"), params={"key": wrong})
        gemini_error(r, 401, "UNAUTHENTICATED")
        r = c.post(gem_path("no-such-model-" + route.tag), json=gem_body("x"),
                   params={"key": route.secret})
        gemini_error(r, 404, "NOT_FOUND")
        r = c.post(gem_path(route.model), content=b"{not json", params={"key": route.secret},
                   headers={"content-type": "application/json"})
        gemini_error(r, 400, "INVALID_ARGUMENT")
    recs = nnode.admin.all_logs(key=route.key_id)
    assert len(recs) >= 3, recs
    time.sleep(bound(0.5))  # let the last lines reach the files
    text = nnode.logs_text() + httpx.get(nnode.admin_url + "/metrics", timeout=5).text
    logs = json.dumps(nnode.admin.all_logs())
    for secret in (route.secret, wrong, route.upstream_key):
        assert secret not in text, "a key from the URL reached the node's output"
        assert secret not in logs, "a key from the URL reached /admin/v1/logs"
        assert secret[-12:] not in text and secret[-12:] not in logs


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("api", APIS)
def test_error_auth(nnode, mock, api):
    route = fresh_route(nnode, mock, api)
    with nnode.client() as c:
        check_error(api, call(c, api, route.model, route.secret, auth=False), "auth")
        check_error(api, call(c, api, route.model, "sk-not-a-key-" + route.tag), "auth")
        check_error(api, call(c, api, route.model, "sk-" + "x" * 20000), "auth")
        check_error(api, call(c, api, route.model, route.secret + "x"), "auth")
        if api == "gemini":
            for bad in ("bad", "%00", "k" * 6000, route.secret + "%0d%0ax"):
                r = c.post(gem_path(route.model) + "?key=" + bad, json=gem_body("x"))
                check_error(api, r, "auth")
        nnode.admin.revoke_key(route.key_id)

        def revoked():  # an unknown model: 404 until the revocation is seen, never upstream
            r = call(c, api, "no-such-model-" + route.tag, route.secret)
            return r.status_code == 401 and r
        check_error(api, wait_for(revoked, 10, "revocation to take effect"), "auth")
        check_error(api, call(c, api, route.model, route.secret), "auth")
    served = route.stats()
    assert served["requests"] == 0, served


@pytest.mark.parametrize("api", APIS)
def test_error_model(nnode, mock, api):
    tag = harness.rand_id()
    models = ["m-%s-ok" % tag, "m-%s-other" % tag]
    route = fresh_route(nnode, mock, api, tag=tag, models=models,
                        key_models=[models[0]])
    with nnode.client() as c:
        check_error(api, call(c, api, models[1], route.secret), "not_allowed")
        check_error(api, call(c, api, "no-such-model-" + tag, route.secret), "unknown")
        check_error(api, call(c, api, models[1], route.secret, stream=True), "not_allowed")
    assert route.stats()["requests"] == 0


@pytest.mark.parametrize("api", APIS)
def test_error_malformed(nnode, mock, api):
    route = fresh_route(nnode, mock, api)
    with nnode.client() as c:
        for raw in (b"{not json", b"", b"[1,2,3]", b'{"contents": [}', b'"just a string"',
                    b"\xff\xfe{}", b'{"model": "\xc3\x28"}'):
            check_error(api, call(c, api, route.model, route.secret, raw=raw), "malformed")
        # invalid UTF-8 inside a prompt string
        if api == "anthropic":
            bad = b'{"model": "%s", "max_tokens": 5, "messages": [{"role": "user", ' \
                  b'"content": "a\xff\xfeb"}]}' % route.model.encode()
        elif api == "gemini":
            bad = b'{"contents": [{"role": "user", "parts": [{"text": "a\xff\xfeb"}]}]}'
        else:
            bad = b'{"model": "%s", "messages": [{"role": "user", "content": "a\xff\xfeb"}]}' \
                % route.model.encode()
        check_error(api, call(c, api, route.model, route.secret, raw=bad), "malformed")
        # fields the relay reads itself, of the wrong type
        if api == "gemini":
            for gc in ({"maxOutputTokens": -5}, {"maxOutputTokens": "abc"}, "not an object"):
                bad = json.dumps(gem_body("x", generationConfig=gc)).encode()
                check_error(api, call(c, api, route.model, route.secret, raw=bad), "malformed")
        else:
            for extra in ({"stream": "yes"}, {"max_tokens": -1}, {"max_tokens": 1.5}):
                b = anth_body(route.model, "x") if api == "anthropic" else \
                    {"model": route.model, "messages": [{"role": "user", "content": "x"}]}
                b.update(extra)
                check_error(api, call(c, api, route.model, route.secret,
                                      raw=json.dumps(b).encode()), "malformed")
        # well-formed JSON of the wrong shape where the relay itself must read it (a model
        # that is not a string; same-format bodies are otherwise passed on leniently)
        if api != "gemini":
            bad = {"model": 42, "max_tokens": 10,
                   "messages": [{"role": "user", "content": "x"}]}
            check_error(api, call(c, api, route.model, route.secret,
                                  raw=json.dumps(bad).encode()), "malformed")
    assert route.stats()["requests"] == 0


@pytest.mark.parametrize("api", APIS)
def test_error_too_large(nnode, mock, api):
    route = fresh_route(nnode, mock, api)
    with nnode.client() as c:
        r = call(c, api, route.model, route.secret, text="a" * (300 * 1024))
        check_error(api, r, "too_large")
    assert route.stats()["requests"] == 0


@pytest.mark.parametrize("api", APIS)
def test_error_budget_spent(nnode, mock, api):
    route = fresh_route(nnode, mock, api, key_limits={"budget_tokens": 1})
    with nnode.client() as c:
        msg = check_error(api, call(c, api, route.model, route.secret), "budget")
        if api == "anthropic":
            assert "budget" in msg.lower(), msg
    assert route.stats()["requests"] == 0


@pytest.mark.parametrize("api", APIS)
def test_error_rate_limit(nnode, mock, api):
    route = fresh_route(nnode, mock, api, key_limits={"rpm": 1})
    with nnode.client() as c:
        r = call(c, api, route.model, route.secret, text="one " + directive(chunks=1))
        assert r.status_code == 200, r.text[:300]
        r = call(c, api, route.model, route.secret, text="two " + directive(chunks=1))
        check_error(api, r, "rate")
        ra = r.headers.get("retry-after")
        assert ra is not None and ra.isdigit() and 1 <= int(ra) <= 120, ra
        if api == "anthropic":  # the key has an rpm: its headers are on the 429 too
            assert r.headers.get("anthropic-ratelimit-requests-limit") == "1", dict(r.headers)
            assert r.headers.get("anthropic-ratelimit-requests-remaining") == "0", dict(r.headers)
        elif api == "openai":
            assert r.headers.get("x-ratelimit-limit-requests") == "1", dict(r.headers)
    assert route.stats()["requests"] == 1
    check_billed(nnode, route)


@pytest.mark.parametrize("api", APIS)
def test_error_upstream_down(nnode, mock, api):
    """A provider nobody listens on: after the retries, 502 in the client's shape (503
    overloaded/unavailable if the channel's breaker opened meanwhile)."""
    dead = "http://127.0.0.1:%d" % harness.free_port()
    route = Route(nnode, mock, type_=api, base_url=dead + ("/v1" if api == "openai" else ""))
    wait_key_visible(nnode, route.secret, route.model)
    with nnode.client() as c:
        r = call(c, api, route.model, route.secret)
    if r.status_code == 503:
        assert r.headers.get("retry-after"), "503 without Retry-After"
        if api == "anthropic":
            anthropic_error(r, 503, "overloaded_error")
        elif api == "gemini":
            gemini_error(r, 503, "UNAVAILABLE")
        else:
            openai_error(r, 503, None)
    else:
        check_error(api, r, "upstream_down")
    assert nnode.admin.key(route.key_id)["spent"]["input_tokens"] == 0


@pytest.mark.parametrize("api", APIS)
def test_error_upstream_timeout(nnode, mock, api):
    """No first byte within --upstream-first-byte-timeout (2s here): 504 in the client's
    shape."""
    route = fresh_route(nnode, mock, api)
    with nnode.client() as c:
        r = call(c, api, route.model, route.secret,
                 text="slow " + directive(first_byte_delay_ms=6000))
    check_error(api, r, "timeout")


def test_openai_only_endpoints_refuse_other_types(nnode, mock):
    """/v1/completions, /v1/embeddings and /v1/responses are not translated: a model served
    only by an anthropic or gemini provider gets a clear 4xx, and nothing goes upstream."""
    for type_ in ("anthropic", "gemini"):
        route = fresh_route(nnode, mock, type_)
        with nnode.client() as c:
            for path, body in (("/v1/completions", {"model": route.model, "prompt": "x"}),
                               ("/v1/embeddings", {"model": route.model, "input": "x"}),
                               ("/v1/responses", {"model": route.model, "input": "x"})):
                r = c.post(path, json=body, headers={"authorization": "Bearer " + route.secret})
                assert r.status_code in (400, 404), (type_, path, r.status_code, r.text[:300])
                msg = openai_error(r, r.status_code, None)
                assert msg, (type_, path)
        assert route.stats()["requests"] == 0, (type_, route.stats())


# ---------------------------------------------------------------------- hostile input

def test_hostile_paths_and_models(nnode, mock):
    route = fresh_route(nnode, mock, "gemini")
    key = {"x-goog-api-key": route.secret, "content-type": "application/json"}
    body = json.dumps(gem_body("x")).encode()
    paths = [
        "/v1beta/models/" + "A" * 16000 + ":generateContent",
        "/v1beta/models/" + "%ff%fe%00" * 200 + ":generateContent",
        "/v1beta/models/:generateContent",
        "/v1beta/models/",
        "/v1beta/models/%s" % route.model,
        "/v1beta/models/%s:" % route.model,
        "/v1beta/models/%s:noSuchMethod" % route.model,
        "/v1beta/models/%s:generateContent:generateContent" % route.model,
        "/v1beta/models/..%2F..%2Fadmin%2Fv1%2Fkeys:generateContent",
        "/v1beta/models/m%20x%22%3C%3E:generateContent",
        "/v1beta/models/m%C3%A9%E2%9C%93:generateContent",
        "/v1beta/models/m%0d%0aX-Injected:%20yes:generateContent",
        "/v1beta/models/%s%%00:generateContent" % route.model,
        "/v1beta/models/%s/../../x:generateContent" % route.model,
        "/v1beta/models/" + "a:" * 3000 + "generateContent",
    ]
    # paths that h2o normalises out of /v1beta/models/ are merely unknown paths
    escaped = ("..%2F", "/../")
    for path in paths:
        try:
            with nnode.client() as c:
                r = c.post(path, content=body, headers=key)
        except httpx.HTTPError as exc:  # h2o may refuse a huge header block outright
            assert len(path) > 4000, (path[:80], exc)
            continue
        assert 400 <= r.status_code < 500, (path[:80], r.status_code, r.text[:200])
        assert "x-injected" not in r.headers
        if r.headers.get("content-type", "").startswith("application/json"):
            err = r.json().get("error")
            assert isinstance(err, dict), (path[:80], r.text[:200])
            if not any(e in path for e in escaped):  # Gemini's shape under its prefix
                assert "status" in err and err.get("code") == r.status_code, \
                    (path[:80], r.text[:200])
    served_ok = 0
    with nnode.client() as c:
        # a long query of unknown parameters is harmless
        r = c.post(gem_path(route.model) + "?" + "k=v&" * 2000, content=body, headers=key)
        if r.status_code == 200:
            served_ok += 1
        else:
            gemini_error(r, 400, "INVALID_ARGUMENT")
        # a bad ?alt=: refused in Gemini's shape (or, at most, ignored); never a crash
        for alt in ("xml", "", "sse%00", "s" * 3000):
            r = c.post(gem_path(route.model, stream=True) + "?alt=" + alt, content=body,
                       headers=key)
            if r.status_code == 200:
                served_ok += 1
                continue
            gemini_error(r, 400, "INVALID_ARGUMENT")
        # odd model names in bodies
        for model in ("\u0000x", "m" * 10000, "../../etc/passwd", "m\u00e9\u2713", " ", "",
                      "\ud83d\ude00"):
            for api in ("openai", "anthropic"):
                r = call(c, api, model, route.secret)
                assert r.status_code in (400, 404), (api, repr(model[:20]), r.status_code,
                                                     r.text[:200])
                if api == "anthropic":
                    assert r.json()["type"] == "error", r.text[:200]
                else:
                    assert isinstance(r.json()["error"], dict), r.text[:200]
        # wrong methods
        r = c.get(gem_path(route.model), headers=key)
        assert 400 <= r.status_code < 500, r.status_code
        r = c.get("/v1/messages", headers=anth_headers(route.secret))
        assert 400 <= r.status_code < 500, r.status_code
        for path in ("/v1/messages/count_tokens", "/v1/messages/batches", "/v1/messages/x/y"):
            r = c.post(path, json=anth_body(route.model, "x"), headers=anth_headers(route.secret))
            assert 400 <= r.status_code < 500, (path, r.status_code)
    assert route.stats()["requests"] == served_ok
    # still healthy: a normal request goes through on both APIs
    assert nnode.running()
    r = httpx.get(nnode.admin_url + "/healthz", timeout=5)
    assert r.status_code == 200
    with nnode.client() as c:
        r = c.post(gem_path(route.model), json=gem_body("ok " + directive(chunks=2)),
                   headers={"x-goog-api-key": route.secret})
        assert r.status_code == 200 and gem_text([r.json()]) == toks(2), r.text[:300]
    check_billed(nnode, route)
