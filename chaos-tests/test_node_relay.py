# ctest-labels: sanitize
"""The basic relay over TLS + HTTP/2: every OpenAI endpoint, stream and non-stream, with the
exact usage of each request in the node's metadata line compared with what the mock says it
served; /v1/models; `store:false` and `include_usage` sent upstream; x-request-id; stream
events spread over time for a slow upstream; llmrelayctl creating a provider and a key; no
prompt text in the node's logs."""

import json
import os
import subprocess
import time

import pytest

import harness
from harness import Route, bound, directive, wait_key_visible

ENDPOINTS = {
    # path, metadata endpoint name, body builder
    "chat": ("/v1/chat/completions", "chat.completions",
             lambda m, t: {"model": m, "messages": [{"role": "user", "content": t}]}),
    "completions": ("/v1/completions", "completions", lambda m, t: {"model": m, "prompt": t}),
    "embeddings": ("/v1/embeddings", "embeddings", lambda m, t: {"model": m, "input": t}),
    "responses": ("/v1/responses", "responses", lambda m, t: {"model": m, "input": t}),
}


def fresh_route(node, mock, **kw):
    r = Route(node, mock, **kw)
    wait_key_visible(node, r.secret, r.models[0])
    return r


def client_usage(endpoint, body):
    """(input, output) token counts from a non-stream answer or a final stream event."""
    u = body.get("usage") or (body.get("response") or {}).get("usage")
    assert u, "no usage in %s answer: %s" % (endpoint, json.dumps(body)[:300])
    if "input_tokens" in u:
        return u["input_tokens"], u.get("output_tokens", 0)
    return u["prompt_tokens"], u.get("completion_tokens", 0)


def check_metadata(node, route, request_id, endpoint_name, stream, served):
    rec = node.wait_metadata(request_id)
    assert rec["status"] == 200, rec
    assert rec["endpoint"] == endpoint_name, rec
    assert rec["key_id"] == route.key_id, rec
    assert rec["model"] == route.model, rec
    assert rec["provider"] == route.provider, rec
    assert rec["node"] == node.name, rec
    assert rec["stream"] is stream, rec
    assert rec["estimated"] is False, rec
    assert rec["input_tokens"] == served["input_tokens"], (rec, served)
    assert rec["output_tokens"] == served["output_tokens"], (rec, served)
    for f in ("ts", "cached_input_tokens", "reasoning_tokens", "usd", "latency_ms", "ttfb_ms"):
        assert f in rec, (f, rec)
    assert rec["latency_ms"] >= 0
    return rec


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_non_stream(node, mock, endpoint):
    path, name, build = ENDPOINTS[endpoint]
    route = fresh_route(node, mock)
    with node.client() as c:
        r = c.post(path, json=build(route.model, "hello relay, how are you today?"),
                   headers=route.headers())
    assert r.http_version == "HTTP/2"
    assert r.status_code == 200, r.text[:500]
    rid = r.headers.get("x-request-id")
    assert rid
    served = route.stats()
    assert served["requests"] == 1
    assert served["input_tokens"] > 0
    if endpoint != "embeddings":
        assert served["output_tokens"] == 8  # the mock's default chunk count
    got_in, got_out = client_usage(endpoint, r.json())
    assert (got_in, got_out) == (served["input_tokens"], served["output_tokens"])
    check_metadata(node, route, rid, name, False, served)


@pytest.mark.parametrize("endpoint", ["chat", "completions", "responses"])
def test_stream(node, mock, endpoint):
    path, name, build = ENDPOINTS[endpoint]
    route = fresh_route(node, mock)
    body = build(route.model, "stream me something " + directive(chunks=12))
    body["stream"] = True
    lines = []
    with node.client() as c:
        with c.stream("POST", path, json=body, headers=route.headers()) as r:
            assert r.http_version == "HTTP/2"
            assert r.status_code == 200, r.read()[:500]
            assert r.headers.get("content-type", "").startswith("text/event-stream")
            rid = r.headers.get("x-request-id")
            lines = list(r.iter_lines())
    assert rid
    events = harness.sse_events(lines)
    served = route.stats()
    assert served["output_tokens"] == 12
    if endpoint == "responses":
        types = [e.get("type") for e in events]
        assert types[-1] == "response.completed", types
        deltas = [e for e in events if e.get("type") == "response.output_text.delta"]
        assert len(deltas) == 12
        assert client_usage(endpoint, events[-1]) == (served["input_tokens"], 12)
    else:
        assert any(line.strip() == "data: [DONE]" for line in lines), lines[-3:]
        field = "text" if endpoint == "completions" else None
        pieces = []
        for e in events:
            for ch in e.get("choices") or []:
                piece = ch.get("text") if field else (ch.get("delta") or {}).get("content")
                if piece:
                    pieces.append(piece)
        assert len(pieces) == 12, pieces
        # the client did not ask for the usage chunk, so it must not see one
        assert not [e for e in events if e.get("usage")], "usage chunk leaked to the client"
    check_metadata(node, route, rid, name, True, served)


