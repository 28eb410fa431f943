"""llmrelayctl against fake_admin.py: every command in text and --json modes, exit codes,
environment variables, and the promise that no output shows an upstream key beyond its
last 4 characters nor the admin token.

Binary: $LLMRELAY_BIN/llmrelayctl (LLMRELAY_BIN defaults to ../build from this directory).
"""
# ctest-labels: e2e sanitize

import json
import os
import random
import socket
import string
import subprocess

import pytest

from fake_admin import FakeAdmin

HERE = os.path.dirname(os.path.abspath(__file__))
BIN_DIR = os.environ.get("LLMRELAY_BIN") or os.path.join(HERE, "..", "build")
CTL = os.path.join(BIN_DIR, "llmrelayctl")
TOKEN = "adm-" + "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(40))
VIEWER_TOKEN = "view-" + "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(40))
OPERATOR_TOKEN = "oper-" + "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(40))


def upstream_key():
    # Upper-case letters only: no other output is upper-case random text, so a 5-character
    # window of the key showing up means more than its last 4 characters leaked.
    return "sk-" + "".join(random.choice(string.ascii_uppercase) for _ in range(36))


UPSTREAM_KEYS = [upstream_key() for _ in range(4)]


def assert_no_secret(text):
    for key in UPSTREAM_KEYS:
        for i in range(len(key) - 4):
            assert key[i:i + 5] not in text, "output shows more than the last 4 characters of an upstream key"
    assert TOKEN not in text and VIEWER_TOKEN not in text and OPERATOR_TOKEN not in text, \
        "output shows the admin token"


@pytest.fixture
def fake():
    f = FakeAdmin(tokens={TOKEN: "admin", VIEWER_TOKEN: "viewer", OPERATOR_TOKEN: "operator"}).start()
    yield f
    f.stop()


@pytest.fixture
def token_file(tmp_path):
    p = tmp_path / "admin.token"
    p.write_text(TOKEN + "\n")
    return str(p)


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMRELAY_") and "proxy" not in k.lower()}
    env.update(extra or {})
    return env


def run(args, env=None, timeout=30):
    if not os.path.exists(CTL):
        pytest.fail(f"{CTL} not built (set LLMRELAY_BIN)")
    p = subprocess.run([CTL] + args, capture_output=True, text=True, env=clean_env(env), timeout=timeout)
    assert_no_secret(p.stdout)
    assert_no_secret(p.stderr)
    return p


def ctl(fake, token_file, *args, json_mode=False, env=None):
    pre = ["--admin", fake.url, "--token-file", token_file] + (["--json"] if json_mode else [])
    return run(pre + list(args), env=env)


def ok_json(p):
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def set_openai(fake, token_file, name="oai", extra=(), json_mode=False):
    return ctl(fake, token_file, "provider", "set", name, "--type", "openai", "--base-url",
               "https://api.openai.com/v1", "--api-key", UPSTREAM_KEYS[0], "--api-key", UPSTREAM_KEYS[1],
               "--models", "gpt-4o, gpt-4o-mini", "--map", "gpt4=gpt-4o", "--map", "fast=gpt-4o-mini",
               *extra, json_mode=json_mode)


# --- help and usage ---------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--help"], ["help"], ["provider", "--help"], ["key", "--help"],
                                  ["provider", "set", "--help"], ["provider", "list", "--help"],
                                  ["provider", "show", "--help"], ["provider", "delete", "--help"],
                                  ["key", "create", "--help"], ["key", "list", "--help"],
                                  ["key", "show", "--help"], ["key", "revoke", "--help"],
                                  ["key", "rotate", "--help"], ["price", "--help"], ["price", "set", "--help"],
                                  ["price", "list", "--help"], ["price", "show", "--help"],
                                  ["price", "delete", "--help"], ["token", "--help"], ["token", "create", "--help"],
                                  ["token", "list", "--help"], ["token", "delete", "--help"], ["logs", "--help"],
                                  ["usage", "--help"], ["audit", "--help"]])
def test_help(args):
    p = run(args)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: llmrelayctl")


