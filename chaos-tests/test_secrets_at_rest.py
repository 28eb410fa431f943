# ctest-labels: sanitize
"""Secrets at rest (issue 3): a node started with --secrets-key-file stores upstream API
keys in etcd (and in its snapshot file) only sealed ("enc:v1:..." AES-256-GCM, a fresh
nonce per seal), still relays with them (the mock sees the right key), and no admin answer,
CLI output, metric or log line shows more than an upstream key's last 4 characters; relay
keys and admin tokens are stored only as SHA-256.

Upstream keys here are "sk-" + upper-case letters: nothing else the node prints is
upper-case random text, so any 5-character window of a key found somewhere means more than
its last 4 characters leaked."""

import hashlib
import os
import random
import string
import subprocess

import httpx
import pytest

import harness
from harness import wait_for, wait_key_visible


def upstream_key():
    return "sk-" + "".join(random.choice(string.ascii_uppercase) for _ in range(40))


@pytest.fixture(scope="module")
def key_file(workdir):
    return harness.key_file(workdir, "secrets.key")


@pytest.fixture(scope="module")
def xnode(nodes, mock, key_file):
    return nodes.start("x1", extra_args=["--secrets-key-file", key_file])


class Setup:
    pass


@pytest.fixture(scope="module")
def setup(xnode, mock):
    s = Setup()
    tag = harness.rand_id()
    s.keys = [upstream_key(), upstream_key()]
    s.provider = "p-" + tag
    s.model = "m-" + tag
    s.answers = []  # (what, text) of every admin answer and CLI output seen
    r = xnode.admin.request("PUT", "/admin/v1/providers/" + s.provider,
                            {"type": "openai", "base_url": mock.base_url,
                             "api_keys": [s.keys[0]], "models": [s.model]}, expect=200)
    s.answers.append(("PUT provider", r.text))
    r = xnode.admin.request("POST", "/admin/v1/keys", {"name": "k-" + tag}, expect=201)
    s.answers.append(("POST keys", r.text))
    s.key_id, s.secret = r.json()["id"], r.json()["key"]
    r = xnode.admin.request("POST", "/admin/v1/tokens",
                            {"name": "t-" + tag, "role": "viewer"}, expect=201)
    s.answers.append(("POST tokens", r.text))
    s.token = r.json()["token"]
    wait_key_visible(xnode, s.secret, s.model)
    return s


