# ctest-labels: sanitize
"""Roles and audit (issue 3): admin tokens with roles made by `token create`; a viewer
cannot change anything (403), an operator may change keys and providers but not prices or
tokens (403), an admin may do everything; every admin API call made in this file — reads
of logs and usage, refused and unauthenticated calls included — has an audit entry (time,
token name, role, action, target, status, IP truncated to /24) in etcd under
<prefix>audit/, read through GET /admin/v1/audit, `llmrelayctl audit --json` and a direct
etcd dump, with no token in it; entries older than 7 days are swept (test clock).

Each call's answer carries x-request-id, which its audit entry records: that is how a call
and its entry are matched."""

import json
import secrets
import subprocess

import pytest

import harness
from harness import Route, TestClock, wait_for, wait_key_visible

DAY_MS = 86400 * 1000
EXTRA = {}  # more clients and names made by the tests, for the audit test


@pytest.fixture(scope="module")
def clock(workdir):
    return TestClock(workdir)


@pytest.fixture(scope="module")
def anode(nodes, mock, clock):
    return nodes.start("a1", env=clock.env())


@pytest.fixture(scope="module")
def admins(anode):
    """role -> Admin client holding a token of that role, made by `token create` (the
    node's bootstrap admin token is anode.admin)."""
    out = {}
    for role in ("admin", "operator", "viewer"):
        name = "%s-%s" % (role, harness.rand_id())
        got = anode.admin.create_token(name, role)
        assert got["name"] == name and got["role"] == role, got
        assert isinstance(got["token"], str) and len(got["token"]) >= 20
        a = anode.admin.as_token(got["token"])
        a.token_name = name
        out[role] = a
    # the tokens reach the node's snapshot through etcd
    for role, a in out.items():
        wait_for(lambda a=a: a.request("GET", "/admin/v1/providers").status_code == 200, 10,
                 "%s token usable" % role)
    return out


def forbidden(r):
    assert r.status_code == 403, "%s %s -> %d %s" % (r.request.method, r.request.url.path,
                                                     r.status_code, r.text[:200])
    err = r.json()["error"]
    assert err["code"] == "forbidden" and err["type"] == "permission_error", err


def fixtures_for(anode, mock):
    """Things to act on: a provider, a key, a price, a spare token."""
    tag = harness.rand_id()
    route = Route(anode, mock, tag=tag)
    anode.admin.put_price(route.model, 1.0, 2.0)
    spare = "spare-" + harness.rand_id()
    anode.admin.create_token(spare, "viewer")
    return route, spare


def reads(a, route):
    """Every config read; allowed to every role."""
    for path in ("/admin/v1/providers", "/admin/v1/providers/" + route.provider,
                 "/admin/v1/keys", "/admin/v1/keys/" + route.key_id, "/admin/v1/prices",
                 "/admin/v1/prices/" + route.model, "/admin/v1/tokens"):
        r = a.request("GET", path)
        assert r.status_code == 200, "%s: GET %s -> %d %s" % (a.token_name, path,
                                                              r.status_code, r.text[:200])


def log_reads(a, route):
    """Reads of logs and usage; allowed to every role (and audited)."""
    for path, q in (("/admin/v1/logs", {"key": route.key_id, "since": "1h"}),
                    ("/admin/v1/usage", {"key": route.key_id, "since": "1h", "by": "model"})):
        r = a.request("GET", path, params=q)
        assert r.status_code == 200, "%s: GET %s -> %d %s" % (a.token_name, path,
                                                              r.status_code, r.text[:200])