@pytest.mark.parametrize("args", [[], ["bogus"], ["provider"], ["provider", "bogus"], ["key", "bogus"],
                                  ["key", "list", "--bogus"], ["key", "list", "extra"],
                                  ["key", "show"], ["provider", "show"], ["--admin"],
                                  ["key", "create", "--name"], ["key", "create"],
                                  ["key", "create", "--name", "x", "--rpm", "ten"],
                                  ["key", "create", "--name", "x", "--budget-usd", "1,5"],
                                  ["key", "create", "--name", "x", "--models", ","],
                                  ["provider", "set", "p", "--type", "openai"],
                                  ["provider", "set", "p", "--type", "azure", "--base-url", "https://x",
                                   "--api-key", "k", "--models", "m"],
                                  ["provider", "set", "p", "--type", "openai", "--base-url", "ftp://x",
                                   "--api-key", "k", "--models", "m"],
                                  ["provider", "set", "p", "--type", "openai", "--base-url", "https://x",
                                   "--api-key", "k", "--models", "m", "--map", "noequals"],
                                  ["provider", "set", "p", "--type", "openai", "--base-url", "https://x",
                                   "--api-key", "k", "--models", "m", "--priority", "high"],
                                  ["price"], ["price", "bogus"], ["price", "set", "m", "--output", "1"],
                                  ["price", "set", "m", "--input", "abc", "--output", "1"],
                                  ["price", "set", "m", "--input", "-1", "--output", "1"],
                                  ["price", "set", "--input", "1", "--output", "1"], ["price", "show"],
                                  ["price", "delete", "a", "b"], ["token"], ["token", "create", "--name", "x"],
                                  ["token", "create", "--name", "x", "--role", "root"], ["token", "delete"],
                                  ["token", "list", "x"], ["logs", "--status", "4x"], ["logs", "--limit", "0"],
                                  ["logs", "extra"], ["logs", "--bogus"], ["usage", "--by", "day"],
                                  ["audit", "--limit", "x"], ["key", "rotate"],
                                  ["key", "rotate", "key_abc", "--grace", "soon"]])
