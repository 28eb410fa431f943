"""Streams under stress: slow readers keep node memory bounded (backpressure to the
upstream), a client that leaves mid-stream is still billed its exact usage (the node keeps
reading the upstream for --usage-drain-timeout), and a stream the upstream cuts is billed
from an estimate, marked as such."""

import json
import threading
import time

import httpx

from harness import Route, bound, directive, wait_key_visible

BIG_CHUNKS = 100000  # the mock's maximum: ~24 MB of SSE per stream
SLOW_STREAMS = 4
RSS_GROWTH_LIMIT_KIB = 32 * 1024


def fresh_route(node, mock, **kw):
    r = Route(node, mock, **kw)
    wait_key_visible(node, r.secret, r.models[0])
    return r


def test_slow_readers_keep_memory_bounded(node, mock):
    route = fresh_route(node, mock)
    body = {"model": route.model, "stream": True,
            "messages": [{"role": "user", "content": "long " + directive(chunks=BIG_CHUNKS)}]}
    baseline = node.rss_kib()
    phase = {"name": "stall"}  # stall -> slow -> fast
    results = [None] * SLOW_STREAMS
    started = threading.Semaphore(0)  # one release per reader: streaming, or failed

    def reader(i):
        out = {"bytes": 0, "tail": b"", "rid": None, "error": None, "status": None}
        results[i] = out
        signalled = False
        try:
            with httpx.Client(http2=True, verify=False, base_url=node.url,
                              timeout=bound(60)) as c:
                with c.stream("POST", "/v1/chat/completions", json=body,
                              headers=route.headers()) as r:
                    out["rid"] = r.headers.get("x-request-id")
                    out["status"] = r.status_code
                    it = r.iter_raw()
                    first = next(it)  # the stream has started
                    out["bytes"] += len(first)
                    started.release()
                    signalled = True
                    while phase["name"] == "stall":
                        time.sleep(0.05)
                    for chunk in it:
                        out["bytes"] += len(chunk)
                        out["tail"] = (out["tail"] + chunk)[-64:]
                        if phase["name"] == "slow":
                            time.sleep(0.02)  # ~3 MB/s at most per stream
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            out["error"] = repr(exc)
        finally:
            if not signalled:
                started.release()

    threads = [threading.Thread(target=reader, args=(i,), daemon=True)
               for i in range(SLOW_STREAMS)]
    for t in threads:
        t.start()
    for _ in threads:
        assert started.acquire(timeout=bound(30)), "streams did not start: %r; mock: %r" % (
            results, route.stats())
    assert all(out["error"] is None for out in results), results
    samples = []

    def sample_for(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            samples.append(node.rss_kib())
            time.sleep(0.1)

    sample_for(2.0)  # readers stalled: the node must not read the upstreams ahead
    stalled_peak = max(samples)
    phase["name"] = "slow"
    sample_for(2.0)
    phase["name"] = "fast"
    deadline = time.monotonic() + bound(90)
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        samples.append(node.rss_kib())
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=1)
    peak = max(samples)
    print("node RSS: baseline %d KiB, peak while stalled %d KiB, peak %d KiB (%d streams of "
          "%d chunks)" % (baseline, stalled_peak, peak, SLOW_STREAMS, BIG_CHUNKS))
    for out in results:
        assert out and out["error"] is None, out
        assert out["status"] == 200
        assert out["tail"].rstrip().endswith(b"data: [DONE]"), out["tail"]
        assert out["bytes"] > 20 * 1000 * 1000, out["bytes"]
    assert peak - baseline < RSS_GROWTH_LIMIT_KIB, \
        "node RSS grew by %d KiB with %d slow readers" % (peak - baseline, SLOW_STREAMS)
    served = route.stats()
    assert served["output_tokens"] == SLOW_STREAMS * BIG_CHUNKS
    total = 0
    for out in results:
        rec = node.wait_metadata(out["rid"])
        assert rec["output_tokens"] == BIG_CHUNKS and rec["estimated"] is False, rec
        total += rec["input_tokens"]
    assert total == served["input_tokens"]


def test_client_abort_still_exact_usage(node, mock):
    route = fresh_route(node, mock)
    n = 60
    body = {"model": route.model, "stream": True,
            "messages": [{"role": "user", "content": "abort me " + directive(chunks=n,
                                                                               delay_ms=25)}]}
    got = 0
    c = httpx.Client(http2=True, verify=False, base_url=node.url, timeout=30)
    try:
        with c.stream("POST", "/v1/chat/completions", json=body, headers=route.headers()) as r:
            assert r.status_code == 200
            rid = r.headers["x-request-id"]
            for line in r.iter_lines():
                if line.startswith("data:") and '"content"' in line:
                    got += 1
                    if got == 10:
                        break
            # leave: close the whole connection under the open stream
            c.close()
    finally:
        c.close()
    t_abort = time.monotonic()
    rec = node.wait_metadata(rid, timeout=15)
    print("metadata line %.2fs after the abort: %s" % (time.monotonic() - t_abort,
                                                      json.dumps(rec)))
    served = route.stats()
    assert served["requests"] == 1
    assert served["output_tokens"] == n, "the node did not drain the upstream: %r" % served
    assert rec["estimated"] is False, rec
    assert rec["output_tokens"] == served["output_tokens"], (rec, served)
    assert rec["input_tokens"] == served["input_tokens"], (rec, served)
    assert rec["stream"] is True


def test_upstream_cut_marks_estimated(node, mock):
    route = fresh_route(node, mock)
    body = {"model": route.model, "stream": True,
            "messages": [{"role": "user", "content": "cut " + directive(chunks=20,
                                                                          cut_after=5)}]}
    with node.client() as c:
        with c.stream("POST", "/v1/chat/completions", json=body, headers=route.headers()) as r:
            rid = r.headers["x-request-id"]
            try:
                lines = list(r.iter_lines())
            except httpx.HTTPError:
                lines = []  # a reset of the client stream is a fair way to report the cut
    content = [line for line in lines if line.startswith("data:") and '"content"' in line]
    assert len(content) <= 6, content
    assert not any(line.strip() == "data: [DONE]" for line in lines), \
        "a cut upstream stream was presented to the client as complete"
    rec = node.wait_metadata(rid)
    served = route.stats()
    assert served["output_tokens"] == 5
    assert rec["estimated"] is True, rec
    assert rec["output_tokens"] >= 1, rec
    assert rec["input_tokens"] >= 1, rec


def test_upstream_without_usage_marks_estimated(node, mock):
    route = fresh_route(node, mock)
    with node.client() as c:
        for stream in (False, True):
            body = {"model": route.model, "stream": stream,
                    "messages": [{"role": "user", "content": "no usage " + directive(
                        chunks=4, usage=0)}]}
            if stream:
                with c.stream("POST", "/v1/chat/completions", json=body,
                              headers=route.headers()) as r:
                    assert r.status_code == 200
                    rid = r.headers["x-request-id"]
                    list(r.iter_lines())
            else:
                r = c.post("/v1/chat/completions", json=body, headers=route.headers())
                assert r.status_code == 200
                rid = r.headers["x-request-id"]
            rec = node.wait_metadata(rid)
            assert rec["estimated"] is True, rec
            assert rec["output_tokens"] >= 1 and rec["input_tokens"] >= 1, rec
