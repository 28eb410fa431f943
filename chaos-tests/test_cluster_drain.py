# ctest-labels: e2e sanitize
"""Graceful drain under load (issue 4): zero failed requests.

Three gossiping nodes share one mock provider. Twenty client threads send chat completions
(streamed and not, some slowed by the mock so that requests are in flight at any moment)
over persistent TLS + HTTP/2 connections, spread over the nodes the way a load balancer
does: a connection-level refusal (connection refused or reset before the request went out,
a GOAWAY that leaves the request's stream unprocessed, REFUSED_STREAM) sends the request to
the next node, and is not a failure. Any request that was sent and does not end with 200
and a complete body (`[DONE]` for a stream) is a failure.

Under that load, d2 is drained with SIGTERM and d3 with `llmrelayctl node drain` (through
d3's own admin URL). For each drain: both exit 0, /readyz of the draining node answers 503
before it exits, every request in flight on it when the drain began completes, and the leave
is announced only after its in-flight requests finished (a peer still sees it alive while one
of them still has many chunks to go; DESIGN.md's order). At the end d1 alone serves every
request. The figures (requests, in flight at each drain, drain durations) are printed.

The client is a small HTTP/2 client on the h2 library (as harness.h2_request): httpx 0.23
fails every open stream on a graceful GOAWAY, which would count the node's correct behaviour
as failures."""

import json
import random
import signal
import socket
import ssl
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

import harness
from harness import Route, directive, wait_for, wait_key_visible

CLIENTS = 20
REFUSED_STREAM = 0x7


def gossip_node(nodes, name, key, join=None):
    port = harness.free_port()
    args = ["--gossip", "127.0.0.1:%d" % port, "--cluster-key-file", key]
    if join:
        args += ["--join", join]
    n = nodes.make(name, extra_args=args)
    n.gossip_addr = "127.0.0.1:%d" % port
    return n.start()


def statuses(node):
    r = httpx.get(node.admin_url + "/admin/v1/cluster", timeout=5,
                  headers={"authorization": "Bearer " + node.admin_token})
    assert r.status_code == 200, r.text
    return {m["name"]: m["status"] for m in r.json()["members"]}


