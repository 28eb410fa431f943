# ctest-labels: e2e
"""GET /metrics on the admin listener (README "Metadata, metrics, roles, audit"): one real
node and the mock provider, a known mix of requests, then exact values.

The mix, against one configured model: non-stream chat, streamed chat (one of them slow, to
see the open-streams gauge at 1 while it runs), embeddings, one chat whose upstream answers
500 (directive), chat and embeddings for random unconfigured model names, and a malformed
JSON body. Requests go over separate connections so that several workers' shards count.

Then /metrics (no token) is polled until it has counted everything, and:
  - it answers 200 without Authorization, as Prometheus text (version 0.0.4), and every line
    is valid exposition format (# HELP / # TYPE, then `name{labels} value` samples grouped
    by family, each family typed once and before its samples, no duplicate series);
  - llmrelay_requests_total by endpoint, model and status class equals what was sent; an
    unknown model counts only as model="other" and its name appears nowhere; the only model
    label values are the configured model and "other";
  - input/output token counters equal what the mock served (GET /mock/stats for the route's
    upstream key) and the sum of the metadata lines, exactly;
  - the duration and time-to-first-byte histograms: buckets are the documented bounds in
    order, cumulative and monotonic, +Inf equals _count; _count equals the requests of each
    endpoint (TTFB: those that got an upstream answer, the metadata's ttfb_ms >= 0), and the
    buckets and _sum agree exactly with the metadata lines' latency_ms / ttfb_ms;
  - llmrelay_upstream_errors_total counts the 500 for the provider (kind status_5xx) and
    nothing else; llmrelay_open_streams is 0 once all is done; llmrelay_etcd_reachable is 1;
  - no relay key, key id, upstream API key, admin token, prompt, response or malformed-body
    text appears, and no label is named like a key.

Fast: one node, about 20 requests, a single slow stream of ~2 s."""

import os
import re
import secrets
from decimal import Decimal

import httpx
import pytest

import harness
from harness import Route, directive, wait_for, wait_key_visible

N_PLAIN = 5       # non-stream chat for the configured model
M_STREAM = 3      # streamed chat, the first one slow (open-streams gauge)
E_EMBED = 2       # embeddings for the configured model
U_CHAT = 2        # chat for unconfigured model names
U_EMBED = 1       # embeddings for an unconfigured model name

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKET_LE = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
             "30", "60", "120", "300", "+Inf"]
BUCKET_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000,
             300000]
ENDPOINTS = ["chat.completions", "completions", "embeddings", "responses", "models",
             "messages", "generate_content"]
HISTOGRAMS = ["llmrelay_request_duration_seconds", "llmrelay_time_to_first_byte_seconds"]
# key_index: a channel's position in its provider's key list (llmrelay_channel_*), never a key
ALLOWED_LABELS = {"endpoint", "model", "status_class", "le", "provider", "kind", "version", "key_index", "state"}

REPLY_CANARY = "replycanary" + secrets.token_hex(8)   # the mock's token 1 in every answer


@pytest.fixture(scope="module")
def mock(workdir):
    """The mock provider, writing REPLY_CANARY into every answer (overrides conftest's)."""
    m = harness.Mock(os.path.join(workdir, "mock"), args=["--reply-text", REPLY_CANARY])
    try:
        m.start()
        yield m
    finally:
        m.proc.kill()


@pytest.fixture(scope="module")
def mnode(nodes, mock):
    return nodes.start("m1", workers=3)


# ------------------------------------------------------------------ exposition parsing

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
LABEL_VALUE = r'(?:[^"\\\n]|\\["\\n])*'
VALUE = (r"(?:[+-]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)"
         r"|[+-]Inf|NaN)")
