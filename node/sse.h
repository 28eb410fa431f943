/* sse: a Server-Sent Events parser for relaying an upstream stream event by event.
 *
 * Feed it the upstream bytes in pieces of any size; it calls back once per event with the
 * event's name, its joined data and the exact raw bytes of the event, so the relay can
 * inspect an event (for usage) and forward it unchanged.
 *
 * What counts as an event: every block of lines ended by a blank line, including blocks
 * that hold only comments (": keepalive") or nothing at all (a lone blank line), so the
 * concatenation of all reported raw bytes is exactly the input stream. Line endings "\n",
 * "\r\n" and "\r" are all accepted. "data:" with or without one space after the colon;
 * several data lines are joined with "\n" (as in the WHATWG spec, without the final "\n").
 * "id" and "retry" lines are kept in raw but not interpreted. A UTF-8 BOM at the very start
 * of the stream is skipped when reading fields (it stays in raw).
 *
 * One subtlety of "\r\n": when a feed ends right after the "\r" of the blank line that ends
 * an event, the event is reported at once (not delayed until more bytes come) and the "\n"
 * that may follow becomes the first raw byte of the next event; concatenated raws are still
 * the exact stream.
 *
 * End of stream: sse_parser_finish reports bytes left after the last blank line as one
 * more event with terminated == false (fields parsed as if the block had ended), so the
 * caller decides whether to forward or drop it; a stream that ends cleanly reports nothing.
 *
 * Memory: an event that lies entirely in one feed buffer is reported without copying; an
 * event that spans feeds is gathered in a buffer of at most max_event bytes, wiped when the
 * event has been reported. No I/O, no globals. */
#ifndef LLMRELAY_NODE_SSE_H
#define LLMRELAY_NODE_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "node/wipe.h"

/* One event. Every pointer is borrowed, valid only during the callback, never NUL-terminated. */
typedef struct sse_event {
    const uint8_t *name; /* value of the last "event:" line; name_len == 0 if none */
    size_t name_len;
    const uint8_t *data; /* data lines joined with '\n'; data_len == 0 if none */
    size_t data_len;
    bool has_data;      /* at least one "data" line (tells "data:" from no data at all) */
    const uint8_t *raw; /* exact bytes of the event, terminating blank line included */
    size_t raw_len;
    bool terminated; /* false only for the trailing block reported by sse_parser_finish */
} sse_event_t;

/* Return 0 to go on; any other value stops the parser and is returned by feed/finish. */
typedef int (*sse_event_cb)(void *data, const sse_event_t *ev);

/* Embeddable; all fields private. Owns its two buffers (wiped on reset and dispose). */
typedef struct sse_parser {
    size_t max_event;
    wipe_buf_t pending; /* raw bytes of an event that spans feeds */
    wipe_buf_t joined;  /* data of an event with two or more data lines */
    size_t line_start;  /* offset of the current line from the event's first byte */
    size_t name_off, name_len;
    size_t data_off, data_len; /* the first data line's value */
    size_t data_lines;
    bool skip_lf;    /* the last byte seen was a "\r" ending a line: a "\n" next belongs to it */
    bool first_line; /* no line read yet: check for a BOM */
    int error;       /* sticky: -E2BIG, -ENOMEM or a callback's non-zero return */
} sse_parser_t;

/* max_event bounds the raw size of one event (and so all memory the parser holds). */
void sse_parser_init(sse_parser_t *p, size_t max_event);
/* Wipes and frees what the parser holds. The parser may be initialised again. */
void sse_parser_dispose(sse_parser_t *p);

/* Parses len bytes of buf (borrowed for the call only), calling cb for each complete event.
 * Returns 0; -E2BIG if one event exceeds max_event; -ENOMEM; or cb's non-zero return, in
 * which case the bytes after that event are not parsed. Any non-zero result is sticky: every
 * later feed/finish returns it again, and the parser should be disposed. */
int sse_parser_feed(sse_parser_t *p, const uint8_t *buf, size_t len, sse_event_cb cb, void *data);

/* End of stream: reports any bytes left after the last complete event as an event with
 * terminated == false, then resets the parser for a new stream. Same returns as feed. */
int sse_parser_finish(sse_parser_t *p, sse_event_cb cb, void *data);

#endif
