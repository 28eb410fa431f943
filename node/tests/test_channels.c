/* Unit tests for node/channels: priority order, weighted shares, skipping tried and open
 * channels, the half-open single probe, breaker timing with a fake clock, the error
 * classifier on each format's bodies, and the retry bounds. Deterministic: fixed seeds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <cmocka.h>

#include "node/channels.h"

#define T0 1700000000000ull

static channels_table_t *table_with(const char *const *names, const size_t *n_keys, size_t n)
{
    channels_breaker_config_t cfg;
    channels_breaker_config_default(&cfg);
    channels_table_t *t = channels_table_new(&cfg);
    assert_non_null(t);
    channels_provider_t ps[8];
    for (size_t i = 0; i < n; i++)
        ps[i] = (channels_provider_t){names[i], NULL, n_keys[i]};
    assert_int_equal(channels_table_sync(t, ps, n), 0);
    return t;
}

/* Opens a channel: threshold failures picked and recorded at now. */
static void fail_n(channels_table_t *t, const char *p, uint32_t k, unsigned n, uint64_t now)
{
    for (unsigned i = 0; i < n; i++) {
        channels_ticket_t tk = {0};
        tk.epoch = 0;
        /* closed breakers issue tickets of their current epoch: read it through a pick */
        channels_candidate_t c = {p, k, 0, 0, 1};
        uint64_t rng = 1;
        if (channels_pick(t, &c, 1, NULL, 0, now, &rng, &tk, NULL) != 0)
            return;
        channels_record(t, p, k, tk, CHANNELS_OUTCOME_CONNECT_FAILED, now);
    }
}

static void test_priority_order(void **state)
{
    (void)state;
    const char *names[] = {"low", "high"};
    size_t keys[] = {1, 1};
    channels_table_t *t = table_with(names, keys, 2);
    channels_candidate_t c[] = {{"low", 0, 0, 1, 100}, {"high", 0, 1, 5, 1}};
    uint64_t rng = 7;
    channels_ticket_t tk;
    for (int i = 0; i < 100; i++)
        assert_int_equal(channels_pick(t, c, 2, NULL, 0, T0, &rng, &tk, NULL), 1);
    size_t tried[] = {1};
    assert_int_equal(channels_pick(t, c, 2, tried, 1, T0, &rng, &tk, NULL), 0);
    size_t both[] = {0, 1};
    assert_int_equal(channels_pick(t, c, 2, both, 2, T0, &rng, &tk, NULL), -ENOENT);
    assert_int_equal(channels_pick(t, c, 0, NULL, 0, T0, &rng, &tk, NULL), -ENOENT);
    channels_table_free(t);
}

static void test_weighted_shares(void **state)
{
    (void)state;
    const char *names[] = {"a", "b", "c"};
    size_t keys[] = {1, 2, 1};
    channels_table_t *t = table_with(names, keys, 3);
    /* routes a (w 1), b (w 3, two keys sharing it), c (w 6) */
    channels_candidate_t c[] = {{"a", 0, 0, 0, 1}, {"b", 0, 1, 0, 3}, {"b", 1, 1, 0, 3}, {"c", 0, 2, 0, 6}};
    double expect[] = {0.1, 0.15, 0.15, 0.6};
    unsigned counts[4] = {0};
    uint64_t rng = 12345;
    channels_ticket_t tk;
    const unsigned N = 100000;
    for (unsigned i = 0; i < N; i++) {
        int k = channels_pick(t, c, 4, NULL, 0, T0, &rng, &tk, NULL);
        assert_true(k >= 0 && k < 4);
        counts[k]++;
    }
    double chi2 = 0;
    for (int i = 0; i < 4; i++) {
        double e = expect[i] * N;
        chi2 += (counts[i] - e) * (counts[i] - e) / e;
    }
    assert_true(chi2 < 16.27); /* 3 degrees of freedom, p = 0.001 */
    channels_table_free(t);
}

