/* Unit tests for node/xlate_resp: every (upstream, client) pair of OpenAI chat, Anthropic messages and
 * Gemini, pass-through included, for whole answers (text, tool call) and streams (text, tool call with
 * its arguments split across events). Upstream streams are real-looking SSE bytes cut into events by
 * node/sse; the client's output is cut the same way (or parsed as the Gemini JSON array) and checked
 * event by event: order, shape, text, tool calls, finish reason and usage. Then the usage rules
 * (Anthropic cumulative message_delta, cache reads; Gemini candidates + thoughts, cumulative
 * usageMetadata), finish-reason words, error shapes, malformed events and premature ends. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <cmocka.h>
#include <yajl/yajl_tree.h>

#include "node/sse.h"
#include "node/xlate_resp.h"

#define OUT_MAX (1 << 20)
#define MODEL "client-model"
#define SEED 12345u
#define CREATED 1700000000

static const char *const fmt_name[] = {"openai", "anthropic", "gemini"};

/* ---- JSON helpers (yajl_tree) ---- */

static yajl_val jparse(const void *p, size_t n)
{
    char *s = malloc(n + 1);
    assert_non_null(s);
    memcpy(s, p, n);
    s[n] = 0;
    char err[256];
    yajl_val v = yajl_tree_parse(s, err, sizeof(err));
    if (v == NULL)
        fail_msg("not JSON (%s): %s", err, s);
    free(s);
    return v;
}

static yajl_val jp(yajl_val v, const char *key)
{
    if (v == NULL || !YAJL_IS_OBJECT(v))
        return NULL;
    for (size_t i = 0; i < v->u.object.len; i++)
        if (strcmp(v->u.object.keys[i], key) == 0)
            return v->u.object.values[i];
    return NULL;
}

static yajl_val ji(yajl_val v, size_t i)
{
    if (v == NULL || !YAJL_IS_ARRAY(v) || i >= v->u.array.len)
        return NULL;
    return v->u.array.values[i];
}

static size_t jlen(yajl_val v)
{
    assert_true(v != NULL && YAJL_IS_ARRAY(v));
    return v->u.array.len;
}

static const char *jstr(yajl_val v)
{
    if (v == NULL || !YAJL_IS_STRING(v))
        fail_msg("expected a string");
    return v->u.string;
}

static long long jint(yajl_val v)
{
    if (v == NULL || !YAJL_IS_INTEGER(v))
        fail_msg("expected an integer");
    return v->u.number.i;
}

/* {"location":"Paris"} and nothing else */
static void assert_paris(yajl_val args)
{
    assert_true(args != NULL && YAJL_IS_OBJECT(args));
    assert_int_equal(args->u.object.len, 1);
    assert_string_equal(jstr(jp(args, "location")), "Paris");
}

static void assert_paris_text(const char *s, size_t n)
{
    yajl_val v = jparse(s, n);
    assert_paris(v);
    yajl_tree_free(v);
}

/* ---- expectations ---- */

typedef struct expect {
    const char *text;    /* all answer text, "" if none */
    bool tool;           /* one call get_weather({"location":"Paris"}) */
    const char *tool_id; /* its upstream id, NULL: made by the translator */
    bool finish_tool;    /* else stop */
    xlate_usage_t usage; /* normalised */
} expect_t;

static const char *finish_for(xlate_format_t client, bool tool)
{
    static const char *const stop[] = {"stop", "end_turn", "STOP"};
    static const char *const tl[] = {"tool_calls", "tool_use", "STOP"};
    return tool ? tl[client] : stop[client];
}

static void assert_usage_eq(const xlate_usage_t *a, const xlate_usage_t *b)
{
    assert_int_equal(a->found, b->found);
    assert_int_equal(a->input_tokens, b->input_tokens);
    assert_int_equal(a->cached_input_tokens, b->cached_input_tokens);
    assert_int_equal(a->cache_creation_input_tokens, b->cache_creation_input_tokens);
    assert_int_equal(a->output_tokens, b->output_tokens);
    assert_int_equal(a->reasoning_tokens, b->reasoning_tokens);
}

/* The client's usage object holds the counts the header promises for normalised usage u. */
static void assert_client_usage(xlate_format_t client, yajl_val v, const xlate_usage_t *u)
{
    assert_true(v != NULL && YAJL_IS_OBJECT(v));
    switch (client) {
    case XLATE_OPENAI_CHAT:
        assert_int_equal(jint(jp(v, "prompt_tokens")), u->input_tokens);
        assert_int_equal(jint(jp(v, "completion_tokens")), u->output_tokens);
        assert_int_equal(jint(jp(v, "total_tokens")), u->input_tokens + u->output_tokens);
        assert_int_equal(jint(jp(jp(v, "prompt_tokens_details"), "cached_tokens")), u->cached_input_tokens);
        assert_int_equal(jint(jp(jp(v, "completion_tokens_details"), "reasoning_tokens")), u->reasoning_tokens);
        break;
    case XLATE_ANTHROPIC:
        assert_int_equal(jint(jp(v, "input_tokens")),
                         u->input_tokens - u->cached_input_tokens - u->cache_creation_input_tokens);
        assert_int_equal(jint(jp(v, "cache_read_input_tokens")), u->cached_input_tokens);
        assert_int_equal(jint(jp(v, "cache_creation_input_tokens")), u->cache_creation_input_tokens);
        assert_int_equal(jint(jp(v, "output_tokens")), u->output_tokens);
        break;
    case XLATE_GEMINI:
        assert_int_equal(jint(jp(v, "promptTokenCount")), u->input_tokens);
        assert_int_equal(jint(jp(v, "candidatesTokenCount")), u->output_tokens - u->reasoning_tokens);
        if (u->reasoning_tokens > 0)
            assert_int_equal(jint(jp(v, "thoughtsTokenCount")), u->reasoning_tokens);
        else
            assert_null(jp(v, "thoughtsTokenCount"));
        if (u->cached_input_tokens > 0)
            assert_int_equal(jint(jp(v, "cachedContentTokenCount")), u->cached_input_tokens);
        assert_int_equal(jint(jp(v, "totalTokenCount")), u->input_tokens + u->output_tokens);
        break;
    }
}

static void assert_tool_id(xlate_format_t client, const char *got, const expect_t *e)
{
    if (client == XLATE_GEMINI)
        return; /* Gemini clients get no ids */
    assert_non_null(got);
    if (e->tool_id != NULL)
        assert_string_equal(got, e->tool_id);
    else
        assert_true(strncmp(got, "call_", 5) == 0 && strlen(got) > 10);
}

/* ---- non-stream fixtures ---- */

static const char oa_text[] =
    "{\"id\":\"chatcmpl-up\",\"object\":\"chat.completion\",\"created\":1700000001,\"model\":\"gpt-4o\","
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hello \\\"world\\\"\\n\","
    "\"refusal\":null,\"annotations\":[]},\"logprobs\":null,\"finish_reason\":\"stop\"}],"
    "\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15,"
    "\"prompt_tokens_details\":{\"cached_tokens\":4,\"audio_tokens\":0},"
    "\"completion_tokens_details\":{\"reasoning_tokens\":2,\"audio_tokens\":0}},\"system_fingerprint\":\"fp_1\"}";
