"""End-to-end harness: real processes on loopback for the chaos tests.

It starts and stops etcd, the mock provider, llmrelay nodes, tinyproxy and a cuttable TCP
relay, each on free 127.0.0.1 ports with its own temp directory, so several test files can
run in parallel (ctest -j). Every process started goes into a registry that an atexit hook
(and the pytest fixtures' finalizers) kill, so nothing outlives a test run even on failure.

Waiting is always by polling with a generous bound (`wait_for`), never by fixed sleeps.
Under the sanitizer build (LLMRELAY_SANITIZED=1) every bound is multiplied by SLOW.

Binaries come from $LLMRELAY_BIN (a build directory; default ../build relative to this
file): llmrelay, mockprovider, llmrelayctl."""

import atexit
import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.abspath(os.environ.get("LLMRELAY_BIN") or os.path.join(HERE, "..", "build"))
SANITIZED = os.environ.get("LLMRELAY_SANITIZED") == "1"
SLOW = 3.0 if SANITIZED else 1.0
ETCD = "/usr/bin/etcd"
TINYPROXY = "/usr/bin/tinyproxy"

# Loopback traffic must never go through a proxy the environment happens to name: only the
# proxy test sets one, explicitly, for the node it starts.
for _var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy",
             "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
    os.environ.pop(_var, None)


def binary(name):
    return os.path.join(BIN, name)


def bound(seconds):
    """A wait bound, stretched under the sanitizer build."""
    return seconds * SLOW


# ---------------------------------------------------------------------------- utilities

