# ctest-labels: e2e sanitize
"""Channel failover (issue 5): one model served by several providers / upstream keys on the
mock, each channel driven by its own fault script (`POST /mock/script`), and /mock/stats as
the ground truth of which channel saw what.

Retried on the next channel, before the first byte reached the client: 5xx, 429 rate limit,
a refused connection, Anthropic's 529. Not retried: a quota error (429 insufficient_quota)
and a stream that broke after bytes were sent. Bounded by --upstream-max-attempts. The
per-channel circuit breaker (--breaker-threshold / --breaker-cooldown) opens after repeated
failures (provider show / GET /admin/v1/providers/NAME `channels`, /metrics
llmrelay_channel_state), sheds the channel's traffic while open, admits one half-open probe
after the cool-down and closes on its success; every channel open -> 503 with Retry-After.
Failures come back in the shape of the API the client called.

Channel order is made deterministic with one provider per channel and descending priorities
(channels of one provider are picked at random; one test uses that on purpose)."""

import json
import re
import subprocess
import time

import httpx
import pytest

import harness
from harness import rand_id, sse_events, wait_for, wait_key_visible

BREAKER_ARGS = ["--breaker-threshold", "3", "--breaker-cooldown", "2s"]
EXPECTED_TEXT = "".join(" tok%d" % i for i in range(1, 9))  # the mock's default 8 tokens


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def node(nodes, mock):
    """Default retry policy (3 attempts, 30 s budget), default breakers (5 failures)."""
    return nodes.start("n1")


@pytest.fixture(scope="module")
def bnode(nodes, mock):
    """One worker (breakers are per worker) and a quick breaker: 3 failures, 2 s cool-down."""
    return nodes.start("nb", workers=1, extra_args=BREAKER_ARGS)


@pytest.fixture(scope="module")
def anode(nodes, mock):
    """At most 2 attempts per request; a 1 s first-byte timeout."""
    return nodes.start("na", extra_args=["--upstream-max-attempts", "2",
                                         "--upstream-first-byte-timeout", "1s"])


def base_url(mock, type_):
    return mock.base_url if type_ == "openai" else mock.url


def closed_port():
    """A loopback port nobody listens on (bound then released without listen)."""
    return harness.free_port()


class Channels:
    """One model served by len(specs) providers on the mock, one upstream key each, tried in
    the order given (descending priorities), and a relay key that may use it. A spec is a
    provider type, or (type, base_url) to point a provider elsewhere (a closed port)."""

    def __init__(self, node, mock, specs, visible_on=()):
        tag = rand_id()
        self.mock = mock
        self.model = "m-fo-" + tag
        self.names, self.keys, self.types = [], [], []
        for i, spec in enumerate(specs):
            type_, url = (spec, None) if isinstance(spec, str) else spec
            name = "fo-%s-%d" % (tag, i)
            key = "sk-up-fo-%s-%d-%s" % (tag, i, rand_id(12))
            node.admin.put_provider(name, url or base_url(mock, type_), [key], [self.model],
                                    type_=type_, priority=100 - 10 * i)
            self.names.append(name)
            self.keys.append(key)
            self.types.append(type_)
        created = node.admin.create_key(name="fo-" + tag)
        self.key_id = created["id"]
        self.secret = created["key"]
        for n in (node,) + tuple(visible_on):
            wait_key_visible(n, self.secret, self.model)

    def script(self, i, steps, then="ok", loop=False):
        body = {"key": self.keys[i], "script": steps}
        if loop:
            body["loop"] = True
        else:
            body["then"] = then
        with httpx.Client(timeout=10) as c:
            c.post(self.mock.url + "/mock/script", json=body).raise_for_status()

    def stats(self, i):
        return self.mock.key_stats(self.keys[i])

    def snapshot(self):
        return [self.stats(i) for i in range(len(self.keys))]

    def requests(self):
        """requests seen per channel, in channel order"""
        return [self.stats(i)["requests"] for i in range(len(self.keys))]


# --------------------------------------------------------------- requests in 3 formats