def ctl(node, *args):
    return subprocess.run([harness.binary("llmrelayctl"), "--admin", node.admin_url, "--token-file",
                           node.token_file] + list(args), capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def trio(nodes, workdir):
    key = harness.key_file(workdir, "cluster.key")
    d1 = gossip_node(nodes, "d1", key)
    d2 = gossip_node(nodes, "d2", key, join=d1.gossip_addr)
    d3 = gossip_node(nodes, "d3", key, join=d1.gossip_addr)
    names = {"d1", "d2", "d3"}
    for n in (d1, d2, d3):
        wait_for(lambda: {k for k, v in statuses(n).items() if v == "alive"} >= names, 15,
                 "%s to see d1, d2, d3 alive" % n.name)
    return d1, d2, d3


@pytest.fixture(scope="module")
def route(trio, mock):
    r = Route(trio[0], mock)
    for n in trio:
        wait_key_visible(n, r.secret, r.model)
    return r


# ------------------------------------------------------------------ the admin call itself

def test_drain_call_refusals(trio):
    """What POST /admin/v1/drain refuses, before any node is drained: another member (not
    forwarded without peer RPC: 501), an unknown node (404), a viewer (403), GET (405), a bad body (400)."""
    d1, d2, d3 = trio
    r = d3.admin.request("POST", "/admin/v1/drain", {"node": "d1"}, expect=501)
    assert r.json()["error"]["message"].startswith("draining another node needs peer RPC")
    assert r.json()["error"]["type"] == "api_error"
    r = d3.admin.request("POST", "/admin/v1/drain", {"node": "nobody"}, expect=404)
    assert r.json()["error"] == {"message": "unknown node nobody", "type": "not_found_error", "code": "not_found"}
    d3.admin.request("POST", "/admin/v1/drain", {"node": "bad name"}, expect=400)
    d3.admin.request("POST", "/admin/v1/drain", {"node": 7}, expect=400)
    d3.admin.request("GET", "/admin/v1/drain", expect=405)
    viewer = d1.admin.create_token("drain-viewer", "viewer")["token"]
    wait_for(lambda: d3.admin.request("GET", "/admin/v1/cluster", token=viewer).status_code == 200, 10,
             "the viewer token to reach d3")
    r = d3.admin.request("POST", "/admin/v1/drain", token=viewer, expect=403)
    assert "viewer" in r.json()["error"]["message"]
    out = ctl(d3, "node", "drain", "nobody")
    assert out.returncode == 1 and "unknown node nobody" in out.stderr, (out.stdout, out.stderr)
    for n in trio:
        assert n.running() and n.readyz()[0] == 200, "a refused drain call drained %s" % n.name


def test_idle_node_answers_then_exits(nodes):
    """A node with nothing in flight drains at once: the 202 (to an operator token) still
    gets out, then the node exits 0."""
    n = nodes.start("idle")
    operator = n.admin.create_token("drain-operator", "operator")["token"]
    wait_for(lambda: n.admin.request("GET", "/admin/v1/cluster", token=operator).status_code == 200, 10,
             "the operator token to reach the node")
    r = n.admin.request("POST", "/admin/v1/drain", {"node": "idle"}, token=operator, expect=202)
    assert r.json() == {"node": "idle", "draining": True}
    assert n.proc.wait(10) == 0, n.proc.log_tails()
    assert "admin call: draining" in n.logs_text()


# ------------------------------------------------------------------ the load generator

class Refused(Exception):
    """A connection-level refusal: the request was not processed; a balancer retries it."""


class Failed(Exception):
    """A request that was sent and did not complete."""


TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
TLS.check_hostname = False
TLS.verify_mode = ssl.CERT_NONE
TLS.set_alpn_protocols(["h2"])


class Conn:
    """One persistent TLS + HTTP/2 connection, one stream at a time. GOAWAY frames are taken
    out of the byte stream before the h2 library sees them (it would refuse the DATA that a
    graceful GOAWAY still lets through) and remembered: no new stream after one, and a
    stream above its last_stream_id was not processed."""

    def __init__(self, node):
        self.node = node
        try:
            raw = socket.create_connection(("127.0.0.1", node.port), timeout=5)
        except OSError as exc:
            raise Refused("connect: %r" % exc)
        try:
            self.sock = TLS.wrap_socket(raw, server_hostname="localhost")
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            raise Refused("TLS handshake: %r" % exc)
        if self.sock.selected_alpn_protocol() != "h2":
            self.sock.close()
            raise Refused("no h2")
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.goaway = None  # last_stream_id of the latest GOAWAY
        self.eof = False
        self.pending = b""
        self.events = []
        try:
            self.sock.sendall(self.h2.data_to_send())
        except OSError as exc:
            self.close()
            raise Refused("preface: %r" % exc)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _feed(self, data):
        self.pending += data
        frames = b""
        while len(self.pending) >= 9:
            length = int.from_bytes(self.pending[0:3], "big")
            if len(self.pending) < 9 + length:
                break
            frame, self.pending = self.pending[:9 + length], self.pending[9 + length:]
            if frame[3] == 0x7:
                self.goaway = int.from_bytes(frame[9:13], "big") & 0x7FFFFFFF
            else:
                frames += frame
        if frames:
            self.events.extend(self.h2.receive_data(frames))
        out = self.h2.data_to_send()
        if out:
            try:
                self.sock.sendall(out)
            except OSError:
                pass

    def _poll_idle(self):
        """Reads what arrived while the connection was idle (a GOAWAY, the server's close)."""
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    data = self.sock.recv(65536)
                except (ssl.SSLWantReadError, BlockingIOError):
                    break
                except (OSError, ssl.SSLError):
                    data = b""
                if not data:
                    self.eof = True
                    break
                self._feed(data)
        finally:
            self.sock.setblocking(True)
        self.events.clear()

    def request(self, body, secret, rec, timeout=30):
        self._poll_idle()
        if self.goaway is not None or self.eof:
            raise Refused("GOAWAY or close seen before the request was sent")
        sid = self.h2.get_next_available_stream_id()
        payload = json.dumps(body).encode()
        self.h2.send_headers(sid, [(":method", "POST"), (":scheme", "https"), (":authority", "localhost"),
                                   (":path", "/v1/chat/completions"), ("authorization", "Bearer " + secret),
                                   ("content-type", "application/json")])
        self.h2.send_data(sid, payload, end_stream=True)
        try:
            self.sock.sendall(self.h2.data_to_send())
        except OSError as exc:
            raise Refused("send: %r" % exc)  # h2o dispatches a request only once its body is whole
        rec["sent"] = time.monotonic()
        rec["node"] = self.node.name
        status, data = None, bytearray()
        self.sock.settimeout(harness.bound(timeout))
        while True:
            for ev in self.events:
                if getattr(ev, "stream_id", None) != sid:
                    continue
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    data += ev.data
                    rec["chunks_seen"] = data.count(b'" tok')
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded):
                    self.events.clear()
                    return status, bytes(data)
                elif isinstance(ev, h2.events.StreamReset):
                    if ev.error_code == REFUSED_STREAM and status is None:
                        raise Refused("REFUSED_STREAM")
                    raise Failed("stream reset %d after %d bytes" % (ev.error_code, len(data)))
            self.events.clear()
            if self.goaway is not None and self.goaway < sid and status is None:
                raise Refused("GOAWAY last_stream_id %d < stream %d" % (self.goaway, sid))
            if self.eof:
                raise Failed("connection closed mid-request (status %r, %d bytes, GOAWAY %r)"
                             % (status, len(data), self.goaway))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise Failed("no answer within %ds" % timeout)
            except (OSError, ssl.SSLError):
                chunk = b""
            if not chunk:
                self.eof = True
                # a last GOAWAY may have come with the close: look at it before judging
                continue
            self._feed(chunk)


