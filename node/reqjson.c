/* reqjson: inspect and rewrite an OpenAI-format request body (see reqjson.h).
 *
 * How it works: one SAX pass of yajl over the whole body with callbacks that track only the
 * nesting depth, the current top-level key (as an id from a fixed table) and whether the
 * parser is inside the top-level "stream_options" object. Inspection validates and records
 * those fields as they pass. Rewriting first needs the inspection's result (to know, say,
 * whether "stream" is true when "stream_options" comes before it), then makes a second pass
 * in which every event is re-emitted through yajl_gen straight into the caller's wipe_buf_t
 * (numbers from their raw text), replacing values in place and appending missing fields just
 * before the top-level object closes. Errors carry fixed texts only. */
#include "node/reqjson.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>

typedef enum {
    KEY_OTHER = 0,
    KEY_MODEL,
    KEY_STREAM,
    KEY_STREAM_OPTIONS,
    KEY_STORE,
    KEY_MAX_TOKENS,
    KEY_MAX_COMPLETION_TOKENS,
    KEY_MAX_OUTPUT_TOKENS,
    KEY_COUNT
} key_id_t;

static const char *const key_names[KEY_COUNT] = {
    [KEY_MODEL] = "model",
    [KEY_STREAM] = "stream",
    [KEY_STREAM_OPTIONS] = "stream_options",
    [KEY_STORE] = "store",
    [KEY_MAX_TOKENS] = "max_tokens",
    [KEY_MAX_COMPLETION_TOKENS] = "max_completion_tokens",
    [KEY_MAX_OUTPUT_TOKENS] = "max_output_tokens",
};

typedef enum { VAL_NULL, VAL_BOOL, VAL_NUMBER, VAL_STRING, VAL_MAP, VAL_ARRAY } val_type_t;

typedef struct ctx {
    reqjson_endpoint_t ep;
    reqjson_info_t *info;
    yajl_handle parser;
    unsigned depth;      /* open containers; the top-level object is depth 1 */
    key_id_t key;        /* top-level key whose value comes next */
    unsigned seen;       /* bit per key_id_t already seen at the top level */
    bool in_opts;        /* inside the top-level "stream_options" object (at depth 2) */
    bool opts_key_usage; /* the next value is stream_options.include_usage */
    bool opts_saw_usage;
    int rc;           /* first error */
    const char *msg;  /* its fixed text */
    bool msg_at_byte; /* append " at byte N" */
    size_t msg_byte;

    /* rewrite only */
    yajl_gen gen;
    wipe_buf_t *out;
    const reqjson_rewrite_t *rw;
    bool force_usage, usage_done;
    bool add_store, store_done;
    key_id_t max_key; /* field to add for default_max_output_tokens, or KEY_OTHER */
    bool max_done;
} ctx_t;

static bool is_max_key(reqjson_endpoint_t ep, key_id_t k)
{
    switch (ep) {
    case REQJSON_CHAT:
        return k == KEY_MAX_TOKENS || k == KEY_MAX_COMPLETION_TOKENS;
    case REQJSON_COMPLETIONS:
        return k == KEY_MAX_TOKENS;
    case REQJSON_RESPONSES:
        return k == KEY_MAX_OUTPUT_TOKENS;
    case REQJSON_EMBEDDINGS:
        break;
    }
    return false;
}

static key_id_t top_key_id(reqjson_endpoint_t ep, const unsigned char *k, size_t n)
{
    for (int i = KEY_MODEL; i < KEY_COUNT; i++) {
        if (strlen(key_names[i]) == n && memcmp(key_names[i], k, n) == 0) {
            if (i >= KEY_MAX_TOKENS && !is_max_key(ep, (key_id_t)i))
                return KEY_OTHER;
            return (key_id_t)i;
        }
    }
    return KEY_OTHER;
}