def free_port(host="127.0.0.1"):
    """A port that was free a moment ago. The kernel hands out ephemeral ports in a
    randomised order, so two test files asking at once do not get the same one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Fatal(AssertionError):
    """Raised by a polled predicate when waiting longer is pointless (a process died)."""


def wait_for(predicate, timeout, what, interval=0.05):
    """Polls predicate() until it returns a truthy value (returned) or timeout seconds
    pass (AssertionError naming `what` and the last exception seen). A Fatal raised by the
    predicate ends the wait at once."""
    deadline = time.monotonic() + bound(timeout)
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Fatal:
            raise
        except Exception as exc:  # noqa: BLE001 - polling tolerates transient errors
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = " (last error: %r)" % (last_exc,) if last_exc else ""
            raise AssertionError("timed out after %.1fs waiting for %s%s"
                                 % (bound(timeout), what, detail))
        time.sleep(interval)


def key_file(directory, name):
    """A 32-byte random key, base64 (the format of --cluster-key-file and
    --secrets-key-file), in a 0600 file; returns its path."""
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    os.chmod(path, 0o600)
    return path


def rand_id(n=8):
    return secrets.token_hex(n // 2 + 1)[:n]


def tail(path, limit=4000):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


# ------------------------------------------------------------------ process registry

_REGISTRY = []
_REGISTRY_LOCK = threading.Lock()
_LIBC = None


def _die_with_parent():
    """preexec_fn: the child gets SIGKILL when the test process dies, however it dies (a
    ctest timeout kills pytest without running atexit hooks)."""
    global _LIBC
    import ctypes
    if _LIBC is None:
        _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
    _LIBC.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _kill_all():
    with _REGISTRY_LOCK:
        procs = list(_REGISTRY)
    for p in procs:
        p.kill()


atexit.register(_kill_all)


def live_processes():
    with _REGISTRY_LOCK:
        return [p for p in _REGISTRY if p.running()]


class Proc:
    """One child process with stdout/stderr captured to files in its directory."""

    def __init__(self, name, argv, directory, env=None):
        self.name = name
        self.argv = list(argv)
        self.directory = directory
        self.env = env
        self.stdout_path = os.path.join(directory, name + ".stdout")
        self.stderr_path = os.path.join(directory, name + ".stderr")
        self.popen = None
        self.returncode = None

    def start(self):
        assert self.popen is None or self.popen.poll() is not None, "already running"
        os.makedirs(self.directory, exist_ok=True)
        out = open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab")
        env = dict(os.environ)
        if self.env:
            for k, v in self.env.items():
                if v is None:
                    env.pop(k, None)
                else:
                    env[k] = v
        try:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=err,
                                          stdin=subprocess.DEVNULL, env=env,
                                          start_new_session=True,
                                          preexec_fn=_die_with_parent)
        finally:
            out.close()
            err.close()
        self.returncode = None
        with _REGISTRY_LOCK:
            if self not in _REGISTRY:
                _REGISTRY.append(self)
        return self

    @property
    def pid(self):
        return self.popen.pid

    def running(self):
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig):
        if self.running():
            self.popen.send_signal(sig)

    def wait(self, timeout):
        """Waits for exit; returns the exit code, or None if still running after timeout."""
        try:
            self.returncode = self.popen.wait(timeout=bound(timeout))
            return self.returncode
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL after timeout. Returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.kill()
        self.returncode = self.popen.wait()
        return self.returncode

    def kill(self):
        if self.popen is not None and self.popen.poll() is None:
            try:
                self.popen.kill()
            except OSError:
                pass
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.popen is not None:
            self.returncode = self.popen.poll()

    def stdout_text(self):
        try:
            with open(self.stdout_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tails(self, limit=3000):
        return "--- %s stdout (tail) ---\n%s\n--- %s stderr (tail) ---\n%s\n" % (
            self.name, tail(self.stdout_path, limit), self.name, tail(self.stderr_path, limit))

    def rss_kib(self):
        """VmRSS of the process in KiB (from /proc/PID/status)."""
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")


# ------------------------------------------------------------------------------ etcd

class Etcd:
    """A single-member etcd 3.4 with a temp data dir; stop()/start() keep ports and data."""

    def __init__(self, directory):
        self.directory = directory
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = "http://127.0.0.1:%d" % self.client_port
        peer = "http://127.0.0.1:%d" % self.peer_port
        self.proc = Proc("etcd", [
            ETCD, "--name", "e2e", "--data-dir", os.path.join(directory, "etcd-data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", "e2e=" + peer, "--initial-cluster-state", "new",
            "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
        ], directory)

    def start(self):
        self.proc.start()
        wait_for(self.healthy, 20, "etcd /health on %s" % self.url)
        return self

    def healthy(self):
        if not self.proc.running():
            raise Fatal("etcd exited:\n" + self.proc.log_tails())
        r = httpx.get(self.url + "/health", timeout=2)
        return r.status_code == 200 and r.json().get("health") == "true"

    def stop(self):
        self.proc.stop(timeout=10)

    def kill(self):
        self.proc.kill()

    def restart(self):
        self.stop()
        return self.start()

    # Small helpers over the JSON gateway, for tests that look at what the node stored.
    def range_prefix(self, prefix):
        key = base64.b64encode(prefix.encode()).decode()
        end = base64.b64encode(_prefix_end(prefix.encode())).decode()
        r = httpx.post(self.url + "/v3/kv/range", json={"key": key, "range_end": end},
                       timeout=5)
        r.raise_for_status()
        out = {}
        for kv in r.json().get("kvs", []):
            out[base64.b64decode(kv["key"]).decode("utf-8", "replace")] = \
                base64.b64decode(kv.get("value", ""))
        return out


def _prefix_end(prefix):
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"


# ------------------------------------------------------------------------ mock provider

class Mock:
    """The mock provider (cleartext HTTP/1.1 + h2c, or TLS with tls=(cert, key))."""

    def __init__(self, directory, name="mock", tls=None, args=(), port=0):
        self.directory = directory
        self.name = name
        self.tls = tls
        self.requested_port = port
        self.port = None
        argv = [binary("mockprovider"), "--listen", "127.0.0.1:%d" % port, "--quiet"]
        if tls:
            argv += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        argv += list(args)
        self.proc = Proc(name, argv, directory)

    def start(self):
        self.proc.start()
        pat = re.compile(r"mockprovider listening on [^\s:]+:(\d+)")

        def listening():
            if not self.proc.running():
                raise Fatal("mockprovider exited:\n" + self.proc.log_tails())
            m = pat.search(self.proc.stdout_text())
            return m and int(m.group(1))

        self.port = wait_for(listening, 15, "mockprovider to listen")
        scheme = "https" if self.tls else "http"
        self.url = "%s://127.0.0.1:%d" % (scheme, self.port)
        self.base_url = self.url + "/v1"
        wait_for(lambda: self.stats() is not None, 10, "mockprovider /mock/stats")
        return self

    def stop(self):
        self.proc.stop(timeout=5)

    def _client(self):
        return httpx.Client(verify=False, timeout=10)

    def stats(self):
        with self._client() as c:
            r = c.get(self.url + "/mock/stats")
            r.raise_for_status()
            return r.json()

    def key_stats(self, upstream_key):
        """The mock's counters for one upstream key (zeros if it was never used)."""
        zero = {"requests": 0, "input_tokens": 0, "output_tokens": 0, "connections": 0,
                "errors": 0}
        got = self.stats().get("keys", {}).get(upstream_key)
        if got:
            zero.update(got)
        return zero

    def requests(self):
        with self._client() as c:
            r = c.get(self.url + "/mock/requests")
            r.raise_for_status()
            body = r.json()
            return body["requests"] if isinstance(body, dict) else body

    def requests_of(self, upstream_key):
        """What the mock received under one upstream key (GET /mock/requests?key=K), oldest
        first: shapes only (path, model, auth, fields, role:part-types, tools), never text."""
        with self._client() as c:
            r = c.get(self.url + "/mock/requests", params={"key": upstream_key})
            r.raise_for_status()
            body = r.json()
            return body["requests"] if isinstance(body, dict) else body

    def requests_for(self, upstream_key):
        return [q for q in self.requests() if q.get("key_suffix") and
                upstream_key.endswith(q["key_suffix"])]

    def configure(self, **cfg):
        with self._client() as c:
            r = c.post(self.url + "/mock/config", json=cfg)
            r.raise_for_status()

    def reset(self):
        with self._client() as c:
            c.post(self.url + "/mock/reset").raise_for_status()