class Load:
    """CLIENTS threads, each a persistent connection to one node at a time (the balancer)."""

    KINDS = [  # (weight, stream, chunks, directive kwargs)
        (4, True, 40, {"delay_ms": 40}),          # ~1.6 s streams: in flight when a drain begins
        (2, True, 6, {}),
        (2, False, 8, {"first_byte_delay_ms": 400}),
        (2, False, 4, {}),
    ]

    def __init__(self, nodes, route):
        self.nodes = list(nodes)
        self.route = route
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.records = []  # finished requests
        self.current = {}  # client -> its request in progress (published for the watchers)
        self.refusals = []
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(harness.bound(40))
        assert not any(t.is_alive() for t in self.threads), "a client thread hangs"

    def body(self, rng):
        weights = [k[0] for k in self.KINDS]
        _, stream, chunks, extra = rng.choices(self.KINDS, weights)[0]
        text = "drain load %s" % directive(chunks=chunks, **extra)
        return stream, chunks, {"model": self.route.model, "stream": stream,
                                "messages": [{"role": "user", "content": text}]}

    def client(self, i):
        rng = random.Random(i)
        idx = i % len(self.nodes)
        conn = None
        while not self.stop.is_set():
            stream, chunks, body = self.body(rng)
            rec = {"client": i, "stream": stream, "chunks": chunks, "sent": None, "end": None, "node": None,
                   "ok": False, "error": None, "chunks_seen": 0, "refused": 0}
            with self.lock:
                self.current[i] = rec
            for _attempt in range(12):
                try:
                    if conn is None:
                        conn = Conn(self.nodes[idx])
                    status, data = conn.request(body, self.route.secret, rec)
                    rec["end"] = time.monotonic()
                    rec["error"] = check_answer(status, data, stream, chunks)
                    rec["ok"] = rec["error"] is None
                    break
                except Refused as exc:
                    with self.lock:
                        self.refusals.append((time.monotonic(), self.nodes[idx].name, str(exc)))
                    rec["refused"] += 1
                    rec["sent"] = rec["node"] = None
                    if conn is not None:
                        conn.close()
                    conn = None
                    # another node, at random: a node already gone refuses the connection
                    idx = rng.choice([k for k in range(len(self.nodes)) if k != idx])
                    time.sleep(0.01)
                except Failed as exc:
                    rec["end"] = time.monotonic()
                    rec["error"] = str(exc)
                    if conn is not None:
                        conn.close()
                    conn = None
                    break
            else:
                rec["error"] = "refused by every node %d times" % rec["refused"]
            with self.lock:
                self.records.append(rec)
                self.current.pop(i, None)
        if conn is not None:
            conn.close()