static int fail(ctx_t *c, int rc, const char *msg, bool at_byte)
{
    if (c->rc == 0) {
        c->rc = rc;
        c->msg = msg;
        c->msg_at_byte = at_byte;
        c->msg_byte = yajl_get_bytes_consumed(c->parser);
    }
    return 0;
}

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing past U+10FFFF. yajl's
 * own check accepts all three, and a decoded "\uDC00" escape yields a surrogate too. */
static bool utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if ((w & 0x8080808080808080ULL) == 0) {
                i += 8;
                continue;
            }
        }
        unsigned char b = s[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t more;
        unsigned char lo = 0x80, hi = 0xBF;
        if (b >= 0xC2 && b <= 0xDF) {
            more = 1;
        } else if (b >= 0xE0 && b <= 0xEF) {
            more = 2;
            if (b == 0xE0)
                lo = 0xA0;
            else if (b == 0xED)
                hi = 0x9F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            more = 3;
            if (b == 0xF0)
                lo = 0x90;
            else if (b == 0xF4)
                hi = 0x8F;
        } else {
            return false;
        }
        if (n - i <= more)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k <= more; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
        i += more + 1;
    }
    return true;
}

/* Parses a JSON number's text as a non-negative int64; false if it is anything else. */
static bool parse_count(const char *s, size_t n, int64_t *out)
{
    if (n == 0 || n > 18)
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

static void gen_print(void *data, const char *s, size_t n)
{
    ctx_t *c = data;
    if (c->rc != 0)
        return;
    int r = wipe_buf_append(c->out, s, n);
    if (r != 0) {
        c->rc = r;
        c->msg = r == -E2BIG ? "rewritten body too large" : "out of memory";
        c->msg_at_byte = false;
    }
}

/* Checks a yajl_gen result and the output buffer; returns the callback's continue flag. */
static int emitted(ctx_t *c, yajl_gen_status s)
{
    if (c->rc != 0)
        return 0;
    if (s != yajl_gen_status_ok)
        return fail(c, s == yajl_gen_invalid_string ? -EINVAL : -ENOMEM,
                    s == yajl_gen_invalid_string ? "invalid UTF-8 in a string" : "cannot write JSON", false);
    return 1;
}

static int emit_key(ctx_t *c, const char *k)
{
    return emitted(c, yajl_gen_string(c->gen, (const unsigned char *)k, strlen(k)));
}

static int emit_count(ctx_t *c, int64_t v)
{
    return emitted(c, yajl_gen_integer(c->gen, (long long)v));
}

static const char *type_error(key_id_t k, bool in_opts_usage)
{
    if (in_opts_usage)
        return "'stream_options.include_usage' must be a boolean";
    switch (k) {
    case KEY_MODEL:
        return "'model' must be a string";
    case KEY_STREAM:
        return "'stream' must be a boolean";
    case KEY_STREAM_OPTIONS:
        return "'stream_options' must be an object";
    case KEY_STORE:
        return "'store' must be a boolean";
    case KEY_MAX_TOKENS:
        return "'max_tokens' must be a non-negative integer";
    case KEY_MAX_COMPLETION_TOKENS:
        return "'max_completion_tokens' must be a non-negative integer";
    case KEY_MAX_OUTPUT_TOKENS:
        return "'max_output_tokens' must be a non-negative integer";
    default:
        return "invalid value";
    }
}

/* Validates and records a value; returns -1 on error (already recorded), 0 to pass the
 * value through, 1 if it was replaced (the replacement already emitted). */
static int on_value(ctx_t *c, val_type_t t, int b, const unsigned char *s, size_t n)
{
    if (c->rc != 0)
        return -1;
    if (c->depth == 0) {
        fail(c, -EINVAL, "body must be a JSON object", false);
        return -1;
    }
    if (t == VAL_STRING && !utf8_valid(s, n)) {
        fail(c, -EINVAL, "invalid UTF-8 in a string", true);
        return -1;
    }
    reqjson_info_t *info = c->info;
    if (c->opts_key_usage) {
        c->opts_key_usage = false;
        if (t == VAL_BOOL)
            info->include_usage = b ? 1 : 0;
        else if (t != VAL_NULL) {
            fail(c, -EINVAL, type_error(KEY_OTHER, true), false);
            return -1;
        }
        if (c->gen != NULL && c->force_usage) {
            c->usage_done = true;
            return emitted(c, yajl_gen_bool(c->gen, 1)) ? 1 : -1;
        }
        return 0;
    }
    if (c->depth > 1) {
        if (t == VAL_STRING)
            info->prompt_bytes += n;
        else if (t == VAL_NUMBER)
            info->prompt_bytes += 4;
        return 0;
    }
    key_id_t k = c->key;
    c->key = KEY_OTHER;
    bool bad = false;
    switch (k) {
    case KEY_OTHER:
        if (t == VAL_STRING)
            info->prompt_bytes += n;
        return 0;
    case KEY_MODEL:
        if (t != VAL_STRING) {
            bad = true;
            break;
        }
        if (n == 0 || n > REQJSON_MODEL_MAX) {
            fail(c, -EINVAL, n == 0 ? "'model' must not be empty" : "'model' is too long", false);
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            if (s[i] < 0x20 || s[i] == 0x7F) {
                fail(c, -EINVAL, "'model' must not contain control characters", false);
                return -1;
            }
        }
        memcpy(info->model, s, n);
        info->model[n] = 0;
        info->has_model = true;
        if (c->gen != NULL && c->rw->model != NULL)
            return emitted(c, yajl_gen_string(c->gen, (const unsigned char *)c->rw->model, strlen(c->rw->model))) ? 1
                                                                                                                  : -1;
        return 0;
    case KEY_STREAM:
        if (t == VAL_BOOL)
            info->stream = b != 0;
        else
            bad = t != VAL_NULL;
        break;
    case KEY_STORE:
        if (t == VAL_BOOL)
            info->store = b ? 1 : 0;
        else if (t != VAL_NULL)
            bad = true;
        else if (c->gen != NULL && c->add_store) {
            c->store_done = true;
            return emitted(c, yajl_gen_bool(c->gen, 0)) ? 1 : -1;
        }
        break;
    case KEY_STREAM_OPTIONS:
        bad = t != VAL_NULL && t != VAL_MAP;
        if (!bad && t == VAL_NULL && c->gen != NULL && c->force_usage) {
            c->usage_done = true;
            if (!emitted(c, yajl_gen_map_open(c->gen)) || !emit_key(c, "include_usage") ||
                !emitted(c, yajl_gen_bool(c->gen, 1)) || !emitted(c, yajl_gen_map_close(c->gen)))
                return -1;
            return 1;
        }
        break;
    case KEY_MAX_TOKENS:
    case KEY_MAX_COMPLETION_TOKENS:
    case KEY_MAX_OUTPUT_TOKENS:
        if (t == VAL_NUMBER) {
            int64_t v;
            if (!parse_count((const char *)s, n, &v)) {
                bad = true;
                break;
            }
            if (v > info->max_output_tokens)
                info->max_output_tokens = v;
        } else if (t != VAL_NULL) {
            bad = true;
        } else if (c->gen != NULL && c->max_key == k) {
            c->max_done = true;
            return emit_count(c, c->rw->default_max_output_tokens) ? 1 : -1;
        }
        break;
    case KEY_COUNT:
        break;
    }
    if (bad) {
        fail(c, -EINVAL, type_error(k, false), false);
        return -1;
    }
    return 0;
}

static int cb_null(void *data)
{
    ctx_t *c = data;
    int a = on_value(c, VAL_NULL, 0, NULL, 0);
    if (a < 0)
        return 0;
    return a == 0 && c->gen != NULL ? emitted(c, yajl_gen_null(c->gen)) : 1;
}

static int cb_boolean(void *data, int b)
{
    ctx_t *c = data;
    int a = on_value(c, VAL_BOOL, b, NULL, 0);
    if (a < 0)
        return 0;
    return a == 0 && c->gen != NULL ? emitted(c, yajl_gen_bool(c->gen, b)) : 1;
}

static int cb_number(void *data, const char *s, size_t n)
{
    ctx_t *c = data;
    int a = on_value(c, VAL_NUMBER, 0, (const unsigned char *)s, n);
    if (a < 0)
        return 0;
    return a == 0 && c->gen != NULL ? emitted(c, yajl_gen_number(c->gen, s, n)) : 1;
}

static int cb_string(void *data, const unsigned char *s, size_t n)
{
    ctx_t *c = data;
    int a = on_value(c, VAL_STRING, 0, s, n);
    if (a < 0)
        return 0;
    return a == 0 && c->gen != NULL ? emitted(c, yajl_gen_string(c->gen, s, n)) : 1;
}

static int open_container(ctx_t *c, val_type_t t)
{
    if (c->rc != 0)
        return 0;
    if (c->depth == 0) {
        if (t != VAL_MAP)
            return fail(c, -EINVAL, "body must be a JSON object", false);
    } else if (c->opts_key_usage) {
        return fail(c, -EINVAL, type_error(KEY_OTHER, true), false);
    } else if (c->depth == 1) {
        key_id_t k = c->key;
        c->key = KEY_OTHER;
        if (k == KEY_STREAM_OPTIONS && t == VAL_MAP) {
            c->in_opts = true;
            c->opts_saw_usage = false;
        } else if (k != KEY_OTHER) {
            return fail(c, -EINVAL, type_error(k, false), false);
        }
    }
    if (c->depth >= REQJSON_MAX_DEPTH)
        return fail(c, -EINVAL, "JSON nested too deeply", false);
    c->depth++;
    if (c->gen == NULL)
        return 1;
    return emitted(c, t == VAL_MAP ? yajl_gen_map_open(c->gen) : yajl_gen_array_open(c->gen));
}

static int cb_start_map(void *data)
{
    return open_container(data, VAL_MAP);
}

static int cb_start_array(void *data)
{
    return open_container(data, VAL_ARRAY);
}

static int cb_end_array(void *data)
{
    ctx_t *c = data;
    c->depth--;
    return c->gen != NULL ? emitted(c, yajl_gen_array_close(c->gen)) : 1;
}

/* Appends the fields the client did not send, just before the top-level object closes. */
static int append_missing(ctx_t *c)
{
    if (c->force_usage && !c->usage_done) {
        if (!emit_key(c, "stream_options") || !emitted(c, yajl_gen_map_open(c->gen)) || !emit_key(c, "include_usage") ||
            !emitted(c, yajl_gen_bool(c->gen, 1)) || !emitted(c, yajl_gen_map_close(c->gen)))
            return 0;
    }
    if (c->add_store && !c->store_done) {
        if (!emit_key(c, "store") || !emitted(c, yajl_gen_bool(c->gen, 0)))
            return 0;
    }
    if (c->max_key != KEY_OTHER && !c->max_done) {
        if (!emit_key(c, key_names[c->max_key]) || !emit_count(c, c->rw->default_max_output_tokens))
            return 0;
    }
    return 1;
}

static int cb_end_map(void *data)
{
    ctx_t *c = data;
    if (c->rc != 0)
        return 0;
    if (c->depth == 2 && c->in_opts) {
        c->in_opts = false;
        if (c->gen != NULL && c->force_usage && !c->opts_saw_usage) {
            c->usage_done = true;
            if (!emit_key(c, "include_usage") || !emitted(c, yajl_gen_bool(c->gen, 1)))
                return 0;
        }
    } else if (c->depth == 1 && c->gen != NULL) {
        if (!append_missing(c))
            return 0;
    }
    c->depth--;
    return c->gen != NULL ? emitted(c, yajl_gen_map_close(c->gen)) : 1;
}

static int cb_map_key(void *data, const unsigned char *k, size_t n)
{
    ctx_t *c = data;
    if (c->rc != 0)
        return 0;
    if (!utf8_valid(k, n))
        return fail(c, -EINVAL, "invalid UTF-8 in a string", true);
    if (c->depth == 1) {
        key_id_t id = top_key_id(c->ep, k, n);
        if (id != KEY_OTHER) {
            if (c->seen & (1u << id)) {
                switch (id) {
                case KEY_MODEL:
                    return fail(c, -EINVAL, "duplicate key 'model'", false);
                case KEY_STREAM:
                    return fail(c, -EINVAL, "duplicate key 'stream'", false);
                case KEY_STREAM_OPTIONS:
                    return fail(c, -EINVAL, "duplicate key 'stream_options'", false);
                case KEY_STORE:
                    return fail(c, -EINVAL, "duplicate key 'store'", false);
                case KEY_MAX_TOKENS:
                    return fail(c, -EINVAL, "duplicate key 'max_tokens'", false);
                case KEY_MAX_COMPLETION_TOKENS:
                    return fail(c, -EINVAL, "duplicate key 'max_completion_tokens'", false);
                default:
                    return fail(c, -EINVAL, "duplicate key 'max_output_tokens'", false);
                }
            }
            c->seen |= 1u << id;
        }
        c->key = id;
    } else if (c->depth == 2 && c->in_opts && n == 13 && memcmp(k, "include_usage", 13) == 0) {
        if (c->opts_saw_usage)
            return fail(c, -EINVAL, "duplicate key 'stream_options.include_usage'", false);
        c->opts_saw_usage = true;
        c->opts_key_usage = true;
    }
    return c->gen != NULL ? emitted(c, yajl_gen_string(c->gen, k, n)) : 1;
}

static const yajl_callbacks callbacks = {
    .yajl_null = cb_null,
    .yajl_boolean = cb_boolean,
    .yajl_number = cb_number,
    .yajl_string = cb_string,
    .yajl_start_map = cb_start_map,
    .yajl_map_key = cb_map_key,
    .yajl_end_map = cb_end_map,
    .yajl_start_array = cb_start_array,
    .yajl_end_array = cb_end_array,
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* yajl's own error text with verbose = 0 is one of its fixed strings (no input is quoted);
 * keep only the part after "lexical error: " / "parse error: ". */
static void set_yajl_err(yajl_handle h, size_t at, char *err, size_t errlen)
{
    unsigned char *text = yajl_get_error(h, 0, NULL, 0);
    const char *t = text != NULL ? (const char *)text : "";
    const char *colon = strstr(t, ": ");
    if (colon != NULL)
        t = colon + 2;
    size_t n = strcspn(t, "\n");
    if (n > 0 && t[n - 1] == '.')
        n--;
    if (n > 0)
        set_err(err, errlen, "invalid JSON at byte %zu: %.*s", at, (int)n, t);
    else
        set_err(err, errlen, "invalid JSON at byte %zu", at);
    if (text != NULL)
        yajl_free_error(h, text);
}

static void info_init(reqjson_info_t *info)
{
    memset(info, 0, sizeof(*info));
    info->include_usage = -1;
    info->store = -1;
    info->max_output_tokens = -1;
}

/* One pass over body with c set up (gen or not). */
static int run(ctx_t *c, const uint8_t *body, size_t len, char *err, size_t errlen)
{
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\n' || body[i] == '\r'))
        i++;
    if (i == len || body[i] != '{') {
        set_err(err, errlen, "body must be a JSON object");
        return -EINVAL;
    }
    yajl_alloc_funcs af;
    wipe_yajl_alloc_funcs_init(&af);
    c->parser = yajl_alloc(&callbacks, &af, c);
    if (c->parser == NULL) {
        set_err(err, errlen, "out of memory");
        return -ENOMEM;
    }
    yajl_status st = yajl_parse(c->parser, body, len);
    size_t at = yajl_get_bytes_consumed(c->parser);
    if (st == yajl_status_ok) {
        st = yajl_complete_parse(c->parser);
        at = len;
    }
    int rc = 0;
    if (c->rc != 0) {
        rc = c->rc;
        if (c->msg_at_byte)
            set_err(err, errlen, "%s at byte %zu", c->msg, c->msg_byte);
        else
            set_err(err, errlen, "%s", c->msg);
    } else if (st != yajl_status_ok) {
        rc = -EINVAL;
        set_yajl_err(c->parser, at, err, errlen);
    } else if (!c->info->has_model) {
        rc = -EINVAL;
        set_err(err, errlen, "'model' is required");
    }
    yajl_free(c->parser);
    c->parser = NULL;
    return rc;
}

int reqjson_inspect(reqjson_endpoint_t ep, const uint8_t *body, size_t len, reqjson_info_t *info, char *err,
                    size_t errlen)
{
    set_err(err, errlen, "%s", "");
    info_init(info);
    ctx_t c;
    memset(&c, 0, sizeof(c));
    c.ep = ep;
    c.info = info;
    return run(&c, body, len, err, errlen);
}

int reqjson_rewrite(reqjson_endpoint_t ep, const uint8_t *body, size_t len, const reqjson_rewrite_t *rw,
                    wipe_buf_t *out, char *err, size_t errlen)
{
    reqjson_info_t own;
    const reqjson_info_t *info = rw->info;
    if (info == NULL) {
        int r = reqjson_inspect(ep, body, len, &own, err, errlen);
        if (r != 0)
            return r;
        info = &own;
    }
    set_err(err, errlen, "%s", "");
    if (rw->model != NULL && !utf8_valid((const unsigned char *)rw->model, strlen(rw->model))) {
        set_err(err, errlen, "invalid UTF-8 in the configured model");
        return -EINVAL;
    }
    ctx_t c;
    memset(&c, 0, sizeof(c));
    c.ep = ep;
    c.rw = rw;
    c.out = out;
    c.force_usage = rw->include_usage && info->stream && (ep == REQJSON_CHAT || ep == REQJSON_COMPLETIONS);
    c.add_store = rw->store_false_by_default && ep == REQJSON_RESPONSES && info->store < 0;
    c.max_key = KEY_OTHER;
    if (rw->default_max_output_tokens > 0 && info->max_output_tokens < 0) {
        if (ep == REQJSON_CHAT || ep == REQJSON_COMPLETIONS)
            c.max_key = KEY_MAX_TOKENS;
        else if (ep == REQJSON_RESPONSES)
            c.max_key = KEY_MAX_OUTPUT_TOKENS;
    }
    bool same_model = rw->model == NULL || strcmp(rw->model, info->model) == 0;
    /* stream_options.include_usage already true: nothing to force */
    if (c.force_usage && info->include_usage == 1)
        c.force_usage = false;
    if (same_model && !c.force_usage && !c.add_store && c.max_key == KEY_OTHER) {
        int r = wipe_buf_append(out, body, len);
        if (r != 0)
            set_err(err, errlen, r == -E2BIG ? "rewritten body too large" : "out of memory");
        return r;
    }

    /* A second inspection fills this copy; it must agree with info (same body). */
    reqjson_info_t scratch;
    info_init(&scratch);
    c.info = &scratch;
    yajl_alloc_funcs af;
    wipe_yajl_alloc_funcs_init(&af);
    c.gen = yajl_gen_alloc(&af);
    if (c.gen == NULL) {
        set_err(err, errlen, "out of memory");
        return -ENOMEM;
    }
    yajl_gen_config(c.gen, yajl_gen_validate_utf8, 1);
    yajl_gen_config(c.gen, yajl_gen_print_callback, gen_print, &c);
    int r = wipe_buf_reserve(out, len + 64);
    if (r == -ENOMEM) {
        set_err(err, errlen, "out of memory");
    } else {
        r = run(&c, body, len, err, errlen);
    }
    yajl_gen_free(c.gen);
    return r;
}