def directive(**kw):
    """The mock's per-request directive text, e.g. directive(chunks=3, delay_ms=10)."""
    return "[[mock:%s]]" % ",".join("%s=%s" % (k, v) for k, v in kw.items())


# ----------------------------------------------------------------------------- the node

class Node:
    """One llmrelay node. The client API is on TLS (self-signed by default) and on a
    cleartext listener; the admin API on its own port. stdout/stderr go to files, and
    stdout carries one JSON metadata line per request."""

    def __init__(self, directory, name, etcd_urls, prefix, admin_token=None, workers=2,
                 extra_args=(), env=None, upstream_ca=None, tls=None, config_file=None,
                 ports=None):
        self.directory = os.path.join(directory, name)
        os.makedirs(self.directory, exist_ok=True)
        self.name = name
        self.etcd_urls = etcd_urls
        self.prefix = prefix
        self.workers = workers
        self.admin_token = admin_token or ("adm-" + secrets.token_hex(16))
        self.token_file = os.path.join(self.directory, "admin.token")
        with open(self.token_file, "w") as f:
            f.write(self.admin_token + "\n")
        ports = ports or {}
        self.port = ports.get("listen") or free_port()
        self.plain_port = ports.get("plain") or free_port()
        self.admin_port = ports.get("admin") or free_port()
        self.data_dir = os.path.join(self.directory, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.tls = tls
        self.extra_args = list(extra_args)
        self.upstream_ca = upstream_ca
        self.config_file = config_file
        self.url = "https://127.0.0.1:%d" % self.port
        self.plain_url = "http://127.0.0.1:%d" % self.plain_port
        self.admin_url = "http://127.0.0.1:%d" % self.admin_port
        self.proc = Proc("node-" + name, self.argv(), self.directory, env=env)
        self.admin = Admin(self.admin_url, self.admin_token)

    def argv(self):
        if self.config_file:
            return [binary("llmrelay"), "--config", self.config_file] + self.extra_args
        a = [binary("llmrelay"), "--name", self.name,
             "--listen", "127.0.0.1:%d" % self.port,
             "--listen-plain", "127.0.0.1:%d" % self.plain_port,
             "--admin-listen", "127.0.0.1:%d" % self.admin_port,
             "--admin-token-file", self.token_file,
             "--etcd", ",".join(self.etcd_urls) if isinstance(self.etcd_urls, (list, tuple))
             else self.etcd_urls,
             "--etcd-prefix", self.prefix,
             "--data-dir", self.data_dir,
             "--workers", str(self.workers),
             "--usage-drain-timeout", "5s",
             "--shutdown-timeout", "10s"]
        if self.tls:
            a += ["--tls-cert", self.tls[0], "--tls-key", self.tls[1]]
        else:
            a += ["--tls-self-signed"]
        if self.upstream_ca:
            a += ["--upstream-ca-file", self.upstream_ca]
        return a + self.extra_args

    # lifecycle
    def start(self, wait=True, ready_timeout=20):
        self.proc.start()
        if wait:
            self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout=20):
        def ready():
            if not self.proc.running():
                raise Fatal("llmrelay %s exited with %r:\n%s"
                                     % (self.name, self.proc.popen.poll(),
                                        self.proc.log_tails()))
            r = httpx.get(self.admin_url + "/readyz", timeout=2)
            return r.status_code == 200 and r.json().get("ready") is True
        wait_for(ready, timeout, "node %s /readyz" % self.name)

    def readyz(self):
        r = httpx.get(self.admin_url + "/readyz", timeout=5)
        return r.status_code, r.json()

    def stop(self, timeout=15):
        return self.proc.stop(timeout=timeout)

    def kill(self):
        self.proc.kill()

    def restart(self, wait=True):
        self.stop()
        return self.start(wait=wait)

    def running(self):
        return self.proc.running()

    @property
    def pid(self):
        return self.proc.pid

    def rss_kib(self):
        return self.proc.rss_kib()

    # clients
    def client(self, **kw):
        """httpx client over TLS + HTTP/2 (self-signed: not verified)."""
        kw.setdefault("timeout", 30)
        return httpx.Client(http2=True, verify=False, base_url=self.url, **kw)

    def h1_client(self, **kw):
        kw.setdefault("timeout", 30)
        return httpx.Client(http1=True, http2=False, verify=False, base_url=self.url, **kw)

    # metadata lines
    def metadata(self):
        out = []
        for line in self.proc.stdout_text().splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("type") == "request":
                out.append(rec)
        return out

    def wait_metadata(self, request_id, timeout=10):
        """The metadata line of one request (matched on request_id)."""
        def find():
            for rec in self.metadata():
                if rec.get("request_id") == request_id:
                    return rec
            return None
        return wait_for(find, timeout, "metadata line for request %s on %s"
                        % (request_id, self.name))

    def logs_text(self):
        return self.proc.stdout_text() + self.proc.stderr_text()