def leaks(text, keys):
    """The 5-character windows of keys found in text."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return [k[i:i + 5] for k in keys for i in range(len(k) - 4) if k[i:i + 5] in text]


def test_relays_with_sealed_key(xnode, mock, setup):
    with xnode.client() as c:
        r = c.post("/v1/chat/completions", headers={"authorization": "Bearer " + setup.secret},
                   json={"model": setup.model, "max_tokens": 5,
                         "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text[:300]
    assert mock.key_stats(setup.keys[0])["requests"] == 1, \
        "the upstream did not get the (unsealed) upstream key"


def test_etcd_holds_only_sealed_keys_and_hashes(xnode, etcd, setup):
    dump = etcd.range_prefix(xnode.prefix)
    everything = b"\n".join(k.encode() + b"=" + v for k, v in dump.items())
    assert not leaks(everything, setup.keys), "an upstream key is in etcd in clear"
    prov = [v for k, v in dump.items() if k.endswith("/" + setup.provider) and
            "providers" in k]
    assert prov, "no provider record in etcd: %r" % list(dump)
    assert prov[0].count(b"enc:v1:") == 1, prov[0]
    # relay keys and admin tokens: SHA-256 only
    for secret in (setup.secret, setup.token, xnode.admin_token):
        assert secret.encode() not in everything
        assert secret[6:30].encode() not in everything
    assert hashlib.sha256(setup.secret.encode()).hexdigest().encode() in everything, \
        "the relay key is not stored under its SHA-256"


def test_fresh_nonce_per_seal(xnode, etcd, mock, setup):
    """Storing the same upstream key twice gives two different sealed tokens; a second
    key is sealed on its own."""
    def sealed():
        dump = etcd.range_prefix(xnode.prefix)
        v = [v for k, v in dump.items() if k.endswith("/" + setup.provider) and
             "providers" in k][0]
        return sorted(set(t for t in v.split(b"enc:v1:")[1:]))
    before = sealed()
    body = {"type": "openai", "base_url": mock.base_url, "api_keys": setup.keys,
            "models": [setup.model]}
    for _ in range(2):
        r = xnode.admin.request("PUT", "/admin/v1/providers/" + setup.provider, body,
                                expect=200)
        setup.answers.append(("PUT provider (2 keys)", r.text))
        assert r.json()["api_keys"] == ["…" + k[-4:] for k in setup.keys], r.text
    after = sealed()
    assert len(after) == 2 and not set(before) & set(after), (before, after)
    assert not leaks(b"\n".join(etcd.range_prefix(xnode.prefix).values()), setup.keys)


def test_snapshot_file_holds_only_sealed_keys(xnode, setup):
    def snapshot_has_provider():
        blobs = {}
        for root, _, files in os.walk(xnode.data_dir):
            for f in files:
                with open(os.path.join(root, f), "rb") as fh:
                    blobs[os.path.join(root, f)] = fh.read()
        return any(setup.provider.encode() in b for b in blobs.values()) and blobs
    blobs = wait_for(snapshot_has_provider, 10, "the provider in the snapshot file")
    for path, b in blobs.items():
        assert not leaks(b, setup.keys), "upstream key in clear in %s" % path
        assert setup.secret.encode() not in b and setup.token.encode() not in b, path
    assert any(b"enc:v1:" in b for b in blobs.values()), list(blobs)


def ctl(node, *args, json_out=True):
    argv = [harness.binary("llmrelayctl"), "--admin", node.admin_url, "--token-file",
            node.token_file] + (["--json"] if json_out else []) + list(args)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, "%s -> %d %s" % (" ".join(args), p.returncode, p.stderr)
    return p.stdout + p.stderr


def test_no_admin_answer_shows_upstream_keys(xnode, setup):
    a = xnode.admin
    texts = list(setup.answers)
    for path in ("/admin/v1/providers", "/admin/v1/providers/" + setup.provider,
                 "/admin/v1/keys", "/admin/v1/keys/" + setup.key_id, "/admin/v1/prices",
                 "/admin/v1/tokens", "/admin/v1/audit?since=1h", "/admin/v1/logs?since=1h",
                 "/admin/v1/usage?since=1h&by=key"):
        r = a.request("GET", path)
        texts.append(("GET " + path, r.text))
    for path in ("/metrics", "/readyz", "/healthz"):
        r = httpx.get(xnode.admin_url + path, timeout=10,
                      headers={"authorization": "Bearer " + xnode.admin_token})
        texts.append(("GET " + path, r.text))
    for args in (("provider", "list"), ("provider", "show", setup.provider),
                 ("key", "show", setup.key_id), ("audit", "--since", "1h")):
        texts.append(("llmrelayctl --json " + " ".join(args), ctl(xnode, *args)))
        texts.append(("llmrelayctl " + " ".join(args), ctl(xnode, *args, json_out=False)))
    for what, text in texts:
        found = leaks(text, setup.keys)
        assert not found, "%s shows more than the last 4 characters of an upstream key" % what
        assert xnode.admin_token not in text, what
        if what != "POST tokens":  # the only answer that shows the new token, once
            assert setup.token not in text, what
        if what != "POST keys":    # the only answer that shows the new relay key, once
            assert setup.secret not in text, what
    shown = a.request("GET", "/admin/v1/providers/" + setup.provider).json()["api_keys"]
    assert shown == ["…" + k[-4:] for k in setup.keys], shown
    logs = xnode.logs_text()
    assert not leaks(logs, setup.keys), "an upstream key in the node's log"
    assert setup.secret not in logs and setup.token not in logs


def test_restart_still_relays(xnode, mock, setup):
    """The sealed keys are opened again after a restart (from etcd and the snapshot)."""
    assert xnode.restart().running()
    before = mock.key_stats(setup.keys[0])["requests"] + mock.key_stats(setup.keys[1])["requests"]
    with xnode.client() as c:
        for _ in range(4):
            r = c.post("/v1/chat/completions",
                       headers={"authorization": "Bearer " + setup.secret},
                       json={"model": setup.model, "max_tokens": 5,
                             "messages": [{"role": "user", "content": "again"}]})
            assert r.status_code == 200, r.text[:300]
    after = mock.key_stats(setup.keys[0])["requests"] + mock.key_stats(setup.keys[1])["requests"]
    assert after - before == 4
    assert not leaks(xnode.logs_text(), setup.keys)
