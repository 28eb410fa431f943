/* Unit tests for node/xlate_req: every pair of the three chat formats on a full conversation
 * (system prompt, multi-turn history, URL and base64 images, sampling options, stop sequences,
 * tools, tool choice, an assistant tool call and its result), each output parsed back with
 * yajl_tree; the same-format normalising copy; every documented refusal (400 naming its field);
 * malformed bodies; and error messages that never quote the body (a canary string). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <yajl/yajl_tree.h>

#include "node/xlate_req.h"

#define CANARY "CANARY7f3a"

enum { O = XLATE_OPENAI_CHAT, A = XLATE_ANTHROPIC, G = XLATE_GEMINI };

/* Translates body; on success parses the output into *tree (caller frees). Every error message is
 * checked for the canary. */
static int run_full(int from, int to, const char *body, size_t len, int64_t force, int64_t dflt, bool stream,
                    yajl_val *tree, xlate_req_info_t *info, char *err)
{
    wipe_buf_t out = WIPE_BUF_INIT(1 << 20);
    err[0] = 'x';
    int r = xlate_request((xlate_format_t)from, (xlate_format_t)to, (const uint8_t *)body, len, "up-model", force, dflt,
                          stream, &out, info, err, 256);
    assert_null(strstr(err, CANARY));
    assert_true(strlen(err) < 256);
    if (tree != NULL)
        *tree = NULL;
    if (r == 0) {
        assert_string_equal(err, "");
        char *text = malloc(out.len + 1);
        assert_non_null(text);
        memcpy(text, out.data, out.len);
        text[out.len] = 0;
        char perr[128];
        yajl_val t = yajl_tree_parse(text, perr, sizeof perr);
        if (t == NULL)
            fail_msg("output is not JSON: %s", perr);
        assert_true(YAJL_IS_OBJECT(t));
        if (tree != NULL)
            *tree = t;
        else
            yajl_tree_free(t);
        free(text);
    } else {
        assert_true(err[0] != 0);
    }
    wipe_buf_free(&out);
    return r;
}

static int run(int from, int to, const char *body, yajl_val *tree, char *err)
{
    return run_full(from, to, body, strlen(body), 0, 0, false, tree, NULL, err);
}

/* The node at a dotted path; a purely numeric segment indexes an array. NULL when absent. */
static yajl_val jget(yajl_val v, const char *path)
{
    char seg[128];
    const char *p = path;
    while (v != NULL && *p != 0) {
        size_t n = strcspn(p, ".");
        assert_true(n < sizeof seg);
        memcpy(seg, p, n);
        seg[n] = 0;
        p += n;
        if (*p == '.')
            p++;
        if (YAJL_IS_ARRAY(v) && strspn(seg, "0123456789") == n) {
            size_t i = (size_t)strtoul(seg, NULL, 10);
            v = i < v->u.array.len ? v->u.array.values[i] : NULL;
        } else if (YAJL_IS_OBJECT(v)) {
            yajl_val found = NULL;
            for (size_t i = 0; i < v->u.object.len; i++)
                if (strcmp(v->u.object.keys[i], seg) == 0)
                    found = v->u.object.values[i];
            v = found;
        } else {
            v = NULL;
        }
    }
    return v;
}

static const char *jstr(yajl_val v, const char *path)
{
    yajl_val s = jget(v, path);
    if (s == NULL || !YAJL_IS_STRING(s))
        fail_msg("no string at %s", path);
    return s->u.string;
}

static double jnum(yajl_val v, const char *path)
{
    yajl_val s = jget(v, path);
    if (s == NULL || !YAJL_IS_NUMBER(s))
        fail_msg("no number at %s", path);
    return YAJL_GET_DOUBLE(s);
}

static size_t jlen(yajl_val v, const char *path)
{
    yajl_val s = jget(v, path);
    if (s == NULL)
        fail_msg("nothing at %s", path);
    if (YAJL_IS_ARRAY(s))
        return s->u.array.len;
    if (YAJL_IS_OBJECT(s))
        return s->u.object.len;
    fail_msg("not a container at %s", path);
    return 0;
}

#define assert_str(tree, path, want) assert_string_equal(jstr(tree, path), want)
#define assert_num(tree, path, want) assert_true(jnum(tree, path) == (want))
#define assert_absent(tree, path) assert_null(jget(tree, path))

/* ---- the three full conversations ------------------------------------------------------------- */

static const char openai_full[] =
    "{\"model\":\"gpt-4o\",\"messages\":["
    "{\"role\":\"system\",\"content\":\"be brief " CANARY "\"},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"look\"},"
    "{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://ex.com/a.png\",\"detail\":\"high\"}},"
    "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/jpeg;base64,QUJD\"}}]},"
    "{\"role\":\"assistant\",\"content\":\"a cat\"},"
    "{\"role\":\"user\",\"content\":\"weather?\"},"
    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_9\",\"type\":\"function\","
    "\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}}]},"
    "{\"role\":\"tool\",\"tool_call_id\":\"call_9\",\"content\":\"sunny\"}],"
    "\"temperature\":0.5,\"top_p\":0.9,\"max_tokens\":100,\"max_completion_tokens\":120,\"stop\":[\"END\",\"STOP\"],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"w\","
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}}],"
    "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}},\"stream\":true,"
    "\"user\":\"u-1\"}";

static const char anthropic_full[] =
    "{\"model\":\"claude-x\",\"max_tokens\":200,\"system\":[{\"type\":\"text\",\"text\":\"be brief\"}],"
    "\"messages\":["
    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"look\"},"
    "{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"https://ex.com/b.JPG?x=1\"}},"
    "{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/png\",\"data\":\"QUJD\"}}]},"
    "{\"role\":\"assistant\",\"content\":\"a cat\"},"
    "{\"role\":\"user\",\"content\":\"weather?\"},"
    "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"checking\"},"
    "{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{\"city\":\"Paris\"}}]},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_1\",\"content\":\"sunny\"},"
    "{\"type\":\"text\",\"text\":\"thanks\",\"cache_control\":{\"type\":\"ephemeral\"}}]}],"
    "\"temperature\":0.3,\"top_p\":0.8,\"stop_sequences\":[\"END\"],"
    "\"tools\":[{\"name\":\"get_weather\",\"description\":\"w\","
    "\"input_schema\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}],"
    "\"tool_choice\":{\"type\":\"any\"},\"metadata\":{\"user_id\":\"u-2\"}}";

static const char gemini_full[] =
    "{\"systemInstruction\":{\"parts\":[{\"text\":\"be brief\"}]},"
    "\"contents\":["
    "{\"role\":\"user\",\"parts\":[{\"text\":\"look\"},"
    "{\"fileData\":{\"mimeType\":\"image/png\",\"fileUri\":\"https://ex.com/c.png\"}},"
    "{\"inline_data\":{\"mime_type\":\"image/webp\",\"data\":\"QUJD\"}}]},"
    "{\"role\":\"model\",\"parts\":[{\"text\":\"a cat\"}]},"
    "{\"role\":\"user\",\"parts\":[{\"text\":\"weather?\"}]},"
    "{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"name\":\"get_weather\",\"args\":{\"city\":\"Paris\"}}}]},"
    "{\"role\":\"user\",\"parts\":[{\"functionResponse\":{\"name\":\"get_weather\",\"response\":{\"content\":"
    "\"sunny\"}}}]}],"
    "\"generationConfig\":{\"temperature\":0.7,\"topP\":0.95,\"maxOutputTokens\":300,\"stopSequences\":[\"END\"]},"
    "\"tools\":[{\"functionDeclarations\":[{\"name\":\"get_weather\",\"description\":\"w\","
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}]}],"
    "\"toolConfig\":{\"functionCallingConfig\":{\"mode\":\"AUTO\"}}}";

