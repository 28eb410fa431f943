/* Unit tests for node/reqjson: inspection of every field, the validation rules, exact
 * preservation on rewrite, and error messages that never quote the body. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "node/reqjson.h"

#define CANARY "CANARY7f3a"

static int inspect(reqjson_endpoint_t ep, const char *body, reqjson_info_t *info, char *err)
{
    int r = reqjson_inspect(ep, (const uint8_t *)body, strlen(body), info, err, 256);
    /* no error message may ever quote content */
    assert_null(strstr(err, CANARY));
    return r;
}

static int rewrite(reqjson_endpoint_t ep, const char *body, const reqjson_rewrite_t *rw, char *out, char *err)
{
    wipe_buf_t buf = WIPE_BUF_INIT(1 << 20);
    int r = reqjson_rewrite(ep, (const uint8_t *)body, strlen(body), rw, &buf, err, 256);
    assert_null(strstr(err, CANARY));
    out[0] = 0;
    if (r == 0) {
        assert_true(buf.len < 4096);
        memcpy(out, buf.data, buf.len);
        out[buf.len] = 0;
    }
    wipe_buf_free(&buf);
    return r;
}

static void test_inspect_fields(void **state)
{
    (void)state;
    reqjson_info_t info;
    char err[256];
    const char *body = "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],"
                       "\"stream\":true,\"stream_options\":{\"include_usage\":false},\"store\":true,"
                       "\"max_tokens\":100,\"max_completion_tokens\":250,\"temperature\":0.5}";
    assert_int_equal(inspect(REQJSON_CHAT, body, &info, err), 0);
    assert_string_equal(err, "");
    assert_true(info.has_model);
    assert_string_equal(info.model, "gpt-4o");
    assert_true(info.stream);
    assert_int_equal(info.include_usage, 0);
    assert_int_equal(info.store, 1);
    assert_int_equal(info.max_output_tokens, 250);
    assert_int_equal(info.prompt_bytes, strlen("user") + strlen("hello"));

    assert_int_equal(inspect(REQJSON_CHAT, "{\"model\":\"m\"}", &info, err), 0);
    assert_false(info.stream);
    assert_int_equal(info.include_usage, -1);
    assert_int_equal(info.store, -1);
    assert_int_equal(info.max_output_tokens, -1);
    assert_int_equal(info.prompt_bytes, 0);

    /* nulls count as absent; nested numbers count 4 bytes */
    assert_int_equal(inspect(REQJSON_COMPLETIONS,
                             "{\"model\":\"m\",\"stream\":null,\"store\":null,\"max_tokens\":null,"
                             "\"stream_options\":null,\"prompt\":[[1,2,3]]}",
                             &info, err),
                     0);
    assert_false(info.stream);
    assert_int_equal(info.store, -1);
    assert_int_equal(info.max_output_tokens, -1);
    assert_int_equal(info.prompt_bytes, 12);

    /* each endpoint reads only its own max field */
    assert_int_equal(
        inspect(REQJSON_RESPONSES, "{\"model\":\"m\",\"max_tokens\":5,\"max_output_tokens\":7}", &info, err), 0);
    assert_int_equal(info.max_output_tokens, 7);
    assert_int_equal(inspect(REQJSON_COMPLETIONS, "{\"model\":\"m\",\"max_output_tokens\":7}", &info, err), 0);
    assert_int_equal(info.max_output_tokens, -1);
    assert_int_equal(
        inspect(REQJSON_EMBEDDINGS, "{\"model\":\"e\",\"input\":\"abc\",\"max_tokens\":\"x\"}", &info, err), 0);
    assert_int_equal(info.max_output_tokens, -1);
    assert_int_equal(info.prompt_bytes, 4); /* "abc" + "x" */

    /* escapes are counted decoded; a nested "model" counts as content */
    assert_int_equal(inspect(REQJSON_RESPONSES, "{\"input\":[{\"model\":\"a\\u00e9\"}],\"model\":\"o3\"}", &info, err),
                     0);
    assert_string_equal(info.model, "o3");
    assert_int_equal(info.prompt_bytes, 3);

    /* 256 bytes of model is the maximum */
    char big[400];
    memset(big, 0, sizeof(big));
    strcpy(big, "{\"model\":\"");
    memset(big + strlen(big), 'm', 256);
    strcat(big, "\"}");
    assert_int_equal(inspect(REQJSON_CHAT, big, &info, err), 0);
    assert_int_equal(strlen(info.model), 256);
}

