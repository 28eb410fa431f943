# ctest-labels: sanitize
"""The 7-day metadata store (issue 3): /admin/v1/logs and /admin/v1/usage (and
`llmrelayctl logs|usage --json`) return what was served — billed tokens equal the mock's
served tokens exactly for non-estimated records, usage totals equal the sum of the
records —, a client leaving mid-stream is still billed exactly, records carry the
contract's fields and nothing more, they are in
<data-dir>/meta/meta-YYYYMMDDHH.jsonl and survive `kill -9` once 1 s has passed, and
retention deletes them (from logs, usage and disk) when the test clock ages them past 7
days, without a restart.

The node runs with LLMRELAY_CLOCK_FILE (harness.TestClock)."""

import datetime
import json
import os
import subprocess
import time

import pytest

import harness
from harness import (Route, TestClock, directive, node_metadata_files, wait_for,
                     wait_key_visible)

CONTRACT_FIELDS = {"ts", "request_id", "node", "key_id", "model", "endpoint", "provider",
                   "status", "input_tokens", "cached_input_tokens", "output_tokens",
                   "reasoning_tokens", "usd", "latency_ms", "ttfb_ms", "stream", "estimated"}
P_IN, P_OUT = 3.0, 15.0  # USD per 1M tokens
DAY_MS = 86400 * 1000


@pytest.fixture(scope="module")
def clock(workdir):
    return TestClock(workdir)


@pytest.fixture(scope="module")
def snode(nodes, mock, clock):
    return nodes.start("s1", env=clock.env())


def priced_route(node, mock):
    tag = harness.rand_id()
    node.admin.put_price("m-" + tag, P_IN, P_OUT)  # before the key: visible with it
    r = Route(node, mock, tag=tag)
    wait_key_visible(node, r.secret, r.model)
    return r


def chat(model, text="hi", **kw):
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    body.update(kw)
    return body


def traffic(node, route, n_plain=6, n_stream=4):
    """A mix of answers; returns {request_id: status} of the chat requests made."""
    ids = {}
    with node.client() as c:
        for i in range(n_plain):
            r = c.post("/v1/chat/completions", headers=route.headers(),
                       json=chat(route.model, directive(chunks=3 + i) + " plain %d" % i,
                                 max_tokens=20 + i))
            assert r.status_code == 200, r.text[:200]
            ids[r.headers["x-request-id"]] = 200
        for i in range(n_stream):
            with c.stream("POST", "/v1/chat/completions", headers=route.headers(),
                          json=chat(route.model, directive(chunks=5 + i) + " stream %d" % i,
                                    stream=True, max_tokens=50)) as s:
                assert s.status_code == 200
                s.read()
                ids[s.headers["x-request-id"]] = 200
        r = c.post("/v1/chat/completions", headers=route.headers(),
                   json=chat(route.model, directive(status=500) + " fails", max_tokens=5))
        assert r.status_code >= 500, r.status_code
        ids[r.headers["x-request-id"]] = r.status_code
        r = c.post("/v1/chat/completions", headers=route.headers(),
                   json=chat("no-such-model-" + harness.rand_id(), max_tokens=5))
        assert r.status_code == 404
        ids[r.headers["x-request-id"]] = 404
    return ids


