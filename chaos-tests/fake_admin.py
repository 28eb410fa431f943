"""In-memory fake of the node's admin API (docs/admin-api.md), for testing llmrelayctl.

It doubles as an executable version of the spec: every status, error shape and field of
docs/admin-api.md (health, providers, keys with rotation, prices, tokens and roles, logs,
usage, audit, cluster membership, drain) is implemented here, on the stdlib's
http.server, bound to 127.0.0.1 on an ephemeral port. Use it from a test:

    fake = FakeAdmin(tokens={"tok": "admin"}); fake.start(); ... fake.stop()

or run it by hand: `python3 fake_admin.py --token tok` prints `PORT <n>` and serves.
Upstream keys are kept in memory only and answered masked ("…" + last 4 characters).
Logs and usage are computed from `state.records` (metadata records a test puts there);
`state.spent[key_id]` sets what a key has spent; every /admin/v1/ call is appended to
`state.audit`. The fake is the node `state.name` ("fake"); `state.members` is what GET
/admin/v1/cluster answers (a test may add members); POST /admin/v1/drain of the fake itself
sets `state.draining` (then /readyz answers 503).
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
import time
import urllib.parse

MAX_BODY = 64 * 1024
PROVIDER_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
KEY_ID = re.compile(r"^key_[A-Za-z0-9]{1,60}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9._:@+-]{1,128}$")
DURATION = re.compile(r"^(\d{1,12})(ms|s|m|h|d)$")
STATUS_FILTER = re.compile(r"^([1-5])(\d\d|[xX][xX])$")
CURSOR = re.compile(r"^[A-Za-z0-9._:=-]*$")
UNIT_MS = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000}
RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")

ERROR_KIND = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_token"),
    403: ("permission_error", "forbidden"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    500: ("api_error", "internal_error"),
    501: ("api_error", "not_implemented"),
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


def parse_duration_ms(s):
    m = DURATION.match(s or "")
    return int(m.group(1)) * UNIT_MS[m.group(2)] if m else None


def parse_time_arg(s, now_ms):
    """A duration back from now, or an RFC 3339 time -> unix ms (None if neither)."""
    d = parse_duration_ms(s)
    if d is not None:
        return now_ms - d
    t = parse_time(s)
    return int(t.timestamp() * 1000) if t is not None else None


def ms_of(ts):
    t = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return int(t.timestamp() * 1000)


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
        # token -> name (tokens given at start are named after their role: "admin", "viewer"...)
        self.token_names = {}
        for tok, role in tokens.items():
            name = role if role not in self.token_names.values() else f"{role}{len(self.token_names)}"
            self.token_names[tok] = name
        self.token_created = {}  # token -> created time
        self.prices = {}  # model -> record
        self.records = []  # metadata records (contract shape), for logs and usage
        self.spent = {}  # key id -> {"requests", "input_tokens", "output_tokens", "usd"}
        self.audit = []  # one entry per /admin/v1/ call
        self.providers = {}  # name -> record with clear upstream keys
        self.keys = {}  # id -> record (sha256 of secret, never the secret)
        self.etcd_up = True
        self.draining = False
        self.name = "fake"
        self.members = [{"name": "fake", "region": "local", "version": "0.0.0-fake", "status": "alive",
                         "gossip": None, "keys_owned": 0, "load": None}]
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
        spent = dict(self.spent.get(k["id"], k["spent"]))
        rem_tokens = None
        if lim["budget_tokens"] is not None:
            rem_tokens = max(0, lim["budget_tokens"] - spent["input_tokens"] - spent["output_tokens"])
        rem_usd = None
        if lim["budget_usd"] is not None:
            rem_usd = max(0, lim["budget_usd"] - spent["usd"])
        prev = k.get("previous_key_valid_until")
        if prev is not None and (k["status"] == "revoked" or parse_time(prev) <= now_utc()):
            prev = None
        return {"id": k["id"], "name": k["name"], "status": status, "created": k["created"],
                "prefix": k["prefix"], "limits": dict(lim), "spent": spent,
                "remaining": {"tokens": rem_tokens, "usd": rem_usd}, "revoked": k.get("revoked"),
                "previous_key_valid_until": prev}

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

    def key_rotate(self, k, body):
        grace_ms = 24 * 3600 * 1000
        if body and body.get("grace") is not None:
            g = body.get("grace")
            grace_ms = parse_duration_ms(g) if isinstance(g, str) else None
            if grace_ms is None or grace_ms > 30 * 86400000:
                raise ApiError(400, "grace must be a duration such as 30m, 24h or 7d (at most 30d)")
        if k["status"] == "revoked":
            raise ApiError(409, "the key is revoked; it cannot be rotated")
        self.need_etcd()
        secret = "sk-lr-" + secrets.token_hex(24)
        k["old_hashes"] = k.get("old_hashes", []) + [k["hash"]]
        k["hash"] = hashlib.sha256(secret.encode()).hexdigest()
        k["prefix"] = secret[:10]
        until = now_utc() + datetime.timedelta(milliseconds=grace_ms)
        k["previous_key_valid_until"] = fmt_time(until)
        self.revision += 1
        out = {"key": secret}
        out.update(self.key_view(k))
        return out

    # prices

    def price_put(self, model, body):
        rec = {"model": model}
        for f, required in (("input", True), ("output", True), ("cached_input", False), ("reasoning", False)):
            v = body.get(f)
            if v is None:
                if required:
                    raise ApiError(400, f"{f} is required: USD per 1M tokens")
                rec[f] = None
                continue
            if not is_num(v) or v < 0 or v > 1000000:
                raise ApiError(400, f"{f} must be a number of USD per 1M tokens")
            rec[f] = v
        self.need_etcd()
        rec["updated_at"] = fmt_time(now_utc())
        self.prices[model] = rec
        return dict(rec)

    # tokens

    def token_create(self, body):
        name, role = body.get("name"), body.get("role")
        if not isinstance(name, str) or not PROVIDER_NAME.match(name):
            raise ApiError(400, "name must be 1..64 characters of [A-Za-z0-9._-]")
        if role not in ("admin", "operator", "viewer"):
            raise ApiError(400, "role must be one of admin, operator, viewer")
        if name in self.token_names.values():
            raise ApiError(409, "a token with this name exists (delete it first)")
        self.need_etcd()
        tok = "lrt-" + secrets.token_urlsafe(32)
        self.tokens[tok] = role
        self.token_names[tok] = name
        created = fmt_time(now_utc())
        self.token_created[tok] = created
        return {"name": name, "role": role, "token": tok, "created": created}

    def token_list(self):
        out = [{"name": self.token_names[t], "role": r, "created": self.token_created.get(t)}
               for t, r in self.tokens.items()]
        return {"tokens": sorted(out, key=lambda x: x["name"])}

    def token_delete(self, name):
        toks = [t for t, n in self.token_names.items() if n == name]
        if not toks:
            raise ApiError(404, "no such token")
        self.need_etcd()
        for t in toks:
            del self.tokens[t]
            del self.token_names[t]
        return {"deleted": name}

    # logs, usage, audit

    def time_range(self, q):
        now = int(time.time() * 1000) + 1
        since, until = now - 86400000, now
        if "since" in q:
            since = parse_time_arg(q["since"], now)
            if since is None:
                raise ApiError(400, "since must be a duration (30s, 15m, 24h, 7d) or an RFC 3339 time")
        if "until" in q:
            until = parse_time_arg(q["until"], now)
            if until is None:
                raise ApiError(400, "until must be a duration (30s, 15m, 24h, 7d) or an RFC 3339 time")
        if since >= until:
            raise ApiError(400, "since must come before until")
        return since, until

    def key_filter(self, q):
        k = q.get("key")
        if k is not None and not KEY_ID.match(k):
            raise ApiError(400, "key must be a key id (key_...)")
        return k

    def logs(self, q):
        since, until = self.time_range(q)
        key = self.key_filter(q)
        st = q.get("status")
        m = STATUS_FILTER.match(st) if st is not None else None
        if st is not None and not m:
            raise ApiError(400, "status must be a status code (429) or a class (4xx)")
        limit = q.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            raise ApiError(400, "limit must be an integer from 1 to 1000")
        limit = int(limit)
        cursor = q.get("cursor", "")
        if not CURSOR.match(cursor) or (cursor and not cursor.isdigit()):
            raise ApiError(400, "cursor is not one this API gave")
        start = int(cursor) if cursor else 0
        out = []
        for r in sorted(self.records, key=lambda r: r["ts"]):
            if not since <= ms_of(r["ts"]) < until:
                continue
            if key is not None and r["key_id"] != key:
                continue
            if q.get("model") is not None and r["model"] != q["model"]:
                continue
            if m is not None:
                if m.group(2).isdigit() and r["status"] != int(st):
                    continue
                if not m.group(2).isdigit() and r["status"] // 100 != int(m.group(1)):
                    continue
            out.append(r)
        page = out[start:start + limit]
        nxt = str(start + limit) if start + limit < len(out) else None
        return {"records": page, "next_cursor": nxt}

    def usage(self, q):
        since, until = self.time_range(q)
        key = self.key_filter(q)
        by = q.get("by")
        if by is not None and by not in ("model", "hour", "node", "key"):
            raise ApiError(400, "by must be one of model, hour, node, key")
        zero = {"requests": 0, "input_tokens": 0, "output_tokens": 0, "usd": 0}
        totals, groups = dict(zero), {}
        for r in self.records:
            if not since <= ms_of(r["ts"]) < until or (key is not None and r["key_id"] != key):
                continue
            gname = None
            if by == "model":
                gname = r["model"]
            elif by == "node":
                gname = r["node"]
            elif by == "key":
                gname = r["key_id"]
            elif by == "hour":
                gname = r["ts"][:13] + ":00:00Z"
            for acc in [totals] + ([groups.setdefault(gname, dict(zero))] if by else []):
                acc["requests"] += 1
                acc["input_tokens"] += r["input_tokens"]
                acc["output_tokens"] += r["output_tokens"]
                acc["usd"] = round(acc["usd"] + r["usd"], 9)
        return {"from": fmt_time(datetime.datetime.fromtimestamp(since / 1000, datetime.timezone.utc)),
                "to": fmt_time(datetime.datetime.fromtimestamp(until / 1000, datetime.timezone.utc)),
                "totals": totals, "groups": [dict(group=g, **v) for g, v in sorted(groups.items())]}

    def audit_read(self, q):
        since, until = self.time_range(q)
        limit = q.get("limit", "1000")
        if not limit.isdigit() or not 1 <= int(limit) <= 10000:
            raise ApiError(400, "limit must be an integer from 1 to 10000")
        cursor = q.get("cursor", "")
        start = int(cursor) if cursor.isdigit() else 0
        rows = [e for e in self.audit if since <= e["ts_ms"] < until]
        page = rows[start:start + int(limit)]
        nxt = str(start + int(limit)) if start + int(limit) < len(rows) else None
        return {"entries": page, "next_cursor": nxt}

    def need_etcd(self):
        if not self.etcd_up:
            raise ApiError(503, "etcd is unreachable; the change was not stored")

    # dispatch

    def handle(self, method, path, headers, body_bytes):
        """Returns (status, body_dict); every /admin/v1/ call leaves an audit entry."""
        split = urllib.parse.urlsplit(path)
        path = split.path
        self.requests.append((method, path))
        if not path.startswith("/admin/v1/"):
            return self.dispatch(method, path, split.query, headers, body_bytes, {})
        who = {"token_name": "-", "role": "-", "target": None}
        status = 500
        try:
            status, obj = self.dispatch(method, path, split.query, headers, body_bytes, who)
            return status, obj
        except ApiError as e:
            status = e.status
            raise
        finally:
            now = now_utc()
            parts = path[len("/admin/v1/"):].split("/")
            templ = {"providers": "{name}", "keys": "{id}", "prices": "{model}", "tokens": "{name}"}
            action = "/admin/v1/" + parts[0] if parts[0] in templ or \
                parts[0] in ("logs", "usage", "audit", "cluster", "drain") \
                else "/admin/v1/(unknown)"
            if len(parts) >= 2 and parts[0] in templ:
                action += "/" + templ[parts[0]]
                if who["target"] is None:
                    who["target"] = parts[1] if re.match(r"^[A-Za-z0-9._:@+-]{1,128}$", parts[1]) \
                        and not parts[1].startswith("sk-") else "(invalid)"
            if len(parts) == 3:
                action += "/" + (parts[2] if parts[2] in ("revoke", "rotate") else "(unknown)")
            self.audit.append({"ts": fmt_time(now), "ts_ms": int(time.time() * 1000), "node": "fake",
                               "token_name": who["token_name"], "role": who["role"],
                               "action": f"{method} {action}", "target": who["target"], "status": status,
                               "ip": "127.0.0.0/24", "request_id": headers.get("x-request-id") or secrets.token_hex(16)})

    def dispatch(self, method, path, query, headers, body_bytes, who):
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
        who["role"] = role
        who["token_name"] = next(self.token_names[t] for t, r in self.tokens.items()
                                 if hmac.compare_digest(given, t.encode()))
        q = {}
        for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True):
            if k in q:
                raise ApiError(400, f"query parameter {k} appears more than once")
            q[k] = v
        if q.get("key") is not None and KEY_ID.match(q["key"]):
            who["target"] = q["key"]
        if len(body_bytes) > MAX_BODY:
            raise ApiError(413, "request body too large")
        parts = path[len("/admin/v1/"):].split("/")
        write = method != "GET"
        route = self.route(parts, method)
        if write and role == "viewer":
            raise ApiError(403, "this token's role (viewer) may only read")
        if write and role == "operator" and route.startswith(("price", "token")):
            raise ApiError(403, "this token's role (operator) may not change prices or admin tokens")
        if route == "audit" and role == "operator":
            raise ApiError(403, "this token's role (operator) may not read the audit log")
        body = {}
        if method in ("PUT", "POST") and route in ("provider_put", "key_create", "price_put", "token_create") or \
                (route in ("key_rotate", "drain") and body_bytes):
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
            if k["status"] != "revoked":
                self.need_etcd()
                k["status"] = "revoked"
                k["revoked"] = fmt_time(now_utc())
                self.revision += 1
            return 200, self.key_view(k)
        if route == "key_rotate":
            return 200, self.key_rotate(self.get_key(parts[1]), body)
        if route == "prices_list":
            return 200, {"prices": [dict(self.prices[m]) for m in sorted(self.prices)]}
        if route == "price_get":
            return 200, dict(self.get_price(parts[1]))
        if route == "price_put":
            return 200, self.price_put(parts[1], body)
        if route == "price_delete":
            self.get_price(parts[1])
            self.need_etcd()
            del self.prices[parts[1]]
            return 200, {"deleted": parts[1]}
        if route == "tokens_list":
            return 200, self.token_list()
        if route == "token_create":
            who["target"] = body.get("name") if isinstance(body.get("name"), str) else None
            return 201, self.token_create(body)
        if route == "token_delete":
            return 200, self.token_delete(parts[1])
        if route == "logs":
            return 200, self.logs(q)
        if route == "usage":
            return 200, self.usage(q)
        if route == "audit":
            return 200, self.audit_read(q)
        if route == "cluster":
            for m in self.members:
                m["keys_owned"] = len(self.keys) if m["name"] == self.name else m.get("keys_owned", 0)
            return 200, {"members": [dict(m) for m in self.members]}
        if route == "drain":
            return self.drain(body, who)
        raise ApiError(404, "not found")

    def drain(self, body, who):
        """POST /admin/v1/drain: the fake itself drains (202, idempotent); a live member is
        not reachable (501, as a node without --peer-listen answers); anything
        else is an unknown node (404)."""
        name = body.get("node")
        if name is not None and (not isinstance(name, str) or not PROVIDER_NAME.match(name)):
            raise ApiError(400, "\"node\" must be a node name (1..64 characters of [A-Za-z0-9._-])")
        who["target"] = name or self.name
        if name is None or name == self.name:
            self.draining = True
            return 202, {"node": self.name, "draining": True}
        if any(m["name"] == name and m["status"] in ("alive", "suspect") for m in self.members):
            raise ApiError(501, "draining another node needs peer RPC (--peer-listen) on both nodes")
        raise ApiError(404, "unknown node " + name)

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
        if len(parts) == 3 and parts[0] == "keys" and parts[2] in ("revoke", "rotate"):
            if not KEY_ID.match(parts[1]):
                raise ApiError(404, "key not found")
            return allow(["POST"], {"POST": "key_" + parts[2]})
        if parts == ["prices"]:
            return allow(["GET"], {"GET": "prices_list"})
        if len(parts) == 2 and parts[0] == "prices":
            if not MODEL_NAME.match(parts[1]):
                if method == "PUT":
                    raise ApiError(400, "a model name is 1..128 characters of [A-Za-z0-9._:@+-]")
                raise ApiError(404, "no price for this model")
            return allow(["GET", "PUT", "DELETE"], {"GET": "price_get", "PUT": "price_put", "DELETE": "price_delete"})
        if parts == ["tokens"]:
            return allow(["GET", "POST"], {"GET": "tokens_list", "POST": "token_create"})
        if len(parts) == 2 and parts[0] == "tokens":
            if not PROVIDER_NAME.match(parts[1]):
                raise ApiError(404, "no such token")
            return allow(["DELETE"], {"DELETE": "token_delete"})
        if parts in (["logs"], ["usage"], ["audit"], ["cluster"]):
            return allow(["GET"], {"GET": parts[0]})
        if parts == ["drain"]:
            return allow(["POST"], {"POST": "drain"})
        raise ApiError(404, "not found")

    def get_price(self, model):
        p = self.prices.get(model)
        if p is None:
            raise ApiError(404, "no price for this model")
        return p

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
