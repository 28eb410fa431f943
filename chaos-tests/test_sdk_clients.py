# ctest-labels: e2e
"""The official SDKs as clients of the node: openai, @anthropic-ai/sdk and @google/genai
(Node.js, pinned in chaos-tests/sdk/package.json, installed there by `npm ci` — ops/test does
it) run chaos-tests/sdk/client.mjs against the node's TLS listener, whose certificate comes
from a throwaway CA that Node.js trusts through NODE_EXTRA_CA_CERTS. Each SDK calls a model
of its own format and models of the other formats (translation), stream and not; one
tool-call round trip and one bad-key error per SDK. The text and usage each SDK reports are
compared with what the mock served under that scenario's own upstream key, and with what the
node billed.

Without Node.js >= 20 or without the installed packages the whole file is skipped, with the
reason in the summary (`pytest -rs`)."""

import json
import os
import re
import shutil
import subprocess

import pytest

import certs
import harness
from harness import wait_for, wait_key_visible

HERE = os.path.dirname(os.path.abspath(__file__))
SDK_DIR = os.path.join(HERE, "sdk")
PACKAGES = ("openai", "@anthropic-ai/sdk", "@google/genai")
NODEJS = os.environ.get("LLMRELAY_NODEJS") or shutil.which("node")


def _sdk_unavailable():
    """Why the SDK tests cannot run here, or None."""
    if not NODEJS:
        return "Node.js not found (the official-SDK tests need Node.js >= 20 and npm)"
    try:
        out = subprocess.run([NODEJS, "--version"], capture_output=True, text=True,
                             timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return "Node.js at %s does not run: %s" % (NODEJS, exc)
    m = re.match(r"v(\d+)\.", out)
    if not m or int(m.group(1)) < 20:
        return "Node.js %s at %s is older than 20 (the official SDKs need >= 20)" % (out, NODEJS)
    missing = [p for p in PACKAGES
               if not os.path.isfile(os.path.join(SDK_DIR, "node_modules", p, "package.json"))]
    if missing:
        return ("SDK packages not installed in chaos-tests/sdk (%s): run `npm ci` there "
                "(ops/test does it when Node.js >= 20 and npm exist)" % ", ".join(missing))
    return None


_WHY = _sdk_unavailable()
if _WHY:
    pytest.skip("official-SDK tests skipped: " + _WHY, allow_module_level=True)

EXPECTED_TEXT = "".join(" tok%d" % i for i in range(1, 9))  # the mock's default 8 tokens
BASE_URLS = {"openai": lambda m: m.base_url, "anthropic": lambda m: m.url,
             "gemini": lambda m: m.url}
MODEL_PREFIX = {"openai": "gpt-4o-", "anthropic": "claude-sonnet-", "gemini": "gemini-2.5-"}


@pytest.fixture(scope="module")
def tls_node(nodes, mock, workdir):
    """A node whose TLS certificate is signed by a CA the SDKs trust (NODE_EXTRA_CA_CERTS)."""
    d = os.path.join(workdir, "certs")
    ca = certs.make_ca(d)
    cert = certs.make_server_cert(d, ca, name="node")
    n = nodes.start("n1", tls=cert)
    n.ca_file = ca[0]
    return n


class Target:
    """One provider of a given type on the mock (its own upstream key and model) and a relay
    key that may use it."""

    def __init__(self, node, mock, type_):
        tag = harness.rand_id()
        self.type = type_
        self.provider = "sdk-%s-%s" % (type_, tag)
        self.model = MODEL_PREFIX[type_] + tag
        self.upstream_key = "sk-up-%s-%s" % (tag, harness.rand_id(16))
        self.mock = mock
        node.admin.put_provider(self.provider, BASE_URLS[type_](mock), [self.upstream_key],
                                [self.model], type_=type_)
        created = node.admin.create_key(name="sdk-" + tag)
        self.key_id = created["id"]
        self.secret = created["key"]
        self.node = node
        wait_key_visible(node, self.secret, self.model)

    def served(self):
        return self.mock.key_stats(self.upstream_key)

    def script(self, steps, then="ok"):
        with self.mock._client() as c:
            c.post(self.mock.url + "/mock/script",
                   json={"key": self.upstream_key, "script": steps,
                         "then": then}).raise_for_status()


def run_sdk(node, sdk, key, model, stream=False, scenario="text", **extra):
    args = {"sdk": sdk, "base_url": node.url, "key": key, "model": model, "stream": stream,
            "scenario": scenario}
    args.update(extra)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "ANTHROPIC_", "GOOGLE_", "GEMINI_"))}
    env["NODE_EXTRA_CA_CERTS"] = node.ca_file
    p = subprocess.run([NODEJS, os.path.join(SDK_DIR, "client.mjs"), json.dumps(args)],
                       cwd=SDK_DIR, env=env, capture_output=True, text=True,
                       timeout=harness.bound(90))
    assert p.returncode == 0, "client.mjs exited %d:\n%s" % (p.returncode, p.stderr[-3000:])
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, "client.mjs printed no result:\nstdout: %s\nstderr: %s" % (
        p.stdout[-2000:], p.stderr[-2000:])
    return json.loads(lines[-1])


