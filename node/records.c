/* records.c — the metadata record pipeline (see records.h).
 *
 * A FIFO of jobs feeds one uv_work_t at a time. Appends are not queued one by one: every
 * batch that arrives waits in `pending` and the next job takes all of them at once, so a
 * busy node does one write per segment per job. A 200 ms timer queues a sync when
 * something was written since the last one; a one-minute timer queues a sweep. */
#include "node/records.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node/log.h"
#include "node/util.h"
#include "node/wipe.h"

enum job_kind { JOB_WRITE, JOB_SYNC, JOB_SWEEP, JOB_LOGS, JOB_USAGE, JOB_CLOSE };

typedef struct batch {
    struct batch *next;
    char *lines;
    size_t len;
} batch_t;

typedef struct job {
    struct job *next;
    enum job_kind kind;
    records_t *owner;
    batch_t *batches; /* JOB_WRITE */
    records_logs_query_t logs;
    records_usage_query_t usage;
    char *key_id, *model, *cursor; /* owned copies for the queries */
    records_answer_cb cb;
    void *ctx;
    int64_t now_ms;
    /* results */
    int status;
    wipe_buf_t answer;
} job_t;

struct records {
    uv_loop_t *loop;
    const node_clock_t *clock;
    int64_t retention_ms;
    mstore_t *store;
    job_t *head, *tail; /* waiting jobs */
    batch_t *pending, *pending_tail;
    bool busy, dirty, sync_queued, closing;
    uv_work_t work;
    job_t *running;
    uv_timer_t sync_timer, sweep_timer;
    int handles_open;
    bool *closed_flag;
};

static void start_next(records_t *r);

static void enqueue(records_t *r, job_t *j)
{
    j->owner = r;
    if (r->tail != NULL)
        r->tail->next = j;
    else
        r->head = j;
    r->tail = j;
    start_next(r);
}

static job_t *job_new(enum job_kind kind)
{
    job_t *j = calloc(1, sizeof(*j));
    if (j != NULL) {
        j->kind = kind;
        wipe_buf_init(&j->answer, 64u << 20);
    }
    return j;
}

static void job_free(job_t *j)
{
    for (batch_t *b = j->batches, *next; b != NULL; b = next) {
        next = b->next;
        free(b->lines);
        free(b);
    }
    free(j->key_id);
    free(j->model);
    free(j->cursor);
    wipe_buf_free(&j->answer);
    free(j);
}

/* ---- JSON answers (built on the threadpool) ------------------------------------------ */

static void put(wipe_buf_t *b, const char *s)
{
    wipe_buf_append(b, s, strlen(s));
}

static void put_sums(wipe_buf_t *b, const mstore_sums_t *s)
{
    char tmp[160];
    snprintf(tmp, sizeof(tmp), "\"requests\":%" PRIu64 ",\"input_tokens\":%" PRId64 ",\"output_tokens\":%" PRId64
             ",\"usd\":%.6f",
             s->requests, s->input_tokens, s->output_tokens, (double)s->usd_micro / 1e6);
    put(b, tmp);
}

/* Group names are metadata (model, node, key id, hour): escape anyway. */
static void put_string(wipe_buf_t *b, const char *s)
{
    put(b, "\"");
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        char tmp[8];
        if (c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            wipe_buf_append(b, tmp, 2);
        } else if (c < 0x20) {
            snprintf(tmp, sizeof(tmp), "\\u%04x", c);
            put(b, tmp);
        } else {
            wipe_buf_append(b, s, 1);
        }
    }
    put(b, "\"");
}

static void run_logs(records_t *r, job_t *j)
{
    mstore_filter_t f = {
        .now_ms = j->now_ms,
        .since_ms = j->logs.since_ms,
        .until_ms = j->logs.until_ms,
        .key_id = j->key_id,
        .model = j->model,
        .status = j->logs.status,
        .limit = j->logs.limit,
        .cursor = j->cursor,
    };
    mstore_page_t page;
    int ret = mstore_logs(r->store, &f, &page);
    if (ret != 0) {
        j->status = ret == -EINVAL ? 400 : 500;
        put(&j->answer, ret == -EINVAL ? "bad query (cursor or range)" : "cannot read the metadata store");
        return;
    }
    put(&j->answer, "{\"records\":[");
    bool first = true;
    for (size_t off = 0; off < page.len;) {
        const char *line = page.lines + off;
        const char *nl = memchr(line, '\n', page.len - off);
        size_t n = nl != NULL ? (size_t)(nl - line) : page.len - off;
        if (!first)
            put(&j->answer, ",");
        wipe_buf_append(&j->answer, line, n);
        first = false;
        off += n + 1;
    }
    put(&j->answer, "],\"next_cursor\":");
    if (page.next_cursor[0] != '\0')
        put_string(&j->answer, page.next_cursor);
    else
        put(&j->answer, "null");
    put(&j->answer, "}\n");
    mstore_page_dispose(&page);
    j->status = 200;
}

