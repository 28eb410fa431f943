/* clock.h — the node's wall clock, which tests can move.
 *
 * Everything that depends on calendar time — key expiry, rate windows, retention of
 * metadata segments, the audit sweep, timestamps of records — reads clock_now_ms().
 * Normally that is CLOCK_REALTIME. When the environment variable LLMRELAY_CLOCK_FILE names
 * a file at start-up, the file holds an offset in milliseconds (a decimal integer, may be
 * negative) that is added to the real time: a test writes "604800000" to age everything
 * by 7 days without waiting. The main thread re-reads the file when it changes
 * (clock_poll, on a 100 ms timer); every thread reads the offset from an atomic. Only
 * tests set the variable; production nodes never do. */
#ifndef LLMRELAY_NODE_CLOCK_H
#define LLMRELAY_NODE_CLOCK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct node_clock {
    _Atomic int64_t offset_ms;
    char *file; /* NULL: no fake clock */
    int64_t file_mtime_ns;
} node_clock_t;

/* Reads LLMRELAY_CLOCK_FILE (if set) once. Returns 0 or -errno when the file is named but
 * unreadable or not an integer. */
int clock_init(node_clock_t *c);
void clock_dispose(node_clock_t *c);
/* Re-reads the file if its mtime changed; true when the offset changed. Main thread. */
bool clock_poll(node_clock_t *c);
int64_t clock_now_ms(const node_clock_t *c);

#endif