class Admin:
    """The admin API over HTTP/1.1 (httpx)."""

    def __init__(self, url, token):
        self.url = url
        self.token = token
        self.calls = []  # every request made: method, path, status, request_id, token

    def request(self, method, path, json_body=None, token=None, expect=None, params=None):
        headers = {"authorization": "Bearer " + (token if token is not None else self.token)}
        r = httpx.request(method, self.url + path, json=json_body, headers=headers, timeout=15,
                          params=params)
        # every call is remembered (its answer's x-request-id names its audit entry)
        self.calls.append({"method": method, "path": path, "status": r.status_code,
                           "request_id": r.headers.get("x-request-id"),
                           "token": token if token is not None else self.token})
        if expect is not None:
            assert r.status_code == expect, "%s %s -> %d %s" % (method, path, r.status_code,
                                                                r.text[:500])
        return r

    def as_token(self, token):
        """The same listener with another admin token (its calls are remembered apart)."""
        return Admin(self.url, token)

    def put_price(self, model, input_usd, output_usd, expect=200, **kw):
        body = {"input": input_usd, "output": output_usd}
        body.update(kw)
        return self.request("PUT", "/admin/v1/prices/" + model, body, expect=expect).json()

    def create_token(self, name, role, expect=201):
        return self.request("POST", "/admin/v1/tokens", {"name": name, "role": role},
                            expect=expect).json()

    def rotate_key(self, key_id, grace=None, expect=200):
        body = {"grace": grace} if grace is not None else None
        return self.request("POST", "/admin/v1/keys/%s/rotate" % key_id, body,
                            expect=expect).json()

    def logs(self, expect=200, **query):
        """One page of GET /admin/v1/logs (query: key, since, until, status, limit, cursor)."""
        return self.request("GET", "/admin/v1/logs", params=query, expect=expect).json()

    def all_logs(self, **query):
        """Every record GET /admin/v1/logs gives for the query, following next_cursor."""
        out, cursor = [], None
        for _ in range(10000):
            q = dict(query)
            if cursor:
                q["cursor"] = cursor
            page = self.logs(**q)
            out.extend(page["records"])
            cursor = page.get("next_cursor")
            if not cursor:
                return out
        raise AssertionError("logs paging did not end")

    def usage(self, expect=200, **query):
        return self.request("GET", "/admin/v1/usage", params=query, expect=expect).json()

    def audit(self, expect=200, **query):
        """Every audit entry for the query (following next_cursor)."""
        out, cursor = [], None
        for _ in range(10000):
            q = dict(query)
            if cursor:
                q["cursor"] = cursor
            page = self.request("GET", "/admin/v1/audit", params=q, expect=expect).json()
            out.extend(page["entries"])
            cursor = page.get("next_cursor")
            if not cursor:
                return out
        raise AssertionError("audit paging did not end")

    def put_provider(self, name, base_url, api_keys, models, type_="openai", expect=200, **kw):
        body = {"type": type_, "base_url": base_url, "api_keys": list(api_keys),
                "models": list(models)}
        body.update(kw)
        return self.request("PUT", "/admin/v1/providers/" + name, body, expect=expect).json()

    def delete_provider(self, name, expect=200):
        return self.request("DELETE", "/admin/v1/providers/" + name, expect=expect)

    def create_key(self, name="e2e", expect=201, **kw):
        body = {"name": name}
        body.update(kw)
        return self.request("POST", "/admin/v1/keys", body, expect=expect).json()

    def revoke_key(self, key_id, expect=200):
        return self.request("POST", "/admin/v1/keys/%s/revoke" % key_id, {},
                            expect=expect).json()

    def key(self, key_id):
        return self.request("GET", "/admin/v1/keys/" + key_id, expect=200).json()