static void test_openai_to_anthropic(void **state)
{
    (void)state;
    char err[256];
    yajl_val t;
    xlate_req_info_t info;
    assert_int_equal(run_full(O, A, openai_full, strlen(openai_full), 0, 0, false, &t, &info, err), 0);
    assert_string_equal(info.model, "gpt-4o");
    assert_true(info.stream);
    assert_int_equal(info.max_output_tokens, 120);
    assert_true(info.has_images);
    assert_true(info.prompt_bytes > 0);
    assert_str(t, "model", "up-model");
    assert_num(t, "max_tokens", 120);
    assert_true(YAJL_IS_TRUE(jget(t, "stream")));
    assert_absent(t, "stream_options");
    assert_str(t, "system.0.type", "text");
    assert_str(t, "system.0.text", "be brief " CANARY);
    assert_int_equal(jlen(t, "messages"), 5);
    assert_str(t, "messages.0.role", "user");
    assert_str(t, "messages.0.content.0.text", "look");
    assert_str(t, "messages.0.content.1.type", "image");
    assert_str(t, "messages.0.content.1.source.type", "url");
    assert_str(t, "messages.0.content.1.source.url", "https://ex.com/a.png");
    assert_str(t, "messages.0.content.2.source.type", "base64");
    assert_str(t, "messages.0.content.2.source.media_type", "image/jpeg");
    assert_str(t, "messages.0.content.2.source.data", "QUJD");
    assert_str(t, "messages.1.role", "assistant");
    assert_str(t, "messages.1.content.0.text", "a cat");
    assert_str(t, "messages.2.content.0.text", "weather?");
    assert_str(t, "messages.3.role", "assistant");
    assert_int_equal(jlen(t, "messages.3.content"), 1);
    assert_str(t, "messages.3.content.0.type", "tool_use");
    assert_str(t, "messages.3.content.0.id", "call_9");
    assert_str(t, "messages.3.content.0.name", "get_weather");
    assert_str(t, "messages.3.content.0.input.city", "Paris");
    assert_str(t, "messages.4.role", "user");
    assert_str(t, "messages.4.content.0.type", "tool_result");
    assert_str(t, "messages.4.content.0.tool_use_id", "call_9");
    assert_str(t, "messages.4.content.0.content", "sunny");
    assert_num(t, "temperature", 0.5);
    assert_num(t, "top_p", 0.9);
    assert_str(t, "stop_sequences.0", "END");
    assert_str(t, "stop_sequences.1", "STOP");
    assert_str(t, "tools.0.name", "get_weather");
    assert_str(t, "tools.0.description", "w");
    assert_str(t, "tools.0.input_schema.properties.city.type", "string");
    assert_str(t, "tool_choice.type", "tool");
    assert_str(t, "tool_choice.name", "get_weather");
    assert_str(t, "metadata.user_id", "u-1");
    yajl_tree_free(t);
}

static void test_openai_to_gemini(void **state)
{
    (void)state;
    char err[256];
    yajl_val t;
    xlate_req_info_t info;
    assert_int_equal(run_full(O, G, openai_full, strlen(openai_full), 0, 0, false, &t, &info, err), 0);
    assert_true(info.stream); /* the body decides for O */
    assert_absent(t, "model");
    assert_absent(t, "stream");
    assert_str(t, "systemInstruction.parts.0.text", "be brief " CANARY);
    assert_int_equal(jlen(t, "contents"), 5);
    assert_str(t, "contents.0.role", "user");
    assert_str(t, "contents.0.parts.0.text", "look");
    assert_str(t, "contents.0.parts.1.fileData.mimeType", "image/png");
    assert_str(t, "contents.0.parts.1.fileData.fileUri", "https://ex.com/a.png");
    assert_str(t, "contents.0.parts.2.inlineData.mimeType", "image/jpeg");
    assert_str(t, "contents.0.parts.2.inlineData.data", "QUJD");
    assert_str(t, "contents.1.role", "model");
    assert_str(t, "contents.1.parts.0.text", "a cat");
    assert_str(t, "contents.3.role", "model");
    assert_str(t, "contents.3.parts.0.functionCall.name", "get_weather");
    assert_str(t, "contents.3.parts.0.functionCall.args.city", "Paris");
    assert_str(t, "contents.4.role", "user");
    assert_str(t, "contents.4.parts.0.functionResponse.name", "get_weather");
    assert_str(t, "contents.4.parts.0.functionResponse.response.content", "sunny");
    assert_num(t, "generationConfig.maxOutputTokens", 120);
    assert_num(t, "generationConfig.temperature", 0.5);
    assert_num(t, "generationConfig.topP", 0.9);
    assert_str(t, "generationConfig.stopSequences.1", "STOP");
    assert_str(t, "tools.0.functionDeclarations.0.name", "get_weather");
    assert_str(t, "tools.0.functionDeclarations.0.parametersJsonSchema.type", "object");
    assert_str(t, "toolConfig.functionCallingConfig.mode", "ANY");
    assert_int_equal(jlen(t, "toolConfig.functionCallingConfig.allowedFunctionNames"), 1);
    assert_str(t, "toolConfig.functionCallingConfig.allowedFunctionNames.0", "get_weather");
    assert_absent(t, "user");
    yajl_tree_free(t);
}

static void test_anthropic_to_openai(void **state)
{
    (void)state;
    char err[256];
    yajl_val t;
    xlate_req_info_t info;
    assert_int_equal(run_full(A, O, anthropic_full, strlen(anthropic_full), 0, 0, false, &t, &info, err), 0);
    assert_string_equal(info.model, "claude-x");
    assert_false(info.stream);
    assert_int_equal(info.max_output_tokens, 200);
    assert_str(t, "model", "up-model");
    assert_num(t, "max_tokens", 200);
    assert_absent(t, "stream");
    assert_str(t, "messages.0.role", "system");
    assert_str(t, "messages.0.content", "be brief");
    assert_str(t, "messages.1.role", "user");
    assert_str(t, "messages.1.content.0.type", "text");
    assert_str(t, "messages.1.content.0.text", "look");
    assert_str(t, "messages.1.content.1.type", "image_url");
    assert_str(t, "messages.1.content.1.image_url.url", "https://ex.com/b.JPG?x=1");
    assert_str(t, "messages.1.content.2.image_url.url", "data:image/png;base64,QUJD");
    assert_str(t, "messages.2.role", "assistant");
    assert_str(t, "messages.2.content", "a cat");
    assert_str(t, "messages.3.content", "weather?");
    assert_str(t, "messages.4.role", "assistant");
    assert_str(t, "messages.4.content", "checking");
    assert_str(t, "messages.4.tool_calls.0.id", "toolu_1");
    assert_str(t, "messages.4.tool_calls.0.type", "function");
    assert_str(t, "messages.4.tool_calls.0.function.name", "get_weather");
    /* arguments: the JSON text of the input object */
    const char *args = jstr(t, "messages.4.tool_calls.0.function.arguments");
    char perr[64];
    yajl_val a = yajl_tree_parse(args, perr, sizeof perr);
    assert_non_null(a);
    assert_str(a, "city", "Paris");
    yajl_tree_free(a);
    assert_str(t, "messages.5.role", "tool");
    assert_str(t, "messages.5.tool_call_id", "toolu_1");
    assert_str(t, "messages.5.content", "sunny");
    assert_str(t, "messages.6.role", "user");
    assert_str(t, "messages.6.content", "thanks");
    assert_int_equal(jlen(t, "messages"), 7);
    assert_num(t, "temperature", 0.3);
    assert_num(t, "top_p", 0.8);
    assert_str(t, "stop.0", "END");
    assert_str(t, "tools.0.type", "function");
    assert_str(t, "tools.0.function.name", "get_weather");
    assert_str(t, "tools.0.function.parameters.properties.city.type", "string");
    assert_str(t, "tool_choice", "required");
    assert_str(t, "user", "u-2");
    yajl_tree_free(t);
}

