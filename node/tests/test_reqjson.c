/* Unit tests for node/reqjson: inspection of every field and of the spans rewrite splices at,
 * the validation rules, byte-exact preservation on rewrite (checked on fixed cases and on
 * thousands of generated bodies against yajl_tree), and error messages that never quote the
 * body. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>
#include <yajl/yajl_tree.h>

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
    /* only the model's value changes: whitespace, escapes and number text stay as sent */
    assert_string_equal(
        out, "{ \"messages\": [{\"role\":\"user\",\"content\":\"hi \\\"there\\\" \\u00e9\\n\",\"model\":\"nested\"}],\n"
             "  \"model\": \"gpt-4o-2024-08-06\", \"temperature\": 0.1000, \"big\": 1e400, \"neg\": -0,"
             " \"n\": 12345678901234567890123, \"x\": [true,false,null,{}], \"e\": \"\\u0000\\/\" }");
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
    /* the bound is exact: '{"model":"other","max_tokens":5}' is 32 bytes, after what out holds */
    const char *small_body = "{\"model\":\"m\"}";
    reqjson_rewrite_t grow = {.model = "other", .default_max_output_tokens = 5};
    wipe_buf_t held = WIPE_BUF_INIT(34);
    assert_int_equal(wipe_buf_append(&held, "ab", 2), 0);
    assert_int_equal(
        reqjson_rewrite(REQJSON_CHAT, (const uint8_t *)small_body, strlen(small_body), &grow, &held, err, sizeof(err)),
        0);
    assert_int_equal(held.len, 34);
    assert_memory_equal(held.data, "ab{\"model\":\"other\",\"max_tokens\":5}", 34);
    wipe_buf_free(&held);
    wipe_buf_t tight = WIPE_BUF_INIT(33);
    assert_int_equal(wipe_buf_append(&tight, "ab", 2), 0);
    assert_int_equal(
        reqjson_rewrite(REQJSON_CHAT, (const uint8_t *)small_body, strlen(small_body), &grow, &tight, err, sizeof(err)),
        -E2BIG);
    assert_string_equal(err, "rewritten body too large");
    wipe_buf_free(&tight);
    /* a tiny err buffer is still NUL-terminated */
    reqjson_info_t info;
    char small[8];
    assert_int_equal(reqjson_inspect(REQJSON_CHAT, (const uint8_t *)"{}", 2, &info, small, sizeof(small)), -EINVAL);
    assert_string_equal(small, "'model'");
}

/* The spans rely on yajl_get_bytes_consumed() being, inside a callback, the offset just past
 * the token being reported (whitespace around it not included). Checked here on the installed
 * yajl, for every kind of token. */
typedef struct offsets_probe {
    yajl_handle parser;
    const char *body;
    int events;
    int bad;
} offsets_probe_t;

static void probe_token(offsets_probe_t *p, const char *token, size_t n)
{
    size_t end = yajl_get_bytes_consumed(p->parser);
    p->events++;
    if (end < n || memcmp(p->body + end - n, token, n) != 0)
        p->bad++;
}

static int probe_null(void *data)
{
    probe_token(data, "null", 4);
    return 1;
}

static int probe_boolean(void *data, int b)
{
    probe_token(data, b ? "true" : "false", b ? 4 : 5);
    return 1;
}

static int probe_number(void *data, const char *s, size_t n)
{
    probe_token(data, s, n);
    return 1;
}

static int probe_string(void *data, const unsigned char *s, size_t n)
{
    /* strings come decoded: check the closing quote and that the raw text holds them when
     * they have no escapes */
    offsets_probe_t *p = data;
    size_t end = yajl_get_bytes_consumed(p->parser);
    p->events++;
    if (end < n + 2 || p->body[end - 1] != '"')
        p->bad++;
    else if (memchr(s, '\\', n) == NULL && memchr(p->body + end - n - 2, '\\', n + 1) == NULL &&
             (p->body[end - n - 2] != '"' || memcmp(p->body + end - n - 1, s, n) != 0))
        p->bad++;
    return 1;
}

static int probe_start_map(void *data)
{
    probe_token(data, "{", 1);
    return 1;
}

static int probe_end_map(void *data)
{
    probe_token(data, "}", 1);
    return 1;
}

static int probe_start_array(void *data)
{
    probe_token(data, "[", 1);
    return 1;
}

static int probe_end_array(void *data)
{
    probe_token(data, "]", 1);
    return 1;
}

