/* reqjson: inspect and rewrite an OpenAI-format request body (see reqjson.h).
 *
 * How it works: one SAX pass of yajl over the whole body with callbacks that track only the
 * nesting depth, the current top-level key (as an id from a fixed table) and whether the
 * parser is inside the top-level "stream_options" object. Inspection validates and records
 * those fields as they pass, and with them the byte spans of the values the relay may edit:
 * inside a callback yajl_get_bytes_consumed() is the offset just past the current token, so a
 * value ends there and starts after the ':' that follows its key's end (only whitespace lies
 * in between; yajl has checked those bytes already). Rewriting never parses: it sorts the few
 * edits by offset and copies the body around them into the caller's wipe_buf_t, sized once.
 * Errors carry fixed texts only. */
#include "node/reqjson.h"
#include "node/jtree.h"
#include "node/util.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
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
    const uint8_t *body;
    unsigned depth;      /* open containers; the top-level object is depth 1 */
    key_id_t key;        /* top-level key whose value comes next */
    size_t key_end;      /* just past that key (when it is not KEY_OTHER) */
    unsigned seen;       /* bit per key_id_t already seen at the top level */
    bool in_opts;        /* inside the top-level "stream_options" object (at depth 2) */
    bool opts_key_usage; /* the next value is stream_options.include_usage */
    bool opts_saw_usage;
    size_t opts_key_end; /* just past the "include_usage" key */
    int rc;              /* first error */
    const char *msg;     /* its fixed text */
    bool msg_at_byte;    /* append " at byte N" */
    size_t msg_byte;
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

/* The max field reqjson_rewrite adds for default_max_output_tokens (KEY_OTHER: none). */
static key_id_t default_max_key(reqjson_endpoint_t ep)
{
    switch (ep) {
    case REQJSON_CHAT:
    case REQJSON_COMPLETIONS:
        return KEY_MAX_TOKENS;
    case REQJSON_RESPONSES:
        return KEY_MAX_OUTPUT_TOKENS;
    case REQJSON_EMBEDDINGS:
        break;
    }
    return KEY_OTHER;
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

static bool is_space(uint8_t b)
{
    /* yajl also skips \v and \f between tokens */
    return b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\v' || b == '\f';
}

/* The span of the value yajl has just reported (the current token ends it), whose key ended
 * at key_end: the value starts after the ':' and the whitespace that follow the key. */
static reqjson_span_t value_span(const ctx_t *c, size_t key_end)
{
    size_t end = yajl_get_bytes_consumed(c->parser);
    size_t i = key_end;
    while (i < end && c->body[i] != ':')
        i++;
    i++;
    while (i < end && is_space(c->body[i]))
        i++;
    assert(i < end);
    return (reqjson_span_t){.start = i, .end = end};
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

/* Validates and records a value; returns yajl's continue flag (0 once an error is recorded). */
static int on_value(ctx_t *c, val_type_t t, int b, const unsigned char *s, size_t n)
{
    if (c->rc != 0)
        return 0;
    if (c->depth == 0)
        return fail(c, -EINVAL, "body must be a JSON object", false);
    if (t == VAL_STRING && !jtree_utf8_valid(s, n))
        return fail(c, -EINVAL, "invalid UTF-8 in a string", true);
    reqjson_info_t *info = c->info;
    if (c->opts_key_usage) {
        c->opts_key_usage = false;
        if (t == VAL_BOOL)
            info->include_usage = b ? 1 : 0;
        else if (t != VAL_NULL)
            return fail(c, -EINVAL, type_error(KEY_OTHER, true), false);
        info->spans.include_usage = value_span(c, c->opts_key_end);
        return 1;
    }
    if (c->depth > 1) {
        if (t == VAL_STRING)
            info->prompt_bytes += n;
        else if (t == VAL_NUMBER)
            info->prompt_bytes += 4;
        return 1;
    }
    key_id_t k = c->key;
    c->key = KEY_OTHER;
    bool bad = false;
    switch (k) {
    case KEY_OTHER:
        if (t == VAL_STRING)
            info->prompt_bytes += n;
        return 1;
    case KEY_MODEL:
        if (t != VAL_STRING) {
            bad = true;
            break;
        }
        if (n == 0 || n > REQJSON_MODEL_MAX)
            return fail(c, -EINVAL, n == 0 ? "'model' must not be empty" : "'model' is too long", false);
        for (size_t i = 0; i < n; i++) {
            if (s[i] < 0x20 || s[i] == 0x7F)
                return fail(c, -EINVAL, "'model' must not contain control characters", false);
        }
        memcpy(info->model, s, n);
        info->model[n] = 0;
        info->has_model = true;
        info->spans.model = value_span(c, c->key_end);
        break;
    case KEY_STREAM:
        if (t == VAL_BOOL)
            info->stream = b != 0;
        else
            bad = t != VAL_NULL;
        break;
    case KEY_STORE:
        if (t == VAL_BOOL)
            info->store = b ? 1 : 0;
        else
            bad = t != VAL_NULL;
        if (!bad)
            info->spans.store = value_span(c, c->key_end);
        break;
    case KEY_STREAM_OPTIONS:
        /* an object goes through open_container; here only null is valid */
        bad = t != VAL_NULL;
        if (!bad)
            info->spans.stream_options = value_span(c, c->key_end);
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
            break;
        }
        if (k == default_max_key(c->ep))
            info->spans.max_output = value_span(c, c->key_end);
        break;
    case KEY_COUNT:
        break;
    }
    if (bad)
        return fail(c, -EINVAL, type_error(k, false), false);
    return 1;
}

static int cb_null(void *data)
{
    return on_value(data, VAL_NULL, 0, NULL, 0);
}

static int cb_boolean(void *data, int b)
{
    return on_value(data, VAL_BOOL, b, NULL, 0);
}

static int cb_number(void *data, const char *s, size_t n)
{
    return on_value(data, VAL_NUMBER, 0, (const unsigned char *)s, n);
}

static int cb_string(void *data, const unsigned char *s, size_t n)
{
    return on_value(data, VAL_STRING, 0, s, n);
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
            /* the end is set when the object closes */
            c->info->spans.stream_options = value_span(c, c->key_end);
            c->info->spans.stream_options_is_object = true;
            c->info->spans.stream_options_empty = true;
        } else if (k != KEY_OTHER) {
            return fail(c, -EINVAL, type_error(k, false), false);
        }
    }
    if (c->depth >= REQJSON_MAX_DEPTH)
        return fail(c, -EINVAL, "JSON nested too deeply", false);
    c->depth++;
    return 1;
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
    return 1;
}