static void test_anthropic_to_gemini(void **state)
{
    (void)state;
    char err[256];
    yajl_val t;
    assert_int_equal(run(A, G, anthropic_full, &t, err), 0);
    assert_str(t, "systemInstruction.parts.0.text", "be brief");
    assert_int_equal(jlen(t, "contents"), 5);
    assert_str(t, "contents.0.parts.1.fileData.mimeType", "image/jpeg"); /* guessed from .JPG */
    assert_str(t, "contents.0.parts.1.fileData.fileUri", "https://ex.com/b.JPG?x=1");
    assert_str(t, "contents.0.parts.2.inlineData.mimeType", "image/png");
    assert_str(t, "contents.0.parts.2.inlineData.data", "QUJD");
    assert_str(t, "contents.3.role", "model");
    assert_str(t, "contents.3.parts.0.text", "checking");
    assert_str(t, "contents.3.parts.1.functionCall.name", "get_weather");
    assert_str(t, "contents.3.parts.1.functionCall.args.city", "Paris");
    assert_str(t, "contents.4.role", "user");
    assert_str(t, "contents.4.parts.0.functionResponse.name", "get_weather");
    assert_str(t, "contents.4.parts.0.functionResponse.response.content", "sunny");
    assert_str(t, "contents.4.parts.1.text", "thanks");
    assert_num(t, "generationConfig.maxOutputTokens", 200);
    assert_num(t, "generationConfig.temperature", 0.3);
    assert_num(t, "generationConfig.topP", 0.8);
    assert_str(t, "generationConfig.stopSequences.0", "END");
    assert_str(t, "tools.0.functionDeclarations.0.name", "get_weather");
    assert_str(t, "toolConfig.functionCallingConfig.mode", "ANY");
    assert_absent(t, "toolConfig.functionCallingConfig.allowedFunctionNames");
    assert_absent(t, "metadata");
    yajl_tree_free(t);
}

static void test_gemini_to_openai(void **state)
{
    (void)state;
    char err[256];
    yajl_val t;
    xlate_req_info_t info;
    assert_int_equal(run_full(G, O, gemini_full, strlen(gemini_full), 0, 0, true, &t, &info, err), 0);
    assert_string_equal(info.model, "");
    assert_true(info.stream); /* from the URL */
    assert_int_equal(info.max_output_tokens, 300);
    assert_true(info.has_images);
    assert_str(t, "model", "up-model");
    assert_true(YAJL_IS_TRUE(jget(t, "stream")));
    assert_true(YAJL_IS_TRUE(jget(t, "stream_options.include_usage")));
    assert_num(t, "max_tokens", 300);
    assert_str(t, "messages.0.role", "system");
    assert_str(t, "messages.0.content", "be brief");
    assert_str(t, "messages.1.content.1.image_url.url", "https://ex.com/c.png");
    assert_str(t, "messages.1.content.2.image_url.url", "data:image/webp;base64,QUJD");
    assert_str(t, "messages.2.role", "assistant");
    assert_str(t, "messages.4.role", "assistant");
    assert_true(YAJL_IS_NULL(jget(t, "messages.4.content")));
    assert_str(t, "messages.4.tool_calls.0.id", "call_0");
    assert_str(t, "messages.4.tool_calls.0.function.name", "get_weather");
    assert_str(t, "messages.5.role", "tool");
    assert_str(t, "messages.5.tool_call_id", "call_0");
    assert_str(t, "messages.5.content", "sunny");
    assert_int_equal(jlen(t, "messages"), 6);
    assert_num(t, "temperature", 0.7);
    assert_num(t, "top_p", 0.95);
    assert_str(t, "stop.0", "END");
    assert_str(t, "tools.0.function.name", "get_weather");
    assert_str(t, "tools.0.function.parameters.type", "object");
    assert_str(t, "tool_choice", "auto");
    yajl_tree_free(t);
}

static void test_gemini_to_anthropic(void **state)
{
    (void)state;
    char err[256];
    yajl_val t;
    assert_int_equal(run_full(G, A, gemini_full, strlen(gemini_full), 0, 0, false, &t, NULL, err), 0);
    assert_str(t, "model", "up-model");
    assert_num(t, "max_tokens", 300);
    assert_absent(t, "stream");
    assert_str(t, "system.0.text", "be brief");
    assert_int_equal(jlen(t, "messages"), 5);
    assert_str(t, "messages.0.content.1.source.type", "url");
    assert_str(t, "messages.0.content.1.source.url", "https://ex.com/c.png");
    assert_str(t, "messages.0.content.2.source.type", "base64");
    assert_str(t, "messages.0.content.2.source.media_type", "image/webp");
    assert_str(t, "messages.3.content.0.type", "tool_use");
    assert_str(t, "messages.3.content.0.id", "call_0");
    assert_str(t, "messages.3.content.0.input.city", "Paris");
    assert_str(t, "messages.4.content.0.type", "tool_result");
    assert_str(t, "messages.4.content.0.tool_use_id", "call_0");
    assert_str(t, "messages.4.content.0.content", "sunny");
    assert_num(t, "temperature", 0.7);
    assert_num(t, "top_p", 0.95);
    assert_str(t, "stop_sequences.0", "END");
    assert_str(t, "tools.0.input_schema.properties.city.type", "string");
    assert_str(t, "tool_choice.type", "auto");
    yajl_tree_free(t);
    /* stream comes from the caller's argument for Gemini */
    assert_int_equal(run_full(G, A, gemini_full, strlen(gemini_full), 0, 0, true, &t, NULL, err), 0);
    assert_true(YAJL_IS_TRUE(jget(t, "stream")));
    yajl_tree_free(t);
}