def test_usage_errors_exit_2(fake, token_file, args):
    p = run(["--admin", fake.url, "--token-file", token_file] + args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.strip(), "a usage error says what is wrong"
    assert ("PUT", "/admin/v1/providers/p") not in fake.state.requests


def test_key_rotate(fake, token_file):
    created = ok_json(ctl(fake, token_file, "key", "create", "--name", "rot", "--rpm", "5", json_mode=True))
    old_hash = fake.state.keys[created["id"]]["hash"]
    p = ctl(fake, token_file, "key", "rotate", created["id"], "--grace", "1h")
    assert p.returncode == 0, p.stderr
    lines = {k: v.strip() for k, v in (line.split(":", 1) for line in p.stdout.splitlines() if ":" in line)}
    assert lines["id"] == created["id"]
    new_secret = lines["key"]
    assert new_secret.startswith("sk-lr-") and new_secret != created["key"]
    assert lines["previous_key_valid_until"] != "-"
    assert "not be shown again" in p.stdout
    rec = fake.state.keys[created["id"]]
    assert rec["hash"] != old_hash and old_hash in rec["old_hashes"]
    shown = ok_json(ctl(fake, token_file, "key", "show", created["id"], json_mode=True))
    assert shown["prefix"] == new_secret[:10] and shown["limits"]["rpm"] == 5
    assert shown["previous_key_valid_until"] is not None
    assert new_secret not in json.dumps(shown)

    again = ok_json(ctl(fake, token_file, "key", "rotate", created["id"], json_mode=True))
    assert set(again) >= {"id", "key"} and again["key"] != new_secret
    assert ("POST", f"/admin/v1/keys/{created['id']}/rotate") in fake.state.requests

    p = ctl(fake, token_file, "key", "rotate", "key_nothere")
    assert p.returncode == 1 and "(HTTP 404)" in p.stderr
    assert ctl(fake, token_file, "key", "revoke", created["id"]).returncode == 0
    p = ctl(fake, token_file, "key", "rotate", created["id"])
    assert p.returncode == 1 and "(HTTP 409)" in p.stderr


def test_key_show_spent_and_remaining(fake, token_file):
    created = ok_json(ctl(fake, token_file, "key", "create", "--name", "s", "--budget-tokens", "1000",
                          "--budget-usd", "2", json_mode=True))
    fake.state.spent[created["id"]] = {"requests": 3, "input_tokens": 100, "output_tokens": 50, "usd": 0.5}
    shown = ok_json(ctl(fake, token_file, "key", "show", created["id"], json_mode=True))
    assert shown["spent"] == {"requests": 3, "input_tokens": 100, "output_tokens": 50, "usd": 0.5}
    assert shown["remaining"] == {"tokens": 850, "usd": 1.5}
    p = ctl(fake, token_file, "key", "show", created["id"])
    lines = {k: v.strip() for k, v in (line.split(":", 1) for line in p.stdout.splitlines())}
    assert lines["spent_input_tokens"] == "100" and lines["remaining_tokens"] == "850"
    assert lines["remaining_usd"] == "1.5"


# --- prices -----------------------------------------------------------------------------

def test_price_set_list_show_delete(fake, token_file):
    p = ctl(fake, token_file, "price", "set", "gpt-4o", "--input", "2.5", "--output", "10", "--cached-input", "1.25")
    assert p.returncode == 0, p.stderr
    lines = {k: v.strip() for k, v in (line.split(":", 1) for line in p.stdout.splitlines())}
    assert lines["model"] == "gpt-4o" and lines["input"] == "2.5" and lines["output"] == "10"
    assert lines["cached_input"] == "1.25" and lines["reasoning"] == "(output price)"
    assert fake.state.prices["gpt-4o"]["cached_input"] == 1.25

    body = ok_json(ctl(fake, token_file, "price", "set", "o3", "--input", "2", "--output", "8", "--reasoning", "8",
                       json_mode=True))
    assert {k: body[k] for k in ("model", "input", "output", "cached_input", "reasoning")} == \
        {"model": "o3", "input": 2, "output": 8, "cached_input": None, "reasoning": 8}
    assert "updated_at" in body

    p = ctl(fake, token_file, "price", "list")
    assert p.returncode == 0, p.stderr
    rows = p.stdout.splitlines()
    assert rows[0].split()[:3] == ["MODEL", "INPUT", "OUTPUT"]
    assert [r.split()[0] for r in rows[1:]] == ["gpt-4o", "o3"]
    listed = ok_json(ctl(fake, token_file, "price", "list", json_mode=True))
    assert [x["model"] for x in listed["prices"]] == ["gpt-4o", "o3"]
    assert ok_json(ctl(fake, token_file, "price", "show", "o3", json_mode=True)) == listed["prices"][1]

    p = ctl(fake, token_file, "price", "delete", "o3")
    assert p.returncode == 0 and "o3" in p.stdout and "deleted" in p.stdout
    assert ok_json(ctl(fake, token_file, "price", "delete", "gpt-4o", json_mode=True)) == {"deleted": "gpt-4o"}
    p = ctl(fake, token_file, "price", "show", "o3")
    assert p.returncode == 1 and "(HTTP 404)" in p.stderr


def test_price_roles(fake, tmp_path, token_file):
    for tok in (OPERATOR_TOKEN, VIEWER_TOKEN):
        f = tmp_path / "t.token"
        f.write_text(tok)
        p = run(["--admin", fake.url, "--token-file", str(f), "price", "set", "m", "--input", "1", "--output", "1"])
        assert p.returncode == 1 and "(HTTP 403)" in p.stderr
        p = run(["--admin", fake.url, "--token-file", str(f), "price", "list"])
        assert p.returncode == 0, p.stderr
    assert fake.state.prices == {}


# --- tokens -----------------------------------------------------------------------------

def test_token_create_list_delete(fake, token_file, tmp_path):
    p = ctl(fake, token_file, "token", "create", "--name", "ci", "--role", "viewer")
    assert p.returncode == 0, p.stderr
    lines = {k: v.strip() for k, v in (line.split(":", 1) for line in p.stdout.splitlines() if ":" in line)}
    assert lines["name"] == "ci" and lines["role"] == "viewer"
    ci_token = lines["token"]
    assert ci_token and "not be shown again" in p.stdout

    made = ok_json(ctl(fake, token_file, "token", "create", "--name", "ops", "--role", "operator", json_mode=True))
    assert set(made) >= {"name", "role", "token"} and made["name"] == "ops" and made["role"] == "operator"

    p = ctl(fake, token_file, "token", "list")
    assert p.returncode == 0, p.stderr
    assert ci_token not in p.stdout and made["token"] not in p.stdout
    rows = p.stdout.splitlines()
    assert rows[0].split() == ["NAME", "ROLE", "CREATED"]
    names = {r.split()[0]: r.split()[1] for r in rows[1:]}
    assert names["ci"] == "viewer" and names["ops"] == "operator"
    listed = ok_json(ctl(fake, token_file, "token", "list", json_mode=True))
    assert all(set(t) == {"name", "role", "created"} for t in listed["tokens"])
    assert ci_token not in json.dumps(listed)

    # the new tokens work with their roles
    ci_file = tmp_path / "ci.token"
    ci_file.write_text(ci_token)
    ops_file = tmp_path / "ops.token"
    ops_file.write_text(made["token"])
    assert run(["--admin", fake.url, "--token-file", str(ci_file), "key", "list"]).returncode == 0
    p = run(["--admin", fake.url, "--token-file", str(ci_file), "key", "create", "--name", "x"])
    assert p.returncode == 1 and "(HTTP 403)" in p.stderr
    assert run(["--admin", fake.url, "--token-file", str(ops_file), "key", "create", "--name", "x"]).returncode == 0
    p = run(["--admin", fake.url, "--token-file", str(ops_file), "token", "create", "--name", "y", "--role", "admin"])
    assert p.returncode == 1 and "(HTTP 403)" in p.stderr
    p = run(["--admin", fake.url, "--token-file", str(ops_file), "token", "delete", "ci"])
    assert p.returncode == 1 and "(HTTP 403)" in p.stderr

    p = ctl(fake, token_file, "token", "create", "--name", "ci", "--role", "admin")
    assert p.returncode == 1 and "(HTTP 409)" in p.stderr
    p = ctl(fake, token_file, "token", "delete", "ci")
    assert p.returncode == 0 and "ci" in p.stdout and "deleted" in p.stdout
    p = run(["--admin", fake.url, "--token-file", str(ci_file), "key", "list"])
    assert p.returncode == 1 and "(HTTP 401)" in p.stderr
    assert ok_json(ctl(fake, token_file, "token", "delete", "ops", json_mode=True)) == {"deleted": "ops"}
    p = ctl(fake, token_file, "token", "delete", "ops")
    assert p.returncode == 1 and "(HTTP 404)" in p.stderr


# --- logs, usage, audit -----------------------------------------------------------------

def record(i, key="key_aaa", model="gpt-4o", status=200, node="n1", minutes_ago=10):
    import datetime
    ts = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=minutes_ago)
    return {"ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{i % 1000:03d}Z", "request_id": f"req{i}", "node": node,
            "key_id": key, "model": model, "endpoint": "chat", "provider": "oai", "status": status,
            "input_tokens": 10 * i, "cached_input_tokens": 0, "output_tokens": i, "reasoning_tokens": 0,
            "usd": 0.001 * i, "latency_ms": 100 + i, "ttfb_ms": 20, "stream": False, "estimated": False}


