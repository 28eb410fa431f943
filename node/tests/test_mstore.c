/* Unit tests of node/mstore on real files in a mkdtemp directory: append/sync/reopen, hour
 * routing (a batch straddling an hour), torn last lines, rejected non-records, the LRU of
 * open segments, logs filters and cursor paging (also with a tiny scan budget), usage sums
 * and groupings checked against sums computed here, retention sweeps with a fake clock,
 * and a 100k-record run that reports append and query rates. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "node/log.h"
#include "node/mstore.h"

#define BASE_MS 1772323200000LL /* 2026-03-01T00:00:00Z */
#define HOUR MSTORE_HOUR_MS
#define DAY (24 * HOUR)

typedef struct fixture {
    char dir[64];
    char meta[96];
} fixture_t;

static int setup(void **state)
{
    fixture_t *fx = calloc(1, sizeof(*fx));
    snprintf(fx->dir, sizeof(fx->dir), "/tmp/test_mstore.XXXXXX");
    if (mkdtemp(fx->dir) == NULL)
        return -1;
    snprintf(fx->meta, sizeof(fx->meta), "%s/meta", fx->dir);
    *state = fx;
    return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    fixture_t *fx = *state;
    nftw(fx->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(fx);
    return 0;
}

/* A deterministic record set. */
typedef struct trec {
    int64_t ts;
    char key[16], model[16], node[8];
    int status;
    int64_t in, out, usd_micro;
} trec_t;

static size_t format(const trec_t *t, int id, char *buf, size_t cap)
{
    char rid[24];
    snprintf(rid, sizeof(rid), "r%d", id);
    log_record_t r = {
        .ts_ms = t->ts,
        .request_id = rid,
        .node = t->node,
        .key_id = t->key,
        .model = t->model,
        .endpoint = "chat.completions",
        .provider = "mock",
        .status = t->status,
        .input_tokens = t->in,
        .output_tokens = t->out,
        .usd = (double)t->usd_micro / 1e6,
        .latency_ms = 12,
        .ttfb_ms = 3,
        .stream = id % 2 == 0,
    };
    size_t n = log_record_format(&r, buf, cap);
    assert_true(n > 0);
    return n;
}

static uint64_t rng_state;
static uint32_t rng(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng_state >> 33);
}

static trec_t *make_records(int n, int64_t start, int64_t span_ms)
{
    static const int statuses[] = {200, 200, 201, 400, 429, 429, 500, 503};
    trec_t *t = calloc((size_t)n, sizeof(*t));
    rng_state = 42;
    for (int i = 0; i < n; i++) {
        t[i].ts = start + (int64_t)((double)span_ms * i / n) + rng() % 1000;
        snprintf(t[i].key, sizeof(t[i].key), "key_%u", rng() % 5);
        snprintf(t[i].model, sizeof(t[i].model), "model-%u", rng() % 3);
        snprintf(t[i].node, sizeof(t[i].node), "n%u", rng() % 3);
        t[i].status = statuses[rng() % 8];
        t[i].in = rng() % 5000;
        t[i].out = rng() % 2000;
        t[i].usd_micro = rng() % 100000;
    }
    return t;
}

/* Appends records in batches of `batch` lines; returns nothing, asserts all were stored. */
static void append_all(mstore_t *s, const trec_t *t, int n, int batch)
{
    char *buf = malloc((size_t)batch * 1024);
    for (int i = 0; i < n; i += batch) {
        size_t len = 0;
        int k = 0;
        for (; k < batch && i + k < n; k++)
            len += format(&t[i + k], i + k, buf + len, 1024);
        assert_int_equal(mstore_append(s, buf, len), k);
    }
    free(buf);
}

static int request_id_of(const char *line)
{
    const char *p = strstr(line, "\"request_id\":\"r");
    assert_non_null(p);
    return atoi(p + 15);
}