/* Round trips through a third format keep the conversation's shape. */
static void test_round_trips(void **state)
{
    (void)state;
    static const int pairs[][3] = {{O, A, O}, {O, G, O}, {A, G, A}, {A, O, A}, {G, O, G}, {G, A, G}};
    static const char *const bodies[] = {openai_full, anthropic_full, gemini_full};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        char err[256];
        wipe_buf_t mid = WIPE_BUF_INIT(1 << 20);
        const char *src = bodies[pairs[i][0]];
        int r = xlate_request((xlate_format_t)pairs[i][0], (xlate_format_t)pairs[i][1], (const uint8_t *)src,
                              strlen(src), "m", 0, 0, false, &mid, NULL, err, sizeof err);
        assert_int_equal(r, 0);
        char *text = malloc(mid.len + 1);
        memcpy(text, mid.data, mid.len);
        text[mid.len] = 0;
        yajl_val t;
        assert_int_equal(run_full(pairs[i][1], pairs[i][2], text, mid.len, 0, 0, false, &t, NULL, err), 0);
        if (pairs[i][2] == G) {
            assert_int_equal(jlen(t, "contents"), 5);
            assert_str(t, "contents.3.role", "model");
            assert_str(t, "contents.4.parts.0.functionResponse.response.content", "sunny");
        } else if (pairs[i][2] == A) {
            assert_int_equal(jlen(t, "messages"), 5);
            assert_str(t, "messages.4.content.0.content", "sunny");
        } else {
            assert_str(t, "messages.0.role", "system");
            assert_str(t, "messages.5.role", "tool");
            assert_str(t, "messages.5.content", "sunny");
        }
        yajl_tree_free(t);
        free(text);
        wipe_buf_free(&mid);
    }
}

/* ---- smaller mapping rules -------------------------------------------------------------------- */

static void test_max_tokens_rules(void **state)
{
    (void)state;
    char err[256];
    yajl_val t;
    const char *o = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    /* A requires max_tokens: no client value and no default is refused, naming the field */
    assert_int_equal(run(O, A, o, NULL, err), -EINVAL);
    assert_non_null(strstr(err, "max_tokens"));
    assert_int_equal(run_full(O, A, o, strlen(o), 0, 4096, false, &t, NULL, err), 0);
    assert_num(t, "max_tokens", 4096);
    yajl_tree_free(t);
    /* force wins over the client's value */
    const char *o2 = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":50}";
    assert_int_equal(run_full(O, G, o2, strlen(o2), 7, 0, false, &t, NULL, err), 0);
    assert_num(t, "generationConfig.maxOutputTokens", 7);
    yajl_tree_free(t);
    /* no max for O and G targets: none written */
    assert_int_equal(run(O, G, o, &t, err), 0);
    assert_absent(t, "generationConfig");
    yajl_tree_free(t);
    const char *g = "{\"contents\":[{\"parts\":[{\"text\":\"hi\"}]}]}";
    assert_int_equal(run(G, O, g, &t, err), 0);
    assert_absent(t, "max_tokens");
    assert_str(t, "messages.0.role", "user");
    assert_str(t, "messages.0.content", "hi");
    yajl_tree_free(t);
    /* A without max_tokens is refused as the source */
    const char *a = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    assert_int_equal(run(A, O, a, NULL, err), -EINVAL);
    assert_non_null(strstr(err, "max_tokens"));
}

static void test_options_mapping(void **state)
{
    (void)state;
    char err[256];
    yajl_val t;
    /* O stop as a string, penalties, seed, JSON mode to G */
    const char *o = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stop\":\"X\","
                    "\"presence_penalty\":0.1,\"frequency_penalty\":0.2,\"seed\":42,"
                    "\"response_format\":{\"type\":\"json_object\"},\"n\":1,\"logprobs\":false,\"logit_bias\":{},"
                    "\"store\":false,\"service_tier\":\"auto\",\"modalities\":[\"text\"],\"parallel_tool_calls\":true}";
    assert_int_equal(run(O, G, o, &t, err), 0);
    assert_str(t, "generationConfig.stopSequences.0", "X");
    assert_num(t, "generationConfig.presencePenalty", 0.1);
    assert_num(t, "generationConfig.frequencyPenalty", 0.2);
    assert_num(t, "generationConfig.seed", 42);
    assert_str(t, "generationConfig.responseMimeType", "application/json");
    yajl_tree_free(t);
    /* and back from G */
    const char *g = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"hi\"}]}],\"generationConfig\":"
                    "{\"presencePenalty\":0.1,\"seed\":3,\"responseMimeType\":\"application/json\",\"topK\":5,"
                    "\"candidateCount\":1}}";
    assert_int_equal(run(G, O, g, NULL, err), -EINVAL); /* topK to O */
    assert_non_null(strstr(err, "generationConfig.topK"));
    const char *g2 = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"hi\"}]}],\"generationConfig\":"
                     "{\"presencePenalty\":0.1,\"seed\":3,\"responseMimeType\":\"application/json\"}}";
    assert_int_equal(run(G, O, g2, &t, err), 0);
    assert_num(t, "presence_penalty", 0.1);
    assert_num(t, "seed", 3);
    assert_str(t, "response_format.type", "json_object");
    yajl_tree_free(t);
    /* A top_k to G */
    const char *a = "{\"model\":\"m\",\"max_tokens\":5,\"top_k\":40,\"messages\":[{\"role\":\"user\",\"content\":"
                    "\"hi\"}],\"tool_choice\":{\"type\":\"auto\",\"disable_parallel_tool_use\":true},"
                    "\"thinking\":{\"type\":\"disabled\"},\"service_tier\":\"auto\"}";
    assert_int_equal(run(A, O, a, NULL, err), -EINVAL);
    assert_non_null(strstr(err, "top_k"));
    const char *a2 = "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":"
                     "\"hi\"}],\"tool_choice\":{\"type\":\"auto\",\"disable_parallel_tool_use\":true},"
                     "\"thinking\":{\"type\":\"disabled\"},\"service_tier\":\"auto\"}";
    assert_int_equal(run(A, O, a2, &t, err), 0);
    assert_true(YAJL_IS_FALSE(jget(t, "parallel_tool_calls")));
    assert_str(t, "tool_choice", "auto");
    yajl_tree_free(t);
    /* O parallel_tool_calls false to A */
    const char *o3 = "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                     "\"parallel_tool_calls\":false,\"tool_choice\":\"none\"}";
    assert_int_equal(run(O, A, o3, &t, err), 0);
    assert_str(t, "tool_choice.type", "none");
    assert_int_equal(jlen(t, "tool_choice"), 1);
    yajl_tree_free(t);
    const char *o4 = "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                     "\"parallel_tool_calls\":false}";
    assert_int_equal(run(O, A, o4, &t, err), 0);
    assert_str(t, "tool_choice.type", "auto");
    assert_true(YAJL_IS_TRUE(jget(t, "tool_choice.disable_parallel_tool_use")));
    yajl_tree_free(t);
    /* G tool config: one allowed name = a specific tool; several only to G */
    const char *g3 = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"hi\"}]}],\"toolConfig\":"
                     "{\"functionCallingConfig\":{\"mode\":\"ANY\",\"allowedFunctionNames\":[\"f\"]}}}";
    assert_int_equal(run_full(G, A, g3, strlen(g3), 0, 10, false, &t, NULL, err), 0);
    assert_str(t, "tool_choice.type", "tool");
    assert_str(t, "tool_choice.name", "f");
    yajl_tree_free(t);
    const char *g4 = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"hi\"}]}],\"toolConfig\":"
                     "{\"functionCallingConfig\":{\"mode\":\"NONE\"}}}";
    assert_int_equal(run(G, O, g4, &t, err), 0);
    assert_str(t, "tool_choice", "none");
    yajl_tree_free(t);
}