static void test_yajl_offsets(void **state)
{
    (void)state;
    static const yajl_callbacks probe_callbacks = {
        .yajl_null = probe_null,
        .yajl_boolean = probe_boolean,
        .yajl_number = probe_number,
        .yajl_string = probe_string,
        .yajl_start_map = probe_start_map,
        .yajl_map_key = probe_string,
        .yajl_end_map = probe_end_map,
        .yajl_start_array = probe_start_array,
        .yajl_end_array = probe_end_array,
    };
    const char *body = " {\n \"model\" : \"m\" ,\t\"a\":12 , \"b\" :-1.5e3,\"c\":[ true ,false,null , 0 ]\r\n,"
                       "\"d\" : { } , \"e\":\"x\\\"y\\u00e9\" ,\"f\":[],\"g\":{\"h\":[[1]]}, \"i\": 7}  ";
    offsets_probe_t p = {.body = body};
    p.parser = yajl_alloc(&probe_callbacks, NULL, &p);
    assert_non_null(p.parser);
    assert_int_equal(yajl_parse(p.parser, (const unsigned char *)body, strlen(body)), yajl_status_ok);
    assert_int_equal(yajl_complete_parse(p.parser), yajl_status_ok);
    yajl_free(p.parser);
    assert_int_equal(p.events, 34);
    assert_int_equal(p.bad, 0);
}

static void assert_span(const char *body, reqjson_span_t span, const char *text)
{
    if (text == NULL) {
        assert_int_equal(span.end, 0);
        return;
    }
    assert_int_equal(span.end - span.start, strlen(text));
    assert_memory_equal(body + span.start, text, strlen(text));
}

static void test_inspect_spans(void **state)
{
    (void)state;
    reqjson_info_t info;
    char err[256];
    const char *body = "\n{ \"max_tokens\" :\n null ,\"model\"\t:\t\"a\\u002db\" , \"stream_options\" : { \"x\" : [1] ,"
                       "\"include_usage\"  :  false } ,\"store\":true , \"max_completion_tokens\":5 }\n";
    assert_int_equal(inspect(REQJSON_CHAT, body, &info, err), 0);
    assert_string_equal(info.model, "a-b");
    assert_int_equal(info.spans.body_len, strlen(body));
    assert_span(body, info.spans.model, "\"a\\u002db\"");
    assert_span(body, info.spans.stream_options, "{ \"x\" : [1] ,\"include_usage\"  :  false }");
    assert_true(info.spans.stream_options_is_object);
    assert_false(info.spans.stream_options_empty);
    assert_span(body, info.spans.include_usage, "false");
    assert_span(body, info.spans.store, "true");
    assert_span(body, info.spans.max_output, "null"); /* chat adds max_tokens; max_completion_tokens is not it */
    assert_int_equal(info.spans.close, strlen(body) - 2);
    assert_true(info.spans.has_members);

    assert_int_equal(
        inspect(REQJSON_RESPONSES, "{\"stream_options\":{},\"model\":\"m\",\"max_output_tokens\":9}", &info, err), 0);
    assert_true(info.spans.stream_options_is_object);
    assert_true(info.spans.stream_options_empty);
    assert_span("{\"stream_options\":{},\"model\":\"m\",\"max_output_tokens\":9}", info.spans.max_output, "9");
    assert_span("", info.spans.include_usage, NULL);
    assert_span("", info.spans.store, NULL);

    const char *null_opts = "{\"model\":\"m\",\"stream_options\":null,\"store\":null}";
    assert_int_equal(inspect(REQJSON_EMBEDDINGS, null_opts, &info, err), 0);
    assert_false(info.spans.stream_options_is_object);
    assert_span(null_opts, info.spans.stream_options, "null");
    assert_span(null_opts, info.spans.store, "null");
    assert_span(null_opts, info.spans.max_output, NULL);
}

/* Rewrites body with rw both ways (with a precomputed info and without) and checks both give
 * want. */
static void expect_rewrite(reqjson_endpoint_t ep, const char *body, reqjson_rewrite_t rw, const char *want)
{
    char out[4096], out2[4096], err[256];
    reqjson_info_t info;
    assert_int_equal(inspect(ep, body, &info, err), 0);
    rw.info = &info;
    assert_int_equal(rewrite(ep, body, &rw, out, err), 0);
    rw.info = NULL;
    assert_int_equal(rewrite(ep, body, &rw, out2, err), 0);
    assert_string_equal(out, out2);
    assert_string_equal(out, want);
    /* valid JSON (a configured model may hold characters inspection would refuse) */
    char yerr[128];
    yajl_val tree = yajl_tree_parse(out, yerr, sizeof(yerr));
    assert_non_null(tree);
    yajl_tree_free(tree);
}

