"""memscan: count byte strings in the memory of a running process.

Reads /proc/PID/maps and then every readable region through /proc/PID/mem (this needs
root, or CAP_SYS_PTRACE: a node that set PR_SET_DUMPABLE 0 is readable by root only).
Regions that are mapped but cannot be read — [vvar], [vvar_vclock], [vsyscall], guard
pages, device mappings — are skipped; a read error inside a region falls back to reading
it page by page, so one bad page does not hide the rest. The result says how many bytes
were read, so a caller can tell a scan that read nothing from a clean one, and it lists
every hit with its region, so a leak can be traced (heap, a thread's stack, a library's
data).

Regions are read in pieces of CHUNK bytes with an overlap of (longest needle - 1) bytes,
so a string that straddles two pieces is still found, exactly once.

As a module: scan(pid, {"name": b"bytes", ...}) -> ScanResult. From the command line:
    memscan.py PID STRING...    (prints a JSON summary; exit 0)"""

import json
import sys

CHUNK = 8 * 1024 * 1024
PAGE = 4096
SPECIAL = ("[vvar]", "[vvar_vclock]", "[vsyscall]")


class Region:
    def __init__(self, start, end, perms, path):
        self.start = start
        self.end = end
        self.perms = perms
        self.path = path

    def describe(self):
        return "%x-%x %s %s" % (self.start, self.end, self.perms, self.path or "[anon]")


class ScanResult:
    def __init__(self):
        self.bytes_scanned = 0
        self.bytes_unreadable = 0
        self.regions_scanned = 0
        self.regions_skipped = 0
        self.counts = {}  # name -> occurrences
        self.hits = {}    # name -> [(address, region description)]

    def summary(self):
        return {"bytes_scanned": self.bytes_scanned, "bytes_unreadable": self.bytes_unreadable,
                "regions_scanned": self.regions_scanned,
                "regions_skipped": self.regions_skipped, "counts": dict(self.counts),
                "hits": {k: [("0x%x" % a, d) for a, d in v[:20]] for k, v in self.hits.items()}}


def read_maps(pid):
    regions = []
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split(None, 5)
            lo, hi = parts[0].split("-")
            path = parts[5].strip() if len(parts) > 5 else ""
            regions.append(Region(int(lo, 16), int(hi, 16), parts[1], path))
    return regions


def _find_all(data, needle, base):
    """Addresses (base + offset) of every occurrence of needle in data."""
    out = []
    i = data.find(needle)
    while i != -1:
        out.append(base + i)
        i = data.find(needle, i + 1)
    return out


def _read(mem, addr, size, result):
    """Reads size bytes at addr; unreadable pages come back as b"" pieces (counted)."""
    try:
        mem.seek(addr)
        data = mem.read(size)
        if len(data) == size:
            return data
    except (OSError, OverflowError, ValueError):
        pass
    pieces = []
    for off in range(0, size, PAGE):
        n = min(PAGE, size - off)
        try:
            mem.seek(addr + off)
            page = mem.read(n)
        except (OSError, OverflowError, ValueError):
            page = b""
        if len(page) != n:
            result.bytes_unreadable += n - len(page)
            page = page + b"\0" * (n - len(page))  # keeps offsets; cannot match a needle
        pieces.append(page)
    return b"".join(pieces)


def scan(pid, needles):
    """Counts every needle (name -> bytes) in the readable memory of pid."""
    needles = {k: (v.encode() if isinstance(v, str) else bytes(v)) for k, v in needles.items()}
    if not needles or any(len(v) == 0 for v in needles.values()):
        raise ValueError("needles must be non-empty byte strings")
    result = ScanResult()
    for k in needles:
        result.counts[k] = 0
        result.hits[k] = []
    overlap = max(len(v) for v in needles.values()) - 1
    with open("/proc/%d/mem" % pid, "rb", buffering=0) as mem:
        for r in read_maps(pid):
            if "r" not in r.perms or r.path in SPECIAL or r.path.startswith("/dev/"):
                result.regions_skipped += 1
                continue
            result.regions_scanned += 1
            addr = r.start
            tail = b""
            while addr < r.end:
                size = min(CHUNK, r.end - addr)
                before = result.bytes_unreadable
                data = _read(mem, addr, size, result)
                result.bytes_scanned += size - (result.bytes_unreadable - before)
                buf = tail + data
                base = addr - len(tail)
                for name, needle in needles.items():
                    for a in _find_all(buf, needle, base):
                        if a + len(needle) <= addr:
                            continue  # wholly inside the previous piece: counted there
                        result.counts[name] += 1
                        result.hits[name].append((a, r.describe()))
                tail = buf[-overlap:] if overlap > 0 else b""
                addr += size
    return result


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    pid = int(argv[1])
    res = scan(pid, {s: s.encode() for s in argv[2:]})
    print(json.dumps(res.summary(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