/* Consecutive same-role turns merge for A and G; tool results come first in an A user turn. */
static void test_merging_and_tool_ids(void **state)
{
    (void)state;
    char err[256];
    yajl_val t;
    const char *o = "{\"model\":\"m\",\"max_tokens\":9,\"messages\":["
                    "{\"role\":\"developer\",\"content\":[{\"type\":\"text\",\"text\":\"s1\"},{\"type\":\"text\","
                    "\"text\":\"s2\"}]},"
                    "{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"},"
                    "{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\",\"function\":"
                    "{\"name\":\"f\",\"arguments\":\"\"}},{\"id\":\"c2\",\"type\":\"function\",\"function\":"
                    "{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
                    "{\"role\":\"tool\",\"tool_call_id\":\"c2\",\"content\":[{\"type\":\"text\",\"text\":\"r\"},"
                    "{\"type\":\"text\",\"text\":\"2\"}]},"
                    "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"r1\"},"
                    "{\"role\":\"user\",\"content\":\"next\"}]}";
    assert_int_equal(run(O, A, o, &t, err), 0);
    assert_int_equal(jlen(t, "system"), 2);
    assert_str(t, "system.1.text", "s2");
    assert_int_equal(jlen(t, "messages"), 3);
    assert_int_equal(jlen(t, "messages.0.content"), 2);
    assert_str(t, "messages.0.content.1.text", "b");
    assert_int_equal(jlen(t, "messages.1.content.0.input"), 0);
    assert_str(t, "messages.2.content.0.tool_use_id", "c2");
    assert_str(t, "messages.2.content.0.content", "r2");
    assert_str(t, "messages.2.content.1.tool_use_id", "c1");
    assert_str(t, "messages.2.content.2.text", "next");
    yajl_tree_free(t);
    assert_int_equal(run(O, G, o, &t, err), 0);
    assert_int_equal(jlen(t, "systemInstruction.parts"), 2);
    assert_int_equal(jlen(t, "contents"), 3);
    assert_int_equal(jlen(t, "contents.1.parts"), 2);
    assert_str(t, "contents.2.parts.0.functionResponse.name", "f");
    assert_str(t, "contents.2.parts.2.text", "next");
    yajl_tree_free(t);
    /* G: calls numbered through the conversation; a response answers the earliest unanswered call */
    const char *g = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"q\"}]},"
                    "{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"name\":\"f\"}},{\"functionCall\":{\"name\":"
                    "\"g\",\"args\":{}}},{\"functionCall\":{\"name\":\"f\",\"args\":{\"k\":1}}}]},"
                    "{\"role\":\"user\",\"parts\":[{\"functionResponse\":{\"name\":\"f\",\"response\":{\"a\":1}}},"
                    "{\"functionResponse\":{\"name\":\"f\",\"response\":{\"content\":\"x\"}}},"
                    "{\"functionResponse\":{\"name\":\"g\",\"response\":{\"content\":\"y\"}}}]}]}";
    assert_int_equal(run(G, O, g, &t, err), 0);
    assert_str(t, "messages.1.tool_calls.0.id", "call_0");
    assert_str(t, "messages.1.tool_calls.1.id", "call_1");
    assert_str(t, "messages.1.tool_calls.2.id", "call_2");
    assert_str(t, "messages.1.tool_calls.0.function.arguments", "{}");
    assert_str(t, "messages.2.tool_call_id", "call_0");
    assert_str(t, "messages.2.content", "{\"a\":1}"); /* any other response: its JSON text */
    assert_str(t, "messages.3.tool_call_id", "call_2");
    assert_str(t, "messages.3.content", "x");
    assert_str(t, "messages.4.tool_call_id", "call_1");
    yajl_tree_free(t);
    /* a fourth response for f has no unanswered call left */
    const char *g2 = "{\"contents\":[{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"name\":\"f\"}}]},"
                     "{\"role\":\"user\",\"parts\":[{\"functionResponse\":{\"name\":\"f\",\"response\":{}}},"
                     "{\"functionResponse\":{\"name\":\"f\",\"response\":{\"content\":\"" CANARY "\"}}}]}]}";
    assert_int_equal(run(G, O, g2, NULL, err), -EINVAL);
    assert_non_null(strstr(err, "contents[1].parts[1].functionResponse.name"));
    /* A target: the first turn must be user */
    assert_int_equal(run_full(G, A, g2, strlen(g2), 0, 5, false, NULL, NULL, err), -EINVAL);
}

static void test_same_format(void **state)
{
    (void)state;
    char err[256];
    yajl_val t;
    xlate_req_info_t info;
    const char *o = "{\"model\":\"client\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true,"
                    "\"stream_options\":{\"include_usage\":false},\"max_completion_tokens\":30,\"x_unknown\":[1]}";
    assert_int_equal(run_full(O, O, o, strlen(o), 0, 0, false, &t, &info, err), 0);
    assert_string_equal(info.model, "client");
    assert_int_equal(info.max_output_tokens, 30);
    assert_str(t, "model", "up-model");
    assert_true(YAJL_IS_TRUE(jget(t, "stream_options.include_usage")));
    assert_num(t, "max_completion_tokens", 30);
    assert_num(t, "x_unknown.0", 1);
    yajl_tree_free(t);
    const char *a = "{\"model\":\"c\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    assert_int_equal(run_full(A, A, a, strlen(a), 0, 0, false, NULL, NULL, err), -EINVAL);
    assert_non_null(strstr(err, "max_tokens"));
    assert_int_equal(run_full(A, A, a, strlen(a), 0, 64, false, &t, NULL, err), 0);
    assert_num(t, "max_tokens", 64);
    yajl_tree_free(t);
    const char *g = "{\"contents\":[{\"parts\":[{\"text\":\"hi\"}]}],\"generationConfig\":{\"topK\":3,"
                    "\"maxOutputTokens\":100}}";
    assert_int_equal(run_full(G, G, g, strlen(g), 20, 0, true, &t, &info, err), 0);
    assert_true(info.stream);
    assert_int_equal(info.max_output_tokens, 100);
    assert_num(t, "generationConfig.maxOutputTokens", 20);
    assert_num(t, "generationConfig.topK", 3);
    assert_absent(t, "stream");
    assert_absent(t, "model");
    yajl_tree_free(t);
}

/* ---- refusals --------------------------------------------------------------------------------- */

typedef struct refusal {
    int from, to;
    const char *body;
    const char *field; /* must appear in the message */
} refusal_t;

#define OU "\"messages\":[{\"role\":\"user\",\"content\":\"" CANARY "\"}]"
#define OB(extra) "{\"model\":\"m\",\"max_tokens\":5," OU extra "}"
#define AB(extra) "{\"model\":\"m\",\"max_tokens\":5," OU extra "}"
#define GU "\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"" CANARY "\"}]}]"
#define GB(extra) "{" GU extra "}"
#define TOOLCALL_O                                                                                                     \
    "{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\","       \
    "\"arguments\":\"{}\"}}]}"
#define TOOLUSE_A                                                                                                      \
    "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"f\",\"input\":{}}]}"

