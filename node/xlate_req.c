/* xlate_req: request translation between the OpenAI, Anthropic and Gemini chat formats (see xlate_req.h).
 *
 * Memory: the parsed tree, every string in it and the intermediate form live in one arena whose
 * blocks are wiped when freed (node/jtree.h: the parser, with yajl on the wiping allocators, and
 * the JSON writer); scratch buffers are wipe_buf_t.
 * Errors: the first one wins and is formatted once into the caller's err from fixed texts,
 * indices and safe identifiers. */
#include "node/xlate_req.h"
#include "node/jtree.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Field paths are built into fixed buffers; a path cut short in an error message is harmless. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wformat-truncation"
#endif

/* ---- errors --------------------------------------------------------------------------------- */

typedef struct ctx {
    jarena_t arena; /* unbounded */
    xlate_format_t from, to;
    int rc;
    char *err;
    size_t errlen;
} ctx_t;

__attribute__((format(printf, 3, 4))) static int failf(ctx_t *c, int rc, const char *fmt, ...)
{
    if (c->rc == 0) {
        c->rc = rc;
        if (c->errlen > 0) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->err, c->errlen, fmt, ap);
            va_end(ap);
        }
    }
    return c->rc;
}

static int oom(ctx_t *c)
{
    return failf(c, -ENOMEM, "out of memory");
}

const char *xlate_req_format_name(xlate_format_t f)
{
    switch (f) {
    case XLATE_OPENAI_CHAT:
        return "openai";
    case XLATE_ANTHROPIC:
        return "anthropic";
    case XLATE_GEMINI:
        return "gemini";
    }
    return "?";
}

/* ---- the tree ------------------------------------------------------------------------------- */

/* Parses buf into a tree in the arena. what names the text in errors ("body" or a field). */
static int json_parse(ctx_t *c, const uint8_t *buf, size_t len, const char *what, jnode_t **root, size_t *str_bytes)
{
    static const jtree_parse_opts_t opts = {.max_depth = XLATE_MAX_DEPTH, .strict_utf8 = true};
    size_t at = 0;
    switch (jtree_parse(&c->arena, buf, len, &opts, root, &at, str_bytes)) {
    case 0:
        return 0;
    case -EILSEQ:
        return failf(c, -EINVAL, "%s: invalid UTF-8 in a string near byte %zu", what, at);
    case -ELOOP:
        return failf(c, -EINVAL, "%s: nesting deeper than %d", what, XLATE_MAX_DEPTH);
    case -EINVAL:
        return failf(c, -EINVAL, "%s: invalid JSON near byte %zu", what, at);
    default:
        return oom(c);
    }
}

/* ---- tree helpers ----------------------------------------------------------------------------- */

static bool str_is(const jnode_t *j, const char *s)
{
    return j != NULL && j->type == J_STR && j->n == strlen(s) && memcmp(j->s, s, j->n) == 0;
}

/* A client key is echoed in an error only when it is a short identifier. */
static const char *safe_key(const jnode_t *m)
{
    if (m->keylen == 0 || m->keylen > 40)
        return "(unnamed)";
    for (size_t i = 0; i < m->keylen; i++) {
        char ch = m->key[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_'))
            return "(unnamed)";
    }
    return m->key;
}

/* Key equality; for Gemini (proto JSON) a camelCase name also matches its snake_case spelling. */
static bool key_match(const jnode_t *m, const char *name, bool gemini)
{
    size_t i = 0, j = 0;
    for (; name[j] != 0; j++) {
        char ch = name[j];
        if (i < m->keylen && m->key[i] == ch) {
            i++;
        } else if (gemini && ch >= 'A' && ch <= 'Z' && i + 1 < m->keylen && m->key[i] == '_' &&
                   m->key[i + 1] == ch - 'A' + 'a') {
            i += 2;
        } else {
            return false;
        }
    }
    return i == m->keylen;
}

#define MAX_FIELDS 40

/* Sorts the members of obj into vals[] by names[] (JSON null counts as absent). An unknown member
 * is refused unless allow_unknown; a repeated one always. path is the object's field path ("" for
 * the top level). */
static int fields(ctx_t *c, const jnode_t *obj, const char *path, const char *const *names, size_t n,
                  const jnode_t **vals)
{
    bool gemini = c->from == XLATE_GEMINI;
    bool seen[MAX_FIELDS] = {false};
    for (size_t i = 0; i < n; i++)
        vals[i] = NULL;
    for (const jnode_t *m = obj->first; m != NULL; m = m->next) {
        size_t i = 0;
        while (i < n && !key_match(m, names[i], gemini))
            i++;
        if (i == n)
            return failf(c, -EINVAL, "field '%s%s%s': unknown field, cannot be translated to %s", path,
                         path[0] ? "." : "", safe_key(m), xlate_req_format_name(c->to));
        if (seen[i])
            return failf(c, -EINVAL, "field '%s%s%s' appears more than once", path, path[0] ? "." : "", names[i]);
        seen[i] = true;
        if (m->type != J_NULL)
            vals[i] = m;
    }
    return 0;
}

static int want(ctx_t *c, const jnode_t *j, jtype_t t, const char *path, const char *name)
{
    static const char *const tn[] = {"null", "a boolean", "a number", "a string", "an object", "an array"};
    if (j != NULL && j->type != t)
        return failf(c, -EINVAL, "field '%s%s%s' must be %s", path, path[0] ? "." : "", name, tn[t]);
    return 0;
}

static int refuse(ctx_t *c, const char *path, const char *name, const char *why)
{
    return failf(c, -EINVAL, "field '%s%s%s': %s, cannot be translated to %s", path, path[0] && name[0] ? "." : "",
                 name, why, xlate_req_format_name(c->to));
}

/* A non-negative integer up to 18 digits. */
static bool num_count(const jnode_t *j, int64_t *out)
{
    if (j == NULL || j->type != J_NUM || j->n == 0 || j->n > 18)
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < j->n; i++) {
        if (j->s[i] < '0' || j->s[i] > '9')
            return false;
        v = v * 10 + (j->s[i] - '0');
    }
    *out = v;
    return true;
}

static bool num_is_integer(const jnode_t *j)
{
    if (j->type != J_NUM)
        return false;
    for (size_t i = 0; i < j->n; i++)
        if (!((j->s[i] >= '0' && j->s[i] <= '9') || (i == 0 && j->s[i] == '-')))
            return false;
    return true;
}

static jnode_t *mkstr(ctx_t *c, const char *s, size_t n)
{
    jnode_t *j = jarena_alloc(&c->arena, sizeof *j);
    if (j == NULL || (j->s = jarena_strdup(&c->arena, s, n)) == NULL) {
        oom(c);
        return NULL;
    }
    j->type = J_STR;
    j->n = n;
    return j;
}

/* An empty object: the arguments of a call that gives none. */
static jnode_t *mkobj(ctx_t *c)
{
    jnode_t *j = jarena_alloc(&c->arena, sizeof *j);
    if (j == NULL) {
        oom(c);
        return NULL;
    }
    j->type = J_OBJ;
    return j;
}

/* ---- intermediate form ------------------------------------------------------------------------ */

typedef enum { P_TEXT, P_IMAGE, P_CALL, P_RESULT } pkind_t;

typedef struct part {
    pkind_t kind;
    const char *text; /* P_TEXT, P_RESULT text (when resp is NULL) */
    size_t text_len;
    bool img_url;          /* P_IMAGE: data is a URL (else base64) */
    const char *mime;      /* P_IMAGE: may be NULL for a URL */
    size_t mime_len;
    const char *data;
    size_t data_len;
    const jnode_t *id;   /* P_CALL, P_RESULT */
    const jnode_t *name; /* P_CALL, P_RESULT */
    const jnode_t *args; /* P_CALL: an object */
    const jnode_t *resp; /* P_RESULT from Gemini: the response object */
    bool answered;       /* P_CALL: a result refers to it */
    const char *field;   /* P_IMAGE: the source field path, for target-side refusals */
    struct part *next;
} part_t;

typedef enum { R_USER, R_ASSISTANT } role_t;

typedef struct msg {
    role_t role;
    part_t *first, *last;
    struct msg *next;
} msg_t;

typedef struct tool {
    const jnode_t *name, *desc, *schema;
    struct tool *next;
} tool_t;

typedef enum { TC_UNSET, TC_AUTO, TC_NONE, TC_ANY, TC_TOOL } tc_kind_t;

/* An option with the source field that set it, for target-side refusals. */
typedef struct opt {
    const jnode_t *v;
    const char *field;
} opt_t;

typedef struct ir {
    part_t *sys_first, *sys_last;
    msg_t *msgs, *msgs_last;
    tool_t *tools, *tools_last;
    opt_t temperature, top_p, top_k, presence, frequency, seed, user, json_mode;
    const jnode_t *stop[64];
    size_t nstop;
    int64_t max_out; /* -1 absent */
    tc_kind_t tc;
    const jnode_t *tc_names[64];
    size_t tc_nnames;
    const char *tc_field;
    opt_t parallel_false; /* parallel tool calls disabled */
    bool stream;
    bool has_images;
    size_t image_bytes;
    size_t calls; /* tool calls so far (Gemini ids) */
} ir_t;

static part_t *part_new(ctx_t *c, pkind_t k)
{
    part_t *p = jarena_alloc(&c->arena, sizeof *p);
    if (p == NULL)
        oom(c);
    else
        p->kind = k;
    return p;
}

static void part_add(part_t **first, part_t **last, part_t *p)
{
    if (*last != NULL)
        (*last)->next = p;
    else
        *first = p;
    *last = p;
}

static msg_t *msg_new(ctx_t *c, ir_t *ir, role_t role)
{
    msg_t *m = jarena_alloc(&c->arena, sizeof *m);
    if (m == NULL) {
        oom(c);
        return NULL;
    }
    m->role = role;
    if (ir->msgs_last != NULL)
        ir->msgs_last->next = m;
    else
        ir->msgs = m;
    ir->msgs_last = m;
    return m;
}

/* The tool call with this id (last one wins), or NULL. */
static part_t *find_call_by_id(ir_t *ir, const jnode_t *id)
{
    part_t *found = NULL;
    for (msg_t *m = ir->msgs; m != NULL; m = m->next)
        for (part_t *p = m->first; p != NULL; p = p->next)
            if (p->kind == P_CALL && p->id->n == id->n && memcmp(p->id->s, id->s, id->n) == 0)
                found = p;
    return found;
}

/* The result part that answers call (found by its id). */
static part_t *result_new(ctx_t *c, part_t *call, const jnode_t *id)
{
    call->answered = true;
    part_t *p = part_new(c, P_RESULT);
    if (p != NULL) {
        p->id = id;
        p->name = call->name;
    }
    return p;
}

static int add_text(ctx_t *c, part_t **first, part_t **last, const jnode_t *s)
{
    part_t *p = part_new(c, P_TEXT);
    if (p == NULL)
        return c->rc;
    p->text = s->s;
    p->text_len = s->n;
    part_add(first, last, p);
    return 0;
}

static int add_tool(ctx_t *c, ir_t *ir, const jnode_t *name, const jnode_t *desc, const jnode_t *schema)
{
    tool_t *t = jarena_alloc(&c->arena, sizeof *t);
    if (t == NULL)
        return oom(c);
    t->name = name;
    t->desc = desc;
    t->schema = schema;
    if (ir->tools_last != NULL)
        ir->tools_last->next = t;
    else
        ir->tools = t;
    ir->tools_last = t;
    return 0;
}

static int set_stop(ctx_t *c, ir_t *ir, const jnode_t *v, const char *field, bool allow_string)
{
    if (allow_string && v->type == J_STR) {
        ir->stop[0] = v;
        ir->nstop = 1;
        return 0;
    }
    if (v->type != J_ARR)
        return failf(c, -EINVAL, "field '%s' must be %san array of strings", field, allow_string ? "a string or " : "");
    if (v->count > sizeof ir->stop / sizeof ir->stop[0])
        return failf(c, -EINVAL, "field '%s': too many stop sequences", field);
    ir->nstop = 0;
    for (const jnode_t *s = v->first; s != NULL; s = s->next) {
        if (s->type != J_STR)
            return failf(c, -EINVAL, "field '%s[%zu]' must be a string", field, ir->nstop);
        ir->stop[ir->nstop++] = s;
    }
    return 0;
}

