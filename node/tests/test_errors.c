/* Unit tests of the error bodies in the three client APIs' shapes (DESIGN.md's table):
 * each case's OpenAI code, Anthropic type and Gemini status; messages escaped; a message
 * too long for the buffer is cut, never the JSON. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "node/errors.h"

static void expect_body(xlate_format_t fmt, int status, const char *code, const char *want)
{
    char buf[768];
    size_t n = errors_body(fmt, buf, sizeof(buf), status, code, "m");
    assert_int_equal(n, strlen(buf));
    if (strcmp(buf, want) != 0)
        fail_msg("fmt %d status %d code %s:\n got  %s want %s", (int)fmt, status, code, buf, want);
}

static void test_design_table(void **state)
{
    (void)state;
    static const struct {
        int status;
        const char *code, *otype, *atype, *gstatus;
    } rows[] = {
        {401, "invalid_api_key", "invalid_request_error", "authentication_error", "UNAUTHENTICATED"},
        {403, "model_not_allowed", "permission_error", "permission_error", "PERMISSION_DENIED"},
        {404, "model_not_found", "invalid_request_error", "not_found_error", "NOT_FOUND"},
        {400, "invalid_request", "invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"},
        {413, "request_too_large", "invalid_request_error", "request_too_large", "INVALID_ARGUMENT"},
        {429, "rate_limit_exceeded", "rate_limit_error", "rate_limit_error", "RESOURCE_EXHAUSTED"},
        {429, "insufficient_quota", "insufficient_quota", "rate_limit_error", "RESOURCE_EXHAUSTED"},
        {502, "upstream_error", "api_error", "api_error", "UNAVAILABLE"},
        {503, "upstream_error", "api_error", "overloaded_error", "UNAVAILABLE"},
        {504, "upstream_timeout", "api_error", "api_error", "DEADLINE_EXCEEDED"},
        {404, "not_found", "invalid_request_error", "not_found_error", "NOT_FOUND"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char want[512];
        snprintf(want, sizeof(want), "{\"error\":{\"message\":\"m\",\"type\":\"%s\",\"param\":null,\"code\":\"%s\"}}\n",
                 rows[i].otype, rows[i].code);
        expect_body(XLATE_OPENAI_CHAT, rows[i].status, rows[i].code, want);
        snprintf(want, sizeof(want), "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":\"m\"}}\n", rows[i].atype);
        expect_body(XLATE_ANTHROPIC, rows[i].status, rows[i].code, want);
        snprintf(want, sizeof(want), "{\"error\":{\"code\":%d,\"message\":\"m\",\"status\":\"%s\"}}\n", rows[i].status,
                 rows[i].gstatus);
        expect_body(XLATE_GEMINI, rows[i].status, rows[i].code, want);
    }
}

static void test_escaping_and_truncation(void **state)
{
    (void)state;
    char buf[768];
    errors_body(XLATE_ANTHROPIC, buf, sizeof(buf), 400, "invalid_request", "field \"n\" \\ bad\n");
    assert_string_equal(buf, "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":"
                             "\"field \\\"n\\\" \\\\ bad\\u000a\"}}\n");
    char longmsg[2000];
    memset(longmsg, 'x', sizeof(longmsg) - 1);
    longmsg[sizeof(longmsg) - 1] = '\0';
    for (int f = 0; f < 3; f++) {
        size_t n = errors_body((xlate_format_t)f, buf, sizeof(buf), 400, "invalid_request", longmsg);
        assert_true(n < sizeof(buf));
        assert_true(n > 100);
        assert_int_equal(buf[n - 1], '\n');
        assert_int_equal(buf[n - 2], '}'); /* the message was cut, the JSON closed */
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_design_table),
        cmocka_unit_test(test_escaping_and_truncation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
