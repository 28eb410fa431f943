# ctest-labels: e2e sanitize
"""Any model from any format (issue 5 item 2): the 3 x 3 matrix of client format {openai,
anthropic, gemini} x upstream provider type {openai, anthropic, gemini}, stream and not.

Each case is a real conversation: a system prompt, a multi-turn history with an image (a URL
in some cases, base64 in others), a stop sequence, max tokens and a tool. The first request
asks the mock for a tool call (`[[mock:tool=get_weather]]`): the client must get a tool call
in its own format. The second sends that call and its result back in the history: the client
must get a text answer. For both, the mock's `GET /mock/requests?key=K` shows what the
upstream received (format, path, auth, system, roles and part types, tools, max tokens,
stop) and the usage billed (the client's own usage fields, the node's metadata line and its
/admin/v1/logs record per request, the key's spent total) equals what the mock served, with
`cached=3` and `thoughts=2` on every request so that Anthropic's cache reads (input =
input_tokens + cache reads) and Gemini's thoughts (output = candidates + thoughts) are
normalised.

A field no other format can express (OpenAI n=2 to Anthropic, logprobs to Gemini, Anthropic
thinking to OpenAI, Gemini safetySettings to Anthropic) is refused with a 400 in the client's
shape whose message names the field, and nothing reaches the mock; so are other shapes a
target cannot take (first turn not user for Anthropic, a late system message, an image URL
without a known extension for Gemini, a BMP for Anthropic, JSON nested 400 deep). Harmless
fields are dropped, same-format pass-through keeps format-only fields.

Also: consecutive turns merged, --map aliases (upstream name upstream, the client's name
back), length finish reasons, the upstream's own 400/404 in the client's shape, a cut
upstream stream ending with the client's in-stream error, 300-event streams, 27 concurrent
mixed streams on one connection, a client leaving mid-stream still billed exactly what the
mock served, no usage chunk unless asked, and no conversation text in the node's output."""

import json
import re

import pytest

from harness import Route, sse, wait_for, wait_key_visible

FORMATS = ["openai", "anthropic", "gemini"]
CASES = [(c, u, s) for c in FORMATS for u in FORMATS for s in (False, True)]
CASE_IDS = ["%s-to-%s-%s" % (c, u, "stream" if s else "plain") for c, u, s in CASES]

CACHED, THOUGHTS, ANSWER_CHUNKS, MAX_TOKENS = 3, 2, 4, 100
TOOL = "get_weather"
TOOL_ARGS = {"city": "Paris"}
TOOL_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}},
               "required": ["city"]}
SYSTEM = "You are a terse weather assistant."
# the directive sits in the system prompt: the mock takes the first one it finds
DIRECTIVE_CALL = "[[mock:tool=%s,cached=%d,thoughts=%d]]" % (TOOL, CACHED, THOUGHTS)
DIRECTIVE_TEXT = "[[mock:chunks=%d,cached=%d,thoughts=%d]]" % (ANSWER_CHUNKS, CACHED, THOUGHTS)
IMAGE_URL = "https://images.example.com/pets/cat.png"  # a known extension: Gemini needs one
PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9"
           "awAAAABJRU5ErkJggg==")
TOOL_RESULT = "Sunny, 21 degrees"
FINISH_TOOL = {"openai": "tool_calls", "anthropic": "tool_use", "gemini": "STOP"}
FINISH_TEXT = {"openai": "stop", "anthropic": "end_turn", "gemini": "STOP"}


def toks(n):
    return "".join(" tok%d" % i for i in range(1, n + 1))


@pytest.fixture(scope="module")
def tnode(nodes, mock):
    return nodes.start("tx1")


def fresh_route(node, mock, type_, **kw):
    r = Route(node, mock, type_=type_, **kw)
    wait_key_visible(node, r.secret, r.models[0])
    return r


# ------------------------------------------------------------ client request bodies

def build_body(fmt, model, stream, image, directive, call=None):
    """The conversation in the client's format. call: (id, raw call) of the first answer's
    tool call, echoed back with its result (the second request)."""
    system = SYSTEM + " " + directive
    first = "Here is a picture of my cat."
    reply = "A fine cat."
    ask = "What is the weather in Paris?"
    if fmt == "openai":
        url = IMAGE_URL if image == "url" else "data:image/png;base64," + PNG_B64
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": [{"type": "text", "text": first},
                                         {"type": "image_url", "image_url": {"url": url}}]},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": ask}]
        if call:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call[1]]})
            messages.append({"role": "tool", "tool_call_id": call[0], "content": TOOL_RESULT})
        body = {"model": model, "messages": messages, "max_tokens": MAX_TOKENS,
                "stop": ["END"],
                "tools": [{"type": "function", "function": {
                    "name": TOOL, "description": "Current weather for a city",
                    "parameters": TOOL_SCHEMA}}]}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body
    if fmt == "anthropic":
        src = {"type": "url", "url": IMAGE_URL} if image == "url" else \
            {"type": "base64", "media_type": "image/png", "data": PNG_B64}
        messages = [
            {"role": "user", "content": [{"type": "text", "text": first},
                                         {"type": "image", "source": src}]},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": ask}]
        if call:
            messages.append({"role": "assistant", "content": [call[1]]})
            messages.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call[0], "content": TOOL_RESULT}]})
        body = {"model": model, "system": system, "messages": messages,
                "max_tokens": MAX_TOKENS, "stop_sequences": ["END"],
                "tools": [{"name": TOOL, "description": "Current weather for a city",
                           "input_schema": TOOL_SCHEMA}]}
        if stream:
            body["stream"] = True
        return body
    img = {"fileData": {"mimeType": "image/png", "fileUri": IMAGE_URL}} if image == "url" else \
        {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}
    contents = [
        {"role": "user", "parts": [{"text": first}, img]},
        {"role": "model", "parts": [{"text": reply}]},
        {"role": "user", "parts": [{"text": ask}]}]
    if call:
        contents.append({"role": "model", "parts": [call[1]]})
        contents.append({"role": "user", "parts": [{"functionResponse": {
            "name": TOOL, "response": {"content": TOOL_RESULT}}}]})
    return {"systemInstruction": {"parts": [{"text": system}]}, "contents": contents,
            "tools": [{"functionDeclarations": [{"name": TOOL,
                                                 "description": "Current weather for a city",
                                                 "parameters": TOOL_SCHEMA}]}],
            "generationConfig": {"maxOutputTokens": MAX_TOKENS, "stopSequences": ["END"]}}