def test_logs(fake, token_file):
    fake.state.records = [record(1), record(2, status=429), record(3, key="key_bbb", model="o3"),
                          record(4, minutes_ago=60 * 30)]
    p = ctl(fake, token_file, "logs")
    assert p.returncode == 0, p.stderr
    rows = p.stdout.splitlines()
    assert rows[0].split() == ["TS", "REQUEST_ID", "KEY", "MODEL", "STATUS", "INPUT_TOKENS", "OUTPUT_TOKENS",
                               "LATENCY_MS"]
    assert [r.split()[1] for r in rows[1:]] == ["req1", "req2", "req3"]  # req4 is older than 24h
    assert rows[2].split()[4] == "429" and rows[1].split()[5] == "10"

    body = ok_json(ctl(fake, token_file, "logs", "--key", "key_aaa", "--status", "4xx", json_mode=True))
    assert [r["request_id"] for r in body["records"]] == ["req2"] and body["next_cursor"] is None
    assert set(body["records"][0]) == {"ts", "request_id", "node", "key_id", "model", "endpoint", "provider",
                                       "status", "input_tokens", "cached_input_tokens", "output_tokens",
                                       "reasoning_tokens", "usd", "latency_ms", "ttfb_ms", "stream", "estimated"}
    body = ok_json(ctl(fake, token_file, "logs", "--since", "2d", "--limit", "2", json_mode=True))
    assert len(body["records"]) == 2 and body["next_cursor"]
    p = ctl(fake, token_file, "logs", "--since", "2d", "--limit", "2")
    assert f"--cursor {body['next_cursor']}" in p.stdout
    rest = ok_json(ctl(fake, token_file, "logs", "--since", "2d", "--limit", "2", "--cursor", body["next_cursor"],
                       json_mode=True))
    assert len(rest["records"]) == 2 and rest["next_cursor"] is None
    assert ok_json(ctl(fake, token_file, "logs", "--model", "o3", json_mode=True))["records"][0]["model"] == "o3"
    p = ctl(fake, token_file, "logs", "--since", "yesterday")
    assert p.returncode == 1 and "(HTTP 400)" in p.stderr
    path = [r for r in fake.state.requests if r[1] == "/admin/v1/logs"]
    assert path, "logs goes to /admin/v1/logs"


def test_usage(fake, token_file):
    fake.state.records = [record(1), record(2, model="o3"), record(3, key="key_bbb", node="n2")]
    body = ok_json(ctl(fake, token_file, "usage", "--by", "model", json_mode=True))
    assert set(body) >= {"from", "to", "totals", "groups"}
    assert body["totals"]["requests"] == 3 and body["totals"]["input_tokens"] == 60
    assert {g["group"]: g["requests"] for g in body["groups"]} == {"gpt-4o": 2, "o3": 1}
    assert set(body["groups"][0]) == {"group", "requests", "input_tokens", "output_tokens", "usd"}
    keyed = ok_json(ctl(fake, token_file, "usage", "--key", "key_bbb", "--since", "1h", json_mode=True))
    assert keyed["totals"]["requests"] == 1 and keyed["groups"] == []

    p = ctl(fake, token_file, "usage", "--by", "node")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("from ")
    assert lines[1].split() == ["GROUP", "REQUESTS", "INPUT_TOKENS", "OUTPUT_TOKENS", "USD"]
    assert [l.split()[0] for l in lines[2:]] == ["n1", "n2", "TOTAL"]
    assert lines[-1].split()[1] == "3"