def test_viewer_cannot_change_anything(anode, mock, admins):
    v = admins["viewer"]
    route, spare = fixtures_for(anode, mock)
    reads(v, route)
    assert v.request("GET", "/admin/v1/audit", params={"since": "1h"}).status_code == 200
    newp = "p-new-" + harness.rand_id()
    prov = {"type": "openai", "base_url": mock.base_url, "api_keys": ["sk-viewer-1234567890"],
            "models": ["m-x"]}
    forbidden(v.request("PUT", "/admin/v1/providers/" + newp, prov))
    forbidden(v.request("PUT", "/admin/v1/providers/" + route.provider, prov))
    forbidden(v.request("DELETE", "/admin/v1/providers/" + route.provider))
    forbidden(v.request("POST", "/admin/v1/keys", {"name": "by-viewer"}))
    forbidden(v.request("POST", "/admin/v1/keys/%s/revoke" % route.key_id, {}))
    forbidden(v.request("POST", "/admin/v1/keys/%s/rotate" % route.key_id, {"grace": "1h"}))
    forbidden(v.request("PUT", "/admin/v1/prices/" + route.model, {"input": 9, "output": 9}))
    forbidden(v.request("DELETE", "/admin/v1/prices/" + route.model))
    forbidden(v.request("POST", "/admin/v1/tokens", {"name": "by-viewer", "role": "admin"}))
    forbidden(v.request("DELETE", "/admin/v1/tokens/" + spare))
    # nothing changed
    a = anode.admin
    assert a.request("GET", "/admin/v1/providers/" + newp).status_code == 404
    assert a.request("GET", "/admin/v1/providers/" + route.provider).json()["api_keys"] != \
        ["…7890"]
    k = a.key(route.key_id)
    assert k["status"] == "active" and k["prefix"] == route.secret[:10], k
    assert a.request("GET", "/admin/v1/prices/" + route.model).json()["input"] == 1.0
    names = [t["name"] for t in a.request("GET", "/admin/v1/tokens").json()["tokens"]]
    assert spare in names and "by-viewer" not in names
    assert not [x for x in a.request("GET", "/admin/v1/keys").json()["keys"]
                if x["name"] == "by-viewer"]
    wait_key_visible(anode, route.secret, route.model)
    log_reads(v, route)


def test_operator_keys_and_providers_not_prices_or_tokens(anode, mock, admins):
    o = admins["operator"]
    route, spare = fixtures_for(anode, mock)
    reads(o, route)
    newp = "p-op-" + harness.rand_id()
    r = o.request("PUT", "/admin/v1/providers/" + newp,
                  {"type": "openai", "base_url": mock.base_url,
                   "api_keys": ["sk-operator-1234567890"], "models": ["m-op-" + newp]})
    assert r.status_code == 200, r.text[:200]
    r = o.request("POST", "/admin/v1/keys", {"name": "by-operator", "rpm": 5})
    assert r.status_code == 201, r.text[:200]
    kid = r.json()["id"]
    assert o.request("POST", "/admin/v1/keys/%s/rotate" % kid, {"grace": "1h"}).status_code \
        == 200
    assert o.request("POST", "/admin/v1/keys/%s/revoke" % kid, {}).status_code == 200
    assert o.request("DELETE", "/admin/v1/providers/" + newp).status_code == 200
    forbidden(o.request("PUT", "/admin/v1/prices/" + route.model, {"input": 9, "output": 9}))
    forbidden(o.request("DELETE", "/admin/v1/prices/" + route.model))
    forbidden(o.request("POST", "/admin/v1/tokens", {"name": "by-operator", "role": "viewer"}))
    forbidden(o.request("POST", "/admin/v1/tokens", {"name": "by-operator", "role": "admin"}))
    forbidden(o.request("DELETE", "/admin/v1/tokens/" + spare))
    forbidden(o.request("GET", "/admin/v1/audit", params={"since": "1h"}))
    a = anode.admin
    assert a.request("GET", "/admin/v1/prices/" + route.model).json()["input"] == 1.0
    names = [t["name"] for t in a.request("GET", "/admin/v1/tokens").json()["tokens"]]
    assert spare in names and "by-operator" not in names
    log_reads(o, route)