static void test_skip_open_and_fail_fast(void **state)
{
    (void)state;
    const char *names[] = {"a", "b"};
    size_t keys[] = {1, 1};
    channels_table_t *t = table_with(names, keys, 2);
    channels_candidate_t c[] = {{"a", 0, 0, 9, 1}, {"b", 0, 1, 0, 1}};
    fail_n(t, "a", 0, 5, T0);
    assert_int_equal(channels_state(t, "a", 0, T0), CHANNELS_OPEN);
    uint64_t rng = 3, wait = 0;
    channels_ticket_t tk;
    for (int i = 0; i < 20; i++)
        assert_int_equal(channels_pick(t, c, 2, NULL, 0, T0 + 1000, &rng, &tk, NULL), 1);
    fail_n(t, "b", 0, 5, T0 + 2000); /* now b opens too */
    assert_int_equal(channels_state(t, "b", 0, T0 + 2000), CHANNELS_OPEN);
    assert_int_equal(channels_pick(t, c, 2, NULL, 0, T0 + 3000, &rng, &tk, &wait), -EAGAIN);
    assert_int_equal(wait, 27000); /* a's cool-down ends at T0 + 30 s */
    channels_table_free(t);
}

static void test_half_open_single_probe(void **state)
{
    (void)state;
    const char *names[] = {"a", "b"};
    size_t keys[] = {1, 1};
    channels_table_t *t = table_with(names, keys, 2);
    channels_candidate_t c[] = {{"a", 0, 0, 9, 1}, {"b", 0, 1, 0, 1}};
    fail_n(t, "a", 0, 5, T0);
    uint64_t now = T0 + 30000, rng = 5;
    assert_int_equal(channels_state(t, "a", 0, now), CHANNELS_HALF_OPEN);
    channels_ticket_t probe, other;
    assert_int_equal(channels_pick(t, c, 2, NULL, 0, now, &rng, &probe, NULL), 0);
    assert_true(probe.probe);
    for (int i = 0; i < 10; i++) { /* the probe is in flight: others skip a */
        assert_int_equal(channels_pick(t, c, 2, NULL, 0, now + 1, &rng, &other, NULL), 1);
        assert_false(other.probe);
    }
    /* a cancelled probe frees the slot */
    channels_record(t, "a", 0, probe, CHANNELS_OUTCOME_CANCELLED, now + 2);
    assert_int_equal(channels_state(t, "a", 0, now + 2), CHANNELS_HALF_OPEN);
    assert_int_equal(channels_pick(t, c, 2, NULL, 0, now + 3, &rng, &probe, NULL), 0);
    assert_true(probe.probe);
    /* a probe that never reports frees the slot after probe_timeout_ms */
    assert_int_equal(channels_pick(t, c, 2, NULL, 0, now + 3 + 119999, &rng, &other, NULL), 1);
    assert_int_equal(channels_pick(t, c, 2, NULL, 0, now + 3 + 120000, &rng, &other, NULL), 0);
    assert_true(other.probe);
    /* the late verdict of the older probe still counts (same epoch): success closes */
    channels_record(t, "a", 0, other, CHANNELS_OUTCOME_SUCCESS, now + 130000);
    assert_int_equal(channels_state(t, "a", 0, now + 130000), CHANNELS_CLOSED);
    channels_row_t row;
    assert_int_equal(channels_table_export(t, now + 130000, &row, 1), 2);
    assert_string_equal(row.provider, "a");
    assert_int_equal(row.probes, 3);
    assert_int_equal(row.opens, 1);
    assert_int_equal(row.failures, 5);
    channels_table_free(t);
}

