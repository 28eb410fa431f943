/* mstore.h — the node's durable metadata store: one JSON line per request, kept in hourly
 * segment files under <data-dir>/meta/, deleted when older than the retention (7 days).
 *
 * On disk: <data-dir>/meta/ (mode 0700) holds one file per UTC hour,
 * meta-YYYYMMDDHH.jsonl (mode 0600); each line is exactly what log_record_format (log.h)
 * writes, and a record lives in the segment of its "ts" hour. Nothing else is ever
 * written: mstore_append checks every line against the fixed field order of
 * log_record_format and drops anything else, so no content can reach these files.
 *
 * Plain synchronous C: file I/O, no threads, no event loop, no clock reads (functions that
 * depend on time take now_ms). Not thread-safe: one mstore_t is used by one thread at a
 * time (the node runs every call on a libuv threadpool job, one job at a time).
 *
 * Durability: appended lines reach the kernel at once; mstore_sync fdatasyncs every
 * segment written since the last sync (the node calls it at least every 200 ms). A crash
 * can leave a torn last line in a segment: readers skip it, and the next append to that
 * segment first terminates it with '\n', so one torn line never damages the next.
 *
 * Bounds: lines of at most MSTORE_LINE_MAX bytes; at most MSTORE_OPEN_MAX segments held
 * open for appending (LRU; a dirty segment is fdatasync'ed when evicted); a logs query
 * reads at most logs_scan_max bytes (default 32 MiB) and a usage query at most
 * usage_scan_max bytes (default 256 MiB) of segment files, so an admin call cannot hold
 * the store (and so the appends queued behind it) for long; at most MSTORE_PAGE_MAX
 * records per page; at most MSTORE_GROUPS_MAX usage groups; at most MSTORE_SEGMENTS_MAX
 * segments considered by a query.
 *
 * Errors are negative errno values; nothing here logs, and no error carries a record. */
#ifndef LLMRELAY_NODE_MSTORE_H
#define LLMRELAY_NODE_MSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MSTORE_LINE_MAX 4096               /* bytes of one line, '\n' included */
#define MSTORE_OPEN_MAX 4                  /* segments kept open for appending */
#define MSTORE_PAGE_DEFAULT 100            /* records per logs page when limit is 0 */
#define MSTORE_PAGE_MAX 1000               /* records per logs page, at most */
#define MSTORE_LOGS_SCAN_MAX (32u << 20)   /* default bytes read by one logs query */
#define MSTORE_USAGE_SCAN_MAX (256u << 20) /* default bytes read by one usage query */
#define MSTORE_GROUPS_MAX 200000           /* usage groups, at most */
#define MSTORE_SEGMENTS_MAX 65536          /* segments considered by one query */
#define MSTORE_CURSOR_MAX 48               /* bytes of a cursor, NUL included */
#define MSTORE_RETENTION_DEFAULT (7LL * 24 * 3600 * 1000)
#define MSTORE_HOUR_MS (3600LL * 1000)

typedef struct mstore mstore_t;

typedef struct mstore_options {
    int64_t retention_ms;  /* records older than now - retention are never returned; 0 = 7 d */
    size_t logs_scan_max;  /* 0 = MSTORE_LOGS_SCAN_MAX */
    size_t usage_scan_max; /* 0 = MSTORE_USAGE_SCAN_MAX */
} mstore_options_t;

/* Opens (creating <data_dir> and <data_dir>/meta when missing) the store. opts may be NULL
 * (defaults); data_dir is copied. On success *out is owned by the caller until
 * mstore_close. */
int mstore_open(const char *data_dir, const mstore_options_t *opts, mstore_t **out);
/* Syncs what was written, closes every file and frees s (also on error). s may be NULL. */
int mstore_close(mstore_t *s);

/* Appends whole lines (each log_record_format output; the last one may lack its '\n').
 * Each line goes to the segment of its ts hour (a batch may straddle hours); a line that
 * is not a well-formed metadata record (wrong shape, torn, over MSTORE_LINE_MAX) is dropped
 * and counted in mstore_stats. Returns the number of lines stored, or a negative errno
 * (lines before the failing write may be stored; do not retry the batch, which would
 * store them twice). lines is borrowed. */
int mstore_append(mstore_t *s, const char *lines, size_t len);
/* fdatasyncs every segment written since the last sync (and the directory after a segment
 * was created or deleted). Returns 0 or the first error. */
int mstore_sync(mstore_t *s);
/* Deletes every segment whose whole hour ended at or before now_ms - retention_ms
 * (retention_ms <= 0: the store's retention). Returns how many were deleted, or an error. */