static int64_t ts_of(const char *line)
{
    struct tm tm = {0};
    int ms = 0;
    const char *p = strstr(line, "\"ts\":\"");
    assert_non_null(p);
    assert_int_equal(sscanf(p + 6, "%4d-%2d-%2dT%2d:%2d:%2d.%3d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                            &tm.tm_min, &tm.tm_sec, &ms),
                     7);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

/* Pages through a query; marks seen[id]; fails on a duplicate. Returns records seen. */
static int page_all(mstore_t *s, mstore_filter_t f, int n, bool *seen, int *pages)
{
    char cursor[MSTORE_CURSOR_MAX] = "";
    int total = 0;
    int64_t last_hour = INT64_MAX;
    *pages = 0;
    for (;;) {
        mstore_page_t page;
        f.cursor = cursor;
        assert_int_equal(mstore_logs(s, &f, &page), 0);
        (*pages)++;
        assert_true(page.count <= (f.limit == 0 ? MSTORE_PAGE_DEFAULT : f.limit));
        size_t lines = 0;
        for (char *p = page.lines; p != NULL && p < page.lines + page.len;) {
            char *nl = memchr(p, '\n', (size_t)(page.lines + page.len - p));
            assert_non_null(nl);
            *nl = '\0';
            int id = request_id_of(p);
            assert_true(id >= 0 && id < n);
            assert_false(seen[id]);
            seen[id] = true;
            int64_t hour = ts_of(p) / HOUR * HOUR;
            assert_true(hour <= last_hour); /* newest hour first */
            last_hour = hour;
            total++;
            lines++;
            p = nl + 1;
        }
        assert_int_equal(lines, page.count);
        snprintf(cursor, sizeof(cursor), "%s", page.next_cursor);
        mstore_page_dispose(&page);
        if (cursor[0] == '\0')
            break;
        assert_true(*pages < 100000);
    }
    return total;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = malloc(1 << 20);
    *len = fread(buf, 1, 1 << 20, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

static int count_segments(const char *meta)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "ls %s | grep -c '^meta-..........\\.jsonl$'", meta);
    FILE *p = popen(cmd, "r");
    int n = -1;
    assert_int_equal(fscanf(p, "%d", &n), 1);
    pclose(p);
    return n;
}

static void test_append_sync_reopen(void **state)
{
    fixture_t *fx = *state;
    mstore_t *s;
    assert_int_equal(mstore_open(fx->dir, NULL, &s), 0);
    trec_t t[3] = {{.ts = BASE_MS + 1000, .key = "k1", .model = "m", .node = "n1", .status = 200, .in = 1},
                   {.ts = BASE_MS + 2000, .key = "k2", .model = "m", .node = "n1", .status = 200, .in = 2},
                   {.ts = BASE_MS + 3000, .key = "k1", .model = "m", .node = "n1", .status = 500, .in = 3}};
    char buf[4096];
    size_t len = 0;
    for (int i = 0; i < 3; i++)
        len += format(&t[i], i, buf + len, sizeof(buf) - len);
    assert_int_equal(mstore_append(s, buf, len), 3);
    assert_int_equal(mstore_sync(s), 0);
    assert_int_equal(mstore_close(s), 0);

    struct stat st;
    assert_int_equal(stat(fx->meta, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    char path[160];
    snprintf(path, sizeof(path), "%s/meta-2026030100.jsonl", fx->meta);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    size_t flen;
    char *file = read_file(path, &flen);
    assert_int_equal(flen, len);
    assert_memory_equal(file, buf, len);
    free(file);

    assert_int_equal(mstore_open(fx->dir, NULL, &s), 0);
    mstore_page_t page;
    mstore_filter_t f = {.now_ms = BASE_MS + HOUR};
    assert_int_equal(mstore_logs(s, &f, &page), 0);
    assert_int_equal(page.count, 3);
    assert_string_equal(page.next_cursor, "");
    page.lines[page.len - 1] = '\0';
    char *second = strchr(page.lines, '\n') + 1;
    assert_int_equal(request_id_of(page.lines), 2); /* newest first */
    assert_int_equal(request_id_of(second), 1);
    assert_int_equal(request_id_of(strchr(second, '\n') + 1), 0);
    mstore_page_dispose(&page);
    mstore_stats_t stats;
    mstore_stats(s, &stats);
    assert_int_equal(stats.appended, 0);
    assert_int_equal(mstore_close(s), 0);
}

static void test_hour_routing(void **state)
{
    fixture_t *fx = *state;
    mstore_t *s;
    assert_int_equal(mstore_open(fx->dir, NULL, &s), 0);
    trec_t t[4] = {{.ts = BASE_MS + HOUR - 1, .key = "k", .model = "m", .node = "n", .status = 200},
                   {.ts = BASE_MS + HOUR, .key = "k", .model = "m", .node = "n", .status = 200},
                   {.ts = BASE_MS + HOUR - 2, .key = "k", .model = "m", .node = "n", .status = 200},
                   {.ts = BASE_MS + 2 * HOUR + 5, .key = "k", .model = "m", .node = "n", .status = 200}};
    char buf[4096], lines[4][1024];
    size_t len = 0, ll[4];
    for (int i = 0; i < 4; i++) {
        ll[i] = format(&t[i], i, lines[i], sizeof(lines[i]));
        memcpy(buf + len, lines[i], ll[i]);
        len += ll[i];
    }
    /* The last line of the batch comes without its '\n'. */
    assert_int_equal(mstore_append(s, buf, len - 1), 4);
    assert_int_equal(mstore_close(s), 0);

    char path[160], want[4096];
    size_t flen;
    snprintf(path, sizeof(path), "%s/meta-2026030100.jsonl", fx->meta);
    char *file = read_file(path, &flen);
    memcpy(want, lines[0], ll[0]);
    memcpy(want + ll[0], lines[2], ll[2]);
    assert_int_equal(flen, ll[0] + ll[2]);
    assert_memory_equal(file, want, flen);
    free(file);
    snprintf(path, sizeof(path), "%s/meta-2026030101.jsonl", fx->meta);
    file = read_file(path, &flen);
    assert_int_equal(flen, ll[1]);
    assert_memory_equal(file, lines[1], flen);
    free(file);
    snprintf(path, sizeof(path), "%s/meta-2026030102.jsonl", fx->meta);
    file = read_file(path, &flen);
    assert_int_equal(flen, ll[3]);
    assert_memory_equal(file, lines[3], flen); /* '\n' added */
    free(file);
    assert_int_equal(count_segments(fx->meta), 3);
}

static void test_torn_last_line(void **state)
{
    fixture_t *fx = *state;
    mstore_t *s;
    assert_int_equal(mstore_open(fx->dir, NULL, &s), 0);
    trec_t t = {.ts = BASE_MS + 5000, .key = "k", .model = "m", .node = "n", .status = 200, .in = 7};
    char l0[1024], l1[1024], l2[1024];
    size_t n0 = format(&t, 0, l0, sizeof(l0)), n1 = format(&t, 1, l1, sizeof(l1));
    assert_int_equal(mstore_append(s, l0, n0), 1);
    assert_int_equal(mstore_append(s, l1, n1), 1);
    assert_int_equal(mstore_close(s), 0);

    char path[160];
    snprintf(path, sizeof(path), "%s/meta-2026030100.jsonl", fx->meta);
    assert_int_equal(truncate(path, (off_t)(n0 + n1 - 10)), 0); /* the crash */

    assert_int_equal(mstore_open(fx->dir, NULL, &s), 0);
    mstore_filter_t f = {.now_ms = BASE_MS + HOUR};
    mstore_page_t page;
    assert_int_equal(mstore_logs(s, &f, &page), 0);
    assert_int_equal(page.count, 1);
    assert_int_equal(page.len, n0);
    assert_memory_equal(page.lines, l0, n0);
    mstore_page_dispose(&page);

    size_t n2 = format(&t, 2, l2, sizeof(l2));
    assert_int_equal(mstore_append(s, l2, n2), 1);
    assert_int_equal(mstore_logs(s, &f, &page), 0);
    assert_int_equal(page.count, 2);
    assert_int_equal(page.len, n2 + n0);
    assert_memory_equal(page.lines, l2, n2); /* the new line is intact */
    assert_memory_equal(page.lines + n2, l0, n0);
    mstore_page_dispose(&page);
    mstore_usage_t u;
    assert_int_equal(mstore_usage(s, BASE_MS + HOUR, 0, 0, NULL, MSTORE_GROUP_NONE, &u), 0);
    assert_int_equal(u.totals.requests, 2);
    assert_int_equal(u.totals.input_tokens, 14);
    mstore_usage_dispose(&u);
    assert_int_equal(mstore_close(s), 0);

    size_t flen;
    char *file = read_file(path, &flen);
    assert_int_equal(flen, n0 + (n1 - 10) + 1 + n2);
    assert_memory_equal(file, l0, n0);
    assert_memory_equal(file + n0, l1, n1 - 10);
    assert_int_equal(file[n0 + n1 - 10], '\n');
    assert_memory_equal(file + n0 + n1 - 9, l2, n2);
    free(file);
}

/* Damage inside a segment (a crash mid-write followed by more appends, or a bad disk):
 * lines longer than a scan block, and lines of garbage, are skipped; the records around
 * them are all found, whatever the block boundaries. */
static void test_garbage_lines(void **state)
{
    fixture_t *fx = *state;
    char path[160];
    snprintf(path, sizeof(path), "%s/meta-2026030100.jsonl", fx->meta);
    assert_int_equal(mkdir(fx->meta, 0700), 0);
    FILE *fp = fopen(path, "wb");
    trec_t t = {.ts = BASE_MS + 77, .key = "k", .model = "m", .node = "n", .status = 200, .in = 1};
    char line[1024];
    enum { N = 3000 };
    size_t junk_sizes[] = {10, 300 << 10, 5, 700 << 10, 4096, 256 << 10};
    char *junk = malloc(700 << 10);
    memset(junk, 'x', 700 << 10);
    for (int i = 0; i < N; i++) {
        size_t n = format(&t, i, line, sizeof(line));
        fwrite(line, 1, n, fp);
        if (i % 500 == 250) {
            fwrite(junk, 1, junk_sizes[(i / 500) % 6], fp);
            fputc('\n', fp);
        }
    }
    fclose(fp);
    free(junk);
    mstore_t *s;
    assert_int_equal(mstore_open(fx->dir, NULL, &s), 0);
    bool seen[N] = {0};
    int pages;
    mstore_filter_t f = {.now_ms = BASE_MS + HOUR, .limit = 333};
    assert_int_equal(page_all(s, f, N, seen, &pages), N);
    mstore_usage_t u;
    assert_int_equal(mstore_usage(s, BASE_MS + HOUR, 0, 0, NULL, MSTORE_GROUP_MODEL, &u), 0);
    assert_int_equal(u.totals.requests, N);
    assert_int_equal(u.ngroups, 1);
    assert_string_equal(u.groups[0].group, "m");
    mstore_usage_dispose(&u);
    assert_int_equal(mstore_close(s), 0);
}

static void test_rejects_non_records(void **state)
{
    fixture_t *fx = *state;
    mstore_t *s;
    assert_int_equal(mstore_open(fx->dir, NULL, &s), 0);
    trec_t t = {.ts = BASE_MS, .key = "k", .model = "m", .node = "n", .status = 200};
    char line[1024], buf[8192];
    size_t n = format(&t, 0, line, sizeof(line));
    size_t len = 0;
    len += (size_t)sprintf(buf + len, "CANARY-prompt text\n");
    memcpy(buf + len, line, n);
    len += n;
    memcpy(buf + len, line, n - 20); /* torn */
    len += n - 20;
    buf[len++] = '\n';
    /* A record with an extra field carrying content. */
    memcpy(buf + len, line, n - 2);
    len += n - 2;
    len += (size_t)sprintf(buf + len, ",\"prompt\":\"CANARY\"}\n");
    len += (size_t)sprintf(buf + len, "{\"type\":\"request\",\"ts\":\"CANARY\"}\n\n");
    assert_int_equal(mstore_append(s, buf, len), 1);
    mstore_stats_t st;
    mstore_stats(s, &st);
    assert_int_equal(st.appended, 1);
    assert_int_equal(st.rejected, 5);
    assert_int_equal(mstore_close(s), 0);
    char path[160];
    snprintf(path, sizeof(path), "%s/meta-2026030100.jsonl", fx->meta);
    size_t flen;
    char *file = read_file(path, &flen);
    assert_int_equal(flen, n);
    assert_null(strstr(file, "CANARY"));
    free(file);
}

static void test_lru_many_hours(void **state)
{
    fixture_t *fx = *state;
    mstore_t *s;
    assert_int_equal(mstore_open(fx->dir, NULL, &s), 0);
    enum { HOURS = 7, ROUNDS = 3 };
    trec_t t = {.key = "k", .model = "m", .node = "n", .status = 200};
    char line[1024];
    for (int r = 0; r < ROUNDS; r++) {
        for (int h = 0; h < HOURS; h++) {
            t.ts = BASE_MS + h * HOUR + r;
            size_t n = format(&t, r * HOURS + h, line, sizeof(line));
            assert_int_equal(mstore_append(s, line, n), 1);
        }
        assert_int_equal(mstore_sync(s), 0);
    }
    bool seen[ROUNDS * HOURS] = {0};
    int pages;
    mstore_filter_t f = {.now_ms = BASE_MS + DAY, .limit = 2};
    assert_int_equal(page_all(s, f, ROUNDS * HOURS, seen, &pages), ROUNDS * HOURS);
    assert_int_equal(count_segments(fx->meta), HOURS);
    assert_int_equal(mstore_close(s), 0);
}

/* The filter semantics, computed independently. */
static bool matches(const trec_t *t, const mstore_filter_t *f)
{
    int64_t until = f->until_ms > 0 ? f->until_ms : INT64_MAX;
    if (t->ts < f->since_ms || t->ts >= until)
        return false;
    if (f->key_id != NULL && strcmp(t->key, f->key_id) != 0)
        return false;
    if (f->model != NULL && strcmp(t->model, f->model) != 0)
        return false;
    if (f->status >= 1 && f->status <= 5)
        return t->status / 100 == f->status;
    return f->status == 0 || t->status == f->status;
}

static void test_logs_filters_and_paging(void **state)
{
    fixture_t *fx = *state;
    enum { N = 3000 };
    trec_t *t = make_records(N, BASE_MS, 3 * HOUR); /* about 1000 a segment, > one scan block */
    mstore_t *s;
    assert_int_equal(mstore_open(fx->dir, NULL, &s), 0);
    append_all(s, t, N, 37);
    assert_int_equal(mstore_sync(s), 0);

    mstore_filter_t filters[] = {
        {.limit = 1000},
        {.key_id = "key_1", .limit = 1000},
        {.status = 429, .limit = 1000},
        {.status = 4, .limit = 1000},
        {.status = 5, .limit = 1000},
        {.status = 2, .limit = 1000},
        {.model = "model-2", .limit = 1000},
        {.since_ms = BASE_MS + HOUR / 2, .until_ms = BASE_MS + 2 * HOUR + 7, .limit = 1000},
        {.key_id = "key_3", .status = 2, .model = "model-0", .since_ms = BASE_MS + HOUR, .limit = 1000},
        {.key_id = "nobody", .limit = 1000},
        {.limit = 7},
        {.limit = 0},
        {.status = 5, .limit = 13},
        {.key_id = "key_0", .since_ms = BASE_MS + 1234567, .limit = 3},
    };
    bool *seen = calloc(N, sizeof(bool));
    for (size_t k = 0; k < sizeof(filters) / sizeof(filters[0]); k++) {
        mstore_filter_t f = filters[k];
        f.now_ms = BASE_MS + DAY;
        memset(seen, 0, N * sizeof(bool));
        int pages;
        int got = page_all(s, f, N, seen, &pages);
        int want = 0;
        for (int i = 0; i < N; i++) {
            assert_int_equal(seen[i], matches(&t[i], &f));
            want += matches(&t[i], &f);
        }
        assert_int_equal(got, want);
        size_t limit = f.limit == 0 ? MSTORE_PAGE_DEFAULT : f.limit;
        assert_true((size_t)pages <= (size_t)want / limit + 4);
    }
    assert_int_equal(mstore_close(s), 0);

    /* A scan budget far below one block: pages end early with a cursor, nothing is lost. */
    mstore_options_t o = {.logs_scan_max = 1};
    assert_int_equal(mstore_open(fx->dir, &o, &s), 0);
    mstore_filter_t f = {.now_ms = BASE_MS + DAY, .limit = 1000};
    memset(seen, 0, N * sizeof(bool));
    int pages;
    assert_int_equal(page_all(s, f, N, seen, &pages), N);
    assert_true(pages >= 6);
    mstore_page_t page;
    f.cursor = "12:34";
    assert_int_equal(mstore_logs(s, &f, &page), -EINVAL);
    f.cursor = "garbage";
    assert_int_equal(mstore_logs(s, &f, &page), -EINVAL);
    /* A cursor into the middle of a line (not one we made) still yields whole records. */
    f.cursor = "1772326800000:1000";
    assert_int_equal(mstore_logs(s, &f, &page), 0);
    assert_true(page.count >= 1);
    mstore_page_dispose(&page);
    assert_int_equal(mstore_close(s), 0);
    free(seen);
    free(t);
}

typedef struct sums {
    uint64_t requests;
    int64_t in, out, usd;
} sums_t;

static void check_group(const mstore_usage_t *u, const char *name, const sums_t *want)
{
    for (size_t i = 0; i < u->ngroups; i++) {
        if (strcmp(u->groups[i].group, name) == 0) {
            assert_int_equal(u->groups[i].sums.requests, want->requests);
            assert_int_equal(u->groups[i].sums.input_tokens, want->in);
            assert_int_equal(u->groups[i].sums.output_tokens, want->out);
            assert_int_equal(u->groups[i].sums.usd_micro, want->usd);
            return;
        }
    }
    fail_msg("group %s missing", name);
}

static void test_usage(void **state)
{
    fixture_t *fx = *state;
    enum { N = 2000 };
    trec_t *t = make_records(N, BASE_MS, 5 * HOUR);
    mstore_t *s;
    assert_int_equal(mstore_open(fx->dir, NULL, &s), 0);
    append_all(s, t, N, 50);
    int64_t since = BASE_MS + HOUR / 3, until = BASE_MS + 4 * HOUR + 17 * 60 * 1000 + 17;
    const char *keys[] = {NULL, "key_2"};
    for (int k = 0; k < 2; k++) {
        for (int by = MSTORE_GROUP_NONE; by <= MSTORE_GROUP_KEY; by++) {
            mstore_usage_t u;
            assert_int_equal(mstore_usage(s, BASE_MS + DAY, since, until, keys[k], (mstore_group_t)by, &u), 0);
            assert_false(u.truncated);
            sums_t total = {0};
            for (int i = 0; i < N; i++) {
                if (t[i].ts < since || t[i].ts >= until || (keys[k] != NULL && strcmp(t[i].key, keys[k]) != 0))
                    continue;
                total.requests++;
                total.in += t[i].in;
                total.out += t[i].out;
                total.usd += t[i].usd_micro;
            }
            assert_int_equal(u.totals.requests, total.requests);
            assert_int_equal(u.totals.input_tokens, total.in);
            assert_int_equal(u.totals.output_tokens, total.out);
            assert_int_equal(u.totals.usd_micro, total.usd);
            assert_true(u.totals.usd > (double)total.usd / 1e6 - 1e-6 && u.totals.usd < (double)total.usd / 1e6 + 1e-6);
            if (by == MSTORE_GROUP_NONE) {
                assert_int_equal(u.ngroups, 0);
                mstore_usage_dispose(&u);
                continue;
            }
            /* Each group, recomputed here; groups sorted; their sums add up to the totals. */
            uint64_t sum_requests = 0;
            for (size_t g = 0; g < u.ngroups; g++) {
                if (g > 0)
                    assert_true(strcmp(u.groups[g - 1].group, u.groups[g].group) < 0);
                sum_requests += u.groups[g].sums.requests;
                sums_t want = {0};
                for (int i = 0; i < N; i++) {
                    if (t[i].ts < since || t[i].ts >= until || (keys[k] != NULL && strcmp(t[i].key, keys[k]) != 0))
                        continue;
                    char name[32];
                    if (by == MSTORE_GROUP_HOUR) {
                        time_t hs = (time_t)(t[i].ts / HOUR * HOUR / 1000);
                        struct tm tm;
                        gmtime_r(&hs, &tm);
                        strftime(name, sizeof(name), "%Y-%m-%dT%H:00:00Z", &tm);
                    } else {
                        snprintf(name, sizeof(name), "%s",
                                 by == MSTORE_GROUP_MODEL  ? t[i].model
                                 : by == MSTORE_GROUP_NODE ? t[i].node
                                                           : t[i].key);
                    }
                    if (strcmp(name, u.groups[g].group) != 0)
                        continue;
                    want.requests++;
                    want.in += t[i].in;
                    want.out += t[i].out;
                    want.usd += t[i].usd_micro;
                }
                check_group(&u, u.groups[g].group, &want);
            }
            assert_int_equal(sum_requests, total.requests);
            size_t want_groups = by == MSTORE_GROUP_MODEL  ? 3
                                 : by == MSTORE_GROUP_NODE ? 3
                                 : by == MSTORE_GROUP_HOUR ? 5
                                 : keys[k] == NULL         ? 5
                                                           : 1;
            assert_int_equal(u.ngroups, want_groups);
            if (by == MSTORE_GROUP_HOUR) {
                assert_string_equal(u.groups[0].group, "2026-03-01T00:00:00Z");
                assert_string_equal(u.groups[4].group, "2026-03-01T04:00:00Z");
            }
            mstore_usage_dispose(&u);
        }
    }
    assert_int_equal(mstore_close(s), 0);

    /* A budget that holds about two segments: whole newest hours only, flagged. */
    char path[160];
    snprintf(path, sizeof(path), "%s/meta-2026030104.jsonl", fx->meta);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    mstore_options_t o = {.usage_scan_max = (size_t)st.st_size * 2 + 100};
    assert_int_equal(mstore_open(fx->dir, &o, &s), 0);
    mstore_usage_t u;
    assert_int_equal(mstore_usage(s, BASE_MS + DAY, 0, 0, NULL, MSTORE_GROUP_HOUR, &u), 0);
    assert_true(u.truncated);
    assert_true(u.complete_since_ms == BASE_MS + 4 * HOUR || u.complete_since_ms == BASE_MS + 3 * HOUR);
    uint64_t want = 0;
    for (int i = 0; i < N; i++)
        want += t[i].ts >= u.complete_since_ms;
    assert_int_equal(u.totals.requests, want);
    mstore_usage_dispose(&u);
    assert_int_equal(mstore_usage(s, BASE_MS + DAY, 0, 0, NULL, 9, &u), -EINVAL);
    assert_int_equal(mstore_close(s), 0);
    free(t);
}

static void test_sweep_retention(void **state)
{
    fixture_t *fx = *state;
    mstore_t *s;
    assert_int_equal(mstore_open(fx->dir, NULL, &s), 0);
    /* One record every 10 minutes from 5 h before BASE to 7 d + 2 h after. */
    int n = 0;
    trec_t *t = calloc(2000, sizeof(*t));
    for (int64_t ts = BASE_MS - 5 * HOUR; ts < BASE_MS + 7 * DAY + 2 * HOUR; ts += 10 * 60 * 1000, n++)
        t[n] = (trec_t){.ts = ts, .key = "k", .model = "m", .node = "n", .status = 200, .in = 1, .usd_micro = 3};
    append_all(s, t, n, 16);
    assert_int_equal(mstore_sync(s), 0);
    int before = count_segments(fx->meta);
    assert_int_equal(before, 5 + 7 * 24 + 2);

    /* now = BASE + 7 d + 1 h 30 min: cutoff BASE + 1 h 30 min. Hours -5 .. 0 ended before it. */
    int64_t now = BASE_MS + 7 * DAY + HOUR + 30 * 60 * 1000, cutoff = now - MSTORE_RETENTION_DEFAULT;
    assert_int_equal(mstore_sweep(s, now, MSTORE_RETENTION_DEFAULT), 6);
    assert_int_equal(count_segments(fx->meta), before - 6);
    char path[160];
    snprintf(path, sizeof(path), "%s/meta-2026030100.jsonl", fx->meta);
    assert_int_equal(access(path, F_OK), -1);
    snprintf(path, sizeof(path), "%s/meta-2026030101.jsonl", fx->meta);
    assert_int_equal(access(path, F_OK), 0); /* its hour has not ended before the cutoff */
    assert_int_equal(mstore_sweep(s, now, 0), 0);

    /* Queries never return what is older than the cutoff, although hour 01 still holds some. */
    int want = 0;
    for (int i = 0; i < n; i++)
        want += t[i].ts >= cutoff;
    bool *seen = calloc((size_t)n, sizeof(bool));
    int pages;
    mstore_filter_t f = {.now_ms = now, .limit = 1000};
    assert_int_equal(page_all(s, f, n, seen, &pages), want);
    for (int i = 0; i < n; i++)
        assert_int_equal(seen[i], t[i].ts >= cutoff);
    f.since_ms = BASE_MS - DAY; /* asking for older records does not get them either */
    memset(seen, 0, (size_t)n * sizeof(bool));
    assert_int_equal(page_all(s, f, n, seen, &pages), want);
    mstore_usage_t u;
    assert_int_equal(mstore_usage(s, now, BASE_MS - DAY, 0, NULL, MSTORE_GROUP_HOUR, &u), 0);
    assert_int_equal(u.totals.requests, (uint64_t)want);
    assert_int_equal(u.totals.usd_micro, 3 * want);
    assert_string_equal(u.groups[0].group, "2026-03-01T01:00:00Z");
    mstore_usage_dispose(&u);

    /* A day later everything but the last day is gone; appending to a swept hour recreates
     * it, and the next sweep removes it again. */
    assert_int_equal(mstore_sweep(s, now + DAY, 0), 24);
    trec_t old = {.ts = BASE_MS + 10, .key = "k", .model = "m", .node = "n", .status = 200};
    char line[1024];
    size_t len = format(&old, 0, line, sizeof(line));
    assert_int_equal(mstore_append(s, line, len), 1);
    assert_int_equal(mstore_sweep(s, now + DAY, 0), 1);
    assert_int_equal(mstore_sweep(s, BASE_MS + 30 * DAY, 0), 7 * 24 + 2 - 24 - 1);
    assert_int_equal(count_segments(fx->meta), 0);
    assert_int_equal(mstore_sync(s), 0);
    assert_int_equal(mstore_close(s), 0);
    free(seen);
    free(t);
}

static double seconds_since(const struct timespec *a)
{
    struct timespec b;
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (double)(b.tv_sec - a->tv_sec) + (double)(b.tv_nsec - a->tv_nsec) / 1e9;
}

static void test_100k_speed(void **state)
{
    fixture_t *fx = *state;
    enum { N = 100000, BATCH = 64 };
    trec_t *t = make_records(N, BASE_MS, 10 * HOUR);
    char *buf = malloc((size_t)N * 512);
    size_t *off = malloc((N + 1) * sizeof(size_t));
    off[0] = 0;
    for (int i = 0; i < N; i++)
        off[i + 1] = off[i] + format(&t[i], i, buf + off[i], 512);
    mstore_t *s;
    assert_int_equal(mstore_open(fx->dir, NULL, &s), 0);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0, b = 0; i < N; i += BATCH, b++) {
        int end = i + BATCH < N ? i + BATCH : N;
        assert_int_equal(mstore_append(s, buf + off[i], off[end] - off[i]), end - i);
        if (b % 16 == 15) /* ~1000 records per sync, as a busy node syncing every 200 ms */
            assert_int_equal(mstore_sync(s), 0);
    }
    assert_int_equal(mstore_sync(s), 0);
    double append_s = seconds_since(&t0);

    bool *seen = calloc(N, sizeof(bool));
    int pages;
    mstore_filter_t f = {.now_ms = BASE_MS + DAY, .limit = 1000};
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(page_all(s, f, N, seen, &pages), N);
    double logs_s = seconds_since(&t0);

    f.key_id = "key_3";
    f.status = 4;
    memset(seen, 0, N * sizeof(bool));
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int filtered = page_all(s, f, N, seen, &pages);
    double filtered_s = seconds_since(&t0);

    mstore_usage_t u;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(mstore_usage(s, BASE_MS + DAY, 0, 0, NULL, MSTORE_GROUP_KEY, &u), 0);
    double usage_s = seconds_since(&t0);
    assert_int_equal(u.totals.requests, N);
    assert_int_equal(u.ngroups, 5);
    size_t scanned = u.scanned_bytes;
    mstore_usage_dispose(&u);
    assert_int_equal(mstore_close(s), 0);
    printf("mstore 100k: %zu bytes; append+sync %.0f records/s (%.3f s); logs all pages %.0f records/s "
           "(%.3f s); filtered logs (%d hits) %.3f s; usage by key %.0f records/s (%.3f s, %zu bytes)\n",
           off[N], N / append_s, append_s, N / logs_s, logs_s, filtered, filtered_s, N / usage_s, usage_s, scanned);
    free(seen);
    free(off);
    free(buf);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_append_sync_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hour_routing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_last_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejects_non_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lru_many_hours, setup, teardown),
        cmocka_unit_test_setup_teardown(test_logs_filters_and_paging, setup, teardown),
        cmocka_unit_test_setup_teardown(test_usage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sweep_retention, setup, teardown),
        cmocka_unit_test_setup_teardown(test_100k_speed, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