def gemini_array(upstream):
    """Gemini client streams: the JSON-array form against Anthropic upstreams, SSE else."""
    return upstream == "anthropic"


def client_call(fmt, route, stream, alt_sse=True):
    """(path, headers, params) of a request in the client's format: its endpoint and its way
    of passing the key (Gemini's stream as SSE unless alt_sse is false)."""
    headers = {"content-type": "application/json"}
    params = {}
    if fmt == "openai":
        path = "/v1/chat/completions"
        headers["authorization"] = "Bearer " + route.secret
    elif fmt == "anthropic":
        path = "/v1/messages"
        headers["x-api-key"] = route.secret
        headers["anthropic-version"] = "2023-06-01"
    else:
        path = "/v1beta/models/%s:%s" % (route.model, "streamGenerateContent" if stream
                                         else "generateContent")
        headers["x-goog-api-key"] = route.secret
        if stream and alt_sse:
            params["alt"] = "sse"
    return path, headers, params


def send(node, fmt, upstream, route, body, stream):
    """Sends body in the client's format; returns (status, headers, text)."""
    path, headers, params = client_call(fmt, route, stream, not gemini_array(upstream))
    with node.client() as c:
        with c.stream("POST", path, content=json.dumps(body).encode(), headers=headers,
                      params=params) as r:
            assert r.http_version == "HTTP/2"
            text = r.read().decode()
            return r.status_code, r.headers, text


# ------------------------------------------------------------ client answer readers

def check_model(fmt, stream, upstream, text, model):
    """The answer names the model the client asked for."""
    if fmt == "openai":
        if stream:
            for _, d in sse(text):
                if d != "[DONE]":
                    assert json.loads(d)["model"] == model, d[:200]
        else:
            assert json.loads(text)["model"] == model
    elif fmt == "anthropic":
        j = json.loads(sse(text)[0][1])["message"] if stream else json.loads(text)
        assert j["model"] == model, j
    else:
        if not stream:
            chunks = [json.loads(text)]
        elif gemini_array(upstream):
            chunks = json.loads(text)
        else:
            chunks = [json.loads(d) for _, d in sse(text)]
        for ch in chunks:
            assert ch.get("modelVersion", model) == model, ch


def read_answer(fmt, stream, upstream, headers, text):
    """The client's answer, normalised: text, tool calls [{id, name, args, raw}], finish
    reason (the client's word) and usage {input, output, cached, reasoning}."""
    ctype = headers.get("content-type", "")
    if not stream:
        assert ctype.startswith("application/json"), ctype
    elif fmt == "gemini" and gemini_array(upstream):
        assert ctype.startswith("application/json"), ctype
    else:
        assert ctype.startswith("text/event-stream"), ctype
    if fmt == "openai":
        return read_openai(stream, text)
    if fmt == "anthropic":
        return read_anthropic(stream, text)
    return read_gemini(stream, upstream, text)


def read_openai(stream, text):
    out = {"text": "", "calls": [], "finish": None, "usage": None}
    if not stream:
        j = json.loads(text)
        assert j["object"] == "chat.completion" and j["id"].startswith("chatcmpl-"), j
        ch = j["choices"][0]
        msg = ch["message"]
        assert msg["role"] == "assistant", msg
        out["text"] = msg.get("content") or ""
        for tc in msg.get("tool_calls") or []:
            assert tc["type"] == "function" and tc["id"], tc
            out["calls"].append({"id": tc["id"], "name": tc["function"]["name"],
                                 "args": json.loads(tc["function"]["arguments"]), "raw": tc})
        out["finish"] = ch["finish_reason"]
        usage = j["usage"]
    else:
        events = sse(text)
        assert events and events[-1][1] == "[DONE]", events[-3:]
        chunks = [json.loads(d) for _, d in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks), chunks
        assert len({c["id"] for c in chunks}) == 1, "chunk ids differ"
        calls = {}
        usage = None
        for c in chunks:
            if c.get("usage"):
                usage = c["usage"]
            for ch in c.get("choices") or []:
                d = ch.get("delta") or {}
                out["text"] += d.get("content") or ""
                for tc in d.get("tool_calls") or []:
                    slot = calls.setdefault(tc["index"], {"id": None, "name": None, "args": ""})
                    if tc.get("id"):
                        slot["id"] = tc["id"]
                    fn = tc.get("function") or {}
                    if fn.get("name"):
                        slot["name"] = fn["name"]
                    slot["args"] += fn.get("arguments") or ""
                if ch.get("finish_reason"):
                    out["finish"] = ch["finish_reason"]
        assert chunks[0]["choices"][0]["delta"].get("role") == "assistant", chunks[0]
        assert chunks[-1].get("usage") and chunks[-1]["choices"] == [], chunks[-1]
        assert not any(c.get("usage") for c in chunks[:-1]), "usage before the last chunk"
        for k in sorted(calls):
            slot = calls[k]
            assert slot["id"] and slot["name"], slot
            raw = {"id": slot["id"], "type": "function",
                   "function": {"name": slot["name"], "arguments": slot["args"]}}
            out["calls"].append({"id": slot["id"], "name": slot["name"],
                                 "args": json.loads(slot["args"]), "raw": raw})
        assert usage is not None, "no usage chunk although include_usage was asked"
    out["usage"] = {"input": usage["prompt_tokens"], "output": usage["completion_tokens"],
                    "cached": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
                    "reasoning": (usage.get("completion_tokens_details") or {}).get(
                        "reasoning_tokens", 0)}
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage
    return out


def anth_usage(u, start=None):
    start = start or {}

    def get(k):
        return u.get(k, start.get(k)) or 0
    return {"input": get("input_tokens") + get("cache_read_input_tokens") +
            get("cache_creation_input_tokens"),
            "output": u.get("output_tokens", 0), "cached": get("cache_read_input_tokens"),
            "reasoning": None}


