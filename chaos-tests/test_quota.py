# ctest-labels: sanitize
"""Quotas that cannot be overdrawn (issue 3): the concurrent-budget test (200 concurrent
requests over HTTP/2 against a budget that covers about 50 worst cases never make the
upstream serve more tokens than the budget), a USD budget, RPM and TPM windows (limits
hold; admitted again once the window has passed, with the test clock instead of waiting),
x-ratelimit-* values that go down with use, the default output bound sent upstream when
the client gave none, rotation with a grace period, expiry, and each refusal's status,
shape and headers.

Ground truth is the mock's /mock/stats per upstream key: what the upstream really served.
The node runs with LLMRELAY_CLOCK_FILE (harness.TestClock) and a small
--default-max-output-tokens."""

import asyncio
import datetime
import json
import math

import httpx
import pytest

import harness
from harness import Route, TestClock, directive, ratelimit_headers, wait_for, wait_key_visible

DEFAULT_MAX_OUT = 50
NODE_ARGS = ["--default-max-output-tokens", str(DEFAULT_MAX_OUT)]


@pytest.fixture(scope="module")
def clock(workdir):
    return TestClock(workdir)


@pytest.fixture(scope="module")
def qnode(nodes, mock, clock):
    return nodes.start("q1", extra_args=NODE_ARGS, env=clock.env())


def limited_route(node, mock, **limits):
    r = Route(node, mock, key_limits=limits)
    wait_key_visible(node, r.secret, r.model)
    return r


def chat(model, text="hi", **kw):
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    body.update(kw)
    return body


def prompt_bytes(body):
    """Bytes of the prompt's strings (the node's input bound is at least this)."""
    return sum(len(m["content"].encode()) for m in body["messages"])


def worst_case_bound(body):
    """An upper bound of any sane worst-case reservation for body: every byte of the JSON
    body as input tokens, plus the output bound."""
    return len(json.dumps(body).encode()) + body.get("max_tokens", DEFAULT_MAX_OUT)


def openai_error(r, status, code):
    assert r.status_code == status, "expected %d %s, got %d %s" % (status, code, r.status_code,
                                                                  r.text[:300])
    assert r.headers.get("x-request-id"), "no x-request-id on a %d" % status
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    err = r.json().get("error")
    assert isinstance(err, dict), r.text[:300]
    assert isinstance(err.get("message"), str) and err["message"]
    assert isinstance(err.get("type"), str) and err["type"]
    assert err.get("code") == code, r.text[:300]
    return err


def retry_after_s(r):
    v = r.headers.get("retry-after")
    assert v is not None, "429 rate_limit_exceeded without Retry-After: %r" % dict(r.headers)
    assert v.isdigit(), "Retry-After must be whole seconds: %r" % v
    return int(v)


def served_tokens(route):
    st = route.stats()
    return st["input_tokens"] + st["output_tokens"]


def align_window(clock, node, pos_ms):
    """Moves the test clock forward so that the nodes' calendar time sits pos_ms into a
    60-second rate window (windows are aligned on multiples of 60 s)."""
    now = clock.now_ms()
    clock.advance((pos_ms - now % 60000) % 60000, [node])


