/* Unit tests for node/usage: real-shaped OpenAI bodies fed whole, at every split point and
 * byte by byte; chat chunks, the usage-only chunk, Responses events; the estimate. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>
#include <yajl/yajl_parse.h>

#include "node/usage.h"

static const char *chat_body =
    "{\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion\",\"created\":1727000000,\"model\":\"gpt-4o-2024-08-06\","
    "\"metadata\":{\"usage\":{\"prompt_tokens\":999}},"
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hello there!\",\"refusal\":null,"
    "\"usage\":{\"prompt_tokens\":555}},\"logprobs\":null,\"finish_reason\":\"stop\"}],"
    "\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":10,\"total_tokens\":29,"
    "\"prompt_tokens_details\":{\"cached_tokens\":3,\"audio_tokens\":0},"
    "\"completion_tokens_details\":{\"reasoning_tokens\":4,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,"
    "\"rejected_prediction_tokens\":0}},\"service_tier\":\"default\",\"system_fingerprint\":\"fp_x\"}";

static const char *completions_body =
    "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"gpt-3.5-turbo-instruct\","
    "\"choices\":[{\"text\":\"\\n\\nThis is a test\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}],"
    "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}";

static const char *embeddings_body =
    "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,\"embedding\":[0.0023064255,-0.009327292,"
    "-2.8842222e-3]}],\"model\":\"text-embedding-3-small\",\"usage\":{\"prompt_tokens\":8,\"total_tokens\":8}}";

static const char *responses_body =
    "{\"id\":\"resp_1\",\"object\":\"response\",\"created_at\":1741476542,\"status\":\"completed\",\"error\":null,"
    "\"model\":\"o3-2025-04-16\",\"output\":[{\"type\":\"reasoning\",\"id\":\"rs_1\",\"summary\":[]},"
    "{\"type\":\"message\",\"id\":\"msg_1\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[{\"type\":"
    "\"output_text\",\"text\":\"In a peaceful grove\",\"annotations\":[]}]}],"
    "\"usage\":{\"input_tokens\":36,\"input_tokens_details\":{\"cached_tokens\":12},\"output_tokens\":87,"
    "\"output_tokens_details\":{\"reasoning_tokens\":64},\"total_tokens\":123},\"store\":false}";

/* Scans s cut at every step bytes (0: whole). */
static int scan(const char *s, size_t len, size_t step, usage_t *u, size_t *content)
{
    usage_scan_t *sc;
    assert_int_equal(usage_scan_init(&sc), 0);
    int r = 0;
    if (step == 0)
        step = len;
    for (size_t off = 0; off < len; off += step) {
        size_t n = len - off < step ? len - off : step;
        uint8_t *piece = malloc(n); /* own block: ASan catches reads past it */
        memcpy(piece, s + off, n);
        int fr = usage_scan_feed(sc, piece, n);
        free(piece);
        if (fr != 0)
            r = fr;
    }
    int fr = usage_scan_finish(sc, u);
    if (r == 0)
        r = fr;
    if (content != NULL)
        *content = usage_scan_content_bytes(sc);
    usage_scan_free(sc);
    return r;
}

static void check_all_ways(const char *s, const usage_t *want, size_t want_content)
{
    size_t len = strlen(s);
    usage_t u;
    size_t content;
    size_t steps[] = {0, 1, 2, 3, 7, 64};
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        assert_int_equal(scan(s, len, steps[i], &u, &content), 0);
        assert_memory_equal(&u, want, sizeof(u));
        assert_int_equal(content, want_content);
    }
    /* two pieces, cut everywhere */
    for (size_t cut = 1; cut < len; cut++) {
        usage_scan_t *sc;
        assert_int_equal(usage_scan_init(&sc), 0);
        assert_int_equal(usage_scan_feed(sc, (const uint8_t *)s, cut), 0);
        assert_int_equal(usage_scan_feed(sc, (const uint8_t *)s + cut, len - cut), 0);
        assert_int_equal(usage_scan_finish(sc, &u), 0);
        usage_scan_free(sc);
        assert_memory_equal(&u, want, sizeof(u));
    }
}

