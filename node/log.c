/* log.c — diagnostic lines to stderr and metadata records to stdout, one write(2) each.
 *
 * The level is a process-wide setting made once before worker threads start; everything
 * else is per call, so any thread may log without a lock. Lines longer than the local
 * buffer are truncated rather than split (a split line could interleave with another
 * thread's). */
#include "node/log.h"
#include "node/util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static log_level_t min_level = LOG_INFO;

int log_set_level(const char *name)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, names[i]) == 0) {
            min_level = (log_level_t)i;
            return 0;
        }
    }
    return -EINVAL;
}

static size_t format_ts(char *buf, size_t cap, int64_t ms)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    if (cap < 25 || gmtime_r(&s, &tm) == NULL) {
        buf[0] = '\0';
        return 0;
    }
    /* "YYYY-MM-DDTHH:MM:SS.mmmZ" by hand: once per request, printf is measurable. */
    unsigned year = (unsigned)(tm.tm_year + 1900) % 10000u, msec = (unsigned)(ms % 1000);
    const unsigned fields[] = {(unsigned)tm.tm_mon + 1, (unsigned)tm.tm_mday, (unsigned)tm.tm_hour,
                               (unsigned)tm.tm_min, (unsigned)tm.tm_sec};
    const char seps[] = {'-', '-', 'T', ':', ':', '.'};
    buf[0] = (char)('0' + year / 1000);
    buf[1] = (char)('0' + year / 100 % 10);
    buf[2] = (char)('0' + year / 10 % 10);
    buf[3] = (char)('0' + year % 10);
    size_t n = 4;
    for (int i = 0; i < 5; i++) {
        buf[n++] = seps[i];
        buf[n++] = (char)('0' + fields[i] / 10 % 10);
        buf[n++] = (char)('0' + fields[i] % 10);
    }
    buf[n++] = '.';
    buf[n++] = (char)('0' + msec / 100);
    buf[n++] = (char)('0' + msec / 10 % 10);
    buf[n++] = (char)('0' + msec % 10);
    buf[n++] = 'Z';
    buf[n] = '\0';
    return n;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        buf += n;
        len -= (size_t)n;
    }
}

bool log_enabled(log_level_t level)
{
    return level >= min_level;
}

void log_write(log_level_t level, const char *fmt, ...)
{
    static const char *tags[] = {"debug", "info", "warn", "error"};
    if (level < min_level)
        return;
    char line[2048];
    size_t n = format_ts(line, sizeof(line), now_ms());
    n += (size_t)snprintf(line + n, sizeof(line) - n, " %s ", tags[level]);
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    va_end(ap);
    if (w < 0)
        w = 0;
    n += (size_t)w;
    if (n > sizeof(line) - 2)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    write_all(2, line, n);
}

/* Metadata strings are ids and configured names; escape anyway so a line is always JSON. */
static size_t put_json_string(char *buf, size_t cap, size_t n, const char *s)
{
    if (n + 2 >= cap)
        return n;
    buf[n++] = '"';
    for (; s != NULL && *s != '\0' && n + 8 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[n++] = '\\';
            buf[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(buf + n, cap - n, "\\u%04x", c);
        } else {
            buf[n++] = (char)c;
        }
    }
    buf[n++] = '"';
    return n;
}

/* Appends without printf: this runs once per request on the worker threads. Every append
 * checks the room left; a line that does not fit is reported as 0. */
typedef struct out {
    char *buf;
    size_t n, cap;
    bool full;
} out_t;

static void out_raw(out_t *o, const char *s, size_t len)
{
    if (o->n + len >= o->cap) {
        o->full = true;
        return;
    }
    memcpy(o->buf + o->n, s, len);
    o->n += len;
}

#define OUT_LIT(o, s) out_raw((o), (s), sizeof(s) - 1)

static void out_int(out_t *o, int64_t v)
{
    char tmp[22];
    size_t i = 0;
    if (v < 0)
        tmp[i++] = '-';
    i += util_u64_dec(v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v, tmp + i);
    out_raw(o, tmp, i);
}

static void out_str(out_t *o, const char *s)
{
    if (o->full)
        return;
    o->n = put_json_string(o->buf, o->cap, o->n, s);
    if (o->n + 1 >= o->cap)
        o->full = true;
}

/* USD with 6 decimals, from micro-dollars rounded half up. */
static void out_usd(out_t *o, double usd)
{
    int64_t micro = (int64_t)(usd * 1e6 + (usd >= 0 ? 0.5 : -0.5));
    if (micro < 0) {
        OUT_LIT(o, "-");
        micro = -micro;
    }
    out_int(o, micro / 1000000);
    char frac[8] = {'.'};
    int64_t f = micro % 1000000;
    for (int i = 6; i >= 1; i--, f /= 10)
        frac[i] = (char)('0' + f % 10);
    out_raw(o, frac, 7);
}

size_t log_record_format(const log_record_t *r, char *line, size_t cap)
{
    char ts[40];
    size_t tslen = format_ts(ts, sizeof(ts), r->ts_ms);
    out_t o = {line, 0, cap, false};
    OUT_LIT(&o, "{\"type\":\"request\",\"ts\":\"");
    out_raw(&o, ts, tslen);
    OUT_LIT(&o, "\",\"request_id\":");
    out_str(&o, r->request_id);
    OUT_LIT(&o, ",\"node\":");
    out_str(&o, r->node);
    OUT_LIT(&o, ",\"key_id\":");
    out_str(&o, r->key_id);
    OUT_LIT(&o, ",\"model\":");
    out_str(&o, r->model);
    OUT_LIT(&o, ",\"endpoint\":");
    out_str(&o, r->endpoint);
    OUT_LIT(&o, ",\"provider\":");
    out_str(&o, r->provider);
    OUT_LIT(&o, ",\"status\":");
    out_int(&o, r->status);
    OUT_LIT(&o, ",\"input_tokens\":");
    out_int(&o, r->input_tokens);
    OUT_LIT(&o, ",\"cached_input_tokens\":");
    out_int(&o, r->cached_input_tokens);
    OUT_LIT(&o, ",\"output_tokens\":");
    out_int(&o, r->output_tokens);
    OUT_LIT(&o, ",\"reasoning_tokens\":");
    out_int(&o, r->reasoning_tokens);
    OUT_LIT(&o, ",\"usd\":");
    out_usd(&o, r->usd);
    OUT_LIT(&o, ",\"latency_ms\":");
    out_int(&o, r->latency_ms);
    OUT_LIT(&o, ",\"ttfb_ms\":");
    out_int(&o, r->ttfb_ms);
    OUT_LIT(&o, ",\"stream\":");
    if (r->stream)
        OUT_LIT(&o, "true");
    else
        OUT_LIT(&o, "false");
    OUT_LIT(&o, ",\"estimated\":");
    if (r->estimated)
        OUT_LIT(&o, "true}\n");
    else
        OUT_LIT(&o, "false}\n");
    return o.full ? 0 : o.n;
}

void log_record_write(const log_record_t *r)
{
    char line[2048];
    size_t n = log_record_format(r, line, sizeof(line));
    if (n > 0)
        write_all(1, line, n);
}

void log_records_flush(const char *buf, size_t len)
{
    write_all(1, buf, len);
}