typedef struct bad_case {
    reqjson_endpoint_t ep;
    const char *body;
    const char *msg; /* prefix of the expected message */
} bad_case_t;

static void test_rejects(void **state)
{
    (void)state;
    static const bad_case_t cases[] = {
        {REQJSON_CHAT, "", "body must be a JSON object"},
        {REQJSON_CHAT, "  \n", "body must be a JSON object"},
        {REQJSON_CHAT, "[{\"model\":\"" CANARY "\"}]", "body must be a JSON object"},
        {REQJSON_CHAT, "\"" CANARY "\"", "body must be a JSON object"},
        {REQJSON_CHAT, "{\"messages\":[\"" CANARY "\"]}", "'model' is required"},
        {REQJSON_EMBEDDINGS, "{\"input\":\"" CANARY "\"}", "'model' is required"},
        {REQJSON_CHAT, "{\"model\":1}", "'model' must be a string"},
        {REQJSON_CHAT, "{\"model\":null}", "'model' must be a string"},
        {REQJSON_CHAT, "{\"model\":[\"" CANARY "\"]}", "'model' must be a string"},
        {REQJSON_CHAT, "{\"model\":\"\"}", "'model' must not be empty"},
        {REQJSON_CHAT, "{\"model\":\"a\\n" CANARY "\"}", "'model' must not contain control characters"},
        {REQJSON_CHAT, "{\"model\":\"" CANARY "\",\"model\":\"b\"}", "duplicate key 'model'"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"stream\":false,\"stream\":true}", "duplicate key 'stream'"},
        {REQJSON_RESPONSES, "{\"model\":\"a\",\"store\":false,\"store\":true}", "duplicate key 'store'"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"stream\":\"" CANARY "\"}", "'stream' must be a boolean"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"stream\":1}", "'stream' must be a boolean"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"stream_options\":true}", "'stream_options' must be an object"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"stream_options\":[]}", "'stream_options' must be an object"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"stream_options\":{\"include_usage\":\"" CANARY "\"}}",
         "'stream_options.include_usage' must be a boolean"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"stream_options\":{\"include_usage\":{}}}",
         "'stream_options.include_usage' must be a boolean"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"stream_options\":{\"include_usage\":true,\"include_usage\":false}}",
         "duplicate key 'stream_options.include_usage'"},
        {REQJSON_RESPONSES, "{\"model\":\"a\",\"store\":\"no\"}", "'store' must be a boolean"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"max_tokens\":-1}", "'max_tokens' must be a non-negative integer"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"max_completion_tokens\":1.5}",
         "'max_completion_tokens' must be a non-negative integer"},
        {REQJSON_RESPONSES, "{\"model\":\"a\",\"max_output_tokens\":1e400}",
         "'max_output_tokens' must be a non-negative integer"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"max_tokens\":99999999999999999999}",
         "'max_tokens' must be a non-negative integer"},
        /* malformed and truncated */
        {REQJSON_CHAT, "{\"model\":\"a\",\"messages\":[\"" CANARY "\"", "invalid JSON at byte"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"x\":\"" CANARY, "invalid JSON at byte"},
        {REQJSON_CHAT, "{\"model\":\"a\" \"x\":1}", "invalid JSON at byte"},
        {REQJSON_CHAT, "{\"model\":\"a\",}", "invalid JSON at byte"},
        {REQJSON_CHAT, "{\"model\":'" CANARY "'}", "invalid JSON at byte"},
        {REQJSON_CHAT, "{\"model\":\"a\"} " CANARY, "invalid JSON at byte"},
        {REQJSON_CHAT, "{\"model\":\"a\"}{}", "invalid JSON at byte"},
        {REQJSON_CHAT, "{\"model\":\"a\"} /* " CANARY " */", "invalid JSON at byte"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"x\":01}", "invalid JSON at byte"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"x\":NaN}", "invalid JSON at byte"},
        /* invalid UTF-8: raw bad bytes, overlong, surrogate, past U+10FFFF, lone escaped surrogate */
        {REQJSON_CHAT, "{\"model\":\"a\",\"x\":\"" CANARY "\xff\"}", "invalid JSON at byte"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"x\":\"" CANARY "\xC0\x80\"}", "invalid UTF-8 in a string at byte"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"x\":\"" CANARY "\xED\xA0\x80\"}", "invalid UTF-8 in a string at byte"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"x\":\"" CANARY "\xF4\x90\x80\x80\"}", "invalid UTF-8 in a string at byte"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"x\":\"" CANARY "\\udc00\"}", "invalid UTF-8 in a string at byte"},
        {REQJSON_CHAT, "{\"model\":\"a\",\"" CANARY "\xE2\x82\":1}", "invalid JSON at byte"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        reqjson_info_t info;
        char err[256];
        int r = inspect(cases[i].ep, cases[i].body, &info, err);
        if (r != -EINVAL || strncmp(err, cases[i].msg, strlen(cases[i].msg)) != 0)
            fail_msg("case %zu: r=%d err='%s' want '%s'", i, r, err, cases[i].msg);
        /* rewrite reports the same error */
        char out[4096];
        char err2[256];
        reqjson_rewrite_t rw = {.model = "x"};
        assert_int_equal(rewrite(cases[i].ep, cases[i].body, &rw, out, err2), -EINVAL);
        assert_string_equal(err, err2);
    }
}

static void test_depth(void **state)
{
    (void)state;
    char body[1024];
    reqjson_info_t info;
    char err[256];
    /* 127 nested arrays inside the object: depth 128 is fine, 129 is not */
    for (int depth = 127; depth <= 128; depth++) {
        size_t n = 0;
        n += (size_t)sprintf(body + n, "{\"model\":\"a\",\"x\":");
        for (int i = 0; i < depth; i++)
            body[n++] = '[';
        for (int i = 0; i < depth; i++)
            body[n++] = ']';
        body[n++] = '}';
        body[n] = 0;
        int r = inspect(REQJSON_CHAT, body, &info, err);
        if (depth == 127)
            assert_int_equal(r, 0);
        else {
            assert_int_equal(r, -EINVAL);
            assert_string_equal(err, "JSON nested too deeply");
        }
    }
}

static void test_rewrite_model_and_numbers(void **state)
{
    (void)state;
    char out[4096], err[256];
    reqjson_rewrite_t rw = {.model = "gpt-4o-2024-08-06"};
    const char *body =
        "{ \"messages\": [{\"role\":\"user\",\"content\":\"hi \\\"there\\\" \\u00e9\\n\",\"model\":\"nested\"}],\n"
        "  \"model\": \"gpt-4o\", \"temperature\": 0.1000, \"big\": 1e400, \"neg\": -0,"
        " \"n\": 12345678901234567890123, \"x\": [true,false,null,{}], \"e\": \"\\u0000\\/\" }";
    assert_int_equal(rewrite(REQJSON_CHAT, body, &rw, out, err), 0);
    assert_string_equal(out, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi \\\"there\\\" \xC3\xA9\\n\",\"model\":"
                             "\"nested\"}],\"model\":\"gpt-4o-2024-08-06\",\"temperature\":0.1000,\"big\":1e400,"
                             "\"neg\":-0,\"n\":12345678901234567890123,\"x\":[true,false,null,{}],\"e\":\"\\u0000/\"}");
    /* the result inspects to the same thing but the model */
    reqjson_info_t a, b;
    assert_int_equal(inspect(REQJSON_CHAT, body, &a, err), 0);
    assert_int_equal(inspect(REQJSON_CHAT, out, &b, err), 0);
    assert_string_equal(b.model, "gpt-4o-2024-08-06");
    assert_int_equal(a.prompt_bytes, b.prompt_bytes);

    /* nothing to change: copied verbatim, whitespace included */
    reqjson_rewrite_t keep = {.model = "gpt-4o"};
    assert_int_equal(rewrite(REQJSON_CHAT, body, &keep, out, err), 0);
    assert_string_equal(out, body);
    reqjson_rewrite_t none = {0};
    assert_int_equal(rewrite(REQJSON_CHAT, body, &none, out, err), 0);
    assert_string_equal(out, body);
}

static void test_rewrite_include_usage(void **state)
{
    (void)state;
    char out[4096], err[256];
    reqjson_rewrite_t rw = {.include_usage = true};
    /* added */
    assert_int_equal(rewrite(REQJSON_CHAT, "{\"model\":\"m\",\"stream\":true}", &rw, out, err), 0);
    assert_string_equal(out, "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    /* merged into an existing object that comes before "stream" */
    assert_int_equal(
        rewrite(REQJSON_COMPLETIONS, "{\"stream_options\":{\"x\":1},\"model\":\"m\",\"stream\":true}", &rw, out, err),
        0);
    assert_string_equal(out, "{\"stream_options\":{\"x\":1,\"include_usage\":true},\"model\":\"m\",\"stream\":true}");
    /* replaced */
    assert_int_equal(rewrite(REQJSON_CHAT,
                             "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":false,\"y\":[1]}}",
                             &rw, out, err),
                     0);
    assert_string_equal(out, "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true,\"y\":[1]}}");
    assert_int_equal(rewrite(REQJSON_CHAT,
                             "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":null}}", &rw, out,
                             err),
                     0);
    assert_string_equal(out, "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    /* null object replaced */
    assert_int_equal(rewrite(REQJSON_CHAT, "{\"model\":\"m\",\"stream_options\":null,\"stream\":true}", &rw, out, err),
                     0);
    assert_string_equal(out, "{\"model\":\"m\",\"stream_options\":{\"include_usage\":true},\"stream\":true}");
    /* a nested stream_options is not the top-level one */
    assert_int_equal(
        rewrite(REQJSON_CHAT, "{\"model\":\"m\",\"x\":{\"stream_options\":{}},\"stream\":true}", &rw, out, err), 0);
    assert_string_equal(
        out,
        "{\"model\":\"m\",\"x\":{\"stream_options\":{}},\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    /* not streaming, embeddings, responses: untouched */
    const char *plain = "{\"model\":\"m\",\"stream\":false}";
    assert_int_equal(rewrite(REQJSON_CHAT, plain, &rw, out, err), 0);
    assert_string_equal(out, plain);
    const char *resp = "{\"model\":\"m\",\"stream\":true}";
    assert_int_equal(rewrite(REQJSON_RESPONSES, resp, &rw, out, err), 0);
    assert_string_equal(out, resp);
}

static void test_rewrite_store(void **state)
{
    (void)state;
    char out[4096], err[256];
    reqjson_rewrite_t rw = {.store_false_by_default = true};
    assert_int_equal(rewrite(REQJSON_RESPONSES, "{\"model\":\"m\",\"input\":\"x\"}", &rw, out, err), 0);
    assert_string_equal(out, "{\"model\":\"m\",\"input\":\"x\",\"store\":false}");
    assert_int_equal(rewrite(REQJSON_RESPONSES, "{\"model\":\"m\",\"store\":true}", &rw, out, err), 0);
    assert_string_equal(out, "{\"model\":\"m\",\"store\":true}");
    assert_int_equal(rewrite(REQJSON_RESPONSES, "{\"model\":\"m\",\"store\":false}", &rw, out, err), 0);
    assert_string_equal(out, "{\"model\":\"m\",\"store\":false}");
    assert_int_equal(rewrite(REQJSON_RESPONSES, "{\"store\":null,\"model\":\"m\"}", &rw, out, err), 0);
    assert_string_equal(out, "{\"store\":false,\"model\":\"m\"}");
    /* only for the Responses API */
    assert_int_equal(rewrite(REQJSON_CHAT, "{\"model\":\"m\"}", &rw, out, err), 0);
    assert_string_equal(out, "{\"model\":\"m\"}");
}

static void test_rewrite_default_max(void **state)
{
    (void)state;
    char out[4096], err[256];
    reqjson_rewrite_t rw = {.default_max_output_tokens = 4096};
    assert_int_equal(rewrite(REQJSON_CHAT, "{\"model\":\"m\"}", &rw, out, err), 0);
    assert_string_equal(out, "{\"model\":\"m\",\"max_tokens\":4096}");
    assert_int_equal(rewrite(REQJSON_COMPLETIONS, "{\"model\":\"m\",\"max_tokens\":null}", &rw, out, err), 0);
    assert_string_equal(out, "{\"model\":\"m\",\"max_tokens\":4096}");
    assert_int_equal(rewrite(REQJSON_RESPONSES, "{\"model\":\"m\"}", &rw, out, err), 0);
    assert_string_equal(out, "{\"model\":\"m\",\"max_output_tokens\":4096}");
    const char *given = "{\"model\":\"m\",\"max_completion_tokens\":10}";
    assert_int_equal(rewrite(REQJSON_CHAT, given, &rw, out, err), 0);
    assert_string_equal(out, given);
    assert_int_equal(rewrite(REQJSON_EMBEDDINGS, "{\"model\":\"m\"}", &rw, out, err), 0);
    assert_string_equal(out, "{\"model\":\"m\"}");
    /* everything at once, with a precomputed info */
    const char *body = "{\"model\":\"a\",\"stream\":true,\"messages\":[{\"model\":\"a\",\"content\":\"" CANARY "\"}]}";
    reqjson_info_t info;
    assert_int_equal(inspect(REQJSON_CHAT, body, &info, err), 0);
    reqjson_rewrite_t all = {.model = "b",
                             .include_usage = true,
                             .store_false_by_default = true,
                             .default_max_output_tokens = 7,
                             .info = &info};
    assert_int_equal(rewrite(REQJSON_CHAT, body, &all, out, err), 0);
    assert_string_equal(out, "{\"model\":\"b\",\"stream\":true,\"messages\":[{\"model\":\"a\",\"content\":\"" CANARY
                             "\"}],\"stream_options\":{\"include_usage\":true},\"max_tokens\":7}");
}

static void test_rewrite_bounded(void **state)
{
    (void)state;
    const char *body = "{\"model\":\"m\",\"messages\":[\"" CANARY CANARY CANARY "\"]}";
    wipe_buf_t buf = WIPE_BUF_INIT(20);
    char err[256];
    reqjson_rewrite_t rw = {.model = "other"};
    assert_int_equal(reqjson_rewrite(REQJSON_CHAT, (const uint8_t *)body, strlen(body), &rw, &buf, err, sizeof(err)),
                     -E2BIG);
    assert_string_equal(err, "rewritten body too large");
    wipe_buf_free(&buf);
    /* a tiny err buffer is still NUL-terminated */
    reqjson_info_t info;
    char small[8];
    assert_int_equal(reqjson_inspect(REQJSON_CHAT, (const uint8_t *)"{}", 2, &info, small, sizeof(small)), -EINVAL);
    assert_string_equal(small, "'model'");
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* Not a pass/fail test: prints the cost of inspect + rewrite of a ~1 KB chat body. */
static void test_throughput(void **state)
{
    (void)state;
    char body[2048];
    size_t n = (size_t)snprintf(body, sizeof(body),
                                "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"system\",\"content\":\"You are a "
                                "helpful assistant.\"},{\"role\":\"user\",\"content\":\"");
    for (; n < 1000; n++)
        body[n] = (char)('a' + n % 26);
    n += (size_t)snprintf(body + n, sizeof(body) - n, "\"}],\"stream\":true,\"temperature\":0.7,\"top_p\":1}");
    wipe_buf_t out = WIPE_BUF_INIT(1 << 20);
    char err[256];
    const int iters = 20000;
    double t0 = now_us();
    for (int i = 0; i < iters; i++) {
        reqjson_info_t info;
        assert_int_equal(reqjson_inspect(REQJSON_CHAT, (const uint8_t *)body, n, &info, err, sizeof(err)), 0);
        reqjson_rewrite_t rw = {.model = "gpt-4o-mini-2024-07-18", .include_usage = true, .info = &info};
        wipe_buf_reset(&out);
        assert_int_equal(reqjson_rewrite(REQJSON_CHAT, (const uint8_t *)body, n, &rw, &out, err, sizeof(err)), 0);
    }
    double t1 = now_us();
    print_message("inspect+rewrite of a %zu-byte body: %.2f us\n", n, (t1 - t0) / iters);
    wipe_buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inspect_fields),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_rewrite_model_and_numbers),
        cmocka_unit_test(test_rewrite_include_usage),
        cmocka_unit_test(test_rewrite_store),
        cmocka_unit_test(test_rewrite_default_max),
        cmocka_unit_test(test_rewrite_bounded),
        cmocka_unit_test(test_throughput),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