def sdk_usage(sdk, usage):
    """(input, output) tokens from the usage an SDK reports, in its own field names (the
    node's normalisation: Anthropic input includes cache reads/creations, Gemini output
    includes thoughts)."""
    assert usage, "the SDK reported no usage"
    if sdk == "openai":
        return usage["prompt_tokens"], usage["completion_tokens"]
    if sdk == "anthropic":
        return (usage["input_tokens"] + (usage.get("cache_read_input_tokens") or 0)
                + (usage.get("cache_creation_input_tokens") or 0), usage["output_tokens"])
    return (usage.get("promptTokenCount") or 0,
            (usage.get("candidatesTokenCount") or 0) + (usage.get("thoughtsTokenCount") or 0))


def check_billed(node, target, served):
    """The node billed the key exactly what the mock served."""
    def billed():
        spent = node.admin.key(target.key_id)["spent"]
        return (spent["input_tokens"] == served["input_tokens"]
                and spent["output_tokens"] == served["output_tokens"]) and spent
    try:
        wait_for(billed, 10, "key %s spent == mock's tokens" % target.key_id)
    except AssertionError:
        raise AssertionError("billed %r, mock served %r"
                             % (node.admin.key(target.key_id)["spent"], served)) from None


# (sdk, upstream provider type): every SDK to its own format and to the others
PAIRS = [("openai", "openai"), ("openai", "anthropic"),
         ("anthropic", "anthropic"), ("anthropic", "openai"),
         ("gemini", "gemini"), ("gemini", "openai"), ("gemini", "anthropic")]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("sdk,upstream", PAIRS, ids=["%s-to-%s" % p for p in PAIRS])
def test_sdk_text(tls_node, mock, sdk, upstream, stream):
    t = Target(tls_node, mock, upstream)
    r = run_sdk(tls_node, sdk, t.secret, t.model, stream=stream)
    assert r["ok"], "%s SDK -> %s model failed: %s" % (sdk, upstream, r.get("error"))
    assert r["text"] == EXPECTED_TEXT, r
    assert r["tool_calls"] == [], r
    served = t.served()
    assert served["requests"] == 1, served
    assert sdk_usage(sdk, r["usage"]) == (served["input_tokens"], served["output_tokens"]), \
        (r["usage"], served)
    assert served["output_tokens"] == 8, served
    if stream:
        assert r["chunks"] >= 2, "a stream of one event: %r" % r
    # a normal end, in the SDK's own words
    assert r["finish"] in {"openai": ("stop",), "anthropic": ("end_turn",),
                           "gemini": ("STOP",)}[sdk], r
    check_billed(tls_node, t, served)


# the tool-call round trips go across formats: the call and its result are translated
TOOL_PAIRS = [("openai", "anthropic"), ("anthropic", "openai"), ("gemini", "openai")]


