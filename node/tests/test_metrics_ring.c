/* Unit tests of the metrics ring's pure part: slot arithmetic, keys, index runs, rows,
 * merge, protobuf encode/decode and the 8 KiB cap. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "node/metrics_ring.h"

#define DAY_MS (86400 * 1000LL)

static void test_slot_arithmetic(void **state)
{
    (void)state;
    assert_int_equal(ring_slot_start(0), 0);
    assert_int_equal(ring_slot_start(299999), 0);
    assert_int_equal(ring_slot_start(300000), 300000);
    assert_int_equal(ring_slot_start(-1), -300000);
    int64_t t = 1764000000000LL + 123456; /* some time in 2025 */
    int64_t s = ring_slot_start(t);
    assert_true(s <= t && t < s + RING_SLOT_MS && s % RING_SLOT_MS == 0);
    /* A week later the same index: the ring wraps in exactly 7 days. */
    assert_int_equal(ring_slot_index(s), ring_slot_index(s + 7 * DAY_MS));
    assert_int_equal((ring_slot_index(s) + 1) % RING_SLOTS, ring_slot_index(s + RING_SLOT_MS));
    assert_true(ring_slot_index(s) < RING_SLOTS);
    assert_int_equal(ring_slot_index(2015 * RING_SLOT_MS), 2015);
    assert_int_equal(ring_slot_index(2016 * RING_SLOT_MS), 0);
}

static void test_keys(void **state)
{
    (void)state;
    char key[128], node[RING_NODE_MAX + 1];
    uint32_t idx;
    int n = ring_key("/llmrelay/", "n-1.a", 7, key, sizeof(key));
    assert_int_equal(n, (int)strlen("/llmrelay/metrics/n-1.a/0007"));
    assert_string_equal(key, "/llmrelay/metrics/n-1.a/0007");
    assert_int_equal(ring_key_parse("/llmrelay/", (const uint8_t *)key, (size_t)n, node, &idx), 0);
    assert_string_equal(node, "n-1.a");
    assert_int_equal(idx, 7);
    const char *bad[] = {"/llmrelay/metrics/n1/2016", "/llmrelay/metrics/n1/12",   "/llmrelay/metrics//0001",
                         "/other/metrics/n1/0001",    "/llmrelay/metrics/n1/00a1", "/llmrelay/metrics_sweep"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(ring_key_parse("/llmrelay/", (const uint8_t *)bad[i], strlen(bad[i]), node, &idx), -EINVAL);
    assert_int_equal(ring_key("/p/", "x", 1, key, 8), -ENOBUFS);
    /* Keys sort by index: a range over one node's run reads exactly that run. */
    char a[64], b[64];
    ring_key("/p/", "n", 9, a, sizeof(a));
    ring_key("/p/", "n", 10, b, sizeof(b));
    assert_true(strcmp(a, b) < 0);
}

static void test_index_runs(void **state)
{
    (void)state;
    uint32_t runs[2][2];
    assert_int_equal(ring_index_runs(10 * RING_SLOT_MS, 5 * RING_SLOT_MS, runs), 0);
    assert_int_equal(ring_index_runs(10 * RING_SLOT_MS, 20 * RING_SLOT_MS, runs), 1);
    assert_int_equal(runs[0][0], 10);
    assert_int_equal(runs[0][1], 20);
    /* wraps */
    assert_int_equal(ring_index_runs(2010 * RING_SLOT_MS, 2020 * RING_SLOT_MS, runs), 2);
    assert_int_equal(runs[0][0], 2010);
    assert_int_equal(runs[0][1], 2015);
    assert_int_equal(runs[1][0], 0);
    assert_int_equal(runs[1][1], 4);
    /* the whole ring */
    assert_int_equal(ring_index_runs(0, 8 * DAY_MS, runs), 1);
    assert_int_equal(runs[0][0], 0);
    assert_int_equal(runs[0][1], RING_SLOTS - 1);
    assert_int_equal(ring_index_runs(0, (RING_SLOTS - 1) * RING_SLOT_MS, runs), 1);
    assert_int_equal(runs[0][1], RING_SLOTS - 1);
    /* one slot */
    assert_int_equal(ring_index_runs(3 * RING_SLOT_MS, 3 * RING_SLOT_MS, runs), 1);
    assert_int_equal(runs[0][0], 3);
    assert_int_equal(runs[0][1], 3);
}

static size_t run_len(uint32_t runs[4][2], size_t n)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += runs[i][1] - runs[i][0] + 1;
    return len;
}

