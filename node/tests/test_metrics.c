/* Unit tests of node/metrics: exact sums from concurrent writers, histogram buckets, "other"
 * for unknown or overflowing names, totals across config changes (slot reuse after the
 * quarantine included), and a line-by-line check of the rendered text against the Prometheus
 * text exposition grammar with only configured label values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>

#include "node/metrics.h"

/* ---- helpers ---- */

/* Renders m into a NUL-terminated heap string (the caller frees it). */
static char *render(metrics_t *m)
{
    wipe_buf_t b = WIPE_BUF_INIT(metrics_render_bound());
    assert_int_equal(metrics_render(m, &b), 0);
    char *s = malloc(b.len + 1);
    assert_non_null(s);
    memcpy(s, b.data, b.len);
    s[b.len] = '\0';
    wipe_buf_free(&b);
    return s;
}

/* The value of the sample whose name and labels are exactly series; -1 if absent. */
static double value_of(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; *p != '\0';) {
        const char *end = strchr(p, '\n');
        if (end == NULL)
            break;
        if ((size_t)(end - p) > n && strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
        p = end + 1;
    }
    return -1;
}

static bool has_line_prefix(const char *text, const char *prefix)
{
    size_t n = strlen(prefix);
    if (strncmp(text, prefix, n) == 0)
        return true;
    for (const char *p = strchr(text, '\n'); p != NULL; p = strchr(p + 1, '\n'))
        if (strncmp(p + 1, prefix, n) == 0)
            return true;
    return false;
}

/* ---- the exposition grammar checker ---- */

typedef struct allowed {
    const char *const *models, *const *providers;
    size_t n_models, n_providers;
} allowed_t;

typedef struct family_seen {
    char name[128];
    char type[16];
} family_seen_t;

static bool name_start(char c, bool colon)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
}

static bool name_char(char c, bool colon)
{
    return name_start(c, colon) || (c >= '0' && c <= '9');
}

/* Reads a metric (colon) or label name at *p into out; false if none. */
static bool read_name(const char **p, bool colon, char *out, size_t cap)
{
    const char *s = *p;
    if (!name_start(*s, colon))
        return false;
    size_t n = 0;
    while (name_char(*s, colon)) {
        if (n + 1 >= cap)
            return false;
        out[n++] = *s++;
    }
    out[n] = '\0';
    *p = s;
    return true;
}

static bool in_list(const char *v, const char *const *list, size_t n)
{
    if (strcmp(v, "other") == 0)
        return true;
    for (size_t i = 0; i < n; i++)
        if (strcmp(v, list[i]) == 0)
            return true;
    return false;
}

static bool valid_value(const char *s, const char *end)
{
    size_t n = (size_t)(end - s);
    if ((n == 4 && (strncmp(s, "+Inf", 4) == 0 || strncmp(s, "-Inf", 4) == 0)) || (n == 3 && strncmp(s, "NaN", 3) == 0))
        return true;
    if (n == 0 || n > 64)
        return false;
    char tmp[65];
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    char *e;
    strtod(tmp, &e);
    return *e == '\0';
}

static const family_seen_t *find_family(const family_seen_t *fams, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(fams[i].name, name) == 0)
            return &fams[i];
    return NULL;
}

/* Fails the test on the first line that breaks the 0.0.4 text format or carries a model or
 * provider label value outside a. Returns the number of sample lines. */