static void test_rewrite_whitespace(void **state)
{
    (void)state;
    reqjson_rewrite_t all = {.model = "x", .include_usage = true, .default_max_output_tokens = 100};
    /* spaces and newlines around ':' and ',' stay; the replaced values take their place */
    expect_rewrite(
        REQJSON_CHAT,
        "{\n  \"model\" :  \"m\" ,\n  \"stream\" : true ,\n  \"stream_options\" : { } ,\n"
        "  \"max_tokens\" : null\n}\n",
        all,
        "{\n  \"model\" :  \"x\" ,\n  \"stream\" : true ,\n  \"stream_options\" : { \"include_usage\":true} ,\n"
        "  \"max_tokens\" : 100\n}\n");
    /* added members go right before the top-level '}' */
    expect_rewrite(REQJSON_CHAT, "  {\r\n\t\"stream\":true,\t\"model\":\"m\"\r\n}\r\n", all,
                   "  {\r\n\t\"stream\":true,\t\"model\":\"x\"\r\n,\"stream_options\":{\"include_usage\":true},"
                   "\"max_tokens\":100}\r\n");
    /* stream_options with other members, with include_usage false or null, or null itself */
    expect_rewrite(
        REQJSON_COMPLETIONS, "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"a\":1 , \"b\" : [ ] }}", all,
        "{\"model\":\"x\",\"stream\":true,\"stream_options\":{\"a\":1 , \"b\" : [ ] ,\"include_usage\":true},"
        "\"max_tokens\":100}");
    expect_rewrite(REQJSON_CHAT,
                   "{\"model\":\"m\",\"stream\":true,\"stream_options\":{ \"include_usage\" : false , \"a\":{} }}", all,
                   "{\"model\":\"x\",\"stream\":true,\"stream_options\":{ \"include_usage\" : true , \"a\":{} },"
                   "\"max_tokens\":100}");
    expect_rewrite(
        REQJSON_CHAT, "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":\nnull\n}}", all,
        "{\"model\":\"x\",\"stream\":true,\"stream_options\":{\"include_usage\":\ntrue\n},\"max_tokens\":100}");
    expect_rewrite(REQJSON_CHAT, "{\"stream_options\" : null , \"model\":\"m\",\"stream\":true}", all,
                   "{\"stream_options\" : {\"include_usage\":true} , \"model\":\"x\",\"stream\":true,"
                   "\"max_tokens\":100}");
    /* include_usage already true: only the other edits */
    expect_rewrite(REQJSON_CHAT, "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}", all,
                   "{\"model\":\"x\",\"stream\":true,\"stream_options\":{\"include_usage\":true},\"max_tokens\":100}");
    /* store and max_output_tokens null are replaced in place */
    reqjson_rewrite_t resp = {.store_false_by_default = true, .default_max_output_tokens = 9223372036854775807};
    expect_rewrite(REQJSON_RESPONSES, "{ \"store\" :null, \"max_output_tokens\":  null ,\"model\":\"m\" }", resp,
                   "{ \"store\" :false, \"max_output_tokens\":  9223372036854775807 ,\"model\":\"m\" }");
    expect_rewrite(REQJSON_RESPONSES, "{\"model\":\"m\"}", resp,
                   "{\"model\":\"m\",\"store\":false,\"max_output_tokens\":9223372036854775807}");
    /* chat: a null max_completion_tokens stays; max_tokens is added */
    expect_rewrite(REQJSON_CHAT, "{\"model\":\"m\",\"max_completion_tokens\":null}", all,
                   "{\"model\":\"x\",\"max_completion_tokens\":null,\"max_tokens\":100}");
    expect_rewrite(REQJSON_CHAT, "{\"model\":\"m\",\"max_completion_tokens\":1}", all,
                   "{\"model\":\"x\",\"max_completion_tokens\":1}");
}

static void test_rewrite_model_escaped(void **state)
{
    (void)state;
    reqjson_rewrite_t rw = {.model = "a\"b\\c/\n\t\x01\x1f\x7f"
                                     "\xC3\xA9"};
    expect_rewrite(REQJSON_CHAT, "{\"model\" : \"m\"}", rw,
                   "{\"model\" : \"a\\\"b\\\\c/\\n\\t\\u0001\\u001f\x7f"
                   "\xC3\xA9\"}");
    /* the escaped form decodes back to the configured name */
    char out[4096], err[256];
    assert_int_equal(rewrite(REQJSON_CHAT, "{\"model\":\"m\"}", &rw, out, err), 0);
    char yerr[128];
    yajl_val tree = yajl_tree_parse(out, yerr, sizeof(yerr));
    assert_non_null(tree);
    const char *path[] = {"model", NULL};
    yajl_val model = yajl_tree_get(tree, path, yajl_t_string);
    assert_non_null(model);
    assert_string_equal(YAJL_GET_STRING(model), rw.model);
    yajl_tree_free(tree);
    /* an escaped client model equal to the configured one is kept as sent */
    reqjson_rewrite_t same = {.model = "a/b", .default_max_output_tokens = 1};
    expect_rewrite(REQJSON_CHAT, "{\"model\":\"a\\/b\"}", same, "{\"model\":\"a\\/b\",\"max_tokens\":1}");
    /* the configured model must be valid UTF-8 */
    reqjson_rewrite_t bad = {.model = "a\xff"};
    assert_int_equal(rewrite(REQJSON_CHAT, "{\"model\":\"m\"}", &bad, out, err), -EINVAL);
    assert_string_equal(err, "invalid UTF-8 in the configured model");
}