static bool run_has(uint32_t runs[4][2], size_t n, uint32_t idx)
{
    for (size_t i = 0; i < n; i++)
        if (idx >= runs[i][0] && idx <= runs[i][1])
            return true;
    return false;
}

/* A sweep 5 minutes after the last reads a handful of indexes, never the whole ring; the
 * first one (or after a long outage) reads it all; a short retention adds the slots that
 * just passed it. */
static void test_sweep_runs(void **state)
{
    (void)state;
    uint32_t runs[4][2];
    const int64_t week = 7 * DAY_MS, now = 1764000000000LL + 42000;
    size_t n = ring_sweep_runs(now, now - RING_SLOT_MS, week, runs);
    assert_true(n >= 1 && run_len(runs, n) <= 4);
    assert_true(run_has(runs, n, ring_slot_index(ring_slot_start(now)))); /* last week's value here just aged */
    assert_true(run_has(runs, n, ring_slot_index(ring_slot_start(now) - RING_SLOT_MS)));
    n = ring_sweep_runs(now, now - week, week, runs);
    assert_int_equal(run_len(runs, n), RING_SLOTS);
    n = ring_sweep_runs(now, now - 30 * DAY_MS, week, runs);
    assert_int_equal(run_len(runs, n), RING_SLOTS);
    /* retention 1 day: also the indexes of a day ago */
    n = ring_sweep_runs(now, now - RING_SLOT_MS, DAY_MS, runs);
    assert_true(run_len(runs, n) <= 8);
    assert_true(run_has(runs, n, ring_slot_index(ring_slot_start(now - DAY_MS))));
    assert_true(run_has(runs, n, ring_slot_index(ring_slot_start(now))));
    /* Every value older than the retention is in a swept run, whatever its index: check
     * by brute force over a day of 5-minute sweeps with retention 1 day. */
    int64_t prev = now - RING_SLOT_MS;
    for (int64_t t = now; t < now + DAY_MS; t += RING_SLOT_MS) {
        n = ring_sweep_runs(t, prev, DAY_MS, runs);
        /* a value written this week at the slot that just passed the retention */
        int64_t aged = ring_slot_start(t - DAY_MS) - RING_SLOT_MS;
        if (aged >= ring_slot_start(prev - DAY_MS))
            assert_true(run_has(runs, n, ring_slot_index(aged)));
        /* last week's value at the slot that just started */
        assert_true(run_has(runs, n, ring_slot_index(ring_slot_start(t))));
        prev = t;
    }
}

static void fill(ring_slot_t *s, uint64_t k)
{
    s->requests[METRICS_EP_CHAT_COMPLETIONS][0] += 3 * k;
    s->requests[METRICS_EP_MESSAGES][3] += k;
    s->latency[METRICS_EP_CHAT_COMPLETIONS][4] += 2 * k;
    s->latency_sum_us[METRICS_EP_CHAT_COMPLETIONS] += 1000 * k;
    s->statuses[502 - METRICS_STATUS_MIN] += k;
    ring_model_t *m = ring_slot_model(s, "gpt-x");
    m->requests += 4 * k;
    m->errors += k;
    m->input_tokens += 100 * k;
    m->output_tokens += 50 * k;
    m->cached_input_tokens += 10 * k;
    m->reasoning_tokens += 5 * k;
    m->nano_usd += 1234 * (int64_t)k;
    ring_provider_t *p = ring_slot_provider(s, "prov");
    p->errors[METRICS_UPSTREAM_STATUS_5XX] += k;
}