def ms_of(ts):
    return int(datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


def sums(records):
    return {"requests": len(records),
            "input_tokens": sum(r["input_tokens"] for r in records),
            "output_tokens": sum(r["output_tokens"] for r in records),
            "usd": sum(r["usd"] for r in records)}


def assert_totals_equal(got, want, what):
    for f in ("requests", "input_tokens", "output_tokens"):
        assert got[f] == want[f], "%s: %s %r != %r" % (what, f, got, want)
    assert abs(got["usd"] - want["usd"]) < 1e-9, "%s: usd %r != %r" % (what, got, want)


def wait_logged(node, key_id, ids, timeout=10):
    """The key's records once every request id in ids is among them."""
    def all_there():
        recs = node.admin.all_logs(key=key_id, since="1h", limit=1000)
        got = {r["request_id"] for r in recs}
        return set(ids) <= got and recs
    return wait_for(all_there, timeout, "every request in /admin/v1/logs")


def ctl(node, *args):
    p = subprocess.run([harness.binary("llmrelayctl"), "--admin", node.admin_url,
                        "--token-file", node.token_file, "--json"] + list(args),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, "llmrelayctl %s -> %d: %s" % (" ".join(args), p.returncode,
                                                            p.stderr)
    return json.loads(p.stdout)


def test_logs_and_usage_match_served(snode, mock):
    route = priced_route(snode, mock)
    ids = traffic(snode, route)
    recs = wait_logged(snode, route.key_id, ids)
    mine = [r for r in recs if r["request_id"] in ids]
    assert len(mine) == len(ids), "one record per request: %d records for %d requests" % (
        len(mine), len(ids))

    for r in recs:
        assert set(r) - {"type"} == CONTRACT_FIELDS, \
            "record fields: extra %r, missing %r" % (set(r) - CONTRACT_FIELDS - {"type"},
                                                     CONTRACT_FIELDS - set(r))
        assert r["key_id"] == route.key_id and r["node"] == snode.name
    for r in mine:
        assert r["status"] == ids[r["request_id"]], r
        if r["status"] == 200:
            assert r["model"] == route.model and r["provider"] == route.provider, r
            assert r["endpoint"] in ("chat.completions", "chat"), r
            assert r["estimated"] is False, "the mock reports usage: %r" % r
            assert r["output_tokens"] > 0 and r["input_tokens"] > 0, r
            want_usd = (r["input_tokens"] * P_IN + r["output_tokens"] * P_OUT) / 1e6
            assert abs(r["usd"] - want_usd) < 1e-9, "usd %r != tokens x price %r" % (
                r["usd"], want_usd)
    assert sorted(r["stream"] for r in mine if r["status"] == 200).count(True) == 4

    # billed == served, exactly (non-estimated records; the mock counts what it served)
    st = route.stats()
    exact = [r for r in recs if not r["estimated"]]
    assert len(exact) == len(recs), "estimated records: %r" % [r for r in recs
                                                                if r["estimated"]]
    billed_in = sum(r["input_tokens"] for r in exact)
    billed_out = sum(r["output_tokens"] for r in exact)
    assert (billed_in, billed_out) == (st["input_tokens"], st["output_tokens"]), \
        "billed %d+%d, served %d+%d" % (billed_in, billed_out, st["input_tokens"],
                                        st["output_tokens"])

    # usage totals == sum of the records; groups add up to the totals
    want = sums(recs)
    u = snode.admin.usage(key=route.key_id, since="1h")
    assert {"from", "to", "totals", "groups"} <= set(u), u
    assert_totals_equal(u["totals"], want, "usage totals")
    for by in ("model", "hour", "node", "key"):
        u = snode.admin.usage(key=route.key_id, since="1h", by=by)
        assert_totals_equal(u["totals"], want, "usage by %s totals" % by)
        g = u["groups"]
        assert g and all({"group", "requests", "input_tokens", "output_tokens", "usd"} <=
                         set(x) for x in g), g
        assert_totals_equal(sums_groups(g), want, "sum of groups by %s" % by)
        if by == "key":
            assert [x["group"] for x in g] == [route.key_id], g
        if by == "node":
            assert [x["group"] for x in g] == [snode.name], g
        if by == "model":
            mg = {x["group"]: x for x in g}
            assert_totals_equal(mg[route.model],
                                sums([r for r in recs if r["model"] == route.model]),
                                "usage group of the model")

    # the CLI prints the same answers
    cu = ctl(snode, "usage", "--key", route.key_id, "--since", "1h")
    assert_totals_equal(cu["totals"], want, "llmrelayctl usage --json")
    cl = ctl(snode, "logs", "--key", route.key_id, "--since", "1h")
    assert {r["request_id"] for r in cl["records"]} >= set(ids), "llmrelayctl logs --json"


def sums_groups(groups):
    return {"requests": sum(x["requests"] for x in groups),
            "input_tokens": sum(x["input_tokens"] for x in groups),
            "output_tokens": sum(x["output_tokens"] for x in groups),
            "usd": sum(x["usd"] for x in groups)}


def test_logs_filters_and_paging(snode, mock):
    route = priced_route(snode, mock)
    ids = traffic(snode, route, n_plain=7, n_stream=2)
    recs = wait_logged(snode, route.key_id, ids)
    # paging with a small limit gives the same records, each once, newest first
    paged, cursor, pages = [], None, 0
    while True:
        q = {"key": route.key_id, "since": "1h", "limit": 3}
        if cursor:
            q["cursor"] = cursor
        page = snode.admin.logs(**q)
        assert set(page) >= {"records", "next_cursor"}, page
        assert len(page["records"]) <= 3
        paged += page["records"]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
        assert pages < 100
    assert [r["request_id"] for r in paged] == [r["request_id"] for r in recs]
    assert len({r["request_id"] for r in paged}) == len(paged)
    assert [r["ts"] for r in paged] == sorted((r["ts"] for r in paged), reverse=True)
    # status filters
    failed = snode.admin.all_logs(key=route.key_id, since="1h", status="5xx")
    assert {r["request_id"] for r in failed} == {i for i, s in ids.items() if s >= 500}
    nf = snode.admin.all_logs(key=route.key_id, since="1h", status="404")
    assert {r["request_id"] for r in nf} == {i for i, s in ids.items() if s == 404}
    # since as an RFC 3339 time, and a range in the future
    first = min(ms_of(r["ts"]) for r in recs)
    since = datetime.datetime.fromtimestamp(first / 1000 - 1, datetime.timezone.utc)
    by_time = snode.admin.all_logs(key=route.key_id,
                                   since=since.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert {r["request_id"] for r in by_time} == {r["request_id"] for r in recs}
    # another key's records are not mixed in
    other = priced_route(snode, mock)
    assert not [r for r in snode.admin.all_logs(key=other.key_id, since="1h")
                if r["request_id"] in ids]
    # bad queries
    for q in ({"since": "yesterday"}, {"status": "abc"}, {"limit": "0"}, {"key": "nope"},
              {"cursor": "!!"}):
        r = snode.admin.request("GET", "/admin/v1/logs", params=q)
        assert r.status_code == 400, (q, r.status_code, r.text[:200])


def records_on_disk(node, ids):
    """{request_id: (file name, record)} of the records of ids found in the node's
    meta-*.jsonl files."""
    found = {}
    meta = os.path.join(node.data_dir, "meta")
    for name in node_metadata_files(node):
        with open(os.path.join(meta, name), "rb") as f:
            for line in f.read().decode("utf-8", "replace").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("request_id") in ids:
                    found[rec["request_id"]] = (name, rec)
    return found


def test_records_in_segment_files(snode, mock):
    route = priced_route(snode, mock)
    ids = traffic(snode, route, n_plain=3, n_stream=1)
    found = wait_for(lambda: (lambda f: len(f) == len(ids) and f)(records_on_disk(snode, ids)),
                     2, "every record in a meta-*.jsonl file within 1 s")
    for rid, (name, rec) in found.items():
        hour = datetime.datetime.fromtimestamp(ms_of(rec["ts"]) / 1000, datetime.timezone.utc)
        assert name == hour.strftime("meta-%Y%m%d%H.jsonl"), (name, rec["ts"])
        assert set(rec) - {"type"} == CONTRACT_FIELDS, sorted(rec)
        assert rec["status"] == ids[rid] and rec["key_id"] == route.key_id, rec
    # the stdout line, the file line and the logs answer are the same record
    recs = wait_logged(snode, route.key_id, ids)
    by_id = {r["request_id"]: r for r in recs}
    for rid in ids:
        stdout_rec = snode.wait_metadata(rid)
        for f in CONTRACT_FIELDS:
            assert stdout_rec[f] == found[rid][1][f] == by_id[rid][f], (f, rid)


def test_records_survive_kill9(snode, mock):
    route = priced_route(snode, mock)
    ids = traffic(snode, route, n_plain=5, n_stream=2)
    # durable within 1 s of the response: wait that long (plus scheduling slack), no more
    time.sleep(1.2)
    snode.kill()  # SIGKILL
    assert snode.proc.returncode == -9, snode.proc.returncode
    on_disk = records_on_disk(snode, ids)
    assert len(on_disk) == len(ids), "%d of %d records not on disk 1.2 s after the " \
        "responses (kill -9)" % (len(ids) - len(on_disk), len(ids))
    snode.start()
    recs = snode.admin.all_logs(key=route.key_id, since="1h")
    got = {r["request_id"] for r in recs}
    missing = set(ids) - got
    assert not missing, "%d of %d records lost by kill -9" % (len(missing), len(ids))
    st = route.stats()
    assert (sum(r["input_tokens"] for r in recs),
            sum(r["output_tokens"] for r in recs)) == (st["input_tokens"], st["output_tokens"])


def test_client_abort_still_billed_exactly(snode, mock):
    """A client that leaves mid-stream: the node reads on to learn the exact usage (within
    --usage-drain-timeout), so the record is exact (not estimated) and equals what the
    upstream served."""
    route = priced_route(snode, mock)
    with snode.client() as c:
        with c.stream("POST", "/v1/chat/completions", headers=route.headers(),
                      json=chat(route.model, directive(chunks=30, delay_ms=20) + " abort",
                                stream=True, max_tokens=100)) as s:
            assert s.status_code == 200
            rid = s.headers["x-request-id"]
            for n, _ in enumerate(s.iter_lines()):
                if n >= 3:
                    break  # leave: the stream is closed with the client
    rec = wait_for(lambda: [r for r in snode.admin.all_logs(key=route.key_id, since="1h")
                            if r["request_id"] == rid], 15, "the aborted request's record")[0]
    st = route.stats()
    assert rec["estimated"] is False, rec
    assert (rec["input_tokens"], rec["output_tokens"]) == (st["input_tokens"],
                                                           st["output_tokens"]), (rec, st)
    assert st["output_tokens"] == 30, st


def test_retention_by_test_clock(snode, mock, clock):
    """Runs after the others: ages everything by 6 days (still kept), then past 7 days
    (gone from logs, usage and disk, without a restart)."""
    route = priced_route(snode, mock)
    ids = traffic(snode, route, n_plain=4, n_stream=1)
    recs = wait_logged(snode, route.key_id, ids)
    old_files = set(node_metadata_files(snode))
    assert old_files

    clock.advance(6 * DAY_MS, [snode])
    kept = snode.admin.all_logs(key=route.key_id, since="7d")
    assert {r["request_id"] for r in kept} >= set(ids), "records deleted before 7 days"
    assert_totals_equal(snode.admin.usage(key=route.key_id, since="7d")["totals"],
                        sums(recs), "usage 6 days later")
    assert set(node_metadata_files(snode)) >= old_files

    clock.advance(DAY_MS + 3600 * 1000, [snode])   # 7 d + 1 h after the records
    # new traffic lands in a new segment
    ids2 = traffic(snode, route, n_plain=2, n_stream=0)
    wait_for(lambda: not (old_files & set(node_metadata_files(snode))), 10,
             "segments older than 7 days deleted from --data-dir (have %r)" % (old_files,))
    recs2 = wait_logged(snode, route.key_id, ids2)
    left = {r["request_id"] for r in snode.admin.all_logs(key=route.key_id, since="30d")}
    assert not (left & set(ids)), "records older than 7 days still in /admin/v1/logs"
    assert left >= set(ids2)
    u = snode.admin.usage(key=route.key_id, since="30d")
    assert_totals_equal(u["totals"], sums(recs2), "usage after retention")