static const char an_text[] =
    "{\"id\":\"msg_up\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":["
    "{\"type\":\"thinking\",\"thinking\":\"hmm\",\"signature\":\"sig\"},"
    "{\"type\":\"text\",\"text\":\"Hello \\\"world\\\"\\n\"}],\"stop_reason\":\"end_turn\",\"stop_sequence\":null,"
    "\"usage\":{\"input_tokens\":6,\"cache_creation_input_tokens\":1,\"cache_read_input_tokens\":3,"
    "\"output_tokens\":5}}";
static const char ge_text[] =
    "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"let me think\",\"thought\":true},"
    "{\"text\":\"Hello \\\"world\\\"\\n\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],"
    "\"usageMetadata\":{\"promptTokenCount\":10,\"candidatesTokenCount\":5,\"thoughtsTokenCount\":3,"
    "\"cachedContentTokenCount\":4,\"totalTokenCount\":18},\"modelVersion\":\"gemini-2.5-flash\","
    "\"responseId\":\"r1\"}";

static const char oa_tool[] =
    "{\"id\":\"chatcmpl-up\",\"object\":\"chat.completion\",\"created\":1700000001,\"model\":\"gpt-4o\","
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":"
    "\"call_up1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":"
    "\"{\\\"location\\\":\\\"Paris\\\"}\"}}],\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],"
    "\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":7,\"total_tokens\":27}}";
static const char an_tool[] =
    "{\"id\":\"msg_up\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":["
    "{\"type\":\"text\",\"text\":\"Let me check.\"},{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":"
    "\"get_weather\",\"input\":{\"location\":\"Paris\"}}],\"stop_reason\":\"tool_use\",\"stop_sequence\":null,"
    "\"usage\":{\"input_tokens\":20,\"output_tokens\":7}}";
static const char ge_tool[] =
    "{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"get_weather\",\"args\":"
    "{\"location\":\"Paris\"}}}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],"
    "\"usageMetadata\":{\"promptTokenCount\":20,\"candidatesTokenCount\":7,\"totalTokenCount\":27},"
    "\"modelVersion\":\"gemini-2.5-flash\"}";

static const char *const text_body[] = {oa_text, an_text, ge_text};
static const char *const tool_body[] = {oa_tool, an_tool, ge_tool};

static expect_t text_expect(xlate_format_t up)
{
    expect_t e = {.text = "Hello \"world\"\n"};
    e.usage.found = true;
    switch (up) {
    case XLATE_OPENAI_CHAT:
        e.usage.input_tokens = 10, e.usage.cached_input_tokens = 4, e.usage.output_tokens = 5;
        e.usage.reasoning_tokens = 2;
        break;
    case XLATE_ANTHROPIC:
        e.usage.input_tokens = 10, e.usage.cached_input_tokens = 3, e.usage.cache_creation_input_tokens = 1;
        e.usage.output_tokens = 5;
        break;
    case XLATE_GEMINI:
        e.usage.input_tokens = 10, e.usage.cached_input_tokens = 4, e.usage.output_tokens = 8;
        e.usage.reasoning_tokens = 3;
        break;
    }
    return e;
}

static expect_t tool_expect(xlate_format_t up)
{
    expect_t e = {.text = up == XLATE_ANTHROPIC ? "Let me check." : "", .tool = true, .finish_tool = true};
    e.tool_id = up == XLATE_OPENAI_CHAT ? "call_up1" : up == XLATE_ANTHROPIC ? "toolu_1" : NULL;
    e.usage.found = true;
    e.usage.input_tokens = 20;
    e.usage.output_tokens = 7;
    return e;
}

/* Checks a translated whole answer against e. */
static void check_answer(xlate_format_t client, const uint8_t *body, size_t len, const expect_t *e)
{
    yajl_val v = jparse(body, len);
    const char *tool_id = NULL;
    switch (client) {
    case XLATE_OPENAI_CHAT: {
        assert_string_equal(jstr(jp(v, "object")), "chat.completion");
        assert_true(strncmp(jstr(jp(v, "id")), "chatcmpl-", 9) == 0);
        assert_string_equal(jstr(jp(v, "model")), MODEL);
        assert_int_equal(jint(jp(v, "created")), CREATED);
        assert_int_equal(jlen(jp(v, "choices")), 1);
        yajl_val ch = ji(jp(v, "choices"), 0);
        yajl_val msg = jp(ch, "message");
        assert_string_equal(jstr(jp(msg, "role")), "assistant");
        if (e->text[0] != 0)
            assert_string_equal(jstr(jp(msg, "content")), e->text);
        else
            assert_true(YAJL_IS_NULL(jp(msg, "content")));
        if (e->tool) {
            yajl_val calls = jp(msg, "tool_calls");
            assert_int_equal(jlen(calls), 1);
            yajl_val c = ji(calls, 0);
            assert_string_equal(jstr(jp(c, "type")), "function");
            assert_string_equal(jstr(jp(jp(c, "function"), "name")), "get_weather");
            const char *args = jstr(jp(jp(c, "function"), "arguments"));
            assert_paris_text(args, strlen(args));
            tool_id = jstr(jp(c, "id"));
        } else {
            assert_null(jp(msg, "tool_calls"));
        }
        assert_string_equal(jstr(jp(ch, "finish_reason")), finish_for(client, e->finish_tool));
        assert_client_usage(client, jp(v, "usage"), &e->usage);
        break;
    }
    case XLATE_ANTHROPIC: {
        assert_string_equal(jstr(jp(v, "type")), "message");
        assert_string_equal(jstr(jp(v, "role")), "assistant");
        assert_true(strncmp(jstr(jp(v, "id")), "msg_", 4) == 0);
        assert_string_equal(jstr(jp(v, "model")), MODEL);
        yajl_val content = jp(v, "content");
        size_t i = 0;
        if (e->text[0] != 0) {
            assert_string_equal(jstr(jp(ji(content, 0), "type")), "text");
            assert_string_equal(jstr(jp(ji(content, 0), "text")), e->text);
            i++;
        }
        if (e->tool) {
            yajl_val c = ji(content, i++);
            assert_string_equal(jstr(jp(c, "type")), "tool_use");
            assert_string_equal(jstr(jp(c, "name")), "get_weather");
            assert_paris(jp(c, "input"));
            tool_id = jstr(jp(c, "id"));
        }
        assert_int_equal(jlen(content), i);
        assert_string_equal(jstr(jp(v, "stop_reason")), finish_for(client, e->finish_tool));
        assert_true(YAJL_IS_NULL(jp(v, "stop_sequence")));
        assert_client_usage(client, jp(v, "usage"), &e->usage);
        break;
    }
    case XLATE_GEMINI: {
        yajl_val cand = ji(jp(v, "candidates"), 0);
        assert_string_equal(jstr(jp(jp(cand, "content"), "role")), "model");
        yajl_val parts = jp(jp(cand, "content"), "parts");
        size_t i = 0;
        if (e->text[0] != 0) {
            assert_string_equal(jstr(jp(ji(parts, 0), "text")), e->text);
            i++;
        }
        if (e->tool) {
            yajl_val fc = jp(ji(parts, i++), "functionCall");
            assert_string_equal(jstr(jp(fc, "name")), "get_weather");
            assert_paris(jp(fc, "args"));
            assert_null(jp(fc, "id"));
        }
        assert_int_equal(jlen(parts), i);
        assert_string_equal(jstr(jp(cand, "finishReason")), finish_for(client, e->finish_tool));
        assert_string_equal(jstr(jp(v, "modelVersion")), MODEL);
        assert_int_equal(strlen(jstr(jp(v, "responseId"))), 24);
        assert_client_usage(client, jp(v, "usageMetadata"), &e->usage);
        break;
    }
    }
    if (e->tool)
        assert_tool_id(client, tool_id, e);
    yajl_tree_free(v);
}

static void run_nonstream(const char *const *bodies, expect_t (*expect)(xlate_format_t))
{
    for (int up = 0; up < 3; up++) {
        for (int client = 0; client < 3; client++) {
            wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
            wipe_buf_append(&out, "X", 1); /* the answer is appended after what is there */
            xlate_usage_t u;
            char err[128];
            const char *b = bodies[up];
            int r = xlate_response(up, client, (const uint8_t *)b, strlen(b), MODEL, SEED, CREATED, &out, &u, err,
                                   sizeof(err));
            if (r != 0)
                fail_msg("%s -> %s: %d %s", fmt_name[up], fmt_name[client], r, err);
            expect_t e = expect(up);
            assert_usage_eq(&u, &e.usage);
            assert_int_equal(out.data[0], 'X');
            if (up == client) {
                assert_int_equal(out.len, strlen(b) + 1);
                assert_memory_equal(out.data + 1, b, strlen(b));
            } else {
                check_answer(client, out.data + 1, out.len - 1, &e);
            }
            xlate_usage_t u2;
            assert_int_equal(xlate_usage_of(up, (const uint8_t *)b, strlen(b), &u2), 0);
            assert_usage_eq(&u2, &e.usage);
            wipe_buf_free(&out);
        }
    }
}

static void test_nonstream_text(void **state)
{
    (void)state;
    run_nonstream(text_body, text_expect);
}

static void test_nonstream_tool(void **state)
{
    (void)state;
    run_nonstream(tool_body, tool_expect);
}

/* ---- streams ---- */

/* Upstream SSE streams, as the providers send them. */
static const char oa_stream_text[] =
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\","
    "\"system_fingerprint\":\"fp\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\","
    "\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\","
    "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello \\\"wor\"},\"logprobs\":null,\"finish_reason\":null}],"
    "\"usage\":null}\n\n"
    ": keep-alive\n\n"
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\","
    "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ld\\\"\\n\"},\"logprobs\":null,\"finish_reason\":null}],"
    "\"usage\":null}\n\n"
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\","
    "\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n"
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\","
    "\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15,"
    "\"prompt_tokens_details\":{\"cached_tokens\":4},\"completion_tokens_details\":{\"reasoning_tokens\":2}}}\n\n"
    "data: [DONE]\n\n";
static const char an_stream_text[] =
    "event: message_start\n"
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_up\",\"type\":\"message\",\"role\":\"assistant\","
    "\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":6,"
    "\"cache_creation_input_tokens\":1,\"cache_read_input_tokens\":3,\"output_tokens\":1}}}\n\n"
    "event: content_block_start\n"
    "data: "
    "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n"
    "event: ping\n"
    "data: {\"type\": \"ping\"}\n\n"
    "event: content_block_delta\n"
    "data: "
    "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hm\"}}\n\n"
    "event: content_block_delta\n"
    "data: "
    "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"s\"}}\n\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
    "event: content_block_start\n"
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello "
    "\\\"wor\"}}\n\n"
    "event: content_block_delta\n"
    "data: "
    "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"ld\\\"\\n\"}}\n\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n"
    "event: message_delta\n"
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},"
    "\"usage\":{\"output_tokens\":3}}\n\n"
    "event: message_delta\n"
    "data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":5}}\n\n"
    "event: message_stop\n"
    "data: {\"type\":\"message_stop\"}\n\n";
static const char ge_stream_text[] =
    "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"pondering\",\"thought\":true}],\"role\":\"model\"},"
    "\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":10,\"cachedContentTokenCount\":4,\"thoughtsTokenCount\":3,"
    "\"totalTokenCount\":13},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r1\"}\r\n\r\n"
    "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hello \\\"wor\"}],\"role\":\"model\"},\"index\":0}],"
    "\"usageMetadata\":{\"promptTokenCount\":10,\"candidatesTokenCount\":2,\"cachedContentTokenCount\":4,"
    "\"thoughtsTokenCount\":3,\"totalTokenCount\":15},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r1\"}"
    "\r\n\r\n"
    "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"ld\\\"\\n\"}],\"role\":\"model\"},\"finishReason\":"
    "\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":10,\"candidatesTokenCount\":5,"
    "\"cachedContentTokenCount\":4,\"thoughtsTokenCount\":3,\"totalTokenCount\":18},\"modelVersion\":"
    "\"gemini-2.5-flash\",\"responseId\":\"r1\"}\r\n\r\n";

static const char oa_stream_tool[] =
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\","
    "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,"
    "\"id\":\"call_up1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}],"
    "\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\","
    "\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"loc\"}}]},"
    "\"logprobs\":null,\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\","
    "\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":"
    "\"ation\\\":\\\"Pa\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\","
    "\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"ris\\\"}\"}}]},"
    "\"logprobs\":null,\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\","
    "\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}]}\n\n"
    "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\","
    "\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":7,\"total_tokens\":27}}\n\n"
    "data: [DONE]\n\n";
static const char an_stream_tool[] =
    "event: message_start\n"
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_up\",\"type\":\"message\",\"role\":\"assistant\","
    "\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":20,"
    "\"output_tokens\":1}}}\n\n"
    "event: content_block_start\n"
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me \"}}\n\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"check.\"}}\n\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
    "event: content_block_start\n"
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\","
    "\"name\":\"get_weather\",\"input\":{}}}\n\n"
    "event: content_block_delta\n"
    "data: "
    "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}"
    "\n\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":"
    "\"{\\\"location\\\": \"}}\n\n"
    "event: ping\n"
    "data: {\"type\": \"ping\"}\n\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":"
    "\"\\\"Paris\\\"}\"}}\n\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n"
    "event: message_delta\n"
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},"
    "\"usage\":{\"output_tokens\":7}}\n\n"
    "event: message_stop\n"
    "data: {\"type\":\"message_stop\"}\n\n";
