"""End-to-end tests of the mock provider (build/mockprovider) on its own: the OpenAI wire
shapes of every endpoint, stream and non-stream, the deterministic token arithmetic,
include_usage, the per-request directives and global config, auth, and the /mock/stats
ground truth (tokens served, errors, keep-alive connection counting).

Each test module run starts its own mockprovider processes on 127.0.0.1 port 0 (the port
is read from stdout) and stops them at the end."""
# ctest-labels: e2e

import asyncio
import base64
import json
import math
import os
import re
import signal
import struct
import subprocess
import tempfile
import time

import httpx
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.abspath(os.environ.get("LLMRELAY_BIN") or os.path.join(HERE, "..", "build"))
SLOW = 3.0 if os.environ.get("LLMRELAY_SANITIZED") == "1" else 1.0

KEY_A = "sk-mock-aaaa-1111"
KEY_B = "sk-mock-bbbb-2222"


class MockProc:
    def __init__(self, *args):
        path = os.path.join(BIN, "mockprovider")
        if not os.access(path, os.X_OK):
            pytest.fail("mockprovider not found at %s (set LLMRELAY_BIN)" % path, pytrace=False)
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([path, "--listen", "127.0.0.1:0", *args],
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"mockprovider listening on 127\.0\.0\.1:(\d+)$", line.strip())
        assert m, "unexpected first line: %r" % line
        self.port = int(m.group(1))
        assert self.port > 0

    def url(self, scheme="http"):
        return "%s://127.0.0.1:%d" % (scheme, self.port)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=10 * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def mock():
    m = MockProc("--keys", "%s,%s" % (KEY_A, KEY_B), "--quiet")
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture()
def h2(mock):
    """An h2c (prior knowledge) client for KEY_A."""
    with httpx.Client(base_url=mock.url(), http1=False, http2=True, timeout=10 * SLOW,
                      headers={"authorization": "Bearer " + KEY_A}) as c:
        yield c


@pytest.fixture()
def h1(mock):
    with httpx.Client(base_url=mock.url(), timeout=10 * SLOW,
                      headers={"authorization": "Bearer " + KEY_A}) as c:
        yield c


def admin(mock, method, path, **kw):
    with httpx.Client(base_url=mock.url(), timeout=10 * SLOW) as c:
        r = c.request(method, path, **kw)
        r.raise_for_status()
        return r.json()


@pytest.fixture(autouse=True)
def reset(mock):
    admin(mock, "POST", "/mock/reset")


def ptoks(*texts):
    b = sum(len(t.encode()) for t in texts)
    return max(1, math.ceil(b / 4))


def toks(n, first=None):
    parts = [" tok%d" % i for i in range(1, n + 1)]
    if first is not None and n >= 1:
        parts[0] = first
    return "".join(parts)


def sse_data(text):
    """The data payloads of an SSE body, in order."""
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def chat(content, **kw):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    body.update(kw)
    return body


def key_stats(mock, key):
    return admin(mock, "GET", "/mock/stats")["keys"].get(key)


# ------------------------------------------------------------------------------ chat

def test_chat_non_stream_and_usage(mock, h2):
    msgs = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello"},
                                         {"type": "image_url", "image_url": {"url": "x"}}]}]
    r = h2.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": msgs})
    assert r.status_code == 200 and r.http_version == "HTTP/2"
    j = r.json()
    assert j["object"] == "chat.completion" and j["id"].startswith("chatcmpl-")
    assert j["model"] == "gpt-4o" and isinstance(j["created"], int)
    ch = j["choices"][0]
    assert ch["index"] == 0 and ch["finish_reason"] == "stop"
    assert ch["message"]["role"] == "assistant" and ch["message"]["content"] == toks(8)
    p = ptoks("be brief", "hello")
    u = j["usage"]
    assert u["prompt_tokens"] == p and u["completion_tokens"] == 8 and u["total_tokens"] == p + 8
    assert u["prompt_tokens_details"] == {"cached_tokens": 0}
    assert u["completion_tokens_details"] == {"reasoning_tokens": 0}

    r = h2.post("/v1/chat/completions", json=chat("abcdefghi", max_tokens=3))
    j = r.json()
    assert j["choices"][0]["finish_reason"] == "length"
    assert j["choices"][0]["message"]["content"] == toks(3)
    assert j["usage"]["prompt_tokens"] == 3 and j["usage"]["completion_tokens"] == 3
    j = h2.post("/v1/chat/completions", json=chat("x", max_completion_tokens=8)).json()
    assert j["choices"][0]["finish_reason"] == "stop"  # the cap was not reached
    s = key_stats(mock, KEY_A)
    assert s["requests"] == 3 and s["errors"] == 0
    assert s["input_tokens"] == p + 3 + 1 and s["output_tokens"] == 8 + 3 + 8