static int cb_end_map(void *data)
{
    ctx_t *c = data;
    if (c->rc != 0)
        return 0;
    if (c->depth == 2 && c->in_opts) {
        c->in_opts = false;
        c->info->spans.stream_options.end = yajl_get_bytes_consumed(c->parser);
    } else if (c->depth == 1) {
        c->info->spans.close = yajl_get_bytes_consumed(c->parser) - 1;
    }
    c->depth--;
    return 1;
}

static int cb_map_key(void *data, const unsigned char *k, size_t n)
{
    ctx_t *c = data;
    if (c->rc != 0)
        return 0;
    if (!jtree_utf8_valid(k, n))
        return fail(c, -EINVAL, "invalid UTF-8 in a string", true);
    if (c->depth == 1) {
        c->info->spans.has_members = true;
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
            c->key_end = yajl_get_bytes_consumed(c->parser);
        }
        c->key = id;
    } else if (c->depth == 2 && c->in_opts) {
        c->info->spans.stream_options_empty = false;
        if (n == 13 && memcmp(k, "include_usage", 13) == 0) {
            if (c->opts_saw_usage)
                return fail(c, -EINVAL, "duplicate key 'stream_options.include_usage'", false);
            c->opts_saw_usage = true;
            c->opts_key_usage = true;
            c->opts_key_end = yajl_get_bytes_consumed(c->parser);
        }
    }
    return 1;
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

/* One inspection pass over body with c set up. */
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
    c.body = body;
    int r = run(&c, body, len, err, errlen);
    if (r == 0)
        info->spans.body_len = len;
    return r;
}