def read_anthropic(stream, text):
    out = {"text": "", "calls": [], "finish": None, "usage": None}
    if not stream:
        j = json.loads(text)
        assert j["type"] == "message" and j["role"] == "assistant", j
        assert j["id"].startswith("msg_"), j
        for b in j["content"]:
            if b["type"] == "text":
                out["text"] += b["text"]
            elif b["type"] == "tool_use":
                assert b["id"], b
                out["calls"].append({"id": b["id"], "name": b["name"], "args": b["input"],
                                     "raw": b})
        out["finish"] = j["stop_reason"]
        out["usage"] = anth_usage(j["usage"])
        return out
    events = [(n, json.loads(d)) for n, d in sse(text)]
    names = [n for n, _ in events]
    for n, d in events:
        assert n == d["type"], (n, d)
    assert names[0] == "message_start" and names[-1] == "message_stop", names
    assert "message_delta" in names, names
    assert names[-2] == "message_delta", names
    open_block = None
    for n, d in events:  # blocks one after the other: start, deltas, stop
        if n == "content_block_start":
            assert open_block is None, names
            open_block = d["index"]
        elif n == "content_block_delta":
            assert d["index"] == open_block, names
        elif n == "content_block_stop":
            assert d["index"] == open_block, names
            open_block = None
    assert open_block is None, names
    blocks = {}
    for n, d in events:
        if n == "content_block_start":
            assert d["index"] not in blocks, "block index reused"
            blocks[d["index"]] = {"block": dict(d["content_block"]), "json": ""}
        elif n == "content_block_delta":
            blk = blocks[d["index"]]
            if d["delta"]["type"] == "text_delta":
                out["text"] += d["delta"]["text"]
            elif d["delta"]["type"] == "input_json_delta":
                blk["json"] += d["delta"]["partial_json"]
        elif n == "message_delta":
            out["finish"] = d["delta"]["stop_reason"]
            last_delta = d
    assert sorted(blocks) == list(range(len(blocks))), "block indices not from 0"
    for k in sorted(blocks):
        b = blocks[k]["block"]
        if b["type"] == "tool_use":
            args = json.loads(blocks[k]["json"]) if blocks[k]["json"] else b.get("input", {})
            raw = {"type": "tool_use", "id": b["id"], "name": b["name"], "input": args}
            assert b["id"], b
            out["calls"].append({"id": b["id"], "name": b["name"], "args": args, "raw": raw})
    start = events[0][1]["message"]["usage"]
    out["usage"] = anth_usage(last_delta["usage"], start)
    return out


def read_gemini(stream, upstream, text):
    out = {"text": "", "calls": [], "finish": None, "usage": None}
    if not stream:
        chunks = [json.loads(text)]
    elif gemini_array(upstream):
        assert text.lstrip().startswith("[") and text.rstrip().endswith("]"), text[:200]
        chunks = json.loads(text)
    else:
        evs = sse(text)
        assert all(n is None for n, _ in evs), evs
        chunks = [json.loads(d) for _, d in evs]
    assert chunks, text[:200]
    for i, ch in enumerate(chunks):
        for cand in ch.get("candidates") or []:
            for p in (cand.get("content") or {}).get("parts") or []:
                if "text" in p and not p.get("thought"):
                    out["text"] += p["text"]
                if "functionCall" in p:
                    fc = p["functionCall"]
                    out["calls"].append({"id": fc.get("id"), "name": fc["name"],
                                         "args": fc.get("args", {}), "raw": p})
            if cand.get("finishReason"):
                assert i == len(chunks) - 1, "finishReason before the last chunk"
                out["finish"] = cand["finishReason"]
    u = chunks[-1]["usageMetadata"]
    out["usage"] = {"input": u["promptTokenCount"],
                    "output": u.get("candidatesTokenCount", 0) + u.get("thoughtsTokenCount", 0),
                    "cached": u.get("cachedContentTokenCount", 0),
                    "reasoning": u.get("thoughtsTokenCount", 0)}
    assert u["totalTokenCount"] == out["usage"]["input"] + out["usage"]["output"], u
    return out


# ------------------------------------------------------------ what the upstream got

PART = {"openai": {"text": "text", "url": "image_url", "b64": "image_url"},
        "anthropic": {"text": "text", "url": "image", "b64": "image"},
        "gemini": {"text": "text", "url": "fileData", "b64": "inlineData"}}


def expected_parts(upstream, image, second):
    p = PART[upstream]
    model_role = "model" if upstream == "gemini" else "assistant"
    parts = ["system:text", "user:text,%s" % p[image], "%s:text" % model_role, "user:text"]
    if second:
        parts += {"openai": ["assistant:tool_calls", "tool:text"],
                  "anthropic": ["assistant:tool_use", "user:tool_result"],
                  "gemini": ["model:functionCall", "user:functionResponse"]}[upstream]
    return parts


def check_upstream(rec, upstream, route, stream, image, second):
    want_path = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages",
                 "gemini": "/v1beta/models/%s:%s" % (route.model, "streamGenerateContent"
                                                     if stream else "generateContent")}
    assert rec["path"] == want_path[upstream], rec
    assert rec["method"] == "POST", rec
    assert rec["auth"] == {"openai": "bearer", "anthropic": "x-api-key",
                           "gemini": "x-goog-api-key"}[upstream], rec
    if upstream == "anthropic":
        assert rec["anthropic_version"] == "2023-06-01", rec
    assert rec["model"] == route.model, rec
    assert rec["stream"] is stream, rec
    if upstream == "openai" and stream:
        assert rec["include_usage"] is True, rec
    assert rec["max_tokens"] == MAX_TOKENS, rec
    assert rec["tools"] == [TOOL], rec
    fields = set(rec["fields"])
    want_fields = {"openai": {"model", "messages", "tools", "stop", "max_tokens"},
                   "anthropic": {"model", "system", "messages", "tools", "stop_sequences",
                                 "max_tokens"},
                   "gemini": {"systemInstruction", "contents", "tools",
                              "generationConfig"}}[upstream]
    assert want_fields <= fields, (want_fields - fields, rec)
    if upstream == "gemini":
        assert "stream" not in fields and "model" not in fields, rec
    # an OpenAI assistant turn with only a call may carry content "" or none
    parts = [p.replace("assistant:text,tool_calls", "assistant:tool_calls") for p in rec["parts"]]
    assert parts == expected_parts(upstream, image, second), rec


# ------------------------------------------------------------------------ the matrix

def served_delta(before, after):
    return {k: after[k] - before[k] for k in ("requests", "input_tokens", "output_tokens")}


