/* mstore.c — hourly segment files of metadata lines: append, sync, sweep, and the admin
 * queries (logs pages, usage sums).
 *
 * How it works. A record's "ts" picks its segment, meta-YYYYMMDDHH.jsonl; mstore_append
 * validates each line with a strict scanner for log_record_format's fixed field order (so
 * only the metadata fields ever reach disk), groups consecutive lines of one hour and
 * writes each group with one write(2) on an O_APPEND fd from a small LRU of open segments.
 * The first append to a segment after opening it (or after a failed write) checks that the
 * file ends with '\n' and adds one if not, closing a line torn by a crash.
 *
 * Queries read segments backwards in blocks (rev_scan): the bytes after the last '\n' of a
 * block are dropped (a torn tail, or the part of an over-long line already known to be
 * garbage), and a line whose start is not in the block is left for the next block. That
 * gives newest-first order and a cursor that is simply (segment hour, offset of the
 * earliest line already handled). Every line read is parsed by the same scanner; lines
 * that fail it (torn, damaged) are skipped. The retention is enforced twice: sweep deletes
 * whole hours, and queries filter every record on its ts. */
#include "node/mstore.h"

#include "node/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define SCAN_BLOCK (256u << 10) /* bytes per pread of a query; >= 2 * MSTORE_LINE_MAX */
#define SEG_NAME_LEN 21         /* "meta-YYYYMMDDHH.jsonl" */
#define GROUP_NAME_MAX 256

typedef struct seg_slot {
    int fd;          /* -1: free */
    int64_t hour_ms; /* start of the segment's hour */
    uint64_t used;   /* LRU stamp */
    bool dirty;      /* written since the last fdatasync */
    bool check_tail; /* terminate a torn last line before the next write */
} seg_slot_t;

struct mstore {
    int dir_fd; /* <data_dir>/meta */
    bool dir_dirty;
    int64_t retention_ms;
    size_t logs_scan_max, usage_scan_max;
    uint64_t clock; /* LRU stamps */
    seg_slot_t slots[MSTORE_OPEN_MAX];
    mstore_stats_t stats;
};

/* ---- time ------------------------------------------------------------------------- */


static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static int64_t hour_of(int64_t ts_ms)
{
    return floor_div(ts_ms, MSTORE_HOUR_MS) * MSTORE_HOUR_MS;
}

/* Splits an hour start into its UTC date and hour; false outside years 0..9999. */
static bool hour_fields(int64_t hour_ms, int64_t *y, unsigned *m, unsigned *d, unsigned *h)
{
    int64_t hours = floor_div(hour_ms, MSTORE_HOUR_MS);
    util_civil_from_days(floor_div(hours, 24), y, m, d);
    *h = (unsigned)(hours - floor_div(hours, 24) * 24);
    return *y >= 0 && *y <= 9999;
}

static void put_digits(char *p, unsigned v, int n)
{
    for (int i = n - 1; i >= 0; i--, v /= 10)
        p[i] = (char)('0' + v % 10);
}

/* "meta-YYYYMMDDHH.jsonl" into name[SEG_NAME_LEN + 1]. */
static bool segment_name(int64_t hour_ms, char *name)
{
    int64_t y;
    unsigned m, d, h;
    if (!hour_fields(hour_ms, &y, &m, &d, &h))
        return false;
    memcpy(name, "meta-", 5);
    put_digits(name + 5, (unsigned)y, 4);
    put_digits(name + 9, m, 2);
    put_digits(name + 11, d, 2);
    put_digits(name + 13, h, 2);
    memcpy(name + 15, ".jsonl", 7);
    return true;
}

static bool read_digits(const char *p, int n, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        v = v * 10 + (unsigned)(p[i] - '0');
    }
    *out = v;
    return true;
}

/* The hour of a segment file name; false for any other name (or an impossible date). */
static bool segment_hour(const char *name, int64_t *hour_ms)
{
    unsigned y, m, d, h;
    if (strlen(name) != SEG_NAME_LEN || memcmp(name, "meta-", 5) != 0 || memcmp(name + 15, ".jsonl", 6) != 0)
        return false;
    if (!read_digits(name + 5, 4, &y) || !read_digits(name + 9, 2, &m) || !read_digits(name + 11, 2, &d) ||
        !read_digits(name + 13, 2, &h) || m < 1 || m > 12 || d < 1 || d > 31 || h > 23)
        return false;
    *hour_ms = (util_days_from_civil(y, m, d) * 24 + h) * MSTORE_HOUR_MS;
    char back[SEG_NAME_LEN + 1];
    return segment_name(*hour_ms, back) && strcmp(back, name) == 0; /* rejects Feb 30 */
}

/* ---- the line scanner --------------------------------------------------------------- */

typedef struct span {
    const char *p; /* raw JSON string body (still escaped), inside the line */
    size_t n;
} span_t;