def test_admin_token_does_everything(anode, mock, admins):
    ad = admins["admin"]
    route, spare = fixtures_for(anode, mock)
    reads(ad, route)
    assert ad.request("GET", "/admin/v1/audit", params={"since": "1h"}).status_code == 200
    assert ad.request("PUT", "/admin/v1/prices/" + route.model,
                      {"input": 4.0, "output": 8.0}).status_code == 200
    assert anode.admin.request("GET", "/admin/v1/prices/" + route.model).json()["input"] == 4.0
    assert ad.request("DELETE", "/admin/v1/prices/" + route.model).status_code == 200
    r = ad.request("POST", "/admin/v1/tokens", {"name": "by-admin-" + harness.rand_id(),
                                                "role": "operator"})
    assert r.status_code == 201, r.text[:200]
    made = anode.admin.as_token(r.json()["token"])
    made.token_name = r.json()["name"]
    wait_for(lambda: made.request("GET", "/admin/v1/keys").status_code == 200, 10,
             "token made by an admin token usable")
    assert ad.request("DELETE", "/admin/v1/tokens/" + made.token_name).status_code == 200
    wait_for(lambda: made.request("GET", "/admin/v1/keys").status_code == 401, 10,
             "deleted token refused")
    r = made.request("GET", "/admin/v1/keys")
    assert r.json()["error"]["code"] == "invalid_token"
    assert ad.request("POST", "/admin/v1/keys/%s/revoke" % route.key_id, {}).status_code == 200
    assert ad.request("DELETE", "/admin/v1/providers/" + route.provider).status_code == 200
    EXTRA["made"] = made
    log_reads(ad, route)


def test_unknown_token_refused(anode):
    bogus = anode.admin.as_token("lrt-" + secrets.token_urlsafe(32))
    bogus.token_name = None
    for path in ("/admin/v1/keys", "/admin/v1/audit", "/admin/v1/logs"):
        r = bogus.request("GET", path)
        assert r.status_code == 401, r.text[:200]
        assert r.json()["error"]["code"] == "invalid_token"
    r = bogus.request("POST", "/admin/v1/keys", {"name": "x"})
    assert r.status_code == 401
    EXTRA["bogus"] = bogus  # its calls are checked by the audit test


def ctl(node, token, *args):
    tf = node.directory + "/ctl-%s.token" % harness.rand_id()
    with open(tf, "w") as f:
        f.write(token + "\n")
    return subprocess.run([harness.binary("llmrelayctl"), "--admin", node.admin_url,
                           "--token-file", tf, "--json"] + list(args),
                          capture_output=True, text=True, timeout=30)


def test_cli_token_create_and_roles(anode, admins):
    name = "cli-viewer-" + harness.rand_id()
    p = ctl(anode, anode.admin_token, "token", "create", "--name", name, "--role", "viewer")
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["name"] == name and got["role"] == "viewer" and got["token"], got
    wait_for(lambda: ctl(anode, got["token"], "key", "list").returncode == 0, 10,
             "CLI-made viewer token usable")
    p = ctl(anode, got["token"], "key", "create", "--name", "by-cli-viewer")
    assert p.returncode == 1 and "(HTTP 403)" in p.stderr, (p.returncode, p.stderr)
    assert got["token"] not in p.stderr + p.stdout
    EXTRA["cli_viewer_name"] = name


def all_calls(anode, admins):
    """(call, Admin or "bootstrap") of every admin call this file made."""
    calls = [(c, "bootstrap") for c in anode.admin.calls]
    for a in list(admins.values()) + [EXTRA.get("made"), EXTRA.get("bogus")]:
        if a is not None:
            calls += [(c, a) for c in a.calls]
    return calls