int mstore_sweep(mstore_t *s, int64_t now_ms, int64_t retention_ms);

typedef struct mstore_stats {
    uint64_t appended; /* lines stored since open */
    uint64_t rejected; /* lines dropped by mstore_append since open */
} mstore_stats_t;
void mstore_stats(const mstore_t *s, mstore_stats_t *out);

/* ---- /admin/v1/logs ---------------------------------------------------------------- */

typedef struct mstore_filter {
    int64_t now_ms;     /* required: records with ts < now_ms - retention are never returned */
    int64_t since_ms;   /* ts >= since_ms (0: no lower bound beyond the retention) */
    int64_t until_ms;   /* ts < until_ms (0: no upper bound) */
    const char *key_id; /* exact; NULL = any (borrowed) */
    const char *model;  /* exact; NULL = any (borrowed) */
    int status;         /* 0 = any; 1..5 = the class (2 = 2xx); 100..599 = exact */
    size_t limit;       /* records per page: 0 = MSTORE_PAGE_DEFAULT; above MSTORE_PAGE_MAX = max */
    const char *cursor; /* NULL or "" = first page; else a previous page's next_cursor */
} mstore_filter_t;

typedef struct mstore_page {
    char *lines;  /* owned: `count` lines, each ending in '\n', at most limit * MSTORE_LINE_MAX bytes; NULL if none */
    size_t len;   /* bytes in lines */
    size_t count; /* records in lines */
    char next_cursor[MSTORE_CURSOR_MAX]; /* "" when there is nothing more */
    size_t scanned_bytes;                /* bytes read by this query */
} mstore_page_t;

/* One page of matching records, newest first: segments from the newest hour back, and
 * within a segment the last written first (a record is written when its request ends, so
 * inside one hour a long request may come after shorter ones that started later). The
 * cursor ("<segment hour ms>:<offset>", opaque to callers) marks a position in the
 * append-only files, so paging returns no record twice and misses none that existed when
 * the first page was read (records appended meanwhile to newer positions are not seen).
 * When the scan budget runs out a page may hold fewer than `limit` records (even none)
 * with a non-empty next_cursor: keep paging. On success *out is owned by the caller, to
 * release with mstore_page_dispose; on error it holds nothing. -EINVAL for a bad cursor. */
int mstore_logs(mstore_t *s, const mstore_filter_t *f, mstore_page_t *out);
void mstore_page_dispose(mstore_page_t *p);

/* ---- /admin/v1/usage --------------------------------------------------------------- */

typedef enum {
    MSTORE_GROUP_NONE = 0,
    MSTORE_GROUP_MODEL,
    MSTORE_GROUP_HOUR, /* group names "YYYY-MM-DDTHH:00:00Z" */
    MSTORE_GROUP_NODE,
    MSTORE_GROUP_KEY,
} mstore_group_t;

typedef struct mstore_sums {
    uint64_t requests;
    int64_t input_tokens, output_tokens;
    int64_t usd_micro; /* exact sum of the records' 6-decimal usd, in micro-dollars */
    double usd;        /* usd_micro / 1e6 */
} mstore_sums_t;

typedef struct mstore_group_row {
    char *group; /* owned by the mstore_usage_t */
    mstore_sums_t sums;
} mstore_group_row_t;

typedef struct mstore_usage {
    mstore_sums_t totals;
    mstore_group_row_t *groups; /* owned; sorted by group (strcmp); NULL for MSTORE_GROUP_NONE */
    size_t ngroups;
    bool groups_overflow; /* more than MSTORE_GROUPS_MAX groups: the rest only in totals */
    /* The scan goes from the newest hour back, whole segments at a time; when the budget
     * would be exceeded it stops and sets truncated: the sums then cover exactly
     * [complete_since_ms, until). Otherwise complete_since_ms is the effective since. */
    bool truncated;
    int64_t complete_since_ms;
    size_t scanned_bytes;
} mstore_usage_t;

/* Totals of requests, input/output tokens and usd over records with ts in [since_ms,
 * until_ms) (until_ms 0 = no bound), never older than now_ms - retention, of one key
 * (key_id borrowed; NULL = all), grouped by `by`. On success *out is owned by the caller,
 * to release with mstore_usage_dispose. */
int mstore_usage(mstore_t *s, int64_t now_ms, int64_t since_ms, int64_t until_ms, const char *key_id, mstore_group_t by,
                 mstore_usage_t *out);
void mstore_usage_dispose(mstore_usage_t *u);

#endif