def check_usage(node, route, fmt, upstream, rid, answer, served, stream):
    """Client usage, the metadata line and the mock agree on one request."""
    u = answer["usage"]
    assert (u["input"], u["output"]) == (served["input_tokens"], served["output_tokens"]), \
        ("client usage", u, served)
    assert u["cached"] == CACHED, ("client cached tokens", u)
    want_reasoning = 0 if upstream == "anthropic" else THOUGHTS
    if u["reasoning"] is not None:  # Anthropic clients are not told apart
        assert u["reasoning"] == want_reasoning, ("client reasoning tokens", u)
    meta = node.wait_metadata(rid)
    assert meta["status"] == 200 and meta["model"] == route.model, meta
    assert meta["provider"] == route.provider and meta["key_id"] == route.key_id, meta
    assert meta["stream"] is stream and meta["estimated"] is False, meta
    assert (meta["input_tokens"], meta["output_tokens"]) == \
        (served["input_tokens"], served["output_tokens"]), ("metadata", meta, served)
    assert meta["cached_input_tokens"] == CACHED, meta
    assert meta["reasoning_tokens"] == want_reasoning, meta

    def logged():  # the same record through GET /admin/v1/logs
        for rec in node.admin.all_logs(key=route.key_id):
            if rec.get("request_id") == rid:
                return rec
        return None
    rec = wait_for(logged, 10, "request %s in /admin/v1/logs" % rid)
    assert (rec["input_tokens"], rec["output_tokens"], rec["cached_input_tokens"]) == \
        (served["input_tokens"], served["output_tokens"], CACHED), (rec, served)


@pytest.mark.parametrize("fmt,upstream,stream", CASES, ids=CASE_IDS)
def test_matrix(tnode, mock, fmt, upstream, stream):
    i = CASES.index((fmt, upstream, stream))
    image = "url" if i % 2 == 0 else "b64"
    if i % 4 in (1, 2):
        image = "b64" if image == "url" else "url"  # both kinds for each client and stream
    route = fresh_route(tnode, mock, upstream)

    # 1: tools offered, the mock answers with a call
    body = build_body(fmt, route.model, stream, image, DIRECTIVE_CALL)
    status, headers, text = send(tnode, fmt, upstream, route, body, stream)
    assert status == 200, text[:500]
    rid1 = headers.get("x-request-id")
    assert rid1
    a1 = read_answer(fmt, stream, upstream, headers, text)
    check_model(fmt, stream, upstream, text, route.model)
    if fmt == "openai":  # every OpenAI-format answer to a known key carries them
        assert headers.get("x-ratelimit-limit-requests") is not None, dict(headers)
    assert len(a1["calls"]) == 1, a1
    call = a1["calls"][0]
    assert call["name"] == TOOL and call["args"] == TOOL_ARGS, call
    assert a1["text"] == "", a1
    assert a1["finish"] == FINISH_TOOL[fmt], a1
    served1 = route.stats()
    recs = mock.requests_of(route.upstream_key)
    assert len(recs) == 1, recs
    check_upstream(recs[0], upstream, route, stream, image, second=False)
    check_usage(tnode, route, fmt, upstream, rid1, a1, served1, stream)

    # 2: the call and its result in the history, a text answer
    body = build_body(fmt, route.model, stream, image, DIRECTIVE_TEXT,
                      call=(call["id"], call["raw"]))
    status, headers, text = send(tnode, fmt, upstream, route, body, stream)
    assert status == 200, text[:500]
    rid2 = headers.get("x-request-id")
    a2 = read_answer(fmt, stream, upstream, headers, text)
    assert a2["calls"] == [] and a2["text"] == toks(ANSWER_CHUNKS), a2
    assert a2["finish"] == FINISH_TEXT[fmt], a2
    served_all = route.stats()
    served2 = served_delta(served1, served_all)
    assert served2["requests"] == 1 and served2["output_tokens"] == ANSWER_CHUNKS + THOUGHTS
    recs = mock.requests_of(route.upstream_key)
    assert len(recs) == 2, recs
    check_upstream(recs[1], upstream, route, stream, image, second=True)
    check_usage(tnode, route, fmt, upstream, rid2, a2, served2, stream)

    # the key's total equals the mock's
    def billed():
        spent = tnode.admin.key(route.key_id)["spent"]
        return (spent["input_tokens"], spent["output_tokens"]) == \
            (served_all["input_tokens"], served_all["output_tokens"]) and spent
    try:
        wait_for(billed, 10, "key spent == mock served")
    except AssertionError:
        raise AssertionError("billed %r, served %r" % (tnode.admin.key(route.key_id)["spent"],
                                                      served_all))
    assert served_all["errors"] == 0, served_all


# ------------------------------------------------------------ untranslatable fields

UNTRANSLATABLE = [
    # client, upstream, field, extra body members
    ("openai", "anthropic", "n", {"n": 2}),
    ("openai", "gemini", "logprobs", {"logprobs": True}),
    ("anthropic", "openai", "thinking", {"thinking": {"type": "enabled", "budget_tokens": 1024}}),
    ("gemini", "anthropic", "safetySettings", {"safetySettings": [
        {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]}),
]


def names_field(message, field):
    return re.search(r"(?<![A-Za-z0-9_])%s(?![A-Za-z0-9_])" % re.escape(field), message)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("fmt,upstream,field,extra", UNTRANSLATABLE,
                         ids=["%s-%s-to-%s" % (f, c, u) for c, u, f, _ in UNTRANSLATABLE])
def test_untranslatable_field(tnode, mock, fmt, upstream, field, extra, stream):
    route = fresh_route(tnode, mock, upstream)
    body = build_body(fmt, route.model, stream, "url", "")
    body.update(extra)
    status, headers, text = send(tnode, fmt, upstream, route, body, stream)
    assert status == 400, (status, text[:500])
    assert headers.get("content-type", "").startswith("application/json"), headers
    j = json.loads(text)
    if fmt == "openai":
        err = j["error"]
        assert err["code"] == "invalid_request", j
    elif fmt == "anthropic":
        assert j["type"] == "error" and j["error"]["type"] == "invalid_request_error", j
        err = j["error"]
    else:
        err = j["error"]
        assert err["code"] == 400 and err["status"] == "INVALID_ARGUMENT", j
    assert names_field(err["message"], field), "message does not name %r: %r" % (
        field, err["message"])
    assert mock.requests_of(route.upstream_key) == []
    assert route.stats()["requests"] == 0
    rec = tnode.wait_metadata(headers["x-request-id"])
    assert rec["status"] == 400 and rec["input_tokens"] == 0 and rec["output_tokens"] == 0, rec


DROPPED = [
    # client, upstream, harmless members that must not reach the upstream
    ("openai", "anthropic", {"n": 1, "logprobs": False, "parallel_tool_calls": True}),
    ("openai", "gemini", {"n": 1, "logprobs": False, "store": False}),
    ("anthropic", "openai", {"thinking": {"type": "disabled"}}),
    ("gemini", "openai", {"generationConfig": {"maxOutputTokens": MAX_TOKENS,
                                               "stopSequences": ["END"], "candidateCount": 1}}),
]


@pytest.mark.parametrize("fmt,upstream,extra", DROPPED,
                         ids=["%s-to-%s" % (c, u) for c, u, _ in DROPPED])
def test_harmless_fields_accepted_and_dropped(tnode, mock, fmt, upstream, extra):
    route = fresh_route(tnode, mock, upstream)
    body = build_body(fmt, route.model, False, "url", "[[mock:chunks=2]]")
    body.update(extra)
    status, headers, text = send(tnode, fmt, upstream, route, body, False)
    assert status == 200, text[:300]
    assert read_answer(fmt, False, upstream, headers, text)["text"] == toks(2)
    fields = mock.requests_of(route.upstream_key)[-1]["fields"]
    for k in extra:
        if k != "generationConfig":
            assert k not in fields, (k, fields)


SAME_FORMAT_EXTRAS = [
    ("anthropic", {"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ("gemini", {"safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT",
                                    "threshold": "BLOCK_NONE"}]}, "safetySettings"),
]