def test_audit(fake, token_file, tmp_path):
    assert ctl(fake, token_file, "key", "create", "--name", "aud").returncode == 0
    assert ctl(fake, token_file, "logs", "--key", "key_zzz").returncode == 0
    body = ok_json(ctl(fake, token_file, "audit", "--since", "1h", json_mode=True))
    actions = [e["action"] for e in body["entries"]]
    assert "POST /admin/v1/keys" in actions and "GET /admin/v1/logs" in actions
    logs_entry = next(e for e in body["entries"] if e["action"] == "GET /admin/v1/logs")
    assert logs_entry["target"] == "key_zzz" and logs_entry["role"] == "admin" and logs_entry["status"] == 200
    assert set(logs_entry) >= {"ts", "node", "token_name", "role", "action", "target", "status", "ip", "request_id"}
    p = ctl(fake, token_file, "audit")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].split() == ["TS", "TOKEN", "ROLE", "ACTION", "TARGET", "STATUS", "IP",
                                                "REQUEST_ID"]
    assert "127.0.0.0/24" in p.stdout
    ops = tmp_path / "ops.token"
    ops.write_text(OPERATOR_TOKEN)
    p = run(["--admin", fake.url, "--token-file", str(ops), "audit"])
    assert p.returncode == 1 and "(HTTP 403)" in p.stderr
    viewer = tmp_path / "viewer.token"
    viewer.write_text(VIEWER_TOKEN)
    assert run(["--admin", fake.url, "--token-file", str(viewer), "audit"]).returncode == 0


def test_version():
    p = run(["--version"])
    assert p.returncode == 0 and p.stdout.startswith("llmrelayctl ")


# --- providers --------------------------------------------------------------------------

def test_provider_set_show_list_delete_text(fake, token_file):
    p = set_openai(fake, token_file, extra=["--priority", "5", "--weight", "3", "--region", "eu"])
    assert p.returncode == 0, p.stderr
    assert "name:" in p.stdout and "oai" in p.stdout
    assert "\u2026" + UPSTREAM_KEYS[0][-4:] in p.stdout
    stored = fake.state.providers["oai"]
    assert stored["api_keys"] == UPSTREAM_KEYS[:2]
    assert stored["models"] == ["gpt-4o", "gpt-4o-mini"]
    assert stored["map"] == {"gpt4": "gpt-4o", "fast": "gpt-4o-mini"}
    assert (stored["priority"], stored["weight"], stored["region"]) == (5, 3, "eu")

    p = ctl(fake, token_file, "provider", "set", "claude", "--type", "anthropic", "--base-url",
            "https://api.anthropic.com", "--api-key", UPSTREAM_KEYS[2], "--models", "claude-sonnet-4")
    assert p.returncode == 0, p.stderr

    p = ctl(fake, token_file, "provider", "show", "oai")
    assert p.returncode == 0, p.stderr
    lines = dict(line.split(":", 1) for line in p.stdout.splitlines())
    assert lines["type"].strip() == "openai"
    assert lines["base_url"].strip() == "https://api.openai.com/v1"
    assert lines["priority"].strip() == "5"
    assert lines["region"].strip() == "eu"
    assert "gpt4=gpt-4o" in lines["map"]
    # values aligned in one column
    assert len({line.index(line.split(":", 1)[1].strip()) for line in p.stdout.splitlines()}) == 1

    p = ctl(fake, token_file, "provider", "list")
    assert p.returncode == 0, p.stderr
    rows = p.stdout.splitlines()
    assert rows[0].split()[:2] == ["NAME", "TYPE"]
    assert [r.split()[0] for r in rows[1:]] == ["claude", "oai"]
    assert rows[1].index("anthropic") == rows[2].index("openai") == rows[0].index("TYPE")

    p = ctl(fake, token_file, "provider", "delete", "oai")
    assert p.returncode == 0, p.stderr
    assert "oai" in p.stdout and "deleted" in p.stdout
    assert "oai" not in fake.state.providers
    p = ctl(fake, token_file, "provider", "show", "oai")
    assert p.returncode == 1
    assert "(HTTP 404)" in p.stderr


def test_provider_json(fake, token_file):
    body = ok_json(set_openai(fake, token_file, json_mode=True))
    assert body["name"] == "oai"
    assert body["api_keys"] == ["\u2026" + k[-4:] for k in UPSTREAM_KEYS[:2]]
    assert body["priority"] == 0 and body["weight"] == 1 and body["region"] is None
    assert body["map"] == {"gpt4": "gpt-4o", "fast": "gpt-4o-mini"}
    assert set(body) >= {"name", "type", "base_url", "api_keys", "models", "map", "priority", "weight", "region",
                         "updated_at"}

    listed = ok_json(ctl(fake, token_file, "provider", "list", json_mode=True))
    assert [p["name"] for p in listed["providers"]] == ["oai"]
    shown = ok_json(ctl(fake, token_file, "provider", "show", "oai", json_mode=True))
    assert shown == listed["providers"][0]
    assert ok_json(ctl(fake, token_file, "provider", "delete", "oai", json_mode=True)) == {"deleted": "oai"}
    assert ok_json(ctl(fake, token_file, "provider", "list", json_mode=True)) == {"providers": []}


