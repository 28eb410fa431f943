/* sse: Server-Sent Events parser (see sse.h for the contract).
 *
 * How it works: the parser walks the input line by line, keeping every position as an
 * offset from the first byte of the current event. While an event starts inside the
 * current feed buffer those offsets point into that buffer, and a complete event is
 * reported straight from it (no copy). When a feed ends inside an event, the event's bytes
 * so far move to `pending`, at the same offsets, and later bytes are appended there one line
 * at a time until the blank line comes. Fields are interpreted as each line completes, so
 * no byte is scanned twice; only events with several data lines copy their data (into
 * `joined`). */
#include "node/sse.h"

#include <errno.h>
#include <string.h>

void sse_parser_init(sse_parser_t *p, size_t max_event)
{
    memset(p, 0, sizeof(*p));
    p->max_event = max_event;
    wipe_buf_init(&p->pending, max_event);
    wipe_buf_init(&p->joined, max_event);
    p->first_line = true;
}

void sse_parser_dispose(sse_parser_t *p)
{
    wipe_buf_free(&p->pending);
    wipe_buf_free(&p->joined);
    p->error = 0;
}

static void event_reset(sse_parser_t *p)
{
    wipe_buf_reset(&p->pending);
    wipe_buf_reset(&p->joined);
    p->line_start = 0;
    p->name_off = p->name_len = 0;
    p->data_off = p->data_len = 0;
    p->data_lines = 0;
}

/* Index of the first '\r' or '\n' in s[0..n), or n. *nl caches the next '\n' at or after s
 * (NULL: none up to end) so a buffer without '\n' is not rescanned for every line. */
static size_t find_eol(const uint8_t *s, size_t n, const uint8_t *end, const uint8_t **nl, bool *nl_known)
{
    if (!*nl_known || (*nl != NULL && *nl < s)) {
        *nl = memchr(s, '\n', (size_t)(end - s));
        *nl_known = true;
    }
    size_t lim = (*nl != NULL && (size_t)(*nl - s) < n) ? (size_t)(*nl - s) : n;
    const uint8_t *cr = memchr(s, '\r', lim);
    return cr != NULL ? (size_t)(cr - s) : lim;
}

/* Interprets one complete, non-blank line at base[off..off+n). */
static int handle_line(sse_parser_t *p, const uint8_t *base, size_t off, size_t n)
{
    const uint8_t *l = base + off;
    if (p->first_line) {
        p->first_line = false;
        if (n >= 3 && l[0] == 0xEF && l[1] == 0xBB && l[2] == 0xBF) {
            l += 3;
            off += 3;
            n -= 3;
        }
    }
    if (n == 0 || l[0] == ':')
        return 0; /* comment */
    const uint8_t *colon = memchr(l, ':', n);
    size_t name_n = colon != NULL ? (size_t)(colon - l) : n;
    size_t value = colon != NULL ? name_n + 1 : n;
    if (value < n && l[value] == ' ')
        value++;
    if (name_n == 4 && memcmp(l, "data", 4) == 0) {
        int r = 0;
        if (p->data_lines == 0) {
            p->data_off = off + value;
            p->data_len = n - value;
        } else {
            if (p->data_lines == 1)
                r = wipe_buf_append(&p->joined, base + p->data_off, p->data_len);
            if (r == 0)
                r = wipe_buf_append(&p->joined, "\n", 1);
            if (r == 0)
                r = wipe_buf_append(&p->joined, l + value, n - value);
        }
        p->data_lines++;
        return r;
    }
    if (name_n == 5 && memcmp(l, "event", 5) == 0) {
        p->name_off = off + value;
        p->name_len = n - value;
    }
    return 0;
}

static int dispatch(sse_parser_t *p, const uint8_t *base, size_t raw_len, bool terminated, sse_event_cb cb, void *data)
{
    sse_event_t ev;
    ev.name = p->name_len > 0 ? base + p->name_off : (const uint8_t *)"";
    ev.name_len = p->name_len;
    ev.has_data = p->data_lines > 0;
    if (p->data_lines > 1) {
        ev.data = p->joined.data;
        ev.data_len = p->joined.len;
    } else if (p->data_lines == 1 && p->data_len > 0) {
        ev.data = base + p->data_off;
        ev.data_len = p->data_len;
    } else {
        ev.data = (const uint8_t *)"";
        ev.data_len = 0;
    }
    ev.raw = base;
    ev.raw_len = raw_len;
    ev.terminated = terminated;
    int r = cb(data, &ev);
    event_reset(p);
    return r;
}