/* Writes the JSON escape of ch into esc and returns its length; 0 if ch needs none. */
static size_t json_escape(unsigned char ch, char esc[6])
{
    static const char hex[] = "0123456789abcdef";
    char short_form = 0;
    switch (ch) {
    case '"':
        short_form = '"';
        break;
    case '\\':
        short_form = '\\';
        break;
    case '\b':
        short_form = 'b';
        break;
    case '\f':
        short_form = 'f';
        break;
    case '\n':
        short_form = 'n';
        break;
    case '\r':
        short_form = 'r';
        break;
    case '\t':
        short_form = 't';
        break;
    default:
        if (ch >= 0x20)
            return 0;
        memcpy(esc, "\\u00", 4);
        esc[4] = hex[ch >> 4];
        esc[5] = hex[ch & 15];
        return 6;
    }
    esc[0] = '\\';
    esc[1] = short_form;
    return 2;
}

/* Length of s (n bytes of valid UTF-8) as a JSON string, quotes included. */
static size_t json_string_len(const char *s, size_t n)
{
    size_t len = n + 2;
    char esc[6];
    for (size_t i = 0; i < n; i++) {
        size_t e = json_escape((unsigned char)s[i], esc);
        if (e > 0)
            len += e - 1;
    }
    return len;
}

/* Writes s as a JSON string at w (json_string_len bytes); returns the end. */
static uint8_t *json_string_put(uint8_t *w, const char *s, size_t n)
{
    *w++ = '"';
    size_t run_start = 0;
    char esc[6];
    for (size_t i = 0; i < n; i++) {
        size_t e = json_escape((unsigned char)s[i], esc);
        if (e == 0)
            continue;
        memcpy(w, s + run_start, i - run_start);
        w += i - run_start;
        memcpy(w, esc, e);
        w += e;
        run_start = i + 1;
    }
    memcpy(w, s + run_start, n - run_start);
    w += n - run_start;
    *w++ = '"';
    return w;
}

/* Cheap checks that info came from reqjson_inspect of a body like this one (same length, its
 * '}'s where this body has them, every span inside the object). Spans that reqjson_inspect
 * recorded never overlap, so an info that passes cannot make the splice go out of bounds. */
static bool spans_fit(const reqjson_info_t *info, const uint8_t *body, size_t len)
{
    const reqjson_spans_t *at = &info->spans;
    if (!info->has_model || at->body_len != len || at->close >= len || body[at->close] != '}' || at->model.end == 0)
        return false;
    const reqjson_span_t *spans[] = {&at->model, &at->stream_options, &at->include_usage, &at->store, &at->max_output};
    for (size_t i = 0; i < sizeof(spans) / sizeof(spans[0]); i++) {
        if (spans[i]->end != 0 && (spans[i]->start >= spans[i]->end || spans[i]->end > at->close))
            return false;
    }
    return !at->stream_options_is_object || (at->stream_options.end != 0 && body[at->stream_options.end - 1] == '}');
}

typedef struct edit {
    size_t start, end; /* the body's bytes [start, end) give way to */
    const char *text;  /* these len bytes; NULL: the new model as a JSON string */
    size_t len;
} edit_t;

static edit_t edit_replace(reqjson_span_t at, const char *text)
{
    return (edit_t){.start = at.start, .end = at.end, .text = text, .len = strlen(text)};
}

/* The members added at the end of the top-level object. */
typedef struct tail {
    char text[128];
    size_t len;
    bool has_members; /* the object has members before the tail */
} tail_t;

static void tail_put(tail_t *t, const char *s, size_t n)
{
    assert(n <= sizeof(t->text) - t->len);
    memcpy(t->text + t->len, s, n);
    t->len += n;
}

/* Starts a member: a ',' unless it is the object's first. */
static void tail_member(tail_t *t, const char *key_colon)
{
    if (t->len > 0 || t->has_members)
        tail_put(t, ",", 1);
    tail_put(t, key_colon, strlen(key_colon));
}

/* Writes v (> 0) in decimal to text (at least 19 bytes); returns the length. snprintf costs
 * more than the rest of a rewrite. */