static const char ge_stream_tool[] =
    "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"get_weather\",\"args\":"
    "{\"location\":\"Paris\"}}}],\"role\":\"model\"},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":20,"
    "\"candidatesTokenCount\":7,\"totalTokenCount\":27},\"modelVersion\":\"gemini-2.5-flash\"}\r\n\r\n"
    "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"\"}],\"role\":\"model\"},\"finishReason\":\"STOP\","
    "\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":20,\"candidatesTokenCount\":7,\"totalTokenCount\":27},"
    "\"modelVersion\":\"gemini-2.5-flash\"}\r\n\r\n";

static const char *const text_stream[] = {oa_stream_text, an_stream_text, ge_stream_text};
static const char *const tool_stream[] = {oa_stream_tool, an_stream_tool, ge_stream_tool};

/* Feeds upstream SSE bytes through node/sse into the translator. */
typedef struct feeder {
    xlate_stream_t *s;
    wipe_buf_t *out;
    int last;
} feeder_t;

static int feed_cb(void *data, const sse_event_t *ev)
{
    feeder_t *f = data;
    f->last = xlate_stream_event(f->s, (const char *)ev->name, ev->name_len, ev->data, ev->data_len, f->out);
    return f->last;
}

/* Feeds the whole upstream stream in pieces of piece bytes (0: whole), then finishes. */
static int feed_stream(xlate_stream_t *s, const char *up, size_t piece, wipe_buf_t *out)
{
    sse_parser_t p;
    sse_parser_init(&p, 1 << 16);
    feeder_t f = {s, out, 0};
    size_t len = strlen(up);
    if (piece == 0)
        piece = len;
    int r = 0;
    for (size_t off = 0; off < len && r == 0; off += piece) {
        size_t n = len - off < piece ? len - off : piece;
        uint8_t *buf = malloc(n);
        memcpy(buf, up + off, n);
        r = sse_parser_feed(&p, buf, n, feed_cb, &f);
        free(buf);
    }
    if (r == 0)
        r = sse_parser_finish(&p, feed_cb, &f);
    sse_parser_dispose(&p);
    if (r == 0)
        r = xlate_stream_finish(s, out);
    return r;
}

/* The client's stream, cut into events. */
#define MAX_OUT_EVENTS 64
typedef struct out_event {
    char name[64];
    char *data;
    size_t data_len;
    char *raw;
    size_t raw_len;
} out_event_t;

typedef struct out_events {
    out_event_t ev[MAX_OUT_EVENTS];
    size_t n;
} out_events_t;

static int collect_cb(void *data, const sse_event_t *ev)
{
    out_events_t *o = data;
    assert_true(ev->terminated);
    if (!ev->has_data)
        fail_msg("an output event without data");
    assert_true(o->n < MAX_OUT_EVENTS);
    out_event_t *e = &o->ev[o->n++];
    assert_true(ev->name_len < sizeof(e->name));
    memcpy(e->name, ev->name, ev->name_len);
    e->name[ev->name_len] = 0;
    e->data = malloc(ev->data_len + 1);
    memcpy(e->data, ev->data, ev->data_len);
    e->data[ev->data_len] = 0;
    e->data_len = ev->data_len;
    e->raw = malloc(ev->raw_len + 1);
    memcpy(e->raw, ev->raw, ev->raw_len);
    e->raw[ev->raw_len] = 0;
    e->raw_len = ev->raw_len;
    return 0;
}

static void split_output(const wipe_buf_t *out, out_events_t *o)
{
    memset(o, 0, sizeof(*o));
    sse_parser_t p;
    sse_parser_init(&p, 1 << 16);
    assert_int_equal(sse_parser_feed(&p, out->data, out->len, collect_cb, o), 0);
    assert_int_equal(sse_parser_finish(&p, collect_cb, o), 0);
    sse_parser_dispose(&p);
}

static void free_output(out_events_t *o)
{
    for (size_t i = 0; i < o->n; i++) {
        free(o->ev[i].data);
        free(o->ev[i].raw);
    }
    o->n = 0;
}

/* What a client stream said, put together. */
typedef struct heard {
    char text[256];
    size_t ntools;
    char tool_id[64];
    char tool_name[64];
    char tool_args[256];
    char finish[32];
    bool usage_chunk; /* OpenAI: a usage chunk came */
} heard_t;

static void cat(char *dst, size_t cap, const char *s)
{
    assert_true(strlen(dst) + strlen(s) < cap);
    strcat(dst, s);
}

/* OpenAI client: role chunk first, content / tool-call chunks, one finish chunk, the usage chunk iff
 * asked, [DONE]. */
static void hear_openai(const out_events_t *o, bool wants_usage, const xlate_usage_t *u, heard_t *h)
{
    assert_true(o->n >= 3);
    assert_string_equal(o->ev[o->n - 1].data, "[DONE]");
    bool finished = false;
    for (size_t i = 0; i + 1 < o->n; i++) {
        const out_event_t *e = &o->ev[i];
        assert_string_equal(e->name, "");
        yajl_val v = jparse(e->data, e->data_len);
        assert_string_equal(jstr(jp(v, "object")), "chat.completion.chunk");
        assert_true(strncmp(jstr(jp(v, "id")), "chatcmpl-", 9) == 0);
        assert_string_equal(jstr(jp(v, "model")), MODEL);
        assert_int_equal(jint(jp(v, "created")), CREATED);
        yajl_val choices = jp(v, "choices");
        if (jlen(choices) == 0) {
            assert_true(finished && wants_usage && !h->usage_chunk && i + 2 == o->n);
            h->usage_chunk = true;
            assert_client_usage(XLATE_OPENAI_CHAT, jp(v, "usage"), u);
            yajl_tree_free(v);
            continue;
        }
        assert_false(finished);
        yajl_val ch = ji(choices, 0);
        assert_int_equal(jint(jp(ch, "index")), 0);
        yajl_val d = jp(ch, "delta");
        if (i == 0) {
            assert_string_equal(jstr(jp(d, "role")), "assistant");
        } else {
            assert_null(jp(d, "role"));
        }
        if (jp(d, "content") != NULL)
            cat(h->text, sizeof(h->text), jstr(jp(d, "content")));
        yajl_val calls = jp(d, "tool_calls");
        if (calls != NULL) {
            assert_int_equal(jlen(calls), 1);
            yajl_val c = ji(calls, 0);
            yajl_val fn = jp(c, "function");
            if (jp(c, "id") != NULL) {
                assert_int_equal(jint(jp(c, "index")), h->ntools);
                h->ntools++;
                assert_string_equal(jstr(jp(c, "type")), "function");
                cat(h->tool_id, sizeof(h->tool_id), jstr(jp(c, "id")));
                cat(h->tool_name, sizeof(h->tool_name), jstr(jp(fn, "name")));
                assert_string_equal(jstr(jp(fn, "arguments")), "");
            } else {
                assert_int_equal(jint(jp(c, "index")), h->ntools - 1);
                assert_null(jp(fn, "name"));
                cat(h->tool_args, sizeof(h->tool_args), jstr(jp(fn, "arguments")));
            }
        }
        yajl_val fr = jp(ch, "finish_reason");
        assert_non_null(fr);
        if (!YAJL_IS_NULL(fr)) {
            finished = true;
            cat(h->finish, sizeof(h->finish), jstr(fr));
            assert_true(YAJL_IS_OBJECT(d) && d->u.object.len == 0);
        }
        yajl_tree_free(v);
    }
    assert_true(finished);
    assert_int_equal(h->usage_chunk, wants_usage);
}

/* Anthropic client: message_start, blocks (start, deltas, stop) indexed from 0, message_delta,
 * message_stop. */
static void hear_anthropic(const out_events_t *o, const xlate_usage_t *u, heard_t *h)
{
    assert_true(o->n >= 3);
    long long open = -1, next = 0;
    bool open_tool = false;
    for (size_t i = 0; i < o->n; i++) {
        const out_event_t *e = &o->ev[i];
        yajl_val v = jparse(e->data, e->data_len);
        assert_string_equal(jstr(jp(v, "type")), e->name);
        if (i == 0) {
            assert_string_equal(e->name, "message_start");
            yajl_val m = jp(v, "message");
            assert_true(strncmp(jstr(jp(m, "id")), "msg_", 4) == 0);
            assert_string_equal(jstr(jp(m, "role")), "assistant");
            assert_string_equal(jstr(jp(m, "model")), MODEL);
            assert_int_equal(jlen(jp(m, "content")), 0);
            assert_true(YAJL_IS_NULL(jp(m, "stop_reason")));
            assert_non_null(jp(jp(m, "usage"), "input_tokens"));
            assert_non_null(jp(jp(m, "usage"), "output_tokens"));
        } else if (i == o->n - 1) {
            assert_string_equal(e->name, "message_stop");
        } else if (i == o->n - 2) {
            assert_string_equal(e->name, "message_delta");
            assert_int_equal(open, -1);
            cat(h->finish, sizeof(h->finish), jstr(jp(jp(v, "delta"), "stop_reason")));
            assert_true(YAJL_IS_NULL(jp(jp(v, "delta"), "stop_sequence")));
            assert_client_usage(XLATE_ANTHROPIC, jp(v, "usage"), u);
        } else if (strcmp(e->name, "content_block_start") == 0) {
            assert_int_equal(open, -1);
            assert_int_equal(jint(jp(v, "index")), next);
            open = next++;
            yajl_val b = jp(v, "content_block");
            open_tool = strcmp(jstr(jp(b, "type")), "tool_use") == 0;
            if (open_tool) {
                h->ntools++;
                cat(h->tool_id, sizeof(h->tool_id), jstr(jp(b, "id")));
                cat(h->tool_name, sizeof(h->tool_name), jstr(jp(b, "name")));
                assert_true(YAJL_IS_OBJECT(jp(b, "input")) && jp(b, "input")->u.object.len == 0);
            } else {
                assert_string_equal(jstr(jp(b, "type")), "text");
                assert_string_equal(jstr(jp(b, "text")), "");
            }
        } else if (strcmp(e->name, "content_block_delta") == 0) {
            assert_int_equal(jint(jp(v, "index")), open);
            yajl_val d = jp(v, "delta");
            if (open_tool) {
                assert_string_equal(jstr(jp(d, "type")), "input_json_delta");
                cat(h->tool_args, sizeof(h->tool_args), jstr(jp(d, "partial_json")));
            } else {
                assert_string_equal(jstr(jp(d, "type")), "text_delta");
                cat(h->text, sizeof(h->text), jstr(jp(d, "text")));
            }
        } else if (strcmp(e->name, "content_block_stop") == 0) {
            assert_int_equal(jint(jp(v, "index")), open);
            open = -1;
        } else {
            fail_msg("unexpected event %s", e->name);
        }
        yajl_tree_free(v);
    }
}

