/* records.h — the node's metadata record pipeline: workers' batched metadata lines go to the
 * 7-day store (mstore) on the main loop's behalf, off the loop.
 *
 * The main thread owns one records_t. Every file operation of the store (append, sync,
 * sweep, queries) runs as a job on the libuv threadpool, one job at a time in arrival order,
 * so the store is only ever used by one thread at a time and the loop never blocks on disk.
 * Appends are synced at least every 200 ms, so a record is durable within 1 s of its
 * response; segments older than the retention are swept every minute (and at once when the
 * test clock moves). Query answers are built as JSON in the contract's shapes.
 *
 * Ownership: records_append takes over a malloc'd buffer of whole lines. Query callbacks get
 * a JSON body valid only during the call. */
#ifndef LLMRELAY_NODE_RECORDS_H
#define LLMRELAY_NODE_RECORDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "node/clock.h"
#include "node/mstore.h"

typedef struct records records_t;

/* Called once on the loop: status 200 with a JSON body, or an error status with a message. */
typedef void (*records_answer_cb)(void *ctx, int status, const char *json, size_t len);

typedef struct records_logs_query {
    const char *key_id, *model, *cursor; /* NULL = any / first page */
    int64_t since_ms, until_ms;          /* 0 = unbounded */
    int status;                          /* 0 any, 1..5 class, 100..599 exact */
    size_t limit;
} records_logs_query_t;

typedef struct records_usage_query {
    const char *key_id; /* NULL = every key */
    int64_t since_ms, until_ms;
    mstore_group_t by;
} records_usage_query_t;

int records_open(uv_loop_t *loop, const char *data_dir, const node_clock_t *clock, int64_t retention_ms,
                 records_t **out);
/* Takes ownership of lines (malloc'd, whole lines). */
void records_append(records_t *r, char *lines, size_t len);
void records_query_logs(records_t *r, const records_logs_query_t *q, records_answer_cb cb, void *ctx);
void records_query_usage(records_t *r, const records_usage_query_t *q, records_answer_cb cb, void *ctx);
/* Sweeps now (the test clock moved). */
void records_sweep_now(records_t *r);
/* Flushes and syncs what is queued, then closes the store; the loop must run until the
 * last job is done: records frees itself then and sets *closed_flag (may be NULL). */
void records_close(records_t *r, bool *closed_flag);

#endif