static int set_number(ctx_t *c, opt_t *o, const jnode_t *v, const char *field)
{
    if (v == NULL)
        return 0;
    if (v->type != J_NUM)
        return failf(c, -EINVAL, "field '%s' must be a number", field);
    o->v = v;
    o->field = field;
    return 0;
}

static int set_integer(ctx_t *c, opt_t *o, const jnode_t *v, const char *field)
{
    if (v == NULL)
        return 0;
    if (!num_is_integer(v))
        return failf(c, -EINVAL, "field '%s' must be an integer", field);
    o->v = v;
    o->field = field;
    return 0;
}

static int set_max(ctx_t *c, ir_t *ir, const jnode_t *v, const char *field)
{
    int64_t n;
    if (v == NULL)
        return 0;
    if (!num_count(v, &n))
        return failf(c, -EINVAL, "field '%s' must be a non-negative integer", field);
    if (n > ir->max_out)
        ir->max_out = n;
    return 0;
}

/* Splits "data:<mime>;base64,<data>" into an image part; http(s) URLs are kept as URLs. */
static int image_from_url(ctx_t *c, part_t *p, const jnode_t *url, const char *field)
{
    if (url->n > 5 && memcmp(url->s, "data:", 5) == 0) {
        const char *semi = memchr(url->s, ';', url->n);
        static const char b64[] = ";base64,";
        if (semi == NULL || (size_t)(url->s + url->n - semi) < sizeof b64 - 1 || memcmp(semi, b64, sizeof b64 - 1) != 0 ||
            semi == url->s + 5)
            return failf(c, -EINVAL, "field '%s': a data URL must be data:<type>;base64,<data>", field);
        if (semi - url->s <= 11 || memcmp(url->s + 5, "image/", 6) != 0)
            return refuse(c, field, "", "a data URL that is not an image");
        p->mime = url->s + 5;
        p->mime_len = (size_t)(semi - p->mime);
        p->data = semi + sizeof b64 - 1;
        p->data_len = (size_t)(url->s + url->n - p->data);
        return 0;
    }
    if ((url->n > 7 && memcmp(url->s, "http://", 7) == 0) || (url->n > 8 && memcmp(url->s, "https://", 8) == 0)) {
        p->img_url = true;
        p->data = url->s;
        p->data_len = url->n;
        return 0;
    }
    return failf(c, -EINVAL, "field '%s': only http(s) and data: image URLs can be translated", field);
}

static int add_image(ctx_t *c, ir_t *ir, msg_t *m, part_t *p, const char *field)
{
    if (m->role != R_USER)
        return refuse(c, field, "", "an image outside a user turn");
    ir->has_images = true;
    ir->image_bytes += p->data_len + p->mime_len;
    if ((p->field = jarena_strdup(&c->arena, field, strlen(field))) == NULL)
        return oom(c);
    part_add(&m->first, &m->last, p);
    return 0;
}

/* ---- OpenAI chat parser ----------------------------------------------------------------------- */

static int openai_content(ctx_t *c, ir_t *ir, msg_t *m, const jnode_t *content, size_t mi, bool system)
{
    char path[256];
    if (content == NULL)
        return 0;
    if (content->type == J_STR) {
        return system ? add_text(c, &ir->sys_first, &ir->sys_last, content) : add_text(c, &m->first, &m->last, content);
    }
    if (content->type != J_ARR)
        return failf(c, -EINVAL, "field 'messages[%zu].content' must be a string or an array", mi);
    size_t pi = 0;
    for (const jnode_t *e = content->first; e != NULL; e = e->next, pi++) {
        snprintf(path, sizeof path, "messages[%zu].content[%zu]", mi, pi);
        if (e->type != J_OBJ)
            return failf(c, -EINVAL, "field '%s' must be an object", path);
        static const char *const names[] = {"type", "text", "image_url"};
        const jnode_t *v[3];
        if (fields(c, e, path, names, 3, v) || want(c, v[0], J_STR, path, "type"))
            return c->rc;
        if (str_is(v[0], "text")) {
            if (v[2] != NULL)
                return failf(c, -EINVAL, "field '%s.image_url' is not allowed in a text part", path);
            if (v[1] == NULL || v[1]->type != J_STR)
                return failf(c, -EINVAL, "field '%s.text' must be a string", path);
            if (system ? add_text(c, &ir->sys_first, &ir->sys_last, v[1]) : add_text(c, &m->first, &m->last, v[1]))
                return c->rc;
        } else if (str_is(v[0], "image_url") && !system) {
            if (v[1] != NULL)
                return failf(c, -EINVAL, "field '%s.text' is not allowed in an image part", path);
            char ipath[256];
            snprintf(ipath, sizeof ipath, "%s.image_url", path);
            const jnode_t *iv[2];
            static const char *const inames[] = {"url", "detail"};
            if (v[2] == NULL || v[2]->type != J_OBJ)
                return failf(c, -EINVAL, "field '%s' must be an object", ipath);
            if (fields(c, v[2], ipath, inames, 2, iv) || want(c, iv[1], J_STR, ipath, "detail"))
                return c->rc;
            if (iv[0] == NULL || iv[0]->type != J_STR)
                return failf(c, -EINVAL, "field '%s.url' must be a string", ipath);
            part_t *p = part_new(c, P_IMAGE);
            snprintf(ipath, sizeof ipath, "%s.image_url.url", path);
            if (p == NULL || image_from_url(c, p, iv[0], ipath) || add_image(c, ir, m, p, path))
                return c->rc;
        } else {
            return refuse(c, path, "type", "this content part type has no equivalent");
        }
    }
    return 0;
}

static int openai_tool_calls(ctx_t *c, ir_t *ir, msg_t *m, const jnode_t *calls, size_t mi)
{
    char path[256];
    if (calls->type != J_ARR)
        return failf(c, -EINVAL, "field 'messages[%zu].tool_calls' must be an array", mi);
    size_t ci = 0;
    for (const jnode_t *e = calls->first; e != NULL; e = e->next, ci++) {
        snprintf(path, sizeof path, "messages[%zu].tool_calls[%zu]", mi, ci);
        static const char *const names[] = {"id", "type", "function"};
        const jnode_t *v[3], *f[2];
        if (e->type != J_OBJ)
            return failf(c, -EINVAL, "field '%s' must be an object", path);
        if (fields(c, e, path, names, 3, v))
            return c->rc;
        if (v[0] == NULL || v[0]->type != J_STR || v[0]->n == 0)
            return failf(c, -EINVAL, "field '%s.id' must be a non-empty string", path);
        if (v[1] != NULL && !str_is(v[1], "function"))
            return refuse(c, path, "type", "only function tool calls have an equivalent");
        if (v[2] == NULL || v[2]->type != J_OBJ)
            return failf(c, -EINVAL, "field '%s.function' must be an object", path);
        char fpath[256];
        snprintf(fpath, sizeof fpath, "%s.function", path);
        static const char *const fnames[] = {"name", "arguments"};
        if (fields(c, v[2], fpath, fnames, 2, f))
            return c->rc;
        if (f[0] == NULL || f[0]->type != J_STR || f[0]->n == 0)
            return failf(c, -EINVAL, "field '%s.name' must be a non-empty string", fpath);
        if (want(c, f[1], J_STR, fpath, "arguments"))
            return c->rc;
        part_t *p = part_new(c, P_CALL);
        if (p == NULL)
            return c->rc;
        p->id = v[0];
        p->name = f[0];
        size_t k = 0;
        while (f[1] != NULL && k < f[1]->n && (f[1]->s[k] == ' ' || f[1]->s[k] == '\n' || f[1]->s[k] == '\t'))
            k++;
        if (f[1] == NULL || k == f[1]->n) {
            if ((p->args = mkobj(c)) == NULL)
                return c->rc;
        } else {
            jnode_t *args;
            char apath[256];
            snprintf(apath, sizeof apath, "field '%s.arguments'", fpath);
            if (json_parse(c, (const uint8_t *)f[1]->s, f[1]->n, apath, &args, NULL))
                return c->rc;
            if (args->type != J_OBJ)
                return failf(c, -EINVAL, "%s must be the JSON text of an object", apath);
            p->args = args;
        }
        ir->calls++;
        part_add(&m->first, &m->last, p);
    }
    return 0;
}

static int openai_tool_result(ctx_t *c, ir_t *ir, const jnode_t *id, const jnode_t *content, size_t mi)
{
    if (id == NULL || id->type != J_STR)
        return failf(c, -EINVAL, "field 'messages[%zu].tool_call_id' must be a string", mi);
    part_t *call = find_call_by_id(ir, id);
    if (call == NULL)
        return failf(c, -EINVAL, "field 'messages[%zu].tool_call_id': no earlier tool call has this id", mi);
    part_t *p = result_new(c, call, id);
    if (p == NULL)
        return c->rc;
    if (content == NULL) {
        p->text = "";
    } else if (content->type == J_STR) {
        p->text = content->s;
        p->text_len = content->n;
    } else if (content->type == J_ARR) {
        /* text parts only: joined */
        size_t total = 0, pi = 0;
        for (const jnode_t *e = content->first; e != NULL; e = e->next, pi++) {
            const jnode_t *t = NULL, *ty = NULL;
            for (const jnode_t *k = e->type == J_OBJ ? e->first : NULL; k != NULL; k = k->next) {
                if (key_match(k, "type", false))
                    ty = k;
                else if (key_match(k, "text", false))
                    t = k;
                else
                    return failf(c, -EINVAL, "field 'messages[%zu].content[%zu].%s': unknown field", mi, pi,
                                 safe_key(k));
            }
            if (!str_is(ty, "text") || t == NULL || t->type != J_STR)
                return refuse(c, "messages", "content", "a tool result part other than text");
            total += t->n;
        }
        char *buf = jarena_alloc(&c->arena, total + 1);
        if (buf == NULL)
            return oom(c);
        size_t at = 0;
        for (const jnode_t *e = content->first; e != NULL; e = e->next)
            for (const jnode_t *k = e->first; k != NULL; k = k->next)
                if (key_match(k, "text", false)) {
                    memcpy(buf + at, k->s, k->n);
                    at += k->n;
                }
        p->text = buf;
        p->text_len = total;
    } else {
        return failf(c, -EINVAL, "field 'messages[%zu].content' must be a string or an array", mi);
    }
    msg_t *m = ir->msgs_last;
    if (m == NULL || m->role != R_USER)
        m = msg_new(c, ir, R_USER);
    if (m == NULL)
        return c->rc;
    part_add(&m->first, &m->last, p);
    return 0;
}

static int openai_tool_choice(ctx_t *c, ir_t *ir, const jnode_t *v)
{
    ir->tc_field = "tool_choice";
    if (str_is(v, "auto"))
        ir->tc = TC_AUTO;
    else if (str_is(v, "none"))
        ir->tc = TC_NONE;
    else if (str_is(v, "required"))
        ir->tc = TC_ANY;
    else if (v->type == J_OBJ) {
        static const char *const names[] = {"type", "function"};
        const jnode_t *f[2], *fn[1];
        static const char *const fnames[] = {"name"};
        if (fields(c, v, "tool_choice", names, 2, f))
            return c->rc;
        if (!str_is(f[0], "function"))
            return refuse(c, "tool_choice", "type", "only function tool choices have an equivalent");
        if (f[1] == NULL || f[1]->type != J_OBJ)
            return failf(c, -EINVAL, "field 'tool_choice.function' must be an object");
        if (fields(c, f[1], "tool_choice.function", fnames, 1, fn))
            return c->rc;
        if (fn[0] == NULL || fn[0]->type != J_STR || fn[0]->n == 0)
            return failf(c, -EINVAL, "field 'tool_choice.function.name' must be a non-empty string");
        ir->tc = TC_TOOL;
        ir->tc_names[0] = fn[0];
        ir->tc_nnames = 1;
    } else {
        return failf(c, -EINVAL, "field 'tool_choice' must be auto, none, required or a function choice");
    }
    return 0;
}