static usage_t mk(int64_t in, int64_t cached, int64_t out, int64_t reasoning)
{
    usage_t u;
    memset(&u, 0, sizeof(u));
    u.input_tokens = in;
    u.cached_input_tokens = cached;
    u.output_tokens = out;
    u.reasoning_tokens = reasoning;
    u.found = true;
    return u;
}

static void test_bodies(void **state)
{
    (void)state;
    usage_t w = mk(19, 3, 10, 4);
    check_all_ways(chat_body, &w, strlen("Hello there!"));
    w = mk(5, 0, 7, 0);
    check_all_ways(completions_body, &w, strlen("\n\nThis is a test"));
    w = mk(8, 0, 0, 0);
    check_all_ways(embeddings_body, &w, 0);
    w = mk(36, 12, 87, 64);
    check_all_ways(responses_body, &w, strlen("In a peaceful grove"));
}

static void test_bodies_without_usage(void **state)
{
    (void)state;
    usage_t u;
    const char *null_usage = "{\"id\":\"x\",\"choices\":[],\"usage\":null}";
    assert_int_equal(scan(null_usage, strlen(null_usage), 1, &u, NULL), 0);
    assert_false(u.found);
    const char *none = "{\"id\":\"x\",\"choices\":[]}";
    assert_int_equal(scan(none, strlen(none), 0, &u, NULL), 0);
    assert_false(u.found);
    const char *arr = "[{\"usage\":{\"prompt_tokens\":1}}]";
    assert_int_equal(scan(arr, strlen(arr), 0, &u, NULL), 0);
    assert_false(u.found);
    /* truncated, invalid, trailing garbage: not found */
    size_t len = strlen(chat_body);
    assert_int_equal(scan(chat_body, len - 1, 1, &u, NULL), -EINVAL);
    assert_false(u.found);
    char *bad = strdup(chat_body);
    bad[len - 1] = ']';
    assert_int_equal(scan(bad, len, 5, &u, NULL), -EINVAL);
    assert_false(u.found);
    free(bad);
    const char *garbage = "{\"usage\":{\"prompt_tokens\":1}} x";
    assert_int_equal(scan(garbage, strlen(garbage), 0, &u, NULL), -EINVAL);
    assert_false(u.found);
    /* odd counts read as 0 */
    const char *odd = "{\"usage\":{\"prompt_tokens\":-1,\"completion_tokens\":2.5,\"total_tokens\":\"x\"}}";
    assert_int_equal(scan(odd, strlen(odd), 0, &u, NULL), 0);
    assert_true(u.found);
    assert_int_equal(u.input_tokens, 0);
    assert_int_equal(u.output_tokens, 0);
    /* too deep */
    char deep[3000];
    size_t n = (size_t)sprintf(deep, "{\"x\":");
    for (int i = 0; i < 1100; i++)
        deep[n++] = '[';
    deep[n] = 0;
    assert_int_equal(scan(deep, n, 0, &u, NULL), -EINVAL);
}