/* One Gemini chunk (SSE data or array element): parts; finishReason and usageMetadata only on the last. */
static void hear_gemini_chunk(yajl_val v, bool last, const xlate_usage_t *u, heard_t *h)
{
    yajl_val cand = ji(jp(v, "candidates"), 0);
    assert_non_null(cand);
    assert_string_equal(jstr(jp(v, "modelVersion")), MODEL);
    assert_int_equal(strlen(jstr(jp(v, "responseId"))), 24);
    yajl_val parts = jp(jp(cand, "content"), "parts");
    for (size_t k = 0; k < jlen(parts); k++) {
        yajl_val p = ji(parts, k);
        if (jp(p, "text") != NULL) {
            cat(h->text, sizeof(h->text), jstr(jp(p, "text")));
        } else {
            yajl_val fc = jp(p, "functionCall");
            assert_non_null(fc);
            h->ntools++;
            cat(h->tool_name, sizeof(h->tool_name), jstr(jp(fc, "name")));
            assert_paris(jp(fc, "args"));
            assert_null(jp(fc, "id"));
            cat(h->tool_args, sizeof(h->tool_args), "{\"location\":\"Paris\"}");
        }
    }
    if (last) {
        cat(h->finish, sizeof(h->finish), jstr(jp(cand, "finishReason")));
        assert_client_usage(XLATE_GEMINI, jp(v, "usageMetadata"), u);
    } else {
        assert_null(jp(cand, "finishReason"));
        assert_null(jp(v, "usageMetadata"));
    }
}

static void hear_gemini(const out_events_t *o, const xlate_usage_t *u, heard_t *h)
{
    assert_true(o->n >= 1);
    for (size_t i = 0; i < o->n; i++) {
        const out_event_t *e = &o->ev[i];
        assert_string_equal(e->name, "");
        assert_true(e->raw_len > 4 && memcmp(e->raw + e->raw_len - 4, "\r\n\r\n", 4) == 0);
        yajl_val v = jparse(e->data, e->data_len);
        hear_gemini_chunk(v, i + 1 == o->n, u, h);
        yajl_tree_free(v);
    }
}

static void check_heard(xlate_format_t client, const heard_t *h, const expect_t *e)
{
    assert_string_equal(h->text, e->text);
    assert_int_equal(h->ntools, e->tool ? 1 : 0);
    if (e->tool) {
        assert_string_equal(h->tool_name, "get_weather");
        assert_paris_text(h->tool_args, strlen(h->tool_args));
        assert_tool_id(client, h->tool_id, e);
    }
    assert_string_equal(h->finish, finish_for(client, e->finish_tool));
}

static const char *strip_usage_chunk(const char *up, char *buf, size_t cap)
{
    /* the OpenAI pass-through without include_usage: the usage chunk (the one with "choices":[]) goes */
    const char *u = strstr(up, "\"choices\":[],");
    assert_non_null(u);
    const char *start = u;
    while (start > up && !(start[-1] == '\n' && start[-2] == '\n'))
        start--;
    const char *end = strstr(u, "\n\n") + 2;
    size_t a = (size_t)(start - up), b = strlen(end);
    assert_true(a + b < cap);
    memcpy(buf, up, a);
    memcpy(buf + a, end, b + 1);
    return buf;
}

static void run_stream(const char *const *streams, expect_t (*expect)(xlate_format_t), bool wants_usage, size_t piece)
{
    for (int up = 0; up < 3; up++) {
        for (int client = 0; client < 3; client++) {
            xlate_stream_t *s;
            assert_int_equal(xlate_stream_new(up, client, MODEL, SEED, CREATED, wants_usage, &s), 0);
            wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
            int r = feed_stream(s, streams[up], piece, &out);
            if (r != 0)
                fail_msg("%s -> %s: %d", fmt_name[up], fmt_name[client], r);
            expect_t e = expect(up);
            xlate_usage_t u;
            xlate_stream_usage(s, &u);
            assert_usage_eq(&u, &e.usage);
            /* a second finish and later events append nothing */
            size_t len = out.len;
            assert_int_equal(xlate_stream_finish(s, &out), 0);
            assert_int_equal(xlate_stream_event(s, NULL, 0, (const uint8_t *)"{\"x\":1}", 7, &out), 0);
            assert_int_equal(out.len, len);
            if (up == client) {
                char buf[8192];
                const char *want = streams[up];
                if (up == XLATE_OPENAI_CHAT && !wants_usage)
                    want = strip_usage_chunk(want, buf, sizeof(buf));
                /* the keep-alive comment is not forwarded: compare without it */
                char want2[8192];
                const char *ka = strstr(want, ": keep-alive\n\n");
                if (ka != NULL) {
                    size_t a = (size_t)(ka - want);
                    memcpy(want2, want, a);
                    strcpy(want2 + a, ka + strlen(": keep-alive\n\n"));
                    want = want2;
                }
                assert_int_equal(out.len, strlen(want));
                assert_memory_equal(out.data, want, out.len);
            } else {
                out_events_t o;
                split_output(&out, &o);
                heard_t h;
                memset(&h, 0, sizeof(h));
                switch (client) {
                case XLATE_OPENAI_CHAT:
                    hear_openai(&o, wants_usage, &e.usage, &h);
                    break;
                case XLATE_ANTHROPIC:
                    hear_anthropic(&o, &e.usage, &h);
                    break;
                case XLATE_GEMINI:
                    hear_gemini(&o, &e.usage, &h);
                    break;
                }
                check_heard(client, &h, &e);
                free_output(&o);
            }
            wipe_buf_free(&out);
            xlate_stream_free(s);
        }
    }
}

static void test_stream_text(void **state)
{
    (void)state;
    run_stream(text_stream, text_expect, true, 0);
    run_stream(text_stream, text_expect, false, 0);
    run_stream(text_stream, text_expect, true, 7); /* upstream bytes cut anywhere */
}

static void test_stream_tool(void **state)
{
    (void)state;
    run_stream(tool_stream, tool_expect, true, 0);
    run_stream(tool_stream, tool_expect, false, 1);
}

/* ---- usage rules ---- */

static xlate_stream_t *stream_of(xlate_format_t up, xlate_format_t client, bool wants_usage)
{
    xlate_stream_t *s;
    assert_int_equal(xlate_stream_new(up, client, MODEL, SEED, CREATED, wants_usage, &s), 0);
    return s;
}

static void ev(xlate_stream_t *s, const char *name, const char *data, wipe_buf_t *out)
{
    int r = xlate_stream_event(s, name, name != NULL ? strlen(name) : 0, (const uint8_t *)data, strlen(data), out);
    if (r != 0)
        fail_msg("event %s: %d", data, r);
}

/* Text, then two calls one after the other (OpenAI upstream), to Anthropic and Gemini clients; and a
 * Gemini answer with two calls without ids: the made ids are the same in a stream and a whole answer. */