static int openai_tools(ctx_t *c, ir_t *ir, const jnode_t *v)
{
    char path[256];
    if (v->type != J_ARR)
        return failf(c, -EINVAL, "field 'tools' must be an array");
    size_t i = 0;
    for (const jnode_t *e = v->first; e != NULL; e = e->next, i++) {
        snprintf(path, sizeof path, "tools[%zu]", i);
        static const char *const names[] = {"type", "function"};
        static const char *const fnames[] = {"name", "description", "parameters", "strict"};
        const jnode_t *t[2], *f[4];
        if (e->type != J_OBJ)
            return failf(c, -EINVAL, "field '%s' must be an object", path);
        if (fields(c, e, path, names, 2, t))
            return c->rc;
        if (!str_is(t[0], "function"))
            return refuse(c, path, "type", "only function tools have an equivalent");
        if (t[1] == NULL || t[1]->type != J_OBJ)
            return failf(c, -EINVAL, "field '%s.function' must be an object", path);
        char fpath[256];
        snprintf(fpath, sizeof fpath, "%s.function", path);
        if (fields(c, t[1], fpath, fnames, 4, f) || want(c, f[1], J_STR, fpath, "description") ||
            want(c, f[2], J_OBJ, fpath, "parameters") || want(c, f[3], J_BOOL, fpath, "strict"))
            return c->rc;
        if (f[0] == NULL || f[0]->type != J_STR || f[0]->n == 0)
            return failf(c, -EINVAL, "field '%s.name' must be a non-empty string", fpath);
        if (f[3] != NULL && f[3]->b)
            return refuse(c, fpath, "strict", "strict schema adherence has no equivalent");
        if (add_tool(c, ir, f[0], f[1], f[2]))
            return c->rc;
    }
    return 0;
}

enum {
    O_MODEL, O_MESSAGES, O_STREAM, O_STREAM_OPTIONS, O_MAX_TOKENS, O_MAX_COMPLETION_TOKENS, O_TEMPERATURE, O_TOP_P,
    O_STOP, O_TOOLS, O_TOOL_CHOICE, O_PARALLEL, O_USER, O_N, O_LOGPROBS, O_TOP_LOGPROBS, O_LOGIT_BIAS, O_PRESENCE,
    O_FREQUENCY, O_SEED, O_RESPONSE_FORMAT, O_STORE, O_METADATA, O_SERVICE_TIER, O_MODALITIES, O_COUNT
};

static int parse_openai(ctx_t *c, ir_t *ir, const jnode_t *root)
{
    static const char *const names[O_COUNT] = {
        "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
        "top_p", "stop", "tools", "tool_choice", "parallel_tool_calls", "user", "n", "logprobs", "top_logprobs",
        "logit_bias", "presence_penalty", "frequency_penalty", "seed", "response_format", "store", "metadata",
        "service_tier", "modalities",
    };
    const jnode_t *v[O_COUNT];
    if (fields(c, root, "", names, O_COUNT, v) || want(c, v[O_STREAM], J_BOOL, "", "stream") ||
        want(c, v[O_STREAM_OPTIONS], J_OBJ, "", "stream_options") || want(c, v[O_STORE], J_BOOL, "", "store") ||
        want(c, v[O_METADATA], J_OBJ, "", "metadata") || want(c, v[O_USER], J_STR, "", "user") ||
        want(c, v[O_PARALLEL], J_BOOL, "", "parallel_tool_calls") || want(c, v[O_LOGPROBS], J_BOOL, "", "logprobs"))
        return c->rc;
    ir->stream = v[O_STREAM] != NULL && v[O_STREAM]->b;
    int64_t n;
    if (v[O_N] != NULL && (!num_count(v[O_N], &n) || n != 1))
        return refuse(c, "", "n", "more than one choice");
    if (v[O_LOGPROBS] != NULL && v[O_LOGPROBS]->b)
        return refuse(c, "", "logprobs", "log probabilities have no equivalent");
    if (v[O_TOP_LOGPROBS] != NULL)
        return refuse(c, "", "top_logprobs", "log probabilities have no equivalent");
    if (v[O_LOGIT_BIAS] != NULL && !(v[O_LOGIT_BIAS]->type == J_OBJ && v[O_LOGIT_BIAS]->count == 0))
        return refuse(c, "", "logit_bias", "token biases have no equivalent");
    if (v[O_SERVICE_TIER] != NULL && !str_is(v[O_SERVICE_TIER], "auto") && !str_is(v[O_SERVICE_TIER], "default"))
        return refuse(c, "", "service_tier", "a service tier has no equivalent");
    if (v[O_MODALITIES] != NULL && !(v[O_MODALITIES]->type == J_ARR && v[O_MODALITIES]->count == 1 &&
                                     str_is(v[O_MODALITIES]->first, "text")))
        return refuse(c, "", "modalities", "output modalities other than text");
    if (v[O_RESPONSE_FORMAT] != NULL) {
        const jnode_t *rf = v[O_RESPONSE_FORMAT], *t = NULL;
        if (rf->type != J_OBJ)
            return failf(c, -EINVAL, "field 'response_format' must be an object");
        for (const jnode_t *k = rf->first; k != NULL; k = k->next)
            if (key_match(k, "type", false))
                t = k;
        if (str_is(t, "json_object") && rf->count == 1) {
            ir->json_mode.v = t;
            ir->json_mode.field = "response_format";
        } else if (!(str_is(t, "text") && rf->count == 1)) {
            return refuse(c, "", "response_format", "this response format has no faithful equivalent");
        }
    }
    if (set_max(c, ir, v[O_MAX_TOKENS], "max_tokens") ||
        set_max(c, ir, v[O_MAX_COMPLETION_TOKENS], "max_completion_tokens") ||
        set_number(c, &ir->temperature, v[O_TEMPERATURE], "temperature") ||
        set_number(c, &ir->top_p, v[O_TOP_P], "top_p") ||
        set_number(c, &ir->presence, v[O_PRESENCE], "presence_penalty") ||
        set_number(c, &ir->frequency, v[O_FREQUENCY], "frequency_penalty") ||
        set_integer(c, &ir->seed, v[O_SEED], "seed"))
        return c->rc;
    if (v[O_STOP] != NULL && set_stop(c, ir, v[O_STOP], "stop", true))
        return c->rc;
    if (v[O_USER] != NULL) {
        ir->user.v = v[O_USER];
        ir->user.field = "user";
    }
    if (v[O_PARALLEL] != NULL && !v[O_PARALLEL]->b) {
        ir->parallel_false.v = v[O_PARALLEL];
        ir->parallel_false.field = "parallel_tool_calls";
    }
    if (v[O_TOOLS] != NULL && openai_tools(c, ir, v[O_TOOLS]))
        return c->rc;
    if (v[O_TOOL_CHOICE] != NULL && openai_tool_choice(c, ir, v[O_TOOL_CHOICE]))
        return c->rc;

    if (v[O_MESSAGES] == NULL || v[O_MESSAGES]->type != J_ARR)
        return failf(c, -EINVAL, "field 'messages' must be an array");
    size_t mi = 0;
    for (const jnode_t *e = v[O_MESSAGES]->first; e != NULL; e = e->next, mi++) {
        char path[256];
        snprintf(path, sizeof path, "messages[%zu]", mi);
        if (e->type != J_OBJ)
            return failf(c, -EINVAL, "field '%s' must be an object", path);
        static const char *const mnames[] = {"role", "content", "tool_calls", "tool_call_id", "refusal", "name"};
        const jnode_t *m[6];
        if (fields(c, e, path, mnames, 6, m) || want(c, m[0], J_STR, path, "role"))
            return c->rc;
        if (m[5] != NULL)
            return refuse(c, path, "name", "participant names have no equivalent");
        if (m[4] != NULL)
            return refuse(c, path, "refusal", "a refusal has no equivalent");
        const jnode_t *role = m[0];
        bool is_tool = str_is(role, "tool");
        if (m[3] != NULL && !is_tool)
            return failf(c, -EINVAL, "field '%s.tool_call_id' is only allowed in a tool message", path);
        if (m[2] != NULL && !str_is(role, "assistant"))
            return failf(c, -EINVAL, "field '%s.tool_calls' is only allowed in an assistant message", path);
        if (str_is(role, "system") || str_is(role, "developer")) {
            if (ir->msgs != NULL)
                return refuse(c, path, "role", "a system message after the conversation started");
            if (m[1] == NULL)
                return failf(c, -EINVAL, "field '%s.content' is required", path);
            if (openai_content(c, ir, NULL, m[1], mi, true))
                return c->rc;
        } else if (str_is(role, "user") || str_is(role, "assistant")) {
            role_t r = str_is(role, "user") ? R_USER : R_ASSISTANT;
            if (m[1] == NULL && m[2] == NULL)
                return failf(c, -EINVAL, "field '%s.content' is required", path);
            msg_t *msg = msg_new(c, ir, r);
            if (msg == NULL || openai_content(c, ir, msg, m[1], mi, false) ||
                (m[2] != NULL && openai_tool_calls(c, ir, msg, m[2], mi)))
                return c->rc;
        } else if (is_tool) {
            if (openai_tool_result(c, ir, m[3], m[1], mi))
                return c->rc;
        } else {
            return failf(c, -EINVAL, "field '%s.role' must be system, developer, user, assistant or tool", path);
        }
    }
    return 0;
}

/* ---- Anthropic parser ------------------------------------------------------------------------- */

static int anthropic_image(ctx_t *c, ir_t *ir, msg_t *m, const jnode_t *src, const char *path)
{
    char spath[256];
    snprintf(spath, sizeof spath, "%s.source", path);
    if (src == NULL || src->type != J_OBJ)
        return failf(c, -EINVAL, "field '%s' must be an object", spath);
    static const char *const names[] = {"type", "media_type", "data", "url"};
    const jnode_t *v[4];
    if (fields(c, src, spath, names, 4, v) || want(c, v[1], J_STR, spath, "media_type") ||
        want(c, v[2], J_STR, spath, "data") || want(c, v[3], J_STR, spath, "url"))
        return c->rc;
    part_t *p = part_new(c, P_IMAGE);
    if (p == NULL)
        return c->rc;
    if (str_is(v[0], "base64")) {
        if (v[1] == NULL || v[2] == NULL || v[3] != NULL)
            return failf(c, -EINVAL, "field '%s': a base64 source needs media_type and data", spath);
        p->mime = v[1]->s;
        p->mime_len = v[1]->n;
        p->data = v[2]->s;
        p->data_len = v[2]->n;
    } else if (str_is(v[0], "url")) {
        if (v[3] == NULL || v[1] != NULL || v[2] != NULL)
            return failf(c, -EINVAL, "field '%s': a url source needs url only", spath);
        char upath[256];
        snprintf(upath, sizeof upath, "%s.url", spath);
        if (image_from_url(c, p, v[3], upath))
            return c->rc;
    } else {
        return refuse(c, spath, "type", "this image source has no equivalent");
    }
    return add_image(c, ir, m, p, path);
}