def check_answer(status, data, stream, chunks):
    if status != 200:
        return "status %r: %r" % (status, data[:200])
    if stream:
        if not data.rstrip().endswith(b"data: [DONE]"):
            return "stream without [DONE] (%d bytes)" % len(data)
        if data.count(b'" tok') != chunks:
            return "stream with %d of %d tokens" % (data.count(b'" tok'), chunks)
        return None
    try:
        content = json.loads(data)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return "not a chat completion: %r" % data[:200]
    if content.count(" tok") != chunks:
        return "answer with %d of %d tokens" % (content.count(" tok"), chunks)
    return None


# ------------------------------------------------------------------ the drains

def watch_drain(load, node, peer, t0):
    """Polls, until node exits: its /readyz, and peer's view of it. Returns the figures."""
    out = {"ready_503": None, "readyz": [], "views": [], "guarded": 0, "left_while_busy": [], "exit": None}
    while node.running():
        now = time.monotonic()
        try:
            r = httpx.get(node.admin_url + "/readyz", timeout=1)
            body = r.json()
            if out["ready_503"] is None and r.status_code == 503 and body.get("ready") is False \
                    and body.get("draining") is True and node.running():
                out["ready_503"] = time.monotonic() - t0
            out["readyz"].append(r.status_code)
        except (httpx.HTTPError, ValueError):
            out["readyz"].append(None)
        # a request on node that still has >= 6 chunks (>= 240 ms of mock time) to go cannot
        # have finished on the node: until it has, the leave must not be announced
        with load.lock:
            busy = [r for r in load.current.values() if r["node"] == node.name and r["stream"] and r["end"] is None
                    and r["sent"] is not None and r["sent"] < t0 and r["chunks"] - r["chunks_seen"] >= 6]
        try:
            st = statuses(peer).get(node.name)
        except (httpx.HTTPError, AssertionError):
            st = None
        out["views"].append((round(time.monotonic() - t0, 3), st, len(busy)))
        if busy:
            out["guarded"] += 1
            if st == "left":
                out["left_while_busy"].append(out["views"][-1])
        time.sleep(max(0.0, 0.03 - (time.monotonic() - now)))
    code = node.proc.wait(harness.bound(15))
    out["exit"] = code
    out["duration"] = time.monotonic() - t0
    return out


def in_flight_at(load, name, t0):
    with load.lock:
        return [r for r in load.records + list(load.current.values()) if r["node"] == name
                and r["sent"] is not None and r["sent"] < t0 and (r["end"] is None or r["end"] > t0)]