static void test_stream_two_tools(void **state)
{
    (void)state;
    static const char *const chunks[] = {
        "{\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Let me check.\"}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\","
        "\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"x\\\"\"}"
        "}"
        "]}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"type\":\"function\","
        "\"function\":{\"name\":\"g\",\"arguments\":\"{\\\"y\\\":\"}}]}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\"2}\"}}]}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}",
        "[DONE]",
    };
    /* Anthropic client: text block 0, tool blocks 1 and 2 */
    xlate_stream_t *s = stream_of(XLATE_OPENAI_CHAT, XLATE_ANTHROPIC, false);
    wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++)
        ev(s, NULL, chunks[i], &out);
    assert_int_equal(xlate_stream_finish(s, &out), 0);
    out_events_t o;
    split_output(&out, &o);
    static const char *const names[] = {
        "message_start",       "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta",       "message_stop",
    };
    assert_int_equal(o.n, sizeof(names) / sizeof(names[0]));
    for (size_t i = 0; i < o.n; i++)
        assert_string_equal(o.ev[i].name, names[i]);
    yajl_val v = jparse(o.ev[8].data, o.ev[8].data_len);
    assert_int_equal(jint(jp(v, "index")), 2);
    assert_string_equal(jstr(jp(jp(v, "content_block"), "id")), "call_b");
    assert_string_equal(jstr(jp(jp(v, "content_block"), "name")), "g");
    yajl_tree_free(v);
    v = jparse(o.ev[12].data, o.ev[12].data_len);
    assert_string_equal(jstr(jp(jp(v, "delta"), "stop_reason")), "tool_use");
    yajl_tree_free(v);
    free_output(&o);
    wipe_buf_free(&out);
    xlate_stream_free(s);

    /* Gemini client: a text chunk, one chunk per whole call, the last chunk */
    s = stream_of(XLATE_OPENAI_CHAT, XLATE_GEMINI, false);
    out = (wipe_buf_t)WIPE_BUF_INIT(OUT_MAX);
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++)
        ev(s, NULL, chunks[i], &out);
    assert_int_equal(xlate_stream_finish(s, &out), 0);
    split_output(&out, &o);
    assert_int_equal(o.n, 4);
    v = jparse(o.ev[1].data, o.ev[1].data_len);
    yajl_val fc = jp(ji(jp(jp(ji(jp(v, "candidates"), 0), "content"), "parts"), 0), "functionCall");
    assert_string_equal(jstr(jp(fc, "name")), "f");
    assert_int_equal(jint(jp(jp(fc, "args"), "x")), 1);
    yajl_tree_free(v);
    v = jparse(o.ev[2].data, o.ev[2].data_len);
    fc = jp(ji(jp(jp(ji(jp(v, "candidates"), 0), "content"), "parts"), 0), "functionCall");
    assert_string_equal(jstr(jp(fc, "name")), "g");
    assert_int_equal(jint(jp(jp(fc, "args"), "y")), 2);
    yajl_tree_free(v);
    v = jparse(o.ev[3].data, o.ev[3].data_len);
    assert_string_equal(jstr(jp(ji(jp(v, "candidates"), 0), "finishReason")), "STOP");
    assert_non_null(jp(v, "usageMetadata"));
    yajl_tree_free(v);
    free_output(&o);
    wipe_buf_free(&out);
    xlate_stream_free(s);

    /* Gemini calls without ids: call_<12>_<k>, the same in a stream and a whole answer */
    static const char two[] =
        "{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\",\"args\":{}}},{\"functionCall\":"
        "{\"name\":\"g\"}}],\"role\":\"model\"},\"finishReason\":\"STOP\"}]}";
    xlate_usage_t u;
    out = (wipe_buf_t)WIPE_BUF_INIT(OUT_MAX);
    assert_int_equal(xlate_response(XLATE_GEMINI, XLATE_OPENAI_CHAT, (const uint8_t *)two, strlen(two), MODEL, SEED,
                                    CREATED, &out, &u, NULL, 0),
                     0);
    assert_false(u.found);
    v = jparse(out.data, out.len);
    yajl_val calls = jp(jp(ji(jp(v, "choices"), 0), "message"), "tool_calls");
    assert_int_equal(jlen(calls), 2);
    char id0[64], id1[64];
    snprintf(id0, sizeof(id0), "%s", jstr(jp(ji(calls, 0), "id")));
    snprintf(id1, sizeof(id1), "%s", jstr(jp(ji(calls, 1), "id")));
    assert_int_equal(strlen(id0), strlen("call_") + 12 + 2);
    assert_string_equal(id0 + strlen(id0) - 2, "_0");
    assert_string_equal(id1 + strlen(id1) - 2, "_1");
    assert_memory_equal(id0, id1, strlen(id0) - 1);
    assert_string_equal(jstr(jp(jp(ji(calls, 1), "function"), "arguments")), "{}");
    assert_string_equal(jstr(jp(ji(jp(v, "choices"), 0), "finish_reason")), "tool_calls");
    yajl_tree_free(v);
    wipe_buf_free(&out);
    s = stream_of(XLATE_GEMINI, XLATE_OPENAI_CHAT, false);
    out = (wipe_buf_t)WIPE_BUF_INIT(OUT_MAX);
    ev(s, NULL, two, &out);
    assert_int_equal(xlate_stream_finish(s, &out), 0);
    split_output(&out, &o);
    heard_t h;
    memset(&h, 0, sizeof(h));
    assert_int_equal(o.n, 7); /* role, call f, its args, call g, its args "{}", finish, [DONE] */
    v = jparse(o.ev[1].data, o.ev[1].data_len);
    assert_string_equal(jstr(jp(ji(jp(jp(ji(jp(v, "choices"), 0), "delta"), "tool_calls"), 0), "id")), id0);
    yajl_tree_free(v);
    v = jparse(o.ev[3].data, o.ev[3].data_len);
    assert_string_equal(jstr(jp(ji(jp(jp(ji(jp(v, "choices"), 0), "delta"), "tool_calls"), 0), "id")), id1);
    yajl_tree_free(v);
    v = jparse(o.ev[5].data, o.ev[5].data_len);
    assert_string_equal(jstr(jp(ji(jp(v, "choices"), 0), "finish_reason")), "tool_calls");
    yajl_tree_free(v);
    free_output(&o);
    wipe_buf_free(&out);
    xlate_stream_free(s);
}

static void test_anthropic_usage_cumulative(void **state)
{
    (void)state;
    for (int client = 0; client < 3; client++) {
        xlate_stream_t *s = stream_of(XLATE_ANTHROPIC, client, true);
        wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
        ev(s, "message_start",
           "{\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\","
           "\"content\":[],\"model\":\"c\",\"usage\":{\"input_tokens\":7,\"cache_read_input_tokens\":100,"
           "\"cache_creation_input_tokens\":20,\"output_tokens\":1}}}",
           &out);
        xlate_usage_t u;
        xlate_stream_usage(s, &u);
        assert_true(u.found);
        assert_int_equal(u.input_tokens, 127);
        assert_int_equal(u.cached_input_tokens, 100);
        assert_int_equal(u.cache_creation_input_tokens, 20);
        assert_int_equal(u.output_tokens, 1);
        ev(s, "content_block_start",
           "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}", &out);
        ev(s, "content_block_delta",
           "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a\"}}", &out);
        ev(s, "content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}", &out);
        /* cumulative: each message_delta replaces, never adds */
        ev(s, "message_delta", "{\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":10}}", &out);
        ev(s, "message_delta",
           "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\",\"stop_sequence\":null},"
           "\"usage\":{\"output_tokens\":15}}",
           &out);
        xlate_stream_usage(s, &u);
        assert_int_equal(u.output_tokens, 15);
        assert_int_equal(u.input_tokens, 127); /* counts the delta does not repeat are kept */
        /* a delta that repeats the input counts (newer API versions) replaces them too */
        ev(s, "message_delta",
           "{\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"input_tokens\":8,\"cache_read_input_tokens\":100,"
           "\"cache_creation_input_tokens\":20,\"output_tokens\":16}}",
           &out);
        xlate_stream_usage(s, &u);
        assert_int_equal(u.input_tokens, 128);
        assert_int_equal(u.cached_input_tokens, 100);
        assert_int_equal(u.output_tokens, 16);
        ev(s, "message_stop", "{\"type\":\"message_stop\"}", &out);
        assert_int_equal(xlate_stream_finish(s, &out), 0);
        out_events_t o;
        split_output(&out, &o);
        heard_t h;
        memset(&h, 0, sizeof(h));
        if (client == XLATE_ANTHROPIC) { /* pass-through: every event as it came */
            assert_int_equal(o.n, 8);
            assert_string_equal(o.ev[7].name, "message_stop");
            free_output(&o);
            wipe_buf_free(&out);
            xlate_stream_free(s);
            continue;
        }
        if (client == XLATE_OPENAI_CHAT)
            hear_openai(&o, true, &u, &h);
        else
            hear_gemini(&o, &u, &h);
        assert_string_equal(h.text, "a");
        static const char *const length[] = {"length", "max_tokens", "MAX_TOKENS"};
        assert_string_equal(h.finish, length[client]);
        free_output(&o);
        wipe_buf_free(&out);
        xlate_stream_free(s);
    }
}

static void test_gemini_usage(void **state)
{
    (void)state;
    /* whole answer: output = candidates + thoughts; toolUsePrompt counts as input */
    static const char body[] =
        "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"x\"}],\"role\":\"model\"},\"finishReason\":\"STOP\"}],"
        "\"usageMetadata\":{\"promptTokenCount\":100,\"toolUsePromptTokenCount\":5,\"cachedContentTokenCount\":60,"
        "\"candidatesTokenCount\":7,\"thoughtsTokenCount\":30,\"totalTokenCount\":142}}";
    xlate_usage_t u;
    assert_int_equal(xlate_usage_of(XLATE_GEMINI, (const uint8_t *)body, strlen(body), &u), 0);
    assert_true(u.found);
    assert_int_equal(u.input_tokens, 105);
    assert_int_equal(u.cached_input_tokens, 60);
    assert_int_equal(u.output_tokens, 37);
    assert_int_equal(u.reasoning_tokens, 30);

    /* stream: usageMetadata on several chunks, cumulative: the last wins */
    for (int client = 0; client < 3; client++) {
        xlate_stream_t *s = stream_of(XLATE_GEMINI, client, true);
        wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
        ev(s, NULL,
           "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}],\"role\":\"model\"}}],\"usageMetadata\":"
           "{\"promptTokenCount\":9,\"candidatesTokenCount\":1,\"thoughtsTokenCount\":4,\"totalTokenCount\":14}}",
           &out);
        xlate_stream_usage(s, &u);
        assert_int_equal(u.output_tokens, 5);
        ev(s, NULL,
           "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"b\"}],\"role\":\"model\"}}],\"usageMetadata\":"
           "{\"promptTokenCount\":9,\"candidatesTokenCount\":2,\"thoughtsTokenCount\":4,\"totalTokenCount\":15}}",
           &out);
        ev(s, NULL,
           "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"c\"}],\"role\":\"model\"},\"finishReason\":"
           "\"MAX_TOKENS\"}],\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":3,"
           "\"thoughtsTokenCount\":4,\"cachedContentTokenCount\":2,\"totalTokenCount\":16}}",
           &out);
        assert_int_equal(xlate_stream_finish(s, &out), 0);
        xlate_stream_usage(s, &u);
        assert_int_equal(u.input_tokens, 9);
        assert_int_equal(u.cached_input_tokens, 2);
        assert_int_equal(u.output_tokens, 7);
        assert_int_equal(u.reasoning_tokens, 4);
        heard_t h;
        memset(&h, 0, sizeof(h));
        if (client == XLATE_GEMINI) { /* pass-through: three events unchanged */
            assert_non_null(memmem(out.data, out.len, "\"candidatesTokenCount\":3", 24));
        } else {
            out_events_t o;
            split_output(&out, &o);
            if (client == XLATE_OPENAI_CHAT)
                hear_openai(&o, true, &u, &h);
            else
                hear_anthropic(&o, &u, &h);
            assert_string_equal(h.text, "abc");
            assert_string_equal(h.finish, client == XLATE_OPENAI_CHAT ? "length" : "max_tokens");
            free_output(&o);
        }
        wipe_buf_free(&out);
        xlate_stream_free(s);
    }
}