# --------------------------------------------------------------- routes and requests

def provider_base_url(mock, type_):
    """The mock's base URL for a provider of type_, by each SDK's convention: openai with the
    version (`<mock>/v1`), anthropic and gemini without (`<mock>`)."""
    return mock.base_url if type_ == "openai" else mock.url


class Route:
    """A provider on the mock with its own upstream key and model, plus a relay key that
    may use it: the mock's per-upstream-key stats then isolate one test's traffic."""

    def __init__(self, node, mock, tag=None, base_url=None, models=None, key_models=None,
                 key_limits=None, type_="openai"):
        tag = tag or rand_id()
        self.tag = tag
        self.provider = "p-" + tag
        self.upstream_key = "sk-up-%s-%s" % (tag, secrets.token_hex(8))
        self.model = "m-" + tag
        self.models = models or [self.model]
        self.node = node
        self.mock = mock
        # type_: the provider's wire format (openai, anthropic, gemini) on the same mock
        self.type = type_
        node.admin.put_provider(self.provider, base_url or provider_base_url(mock, type_),
                                [self.upstream_key], self.models, type_=type_)
        # key_limits: more key fields (budget_tokens, budget_usd, rpm, tpm, expires)
        created = node.admin.create_key(name="k-" + tag, models=key_models,
                                        **(key_limits or {}))
        self.key_id = created["id"]
        self.secret = created["key"]

    def headers(self, **extra):
        h = {"authorization": "Bearer " + self.secret}
        h.update(extra)
        return h

    def stats(self):
        return self.mock.key_stats(self.upstream_key)


