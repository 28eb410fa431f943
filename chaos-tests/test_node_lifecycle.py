"""Process lifecycle: --version, a node configured by a YAML file (--config), SIGHUP reloading
the TLS certificate, and SIGTERM draining (the in-flight stream completes, new connections
are refused, exit code 0 within --shutdown-timeout)."""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import certs
import harness
from harness import Route, bound, directive, free_port, wait_for, wait_key_visible


def test_version():
    p = subprocess.run([harness.binary("llmrelay"), "--version"], capture_output=True,
                       text=True, timeout=bound(10))
    assert p.returncode == 0, p.stderr
    assert re.search(r"\d+\.\d+\.\d+", p.stdout), p.stdout


def test_config_yaml_file(nodes, mock, etcd, workdir):
    d = os.path.join(workdir, "yaml-node")
    os.makedirs(d, exist_ok=True)
    token = "adm-yaml-" + harness.rand_id(16)
    token_file = os.path.join(d, "admin.token")
    with open(token_file, "w") as f:
        f.write(token + "\n")
    ports = {"listen": free_port(), "plain": free_port(), "admin": free_port()}
    cfg = os.path.join(d, "node.yaml")
    with open(cfg, "w") as f:
        f.write("\n".join([
            "# e2e node configured by file only",
            "name: yaml1",
            "listen: 127.0.0.1:%d" % ports["listen"],
            "tls-self-signed: true",
            "listen-plain: 127.0.0.1:%d" % ports["plain"],
            "admin-listen: 127.0.0.1:%d" % ports["admin"],
            "admin-token-file: %s" % token_file,
            "etcd:",
            "  - %s" % etcd.url,
            "etcd-prefix: %s" % nodes.prefix,
            "data-dir: %s" % os.path.join(d, "data"),
            "workers: 1",
            "max-body: 1MiB",
            "usage-drain-timeout: 5s",
            "shutdown-timeout: 10s",
            "log-level: info",
        ]) + "\n")
    n = nodes.make("yaml1", config_file=cfg, admin_token=token, ports=ports)
    assert n.proc.argv[1:] == ["--config", cfg]
    n.start()
    route = Route(n, mock)
    wait_key_visible(n, route.secret, route.model)
    with n.client() as c:
        r = c.post("/v1/chat/completions", headers=route.headers(),
                   json={"model": route.model, "messages": [{"role": "user", "content": "y"}]})
        assert r.status_code == 200 and r.http_version == "HTTP/2"
        rec = n.wait_metadata(r.headers["x-request-id"])
        assert rec["node"] == "yaml1"
        # max-body from the file applies
        r = c.post("/v1/chat/completions", headers=route.headers(),
                   json={"model": route.model,
                         "messages": [{"role": "user", "content": "z" * (2 << 20)}]})
        assert r.status_code == 413
    assert n.stop() == 0


def peer_cert_digest(port):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


def pem_digest(path):
    der = ssl.PEM_cert_to_DER_cert(open(path).read())
    return hashlib.sha256(der).hexdigest()


def test_sighup_reloads_certificate(nodes, mock, workdir):
    d = os.path.join(workdir, "hup-certs")
    a = certs.make_self_signed(d, name="a")
    b = certs.make_self_signed(d, name="b")
    live = (os.path.join(d, "live.pem"), os.path.join(d, "live.key"))
    shutil.copy(a[0], live[0])
    shutil.copy(a[1], live[1])
    n = nodes.start("hup", tls=live)
    assert peer_cert_digest(n.port) == pem_digest(a[0])
    # replace the files (atomically, as a cert manager would) and signal
    for src, dst in ((b[0], live[0]), (b[1], live[1])):
        shutil.copy(src, dst + ".new")
        os.replace(dst + ".new", dst)
    os.kill(n.pid, signal.SIGHUP)
    wait_for(lambda: peer_cert_digest(n.port) == pem_digest(b[0]), 10,
             "a new connection to see the reloaded certificate")
    assert n.running()
    route = Route(n, mock)
    wait_key_visible(n, route.secret, route.model)
    n.stop()


def test_sigterm_drains_in_flight_stream(nodes, mock):
    n = nodes.start("term")
    route = Route(n, mock)
    wait_key_visible(n, route.secret, route.model)
    chunks, delay = 40, 100  # ~4 s of stream
    body = {"model": route.model, "stream": True,
            "messages": [{"role": "user", "content": "drain " + directive(chunks=chunks,
                                                                            delay_ms=delay)}]}
    state = {"content": 0, "error": None, "result": None}
    started = threading.Event()

    def on_data(chunk):
        state["content"] += chunk.count(b'" tok')
        if state["content"] >= 3:
            started.set()

    def reader():
        # the raw h2 client: httpx 0.23 would fail the stream on the graceful GOAWAY
        try:
            state["result"] = harness.h2_request(
                n.port, "POST", "/v1/chat/completions",
                headers=[("authorization", "Bearer " + route.secret),
                         ("content-type", "application/json")],
                body=json.dumps(body).encode(), on_data=on_data, timeout=30)
        except Exception as exc:  # noqa: BLE001 - checked below
            state["error"] = repr(exc)
        finally:
            started.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert started.wait(bound(15)) and state["error"] is None, state
    t_term = time.monotonic()
    os.kill(n.pid, signal.SIGTERM)

    def refused():
        try:
            with socket.create_connection(("127.0.0.1", n.port), timeout=1):
                return False
        except (ConnectionRefusedError, ConnectionResetError):
            return True
    def not_ready():
        try:
            code, body = n.readyz()
        except Exception:  # noqa: BLE001 - the admin listener may be closed already
            return True
        return code == 503 and body.get("ready") is False and body.get("draining") is True
    wait_for(not_ready, 3, "/readyz to stop saying ready after SIGTERM", interval=0.02)
    wait_for(refused, 3, "new connections to be refused after SIGTERM", interval=0.02)
    refused_after = time.monotonic() - t_term
    assert t.is_alive(), "the stream ended before new connections were refused: %r" % state
    code = n.proc.wait(15)
    exited_after = time.monotonic() - t_term
    t.join(timeout=bound(5))
    print("SIGTERM: refused new connections after %.2fs, exited %r after %.2fs"
          % (refused_after, code, exited_after))
    assert state["error"] is None, state
    res = state["result"]
    print("client saw GOAWAYs %r, stream ended %r, reset %r"
          % (res["goaways"], res["ended"], res["reset"]))
    assert res["status"] == 200, res
    assert res["ended"] and res["reset"] is None, res
    assert state["content"] == chunks, state
    assert res["data"].rstrip().endswith(b"data: [DONE]"), res["data"][-200:]
    assert res["goaways"], "no GOAWAY on the draining connection"
    assert code == 0, "exit code %r" % code
    rid = res["headers"].get("x-request-id")
    rec = None
    for line in n.proc.stdout_text().splitlines():
        if rid and rid in line and line.startswith("{"):
            rec = json.loads(line)
    assert rec is not None, "no metadata line for the drained stream"
    served = route.stats()
    assert rec["output_tokens"] == served["output_tokens"] == chunks, (rec, served)
    assert rec["estimated"] is False