/* Length of the line terminator at s[t] ('\r' or '\n'), given avail bytes from s. */
static size_t eol_len(sse_parser_t *p, const uint8_t *s, size_t t, size_t avail)
{
    if (s[t] == '\n')
        return 1;
    if (t + 1 < avail)
        return s[t + 1] == '\n' ? 2 : 1;
    p->skip_lf = true; /* the "\n" of a "\r\n" may come in the next feed */
    return 1;
}

int sse_parser_feed(sse_parser_t *p, const uint8_t *buf, size_t len, sse_event_cb cb, void *data)
{
    if (p->error != 0)
        return p->error;
    const uint8_t *end = buf + len;
    const uint8_t *nl = NULL;
    bool nl_known = false;
    size_t pos = 0;
    int r = 0;
    while (pos < len && r == 0) {
        if (p->pending.len == 0) {
            /* The event starts in buf: parse in place. */
            const uint8_t *ev = buf + pos;
            size_t avail = len - pos;
            size_t off = 0;
            bool done = false;
            if (p->skip_lf) {
                p->skip_lf = false;
                if (ev[0] == '\n')
                    off = p->line_start = 1;
            }
            while (off < avail) {
                size_t t = off + find_eol(ev + off, avail - off, end, &nl, &nl_known);
                if (t == avail)
                    break;
                size_t e = t + eol_len(p, ev, t, avail);
                if (e > p->max_event) {
                    r = -E2BIG;
                    break;
                }
                bool blank = t == p->line_start;
                if (!blank && (r = handle_line(p, ev, p->line_start, t - p->line_start)) != 0)
                    break;
                off = p->line_start = e;
                if (blank) {
                    pos += e;
                    r = dispatch(p, ev, e, true, cb, data);
                    done = true;
                    break;
                }
            }
            if (r != 0 || done)
                continue;
            if (avail > p->max_event) {
                r = -E2BIG;
                break;
            }
            r = wipe_buf_append(&p->pending, ev, avail);
            pos = len;
        } else {
            /* The event started in an earlier feed: gather it in pending, one line at a time. */
            if (p->skip_lf) {
                p->skip_lf = false;
                if (buf[pos] == '\n') {
                    if ((r = wipe_buf_append(&p->pending, buf + pos, 1)) != 0)
                        break;
                    pos++;
                    p->line_start = p->pending.len;
                    continue;
                }
            }
            size_t avail = len - pos;
            size_t t = find_eol(buf + pos, avail, end, &nl, &nl_known);
            if (t == avail) {
                r = wipe_buf_append(&p->pending, buf + pos, avail);
                pos = len;
                break;
            }
            size_t tl = eol_len(p, buf + pos, t, avail);
            if ((r = wipe_buf_append(&p->pending, buf + pos, t + tl)) != 0)
                break;
            pos += t + tl;
            size_t line_end = p->pending.len - tl;
            bool blank = line_end == p->line_start;
            if (!blank && (r = handle_line(p, p->pending.data, p->line_start, line_end - p->line_start)) != 0)
                break;
            p->line_start = p->pending.len;
            if (blank)
                r = dispatch(p, p->pending.data, p->pending.len, true, cb, data);
        }
    }
    if (r != 0)
        p->error = r;
    return r;
}

int sse_parser_finish(sse_parser_t *p, sse_event_cb cb, void *data)
{
    if (p->error != 0)
        return p->error;
    p->skip_lf = false;
    if (p->pending.len == 0)
        return 0;
    int r = 0;
    if (p->line_start < p->pending.len)
        r = handle_line(p, p->pending.data, p->line_start, p->pending.len - p->line_start);
    if (r == 0)
        r = dispatch(p, p->pending.data, p->pending.len, false, cb, data);
    else
        event_reset(p);
    if (r != 0)
        p->error = r;
    return r;
}