static void test_rewrite_unicode_kept(void **state)
{
    (void)state;
    reqjson_rewrite_t rw = {.model = "\xE6\xA8\xA1\xE5\x9E\x8B", .include_usage = true, .default_max_output_tokens = 5};
    /* raw UTF-8, \u escapes and surrogate pairs elsewhere are copied byte for byte */
    expect_rewrite(REQJSON_CHAT,
                   "{\"messages\":[{\"content\":\"caf\xC3\xA9 \\u00e9 \\ud83d\\ude00 \xF0\x9F\x98\x80\"}],"
                   "\"\xC3\xA9\":\"\\u2028\",\"model\":\"caf\xC3\xA9\",\"stream\":true}",
                   rw,
                   "{\"messages\":[{\"content\":\"caf\xC3\xA9 \\u00e9 \\ud83d\\ude00 \xF0\x9F\x98\x80\"}],"
                   "\"\xC3\xA9\":\"\\u2028\",\"model\":\"\xE6\xA8\xA1\xE5\x9E\x8B\",\"stream\":true,"
                   "\"stream_options\":{\"include_usage\":true},\"max_tokens\":5}");
}

static void test_rewrite_several_edits(void **state)
{
    (void)state;
    /* edits in an order other than the one they are made in */
    reqjson_rewrite_t rw = {.model = "new", .include_usage = true, .default_max_output_tokens = 64};
    expect_rewrite(
        REQJSON_COMPLETIONS,
        "{\"max_tokens\":null,\"stream_options\":{\"include_usage\":null},\"stream\":true,\"model\":\"old\"}", rw,
        "{\"max_tokens\":64,\"stream_options\":{\"include_usage\":true},\"stream\":true,\"model\":\"new\"}");
    reqjson_rewrite_t resp = {.model = "r", .store_false_by_default = true, .default_max_output_tokens = 3};
    expect_rewrite(REQJSON_RESPONSES, "{\"store\":null,\"input\":\"x\",\"model\":\"q\"}", resp,
                   "{\"store\":false,\"input\":\"x\",\"model\":\"r\",\"max_output_tokens\":3}");
    /* nothing to change: the body as is, even with odd whitespace */
    const char *body = " {\"model\" :\"m\"\t}\n";
    expect_rewrite(REQJSON_RESPONSES, body, (reqjson_rewrite_t){.model = "m"}, body);

    /* an info that does not fit the body is not trusted: the body is inspected again */
    char out[4096], err[256];
    reqjson_info_t other;
    assert_int_equal(inspect(REQJSON_CHAT, "{\"model\":\"longer-name\",\"stream\":true}", &other, err), 0);
    reqjson_rewrite_t wrong = {.model = "z", .info = &other};
    assert_int_equal(rewrite(REQJSON_CHAT, "{\"model\":\"m\"}", &wrong, out, err), 0);
    assert_string_equal(out, "{\"model\":\"z\"}");
    reqjson_info_t failed;
    assert_int_equal(inspect(REQJSON_CHAT, "{\"model\":\"m\",\"x\":}", &failed, err), -EINVAL);
    wrong.info = &failed;
    assert_int_equal(rewrite(REQJSON_CHAT, "{\"model\":\"m\",\"x\":}", &wrong, out, err), -EINVAL);
    assert_string_equal(out, "");
}

/* Property test: generated bodies (random members, values, key order and whitespace) are
 * rewritten with random settings; the result, parsed with yajl_tree, must equal an expected
 * body built independently (member by member, with the relay's edits) — same members in the
 * same order, same values, numbers by their text — and rewriting with and without a
 * precomputed info must give the same bytes. */
typedef struct text {
    char data[16384];
    size_t len;
} text_t;

static uint32_t rng_state;

static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state % n;
}

static void put(text_t *t, const char *s)
{
    size_t n = strlen(s);
    assert_true(t->len + n < sizeof(t->data));
    memcpy(t->data + t->len, s, n);
    t->len += n;
    t->data[t->len] = 0;
}

static void text_reset(text_t *t)
{
    t->len = 0;
    t->data[0] = 0;
}

static void put_ws(text_t *t)
{
    static const char *const ws[] = {"", "", "", " ", "\n", "\t", "\r\n", "  \n  "};
    put(t, ws[rnd(8)]);
}

/* The same whitespace into both texts. */
static void put_ws2(text_t *t, text_t *same)
{
    size_t from = t->len;
    put_ws(t);
    put(same, t->data + from);
}