static void test_breaker_timing(void **state)
{
    (void)state;
    const char *names[] = {"a"};
    size_t keys[] = {1};
    channels_table_t *t = table_with(names, keys, 1);
    channels_candidate_t c = {"a", 0, 0, 0, 1};
    uint64_t rng = 9;
    channels_ticket_t tk;
    /* 4 failures, a success (clears), 4 failures: still closed */
    fail_n(t, "a", 0, 4, T0);
    assert_int_equal(channels_pick(t, &c, 1, NULL, 0, T0, &rng, &tk, NULL), 0);
    channels_record(t, "a", 0, tk, CHANNELS_OUTCOME_SUCCESS, T0);
    fail_n(t, "a", 0, 4, T0 + 1);
    assert_int_equal(channels_state(t, "a", 0, T0 + 1), CHANNELS_CLOSED);
    /* client and quota errors do not count */
    for (int i = 0; i < 10; i++) {
        assert_int_equal(channels_pick(t, &c, 1, NULL, 0, T0 + 2, &rng, &tk, NULL), 0);
        channels_record(t, "a", 0, tk, i % 2 ? CHANNELS_OUTCOME_HTTP_CLIENT : CHANNELS_OUTCOME_HTTP_QUOTA, T0 + 2);
    }
    assert_int_equal(channels_state(t, "a", 0, T0 + 2), CHANNELS_CLOSED);
    /* failures spread wider than the window do not open: 5th failure 30 s after the 1st */
    channels_table_free(t);
    t = table_with(names, keys, 1);
    for (int i = 0; i < 4; i++)
        fail_n(t, "a", 0, 1, T0 + (uint64_t)i * 7500);
    fail_n(t, "a", 0, 1, T0 + 30000);
    assert_int_equal(channels_state(t, "a", 0, T0 + 30000), CHANNELS_CLOSED);
    fail_n(t, "a", 0, 1, T0 + 30001); /* last 5 within 30 s now: 7500 .. 30001 */
    assert_int_equal(channels_state(t, "a", 0, T0 + 30001), CHANNELS_OPEN);
    uint64_t opened = T0 + 30001;
    /* a stale ticket (issued before the open) changes nothing */
    channels_ticket_t stale = {0, false};
    channels_record(t, "a", 0, stale, CHANNELS_OUTCOME_SUCCESS, opened + 1);
    assert_int_equal(channels_state(t, "a", 0, opened + 1), CHANNELS_OPEN);
    assert_int_equal(channels_state(t, "a", 0, opened + 29999), CHANNELS_OPEN);
    assert_int_equal(channels_state(t, "a", 0, opened + 30000), CHANNELS_HALF_OPEN);
    /* probe fails: reopens for twice the cool-down */
    assert_int_equal(channels_pick(t, &c, 1, NULL, 0, opened + 30000, &rng, &tk, NULL), 0);
    channels_record(t, "a", 0, tk, CHANNELS_OUTCOME_TIMEOUT, opened + 31000);
    assert_int_equal(channels_state(t, "a", 0, opened + 31000), CHANNELS_OPEN);
    assert_int_equal(channels_state(t, "a", 0, opened + 31000 + 59999), CHANNELS_OPEN);
    assert_int_equal(channels_state(t, "a", 0, opened + 31000 + 60000), CHANNELS_HALF_OPEN);
    /* probe succeeds: closed, cool-down back to 30 s for the next open */
    uint64_t now = opened + 91000;
    assert_int_equal(channels_pick(t, &c, 1, NULL, 0, now, &rng, &tk, NULL), 0);
    assert_true(tk.probe);
    channels_record(t, "a", 0, tk, CHANNELS_OUTCOME_SUCCESS, now);
    assert_int_equal(channels_state(t, "a", 0, now), CHANNELS_CLOSED);
    fail_n(t, "a", 0, 5, now + 10);
    assert_int_equal(channels_state(t, "a", 0, now + 10 + 29999), CHANNELS_OPEN);
    assert_int_equal(channels_state(t, "a", 0, now + 10 + 30000), CHANNELS_HALF_OPEN);
    channels_row_t row;
    channels_table_export(t, now + 10, &row, 1);
    assert_string_equal(channels_state_name(row.state), "open");
    assert_int_equal(row.opens, 3);
    assert_int_equal(row.last_change_ms, now + 10);
    channels_table_free(t);
}