static size_t check_exposition(const char *text, const allowed_t *a)
{
    static family_seen_t fams[64];
    size_t n_fams = 0, samples = 0;
    const char *p = text;
    assert_true(*text != '\0');
    while (*p != '\0') {
        const char *end = strchr(p, '\n');
        assert_non_null(end); /* every line ends with \n */
        char name[128];
        if (*p == '#') {
            const char *q = p + 1;
            assert_true(*q == ' ');
            q++;
            bool help = strncmp(q, "HELP ", 5) == 0, type = strncmp(q, "TYPE ", 5) == 0;
            assert_true(help || type);
            q += 5;
            assert_true(read_name(&q, true, name, sizeof(name)));
            assert_true(*q == ' ');
            q++;
            if (type) {
                size_t tl = (size_t)(end - q);
                assert_true((tl == 7 && strncmp(q, "counter", 7) == 0) || (tl == 5 && strncmp(q, "gauge", 5) == 0) ||
                            (tl == 9 && strncmp(q, "histogram", 9) == 0));
                assert_null(find_family(fams, n_fams, name)); /* one TYPE per family */
                assert_true(n_fams < 64);
                snprintf(fams[n_fams].name, sizeof(fams[n_fams].name), "%s", name);
                snprintf(fams[n_fams].type, sizeof(fams[n_fams].type), "%.*s", (int)tl, q);
                n_fams++;
            } else {
                for (; q < end; q++) /* docstring: escapes only \\ and \n */
                    if (*q == '\\')
                        assert_true(q[1] == '\\' || q[1] == 'n');
            }
            p = end + 1;
            continue;
        }
        const char *q = p;
        assert_true(read_name(&q, true, name, sizeof(name)));
        /* The sample's family must have been typed before it. */
        const family_seen_t *f = find_family(fams, n_fams, name);
        bool hist_part = false;
        if (f == NULL) {
            static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
            for (int i = 0; i < 3 && f == NULL; i++) {
                size_t nl = strlen(name), sl = strlen(suffixes[i]);
                if (nl > sl && strcmp(name + nl - sl, suffixes[i]) == 0) {
                    char base[128];
                    snprintf(base, sizeof(base), "%.*s", (int)(nl - sl), name);
                    f = find_family(fams, n_fams, base);
                    hist_part = i == 0;
                }
            }
            assert_non_null(f);
            assert_string_equal(f->type, "histogram");
        } else {
            assert_true(strcmp(f->type, "histogram") != 0);
        }
        bool has_le = false;
        if (*q == '{') {
            q++;
            char seen[8][64];
            int n_seen = 0;
            while (*q != '}') {
                char label[64];
                assert_true(read_name(&q, false, label, sizeof(label)));
                assert_true(strncmp(label, "__", 2) != 0);
                for (int i = 0; i < n_seen; i++)
                    assert_string_not_equal(seen[i], label);
                assert_true(n_seen < 8);
                snprintf(seen[n_seen++], sizeof(seen[0]), "%s", label);
                assert_true(*q == '=');
                q++;
                assert_true(*q == '"');
                q++;
                static char value[1024];
                size_t vl = 0;
                while (*q != '"') {
                    assert_true(q < end);
                    char c = *q++;
                    if (c == '\\') {
                        c = *q++;
                        assert_true(c == '\\' || c == '"' || c == 'n');
                        c = c == 'n' ? '\n' : c;
                    }
                    assert_true(vl + 1 < sizeof(value));
                    value[vl++] = c;
                }
                value[vl] = '\0';
                q++;
                if (strcmp(label, "model") == 0)
                    assert_true(in_list(value, a->models, a->n_models));
                if (strcmp(label, "provider") == 0)
                    assert_true(in_list(value, a->providers, a->n_providers));
                if (strcmp(label, "le") == 0) {
                    has_le = true;
                    assert_true(valid_value(value, value + vl));
                }
                if (*q == ',')
                    q++;
                else
                    assert_true(*q == '}');
            }
            q++;
        }
        assert_true(has_le == hist_part);
        assert_true(*q == ' ');
        q++;
        assert_true(valid_value(q, end)); /* no timestamp: the value runs to the line's end */
        samples++;
        p = end + 1;
    }
    return samples;
}

/* ---- tests ---- */

static const char *const two_models[] = {"alpha", "beta"};
static const char *const two_providers[] = {"openai-main", "backup"};

#define THREADS 8
#define PER_THREAD 100000

typedef struct writer {
    metrics_shard_t *shard;
    uint16_t alpha, beta;
    uint16_t provider;
    atomic_int *done;
} writer_t;

static void *writer_main(void *arg)
{
    writer_t *w = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        metrics_request_t r = {
            .endpoint = (metrics_endpoint_t)(i % METRICS_EP_COUNT),
            .model = i % 3 == 0   ? w->alpha
                     : i % 3 == 1 ? w->beta
                                  : METRICS_MODEL_OTHER,
            .status = i % 2 == 0 ? 200 : 429,
            .input_tokens = 3,
            .output_tokens = 5,
            .cached_input_tokens = 1,
            .reasoning_tokens = i % 2,
            .duration_us = 1000,
            .ttfb_us = -1,
        };
        metrics_stream_opened(w->shard);
        metrics_record_request(w->shard, &r);
        if (i % 10 == 0)
            metrics_record_upstream_error(w->shard, w->provider, METRICS_UPSTREAM_TIMEOUT);
        if (i % 2 == 0)
            metrics_stream_closed(w->shard);
    }
    atomic_fetch_add(w->done, 1);
    return NULL;
}

