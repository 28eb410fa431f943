#!/usr/bin/python3
"""Measurement helpers for ops/bench/relay (Debian's python3, stdlib only).

Subcommands:
  cpu PID...                      prints "utime+stime" clock ticks of each process
                                  (from /proc/PID/stat; whole thread group), one per line,
                                  then the busy/total jiffies of every CPU (from /proc/stat)
  record OUT.jsonl TARGET C M H2LOAD_STDOUT LOGFILE CPU_BEFORE CPU_AFTER [UPSTREAM?]
                                  parses one h2load run (its stdout and --log-file) and the
                                  two `cpu` snapshots, appends one JSON result line
  report OUT.jsonl                prints the result table and the ratios
  propagation ...                 config propagation time across two nodes (see --help)
  body BYTES [--stream] [--model M]  prints a chat-completions JSON body of exactly BYTES bytes

Latency percentiles come from h2load's per-request log (third column: microseconds until the
end of the response); only 2xx requests count. CPU per request = (utime+stime after - before)
of the server process, in microseconds, divided by the requests h2load completed.
"""

import argparse
import http.client
import json
import os
import re
import ssl
import statistics
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- CPU snapshots ------------------------------------------------------------------------

def proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    # the command name (field 2) may hold spaces: split after its closing parenthesis
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def cpu_jiffies():
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"^cpu(\d+)\s+(.*)$", line)
            if not m:
                continue
            v = [int(x) for x in m.group(2).split()]
            idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
            total = sum(v[:8])  # user..steal (guest is already counted in user)
            out[m.group(1)] = [total - idle, total]
    return out


def cmd_cpu(args):
    snap = {"procs": {}, "cpus": cpu_jiffies(), "t": time.monotonic()}
    for pid in args.pids:
        try:
            snap["procs"][pid] = proc_ticks(pid)
        except (OSError, ValueError):
            snap["procs"][pid] = None
    print(json.dumps(snap))


# ---- one h2load run ---------------------------------------------------------------------