static void test_sync_and_merge(void **state)
{
    (void)state;
    const char *names[] = {"a", "b"};
    size_t keys[] = {2, 1};
    channels_table_t *t = table_with(names, keys, 2);
    fail_n(t, "a", 1, 5, T0);
    fail_n(t, "b", 0, 5, T0);
    /* b removed, a keeps its state; a tag change resets a key */
    uint64_t tags[] = {0, 0};
    channels_provider_t ps[] = {{"a", tags, 2}, {"c", NULL, 1}};
    assert_int_equal(channels_table_sync(t, ps, 2), 0);
    assert_int_equal(channels_table_size(t), 3);
    assert_int_equal(channels_state(t, "a", 1, T0), CHANNELS_OPEN);
    assert_int_equal(channels_state(t, "b", 0, T0), CHANNELS_CLOSED);
    channels_ticket_t tk = {0};
    channels_record(t, "b", 0, tk, CHANNELS_OUTCOME_TIMEOUT, T0); /* ignored */
    tags[1] = 42;
    assert_int_equal(channels_table_sync(t, ps, 2), 0);
    assert_int_equal(channels_state(t, "a", 1, T0), CHANNELS_CLOSED);
    channels_provider_t dup[] = {{"a", NULL, 1}, {"a", NULL, 1}};
    assert_int_equal(channels_table_sync(t, dup, 2), -EINVAL);
    assert_int_equal(channels_table_size(t), 3);
    /* two workers: merge */
    channels_table_t *u = table_with((const char *[]){"a", "c"}, (size_t[]){2, 1}, 2);
    fail_n(u, "c", 0, 5, T0 + 5);
    channels_row_t acc[8], rows[8];
    size_t n = channels_table_export(t, T0 + 10, acc, 8);
    assert_int_equal(n, 3);
    size_t m = channels_table_export(u, T0 + 10, rows, 8);
    n = channels_rows_merge(acc, n, 8, rows, m);
    assert_int_equal(n, 3);
    assert_string_equal(acc[2].provider, "c");
    assert_int_equal(acc[2].state, CHANNELS_OPEN);
    assert_int_equal(acc[2].not_closed, 1);
    assert_int_equal(acc[2].failures, 5);
    assert_int_equal(acc[2].last_change_ms, T0 + 5);
    channels_row_t extra = {.provider = "b", .key_index = 0, .state = CHANNELS_HALF_OPEN, .not_closed = 1};
    n = channels_rows_merge(acc, n, 8, &extra, 1);
    assert_int_equal(n, 4);
    assert_string_equal(acc[2].provider, "b");
    assert_string_equal(acc[3].provider, "c");
    channels_table_free(u);
    channels_table_free(t);
}

#define CLS(st, f, s) channels_classify((st), (f), (const uint8_t *)(s), strlen(s))