typedef struct rec {
    int64_t ts_ms;
    span_t request_id, node, key_id, model, endpoint, provider;
    int64_t status;
    int64_t input_tokens, cached_input_tokens, output_tokens, reasoning_tokens;
    int64_t usd_micro;
    int64_t latency_ms, ttfb_ms;
    bool stream, estimated;
} rec_t;

typedef struct cur {
    const char *p, *end;
} cur_t;

static bool lit(cur_t *c, const char *s, size_t n)
{
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, s, n) != 0)
        return false;
    c->p += n;
    return true;
}
#define LIT(c, s) lit((c), (s), sizeof(s) - 1)

static bool is_hex(char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static bool str(cur_t *c, span_t *out)
{
    if (c->p >= c->end || *c->p != '"')
        return false;
    const char *start = ++c->p;
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            out->p = start;
            out->n = (size_t)(c->p - start);
            c->p++;
            return true;
        }
        if (ch < 0x20)
            return false;
        if (ch == '\\') {
            if (c->end - c->p < 2)
                return false;
            char e = c->p[1];
            if (e == 'u') {
                if (c->end - c->p < 6 || !is_hex(c->p[2]) || !is_hex(c->p[3]) || !is_hex(c->p[4]) || !is_hex(c->p[5]))
                    return false;
                c->p += 6;
                continue;
            }
            if (strchr("\"\\/bfnrt", e) == NULL || e == '\0')
                return false;
            c->p += 2;
            continue;
        }
        c->p++;
    }
    return false;
}

static bool num(cur_t *c, int64_t *out)
{
    bool neg = c->p < c->end && *c->p == '-';
    if (neg)
        c->p++;
    uint64_t v = 0;
    int digits = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        if (++digits > 19)
            return false;
        v = v * 10 + (uint64_t)(*c->p++ - '0');
    }
    if (digits == 0 || v > (uint64_t)INT64_MAX + (neg ? 1u : 0u))
        return false;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

/* log.c writes usd as [-]D.DDDDDD; read it exactly, as micro-dollars. */
static bool usd(cur_t *c, int64_t *micro)
{
    bool neg = c->p < c->end && *c->p == '-';
    if (neg)
        c->p++;
    int64_t whole = 0;
    int digits = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        if (++digits > 12)
            return false;
        whole = whole * 10 + (*c->p++ - '0');
    }
    if (digits == 0 || !LIT(c, "."))
        return false;
    unsigned frac;
    if (c->end - c->p < 6 || !read_digits(c->p, 6, &frac))
        return false;
    c->p += 6;
    *micro = (whole * 1000000 + frac) * (neg ? -1 : 1);
    return true;
}

static bool boolean(cur_t *c, bool *out)
{
    if (LIT(c, "true")) {
        *out = true;
        return true;
    }
    *out = false;
    return LIT(c, "false");
}

