/* xlate_resp: chat answers, streams and errors between OpenAI, Anthropic and Gemini (see xlate_resp.h).
 *
 * Layout: JSON documents parsed into trees in wiped, bounded arenas (jdoc_*) and written with the
 * jw_* writer into wipe_buf_t (both node/jtree.h; used at depth 0 only, the punctuation written
 * with jw_raw, so the writer adds no separators of its own), the
 * format tables (finish reasons, usage, errors), the non-stream translation (an ordered list of
 * blocks borrowed from the tree), then the stream translator: per upstream format a reader that
 * turns one event into calls of the op_* functions, which write the client's events. Every
 * function that appends to the caller's buffer truncates it back (wiping) on failure, so a
 * failed call leaves no partial event. */
#include "node/xlate_resp.h"
#include "node/jtree.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- JSON documents (node/jtree.h) ---- */

/* A parsed document: its tree in an arena bounded to 16 times the text plus 64 KiB. */
typedef struct jdoc {
    jarena_t arena;
    jnode_t *root;
} jdoc_t;

static void jdoc_init(jdoc_t *d)
{
    jarena_init(&d->arena, 0);
    d->root = NULL;
}

static void jdoc_free(jdoc_t *d)
{
    jarena_free(&d->arena);
    d->root = NULL;
}

/* Parses len bytes into d (initialised). 0, -EINVAL (with the byte offset in *at), -E2BIG, -ENOMEM. */
static int jdoc_parse(jdoc_t *d, const uint8_t *buf, size_t len, size_t *at)
{
    static const jtree_parse_opts_t opts = {.max_depth = XLATE_RESP_MAX_DEPTH};
    d->arena.max = 16 * len + 65536;
    int r = jtree_parse(&d->arena, buf, len, &opts, &d->root, at, NULL);
    return r == -ELOOP ? -EINVAL : r;
}

static jnode_t *jget(const jnode_t *obj, const char *key)
{
    if (obj == NULL || obj->type != J_OBJ)
        return NULL;
    size_t kl = strlen(key);
    jnode_t *found = NULL;
    for (jnode_t *c = obj->first; c != NULL; c = c->next)
        if (c->keylen == kl && memcmp(c->key, key, kl) == 0)
            found = c; /* the last duplicate wins, as in most JSON readers */
    return found;
}

static jnode_t *jget_t(const jnode_t *obj, const char *key, jtype_t t)
{
    jnode_t *n = jget(obj, key);
    return n != NULL && n->type == t ? n : NULL;
}

static jnode_t *jindex(const jnode_t *arr, size_t i)
{
    if (arr == NULL || arr->type != J_ARR)
        return NULL;
    for (jnode_t *c = arr->first; c != NULL; c = c->next, i--)
        if (i == 0)
            return c;
    return NULL;
}

static bool jstr_is(const jnode_t *n, const char *lit)
{
    return n != NULL && n->type == J_STR && n->n == strlen(lit) && memcmp(n->s, lit, n->n) == 0;
}

/* A non-negative integer count; anything else reads as 0. */
static int64_t jcount(const jnode_t *n)
{
    if (n == NULL || n->type != J_NUM || n->n == 0 || n->n > 18)
        return 0;
    int64_t v = 0;
    for (size_t i = 0; i < n->n; i++) {
        if (n->s[i] < '0' || n->s[i] > '9')
            return 0;
        v = v * 10 + (n->s[i] - '0');
    }
    return v;
}

/* ---- formats: finish reasons, usage, ids, errors ---- */

typedef enum { FR_NONE, FR_STOP, FR_STOP_SEQ, FR_LENGTH, FR_TOOL, FR_FILTER, FR_PAUSE, FR_OTHER } finish_t;