static const refusal_t refusals[] = {
    /* OpenAI fields no other format has */
    {O, A, OB(",\"n\":2"), "'n'"},
    {O, G, OB(",\"logprobs\":true"), "'logprobs'"},
    {O, A, OB(",\"top_logprobs\":2"), "'top_logprobs'"},
    {O, G, OB(",\"logit_bias\":{\"50256\":-100}"), "'logit_bias'"},
    {O, A, OB(",\"audio\":{\"voice\":\"x\"}"), "'audio'"},
    {O, G, OB(",\"modalities\":[\"text\",\"audio\"]"), "'modalities'"},
    {O, A, OB(",\"reasoning_effort\":\"high\""), "'reasoning_effort'"},
    {O, G, OB(",\"prediction\":{\"type\":\"content\",\"content\":\"" CANARY "\"}"), "'prediction'"},
    {O, A, OB(",\"web_search_options\":{}"), "'web_search_options'"},
    {O, G, OB(",\"service_tier\":\"flex\""), "'service_tier'"},
    {O, A, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"name\":\"bob\",\"content\":\"" CANARY "\"}]}",
     "'messages[0].name'"},
    {O, G,
     "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\",\"input_audio\":"
     "{\"data\":\"" CANARY "\",\"format\":\"wav\"}}]}]}",
     "messages[0].content[0]"},
    {O, A,
     "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"file\",\"file\":"
     "{\"file_data\":\"" CANARY
     "\"}}]}]}",
     "messages[0].content[0]"},
    {O, G, OB(",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\",\"strict\":true}}"),
     "'response_format'"},
    {O, A,
     OB(",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"strict\":true,\"parameters\":{}}}]"),
     "'tools[0].function.strict'"},
    {O, A, OB(",\"tools\":[{\"type\":\"custom\",\"custom\":{\"name\":\"f\"}}]"), "tools[0]"},
    {O, G,
     "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"" CANARY
     "\"},{\"role\":\"system\",\"content\":\"late\"}]}",
     "'messages[1].role'"},
    {O, A,
     "{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"refusal\",\"refusal\":\"" CANARY
     "\"}]}]}",
     "messages[0].content[0]"},
    {O, A, "{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"content\":\"x\",\"refusal\":\"" CANARY "\"}]}",
     "'messages[0].refusal'"},
    /* OpenAI fields the target lacks */
    {O, A, OB(",\"presence_penalty\":0.5"), "'presence_penalty'"},
    {O, A, OB(",\"frequency_penalty\":0.5"), "'frequency_penalty'"},
    {O, A, OB(",\"seed\":1"), "'seed'"},
    {O, A, OB(",\"response_format\":{\"type\":\"json_object\"}"), "'response_format'"},
    {O, G, OB(",\"parallel_tool_calls\":false"), "'parallel_tool_calls'"},
    {O, A, "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"assistant\",\"content\":\"" CANARY "\"}]}",
     "'messages[0].role'"},
    {O, G, "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"" CANARY "\"}]}", "'messages'"},
    /* images */
    {O, G,
     "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":"
     "\"https://ex.com/" CANARY "\"}}]}]}",
     "messages[0].content[0]"},
    {O, A,
     "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
     "\"image_url\":{\"url\":\"data:image/tiff;base64," CANARY "\"}}]}]}",
     "messages[0].content[0]"},
    {O, A,
     "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":"
     "\"ftp://ex.com/" CANARY ".png\"}}]}]}",
     "'messages[0].content[0].image_url.url'"},
    {O, A,
     "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":"
     "\"data:image/png," CANARY "\"}}]}]}",
     "'messages[0].content[0].image_url.url'"},
    {O, G,
     "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":"
     "\"data:text/plain;base64," CANARY "\"}}]}]}",
     "'messages[0].content[0].image_url.url'"},
    {O, G,
     "{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"image_url\",\"image_url\":"
     "{\"url\":\"https://ex.com/a.png\"}}]}]}",
     "messages[0].content[0]"},
    {G, A,
     "{\"contents\":[{\"parts\":[{\"inlineData\":{\"mimeType\":\"image/heic\",\"data\":\"" CANARY
     "\"}}]}],\"generationConfig\":{\"maxOutputTokens\":5}}",
     "contents[0].parts[0]"},
    {G, O,
     "{\"contents\":[{\"parts\":[{\"fileData\":{\"mimeType\":\"image/png\",\"fileUri\":"
     "\"https://generativelanguage.googleapis.com/v1beta/files/" CANARY "\"}}]}]}",
     "'contents[0].parts[0].fileData.fileUri'"},
    {G, A,
     "{\"contents\":[{\"parts\":[{\"fileData\":{\"mimeType\":\"image/png\",\"fileUri\":\"gs://b/" CANARY
     "\"}}]}]}",
     "'contents[0].parts[0].fileData.fileUri'"},
    {G, O,
     "{\"contents\":[{\"parts\":[{\"fileData\":{\"mimeType\":\"application/pdf\",\"fileUri\":\"https://e.com/" CANARY
     "\"}}]}]}",
     "'contents[0].parts[0].fileData.mimeType'"},
    {G, O,
     "{\"contents\":[{\"parts\":[{\"inlineData\":{\"mimeType\":\"audio/wav\",\"data\":\"" CANARY "\"}}]}]}",
     "'contents[0].parts[0].inlineData.mimeType'"},
    /* tool results */
    {O, A,
     "{\"model\":\"m\",\"messages\":[{\"role\":\"tool\",\"tool_call_id\":\"nope\",\"content\":\"" CANARY "\"}]}",
     "'messages[0].tool_call_id'"},
    {A, O,
     "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[" TOOLUSE_A ",{\"role\":\"user\",\"content\":[{\"type\":"
     "\"tool_result\",\"tool_use_id\":\"t1\",\"is_error\":true,\"content\":\"" CANARY "\"}]}]}",
     "'messages[1].content[0].is_error'"},
    {A, G,
     "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[" TOOLUSE_A ",{\"role\":\"user\",\"content\":[{\"type\":"
     "\"tool_result\",\"tool_use_id\":\"t1\",\"content\":[{\"type\":\"image\",\"source\":{\"type\":\"base64\","
     "\"media_type\":\"image/png\",\"data\":\"" CANARY "\"}}]}]}]}",
     "'messages[1].content[0].content'"},
    {A, O,
     "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\","
     "\"tool_use_id\":\"zz\",\"content\":\"" CANARY "\"}]}]}",
     "'messages[0].content[0].tool_use_id'"},
    {G, O,
     "{\"contents\":[{\"parts\":[{\"functionResponse\":{\"name\":\"f\",\"response\":{\"content\":\"" CANARY
     "\"}}}]}]}",
     "'contents[0].parts[0].functionResponse.name'"},
    /* Anthropic fields no other format has */
    {A, O, AB(",\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":1024}"), "'thinking'"},
    {A, G,
     "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\","
     "\"content\":[{\"type\":\"thinking\",\"thinking\":\"" CANARY "\",\"signature\":\"s\"}]}]}",
     "messages[1].content[0]"},
    {A, O,
     "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"document\","
     "\"source\":{\"type\":\"text\",\"media_type\":\"text/plain\",\"data\":\"" CANARY "\"}}]}]}",
     "messages[0].content[0]"},
    {A, O, AB(",\"tools\":[{\"type\":\"web_search_20250305\",\"name\":\"web_search\"}]"), "'tools[0].type'"},
    {A, O, AB(",\"service_tier\":\"standard_only\""), "'service_tier'"},
    {A, G, AB(",\"metadata\":{\"user_id\":\"u\",\"session\":\"" CANARY "\"}"), "'metadata.session'"},
    {A, O, AB(",\"top_k\":5"), "'top_k'"},
    {A, O, AB(",\"container\":\"" CANARY "\""), "'container'"},
    {A, O,
     "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":"
     "\"" CANARY "\",\"citations\":[{}]}]}]}",
     "'messages[0].content[0].citations'"},
    /* Gemini fields no other format has */
    {G, O, GB(",\"safetySettings\":[{\"category\":\"HARM_CATEGORY_HATE_SPEECH\",\"threshold\":\"BLOCK_NONE\"}]"),
     "'safetySettings'"},
    {G, A, GB(",\"cachedContent\":\"cachedContents/" CANARY "\""), "'cachedContent'"},
    {G, O, GB(",\"generationConfig\":{\"thinkingConfig\":{\"thinkingBudget\":0}}"),
     "'generationConfig.thinkingConfig'"},
    {G, O, GB(",\"generationConfig\":{\"candidateCount\":2}"), "'generationConfig.candidateCount'"},
    {G, O, GB(",\"generationConfig\":{\"responseLogprobs\":true}"), "'generationConfig.responseLogprobs'"},
    {G, O, GB(",\"generationConfig\":{\"logprobs\":3}"), "'generationConfig.logprobs'"},
    {G, O, GB(",\"generationConfig\":{\"responseModalities\":[\"IMAGE\"]}"), "'generationConfig.responseModalities'"},
    {G, O, GB(",\"generationConfig\":{\"responseSchema\":{\"type\":\"OBJECT\"}}"), "'generationConfig.responseSchema'"},
    {G, O, GB(",\"generationConfig\":{\"responseJsonSchema\":{\"type\":\"object\"}}"),
     "'generationConfig.responseJsonSchema'"},
    {G, O, GB(",\"generationConfig\":{\"responseMimeType\":\"text/x.enum\"}"), "'generationConfig.responseMimeType'"},
    {G, A, GB(",\"generationConfig\":{\"maxOutputTokens\":5,\"responseMimeType\":\"application/json\"}"),
     "'generationConfig.responseMimeType'"},
    {G, A, GB(",\"generationConfig\":{\"maxOutputTokens\":5,\"presencePenalty\":1}"),
     "'generationConfig.presencePenalty'"},
    {G, A, GB(",\"generationConfig\":{\"maxOutputTokens\":5,\"seed\":1}"), "'generationConfig.seed'"},
    {G, O, GB(",\"tools\":[{\"googleSearch\":{}}]"), "'tools[0].googleSearch'"},
    {G, O, GB(",\"tools\":[{\"codeExecution\":{}}]"), "'tools[0].codeExecution'"},
    {G, O,
     GB(",\"toolConfig\":{\"functionCallingConfig\":{\"mode\":\"ANY\",\"allowedFunctionNames\":[\"a\",\"b\"]}}"),
     "allowedFunctionNames"},
    {G, O, GB(",\"toolConfig\":{\"functionCallingConfig\":{\"mode\":\"VALIDATED\"}}"),
     "'toolConfig.functionCallingConfig.mode'"},
    {G, O,
     "{\"contents\":[{\"role\":\"model\",\"parts\":[{\"text\":\"" CANARY "\",\"thought\":true}]}]}",
     "'contents[0].parts[0].thought'"},
    /* unknown fields, and client keys echoed only when they are short identifiers */
    {O, A, OB(",\"foo_bar\":1"), "'foo_bar'"},
    {G, O, GB(",\"labels\":{}"), "'labels'"},
    {O, A, OB(",\"" CANARY " x\":1"), "(unnamed)"},
    {O, A, OB(",\"" CANARY CANARY CANARY CANARY CANARY "\":1"), "(unnamed)"},
};

static void test_refusals(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof refusals / sizeof refusals[0]; i++) {
        char err[256];
        const refusal_t *r = &refusals[i];
        int rc = run(r->from, r->to, r->body, NULL, err);
        if (rc != -EINVAL || strstr(err, r->field) == NULL)
            fail_msg("refusal %zu: rc %d, message \"%s\", wanted field %s", i, rc, err, r->field);
    }
}