static void test_classify(void **state)
{
    (void)state;
    const channels_format_t O = CHANNELS_FORMAT_OPENAI, A = CHANNELS_FORMAT_ANTHROPIC, G = CHANNELS_FORMAT_GEMINI;
    /* OpenAI */
    assert_int_equal(CLS(429, O,
                         "{\"error\":{\"message\":\"You exceeded your current quota\",\"type\":\"insufficient_quota\","
                         "\"param\":null,\"code\":\"insufficient_quota\"}}"),
                     CHANNELS_QUOTA);
    assert_int_equal(CLS(429, O,
                         "{\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\",\"param\":null,"
                         "\"code\":\"rate_limit_exceeded\"}}"),
                     CHANNELS_RETRYABLE);
    assert_int_equal(CLS(400, O, "{\"error\":{\"message\":\"bad\",\"type\":\"invalid_request_error\",\"code\":null}}"),
                     CHANNELS_NOT_RETRYABLE);
    assert_int_equal(CLS(429, O, "<html>busy</html>"), CHANNELS_RETRYABLE);
    assert_int_equal(channels_classify(429, O, NULL, 0), CHANNELS_RETRYABLE);
    /* Anthropic */
    assert_int_equal(CLS(429, A, "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"Number of "
                                 "request tokens has exceeded your per-minute rate limit\"}}"),
                     CHANNELS_RETRYABLE);
    assert_int_equal(CLS(429, A, "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"x\","
                                 "\"details\":{\"error_code\":\"enforced_spend_limit_reached\"}}}"),
                     CHANNELS_QUOTA);
    assert_int_equal(CLS(400, A, "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"Your "
                                 "credit balance is too low to access the Anthropic API.\"}}"),
                     CHANNELS_QUOTA);
    assert_int_equal(CLS(403, A, "{\"type\":\"error\",\"error\":{\"type\":\"permission_error\",\"message\":\"Check your "
                                 "Billing settings\"}}"),
                     CHANNELS_QUOTA);
    assert_int_equal(CLS(402, A, "{\"type\":\"error\",\"error\":{\"type\":\"billing_error\",\"message\":\"x\"}}"),
                     CHANNELS_QUOTA);
    assert_int_equal(CLS(400, A, "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":"
                                 "\"max_tokens: field required\"}}"),
                     CHANNELS_NOT_RETRYABLE);
    assert_int_equal(CLS(529, A, "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}"),
                     CHANNELS_RETRYABLE);
    /* Gemini */
    const char *gq = "{\"error\":{\"code\":429,\"message\":\"You exceeded your current quota\",\"status\":"
                     "\"RESOURCE_EXHAUSTED\",\"details\":[{\"@type\":\"type.googleapis.com/google.rpc.QuotaFailure\","
                     "\"violations\":[{\"quotaMetric\":\"generativelanguage.googleapis.com/generate_requests\","
                     "\"quotaId\":\"GenerateRequestsPerDayPerProjectPerModel-FreeTier\"}]},"
                     "{\"@type\":\"type.googleapis.com/google.rpc.RetryInfo\",\"retryDelay\":\"20s\"}]}}";
    assert_int_equal(CLS(429, G, gq), CHANNELS_QUOTA);
    const char *gm = "[{\"error\":{\"code\":429,\"status\":\"RESOURCE_EXHAUSTED\",\"details\":[{\"@type\":"
                     "\"type.googleapis.com/google.rpc.QuotaFailure\",\"violations\":[{\"quotaId\":"
                     "\"GenerateRequestsPerMinutePerProjectPerModel\"}]}]}}]";
    assert_int_equal(CLS(429, G, gm), CHANNELS_RETRYABLE);
    assert_int_equal(CLS(429, G, "{\"error\":{\"code\":429,\"message\":\"Resource has been exhausted (e.g. check "
                                 "quota).\",\"status\":\"RESOURCE_EXHAUSTED\"}}"),
                     CHANNELS_RETRYABLE);
    assert_int_equal(CLS(400, G, "{\"error\":{\"code\":400,\"status\":\"INVALID_ARGUMENT\"}}"), CHANNELS_NOT_RETRYABLE);
    /* 5xx, any format, any body */
    int fives[] = {500, 502, 503, 504};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(CLS(fives[i], O, "{\"error\":{\"code\":\"insufficient_quota\"}}"), CHANNELS_RETRYABLE);
        assert_int_equal(CLS(fives[i], A, "{}"), CHANNELS_RETRYABLE);
        assert_int_equal(CLS(fives[i], G, "{\"error\":{\"status\":\"UNAVAILABLE\"}}"), CHANNELS_RETRYABLE);
    }
    assert_int_equal(CLS(200, O, "{}"), CHANNELS_NOT_RETRYABLE);
    /* deep nesting stops the parse without harm */
    char deep[200];
    memset(deep, '[', 50);
    memset(deep + 50, '{', 1);
    strcpy(deep + 51, "\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":1}}}}}}}}}");
    assert_int_equal(CLS(429, A, deep), CHANNELS_RETRYABLE);
    /* outcome mapping */
    assert_int_equal(channels_outcome_of_http(200, CHANNELS_NOT_RETRYABLE), CHANNELS_OUTCOME_SUCCESS);
    assert_int_equal(channels_outcome_of_http(429, CHANNELS_QUOTA), CHANNELS_OUTCOME_HTTP_QUOTA);
    assert_int_equal(channels_outcome_of_http(503, CHANNELS_RETRYABLE), CHANNELS_OUTCOME_HTTP_RETRYABLE);
    assert_int_equal(channels_outcome_of_http(404, CHANNELS_NOT_RETRYABLE), CHANNELS_OUTCOME_HTTP_CLIENT);
}