static void put_string(text_t *t)
{
    static const char *const pieces[] = {"a",
                                         "hello",
                                         " ",
                                         "\\\"",
                                         "\\\\",
                                         "\\/",
                                         "\\n",
                                         "\\t",
                                         "\\u00e9",
                                         "\\ud83d\\ude00",
                                         "\xC3\xA9",
                                         "\xF0\x9F\x98\x80",
                                         "\xE2\x80\xA8",
                                         "{",
                                         "}",
                                         ":",
                                         ",",
                                         "[",
                                         CANARY};
    put(t, "\"");
    for (uint32_t i = rnd(6); i > 0; i--)
        put(t, pieces[rnd(sizeof(pieces) / sizeof(pieces[0]))]);
    put(t, "\"");
}

static void put_value(text_t *t, int depth)
{
    static const char *const scalars[] = {
        "true", "false", "null", "0", "-0", "12", "1.50", "1e5", "-2.5E-3", "12345678901234567890123", "0.1000"};
    uint32_t kind = rnd(depth >= 3 ? 2 : 4);
    if (kind == 0) {
        put(t, scalars[rnd(sizeof(scalars) / sizeof(scalars[0]))]);
    } else if (kind == 1) {
        put_string(t);
    } else if (kind == 2) {
        put(t, "[");
        for (uint32_t i = 0, n = rnd(4); i < n; i++) {
            put_ws(t);
            if (i > 0) {
                put(t, ",");
                put_ws(t);
            }
            put_value(t, depth + 1);
        }
        put_ws(t);
        put(t, "]");
    } else {
        put(t, "{");
        for (uint32_t i = 0, n = rnd(4); i < n; i++) {
            put_ws(t);
            if (i > 0) {
                put(t, ",");
                put_ws(t);
            }
            /* nested objects may use the relay's key names: they are content */
            static const char *const keys[] = {"\"model\"", "\"stream_options\"", "\"k\"", "\"include_usage\""};
            put(t, keys[rnd(4)]);
            put_ws(t);
            put(t, ":");
            put_ws(t);
            put_value(t, depth + 1);
        }
        put_ws(t);
        put(t, "}");
    }
}

typedef struct gen_member {
    char key[32];        /* JSON text */
    char value[4096];    /* JSON text as sent */
    char expected[4096]; /* JSON text after the relay's edits, compact */
    char exact[4096];    /* the rewritten value's exact text: as sent but for the edits */
} gen_member_t;

static void json_encode(const char *s, text_t *t)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    assert_non_null(g);
    assert_int_equal(yajl_gen_string(g, (const unsigned char *)s, strlen(s)), yajl_gen_status_ok);
    const unsigned char *buf;
    size_t n;
    yajl_gen_get_buf(g, &buf, &n);
    assert_true(n < sizeof(t->data));
    memcpy(t->data, buf, n);
    t->data[n] = 0;
    t->len = n;
    yajl_gen_free(g);
}

static bool tree_equal(yajl_val a, yajl_val b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case yajl_t_string:
        return strcmp(a->u.string, b->u.string) == 0;
    case yajl_t_number:
        return strcmp(a->u.number.r, b->u.number.r) == 0;
    case yajl_t_object:
        if (a->u.object.len != b->u.object.len)
            return false;
        for (size_t i = 0; i < a->u.object.len; i++)
            if (strcmp(a->u.object.keys[i], b->u.object.keys[i]) != 0 ||
                !tree_equal(a->u.object.values[i], b->u.object.values[i]))
                return false;
        return true;
    case yajl_t_array:
        if (a->u.array.len != b->u.array.len)
            return false;
        for (size_t i = 0; i < a->u.array.len; i++)
            if (!tree_equal(a->u.array.values[i], b->u.array.values[i]))
                return false;
        return true;
    default:
        return true;
    }
}