/* Gemini client, JSON-array form: "[" chunk ",\r\n" chunk ... "]", last chunk with finishReason and usage. */
static void test_gemini_array_stream(void **state)
{
    (void)state;
    for (int up = 0; up < 2; up++) {
        xlate_stream_t *s = stream_of(up, XLATE_GEMINI, false);
        xlate_stream_gemini_array(s);
        wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
        assert_int_equal(feed_stream(s, tool_stream[up], 0, &out), 0);
        assert_int_equal(out.data[0], '[');
        assert_int_equal(out.data[out.len - 1], ']');
        yajl_val v = jparse(out.data, out.len);
        assert_true(YAJL_IS_ARRAY(v));
        expect_t e = tool_expect(up);
        heard_t h;
        memset(&h, 0, sizeof(h));
        for (size_t i = 0; i < jlen(v); i++)
            hear_gemini_chunk(ji(v, i), i + 1 == jlen(v), &e.usage, &h);
        check_heard(XLATE_GEMINI, &h, &e);
        yajl_tree_free(v);
        wipe_buf_free(&out);
        xlate_stream_free(s);
    }
    /* pass-through in array form: the chunks, unchanged, in an array */
    xlate_stream_t *s = stream_of(XLATE_GEMINI, XLATE_GEMINI, false);
    xlate_stream_gemini_array(s);
    wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
    assert_int_equal(feed_stream(s, ge_stream_text, 0, &out), 0);
    yajl_val v = jparse(out.data, out.len);
    assert_int_equal(jlen(v), 3);
    assert_string_equal(jstr(jp(ji(v, 0), "responseId")), "r1");
    yajl_tree_free(v);
    wipe_buf_free(&out);
    xlate_stream_free(s);
}

/* ---- finish reasons ---- */

static void test_finish_reasons(void **state)
{
    (void)state;
    static const struct {
        xlate_format_t up;
        const char *word;
        const char *oa, *an, *ge;
    } cases[] = {
        {XLATE_OPENAI_CHAT, "stop", "stop", "end_turn", "STOP"},
        {XLATE_OPENAI_CHAT, "length", "length", "max_tokens", "MAX_TOKENS"},
        {XLATE_OPENAI_CHAT, "content_filter", "content_filter", "refusal", "SAFETY"},
        {XLATE_OPENAI_CHAT, "weird", "stop", "end_turn", "OTHER"},
        {XLATE_ANTHROPIC, "end_turn", "stop", "end_turn", "STOP"},
        {XLATE_ANTHROPIC, "stop_sequence", "stop", "stop_sequence", "STOP"},
        {XLATE_ANTHROPIC, "max_tokens", "length", "max_tokens", "MAX_TOKENS"},
        {XLATE_ANTHROPIC, "model_context_window_exceeded", "length", "max_tokens", "MAX_TOKENS"},
        {XLATE_ANTHROPIC, "refusal", "content_filter", "refusal", "SAFETY"},
        {XLATE_ANTHROPIC, "pause_turn", "stop", "pause_turn", "OTHER"},
        {XLATE_GEMINI, "STOP", "stop", "end_turn", "STOP"},
        {XLATE_GEMINI, "MAX_TOKENS", "length", "max_tokens", "MAX_TOKENS"},
        {XLATE_GEMINI, "SAFETY", "content_filter", "refusal", "SAFETY"},
        {XLATE_GEMINI, "RECITATION", "content_filter", "refusal", "SAFETY"},
        {XLATE_GEMINI, "PROHIBITED_CONTENT", "content_filter", "refusal", "SAFETY"},
        {XLATE_GEMINI, "LANGUAGE", "stop", "end_turn", "OTHER"},
        {XLATE_GEMINI, "MALFORMED_FUNCTION_CALL", "stop", "end_turn", "OTHER"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char body[1024];
        switch (cases[i].up) {
        case XLATE_OPENAI_CHAT:
            snprintf(body, sizeof(body),
                     "{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"t\"},"
                     "\"finish_reason\":\"%s\"}]}",
                     cases[i].word);
            break;
        case XLATE_ANTHROPIC:
            snprintf(body, sizeof(body),
                     "{\"type\":\"message\",\"content\":[{\"type\":\"text\",\"text\":\"t\"}],\"stop_reason\":\"%s\","
                     "\"stop_sequence\":\"END\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}",
                     cases[i].word);
            break;
        case XLATE_GEMINI:
            snprintf(body, sizeof(body),
                     "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"t\"}]},\"finishReason\":\"%s\"}]}",
                     cases[i].word);
            break;
        }
        const char *want[] = {cases[i].oa, cases[i].an, cases[i].ge};
        for (int client = 0; client < 3; client++) {
            if (client == (int)cases[i].up)
                continue;
            wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
            xlate_usage_t u;
            assert_int_equal(xlate_response(cases[i].up, client, (const uint8_t *)body, strlen(body), MODEL, 1, 2, &out,
                                            &u, NULL, 0),
                             0);
            yajl_val v = jparse(out.data, out.len);
            const char *got = client == XLATE_OPENAI_CHAT ? jstr(jp(ji(jp(v, "choices"), 0), "finish_reason"))
                              : client == XLATE_ANTHROPIC ? jstr(jp(v, "stop_reason"))
                                                          : jstr(jp(ji(jp(v, "candidates"), 0), "finishReason"));
            if (strcmp(got, want[client]) != 0)
                fail_msg("%s %s -> %s: %s, want %s", fmt_name[cases[i].up], cases[i].word, fmt_name[client], got,
                         want[client]);
            if (client == XLATE_ANTHROPIC) /* stop_sequence kept only Anthropic to Anthropic */
                assert_true(YAJL_IS_NULL(jp(v, "stop_sequence")));
            yajl_tree_free(v);
            wipe_buf_free(&out);
        }
    }
    /* Gemini promptFeedback.blockReason without candidates: filtered */
    static const char blocked[] = "{\"promptFeedback\":{\"blockReason\":\"SAFETY\"},\"usageMetadata\":"
                                  "{\"promptTokenCount\":4,\"totalTokenCount\":4}}";
    wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
    xlate_usage_t u;
    assert_int_equal(xlate_response(XLATE_GEMINI, XLATE_OPENAI_CHAT, (const uint8_t *)blocked, strlen(blocked), MODEL,
                                    1, 2, &out, &u, NULL, 0),
                     0);
    yajl_val v = jparse(out.data, out.len);
    assert_string_equal(jstr(jp(ji(jp(v, "choices"), 0), "finish_reason")), "content_filter");
    assert_true(YAJL_IS_NULL(jp(jp(ji(jp(v, "choices"), 0), "message"), "content")));
    assert_int_equal(u.input_tokens, 4);
    yajl_tree_free(v);
    wipe_buf_free(&out);
}

/* ---- errors ---- */

static void check_error_shape(xlate_format_t client, yajl_val v, int status, const char *msg, const char *oa_code,
                              const char *an_type, const char *ge_status)
{
    yajl_val e = jp(v, "error");
    assert_non_null(e);
    switch (client) {
    case XLATE_OPENAI_CHAT:
        assert_string_equal(jstr(jp(e, "message")), msg);
        assert_non_null(jstr(jp(e, "type")));
        assert_true(YAJL_IS_NULL(jp(e, "param")));
        assert_string_equal(jstr(jp(e, "code")), oa_code);
        break;
    case XLATE_ANTHROPIC:
        assert_string_equal(jstr(jp(v, "type")), "error");
        assert_string_equal(jstr(jp(e, "type")), an_type);
        assert_string_equal(jstr(jp(e, "message")), msg);
        break;
    case XLATE_GEMINI:
        assert_int_equal(jint(jp(e, "code")), status);
        assert_string_equal(jstr(jp(e, "message")), msg);
        assert_string_equal(jstr(jp(e, "status")), ge_status);
        break;
    }
}

static void test_error_shapes(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        "{\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\",\"param\":null,\"code\":"
        "\"rate_limit_exceeded\"}}",
        "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"Rate limit reached\"}}",
        "{\"error\":{\"code\":429,\"message\":\"Rate limit reached\",\"status\":\"RESOURCE_EXHAUSTED\"}}",
    };
    for (int up = 0; up < 3; up++) {
        for (int client = 0; client < 3; client++) {
            wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
            assert_int_equal(xlate_error(up, client, 429, (const uint8_t *)bodies[up], strlen(bodies[up]), &out), 0);
            if (up == client) {
                assert_int_equal(out.len, strlen(bodies[up]));
                assert_memory_equal(out.data, bodies[up], out.len);
            } else {
                yajl_val v = jparse(out.data, out.len);
                check_error_shape(client, v, 429, "Rate limit reached", "rate_limit_exceeded", "rate_limit_error",
                                  "RESOURCE_EXHAUSTED");
                yajl_tree_free(v);
            }
            wipe_buf_free(&out);
        }
    }
    /* a body without a message (or not JSON): "upstream error (status N)", words from the status */
    static const struct {
        int status;
        const char *oa, *an, *ge;
    } st[] = {
        {400, "invalid_request", "invalid_request_error", "INVALID_ARGUMENT"},
        {401, "invalid_api_key", "authentication_error", "UNAUTHENTICATED"},
        {403, "permission_denied", "permission_error", "PERMISSION_DENIED"},
        {404, "not_found", "not_found_error", "NOT_FOUND"},
        {413, "request_too_large", "request_too_large", "INVALID_ARGUMENT"},
        {500, "upstream_error", "api_error", "INTERNAL"},
        {502, "upstream_error", "api_error", "UNAVAILABLE"},
        {504, "upstream_timeout", "api_error", "DEADLINE_EXCEEDED"},
        {529, "upstream_error", "overloaded_error", "UNAVAILABLE"},
    };
    for (size_t i = 0; i < sizeof(st) / sizeof(st[0]); i++) {
        for (int client = 0; client < 3; client++) {
            for (int up = 0; up < 3; up++) {
                const char *body = (i % 2) ? "<html>bad gateway</html>" : "{\"detail\":\"x\"}";
                wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
                assert_int_equal(xlate_error(up, client, st[i].status, (const uint8_t *)body, strlen(body), &out), 0);
                yajl_val v = jparse(out.data, out.len);
                char msg[64];
                snprintf(msg, sizeof(msg), "upstream error (status %d)", st[i].status);
                check_error_shape(client, v, st[i].status, msg, st[i].oa, st[i].an, st[i].ge);
                assert_null(memmem(out.data, out.len, "bad gateway", 11));
                yajl_tree_free(v);
                wipe_buf_free(&out);
            }
        }
    }
    /* a long message is cut to 1024 bytes on a character boundary */
    char body[4096];
    int n = snprintf(body, sizeof(body), "{\"error\":{\"message\":\"");
    for (int k = 0; k < 700; k++)
        n += snprintf(body + n, sizeof(body) - (size_t)n, "\xc3\xa9"); /* 1400 bytes of 2-byte characters */
    snprintf(body + n, sizeof(body) - (size_t)n, "\",\"type\":\"x\"}}");
    wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
    assert_int_equal(xlate_error(XLATE_OPENAI_CHAT, XLATE_GEMINI, 400, (const uint8_t *)body, strlen(body), &out), 0);
    yajl_val v = jparse(out.data, out.len); /* yajl checks the UTF-8 */
    assert_int_equal(strlen(jstr(jp(jp(v, "error"), "message"))), 1024);
    yajl_tree_free(v);
    wipe_buf_free(&out);
}