static int anthropic_blocks(ctx_t *c, ir_t *ir, msg_t *m, const jnode_t *content, const char *cpath, bool system)
{
    if (content->type == J_STR)
        return system ? add_text(c, &ir->sys_first, &ir->sys_last, content) : add_text(c, &m->first, &m->last, content);
    if (content->type != J_ARR)
        return failf(c, -EINVAL, "field '%s' must be a string or an array", cpath);
    size_t bi = 0;
    for (const jnode_t *e = content->first; e != NULL; e = e->next, bi++) {
        char path[256];
        snprintf(path, sizeof path, "%s[%zu]", cpath, bi);
        if (e->type != J_OBJ)
            return failf(c, -EINVAL, "field '%s' must be an object", path);
        enum { B_TYPE, B_TEXT, B_SOURCE, B_ID, B_NAME, B_INPUT, B_TOOL_USE_ID, B_CONTENT, B_IS_ERROR, B_CACHE,
               B_CITATIONS, B_COUNT };
        static const char *const names[B_COUNT] = {"type",        "text",    "source",   "id",
                                                   "name",        "input",   "tool_use_id", "content",
                                                   "is_error",    "cache_control", "citations"};
        const jnode_t *v[B_COUNT];
        if (fields(c, e, path, names, B_COUNT, v) || want(c, v[B_TYPE], J_STR, path, "type"))
            return c->rc;
        if (v[B_CITATIONS] != NULL)
            return refuse(c, path, "citations", "citations have no equivalent");
        const jnode_t *t = v[B_TYPE];
        /* which fields each block type allows */
        unsigned allowed = 1u << B_TYPE | 1u << B_CACHE;
        if (str_is(t, "text")) {
            allowed |= 1u << B_TEXT;
        } else if (str_is(t, "image") && !system) {
            allowed |= 1u << B_SOURCE;
        } else if (str_is(t, "tool_use") && !system && m->role == R_ASSISTANT) {
            allowed |= 1u << B_ID | 1u << B_NAME | 1u << B_INPUT;
        } else if (str_is(t, "tool_result") && !system && m->role == R_USER) {
            allowed |= 1u << B_TOOL_USE_ID | 1u << B_CONTENT | 1u << B_IS_ERROR;
        } else if (t == NULL) {
            return failf(c, -EINVAL, "field '%s.type' is required", path);
        } else {
            return refuse(c, path, "type", "this content block type has no equivalent here");
        }
        for (int i = 0; i < B_COUNT; i++)
            if (v[i] != NULL && !(allowed & 1u << i))
                return failf(c, -EINVAL, "field '%s.%s' is not allowed in this block", path, names[i]);
        if (str_is(t, "text")) {
            if (v[B_TEXT] == NULL || v[B_TEXT]->type != J_STR)
                return failf(c, -EINVAL, "field '%s.text' must be a string", path);
            if (system ? add_text(c, &ir->sys_first, &ir->sys_last, v[B_TEXT])
                       : add_text(c, &m->first, &m->last, v[B_TEXT]))
                return c->rc;
        } else if (str_is(t, "image")) {
            if (anthropic_image(c, ir, m, v[B_SOURCE], path))
                return c->rc;
        } else if (str_is(t, "tool_use")) {
            if (v[B_ID] == NULL || v[B_ID]->type != J_STR || v[B_ID]->n == 0)
                return failf(c, -EINVAL, "field '%s.id' must be a non-empty string", path);
            if (v[B_NAME] == NULL || v[B_NAME]->type != J_STR || v[B_NAME]->n == 0)
                return failf(c, -EINVAL, "field '%s.name' must be a non-empty string", path);
            if (v[B_INPUT] == NULL || v[B_INPUT]->type != J_OBJ)
                return failf(c, -EINVAL, "field '%s.input' must be an object", path);
            part_t *p = part_new(c, P_CALL);
            if (p == NULL)
                return c->rc;
            p->id = v[B_ID];
            p->name = v[B_NAME];
            p->args = v[B_INPUT];
            ir->calls++;
            part_add(&m->first, &m->last, p);
        } else {
            const jnode_t *id = v[B_TOOL_USE_ID];
            if (id == NULL || id->type != J_STR)
                return failf(c, -EINVAL, "field '%s.tool_use_id' must be a string", path);
            if (want(c, v[B_IS_ERROR], J_BOOL, path, "is_error"))
                return c->rc;
            if (v[B_IS_ERROR] != NULL && v[B_IS_ERROR]->b)
                return refuse(c, path, "is_error", "an error flag on a tool result has no equivalent");
            part_t *call = find_call_by_id(ir, id);
            if (call == NULL)
                return failf(c, -EINVAL, "field '%s.tool_use_id': no earlier tool_use has this id", path);
            part_t *p = result_new(c, call, id);
            if (p == NULL)
                return c->rc;
            const jnode_t *ct = v[B_CONTENT];
            if (ct == NULL) {
                p->text = "";
            } else if (ct->type == J_STR) {
                p->text = ct->s;
                p->text_len = ct->n;
            } else if (ct->type == J_ARR) {
                /* text blocks only, joined */
                part_t *tf = NULL, *tl = NULL;
                char rpath[256];
                snprintf(rpath, sizeof rpath, "%s.content", path);
                msg_t tmp = {.role = R_USER};
                size_t total = 0;
                if (anthropic_blocks(c, ir, &tmp, ct, rpath, false))
                    return c->rc;
                for (part_t *q = tmp.first; q != NULL; q = q->next) {
                    if (q->kind != P_TEXT)
                        return refuse(c, rpath, "", "a tool result with non-text content");
                    total += q->text_len;
                }
                (void)tf;
                (void)tl;
                char *buf = jarena_alloc(&c->arena, total + 1);
                if (buf == NULL)
                    return oom(c);
                size_t at = 0;
                for (part_t *q = tmp.first; q != NULL; q = q->next) {
                    memcpy(buf + at, q->text, q->text_len);
                    at += q->text_len;
                }
                p->text = buf;
                p->text_len = total;
            } else {
                return failf(c, -EINVAL, "field '%s.content' must be a string or an array", path);
            }
            part_add(&m->first, &m->last, p);
        }
    }
    return 0;
}

enum {
    A_MODEL, A_MESSAGES, A_SYSTEM, A_MAX_TOKENS, A_STREAM, A_TEMPERATURE, A_TOP_P, A_TOP_K, A_STOP, A_TOOLS,
    A_TOOL_CHOICE, A_METADATA, A_THINKING, A_SERVICE_TIER, A_COUNT
};

static int parse_anthropic(ctx_t *c, ir_t *ir, const jnode_t *root)
{
    static const char *const names[A_COUNT] = {
        "model", "messages", "system", "max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences",
        "tools", "tool_choice", "metadata", "thinking", "service_tier",
    };
    const jnode_t *v[A_COUNT];
    if (fields(c, root, "", names, A_COUNT, v) || want(c, v[A_STREAM], J_BOOL, "", "stream"))
        return c->rc;
    ir->stream = v[A_STREAM] != NULL && v[A_STREAM]->b;
    if (v[A_MAX_TOKENS] == NULL)
        return failf(c, -EINVAL, "field 'max_tokens' is required");
    if (set_max(c, ir, v[A_MAX_TOKENS], "max_tokens") || set_number(c, &ir->temperature, v[A_TEMPERATURE], "temperature") ||
        set_number(c, &ir->top_p, v[A_TOP_P], "top_p") || set_integer(c, &ir->top_k, v[A_TOP_K], "top_k"))
        return c->rc;
    if (v[A_STOP] != NULL && set_stop(c, ir, v[A_STOP], "stop_sequences", false))
        return c->rc;
    if (v[A_SERVICE_TIER] != NULL && !str_is(v[A_SERVICE_TIER], "auto"))
        return refuse(c, "", "service_tier", "a service tier has no equivalent");
    if (v[A_THINKING] != NULL) {
        const jnode_t *t = v[A_THINKING];
        if (!(t->type == J_OBJ && t->count == 1 && str_is(t->first, "disabled") && key_match(t->first, "type", false)))
            return refuse(c, "", "thinking", "extended thinking settings have no equivalent");
    }
    if (v[A_METADATA] != NULL) {
        static const char *const mnames[] = {"user_id"};
        const jnode_t *u[1];
        if (want(c, v[A_METADATA], J_OBJ, "", "metadata") || fields(c, v[A_METADATA], "metadata", mnames, 1, u) ||
            want(c, u[0], J_STR, "metadata", "user_id"))
            return c->rc;
        if (u[0] != NULL) {
            ir->user.v = u[0];
            ir->user.field = "metadata.user_id";
        }
    }
    if (v[A_SYSTEM] != NULL && anthropic_blocks(c, ir, NULL, v[A_SYSTEM], "system", true))
        return c->rc;
    if (v[A_TOOLS] != NULL) {
        if (v[A_TOOLS]->type != J_ARR)
            return failf(c, -EINVAL, "field 'tools' must be an array");
        size_t i = 0;
        for (const jnode_t *e = v[A_TOOLS]->first; e != NULL; e = e->next, i++) {
            char path[256];
            snprintf(path, sizeof path, "tools[%zu]", i);
            static const char *const tnames[] = {"name", "description", "input_schema", "type", "cache_control"};
            const jnode_t *t[5];
            if (e->type != J_OBJ)
                return failf(c, -EINVAL, "field '%s' must be an object", path);
            if (fields(c, e, path, tnames, 5, t) || want(c, t[1], J_STR, path, "description"))
                return c->rc;
            if (t[3] != NULL && !str_is(t[3], "custom"))
                return refuse(c, path, "type", "server tools have no equivalent");
            if (t[0] == NULL || t[0]->type != J_STR || t[0]->n == 0)
                return failf(c, -EINVAL, "field '%s.name' must be a non-empty string", path);
            if (t[2] == NULL || t[2]->type != J_OBJ)
                return failf(c, -EINVAL, "field '%s.input_schema' must be an object", path);
            if (add_tool(c, ir, t[0], t[1], t[2]))
                return c->rc;
        }
    }
    if (v[A_TOOL_CHOICE] != NULL) {
        static const char *const cnames[] = {"type", "name", "disable_parallel_tool_use"};
        const jnode_t *t[3];
        if (want(c, v[A_TOOL_CHOICE], J_OBJ, "", "tool_choice") ||
            fields(c, v[A_TOOL_CHOICE], "tool_choice", cnames, 3, t) ||
            want(c, t[2], J_BOOL, "tool_choice", "disable_parallel_tool_use"))
            return c->rc;
        ir->tc_field = "tool_choice";
        if (str_is(t[0], "auto"))
            ir->tc = TC_AUTO;
        else if (str_is(t[0], "any"))
            ir->tc = TC_ANY;
        else if (str_is(t[0], "none"))
            ir->tc = TC_NONE;
        else if (str_is(t[0], "tool"))
            ir->tc = TC_TOOL;
        else
            return failf(c, -EINVAL, "field 'tool_choice.type' must be auto, any, tool or none");
        if (ir->tc == TC_TOOL) {
            if (t[1] == NULL || t[1]->type != J_STR || t[1]->n == 0)
                return failf(c, -EINVAL, "field 'tool_choice.name' must be a non-empty string");
            ir->tc_names[0] = t[1];
            ir->tc_nnames = 1;
        } else if (t[1] != NULL) {
            return failf(c, -EINVAL, "field 'tool_choice.name' is only allowed with type tool");
        }
        if (t[2] != NULL && t[2]->b) {
            ir->parallel_false.v = t[2];
            ir->parallel_false.field = "tool_choice.disable_parallel_tool_use";
        }
    }
    if (v[A_MESSAGES] == NULL || v[A_MESSAGES]->type != J_ARR)
        return failf(c, -EINVAL, "field 'messages' must be an array");
    size_t mi = 0;
    for (const jnode_t *e = v[A_MESSAGES]->first; e != NULL; e = e->next, mi++) {
        char path[256], cpath[64];
        snprintf(path, sizeof path, "messages[%zu]", mi);
        snprintf(cpath, sizeof cpath, "messages[%zu].content", mi);
        static const char *const mnames[] = {"role", "content"};
        const jnode_t *m[2];
        if (e->type != J_OBJ)
            return failf(c, -EINVAL, "field '%s' must be an object", path);
        if (fields(c, e, path, mnames, 2, m))
            return c->rc;
        role_t r;
        if (str_is(m[0], "user"))
            r = R_USER;
        else if (str_is(m[0], "assistant"))
            r = R_ASSISTANT;
        else
            return failf(c, -EINVAL, "field '%s.role' must be user or assistant", path);
        if (m[1] == NULL)
            return failf(c, -EINVAL, "field '%s' is required", cpath);
        msg_t *msg = msg_new(c, ir, r);
        if (msg == NULL || anthropic_blocks(c, ir, msg, m[1], cpath, false))
            return c->rc;
    }
    return 0;
}

/* ---- Gemini parser ---------------------------------------------------------------------------- */