static void test_retry_bounds(void **state)
{
    (void)state;
    channels_retry_policy_t p = {3, 30000};
    assert_int_equal(channels_should_retry(&p, CHANNELS_OUTCOME_CONNECT_FAILED, false, 1, T0, T0 + 10), CHANNELS_RETRY);
    assert_int_equal(channels_should_retry(&p, CHANNELS_OUTCOME_TIMEOUT, false, 2, T0, T0 + 10), CHANNELS_RETRY);
    assert_int_equal(channels_should_retry(&p, CHANNELS_OUTCOME_HTTP_RETRYABLE, false, 3, T0, T0 + 10),
                     CHANNELS_STOP_ATTEMPTS);
    assert_int_equal(channels_should_retry(&p, CHANNELS_OUTCOME_HTTP_RETRYABLE, false, 1, T0, T0 + 29999),
                     CHANNELS_RETRY);
    assert_int_equal(channels_should_retry(&p, CHANNELS_OUTCOME_HTTP_RETRYABLE, false, 1, T0, T0 + 30000),
                     CHANNELS_STOP_BUDGET);
    assert_int_equal(channels_budget_left_ms(&p, T0, T0 + 29000), 1000);
    assert_int_equal(channels_budget_left_ms(&p, T0, T0 + 31000), 0);
    /* never after the first byte reached the client */
    assert_int_equal(channels_should_retry(&p, CHANNELS_OUTCOME_BROKEN, true, 1, T0, T0 + 1), CHANNELS_STOP_COMMITTED);
    assert_int_equal(channels_should_retry(&p, CHANNELS_OUTCOME_HTTP_RETRYABLE, true, 1, T0, T0 + 1),
                     CHANNELS_STOP_COMMITTED);
    assert_int_equal(channels_should_retry(&p, CHANNELS_OUTCOME_BROKEN, false, 1, T0, T0 + 1), CHANNELS_RETRY);
    /* final outcomes */
    channels_outcome_t finals[] = {CHANNELS_OUTCOME_SUCCESS, CHANNELS_OUTCOME_HTTP_QUOTA, CHANNELS_OUTCOME_HTTP_CLIENT,
                                   CHANNELS_OUTCOME_CANCELLED};
    for (int i = 0; i < 4; i++)
        assert_int_equal(channels_should_retry(&p, finals[i], false, 1, T0, T0), CHANNELS_STOP_FINAL);
    channels_retry_policy_t one = {0, 30000};
    assert_int_equal(channels_should_retry(&one, CHANNELS_OUTCOME_TIMEOUT, false, 1, T0, T0), CHANNELS_STOP_ATTEMPTS);
}

/* A whole request: three channels, the first two fail, the third answers. */
static void test_request_walk(void **state)
{
    (void)state;
    const char *names[] = {"a", "b"};
    size_t keys[] = {2, 1};
    channels_table_t *t = table_with(names, keys, 2);
    channels_candidate_t c[] = {{"a", 0, 0, 5, 1}, {"a", 1, 0, 5, 1}, {"b", 0, 1, 1, 1}};
    channels_retry_policy_t p = {3, 30000};
    uint64_t rng = 77, now = T0;
    size_t tried[3];
    size_t n_tried = 0;
    channels_ticket_t tk;
    int k;
    channels_retry_t d = CHANNELS_RETRY;
    while (d == CHANNELS_RETRY && (k = channels_pick(t, c, 3, tried, n_tried, now, &rng, &tk, NULL)) >= 0) {
        tried[n_tried++] = (size_t)k;
        channels_outcome_t o = c[k].priority == 5 ? CHANNELS_OUTCOME_HTTP_RETRYABLE : CHANNELS_OUTCOME_SUCCESS;
        channels_record(t, c[k].provider, c[k].key_index, tk, o, now);
        d = channels_should_retry(&p, o, false, (unsigned)n_tried, T0, now);
        now += 100;
    }
    assert_int_equal(n_tried, 3);
    assert_int_equal(tried[2], 2);
    assert_int_equal(d, CHANNELS_STOP_FINAL);
    channels_table_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_priority_order),       cmocka_unit_test(test_weighted_shares),
        cmocka_unit_test(test_skip_open_and_fail_fast), cmocka_unit_test(test_half_open_single_probe),
        cmocka_unit_test(test_breaker_timing),       cmocka_unit_test(test_sync_and_merge),
        cmocka_unit_test(test_classify),             cmocka_unit_test(test_retry_bounds),
        cmocka_unit_test(test_request_walk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