static finish_t finish_from(xlate_format_t f, const jnode_t *n)
{
    if (n == NULL || n->type != J_STR)
        return FR_NONE;
    static const struct {
        xlate_format_t f;
        const char *word;
        finish_t fr;
    } map[] = {
        {XLATE_OPENAI_CHAT, "stop", FR_STOP},
        {XLATE_OPENAI_CHAT, "length", FR_LENGTH},
        {XLATE_OPENAI_CHAT, "tool_calls", FR_TOOL},
        {XLATE_OPENAI_CHAT, "function_call", FR_TOOL},
        {XLATE_OPENAI_CHAT, "content_filter", FR_FILTER},
        {XLATE_ANTHROPIC, "end_turn", FR_STOP},
        {XLATE_ANTHROPIC, "stop_sequence", FR_STOP_SEQ},
        {XLATE_ANTHROPIC, "max_tokens", FR_LENGTH},
        {XLATE_ANTHROPIC, "model_context_window_exceeded", FR_LENGTH},
        {XLATE_ANTHROPIC, "tool_use", FR_TOOL},
        {XLATE_ANTHROPIC, "refusal", FR_FILTER},
        {XLATE_ANTHROPIC, "pause_turn", FR_PAUSE},
        {XLATE_GEMINI, "STOP", FR_STOP},
        {XLATE_GEMINI, "MAX_TOKENS", FR_LENGTH},
        {XLATE_GEMINI, "SAFETY", FR_FILTER},
        {XLATE_GEMINI, "RECITATION", FR_FILTER},
        {XLATE_GEMINI, "BLOCKLIST", FR_FILTER},
        {XLATE_GEMINI, "PROHIBITED_CONTENT", FR_FILTER},
        {XLATE_GEMINI, "SPII", FR_FILTER},
        {XLATE_GEMINI, "IMAGE_SAFETY", FR_FILTER},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (map[i].f == f && jstr_is(n, map[i].word))
            return map[i].fr;
    return FR_OTHER;
}

static const char *finish_word(xlate_format_t f, finish_t fr)
{
    switch (f) {
    case XLATE_OPENAI_CHAT:
        return fr == FR_LENGTH ? "length" : fr == FR_TOOL ? "tool_calls" : fr == FR_FILTER ? "content_filter" : "stop";
    case XLATE_ANTHROPIC:
        switch (fr) {
        case FR_STOP_SEQ:
            return "stop_sequence";
        case FR_LENGTH:
            return "max_tokens";
        case FR_TOOL:
            return "tool_use";
        case FR_FILTER:
            return "refusal";
        case FR_PAUSE:
            return "pause_turn";
        default:
            return "end_turn";
        }
    case XLATE_GEMINI:
        switch (fr) {
        case FR_LENGTH:
            return "MAX_TOKENS";
        case FR_FILTER:
            return "SAFETY";
        case FR_PAUSE:
        case FR_OTHER:
            return "OTHER";
        default:
            return "STOP";
        }
    }
    return "stop";
}

static int64_t nonneg(int64_t v)
{
    return v < 0 ? 0 : v;
}

/* Reads a usage object of format f into *u (replacing what its fields give: cumulative counts).
 * Anthropic's counts are kept apart in *a so a message_delta that repeats only some of them keeps
 * the others. */
typedef struct anth_counts {
    int64_t input, cache_read, cache_creation, output;
} anth_counts_t;

static void usage_from_anth(const anth_counts_t *a, xlate_usage_t *u)
{
    u->found = true;
    u->input_tokens = a->input + a->cache_read + a->cache_creation;
    u->cached_input_tokens = a->cache_read;
    u->cache_creation_input_tokens = a->cache_creation;
    u->output_tokens = a->output;
    u->reasoning_tokens = 0;
}

static void usage_read(xlate_format_t f, const jnode_t *obj, xlate_usage_t *u, anth_counts_t *a)
{
    if (obj == NULL || obj->type != J_OBJ)
        return;
    switch (f) {
    case XLATE_OPENAI_CHAT:
        u->found = true;
        u->input_tokens = jcount(jget(obj, "prompt_tokens"));
        u->output_tokens = jcount(jget(obj, "completion_tokens"));
        u->cached_input_tokens = jcount(jget(jget(obj, "prompt_tokens_details"), "cached_tokens"));
        u->reasoning_tokens = jcount(jget(jget(obj, "completion_tokens_details"), "reasoning_tokens"));
        u->cache_creation_input_tokens = 0;
        break;
    case XLATE_ANTHROPIC: {
        const jnode_t *v;
        if ((v = jget_t(obj, "input_tokens", J_NUM)) != NULL)
            a->input = jcount(v);
        if ((v = jget_t(obj, "cache_read_input_tokens", J_NUM)) != NULL)
            a->cache_read = jcount(v);
        if ((v = jget_t(obj, "cache_creation_input_tokens", J_NUM)) != NULL)
            a->cache_creation = jcount(v);
        if ((v = jget_t(obj, "output_tokens", J_NUM)) != NULL)
            a->output = jcount(v);
        usage_from_anth(a, u);
        break;
    }
    case XLATE_GEMINI: {
        int64_t thoughts = jcount(jget(obj, "thoughtsTokenCount"));
        u->found = true;
        u->input_tokens = jcount(jget(obj, "promptTokenCount")) + jcount(jget(obj, "toolUsePromptTokenCount"));
        u->cached_input_tokens = jcount(jget(obj, "cachedContentTokenCount"));
        u->cache_creation_input_tokens = 0;
        u->output_tokens = jcount(jget(obj, "candidatesTokenCount")) + thoughts;
        u->reasoning_tokens = thoughts;
        break;
    }
    }
}

static void usage_write(jw_t *w, xlate_format_t f, const xlate_usage_t *u)
{
    switch (f) {
    case XLATE_OPENAI_CHAT:
        jw_raw(w, "{\"prompt_tokens\":");
        jw_int(w, u->input_tokens);
        jw_raw(w, ",\"completion_tokens\":");
        jw_int(w, u->output_tokens);
        jw_raw(w, ",\"total_tokens\":");
        jw_int(w, u->input_tokens + u->output_tokens);
        jw_raw(w, ",\"prompt_tokens_details\":{\"cached_tokens\":");
        jw_int(w, u->cached_input_tokens);
        jw_raw(w, "},\"completion_tokens_details\":{\"reasoning_tokens\":");
        jw_int(w, u->reasoning_tokens);
        jw_raw(w, "}}");
        break;
    case XLATE_ANTHROPIC:
        jw_raw(w, "{\"input_tokens\":");
        jw_int(w, nonneg(u->input_tokens - u->cached_input_tokens - u->cache_creation_input_tokens));
        jw_raw(w, ",\"cache_creation_input_tokens\":");
        jw_int(w, u->cache_creation_input_tokens);
        jw_raw(w, ",\"cache_read_input_tokens\":");
        jw_int(w, u->cached_input_tokens);
        jw_raw(w, ",\"output_tokens\":");
        jw_int(w, u->output_tokens);
        jw_raw(w, "}");
        break;
    case XLATE_GEMINI:
        jw_raw(w, "{\"promptTokenCount\":");
        jw_int(w, u->input_tokens);
        jw_raw(w, ",\"candidatesTokenCount\":");
        jw_int(w, nonneg(u->output_tokens - u->reasoning_tokens));
        if (u->reasoning_tokens > 0) {
            jw_raw(w, ",\"thoughtsTokenCount\":");
            jw_int(w, u->reasoning_tokens);
        }
        if (u->cached_input_tokens > 0) {
            jw_raw(w, ",\"cachedContentTokenCount\":");
            jw_int(w, u->cached_input_tokens);
        }
        jw_raw(w, ",\"totalTokenCount\":");
        jw_int(w, u->input_tokens + u->output_tokens);
        jw_raw(w, "}");
        break;
    }
}

/* splitmix64: ids from the caller's seed (not secret, only unique). */
static uint64_t mix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* n base62 characters from seed (salted per use), NUL-terminated in out (n + 1 bytes). */
static void make_chars(uint64_t seed, uint64_t salt, char *out, size_t n)
{
    static const char alphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    uint64_t x = seed ^ (salt * 0x2545f4914f6cdd1dULL);
    for (size_t i = 0; i < n; i++) {
        uint64_t r = mix64(&x);
        out[i] = alphabet[r % 62];
    }
    out[n] = '\0';
}

static void make_id(xlate_format_t f, uint64_t seed, char *out, size_t cap)
{
    char chars[25];
    make_chars(seed, 1, chars, 24);
    snprintf(out, cap, "%s%s", f == XLATE_OPENAI_CHAT ? "chatcmpl-" : f == XLATE_ANTHROPIC ? "msg_" : "", chars);
}

static void make_call_id(uint64_t seed, unsigned k, char *out, size_t cap)
{
    char chars[13];
    make_chars(seed, 2, chars, 12);
    snprintf(out, cap, "call_%s_%u", chars, k);
}

/* Error words for a status (DESIGN.md's table). */
typedef struct err_words {
    const char *oa_code, *oa_type, *an_type, *ge_status;
} err_words_t;

static err_words_t err_words(int status)
{
    switch (status) {
    case 400:
        return (err_words_t){"invalid_request", "invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"};
    case 401:
        return (err_words_t){"invalid_api_key", "invalid_request_error", "authentication_error", "UNAUTHENTICATED"};
    case 403:
        return (err_words_t){"permission_denied", "permission_error", "permission_error", "PERMISSION_DENIED"};
    case 404:
        return (err_words_t){"not_found", "invalid_request_error", "not_found_error", "NOT_FOUND"};
    case 413:
        return (err_words_t){"request_too_large", "invalid_request_error", "request_too_large", "INVALID_ARGUMENT"};
    case 429:
        return (err_words_t){"rate_limit_exceeded", "rate_limit_error", "rate_limit_error", "RESOURCE_EXHAUSTED"};
    case 503:
    case 529:
        return (err_words_t){"upstream_error", "api_error", "overloaded_error", "UNAVAILABLE"};
    case 504:
        return (err_words_t){"upstream_timeout", "api_error", "api_error", "DEADLINE_EXCEEDED"};
    default:
        if (status >= 400 && status < 500)
            return (err_words_t){"invalid_request", "invalid_request_error", "invalid_request_error",
                                 "FAILED_PRECONDITION"};
        if (status == 500)
            return (err_words_t){"upstream_error", "api_error", "api_error", "INTERNAL"};
        return (err_words_t){"upstream_error", "api_error", "api_error", "UNAVAILABLE"};
    }
}

/* The status an in-stream error stands for (these errors have no HTTP status of their own). */
static int status_of_error(xlate_format_t f, const jnode_t *err)
{
    if (f == XLATE_GEMINI) {
        int64_t c = jcount(jget(err, "code"));
        return c >= 400 && c <= 599 ? (int)c : 500;
    }
    static const struct {
        const char *word;
        int status;
    } map[] = {
        {"invalid_request_error", 400}, {"authentication_error", 401}, {"permission_error", 403},
        {"not_found_error", 404},       {"request_too_large", 413},    {"rate_limit_error", 429},
        {"rate_limit_exceeded", 429},   {"overloaded_error", 529},     {"api_error", 500},
        {"server_error", 500},
    };
    const jnode_t *t = jget(err, "type");
    const jnode_t *c = jget(err, "code");
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (jstr_is(t, map[i].word) || jstr_is(c, map[i].word))
            return map[i].status;
    return 500;
}

#define ERR_MSG_MAX 1024

/* Length of s cut to at most max bytes on a UTF-8 character boundary. */
static size_t cut_utf8(const char *s, size_t n, size_t max)
{
    if (n <= max)
        return n;
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

/* Writes the client's error object (the JSON document, no SSE framing). */
static void error_write(jw_t *w, xlate_format_t client, int status, const char *msg, size_t msg_len)
{
    err_words_t ew = err_words(status);
    msg_len = cut_utf8(msg, msg_len, ERR_MSG_MAX);
    switch (client) {
    case XLATE_OPENAI_CHAT:
        jw_raw(w, "{\"error\":{\"message\":");
        jw_strn(w, msg, msg_len);
        jw_raw(w, ",\"type\":");
        jw_str(w, ew.oa_type);
        jw_raw(w, ",\"param\":null,\"code\":");
        jw_str(w, ew.oa_code);
        jw_raw(w, "}}");
        break;
    case XLATE_ANTHROPIC:
        jw_raw(w, "{\"type\":\"error\",\"error\":{\"type\":");
        jw_str(w, ew.an_type);
        jw_raw(w, ",\"message\":");
        jw_strn(w, msg, msg_len);
        jw_raw(w, "}}");
        break;
    case XLATE_GEMINI:
        jw_raw(w, "{\"error\":{\"code\":");
        jw_int(w, status);
        jw_raw(w, ",\"message\":");
        jw_strn(w, msg, msg_len);
        jw_raw(w, ",\"status\":");
        jw_str(w, ew.ge_status);
        jw_raw(w, "}}");
        break;
    }
}

/* The error object of an upstream document: {"error": {...}} in every format. */
static const jnode_t *error_of(const jnode_t *root)
{
    return jget_t(root, "error", J_OBJ);
}

int xlate_error(xlate_format_t up, xlate_format_t client, int status, const uint8_t *body, size_t len,
                wipe_buf_t *out)
{
    jdoc_t d;
    jdoc_init(&d);
    const jnode_t *err = NULL;
    if (len > 0 && jdoc_parse(&d, body, len, NULL) == 0)
        err = error_of(d.root);
    jw_t w;
    jw_begin(&w, out);
    if (up == client && err != NULL) {
        jw_put(&w, body, len);
    } else {
        const jnode_t *m = jget_t(err, "message", J_STR);
        char generic[64];
        if (m != NULL && m->n > 0) {
            error_write(&w, client, status, m->s, m->n);
        } else {
            int n = snprintf(generic, sizeof(generic), "upstream error (status %d)", status);
            error_write(&w, client, status, generic, (size_t)n);
        }
    }
    jdoc_free(&d);
    return jw_end(&w);
}

/* ---- non-stream answers ---- */

typedef enum { BLK_TEXT, BLK_TOOL } blk_kind_t;

typedef struct blk {
    blk_kind_t kind;
    const char *text; /* BLK_TEXT */
    size_t text_len;
    const char *id, *name; /* BLK_TOOL: id NULL = make one */
    size_t id_len, name_len;
    const jnode_t *args;      /* arguments as a JSON value (Anthropic input, Gemini args) ... */
    const jnode_t *args_text; /* ... or as JSON text (OpenAI arguments string) */
} blk_t;

typedef struct answer {
    blk_t *blk;
    size_t n, cap;
    finish_t finish;
    const jnode_t *stop_sequence; /* Anthropic's, kept Anthropic to Anthropic */
    xlate_usage_t usage;
} answer_t;

static int answer_add(answer_t *a, const blk_t *b)
{
    if (a->n == a->cap) {
        size_t cap = a->cap == 0 ? 8 : a->cap * 2;
        blk_t *p = realloc(a->blk, cap * sizeof(*p)); /* pointers and lengths only: no content */
        if (p == NULL)
            return -ENOMEM;
        a->blk = p;
        a->cap = cap;
    }
    a->blk[a->n++] = *b;
    return 0;
}

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static int read_openai(const jnode_t *root, answer_t *a, char *err, size_t errlen)
{
    const jnode_t *choice = jindex(jget_t(root, "choices", J_ARR), 0);
    const jnode_t *msg = jget_t(choice, "message", J_OBJ);
    if (msg == NULL)
        return fail(err, errlen, "the upstream answer has no choices[0].message object");
    const jnode_t *content = jget(msg, "content");
    if (content != NULL && content->type == J_STR && content->n > 0) {
        if (answer_add(a, &(blk_t){.kind = BLK_TEXT, .text = content->s, .text_len = content->n}) != 0)
            return -ENOMEM;
    } else if (content != NULL && content->type == J_ARR) {
        for (const jnode_t *p = content->first; p != NULL; p = p->next) {
            const jnode_t *t = jget_t(p, "text", J_STR);
            if (t != NULL && answer_add(a, &(blk_t){.kind = BLK_TEXT, .text = t->s, .text_len = t->n}) != 0)
                return -ENOMEM;
        }
    } else if (content != NULL && content->type != J_NULL && content->type != J_STR) {
        return fail(err, errlen, "choices[0].message.content is neither a string nor null");
    }
    const jnode_t *refusal = jget_t(msg, "refusal", J_STR);
    if (refusal != NULL && refusal->n > 0 &&
        answer_add(a, &(blk_t){.kind = BLK_TEXT, .text = refusal->s, .text_len = refusal->n}) != 0)
        return -ENOMEM;
    const jnode_t *calls = jget_t(msg, "tool_calls", J_ARR);
    size_t i = 0;
    for (const jnode_t *c = calls != NULL ? calls->first : NULL; c != NULL; c = c->next, i++) {
        const jnode_t *fn = jget_t(c, "function", J_OBJ);
        const jnode_t *name = jget_t(fn, "name", J_STR);
        const jnode_t *args = jget(fn, "arguments");
        const jnode_t *id = jget_t(c, "id", J_STR);
        if (name == NULL)
            return fail(err, errlen, "choices[0].message.tool_calls[%zu].function.name is missing", i);
        if (args != NULL && args->type != J_STR && args->type != J_NULL)
            return fail(err, errlen, "choices[0].message.tool_calls[%zu].function.arguments is not a string", i);
        blk_t b = {.kind = BLK_TOOL, .name = name->s, .name_len = name->n};
        if (id != NULL) {
            b.id = id->s;
            b.id_len = id->n;
        }
        b.args_text = args != NULL && args->type == J_STR ? args : NULL;
        if (answer_add(a, &b) != 0)
            return -ENOMEM;
    }
    a->finish = finish_from(XLATE_OPENAI_CHAT, jget(choice, "finish_reason"));
    usage_read(XLATE_OPENAI_CHAT, jget(root, "usage"), &a->usage, &(anth_counts_t){0});
    return 0;
}

static int read_anthropic(const jnode_t *root, answer_t *a, char *err, size_t errlen)
{
    const jnode_t *content = jget_t(root, "content", J_ARR);
    if (content == NULL)
        return fail(err, errlen, "the upstream answer has no content array");
    size_t i = 0;
    for (const jnode_t *c = content->first; c != NULL; c = c->next, i++) {
        const jnode_t *type = jget(c, "type");
        if (jstr_is(type, "text")) {
            const jnode_t *t = jget_t(c, "text", J_STR);
            if (t == NULL)
                return fail(err, errlen, "content[%zu].text is not a string", i);
            if (answer_add(a, &(blk_t){.kind = BLK_TEXT, .text = t->s, .text_len = t->n}) != 0)
                return -ENOMEM;
        } else if (jstr_is(type, "tool_use")) {
            const jnode_t *id = jget_t(c, "id", J_STR);
            const jnode_t *name = jget_t(c, "name", J_STR);
            const jnode_t *input = jget_t(c, "input", J_OBJ);
            if (id == NULL || name == NULL || input == NULL)
                return fail(err, errlen, "content[%zu] (tool_use) lacks id, name or input", i);
            blk_t b = {.kind = BLK_TOOL, .id = id->s, .id_len = id->n, .name = name->s, .name_len = name->n,
                       .args = input};
            if (answer_add(a, &b) != 0)
                return -ENOMEM;
        }
        /* thinking, redacted_thinking and server tool blocks carry no answer text */
    }
    a->finish = finish_from(XLATE_ANTHROPIC, jget(root, "stop_reason"));
    a->stop_sequence = jget_t(root, "stop_sequence", J_STR);
    anth_counts_t ac = {0};
    usage_read(XLATE_ANTHROPIC, jget(root, "usage"), &a->usage, &ac);
    return 0;
}

/* Reads candidates[0] (parts, finishReason) and promptFeedback of a Gemini answer or chunk. */
static int read_gemini(const jnode_t *root, answer_t *a, char *err, size_t errlen)
{
    const jnode_t *cand = jindex(jget_t(root, "candidates", J_ARR), 0);
    const jnode_t *parts = jget_t(jget_t(cand, "content", J_OBJ), "parts", J_ARR);
    bool calls = false;
    size_t i = 0;
    for (const jnode_t *p = parts != NULL ? parts->first : NULL; p != NULL; p = p->next, i++) {
        const jnode_t *t = jget_t(p, "text", J_STR);
        const jnode_t *fc = jget_t(p, "functionCall", J_OBJ);
        const jnode_t *thought = jget_t(p, "thought", J_BOOL);
        if (t != NULL && thought != NULL && thought->b)
            continue; /* a thought summary, not answer text */
        if (t != NULL) {
            if (t->n > 0 && answer_add(a, &(blk_t){.kind = BLK_TEXT, .text = t->s, .text_len = t->n}) != 0)
                return -ENOMEM;
        } else if (fc != NULL) {
            const jnode_t *name = jget_t(fc, "name", J_STR);
            const jnode_t *args = jget(fc, "args");
            const jnode_t *id = jget_t(fc, "id", J_STR);
            if (name == NULL || (args != NULL && args->type != J_OBJ && args->type != J_NULL))
                return fail(err, errlen, "candidates[0].content.parts[%zu].functionCall lacks a name or has "
                                         "args that are not an object", i);
            blk_t b = {.kind = BLK_TOOL, .name = name->s, .name_len = name->n};
            b.args = args != NULL && args->type == J_OBJ ? args : NULL;
            if (id != NULL && id->n > 0) {
                b.id = id->s;
                b.id_len = id->n;
            }
            if (answer_add(a, &b) != 0)
                return -ENOMEM;
            calls = true;
        }
    }
    a->finish = finish_from(XLATE_GEMINI, jget(cand, "finishReason"));
    if (cand == NULL && jget_t(jget_t(root, "promptFeedback", J_OBJ), "blockReason", J_STR) != NULL)
        a->finish = FR_FILTER;
    if (calls && (a->finish == FR_STOP || a->finish == FR_NONE))
        a->finish = FR_TOOL;
    usage_read(XLATE_GEMINI, jget(root, "usageMetadata"), &a->usage, &(anth_counts_t){0});
    return 0;
}

/* Writes a tool call's arguments as a JSON object (Anthropic input, Gemini args). */
static int write_args_object(jw_t *w, const blk_t *b, size_t i, char *err, size_t errlen)
{
    if (b->args != NULL) {
        jw_node(w, b->args);
        return 0;
    }
    if (b->args_text == NULL || b->args_text->n == 0) {
        jw_raw(w, "{}");
        return 0;
    }
    jdoc_t d;
    jdoc_init(&d);
    int r = jdoc_parse(&d, (const uint8_t *)b->args_text->s, b->args_text->n, NULL);
    if (r == 0 && d.root->type != J_OBJ)
        r = -EINVAL;
    if (r == 0)
        jw_node(w, d.root);
    jdoc_free(&d);
    if (r == -EINVAL)
        return fail(err, errlen, "tool call %zu: the upstream's arguments are not a JSON object", i);
    return r;
}

/* Writes a tool call's arguments as a JSON string holding JSON text (OpenAI). */
static void write_args_string(jw_t *w, const blk_t *b)
{
    if (b->args_text != NULL) {
        jw_strn(w, b->args_text->s, b->args_text->n);
        return;
    }
    if (b->args == NULL) {
        jw_raw(w, "\"{}\"");
        return;
    }
    jw_node_as_string(w, b->args);
}

static void write_tool_id(jw_t *w, const blk_t *b, uint64_t seed, unsigned k)
{
    if (b->id != NULL) {
        jw_strn(w, b->id, b->id_len);
    } else {
        char id[48];
        make_call_id(seed, k, id, sizeof(id));
        jw_str(w, id);
    }
}

static int write_answer(xlate_format_t client, const answer_t *a, const char *model, uint64_t seed, int64_t created,
                        jw_t *w, char *err, size_t errlen)
{
    char id[48];
    make_id(client, seed, id, sizeof(id));
    unsigned k = 0;
    switch (client) {
    case XLATE_OPENAI_CHAT: {
        jw_raw(w, "{\"id\":");
        jw_str(w, id);
        jw_raw(w, ",\"object\":\"chat.completion\",\"created\":");
        jw_int(w, created);
        jw_raw(w, ",\"model\":");
        jw_str(w, model);
        jw_raw(w, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
        bool any_text = false;
        for (size_t i = 0; i < a->n; i++)
            any_text |= a->blk[i].kind == BLK_TEXT;
        if (!any_text) {
            jw_raw(w, "null");
        } else {
            /* every text block, in order, as one string */
            size_t total = 0;
            for (size_t i = 0; i < a->n; i++)
                if (a->blk[i].kind == BLK_TEXT)
                    total += a->blk[i].text_len;
            wipe_buf_t joined = WIPE_BUF_INIT(total + 1);
            int r = 0;
            for (size_t i = 0; i < a->n && r == 0; i++)
                if (a->blk[i].kind == BLK_TEXT)
                    r = wipe_buf_append(&joined, a->blk[i].text, a->blk[i].text_len);
            if (r != 0)
                w->err = r;
            else
                jw_strn(w, (const char *)joined.data, joined.len);
            wipe_buf_free(&joined);
        }
        {
            bool first = true;
            for (size_t i = 0; i < a->n; i++) {
                const blk_t *b = &a->blk[i];
                if (b->kind != BLK_TOOL)
                    continue;
                jw_raw(w, first ? ",\"tool_calls\":[{\"id\":" : ",{\"id\":");
                first = false;
                write_tool_id(w, b, seed, k++);
                jw_raw(w, ",\"type\":\"function\",\"function\":{\"name\":");
                jw_strn(w, b->name, b->name_len);
                jw_raw(w, ",\"arguments\":");
                write_args_string(w, b);
                jw_raw(w, "}}");
            }
            if (!first)
                jw_raw(w, "]");
        }
        jw_raw(w, "},\"logprobs\":null,\"finish_reason\":");
        jw_str(w, finish_word(client, a->finish));
        jw_raw(w, "}]");
        if (a->usage.found) {
            jw_raw(w, ",\"usage\":");
            usage_write(w, client, &a->usage);
        }
        jw_raw(w, "}");
        break;
    }
    case XLATE_ANTHROPIC:
        jw_raw(w, "{\"id\":");
        jw_str(w, id);
        jw_raw(w, ",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
        jw_str(w, model);
        jw_raw(w, ",\"content\":[");
        for (size_t i = 0; i < a->n; i++) {
            const blk_t *b = &a->blk[i];
            if (i > 0)
                jw_raw(w, ",");
            if (b->kind == BLK_TEXT) {
                jw_raw(w, "{\"type\":\"text\",\"text\":");
                jw_strn(w, b->text, b->text_len);
                jw_raw(w, "}");
            } else {
                jw_raw(w, "{\"type\":\"tool_use\",\"id\":");
                write_tool_id(w, b, seed, k++);
                jw_raw(w, ",\"name\":");
                jw_strn(w, b->name, b->name_len);
                jw_raw(w, ",\"input\":");
                int r = write_args_object(w, b, i, err, errlen);
                if (r != 0)
                    return r;
                jw_raw(w, "}");
            }
        }
        jw_raw(w, "],\"stop_reason\":");
        jw_str(w, finish_word(client, a->finish));
        jw_raw(w, ",\"stop_sequence\":");
        if (a->stop_sequence != NULL && a->finish == FR_STOP_SEQ)
            jw_node(w, a->stop_sequence);
        else
            jw_raw(w, "null");
        jw_raw(w, ",\"usage\":");
        usage_write(w, client, &a->usage); /* required by the Anthropic shape: zeros if unknown */
        jw_raw(w, "}");
        break;
    case XLATE_GEMINI:
        jw_raw(w, "{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[");
        for (size_t i = 0; i < a->n; i++) {
            const blk_t *b = &a->blk[i];
            if (i > 0)
                jw_raw(w, ",");
            if (b->kind == BLK_TEXT) {
                jw_raw(w, "{\"text\":");
                jw_strn(w, b->text, b->text_len);
                jw_raw(w, "}");
            } else {
                jw_raw(w, "{\"functionCall\":{\"name\":");
                jw_strn(w, b->name, b->name_len);
                jw_raw(w, ",\"args\":");
                int r = write_args_object(w, b, i, err, errlen);
                if (r != 0)
                    return r;
                jw_raw(w, "}}");
            }
        }
        jw_raw(w, "]},\"finishReason\":");
        jw_str(w, finish_word(client, a->finish));
        jw_raw(w, ",\"index\":0}]");
        if (a->usage.found) {
            jw_raw(w, ",\"usageMetadata\":");
            usage_write(w, client, &a->usage);
        }
        jw_raw(w, ",\"modelVersion\":");
        jw_str(w, model);
        jw_raw(w, ",\"responseId\":");
        jw_str(w, id);
        jw_raw(w, "}");
        break;
    }
    return w->err;
}

static int read_answer(xlate_format_t up, const jnode_t *root, answer_t *a, char *err, size_t errlen)
{
    if (root->type != J_OBJ)
        return fail(err, errlen, "the upstream answer is not a JSON object");
    switch (up) {
    case XLATE_OPENAI_CHAT:
        return read_openai(root, a, err, errlen);
    case XLATE_ANTHROPIC:
        return read_anthropic(root, a, err, errlen);
    case XLATE_GEMINI:
        return read_gemini(root, a, err, errlen);
    }
    return -EINVAL;
}

int xlate_usage_of(xlate_format_t fmt, const uint8_t *body, size_t len, xlate_usage_t *usage)
{
    memset(usage, 0, sizeof(*usage));
    jdoc_t d;
    jdoc_init(&d);
    int r = jdoc_parse(&d, body, len, NULL);
    if (r == 0 && d.root->type == J_OBJ) {
        static const char *const keys[] = {"usage", "usage", "usageMetadata"};
        usage_read(fmt, jget(d.root, keys[fmt]), usage, &(anth_counts_t){0});
    } else if (r == 0) {
        r = -EINVAL;
    }
    jdoc_free(&d);
    return r;
}

int xlate_response(xlate_format_t up, xlate_format_t client, const uint8_t *body, size_t len, const char *model,
                   uint64_t id_seed, int64_t created_s, wipe_buf_t *out, xlate_usage_t *usage, char *err,
                   size_t errlen)
{
    if (errlen > 0)
        err[0] = '\0';
    memset(usage, 0, sizeof(*usage));
    if (strlen(model) > XLATE_RESP_MODEL_MAX)
        return fail(err, errlen, "the model name is too long");
    jdoc_t d;
    jdoc_init(&d);
    size_t at = 0;
    int r = jdoc_parse(&d, body, len, &at);
    if (r == -EINVAL) {
        jdoc_free(&d);
        return fail(err, errlen, "the upstream answer is not valid JSON (at byte %zu)", at);
    }
    if (r != 0) {
        jdoc_free(&d);
        return r;
    }
    answer_t a = {0};
    r = read_answer(up, d.root, &a, err, errlen);
    jw_t w;
    jw_begin(&w, out);
    if (r == 0) {
        *usage = a.usage;
        if (up == client)
            jw_put(&w, body, len);
        else
            r = write_answer(client, &a, model, id_seed, created_s, &w, err, errlen);
        if (r != 0 && w.err == 0)
            w.err = r;
        r = jw_end(&w);
    }
    if (r != 0)
        memset(usage, 0, sizeof(*usage));
    free(a.blk);
    jdoc_free(&d);
    return r;
}

/* ---- streams ---- */

typedef enum { CB_NONE, CB_TEXT, CB_TOOL } client_block_t;

struct xlate_stream {
    xlate_format_t up, client;
    bool wants_usage;
    bool gemini_array, array_open;
    char model[XLATE_RESP_MODEL_MAX + 1];
    char id[48];
    uint64_t seed;
    int64_t created;

    bool started;  /* the client's opening (first chunk, message_start) is written */
    bool ended;    /* the closing events are written, or an error: nothing more */
    bool up_ended; /* the upstream's end marker was seen */
    finish_t finish;
    xlate_usage_t usage;
    anth_counts_t anth; /* Anthropic upstream's counts (cumulative, field by field) */

    /* client side */
    client_block_t block; /* Anthropic client: the open content block */
    unsigned block_index; /* Anthropic client: index of the open block, or of the next one */
    unsigned tools;       /* tool calls written to the client (OpenAI index of the next one) */
    bool tool_open;       /* a tool call is in progress */
    int64_t tool_key;     /* its upstream key: OpenAI tool index or Anthropic block index */
    int64_t last_tool_key;
    wipe_buf_t tool_id, tool_name, tool_args; /* Gemini client: the call being gathered */

    /* upstream side */
    bool up_block_tool; /* Anthropic upstream: the open block is a tool_use */
    bool up_block_text;
    int64_t up_block_index;
    unsigned gemini_calls; /* Gemini upstream: functionCalls seen (for their ids) */
};

int xlate_stream_new(xlate_format_t up, xlate_format_t client, const char *model, uint64_t id_seed, int64_t created_s,
                     bool client_wants_usage, xlate_stream_t **out)
{
    *out = NULL;
    size_t ml = strlen(model);
    if (ml > XLATE_RESP_MODEL_MAX)
        return -EINVAL;
    xlate_stream_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->up = up;
    s->client = client;
    s->wants_usage = client_wants_usage;
    memcpy(s->model, model, ml + 1);
    s->seed = id_seed;
    s->created = created_s;
    make_id(client, id_seed, s->id, sizeof(s->id));
    s->last_tool_key = -1;
    wipe_buf_init(&s->tool_id, 4096);
    wipe_buf_init(&s->tool_name, 4096);
    wipe_buf_init(&s->tool_args, XLATE_RESP_MAX_TOOL_ARGS);
    *out = s;
    return 0;
}

void xlate_stream_gemini_array(xlate_stream_t *s)
{
    if (s->client == XLATE_GEMINI && !s->array_open && !s->started)
        s->gemini_array = true;
}

bool xlate_stream_ended(const xlate_stream_t *s)
{
    return s->ended || (s->up == s->client && s->up_ended);
}

void xlate_stream_usage(const xlate_stream_t *s, xlate_usage_t *out)
{
    *out = s->usage;
}

void xlate_stream_free(xlate_stream_t *s)
{
    if (s == NULL)
        return;
    wipe_buf_free(&s->tool_id);
    wipe_buf_free(&s->tool_name);
    wipe_buf_free(&s->tool_args);
    wipe_bytes(s, sizeof(*s));
    free(s);
}

/* -- event framing -- */

/* Starts an event of the client's format: Anthropic "event: name\ndata: ", Gemini "data: " (or the
 * array's separator), OpenAI "data: ". */
static void ev_open(xlate_stream_t *s, jw_t *w, const char *anth_name)
{
    if (s->client == XLATE_ANTHROPIC) {
        jw_raw(w, "event: ");
        jw_raw(w, anth_name);
        jw_raw(w, "\ndata: ");
    } else if (s->client == XLATE_GEMINI && s->gemini_array) {
        jw_raw(w, s->array_open ? ",\r\n" : "[");
        s->array_open = true;
    } else {
        jw_raw(w, "data: ");
    }
}

static void ev_close(xlate_stream_t *s, jw_t *w)
{
    if (s->client == XLATE_GEMINI)
        jw_raw(w, s->gemini_array ? "" : "\r\n\r\n");
    else
        jw_raw(w, "\n\n");
}

/* -- client writers -- */

/* An OpenAI chunk up to its "choices": the same in every chunk of a stream. */
static void oa_chunk_head(xlate_stream_t *s, jw_t *w)
{
    ev_open(s, w, NULL);
    jw_raw(w, "{\"id\":");
    jw_str(w, s->id);
    jw_raw(w, ",\"object\":\"chat.completion.chunk\",\"created\":");
    jw_int(w, s->created);
    jw_raw(w, ",\"model\":");
    jw_str(w, s->model);
}

static void oa_chunk_open(xlate_stream_t *s, jw_t *w)
{
    oa_chunk_head(s, w);
    jw_raw(w, ",\"choices\":[{\"index\":0,\"delta\":");
}

static void oa_chunk_close(xlate_stream_t *s, jw_t *w, finish_t fr)
{
    jw_raw(w, ",\"logprobs\":null,\"finish_reason\":");
    if (fr == FR_NONE)
        jw_raw(w, "null");
    else
        jw_str(w, finish_word(XLATE_OPENAI_CHAT, fr));
    jw_raw(w, "}]}");
    ev_close(s, w);
}

static void ge_chunk_open(xlate_stream_t *s, jw_t *w)
{
    ev_open(s, w, NULL);
    jw_raw(w, "{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[");
}

static void ge_chunk_close(xlate_stream_t *s, jw_t *w, bool last)
{
    jw_raw(w, "]}");
    if (last) {
        jw_raw(w, ",\"finishReason\":");
        jw_str(w, finish_word(XLATE_GEMINI, s->finish));
    }
    jw_raw(w, ",\"index\":0}]");
    if (last) {
        jw_raw(w, ",\"usageMetadata\":");
        usage_write(w, XLATE_GEMINI, &s->usage);
    }
    jw_raw(w, ",\"modelVersion\":");
    jw_str(w, s->model);
    jw_raw(w, ",\"responseId\":");
    jw_str(w, s->id);
    jw_raw(w, "}");
    ev_close(s, w);
}

/* The client's opening, once: OpenAI's role chunk, Anthropic's message_start (Gemini has none). */
static void op_start(xlate_stream_t *s, jw_t *w)
{
    if (s->started)
        return;
    s->started = true;
    if (s->client == XLATE_OPENAI_CHAT) {
        oa_chunk_open(s, w);
        jw_raw(w, "{\"role\":\"assistant\",\"content\":\"\"}");
        oa_chunk_close(s, w, FR_NONE);
    } else if (s->client == XLATE_ANTHROPIC) {
        ev_open(s, w, "message_start");
        jw_raw(w, "{\"type\":\"message_start\",\"message\":{\"id\":");
        jw_str(w, s->id);
        jw_raw(w, ",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
        jw_str(w, s->model);
        jw_raw(w, ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":");
        usage_write(w, XLATE_ANTHROPIC, &s->usage);
        jw_raw(w, "}}");
        ev_close(s, w);
    }
}

static void an_block_stop(xlate_stream_t *s, jw_t *w)
{
    if (s->block == CB_NONE)
        return;
    ev_open(s, w, "content_block_stop");
    jw_raw(w, "{\"type\":\"content_block_stop\",\"index\":");
    jw_int(w, s->block_index);
    jw_raw(w, "}");
    ev_close(s, w);
    s->block = CB_NONE;
    s->block_index++;
}

static void op_text(xlate_stream_t *s, jw_t *w, const char *t, size_t n)
{
    if (n == 0)
        return;
    op_start(s, w);
    switch (s->client) {
    case XLATE_OPENAI_CHAT:
        oa_chunk_open(s, w);
        jw_raw(w, "{\"content\":");
        jw_strn(w, t, n);
        jw_raw(w, "}");
        oa_chunk_close(s, w, FR_NONE);
        break;
    case XLATE_ANTHROPIC:
        if (s->block != CB_TEXT) {
            an_block_stop(s, w);
            ev_open(s, w, "content_block_start");
            jw_raw(w, "{\"type\":\"content_block_start\",\"index\":");
            jw_int(w, s->block_index);
            jw_raw(w, ",\"content_block\":{\"type\":\"text\",\"text\":\"\"}}");
            ev_close(s, w);
            s->block = CB_TEXT;
        }
        ev_open(s, w, "content_block_delta");
        jw_raw(w, "{\"type\":\"content_block_delta\",\"index\":");
        jw_int(w, s->block_index);
        jw_raw(w, ",\"delta\":{\"type\":\"text_delta\",\"text\":");
        jw_strn(w, t, n);
        jw_raw(w, "}}");
        ev_close(s, w);
        break;
    case XLATE_GEMINI:
        ge_chunk_open(s, w);
        jw_raw(w, "{\"text\":");
        jw_strn(w, t, n);
        jw_raw(w, "}");
        ge_chunk_close(s, w, false);
        break;
    }
}

/* Gemini client: writes the gathered call as one functionCall chunk. */
static int ge_flush_tool(xlate_stream_t *s, jw_t *w)
{
    jdoc_t d;
    jdoc_init(&d);
    int r = 0;
    if (s->tool_args.len > 0) {
        r = jdoc_parse(&d, s->tool_args.data, s->tool_args.len, NULL);
        if (r == 0 && d.root->type != J_OBJ)
            r = -EINVAL;
    }
    if (r == 0) {
        ge_chunk_open(s, w);
        jw_raw(w, "{\"functionCall\":{\"name\":");
        jw_strn(w, (const char *)s->tool_name.data, s->tool_name.len);
        jw_raw(w, ",\"args\":");
        if (d.root != NULL)
            jw_node(w, d.root);
        else
            jw_raw(w, "{}");
        jw_raw(w, "}}");
        ge_chunk_close(s, w, false);
    }
    jdoc_free(&d);
    wipe_buf_reset(&s->tool_id);
    wipe_buf_reset(&s->tool_name);
    wipe_buf_reset(&s->tool_args);
    return r;
}

/* Ends the tool call in progress. */
static int op_tool_end(xlate_stream_t *s, jw_t *w)
{
    if (!s->tool_open)
        return 0;
    s->tool_open = false;
    if (s->client == XLATE_ANTHROPIC)
        an_block_stop(s, w);
    else if (s->client == XLATE_GEMINI)
        return ge_flush_tool(s, w);
    return 0;
}

static int op_tool_start(xlate_stream_t *s, jw_t *w, int64_t key, const char *id, size_t id_len, const char *name,
                         size_t name_len)
{
    int r = op_tool_end(s, w);
    if (r != 0)
        return r;
    op_start(s, w);
    char made[48];
    if (id == NULL) {
        make_call_id(s->seed, s->gemini_calls, made, sizeof(made));
        id = made;
        id_len = strlen(made);
    }
    s->tool_open = true;
    s->tool_key = key;
    s->last_tool_key = key;
    switch (s->client) {
    case XLATE_OPENAI_CHAT:
        oa_chunk_open(s, w);
        jw_raw(w, "{\"tool_calls\":[{\"index\":");
        jw_int(w, s->tools);
        jw_raw(w, ",\"id\":");
        jw_strn(w, id, id_len);
        jw_raw(w, ",\"type\":\"function\",\"function\":{\"name\":");
        jw_strn(w, name, name_len);
        jw_raw(w, ",\"arguments\":\"\"}}]}");
        oa_chunk_close(s, w, FR_NONE);
        break;
    case XLATE_ANTHROPIC:
        an_block_stop(s, w);
        ev_open(s, w, "content_block_start");
        jw_raw(w, "{\"type\":\"content_block_start\",\"index\":");
        jw_int(w, s->block_index);
        jw_raw(w, ",\"content_block\":{\"type\":\"tool_use\",\"id\":");
        jw_strn(w, id, id_len);
        jw_raw(w, ",\"name\":");
        jw_strn(w, name, name_len);
        jw_raw(w, ",\"input\":{}}}");
        ev_close(s, w);
        s->block = CB_TOOL;
        break;
    case XLATE_GEMINI:
        if ((r = wipe_buf_append(&s->tool_name, name, name_len)) != 0 ||
            (r = wipe_buf_append(&s->tool_id, id, id_len)) != 0)
            return r;
        break;
    }
    s->tools++;
    return 0;
}

static int op_tool_args(xlate_stream_t *s, jw_t *w, const char *p, size_t n)
{
    if (!s->tool_open)
        return -EINVAL;
    if (n == 0)
        return 0;
    switch (s->client) {
    case XLATE_OPENAI_CHAT:
        oa_chunk_open(s, w);
        jw_raw(w, "{\"tool_calls\":[{\"index\":");
        jw_int(w, s->tools - 1);
        jw_raw(w, ",\"function\":{\"arguments\":");
        jw_strn(w, p, n);
        jw_raw(w, "}}]}");
        oa_chunk_close(s, w, FR_NONE);
        break;
    case XLATE_ANTHROPIC:
        ev_open(s, w, "content_block_delta");
        jw_raw(w, "{\"type\":\"content_block_delta\",\"index\":");
        jw_int(w, s->block_index);
        jw_raw(w, ",\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":");
        jw_strn(w, p, n);
        jw_raw(w, "}}");
        ev_close(s, w);
        break;
    case XLATE_GEMINI:
        return wipe_buf_append(&s->tool_args, p, n);
    }
    return 0;
}

/* A whole call (Gemini upstream): start, all arguments, end. */
static int op_tool_whole(xlate_stream_t *s, jw_t *w, const jnode_t *id, const jnode_t *name, const jnode_t *args)
{
    int r = op_tool_start(s, w, -1, id != NULL ? id->s : NULL, id != NULL ? id->n : 0, name->s, name->n);
    s->gemini_calls++;
    if (r != 0)
        return r;
    wipe_buf_t tmp = WIPE_BUF_INIT(XLATE_RESP_MAX_TOOL_ARGS);
    jw_t aw;
    jw_begin(&aw, &tmp);
    if (args != NULL)
        jw_node(&aw, args);
    else
        jw_raw(&aw, "{}");
    r = aw.err;
    if (r == 0)
        r = op_tool_args(s, w, (const char *)tmp.data, tmp.len);
    wipe_buf_free(&tmp);
    if (r == 0)
        r = op_tool_end(s, w);
    return r;
}

/* The upstream's message ended: the client's closing events. */
static int op_end(xlate_stream_t *s, jw_t *w)
{
    if (s->ended)
        return 0;
    int r = op_tool_end(s, w);
    if (r != 0)
        return r;
    op_start(s, w);
    finish_t fr = s->finish == FR_NONE ? FR_STOP : s->finish;
    s->finish = fr;
    switch (s->client) {
    case XLATE_OPENAI_CHAT:
        oa_chunk_open(s, w);
        jw_raw(w, "{}");
        oa_chunk_close(s, w, fr);
        if (s->wants_usage) {
            oa_chunk_head(s, w);
            jw_raw(w, ",\"choices\":[],\"usage\":");
            usage_write(w, XLATE_OPENAI_CHAT, &s->usage);
            jw_raw(w, "}");
            ev_close(s, w);
        }
        jw_raw(w, "data: [DONE]\n\n");
        break;
    case XLATE_ANTHROPIC:
        an_block_stop(s, w);
        ev_open(s, w, "message_delta");
        jw_raw(w, "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":");
        jw_str(w, finish_word(XLATE_ANTHROPIC, fr));
        jw_raw(w, ",\"stop_sequence\":null},\"usage\":");
        usage_write(w, XLATE_ANTHROPIC, &s->usage);
        jw_raw(w, "}");
        ev_close(s, w);
        ev_open(s, w, "message_stop");
        jw_raw(w, "{\"type\":\"message_stop\"}");
        ev_close(s, w);
        break;
    case XLATE_GEMINI:
        ge_chunk_open(s, w);
        ge_chunk_close(s, w, true);
        if (s->gemini_array)
            jw_raw(w, "]");
        break;
    }
    s->ended = true;
    return 0;
}

static void op_error(xlate_stream_t *s, jw_t *w, int status, const char *msg, size_t msg_len)
{
    if (s->ended)
        return;
    ev_open(s, w, "error");
    error_write(w, s->client, status, msg, msg_len);
    ev_close(s, w);
    if (s->client == XLATE_GEMINI && s->gemini_array)
        jw_raw(w, "]");
    s->ended = true;
}

/* -- upstream readers: one event's JSON to ops -- */

static int read_error_event(xlate_stream_t *s, jw_t *w, const jnode_t *err)
{
    const jnode_t *m = jget_t(err, "message", J_STR);
    static const char generic[] = "upstream error";
    int status = status_of_error(s->up, err);
    if (m != NULL && m->n > 0)
        op_error(s, w, status, m->s, m->n);
    else
        op_error(s, w, status, generic, sizeof(generic) - 1);
    return 0;
}

static int up_openai(xlate_stream_t *s, jw_t *w, const jnode_t *root)
{
    const jnode_t *choices = jget_t(root, "choices", J_ARR);
    const jnode_t *choice = NULL;
    for (const jnode_t *c = choices != NULL ? choices->first : NULL; c != NULL; c = c->next)
        if (jcount(jget(c, "index")) == 0)
            choice = c;
    usage_read(XLATE_OPENAI_CHAT, jget_t(root, "usage", J_OBJ), &s->usage, &s->anth);
    if (choice == NULL) {
        if (choices == NULL && jget_t(root, "usage", J_OBJ) == NULL)
            return -EINVAL;
        op_start(s, w);
        return 0;
    }
    op_start(s, w);
    const jnode_t *delta = jget_t(choice, "delta", J_OBJ);
    const jnode_t *t = jget_t(delta, "content", J_STR);
    int r = 0;
    if (t != NULL && t->n > 0) {
        if ((r = op_tool_end(s, w)) != 0)
            return r;
        op_text(s, w, t->s, t->n);
    }
    t = jget_t(delta, "refusal", J_STR);
    if (t != NULL && t->n > 0)
        op_text(s, w, t->s, t->n);
    const jnode_t *calls = jget_t(delta, "tool_calls", J_ARR);
    for (const jnode_t *c = calls != NULL ? calls->first : NULL; c != NULL && r == 0; c = c->next) {
        const jnode_t *idx = jget_t(c, "index", J_NUM);
        int64_t key = idx != NULL ? jcount(idx) : (s->tool_open ? s->tool_key : s->last_tool_key + 1);
        const jnode_t *fn = jget_t(c, "function", J_OBJ);
        const jnode_t *name = jget_t(fn, "name", J_STR);
        const jnode_t *id = jget_t(c, "id", J_STR);
        const jnode_t *args = jget_t(fn, "arguments", J_STR);
        if (key > s->last_tool_key) {
            if (name == NULL)
                return -EINVAL; /* a new call must name its function */
            r = op_tool_start(s, w, key, id != NULL ? id->s : NULL, id != NULL ? id->n : 0, name->s, name->n);
        } else if (!s->tool_open || key != s->tool_key) {
            return -EINVAL; /* arguments of a call that already ended */
        }
        if (r == 0 && args != NULL)
            r = op_tool_args(s, w, args->s, args->n);
    }
    if (r != 0)
        return r;
    finish_t fr = finish_from(XLATE_OPENAI_CHAT, jget(choice, "finish_reason"));
    if (fr != FR_NONE) {
        s->finish = fr;
        r = op_tool_end(s, w);
    }
    return r;
}

static int up_anthropic(xlate_stream_t *s, jw_t *w, const jnode_t *root)
{
    const jnode_t *type = jget_t(root, "type", J_STR);
    if (type == NULL)
        return -EINVAL;
    int r = 0;
    if (jstr_is(type, "message_start")) {
        const jnode_t *msg = jget_t(root, "message", J_OBJ);
        if (msg == NULL)
            return -EINVAL;
        usage_read(XLATE_ANTHROPIC, jget_t(msg, "usage", J_OBJ), &s->usage, &s->anth);
        op_start(s, w);
    } else if (jstr_is(type, "content_block_start")) {
        const jnode_t *idx = jget_t(root, "index", J_NUM);
        const jnode_t *blk = jget_t(root, "content_block", J_OBJ);
        if (idx == NULL || blk == NULL)
            return -EINVAL;
        s->up_block_index = jcount(idx);
        s->up_block_tool = jstr_is(jget(blk, "type"), "tool_use");
        s->up_block_text = jstr_is(jget(blk, "type"), "text");
        if (s->up_block_tool) {
            const jnode_t *id = jget_t(blk, "id", J_STR);
            const jnode_t *name = jget_t(blk, "name", J_STR);
            if (id == NULL || name == NULL)
                return -EINVAL;
            r = op_tool_start(s, w, s->up_block_index, id->s, id->n, name->s, name->n);
            const jnode_t *input = jget_t(blk, "input", J_OBJ);
            if (r == 0 && input != NULL && input->count > 0) { /* an input given whole at the start */
                wipe_buf_t tmp = WIPE_BUF_INIT(XLATE_RESP_MAX_TOOL_ARGS);
                jw_t aw;
                jw_begin(&aw, &tmp);
                jw_node(&aw, input);
                r = aw.err != 0 ? aw.err : op_tool_args(s, w, (const char *)tmp.data, tmp.len);
                wipe_buf_free(&tmp);
            }
        } else if (s->up_block_text) {
            const jnode_t *t = jget_t(blk, "text", J_STR);
            if (t != NULL)
                op_text(s, w, t->s, t->n);
        }
    } else if (jstr_is(type, "content_block_delta")) {
        const jnode_t *delta = jget_t(root, "delta", J_OBJ);
        const jnode_t *dt = jget(delta, "type");
        if (delta == NULL || jcount(jget(root, "index")) != s->up_block_index)
            return -EINVAL;
        if (jstr_is(dt, "text_delta")) {
            const jnode_t *t = jget_t(delta, "text", J_STR);
            if (t == NULL || !s->up_block_text)
                return -EINVAL;
            op_text(s, w, t->s, t->n);
        } else if (jstr_is(dt, "input_json_delta")) {
            const jnode_t *p = jget_t(delta, "partial_json", J_STR);
            if (p == NULL)
                return -EINVAL;
            if (s->up_block_tool) /* server tool blocks' input is not the client's */
                r = op_tool_args(s, w, p->s, p->n);
        }
        /* thinking_delta, signature_delta, citations_delta: no answer text */
    } else if (jstr_is(type, "content_block_stop")) {
        if (s->up_block_tool)
            r = op_tool_end(s, w);
        s->up_block_tool = s->up_block_text = false;
    } else if (jstr_is(type, "message_delta")) {
        finish_t fr = finish_from(XLATE_ANTHROPIC, jget(jget_t(root, "delta", J_OBJ), "stop_reason"));
        if (fr != FR_NONE)
            s->finish = fr;
        usage_read(XLATE_ANTHROPIC, jget_t(root, "usage", J_OBJ), &s->usage, &s->anth);
    } else if (jstr_is(type, "message_stop")) {
        s->up_ended = true;
        r = op_end(s, w);
    } else if (jstr_is(type, "error")) {
        const jnode_t *e = jget_t(root, "error", J_OBJ);
        if (e == NULL)
            return -EINVAL;
        r = read_error_event(s, w, e);
    }
    /* ping and unknown event types: nothing for other formats */
    return r;
}

static int up_gemini(xlate_stream_t *s, jw_t *w, const jnode_t *root)
{
    answer_t a = {0};
    int r = read_gemini(root, &a, NULL, 0);
    if (r == 0) {
        if (a.usage.found)
            s->usage = a.usage;
        op_start(s, w);
        for (size_t i = 0; i < a.n && r == 0; i++) {
            const blk_t *b = &a.blk[i];
            if (b->kind == BLK_TEXT) {
                op_text(s, w, b->text, b->text_len);
            } else {
                jnode_t id = {.type = J_STR, .s = b->id, .n = b->id_len};
                jnode_t name = {.type = J_STR, .s = b->name, .n = b->name_len};
                r = op_tool_whole(s, w, b->id != NULL ? &id : NULL, &name, b->args);
            }
        }
        if (a.finish != FR_NONE && r == 0) {
            /* a call in an earlier chunk makes STOP mean tool use too */
            s->finish = a.finish == FR_STOP && s->tools > 0 ? FR_TOOL : a.finish;
        }
    }
    free(a.blk);
    return r;
}

/* Pass-through: the event as it came (data lines split at "\n"), usage read on the way. */
static int pass_event(xlate_stream_t *s, jw_t *w, const char *event, size_t event_len, const uint8_t *data, size_t len,
                      const jnode_t *root)
{
    if (root != NULL && root->type == J_OBJ) {
        if (s->up == XLATE_OPENAI_CHAT) {
            const jnode_t *u = jget_t(root, "usage", J_OBJ);
            const jnode_t *ch = jget_t(root, "choices", J_ARR);
            usage_read(XLATE_OPENAI_CHAT, u, &s->usage, &s->anth);
            if (u != NULL && ch != NULL && ch->count == 0 && !s->wants_usage)
                return 0; /* the usage chunk the relay asked for, not the client */
            if (jget(jindex(ch, 0), "finish_reason") != NULL &&
                finish_from(XLATE_OPENAI_CHAT, jget(jindex(ch, 0), "finish_reason")) != FR_NONE)
                s->finish = FR_STOP;
        } else if (s->up == XLATE_ANTHROPIC) {
            const jnode_t *type = jget(root, "type");
            if (jstr_is(type, "message_start"))
                usage_read(XLATE_ANTHROPIC, jget_t(jget_t(root, "message", J_OBJ), "usage", J_OBJ), &s->usage,
                           &s->anth);
            else if (jstr_is(type, "message_delta")) {
                usage_read(XLATE_ANTHROPIC, jget_t(root, "usage", J_OBJ), &s->usage, &s->anth);
                s->finish = FR_STOP;
            } else if (jstr_is(type, "message_stop"))
                s->up_ended = true;
        } else {
            const jnode_t *u = jget_t(root, "usageMetadata", J_OBJ);
            if (u != NULL)
                usage_read(XLATE_GEMINI, u, &s->usage, &s->anth);
            if (jget_t(jindex(jget_t(root, "candidates", J_ARR), 0), "finishReason", J_STR) != NULL)
                s->finish = FR_STOP;
        }
        if (error_of(root) != NULL || (s->up == XLATE_ANTHROPIC && jstr_is(jget(root, "type"), "error")))
            s->up_ended = true;
    } else if (root == NULL) {
        s->up_ended = true; /* OpenAI's [DONE] */
    }
    if (s->client == XLATE_GEMINI && s->gemini_array) {
        jw_raw(w, s->array_open ? ",\r\n" : "[");
        s->array_open = true;
        jw_put(w, data, len);
        return 0;
    }
    if (event != NULL && event_len > 0) {
        jw_raw(w, "event: ");
        jw_put(w, event, event_len);
        jw_raw(w, "\n");
    }
    const char *nl = s->client == XLATE_GEMINI ? "\r\n" : "\n";
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || data[i] == '\n') {
            jw_raw(w, "data: ");
            jw_put(w, data + start, i - start);
            jw_raw(w, nl);
            start = i + 1;
        }
    }
    jw_raw(w, nl);
    return 0;
}

/* A failed event must leave the state as it was, as it leaves out: else a truncated opening or block
 * start would count as written. The gathered call's buffers are cut back to their old lengths (their
 * old bytes are kept by every append); if the failure came after the call was written and its buffers
 * reset, its text is gone and the state after the failure is kept. */
static void stream_restore(xlate_stream_t *s, xlate_stream_t *saved)
{
    wipe_buf_t *now[3] = {&s->tool_id, &s->tool_name, &s->tool_args};
    const wipe_buf_t *old[3] = {&saved->tool_id, &saved->tool_name, &saved->tool_args};
    for (size_t i = 0; i < 3; i++)
        if (now[i]->len < old[i]->len)
            return;
    wipe_buf_t keep[3];
    for (size_t i = 0; i < 3; i++) {
        keep[i] = *now[i];
        if (keep[i].len > old[i]->len)
            wipe_bytes(keep[i].data + old[i]->len, keep[i].len - old[i]->len);
        keep[i].len = old[i]->len;
    }
    *s = *saved;
    s->tool_id = keep[0];
    s->tool_name = keep[1];
    s->tool_args = keep[2];
}

int xlate_stream_event(xlate_stream_t *s, const char *event, size_t event_len, const uint8_t *data, size_t len,
                       wipe_buf_t *out)
{
    if (event == NULL)
        event_len = 0;
    if (s->ended || (s->up == s->client && s->up_ended))
        return 0;
    if (len == 0)
        return 0; /* a comment or keep-alive block */
    xlate_stream_t saved = *s; /* state only: its buffers are never used through this copy */
    jw_t w;
    jw_begin(&w, out);
    bool done = s->up == XLATE_OPENAI_CHAT && len == 6 && memcmp(data, "[DONE]", 6) == 0;
    jdoc_t d;
    jdoc_init(&d);
    int r = 0;
    if (!done) {
        r = jdoc_parse(&d, data, len, NULL);
        if (r == 0 && d.root->type != J_OBJ)
            r = -EINVAL;
    }
    if (r == 0 && s->up == s->client) {
        r = pass_event(s, &w, event, event_len, data, len, done ? NULL : d.root);
    } else if (r == 0 && done) {
        s->up_ended = true;
        r = op_end(s, &w);
    } else if (r == 0 && s->up != XLATE_ANTHROPIC && error_of(d.root) != NULL) {
        r = read_error_event(s, &w, error_of(d.root));
    } else if (r == 0) {
        switch (s->up) {
        case XLATE_OPENAI_CHAT:
            r = up_openai(s, &w, d.root);
            break;
        case XLATE_ANTHROPIC:
            r = up_anthropic(s, &w, d.root);
            break;
        case XLATE_GEMINI:
            r = up_gemini(s, &w, d.root);
            break;
        }
    }
    jdoc_free(&d);
    if (r != 0 && w.err == 0)
        w.err = r;
    if (w.err != 0)
        stream_restore(s, &saved);
    wipe_bytes(&saved, sizeof(saved));
    return jw_end(&w);
}

int xlate_stream_fail(xlate_stream_t *s, int status, const char *message, wipe_buf_t *out)
{
    if (s->ended || (s->up == s->client && s->up_ended))
        return 0;
    jw_t w;
    jw_begin(&w, out);
    op_error(s, &w, status, message, strlen(message));
    return jw_end(&w);
}

int xlate_stream_finish(xlate_stream_t *s, wipe_buf_t *out)
{
    if (s->up == s->client) {
        int r = 0;
        if (s->gemini_array && !s->ended) {
            jw_t w;
            jw_begin(&w, out);
            jw_raw(&w, s->array_open ? "]" : "[]");
            r = jw_end(&w);
        }
        s->ended = true;
        return r;
    }
    if (s->ended)
        return 0;
    jw_t w;
    jw_begin(&w, out);
    int r = 0;
    if (s->finish == FR_NONE && !s->up_ended) {
        static const char msg[] = "the upstream stream ended before the answer was complete";
        op_error(s, &w, 502, msg, sizeof(msg) - 1);
        r = jw_end(&w);
        return r != 0 ? r : -EPIPE;
    }
    r = op_end(s, &w);
    if (r != 0 && w.err == 0)
        w.err = r;
    return jw_end(&w);
}