def test_audit_entry_for_every_call(anode, etcd, admins, clock):
    calls = all_calls(anode, admins)
    assert len(calls) > 20
    for c, _ in calls:
        assert c["request_id"], "admin answer without x-request-id: %r" % c
    want = {c["request_id"]: (c, a) for c, a in calls}
    role_of = {id(admins[r]): r for r in ("admin", "operator", "viewer")}
    if "made" in EXTRA:
        role_of[id(EXTRA["made"])] = "operator"

    def entries():
        got = {e["request_id"]: e for e in anode.admin.audit(since="1h")}
        return set(want) <= set(got) and got
    try:
        got = wait_for(entries, 10, "an audit entry for every admin call")
    except AssertionError:
        got = {e["request_id"]: e for e in anode.admin.audit(since="1h")}
        missing = [c for rid, (c, _) in want.items() if rid not in got]
        raise AssertionError("%d of %d admin calls have no audit entry, e.g. %r" % (
            len(missing), len(want), missing[:5]))
    now = clock.now_ms()
    for rid, (c, a) in want.items():
        e = got[rid]
        assert e["status"] == c["status"], (c, e)
        assert e["action"].startswith(c["method"] + " /admin/v1/"), (c, e)
        assert e["ip"] == "127.0.0.0/24", e
        assert now - 3600 * 1000 <= e["ts_ms"] <= now + 1000, (e, now)
        assert e["node"] == anode.name, e
        if c["status"] == 401:  # unknown (or deleted) token: no name, no role
            assert e["role"] in (None, "", "-", "none"), e
            assert a == "bootstrap" or a.token not in json.dumps(e), e
        elif a == "bootstrap":
            assert e["role"] == "admin", e
        else:
            assert e["token_name"] == a.token_name, (c, e)
            assert e["role"] == role_of[id(a)], (c, e)
        # targets name the key acted on
        if c["path"].startswith("/admin/v1/keys/key_"):
            assert e["target"] == c["path"].split("/")[4], (c, e)
    # reads of logs and usage are audited with the key as target
    for rid, (c, a) in want.items():
        if c["path"] in ("/admin/v1/logs", "/admin/v1/usage") and c["status"] == 200:
            assert got[rid]["target"] and got[rid]["target"].startswith("key_"), got[rid]

    # the CLI's calls are audited too, under the CLI token's name
    name = EXTRA["cli_viewer_name"]
    assert [e for e in got.values() if e["token_name"] == name and
            e["action"].startswith("GET /admin/v1/keys")], "no audit entry of the CLI's key list"
    assert [e for e in got.values() if e["token_name"] == name and e["status"] == 403 and
            e["action"].startswith("POST /admin/v1/keys")], "no audit entry of the refused create"

    # llmrelayctl audit --json gives the same entries
    p = ctl(anode, anode.admin_token, "audit", "--since", "1h")
    assert p.returncode == 0, p.stderr
    cli = json.loads(p.stdout)
    assert set(want) <= {e["request_id"] for e in cli["entries"]}

    # in etcd, under <prefix>audit/, with no token in clear
    dump = etcd.range_prefix(anode.prefix + "audit/")
    blob = b"\n".join(dump.values())
    for rid in want:
        assert rid.encode() in blob, "audit entry %s not in etcd" % rid
    everything = b"\n".join(etcd.range_prefix(anode.prefix).values()) + \
        "\n".join(etcd.range_prefix(anode.prefix)).encode()
    for a in [anode.admin, EXTRA.get("made")] + list(admins.values()):
        if a is None:
            continue
        assert a.token.encode() not in everything, "an admin token is in etcd in clear"


def test_zz_audit_swept_after_7_days(anode, etcd, admins, clock):
    """Runs last: ages the audit entries past 7 days; the node's sweep deletes them from
    etcd (by timestamp, not lease), newer ones stay."""
    old = etcd.range_prefix(anode.prefix + "audit/")
    assert len(old) > 20
    old_ids = {c["request_id"] for c, _ in all_calls(anode, admins)}
    clock.advance(6 * DAY_MS, [anode])
    anode.admin.request("GET", "/admin/v1/keys", expect=200)
    assert set(old) <= set(etcd.range_prefix(anode.prefix + "audit/")), \
        "audit entries deleted before 7 days"
    clock.advance(DAY_MS + 3600 * 1000, [anode])
    fresh = anode.admin.request("GET", "/admin/v1/keys", expect=200).headers["x-request-id"]

    def swept():
        now = etcd.range_prefix(anode.prefix + "audit/")
        return not (set(old) & set(now)) and now
    try:
        now = wait_for(swept, 20, "audit entries older than 7 days deleted from etcd")
    except AssertionError:
        left = set(old) & set(etcd.range_prefix(anode.prefix + "audit/"))
        raise AssertionError("%d of %d audit entries older than 7 days still in etcd"
                             % (len(left), len(old)))
    blob = b"\n".join(now.values())
    assert fresh.encode() in blob or wait_for(
        lambda: fresh.encode() in b"\n".join(etcd.range_prefix(anode.prefix + "audit/")
                                             .values()), 10, "the new entry in etcd")
    listed = {e["request_id"] for e in anode.admin.audit(since="30d")}
    assert not (listed & old_ids), "swept entries still listed by /admin/v1/audit"