/* In-stream errors: upstream error events become the client's in-stream error, and the stream ends. */
static void test_stream_errors(void **state)
{
    (void)state;
    static const struct {
        xlate_format_t up;
        const char *name, *data;
    } errs[] = {
        {XLATE_OPENAI_CHAT, NULL, "{\"error\":{\"message\":\"Overloaded\",\"type\":\"server_error\",\"code\":null}}"},
        {XLATE_ANTHROPIC, "error",
         "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":"
         "\"Overloaded\"}}"},
        {XLATE_GEMINI, NULL, "{\"error\":{\"code\":503,\"message\":\"Overloaded\",\"status\":\"UNAVAILABLE\"}}"},
    };
    for (size_t i = 0; i < 3; i++) {
        for (int client = 0; client < 3; client++) {
            if (client == (int)errs[i].up)
                continue;
            xlate_stream_t *s = stream_of(errs[i].up, client, true);
            wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
            ev(s, errs[i].name, errs[i].data, &out);
            size_t len = out.len;
            /* the stream has ended: later events and finish append nothing */
            assert_int_equal(xlate_stream_finish(s, &out), 0);
            assert_int_equal(out.len, len);
            out_events_t o;
            split_output(&out, &o);
            const out_event_t *last = &o.ev[o.n - 1];
            yajl_val v = jparse(last->data, last->data_len);
            if (client == XLATE_ANTHROPIC)
                assert_string_equal(last->name, "error");
            int status = errs[i].up == XLATE_OPENAI_CHAT ? 500 : errs[i].up == XLATE_ANTHROPIC ? 529 : 503;
            yajl_val e = jp(v, "error");
            assert_string_equal(jstr(jp(e, "message")), "Overloaded");
            if (client == XLATE_GEMINI)
                assert_int_equal(jint(jp(e, "code")), status);
            if (client == XLATE_ANTHROPIC && status == 529)
                assert_string_equal(jstr(jp(e, "type")), "overloaded_error");
            for (size_t k = 0; k < o.n; k++) /* no [DONE], no message_stop after an error */
                assert_true(strcmp(o.ev[k].data, "[DONE]") != 0 && strcmp(o.ev[k].name, "message_stop") != 0);
            yajl_tree_free(v);
            free_output(&o);
            wipe_buf_free(&out);
            xlate_stream_free(s);
        }
    }
    /* xlate_stream_fail mid-stream, per client */
    for (int client = 0; client < 3; client++) {
        xlate_stream_t *s = stream_of(XLATE_OPENAI_CHAT, client == XLATE_OPENAI_CHAT ? XLATE_ANTHROPIC : client, false);
        xlate_stream_free(s);
        s = stream_of(client == XLATE_OPENAI_CHAT ? XLATE_GEMINI : XLATE_OPENAI_CHAT, client, false);
        wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
        assert_int_equal(xlate_stream_fail(s, 504, "the upstream timed out", &out), 0);
        out_events_t o;
        split_output(&out, &o);
        yajl_val v = jparse(o.ev[o.n - 1].data, o.ev[o.n - 1].data_len);
        check_error_shape(client, v, 504, "the upstream timed out", "upstream_timeout", "api_error",
                          "DEADLINE_EXCEEDED");
        yajl_tree_free(v);
        size_t len = out.len;
        assert_int_equal(xlate_stream_fail(s, 500, "again", &out), 0);
        assert_int_equal(xlate_stream_finish(s, &out), 0);
        assert_int_equal(out.len, len);
        free_output(&o);
        wipe_buf_free(&out);
        xlate_stream_free(s);
    }
}

/* The upstream stream ends before its message did: the client's in-stream error and -EPIPE. */
static void test_stream_premature_end(void **state)
{
    (void)state;
    for (int up = 0; up < 3; up++) {
        for (int client = 0; client < 3; client++) {
            if (up == client)
                continue;
            xlate_stream_t *s = stream_of(up, client, false);
            wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
            /* the first two events of the text stream only */
            const char *full = text_stream[up];
            const char *sep = up == XLATE_GEMINI ? "\r\n\r\n" : "\n\n";
            const char *cut = strstr(full, sep);
            cut = strstr(cut + strlen(sep), sep) + strlen(sep);
            char part[4096];
            memcpy(part, full, (size_t)(cut - full));
            part[cut - full] = 0;
            assert_int_equal(feed_stream(s, part, 0, &out), -EPIPE);
            out_events_t o;
            split_output(&out, &o);
            yajl_val v = jparse(o.ev[o.n - 1].data, o.ev[o.n - 1].data_len);
            assert_non_null(jp(jp(v, "error"), "message"));
            yajl_tree_free(v);
            size_t len = out.len;
            assert_int_equal(xlate_stream_finish(s, &out), 0);
            assert_int_equal(out.len, len);
            free_output(&o);
            wipe_buf_free(&out);
            xlate_stream_free(s);
        }
    }
}

/* ---- malformed upstream input ---- */