def test_provider_set_replaces_whole_record(fake, token_file):
    assert set_openai(fake, token_file, extra=["--region", "us", "--priority", "9"]).returncode == 0
    again = ok_json(ctl(fake, token_file, "provider", "set", "oai", "--type", "openai", "--base-url",
                        "http://127.0.0.1:1/v1", "--api-key", UPSTREAM_KEYS[3], "--models", "m1",
                        json_mode=True))
    assert again["map"] == {} and again["region"] is None and again["priority"] == 0
    assert again["api_keys"] == ["\u2026" + UPSTREAM_KEYS[3][-4:]]
    same = ok_json(ctl(fake, token_file, "provider", "set", "oai", "--type", "openai", "--base-url",
                       "http://127.0.0.1:1/v1", "--api-key", UPSTREAM_KEYS[3], "--models", "m1",
                       json_mode=True))
    again.pop("updated_at"), same.pop("updated_at")
    assert again == same


def test_provider_server_side_validation_exit_1(fake, token_file):
    p = ctl(fake, token_file, "provider", "set", "oai", "--type", "openai", "--base-url", "https://x/v1",
            "--api-key", UPSTREAM_KEYS[0], "--models", "m", "--weight", "-1")
    assert p.returncode == 1
    assert "weight" in p.stderr and "(HTTP 400)" in p.stderr


def test_provider_empty_list_text(fake, token_file):
    p = ctl(fake, token_file, "provider", "list")
    assert p.returncode == 0
    assert p.stdout.split()[0] == "NAME"


# --- keys -------------------------------------------------------------------------------

def test_key_create_text(fake, token_file):
    p = ctl(fake, token_file, "key", "create", "--name", "team-a")
    assert p.returncode == 0, p.stderr
    lines = dict(line.split(":", 1) for line in p.stdout.splitlines() if line.startswith(("id:", "key:")))
    kid, secret = lines["id"].strip(), lines["key"].strip()
    assert kid.startswith("key_") and secret.startswith("sk-lr-")
    assert "not be shown again" in p.stdout
    # the secret is never shown again
    assert secret not in ctl(fake, token_file, "key", "show", kid).stdout
    assert secret not in ctl(fake, token_file, "key", "list").stdout
    assert secret not in ctl(fake, token_file, "key", "list", json_mode=True).stdout
    assert fake.state.keys[kid]["prefix"] == secret[:10]


def test_key_create_json_and_limits(fake, token_file):
    created = ok_json(ctl(fake, token_file, "key", "create", "--name", "team-b", "--budget-tokens", "1000000",
                          "--budget-usd", "25.5", "--rpm", "60", "--tpm", "100000", "--models", "gpt-4o-mini,gpt-4o",
                          "--expires", "2030-01-01T00:00:00Z", json_mode=True))
    assert created["id"].startswith("key_") and created["key"].startswith("sk-lr-")
    shown = ok_json(ctl(fake, token_file, "key", "show", created["id"], json_mode=True))
    assert "key" not in shown and created["key"] not in json.dumps(shown)
    assert shown["status"] == "active"
    assert shown["limits"] == {"budget_tokens": 1000000, "budget_usd": 25.5, "rpm": 60, "tpm": 100000,
                               "models": ["gpt-4o-mini", "gpt-4o"], "expires": "2030-01-01T00:00:00Z"}
    assert shown["spent"] == {"requests": 0, "input_tokens": 0, "output_tokens": 0, "usd": 0}
    assert shown["remaining"] == {"tokens": 1000000, "usd": 25.5}

    bare = ok_json(ctl(fake, token_file, "key", "create", "--name", "bare", json_mode=True))
    limits = ok_json(ctl(fake, token_file, "key", "show", bare["id"], json_mode=True))["limits"]
    assert limits == {"budget_tokens": None, "budget_usd": None, "rpm": None, "tpm": None, "models": None,
                      "expires": None}


def test_key_list_show_revoke(fake, token_file):
    a = ok_json(ctl(fake, token_file, "key", "create", "--name", "alpha", "--budget-usd", "10", json_mode=True))
    b = ok_json(ctl(fake, token_file, "key", "create", "--name", "beta", json_mode=True))

    p = ctl(fake, token_file, "key", "list")
    assert p.returncode == 0, p.stderr
    rows = p.stdout.splitlines()
    assert rows[0].split()[:3] == ["ID", "NAME", "STATUS"]
    assert {r.split()[0] for r in rows[1:]} == {a["id"], b["id"]}

    listed = ok_json(ctl(fake, token_file, "key", "list", json_mode=True))
    assert {k["id"] for k in listed["keys"]} == {a["id"], b["id"]}

    p = ctl(fake, token_file, "key", "show", a["id"])
    assert p.returncode == 0, p.stderr
    lines = {k: v.strip() for k, v in (line.split(":", 1) for line in p.stdout.splitlines())}
    assert lines["id"] == a["id"] and lines["name"] == "alpha" and lines["status"] == "active"
    assert lines["budget_usd"] == "10" and lines["rpm"] == "unlimited"

    p = ctl(fake, token_file, "key", "revoke", a["id"])
    assert p.returncode == 0, p.stderr
    assert "revoked" in p.stdout
    assert ok_json(ctl(fake, token_file, "key", "show", a["id"], json_mode=True))["status"] == "revoked"
    assert ok_json(ctl(fake, token_file, "key", "revoke", a["id"], json_mode=True))["status"] == "revoked"
    assert ok_json(ctl(fake, token_file, "key", "show", b["id"], json_mode=True))["status"] == "active"