@pytest.mark.parametrize("sdk,upstream", TOOL_PAIRS, ids=["%s-to-%s" % p for p in TOOL_PAIRS])
def test_sdk_tool_round_trip(tls_node, mock, sdk, upstream):
    t = Target(tls_node, mock, upstream)
    t.script(["tool=get_weather"])  # the first call answers with a tool call, then text
    r = run_sdk(tls_node, sdk, t.secret, t.model, stream=(sdk != "gemini"), scenario="tool")
    assert r["ok"], "%s SDK tool round trip -> %s failed: %s" % (sdk, upstream, r.get("error"))
    first, second = r["rounds"][0], r["rounds"][-1]
    assert len(r["rounds"]) == 2, "no tool call came back: %r" % r
    assert [c["name"] for c in first["tool_calls"]] == ["get_weather"], first
    assert json.loads(first["tool_calls"][0]["arguments"]) == {"city": "Paris"}, first
    assert first["finish"] == {"openai": "tool_calls", "anthropic": "tool_use",
                               "gemini": "STOP"}[sdk], first
    assert second["text"] == EXPECTED_TEXT, second
    served = t.served()
    assert served["requests"] == 2, served
    got_in = sum(sdk_usage(sdk, x["usage"])[0] for x in r["rounds"])
    got_out = sum(sdk_usage(sdk, x["usage"])[1] for x in r["rounds"])
    assert (got_in, got_out) == (served["input_tokens"], served["output_tokens"]), \
        (r["rounds"], served)
    assert sdk_usage(sdk, first["usage"])[1] == 5, first  # the mock's tool call: 5 tokens
    # the second upstream request carried the call and its result in the upstream's format
    seen = mock.requests()
    mine = [q for q in seen if q.get("key_suffix") and t.upstream_key.endswith(q["key_suffix"])]
    assert len(mine) == 2, mine
    assert mine[0]["tools"] == ["get_weather"], mine[0]
    parts = " ".join(mine[1]["parts"])
    assert {"openai": "tool:", "anthropic": "tool_result"}[upstream] in parts, mine[1]
    check_billed(tls_node, t, served)


ERRORS = {
    # sdk: (error class the SDK raises, the error body's type/status, code)
    "openai": ("AuthenticationError", "invalid_api_key"),
    "anthropic": ("AuthenticationError", "authentication_error"),
    "gemini": ("ApiError", "UNAUTHENTICATED"),
}


@pytest.mark.parametrize("sdk", sorted(ERRORS))
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_sdk_bad_key(tls_node, mock, sdk, stream):
    t = Target(tls_node, mock, {"openai": "openai", "anthropic": "anthropic",
                                "gemini": "gemini"}[sdk])
    r = run_sdk(tls_node, sdk, "sk-not-a-relay-key-" + harness.rand_id(16), t.model,
                stream=stream)
    assert not r["ok"], r
    err = r["error"]
    cls, kind = ERRORS[sdk]
    assert err["class"] == cls, err
    assert err["status"] == 401, err
    if sdk == "openai":
        assert err["code"] == kind, err
    else:
        assert err["type"] == kind, err
    assert t.served()["requests"] == 0  # never reached the upstream


def test_sdk_upstream_failure_surfaces(tls_node, mock):
    """An upstream that keeps failing: each SDK raises its server-error class with the
    status the node chose (502/503), not a transport error."""
    for sdk, upstream in (("openai", "anthropic"), ("anthropic", "openai"),
                          ("gemini", "openai")):
        t = Target(tls_node, mock, upstream)
        t.script(["status=500"], then="status=500")
        r = run_sdk(tls_node, sdk, t.secret, t.model)
        assert not r["ok"], r
        assert r["error"]["status"] in (502, 503), (sdk, r)
        want = {"openai": "InternalServerError", "anthropic": "InternalServerError",
                "gemini": "ApiError"}[sdk]
        assert r["error"]["class"] == want, (sdk, r)


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_sdk_lists_models(tls_node, mock, sdk):
    """models.list() of each SDK: the OpenAI SDK gets OpenAI's list, the Anthropic SDK (which
    sends anthropic-version) Anthropic's, both naming the model the key may use."""
    t = Target(tls_node, mock, "anthropic" if sdk == "anthropic" else "openai")
    r = run_sdk(tls_node, sdk, t.secret, t.model, scenario="models")
    assert r["ok"], r
    ids = [m["id"] for m in r["models"]]
    assert t.model in ids, ids
    assert all(m["type"] == "model" for m in r["models"]), r["models"]
    if sdk == "anthropic":  # Anthropic's shape: display_name and an RFC 3339 created_at
        assert all(m["display_name"] and re.match(r"\d{4}-\d\d-\d\dT", m["created_at"] or "")
                   for m in r["models"]), r["models"]
    else:
        assert all(m["owned_by"] is not None for m in r["models"]), r["models"]