static int gemini_parts(ctx_t *c, ir_t *ir, msg_t *m, const jnode_t *parts, const char *ppath, bool system)
{
    if (parts == NULL || parts->type != J_ARR)
        return failf(c, -EINVAL, "field '%s' must be an array", ppath);
    size_t pi = 0;
    for (const jnode_t *e = parts->first; e != NULL; e = e->next, pi++) {
        char path[256];
        snprintf(path, sizeof path, "%s[%zu]", ppath, pi);
        if (e->type != J_OBJ)
            return failf(c, -EINVAL, "field '%s' must be an object", path);
        enum { G_TEXT, G_INLINE, G_FILE, G_CALL, G_RESP, G_SIG, G_THOUGHT, G_COUNT };
        static const char *const names[G_COUNT] = {"text", "inlineData", "fileData", "functionCall",
                                                   "functionResponse", "thoughtSignature", "thought"};
        const jnode_t *v[G_COUNT];
        if (fields(c, e, path, names, G_COUNT, v))
            return c->rc;
        if (v[G_THOUGHT] != NULL && !(v[G_THOUGHT]->type == J_BOOL && !v[G_THOUGHT]->b))
            return refuse(c, path, "thought", "thought parts have no equivalent");
        int kinds = 0, kind = -1;
        for (int i = G_TEXT; i <= G_RESP; i++)
            if (v[i] != NULL)
                kinds++, kind = i;
        if (kinds != 1)
            return failf(c, -EINVAL, "field '%s' must hold exactly one of text, inlineData, fileData, functionCall, "
                                     "functionResponse", path);
        if (system && kind != G_TEXT)
            return refuse(c, path, "", "a system instruction part other than text");
        if (kind == G_TEXT) {
            if (want(c, v[G_TEXT], J_STR, path, "text"))
                return c->rc;
            if (system ? add_text(c, &ir->sys_first, &ir->sys_last, v[G_TEXT])
                       : add_text(c, &m->first, &m->last, v[G_TEXT]))
                return c->rc;
        } else if (kind == G_INLINE || kind == G_FILE) {
            char ipath[256];
            snprintf(ipath, sizeof ipath, "%s.%s", path, names[kind]);
            static const char *const inames[] = {"mimeType", "data"};
            static const char *const fnames[] = {"mimeType", "fileUri"};
            const jnode_t *d[2];
            if (want(c, v[kind], J_OBJ, path, names[kind]) ||
                fields(c, v[kind], ipath, kind == G_INLINE ? inames : fnames, 2, d) ||
                want(c, d[0], J_STR, ipath, "mimeType") ||
                want(c, d[1], J_STR, ipath, kind == G_INLINE ? "data" : "fileUri"))
                return c->rc;
            if (d[1] == NULL || d[1]->type != J_STR)
                return failf(c, -EINVAL, "field '%s.%s' must be a string", ipath, kind == G_INLINE ? "data" : "fileUri");
            bool image = d[0] != NULL && d[0]->n > 6 && memcmp(d[0]->s, "image/", 6) == 0;
            if (!image)
                return refuse(c, ipath, "mimeType", "only images have an equivalent");
            part_t *p = part_new(c, P_IMAGE);
            if (p == NULL)
                return c->rc;
            p->mime = d[0]->s;
            p->mime_len = d[0]->n;
            if (kind == G_INLINE) {
                p->data = d[1]->s;
                p->data_len = d[1]->n;
            } else {
                static const char files[] = "https://generativelanguage.googleapis.com/";
                char upath[256];
                snprintf(upath, sizeof upath, "%s.fileUri", ipath);
                if (d[1]->n >= sizeof files - 1 && memcmp(d[1]->s, files, sizeof files - 1) == 0)
                    return refuse(c, ipath, "fileUri", "a Gemini Files API URI");
                if (image_from_url(c, p, d[1], upath))
                    return c->rc;
                if (!p->img_url)
                    return failf(c, -EINVAL, "field '%s' must be an http(s) URI", upath);
                p->mime = d[0]->s; /* image_from_url does not set it for URLs */
                p->mime_len = d[0]->n;
            }
            if (add_image(c, ir, m, p, path))
                return c->rc;
        } else if (kind == G_CALL) {
            char cpath[256];
            snprintf(cpath, sizeof cpath, "%s.functionCall", path);
            static const char *const cnames[] = {"name", "args", "id"};
            const jnode_t *d[3];
            if (m->role != R_ASSISTANT)
                return failf(c, -EINVAL, "field '%s' is only allowed in a model turn", cpath);
            if (want(c, v[kind], J_OBJ, path, "functionCall") || fields(c, v[kind], cpath, cnames, 3, d) ||
                want(c, d[1], J_OBJ, cpath, "args") || want(c, d[2], J_STR, cpath, "id"))
                return c->rc;
            if (d[0] == NULL || d[0]->type != J_STR || d[0]->n == 0)
                return failf(c, -EINVAL, "field '%s.name' must be a non-empty string", cpath);
            part_t *p = part_new(c, P_CALL);
            if (p == NULL)
                return c->rc;
            p->name = d[0];
            if (d[1] != NULL) {
                p->args = d[1];
            } else {
                if ((p->args = mkobj(c)) == NULL)
                    return c->rc;
            }
            if (d[2] != NULL && d[2]->n > 0) {
                p->id = d[2];
            } else {
                char id[32];
                int n = snprintf(id, sizeof id, "call_%zu", ir->calls);
                if ((p->id = mkstr(c, id, (size_t)n)) == NULL)
                    return c->rc;
            }
            ir->calls++;
            part_add(&m->first, &m->last, p);
        } else {
            char rpath[256];
            snprintf(rpath, sizeof rpath, "%s.functionResponse", path);
            static const char *const rnames[] = {"name", "response", "id"};
            const jnode_t *d[3];
            if (m->role != R_USER)
                return failf(c, -EINVAL, "field '%s' is only allowed in a user turn", rpath);
            if (want(c, v[kind], J_OBJ, path, "functionResponse") || fields(c, v[kind], rpath, rnames, 3, d) ||
                want(c, d[2], J_STR, rpath, "id"))
                return c->rc;
            if (d[0] == NULL || d[0]->type != J_STR || d[0]->n == 0)
                return failf(c, -EINVAL, "field '%s.name' must be a non-empty string", rpath);
            if (d[1] == NULL || d[1]->type != J_OBJ)
                return failf(c, -EINVAL, "field '%s.response' must be an object", rpath);
            /* the call answered: by id when given, else the earliest unanswered call of that name */
            part_t *call = NULL;
            if (d[2] != NULL && d[2]->n > 0) {
                call = find_call_by_id(ir, d[2]);
            } else {
                for (msg_t *q = ir->msgs; q != NULL && call == NULL; q = q->next)
                    for (part_t *p = q->first; p != NULL; p = p->next)
                        if (p->kind == P_CALL && !p->answered && p->name->n == d[0]->n &&
                            memcmp(p->name->s, d[0]->s, d[0]->n) == 0) {
                            call = p;
                            break;
                        }
            }
            if (call == NULL)
                return failf(c, -EINVAL, "field '%s.name': no earlier unanswered functionCall of this name", rpath);
            part_t *p = result_new(c, call, call->id);
            if (p == NULL)
                return c->rc;
            const jnode_t *r = d[1];
            if (r->count == 1 && key_match(r->first, "content", false) && r->first->type == J_STR) {
                p->text = r->first->s;
                p->text_len = r->first->n;
            } else {
                p->resp = r;
            }
            part_add(&m->first, &m->last, p);
        }
    }
    return 0;
}

enum {
    GC_TEMPERATURE, GC_TOP_P, GC_TOP_K, GC_MAX, GC_STOP, GC_CANDIDATES, GC_PRESENCE, GC_FREQUENCY, GC_SEED,
    GC_MIME, GC_SCHEMA, GC_JSON_SCHEMA, GC_THINKING, GC_RESPONSE_LOGPROBS, GC_LOGPROBS, GC_MODALITIES, GC_COUNT
};

static int gemini_generation_config(ctx_t *c, ir_t *ir, const jnode_t *g)
{
    static const char *const names[GC_COUNT] = {
        "temperature",     "topP",           "topK",  "maxOutputTokens", "stopSequences",
        "candidateCount",  "presencePenalty", "frequencyPenalty", "seed", "responseMimeType",
        "responseSchema",  "responseJsonSchema", "thinkingConfig", "responseLogprobs", "logprobs",
        "responseModalities",
    };
    const jnode_t *v[GC_COUNT];
    const char *p = "generationConfig";
    if (want(c, g, J_OBJ, "", p) || fields(c, g, p, names, GC_COUNT, v))
        return c->rc;
    int64_t n;
    if (v[GC_CANDIDATES] != NULL && (!num_count(v[GC_CANDIDATES], &n) || n != 1))
        return refuse(c, p, "candidateCount", "more than one candidate");
    if (v[GC_SCHEMA] != NULL)
        return refuse(c, p, "responseSchema", "a response schema has no faithful equivalent");
    if (v[GC_JSON_SCHEMA] != NULL)
        return refuse(c, p, "responseJsonSchema", "a response schema has no faithful equivalent");
    if (v[GC_THINKING] != NULL)
        return refuse(c, p, "thinkingConfig", "thinking settings have no equivalent");
    if (v[GC_RESPONSE_LOGPROBS] != NULL && !(v[GC_RESPONSE_LOGPROBS]->type == J_BOOL && !v[GC_RESPONSE_LOGPROBS]->b))
        return refuse(c, p, "responseLogprobs", "log probabilities have no equivalent");
    if (v[GC_LOGPROBS] != NULL)
        return refuse(c, p, "logprobs", "log probabilities have no equivalent");
    if (v[GC_MODALITIES] != NULL && !(v[GC_MODALITIES]->type == J_ARR && v[GC_MODALITIES]->count == 1 &&
                                      str_is(v[GC_MODALITIES]->first, "TEXT")))
        return refuse(c, p, "responseModalities", "output modalities other than text");
    if (v[GC_MIME] != NULL) {
        if (str_is(v[GC_MIME], "application/json")) {
            ir->json_mode.v = v[GC_MIME];
            ir->json_mode.field = "generationConfig.responseMimeType";
        } else if (!str_is(v[GC_MIME], "text/plain")) {
            return refuse(c, p, "responseMimeType", "this response type has no equivalent");
        }
    }
    if (set_number(c, &ir->temperature, v[GC_TEMPERATURE], "generationConfig.temperature") ||
        set_number(c, &ir->top_p, v[GC_TOP_P], "generationConfig.topP") ||
        set_integer(c, &ir->top_k, v[GC_TOP_K], "generationConfig.topK") ||
        set_max(c, ir, v[GC_MAX], "generationConfig.maxOutputTokens") ||
        set_number(c, &ir->presence, v[GC_PRESENCE], "generationConfig.presencePenalty") ||
        set_number(c, &ir->frequency, v[GC_FREQUENCY], "generationConfig.frequencyPenalty") ||
        set_integer(c, &ir->seed, v[GC_SEED], "generationConfig.seed"))
        return c->rc;
    if (v[GC_STOP] != NULL && set_stop(c, ir, v[GC_STOP], "generationConfig.stopSequences", false))
        return c->rc;
    return 0;
}

enum { GT_CONTENTS, GT_SYSTEM, GT_TOOLS, GT_TOOL_CONFIG, GT_GEN, GT_SAFETY, GT_CACHED, GT_COUNT };