static void test_chat_chunks(void **state)
{
    (void)state;
    usage_t u;
    bool only = true;
    const char *delta =
        "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\","
        "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"},"
        "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}";
    assert_int_equal(usage_from_chat_chunk((const uint8_t *)delta, strlen(delta), &u, &only), 0);
    assert_false(u.found);
    assert_false(only);
    size_t bytes = 0;
    assert_int_equal(usage_content_bytes((const uint8_t *)delta, strlen(delta), &bytes), 0);
    assert_int_equal(bytes, 5);

    const char *last = "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\","
                       "\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":20,\"total_tokens\":30,"
                       "\"prompt_tokens_details\":{\"cached_tokens\":4},\"completion_tokens_details\":"
                       "{\"reasoning_tokens\":2}}}";
    assert_int_equal(usage_from_chat_chunk((const uint8_t *)last, strlen(last), &u, &only), 0);
    usage_t w = mk(10, 4, 20, 2);
    assert_memory_equal(&u, &w, sizeof(u));
    assert_true(only);

    /* usage riding on a content chunk (some OpenAI-compatible servers): found, not usage-only */
    const char *both = "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":1,"
                       "\"completion_tokens\":1}}";
    assert_int_equal(usage_from_chat_chunk((const uint8_t *)both, strlen(both), &u, &only), 0);
    assert_true(u.found);
    assert_false(only);
    /* empty choices but null usage: not usage-only */
    const char *empty = "{\"choices\":[],\"usage\":null}";
    assert_int_equal(usage_from_chat_chunk((const uint8_t *)empty, strlen(empty), &u, &only), 0);
    assert_false(only);
    /* tool-call arguments and reasoning count as content */
    const char *tool =
        "{\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hmm\",\"tool_calls\":[{\"index\":0,"
        "\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":\"}}]}}]}";
    assert_int_equal(usage_content_bytes((const uint8_t *)tool, strlen(tool), &bytes), 0);
    assert_int_equal(bytes, 3 + 5);
    /* the stream's end marker is not JSON */
    assert_int_equal(usage_from_chat_chunk((const uint8_t *)"[DONE]", 6, &u, &only), -EINVAL);
    assert_false(u.found);
    assert_false(only);
}

static void test_responses_events(void **state)
{
    (void)state;
    usage_t u;
    bool terminal = true;
    const char *created = "{\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\","
                          "\"object\":\"response\",\"status\":\"in_progress\",\"output\":[],\"usage\":null}}";
    assert_int_equal(usage_from_responses_event((const uint8_t *)created, strlen(created), &u, &terminal), 0);
    assert_false(u.found);
    assert_false(terminal);

    const char *delta = "{\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"output_index\":0,"
                        "\"content_index\":0,\"delta\":\"In a\",\"sequence_number\":4}";
    usage_chunk_t ch;
    assert_int_equal(usage_scan_chunk((const uint8_t *)delta, strlen(delta), &ch), 0);
    assert_false(ch.terminal);
    assert_false(ch.usage.found);
    assert_int_equal(ch.content_bytes, 4);
    /* *.done repeats the full text: not counted again */
    const char *done = "{\"type\":\"response.output_text.done\",\"item_id\":\"msg_1\",\"text\":\"In a grove\"}";
    assert_int_equal(usage_scan_chunk((const uint8_t *)done, strlen(done), &ch), 0);
    assert_int_equal(ch.content_bytes, 0);

    char completed[2048];
    snprintf(completed, sizeof(completed), "{\"type\":\"response.completed\",\"sequence_number\":9,\"response\":%s}",
             responses_body);
    assert_int_equal(usage_scan_chunk((const uint8_t *)completed, strlen(completed), &ch), 0);
    assert_true(ch.terminal);
    usage_t w = mk(36, 12, 87, 64);
    assert_memory_equal(&ch.usage, &w, sizeof(w));
    assert_int_equal(ch.content_bytes, 0);

    const char *incomplete = "{\"type\":\"response.incomplete\",\"response\":{\"status\":\"incomplete\","
                             "\"incomplete_details\":{\"reason\":\"max_output_tokens\"},\"usage\":{\"input_tokens\":5,"
                             "\"output_tokens\":16,\"output_tokens_details\":{\"reasoning_tokens\":16}}}}";
    assert_int_equal(usage_from_responses_event((const uint8_t *)incomplete, strlen(incomplete), &u, &terminal), 0);
    assert_true(terminal);
    w = mk(5, 0, 16, 16);
    assert_memory_equal(&u, &w, sizeof(w));

    const char *failed = "{\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",\"error\":{\"code\":"
                         "\"server_error\"},\"usage\":null}}";
    assert_int_equal(usage_from_responses_event((const uint8_t *)failed, strlen(failed), &u, &terminal), 0);
    assert_true(terminal);
    assert_false(u.found);

    /* a "type" that is not top-level does not count */
    const char *nested = "{\"type\":\"response.in_progress\",\"response\":{\"type\":\"response.completed\"}}";
    assert_int_equal(usage_from_responses_event((const uint8_t *)nested, strlen(nested), &u, &terminal), 0);
    assert_false(terminal);
}