def test_models_lists_key_models(node, mock):
    tag = harness.rand_id()
    route = Route(node, mock, tag=tag, models=["m-%s-a" % tag, "m-%s-b" % tag],
                  key_models=["m-%s-a" % tag])
    wait_key_visible(node, route.secret, "m-%s-a" % tag)
    with node.client() as c:
        r = c.get("/v1/models", headers=route.headers())
        assert r.status_code == 200 and r.http_version == "HTTP/2"
        body = r.json()
        assert body.get("object") == "list"
        ids = [m["id"] for m in body["data"]]
        assert ids == ["m-%s-a" % tag], ids
        assert all(m.get("object") == "model" for m in body["data"])
        # a key without a model list sees every model of the provider
        other = node.admin.create_key(name="all-models")
        wait_key_visible(node, other["key"], "m-%s-b" % tag)
        r = c.get("/v1/models", headers={"authorization": "Bearer " + other["key"]})
        ids = [m["id"] for m in r.json()["data"]]
        assert "m-%s-a" % tag in ids and "m-%s-b" % tag in ids


def test_responses_store_false_upstream(node, mock):
    route = fresh_route(node, mock)
    seen = {}
    with node.client() as c:
        for case, extra in (("absent", {}), ("false", {"store": False}),
                            ("true", {"store": True})):
            body = {"model": route.model, "input": "remember? " + case}
            body.update(extra)
            r = c.post("/v1/responses", json=body, headers=route.headers())
            assert r.status_code == 200, r.text[:300]
            reqs = [q for q in mock.requests() if q.get("model") == route.model]
            assert reqs, "mock saw no request for this model"
            seen[case] = reqs[-1].get("store")
    assert seen == {"absent": False, "false": False, "true": True}, seen


def test_include_usage(node, mock):
    route = fresh_route(node, mock)
    with node.client() as c:
        # 1. the client does not ask: the node asks upstream anyway, and strips the chunk
        body = {"model": route.model, "stream": True,
                "messages": [{"role": "user", "content": "count " + directive(chunks=5)}]}
        with c.stream("POST", "/v1/chat/completions", json=body, headers=route.headers()) as r:
            assert r.status_code == 200
            events = harness.sse_events(r.iter_lines())
        up = [q for q in mock.requests() if q.get("model") == route.model]
        assert up[-1].get("include_usage") is True, up[-1]
        assert up[-1].get("stream") is True
        assert not [e for e in events if e.get("usage")]
        assert all(e.get("choices") for e in events), "an empty-choices chunk reached the client"
        # 2. the client asks: it gets the usage-only chunk, with the served figures
        before = route.stats()
        body["stream_options"] = {"include_usage": True}
        with c.stream("POST", "/v1/chat/completions", json=body, headers=route.headers()) as r:
            assert r.status_code == 200
            events = harness.sse_events(r.iter_lines())
        after = route.stats()
        usage_events = [e for e in events if e.get("usage")]
        assert len(usage_events) == 1, events[-3:]
        u = usage_events[0]
        assert u.get("choices") == [] and u is events[-1]
        assert u["usage"]["prompt_tokens"] == after["input_tokens"] - before["input_tokens"]
        assert u["usage"]["completion_tokens"] == 5 == \
            after["output_tokens"] - before["output_tokens"]


def test_request_id(node, mock):
    route = fresh_route(node, mock)
    body = {"model": route.model, "messages": [{"role": "user", "content": "id?"}]}
    with node.client() as c:
        cases = [
            c.post("/v1/chat/completions", json=body, headers=route.headers()),
            c.get("/v1/models", headers=route.headers()),
            c.post("/v1/chat/completions", json=body),  # 401
            c.get("/v1/nowhere", headers=route.headers()),  # 404
            c.post("/v1/chat/completions", content=b"{not json", headers=route.headers()),
        ]
        ids = [r.headers.get("x-request-id") for r in cases]
        assert all(ids), [(r.status_code, r.headers.get("x-request-id")) for r in cases]
        assert len(set(ids)) == len(ids), "request ids repeat: %r" % ids
        # a sane id from the client is echoed, and is the one in the metadata line
        mine = "e2e-req-" + harness.rand_id(12)
        r = c.post("/v1/chat/completions", json=body, headers=route.headers(**{
            "x-request-id": mine}))
        assert r.status_code == 200
        assert r.headers.get("x-request-id") == mine
        node.wait_metadata(mine)
        # an insane one (far too long, odd characters) is replaced
        insane = "x" * 600 + "\"<>{}"
        r = c.post("/v1/chat/completions", json=body, headers=route.headers(**{
            "x-request-id": insane}))
        assert r.status_code == 200
        assert r.headers.get("x-request-id") and r.headers["x-request-id"] != insane