static void test_malformed(void **state)
{
    (void)state;
    static const struct {
        xlate_format_t up;
        const char *name, *data;
    } bad[] = {
        {XLATE_OPENAI_CHAT, NULL, "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}"}, /* truncated */
        {XLATE_OPENAI_CHAT, NULL, "[1,2]"},
        {XLATE_OPENAI_CHAT, NULL, "{\"id\":\"x\"}"},                                                 /* no choices */
        {XLATE_OPENAI_CHAT, NULL, "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\xff\"}}]}"}, /* bad UTF-8 */
        {XLATE_OPENAI_CHAT, NULL,
         "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
         "\"function\":{\"arguments\":\"{}\"}}]}}]}"},                      /* a new call without a name */
        {XLATE_ANTHROPIC, "message_start", "{\"message\":{}}"},             /* no type */
        {XLATE_ANTHROPIC, "message_start", "{\"type\":\"message_start\"}"}, /* no message */
        {XLATE_ANTHROPIC, "content_block_start", "{\"type\":\"content_block_start\",\"index\":0}"},
        {XLATE_ANTHROPIC, "content_block_start",
         "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":"
         "{\"type\":\"tool_use\",\"name\":\"f\"}}"}, /* no id */
        {XLATE_ANTHROPIC, "content_block_delta",
         "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":"
         "{\"type\":\"text_delta\",\"text\":\"a\"}}"}, /* no open block */
        {XLATE_ANTHROPIC, "error", "{\"type\":\"error\"}"},
        {XLATE_GEMINI, NULL, "not json"},
        {XLATE_GEMINI, NULL, "{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"args\":{}}}]}}]}"},
        {XLATE_GEMINI, NULL,
         "{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\","
         "\"args\":[1]}}]}}]}"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        for (int client = 0; client < 3; client++) {
            if (client == (int)bad[i].up && i != 0 && i != 3 && i != 11)
                continue; /* pass-through checks only that the data is a JSON object */
            xlate_stream_t *s = stream_of(bad[i].up, client, false);
            wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
            int r = xlate_stream_event(s, bad[i].name, bad[i].name != NULL ? strlen(bad[i].name) : 0,
                                       (const uint8_t *)bad[i].data, strlen(bad[i].data), &out);
            if (r != -EINVAL)
                fail_msg("case %zu -> %s: %d", i, fmt_name[client], r);
            assert_int_equal(out.len, 0); /* nothing appended */
            wipe_buf_free(&out);
            xlate_stream_free(s);
        }
    }
    /* a tool call's arguments after the next call started */
    for (int client = 0; client < 3; client++) {
        if (client == XLATE_OPENAI_CHAT)
            continue;
        xlate_stream_t *s = stream_of(XLATE_OPENAI_CHAT, client, false);
        wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
        ev(s, NULL,
           "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":"
           "{\"name\":\"f\",\"arguments\":\"{}\"}}]}}]}",
           &out);
        ev(s, NULL,
           "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"b\",\"function\":"
           "{\"name\":\"g\",\"arguments\":\"\"}}]}}]}",
           &out);
        size_t len = out.len;
        static const char late[] = "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
                                   "{\"arguments\":\"x\"}}]}}]}";
        assert_int_equal(xlate_stream_event(s, NULL, 0, (const uint8_t *)late, strlen(late), &out), -EINVAL);
        assert_int_equal(out.len, len);
        wipe_buf_free(&out);
        xlate_stream_free(s);
    }
    /* Gemini client: gathered arguments that are not a JSON object */
    {
        xlate_stream_t *s = stream_of(XLATE_ANTHROPIC, XLATE_GEMINI, false);
        wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
        ev(s, "message_start", "{\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1}}}", &out);
        ev(s, "content_block_start",
           "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":"
           "\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}",
           &out);
        ev(s, "content_block_delta",
           "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
           "\"input_json_delta\",\"partial_json\":\"[1,\"}}",
           &out);
        size_t len = out.len;
        static const char stop[] = "{\"type\":\"content_block_stop\",\"index\":0}";
        assert_int_equal(xlate_stream_event(s, "content_block_stop", 18, (const uint8_t *)stop, strlen(stop), &out),
                         -EINVAL);
        assert_int_equal(out.len, len);
        wipe_buf_free(&out);
        xlate_stream_free(s);
    }
    /* non-stream: errors name fields and offsets, never content */
    static const struct {
        xlate_format_t up;
        const char *body;
    } badans[] = {
        {XLATE_OPENAI_CHAT, "{\"choices\":[{\"message\":{\"content\":\"SECRET\""},
        {XLATE_OPENAI_CHAT, "{\"choices\":[]}"},
        {XLATE_OPENAI_CHAT,
         "{\"choices\":[{\"message\":{\"content\":\"SECRET\",\"tool_calls\":[{\"function\":{}}]}}]}"},
        {XLATE_ANTHROPIC, "{\"type\":\"message\",\"text\":\"SECRET\"}"},
        {XLATE_ANTHROPIC, "{\"content\":[{\"type\":\"tool_use\",\"name\":\"SECRET\"}]}"},
        {XLATE_GEMINI, "[\"SECRET\"]"},
        {XLATE_GEMINI, "{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"args\":\"SECRET\"}}]}}]}"},
    };
    for (size_t i = 0; i < sizeof(badans) / sizeof(badans[0]); i++) {
        int client = ((int)badans[i].up + 1) % 3;
        wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
        xlate_usage_t u;
        char err[256];
        int r = xlate_response(badans[i].up, client, (const uint8_t *)badans[i].body, strlen(badans[i].body), MODEL, 1,
                               2, &out, &u, err, sizeof(err));
        if (r != -EINVAL)
            fail_msg("answer %zu: %d", i, r);
        assert_true(strlen(err) > 0);
        assert_null(strstr(err, "SECRET"));
        assert_int_equal(out.len, 0);
        assert_false(u.found);
        wipe_buf_free(&out);
    }
    /* OpenAI arguments that are not a JSON object, to a client that needs an object */
    static const char badargs[] =
        "{\"choices\":[{\"index\":0,\"message\":{\"content\":null,\"tool_calls\":[{\"id\":"
        "\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"SECRET\"}}]},"
        "\"finish_reason\":\"tool_calls\"}]}";
    for (int client = 1; client < 3; client++) {
        wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
        xlate_usage_t u;
        char err[256];
        assert_int_equal(xlate_response(XLATE_OPENAI_CHAT, client, (const uint8_t *)badargs, strlen(badargs), MODEL, 1,
                                        2, &out, &u, err, sizeof(err)),
                         -EINVAL);
        assert_null(strstr(err, "SECRET"));
        assert_int_equal(out.len, 0);
        wipe_buf_free(&out);
    }
    /* out's max bounds the answer: -E2BIG, nothing left behind */
    wipe_buf_t small = WIPE_BUF_INIT(64);
    xlate_usage_t u;
    assert_int_equal(xlate_response(XLATE_ANTHROPIC, XLATE_OPENAI_CHAT, (const uint8_t *)an_text, strlen(an_text),
                                    MODEL, 1, 2, &small, &u, NULL, 0),
                     -E2BIG);
    assert_int_equal(small.len, 0);
    wipe_buf_free(&small);
}

/* Limits: a model name too long, an output buffer too small, an error in the Gemini array form. */
static void test_limits(void **state)
{
    (void)state;
    char model[XLATE_RESP_MODEL_MAX + 2];
    memset(model, 'm', sizeof(model) - 1);
    model[sizeof(model) - 1] = 0;
    xlate_stream_t *s = (xlate_stream_t *)1;
    assert_int_equal(xlate_stream_new(XLATE_OPENAI_CHAT, XLATE_ANTHROPIC, model, 1, 2, false, &s), -EINVAL);
    assert_null(s);
    wipe_buf_t out = WIPE_BUF_INIT(OUT_MAX);
    xlate_usage_t u;
    char err[128];
    assert_int_equal(xlate_response(XLATE_OPENAI_CHAT, XLATE_ANTHROPIC, (const uint8_t *)oa_text, strlen(oa_text),
                                    model, 1, 2, &out, &u, err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(out.len, 0);
    model[XLATE_RESP_MODEL_MAX] = 0; /* exactly the maximum is accepted */
    assert_int_equal(xlate_stream_new(XLATE_OPENAI_CHAT, XLATE_ANTHROPIC, model, 1, 2, false, &s), 0);
    xlate_stream_free(s);
    xlate_stream_free(NULL);

    /* a stream event that does not fit: -E2BIG, nothing appended */
    s = stream_of(XLATE_ANTHROPIC, XLATE_OPENAI_CHAT, false);
    wipe_buf_t small = WIPE_BUF_INIT(100);
    static const char start[] = "{\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1}}}";
    assert_int_equal(xlate_stream_event(s, "message_start", 13, (const uint8_t *)start, strlen(start), &small), -E2BIG);
    assert_int_equal(small.len, 0);
    wipe_buf_free(&small);
    /* the failed event left no state behind: given room, the same event opens the stream */
    assert_int_equal(xlate_stream_event(s, "message_start", 13, (const uint8_t *)start, strlen(start), &out), 0);
    out_events_t o;
    split_output(&out, &o);
    assert_int_equal(o.n, 1);
    yajl_val rv = jparse(o.ev[0].data, o.ev[0].data_len);
    assert_string_equal(jstr(jp(jp(ji(jp(rv, "choices"), 0), "delta"), "role")), "assistant");
    yajl_tree_free(rv);
    free_output(&o);
    wipe_buf_reset(&out);
    xlate_stream_free(s);

    /* Anthropic client: a text piece that does not fit is not half-counted (block start dropped) */
    s = stream_of(XLATE_OPENAI_CHAT, XLATE_ANTHROPIC, false);
    ev(s, NULL, "{\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}", &out);
    small = (wipe_buf_t)WIPE_BUF_INIT(120);
    static const char piece[] = "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hello\"}}]}";
    assert_int_equal(xlate_stream_event(s, NULL, 0, (const uint8_t *)piece, strlen(piece), &small), -E2BIG);
    assert_int_equal(small.len, 0);
    wipe_buf_free(&small);
    ev(s, NULL, piece, &out);
    ev(s, NULL, "{\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}", &out);
    ev(s, NULL, "[DONE]", &out);
    split_output(&out, &o);
    heard_t h;
    memset(&h, 0, sizeof(h));
    xlate_usage_t zero = {0};
    hear_anthropic(&o, &zero, &h);
    assert_string_equal(h.text, "hello");
    free_output(&o);
    wipe_buf_reset(&out);
    xlate_stream_free(s);

    /* Gemini client: arguments gathered by a failed event are dropped with it */
    s = stream_of(XLATE_OPENAI_CHAT, XLATE_GEMINI, false);
    ev(s, NULL,
       "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":"
       "{\"name\":\"get_weather\",\"arguments\":\"{\\\"location\\\":\"}}]}}]}",
       &out);
    static const char bad2[] = "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
                               "{\"arguments\":\"\\\"Paris\\\"}\"}},{\"index\":0,\"function\":{\"arguments\":\"x\"}},"
                               "{\"index\":1,\"function\":{\"arguments\":\"y\"}}]}}]}"; /* call 1 has no name */
    assert_int_equal(xlate_stream_event(s, NULL, 0, (const uint8_t *)bad2, strlen(bad2), &out), -EINVAL);
    ev(s, NULL,
       "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
       "{\"arguments\":\"\\\"Paris\\\"}\"}}]},\"finish_reason\":\"tool_calls\"}]}",
       &out);
    assert_int_equal(xlate_stream_finish(s, &out), 0);
    split_output(&out, &o);
    memset(&h, 0, sizeof(h));
    hear_gemini(&o, &zero, &h);
    assert_int_equal(h.ntools, 1);
    assert_string_equal(h.tool_name, "get_weather");
    free_output(&o);
    wipe_buf_reset(&out);
    xlate_stream_free(s);

    /* Gemini array form: an upstream error ends the array */
    s = stream_of(XLATE_ANTHROPIC, XLATE_GEMINI, false);
    xlate_stream_gemini_array(s);
    ev(s, "message_start", start, &out);
    ev(s, "content_block_start",
       "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}", &out);
    ev(s, "content_block_delta",
       "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a\"}}", &out);
    ev(s, "error", "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}", &out);
    assert_int_equal(xlate_stream_finish(s, &out), 0);
    yajl_val v = jparse(out.data, out.len);
    assert_int_equal(jlen(v), 2);
    assert_string_equal(jstr(jp(ji(jp(jp(ji(jp(ji(v, 0), "candidates"), 0), "content"), "parts"), 0), "text")), "a");
    assert_int_equal(jint(jp(jp(ji(v, 1), "error"), "code")), 529);
    assert_string_equal(jstr(jp(jp(ji(v, 1), "error"), "status")), "UNAVAILABLE");
    yajl_tree_free(v);
    wipe_buf_free(&out);
    xlate_stream_free(s);

    /* Gemini array form, upstream ends early: the error, then "]" */
    s = stream_of(XLATE_OPENAI_CHAT, XLATE_GEMINI, false);
    xlate_stream_gemini_array(s);
    ev(s, NULL, "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}", &out);
    assert_int_equal(xlate_stream_finish(s, &out), -EPIPE);
    v = jparse(out.data, out.len);
    assert_int_equal(jlen(v), 2);
    assert_int_equal(jint(jp(jp(ji(v, 1), "error"), "code")), 502);
    yajl_tree_free(v);
    wipe_buf_free(&out);
    xlate_stream_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nonstream_text),   cmocka_unit_test(test_nonstream_tool),
        cmocka_unit_test(test_stream_text),      cmocka_unit_test(test_stream_tool),
        cmocka_unit_test(test_stream_two_tools), cmocka_unit_test(test_anthropic_usage_cumulative),
        cmocka_unit_test(test_gemini_usage),     cmocka_unit_test(test_gemini_array_stream),
        cmocka_unit_test(test_finish_reasons),   cmocka_unit_test(test_error_shapes),
        cmocka_unit_test(test_stream_errors),    cmocka_unit_test(test_stream_premature_end),
        cmocka_unit_test(test_malformed),        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