/* "YYYY-MM-DDTHH:MM:SS.mmmZ" (with its quotes) as unix ms. */
static bool ts(cur_t *c, int64_t *out)
{
    const char *p = c->p;
    unsigned y, mo, d, h, mi, s, ms;
    if (c->end - p < 26 || p[0] != '"' || p[5] != '-' || p[8] != '-' || p[11] != 'T' || p[14] != ':' || p[17] != ':' ||
        p[20] != '.' || p[24] != 'Z' || p[25] != '"')
        return false;
    if (!read_digits(p + 1, 4, &y) || !read_digits(p + 6, 2, &mo) || !read_digits(p + 9, 2, &d) ||
        !read_digits(p + 12, 2, &h) || !read_digits(p + 15, 2, &mi) || !read_digits(p + 18, 2, &s) ||
        !read_digits(p + 21, 3, &ms) || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60)
        return false;
    *out = ((util_days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60000 + (int64_t)s * 1000 + ms;
    c->p += 26;
    return true;
}

/* Parses one line (without its '\n') in log_record_format's exact shape. */
static bool parse_line(const char *line, size_t n, rec_t *r)
{
    cur_t c = {line, line + n};
    return LIT(&c, "{\"type\":\"request\",\"ts\":") && ts(&c, &r->ts_ms) && LIT(&c, ",\"request_id\":") &&
           str(&c, &r->request_id) && LIT(&c, ",\"node\":") && str(&c, &r->node) && LIT(&c, ",\"key_id\":") &&
           str(&c, &r->key_id) && LIT(&c, ",\"model\":") && str(&c, &r->model) && LIT(&c, ",\"endpoint\":") &&
           str(&c, &r->endpoint) && LIT(&c, ",\"provider\":") && str(&c, &r->provider) && LIT(&c, ",\"status\":") &&
           num(&c, &r->status) && LIT(&c, ",\"input_tokens\":") && num(&c, &r->input_tokens) &&
           LIT(&c, ",\"cached_input_tokens\":") && num(&c, &r->cached_input_tokens) && LIT(&c, ",\"output_tokens\":") &&
           num(&c, &r->output_tokens) && LIT(&c, ",\"reasoning_tokens\":") && num(&c, &r->reasoning_tokens) &&
           LIT(&c, ",\"usd\":") && usd(&c, &r->usd_micro) && LIT(&c, ",\"latency_ms\":") && num(&c, &r->latency_ms) &&
           LIT(&c, ",\"ttfb_ms\":") && num(&c, &r->ttfb_ms) && LIT(&c, ",\"stream\":") && boolean(&c, &r->stream) &&
           LIT(&c, ",\"estimated\":") && boolean(&c, &r->estimated) && LIT(&c, "}") && c.p == c.end;
}

static int hex_val(char ch)
{
    return ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10;
}

/* Decodes a (validated) JSON string body into buf (NUL-terminated, cut at cap - 1). */
static size_t span_decode(span_t s, char *buf, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < s.n && n + 4 < cap;) {
        char ch = s.p[i];
        if (ch != '\\') {
            buf[n++] = ch;
            i++;
            continue;
        }
        char e = s.p[i + 1];
        if (e == 'u') {
            unsigned v = (unsigned)(hex_val(s.p[i + 2]) << 12 | hex_val(s.p[i + 3]) << 8 | hex_val(s.p[i + 4]) << 4 |
                                    hex_val(s.p[i + 5]));
            if (v < 0x80) {
                buf[n++] = (char)v;
            } else if (v < 0x800) {
                buf[n++] = (char)(0xc0 | v >> 6);
                buf[n++] = (char)(0x80 | (v & 0x3f));
            } else {
                buf[n++] = (char)(0xe0 | v >> 12);
                buf[n++] = (char)(0x80 | (v >> 6 & 0x3f));
                buf[n++] = (char)(0x80 | (v & 0x3f));
            }
            i += 6;
            continue;
        }
        static const char from[] = "bfnrt", to[] = "\b\f\n\r\t";
        const char *k = strchr(from, e);
        buf[n++] = k != NULL ? to[k - from] : e;
        i += 2;
    }
    buf[n] = '\0';
    return n;
}

static bool span_equals(span_t s, const char *plain)
{
    size_t len = strlen(plain);
    if (memchr(s.p, '\\', s.n) == NULL)
        return s.n == len && memcmp(s.p, plain, len) == 0;
    if (len >= MSTORE_LINE_MAX)
        return false;
    char buf[MSTORE_LINE_MAX];
    size_t n = span_decode(s, buf, sizeof(buf));
    return n == len && memcmp(buf, plain, len) == 0;
}

/* ---- file helpers ------------------------------------------------------------------ */

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int writev_all(int fd, struct iovec *iov, int cnt)
{
    while (cnt > 0) {
        ssize_t w = writev(fd, iov, cnt);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        while (cnt > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

static ssize_t pread_full(int fd, char *buf, size_t n, off_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, off + (off_t)got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* ---- open / close -------------------------------------------------------------------- */

int mstore_open(const char *data_dir, const mstore_options_t *opts, mstore_t **out)
{
    *out = NULL;
    if (data_dir == NULL || data_dir[0] == '\0')
        return -EINVAL;
    if (mkdir(data_dir, 0700) != 0 && errno != EEXIST)
        return -errno;
    int base = open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (base < 0)
        return -errno;
    if (mkdirat(base, "meta", 0700) != 0 && errno != EEXIST) {
        int err = -errno;
        close(base);
        return err;
    }
    int dir_fd = openat(base, "meta", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    int err = dir_fd < 0 ? -errno : 0;
    if (dir_fd >= 0)
        fsync(base); /* make the new directory entry durable */
    close(base);
    if (dir_fd < 0)
        return err;
    (void)fchmod(dir_fd, 0700); /* best effort when it existed with a wider mode */
    mstore_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        close(dir_fd);
        return -ENOMEM;
    }
    s->dir_fd = dir_fd;
    s->retention_ms = opts != NULL && opts->retention_ms > 0 ? opts->retention_ms : MSTORE_RETENTION_DEFAULT;
    s->logs_scan_max = opts != NULL && opts->logs_scan_max > 0 ? opts->logs_scan_max : MSTORE_LOGS_SCAN_MAX;
    s->usage_scan_max = opts != NULL && opts->usage_scan_max > 0 ? opts->usage_scan_max : MSTORE_USAGE_SCAN_MAX;
    for (int i = 0; i < MSTORE_OPEN_MAX; i++)
        s->slots[i].fd = -1;
    *out = s;
    return 0;
}

static int slot_close(seg_slot_t *slot, bool sync)
{
    int err = 0;
    if (slot->fd < 0)
        return 0;
    if (sync && slot->dirty && fdatasync(slot->fd) != 0)
        err = -errno;
    close(slot->fd);
    slot->fd = -1;
    slot->dirty = false;
    return err;
}

int mstore_close(mstore_t *s)
{
    if (s == NULL)
        return 0;
    int err = mstore_sync(s);
    for (int i = 0; i < MSTORE_OPEN_MAX; i++)
        slot_close(&s->slots[i], false);
    close(s->dir_fd);
    free(s);
    return err;
}

void mstore_stats(const mstore_t *s, mstore_stats_t *out)
{
    *out = s->stats;
}

/* ---- append ------------------------------------------------------------------------ */

/* Ends a torn last line (left by a crash or a failed write) with '\n'. */
static int slot_fix_tail(seg_slot_t *slot)
{
    struct stat st;
    if (fstat(slot->fd, &st) != 0)
        return -errno;
    if (st.st_size > 0) {
        char last;
        ssize_t r = pread_full(slot->fd, &last, 1, st.st_size - 1);
        if (r < 0)
            return (int)r;
        if (r == 1 && last != '\n') {
            int err = write_all(slot->fd, "\n", 1);
            if (err != 0)
                return err;
            slot->dirty = true;
        }
    }
    slot->check_tail = false;
    return 0;
}

static int slot_get(mstore_t *s, int64_t hour_ms, seg_slot_t **out)
{
    seg_slot_t *victim = NULL;
    for (int i = 0; i < MSTORE_OPEN_MAX; i++) {
        seg_slot_t *slot = &s->slots[i];
        if (slot->fd >= 0 && slot->hour_ms == hour_ms) {
            slot->used = ++s->clock;
            *out = slot;
            return 0;
        }
        if (victim == NULL || (victim->fd >= 0 && (slot->fd < 0 || slot->used < victim->used)))
            victim = slot;
    }
    int err = slot_close(victim, true);
    if (err != 0)
        return err;
    char name[SEG_NAME_LEN + 1];
    if (!segment_name(hour_ms, name))
        return -ERANGE;
    int flags = O_RDWR | O_APPEND | O_CLOEXEC | O_NOFOLLOW;
    int fd = openat(s->dir_fd, name, flags | O_CREAT | O_EXCL, 0600);
    if (fd >= 0) {
        s->dir_dirty = true;
    } else if (errno == EEXIST) {
        fd = openat(s->dir_fd, name, flags);
    }
    if (fd < 0)
        return -errno;
    victim->fd = fd;
    victim->hour_ms = hour_ms;
    victim->used = ++s->clock;
    victim->dirty = false;
    victim->check_tail = true;
    *out = victim;
    return 0;
}

/* Writes lines [p, p + n) (whole lines, the last one possibly without '\n') to hour_ms. */
static int write_run(mstore_t *s, int64_t hour_ms, const char *p, size_t n)
{
    seg_slot_t *slot = NULL;
    int err = slot_get(s, hour_ms, &slot);
    if (err == 0 && slot->check_tail)
        err = slot_fix_tail(slot);
    if (err != 0)
        return err;
    slot->dirty = true;
    if (p[n - 1] == '\n') {
        err = write_all(slot->fd, p, n);
    } else {
        /* The batch's last line lacks its '\n': add it in the same write(2). */
        struct iovec iov[2] = {{(void *)p, n}, {(void *)"\n", 1}};
        err = writev_all(slot->fd, iov, 2);
    }
    if (err != 0)
        slot->check_tail = true;
    return err;
}

int mstore_append(mstore_t *s, const char *lines, size_t len)
{
    const char *run = NULL, *run_end = NULL;
    int64_t run_hour = 0;
    int stored = 0, err = 0;
    const char *p = lines, *end = lines + len;
    while (p < end && err == 0) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = nl != NULL ? nl : end;
        const char *next = nl != NULL ? nl + 1 : end;
        rec_t r;
        size_t n = (size_t)(line_end - p);
        if (n + 1 > MSTORE_LINE_MAX || !parse_line(p, n, &r)) {
            s->stats.rejected++;
            if (run != NULL)
                err = write_run(s, run_hour, run, (size_t)(run_end - run));
            run = NULL;
        } else {
            int64_t hour = hour_of(r.ts_ms);
            if (run != NULL && hour != run_hour) {
                err = write_run(s, run_hour, run, (size_t)(run_end - run));
                run = NULL;
            }
            if (run == NULL) {
                run = p;
                run_hour = hour;
            }
            run_end = next;
            stored++;
        }
        p = next;
    }
    if (err == 0 && run != NULL)
        err = write_run(s, run_hour, run, (size_t)(run_end - run));
    if (err != 0)
        return err;
    s->stats.appended += (uint64_t)stored;
    return stored;
}

int mstore_sync(mstore_t *s)
{
    int err = 0;
    for (int i = 0; i < MSTORE_OPEN_MAX; i++) {
        seg_slot_t *slot = &s->slots[i];
        if (slot->fd >= 0 && slot->dirty) {
            if (fdatasync(slot->fd) != 0 && err == 0)
                err = -errno;
            else
                slot->dirty = false;
        }
    }
    if (s->dir_dirty) {
        if (fsync(s->dir_fd) != 0 && err == 0)
            err = -errno;
        else
            s->dir_dirty = false;
    }
    return err;
}

/* ---- segments ---------------------------------------------------------------------- */

int mstore_sweep(mstore_t *s, int64_t now_ms, int64_t retention_ms)
{
    if (retention_ms <= 0)
        retention_ms = s->retention_ms;
    int64_t cutoff = now_ms - retention_ms;
    int fd = openat(s->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    DIR *dir = fdopendir(fd);
    if (dir == NULL) {
        int err = -errno;
        close(fd);
        return err;
    }
    int deleted = 0, err = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        int64_t hour;
        if (!segment_hour(e->d_name, &hour) || hour + MSTORE_HOUR_MS > cutoff)
            continue;
        for (int i = 0; i < MSTORE_OPEN_MAX; i++)
            if (s->slots[i].fd >= 0 && s->slots[i].hour_ms == hour)
                slot_close(&s->slots[i], false);
        if (unlinkat(s->dir_fd, e->d_name, 0) == 0) {
            deleted++;
            s->dir_dirty = true;
        } else if (errno != ENOENT && err == 0) {
            err = -errno;
        }
    }
    closedir(dir);
    return err != 0 ? err : deleted;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Hours of the segments overlapping [lo, hi) (hour starts), ascending; *out owned by the
 * caller (free). At most MSTORE_SEGMENTS_MAX, the newest kept. */
static int list_segments(mstore_t *s, int64_t lo, int64_t hi, int64_t **out, size_t *count)
{
    *out = NULL;
    *count = 0;
    int fd = openat(s->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    DIR *dir = fdopendir(fd);
    if (dir == NULL) {
        int err = -errno;
        close(fd);
        return err;
    }
    int64_t *hours = NULL;
    size_t n = 0, cap = 0;
    int err = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        int64_t hour;
        if (!segment_hour(e->d_name, &hour) || hour + MSTORE_HOUR_MS <= lo || hour >= hi)
            continue;
        if (n == cap) {
            if (cap >= MSTORE_SEGMENTS_MAX * 2) { /* keep the newest MSTORE_SEGMENTS_MAX */
                qsort(hours, n, sizeof(*hours), cmp_i64);
                memmove(hours, hours + (n - MSTORE_SEGMENTS_MAX), MSTORE_SEGMENTS_MAX * sizeof(*hours));
                n = MSTORE_SEGMENTS_MAX;
            } else {
                size_t ncap = cap == 0 ? 256 : cap * 2;
                int64_t *grown = realloc(hours, ncap * sizeof(*hours));
                if (grown == NULL) {
                    err = -ENOMEM;
                    break;
                }
                hours = grown;
                cap = ncap;
            }
        }
        hours[n++] = hour;
    }
    closedir(dir);
    if (err != 0) {
        free(hours);
        return err;
    }
    if (n > 1) /* hours is NULL when the directory holds no segment */
        qsort(hours, n, sizeof(*hours), cmp_i64);
    if (n > MSTORE_SEGMENTS_MAX) {
        memmove(hours, hours + (n - MSTORE_SEGMENTS_MAX), MSTORE_SEGMENTS_MAX * sizeof(*hours));
        n = MSTORE_SEGMENTS_MAX;
    }
    *out = hours;
    *count = n;
    return 0;
}

static int segment_open_read(mstore_t *s, int64_t hour_ms, int *fd, int64_t *size)
{
    char name[SEG_NAME_LEN + 1];
    if (!segment_name(hour_ms, name))
        return -ENOENT;
    *fd = openat(s->dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (*fd < 0)
        return -errno;
    struct stat st;
    if (fstat(*fd, &st) != 0) {
        int err = -errno;
        close(*fd);
        return err;
    }
    *size = st.st_size;
    return 0;
}

/* ---- backwards scan ------------------------------------------------------------------ */

/* Called for each complete line (without '\n') at file offset `off`, last line first.
 * Returns true to go on, false to stop right after this line. */
typedef bool (*line_cb)(void *ctx, const char *line, size_t n, int64_t off);

/* Reads [0, *pos) of fd backwards in SCAN_BLOCK blocks, calling cb for every complete line.
 * Bytes after the last '\n' below *pos are never a complete line and are skipped. On
 * return *pos is the offset of the earliest line handled (0 when all of it was), so a scan
 * can resume from it. Stops (returning 1) when cb says so, or before a block when
 * *budget_left is spent; 0 when [0, *pos) was all read; negative on error. */
static int rev_scan(int fd, int64_t *pos, char *buf, size_t *budget_left, size_t *scanned, line_cb cb, void *ctx)
{
    while (*pos > 0) {
        if (*budget_left == 0)
            return 1;
        int64_t block_end = *pos;
        int64_t start = block_end > (int64_t)SCAN_BLOCK ? block_end - (int64_t)SCAN_BLOCK : 0;
        size_t want = (size_t)(*pos - start);
        ssize_t got = pread_full(fd, buf, want, start);
        if (got < 0)
            return (int)got;
        *budget_left = *budget_left > (size_t)got ? *budget_left - (size_t)got : 0;
        *scanned += (size_t)got;
        if ((size_t)got < want) /* shrunk under us (cannot happen to append-only files) */
            return -EIO;
        const char *last_nl = memrchr(buf, '\n', want);
        if (last_nl == NULL) { /* all of it inside one torn or over-long line */
            *pos = start;
            continue;
        }
        size_t line_end = (size_t)(last_nl - buf); /* index of the '\n' ending the line */
        for (;;) {
            const char *prev = line_end > 0 ? memrchr(buf, '\n', line_end) : NULL;
            size_t line_start = prev != NULL ? (size_t)(prev - buf) + 1 : 0;
            if (prev == NULL && start > 0) {
                /* The line starts before this block: read it with the next one, unless it
                 * is longer than a block (garbage: skip it). */
                int64_t next = start + (int64_t)line_end + 1;
                *pos = next < block_end ? next : start;
                break;
            }
            bool go_on = cb(ctx, buf + line_start, line_end - line_start, start + (int64_t)line_start);
            *pos = start + (int64_t)line_start;
            if (!go_on)
                return 1;
            if (line_start == 0)
                break;
            line_end = line_start - 1;
        }
    }
    return 0;
}

/* ---- logs ------------------------------------------------------------------------- */

typedef struct logs_ctx {
    const mstore_filter_t *f;
    int64_t lo, hi; /* ts range after retention */
    size_t limit;
    mstore_page_t *out;
    size_t cap;
    int err;
} logs_ctx_t;

static bool status_matches(int want, int64_t status)
{
    if (want == 0)
        return true;
    if (want >= 1 && want <= 5)
        return status >= want * 100 && status < want * 100 + 100;
    return status == want;
}

static bool logs_line(void *arg, const char *line, size_t n, int64_t off)
{
    (void)off;
    logs_ctx_t *c = arg;
    rec_t r;
    if (n + 1 > MSTORE_LINE_MAX || !parse_line(line, n, &r))
        return true;
    if (r.ts_ms < c->lo || r.ts_ms >= c->hi || !status_matches(c->f->status, r.status) ||
        (c->f->key_id != NULL && !span_equals(r.key_id, c->f->key_id)) ||
        (c->f->model != NULL && !span_equals(r.model, c->f->model)))
        return true;
    mstore_page_t *p = c->out;
    if (p->len + n + 1 > c->cap) {
        size_t ncap = c->cap == 0 ? 64 << 10 : c->cap * 2;
        while (ncap < p->len + n + 1)
            ncap *= 2;
        char *grown = realloc(p->lines, ncap);
        if (grown == NULL) {
            c->err = -ENOMEM;
            return false;
        }
        p->lines = grown;
        c->cap = ncap;
    }
    memcpy(p->lines + p->len, line, n);
    p->lines[p->len + n] = '\n';
    p->len += n + 1;
    p->count++;
    return p->count < c->limit;
}

static int parse_cursor(const char *cursor, int64_t *hour_ms, int64_t *off)
{
    cur_t c = {cursor, cursor + strlen(cursor)};
    if (c.end - c.p >= MSTORE_CURSOR_MAX || !num(&c, hour_ms) || !LIT(&c, ":") || !num(&c, off) || c.p != c.end ||
        *off < 0 || *hour_ms % MSTORE_HOUR_MS != 0)
        return -EINVAL;
    return 0;
}

void mstore_page_dispose(mstore_page_t *p)
{
    free(p->lines);
    memset(p, 0, sizeof(*p));
}

int mstore_logs(mstore_t *s, const mstore_filter_t *f, mstore_page_t *out)
{
    memset(out, 0, sizeof(*out));
    int64_t cur_hour = INT64_MAX, cur_off = INT64_MAX;
    if (f->cursor != NULL && f->cursor[0] != '\0' && parse_cursor(f->cursor, &cur_hour, &cur_off) != 0)
        return -EINVAL;
    logs_ctx_t c = {.f = f, .out = out};
    c.limit = f->limit == 0 ? MSTORE_PAGE_DEFAULT : f->limit > MSTORE_PAGE_MAX ? MSTORE_PAGE_MAX : f->limit;
    int64_t cutoff = f->now_ms - s->retention_ms;
    c.lo = f->since_ms > cutoff ? f->since_ms : cutoff;
    c.hi = f->until_ms > 0 ? f->until_ms : INT64_MAX;
    if (c.lo >= c.hi)
        return 0;
    int64_t *hours;
    size_t nhours;
    int64_t hi_hour = cur_hour != INT64_MAX ? cur_hour + 1 : c.hi;
    int err = list_segments(s, c.lo, hi_hour < c.hi ? hi_hour : c.hi, &hours, &nhours);
    if (err != 0)
        return err;
    char *buf = malloc(SCAN_BLOCK);
    if (buf == NULL) {
        free(hours);
        return -ENOMEM;
    }
    size_t budget = s->logs_scan_max;
    for (size_t i = nhours; i-- > 0 && err == 0;) {
        int fd;
        int64_t size;
        err = segment_open_read(s, hours[i], &fd, &size);
        if (err == -ENOENT) { /* swept meanwhile */
            err = 0;
            continue;
        }
        if (err != 0)
            break;
        int64_t pos = hours[i] == cur_hour && cur_off < size ? cur_off : size;
        int rc = rev_scan(fd, &pos, buf, &budget, &out->scanned_bytes, logs_line, &c);
        close(fd);
        if (c.err != 0 || rc < 0) {
            err = c.err != 0 ? c.err : rc;
            break;
        }
        if (rc == 1) { /* page full or budget spent: resume at pos (or the next older segment) */
            if (pos > 0)
                snprintf(out->next_cursor, sizeof(out->next_cursor), "%lld:%lld", (long long)hours[i], (long long)pos);
            else if (i > 0)
                snprintf(out->next_cursor, sizeof(out->next_cursor), "%lld:%lld", (long long)hours[i - 1],
                         (long long)INT64_MAX);
            break;
        }
    }
    free(buf);
    free(hours);
    if (err != 0)
        mstore_page_dispose(out);
    return err;
}

/* ---- usage ------------------------------------------------------------------------ */

typedef struct usage_ctx {
    int64_t lo, hi;
    const char *key_id;
    mstore_group_t by;
    mstore_usage_t *out;
    uint32_t *index; /* open addressing: row number + 1, 0 = empty */
    size_t index_cap, rows_cap;
    int err;
} usage_ctx_t;

static void sums_add(mstore_sums_t *s, const rec_t *r)
{
    s->requests++;
    s->input_tokens += r->input_tokens;
    s->output_tokens += r->output_tokens;
    s->usd_micro += r->usd_micro;
}

static uint64_t hash_name(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
    return h;
}

static int index_grow(usage_ctx_t *c)
{
    size_t ncap = c->index_cap == 0 ? 64 : c->index_cap * 2;
    uint32_t *idx = calloc(ncap, sizeof(*idx));
    if (idx == NULL)
        return -ENOMEM;
    for (size_t r = 0; r < c->out->ngroups; r++) {
        const char *g = c->out->groups[r].group;
        size_t j = hash_name(g, strlen(g)) & (ncap - 1);
        while (idx[j] != 0)
            j = (j + 1) & (ncap - 1);
        idx[j] = (uint32_t)r + 1;
    }
    free(c->index);
    c->index = idx;
    c->index_cap = ncap;
    return 0;
}

static mstore_sums_t *group_find(usage_ctx_t *c, const char *name, size_t n)
{
    mstore_usage_t *u = c->out;
    uint64_t h = hash_name(name, n);
    if (c->index_cap != 0) {
        for (size_t j = h & (c->index_cap - 1); c->index[j] != 0; j = (j + 1) & (c->index_cap - 1)) {
            mstore_group_row_t *row = &u->groups[c->index[j] - 1];
            if (strncmp(row->group, name, n) == 0 && row->group[n] == '\0')
                return &row->sums;
        }
    }
    if (u->ngroups >= MSTORE_GROUPS_MAX) {
        u->groups_overflow = true;
        return NULL;
    }
    if ((u->ngroups + 1) * 2 > c->index_cap && (c->err = index_grow(c)) != 0)
        return NULL;
    if (u->ngroups == c->rows_cap) {
        size_t ncap = c->rows_cap == 0 ? 32 : c->rows_cap * 2;
        mstore_group_row_t *grown = realloc(u->groups, ncap * sizeof(*grown));
        if (grown == NULL) {
            c->err = -ENOMEM;
            return NULL;
        }
        u->groups = grown;
        c->rows_cap = ncap;
    }
    char *copy = strndup(name, n);
    if (copy == NULL) {
        c->err = -ENOMEM;
        return NULL;
    }
    size_t row = u->ngroups++;
    u->groups[row] = (mstore_group_row_t){.group = copy};
    size_t j = h & (c->index_cap - 1);
    while (c->index[j] != 0)
        j = (j + 1) & (c->index_cap - 1);
    c->index[j] = (uint32_t)row + 1;
    return &u->groups[row].sums;
}

static bool usage_line(void *arg, const char *line, size_t n, int64_t off)
{
    (void)off;
    usage_ctx_t *c = arg;
    rec_t r;
    if (n + 1 > MSTORE_LINE_MAX || !parse_line(line, n, &r))
        return true;
    if (r.ts_ms < c->lo || r.ts_ms >= c->hi || (c->key_id != NULL && !span_equals(r.key_id, c->key_id)))
        return true;
    sums_add(&c->out->totals, &r);
    if (c->by == MSTORE_GROUP_NONE)
        return true;
    char name[GROUP_NAME_MAX];
    size_t len = 0;
    if (c->by == MSTORE_GROUP_HOUR) {
        int64_t y;
        unsigned m, d, h;
        hour_fields(hour_of(r.ts_ms), &y, &m, &d, &h);
        memcpy(name, "YYYY-MM-DDTHH:00:00Z", 21);
        put_digits(name, (unsigned)y, 4);
        put_digits(name + 5, m, 2);
        put_digits(name + 8, d, 2);
        put_digits(name + 11, h, 2);
        len = 20;
    } else {
        span_t sp = c->by == MSTORE_GROUP_MODEL ? r.model : c->by == MSTORE_GROUP_NODE ? r.node : r.key_id;
        span_decode(sp, name, sizeof(name));
        len = strlen(name); /* a decoded \u0000 ends the name */
    }
    mstore_sums_t *g = group_find(c, name, len);
    if (g != NULL)
        sums_add(g, &r);
    return c->err == 0;
}

static int cmp_rows(const void *a, const void *b)
{
    return strcmp(((const mstore_group_row_t *)a)->group, ((const mstore_group_row_t *)b)->group);
}

void mstore_usage_dispose(mstore_usage_t *u)
{
    for (size_t i = 0; i < u->ngroups; i++)
        free(u->groups[i].group);
    free(u->groups);
    memset(u, 0, sizeof(*u));
}

int mstore_usage(mstore_t *s, int64_t now_ms, int64_t since_ms, int64_t until_ms, const char *key_id, mstore_group_t by,
                 mstore_usage_t *out)
{
    memset(out, 0, sizeof(*out));
    if ((int)by < (int)MSTORE_GROUP_NONE || (int)by > (int)MSTORE_GROUP_KEY)
        return -EINVAL;
    usage_ctx_t c = {.key_id = key_id, .by = by, .out = out};
    int64_t cutoff = now_ms - s->retention_ms;
    c.lo = since_ms > cutoff ? since_ms : cutoff;
    c.hi = until_ms > 0 ? until_ms : INT64_MAX;
    out->complete_since_ms = c.lo;
    if (c.lo >= c.hi)
        return 0;
    int64_t *hours;
    size_t nhours;
    int err = list_segments(s, c.lo, c.hi, &hours, &nhours);
    if (err != 0)
        return err;
    char *buf = malloc(SCAN_BLOCK);
    if (buf == NULL) {
        free(hours);
        return -ENOMEM;
    }
    size_t budget = s->usage_scan_max;
    for (size_t i = nhours; i-- > 0 && err == 0;) {
        int fd;
        int64_t size;
        err = segment_open_read(s, hours[i], &fd, &size);
        if (err == -ENOENT) {
            err = 0;
            continue;
        }
        if (err != 0)
            break;
        if ((uint64_t)size > budget) { /* whole hours only, so the sums stay exact */
            close(fd);
            out->truncated = true;
            out->complete_since_ms = hours[i] + MSTORE_HOUR_MS < c.hi ? hours[i] + MSTORE_HOUR_MS : c.hi;
            break;
        }
        int64_t pos = size;
        size_t seg_budget = SIZE_MAX;
        int rc = rev_scan(fd, &pos, buf, &seg_budget, &out->scanned_bytes, usage_line, &c);
        budget -= (size_t)size;
        close(fd);
        if (c.err != 0 || rc < 0)
            err = c.err != 0 ? c.err : rc;
    }
    free(buf);
    free(hours);
    free(c.index);
    if (err != 0) {
        mstore_usage_dispose(out);
        return err;
    }
    out->totals.usd = (double)out->totals.usd_micro / 1e6;
    for (size_t i = 0; i < out->ngroups; i++)
        out->groups[i].sums.usd = (double)out->groups[i].sums.usd_micro / 1e6;
    if (out->ngroups > 1)
        qsort(out->groups, out->ngroups, sizeof(*out->groups), cmp_rows);
    return 0;
}