static void test_concurrent_sums(void **state)
{
    (void)state;
    metrics_t *m;
    assert_int_equal(metrics_create(&m, THREADS, "1.2.3"), 0);
    metrics_names_t *names;
    assert_int_equal(metrics_names_update(m, two_models, 2, two_providers, 2, 0, &names), 0);
    allowed_t a = {two_models, two_providers, 2, 2};
    pthread_t th[THREADS];
    writer_t w[THREADS];
    atomic_int done = 0;
    for (int i = 0; i < THREADS; i++) {
        w[i] = (writer_t){metrics_shard(m, i), metrics_names_model(names, "alpha", 5), metrics_names_model_at(names, 1),
                          metrics_names_provider(names, "backup", 6), &done};
        assert_int_equal(pthread_create(&th[i], NULL, writer_main, &w[i]), 0);
    }
    /* The scraper reads while the workers write. */
    int scrapes = 0;
    while (atomic_load(&done) < THREADS || scrapes == 0) {
        char *text = render(m);
        check_exposition(text, &a);
        free(text);
        scrapes++;
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);

    char *text = render(m);
    check_exposition(text, &a);
    /* Exact sums: count per (endpoint, model, class) over i in [0, PER_THREAD). */
    for (int e = 0; e < METRICS_EP_COUNT; e++) {
        const char *models[3] = {"alpha", "beta", "other"};
        for (int mi = 0; mi < 3; mi++) {
            for (int c = 0; c < 2; c++) {
                uint64_t expect = 0;
                for (int i = 0; i < PER_THREAD; i++)
                    if (i % METRICS_EP_COUNT == e && i % 3 == mi && i % 2 == c)
                        expect++;
                char series[256];
                snprintf(series, sizeof(series),
                         "llmrelay_requests_total{endpoint=\"%s\",model=\"%s\",status_class=\"%s\"}",
                         metrics_endpoint_name((metrics_endpoint_t)e), models[mi], c == 0 ? "2xx" : "4xx");
                assert_true(value_of(text, series) == (double)(expect * THREADS));
            }
        }
    }
    uint64_t alpha_n = (PER_THREAD + 2) / 3, beta_n = (PER_THREAD + 1) / 3;
    assert_true(value_of(text, "llmrelay_input_tokens_total{model=\"alpha\"}") == (double)(3 * alpha_n * THREADS));
    assert_true(value_of(text, "llmrelay_output_tokens_total{model=\"beta\"}") == (double)(5 * beta_n * THREADS));
    assert_true(value_of(text, "llmrelay_cached_input_tokens_total{model=\"alpha\"}") == (double)(alpha_n * THREADS));
    uint64_t other_reasoning = 0;
    for (int i = 0; i < PER_THREAD; i++)
        other_reasoning += i % 3 == 2 ? (uint64_t)(i % 2) : 0;
    assert_true(value_of(text, "llmrelay_reasoning_tokens_total{model=\"other\"}") ==
                (double)(other_reasoning * THREADS));
    assert_true(value_of(text, "llmrelay_upstream_errors_total{provider=\"backup\",kind=\"timeout\"}") ==
                (double)(PER_THREAD / 10 * THREADS));
    assert_true(value_of(text, "llmrelay_open_streams") == (double)(PER_THREAD / 2 * THREADS));
    assert_true(value_of(text, "llmrelay_request_duration_seconds_count{endpoint=\"chat.completions\"}") ==
                (double)((PER_THREAD + METRICS_EP_COUNT - 1) / METRICS_EP_COUNT * THREADS));
    assert_true(value_of(text, "llmrelay_build_info{version=\"1.2.3\"}") == 1);
    /* No provider row for a provider without errors, and no per-key or content label. */
    assert_false(has_line_prefix(text, "llmrelay_upstream_errors_total{provider=\"openai-main\""));
    free(text);
    metrics_names_release(names);
    metrics_free(m);
}

static void test_unknown_counts(void **state)
{
    (void)state;
    /* Negative token counts are unknown and add nothing; status classes are clamped. */
    metrics_t *m;
    assert_int_equal(metrics_create(&m, 1, "v"), 0);
    metrics_shard_t *s = metrics_shard(m, 0);
    metrics_request_t r = {.endpoint = METRICS_EP_MESSAGES,
                           .model = METRICS_MODEL_OTHER,
                           .status = 200,
                           .input_tokens = -1,
                           .output_tokens = 0,
                           .cached_input_tokens = -5,
                           .reasoning_tokens = 7,
                           .duration_us = -1,
                           .ttfb_us = -1};
    metrics_record_request(s, &r);
    metrics_record_request(s, &r);
    char *text = render(m);
    assert_true(value_of(text, "llmrelay_reasoning_tokens_total{model=\"other\"}") == 14);
    assert_true(value_of(text, "llmrelay_input_tokens_total{model=\"other\"}") == -1); /* unknown: no series */
    assert_true(value_of(text, "llmrelay_request_duration_seconds_count{endpoint=\"messages\"}") == 0);
    assert_true(value_of(text, "llmrelay_requests_total{endpoint=\"messages\",model=\"other\",status_class=\"2xx\"}") ==
                2);
    free(text);
    metrics_free(m);
}