static int parse_gemini(ctx_t *c, ir_t *ir, const jnode_t *root)
{
    static const char *const names[GT_COUNT] = {"contents",         "systemInstruction", "tools",        "toolConfig",
                                                "generationConfig", "safetySettings",    "cachedContent"};
    const jnode_t *v[GT_COUNT];
    if (fields(c, root, "", names, GT_COUNT, v))
        return c->rc;
    if (v[GT_SAFETY] != NULL)
        return refuse(c, "", "safetySettings", "safety settings have no equivalent");
    if (v[GT_CACHED] != NULL)
        return refuse(c, "", "cachedContent", "cached content has no equivalent");
    if (v[GT_GEN] != NULL && gemini_generation_config(c, ir, v[GT_GEN]))
        return c->rc;
    if (v[GT_SYSTEM] != NULL) {
        static const char *const snames[] = {"parts", "role"};
        const jnode_t *s[2];
        if (want(c, v[GT_SYSTEM], J_OBJ, "", "systemInstruction") ||
            fields(c, v[GT_SYSTEM], "systemInstruction", snames, 2, s) ||
            want(c, s[1], J_STR, "systemInstruction", "role") ||
            gemini_parts(c, ir, NULL, s[0], "systemInstruction.parts", true))
            return c->rc;
    }
    if (v[GT_TOOLS] != NULL) {
        if (v[GT_TOOLS]->type != J_ARR)
            return failf(c, -EINVAL, "field 'tools' must be an array");
        size_t i = 0;
        for (const jnode_t *e = v[GT_TOOLS]->first; e != NULL; e = e->next, i++) {
            char path[256];
            snprintf(path, sizeof path, "tools[%zu]", i);
            static const char *const tnames[] = {"functionDeclarations"};
            const jnode_t *t[1];
            if (e->type != J_OBJ)
                return failf(c, -EINVAL, "field '%s' must be an object", path);
            if (fields(c, e, path, tnames, 1, t))
                return c->rc;
            if (t[0] == NULL || t[0]->type != J_ARR)
                return failf(c, -EINVAL, "field '%s.functionDeclarations' must be an array", path);
            size_t k = 0;
            for (const jnode_t *d = t[0]->first; d != NULL; d = d->next, k++) {
                char dpath[256];
                snprintf(dpath, sizeof dpath, "%s.functionDeclarations[%zu]", path, k);
                static const char *const dnames[] = {"name", "description", "parameters", "parametersJsonSchema"};
                const jnode_t *f[4];
                if (d->type != J_OBJ)
                    return failf(c, -EINVAL, "field '%s' must be an object", dpath);
                if (fields(c, d, dpath, dnames, 4, f) || want(c, f[1], J_STR, dpath, "description") ||
                    want(c, f[2], J_OBJ, dpath, "parameters") || want(c, f[3], J_OBJ, dpath, "parametersJsonSchema"))
                    return c->rc;
                if (f[0] == NULL || f[0]->type != J_STR || f[0]->n == 0)
                    return failf(c, -EINVAL, "field '%s.name' must be a non-empty string", dpath);
                if (f[2] != NULL && f[3] != NULL)
                    return failf(c, -EINVAL, "field '%s': parameters and parametersJsonSchema are exclusive", dpath);
                if (add_tool(c, ir, f[0], f[1], f[2] != NULL ? f[2] : f[3]))
                    return c->rc;
            }
        }
    }
    if (v[GT_TOOL_CONFIG] != NULL) {
        static const char *const tnames[] = {"functionCallingConfig"};
        static const char *const fnames[] = {"mode", "allowedFunctionNames"};
        const jnode_t *t[1], *f[2];
        if (want(c, v[GT_TOOL_CONFIG], J_OBJ, "", "toolConfig") ||
            fields(c, v[GT_TOOL_CONFIG], "toolConfig", tnames, 1, t) ||
            want(c, t[0], J_OBJ, "toolConfig", "functionCallingConfig"))
            return c->rc;
        if (t[0] != NULL) {
            const char *fp = "toolConfig.functionCallingConfig";
            if (fields(c, t[0], fp, fnames, 2, f) || want(c, f[1], J_ARR, fp, "allowedFunctionNames"))
                return c->rc;
            ir->tc_field = fp;
            if (f[0] == NULL || str_is(f[0], "AUTO") || str_is(f[0], "MODE_UNSPECIFIED"))
                ir->tc = TC_AUTO;
            else if (str_is(f[0], "ANY"))
                ir->tc = TC_ANY;
            else if (str_is(f[0], "NONE"))
                ir->tc = TC_NONE;
            else
                return refuse(c, fp, "mode", "this function calling mode has no equivalent");
            if (f[1] != NULL) {
                if (ir->tc != TC_ANY)
                    return refuse(c, fp, "allowedFunctionNames", "allowed names outside mode ANY");
                if (f[1]->count > sizeof ir->tc_names / sizeof ir->tc_names[0])
                    return failf(c, -EINVAL, "field '%s.allowedFunctionNames': too many names", fp);
                for (const jnode_t *s = f[1]->first; s != NULL; s = s->next) {
                    if (s->type != J_STR)
                        return failf(c, -EINVAL, "field '%s.allowedFunctionNames' must hold strings", fp);
                    ir->tc_names[ir->tc_nnames++] = s;
                }
                if (ir->tc_nnames == 1)
                    ir->tc = TC_TOOL;
            }
        }
    }
    if (v[GT_CONTENTS] == NULL || v[GT_CONTENTS]->type != J_ARR)
        return failf(c, -EINVAL, "field 'contents' must be an array");
    size_t mi = 0;
    for (const jnode_t *e = v[GT_CONTENTS]->first; e != NULL; e = e->next, mi++) {
        char path[256], ppath[64];
        snprintf(path, sizeof path, "contents[%zu]", mi);
        snprintf(ppath, sizeof ppath, "contents[%zu].parts", mi);
        static const char *const cnames[] = {"role", "parts"};
        const jnode_t *m[2];
        if (e->type != J_OBJ)
            return failf(c, -EINVAL, "field '%s' must be an object", path);
        if (fields(c, e, path, cnames, 2, m))
            return c->rc;
        role_t r;
        if (m[0] == NULL || str_is(m[0], "user"))
            r = R_USER;
        else if (str_is(m[0], "model"))
            r = R_ASSISTANT;
        else
            return failf(c, -EINVAL, "field '%s.role' must be user or model", path);
        msg_t *msg = msg_new(c, ir, r);
        if (msg == NULL || gemini_parts(c, ir, msg, m[1], ppath, false))
            return c->rc;
    }
    return 0;
}

/* ---- JSON writer ------------------------------------------------------------------------------ */

/* The writer's first error becomes the translation's (the first error wins). */
static void jw_error(jw_t *w, int err)
{
    ctx_t *c = w->data;
    if (err == -E2BIG)
        failf(c, err, "the translated request is larger than the limit");
    else
        oom(c);
}

static void jw_start(jw_t *w, ctx_t *c, wipe_buf_t *out)
{
    jw_begin(w, out);
    w->error_cb = jw_error;
    w->data = c;
}

static void jw_opt(jw_t *w, const char *key, const opt_t *o)
{
    if (o->v != NULL) {
        jw_key(w, key);
        jw_node(w, o->v);
    }
}

/* key: [nodes...], written only when there are any (stop sequences, allowed function names). */
static void jw_node_list(jw_t *w, const char *key, const jnode_t *const *nodes, size_t n)
{
    if (n == 0)
        return;
    jw_key(w, key);
    jw_open(w, '[');
    for (size_t i = 0; i < n; i++)
        jw_node(w, nodes[i]);
    jw_close(w, ']');
}

/* {"type":"text","text":...}: a text block of OpenAI content parts and Anthropic system blocks. */
static void write_text_block(jw_t *w, const part_t *p)
{
    jw_open(w, '{');
    jw_key(w, "type");
    jw_str(w, "text");
    jw_key(w, "text");
    jw_strn(w, p->text, p->text_len);
    jw_close(w, '}');
}

/* A function declaration: {"name","description"?,<schema_key>}, the same in every format but for
 * the schema's name; no schema is written as an empty object schema. */
static void write_tool_decl(jw_t *w, const tool_t *t, const char *schema_key)
{
    jw_open(w, '{');
    jw_key(w, "name");
    jw_node(w, t->name);
    if (t->desc != NULL) {
        jw_key(w, "description");
        jw_node(w, t->desc);
    }
    jw_key(w, schema_key);
    if (t->schema != NULL)
        jw_node(w, t->schema);
    else
        jw_value(w, "{\"type\":\"object\",\"properties\":{}}", 33);
    jw_close(w, '}');
}

/* "content": a tool result as one string (OpenAI, Anthropic): its text, or the JSON text of the
 * response object a Gemini functionResponse gave. */
static void write_result_content(jw_t *w, const part_t *p)
{
    jw_key(w, "content");
    if (p->resp != NULL)
        jw_node_as_string(w, p->resp);
    else
        jw_strn(w, p->text, p->text_len);
}

/* The message after the turn that starts at m: consecutive messages of one role are one turn
 * (Anthropic and Gemini require alternation). */
static const msg_t *turn_end(const msg_t *m)
{
    const msg_t *end = m->next;
    while (end != NULL && end->role == m->role)
        end = end->next;
    return end;
}

/* ---- target checks ---------------------------------------------------------------------------- */

static int refuse_opt(ctx_t *c, const opt_t *o, const char *why)
{
    return o->v != NULL ? refuse(c, o->field, "", why) : 0;
}

static int check_target(ctx_t *c, const ir_t *ir)
{
    if (c->to == XLATE_OPENAI_CHAT) {
        if (refuse_opt(c, &ir->top_k, "top-k sampling has no equivalent"))
            return c->rc;
    }
    if (c->to == XLATE_ANTHROPIC) {
        if (refuse_opt(c, &ir->presence, "penalties have no equivalent") ||
            refuse_opt(c, &ir->frequency, "penalties have no equivalent") ||
            refuse_opt(c, &ir->seed, "a seed has no equivalent") ||
            refuse_opt(c, &ir->json_mode, "JSON mode has no equivalent"))
            return c->rc;
    }
    if (c->to == XLATE_GEMINI) {
        if (refuse_opt(c, &ir->parallel_false, "disabling parallel tool calls has no equivalent"))
            return c->rc;
    }
    if (c->to != XLATE_GEMINI && ir->tc == TC_ANY && ir->tc_nnames > 1)
        return refuse(c, ir->tc_field, "allowedFunctionNames", "several allowed function names");
    if (c->to == XLATE_ANTHROPIC && ir->nstop > 0) {
        /* nothing: any number of stop sequences */
    }
    if (c->to != XLATE_OPENAI_CHAT && ir->msgs == NULL)
        return failf(c, -EINVAL, "field 'messages': no user or assistant message, cannot be translated to %s",
                     xlate_req_format_name(c->to));
    if (c->to == XLATE_ANTHROPIC && ir->msgs != NULL && ir->msgs->role != R_USER)
        return failf(c, -EINVAL, "field '%s[0].role': the conversation must start with a user turn for anthropic",
                     c->from == XLATE_GEMINI ? "contents" : "messages");
    return 0;
}

/* ---- OpenAI writer ---------------------------------------------------------------------------- */

static void write_image_url(jw_t *w, const part_t *p)
{
    jw_open(w, '{');
    jw_key(w, "type");
    jw_str(w, "image_url");
    jw_key(w, "image_url");
    jw_open(w, '{');
    jw_key(w, "url");
    if (p->img_url) {
        jw_strn(w, p->data, p->data_len);
    } else {
        jw_sep(w);
        jw_put(w, "\"data:", 6);
        jw_str_body(w, p->mime, p->mime_len);
        jw_put(w, ";base64,", 8);
        jw_str_body(w, p->data, p->data_len);
        jw_put(w, "\"", 1);
    }
    jw_close(w, '}');
    jw_close(w, '}');
}