static void test_estimate(void **state)
{
    (void)state;
    usage_t u;
    usage_estimate(0, 0, &u);
    assert_int_equal(u.input_tokens, 0);
    assert_int_equal(u.output_tokens, 0);
    usage_estimate(1, 8, &u);
    assert_int_equal(u.input_tokens, 1);
    assert_int_equal(u.output_tokens, 2);
    usage_estimate(9, 7, &u);
    assert_int_equal(u.input_tokens, 3);
    assert_int_equal(u.output_tokens, 2);
    assert_false(u.found);
    assert_int_equal(u.cached_input_tokens, 0);
    assert_int_equal(u.reasoning_tokens, 0);
}

/* Escapes, surrogate pairs, a lone high surrogate, literals and numbers of every shape, cut
 * everywhere; keys and values longer than the tokenizer keeps. */
static void test_tokenizer_edges(void **state)
{
    (void)state;
    const char *esc = "{\"choices\":[{\"message\":{\"content\":\"a\\u00e9\\ud83d\\ude00\\n\\\"\\\\\\/\\b\\f\\r\\tx"
                      "\\u20AC\\ud800y\\u0000\",\"refusal\":null,\"x\":[true,false,null,-0,0.5,-1.25e+3,2E-2,7e1]}}],"
                      " \"usage\" : {\"prompt_tokens\" :12 , \"completion_tokens\":\t\r\n\v\f34}}\n ";
    usage_t w = mk(12, 0, 34, 0);
    /* a + é(2) + 😀(4) + \n " \ / \b \f \r \t x (9) + €(3) + ? y (2) + NUL(1) */
    check_all_ways(esc, &w, 1 + 2 + 4 + 9 + 3 + 2 + 1);

    char big[4096];
    char longkey[200];
    memset(longkey, 'k', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = 0;
    char longtext[1500];
    memset(longtext, 'z', sizeof(longtext) - 1);
    longtext[sizeof(longtext) - 1] = 0;
    snprintf(big, sizeof(big),
             "{\"%s\":{\"usage\":{\"prompt_tokens\":9}},\"choices\":[{\"text\":\"%s\"}],\"type\":"
             "\"response.completed%s\",\"usage\":{\"%s\":1,\"output_tokens\":5}}",
             longkey, longtext, longkey, longkey);
    w = mk(0, 0, 5, 0);
    check_all_ways(big, &w, strlen(longtext));
    usage_chunk_t ch;
    assert_int_equal(usage_scan_chunk((const uint8_t *)big, strlen(big), &ch), 0);
    assert_false(ch.terminal);
    assert_int_equal(ch.content_bytes, strlen(longtext));

    /* top-level scalars are valid JSON, without usage */
    const char *scalars[] = {"1", " true ", "\"x\"", "[]", "{}", "-0.5e+3", "null", "[1,2.0E-1,{},[]]"};
    usage_t u;
    for (size_t i = 0; i < sizeof(scalars) / sizeof(scalars[0]); i++) {
        assert_int_equal(scan(scalars[i], strlen(scalars[i]), 1, &u, NULL), 0);
        assert_false(u.found);
    }
    /* invalid, fed whole and byte by byte */
    char longnum[100];
    snprintf(longnum, sizeof(longnum), "{\"usage\":{\"prompt_tokens\":1%070d}}", 0);
    const char *bad[] = {"",        " ",           "{",           "{\"a\"}",  "{\"a\":}",  "[1,]",      "{\"a\":1,}",
                         "01",      "-",           "1.",          "1e",       "1e+",       "tru",       "nul",
                         "truex",   "\"\\x\"",     "\"\\u12g4\"", "\"a\nb\"", "{} {}",     "[1 2]",     "{\"a\" 1}",
                         "{'a':1}", "/*c*/{}",     "[}",          "{]",       "{\"a\":1]", "[\"a\":1]", "{1:2}",
                         ",",       "]",           "\"abc",       "[-]",      "[.5]",      "[+1]",      "[1.e2]",
                         "nan",     "[\"\\u12\"]", "{\"a\":1}}",  longnum};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(scan(bad[i], strlen(bad[i]), 0, &u, NULL), -EINVAL);
        assert_false(u.found);
        assert_int_equal(scan(bad[i], strlen(bad[i]), 1, &u, NULL), -EINVAL);
        assert_int_equal(usage_scan_chunk((const uint8_t *)bad[i], strlen(bad[i]), &ch), -EINVAL);
    }
    /* numbers of up to 64 characters, read in place, cut anywhere, or ending the input */
    for (int len = 62; len <= 66; len++) {
        char num[80], doc[128];
        num[0] = '-';
        memset(num + 1, '9', (size_t)len - 1);
        num[len] = 0;
        int dlen = snprintf(doc, sizeof(doc), "{\"usage\":{\"total_tokens\":%s,\"prompt_tokens\":2}}", num);
        int want = len <= 64 ? 0 : -EINVAL;
        for (size_t step = 0; step < 4; step++) {
            assert_int_equal(scan(doc, (size_t)dlen, step, &u, NULL), want);
            assert_int_equal(u.found, want == 0);
            assert_int_equal(scan(num, (size_t)len, step, &u, NULL), want);
        }
        for (int cut = 1; cut < dlen; cut++) {
            usage_scan_t *sc;
            assert_int_equal(usage_scan_init(&sc), 0);
            usage_scan_feed(sc, (const uint8_t *)doc, (size_t)cut);
            usage_scan_feed(sc, (const uint8_t *)doc + cut, (size_t)(dlen - cut));
            assert_int_equal(usage_scan_finish(sc, &u), want);
            usage_scan_free(sc);
        }
    }
    /* exactly USAGE_MAX_DEPTH levels are fine, one more is not */
    static char deep[2 * USAGE_MAX_DEPTH + 8];
    for (int extra = 0; extra < 2; extra++) {
        size_t n = 0;
        for (int i = 0; i < USAGE_MAX_DEPTH + extra; i++)
            deep[n++] = '[';
        for (int i = 0; i < USAGE_MAX_DEPTH + extra; i++)
            deep[n++] = ']';
        assert_int_equal(scan(deep, n, 7, &u, NULL), extra ? -EINVAL : 0);
    }
}