def wait_key_visible(node, secret, model, timeout=15):
    """Polls GET /v1/models on node with secret until it answers 200 and lists model:
    the config (key + provider) has reached that node."""
    def visible():
        with node.client(timeout=5) as c:
            r = c.get("/v1/models", headers={"authorization": "Bearer " + secret})
            if r.status_code != 200:
                return False
            return any(m.get("id") == model for m in r.json().get("data", []))
    wait_for(visible, timeout, "key + model %s visible on node %s" % (model, node.name))


def sse(text):
    """(event name or None, data text) of each event of an SSE body."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            out.append((name, "\n".join(data)))
    return out


def chat_body(text="hello there", stream=False, **kw):
    body = {"model": kw.pop("model"), "messages": [{"role": "user", "content": text}],
            "stream": stream}
    body.update(kw)
    return body


def sse_events(lines):
    """data: payloads of an SSE stream given as an iterable of lines (without [DONE])."""
    out = []
    for line in lines:
        if line.startswith("data:"):
            data = line[5:].strip()
            if data and data != "[DONE]":
                out.append(json.loads(data))
    return out


# ------------------------------------------------------------- raw HTTP/2 client

def h2_request(port, method, path, headers=(), body=b"", on_data=None, timeout=30,
               host="127.0.0.1"):
    """One request over a fresh TLS + HTTP/2 connection, with the h2 library directly.

    httpx 0.23 (httpcore 0.16) fails every open stream on any GOAWAY, even a graceful one
    that lets them finish, and the h2 library closes its connection state on GOAWAY and then
    refuses the DATA that follows. This client follows RFC 9113: it takes GOAWAY frames out
    of the byte stream itself (recording them) before h2 sees it, so a stream that the
    GOAWAY's last_stream_id covers can complete. on_data(chunk) is called as DATA arrives.
    Returns {"status", "headers", "data", "goaways", "ended", "reset", "closed"}."""
    import ssl as _ssl
    import h2.config
    import h2.connection
    import h2.events
    ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = _ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    out = {"status": None, "headers": {}, "data": b"", "goaways": [], "ended": False,
           "reset": None, "closed": False}
    raw = socket.create_connection((host, port), timeout=bound(timeout))
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        if s.selected_alpn_protocol() != "h2":
            raise AssertionError("no h2 from the server (ALPN %r)" % s.selected_alpn_protocol())
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                    header_encoding="utf-8"))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "https"), (":authority", host),
                (":path", path)] + list(headers)
        conn.send_headers(sid, hdrs, end_stream=not body)
        if body:
            conn.send_data(sid, body, end_stream=True)
        s.sendall(conn.data_to_send())
        deadline = time.monotonic() + bound(timeout)
        pending = b""
        while not out["ended"] and out["reset"] is None and time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except (OSError, _ssl.SSLError):
                data = b""
            if not data:
                out["closed"] = True
                break
            pending += data
            frames = b""
            while len(pending) >= 9:
                length = int.from_bytes(pending[0:3], "big")
                if len(pending) < 9 + length:
                    break
                frame, pending = pending[:9 + length], pending[9 + length:]
                if frame[3] == 0x7:  # GOAWAY: last stream id, error code
                    out["goaways"].append((int.from_bytes(frame[13:17], "big"),
                                           int.from_bytes(frame[9:13], "big") & 0x7FFFFFFF))
                else:
                    frames += frame
            for ev in conn.receive_data(frames) if frames else ():
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    out["headers"] = dict(ev.headers)
                    out["status"] = int(out["headers"][":status"])
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    out["data"] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                    if on_data:
                        on_data(ev.data)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    out["ended"] = True
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    out["reset"] = ev.error_code
            try:
                s.sendall(conn.data_to_send())
            except OSError:
                pass
    return out


# ----------------------------------------------------------------------- TCP relay

class TcpRelay:
    """A cuttable TCP forwarder 127.0.0.1:port -> target, in threads. cut() closes the
    listener and every relayed connection (the client then sees connection refused);
    restore() listens again on the same port."""

    def __init__(self, target_host, target_port, port=None):
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.listener = None
        self.conns = set()
        self.lock = threading.Lock()
        self.stopped = True

    def start(self):
        self.restore()
        return self

    def restore(self):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.listener = ls
        self.stopped = False
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls):
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.target, timeout=5)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            with self.lock:
                if self.stopped:
                    c.close()
                    u.close()
                    continue
                self.conns.add(c)
                self.conns.add(u)
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self.lock:
            for s in (src, dst):
                if s in self.conns:
                    self.conns.discard(s)
                    s.close()

    def cut(self):
        with self.lock:
            self.stopped = True
            ls, self.listener = self.listener, None
            conns = list(self.conns)
            self.conns.clear()
        if ls:
            # shutdown wakes the accept() blocked in the thread
            try:
                ls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            ls.close()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.cut()


# ---------------------------------------------------------------------------- tinyproxy

class TinyProxy:
    """Debian's tinyproxy in the foreground, logging every connection to a file."""

    def __init__(self, directory, connect_ports=()):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.port = free_port()
        self.log_path = os.path.join(directory, "tinyproxy.log")
        self.conf_path = os.path.join(directory, "tinyproxy.conf")
        lines = ["Port %d" % self.port, "Listen 127.0.0.1", "Bind 127.0.0.1", "Timeout 60",
                 "Allow 127.0.0.1", "LogFile \"%s\"" % self.log_path, "LogLevel Info",
                 "MaxClients 50", "DisableViaHeader Yes"]
        lines += ["ConnectPort %d" % p for p in connect_ports]
        with open(self.conf_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.url = "http://127.0.0.1:%d" % self.port
        self.proc = Proc("tinyproxy", [TINYPROXY, "-d", "-c", self.conf_path], directory)

    def start(self):
        self.proc.start()

        def up():
            if not self.proc.running():
                raise Fatal("tinyproxy exited:\n" + self.proc.log_tails())
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        wait_for(up, 10, "tinyproxy to listen")
        return self

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def connects(self, host_port):
        """How many CONNECT requests for host:port tinyproxy logged."""
        return len(re.findall(r"CONNECT %s " % re.escape(host_port), self.log()))

    def stop(self):
        self.proc.stop(timeout=5)


# ---------------------------------------------------------------------- test clock

class TestClock:
    """The file named by LLMRELAY_CLOCK_FILE: an offset in ms added to a node's calendar
    time. set()/advance() write it and wait until every node given has logged that it took
    the new offset ("test clock: offset now N ms", main thread, within ~100 ms)."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory, offset_ms=0):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "clock-offset")
        self.offset_ms = int(offset_ms)
        self._write(self.offset_ms)

    def env(self):
        return {"LLMRELAY_CLOCK_FILE": self.path}

    def _write(self, ms):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % ms)
        os.replace(tmp, self.path)

    def now_ms(self):
        """The nodes' calendar time (real time + offset), in ms."""
        return int(time.time() * 1000) + self.offset_ms

    def set(self, ms, nodes=()):
        ms = int(ms)
        if ms == self.offset_ms:
            return
        marks = [(n, len(n.proc.stderr_text())) for n in nodes if n.running()]
        self.offset_ms = ms
        self._write(ms)
        line = "test clock: offset now %d ms" % ms
        for n, mark in marks:
            wait_for(lambda n=n, mark=mark: line in n.proc.stderr_text()[mark:], 5,
                     "node %s to take clock offset %d ms" % (n.name, ms))

    def advance(self, ms, nodes=()):
        self.set(self.offset_ms + int(ms), nodes)


def node_metadata_files(node):
    """{file name: size} of the metadata segment files under <data-dir>/meta/."""
    d = os.path.join(node.data_dir, "meta")
    try:
        names = os.listdir(d)
    except OSError:
        return {}
    return {f: os.path.getsize(os.path.join(d, f)) for f in names if f.startswith("meta-")}


def ratelimit_headers(headers):
    """The four x-ratelimit-* values of an OpenAI-format answer as ints (None if absent)."""
    out = {}
    for name in ("limit-requests", "remaining-requests", "limit-tokens", "remaining-tokens"):
        v = headers.get("x-ratelimit-" + name)
        out[name] = int(v) if v is not None else None
    return out


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)