static void write_openai(ctx_t *c, jw_t *w, const ir_t *ir, const char *model, int64_t max_out)
{
    jw_open(w, '{');
    jw_key(w, "model");
    jw_str(w, model);
    jw_key(w, "messages");
    jw_open(w, '[');
    if (ir->sys_first != NULL) {
        jw_open(w, '{');
        jw_key(w, "role");
        jw_str(w, "system");
        jw_key(w, "content");
        if (ir->sys_first == ir->sys_last) {
            jw_strn(w, ir->sys_first->text, ir->sys_first->text_len);
        } else {
            jw_open(w, '[');
            for (const part_t *p = ir->sys_first; p != NULL; p = p->next)
                write_text_block(w, p);
            jw_close(w, ']');
        }
        jw_close(w, '}');
    }
    for (const msg_t *m = ir->msgs; m != NULL; m = m->next) {
        /* tool results first, each its own tool message */
        size_t ntext = 0, nimage = 0, ncall = 0;
        const part_t *only_text = NULL;
        for (const part_t *p = m->first; p != NULL; p = p->next) {
            if (p->kind == P_RESULT) {
                jw_open(w, '{');
                jw_key(w, "role");
                jw_str(w, "tool");
                jw_key(w, "tool_call_id");
                jw_strn(w, p->id->s, p->id->n);
                write_result_content(w, p);
                jw_close(w, '}');
            } else if (p->kind == P_TEXT) {
                ntext++;
                only_text = p;
            } else if (p->kind == P_IMAGE) {
                nimage++;
            } else {
                ncall++;
            }
        }
        if (ntext + nimage + ncall == 0)
            continue;
        jw_open(w, '{');
        jw_key(w, "role");
        jw_str(w, m->role == R_USER ? "user" : "assistant");
        jw_key(w, "content");
        if (ntext == 0 && nimage == 0) {
            jw_value(w, "null", 4);
        } else if (ntext == 1 && nimage == 0) {
            jw_strn(w, only_text->text, only_text->text_len);
        } else {
            jw_open(w, '[');
            for (const part_t *p = m->first; p != NULL; p = p->next) {
                if (p->kind == P_TEXT)
                    write_text_block(w, p);
                else if (p->kind == P_IMAGE)
                    write_image_url(w, p);
            }
            jw_close(w, ']');
        }
        if (ncall > 0) {
            jw_key(w, "tool_calls");
            jw_open(w, '[');
            for (const part_t *p = m->first; p != NULL; p = p->next) {
                if (p->kind != P_CALL)
                    continue;
                jw_open(w, '{');
                jw_key(w, "id");
                jw_strn(w, p->id->s, p->id->n);
                jw_key(w, "type");
                jw_str(w, "function");
                jw_key(w, "function");
                jw_open(w, '{');
                jw_key(w, "name");
                jw_strn(w, p->name->s, p->name->n);
                jw_key(w, "arguments");
                jw_node_as_string(w, p->args);
                jw_close(w, '}');
                jw_close(w, '}');
            }
            jw_close(w, ']');
        }
        jw_close(w, '}');
    }
    jw_close(w, ']');
    if (ir->stream) {
        jw_key(w, "stream");
        jw_value(w, "true", 4);
        jw_key(w, "stream_options");
        jw_value(w, "{\"include_usage\":true}", 22);
    }
    if (max_out >= 0) {
        jw_key(w, "max_tokens");
        jw_int(w, max_out);
    }
    jw_opt(w, "temperature", &ir->temperature);
    jw_opt(w, "top_p", &ir->top_p);
    jw_opt(w, "presence_penalty", &ir->presence);
    jw_opt(w, "frequency_penalty", &ir->frequency);
    jw_opt(w, "seed", &ir->seed);
    jw_opt(w, "user", &ir->user);
    jw_node_list(w, "stop", ir->stop, ir->nstop);
    if (ir->json_mode.v != NULL) {
        jw_key(w, "response_format");
        jw_value(w, "{\"type\":\"json_object\"}", 22);
    }
    if (ir->tools != NULL) {
        jw_key(w, "tools");
        jw_open(w, '[');
        for (const tool_t *t = ir->tools; t != NULL; t = t->next) {
            jw_open(w, '{');
            jw_key(w, "type");
            jw_str(w, "function");
            jw_key(w, "function");
            write_tool_decl(w, t, "parameters");
            jw_close(w, '}');
        }
        jw_close(w, ']');
    }
    if (ir->tc != TC_UNSET) {
        jw_key(w, "tool_choice");
        if (ir->tc == TC_AUTO)
            jw_str(w, "auto");
        else if (ir->tc == TC_NONE)
            jw_str(w, "none");
        else if (ir->tc == TC_ANY)
            jw_str(w, "required");
        else {
            jw_open(w, '{');
            jw_key(w, "type");
            jw_str(w, "function");
            jw_key(w, "function");
            jw_open(w, '{');
            jw_key(w, "name");
            jw_node(w, ir->tc_names[0]);
            jw_close(w, '}');
            jw_close(w, '}');
        }
    }
    if (ir->parallel_false.v != NULL) {
        jw_key(w, "parallel_tool_calls");
        jw_value(w, "false", 5);
    }
    jw_close(w, '}');
    (void)c;
}

/* ---- Anthropic writer ------------------------------------------------------------------------- */

static bool anthropic_media_ok(const part_t *p)
{
    static const char *const ok[] = {"image/jpeg", "image/png", "image/gif", "image/webp"};
    for (size_t i = 0; i < 4; i++)
        if (p->mime_len == strlen(ok[i]) && memcmp(p->mime, ok[i], p->mime_len) == 0)
            return true;
    return false;
}

static int write_anthropic(ctx_t *c, jw_t *w, const ir_t *ir, const char *model, int64_t max_out)
{
    jw_open(w, '{');
    jw_key(w, "model");
    jw_str(w, model);
    jw_key(w, "max_tokens");
    jw_int(w, max_out);
    if (ir->sys_first != NULL) {
        jw_key(w, "system");
        jw_open(w, '[');
        for (const part_t *p = ir->sys_first; p != NULL; p = p->next)
            if (p->text_len > 0)
                write_text_block(w, p);
        jw_close(w, ']');
    }
    jw_key(w, "messages");
    jw_open(w, '[');
    for (const msg_t *m = ir->msgs; m != NULL;) {
        /* a turn: this message and the following ones of the same role */
        const msg_t *end = turn_end(m);
        jw_open(w, '{');
        jw_key(w, "role");
        jw_str(w, m->role == R_USER ? "user" : "assistant");
        jw_key(w, "content");
        jw_open(w, '[');
        for (int pass = 0; pass < 2; pass++) /* tool results must come first in a user turn */
            for (const msg_t *q = m; q != end; q = q->next)
                for (const part_t *p = q->first; p != NULL; p = p->next) {
                    if ((pass == 0) != (p->kind == P_RESULT))
                        continue;
                    if (p->kind == P_TEXT && p->text_len == 0)
                        continue; /* Anthropic refuses empty text blocks */
                    jw_open(w, '{');
                    jw_key(w, "type");
                    switch (p->kind) {
                    case P_TEXT:
                        jw_str(w, "text");
                        jw_key(w, "text");
                        jw_strn(w, p->text, p->text_len);
                        break;
                    case P_IMAGE:
                        jw_str(w, "image");
                        jw_key(w, "source");
                        jw_open(w, '{');
                        jw_key(w, "type");
                        if (p->img_url) {
                            jw_str(w, "url");
                            jw_key(w, "url");
                            jw_strn(w, p->data, p->data_len);
                        } else {
                            if (!anthropic_media_ok(p))
                                return failf(c, -EINVAL, "field '%s': an image media type other than jpeg, png, gif "
                                                         "or webp, cannot be translated to anthropic", p->field);
                            jw_str(w, "base64");
                            jw_key(w, "media_type");
                            jw_strn(w, p->mime, p->mime_len);
                            jw_key(w, "data");
                            jw_strn(w, p->data, p->data_len);
                        }
                        jw_close(w, '}');
                        break;
                    case P_CALL:
                        jw_str(w, "tool_use");
                        jw_key(w, "id");
                        jw_strn(w, p->id->s, p->id->n);
                        jw_key(w, "name");
                        jw_strn(w, p->name->s, p->name->n);
                        jw_key(w, "input");
                        jw_node(w, p->args);
                        break;
                    case P_RESULT:
                        jw_str(w, "tool_result");
                        jw_key(w, "tool_use_id");
                        jw_strn(w, p->id->s, p->id->n);
                        write_result_content(w, p);
                        break;
                    }
                    jw_close(w, '}');
                }
        jw_close(w, ']');
        jw_close(w, '}');
        m = end;
    }
    jw_close(w, ']');
    if (ir->stream) {
        jw_key(w, "stream");
        jw_value(w, "true", 4);
    }
    jw_opt(w, "temperature", &ir->temperature);
    jw_opt(w, "top_p", &ir->top_p);
    jw_opt(w, "top_k", &ir->top_k);
    jw_node_list(w, "stop_sequences", ir->stop, ir->nstop);
    if (ir->user.v != NULL) {
        jw_key(w, "metadata");
        jw_open(w, '{');
        jw_opt(w, "user_id", &ir->user);
        jw_close(w, '}');
    }
    if (ir->tools != NULL) {
        jw_key(w, "tools");
        jw_open(w, '[');
        for (const tool_t *t = ir->tools; t != NULL; t = t->next)
            write_tool_decl(w, t, "input_schema");
        jw_close(w, ']');
    }
    if (ir->tc != TC_UNSET || ir->parallel_false.v != NULL) {
        jw_key(w, "tool_choice");
        jw_open(w, '{');
        jw_key(w, "type");
        switch (ir->tc) {
        case TC_UNSET:
        case TC_AUTO:
            jw_str(w, "auto");
            break;
        case TC_NONE:
            jw_str(w, "none");
            break;
        case TC_ANY:
            jw_str(w, "any");
            break;
        case TC_TOOL:
            jw_str(w, "tool");
            jw_key(w, "name");
            jw_node(w, ir->tc_names[0]);
            break;
        }
        if (ir->parallel_false.v != NULL && ir->tc != TC_NONE) {
            jw_key(w, "disable_parallel_tool_use");
            jw_value(w, "true", 4);
        }
        jw_close(w, '}');
    }
    jw_close(w, '}');
    return c->rc;
}

/* ---- Gemini writer ---------------------------------------------------------------------------- */

/* The image type a URL's extension names, or NULL. */
static const char *guess_image_mime(const char *url, size_t n)
{
    static const struct {
        const char *ext, *mime;
    } table[] = {{".png", "image/png"},   {".jpg", "image/jpeg"}, {".jpeg", "image/jpeg"}, {".gif", "image/gif"},
                 {".webp", "image/webp"}, {".heic", "image/heic"}, {".heif", "image/heif"}};
    size_t end = n;
    for (size_t i = 0; i < n; i++)
        if (url[i] == '?' || url[i] == '#') {
            end = i;
            break;
        }
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        size_t el = strlen(table[i].ext);
        if (end >= el && strncasecmp(url + end - el, table[i].ext, el) == 0)
            return table[i].mime;
    }
    return NULL;
}

static void write_gemini_parts(ctx_t *c, jw_t *w, const part_t *first, const part_t *stop)
{
    for (const part_t *p = first; p != stop && c->rc == 0; p = p->next) {
        jw_open(w, '{');
        switch (p->kind) {
        case P_TEXT:
            jw_key(w, "text");
            jw_strn(w, p->text, p->text_len);
            break;
        case P_IMAGE:
            if (p->img_url) {
                const char *mime = p->mime;
                size_t ml = p->mime_len;
                if (mime == NULL) {
                    mime = guess_image_mime(p->data, p->data_len);
                    if (mime == NULL) {
                        failf(c, -EINVAL, "field '%s': an image URL without a recognised image extension, cannot "
                                          "be translated to gemini", p->field);
                        return;
                    }
                    ml = strlen(mime);
                }
                jw_key(w, "fileData");
                jw_open(w, '{');
                jw_key(w, "mimeType");
                jw_strn(w, mime, ml);
                jw_key(w, "fileUri");
                jw_strn(w, p->data, p->data_len);
                jw_close(w, '}');
            } else {
                jw_key(w, "inlineData");
                jw_open(w, '{');
                jw_key(w, "mimeType");
                jw_strn(w, p->mime, p->mime_len);
                jw_key(w, "data");
                jw_strn(w, p->data, p->data_len);
                jw_close(w, '}');
            }
            break;
        case P_CALL:
            jw_key(w, "functionCall");
            jw_open(w, '{');
            jw_key(w, "name");
            jw_strn(w, p->name->s, p->name->n);
            jw_key(w, "args");
            jw_node(w, p->args);
            jw_close(w, '}');
            break;
        case P_RESULT:
            jw_key(w, "functionResponse");
            jw_open(w, '{');
            jw_key(w, "name");
            jw_strn(w, p->name->s, p->name->n);
            jw_key(w, "response");
            if (p->resp != NULL) {
                jw_node(w, p->resp);
            } else {
                jw_open(w, '{');
                jw_key(w, "content");
                jw_strn(w, p->text, p->text_len);
                jw_close(w, '}');
            }
            jw_close(w, '}');
            break;
        }
        jw_close(w, '}');
    }
}