/* Strings of every length up to 48 with one special byte at every place: the word-at-a-time
 * search must stop at it wherever it falls, fed whole and cut everywhere. */
static void test_string_scan(void **state)
{
    (void)state;
    struct {
        const char *ins; /* inserted at the place */
        int rc;
        size_t decoded;
    } cases[] = {
        {"", 0, 0},
        {"\\n", 0, 1},
        {"\\\"", 0, 1},
        {"\\u00e9", 0, 2},
        {"\\ud83d\\ude00", 0, 4},
        {"\x7f", 0, 1},
        {"\x80\xff", 0, 2},
        {"\x1f", -EINVAL, 0},
        {"\x01", -EINVAL, 0},
        {"\\q", -EINVAL, 0},
        {"\\ud800", 0, 1}, /* a lone high surrogate: "?" */
        {"\\ud800\\n", 0, 2},
        {"\\ud800\\u0041", 0, 4}, /* a high surrogate and any \uXXXX: one 4-byte code */
        {"\"", -EINVAL, 0},       /* ends the string early: what follows is not JSON */
    };
    char body[256];
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        for (size_t len = 0; len <= 48; len++) {
            for (size_t at = 0; at <= len; at++) {
                char text[128];
                memset(text, 'a', at);
                size_t n = at;
                n += (size_t)sprintf(text + n, "%s", cases[c].ins);
                memset(text + n, 'b', len - at);
                text[n + len - at] = 0;
                int blen = snprintf(body, sizeof(body),
                                    "{\"choices\":[{\"text\":\"%s\"}],\"usage\":{\"prompt_tokens\":3}}", text);
                usage_t u;
                size_t content;
                size_t steps[] = {0, 1, 5, 16};
                for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
                    int rc = scan(body, (size_t)blen, steps[s], &u, &content);
                    if (rc != cases[c].rc || (rc == 0 && (content != len + cases[c].decoded || !u.found)))
                        fail_msg("case %zu len %zu at %zu step %zu: rc %d content %zu", c, len, at, steps[s], rc,
                                 content);
                }
                for (int cut = 1; cut < blen && cases[c].rc == 0; cut++) {
                    usage_scan_t *sc;
                    assert_int_equal(usage_scan_init(&sc), 0);
                    assert_int_equal(usage_scan_feed(sc, (const uint8_t *)body, (size_t)cut), 0);
                    assert_int_equal(usage_scan_feed(sc, (const uint8_t *)body + cut, (size_t)(blen - cut)), 0);
                    assert_int_equal(usage_scan_finish(sc, &u), 0);
                    assert_int_equal(usage_scan_content_bytes(sc), len + cases[c].decoded);
                    usage_scan_free(sc);
                }
            }
        }
    }
}

