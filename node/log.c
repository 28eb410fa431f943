/* log.c — diagnostic lines to stderr and metadata records to stdout, one write(2) each.
 *
 * The level is a process-wide setting made once before worker threads start; everything
 * else is per call, so any thread may log without a lock. Lines longer than the local
 * buffer are truncated rather than split (a split line could interleave with another
 * thread's). */
#include "node/log.h"

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
    gmtime_r(&s, &tm);
    size_t n = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(buf + n, cap - n, ".%03dZ", (int)(ms % 1000));
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

size_t log_record_format(const log_record_t *r, char *line, size_t cap)
{
    char ts[40];
    size_t n = 0;
    format_ts(ts, sizeof(ts), r->ts_ms);
#define APPEND(...) n += (size_t)snprintf(line + n, n < cap ? cap - n : 0, __VA_ARGS__)
    APPEND("{\"type\":\"request\",\"ts\":\"%s\",\"request_id\":", ts);
    n = put_json_string(line, cap, n, r->request_id);
    APPEND(",\"node\":");
    n = put_json_string(line, cap, n, r->node);
    APPEND(",\"key_id\":");
    n = put_json_string(line, cap, n, r->key_id);
    APPEND(",\"model\":");
    n = put_json_string(line, cap, n, r->model);
    APPEND(",\"endpoint\":");
    n = put_json_string(line, cap, n, r->endpoint);
    APPEND(",\"provider\":");
    n = put_json_string(line, cap, n, r->provider);
    APPEND(",\"status\":%d,\"input_tokens\":%lld,\"cached_input_tokens\":%lld,\"output_tokens\":%lld,"
           "\"reasoning_tokens\":%lld,\"usd\":%.6f,\"latency_ms\":%lld,\"ttfb_ms\":%lld,\"stream\":%s,"
           "\"estimated\":%s}\n",
           r->status, (long long)r->input_tokens, (long long)r->cached_input_tokens, (long long)r->output_tokens,
           (long long)r->reasoning_tokens, r->usd, (long long)r->latency_ms, (long long)r->ttfb_ms,
           r->stream ? "true" : "false", r->estimated ? "true" : "false");
#undef APPEND
    return n < cap ? n : 0;
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