static void test_histogram(void **state)
{
    (void)state;
    metrics_t *m;
    assert_int_equal(metrics_create(&m, 2, "v"), 0);
    const int64_t us[] = {0, 5000, 5001, 10000, 1000000, 300000000, 300000001, 86400000000LL};
    for (size_t i = 0; i < sizeof(us) / sizeof(us[0]); i++) {
        metrics_request_t r = {.endpoint = METRICS_EP_EMBEDDINGS,
                               .model = METRICS_MODEL_OTHER,
                               .status = 200,
                               .duration_us = us[i],
                               .ttfb_us = i < 3 ? us[i] : -1};
        metrics_record_request(metrics_shard(m, (int)(i % 2)), &r);
    }
    char *text = render(m);
    allowed_t a = {0};
    check_exposition(text, &a);
    static const struct {
        const char *le;
        double count;
    } expect[] = {{"0.005", 2}, {"0.01", 4}, {"0.025", 4}, {"0.5", 4}, {"1", 5},
                  {"2.5", 5},   {"120", 5},  {"300", 6},   {"+Inf", 8}};
    for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
        char series[128];
        snprintf(series, sizeof(series), "llmrelay_request_duration_seconds_bucket{endpoint=\"embeddings\",le=\"%s\"}",
                 expect[i].le);
        assert_true(value_of(text, series) == expect[i].count);
    }
    assert_true(value_of(text, "llmrelay_request_duration_seconds_count{endpoint=\"embeddings\"}") == 8);
    /* 0 + .005 + .005001 + .01 + 1 + 300 + 300.000001 + 86400 */
    assert_non_null(strstr(text, "llmrelay_request_duration_seconds_sum{endpoint=\"embeddings\"} 87001.020002\n"));
    assert_true(value_of(text, "llmrelay_time_to_first_byte_seconds_bucket{endpoint=\"embeddings\",le=\"0.005\"}") ==
                2);
    assert_true(value_of(text, "llmrelay_time_to_first_byte_seconds_bucket{endpoint=\"embeddings\",le=\"0.01\"}") == 3);
    assert_true(value_of(text, "llmrelay_time_to_first_byte_seconds_count{endpoint=\"embeddings\"}") == 3);
    assert_non_null(strstr(text, "llmrelay_time_to_first_byte_seconds_sum{endpoint=\"embeddings\"} 0.010001\n"));
    /* Other endpoints are present, at zero. */
    assert_true(value_of(text, "llmrelay_request_duration_seconds_bucket{endpoint=\"models\",le=\"+Inf\"}") == 0);
    assert_non_null(strstr(text, "llmrelay_request_duration_seconds_sum{endpoint=\"models\"} 0.000000\n"));
    /* Buckets are cumulative: never decreasing along le. */
    for (int e = 0; e < METRICS_EP_COUNT; e++) {
        const char *les[] = {"0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
                             "2.5",   "5",    "10",    "30",   "60",  "120",  "300", "+Inf"};
        double prev = 0;
        for (int b = 0; b < 16; b++) {
            char series[128];
            snprintf(series, sizeof(series), "llmrelay_request_duration_seconds_bucket{endpoint=\"%s\",le=\"%s\"}",
                     metrics_endpoint_name((metrics_endpoint_t)e), les[b]);
            double v = value_of(text, series);
            assert_true(v >= prev);
            prev = v;
        }
    }
    free(text);
    metrics_free(m);
}