@pytest.mark.parametrize("fmt,extra,field", SAME_FORMAT_EXTRAS,
                         ids=[f for f, _, _ in SAME_FORMAT_EXTRAS])
def test_same_format_passes_fields_on(tnode, mock, fmt, extra, field):
    """Same-format pass-through is lenient: a field only that format has is copied."""
    route = fresh_route(tnode, mock, fmt)
    body = build_body(fmt, route.model, False, "url", "[[mock:chunks=2]]")
    if fmt == "anthropic":
        body["max_tokens"] = 2048
    body.update(extra)
    status, headers, text = send(tnode, fmt, fmt, route, body, False)
    assert status == 200, text[:300]
    assert field in mock.requests_of(route.upstream_key)[-1]["fields"]


DEEP_CASES = [("openai", "anthropic"), ("anthropic", "anthropic"), ("gemini", "openai")]


@pytest.mark.parametrize("fmt,upstream", DEEP_CASES, ids=["%s-to-%s" % c for c in DEEP_CASES])
def test_deep_nesting_refused(tnode, mock, fmt, upstream):
    """JSON nested 400 deep (in a tool schema, copied verbatim otherwise) is refused with a
    400 in the client's shape; the node stays up and nothing goes upstream."""
    route = fresh_route(tnode, mock, upstream)
    body = build_body(fmt, route.model, False, "url", "")
    raw = json.dumps(body)
    deep = '{"type":"object","properties":{"a":' * 400 + '{"type":"string"}' + "}}" * 400
    schema = json.dumps(TOOL_SCHEMA)
    assert schema in raw
    raw = raw.replace(schema, deep, 1)
    path, headers, params = client_call(fmt, route, False)
    with tnode.client() as c:
        r = c.post(path, content=raw.encode(), headers=headers, params=params)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    client_error(fmt, 400, r.text)
    assert mock.requests_of(route.upstream_key) == []
    assert tnode.running()


def _merge_body(model):
    return {"model": model, "max_tokens": 20, "messages": [
        {"role": "system", "content": "be brief [[mock:chunks=2]]"},
        {"role": "user", "content": "one"}, {"role": "user", "content": "two"},
        {"role": "assistant", "content": "three"}, {"role": "assistant", "content": "four"},
        {"role": "user", "content": "five"}]}


@pytest.mark.parametrize("upstream", ["anthropic", "gemini"])
def test_consecutive_turns_merged(tnode, mock, upstream):
    """Consecutive same-role OpenAI turns become one turn for Anthropic and Gemini."""
    route = fresh_route(tnode, mock, upstream)
    status, headers, text = send(tnode, "openai", upstream, route, _merge_body(route.model),
                                 False)
    assert status == 200, text[:300]
    model_role = "model" if upstream == "gemini" else "assistant"
    assert mock.requests_of(route.upstream_key)[-1]["parts"] == [
        "system:text", "user:text,text", "%s:text,text" % model_role, "user:text"]


def _first_turn_assistant(body):
    body["messages"].insert(1, {"role": "assistant", "content": "I speak first"})


def _late_system(body):
    body["messages"].append({"role": "system", "content": "a late instruction"})


def _url_without_extension(body):
    body["messages"][1]["content"][1]["image_url"]["url"] = "https://images.example.com/pic"


def _bmp_base64(body):
    body["messages"][1]["content"][1]["image_url"]["url"] = "data:image/bmp;base64," + PNG_B64


REFUSED = [
    ("anthropic", _first_turn_assistant),
    ("gemini", _late_system),
    ("anthropic", _late_system),
    ("gemini", _url_without_extension),
    ("anthropic", _bmp_base64),
]


@pytest.mark.parametrize("upstream,mutate", REFUSED,
                         ids=["%s-%s" % (m.__name__.strip("_"), u) for u, m in REFUSED])
def test_openai_shapes_another_format_cannot_take(tnode, mock, upstream, mutate):
    """What the target format cannot express is refused before anything goes upstream:
    400 in OpenAI's shape."""
    route = fresh_route(tnode, mock, upstream)
    body = build_body("openai", route.model, False, "url", "")
    mutate(body)
    status, headers, text = send(tnode, "openai", upstream, route, body, False)
    assert status == 400, (status, text[:300])
    assert json.loads(text)["error"]["code"] == "invalid_request", text[:300]
    assert mock.requests_of(route.upstream_key) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_max_tokens_defaulted_for_anthropic(tnode, mock, fmt):
    """Anthropic requires max_tokens: a client that gave none gets the node's
    --default-max-output-tokens (4096) upstream, whatever its format."""
    route = fresh_route(tnode, mock, "anthropic")
    body = build_body(fmt, route.model, False, "url", "[[mock:chunks=2]]")
    if fmt == "gemini":
        del body["generationConfig"]["maxOutputTokens"]
    else:
        del body["max_tokens"]
    status, headers, text = send(tnode, fmt, "anthropic", route, body, False)
    assert status == 200, text[:300]
    assert mock.requests_of(route.upstream_key)[-1]["max_tokens"] == 4096