HELP_RE = re.compile(r"^# HELP (%s) ((?:[^\\\n]|\\[\\n])*)$" % NAME)
TYPE_RE = re.compile(r"^# TYPE (%s) (counter|gauge|histogram|summary|untyped)$" % NAME)
SAMPLE_RE = re.compile(r"^(%s)(?:\{((?:%s=\"%s\"(?:,%s=\"%s\")*,?)?)\})? (%s)(?: (-?[0-9]+))?$"
                       % (NAME, LABEL_NAME, LABEL_VALUE, LABEL_NAME, LABEL_VALUE, VALUE))
PAIR_RE = re.compile(r'(%s)="(%s)"' % (LABEL_NAME, LABEL_VALUE))


def unescape(v):
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), v)


def family_of(name, types):
    """The family a sample name belongs to (histogram/summary suffixes stripped)."""
    if name in types:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and types.get(base) in ("histogram", "summary"):
            if suffix == "_bucket" and types[base] != "histogram":
                continue
            return base
    return None


def parse_exposition(text):
    """(samples, types, problems): samples as (name, {label: value}, float, raw value)."""
    problems, samples, types, helps = [], [], {}, {}
    seen_series, done_families = set(), set()
    current = None
    if not text.endswith("\n"):
        problems.append("the text does not end with a newline")
    for i, line in enumerate(text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")):
        where = "line %d %r" % (i + 1, line[:200])
        if line.startswith("#"):
            m = HELP_RE.match(line)
            if m:
                if m.group(1) in helps:
                    problems.append("%s: second HELP for %s" % (where, m.group(1)))
                helps[m.group(1)] = m.group(2)
                continue
            m = TYPE_RE.match(line)
            if m:
                if m.group(1) in types:
                    problems.append("%s: second TYPE for %s" % (where, m.group(1)))
                if m.group(1) in done_families:
                    problems.append("%s: TYPE after samples of %s" % (where, m.group(1)))
                types[m.group(1)] = m.group(2)
                continue
            problems.append("%s: a comment that is neither # HELP nor # TYPE" % where)
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            problems.append("%s: not `name{labels} value`" % where)
            continue
        name, labels_text, raw = m.group(1), m.group(2) or "", m.group(3)
        labels = {}
        for ln, lv in PAIR_RE.findall(labels_text):
            if ln in labels:
                problems.append("%s: label %s twice" % (where, ln))
            labels[ln] = unescape(lv)
        fam = family_of(name, types)
        if fam is None:
            problems.append("%s: sample of a family without a preceding # TYPE" % where)
            fam = name
        if fam != current:
            if fam in done_families:
                problems.append("%s: family %s is not contiguous" % (where, fam))
            if current is not None:
                done_families.add(current)
            current = fam
        if types.get(fam) == "histogram" and name == fam + "_bucket" and "le" not in labels:
            problems.append("%s: histogram bucket without le" % where)
        series = (name, tuple(sorted(labels.items())))
        if series in seen_series:
            problems.append("%s: duplicate series" % where)
        seen_series.add(series)
        samples.append((name, labels, float(raw), raw))
    for fam in types:
        if fam not in helps:
            problems.append("family %s has # TYPE but no # HELP" % fam)
    return samples, types, problems


def fetch_metrics(node):
    return httpx.get(node.admin_url + "/metrics", timeout=harness.bound(10))


def series(samples, name, **labels):
    """Samples of name whose labels include labels."""
    return [s for s in samples if s[0] == name and all(s[1].get(k) == v for k, v in labels.items())]


def value(samples, name, **labels):
    """The value of the one series of name with exactly these labels (0 if absent)."""
    got = [s for s in samples if s[0] == name and s[1] == labels]
    assert len(got) <= 1, got
    return got[0][2] if got else 0


def gauge(samples, name):
    got = [s for s in samples if s[0] == name]
    assert len(got) == 1, "%s: %r" % (name, got)
    return got[0][2]


# ------------------------------------------------------------------------- traffic

def send_traffic(node, route):
    """Sends the mix; returns what the test needs to know about it."""
    sent = {"ids": [], "texts": [], "replies": [], "unknown_models": [], "open_during_stream": None}
    prompt_tag = "promptcanary" + secrets.token_hex(8)

    def client():
        return node.client()  # a new connection each time: spread over the workers

    def chat(model, text, **kw):
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        body.update(kw)
        return body

    for i in range(N_PLAIN):
        # the first answer is slow: its latency and TTFB land in a higher bucket
        text = "%s plain %d %s" % (prompt_tag, i, directive(chunks=3, first_byte_delay_ms=300)
                                   if i == 0 else directive(chunks=3 + i))
        with client() as c:
            r = c.post("/v1/chat/completions", headers=route.headers(),
                       json=chat(route.model, text))
        assert r.status_code == 200, r.text[:300]
        sent["ids"].append(r.headers["x-request-id"])
        sent["texts"].append(text)
        sent["replies"].append(r.json()["choices"][0]["message"]["content"])

    for i in range(M_STREAM):
        slow = i == 0
        text = "%s stream %d %s" % (prompt_tag, i, directive(chunks=10, delay_ms=200) if slow
                                    else directive(chunks=4 + i))
        with client() as c:
            with c.stream("POST", "/v1/chat/completions", headers=route.headers(),
                          json=chat(route.model, text, stream=True)) as s:
                assert s.status_code == 200
                if slow:
                    # the only request in flight: the gauge must show it
                    def one_open():
                        samples, _, _ = parse_exposition(fetch_metrics(node).text)
                        return gauge(samples, "llmrelay_open_streams") == 1
                    try:
                        wait_for(one_open, 1.5, "llmrelay_open_streams 1 during a stream")
                        sent["open_during_stream"] = 1
                    except AssertionError:
                        samples, _, _ = parse_exposition(fetch_metrics(node).text)
                        sent["open_during_stream"] = gauge(samples, "llmrelay_open_streams")
                lines = list(s.iter_lines())
                sent["ids"].append(s.headers["x-request-id"])
        events = harness.sse_events(lines)
        reply = "".join((e["choices"][0].get("delta") or {}).get("content") or ""
                        for e in events if e.get("choices"))
        sent["texts"].append(text)
        sent["replies"].append(reply)

    for i in range(E_EMBED):
        text = "%s embed %d" % (prompt_tag, i)
        with client() as c:
            r = c.post("/v1/embeddings", headers=route.headers(),
                       json={"model": route.model, "input": text})
        assert r.status_code == 200, r.text[:300]
        sent["ids"].append(r.headers["x-request-id"])
        sent["texts"].append(text)

    text = "%s fails %s" % (prompt_tag, directive(status=500))
    with client() as c:
        r = c.post("/v1/chat/completions", headers=route.headers(), json=chat(route.model, text))
    assert r.status_code == 502, "the upstream's 500 (retryable, one channel): 502: %d %s" % (
        r.status_code, r.text[:300])
    sent["ids"].append(r.headers["x-request-id"])
    sent["texts"].append(text)

    for i in range(U_CHAT + U_EMBED):
        model = "no-such-" + secrets.token_hex(8)
        sent["unknown_models"].append(model)
        text = "%s unknown %d" % (prompt_tag, i)
        with client() as c:
            if i < U_CHAT:
                r = c.post("/v1/chat/completions", headers=route.headers(),
                           json=chat(model, text))
            else:
                r = c.post("/v1/embeddings", headers=route.headers(),
                           json={"model": model, "input": text})
        assert r.status_code == 404, r.text[:300]
        sent["ids"].append(r.headers["x-request-id"])
        sent["texts"].append(text)

    bad_model = "no-such-" + secrets.token_hex(8)
    sent["unknown_models"].append(bad_model)
    bad_text = "%s malformed" % prompt_tag
    raw = ('{"model": "%s", "messages": [{"role": "user", "content": "%s"}' % (bad_model, bad_text))
    with client() as c:
        r = c.post("/v1/chat/completions", content=raw.encode(),
                   headers=route.headers(**{"content-type": "application/json"}))
    assert r.status_code == 400, r.text[:300]
    sent["ids"].append(r.headers["x-request-id"])
    sent["texts"].append(bad_text)
    sent["prompt_tag"] = prompt_tag
    return sent


def expected_requests(route, models_by_class):
    """{(endpoint, model, status_class): count} of everything sent (models endpoint from the
    metadata: the harness's wait_key_visible polled it)."""
    want = {
        ("chat.completions", route.model, "2xx"): N_PLAIN + M_STREAM,
        ("chat.completions", route.model, "5xx"): 1,
        ("embeddings", route.model, "2xx"): E_EMBED,
        ("chat.completions", "other", "4xx"): U_CHAT + 1,  # unknown models + malformed
        ("embeddings", "other", "4xx"): U_EMBED,
    }
    for cls, n in models_by_class.items():
        want[("models", "other", cls)] = n
    return want


def got_requests(samples):
    return {(s[1]["endpoint"], s[1]["model"], s[1]["status_class"]): s[2]
            for s in samples if s[0] == "llmrelay_requests_total"}


@pytest.fixture(scope="module")
def observed(mnode, mock):
    """Runs the traffic once; returns the route, what was sent, the metadata lines of this
    node and the /metrics answer once it has counted everything (or the last one fetched
    after a generous bound: the tests then say what is missing)."""
    route = Route(mnode, mock)
    wait_key_visible(mnode, route.secret, route.model)
    sent = send_traffic(mnode, route)
    for rid in sent["ids"]:
        mnode.wait_metadata(rid)
    last = {}

    def settled():
        records = mnode.metadata()
        models_by_class = {}
        for rec in records:
            if rec["endpoint"] == "models":
                cls = "%dxx" % min(5, max(2, rec["status"] // 100))
                models_by_class[cls] = models_by_class.get(cls, 0) + 1
        r = fetch_metrics(mnode)
        samples, _, _ = parse_exposition(r.text)
        st = route.stats()
        last.update(response=r, records=records, samples=samples, stats=st,
                    want=expected_requests(route, models_by_class))
        return (got_requests(samples) == last["want"]
                and value(samples, "llmrelay_input_tokens_total", model=route.model)
                == st["input_tokens"]
                and value(samples, "llmrelay_output_tokens_total", model=route.model)
                == st["output_tokens"]
                and gauge(samples, "llmrelay_open_streams") == 0)

    try:
        wait_for(settled, 10, "/metrics to count every request sent")
    except AssertionError:
        pass  # the tests below report exactly what differs
    last.update(route=route, sent=sent)
    return last


# --------------------------------------------------------------------------- tests

def test_metrics_without_token_as_prometheus_text(mnode):
    r = httpx.get(mnode.admin_url + "/metrics", timeout=harness.bound(10))
    assert r.status_code == 200, "/metrics without Authorization: %d %s" % (r.status_code,
                                                                           r.text[:300])
    assert "authorization" not in {k.lower() for k in r.request.headers}
    ctype = r.headers.get("content-type", "")
    assert ctype.replace(" ", "").lower() == CONTENT_TYPE.replace(" ", ""), ctype
    samples, types, problems = parse_exposition(r.text)
    assert not problems, "invalid exposition format:\n" + "\n".join(problems[:30])
    # the families the README promises, each with its type
    for fam, typ in [("llmrelay_requests_total", "counter"),
                     ("llmrelay_input_tokens_total", "counter"),
                     ("llmrelay_output_tokens_total", "counter"),
                     ("llmrelay_request_duration_seconds", "histogram"),
                     ("llmrelay_time_to_first_byte_seconds", "histogram"),
                     ("llmrelay_upstream_errors_total", "counter"),
                     ("llmrelay_open_streams", "gauge"),
                     ("llmrelay_etcd_reachable", "gauge")]:
        assert types.get(fam) == typ, "family %s: type %r, want %s" % (fam, types.get(fam), typ)
    assert samples, "no samples at all"


def test_open_streams_gauge_during_a_stream(observed):
    assert observed["sent"]["open_during_stream"] == 1, \
        "llmrelay_open_streams while the only stream ran: %r, want 1" % (
            observed["sent"]["open_during_stream"],)


def test_exposition_after_traffic_is_valid(observed):
    r = observed["response"]
    assert r.status_code == 200
    _, _, problems = parse_exposition(r.text)
    assert not problems, "invalid exposition format:\n" + "\n".join(problems[:30])


def test_request_counters_exact(observed):
    route = observed["route"]
    got = got_requests(observed["samples"])
    want = observed["want"]
    assert got == want, ("llmrelay_requests_total:\n  got  %r\n  want %r\n  wrong %r\n"
                         "  missing %r" % (
        got, want, {k: v for k, v in got.items() if want.get(k) != v},
        {k: v for k, v in want.items() if got.get(k) != v}))
    # the model label takes only configured names
    models = {s[1]["model"] for s in observed["samples"] if "model" in s[1]}
    assert models <= {route.model, "other"}, models
    # the unknown names never appear, anywhere
    text = observed["response"].text
    for name in observed["sent"]["unknown_models"]:
        assert name not in text, "unconfigured model name %s in /metrics" % name
        assert name[len("no-such-"):] not in text


def test_token_counters_equal_served(observed):
    route, samples, st = observed["route"], observed["samples"], observed["stats"]
    assert st["input_tokens"] > 0 and st["output_tokens"] > 0, st
    got_in = value(samples, "llmrelay_input_tokens_total", model=route.model)
    got_out = value(samples, "llmrelay_output_tokens_total", model=route.model)
    assert (got_in, got_out) == (st["input_tokens"], st["output_tokens"]), \
        "tokens in /metrics (in %r, out %r) != served by the mock (in %d, out %d)" % (
            got_in, got_out, st["input_tokens"], st["output_tokens"])
    mine = [r for r in observed["records"] if r["request_id"] in set(observed["sent"]["ids"])]
    assert len(mine) == len(observed["sent"]["ids"]), "one metadata line per request"
    assert not any(r["estimated"] for r in mine), [r for r in mine if r["estimated"]]
    assert sum(r["input_tokens"] for r in mine) == st["input_tokens"]
    assert sum(r["output_tokens"] for r in mine) == st["output_tokens"]
    # nothing under "other" (no unknown model reached an upstream), no cached/reasoning tokens
    for fam in ("llmrelay_input_tokens_total", "llmrelay_output_tokens_total",
                "llmrelay_cached_input_tokens_total", "llmrelay_reasoning_tokens_total"):
        assert value(samples, fam, model="other") == 0, fam
    assert value(samples, "llmrelay_cached_input_tokens_total", model=route.model) == \
        sum(r["cached_input_tokens"] for r in mine) == 0
    assert value(samples, "llmrelay_reasoning_tokens_total", model=route.model) == \
        sum(r["reasoning_tokens"] for r in mine) == 0


def histogram_of(samples, name, endpoint):
    buckets = [(s[1]["le"], s[2]) for s in samples
               if s[0] == name + "_bucket" and s[1].get("endpoint") == endpoint]
    for s in samples:
        if s[0] == name + "_bucket" and s[1].get("endpoint") == endpoint:
            assert set(s[1]) == {"endpoint", "le"}, s
    sums = series(samples, name + "_sum", endpoint=endpoint)
    counts = series(samples, name + "_count", endpoint=endpoint)
    assert len(sums) == 1 and len(counts) == 1, (name, endpoint, sums, counts)
    return buckets, sums[0][3], counts[0][2]


def test_histograms(observed):
    samples, want = observed["samples"], observed["want"]
    records = observed["records"]
    for name in HISTOGRAMS:
        ttfb = name == "llmrelay_time_to_first_byte_seconds"
        for ep in ENDPOINTS:
            buckets, raw_sum, count = histogram_of(samples, name, ep)
            what = "%s{endpoint=%s}" % (name, ep)
            assert [le for le, _ in buckets] == BUCKET_LE, "%s buckets: %r" % (what, buckets)
            values = [v for _, v in buckets]
            assert all(a <= b for a, b in zip(values, values[1:])), \
                "%s: buckets not cumulative/monotonic: %r" % (what, values)
            assert values[-1] == count, "%s: +Inf %r != _count %r" % (what, values[-1], count)
            # the observations, from this node's metadata lines (same latency / ttfb values)
            recs = [r for r in records if r["endpoint"] == ep]
            obs_ms = [r["ttfb_ms"] if ttfb else r["latency_ms"] for r in recs]
            obs_ms = [v for v in obs_ms if v >= 0]
            sent_n = sum(n for (e, _, _), n in want.items() if e == ep)
            if ttfb:
                # a first byte is observed when an upstream answered: 200s and the 500
                sent_n = {"chat.completions": N_PLAIN + M_STREAM + 1,
                          "embeddings": E_EMBED}.get(ep, 0)
            assert count == sent_n, "%s: _count %r != requests %d" % (what, count, sent_n)
            assert len(obs_ms) == sent_n, "%s: %d metadata observations != %d requests" % (
                what, len(obs_ms), sent_n)
            want_cum = [sum(1 for v in obs_ms if v <= b) for b in BUCKET_MS] + [len(obs_ms)]
            assert values == want_cum, "%s: buckets %r != metadata's %r (ms %r)" % (
                what, values, want_cum, sorted(obs_ms))
            assert Decimal(raw_sum) == Decimal(sum(obs_ms)) / 1000, \
                "%s: _sum %s != metadata's %d ms" % (what, raw_sum, sum(obs_ms))
    # the slow first byte (300 ms) landed above 0.25 s in both histograms
    for name in HISTOGRAMS:
        buckets, _, count = histogram_of(samples, name, "chat.completions")
        assert dict(buckets)["0.25"] < count, (name, buckets)


def test_upstream_errors_count_the_500(observed):
    route, samples = observed["route"], observed["samples"]
    errs = [(s[1], s[2]) for s in samples if s[0] == "llmrelay_upstream_errors_total"]
    assert errs == [({"provider": route.provider, "kind": "status_5xx"}, 1)], errs
    assert observed["stats"]["errors"] == 1, observed["stats"]


def test_gauges(observed):
    samples = observed["samples"]
    assert gauge(samples, "llmrelay_open_streams") == 0
    assert gauge(samples, "llmrelay_etcd_reachable") == 1
    assert gauge(samples, "llmrelay_config_revision") > 0
    info = series(samples, "llmrelay_build_info")
    assert len(info) == 1 and info[0][2] == 1 and set(info[0][1]) == {"version"}, info


def test_no_secrets_no_content_no_key_labels(observed, mnode):
    route, sent = observed["route"], observed["sent"]
    text = observed["response"].text
    assert any(REPLY_CANARY in r for r in sent["replies"]), \
        "the mock's reply canary did not reach the client: the check below would be empty"
    forbidden = {
        "relay key": route.secret,
        "key id": route.key_id,
        "upstream API key": route.upstream_key,
        "admin token": mnode.admin_token,
        "prompt canary": sent["prompt_tag"],
        "reply canary": REPLY_CANARY,
    }
    for i, t in enumerate(sent["texts"]):
        forbidden["prompt %d" % i] = t
    for i, t in enumerate(sent["replies"]):
        if t:
            forbidden["reply %d" % i] = t
    for what, s in forbidden.items():
        assert s and s not in text, "%s found in /metrics" % what
    # a secret's tail or the key id's hex part would be just as bad
    assert route.secret[-12:] not in text and route.upstream_key[-12:] not in text
    for name, labels, _, _ in observed["samples"]:
        assert "key" not in name.lower(), "metric %s" % name
        for ln in labels:
            assert ln == "key_index" or "key" not in ln.lower(), "label %s on %s" % (ln, name)
        assert set(labels) <= ALLOWED_LABELS, "unexpected labels %r on %s" % (labels, name)