/* ---- malformed bodies ------------------------------------------------------------------------- */

typedef struct malformed {
    int from;
    const char *body;
    size_t len; /* 0: strlen */
    const char *field;
} malformed_t;

static const malformed_t malformed[] = {
    {O, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"" CANARY "\"}", 0, "invalid JSON"},
    {O, "{\"model\":\"m\",\"messages\":[]} " CANARY, 0, "invalid JSON"},
    {A, "", 0, "invalid JSON"},
    {G, "[{\"contents\":\"" CANARY "\"}]", 0, "JSON object"},
    {O, "\"" CANARY "\"", 0, "JSON object"},
    {O, "{\"model\":\"m\",\"messages\":\"" CANARY "\"}", 0, "'messages'"},
    {O, "{\"model\":7,\"messages\":[]}", 0, "'model'"},
    {O, "{\"messages\":[{\"role\":\"user\",\"content\":\"" CANARY "\"}]}", 0, "'model'"},
    {O, "{\"model\":\"m\",\"model\":\"n\",\"messages\":[]}", 0, "'model'"},
    {O, "{\"model\":\"m\",\"messages\":[],\"messages\":[]}", 0, "'messages'"},
    {O, "{\"model\":\"m\"," OU ",\"temperature\":\"hot\"}", 0, "'temperature'"},
    {O, "{\"model\":\"m\"," OU ",\"stream\":\"yes\"}", 0, "'stream'"},
    {O, "{\"model\":\"m\"," OU ",\"max_tokens\":-1}", 0, "'max_tokens'"},
    {O, "{\"model\":\"m\"," OU ",\"max_tokens\":1.5}", 0, "'max_tokens'"},
    {O, "{\"model\":\"m\"," OU ",\"stop\":[1]}", 0, "'stop[0]'"},
    {O, "{\"model\":\"m\"," OU ",\"seed\":1.5}", 0, "'seed'"},
    {O, "{\"model\":\"m\",\"messages\":[{\"role\":7,\"content\":\"" CANARY "\"}]}", 0, "'messages[0].role'"},
    {O, "{\"model\":\"m\",\"messages\":[{\"role\":\"wizard\",\"content\":\"" CANARY "\"}]}", 0, "'messages[0].role'"},
    {O, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":5}]}", 0, "'messages[0].content'"},
    {O, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[\"" CANARY "\"]}]}", 0,
     "'messages[0].content[0]'"},
    {O, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":7}]}]}", 0,
     "'messages[0].content[0].text'"},
    {O,
     "{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\","
     "\"function\":{\"name\":\"f\",\"arguments\":\"{" CANARY "\"}}]}]}",
     0, "'messages[0].tool_calls[0].function.arguments'"},
    {O,
     "{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\","
     "\"function\":{\"name\":\"f\",\"arguments\":\"[\\\"" CANARY "\\\"]\"}}]}]}",
     0, "'messages[0].tool_calls[0].function.arguments'"},
    {O,
     "{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"type\":\"function\","
     "\"function\":{\"name\":\"f\"}}]}]}",
     0, "'messages[0].tool_calls[0].id'"},
    {O, "{\"model\":\"m\"," OU ",\"tools\":{}}", 0, "'tools'"},
    {O, "{\"model\":\"m\"," OU ",\"tool_choice\":\"sometimes\"}", 0, "'tool_choice'"},
    {A, "{\"model\":\"m\",\"max_tokens\":\"5\"," OU "}", 0, "'max_tokens'"},
    {A, "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"system\",\"content\":\"" CANARY "\"}]}", 0,
     "'messages[0].role'"},
    {A, "{\"model\":\"m\",\"max_tokens\":5," OU ",\"system\":7}", 0, "'system'"},
    {A, "{\"model\":\"m\",\"max_tokens\":5," OU ",\"stop_sequences\":\"X\"}", 0, "'stop_sequences'"},
    {A, "{\"model\":\"m\",\"max_tokens\":5," OU ",\"tool_choice\":\"auto\"}", 0, "'tool_choice'"},
    {A,
     "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\","
     "\"id\":\"t\",\"name\":\"f\",\"input\":\"" CANARY "\"}]}]}",
     0, "'messages[0].content[0].input'"},
    {A, "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"" CANARY "\"}]}]}",
     0, "'messages[0].content[0].type'"},
    {G, "{\"contents\":{}}", 0, "'contents'"},
    {G, "{\"contents\":[{\"role\":\"bot\",\"parts\":[]}]}", 0, "'contents[0].role'"},
    {G, "{\"contents\":[{\"parts\":[{\"text\":\"" CANARY "\",\"inlineData\":{}}]}]}", 0, "'contents[0].parts[0]'"},
    {G, "{\"contents\":[{\"parts\":[{\"text\":7}]}]}", 0, "'contents[0].parts[0].text'"},
    {G, "{\"contents\":[{\"parts\":[{\"inlineData\":{\"mimeType\":\"image/png\",\"data\":7}}]}]}", 0,
     "'contents[0].parts[0].inlineData.data'"},
    {G, "{\"contents\":[{\"parts\":[{\"fileData\":{\"mimeType\":\"image/png\"}}]}]}", 0,
     "'contents[0].parts[0].fileData.fileUri'"},
    {G, "{\"contents\":[{\"parts\":[{\"text\":\"" CANARY "\"}]}],\"generationConfig\":{\"temperature\":\"x\"}}", 0,
     "'generationConfig.temperature'"},
    {G, "{\"contents\":[{\"parts\":[{\"functionCall\":{\"name\":\"f\"}}]}]}", 0,
     "'contents[0].parts[0].functionCall'"},
    /* invalid UTF-8: in a value, in a key, an overlong form, a surrogate, a truncated sequence */
    /* (yajl's own check catches the grossly invalid bytes first: "invalid JSON") */
    {O, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"" CANARY "\xff\"}]}", 0, "body:"},
    {O, "{\"model\":\"m\",\"mess\xc3\x28ges\":[]}", 0, "body:"},
    {A, "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"" CANARY "\xc0\xaf\"}]}", 0,
     "UTF-8"},
    {G, "{\"contents\":[{\"parts\":[{\"text\":\"" CANARY "\xed\xa0\x80\"}]}]}", 0, "UTF-8"},
    {G, "{\"contents\":[{\"parts\":[{\"text\":\"" CANARY "\xe2\x82\"}]}]}", 0, "body:"},
    {O, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xf4\x90\x80\x80" CANARY "\"}]}", 0, "UTF-8"},
    /* a NUL byte inside the body */
    {O, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\0b\"}]}", 55, "invalid JSON"},
};

static void test_malformed(void **state)
{
    (void)state;
    static const int targets[] = {O, A, G};
    for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++) {
        const malformed_t *m = &malformed[i];
        size_t len = m->len ? m->len : strlen(m->body);
        for (size_t k = 0; k < 3; k++) {
            char err[256];
            int rc = run_full(m->from, targets[k], m->body, len, 0, 5, false, NULL, NULL, err);
            if (m->from == targets[k] && rc == 0)
                continue; /* the same-format copy does not look inside the conversation */
            if (rc != -EINVAL || strstr(err, m->field) == NULL)
                fail_msg("malformed %zu to %d: rc %d, message \"%s\", wanted %s", i, targets[k], rc, err, m->field);
        }
    }
}

