"""In-memory fake of the node's admin API (docs/admin-api.md), for testing llmrelayctl.

It doubles as an executable version of the spec: every status, error shape and field of
docs/admin-api.md for health, providers and keys is implemented here, on the stdlib's
http.server, bound to 127.0.0.1 on an ephemeral port. Use it from a test:

    fake = FakeAdmin(tokens={"tok": "admin"}); fake.start(); ... fake.stop()

or run it by hand: `python3 fake_admin.py --token tok` prints `PORT <n>` and serves.
Upstream keys are kept in memory only and answered masked ("…" + last 4 characters).
"""

import argparse
import datetime
import hashlib
import hmac
import http.server
import json
import re
import secrets
import sys
import threading
import urllib.parse

MAX_BODY = 64 * 1024
PROVIDER_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
KEY_ID = re.compile(r"^key_[A-Za-z0-9]{1,60}$")
RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")

ERROR_KIND = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_token"),
    403: ("permission_error", "forbidden"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    500: ("api_error", "internal_error"),
    503: ("api_error", "etcd_unavailable"),
}


class ApiError(Exception):
    def __init__(self, status, message, allow=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def fmt_time(t):
    return t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s):
    m = RFC3339.match(s)
    if not m:
        return None
    text = s.upper().replace("Z", "+00:00")
    try:
        t = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return t.astimezone(datetime.timezone.utc).replace(microsecond=0)


def mask_key(k):
    return "\u2026" + k[-4:] if len(k) >= 12 else "\u2026"


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v):
    return (isinstance(v, (int, float))) and not isinstance(v, bool)


def str_list(body, field, lo, hi, maxlen, required):
    v = body.get(field)
    if v is None:
        if required:
            raise ApiError(400, f"{field} is required")
        return None
    if not isinstance(v, list) or not (lo <= len(v) <= hi):
        raise ApiError(400, f"{field} must be an array of {lo} to {hi} strings")
    for s in v:
        if not isinstance(s, str) or not s or len(s) > maxlen:
            raise ApiError(400, f"{field} must hold non-empty strings of at most {maxlen} characters")
    return list(v)


