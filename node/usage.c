/* usage: token usage from OpenAI-format response JSON (see usage.h).
 *
 * How it works: a yajl SAX pass whose callbacks keep, for each open container down to
 * USAGE_KEY_DEPTH, a role (root, "response", "usage", the two *_details objects, the
 * "choices" array, other) and the id of the current key, chosen from a short fixed table
 * per role. A number is a count only when its container's role and key say so, so content
 * is never looked at beyond counting the bytes of delta-like strings. The same callbacks
 * serve whole bodies fed piecewise (usage_scan_*) and single SSE events (usage_scan_chunk). */
#include "node/usage.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

#include "node/wipe.h"

typedef enum {
    ROLE_OTHER,
    ROLE_ROOT,
    ROLE_RESPONSE,
    ROLE_USAGE,
    ROLE_IN_DETAILS,
    ROLE_OUT_DETAILS,
    ROLE_CHOICES
} role_t;

typedef enum {
    KEY_NONE,
    KEY_USAGE,
    KEY_RESPONSE,
    KEY_CHOICES,
    KEY_TYPE,
    KEY_INPUT,
    KEY_OUTPUT,
    KEY_IN_DETAILS,
    KEY_OUT_DETAILS,
    KEY_CACHED,
    KEY_REASONING,
    KEY_CONTENT,
    KEY_DELTA,
    KEY_OUTPUT_LIST,
} key_t_;

typedef struct scan_ctx {
    unsigned depth;
    uint8_t role[USAGE_KEY_DEPTH + 1]; /* role of the container at each depth (1-based) */
    uint8_t key[USAGE_KEY_DEPTH + 1];  /* current key in the map at each depth */
    usage_t cur;                       /* the usage object being read */
    usage_chunk_t res;
    int choices;            /* 0 no top-level "choices" array, 1 empty, 2 not empty */
    unsigned counted_depth; /* depth of the top-level "choices" or "output" array we are in, or 0 */
} scan_ctx_t;

struct usage_scan {
    scan_ctx_t ctx;
    yajl_handle parser;
    int rc;
};

static bool key_is(const unsigned char *k, size_t n, const char *lit)
{
    return strlen(lit) == n && memcmp(k, lit, n) == 0;
}

static key_t_ key_id(role_t role, const unsigned char *k, size_t n)
{
    switch (role) {
    case ROLE_ROOT:
        if (key_is(k, n, "usage"))
            return KEY_USAGE;
        if (key_is(k, n, "response"))
            return KEY_RESPONSE;
        if (key_is(k, n, "choices"))
            return KEY_CHOICES;
        if (key_is(k, n, "type"))
            return KEY_TYPE;
        if (key_is(k, n, "output"))
            return KEY_OUTPUT_LIST;
        break;
    case ROLE_RESPONSE:
        if (key_is(k, n, "usage"))
            return KEY_USAGE;
        break;
    case ROLE_USAGE:
        if (key_is(k, n, "prompt_tokens") || key_is(k, n, "input_tokens"))
            return KEY_INPUT;
        if (key_is(k, n, "completion_tokens") || key_is(k, n, "output_tokens"))
            return KEY_OUTPUT;
        if (key_is(k, n, "prompt_tokens_details") || key_is(k, n, "input_tokens_details"))
            return KEY_IN_DETAILS;
        if (key_is(k, n, "completion_tokens_details") || key_is(k, n, "output_tokens_details"))
            return KEY_OUT_DETAILS;
        return KEY_NONE;
    case ROLE_IN_DETAILS:
        return key_is(k, n, "cached_tokens") ? KEY_CACHED : KEY_NONE;
    case ROLE_OUT_DETAILS:
        return key_is(k, n, "reasoning_tokens") ? KEY_REASONING : KEY_NONE;
    default:
        break;
    }
    if (key_is(k, n, "delta"))
        return KEY_DELTA;
    if (key_is(k, n, "content") || key_is(k, n, "text") || key_is(k, n, "arguments") || key_is(k, n, "refusal") ||
        key_is(k, n, "reasoning_content"))
        return KEY_CONTENT;
    return KEY_NONE;
}

/* Role and key of the container holding the value now being read. */
static role_t cur_role(const scan_ctx_t *c)
{
    return c->depth >= 1 && c->depth <= USAGE_KEY_DEPTH ? (role_t)c->role[c->depth] : ROLE_OTHER;
}