def test_key_not_found_exit_1(fake, token_file):
    for args in (["key", "show", "key_nothere"], ["key", "revoke", "key_nothere"]):
        p = ctl(fake, token_file, *args)
        assert p.returncode == 1
        assert p.stderr.strip() == "llmrelayctl: key not found (HTTP 404)"


# --- auth, reachability, environment ----------------------------------------------------

def test_bad_token_exit_1(fake, tmp_path):
    bad = tmp_path / "bad.token"
    bad.write_text("not-the-token\n")
    p = run(["--admin", fake.url, "--token-file", str(bad), "key", "list"])
    assert p.returncode == 1
    assert "(HTTP 401)" in p.stderr
    assert "not-the-token" not in p.stderr + p.stdout
    p = run(["--admin", fake.url, "key", "list"])  # no token at all
    assert p.returncode == 1 and "(HTTP 401)" in p.stderr


def test_viewer_cannot_write_exit_1(fake, tmp_path):
    viewer = tmp_path / "viewer.token"
    viewer.write_text(VIEWER_TOKEN)
    p = run(["--admin", fake.url, "--token-file", str(viewer), "key", "create", "--name", "x"])
    assert p.returncode == 1 and "(HTTP 403)" in p.stderr
    p = run(["--admin", fake.url, "--token-file", str(viewer), "key", "list"])
    assert p.returncode == 0, p.stderr


def test_etcd_unavailable_exit_1(fake, token_file):
    fake.state.etcd_up = False
    p = set_openai(fake, token_file)
    assert p.returncode == 1 and "(HTTP 503)" in p.stderr
    p = ctl(fake, token_file, "key", "list")
    assert p.returncode == 0


def test_unreachable_exit_3(token_file):
    url = f"http://127.0.0.1:{closed_port()}"
    p = run(["--admin", url, "--token-file", token_file, "provider", "list"])
    assert p.returncode == 3
    assert url in p.stderr


def test_default_admin_url(token_file):
    p = run(["--token-file", token_file, "key", "list"])
    if p.returncode == 3:
        assert "http://127.0.0.1:9090" in p.stderr
    else:
        pytest.skip("something listens on 127.0.0.1:9090")


def test_missing_token_file_exit_2(fake, tmp_path):
    p = run(["--admin", fake.url, "--token-file", str(tmp_path / "nope"), "key", "list"])
    assert p.returncode == 2 and "nope" in p.stderr


def test_token_file_newline_handling(fake, tmp_path):
    plain = tmp_path / "plain.token"
    plain.write_text(TOKEN)
    assert run(["--admin", fake.url, "--token-file", str(plain), "key", "list"]).returncode == 0
    crlf = tmp_path / "crlf.token"
    crlf.write_text(TOKEN + "\r\n")
    assert run(["--admin", fake.url, "--token-file", str(crlf), "key", "list"]).returncode == 0
    two = tmp_path / "two.token"
    two.write_text(TOKEN + "\n\n")
    p = run(["--admin", fake.url, "--token-file", str(two), "key", "list"])
    assert p.returncode != 0


def test_env_vars(fake, token_file):
    env = {"LLMRELAY_ADMIN": fake.url, "LLMRELAY_TOKEN_FILE": token_file}
    p = run(["provider", "list", "--json"], env=env)
    assert ok_json(p) == {"providers": []}
    # flags win over the environment
    env_bad = {"LLMRELAY_ADMIN": f"http://127.0.0.1:{closed_port()}", "LLMRELAY_TOKEN_FILE": "/nonexistent"}
    p = run(["--admin", fake.url, "--token-file", token_file, "provider", "list"], env=env_bad)
    assert p.returncode == 0, p.stderr
    p = run(["provider", "list"], env={"LLMRELAY_ADMIN": env_bad["LLMRELAY_ADMIN"],
                                       "LLMRELAY_TOKEN_FILE": token_file})
    assert p.returncode == 3


def test_global_flags_after_command(fake, token_file):
    p = run(["provider", "list", "--admin", fake.url, "--json", "--token-file", token_file])
    assert ok_json(p) == {"providers": []}
    p = run(["key", "--admin=" + fake.url, "create", "--token-file=" + token_file, "--name", "late", "--json"])
    assert ok_json(p)["name"] == "late"


def test_admin_url_with_trailing_slash(fake, token_file):
    p = run(["--admin", fake.url + "/", "--token-file", token_file, "--json", "key", "list"])
    assert ok_json(p) == {"keys": []}