static int write_gemini(ctx_t *c, jw_t *w, const ir_t *ir, int64_t max_out)
{
    jw_open(w, '{');
    jw_key(w, "contents");
    jw_open(w, '[');
    for (const msg_t *m = ir->msgs; m != NULL && c->rc == 0;) {
        const msg_t *end = turn_end(m);
        jw_open(w, '{');
        jw_key(w, "role");
        jw_str(w, m->role == R_USER ? "user" : "model");
        jw_key(w, "parts");
        jw_open(w, '[');
        for (const msg_t *q = m; q != end; q = q->next)
            write_gemini_parts(c, w, q->first, NULL);
        jw_close(w, ']');
        jw_close(w, '}');
        m = end;
    }
    jw_close(w, ']');
    if (ir->sys_first != NULL) {
        jw_key(w, "systemInstruction");
        jw_open(w, '{');
        jw_key(w, "parts");
        jw_open(w, '[');
        write_gemini_parts(c, w, ir->sys_first, NULL);
        jw_close(w, ']');
        jw_close(w, '}');
    }
    if (ir->tools != NULL) {
        jw_key(w, "tools");
        jw_open(w, '[');
        jw_open(w, '{');
        jw_key(w, "functionDeclarations");
        jw_open(w, '[');
        for (const tool_t *t = ir->tools; t != NULL; t = t->next)
            write_tool_decl(w, t, "parametersJsonSchema");
        jw_close(w, ']');
        jw_close(w, '}');
        jw_close(w, ']');
    }
    if (ir->tc != TC_UNSET) {
        jw_key(w, "toolConfig");
        jw_open(w, '{');
        jw_key(w, "functionCallingConfig");
        jw_open(w, '{');
        jw_key(w, "mode");
        jw_str(w, ir->tc == TC_AUTO ? "AUTO" : ir->tc == TC_NONE ? "NONE" : "ANY");
        jw_node_list(w, "allowedFunctionNames", ir->tc_names, ir->tc_nnames);
        jw_close(w, '}');
        jw_close(w, '}');
    }
    bool gen = max_out >= 0 || ir->temperature.v || ir->top_p.v || ir->top_k.v || ir->nstop > 0 || ir->presence.v ||
               ir->frequency.v || ir->seed.v || ir->json_mode.v;
    if (gen) {
        jw_key(w, "generationConfig");
        jw_open(w, '{');
        if (max_out >= 0) {
            jw_key(w, "maxOutputTokens");
            jw_int(w, max_out);
        }
        jw_opt(w, "temperature", &ir->temperature);
        jw_opt(w, "topP", &ir->top_p);
        jw_opt(w, "topK", &ir->top_k);
        jw_opt(w, "presencePenalty", &ir->presence);
        jw_opt(w, "frequencyPenalty", &ir->frequency);
        jw_opt(w, "seed", &ir->seed);
        jw_node_list(w, "stopSequences", ir->stop, ir->nstop);
        if (ir->json_mode.v != NULL) {
            jw_key(w, "responseMimeType");
            jw_str(w, "application/json");
        }
        jw_close(w, '}');
    }
    jw_close(w, '}');
    return c->rc;
}

/* ---- same format: a normalising copy ---------------------------------------------------------- */

static bool walk_has_images(const jnode_t *j)
{
    for (const jnode_t *m = j->first; m != NULL; m = m->next) {
        if (j->type == J_OBJ && (key_match(m, "image_url", false) || key_match(m, "inlineData", true) ||
                                 key_match(m, "fileData", true)))
            return true;
        if (j->type == J_OBJ && key_match(m, "type", false) && str_is(m, "image"))
            return true;
        if ((m->type == J_OBJ || m->type == J_ARR) && walk_has_images(m))
            return true;
    }
    return false;
}

static int same_format(ctx_t *c, const jnode_t *root, const char *model, int64_t force_max, int64_t default_max,
                       bool stream, size_t str_bytes, wipe_buf_t *out, xlate_req_info_t *info)
{
    xlate_format_t f = c->from;
    const jnode_t *client_max = NULL, *client_max2 = NULL, *st = NULL, *gen = NULL;
    for (const jnode_t *m = root->first; m != NULL; m = m->next) {
        if (f != XLATE_GEMINI && key_match(m, "stream", false))
            st = m;
        else if (f != XLATE_GEMINI && key_match(m, "max_tokens", false))
            client_max = m;
        else if (f == XLATE_OPENAI_CHAT && key_match(m, "max_completion_tokens", false))
            client_max2 = m;
        else if (f == XLATE_GEMINI && key_match(m, "generationConfig", true))
            gen = m;
    }
    if (want(c, st, J_BOOL, "", "stream") || (st != NULL && st->type == J_NULL))
        return c->rc;
    if (gen != NULL && gen->type != J_NULL) {
        if (want(c, gen, J_OBJ, "", "generationConfig"))
            return c->rc;
        for (const jnode_t *m = gen->first; m != NULL; m = m->next)
            if (key_match(m, "maxOutputTokens", true))
                client_max = m;
    }
    int64_t cm = -1, v;
    const jnode_t *maxes[2] = {client_max, client_max2};
    for (int i = 0; i < 2; i++) {
        if (maxes[i] == NULL || maxes[i]->type == J_NULL)
            continue;
        if (!num_count(maxes[i], &v))
            return failf(c, -EINVAL, "field '%s' must be a non-negative integer",
                         f == XLATE_GEMINI ? "generationConfig.maxOutputTokens" : i ? "max_completion_tokens" : "max_tokens");
        if (v > cm)
            cm = v;
    }
    bool is_stream = f == XLATE_GEMINI ? stream : (st != NULL && st->b);
    if (f == XLATE_ANTHROPIC && cm < 0 && force_max <= 0 && default_max <= 0)
        return failf(c, -EINVAL, "field 'max_tokens' is required");
    int64_t max_out = force_max > 0 ? force_max : cm >= 0 ? cm : f == XLATE_ANTHROPIC ? default_max : -1;
    if (info != NULL) {
        info->stream = is_stream;
        info->max_output_tokens = cm;
        info->has_images = walk_has_images(root);
        info->prompt_bytes = str_bytes;
    }
    jw_t w;
    jw_start(&w, c, out);
    jw_open(&w, '{');
    bool wrote_max = false;
    for (const jnode_t *m = root->first; m != NULL; m = m->next) {
        bool is_max = m == client_max || m == client_max2;
        if (f != XLATE_GEMINI && (key_match(m, "model", false) || m == st ||
                                  (f == XLATE_OPENAI_CHAT && key_match(m, "stream_options", false))))
            continue;
        if (is_max && f != XLATE_GEMINI) {
            if (max_out >= 0 && m->type != J_NULL) {
                jw_key(&w, m == client_max ? "max_tokens" : "max_completion_tokens");
                jw_int(&w, max_out);
                wrote_max = true;
            }
            continue;
        }
        if (m == gen && max_out >= 0) {
            jw_key(&w, "generationConfig");
            jw_open(&w, '{');
            for (const jnode_t *g = gen->first; g != NULL; g = g->next) {
                if (g == client_max)
                    continue;
                jw_keyn(&w, g->key, g->keylen);
                jw_node(&w, g);
            }
            jw_key(&w, "maxOutputTokens");
            jw_int(&w, max_out);
            jw_close(&w, '}');
            wrote_max = true;
            continue;
        }
        jw_keyn(&w, m->key, m->keylen);
        jw_node(&w, m);
    }
    if (f != XLATE_GEMINI) {
        jw_key(&w, "model");
        jw_str(&w, model);
        if (is_stream) {
            jw_key(&w, "stream");
            jw_value(&w, "true", 4);
            if (f == XLATE_OPENAI_CHAT) {
                jw_key(&w, "stream_options");
                jw_value(&w, "{\"include_usage\":true}", 22);
            }
        }
    }
    if (!wrote_max && max_out >= 0) {
        if (f == XLATE_GEMINI) {
            jw_key(&w, "generationConfig");
            jw_value(&w, "{\"maxOutputTokens\":", 19);
            char b[24];
            int n = snprintf(b, sizeof b, "%lld}", (long long)max_out);
            jw_put(&w, b, (size_t)n);
        } else {
            jw_key(&w, "max_tokens");
            jw_int(&w, max_out);
        }
    }
    jw_close(&w, '}');
    return c->rc;
}

/* ---- entry point ------------------------------------------------------------------------------ */

static int read_model(ctx_t *c, const jnode_t *root, xlate_req_info_t *info, size_t *model_bytes)
{
    const jnode_t *model = NULL;
    for (const jnode_t *m = root->first; m != NULL; m = m->next)
        if (key_match(m, "model", false)) {
            if (model != NULL)
                return failf(c, -EINVAL, "field 'model' appears more than once");
            model = m;
        }
    if (model == NULL || model->type != J_STR || model->n == 0 || model->n > XLATE_MODEL_MAX)
        return failf(c, -EINVAL, "field 'model' must be a string of 1 to %d bytes", XLATE_MODEL_MAX);
    for (size_t i = 0; i < model->n; i++)
        if ((unsigned char)model->s[i] < 0x20 || model->s[i] == 0x7f)
            return failf(c, -EINVAL, "field 'model' must not hold control characters");
    if (info != NULL)
        memcpy(info->model, model->s, model->n + 1);
    *model_bytes = model->n;
    return 0;
}

int xlate_request(xlate_format_t from, xlate_format_t to, const uint8_t *body, size_t len, const char *upstream_model,
                  int64_t force_max_output, int64_t default_max_output, bool stream, wipe_buf_t *out,
                  xlate_req_info_t *info, char *err, size_t errlen)
{
    ctx_t c = {.from = from, .to = to, .err = err, .errlen = errlen};
    if (errlen > 0)
        err[0] = 0;
    if (info != NULL) {
        memset(info, 0, sizeof *info);
        info->max_output_tokens = -1;
    }
    if (upstream_model == NULL)
        upstream_model = "";
    jnode_t *root = NULL;
    size_t str_bytes = 0, model_bytes = 0;
    if (json_parse(&c, body, len, "body", &root, &str_bytes))
        goto done;
    if (root->type != J_OBJ) {
        failf(&c, -EINVAL, "body: must be a JSON object");
        goto done;
    }
    if (from != XLATE_GEMINI && read_model(&c, root, info, &model_bytes))
        goto done;
    str_bytes -= model_bytes;
    if (from == to) {
        same_format(&c, root, upstream_model, force_max_output, default_max_output, stream, str_bytes, out, info);
        goto done;
    }
    ir_t ir;
    memset(&ir, 0, sizeof ir);
    ir.max_out = -1;
    int rc = from == XLATE_OPENAI_CHAT ? parse_openai(&c, &ir, root)
             : from == XLATE_ANTHROPIC ? parse_anthropic(&c, &ir, root)
                                       : parse_gemini(&c, &ir, root);
    if (rc != 0)
        goto done;
    if (from == XLATE_GEMINI)
        ir.stream = stream;
    if (check_target(&c, &ir))
        goto done;
    int64_t max_out = force_max_output > 0 ? force_max_output : ir.max_out;
    if (to == XLATE_ANTHROPIC && max_out < 0) {
        if (default_max_output <= 0) {
            failf(&c, -EINVAL, "field 'max_tokens' is required, cannot be translated to anthropic without it");
            goto done;
        }
        max_out = default_max_output;
    }
    if (info != NULL) {
        info->stream = ir.stream;
        info->max_output_tokens = ir.max_out;
        info->has_images = ir.has_images;
        info->prompt_bytes = str_bytes > ir.image_bytes ? str_bytes - ir.image_bytes : 0;
    }
    jw_t w;
    jw_start(&w, &c, out);
    if (to == XLATE_OPENAI_CHAT)
        write_openai(&c, &w, &ir, upstream_model, max_out);
    else if (to == XLATE_ANTHROPIC)
        write_anthropic(&c, &w, &ir, upstream_model, max_out);
    else
        write_gemini(&c, &w, &ir, max_out);
done:
    jarena_free(&c.arena);
    if (c.rc != 0 && info != NULL)
        memset(info, 0, sizeof *info);
    return c.rc;
}