static void test_too_deep(void **state)
{
    (void)state;
    char body[1024];
    size_t n = 0;
    n += (size_t)snprintf(body + n, sizeof body - n, "{\"model\":\"m\",\"x\":");
    for (int i = 0; i < XLATE_MAX_DEPTH + 2; i++)
        body[n++] = '[';
    for (int i = 0; i < XLATE_MAX_DEPTH + 2; i++)
        body[n++] = ']';
    body[n++] = '}';
    body[n] = 0;
    char err[256];
    assert_int_equal(run(O, O, body, NULL, err), -EINVAL);
    assert_non_null(strstr(err, "nesting"));
}

static void test_out_limit_and_small_err(void **state)
{
    (void)state;
    wipe_buf_t out = WIPE_BUF_INIT(64);
    char err[256];
    int r = xlate_request(XLATE_OPENAI_CHAT, XLATE_ANTHROPIC, (const uint8_t *)openai_full, strlen(openai_full), "m", 0,
                          0, false, &out, NULL, err, sizeof err);
    assert_int_equal(r, -E2BIG);
    assert_null(strstr(err, CANARY));
    wipe_buf_free(&out);
    /* a tiny error buffer is still NUL-terminated; errlen 0 is never written */
    wipe_buf_t out2 = WIPE_BUF_INIT(1 << 16);
    char small[8];
    memset(small, 'z', sizeof small);
    r = xlate_request(XLATE_OPENAI_CHAT, XLATE_ANTHROPIC, (const uint8_t *)"{", 1, "m", 0, 0, false, &out2, NULL, small,
                      sizeof small);
    assert_int_equal(r, -EINVAL);
    assert_int_equal(small[sizeof small - 1], 0);
    char none = 'q';
    r = xlate_request(XLATE_OPENAI_CHAT, XLATE_ANTHROPIC, (const uint8_t *)"{", 1, "m", 0, 0, false, &out2, NULL, &none,
                      0);
    assert_int_equal(r, -EINVAL);
    assert_int_equal(none, 'q');
    wipe_buf_free(&out2);
    assert_string_equal(xlate_req_format_name(XLATE_GEMINI), "gemini");
}

/* The canary in every string of a valid body never reaches any error, whatever the pair. */
static void test_canary_never_in_errors(void **state)
{
    (void)state;
    static const char *const bodies[] = {openai_full, anthropic_full, gemini_full};
    for (int from = 0; from < 3; from++)
        for (int to = 0; to < 3; to++)
            for (size_t cut = 1; cut < strlen(bodies[from]); cut += 7) {
                char err[256];
                /* every truncation of the body is malformed JSON */
                assert_int_equal(run_full(from, to, bodies[from], cut, 0, 5, false, NULL, NULL, err), -EINVAL);
            }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openai_to_anthropic),
        cmocka_unit_test(test_openai_to_gemini),
        cmocka_unit_test(test_anthropic_to_openai),
        cmocka_unit_test(test_anthropic_to_gemini),
        cmocka_unit_test(test_gemini_to_openai),
        cmocka_unit_test(test_gemini_to_anthropic),
        cmocka_unit_test(test_round_trips),
        cmocka_unit_test(test_max_tokens_rules),
        cmocka_unit_test(test_options_mapping),
        cmocka_unit_test(test_merging_and_tool_ids),
        cmocka_unit_test(test_same_format),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_too_deep),
        cmocka_unit_test(test_out_limit_and_small_err),
        cmocka_unit_test(test_canary_never_in_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