def test_non_json_error_body(token_file):
    """A server that is not the admin API (here a bare HTTP responder) gives exit 1."""
    import http.server
    import threading

    class Plain(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(502)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"bad")

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Plain)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        p = run(["--admin", f"http://127.0.0.1:{srv.server_address[1]}", "--token-file", token_file, "key", "list"])
        assert p.returncode == 1 and "HTTP 502" in p.stderr
    finally:
        srv.shutdown()
        srv.server_close()


# --- cluster status and node drain ------------------------------------------------------

@pytest.mark.parametrize("args", [["cluster", "--help"], ["cluster", "status", "--help"], ["node", "--help"],
                                  ["node", "drain", "--help"]])
def test_cluster_node_help(args):
    p = run(args)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: llmrelayctl")


@pytest.mark.parametrize("args", [["cluster"], ["cluster", "bogus"], ["cluster", "status", "extra"],
                                  ["cluster", "status", "--bogus"], ["node"], ["node", "bogus"],
                                  ["node", "drain", "a", "b"], ["node", "drain", "--bogus"], ["node", "drain", ""]])
def test_cluster_node_usage_errors_exit_2(fake, token_file, args):
    p = run(["--admin", fake.url, "--token-file", token_file] + args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.strip(), "a usage error says what is wrong"
    assert not any(path in ("/admin/v1/drain", "/admin/v1/cluster") for _, path in fake.state.requests)
    assert not fake.state.draining


def test_cluster_status(fake, token_file):
    fake.state.members.append({"name": "other-1", "region": "eu", "version": "0.0.0-fake", "status": "suspect",
                               "gossip": "127.0.0.1:7946", "keys_owned": 3, "load": None})
    p = ctl(fake, token_file, "cluster", "status")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["NAME", "REGION", "VERSION", "STATUS", "GOSSIP", "KEYS", "LOAD"], p.stdout
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["fake"] == ["fake", "local", "0.0.0-fake", "alive", "-", "0", "-"], p.stdout
    assert rows["other-1"] == ["other-1", "eu", "0.0.0-fake", "suspect", "127.0.0.1:7946", "3", "-"], p.stdout
    got = ok_json(ctl(fake, token_file, "cluster", "status", json_mode=True))
    assert [m["name"] for m in got["members"]] == ["fake", "other-1"]
    for m in got["members"]:
        assert set(m) == {"name", "region", "version", "status", "gossip", "keys_owned", "load"}
    assert fake.state.requests[-1] == ("GET", "/admin/v1/cluster")
    assert fake.state.audit[-1]["action"] == "GET /admin/v1/cluster"


def test_node_drain_self(fake, token_file):
    p = ctl(fake, token_file, "node", "drain")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("node fake is draining"), p.stdout
    assert fake.state.draining
    assert fake.state.audit[-1]["action"] == "POST /admin/v1/drain"
    assert fake.state.audit[-1]["target"] == "fake" and fake.state.audit[-1]["status"] == 202
    # idempotent, by name, and --json prints the answer as it came
    assert ok_json(ctl(fake, token_file, "node", "drain", "fake", json_mode=True)) == {"node": "fake", "draining": True}
    assert fake.state.requests[-1] == ("POST", "/admin/v1/drain")


def test_node_drain_other_and_unknown(fake, token_file):
    fake.state.members.append({"name": "peer-2", "region": "local", "version": "0.0.0-fake", "status": "alive",
                               "gossip": "127.0.0.1:7947", "keys_owned": 0, "load": None})
    p = ctl(fake, token_file, "node", "drain", "peer-2")
    assert p.returncode == 1 and "needs peer RPC" in p.stderr and "(HTTP 501)" in p.stderr, p.stderr
    p = ctl(fake, token_file, "node", "drain", "nobody")
    assert p.returncode == 1 and "unknown node nobody" in p.stderr and "(HTTP 404)" in p.stderr, p.stderr
    p = ctl(fake, token_file, "node", "drain", "bad name!")
    assert p.returncode == 1 and "(HTTP 400)" in p.stderr, p.stderr
    assert not fake.state.draining
    assert [a["target"] for a in fake.state.audit[-3:]] == ["peer-2", "nobody", None]


def test_node_drain_roles(fake, tmp_path):
    f = tmp_path / "t.token"
    f.write_text(VIEWER_TOKEN)
    p = run(["--admin", fake.url, "--token-file", str(f), "node", "drain"])
    assert p.returncode == 1 and "(HTTP 403)" in p.stderr, p.stderr
    assert not fake.state.draining
    p = run(["--admin", fake.url, "--token-file", str(f), "cluster", "status"])
    assert p.returncode == 0, p.stderr
    f.write_text(OPERATOR_TOKEN)
    p = run(["--admin", fake.url, "--token-file", str(f), "node", "drain"])
    assert p.returncode == 0, p.stderr
    assert fake.state.draining


def test_node_drain_unreachable_exit_3(token_file):
    p = run(["--admin", f"http://127.0.0.1:{closed_port()}", "--token-file", token_file, "node", "drain"])
    assert p.returncode == 3, (p.stdout, p.stderr)