static void test_encode_decode_merge(void **state)
{
    (void)state;
    ring_slot_t s, d, m;
    ring_slot_init(&s, "n1", 600000);
    assert_true(ring_slot_empty(&s));
    fill(&s, 1);
    s.updated_ms = 601000;
    assert_false(ring_slot_empty(&s));
    uint8_t *buf;
    size_t len;
    assert_int_equal(ring_slot_encode(&s, &buf, &len), 0);
    assert_true(len > 0 && len <= RING_MAX_VALUE);
    assert_int_equal(ring_slot_decode(buf, len, &d), 0);
    assert_string_equal(d.node, "n1");
    assert_int_equal(d.start_ms, 600000);
    assert_int_equal(d.updated_ms, 601000);
    assert_int_equal(ring_slot_requests(&d), 4);
    assert_int_equal(d.requests[METRICS_EP_MESSAGES][3], 1);
    assert_int_equal(d.latency[METRICS_EP_CHAT_COMPLETIONS][4], 2);
    assert_int_equal(d.latency_sum_us[METRICS_EP_CHAT_COMPLETIONS], 1000);
    assert_int_equal(d.statuses[502 - METRICS_STATUS_MIN], 1);
    assert_int_equal(d.n_models, 1);
    assert_string_equal(d.models[0].name, "gpt-x");
    assert_int_equal(d.models[0].input_tokens, 100);
    assert_int_equal(d.models[0].reasoning_tokens, 5);
    assert_int_equal(d.models[0].nano_usd, 1234);
    assert_int_equal(d.n_providers, 1);
    assert_int_equal(d.providers[0].errors[METRICS_UPSTREAM_STATUS_5XX], 1);
    /* merge: a restart adds to what the slot held */
    ring_slot_init(&m, "n1", 600000);
    fill(&m, 2);
    assert_int_equal(ring_slot_merge(&m, &d), 0);
    assert_int_equal(ring_slot_requests(&m), 12);
    assert_int_equal(m.models[0].output_tokens, 150);
    assert_int_equal(m.models[0].nano_usd, 3 * 1234);
    assert_int_equal(m.statuses[502 - METRICS_STATUS_MIN], 3);
    assert_int_equal(m.start_ms, 600000);
    free(buf);
    ring_slot_dispose(&s);
    ring_slot_dispose(&d);
    ring_slot_dispose(&m);
    /* garbage and nonsense */
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0x01};
    assert_int_equal(ring_slot_decode(junk, sizeof(junk), &d), -EPROTO);
    ring_slot_init(&s, "n1", 12345); /* not a slot start */
    s.requests[0][0] = 1;
    assert_int_equal(ring_slot_encode(&s, &buf, &len), 0);
    assert_int_equal(ring_slot_decode(buf, len, &d), -EPROTO);
    free(buf);
    ring_slot_dispose(&s);
}

/* Many long model names: the value stays within 8 KiB, nothing is lost from the totals. */
static void test_size_cap(void **state)
{
    (void)state;
    ring_slot_t s, d;
    ring_slot_init(&s, "n1", 0);
    uint64_t total_in = 0;
    for (int i = 0; i < 400; i++) {
        char name[METRICS_NAME_MAX + 1];
        memset(name, 'a' + i % 26, 200);
        snprintf(name + 200, sizeof(name) - 200, "-%d", i);
        ring_model_t *m = ring_slot_model(&s, name);
        assert_non_null(m);
        m->requests += (uint64_t)i + 1;
        m->input_tokens += 10;
        total_in += 10;
    }
    assert_true(s.n_models <= RING_MAX_ROWS);
    for (int i = 400 - METRICS_STATUS_MIN; i < METRICS_STATUS_CODES; i++)
        s.statuses[i] = 1; /* every 4xx and 5xx */
    uint8_t *buf;
    size_t len;
    assert_int_equal(ring_slot_encode(&s, &buf, &len), 0);
    assert_true(len <= RING_MAX_VALUE);
    assert_int_equal(ring_slot_decode(buf, len, &d), 0);
    uint64_t in = 0, req = 0;
    bool other = false;
    for (size_t i = 0; i < d.n_models; i++) {
        in += d.models[i].input_tokens;
        req += d.models[i].requests;
        other |= strcmp(d.models[i].name, "other") == 0;
    }
    assert_true(other);
    assert_int_equal(in, total_in);
    assert_int_equal(req, 400 * 401 / 2);
    /* the biggest rows keep their names (rows past RING_MAX_ROWS - 1 were "other" already) */
    bool biggest = false;
    for (size_t i = 0; i < d.n_models; i++)
        biggest |= strstr(d.models[i].name, "-254") != NULL;
    assert_true(biggest);
    free(buf);
    ring_slot_dispose(&s);
    ring_slot_dispose(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slot_arithmetic),     cmocka_unit_test(test_keys),     cmocka_unit_test(test_index_runs),
        cmocka_unit_test(test_encode_decode_merge), cmocka_unit_test(test_size_cap), cmocka_unit_test(test_sweep_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