def parse_h2load(text):
    r = {}
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    if m:
        r["seconds"] = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
        r["rps"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        r["total"], r["started"], r["done"], r["succeeded"], r["failed"], r["errored"], r["timeout"] = map(int, m.groups())
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        r["s2xx"], r["s3xx"], r["s4xx"], r["s5xx"] = map(int, m.groups())
    for key, pat in (("tls", r"TLS Protocol: (\S+)"), ("cipher", r"Cipher: (\S+)"), ("alpn", r"Application protocol: (\S+)")):
        m = re.search(pat, text)
        if m:
            r[key] = m.group(1)
    return r


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(-(-p * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


def cmd_record(args):
    with open(args.h2load_stdout) as f:
        r = parse_h2load(f.read())
    durations = []
    with open(args.logfile) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1].startswith("2"):
                durations.append(int(parts[2]))
    durations.sort()
    before, after = json.loads(args.cpu_before), json.loads(args.cpu_after)
    done = r.get("succeeded") or r.get("done") or 0

    def per_req(pid):
        if pid is None or pid == "-":
            return None
        a, b = after["procs"].get(pid), before["procs"].get(pid)
        if a is None or b is None or not done:
            return None
        return (a - b) * 1e6 / CLK_TCK / done

    busy = {}
    for cpu, (bb, bt) in before["cpus"].items():
        ab, at = after["cpus"].get(cpu, (bb, bt))
        busy[cpu] = round(100.0 * (ab - bb) / (at - bt), 1) if at > bt else None
    conns = None
    if args.stats_before and args.stats_after:
        try:
            with open(args.stats_before) as f:
                sb = json.load(f)["totals"]["connections"]
            with open(args.stats_after) as f:
                sa = json.load(f)["totals"]["connections"]
            conns = sa - sb - 1  # the /mock/stats request itself opened one
            if conns < 0:
                conns = None
        except (OSError, ValueError, KeyError, TypeError):
            conns = None
    row = {
        "target": args.target, "c": args.c, "m": args.m, "round": args.round, **r, "upstream_conns": conns,
        "p50_us": percentile(durations, 50), "p90_us": percentile(durations, 90),
        "p99_us": percentile(durations, 99), "logged_2xx": len(durations),
        "server_cpu_us": per_req(args.server_pid), "upstream_cpu_us": per_req(args.upstream_pid),
        "cpu_busy_pct": busy,
    }
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"  r{args.round} {args.target:<9} -c {args.c:<3} -m {args.m:<2} {fmt(r.get('rps'), 0):>8} req/s  "
          f"p50 {fmt_ms(row['p50_us'])} ms  cpu {fmt(row['server_cpu_us'], 1)} us/req  "
          f"({r.get('succeeded', '?')}/{r.get('total', '?')} ok, {r.get('tls', '?')} {r.get('alpn', '?')})")


def fmt(v, digits):
    return "-" if v is None else f"{v:.{digits}f}"


def fmt_ms(us):
    return "-" if us is None else f"{us / 1000.0:.3f}"


# ---- report -----------------------------------------------------------------------------

def median(values):
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def cmd_report(args):
    rows = []
    with open(args.out) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    head = (f"{'target':<10} {'conc':>9} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
            f"{'cpu us/req':>10} {'upstr us/req':>12} {'upstr conns':>11} {'ok/total':>13}  cpu busy %")
    rounds = sorted({r.get("round", 1) for r in rows})
    by = {}  # (target, c) -> rows of every round
    for r in rows:
        by.setdefault((r["target"], r["c"]), []).append(r)

    def line(label, r):
        busy = " ".join(f"cpu{k}={v}" for k, v in sorted(r.get("cpu_busy_pct", {}).items()))
        ok = f"{r.get('succeeded', '?')}/{r.get('total', '?')}"
        return (f"{label:<10} {'-c%d -m%d' % (r['c'], r['m']):>9} {fmt(r.get('rps'), 0):>9} "
                f"{fmt_ms(r['p50_us']):>8} {fmt_ms(r['p90_us']):>8} {fmt_ms(r['p99_us']):>8} "
                f"{fmt(r['server_cpu_us'], 1):>10} {fmt(r['upstream_cpu_us'], 1):>12} "
                f"{'-' if r.get('upstream_conns') is None else r['upstream_conns']:>11} {ok:>13}  {busy}")

    if len(rounds) > 1:
        print(f"every round ({len(rounds)} rounds; in each, the targets ran in turn):")
        print(head)
        print("-" * len(head))
        for r in rows:
            print(line("%s r%d" % (r["target"], r.get("round", 1)), r))
        print()
        print(f"median over the {len(rounds)} rounds:")
    print(head)
    print("-" * len(head))
    med = {}
    for (target, c), rs in by.items():
        m = dict(rs[0])
        for k in ("rps", "p50_us", "p90_us", "p99_us", "server_cpu_us", "upstream_cpu_us"):
            m[k] = median([r.get(k) for r in rs])
        m["succeeded"] = sum(r.get("succeeded") or 0 for r in rs)
        m["total"] = sum(r.get("total") or 0 for r in rs)
        m["cpu_busy_pct"] = {}
        med[(target, c)] = m
        print(line(target, m))
    print()

    def ratio(a, b):
        return None if a is None or b in (None, 0) else a / b

    def per_round(a, b, c):
        out = []
        for rd in rounds:
            ar = [r for r in by.get((a, c), []) if r.get("round", 1) == rd]
            br = [r for r in by.get((b, c), []) if r.get("round", 1) == rd]
            if ar and br:
                out.append((ar[0]["server_cpu_us"], br[0]["server_cpu_us"]))
        return out

    concs = sorted({r["c"] for r in rows}, reverse=True)
    for c in concs:
        for name in ("llmrelay", "llmrelay-nowipe"):
            l, h = med.get((name, c)), med.get(("h2o", c))
            if not (l and h):
                continue
            pr = [ratio(a, b) for a, b in per_round(name, "h2o", c)]
            rounds_txt = ""
            if len(pr) > 1:
                rounds_txt = (" (per round: " + ", ".join("x" + fmt(x, 2) for x in pr) +
                              "; median x" + fmt(median(pr), 2) + ")")
            print(f"{name}/h2o at -c {c}: cpu per request x{fmt(ratio(l['server_cpu_us'], h['server_cpu_us']), 2)}"
                  f"{rounds_txt}, req/s x{fmt(ratio(l.get('rps'), h.get('rps')), 2)}")
        w, nw, h = med.get(("llmrelay", c)), med.get(("llmrelay-nowipe", c)), med.get(("h2o", c))
        if w and nw and w["server_cpu_us"] is not None and nw["server_cpu_us"] is not None:
            diffs = [a - b for a, b in per_round("llmrelay", "llmrelay-nowipe", c) if a is not None and b is not None]
            d = median(diffs) if diffs else w["server_cpu_us"] - nw["server_cpu_us"]
            href = f", x{fmt(ratio(d, h['server_cpu_us']), 2)} of h2o's cpu per request" if h else ""
            print(f"wiping on its own at -c {c}: {d:+.1f} us cpu per request (median over rounds of "
                  f"llmrelay - llmrelay-nowipe; {fmt(100.0 * d / w['server_cpu_us'], 0)}% of llmrelay's{href})")
        # the translated stream (OpenAI client -> anthropic-type upstream) against the
        # passthrough stream of the same node, body and mock, measured in the same rounds
        x, p = med.get(("llmrelay-xlate", c)), med.get(("llmrelay-stream", c))
        if x and p and x["server_cpu_us"] is not None and p["server_cpu_us"] is not None:
            pairs = [(a, b) for a, b in per_round("llmrelay-xlate", "llmrelay-stream", c)
                     if a is not None and b is not None]
            diffs = [a - b for a, b in pairs]
            d = median(diffs) if diffs else x["server_cpu_us"] - p["server_cpu_us"]
            rounds_txt = ""
            if len(pairs) > 1:
                rounds_txt = " (per round: " + ", ".join("%+.1f" % v for v in diffs) + " us)"
            print(f"translation at -c {c}: llmrelay-xlate {fmt(x['server_cpu_us'], 1)} us cpu per request vs "
                  f"llmrelay-stream (passthrough) {fmt(p['server_cpu_us'], 1)} us: {d:+.1f} us "
                  f"(x{fmt(ratio(x['server_cpu_us'], p['server_cpu_us']), 2)}){rounds_txt}; "
                  f"p50 {fmt_ms(x['p50_us'])} vs {fmt_ms(p['p50_us'])} ms")
    d = med.get(("direct", 1))
    if d and d["p50_us"] is not None:
        for t in ("llmrelay", "h2o"):
            r = med.get((t, 1))
            if r and r["p50_us"] is not None:
                print(f"added latency at -c 1, {t}: p50 {(r['p50_us'] - d['p50_us']) / 1000.0:+.3f} ms "
                      f"(p99 {(r['p99_us'] - d['p99_us']) / 1000.0:+.3f} ms) over direct")


# ---- config propagation -----------------------------------------------------------------

class Client:
    """One keep-alive HTTP/1.1 connection (TLS without verification for the nodes' self-signed
    certificates), reopened after any error."""

    def __init__(self, url):
        m = re.match(r"^(https?)://([^:/]+):(\d+)$", url)
        if not m:
            raise SystemExit(f"bad url {url}")
        self.scheme, self.host, self.port = m.group(1), m.group(2), int(m.group(3))
        self.conn = None

    def request(self, method, path, headers, body=None):
        for attempt in (0, 1):
            try:
                if self.conn is None:
                    if self.scheme == "https":
                        ctx = ssl.create_default_context()
                        ctx.check_hostname = False
                        ctx.verify_mode = ssl.CERT_NONE
                        self.conn = http.client.HTTPSConnection(self.host, self.port, timeout=5, context=ctx)
                    else:
                        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                return resp.status, data
            except (OSError, http.client.HTTPException):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt:
                    raise


def wait_flip(clients, key, want_accepted, interval, timeout, first=0):
    """Polls GET /v1/models with key on every client, interleaved (client `first` first), until
    each answers (not 401) if want_accepted, else 401. Returns {index: (monotonic time, status,
    polls)} for those that flipped within timeout, and {index: last status} for the others."""
    deadline = time.monotonic() + timeout
    flipped, last, polls = {}, {}, {}
    order = [(first + k) % len(clients) for k in range(len(clients))]
    while len(flipped) < len(clients) and time.monotonic() < deadline:
        for i in order:
            if i in flipped:
                continue
            status, _ = clients[i].request("GET", "/v1/models", {"Authorization": "Bearer " + key})
            now = time.monotonic()
            last[i] = status
            polls[i] = polls.get(i, 0) + 1
            if (status != 401) == want_accepted:
                flipped[i] = (now, status, polls[i])
        if len(flipped) < len(clients):
            time.sleep(interval)
    return flipped, {i: s for i, s in last.items() if i not in flipped}


def cmd_propagation(args):
    with open(args.token_file) as f:
        token = f.read().strip()
    admin = Client(args.admin)
    targets = [Client(u) for u in args.nodes]
    adm = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
    create_ms = {u: [] for u in args.nodes}
    revoke_ms = {u: [] for u in args.nodes}
    first_poll = {("new key", u): 0 for u in args.nodes}
    first_poll.update({("revocation", u): 0 for u in args.nodes})
    admin_ms = []
    # open every connection (TLS handshakes) before the first timed round
    admin.request("GET", "/readyz", {})
    for c in targets:
        c.request("GET", "/v1/models", {})
    odd = []
    for i in range(args.rounds):
        body = json.dumps({"name": f"bench-propagation-{i}"})
        t0 = time.monotonic()
        status, data = admin.request("POST", "/admin/v1/keys", adm, body)
        if status != 201:
            raise SystemExit(f"propagation: POST /admin/v1/keys answered {status}")
        admin_ms.append((time.monotonic() - t0) * 1000.0)
        created = json.loads(data)
        key, key_id = created["key"], created["id"]
        del created, data
        flipped, stuck = wait_flip(targets, key, True, args.interval, args.timeout, i % len(targets))
        for n, st in stuck.items():
            raise SystemExit(f"propagation: {args.names[n]} still answers {st} for a new key after {args.timeout}s")
        for n, (t, st, polls) in flipped.items():
            if st != 200:
                odd.append(f"{args.names[n]} answered {st} (not 200) for a new key")
            create_ms[args.nodes[n]].append((t - t0) * 1000.0)
            first_poll[("new key", args.nodes[n])] += polls == 1
        t0 = time.monotonic()
        status, _ = admin.request("POST", f"/admin/v1/keys/{key_id}/revoke", adm, b"")
        if status != 200:
            raise SystemExit(f"propagation: revoke answered {status}")
        flipped, stuck = wait_flip(targets, key, False, args.interval, args.timeout, i % len(targets))
        for n, st in stuck.items():
            raise SystemExit(f"propagation: {args.names[n]} still answers {st} for a revoked key after {args.timeout}s")
        for n, (t, _, polls) in flipped.items():
            revoke_ms[args.nodes[n]].append((t - t0) * 1000.0)
            first_poll[("revocation", args.nodes[n])] += polls == 1
        key = None
    print(f"config propagation, {args.rounds} rounds, polling GET /v1/models every {args.interval * 1000:.0f} ms "
          "(ms from sending the admin request to node 1 until the first changed answer):")
    v = sorted(admin_ms)
    print(f"  {'(the admin POST /admin/v1/keys itself)':<48} min {v[0]:7.1f}  median {statistics.median(v):7.1f}  max {v[-1]:7.1f}")
    for what, res in (("new key", create_ms), ("revocation", revoke_ms)):
        for u, name in zip(args.nodes, args.names):
            v = sorted(res[u])
            print(f"  {what + ' seen by ' + name:<48} min {v[0]:7.1f}  median {statistics.median(v):7.1f}  max {v[-1]:7.1f}"
                  f"  (changed at the first poll in {first_poll[(what, u)]}/{args.rounds})")
    if all(v == args.rounds for v in first_poll.values()):
        print("  every node had changed by the first poll after the admin API answered: these are upper bounds")
        print("  (the admin answer + one poll), not the propagation delay itself, which is shorter")
    for o in sorted(set(odd)):
        print("  note: " + o)


# ---- request body -------------------------------------------------------------------------

def cmd_body(args):
    head = '{"model":%s,"messages":[{"role":"user","content":"' % json.dumps(args.model)
    tail = '"}],"max_tokens":16%s}' % (',"stream":true' if args.stream else "")
    filler = args.bytes - len(head) - len(tail)
    if filler < 0:
        raise SystemExit("body too small")
    words = ("lorem ipsum dolor sit amet consectetur adipiscing elit " * (filler // 50 + 2))[:filler]
    sys.stdout.write(head + words + tail)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("cpu")
    p.add_argument("pids", nargs="*")
    p.set_defaults(fn=cmd_cpu)
    p = sub.add_parser("record")
    for a in ("out", "target"):
        p.add_argument(a)
    p.add_argument("c", type=int)
    p.add_argument("m", type=int)
    for a in ("h2load_stdout", "logfile", "cpu_before", "cpu_after", "server_pid", "upstream_pid"):
        p.add_argument(a)
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--stats-before", help="mock /mock/stats before the warm-up run (file)")
    p.add_argument("--stats-after", help="mock /mock/stats after the run (file)")
    p.set_defaults(fn=cmd_record)
    p = sub.add_parser("report")
    p.add_argument("out")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("propagation", help="time for a new key / a revocation to reach other nodes")
    p.add_argument("--admin", required=True, help="node 1's admin base URL")
    p.add_argument("--token-file", required=True)
    p.add_argument("--node", dest="nodes", action="append", required=True, help="client base URL to poll (repeatable)")
    p.add_argument("--name", dest="names", action="append", required=True, help="label of each --node")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--interval", type=float, default=0.005)
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(fn=cmd_propagation)
    p = sub.add_parser("body")
    p.add_argument("bytes", type=int)
    p.add_argument("--stream", action="store_true", help='with "stream":true')
    p.add_argument("--model", default="gpt-4o-mini")
    p.set_defaults(fn=cmd_body)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