class State:
    def __init__(self, tokens):
        self.tokens = dict(tokens)  # token -> role
        self.providers = {}  # name -> record with clear upstream keys
        self.keys = {}  # id -> record (sha256 of secret, never the secret)
        self.etcd_up = True
        self.draining = False
        self.revision = 1
        self.lock = threading.Lock()
        self.requests = []  # (method, path) log, for tests

    # providers

    def provider_view(self, p):
        out = {k: v for k, v in p.items() if k != "api_keys"}
        out["api_keys"] = [mask_key(k) for k in p["api_keys"]]
        order = ["name", "type", "base_url", "api_keys", "models", "map", "priority", "weight", "region",
                 "updated_at"]
        return {k: out[k] for k in order}

    def provider_put(self, name, body):
        if not PROVIDER_NAME.match(name):
            raise ApiError(400, "invalid provider name")
        t = body.get("type")
        if t not in ("openai", "anthropic", "gemini"):
            raise ApiError(400, "type must be openai, anthropic or gemini")
        url = body.get("base_url")
        if not isinstance(url, str) or not re.match(r"^https?://.+", url) or len(url) > 1024:
            raise ApiError(400, "base_url must be an http:// or https:// URL")
        url = url.rstrip("/")
        api_keys = str_list(body, "api_keys", 1, 64, 512, True)
        models = str_list(body, "models", 1, 1024, 256, True)
        mp = body.get("map")
        if mp is None:
            mp = {}
        if not isinstance(mp, dict) or len(mp) > 1024 or not all(
                isinstance(v, str) and v and k for k, v in mp.items()):
            raise ApiError(400, "map must be an object of alias to upstream model")
        prio = body.get("priority", 0)
        if prio is None:
            prio = 0
        if not is_int(prio) or not -1000000 <= prio <= 1000000:
            raise ApiError(400, "priority must be an integer")
        weight = body.get("weight", 1)
        if weight is None:
            weight = 1
        if not is_int(weight) or not 0 <= weight <= 1000000:
            raise ApiError(400, "weight must be an integer from 0 to 1000000")
        region = body.get("region")
        if region is not None and (not isinstance(region, str) or len(region) > 64):
            raise ApiError(400, "region must be a string or null")
        self.need_etcd()
        rec = {"name": name, "type": t, "base_url": url, "api_keys": api_keys, "models": models, "map": dict(mp),
               "priority": prio, "weight": weight, "region": region, "updated_at": fmt_time(now_utc())}
        self.providers[name] = rec
        self.revision += 1
        return self.provider_view(rec)

    # keys

    def key_view(self, k):
        lim = k["limits"]
        status = k["status"]
        if status == "active" and lim["expires"] is not None and parse_time(lim["expires"]) <= now_utc():
            status = "expired"
        spent = dict(k["spent"])
        rem_tokens = None
        if lim["budget_tokens"] is not None:
            rem_tokens = max(0, lim["budget_tokens"] - spent["input_tokens"] - spent["output_tokens"])
        rem_usd = None
        if lim["budget_usd"] is not None:
            rem_usd = max(0, lim["budget_usd"] - spent["usd"])
        return {"id": k["id"], "name": k["name"], "status": status, "created": k["created"],
                "prefix": k["prefix"], "limits": dict(lim), "spent": spent,
                "remaining": {"tokens": rem_tokens, "usd": rem_usd}}

    def key_create(self, body):
        name = body.get("name")
        if not isinstance(name, str) or not name or len(name) > 128:
            raise ApiError(400, "name is required (a string of at most 128 characters)")
        models = str_list(body, "models", 1, 1024, 256, False)
        expires = body.get("expires")
        if expires is not None:
            t = parse_time(expires) if isinstance(expires, str) else None
            if t is None:
                raise ApiError(400, "expires must be an RFC 3339 time")
            expires = fmt_time(t)
        bt = body.get("budget_tokens")
        if bt is not None and (not is_int(bt) or bt < 0):
            raise ApiError(400, "budget_tokens must be an integer >= 0")
        bu = body.get("budget_usd")
        if bu is not None and (not is_num(bu) or bu < 0):
            raise ApiError(400, "budget_usd must be a number >= 0")
        for f in ("rpm", "tpm"):
            v = body.get(f)
            if v is not None and (not is_int(v) or v < 1):
                raise ApiError(400, f"{f} must be an integer >= 1")
        self.need_etcd()
        secret = "sk-lr-" + secrets.token_hex(24)
        kid = "key_" + secrets.token_hex(8)
        rec = {"id": kid, "name": name, "status": "active", "created": fmt_time(now_utc()),
               "prefix": secret[:10], "hash": hashlib.sha256(secret.encode()).hexdigest(),
               "limits": {"budget_tokens": bt, "budget_usd": bu, "rpm": body.get("rpm"), "tpm": body.get("tpm"),
                          "models": models, "expires": expires},
               "spent": {"requests": 0, "input_tokens": 0, "output_tokens": 0, "usd": 0}}
        self.keys[kid] = rec
        self.revision += 1
        view = self.key_view(rec)
        out = {"id": kid, "key": secret}
        out.update({k: v for k, v in view.items() if k != "id"})
        return out

    def need_etcd(self):
        if not self.etcd_up:
            raise ApiError(503, "etcd is unreachable; the change was not stored")

    # dispatch

    def handle(self, method, path, headers, body_bytes):
        """Returns (status, body_dict, extra_headers)."""
        path = urllib.parse.urlsplit(path).path
        self.requests.append((method, path))
        if path == "/healthz":
            if method != "GET":
                raise ApiError(405, "method not allowed", allow="GET")
            return 200, {"status": "ok"}
        if path == "/readyz":
            if method != "GET":
                raise ApiError(405, "method not allowed", allow="GET")
            ready = not self.draining
            return (200 if ready else 503), {"ready": ready, "snapshot": "etcd" if self.etcd_up else "cached",
                                             "etcd": "ok" if self.etcd_up else "unreachable",
                                             "draining": self.draining, "revision": self.revision}
        if not path.startswith("/admin/v1/"):
            raise ApiError(404, "not found")
        auth = headers.get("Authorization", "")
        role = None
        if auth.startswith("Bearer "):
            given = auth[len("Bearer "):].encode()
            for tok, r in self.tokens.items():
                if hmac.compare_digest(given, tok.encode()):
                    role = r
        if role is None:
            raise ApiError(401, "missing or invalid admin token")
        if len(body_bytes) > MAX_BODY:
            raise ApiError(413, "request body too large")
        parts = path[len("/admin/v1/"):].split("/")
        write = method != "GET"
        route = self.route(parts, method)
        if write and role == "viewer":
            raise ApiError(403, "this token's role may not change anything")
        body = {}
        if method in ("PUT", "POST") and route in ("provider_put", "key_create"):
            try:
                body = json.loads(body_bytes.decode("utf-8")) if body_bytes else None
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "request body is not valid JSON")
            if not isinstance(body, dict):
                raise ApiError(400, "request body must be a JSON object")
        if route == "providers_list":
            return 200, {"providers": [self.provider_view(self.providers[n]) for n in sorted(self.providers)]}
        if route == "provider_get":
            return 200, self.provider_view(self.get_provider(parts[1]))
        if route == "provider_put":
            return 200, self.provider_put(parts[1], body)
        if route == "provider_delete":
            self.get_provider(parts[1])
            self.need_etcd()
            del self.providers[parts[1]]
            self.revision += 1
            return 200, {"deleted": parts[1]}
        if route == "keys_list":
            ks = sorted(self.keys.values(), key=lambda k: (k["created"], k["id"]))
            return 200, {"keys": [self.key_view(k) for k in ks]}
        if route == "key_create":
            return 201, self.key_create(body)
        if route == "key_get":
            return 200, self.key_view(self.get_key(parts[1]))
        if route == "key_revoke":
            k = self.get_key(parts[1])
            self.need_etcd()
            k["status"] = "revoked"
            self.revision += 1
            return 200, self.key_view(k)
        raise ApiError(404, "not found")

    def route(self, parts, method):
        def allow(methods, name):
            if method not in methods:
                raise ApiError(405, "method not allowed", allow=", ".join(methods))
            return name[method]

        if parts == ["providers"]:
            return allow(["GET"], {"GET": "providers_list"})
        if len(parts) == 2 and parts[0] == "providers":
            if not PROVIDER_NAME.match(parts[1]):
                if method == "PUT":
                    raise ApiError(400, "invalid provider name")
                raise ApiError(404, "provider not found")
            return allow(["GET", "PUT", "DELETE"],
                         {"GET": "provider_get", "PUT": "provider_put", "DELETE": "provider_delete"})
        if parts == ["keys"]:
            return allow(["GET", "POST"], {"GET": "keys_list", "POST": "key_create"})
        if len(parts) == 2 and parts[0] == "keys":
            if not KEY_ID.match(parts[1]):
                raise ApiError(404, "key not found")
            return allow(["GET"], {"GET": "key_get"})
        if len(parts) == 3 and parts[0] == "keys" and parts[2] == "revoke":
            if not KEY_ID.match(parts[1]):
                raise ApiError(404, "key not found")
            return allow(["POST"], {"POST": "key_revoke"})
        raise ApiError(404, "not found")

    def get_provider(self, name):
        p = self.providers.get(name)
        if p is None:
            raise ApiError(404, "provider not found")
        return p

    def get_key(self, kid):
        k = self.keys.get(kid)
        if k is None:
            raise ApiError(404, "key not found")
        return k


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-admin/1"

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def _serve(self):
        state = self.server.state
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n > 0 else b""
        extra = {}
        with state.lock:
            try:
                status, obj = state.handle(self.command, self.path, self.headers, body)
            except ApiError as e:
                typ, code = ERROR_KIND[e.status]
                status, obj = e.status, {"error": {"message": e.message, "type": typ, "code": code}}
                if e.allow:
                    extra["Allow"] = e.allow
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve


class FakeAdmin:
    def __init__(self, tokens=None, host="127.0.0.1"):
        self.state = State(tokens or {"test-admin-token": "admin"})
        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.server.state = self.state
        self.thread = None

    @property
    def port(self):
        return self.server.server_address[1]

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        if self.thread:
            self.thread.join(5)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--token", action="append", default=[], help="admin token (role admin); repeatable")
    ap.add_argument("--viewer-token", action="append", default=[])
    a = ap.parse_args()
    tokens = {t: "admin" for t in a.token} or {"test-admin-token": "admin"}
    tokens.update({t: "viewer" for t in a.viewer_token})
    fake = FakeAdmin(tokens)
    print(f"PORT {fake.port}", flush=True)
    try:
        fake.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake.server.server_close()


if __name__ == "__main__":
    sys.exit(main())