/* Differential check against yajl (what the scanner replaced): mutated bodies are valid for one
 * exactly when valid for the other. Each is also fed in random pieces (empty ones too, at times
 * byte by byte) and as one SSE event: usage, content bytes and result must not depend on
 * where the feeds are cut (whole tokens take the scanner's fast path, cut ones its slow path). */
static bool yajl_valid(const uint8_t *s, size_t n)
{
    static const yajl_callbacks none;
    yajl_handle h = yajl_alloc(&none, NULL, NULL);
    assert_non_null(h);
    yajl_config(h, yajl_dont_validate_strings, 1);
    bool ok = yajl_parse(h, s, n) == yajl_status_ok && yajl_complete_parse(h) == yajl_status_ok;
    yajl_free(h);
    return ok;
}

static bool usage_eq(const usage_t *a, const usage_t *b)
{
    return a->found == b->found && a->input_tokens == b->input_tokens &&
           a->cached_input_tokens == b->cached_input_tokens && a->output_tokens == b->output_tokens &&
           a->reasoning_tokens == b->reasoning_tokens;
}

/* Feeds buf[0, n) cut at the ncuts (sorted) offsets in cuts, each piece in its own block. */
static int scan_cut(const uint8_t *buf, size_t n, const size_t *cuts, size_t ncuts, usage_t *u, size_t *content)
{
    usage_scan_t *sc;
    assert_int_equal(usage_scan_init(&sc), 0);
    int rc = 0;
    size_t off = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t to = i < ncuts ? cuts[i] : n;
        uint8_t *piece = malloc(to - off + 1);
        assert_non_null(piece);
        memcpy(piece, buf + off, to - off);
        int fr = usage_scan_feed(sc, piece, to - off);
        free(piece);
        if (rc == 0)
            rc = fr;
        else
            assert_int_equal(fr, rc); /* once invalid, always */
        off = to;
    }
    int fr = usage_scan_finish(sc, u);
    if (rc == 0)
        rc = fr;
    *content = usage_scan_content_bytes(sc);
    usage_scan_free(sc);
    return rc;
}