static void run_usage(records_t *r, job_t *j)
{
    mstore_usage_t u;
    int64_t until = j->usage.until_ms != 0 ? j->usage.until_ms : j->now_ms;
    int64_t since = j->usage.since_ms;
    int ret = mstore_usage(r->store, j->now_ms, since, until, j->key_id, j->usage.by, &u);
    if (ret != 0) {
        j->status = ret == -EINVAL ? 400 : 500;
        put(&j->answer, ret == -EINVAL ? "bad query (range)" : "cannot read the metadata store");
        return;
    }
    char from[32], to[32];
    int64_t from_ms = u.complete_since_ms > since ? u.complete_since_ms : since;
    if (from_ms < j->now_ms - r->retention_ms)
        from_ms = j->now_ms - r->retention_ms;
    util_format_rfc3339(from_ms / 1000, from);
    util_format_rfc3339(until / 1000, to);
    put(&j->answer, "{\"from\":\"");
    put(&j->answer, from);
    put(&j->answer, "\",\"to\":\"");
    put(&j->answer, to);
    put(&j->answer, "\",\"totals\":{");
    put_sums(&j->answer, &u.totals);
    put(&j->answer, "},\"groups\":[");
    for (size_t i = 0; i < u.ngroups; i++) {
        put(&j->answer, i == 0 ? "{\"group\":" : ",{\"group\":");
        put_string(&j->answer, u.groups[i].group);
        put(&j->answer, ",");
        put_sums(&j->answer, &u.groups[i].sums);
        put(&j->answer, "}");
    }
    put(&j->answer, "],\"truncated\":");
    put(&j->answer, u.truncated ? "true" : "false");
    put(&j->answer, ",\"groups_overflow\":");
    put(&j->answer, u.groups_overflow ? "true}\n" : "false}\n");
    mstore_usage_dispose(&u);
    j->status = 200;
}