def test_drain_under_load_zero_failures(trio, route):
    d1, d2, d3 = trio
    load = Load(trio, route)
    try:
        t_start = time.monotonic()
        load.start()
        wait_for(lambda: {r["node"] for r in load.records if r["ok"]} >= {"d1", "d2", "d3"}, 15,
                 "every node to serve requests")
        time.sleep(0.5)
        assert d2.readyz()[0] == 200

        # d2: SIGTERM
        t0 = time.monotonic()
        d2.proc.signal(signal.SIGTERM)
        w2 = watch_drain(load, d2, d1, t0)
        t_d2_exit = time.monotonic()
        flight2 = in_flight_at(load, "d2", t0)

        wait_for(lambda: sum(1 for r in load.records if r["ok"] and r["sent"] and r["sent"] > t_d2_exit
                             and r["node"] == "d3") >= 10, 10, "d3 to serve more requests")
        assert d3.readyz()[0] == 200

        # d3: llmrelayctl node drain, through d3's own admin URL
        t1 = time.monotonic()
        out = ctl(d3, "--json", "node", "drain")
        assert out.returncode == 0, (out.stdout, out.stderr)
        assert json.loads(out.stdout) == {"node": "d3", "draining": True}
        again = d3.admin.request("POST", "/admin/v1/drain", {})  # idempotent while it drains
        assert (again.status_code, again.json()) == (202, {"node": "d3", "draining": True}), again.text
        w3 = watch_drain(load, d3, d1, t1)
        t_d3_exit = time.monotonic()
        flight3 = in_flight_at(load, "d3", t1)

        wait_for(lambda: sum(1 for r in load.records if r["ok"] and r["sent"] and r["sent"] > t_d3_exit) >= 40,
                 15, "d1 to serve 40 more requests alone")
        load.finish()
    finally:
        load.stop.set()
    elapsed = time.monotonic() - t_start

    recs = load.records
    failures = [r for r in recs if not r["ok"]]
    after = [r for r in recs if r["sent"] and r["sent"] > t_d3_exit]
    print("requests: %d in %.1fs (%d streamed), %d failed; connection-level refusals retried: %d"
          % (len(recs), elapsed, sum(r["stream"] for r in recs), len(failures), len(load.refusals)))
    for name, w, flight in (("d2 (SIGTERM)", w2, flight2), ("d3 (llmrelayctl node drain)", w3, flight3)):
        print("%s: %d requests in flight at drain, all completed: %s; /readyz 503 after %.3fs; exit %r after "
              "%.2fs; peer view samples guarded by unfinished requests: %d"
              % (name, len(flight), all(r["ok"] for r in flight), w["ready_503"] or -1, w["exit"],
                 w["duration"], w["guarded"]))
    print("after both drains: %d requests, all on %s" % (len(after), sorted({r["node"] for r in after})))
    kinds = {}
    for _, _, why in load.refusals:
        kind = why.split(":")[0] if not why.startswith("GOAWAY last") else "GOAWAY above the stream"
        kinds[kind] = kinds.get(kind, 0) + 1
    print("refusals by kind: %s" % kinds)

    assert not failures, "failed requests:\n%s" % "\n".join(repr(r) for r in failures[:20])
    for name, node, w, flight in (("d2", d2, w2, flight2), ("d3", d3, w3, flight3)):
        assert w["exit"] == 0, "%s exited %r:\n%s" % (name, w["exit"], node.proc.log_tails())
        assert w["ready_503"] is not None, "%s never answered /readyz 503 while draining: %r" % (name, w["readyz"])
        assert len(flight) >= 3, "too few requests in flight on %s when its drain began (%d)" % (name, len(flight))
        assert all(r["ok"] and r["end"] is not None for r in flight)
        assert w["guarded"] > 0, "no peer view was taken while %s still had long requests in flight" % name
        assert not w["left_while_busy"], "%s was announced as left while requests were still far from done " \
                                         "on it (time, status, such requests): %r" % (name, w["left_while_busy"])
        logs = node.logs_text()
        assert "drained: every in-flight request finished" in logs, node.proc.log_tails()
        assert "shutdown timeout" not in logs
    assert "signal 15: draining" in d2.logs_text()
    assert "admin call: draining" in d3.logs_text()
    assert after and all(r["node"] == "d1" for r in after)
    assert not [r for r in recs if r["sent"] and r["sent"] > t_d2_exit and r["node"] == "d2"]
    # the leave came after the drain, and gracefully
    wait_for(lambda: statuses(d1).get("d2") == "left" and statuses(d1).get("d3") == "left", 10,
             "d1 to see d2 and d3 left")
    # the admin call was audited (operator-visible who/what): POST /admin/v1/drain, target d3, 202
    def audited():
        return [e for e in d1.admin.audit(since="10m") if e["action"] == "POST /admin/v1/drain"
                and e.get("target") == "d3" and e["status"] == 202]
    wait_for(audited, 10, "the audit entry of the drain call")