int reqjson_rewrite(reqjson_endpoint_t ep, const uint8_t *body, size_t len, const reqjson_rewrite_t *rw,
                    wipe_buf_t *out, char *err, size_t errlen)
{
    reqjson_info_t own;
    const reqjson_info_t *info = rw->info;
    if (info == NULL || !spans_fit(info, body, len)) {
        int r = reqjson_inspect(ep, body, len, &own, err, errlen);
        if (r != 0)
            return r;
        info = &own;
    }
    set_err(err, errlen, "%s", "");
    size_t model_len = rw->model != NULL ? strlen(rw->model) : 0;
    if (rw->model != NULL && !jtree_utf8_valid((const unsigned char *)rw->model, model_len)) {
        set_err(err, errlen, "invalid UTF-8 in the configured model");
        return -EINVAL;
    }

    /* At most one edit per value the relay may change, plus the added members. */
    const reqjson_spans_t *at = &info->spans;
    edit_t edits[5];
    size_t n_edits = 0;
    tail_t tail = {.len = 0, .has_members = at->has_members};
    char max_value[21];
    if (rw->model != NULL && strcmp(rw->model, info->model) != 0)
        edits[n_edits++] = (edit_t){
            .start = at->model.start, .end = at->model.end, .text = NULL, .len = json_string_len(rw->model, model_len)};
    if (rw->include_usage && info->stream && (ep == REQJSON_CHAT || ep == REQJSON_COMPLETIONS) &&
        info->include_usage != 1) {
        if (at->include_usage.end != 0) { /* false or null */
            edits[n_edits++] = edit_replace(at->include_usage, "true");
        } else if (at->stream_options_is_object) {
            size_t close = at->stream_options.end - 1;
            const char *member = at->stream_options_empty ? "\"include_usage\":true" : ",\"include_usage\":true";
            edits[n_edits++] = (edit_t){.start = close, .end = close, .text = member, .len = strlen(member)};
        } else if (at->stream_options.end != 0) { /* null */
            edits[n_edits++] = edit_replace(at->stream_options, "{\"include_usage\":true}");
        } else {
            tail_member(&tail, "\"stream_options\":{\"include_usage\":true}");
        }
    }
    if (rw->store_false_by_default && ep == REQJSON_RESPONSES && info->store < 0) {
        if (at->store.end != 0) /* null */
            edits[n_edits++] = edit_replace(at->store, "false");
        else
            tail_member(&tail, "\"store\":false");
    }
    key_id_t max_key = default_max_key(ep);
    if (rw->default_max_output_tokens > 0 && info->max_output_tokens < 0 && max_key != KEY_OTHER) {
        size_t n = util_u64_dec((uint64_t)rw->default_max_output_tokens, max_value);
        if (at->max_output.end != 0) { /* null */
            edits[n_edits++] =
                (edit_t){.start = at->max_output.start, .end = at->max_output.end, .text = max_value, .len = n};
        } else {
            tail_member(&tail, max_key == KEY_MAX_TOKENS ? "\"max_tokens\":" : "\"max_output_tokens\":");
            tail_put(&tail, max_value, n);
        }
    }
    if (tail.len > 0)
        edits[n_edits++] = (edit_t){.start = at->close, .end = at->close, .text = tail.text, .len = tail.len};

    /* In body order; spans of different values never overlap. */
    size_t total = len;
    for (size_t i = 0; i < n_edits; i++) {
        edit_t e = edits[i];
        size_t j = i;
        for (; j > 0 && edits[j - 1].start > e.start; j--)
            edits[j] = edits[j - 1];
        edits[j] = e;
        total = total - (e.end - e.start) + e.len;
    }
    int r = wipe_buf_reserve(out, total);
    if (r != 0) {
        set_err(err, errlen, r == -E2BIG ? "rewritten body too large" : "out of memory");
        return r;
    }
    uint8_t *w = out->data + out->len;
    size_t pos = 0;
    for (size_t i = 0; i < n_edits; i++) {
        assert(edits[i].start >= pos && edits[i].end <= len);
        memcpy(w, body + pos, edits[i].start - pos);
        w += edits[i].start - pos;
        if (edits[i].text != NULL) {
            memcpy(w, edits[i].text, edits[i].len);
            w += edits[i].len;
        } else {
            w = json_string_put(w, rw->model, model_len);
        }
        pos = edits[i].end;
    }
    memcpy(w, body + pos, len - pos);
    w += len - pos;
    assert(w == out->data + out->len + total);
    out->len += total;
    return 0;
}