static void on_work(uv_work_t *w)
{
    job_t *j = w->data;
    records_t *r = j->owner;
    switch (j->kind) {
    case JOB_WRITE:
        for (batch_t *b = j->batches; b != NULL; b = b->next) {
            int ret = mstore_append(r->store, b->lines, b->len);
            j->status = ret < 0 ? ret : j->status;
        }
        break;
    case JOB_SYNC:
        j->status = mstore_sync(r->store);
        break;
    case JOB_SWEEP:
        j->status = mstore_sweep(r->store, j->now_ms, r->retention_ms);
        break;
    case JOB_LOGS:
        run_logs(r, j);
        break;
    case JOB_USAGE:
        run_usage(r, j);
        break;
    case JOB_CLOSE:
        j->status = mstore_close(r->store);
        r->store = NULL;
        break;
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    records_t *r = h->data;
    if (--r->handles_open == 0) {
        if (r->closed_flag != NULL)
            *r->closed_flag = true;
        free(r);
    }
}

static void on_work_done(uv_work_t *w, int status)
{
    (void)status;
    job_t *j = w->data;
    records_t *r = j->owner;
    r->busy = false;
    r->running = NULL;
    switch (j->kind) {
    case JOB_WRITE:
        if (j->status < 0)
            log_error("metadata store: append failed: %s", strerror(-j->status));
        break;
    case JOB_SYNC:
        if (j->status < 0)
            log_error("metadata store: sync failed: %s", strerror(-j->status));
        break;
    case JOB_SWEEP:
        if (j->status > 0)
            log_info("metadata store: %d segment(s) past retention deleted", j->status);
        break;
    case JOB_LOGS:
    case JOB_USAGE:
        j->cb(j->ctx, j->status, (const char *)j->answer.data, j->answer.len);
        break;
    case JOB_CLOSE:
        uv_close((uv_handle_t *)&r->sync_timer, on_handle_closed);
        uv_close((uv_handle_t *)&r->sweep_timer, on_handle_closed);
        job_free(j);
        return;
    }
    job_free(j);
    start_next(r);
}

static void start_next(records_t *r)
{
    if (r->busy)
        return;
    job_t *j = NULL;
    if (r->pending != NULL) {
        /* Writes go first: every batch waiting so far, in one job. */
        j = job_new(JOB_WRITE);
        if (j == NULL)
            return;
        j->owner = r;
        j->batches = r->pending;
        r->pending = r->pending_tail = NULL;
        r->dirty = true;
    } else if (r->head != NULL) {
        j = r->head;
        r->head = j->next;
        if (r->head == NULL)
            r->tail = NULL;
        if (j->kind == JOB_SYNC) {
            r->sync_queued = false;
            r->dirty = false;
        }
    } else {
        return;
    }
    r->busy = true;
    r->running = j;
    r->work.data = j;
    uv_queue_work(r->loop, &r->work, on_work, on_work_done);
}

static void queue_sync(records_t *r)
{
    if (r->sync_queued || r->closing)
        return;
    job_t *j = job_new(JOB_SYNC);
    if (j == NULL)
        return;
    r->sync_queued = true;
    enqueue(r, j);
}

static void on_sync_timer(uv_timer_t *t)
{
    records_t *r = t->data;
    if (r->dirty || r->pending != NULL)
        queue_sync(r);
}

void records_sweep_now(records_t *r)
{
    if (r->closing)
        return;
    job_t *j = job_new(JOB_SWEEP);
    if (j == NULL)
        return;
    j->now_ms = clock_now_ms(r->clock);
    enqueue(r, j);
}

static void on_sweep_timer(uv_timer_t *t)
{
    records_sweep_now(t->data);
}

int records_open(uv_loop_t *loop, const char *data_dir, const node_clock_t *clock, int64_t retention_ms,
                 records_t **out)
{
    records_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -ENOMEM;
    mstore_options_t opts = {.retention_ms = retention_ms};
    int ret = mstore_open(data_dir, &opts, &r->store);
    if (ret != 0) {
        free(r);
        return ret;
    }
    r->loop = loop;
    r->clock = clock;
    r->retention_ms = retention_ms;
    uv_timer_init(loop, &r->sync_timer);
    uv_timer_init(loop, &r->sweep_timer);
    r->sync_timer.data = r->sweep_timer.data = r;
    r->handles_open = 2;
    uv_timer_start(&r->sync_timer, on_sync_timer, 200, 200);
    uv_timer_start(&r->sweep_timer, on_sweep_timer, 1000, 60 * 1000);
    uv_unref((uv_handle_t *)&r->sync_timer);
    uv_unref((uv_handle_t *)&r->sweep_timer);
    *out = r;
    return 0;
}

void records_append(records_t *r, char *lines, size_t len)
{
    batch_t *b = malloc(sizeof(*b));
    if (b == NULL || r->closing) {
        free(b);
        free(lines);
        return;
    }
    b->next = NULL;
    b->lines = lines;
    b->len = len;
    if (r->pending_tail != NULL)
        r->pending_tail->next = b;
    else
        r->pending = b;
    r->pending_tail = b;
    start_next(r);
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

void records_query_logs(records_t *r, const records_logs_query_t *q, records_answer_cb cb, void *ctx)
{
    job_t *j = job_new(JOB_LOGS);
    if (j == NULL || r->closing) {
        free(j);
        cb(ctx, 503, "the metadata store is not available", 35);
        return;
    }
    j->logs = *q;
    j->key_id = dup_or_null(q->key_id);
    j->model = dup_or_null(q->model);
    j->cursor = dup_or_null(q->cursor);
    j->cb = cb;
    j->ctx = ctx;
    j->now_ms = clock_now_ms(r->clock);
    enqueue(r, j);
}

void records_query_usage(records_t *r, const records_usage_query_t *q, records_answer_cb cb, void *ctx)
{
    job_t *j = job_new(JOB_USAGE);
    if (j == NULL || r->closing) {
        free(j);
        cb(ctx, 503, "the metadata store is not available", 35);
        return;
    }
    j->usage = *q;
    j->key_id = dup_or_null(q->key_id);
    j->cb = cb;
    j->ctx = ctx;
    j->now_ms = clock_now_ms(r->clock);
    enqueue(r, j);
}

void records_close(records_t *r, bool *closed_flag)
{
    if (r == NULL || r->closing)
        return;
    r->closed_flag = closed_flag;
    queue_sync(r);
    r->closing = true;
    uv_timer_stop(&r->sync_timer);
    uv_timer_stop(&r->sweep_timer);
    job_t *j = job_new(JOB_CLOSE);
    if (j == NULL)
        return;
    enqueue(r, j);
}