def openai_chat(node, ch, stream=False, text="hello there", **kw):
    body = {"model": ch.model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    body.update(kw)
    with node.client() as c:
        r = c.post("/v1/chat/completions", json=body,
                   headers={"authorization": "Bearer " + ch.secret})
        return r


def anthropic_messages(node, ch, stream=False, text="hello there"):
    body = {"model": ch.model, "max_tokens": 256,
            "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    with node.client() as c:
        return c.post("/v1/messages", json=body,
                      headers={"x-api-key": ch.secret, "anthropic-version": "2023-06-01"})


def gemini_generate(node, ch, text="hello there"):
    body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    with node.client() as c:
        return c.post("/v1beta/models/%s:generateContent" % ch.model, json=body,
                      headers={"x-goog-api-key": ch.secret})


def openai_text(r):
    assert r.status_code == 200, (r.status_code, r.text[:500])
    return r.json()["choices"][0]["message"]["content"]


def openai_stream_text(r):
    assert r.status_code == 200, (r.status_code, r.text[:500])
    events = sse_events(r.text.splitlines())
    return "".join((e.get("choices") or [{}])[0].get("delta", {}).get("content") or ""
                   for e in events if e.get("choices"))


def served_by(node, r, ch, i, before):
    """The metadata record of answer r names channel i's provider, and bills exactly what the
    mock served on that channel since `before` (ch.snapshot() taken before the request)."""
    rid = r.headers.get("x-request-id")
    assert rid, dict(r.headers)
    rec = node.wait_metadata(rid)
    assert rec["provider"] == ch.names[i], (rec, ch.names)
    s = ch.stats(i)
    served = (s["input_tokens"] - before[i]["input_tokens"],
              s["output_tokens"] - before[i]["output_tokens"])
    assert (rec["input_tokens"], rec["output_tokens"]) == served, (rec, served)
    return rec


def assert_openai_error(r, status, code):
    assert r.status_code == status, (r.status_code, r.text[:500])
    err = r.json()["error"]
    assert err["code"] == code, err
    assert set(err) >= {"message", "type", "code"}, err
    return err


# ----------------------------------------------------------------- retried failures

@pytest.mark.parametrize("step", ["status=500", "status=502", "status=503", "status=429"])
def test_failure_before_first_byte_goes_to_next_channel(node, mock, step):
    ch = Channels(node, mock, ["openai", "openai", "openai"])
    ch.script(0, [step])
    before = ch.snapshot()
    r = openai_chat(node, ch)
    assert openai_text(r) == EXPECTED_TEXT
    a, b, c = ch.stats(0), ch.stats(1), ch.stats(2)
    assert (a["requests"], a["errors"]) == (1, 1), a
    assert (a["input_tokens"], a["output_tokens"]) == (0, 0), a
    assert b["requests"] == 1 and b["errors"] == 0 and b["output_tokens"] == 8, b
    assert c["requests"] == 0, c
    served_by(node, r, ch, 1, before)
    # the script is spent: the next request stays on the first channel
    assert openai_text(openai_chat(node, ch)) == EXPECTED_TEXT
    assert ch.requests() == [2, 1, 0]


@pytest.mark.parametrize("how", ["closed-port", "refuse-step"])
def test_refused_connection_goes_to_next_channel(node, mock, how):
    if how == "closed-port":
        port = closed_port()
        ch = Channels(node, mock, [("openai", "http://127.0.0.1:%d/v1" % port), "openai"])
    else:
        # two refusals: the upstream client may retry once on a fresh connection by itself
        # when a kept-alive one closes without an answer; the second one fails the channel
        ch = Channels(node, mock, ["openai", "openai"])
        ch.script(0, ["refuse", "refuse"])
    for stream in (False, True):
        before = ch.snapshot()
        r = openai_chat(node, ch, stream=stream)
        text = openai_stream_text(r) if stream else openai_text(r)
        assert text == EXPECTED_TEXT
        served_by(node, r, ch, 1, before)
        if how == "refuse-step":
            ch.script(0, ["refuse", "refuse"])
    assert ch.stats(1)["requests"] == 2
    if how == "refuse-step":
        a = ch.stats(0)
        assert 2 <= a["requests"] <= 4 and a["output_tokens"] == 0, a


def test_two_keys_of_one_provider_are_two_channels(node, mock):
    """A provider with two upstream keys, one always failing: every request still succeeds
    (the failing key is tried first or not at all), and the good key serves them all."""
    tag = rand_id()
    model = "m-fo-" + tag
    bad, good = "sk-up-fo-bad-%s-%s" % (tag, rand_id(12)), "sk-up-fo-ok-%s-%s" % (tag, rand_id(12))
    node.admin.put_provider("fo2-" + tag, mock.base_url, [bad, good], [model])
    key = node.admin.create_key(name="fo2-" + tag)["key"]
    wait_key_visible(node, key, model)
    with httpx.Client(timeout=10) as c:
        c.post(mock.url + "/mock/script",
               json={"key": bad, "script": ["status=500"], "loop": True}).raise_for_status()
    with node.client() as c:
        for _ in range(6):
            r = c.post("/v1/chat/completions", headers={"authorization": "Bearer " + key},
                       json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text[:300]
    b, g = mock.key_stats(bad), mock.key_stats(good)
    assert g["requests"] == 6 and g["errors"] == 0, g
    assert b["requests"] == b["errors"] and b["output_tokens"] == 0, b
    assert b["requests"] <= 6, b


def anthropic_answer(r, stream):
    """(text, usage) of an Anthropic-format answer, its event sequence or shape checked."""
    if stream:
        events = sse_events(r.text.splitlines())
        types = [e["type"] for e in events]
        assert types[0] == "message_start" and types[-1] == "message_stop", types
        text = "".join(e["delta"].get("text", "") for e in events
                       if e["type"] == "content_block_delta")
        return text, [e["usage"] for e in events if e["type"] == "message_delta"][-1]
    body = r.json()
    assert body["type"] == "message" and body["role"] == "assistant", body
    return "".join(b["text"] for b in body["content"] if b["type"] == "text"), body["usage"]


def test_anthropic_529_goes_to_next_channel(node, mock):
    ch = Channels(node, mock, ["anthropic", "anthropic"])
    for stream in (False, True):
        ch.script(0, ["status=529"])
        before = ch.snapshot()
        r = anthropic_messages(node, ch, stream=stream)
        assert r.status_code == 200, r.text[:500]
        text, _usage = anthropic_answer(r, stream)
        assert text == EXPECTED_TEXT
        served_by(node, r, ch, 1, before)
    a = ch.stats(0)
    assert (a["requests"], a["errors"], a["output_tokens"]) == (2, 2, 0), a
    assert ch.stats(1)["requests"] == 2


def test_anthropic_client_fails_over_across_provider_types(node, mock):
    """Anthropic-format client; an anthropic channel answers 529, the next one is an openai
    provider: the answer is still in Anthropic's shape, usage from the serving channel."""
    ch = Channels(node, mock, ["anthropic", "openai"])
    for stream in (False, True):
        ch.script(0, ["status=529"])
        before = ch.snapshot()
        r = anthropic_messages(node, ch, stream=stream)
        assert r.status_code == 200, r.text[:500]
        text, usage = anthropic_answer(r, stream)
        assert text == EXPECTED_TEXT
        assert usage["output_tokens"] == 8, usage
        rec = served_by(node, r, ch, 1, before)
        assert rec["status"] == 200
    assert ch.stats(0)["errors"] == 2 and ch.stats(1)["requests"] == 2


def test_gemini_client_fails_over_across_provider_types(node, mock):
    ch = Channels(node, mock, ["gemini", "anthropic"])
    ch.script(0, ["status=503"])
    before = ch.snapshot()
    r = gemini_generate(node, ch)
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    parts = body["candidates"][0]["content"]["parts"]
    assert "".join(p.get("text", "") for p in parts) == EXPECTED_TEXT, body
    assert body["usageMetadata"]["candidatesTokenCount"] == 8, body
    served_by(node, r, ch, 1, before)
    assert ch.requests() == [1, 1]


# ------------------------------------------------------------------ not retried

def test_insufficient_quota_is_not_retried(node, mock):
    ch = Channels(node, mock, ["openai", "openai"])
    ch.script(0, ["quota=1"])
    r = openai_chat(node, ch)
    err = assert_openai_error(r, 429, "insufficient_quota")
    assert err["type"] in ("insufficient_quota", "rate_limit_error", "invalid_request_error"), err
    assert ch.requests() == [1, 0], "the second channel must see nothing"
    # stream request: same, and nothing was streamed
    ch.script(0, ["quota=1"])
    r = openai_chat(node, ch, stream=True)
    assert_openai_error(r, 429, "insufficient_quota")
    assert ch.requests() == [2, 0]


def test_insufficient_quota_anthropic_client(node, mock):
    """The quota error of an openai channel reaches an Anthropic-format client as a 429
    rate_limit_error (no retry either)."""
    ch = Channels(node, mock, ["openai", "openai"])
    ch.script(0, ["quota=1"])
    r = anthropic_messages(node, ch)
    assert r.status_code == 429, r.text[:500]
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error", body
    assert ch.requests() == [1, 0]


def test_stream_fails_over_before_first_byte_not_after(node, mock):
    ch = Channels(node, mock, ["openai", "openai"])
    # (a) the first channel fails before its first byte: the stream comes from the second
    ch.script(0, ["status=500"])
    before = ch.snapshot()
    r = openai_chat(node, ch, stream=True, stream_options={"include_usage": True})
    assert openai_stream_text(r) == EXPECTED_TEXT
    assert r.text.rstrip().endswith("data: [DONE]"), r.text[-200:]
    served_by(node, r, ch, 1, before)
    assert ch.requests() == [1, 1]
    # (b) the first channel cuts its stream after 3 tokens that reached the client: no retry;
    # the client sees the stream end without a finish (an error event or a cut)
    ch.script(0, ["cut_after=3,delay_ms=30"])
    lines, broke = [], None
    with node.client() as c:
        try:
            with c.stream("POST", "/v1/chat/completions",
                          headers={"authorization": "Bearer " + ch.secret},
                          json={"model": ch.model, "stream": True,
                                "messages": [{"role": "user", "content": "hello"}]}) as resp:
                assert resp.status_code == 200
                for line in resp.iter_lines():
                    lines.append(line)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.StreamError) as exc:
            broke = exc  # the cut reached the client as a reset stream
    events = sse_events(lines)
    text = "".join((e.get("choices") or [{}])[0].get("delta", {}).get("content") or ""
                   for e in events if e.get("choices"))
    assert text == " tok1 tok2 tok3", (text, lines)
    if broke is None:
        # an in-stream error or an end without [DONE]: never the end of a whole answer
        finishes = [e["choices"][0]["finish_reason"] for e in events
                    if e.get("choices") and e["choices"][0].get("finish_reason")]
        assert not finishes, lines
        assert not any(ln.strip() == "data: [DONE]" for ln in lines), \
            "a cut upstream stream was presented to the client as complete: %r" % lines
    time.sleep(0.3)
    assert ch.requests() == [2, 1], "a stream cut after bytes were sent must not be retried"


# ------------------------------------------------------------ all channels failing

def test_all_channels_fail_502_in_each_client_shape(node, mock):
    ch = Channels(node, mock, ["openai", "anthropic", "gemini"])
    for i in range(3):
        ch.script(i, ["status=500"], loop=True)
    r = openai_chat(node, ch)
    assert_openai_error(r, 502, "upstream_error")
    assert ch.requests() == [1, 1, 1]
    r = anthropic_messages(node, ch)
    assert r.status_code == 502, r.text[:500]
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "api_error", r.text
    r = gemini_generate(node, ch)
    assert r.status_code == 502, r.text[:500]
    assert r.json()["error"]["status"] == "UNAVAILABLE" and r.json()["error"]["code"] == 502
    r = openai_chat(node, ch, stream=True)
    assert_openai_error(r, 502, "upstream_error")
    assert ch.requests() == [4, 4, 4]
    for i in range(3):
        ch.script(i, [])


def test_attempts_are_bounded(anode, mock):
    ch = Channels(anode, mock, ["openai", "openai", "openai"])
    for i in range(3):
        ch.script(i, ["status=500"], loop=True)
    r = openai_chat(anode, ch)
    assert_openai_error(r, 502, "upstream_error")
    assert ch.requests() == [1, 1, 0], "--upstream-max-attempts 2: the third channel is never tried"
    # one failure then success within the bound
    ch.script(0, ["status=500"])
    ch.script(1, [])
    assert openai_text(openai_chat(anode, ch)) == EXPECTED_TEXT
    assert ch.requests() == [2, 2, 0]


def test_first_byte_timeout_goes_to_next_channel_then_504(anode, mock):
    ch = Channels(anode, mock, ["openai", "anthropic", "openai"])
    ch.script(0, ["first_byte_delay_ms=3000"])
    t0 = time.monotonic()
    before = ch.snapshot()
    r = openai_chat(anode, ch)
    assert openai_text(r) == EXPECTED_TEXT
    assert time.monotonic() - t0 < 2.9, "the slow channel was waited for"
    served_by(anode, r, ch, 1, before)
    # every attempt times out: 504 upstream_timeout after two attempts
    ch.script(0, ["first_byte_delay_ms=3000"])
    ch.script(1, ["first_byte_delay_ms=3000"])
    r = openai_chat(anode, ch)
    assert_openai_error(r, 504, "upstream_timeout")
    r2 = ch.requests()
    assert r2[2] == 0, r2
    time.sleep(2.5)  # let the mock finish the abandoned answers before the next test


# --------------------------------------------------------------------- the breaker

def channel_rows(node, provider):
    r = node.admin.request("GET", "/admin/v1/providers/" + provider, expect=200)
    rows = r.json().get("channels")
    assert isinstance(rows, list), "no channels array in %s" % r.text[:500]
    return rows


def channel_state(node, provider, key_index=0):
    for row in channel_rows(node, provider):
        if row["key_index"] == key_index:
            return row
    raise AssertionError("no channel row %d for %s" % (key_index, provider))


def metric_states(node, provider, key_index=0):
    """{state: value} of llmrelay_channel_state for one channel."""
    text = httpx.get(node.admin_url + "/metrics", timeout=10).text
    out = {}
    pat = re.compile(r'^llmrelay_channel_state\{([^}]*)\}\s+(\S+)$', re.M)
    for labels, value in pat.findall(text):
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if lab.get("provider") == provider and lab.get("key_index") == str(key_index):
            out[lab["state"]] = float(value)
    return out, text


def metric_value(text, name, provider, key_index=0):
    pat = re.compile(r'^%s\{([^}]*)\}\s+(\S+)$' % re.escape(name), re.M)
    for labels, value in pat.findall(text):
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if lab.get("provider") == provider and lab.get("key_index") == str(key_index):
            return float(value)
    return None


def ctl_provider_show(node, name):
    p = subprocess.run([harness.binary("llmrelayctl"), "--admin", node.admin_url,
                        "--token-file", node.token_file, "--json", "provider", "show", name],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_breaker_opens_sheds_probes_and_closes(bnode, mock):
    ch = Channels(bnode, mock, ["openai", "openai"])
    bad = ch.names[0]
    ch.script(0, ["status=500", "status=500", "status=500"], then="ok")
    # three failures (each request still succeeds on the second channel) open the breaker
    for _ in range(3):
        assert openai_text(openai_chat(bnode, ch)) == EXPECTED_TEXT
    opened_at = time.monotonic()  # at the latest
    assert ch.requests() == [3, 3]
    row = wait_for(lambda: (lambda x: x["state"] == "open" and x)(channel_state(bnode, bad)),
                   3, "channel 0 of %s to show open" % bad)
    assert row["opens"] == 1 and row["failures"] >= 3, row
    assert "sk-up" not in json.dumps(row) and ch.keys[0] not in json.dumps(row), row
    assert row["key"].endswith(ch.keys[0][-4:]) and len(row["key"]) <= 5, row
    states, text = wait_for(lambda: (lambda s: s[0].get("open") == 1 and s)(
        metric_states(bnode, bad)), 3, "/metrics to show the channel open")
    assert states == {"closed": 0, "half_open": 0, "open": 1}, states
    assert metric_value(text, "llmrelay_channel_opens_total", bad) == 1, text[-2000:]
    assert metric_value(text, "llmrelay_channel_failures_total", bad) >= 3
    shown = ctl_provider_show(bnode, bad)
    assert [c["state"] for c in shown["channels"]] == ["open"], shown
    # while open the channel gets no traffic at all
    for _ in range(4):
        assert openai_text(openai_chat(bnode, ch)) == EXPECTED_TEXT
    assert time.monotonic() - opened_at < 1.9, "too slow: the cool-down may have ended"
    assert ch.requests() == [3, 7], "an open channel was tried"
    # after the cool-down one half-open probe goes to it, succeeds (script then: ok) and closes it
    time.sleep(2.2)
    before = ch.snapshot()
    r = openai_chat(bnode, ch)
    assert openai_text(r) == EXPECTED_TEXT
    assert ch.requests() == [4, 7], "the probe did not go to the recovered channel"
    served_by(bnode, r, ch, 0, before)
    row = wait_for(lambda: (lambda x: x["state"] == "closed" and x)(channel_state(bnode, bad)),
                   3, "channel to close after the probe")
    assert row["probes"] >= 1 and row["opens"] == 1, row
    states, _ = wait_for(lambda: (lambda s: s[0].get("closed") == 1 and s)(
        metric_states(bnode, bad)), 3, "/metrics to show the channel closed")
    assert states == {"closed": 1, "half_open": 0, "open": 0}, states
    # and it takes traffic again (priority: first)
    assert openai_text(openai_chat(bnode, ch)) == EXPECTED_TEXT
    assert ch.requests() == [5, 7]


def test_breaker_failed_probe_reopens(bnode, mock):
    ch = Channels(bnode, mock, ["openai", "openai"])
    bad = ch.names[0]
    ch.script(0, ["status=500"], loop=True)
    for _ in range(3):
        assert openai_text(openai_chat(bnode, ch)) == EXPECTED_TEXT
    wait_for(lambda: channel_state(bnode, bad)["state"] == "open", 3, "breaker open")
    time.sleep(2.2)
    assert openai_text(openai_chat(bnode, ch)) == EXPECTED_TEXT  # probe fails, next serves
    assert ch.requests()[0] == 4
    row = wait_for(lambda: (lambda x: x["state"] == "open" and x)(channel_state(bnode, bad)),
                   3, "breaker to reopen after a failed probe")
    assert row["opens"] == 2 and row["probes"] >= 1, row
    # the cool-down doubled: still shed 2.2 s later... at least right after the reopen
    assert openai_text(openai_chat(bnode, ch)) == EXPECTED_TEXT
    assert ch.requests()[0] == 4
    ch.script(0, [])


def test_every_breaker_open_gives_503_with_retry_after(bnode, mock):
    ch = Channels(bnode, mock, ["openai"])
    ch.script(0, ["status=500"], loop=True)
    for _ in range(3):
        assert_openai_error(openai_chat(bnode, ch), 502, "upstream_error")
    wait_for(lambda: channel_state(bnode, ch.names[0])["state"] == "open", 3, "breaker open")
    seen = ch.requests()[0]
    r = openai_chat(bnode, ch)
    assert_openai_error(r, 503, "upstream_error")
    ra = r.headers.get("retry-after")
    assert ra is not None and ra.isdigit() and 1 <= int(ra) <= 3, dict(r.headers)
    r = anthropic_messages(bnode, ch)
    assert r.status_code == 503, r.text[:300]
    assert r.json()["error"]["type"] == "overloaded_error", r.text
    assert r.headers.get("retry-after"), dict(r.headers)
    r = gemini_generate(bnode, ch)
    assert r.status_code == 503 and r.json()["error"]["status"] == "UNAVAILABLE", r.text[:300]
    assert ch.requests()[0] == seen, "an open breaker let a request through"
    ch.script(0, [])