def rfc3339(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------ concurrent budget

async def _wave(node, route, body, n, connections=4):
    """n concurrent requests spread over `connections` HTTP/2 connections."""
    clients = [httpx.AsyncClient(http2=True, verify=False, base_url=node.url,
                                 timeout=harness.bound(60)) for _ in range(connections)]
    try:
        async def one(i):
            return await clients[i % connections].post("/v1/chat/completions", json=body,
                                                       headers=route.headers())
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        for c in clients:
            await c.aclose()


def test_concurrent_budget_never_overdrawn(qnode, mock):
    max_tokens = 100
    body = chat(None, directive(chunks=max_tokens, delay_ms=800) + " budget test prompt",
                max_tokens=max_tokens)
    worst_min = prompt_bytes(body) + max_tokens          # the node reserves at least this
    budget = 50 * worst_min
    route = limited_route(qnode, mock, budget_tokens=budget)
    body["model"] = route.model
    actual_each = math.ceil(prompt_bytes(body) / 4) + max_tokens  # the mock's count

    codes = {}
    admitted = 0
    for wave in range(2):
        answers = asyncio.run(_wave(qnode, route, body, 200))
        for r in answers:
            assert r.http_version == "HTTP/2"
            if r.status_code == 200:
                admitted += 1
                u = r.json()["usage"]
                assert u["prompt_tokens"] + u["completion_tokens"] == actual_each
                continue
            assert r.status_code == 429, "refusal %d %s" % (r.status_code, r.text[:300])
            code = r.json()["error"]["code"]
            # budget spent: insufficient_quota; budget only held by requests in flight may
            # be answered as a (retryable) rate limit, then with Retry-After
            assert code in ("insufficient_quota", "rate_limit_exceeded"), r.text[:300]
            if code == "rate_limit_exceeded":
                retry_after_s(r)
            codes[code] = codes.get(code, 0) + 1
        served = served_tokens(route)
        print("wave %d: admitted so far %d, refusals %r, served %d tokens of a %d budget"
              % (wave + 1, admitted, codes, served, budget))
        assert served <= budget, "upstream served %d tokens, budget %d" % (served, budget)
        if wave == 0:
            assert admitted >= 40, "only %d of 200 admitted with a budget for ~50" % admitted
            assert sum(codes.values()) > 0, "nothing refused"

    # settles released what the worst cases did not use: the rest of the budget is usable,
    # sequentially, until the budget itself refuses
    seq_body = dict(body, messages=[{"role": "user", "content": directive(chunks=max_tokens)
                                     + " budget test prompt"}])
    last = None
    with qnode.client() as c:
        for _ in range(200):
            last = c.post("/v1/chat/completions", json=seq_body, headers=route.headers())
            if last.status_code != 200:
                break
    openai_error(last, 429, "insufficient_quota")
    served = served_tokens(route)
    assert served <= budget, "upstream served %d tokens, budget %d" % (served, budget)
    assert budget - served < worst_case_bound(seq_body), \
        "budget %d, served %d: the unused part of the reservations was not released" % (
            budget, served)

    # the key's books agree with the upstream's
    def spent_matches():
        k = qnode.admin.key(route.key_id)
        s = k["spent"]
        return (s["input_tokens"] + s["output_tokens"] == served and
                k["remaining"]["tokens"] == budget - served) and k
    k = wait_for(spent_matches, 10, "key show spent == served tokens")
    assert k["limits"]["budget_tokens"] == budget
    print("budget %d tokens: upstream served %d (%d requests admitted in total)"
          % (budget, served, route.stats()["requests"]))


def test_budget_usd(qnode, mock):
    tag = harness.rand_id()
    p_in, p_out = 1000.0, 2000.0   # USD per 1M tokens: 0.001 and 0.002 per token
    # the price is stored before the key: once the key is visible on the node, so is it
    qnode.admin.put_price("m-" + tag, p_in, p_out)
    route = Route(qnode, mock, tag=tag, key_limits={"budget_usd": 1.0})
    wait_key_visible(qnode, route.secret, route.model)
    body = chat(route.model, directive(chunks=100) + " usd", max_tokens=100)

    def served_usd():
        st = route.stats()
        return (st["input_tokens"] * p_in + st["output_tokens"] * p_out) / 1e6

    statuses = []
    with qnode.client() as c:
        for _ in range(20):
            r = c.post("/v1/chat/completions", json=body, headers=route.headers())
            statuses.append(r.status_code)
            if r.status_code != 200:
                break
    assert statuses[-1] == 429, statuses
    openai_error(r, 429, "insufficient_quota")
    assert 2 <= statuses.count(200) <= 5, statuses
    assert served_usd() <= 1.0 + 1e-9, served_usd()
    k = wait_for(lambda: (abs(qnode.admin.key(route.key_id)["spent"]["usd"] - served_usd())
                          < 1e-9) and qnode.admin.key(route.key_id), 10,
                 "key show spent.usd == served tokens x price")
    assert abs(k["remaining"]["usd"] - max(0.0, 1.0 - served_usd())) < 1e-9, k
    print("budget $1.00: %d requests admitted, $%.6f served" % (statuses.count(200),
                                                                served_usd()))


def test_default_output_bound_sent_upstream(qnode, mock):
    """A metered request without max_tokens gets --default-max-output-tokens upstream: the
    mock, asked for 500 tokens, serves only that many."""
    route = limited_route(qnode, mock, budget_tokens=100000)
    with qnode.client() as c:
        r = c.post("/v1/chat/completions", json=chat(route.model, directive(chunks=500)),
                   headers=route.headers())
        assert r.status_code == 200, r.text[:300]
        assert r.json()["usage"]["completion_tokens"] == DEFAULT_MAX_OUT
        # streamed too
        with c.stream("POST", "/v1/chat/completions", headers=route.headers(),
                      json=chat(route.model, directive(chunks=500), stream=True)) as s:
            assert s.status_code == 200
            events = harness.sse_events(s.iter_lines())
    text_chunks = [e for e in events if e.get("choices") and
                   e["choices"][0].get("delta", {}).get("content")]
    assert len(text_chunks) == DEFAULT_MAX_OUT, len(text_chunks)
    st = route.stats()
    assert st["output_tokens"] == 2 * DEFAULT_MAX_OUT, st


# ---------------------------------------------------------------------- rate windows

def test_rpm_window(qnode, mock, clock):
    rpm = 3
    route = limited_route(qnode, mock, rpm=rpm)
    body = chat(route.model, "rpm", max_tokens=5)
    with qnode.client() as c:
        def burst(n):
            return [c.post("/v1/chat/completions", json=body, headers=route.headers())
                    for _ in range(n)]

        # the burst sits 50 s into a window
        align_window(clock, qnode, 50000)
        got = burst(rpm + 2)
        assert [r.status_code for r in got] == [200] * rpm + [429, 429], \
            [r.status_code for r in got]
        for r in got[rpm:]:
            openai_error(r, 429, "rate_limit_exceeded")
            assert 1 <= retry_after_s(r) <= 120
        served = route.stats()["requests"]
        assert served == rpm, "refused requests reached the upstream"

        # Retry-After is honest: that much later the request is admitted
        wait_s = retry_after_s(got[-1])
        clock.advance(wait_s * 1000 + 500, [qnode])
        r = burst(1)[0]
        assert r.status_code == 200, "refused again after Retry-After %d s: %d %s" % (
            wait_s, r.status_code, r.text[:200])

        # once a whole window has passed with no traffic, the whole limit is there again
        clock.advance(121000, [qnode])
        got = burst(rpm + 1)
        assert [r.status_code for r in got] == [200] * rpm + [429], \
            [r.status_code for r in got]
    assert route.stats()["requests"] == served + 1 + rpm


def test_rpm_admits_again_61s_later(qnode, mock, clock):
    """The window passes: 61 s after a burst that filled the limit, requests are admitted
    again (a burst late in its window: 50 s in)."""
    rpm = 3
    route = limited_route(qnode, mock, rpm=rpm)
    body = chat(route.model, "rpm61", max_tokens=5)
    with qnode.client() as c:
        align_window(clock, qnode, 50000)
        got = [c.post("/v1/chat/completions", json=body, headers=route.headers()).status_code
               for _ in range(rpm + 1)]
        assert got == [200] * rpm + [429], got
        clock.advance(61000, [qnode])
        r = c.post("/v1/chat/completions", json=body, headers=route.headers())
        assert r.status_code == 200, "61 s after the burst: %d %s" % (r.status_code,
                                                                      r.text[:200])


def test_tpm_window(qnode, mock, clock):
    tpm = 1000
    route = limited_route(qnode, mock, tpm=tpm)
    body = chat(route.model, directive(chunks=200) + " tpm", max_tokens=200)
    with qnode.client() as c:
        align_window(clock, qnode, 5000)
        answers = []
        for _ in range(10):
            r = c.post("/v1/chat/completions", json=body, headers=route.headers())
            answers.append(r)
            if r.status_code != 200:
                break
        codes = [r.status_code for r in answers]
        assert codes[-1] == 429, codes
        openai_error(answers[-1], 429, "rate_limit_exceeded")
        wait_s = retry_after_s(answers[-1])
        assert 1 <= wait_s <= 120
        served = served_tokens(route)
        assert served <= tpm, "upstream served %d tokens within one minute, tpm %d" % (served,
                                                                                       tpm)
        assert codes.count(200) >= 3, codes
        n_first = codes.count(200)

        clock.advance(wait_s * 1000 + 500, [qnode])
        r = c.post("/v1/chat/completions", json=body, headers=route.headers())
        assert r.status_code == 200, "refused again after Retry-After %d s: %d %s" % (
            wait_s, r.status_code, r.text[:200])

        clock.advance(121000, [qnode])
        codes2 = []
        for _ in range(10):
            r = c.post("/v1/chat/completions", json=body, headers=route.headers())
            codes2.append(r.status_code)
            if r.status_code != 200:
                break
        assert codes2.count(200) == n_first and codes2[-1] == 429, (codes, codes2)
    print("tpm %d: %d requests admitted per window (each served %d tokens, reserved >= %d)"
          % (tpm, n_first, math.ceil(prompt_bytes(body) / 4) + 200, prompt_bytes(body) + 200))


def test_ratelimit_headers_decrease(qnode, mock, clock):
    rpm, tpm = 10, 10000
    route = limited_route(qnode, mock, rpm=rpm, tpm=tpm)
    align_window(clock, qnode, 5000)
    seen = []
    with qnode.client() as c:
        for i in range(5):
            body = chat(route.model, "headers %d" % i, max_tokens=20, stream=(i == 2))
            if i == 2:
                with c.stream("POST", "/v1/chat/completions", json=body,
                              headers=route.headers()) as s:
                    assert s.status_code == 200
                    s.read()
                    seen.append(ratelimit_headers(s.headers))
            else:
                r = c.post("/v1/chat/completions", json=body, headers=route.headers())
                assert r.status_code == 200, r.text[:200]
                seen.append(ratelimit_headers(r.headers))
    for h in seen:
        assert None not in h.values(), "x-ratelimit-* missing: %r" % seen
        assert h["limit-requests"] == rpm and h["limit-tokens"] == tpm, h
    req_left = [h["remaining-requests"] for h in seen]
    tok_left = [h["remaining-tokens"] for h in seen]
    assert req_left[0] <= rpm - 1, req_left
    assert all(a > b for a, b in zip(req_left, req_left[1:])), req_left
    assert all(a > b for a, b in zip(tok_left, tok_left[1:])), tok_left
    assert all(0 <= v <= tpm for v in tok_left), tok_left
    print("remaining requests %r, tokens %r" % (req_left, tok_left))


def test_ratelimit_headers_on_every_openai_answer(qnode, mock):
    """Also for a key without limits, on GET /v1/models, and on refusals."""
    free = Route(qnode, mock)
    limited = limited_route(qnode, mock, rpm=1)
    wait_key_visible(qnode, free.secret, free.model)
    with qnode.client() as c:
        answers = [
            c.post("/v1/chat/completions", json=chat(free.model, max_tokens=5),
                   headers=free.headers()),
            c.get("/v1/models", headers=free.headers()),
            c.post("/v1/chat/completions", json=chat(limited.model, max_tokens=5),
                   headers=limited.headers()),
            c.post("/v1/chat/completions", json=chat(limited.model, max_tokens=5),
                   headers=limited.headers()),  # 429
        ]
    assert [r.status_code for r in answers] == [200, 200, 200, 429], \
        [r.status_code for r in answers]
    for r in answers:
        h = ratelimit_headers(r.headers)
        assert None not in h.values(), "%s %s: x-ratelimit-* missing: %r" % (
            r.request.method, r.request.url.path, dict(r.headers))
    h = ratelimit_headers(answers[3].headers)
    assert h["limit-requests"] == 1 and h["remaining-requests"] == 0, h


# ------------------------------------------------------------ rotation, expiry, refusals

def test_rotation_with_grace(qnode, mock, clock):
    route = limited_route(qnode, mock, rpm=1000)
    old = route.secret
    rotated = qnode.admin.rotate_key(route.key_id, grace="1h")
    new = rotated["key"]
    assert new != old and new.startswith("sk-lr-")
    assert rotated["id"] == route.key_id
    assert rotated.get("previous_key_valid_until"), rotated
    wait_key_visible(qnode, new, route.model)

    def status_with(secret):
        with qnode.client() as c:
            return c.post("/v1/chat/completions", json=chat(route.model, max_tokens=5),
                          headers={"authorization": "Bearer " + secret})
    assert status_with(new).status_code == 200
    assert status_with(old).status_code == 200, "old secret refused inside its grace"
    clock.advance(30 * 60 * 1000, [qnode])
    assert status_with(old).status_code == 200, "old secret refused 30 min into a 1 h grace"
    clock.advance(31 * 60 * 1000, [qnode])
    openai_error(status_with(old), 401, "invalid_api_key")
    assert status_with(new).status_code == 200
    k = qnode.admin.key(route.key_id)
    assert k["status"] == "active" and k["prefix"] == new[:10], k
    # a revoked key cannot be rotated; revocation ends the grace of older secrets too
    r2 = limited_route(qnode, mock, rpm=1000)
    old2 = r2.secret
    qnode.admin.rotate_key(r2.key_id, grace="1h")
    qnode.admin.revoke_key(r2.key_id)
    qnode.admin.rotate_key(r2.key_id, grace="1h", expect=409)
    wait_for(lambda: status_with(old2).status_code == 401, 10,
             "old secret of a revoked key refused")


def test_expired_key(qnode, mock, clock):
    route = limited_route(qnode, mock, expires=rfc3339(clock.now_ms() + 3600 * 1000))
    with qnode.client() as c:
        r = c.post("/v1/chat/completions", json=chat(route.model, max_tokens=5),
                   headers=route.headers())
        assert r.status_code == 200, r.text[:200]
        clock.advance(3600 * 1000 + 60000, [qnode])
        r = c.post("/v1/chat/completions", json=chat(route.model, max_tokens=5),
                   headers=route.headers())
        openai_error(r, 401, "invalid_api_key")
        openai_error(c.get("/v1/models", headers=route.headers()), 401, "invalid_api_key")
    assert qnode.admin.key(route.key_id)["status"] == "expired"
    assert route.stats()["requests"] == 1


def test_refusal_shapes(qnode, mock):
    """Each refusal: status, OpenAI error shape, headers; non-stream and stream requests
    alike get a JSON error (no SSE), and nothing reaches the upstream."""
    tag = harness.rand_id()
    spent = limited_route(qnode, mock, budget_tokens=0)
    rated = limited_route(qnode, mock, rpm=1)
    narrow = Route(qnode, mock, tag=tag, models=["m-%s-a" % tag, "m-%s-b" % tag],
                   key_models=["m-%s-a" % tag])
    wait_key_visible(qnode, narrow.secret, "m-%s-a" % tag)
    with qnode.client() as c:
        assert c.post("/v1/chat/completions", json=chat(rated.model, max_tokens=5),
                      headers=rated.headers()).status_code == 200
        for stream in (False, True):
            r = c.post("/v1/chat/completions",
                       json=chat(spent.model, max_tokens=5, stream=stream),
                       headers=spent.headers())
            openai_error(r, 429, "insufficient_quota")
            assert None not in ratelimit_headers(r.headers).values(), dict(r.headers)

            r = c.post("/v1/chat/completions",
                       json=chat(rated.model, max_tokens=5, stream=stream),
                       headers=rated.headers())
            openai_error(r, 429, "rate_limit_exceeded")
            assert 1 <= retry_after_s(r) <= 120
            h = ratelimit_headers(r.headers)
            assert h["limit-requests"] == 1 and h["remaining-requests"] == 0, h

            r = c.post("/v1/chat/completions",
                       json=chat("m-%s-b" % tag, max_tokens=5, stream=stream),
                       headers=narrow.headers())
            openai_error(r, 403, "model_not_allowed")
    assert spent.stats()["requests"] == 0
    assert rated.stats()["requests"] == 1
    assert narrow.stats()["requests"] == 0
    k = qnode.admin.key(spent.key_id)
    assert k["remaining"]["tokens"] == 0 and k["limits"]["budget_tokens"] == 0, k


def test_key_show_limits_shape(qnode, mock, clock):
    expires = rfc3339(clock.now_ms() + 86400 * 1000)
    route = limited_route(qnode, mock, budget_tokens=5000, budget_usd=2.5, rpm=7, tpm=9000,
                          expires=expires)
    k = qnode.admin.key(route.key_id)
    assert k["limits"] == {"budget_tokens": 5000, "budget_usd": 2.5, "rpm": 7, "tpm": 9000,
                           "models": None, "expires": expires}, k
    assert k["spent"] == {"requests": 0, "input_tokens": 0, "output_tokens": 0, "usd": 0}, k
    assert k["remaining"] == {"tokens": 5000, "usd": 2.5}, k
    with qnode.client() as c:
        r = c.post("/v1/chat/completions", json=chat(route.model, max_tokens=5),
                   headers=route.headers())
        assert r.status_code == 200
    used = r.json()["usage"]["total_tokens"]
    k = wait_for(lambda: qnode.admin.key(route.key_id)["spent"]["requests"] == 1 and
                 qnode.admin.key(route.key_id), 10, "key show spent.requests == 1")
    assert k["spent"]["input_tokens"] + k["spent"]["output_tokens"] == used, k
    assert k["remaining"]["tokens"] == 5000 - used, k