static void test_unknown_is_other(void **state)
{
    (void)state;
    metrics_t *m;
    assert_int_equal(metrics_create(&m, 1, "v"), 0);
    char long_name[METRICS_NAME_MAX + 2];
    memset(long_name, 'x', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    const char *models[] = {"gpt-4o", "", long_name, "gpt-4o", "claude"};
    metrics_names_t *t;
    assert_int_equal(metrics_names_update(m, models, 5, NULL, 0, 0, &t), 0);
    assert_int_not_equal(metrics_names_model(t, "gpt-4o", 6), METRICS_MODEL_OTHER);
    assert_int_equal(metrics_names_model_at(t, 0), metrics_names_model(t, "gpt-4o", 6));
    assert_int_equal(metrics_names_model_at(t, 3), metrics_names_model_at(t, 0)); /* duplicate */
    assert_int_equal(metrics_names_model_at(t, 1), METRICS_MODEL_OTHER);          /* empty */
    assert_int_equal(metrics_names_model_at(t, 2), METRICS_MODEL_OTHER);          /* too long */
    assert_int_equal(metrics_names_model_at(t, 5), METRICS_MODEL_OTHER);          /* out of range */
    assert_int_equal(metrics_names_model(t, "gpt-4", 5), METRICS_MODEL_OTHER);
    assert_int_equal(metrics_names_model(t, "gpt-4o-mini", 11), METRICS_MODEL_OTHER);
    assert_int_equal(metrics_names_model(NULL, "gpt-4o", 6), METRICS_MODEL_OTHER);
    assert_int_equal(metrics_names_provider(t, "gpt-4o", 6), METRICS_PROVIDER_OTHER);
    assert_int_equal(metrics_names_provider_at(t, 0), METRICS_PROVIDER_OTHER);

    metrics_request_t r = {.endpoint = METRICS_EP_CHAT_COMPLETIONS, .status = 404, .duration_us = -1, .ttfb_us = -1};
    r.model = metrics_names_model(t, "client-made-this-up", 19);
    metrics_record_request(metrics_shard(m, 0), &r);
    r.model = 60000; /* out of range: clamped to other, never out of bounds */
    metrics_record_request(metrics_shard(m, 0), &r);
    metrics_record_upstream_error(metrics_shard(m, 0), 60000, METRICS_UPSTREAM_CONNECT);
    char *text = render(m);
    const char *allowed_models[] = {"gpt-4o", "claude"};
    allowed_t a = {allowed_models, NULL, 2, 0};
    check_exposition(text, &a);
    assert_null(strstr(text, "client-made-this-up"));
    assert_true(
        value_of(text, "llmrelay_requests_total{endpoint=\"chat.completions\",model=\"other\",status_class=\"4xx\"}") ==
        2);
    assert_true(value_of(text, "llmrelay_upstream_errors_total{provider=\"other\",kind=\"connect\"}") == 1);
    free(text);

    /* Past the capacity, names count as other. */
    static char many_buf[METRICS_MAX_MODELS + 10][16];
    const char *many[METRICS_MAX_MODELS + 10];
    for (int i = 0; i < METRICS_MAX_MODELS + 10; i++) {
        snprintf(many_buf[i], sizeof(many_buf[i]), "m%04d", i);
        many[i] = many_buf[i];
    }
    metrics_names_t *t2;
    assert_int_equal(metrics_names_update(m, many, METRICS_MAX_MODELS + 10, NULL, 0, 1, &t2), 0);
    size_t named = 0;
    for (size_t i = 0; i < METRICS_MAX_MODELS + 10; i++)
        named += metrics_names_model_at(t2, i) != METRICS_MODEL_OTHER;
    assert_int_equal(named, METRICS_MAX_MODELS - 2); /* gpt-4o and claude hold theirs, retired, in quarantine */
    metrics_names_release(t);
    metrics_names_release(t2);
    metrics_free(m);
}

static void record_n(metrics_t *m, uint16_t model, int n)
{
    metrics_request_t r = {.endpoint = METRICS_EP_RESPONSES,
                           .model = model,
                           .status = 201,
                           .input_tokens = 10,
                           .duration_us = -1,
                           .ttfb_us = -1};
    for (int i = 0; i < n; i++)
        metrics_record_request(metrics_shard(m, 0), &r);
}

static double responses_of(const char *text, const char *model)
{
    char series[512];
    snprintf(series, sizeof(series),
             "llmrelay_requests_total{endpoint=\"responses\",model=\"%s\",status_class=\"2xx\"}", model);
    return value_of(text, series);
}

static void test_config_change(void **state)
{
    (void)state;
    metrics_t *m;
    assert_int_equal(metrics_create(&m, 1, "v"), 0);
    metrics_names_t *t1, *t2, *t3;
    const char *c1[] = {"a", "b"}, *c2[] = {"c", "b"}, *c3[] = {"b", "c", "a"};
    assert_int_equal(metrics_names_update(m, c1, 2, NULL, 0, 0, &t1), 0);
    record_n(m, metrics_names_model(t1, "a", 1), 3);
    record_n(m, metrics_names_model(t1, "b", 1), 4);
    assert_int_equal(metrics_names_update(m, c2, 2, NULL, 0, 10, &t2), 0);
    assert_int_equal(metrics_names_model(t2, "b", 1), metrics_names_model(t1, "b", 1)); /* stable slot */
    assert_int_equal(metrics_names_model(t2, "a", 1), METRICS_MODEL_OTHER);
    record_n(m, metrics_names_model(t2, "b", 1), 1);
    record_n(m, metrics_names_model(t2, "c", 1), 2);
    /* A request that resolved "a" under the old table ends now: it adds to a's retired slot. */
    record_n(m, metrics_names_model(t1, "a", 1), 1);
    char *text = render(m);
    allowed_t a2 = {c2, NULL, 2, 0};
    check_exposition(text, &a2);
    assert_true(responses_of(text, "b") == 5);
    assert_true(responses_of(text, "c") == 2);
    assert_true(responses_of(text, "a") == -1); /* not configured: not rendered */
    assert_true(value_of(text, "llmrelay_input_tokens_total{model=\"b\"}") == 50);
    free(text);
    /* a comes back within the quarantine: its slot and totals too. */
    assert_int_equal(metrics_names_update(m, c3, 3, NULL, 0, 20, &t3), 0);
    assert_int_equal(metrics_names_model(t3, "a", 1), metrics_names_model(t1, "a", 1));
    text = render(m);
    allowed_t a3 = {c3, NULL, 3, 0};
    check_exposition(text, &a3);
    assert_true(responses_of(text, "a") == 4);
    assert_true(responses_of(text, "b") == 5);
    assert_true(responses_of(text, "c") == 2);
    /* Deterministic order: sorted by name, other last. */
    const char *pa = strstr(text, "model=\"a\""), *pb = strstr(text, "model=\"b\""), *pc = strstr(text, "model=\"c\"");
    assert_true(pa != NULL && pa < pb && pb < pc);
    char *again = render(m);
    assert_string_equal(text, again);
    free(again);
    free(text);
    metrics_names_release(t1);
    metrics_names_release(t2);
    metrics_names_release(t3);
    metrics_free(m);
}

static void test_slot_reuse_after_quarantine(void **state)
{
    (void)state;
    metrics_t *m;
    assert_int_equal(metrics_create(&m, 2, "v"), 0);
    static char old_buf[METRICS_MAX_MODELS][16], new_buf[METRICS_MAX_MODELS][16];
    const char *old_names[METRICS_MAX_MODELS], *new_names[METRICS_MAX_MODELS];
    for (int i = 0; i < METRICS_MAX_MODELS; i++) {
        snprintf(old_buf[i], sizeof(old_buf[i]), "old%04d", i);
        snprintf(new_buf[i], sizeof(new_buf[i]), "new%04d", i);
        old_names[i] = old_buf[i];
        new_names[i] = new_buf[i];
    }
    const char *prov_old[] = {"p-old"}, *prov_new[] = {"p-new"};
    metrics_names_t *t1, *t2, *t3;
    assert_int_equal(metrics_names_update(m, old_names, METRICS_MAX_MODELS, prov_old, 1, 1000, &t1), 0);
    for (int i = 0; i < METRICS_MAX_MODELS; i++)
        record_n(m, metrics_names_model_at(t1, (size_t)i), 2);
    metrics_record_upstream_error(metrics_shard(m, 1), metrics_names_provider_at(t1, 0), METRICS_UPSTREAM_PROTOCOL);
    /* Every slot taken and every old one in quarantine: the new names are "other" for now. */
    assert_int_equal(metrics_names_update(m, new_names, METRICS_MAX_MODELS, prov_new, 1, 2000, &t2), 0);
    for (int i = 0; i < METRICS_MAX_MODELS; i++)
        assert_int_equal(metrics_names_model_at(t2, (size_t)i), METRICS_MODEL_OTHER);
    assert_int_not_equal(metrics_names_provider_at(t2, 0), METRICS_PROVIDER_OTHER); /* providers had room */
    record_n(m, metrics_names_model_at(t2, 7), 5);
    char *text = render(m);
    allowed_t a = {new_names, prov_new, METRICS_MAX_MODELS, 1};
    check_exposition(text, &a);
    assert_true(responses_of(text, "other") == 5);
    free(text);
    /* Once the quarantine is over the retired slots are reused, and the new names start at 0. */
    assert_int_equal(
        metrics_names_update(m, new_names, METRICS_MAX_MODELS, prov_new, 1, 2000 + METRICS_SLOT_QUARANTINE_MS, &t3), 0);
    for (int i = 0; i < METRICS_MAX_MODELS; i++)
        assert_int_not_equal(metrics_names_model_at(t3, (size_t)i), METRICS_MODEL_OTHER);
    record_n(m, metrics_names_model(t3, "new0007", 7), 1);
    text = render(m);
    check_exposition(text, &a);
    assert_true(responses_of(text, "new0007") == 1);
    assert_true(responses_of(text, "new0008") == -1);
    assert_true(value_of(text, "llmrelay_input_tokens_total{model=\"new0007\"}") == 10);
    assert_true(responses_of(text, "other") == 5);
    assert_null(strstr(text, "old0"));
    assert_null(strstr(text, "p-old"));
    free(text);
    metrics_names_release(t1);
    metrics_names_release(t2);
    metrics_names_release(t3);
    metrics_free(m);
}

static void test_escaping_and_gauges(void **state)
{
    (void)state;
    metrics_t *m;
    assert_int_equal(metrics_create(&m, 3, "2.0 \"beta\"\\\n"), 0);
    const char *models[] = {"q\"uote", "back\\slash", "new\nline", "plain"};
    const char *providers[] = {"prov\"1", "prov\\2"};
    metrics_names_t *t;
    assert_int_equal(metrics_names_update(m, models, 4, providers, 2, 0, &t), 0);
    for (int i = 0; i < 4; i++)
        record_n(m, metrics_names_model_at(t, (size_t)i), 1);
    metrics_record_upstream_error(metrics_shard(m, 2), metrics_names_provider(t, "prov\"1", 6),
                                  METRICS_UPSTREAM_STATUS_429);
    metrics_record_upstream_error(metrics_shard(m, 2), metrics_names_provider_at(t, 1), METRICS_UPSTREAM_STATUS_5XX);
    metrics_stream_opened(metrics_shard(m, 0));
    metrics_stream_opened(metrics_shard(m, 1));
    metrics_stream_closed(metrics_shard(m, 1));
    metrics_set_etcd_reachable(m, true);
    metrics_set_config_revision(m, 4242);
    char *text = render(m);
    allowed_t a = {models, providers, 4, 2};
    check_exposition(text, &a);
    assert_true(responses_of(text, "q\\\"uote") == 1);
    assert_true(responses_of(text, "back\\\\slash") == 1);
    assert_true(responses_of(text, "new\\nline") == 1);
    assert_true(value_of(text, "llmrelay_upstream_errors_total{provider=\"prov\\\"1\",kind=\"status_429\"}") == 1);
    assert_true(value_of(text, "llmrelay_upstream_errors_total{provider=\"prov\\\\2\",kind=\"status_5xx\"}") == 1);
    assert_true(value_of(text, "llmrelay_open_streams") == 1);
    assert_true(value_of(text, "llmrelay_etcd_reachable") == 1);
    assert_true(value_of(text, "llmrelay_config_revision") == 4242);
    assert_true(value_of(text, "llmrelay_build_info{version=\"2.0 \\\"beta\\\"\\\\\\n\"}") == 1);
    free(text);
    metrics_set_etcd_reachable(m, false);
    text = render(m);
    assert_true(value_of(text, "llmrelay_etcd_reachable") == 0);
    free(text);

    assert_int_equal(metrics_endpoint_from_name("generate_content"), METRICS_EP_GENERATE_CONTENT);
    assert_int_equal(metrics_endpoint_from_name("chat.completions"), METRICS_EP_CHAT_COMPLETIONS);
    assert_int_equal(metrics_endpoint_from_name("chat"), -EINVAL);
    metrics_t *bad;
    assert_int_equal(metrics_create(&bad, 0, "v"), -EINVAL);
    assert_null(bad);
    metrics_names_release(t);
    metrics_free(m);
}

/* The worst case: every slot named with a longest name that must be escaped everywhere, and
 * every series non-zero. The output stays within metrics_render_bound(). */
static void test_large_config_bounded(void **state)
{
    (void)state;
    metrics_t *m;
    assert_int_equal(metrics_create(&m, 1, "v"), 0);
    char(*model_buf)[METRICS_NAME_MAX + 1] = calloc(METRICS_MAX_MODELS, METRICS_NAME_MAX + 1);
    char(*prov_buf)[METRICS_NAME_MAX + 1] = calloc(METRICS_MAX_PROVIDERS, METRICS_NAME_MAX + 1);
    const char **models = calloc(METRICS_MAX_MODELS, sizeof(char *));
    const char **providers = calloc(METRICS_MAX_PROVIDERS, sizeof(char *));
    assert_true(model_buf && prov_buf && models && providers);
    for (int i = 0; i < METRICS_MAX_MODELS; i++) {
        memset(model_buf[i], '"', METRICS_NAME_MAX);
        snprintf(model_buf[i] + METRICS_NAME_MAX - 4, 5, "%04d", i);
        models[i] = model_buf[i];
    }
    for (int i = 0; i < METRICS_MAX_PROVIDERS; i++) {
        memset(prov_buf[i], '\\', METRICS_NAME_MAX);
        snprintf(prov_buf[i] + METRICS_NAME_MAX - 4, 5, "%04d", i);
        providers[i] = prov_buf[i];
    }
    metrics_names_t *t;
    assert_int_equal(metrics_names_update(m, models, METRICS_MAX_MODELS, providers, METRICS_MAX_PROVIDERS, 0, &t), 0);
    metrics_shard_t *s = metrics_shard(m, 0);
    for (int i = 0; i <= METRICS_MAX_MODELS; i++) {
        uint16_t slot = i < METRICS_MAX_MODELS ? metrics_names_model_at(t, (size_t)i) : METRICS_MODEL_OTHER;
        assert_true(slot <= METRICS_MODEL_OTHER);
        for (int e = 0; e < METRICS_EP_COUNT; e++) {
            for (int status = 200; status < 600; status += 100) {
                metrics_request_t r = {.endpoint = (metrics_endpoint_t)e,
                                       .model = slot,
                                       .status = status,
                                       .input_tokens = INT64_MAX / 32,
                                       .output_tokens = INT64_MAX / 32,
                                       .cached_input_tokens = INT64_MAX / 32,
                                       .reasoning_tokens = INT64_MAX / 32,
                                       .duration_us = INT64_MAX / 4096,
                                       .ttfb_us = 1};
                metrics_record_request(s, &r);
            }
        }
    }
    for (int i = 0; i <= METRICS_MAX_PROVIDERS; i++)
        for (int k = 0; k < METRICS_UPSTREAM_KIND_COUNT; k++)
            metrics_record_upstream_error(
                s, i < METRICS_MAX_PROVIDERS ? metrics_names_provider_at(t, (size_t)i) : METRICS_PROVIDER_OTHER,
                (metrics_upstream_error_t)k);

    wipe_buf_t b = WIPE_BUF_INIT(metrics_render_bound());
    assert_int_equal(metrics_render(m, &b), 0);
    assert_true(b.len <= metrics_render_bound());
    assert_true(b.len > 0);
    char *text = malloc(b.len + 1);
    memcpy(text, b.data, b.len);
    text[b.len] = '\0';
    allowed_t a = {models, providers, METRICS_MAX_MODELS, METRICS_MAX_PROVIDERS};
    size_t samples = check_exposition(text, &a);
    size_t expect = (size_t)(METRICS_MAX_MODELS + 1) * METRICS_EP_COUNT * 4 + (size_t)(METRICS_MAX_MODELS + 1) * 4 +
                    (size_t)(METRICS_MAX_PROVIDERS + 1) * METRICS_UPSTREAM_KIND_COUNT + 2 * METRICS_EP_COUNT * 18 + 4;
    assert_int_equal(samples, expect);
    free(text);
    wipe_buf_free(&b);

    /* A buffer too small: -E2BIG and nothing appended (what was there stays). */
    wipe_buf_t small = WIPE_BUF_INIT(64 * 1024);
    assert_int_equal(wipe_buf_append(&small, "x", 1), 0);
    assert_int_equal(metrics_render(m, &small), -E2BIG);
    assert_int_equal(small.len, 1);
    wipe_buf_free(&small);

    metrics_names_release(t);
    metrics_free(m);
    free(model_buf);
    free(prov_buf);
    free(models);
    free(providers);
}

/* The channel families: every channel's three state samples (one of them 1), its counters,
 * HELP/TYPE lines even without channels, and out->len restored when the buffer is full. */
static void test_channel_families(void **state)
{
    (void)state;
    channels_row_t rows[2];
    memset(rows, 0, sizeof(rows));
    strcpy(rows[0].provider, "alpha");
    rows[0].key_index = 0;
    rows[0].state = CHANNELS_CLOSED;
    strcpy(rows[1].provider, "alpha");
    rows[1].key_index = 1;
    rows[1].state = CHANNELS_OPEN;
    rows[1].failures = 12;
    rows[1].opens = 3;

    wipe_buf_t b = WIPE_BUF_INIT(1u << 20);
    assert_int_equal(metrics_render_channels(&b, rows, 2), 0);
    char *text = malloc(b.len + 1);
    assert_non_null(text);
    memcpy(text, b.data, b.len);
    text[b.len] = '\0';
    assert_true(value_of(text, "llmrelay_channel_state{provider=\"alpha\",key_index=\"0\",state=\"closed\"}") == 1);
    assert_true(value_of(text, "llmrelay_channel_state{provider=\"alpha\",key_index=\"0\",state=\"half_open\"}") ==
                0);
    assert_true(value_of(text, "llmrelay_channel_state{provider=\"alpha\",key_index=\"0\",state=\"open\"}") == 0);
    assert_true(value_of(text, "llmrelay_channel_state{provider=\"alpha\",key_index=\"1\",state=\"closed\"}") == 0);
    assert_true(value_of(text, "llmrelay_channel_state{provider=\"alpha\",key_index=\"1\",state=\"open\"}") == 1);
    assert_true(value_of(text, "llmrelay_channel_failures_total{provider=\"alpha\",key_index=\"1\"}") == 12);
    assert_true(value_of(text, "llmrelay_channel_opens_total{provider=\"alpha\",key_index=\"1\"}") == 3);
    assert_true(value_of(text, "llmrelay_channel_opens_total{provider=\"alpha\",key_index=\"0\"}") == 0);
    assert_true(has_line_prefix(text, "# TYPE llmrelay_channel_state gauge"));
    assert_true(has_line_prefix(text, "# TYPE llmrelay_channel_failures_total counter"));
    assert_true(has_line_prefix(text, "# TYPE llmrelay_channel_opens_total counter"));
    free(text);

    /* No channels: the families are still announced, with no sample. */
    wipe_buf_reset(&b);
    assert_int_equal(metrics_render_channels(&b, NULL, 0), 0);
    assert_true(b.len > 0);
    assert_null(memmem(b.data, b.len, "{provider=", 10));
    wipe_buf_free(&b);

    /* Too small a buffer: an error, nothing appended. */
    wipe_buf_t small = WIPE_BUF_INIT(64);
    assert_int_equal(wipe_buf_append(&small, "x", 1), 0);
    assert_true(metrics_render_channels(&small, rows, 2) < 0);
    assert_int_equal(small.len, 1);
    wipe_buf_free(&small);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_channel_families),
        cmocka_unit_test(test_concurrent_sums),     cmocka_unit_test(test_unknown_counts),
        cmocka_unit_test(test_histogram),           cmocka_unit_test(test_unknown_is_other),
        cmocka_unit_test(test_config_change),       cmocka_unit_test(test_slot_reuse_after_quarantine),
        cmocka_unit_test(test_escaping_and_gauges), cmocka_unit_test(test_large_config_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