static key_t_ cur_key(const scan_ctx_t *c)
{
    return c->depth >= 1 && c->depth <= USAGE_KEY_DEPTH ? (key_t_)c->key[c->depth] : KEY_NONE;
}

static void count_item(scan_ctx_t *c)
{
    if (cur_role(c) == ROLE_CHOICES)
        c->choices = 2;
}

static int cb_null(void *data)
{
    count_item(data);
    return 1;
}

static int cb_boolean(void *data, int b)
{
    (void)b;
    count_item(data);
    return 1;
}

static int64_t parse_count(const char *s, size_t n)
{
    if (n == 0 || n > 18)
        return 0;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static int cb_number(void *data, const char *s, size_t n)
{
    scan_ctx_t *c = data;
    count_item(c);
    role_t role = cur_role(c);
    key_t_ key = cur_key(c);
    if (role == ROLE_USAGE && key == KEY_INPUT)
        c->cur.input_tokens = parse_count(s, n);
    else if (role == ROLE_USAGE && key == KEY_OUTPUT)
        c->cur.output_tokens = parse_count(s, n);
    else if (role == ROLE_IN_DETAILS && key == KEY_CACHED)
        c->cur.cached_input_tokens = parse_count(s, n);
    else if (role == ROLE_OUT_DETAILS && key == KEY_REASONING)
        c->cur.reasoning_tokens = parse_count(s, n);
    return 1;
}

static bool str_is(const unsigned char *s, size_t n, const char *lit)
{
    return key_is(s, n, lit);
}

static int cb_string(void *data, const unsigned char *s, size_t n)
{
    scan_ctx_t *c = data;
    count_item(c);
    role_t role = cur_role(c);
    key_t_ key = cur_key(c);
    if ((key == KEY_CONTENT || key == KEY_DELTA) && c->counted_depth != 0)
        c->res.content_bytes += n; /* choices[].delta.content, choices[].text, output[].content[].text, ... */
    else if (role == ROLE_ROOT && key == KEY_DELTA)
        c->res.content_bytes += n; /* Responses API *.delta events */
    else if (role == ROLE_ROOT && key == KEY_TYPE)
        c->res.terminal = str_is(s, n, "response.completed") || str_is(s, n, "response.incomplete") ||
                          str_is(s, n, "response.failed");
    return 1;
}

static int open_container(scan_ctx_t *c, bool is_map)
{
    count_item(c);
    if (c->depth >= USAGE_MAX_DEPTH)
        return 0;
    role_t parent = c->depth == 0 ? ROLE_OTHER : cur_role(c);
    key_t_ key = cur_key(c);
    role_t role = ROLE_OTHER;
    if (c->depth == 0)
        role = is_map ? ROLE_ROOT : ROLE_OTHER;
    else if (is_map && key == KEY_USAGE && (parent == ROLE_ROOT || parent == ROLE_RESPONSE))
        role = ROLE_USAGE;
    else if (is_map && key == KEY_RESPONSE && parent == ROLE_ROOT)
        role = ROLE_RESPONSE;
    else if (is_map && key == KEY_IN_DETAILS && parent == ROLE_USAGE)
        role = ROLE_IN_DETAILS;
    else if (is_map && key == KEY_OUT_DETAILS && parent == ROLE_USAGE)
        role = ROLE_OUT_DETAILS;
    else if (!is_map && key == KEY_CHOICES && parent == ROLE_ROOT)
        role = ROLE_CHOICES;
    if (!is_map && parent == ROLE_ROOT && (key == KEY_CHOICES || key == KEY_OUTPUT_LIST))
        c->counted_depth = c->depth + 1;
    c->depth++;
    if (c->depth <= USAGE_KEY_DEPTH) {
        c->role[c->depth] = (uint8_t)role;
        c->key[c->depth] = KEY_NONE;
    }
    if (role == ROLE_USAGE)
        memset(&c->cur, 0, sizeof(c->cur));
    else if (role == ROLE_CHOICES)
        c->choices = 1;
    return 1;
}

static int cb_start_map(void *data)
{
    return open_container(data, true);
}

static int cb_start_array(void *data)
{
    return open_container(data, false);
}

static int close_container(void *data)
{
    scan_ctx_t *c = data;
    if (cur_role(c) == ROLE_USAGE) {
        c->res.usage = c->cur;
        c->res.usage.found = true;
    }
    if (c->depth == c->counted_depth)
        c->counted_depth = 0;
    c->depth--;
    return 1;
}

static int cb_map_key(void *data, const unsigned char *k, size_t n)
{
    scan_ctx_t *c = data;
    if (c->depth >= 1 && c->depth <= USAGE_KEY_DEPTH)
        c->key[c->depth] = (uint8_t)key_id((role_t)c->role[c->depth], k, n);
    return 1;
}

static const yajl_callbacks callbacks = {
    .yajl_null = cb_null,
    .yajl_boolean = cb_boolean,
    .yajl_number = cb_number,
    .yajl_string = cb_string,
    .yajl_start_map = cb_start_map,
    .yajl_map_key = cb_map_key,
    .yajl_end_map = close_container,
    .yajl_start_array = cb_start_array,
    .yajl_end_array = close_container,
};

static yajl_handle parser_new(scan_ctx_t *c)
{
    yajl_alloc_funcs af;
    wipe_yajl_alloc_funcs_init(&af);
    yajl_handle h = yajl_alloc(&callbacks, &af, c);
    /* The upstream's answer is relayed byte for byte whatever its encoding: checking its
     * UTF-8 here would only cost time (the client-facing request parser stays strict). */
    if (h != NULL)
        yajl_config(h, yajl_dont_validate_strings, 1);
    return h;
}

int usage_scan_init(usage_scan_t **out)
{
    usage_scan_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->parser = parser_new(&s->ctx);
    if (s->parser == NULL) {
        free(s);
        return -ENOMEM;
    }
    *out = s;
    return 0;
}

int usage_scan_feed(usage_scan_t *s, const uint8_t *buf, size_t len)
{
    if (s->rc != 0)
        return s->rc;
    if (yajl_parse(s->parser, buf, len) != yajl_status_ok)
        s->rc = -EINVAL;
    return s->rc;
}

int usage_scan_finish(usage_scan_t *s, usage_t *out)
{
    if (s->rc == 0 && yajl_complete_parse(s->parser) != yajl_status_ok)
        s->rc = -EINVAL;
    *out = s->ctx.res.usage;
    if (s->rc != 0)
        out->found = false;
    if (!out->found)
        memset(out, 0, sizeof(*out));
    return s->rc;
}

size_t usage_scan_content_bytes(const usage_scan_t *s)
{
    return s->ctx.res.content_bytes;
}

void usage_scan_free(usage_scan_t *s)
{
    if (s == NULL)
        return;
    yajl_free(s->parser);
    explicit_bzero(s, sizeof(*s));
    free(s);
}

int usage_scan_chunk(const uint8_t *json, size_t len, usage_chunk_t *out)
{
    scan_ctx_t c;
    memset(&c, 0, sizeof(c));
    yajl_handle h = parser_new(&c);
    if (h == NULL) {
        memset(out, 0, sizeof(*out));
        return -ENOMEM;
    }
    int rc = 0;
    if (yajl_parse(h, json, len) != yajl_status_ok || yajl_complete_parse(h) != yajl_status_ok)
        rc = -EINVAL;
    yajl_free(h);
    *out = c.res;
    if (rc != 0 || !out->usage.found) {
        memset(&out->usage, 0, sizeof(out->usage));
        out->usage_only = false;
    } else {
        out->usage_only = c.choices == 1;
    }
    return rc;
}

int usage_from_chat_chunk(const uint8_t *json, size_t len, usage_t *out, bool *usage_only)
{
    usage_chunk_t ch;
    int rc = usage_scan_chunk(json, len, &ch);
    *out = ch.usage;
    if (usage_only != NULL)
        *usage_only = ch.usage_only;
    return rc;
}

int usage_from_responses_event(const uint8_t *json, size_t len, usage_t *out, bool *terminal)
{
    usage_chunk_t ch;
    int rc = usage_scan_chunk(json, len, &ch);
    *out = ch.usage;
    if (terminal != NULL)
        *terminal = ch.terminal;
    return rc;
}

int usage_content_bytes(const uint8_t *json, size_t len, size_t *bytes)
{
    usage_chunk_t ch;
    int rc = usage_scan_chunk(json, len, &ch);
    *bytes = ch.content_bytes;
    return rc;
}

void usage_estimate(size_t prompt_bytes, size_t output_bytes, usage_t *out)
{
    memset(out, 0, sizeof(*out));
    out->input_tokens = (int64_t)(prompt_bytes / 4 + (prompt_bytes % 4 != 0));
    out->output_tokens = (int64_t)(output_bytes / 4 + (output_bytes % 4 != 0));
    out->found = false;
}