@pytest.mark.parametrize("fmt,upstream", [("openai", "gemini"), ("gemini", "anthropic"),
                                          ("anthropic", "openai")],
                         ids=["openai-to-gemini", "gemini-to-anthropic", "anthropic-to-openai"])
def test_big_image_and_long_history(tnode, mock, fmt, upstream):
    """A 3 MiB base64 image and 600 turns of history translate whole."""
    route = fresh_route(tnode, mock, upstream)
    big = PNG_B64 * (3 * 1024 * 1024 // len(PNG_B64))
    body = build_body(fmt, route.model, True, "b64", "[[mock:chunks=3]]")
    raw = json.dumps(body).replace(PNG_B64, big)
    body = json.loads(raw)
    key = "contents" if fmt == "gemini" else "messages"
    turns = body[key]
    head, tail = turns[:-1], turns[-1:]
    for i in range(300):
        if fmt == "gemini":
            head += [{"role": "user", "parts": [{"text": "q%d" % i}]},
                     {"role": "model", "parts": [{"text": "a%d" % i}]}]
        else:
            head += [{"role": "user", "content": "q%d" % i},
                     {"role": "assistant", "content": "a%d" % i}]
    body[key] = head + tail
    status, headers, text = send(tnode, fmt, upstream, route, body, True)
    assert status == 200, text[:300]
    a = read_answer(fmt, True, upstream, headers, text)
    assert a["text"] == toks(3)
    rec = mock.requests_of(route.upstream_key)[-1]
    # (the mock keeps the first few hundred bytes of role:part-types only)
    assert rec["prompt_bytes"] > sum(len("q%d" % i) + len("a%d" % i) for i in range(300)), rec
    assert rec["parts"][1] == "user:text,%s" % PART[upstream]["b64"], rec["parts"][:3]
    served = route.stats()
    meta = tnode.wait_metadata(headers["x-request-id"])
    assert (meta["input_tokens"], meta["output_tokens"]) == \
        (served["input_tokens"], served["output_tokens"]), (meta, served)


# ------------------------------------------------------------ usage chunk, aliases

@pytest.mark.parametrize("upstream", ["anthropic", "gemini"])
def test_openai_stream_without_usage_chunk(tnode, mock, upstream):
    """An OpenAI client that did not ask for usage gets no usage chunk from a translated
    stream, and the request is billed exactly all the same."""
    route = fresh_route(tnode, mock, upstream)
    body = {"model": route.model, "stream": True, "max_tokens": 20,
            "messages": [{"role": "user", "content": "count [[mock:chunks=5,cached=2]]"}]}
    status, headers, text = send(tnode, "openai", upstream, route, body, True)
    assert status == 200, text[:300]
    events = sse(text)
    assert events[-1][1] == "[DONE]", events[-2:]
    chunks = [json.loads(d) for _, d in events[:-1]]
    assert not [c for c in chunks if c.get("usage")], "usage chunk sent unasked"
    assert "".join((ch.get("delta") or {}).get("content") or "" for c in chunks
                   for ch in c["choices"]) == toks(5)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop", chunks[-1]
    served = route.stats()
    meta = tnode.wait_metadata(headers["x-request-id"])
    assert (meta["input_tokens"], meta["output_tokens"]) == \
        (served["input_tokens"], served["output_tokens"]) == (served["input_tokens"], 5), \
        (meta, served)
    assert meta["cached_input_tokens"] == 2, meta


ALIAS_CASES = [("openai", "gemini"), ("anthropic", "openai"), ("gemini", "anthropic"),
               ("openai", "anthropic")]


@pytest.mark.parametrize("fmt,upstream", ALIAS_CASES,
                         ids=["%s-to-%s" % c for c in ALIAS_CASES])
def test_model_alias(tnode, mock, fmt, upstream):
    """A --map alias: the upstream is asked for the upstream name (in the body, or in the
    Gemini URL) and the client sees the name it asked for."""
    from harness import provider_base_url, rand_id
    tag = rand_id()
    alias, real = "alias-" + tag, "real-" + tag
    route = Route(tnode, mock, type_=upstream, tag=tag)
    tnode.admin.put_provider(route.provider, provider_base_url(mock, upstream),
                             [route.upstream_key], [route.model], type_=upstream,
                             map={alias: real})
    wait_key_visible(tnode, route.secret, alias)

    class Aliased:
        model = alias
        secret = route.secret
    for stream in (False, True):
        body = build_body(fmt, alias, stream, "b64", "[[mock:chunks=3]]")
        status, headers, text = send(tnode, fmt, upstream, Aliased, body, stream)
        assert status == 200, text[:300]
        a = read_answer(fmt, stream, upstream, headers, text)
        assert a["text"] == toks(3), a
        if fmt == "openai" and not stream:
            assert json.loads(text)["model"] == alias
        elif fmt == "anthropic" and not stream:
            assert json.loads(text)["model"] == alias
        elif fmt == "gemini" and not stream:
            assert json.loads(text).get("modelVersion", alias) == alias
        rec = mock.requests_of(route.upstream_key)[-1]
        assert rec["model"] == real, rec
        if upstream == "gemini":
            assert rec["path"] == "/v1beta/models/%s:%s" % (
                real, "streamGenerateContent" if stream else "generateContent"), rec
        meta = tnode.wait_metadata(headers["x-request-id"])
        assert meta["model"] == alias and meta["status"] == 200, meta


# ------------------------------------------------------------ upstream errors, cut streams

def client_error(fmt, status, text):
    """The error body in the client's shape; returns its message."""
    j = json.loads(text)
    if fmt == "openai":
        err = j["error"]
        assert isinstance(err.get("message"), str) and "type" in err and "code" in err, j
    elif fmt == "anthropic":
        assert j["type"] == "error" and set(j["error"]) >= {"type", "message"}, j
        err = j["error"]
        if status == 400:
            assert err["type"] == "invalid_request_error", j
        elif status == 404:
            assert err["type"] == "not_found_error", j
    else:
        err = j["error"]
        assert err["code"] == status and isinstance(err.get("status"), str), j
        if status == 400:
            assert err["status"] == "INVALID_ARGUMENT", j
        elif status == 404:
            assert err["status"] == "NOT_FOUND", j
    return err["message"]


ERROR_CASES = [("openai", "anthropic"), ("anthropic", "gemini"), ("gemini", "openai"),
               ("anthropic", "openai"), ("gemini", "anthropic"), ("openai", "gemini")]


@pytest.mark.parametrize("fmt,upstream", ERROR_CASES, ids=["%s-to-%s" % c for c in ERROR_CASES])
def test_upstream_error_in_client_shape(tnode, mock, fmt, upstream):
    """The upstream's own 400 / 404 (not retried) reaches the client with its status, in the
    client's shape; nothing is billed."""
    route = fresh_route(tnode, mock, upstream)
    for status, stream in ((400, False), (404, True)):
        body = build_body(fmt, route.model, stream, "b64", "[[mock:status=%d]]" % status)
        got, headers, text = send(tnode, fmt, upstream, route, body, stream)
        assert got == status, (got, text[:300])
        assert headers.get("content-type", "").startswith("application/json"), headers
        client_error(fmt, status, text)
    served = route.stats()
    assert served["requests"] == 2 and served["input_tokens"] == 0, served
    assert tnode.admin.key(route.key_id)["spent"]["input_tokens"] == 0


def in_stream_error(fmt, upstream, text):
    """The client's in-stream error event at the end of a stream, or None."""
    if fmt == "anthropic":
        ev = sse(text)
        if ev and ev[-1][0] == "error":
            j = json.loads(ev[-1][1])
            assert j["type"] == "error" and "type" in j["error"] and "message" in j["error"], j
            return j
        return None
    if fmt == "gemini" and gemini_array(upstream):
        body = text.rstrip()
        try:
            arr = json.loads(body if body.endswith("]") else body + "]")
        except ValueError:
            return None
        last = arr[-1] if arr else {}
    else:
        ev = [d for _, d in sse(text) if d != "[DONE]"]
        if not ev:
            return None
        last = json.loads(ev[-1])
    err = last.get("error")
    if isinstance(err, dict) and "message" in err:
        return last
    return None


CUT_CASES = [("openai", "anthropic"), ("anthropic", "gemini"), ("gemini", "openai"),
             ("gemini", "anthropic")]


@pytest.mark.parametrize("fmt,upstream", CUT_CASES, ids=["%s-to-%s" % c for c in CUT_CASES])
def test_cut_stream_ends_with_client_error(tnode, mock, fmt, upstream):
    """An upstream stream cut after two tokens (bytes already sent: no retry) ends the
    client's stream with an in-stream error in the client's format, never a clean finish."""
    route = fresh_route(tnode, mock, upstream)
    body = build_body(fmt, route.model, True, "b64",
                      "[[mock:chunks=8,cut_after=2,delay_ms=30]]")
    status, headers, text = send(tnode, fmt, upstream, route, body, True)
    assert status == 200, text[:300]
    err = in_stream_error(fmt, upstream, text)
    assert err is not None, "stream ended without the client's error: %r" % text[-300:]
    if fmt == "openai":
        assert not any('"finish_reason":"stop"' in d for _, d in sse(text)), text[-300:]
    elif fmt == "anthropic":
        assert "message_stop" not in [n for n, _ in sse(text)], text[-300:]
    else:
        assert "finishReason" not in text, text[-300:]
    assert route.stats()["requests"] == 1  # not retried once bytes reached the client
    assert tnode.running()


@pytest.mark.parametrize("upstream", ["openai", "anthropic"])
def test_cut_tool_call_never_reaches_gemini_client_half_done(tnode, mock, upstream):
    """A Gemini client gets a call only whole: arguments cut off mid-way upstream end its
    stream with an error, never with a functionCall of broken arguments."""
    route = fresh_route(tnode, mock, upstream)
    body = build_body("gemini", route.model, True, "b64",
                      "[[mock:tool=%s,cut_after=2,delay_ms=20]]" % TOOL)
    status, headers, text = send(tnode, "gemini", upstream, route, body, True)
    assert status == 200, text[:300]
    assert "functionCall" not in text, text[-300:]
    assert in_stream_error("gemini", upstream, text) is not None, text[-300:]


# ------------------------------------------------------------ long and concurrent streams

CROSS = [(c, u) for c in FORMATS for u in FORMATS if c != u]


@pytest.mark.parametrize("fmt,upstream", CROSS, ids=["%s-to-%s" % c for c in CROSS])
def test_long_translated_stream(tnode, mock, fmt, upstream):
    """300 events translated one by one: every piece arrives, in order, billed exactly."""
    route = fresh_route(tnode, mock, upstream)
    body = build_body(fmt, route.model, True, "url", "[[mock:chunks=300,thoughts=7,cached=1]]")
    body.pop("tools")
    if fmt == "gemini":
        body["generationConfig"]["maxOutputTokens"] = 1000
    else:
        body["max_tokens"] = 1000
    status, headers, text = send(tnode, fmt, upstream, route, body, True)
    assert status == 200, text[:300]
    a = read_answer(fmt, True, upstream, headers, text)
    assert a["text"] == toks(300) and a["finish"] == FINISH_TEXT[fmt], a["finish"]
    served = route.stats()
    assert served["output_tokens"] == 307, served
    assert (a["usage"]["input"], a["usage"]["output"]) == \
        (served["input_tokens"], served["output_tokens"]), (a["usage"], served)
    meta = tnode.wait_metadata(headers["x-request-id"])
    assert (meta["input_tokens"], meta["output_tokens"]) == \
        (served["input_tokens"], served["output_tokens"]), (meta, served)


FINISH_LENGTH = {"openai": "length", "anthropic": "max_tokens", "gemini": "MAX_TOKENS"}


@pytest.mark.parametrize("fmt,upstream", CROSS, ids=["%s-to-%s" % c for c in CROSS])
def test_length_finish_reason(tnode, mock, fmt, upstream):
    """An answer cut by max tokens finishes with the client's own word for it."""
    route = fresh_route(tnode, mock, upstream)
    for stream in (False, True):
        body = build_body(fmt, route.model, stream, "url", "[[mock:chunks=10]]")
        body.pop("tools")
        if fmt == "gemini":
            body["generationConfig"]["maxOutputTokens"] = 3
        else:
            body["max_tokens"] = 3
        status, headers, text = send(tnode, fmt, upstream, route, body, stream)
        assert status == 200, text[:300]
        a = read_answer(fmt, stream, upstream, headers, text)
        assert a["text"] == toks(3), a["text"]
        assert a["finish"] == FINISH_LENGTH[fmt], (stream, a["finish"])
        assert mock.requests_of(route.upstream_key)[-1]["max_tokens"] == 3


LEAVE_CASES = [("anthropic", "gemini"), ("gemini", "openai"), ("openai", "anthropic"),
               ("openai", "openai"), ("anthropic", "anthropic"), ("gemini", "gemini")]


@pytest.mark.parametrize("fmt,upstream", LEAVE_CASES, ids=["%s-to-%s" % c for c in LEAVE_CASES])
def test_client_leaves_translated_stream(tnode, mock, fmt, upstream):
    """The client resets its stream after a few events: the node still learns the usage the
    upstream served and bills exactly that (metadata line and key), not an estimate."""
    route = fresh_route(tnode, mock, upstream)
    body = build_body(fmt, route.model, True, "b64", "[[mock:chunks=40,delay_ms=25]]")
    body.pop("tools")
    path, headers, params = client_call(fmt, route, True)
    with tnode.client() as c:
        with c.stream("POST", path, content=json.dumps(body).encode(), headers=headers,
                      params=params) as r:
            assert r.status_code == 200
            rid = r.headers["x-request-id"]
            got = 0
            for chunk in r.iter_raw():
                got += len(chunk)
                if got > 600:
                    break  # leave: the context exit resets the stream
    meta = tnode.wait_metadata(rid, timeout=15)
    served = route.stats()
    assert served["requests"] == 1, served
    assert meta["estimated"] is False, meta
    assert (meta["input_tokens"], meta["output_tokens"]) == \
        (served["input_tokens"], served["output_tokens"]), (meta, served)
    assert served["output_tokens"] > 0, served

    def billed():
        spent = tnode.admin.key(route.key_id)["spent"]
        return (spent["input_tokens"], spent["output_tokens"]) == \
            (served["input_tokens"], served["output_tokens"])
    wait_for(billed, 10, "key billed what the mock served")


SPREAD_CASES = [("openai", "anthropic"), ("anthropic", "gemini"), ("gemini", "openai")]


@pytest.mark.parametrize("fmt,upstream", SPREAD_CASES, ids=["%s-to-%s" % c for c in SPREAD_CASES])
def test_translated_stream_not_buffered(tnode, mock, fmt, upstream):
    """Events are translated one by one as they come: with 300 ms between upstream tokens,
    the client sees the first token well before the last."""
    import time
    route = fresh_route(tnode, mock, upstream)
    body = build_body(fmt, route.model, True, "url", "[[mock:chunks=4,delay_ms=300]]")
    body.pop("tools")
    path, headers, params = client_call(fmt, route, True)
    seen = {}
    text = ""
    with tnode.client() as c:
        with c.stream("POST", path, content=json.dumps(body).encode(), headers=headers,
                      params=params) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                text += chunk.decode()
                for n in re.findall(r"tok(\d+)", text):
                    seen.setdefault(int(n), time.monotonic())
    assert sorted(seen) == [1, 2, 3, 4], seen
    assert seen[4] - seen[1] >= 0.45, "tokens arrived together: %r" % seen


def test_concurrent_mixed_streams(tnode, mock):
    """27 streams at once on one HTTP/2 connection, every client format against every
    provider type: each answer whole, each route billed exactly what the mock served."""
    import asyncio
    import httpx
    routes = {u: fresh_route(tnode, mock, u) for u in FORMATS}
    jobs = [(c, u, k) for c in FORMATS for u in FORMATS for k in range(3)]

    def request_of(fmt, upstream):
        route = routes[upstream]
        body = build_body(fmt, route.model, True, "b64", "[[mock:chunks=20,delay_ms=10]]")
        body.pop("tools")
        path, headers, params = client_call(fmt, route, True, not gemini_array(upstream))
        return path, json.dumps(body).encode(), headers, params

    async def run():
        async with httpx.AsyncClient(http2=True, verify=False, base_url=tnode.url,
                                     timeout=60) as c:
            async def one(fmt, upstream):
                path, body, headers, params = request_of(fmt, upstream)
                r = await c.post(path, content=body, headers=headers, params=params)
                assert r.http_version == "HTTP/2"
                return fmt, upstream, r.status_code, r.headers, r.text
            return await asyncio.gather(*(one(f, u) for f, u, _ in jobs))

    results = asyncio.run(run())
    for fmt, upstream, status, headers, text in results:
        assert status == 200, (fmt, upstream, text[:300])
        a = read_answer(fmt, True, upstream, headers, text)
        assert a["text"] == toks(20), (fmt, upstream, a["text"][:100])
    for u, route in routes.items():
        served = route.stats()
        assert served["requests"] == 9 and served["output_tokens"] == 9 * 20, (u, served)

        def billed(route=route, served=served):
            spent = tnode.admin.key(route.key_id)["spent"]
            return (spent["input_tokens"], spent["output_tokens"]) == \
                (served["input_tokens"], served["output_tokens"])
        wait_for(billed, 10, "key of the %s route billed what the mock served" % u)


NO_USAGE_CASES = [("openai", "anthropic"), ("anthropic", "gemini"), ("gemini", "openai")]


@pytest.mark.parametrize("fmt,upstream", NO_USAGE_CASES,
                         ids=["%s-to-%s" % c for c in NO_USAGE_CASES])
def test_upstream_without_usage_is_estimated(tnode, mock, fmt, upstream):
    """An upstream answer with no usage at all (`usage=0`): the client still gets its whole
    answer, and the node bills an estimate and says so."""
    route = fresh_route(tnode, mock, upstream)
    for stream in (False, True):
        body = build_body(fmt, route.model, stream, "url", "[[mock:chunks=6,usage=0]]")
        body.pop("tools")
        status, headers, text = send(tnode, fmt, upstream, route, body, stream)
        assert status == 200, text[:300]
        assert all(" tok%d" % i in text for i in range(1, 7)), text[:300]
        meta = tnode.wait_metadata(headers["x-request-id"])
        assert meta["status"] == 200 and meta["estimated"] is True, meta
        assert meta["input_tokens"] > 0 and meta["output_tokens"] > 0, meta


# ------------------------------------------------------------------------- privacy

def test_zz_no_content_in_node_output(tnode):
    """After every case above, nothing of the conversations is in the node's output."""
    text = tnode.logs_text()
    for piece in ("terse weather assistant", "picture of my cat", "A fine cat",
                  "weather in Paris", TOOL_RESULT, PNG_B64[:24], "images.example.com",
                  '"city"', "tok1 tok2"):
        assert piece not in text, "content reached the node's output: %r" % piece
