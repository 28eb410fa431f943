/* Unit tests of the metadata record line: exact fields, JSON escaping, numbers, and the
 * refusal to write a truncated line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "node/log.h"

static const char *expected =
    "{\"type\":\"request\",\"ts\":\"2026-11-23T10:05:09.007Z\",\"request_id\":\"req-1\",\"node\":\"n1\","
    "\"key_id\":\"key_abc\",\"model\":\"gpt-4o\",\"endpoint\":\"chat.completions\",\"provider\":\"p\\\"q\","
    "\"status\":200,\"input_tokens\":12,\"cached_input_tokens\":0,\"output_tokens\":-1,\"reasoning_tokens\":"
    "9223372036854775807,\"usd\":1.250001,\"latency_ms\":33,\"ttfb_ms\":-1,\"stream\":true,\"estimated\":false}\n";

static log_record_t sample(void)
{
    log_record_t r = {
        .ts_ms = 1795428309007LL, /* 2026-11-23T10:05:09.007Z */
        .request_id = "req-1",
        .node = "n1",
        .key_id = "key_abc",
        .model = "gpt-4o",
        .endpoint = "chat.completions",
        .provider = "p\"q",
        .status = 200,
        .input_tokens = 12,
        .output_tokens = -1,
        .reasoning_tokens = INT64_MAX,
        .usd = 1.2500005,
        .latency_ms = 33,
        .ttfb_ms = -1,
        .stream = true,
    };
    return r;
}

static void test_format_exact(void **state)
{
    (void)state;
    log_record_t r = sample();
    char buf[2048];
    size_t n = log_record_format(&r, buf, sizeof(buf));
    assert_int_equal(n, strlen(expected));
    buf[n] = '\0';
    assert_string_equal(buf, expected);
}

static void test_control_characters_escaped(void **state)
{
    (void)state;
    log_record_t r = sample();
    r.node = "a\nb\x01";
    char buf[2048];
    size_t n = log_record_format(&r, buf, sizeof(buf));
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strstr(buf, "\"node\":\"a\\u000ab\\u0001\""));
    assert_null(memchr(buf, '\n', n - 1)); /* one line */
}

static void test_too_small_gives_nothing(void **state)
{
    (void)state;
    log_record_t r = sample();
    char buf[2048];
    size_t full = log_record_format(&r, buf, sizeof(buf));
    for (size_t cap = 0; cap <= full; cap++)
        assert_int_equal(log_record_format(&r, buf, cap), 0);
    assert_int_equal(log_record_format(&r, buf, full + 1), full);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_exact),
        cmocka_unit_test(test_control_characters_escaped),
        cmocka_unit_test(test_too_small_gives_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