def test_slow_upstream_stream_is_spread(node, mock):
    route = fresh_route(node, mock)
    n, delay = 10, 150
    body = {"model": route.model, "stream": True,
            "messages": [{"role": "user", "content": "slowly " + directive(chunks=n,
                                                                             delay_ms=delay)}]}
    arrivals = []
    with node.client() as c:
        t0 = time.monotonic()
        with c.stream("POST", "/v1/chat/completions", json=body, headers=route.headers()) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data:") and "[DONE]" not in line:
                    ev = json.loads(line[5:])
                    if any((ch.get("delta") or {}).get("content") for ch in ev.get("choices", [])):
                        arrivals.append(time.monotonic() - t0)
    assert len(arrivals) == n
    span = arrivals[-1] - arrivals[0]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    print("stream arrivals (s): %s" % ", ".join("%.3f" % a for a in arrivals))
    # 9 gaps of 150 ms upstream: the client must see them, not one burst at the end
    assert span >= 0.9, "chunks arrived in a burst: span %.3fs" % span
    assert sum(1 for g in gaps if g >= 0.07) >= 6, gaps


def test_plain_listener_http1(node, mock):
    route = fresh_route(node, mock)
    import httpx
    with httpx.Client(base_url=node.plain_url, timeout=30) as c:
        r = c.post("/v1/chat/completions", headers=route.headers(),
                   json={"model": route.model, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.http_version == "HTTP/1.1"
    assert r.headers.get("x-request-id")
    assert route.stats()["requests"] == 1


def _ctl(node, *args):
    argv = [harness.binary("llmrelayctl"), "--admin", node.admin_url, "--token-file",
            node.token_file, "--json", *args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=bound(30))
    assert p.returncode == 0, "llmrelayctl %s -> %d: %s" % (" ".join(args[:2]), p.returncode,
                                                          p.stderr[-500:])
    return json.loads(p.stdout)


def test_llmrelayctl_provider_and_key(node, mock):
    if not os.access(harness.binary("llmrelayctl"), os.X_OK):
        pytest.fail("llmrelayctl not built in %s" % harness.BIN)
    tag = harness.rand_id()
    upstream_key = "sk-up-ctl-%s-0123456789" % tag
    model = "m-ctl-" + tag
    p = _ctl(node, "provider", "set", "p-ctl-" + tag, "--type", "openai", "--base-url",
             mock.base_url, "--api-key", upstream_key, "--models", model)
    assert p["name"] == "p-ctl-" + tag and p["models"] == [model]
    assert upstream_key not in json.dumps(p) and p["api_keys"] == ["…6789"]
    k = _ctl(node, "key", "create", "--name", "ctl-" + tag)
    assert k["id"].startswith("key_") and k["key"].startswith("sk-lr-")
    wait_key_visible(node, k["key"], model)
    with node.client() as c:
        r = c.post("/v1/chat/completions", headers={"authorization": "Bearer " + k["key"]},
                   json={"model": model, "messages": [{"role": "user", "content": "via ctl"}]})
    assert r.status_code == 200, r.text[:300]
    assert mock.key_stats(upstream_key)["requests"] == 1
    shown = _ctl(node, "key", "show", k["id"])
    assert shown["id"] == k["id"] and "key" not in shown


CANARY = "canary-e2e-9f31c7d2-do-not-log"


def test_zz_no_prompt_content_in_logs(node, mock):
    """Runs last in the file: prompts with a canary (stream, non-stream, an error path)
    must leave no trace in the node's stdout/stderr."""
    route = fresh_route(node, mock)
    with node.client() as c:
        msg = [{"role": "user", "content": CANARY + " secret prompt"}]
        r = c.post("/v1/chat/completions", json={"model": route.model, "messages": msg},
                   headers=route.headers())
        assert r.status_code == 200
        with c.stream("POST", "/v1/chat/completions", headers=route.headers(),
                      json={"model": route.model, "messages": msg, "stream": True}) as r:
            list(r.iter_lines())
        r = c.post("/v1/chat/completions", content=(CANARY + "{broken").encode(),
                   headers=route.headers())
        assert r.status_code == 400
        r = c.post("/v1/chat/completions", json={"model": CANARY, "messages": msg},
                   headers=route.headers())
        assert r.status_code in (403, 404)
        rid = r.headers["x-request-id"]
    node.wait_metadata(rid)
    logs = node.logs_text()
    assert CANARY not in logs, "prompt content found in the node's logs"
    assert route.secret not in logs and route.upstream_key not in logs, "a secret was logged"