static void test_against_yajl(void **state)
{
    (void)state;
    /* escapes, literals, every number shape, whitespace; a 61-digit count (the 3 edits at most
     * cannot take it past the 64 characters where the scanner stops following yajl) */
    const char *esc_body =
        "{\"choices\":[{\"index\":0,\"message\":{\"content\":\"a\\u00e9\\ud83d\\ude00\\n\\\"\\\\\\/\\b\\f\\r\\tx"
        "\\u20AC\\ud800y\",\"refusal\":null,\"x\":[true,false,null,-0,0.5,-1.25e+3,2E-2,7e1]}}],\n"
        "  \"usage\" : {\"prompt_tokens\" :12 , \"completion_tokens\":\t\r\n34,\"prompt_tokens_details\":"
        "{\"cached_tokens\":1234567890123456789012345678901234567890123456789012345678901}}}\n";
    const char *bodies[] = {chat_body, completions_body, embeddings_body, responses_body, esc_body};
    const size_t nbodies = sizeof(bodies) / sizeof(bodies[0]);
    /* also raw control bytes, DEL and bytes above 0x7f (valid in strings, not elsewhere) */
    static const uint8_t alphabet[] = "{}[]:,\"\\ 0123456789-+.eEtrufalsn\nu/bxdDAF\t\x01\x1f\x7f\x80\xff";
    const size_t nalpha = sizeof(alphabet) - 1;
    uint32_t seed = 12345;
#define RND() (seed = seed * 1103515245u + 12345u, (seed >> 8))
    uint8_t buf[1024];
    for (int iter = 0; iter < 40000; iter++) {
        const char *b = bodies[iter % nbodies];
        size_t n = strlen(b);
        memcpy(buf, b, n);
        int edits = 1 + (int)(RND() % 3);
        for (int e = 0; e < edits; e++) {
            size_t at = RND() % n;
            uint8_t c = alphabet[RND() % nalpha];
            switch (RND() % 3) {
            case 0:
                buf[at] = c;
                break;
            case 1: /* insert */
                if (n + 1 < sizeof(buf)) {
                    memmove(buf + at + 1, buf + at, n - at);
                    buf[at] = c;
                    n++;
                }
                break;
            default: /* delete */
                memmove(buf + at, buf + at + 1, n - at - 1);
                n--;
                break;
            }
        }
        bool want = yajl_valid(buf, n);
        usage_t whole, split;
        size_t whole_content, split_content;
        int rc = scan_cut(buf, n, NULL, 0, &whole, &whole_content);
        if ((rc == 0) != want)
            fail_msg("iteration %d: scanner %d, yajl %d: %.*s", iter, rc, want, (int)n, buf);

        size_t cuts[sizeof(buf)];
        size_t ncuts = 0;
        if (iter % 16 == 0) {
            for (size_t i = 1; i < n; i++)
                cuts[ncuts++] = i;
        } else {
            ncuts = 1 + RND() % 8;
            for (size_t i = 0; i < ncuts; i++) {
                size_t at = RND() % (n + 1), j = i;
                for (; j > 0 && cuts[j - 1] > at; j--)
                    cuts[j] = cuts[j - 1];
                cuts[j] = at;
            }
        }
        int split_rc = scan_cut(buf, n, cuts, ncuts, &split, &split_content);
        if (split_rc != rc || !usage_eq(&split, &whole) || split_content != whole_content)
            fail_msg("iteration %d: cut in %zu pieces: rc %d, found %d, content %zu; whole: rc %d, found %d, "
                     "content %zu: %.*s",
                     iter, ncuts + 1, split_rc, split.found, split_content, rc, whole.found, whole_content, (int)n,
                     buf);

        usage_chunk_t ch;
        int chunk_rc = usage_scan_chunk(buf, n, &ch);
        if (chunk_rc != rc || !usage_eq(&ch.usage, &whole) || ch.content_bytes != whole_content)
            fail_msg("iteration %d: as one event: rc %d, found %d, content %zu: %.*s", iter, chunk_rc, ch.usage.found,
                     ch.content_bytes, (int)n, buf);
    }
#undef RND
}