def test_chat_stream_without_usage(mock, h1):
    r = h1.post("/v1/chat/completions", json=chat("hi [[mock:chunks=4]]", stream=True))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    data = sse_data(r.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert len(chunks) == 1 + 4 + 1
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["choices"][0]["delta"]["content"] == ""
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == toks(4)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["stop"]
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert key_stats(mock, KEY_A)["output_tokens"] == 4


def test_chat_stream_include_usage(mock, h2):
    content = "count me [[mock:chunks=5]]"
    r = h2.post("/v1/chat/completions",
                json=chat(content, stream=True, max_tokens=3,
                          stream_options={"include_usage": True}))
    data = sse_data(r.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert len(chunks) == 1 + 3 + 1 + 1
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    last = chunks[-1]
    assert last["choices"] == []
    p = ptoks(content)
    assert last["usage"]["prompt_tokens"] == p
    assert last["usage"]["completion_tokens"] == 3 and last["usage"]["total_tokens"] == p + 3
    s = key_stats(mock, KEY_A)
    assert s["input_tokens"] == p and s["output_tokens"] == 3

    # include_usage false: no usage key at all
    r = h2.post("/v1/chat/completions",
                json=chat("x", stream=True, stream_options={"include_usage": False}))
    assert all("usage" not in json.loads(d) for d in sse_data(r.text)[:-1])


# ------------------------------------------------------------------------ completions

def test_completions(mock, h2):
    j = h2.post("/v1/completions", json={"model": "m1", "prompt": ["abcd", "efgh1"]}).json()
    assert j["object"] == "text_completion"
    c = j["choices"][0]
    assert c["text"] == toks(8) and c["index"] == 0 and c["logprobs"] is None
    assert c["finish_reason"] == "stop"
    assert j["usage"]["prompt_tokens"] == ptoks("abcd", "efgh1") == 3
    assert j["usage"]["total_tokens"] == 3 + 8

    r = h2.post("/v1/completions", json={"model": "m1", "prompt": "abc", "stream": True,
                                         "max_tokens": 2,
                                         "stream_options": {"include_usage": True}})
    data = sse_data(r.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == toks(2)
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2
    assert key_stats(mock, KEY_A)["output_tokens"] == 8 + 2


# ------------------------------------------------------------------------- embeddings

def test_embeddings(mock, h2):
    j = h2.post("/v1/embeddings", json={"model": "text-embedding-3-small",
                                        "input": ["hello", "world!!"]}).json()
    assert j["object"] == "list" and j["model"] == "text-embedding-3-small"
    assert [d["index"] for d in j["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 8 for d in j["data"])
    assert j["data"][0]["embedding"] != j["data"][1]["embedding"]
    assert j["usage"] == {"prompt_tokens": ptoks("hello", "world!!"),
                          "total_tokens": ptoks("hello", "world!!")}
    again = h2.post("/v1/embeddings", json={"model": "e", "input": "hello"}).json()
    assert again["data"][0]["embedding"] == j["data"][0]["embedding"]  # deterministic
    b64 = h2.post("/v1/embeddings", json={"model": "e", "input": "hello",
                                          "encoding_format": "base64"}).json()
    floats = struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"]))
    assert all(abs(a - b) < 1e-5 for a, b in zip(floats, j["data"][0]["embedding"]))
    s = key_stats(mock, KEY_A)
    assert s["output_tokens"] == 0 and s["input_tokens"] == 3 + 2 + 2


# -------------------------------------------------------------------------- responses

def test_responses_non_stream(mock, h2):
    j = h2.post("/v1/responses", json={"model": "gpt-4o", "input": "hello there",
                                       "instructions": "be nice"}).json()
    assert j["object"] == "response" and j["id"].startswith("resp_")
    assert j["status"] == "completed" and j["store"] is True and j["model"] == "gpt-4o"
    out = j["output"][0]
    assert out["type"] == "message" and out["role"] == "assistant" and out["status"] == "completed"
    assert out["content"][0] == {"type": "output_text", "text": toks(8), "annotations": []}
    p = ptoks("hello there", "be nice")
    u = j["usage"]
    assert u["input_tokens"] == p and u["output_tokens"] == 8 and u["total_tokens"] == p + 8
    assert u["input_tokens_details"] == {"cached_tokens": 0}
    assert u["output_tokens_details"] == {"reasoning_tokens": 0}

    items = [{"role": "user", "content": [{"type": "input_text", "text": "abcdefgh"}]}]
    j = h2.post("/v1/responses", json={"model": "gpt-4o", "input": items, "store": False,
                                       "max_output_tokens": 2}).json()
    assert j["store"] is False and j["status"] == "incomplete"
    assert j["incomplete_details"] == {"reason": "max_output_tokens"}
    assert j["usage"]["input_tokens"] == 2 and j["usage"]["output_tokens"] == 2


def parse_events(text):
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        ev = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(ev["data"])
        assert data["type"] == ev["event"]
        events.append(data)
    return events


def test_responses_stream(mock, h2):
    r = h2.post("/v1/responses", json={"model": "gpt-4o", "input": "hi [[mock:chunks=3]]",
                                       "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    ev = parse_events(r.text)
    assert [e["type"] for e in ev] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in ev] == list(range(len(ev)))
    assert "".join(e["delta"] for e in ev if e["type"].endswith(".delta")) == toks(3)
    assert ev[7]["text"] == toks(3)
    done = ev[-1]["response"]
    assert done["status"] == "completed"
    assert done["usage"]["output_tokens"] == 3
    assert done["usage"]["input_tokens"] == ptoks("hi [[mock:chunks=3]]")

    r = h2.post("/v1/responses", json={"model": "gpt-4o", "input": "hi", "stream": True,
                                       "max_output_tokens": 2})
    ev = parse_events(r.text)
    assert ev[-1]["type"] == "response.incomplete"
    assert ev[-1]["response"]["status"] == "incomplete"
    assert ev[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert ev[-1]["response"]["usage"]["output_tokens"] == 2
    assert key_stats(mock, KEY_A)["output_tokens"] == 5


# -------------------------------------------------------------- models, errors, auth

def test_models_and_errors(mock, h2):
    j = h2.get("/v1/models").json()
    assert j["object"] == "list"
    assert [m["id"] for m in j["data"]] == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    assert all(m["object"] == "model" and m["owned_by"] == "mock" for m in j["data"])

    r = h2.post("/v1/nope", json={})
    assert r.status_code == 404 and "message" in r.json()["error"]
    r = h2.post("/v1/chat/completions", content=b'{"model": "x", "messages": [')
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"

    for headers in ({"authorization": "Bearer sk-wrong"}, {"authorization": ""}):
        r = httpx.post(mock.url() + "/v1/chat/completions", json=chat("x"), headers=headers)
        assert r.status_code == 401
        assert r.json() == {"error": {"message": "Incorrect API key provided",
                                      "type": "invalid_request_error", "param": None,
                                      "code": "invalid_api_key"}}
    s = admin(mock, "GET", "/mock/stats")
    assert s["keys"]["sk-wrong"]["errors"] == 1
    assert s["keys"]["sk-wrong"]["input_tokens"] == 0


def test_any_key_without_keys_flag():
    m = MockProc("--quiet", "--chunks", "3", "--reply-text", 'CANARY "q"\n',
                 "--model-list", "a,b")
    try:
        r = httpx.post(m.url() + "/v1/chat/completions", json=chat("x"),
                       headers={"authorization": "Bearer anything"})
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == toks(3, first='CANARY "q"\n')
        r = httpx.post(m.url() + "/v1/chat/completions", json=chat("x"))
        assert r.status_code == 401
        j = httpx.get(m.url() + "/v1/models", headers={"authorization": "Bearer z"}).json()
        assert [x["id"] for x in j["data"]] == ["a", "b"]
    finally:
        assert m.stop() == 0


# ------------------------------------------------------------------------- directives

def test_status_directives(mock, h2):
    r = h2.post("/v1/chat/completions", json=chat("[[mock:status=429]]", stream=True))
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    r = h2.post("/v1/responses", json={"model": "m", "input": "[[mock: status=500 ]]"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "server_error"
    r = h2.post("/v1/chat/completions", json=chat("[[mock:status=503,first_byte_delay_ms=50]]"))
    assert r.status_code == 503
    s = key_stats(mock, KEY_A)
    assert s == {"requests": 3, "input_tokens": 0, "output_tokens": 0, "errors": 3,
                 "connections": 1}


@pytest.mark.parametrize("http2", [True, False])
def test_cut_after(mock, http2):
    with httpx.Client(base_url=mock.url(), http1=not http2, http2=http2, timeout=10 * SLOW,
                      headers={"authorization": "Bearer " + KEY_B}) as c:
        got = []
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            with c.stream("POST", "/v1/chat/completions",
                          json=chat("[[mock:chunks=6,cut_after=2]]", stream=True,
                                    stream_options={"include_usage": True})) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    got.append(line)
    data = sse_data("\n".join(got))
    assert "[DONE]" not in data
    s = key_stats(mock, KEY_B)
    assert s["output_tokens"] == 2 and s["errors"] == 1
    assert s["input_tokens"] == ptoks("[[mock:chunks=6,cut_after=2]]")


def test_delay_spreads_stream(mock, h2):
    arrivals = []
    t0 = time.monotonic()
    with h2.stream("POST", "/v1/chat/completions",
                   json=chat("[[mock:chunks=4,delay_ms=150,first_byte_delay_ms=200]]",
                             stream=True)) as r:
        first = time.monotonic() - t0
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":" tok' in line:
                arrivals.append(time.monotonic() - t0)
    assert first >= 0.18
    assert len(arrivals) == 4
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert all(g >= 0.1 for g in gaps), gaps
    assert arrivals[-1] >= 0.2 + 4 * 0.15 - 0.05


def test_global_config(mock, h2):
    admin(mock, "POST", "/mock/config", json={"chunks": 2, "status": 429})
    assert h2.post("/v1/chat/completions", json=chat("x")).status_code == 429
    # a directive overrides the global config field by field
    j = h2.post("/v1/chat/completions", json=chat("[[mock:status=200]]")).json()
    assert j["choices"][0]["message"]["content"] == toks(2)
    admin(mock, "POST", "/mock/config", json={})
    j = h2.post("/v1/chat/completions", json=chat("x")).json()
    assert j["usage"]["completion_tokens"] == 8
    j = h2.post("/v1/chat/completions", json=chat("[[mock:usage=0,chunks=1]]")).json()
    assert "usage" not in j and j["choices"][0]["message"]["content"] == toks(1)
    assert key_stats(mock, KEY_A)["output_tokens"] == 2 + 8 + 1


# ------------------------------------------------------------------- stats, requests

def test_connections_and_requests_log(mock):
    for _ in range(2):
        with httpx.Client(base_url=mock.url(), headers={"authorization": "Bearer " + KEY_B},
                          timeout=10 * SLOW) as c:  # keep-alive: one connection each
            for i in range(3):
                assert c.post("/v1/chat/completions", json=chat("x", store=False)).status_code == 200
    with httpx.Client(base_url=mock.url(), http1=False, http2=True, timeout=10 * SLOW,
                      headers={"authorization": "Bearer " + KEY_A}) as c:
        c.post("/v1/chat/completions", json=chat("x", stream=True, max_tokens=5,
                                                  stream_options={"include_usage": True}))
        c.post("/v1/responses", json={"model": "r", "input": "x"})
    s = admin(mock, "GET", "/mock/stats")
    assert s["keys"][KEY_B]["connections"] == 2 and s["keys"][KEY_B]["requests"] == 6
    assert s["keys"][KEY_A]["connections"] == 1 and s["keys"][KEY_A]["requests"] == 2
    t = s["totals"]
    assert t["requests"] == 8 and t["output_tokens"] == 6 * 8 + 5 + 8
    assert t["input_tokens"] == 8 and t["connections"] >= 3

    log = admin(mock, "GET", "/mock/requests")
    assert len(log) == 8
    assert log[0] == {"path": "/v1/chat/completions", "model": "gpt-4o-mini", "stream": False,
                      "include_usage": None, "store": False, "max_tokens": None,
                      "key_suffix": KEY_B[-4:], "status": 200,
                      "method": "POST", "auth": "bearer", "anthropic_version": None,
                      "prompt_bytes": 1, "temperature": None, "top_p": None,
                      "fields": ["model", "messages", "store"], "parts": ["user:text"],
                      "tools": []}
    assert log[6]["stream"] is True and log[6]["include_usage"] is True
    assert log[6]["max_tokens"] == 5 and log[6]["key_suffix"] == KEY_A[-4:]
    assert log[7]["path"] == "/v1/responses" and log[7]["store"] is None
    admin(mock, "POST", "/mock/reset")
    assert admin(mock, "GET", "/mock/requests") == []
    assert admin(mock, "GET", "/mock/stats")["keys"] == {}


def test_many_concurrent_streams_and_disconnects(mock):
    async def client_batch():
        # httpx opens no second h2 connection past 100 streams: 40 streams per client
        async with httpx.AsyncClient(base_url=mock.url(), http1=False, http2=True,
                                     timeout=30 * SLOW,
                                     headers={"authorization": "Bearer " + KEY_A}) as c:
            async def one():
                r = await c.post("/v1/chat/completions",
                                 json=chat("[[mock:chunks=5,delay_ms=40]]", stream=True))
                return sse_data(r.text)[-1]

            async def abandon():
                async with c.stream("POST", "/v1/chat/completions",
                                    json=chat("[[mock:chunks=50,delay_ms=20]]", stream=True)) as r:
                    async for _ in r.aiter_lines():
                        break  # leave mid-stream: the stream is reset

            res = await asyncio.gather(*[one() for _ in range(30)], *[abandon() for _ in range(10)])
            return res[:30]

    async def run():
        batches = await asyncio.gather(*[client_batch() for _ in range(10)])
        return [x for b in batches for x in b]

    t0 = time.monotonic()
    done = asyncio.run(run())
    assert done == ["[DONE]"] * 300
    assert time.monotonic() - t0 < 15 * SLOW
    # plain h1 clients that vanish mid-stream
    import socket
    body = json.dumps(chat("[[mock:chunks=30,delay_ms=20]]", stream=True)).encode()
    socks = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", mock.port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  + KEY_A.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        socks.append(s)
    for s in socks:
        s.recv(64)
        s.close()
    time.sleep(0.2)
    assert mock.proc.poll() is None
    s = key_stats(mock, KEY_A)
    assert s["requests"] == 450
    assert 300 * 5 + 100 <= s["output_tokens"] < 300 * 5 + 100 * 50 + 50 * 30


def test_tls_h2_and_sigterm(tmp_path):
    key, cert = str(tmp_path / "k.pem"), str(tmp_path / "c.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    m = MockProc("--tls-cert", cert, "--tls-key", key, "--quiet")
    try:
        for http2 in (True, False):
            with httpx.Client(http2=http2, verify=False) as c:
                r = c.post(m.url("https") + "/v1/chat/completions", json=chat("x", stream=True),
                           headers={"authorization": "Bearer k"})
                assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
                assert sse_data(r.text)[-1] == "[DONE]"
    finally:
        assert m.stop() == 0


# ------------------------------------------------------------- Anthropic and Gemini

TOOL_ARGS = {"city": "Paris"}
TOOL_TOKENS = 1 + math.ceil(len(json.dumps(TOOL_ARGS, separators=(",", ":"))) / 4)  # 5


def anth(mock, body, key=KEY_A, **kw):
    return httpx.post(mock.url() + "/v1/messages", json=body, timeout=10 * SLOW,
                      headers={"x-api-key": key, "anthropic-version": "2023-06-01"}, **kw)


def amsg(text, **kw):
    body = {"model": "claude-mock", "max_tokens": 100,
            "messages": [{"role": "user", "content": text}]}
    body.update(kw)
    return body


def gem(mock, body, model="gemini-mock", stream=False, sse=False, key=KEY_A, in_query=False):
    path = "/v1beta/models/%s:%s" % (model, "streamGenerateContent" if stream else "generateContent")
    params, headers = {}, {}
    if sse:
        params["alt"] = "sse"
    if in_query:
        params["key"] = key
    else:
        headers["x-goog-api-key"] = key
    return httpx.post(mock.url() + path, params=params, json=body, headers=headers,
                      timeout=10 * SLOW)


def gbody(text, **kw):
    body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    body.update(kw)
    return body


def anth_events(text):
    """(event name, data) pairs of an Anthropic SSE body; checks the name matches data.type."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        name, data = lines[0][7:], json.loads(lines[1][6:])
        assert data["type"] == name
        out.append((name, data))
    return out


def gemini_sse_chunks(raw):
    assert raw.endswith("\r\n\r\n")
    blocks = raw.split("\r\n\r\n")[:-1]
    assert all(b.startswith("data: ") for b in blocks)
    return [json.loads(b[6:]) for b in blocks]


def test_anthropic_non_stream(mock):
    body = {"model": "claude-mock", "max_tokens": 100,
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [{"role": "user", "content": "hello"},
                         {"role": "assistant", "content": [
                             {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
                         {"role": "user", "content": [
                             {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                             {"type": "text", "text": "and?"}]}]}
    r = anth(mock, body)
    assert r.status_code == 200
    j = r.json()
    p = ptoks("be brief", "hello", "sunny", "and?")
    assert j["id"].startswith("msg_") and j["type"] == "message" and j["role"] == "assistant"
    assert j["model"] == "claude-mock" and j["stop_reason"] == "end_turn"
    assert j["stop_sequence"] is None
    assert j["content"] == [{"type": "text", "text": toks(8)}]
    assert j["usage"] == {"input_tokens": p, "output_tokens": 8,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    j = anth(mock, {"model": "c", "max_tokens": 3, "system": "sys",
                    "messages": [{"role": "user", "content": "abcdefgh"}]}).json()
    assert j["stop_reason"] == "max_tokens" and j["content"][0]["text"] == toks(3)
    assert j["usage"]["input_tokens"] == ptoks("sys", "abcdefgh") and j["usage"]["output_tokens"] == 3
    # max_tokens is required, as in the real API
    r = anth(mock, {"model": "c", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400
    assert r.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                   "message": "max_tokens: Field required"}}
    s = key_stats(mock, KEY_A)
    assert s["requests"] == 3 and s["errors"] == 1
    assert s["input_tokens"] == p + 3 and s["output_tokens"] == 8 + 3
    rec = admin(mock, "GET", "/mock/requests")[0]
    assert rec["auth"] == "x-api-key" and rec["anthropic_version"] == "2023-06-01"
    assert rec["fields"] == ["model", "max_tokens", "system", "messages"]
    assert rec["parts"] == ["system:text", "user:text", "assistant:tool_use",
                            "user:tool_result,text"]
    assert rec["prompt_bytes"] == len("be briefhellosunnyand?")


def test_anthropic_stream(mock):
    content = "count me [[mock:chunks=4]]"
    r = anth(mock, amsg(content, stream=True, max_tokens=3))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    ev = anth_events(r.text)
    names = [n for n, _ in ev]
    assert names == ["message_start", "content_block_start", "ping"] + \
        ["content_block_delta"] * 3 + ["content_block_stop", "message_delta", "message_stop"]
    p = ptoks(content)
    start = ev[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == p and start["usage"]["output_tokens"] == 1
    assert ev[1][1]["content_block"] == {"type": "text", "text": ""}
    assert all(d["delta"]["type"] == "text_delta" and d["index"] == 0 for n, d in ev if n == "content_block_delta")
    assert "".join(d["delta"]["text"] for n, d in ev if n == "content_block_delta") == toks(3)
    delta = ev[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"] == {"output_tokens": 3}  # cumulative
    s = key_stats(mock, KEY_A)
    assert s["input_tokens"] == p and s["output_tokens"] == 3 and s["errors"] == 0

    # zero tokens: message_start says output 0; a cut stream counts what it sent
    ev = anth_events(anth(mock, amsg("[[mock:chunks=0]]", stream=True)).text)
    assert ev[0][1]["message"]["usage"]["output_tokens"] == 0
    assert ev[-2][1]["usage"]["output_tokens"] == 0
    admin(mock, "POST", "/mock/reset")
    got = []
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        with httpx.stream("POST", mock.url() + "/v1/messages", headers={"x-api-key": KEY_A},
                          json=amsg("[[mock:chunks=6,cut_after=2,delay_ms=20]]", stream=True)) as r:
            for line in r.iter_lines():
                got.append(line)
    got = [x.strip() for x in got]
    assert sum(1 for x in got if x == "event: content_block_delta") == 2
    assert "event: message_stop" not in got
    s = key_stats(mock, KEY_A)
    assert s["output_tokens"] == 2 and s["errors"] == 1


def test_gemini_non_stream_and_streams(mock):
    body = gbody("hello", systemInstruction={"parts": [{"text": "be brief"}]},
                 generationConfig={"maxOutputTokens": 3, "temperature": 0.5, "topP": 0.9})
    r = gem(mock, body)
    assert r.status_code == 200
    j = r.json()
    p = ptoks("hello", "be brief")
    c = j["candidates"][0]
    assert c["content"] == {"role": "model", "parts": [{"text": toks(3)}]}
    assert c["finishReason"] == "MAX_TOKENS" and c["index"] == 0
    assert j["usageMetadata"] == {"promptTokenCount": p, "candidatesTokenCount": 3,
                                  "totalTokenCount": p + 3}
    assert j["modelVersion"] == "gemini-mock"
    rec = admin(mock, "GET", "/mock/requests")[-1]
    assert rec["model"] == "gemini-mock" and rec["max_tokens"] == 3 and rec["auth"] == "x-goog-api-key"
    assert rec["temperature"] == 0.5 and rec["top_p"] == 0.9
    assert rec["parts"] == ["system:text", "user:text"]

    # SSE stream, key in the query (never in the recorded path)
    content = "hi [[mock:chunks=3]]"
    r = gem(mock, gbody(content), stream=True, sse=True, in_query=True)
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = gemini_sse_chunks(r.text)
    assert len(chunks) == 4
    assert "".join(ch["candidates"][0]["content"]["parts"][0]["text"] for ch in chunks) == toks(3)
    assert all("finishReason" not in ch["candidates"][0] for ch in chunks[:-1])
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert [ch["usageMetadata"]["candidatesTokenCount"] for ch in chunks] == [1, 2, 3, 3]
    assert chunks[-1]["usageMetadata"] == {"promptTokenCount": ptoks(content),
                                           "candidatesTokenCount": 3,
                                           "totalTokenCount": ptoks(content) + 3}
    rec = admin(mock, "GET", "/mock/requests")[-1]
    assert rec["auth"] == "query" and "?" not in rec["path"] and rec["stream"] is True

    # JSON-array stream: "[{...}\n,{...}\n]"
    r = gem(mock, gbody(content), stream=True)
    assert r.headers["content-type"].startswith("application/json")
    assert r.text.startswith("[{") and r.text.endswith("}\n]") and "}\n,{" in r.text
    arr = json.loads(r.text)
    assert len(arr) == 4 and arr[-1]["candidates"][0]["finishReason"] == "STOP"
    assert arr[-1]["usageMetadata"]["candidatesTokenCount"] == 3
    s = key_stats(mock, KEY_A)
    assert s["requests"] == 3 and s["input_tokens"] == p + 2 * ptoks(content)
    assert s["output_tokens"] == 3 + 3 + 3


def test_auth_refusal_shapes(mock):
    for headers in ({}, {"x-api-key": "wrong"}, {"authorization": "Bearer " + KEY_A}):
        r = httpx.post(mock.url() + "/v1/messages", json=amsg("x"), headers=headers)
        assert r.status_code == 401
        j = r.json()
        assert j["type"] == "error" and j["error"]["type"] == "authentication_error"
        assert isinstance(j["error"]["message"], str)
    for headers, params in (({}, {}), ({"x-goog-api-key": "wrong"}, {}), ({}, {"key": "wrong"}),
                            ({"authorization": "Bearer " + KEY_A}, {})):
        r = httpx.post(mock.url() + "/v1beta/models/g:generateContent", json=gbody("x"),
                       headers=headers, params=params)
        assert r.status_code == 401
        j = r.json()
        assert j["error"]["code"] == 401 and j["error"]["status"] == "UNAUTHENTICATED"
        assert isinstance(j["error"]["message"], str)
    s = admin(mock, "GET", "/mock/stats")["keys"]
    assert s["wrong"]["errors"] == 3 and s["wrong"]["input_tokens"] == 0
    assert KEY_A not in s or s[KEY_A]["input_tokens"] == 0


def test_tool_calls(mock, h2):
    args = json.dumps(TOOL_ARGS, separators=(",", ":"))
    # OpenAI chat
    j = h2.post("/v1/chat/completions", json=chat("[[mock:tool=get_weather]]")).json()
    ch = j["choices"][0]
    assert ch["finish_reason"] == "tool_calls" and ch["message"]["content"] is None
    call = ch["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": args}
    assert j["usage"]["completion_tokens"] == TOOL_TOKENS
    r = h2.post("/v1/chat/completions", json=chat("[[mock:tool=get_weather]]", stream=True))
    chunks = [json.loads(d) for d in sse_data(r.text)[:-1]]
    deltas = [c["choices"][0]["delta"].get("tool_calls") for c in chunks]
    calls = [d[0] for d in deltas if d]
    assert len(calls) == TOOL_TOKENS
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""} and calls[0]["id"]
    assert "".join(c["function"]["arguments"] for c in calls) == args
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # Anthropic
    j = anth(mock, amsg("[[mock:tool=get_weather]]")).json()
    assert j["stop_reason"] == "tool_use" and len(j["content"]) == 1
    block = j["content"][0]
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    assert block["name"] == "get_weather" and block["input"] == TOOL_ARGS
    assert j["usage"]["output_tokens"] == TOOL_TOKENS
    ev = anth_events(anth(mock, amsg("[[mock:tool=get_weather]]", stream=True)).text)
    assert ev[1][1]["content_block"]["type"] == "tool_use"
    assert ev[1][1]["content_block"]["name"] == "get_weather"
    parts = [d["delta"] for n, d in ev if n == "content_block_delta"]
    assert all(p["type"] == "input_json_delta" for p in parts)
    assert json.loads("".join(p["partial_json"] for p in parts)) == TOOL_ARGS
    assert ev[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert ev[-2][1]["usage"]["output_tokens"] == TOOL_TOKENS
    # Gemini
    j = gem(mock, gbody("[[mock:tool=get_weather]]")).json()
    c = j["candidates"][0]
    assert c["content"]["parts"] == [{"functionCall": {"name": "get_weather", "args": TOOL_ARGS}}]
    assert c["finishReason"] == "STOP"
    assert j["usageMetadata"]["candidatesTokenCount"] == TOOL_TOKENS
    chunks = gemini_sse_chunks(gem(mock, gbody("[[mock:tool=get_weather]]"), stream=True,
                                   sse=True).text)
    assert chunks[0]["candidates"][0]["content"]["parts"][0]["functionCall"]["args"] == TOOL_ARGS
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == TOOL_TOKENS
    assert key_stats(mock, KEY_A)["output_tokens"] == 6 * TOOL_TOKENS


def test_thoughts_and_cached(mock, h2):
    content = "abcdefghijklmnop [[mock:chunks=2,thoughts=5,cached=3]]"
    p = ptoks(content)
    j = h2.post("/v1/chat/completions", json=chat(content)).json()
    assert j["usage"]["prompt_tokens"] == p and j["usage"]["completion_tokens"] == 2 + 5
    assert j["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}
    assert j["usage"]["completion_tokens_details"] == {"reasoning_tokens": 5}
    assert j["usage"]["total_tokens"] == p + 7
    j = anth(mock, amsg(content)).json()
    assert j["usage"] == {"input_tokens": p - 3, "cache_read_input_tokens": 3,
                          "cache_creation_input_tokens": 0, "output_tokens": 7}
    ev = anth_events(anth(mock, amsg(content, stream=True)).text)
    assert ev[0][1]["message"]["usage"]["cache_read_input_tokens"] == 3
    assert ev[-2][1]["usage"]["output_tokens"] == 7
    u = gem(mock, gbody(content)).json()["usageMetadata"]
    assert u == {"promptTokenCount": p, "candidatesTokenCount": 2, "thoughtsTokenCount": 5,
                 "cachedContentTokenCount": 3, "totalTokenCount": p + 2 + 5}
    chunks = gemini_sse_chunks(gem(mock, gbody(content), stream=True, sse=True).text)
    assert chunks[-1]["usageMetadata"] == u
    s = key_stats(mock, KEY_A)  # thoughts count as served output, cached tokens within P
    assert s["input_tokens"] == 5 * p and s["output_tokens"] == 5 * 7


def test_error_shapes(mock, h2):
    openai_codes = {500: "server_error", 429: "rate_limit_exceeded", 401: "invalid_api_key",
                    503: "service_unavailable"}
    anth_types = {500: "api_error", 429: "rate_limit_error", 529: "overloaded_error",
                  401: "authentication_error", 400: "invalid_request_error",
                  404: "not_found_error"}
    gem_status = {500: "INTERNAL", 429: "RESOURCE_EXHAUSTED", 529: "UNAVAILABLE",
                  401: "UNAUTHENTICATED", 503: "UNAVAILABLE", 404: "NOT_FOUND"}
    n = 0
    for status, code in openai_codes.items():
        for stream in (False, True):
            r = h2.post("/v1/chat/completions", json=chat("[[mock:status=%d]]" % status, stream=stream))
            assert r.status_code == status and r.json()["error"]["code"] == code
            n += 1
    for status, typ in anth_types.items():
        for stream in (False, True):
            r = anth(mock, amsg("[[mock:status=%d]]" % status, stream=stream))
            assert r.status_code == status
            assert r.json()["type"] == "error" and r.json()["error"]["type"] == typ
            n += 1
    for status, st in gem_status.items():
        for stream in (False, True):
            r = gem(mock, gbody("[[mock:status=%d]]" % status), stream=stream, sse=stream)
            assert r.status_code == status
            assert r.json()["error"]["code"] == status and r.json()["error"]["status"] == st
            n += 1
    # the spend-limit errors
    r = h2.post("/v1/chat/completions", json=chat("[[mock:quota=1]]"))
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "insufficient_quota"
    assert r.json()["error"]["type"] == "insufficient_quota"
    r = anth(mock, amsg("[[mock:quota=1]]"))
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "usage limits" in r.json()["error"]["message"]
    r = gem(mock, gbody("[[mock:quota=1]]"))
    assert r.status_code == 429 and r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert "billing" in r.json()["error"]["message"]
    s = key_stats(mock, KEY_A)
    assert s["errors"] == n + 3 and s["input_tokens"] == 0 and s["output_tokens"] == 0


def test_fault_script_per_key(mock):
    KEY_C = "sk-up-cccc-3333"
    m = MockProc("--quiet", "--keys", "%s,%s" % (KEY_A, KEY_C), "--chunks", "2")
    try:
        def post_script(body):
            r = httpx.post(m.url() + "/mock/script", json=body)
            assert r.status_code == 200, r.text
        post_script({"key": KEY_A, "script": ["status=500", "status=429", "refuse",
                                               "status=529", "ok"], "then": "status=503"})
        outcomes = []
        for i in range(7):
            try:
                with httpx.Client(timeout=10 * SLOW) as c:  # a fresh connection each time
                    r = c.post(m.url() + "/v1/messages", json=amsg("hello"),
                               headers={"x-api-key": KEY_A})
                    outcomes.append(r.status_code)
            except (httpx.RemoteProtocolError, httpx.ReadError) as e:
                outcomes.append(type(e).__name__)
            # the other key is untouched
            with httpx.Client(timeout=10 * SLOW) as c:
                r = c.post(m.url() + "/v1/messages", json=amsg("hello"),
                           headers={"x-api-key": KEY_C})
                assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 2
        assert outcomes[:2] == [500, 429]
        assert outcomes[2] in ("RemoteProtocolError", "ReadError")
        assert outcomes[3:] == [529, 200, 503, 503]
        stats = httpx.get(m.url() + "/mock/stats").json()["keys"]
        assert stats[KEY_A]["requests"] == 7 and stats[KEY_A]["errors"] == 6
        assert stats[KEY_A]["input_tokens"] == ptoks("hello") and stats[KEY_A]["output_tokens"] == 2
        assert stats[KEY_C]["requests"] == 7 and stats[KEY_C]["errors"] == 0
        scripts = httpx.get(m.url() + "/mock/scripts").json()
        assert scripts == {KEY_A: {"length": 5, "next": 5, "loop": False, "consumed": 7}}
        log = httpx.get(m.url() + "/mock/requests", params={"key": KEY_A}).json()
        assert [q["status"] for q in log] == [500, 429, 0, 529, 200, 503, 503]
        assert all(q["key_suffix"] == KEY_A[-4:] for q in log)

        # a looping script, in each format's shape; a directive still shapes a success
        post_script({"key": KEY_C, "script": ["status=429", "ok"], "loop": True})
        codes = []
        for _ in range(2):
            codes.append(gem(m, gbody("x [[mock:chunks=1]]"), key=KEY_C).status_code)
            codes.append(httpx.post(m.url() + "/v1/chat/completions", json=chat("x"),
                                    headers={"authorization": "Bearer " + KEY_C}).status_code)
        assert codes == [429, 200, 429, 200]
        # refuse on an h2 connection, then an empty script removes it
        post_script({"key": KEY_C, "script": ["refuse"]})
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            with httpx.Client(http1=False, http2=True, timeout=10 * SLOW) as c:
                c.post(m.url() + "/v1/chat/completions", json=chat("x"),
                       headers={"authorization": "Bearer " + KEY_C})
        post_script({"key": KEY_C, "script": []})
        assert httpx.get(m.url() + "/mock/scripts").json().keys() == {KEY_A}
        r = httpx.post(m.url() + "/v1/chat/completions", json=chat("x"),
                       headers={"authorization": "Bearer " + KEY_C})
        assert r.status_code == 200
        # the refuse directive; /mock/reset clears scripts
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            httpx.post(m.url() + "/v1/chat/completions", json=chat("[[mock:refuse]]"),
                       headers={"authorization": "Bearer " + KEY_C})
        httpx.post(m.url() + "/mock/reset").raise_for_status()
        assert httpx.get(m.url() + "/mock/scripts").json() == {}
        assert httpx.post(m.url() + "/mock/script", json={"key": KEY_A}).status_code == 400
        assert m.proc.poll() is None
    finally:
        assert m.stop() == 0