/* One generated case; returns the number of edits expected (0: the body must come back as is). */
static int property_case(uint32_t seed, wipe_buf_t *out, wipe_buf_t *out2)
{
    rng_state = seed * 2654435761u + 1;
    static const reqjson_endpoint_t eps[] = {REQJSON_CHAT, REQJSON_COMPLETIONS, REQJSON_EMBEDDINGS, REQJSON_RESPONSES};
    reqjson_endpoint_t ep = eps[rnd(4)];
    static gen_member_t members[16];
    size_t n_members = 0;

    /* the client's model: plain, or with escapes that decode to plain characters */
    static const char *const models[][2] = {{"\"gpt-4o\"", "gpt-4o"},
                                            {"\"gpt\\u002d4o\"", "gpt-4o"},
                                            {"\"a\\/b\"", "a/b"},
                                            {"\"caf\xC3\xA9\"", "caf\xC3\xA9"},
                                            {"\"m\"", "m"}};
    uint32_t model_pick = rnd(5);
    const char *client_model = models[model_pick][1];
    static const char *const new_models[] = {"gpt-4o", "a/b", "other", "q\"uo\\te", "\xE6\xA8\xA1"};
    reqjson_rewrite_t rw = {0};
    if (rnd(4) != 0)
        rw.model = new_models[rnd(5)];
    rw.include_usage = rnd(2);
    rw.store_false_by_default = rnd(2);
    rw.default_max_output_tokens = rnd(3) == 0 ? 0 : 1 + (int64_t)rnd(100000);
    bool is_chat_like = ep == REQJSON_CHAT || ep == REQJSON_COMPLETIONS;
    const char *max_key = ep == REQJSON_RESPONSES ? "max_output_tokens" : "max_tokens";

    /* the relay's fields, each maybe absent */
    int stream = rnd(4); /* 0 absent, 1 true, 2 false, 3 null */
    int opts = rnd(4);   /* 0 absent, 1 null, 2 object with include_usage, 3 object without */
    int usage = rnd(3);  /* include_usage in the object: 0 true, 1 false, 2 null */
    int store = rnd(4);  /* 0 absent, 1 true, 2 false, 3 null */
    int maxes[3];        /* max_tokens, max_completion_tokens, max_output_tokens: 0 absent, 1 null, 2 number */
    for (int i = 0; i < 3; i++)
        maxes[i] = rnd(3);
    bool stream_true = stream == 1;
    bool force_usage = rw.include_usage && stream_true && is_chat_like && !(opts == 2 && usage == 0);
    bool client_max = false;
    if (ep == REQJSON_CHAT)
        client_max = maxes[0] == 2 || maxes[1] == 2;
    else if (ep == REQJSON_COMPLETIONS)
        client_max = maxes[0] == 2;
    else if (ep == REQJSON_RESPONSES)
        client_max = maxes[2] == 2;
    bool add_max = rw.default_max_output_tokens > 0 && !client_max && ep != REQJSON_EMBEDDINGS;
    bool add_store = rw.store_false_by_default && ep == REQJSON_RESPONSES && (store == 0 || store == 3);
    bool new_model = rw.model != NULL && strcmp(rw.model, client_model) != 0;
    int edits = new_model + force_usage + add_store + add_max;
    char max_text[24];
    snprintf(max_text, sizeof(max_text), "%lld", (long long)rw.default_max_output_tokens);

    gen_member_t *m = &members[n_members++];
    strcpy(m->key, "\"model\"");
    strcpy(m->value, models[model_pick][0]);
    if (new_model) {
        text_t enc;
        json_encode(rw.model, &enc);
        strcpy(m->expected, enc.data);
    } else {
        strcpy(m->expected, m->value);
    }
    if (stream != 0) {
        m = &members[n_members++];
        strcpy(m->key, "\"stream\"");
        strcpy(m->value, stream == 1 ? "true" : stream == 2 ? "false" : "null");
        strcpy(m->expected, m->value);
    }
    bool opts_added = false;
    if (opts != 0) {
        m = &members[n_members++];
        strcpy(m->key, "\"stream_options\"");
        if (opts == 1) {
            strcpy(m->value, "null");
            strcpy(m->expected, force_usage ? "{\"include_usage\":true}" : "null");
        } else {
            /* other members around include_usage; the expected text is rebuilt compact */
            static text_t v, e, x;
            text_reset(&v);
            text_reset(&e);
            text_reset(&x);
            put(&v, "{");
            put(&e, "{");
            put(&x, "{");
            uint32_t n_other = rnd(3), usage_at = opts == 2 ? rnd(n_other + 1) : 99;
            bool first = true;
            for (uint32_t i = 0; i <= n_other; i++) {
                static text_t item, item_expected;
                text_reset(&item);
                text_reset(&item_expected);
                if (i == usage_at) {
                    static const char *const usages[] = {"true", "false", "null"};
                    put(&item, "\"include_usage\":");
                    put(&item, usages[usage]);
                    put(&item_expected, "\"include_usage\":");
                    put(&item_expected, force_usage ? "true" : usages[usage]);
                } else if (i < n_other) {
                    char key[16];
                    snprintf(key, sizeof(key), "\"o%u\":", i);
                    put(&item, key);
                    put_value(&item, 2);
                    put(&item_expected, item.data);
                } else {
                    continue;
                }
                put_ws2(&v, &x);
                if (!first) {
                    put(&v, ",");
                    put(&e, ",");
                    put(&x, ",");
                    put_ws2(&v, &x);
                }
                first = false;
                put(&v, item.data);
                put(&e, item_expected.data);
                put(&x, item_expected.data);
            }
            put_ws2(&v, &x);
            if (force_usage && opts == 3) {
                put(&e, first ? "\"include_usage\":true" : ",\"include_usage\":true");
                put(&x, first ? "\"include_usage\":true" : ",\"include_usage\":true");
            }
            put(&v, "}");
            put(&e, "}");
            put(&x, "}");
            strcpy(m->value, v.data);
            strcpy(m->expected, e.data);
            strcpy(m->exact, x.data);
        }
    } else if (force_usage) {
        opts_added = true;
    }
    if (store != 0) {
        m = &members[n_members++];
        strcpy(m->key, "\"store\"");
        strcpy(m->value, store == 1 ? "true" : store == 2 ? "false" : "null");
        strcpy(m->expected, add_store ? "false" : m->value);
    }
    static const char *const max_names[] = {"max_tokens", "max_completion_tokens", "max_output_tokens"};
    bool max_replaced = false;
    for (int i = 0; i < 3; i++) {
        if (maxes[i] == 0)
            continue;
        m = &members[n_members++];
        snprintf(m->key, sizeof(m->key), "\"%s\"", max_names[i]);
        snprintf(m->value, sizeof(m->value), "%s", maxes[i] == 1 ? "null" : i == 0 ? "70" : "4000");
        strcpy(m->expected, m->value);
        if (add_max && maxes[i] == 1 && strcmp(max_names[i], max_key) == 0) {
            strcpy(m->expected, max_text);
            max_replaced = true;
        }
    }
    for (uint32_t i = rnd(5); i > 0; i--) {
        m = &members[n_members++];
        snprintf(m->key, sizeof(m->key), "\"k%u\"", i);
        text_t v = {.len = 0};
        put_value(&v, 1);
        strcpy(m->value, v.data);
        strcpy(m->expected, m->value);
    }
    /* scalars are replaced whole: exact is expected (a stream_options object has its own) */
    for (size_t i = 0; i < n_members; i++)
        if (strcmp(members[i].key, "\"stream_options\"") != 0 || opts < 2)
            strcpy(members[i].exact, members[i].expected);
    /* shuffle the key order */
    for (size_t i = n_members; i > 1; i--) {
        size_t j = rnd((uint32_t)i);
        gen_member_t tmp = members[i - 1];
        members[i - 1] = members[j];
        members[j] = tmp;
    }

    static text_t body, expected, exact, tail;
    text_reset(&body);
    text_reset(&expected);
    text_reset(&exact);
    text_reset(&tail);
    put_ws2(&body, &exact);
    put(&body, "{");
    put(&expected, "{");
    put(&exact, "{");
    for (size_t i = 0; i < n_members; i++) {
        put_ws2(&body, &exact);
        if (i > 0) {
            put(&body, ",");
            put(&expected, ",");
            put(&exact, ",");
            put_ws2(&body, &exact);
        }
        put(&body, members[i].key);
        put(&exact, members[i].key);
        put_ws2(&body, &exact);
        put(&body, ":");
        put(&exact, ":");
        put_ws2(&body, &exact);
        put(&body, members[i].value);
        put(&expected, members[i].key);
        put(&expected, ":");
        put(&expected, members[i].expected);
        put(&exact, members[i].exact);
    }
    if (opts_added)
        put(&tail, ",\"stream_options\":{\"include_usage\":true}");
    if (add_store && store == 0)
        put(&tail, ",\"store\":false");
    if (add_max && !max_replaced) {
        put(&tail, ",\"");
        put(&tail, max_key);
        put(&tail, "\":");
        put(&tail, max_text);
    }
    put(&expected, tail.data);
    put(&expected, "}");
    /* added members go just before the top-level '}' */
    put_ws2(&body, &exact);
    put(&exact, tail.data);
    put(&body, "}");
    put(&exact, "}");
    put_ws2(&body, &exact);

    /* inspect, rewrite with and without the info */
    char err[256];
    reqjson_info_t info;
    int r = reqjson_inspect(ep, (const uint8_t *)body.data, body.len, &info, err, sizeof(err));
    if (r != 0)
        fail_msg("seed %u: inspect failed: %s\n%s", seed, err, body.data);
    rw.info = &info;
    wipe_buf_reset(out);
    wipe_buf_reset(out2);
    assert_int_equal(reqjson_rewrite(ep, (const uint8_t *)body.data, body.len, &rw, out, err, sizeof(err)), 0);
    rw.info = NULL;
    assert_int_equal(reqjson_rewrite(ep, (const uint8_t *)body.data, body.len, &rw, out2, err, sizeof(err)), 0);
    assert_int_equal(out->len, out2->len);
    assert_memory_equal(out->data, out2->data, out->len);
    if (edits == 0)
        assert_string_equal(exact.data, body.data);
    /* byte for byte as sent but for the edits */
    if (out->len != exact.len || memcmp(out->data, exact.data, exact.len) != 0)
        fail_msg("seed %u: ep %d\nbody:  %s\ngot:   %.*s\nexact: %s", seed, (int)ep, body.data, (int)out->len,
                 (const char *)out->data, exact.data);

    /* same tree as the expected body */
    static char got[sizeof(body.data) + 256];
    assert_true(out->len < sizeof(got));
    memcpy(got, out->data, out->len);
    got[out->len] = 0;
    char yerr[256];
    yajl_val got_tree = yajl_tree_parse(got, yerr, sizeof(yerr));
    yajl_val want_tree = yajl_tree_parse(expected.data, yerr, sizeof(yerr));
    if (got_tree == NULL || want_tree == NULL || !tree_equal(got_tree, want_tree))
        fail_msg("seed %u: ep %d\nbody: %s\ngot:  %s\nwant: %s", seed, (int)ep, body.data, got, expected.data);
    yajl_tree_free(got_tree);
    yajl_tree_free(want_tree);

    /* and the relay's own reading of the result */
    reqjson_info_t after;
    assert_int_equal(reqjson_inspect(ep, (const uint8_t *)got, out->len, &after, err, sizeof(err)), 0);
    assert_string_equal(after.model, new_model ? rw.model : client_model);
    assert_int_equal(after.prompt_bytes, info.prompt_bytes);
    if (force_usage)
        assert_int_equal(after.include_usage, 1);
    if (add_store)
        assert_int_equal(after.store, 0);
    if (add_max)
        assert_int_equal(after.max_output_tokens, rw.default_max_output_tokens);
    return edits;
}