/* Micro-benchmark (LLMRELAY_BENCH=1 only): µs per body, fed whole and in 64-byte pieces, for a
 * ~700-byte chat completion, the ~470-byte answer of the relay benchmark's mock provider, and
 * 16 KiB answers of one long content string (plain, and with a \n every 60 bytes). */
static double bench_once(const char *body, size_t len, size_t step, int iters)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < iters; i++) {
        usage_scan_t *sc;
        assert_int_equal(usage_scan_init(&sc), 0);
        for (size_t off = 0; off < len; off += step) {
            size_t n = len - off < step ? len - off : step;
            assert_int_equal(usage_scan_feed(sc, (const uint8_t *)body + off, n), 0);
        }
        usage_t u;
        assert_int_equal(usage_scan_finish(sc, &u), 0);
        assert_true(u.found);
        usage_scan_free(sc);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return ((double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e3) / iters;
}

static void bench_body(const char *name, const char *body, int iters)
{
    size_t len = strlen(body);
    bench_once(body, len, len, iters / 10); /* warm up */
    double whole = 1e9, pieces = 1e9;
    for (int round = 0; round < 5; round++) { /* best of 5: the least disturbed */
        double w = bench_once(body, len, len, iters / 5);
        double p = bench_once(body, len, 64, iters / 5);
        whole = w < whole ? w : whole;
        pieces = p < pieces ? p : pieces;
    }
    print_message("usage_scan: %zu-byte %s: %.3f us whole, %.3f us in 64-byte pieces\n", len, name, whole, pieces);
}

static void test_bench(void **state)
{
    (void)state;
    const char *env = getenv("LLMRELAY_BENCH");
    if (env == NULL || strcmp(env, "1") != 0)
        skip();
    char body[1024];
    int n = snprintf(body, sizeof(body),
                     "{\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion\","
                     "\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,"
                     "\"message\":{\"role\":\"assistant\",\"content\":\"The image shows a wooden boardwalk path "
                     "running through a lush green field or meadow. The sky is bright blue with some scattered "
                     "clouds. \\u00e9\\n\",\"refusal\":null,"
                     "\"annotations\":[]},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{"
                     "\"prompt_tokens\":1117,\"completion_tokens\":46,\"total_tokens\":1163,"
                     "\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},"
                     "\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,"
                     "\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}},"
                     "\"service_tier\":\"default\",\"system_fingerprint\":\"fp_fc9f1d7035\"}");
    assert_true(n > 0 && (size_t)n < sizeof(body));
    bench_body("chat completion", body, 200000);
    bench_body("mock chat completion",
               "{\"id\":\"chatcmpl-mock45551db9fd8933e800000001\",\"object\":\"chat.completion\",\"created\":"
               "1795417769,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
               "\"content\":\" tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8\",\"refusal\":null},\"logprobs\":null,"
               "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":236,\"completion_tokens\":8,"
               "\"total_tokens\":244,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":"
               "{\"reasoning_tokens\":0}},\"system_fingerprint\":null}",
               200000);
    static const char words[] = "The quick brown fox jumps over the lazy dog. ";
    for (int escapes = 0; escapes < 2; escapes++) {
        static char big[20000];
        size_t off = (size_t)sprintf(big, "{\"id\":\"x\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                                          "\"content\":\"");
        for (int i = 0; i < 16384; i++) {
            if (escapes && i % 60 == 59) {
                big[off++] = '\\';
                big[off++] = 'n';
            } else {
                big[off++] = words[i % (sizeof(words) - 1)];
            }
        }
        sprintf(big + off, "\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}");
        bench_body(escapes ? "long answer with escapes" : "long answer", big, 10000);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bodies),          cmocka_unit_test(test_bodies_without_usage),
        cmocka_unit_test(test_chat_chunks),     cmocka_unit_test(test_responses_events),
        cmocka_unit_test(test_estimate),        cmocka_unit_test(test_bench),
        cmocka_unit_test(test_tokenizer_edges), cmocka_unit_test(test_string_scan),
        cmocka_unit_test(test_against_yajl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