static void test_rewrite_property(void **state)
{
    (void)state;
    wipe_buf_t out = WIPE_BUF_INIT(1 << 20), out2 = WIPE_BUF_INIT(1 << 20);
    int with_edits = 0;
    const uint32_t cases = 5000;
    for (uint32_t seed = 1; seed <= cases; seed++)
        with_edits += property_case(seed, &out, &out2) > 0;
    /* the generator reaches both kinds */
    assert_true(with_edits > (int)cases / 4 && with_edits < (int)cases);
    wipe_buf_free(&out);
    wipe_buf_free(&out2);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* Not a pass/fail test: prints the cost of inspect alone and of inspect + rewrite of a ~1 KB
 * chat body (best of several rounds, so a busy machine disturbs it less). */
static double bench_round(const char *body, size_t n, const reqjson_rewrite_t *tmpl, wipe_buf_t *out, int iters)
{
    char err[256];
    double t0 = now_us();
    for (int i = 0; i < iters; i++) {
        reqjson_info_t info;
        assert_int_equal(reqjson_inspect(REQJSON_CHAT, (const uint8_t *)body, n, &info, err, sizeof(err)), 0);
        if (tmpl == NULL)
            continue;
        reqjson_rewrite_t rw = *tmpl;
        rw.info = &info;
        wipe_buf_reset(out);
        assert_int_equal(reqjson_rewrite(REQJSON_CHAT, (const uint8_t *)body, n, &rw, out, err, sizeof(err)), 0);
    }
    return (now_us() - t0) / iters;
}

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
    const reqjson_rewrite_t add_max = {.model = "gpt-4o-mini", .default_max_output_tokens = 4096};
    const reqjson_rewrite_t all = {
        .model = "gpt-4o-mini-2024-07-18", .include_usage = true, .default_max_output_tokens = 4096};
    double best[3] = {1e9, 1e9, 1e9};
    for (int round = 0; round < 5; round++) {
        double t = bench_round(body, n, NULL, &out, 20000);
        best[0] = t < best[0] ? t : best[0];
        t = bench_round(body, n, &add_max, &out, 20000);
        best[1] = t < best[1] ? t : best[1];
        t = bench_round(body, n, &all, &out, 20000);
        best[2] = t < best[2] ? t : best[2];
    }
    print_message("%zu-byte chat body: inspect %.2f us; inspect+rewrite adding max_tokens %.2f us (rewrite %.2f us); "
                  "with model and include_usage too %.2f us\n",
                  n, best[0], best[1], best[1] - best[0], best[2]);
    wipe_buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inspect_fields),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_yajl_offsets),
        cmocka_unit_test(test_inspect_spans),
        cmocka_unit_test(test_rewrite_model_and_numbers),
        cmocka_unit_test(test_rewrite_include_usage),
        cmocka_unit_test(test_rewrite_store),
        cmocka_unit_test(test_rewrite_default_max),
        cmocka_unit_test(test_rewrite_whitespace),
        cmocka_unit_test(test_rewrite_model_escaped),
        cmocka_unit_test(test_rewrite_unicode_kept),
        cmocka_unit_test(test_rewrite_several_edits),
        cmocka_unit_test(test_rewrite_bounded),
        cmocka_unit_test(test_rewrite_property),
        cmocka_unit_test(test_throughput),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
