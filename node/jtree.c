/* jtree: the JSON tree and writer of the translators (see jtree.h).
 *
 * The parser keeps no stack of its own: every node knows its parent, so closing a container is a
 * step up. A big allocation (past a block) gets a block of its own behind the current one, so the
 * space left in the current block is not lost. */
#include "node/jtree.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

/* ---- arena ---- */

struct jarena_block {
    struct jarena_block *next;
    size_t used, cap;
    _Alignas(16) uint8_t data[];
};

#define JARENA_BLOCK 8192

void jarena_init(jarena_t *a, size_t max)
{
    *a = (jarena_t)JARENA_INIT(max);
}

/* n bytes (rounded up to 16), not zeroed. */
static void *arena_take(jarena_t *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    jarena_block_t *head = a->head;
    if (head != NULL && head->cap - head->used >= n) {
        void *p = head->data + head->used;
        head->used += n;
        return p;
    }
    size_t cap = n > JARENA_BLOCK ? n : JARENA_BLOCK;
    if (a->max != 0 && (cap > a->max || a->total > a->max - cap)) {
        a->err = -E2BIG;
        return NULL;
    }
    jarena_block_t *b = malloc(sizeof *b + cap);
    if (b == NULL) {
        a->err = -ENOMEM;
        return NULL;
    }
    a->total += cap;
    b->cap = cap;
    b->used = n;
    if (head != NULL && cap > JARENA_BLOCK) { /* a big one-off: keep the current block in front */
        b->next = head->next;
        head->next = b;
    } else {
        b->next = head;
        a->head = b;
    }
    return b->data;
}

void *jarena_alloc(jarena_t *a, size_t n)
{
    void *p = arena_take(a, n);
    if (p != NULL)
        memset(p, 0, n);
    return p;
}

char *jarena_strdup(jarena_t *a, const void *s, size_t n)
{
    char *d = arena_take(a, n + 1);
    if (d != NULL) {
        if (n > 0)
            memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

void jarena_free(jarena_t *a)
{
    while (a->head != NULL) {
        jarena_block_t *next = a->head->next;
        wipe_free(a->head); /* wipes the whole block */
        a->head = next;
    }
    a->total = 0;
    a->err = 0;
}

/* ---- parser ---- */

typedef struct parse {
    jarena_t *a;
    const jtree_parse_opts_t *opts;
    jnode_t *root, *cur;
    const char *key;
    size_t keylen;
    unsigned depth;
    size_t str_bytes;
    int err; /* why a callback stopped the parser */
} parse_t;

bool jtree_utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) { /* eight ASCII bytes at a time */
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
            lo = b == 0xE0 ? 0xA0 : 0x80;
            hi = b == 0xED ? 0x9F : 0xBF;
        } else if (b >= 0xF0 && b <= 0xF4) {
            more = 3;
            lo = b == 0xF0 ? 0x90 : 0x80;
            hi = b == 0xF4 ? 0x8F : 0xBF;
        } else {
            return false;
        }
        if (n - i <= more || s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k <= more; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
        i += more + 1;
    }
    return true;
}

static jnode_t *add_node(parse_t *p, jtype_t t)
{
    jnode_t *j = jarena_alloc(p->a, sizeof *j);
    if (j == NULL) {
        p->err = p->a->err;
        return NULL;
    }
    j->type = t;
    if (p->cur == NULL) {
        p->root = j;
    } else {
        j->parent = p->cur;
        if (p->cur->type == J_OBJ) {
            j->key = p->key;
            j->keylen = p->keylen;
        }
        if (p->cur->last != NULL)
            p->cur->last->next = j;
        else
            p->cur->first = j;
        p->cur->last = j;
        p->cur->count++;
    }
    return j;
}

/* A string value or a number's text: a node holding a copy. */
static int add_text(parse_t *p, jtype_t t, const void *s, size_t n)
{
    jnode_t *j = add_node(p, t);
    if (j == NULL)
        return 0;
    if ((j->s = jarena_strdup(p->a, s, n)) == NULL) {
        p->err = p->a->err;
        return 0;
    }
    j->n = n;
    return 1;
}

static int cb_null(void *ctx)
{
    return add_node(ctx, J_NULL) != NULL;
}

static int cb_bool(void *ctx, int b)
{
    jnode_t *j = add_node(ctx, J_BOOL);
    if (j != NULL)
        j->b = b != 0;
    return j != NULL;
}

static int cb_number(void *ctx, const char *s, size_t n)
{
    return add_text(ctx, J_NUM, s, n);
}

static int cb_string(void *ctx, const unsigned char *s, size_t n)
{
    parse_t *p = ctx;
    if (p->opts->strict_utf8 && !jtree_utf8_valid(s, n))
        return p->err = -EILSEQ, 0;
    p->str_bytes += n;
    return add_text(p, J_STR, s, n);
}

static int cb_key(void *ctx, const unsigned char *s, size_t n)
{
    parse_t *p = ctx;
    if (p->opts->strict_utf8 && !jtree_utf8_valid(s, n))
        return p->err = -EILSEQ, 0;
    if ((p->key = jarena_strdup(p->a, s, n)) == NULL)
        return p->err = p->a->err, 0;
    p->keylen = n;
    return 1;
}

static int open_container(parse_t *p, jtype_t t)
{
    if (p->depth >= p->opts->max_depth)
        return p->err = -ELOOP, 0;
    jnode_t *j = add_node(p, t);
    if (j == NULL)
        return 0;
    p->depth++;
    p->cur = j;
    return 1;
}

static int cb_start_map(void *ctx)
{
    return open_container(ctx, J_OBJ);
}

static int cb_start_array(void *ctx)
{
    return open_container(ctx, J_ARR);
}

static int cb_end(void *ctx)
{
    parse_t *p = ctx;
    p->depth--;
    p->cur = p->cur->parent;
    return 1;
}

static const yajl_callbacks parse_callbacks = {
    cb_null, cb_bool, NULL, NULL, cb_number, cb_string, cb_start_map, cb_key, cb_end, cb_start_array, cb_end,
};

int jtree_parse(jarena_t *a, const uint8_t *buf, size_t len, const jtree_parse_opts_t *opts, jnode_t **root, size_t *at,
                size_t *str_bytes)
{
    parse_t p = {.a = a, .opts = opts};
    yajl_alloc_funcs af;
    wipe_yajl_alloc_funcs_init(&af);
    yajl_handle h = yajl_alloc(&parse_callbacks, &af, &p);
    if (h == NULL)
        return -ENOMEM;
    yajl_status st = yajl_parse(h, buf, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    size_t consumed = yajl_get_bytes_consumed(h);
    yajl_free(h);
    if (st != yajl_status_ok || p.root == NULL) {
        if (at != NULL)
            *at = consumed;
        return p.err != 0 ? p.err : -EINVAL;
    }
    *root = p.root;
    if (str_bytes != NULL)
        *str_bytes = p.str_bytes;
    return 0;
}

/* ---- writer ---- */

void jw_begin(jw_t *w, wipe_buf_t *b)
{
    w->b = b;
    w->start = b->len;
    w->err = 0;
    w->depth = 0;
    w->after_key = false;
    w->error_cb = NULL;
    w->data = NULL;
}

int jw_end(jw_t *w)
{
    if (w->err != 0 && w->b->len > w->start) {
        wipe_bytes(w->b->data + w->start, w->b->len - w->start);
        w->b->len = w->start;
    }
    return w->err;
}

void jw_fail(jw_t *w, int err)
{
    if (w->err != 0 || err == 0)
        return;
    w->err = err;
    if (w->error_cb != NULL)
        w->error_cb(w, err);
}

void jw_put(jw_t *w, const void *p, size_t n)
{
    if (w->err == 0 && n > 0)
        jw_fail(w, wipe_buf_append(w->b, p, n));
}

void jw_sep(jw_t *w)
{
    if (w->after_key) {
        w->after_key = false;
        return;
    }
    if (w->depth > 0 && !w->first[w->depth])
        jw_put(w, ",", 1);
    w->first[w->depth] = false;
}

void jw_value(jw_t *w, const char *s, size_t n)
{
    jw_sep(w);
    jw_put(w, s, n);
}

void jw_str_body(jw_t *w, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0; /* bytes copied as they are, written in one append */
    for (size_t i = 0; i < n && w->err == 0; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\')
            continue;
        jw_put(w, s + run, i - run);
        run = i + 1;
        char esc[6] = {'\\', (char)ch, 0, 0, 0, 0};
        size_t el = 2;
        switch (ch) {
        case '"':
        case '\\':
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        default:
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[ch >> 4];
            esc[5] = hex[ch & 15];
            el = 6;
            break;
        }
        jw_put(w, esc, el);
    }
    jw_put(w, s + run, n - run);
}

void jw_strn(jw_t *w, const char *s, size_t n)
{
    jw_sep(w);
    if (w->err == 0)
        jw_fail(w, wipe_buf_reserve(w->b, n + 2));
    jw_put(w, "\"", 1);
    jw_str_body(w, s, n);
    jw_put(w, "\"", 1);
}

void jw_int(jw_t *w, int64_t v)
{
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%lld", (long long)v);
    jw_value(w, buf, (size_t)n);
}

void jw_keyn(jw_t *w, const char *k, size_t n)
{
    jw_strn(w, k, n);
    jw_put(w, ":", 1);
    w->after_key = true;
}

void jw_open(jw_t *w, char ch)
{
    assert(w->depth < JW_MAX_DEPTH);
    jw_sep(w);
    jw_put(w, &ch, 1);
    w->depth++;
    w->first[w->depth] = true;
}

void jw_close(jw_t *w, char ch)
{
    assert(w->depth > 0);
    w->depth--;
    jw_put(w, &ch, 1);
}

void jw_node(jw_t *w, const jnode_t *j)
{
    switch (j->type) {
    case J_NULL:
        jw_value(w, "null", 4);
        break;
    case J_BOOL:
        jw_value(w, j->b ? "true" : "false", j->b ? 4 : 5);
        break;
    case J_NUM:
        jw_value(w, j->s, j->n);
        break;
    case J_STR:
        jw_strn(w, j->s, j->n);
        break;
    case J_OBJ:
        jw_open(w, '{');
        for (const jnode_t *m = j->first; m != NULL && w->err == 0; m = m->next) {
            jw_keyn(w, m->key, m->keylen);
            jw_node(w, m);
        }
        jw_close(w, '}');
        break;
    case J_ARR:
        jw_open(w, '[');
        for (const jnode_t *m = j->first; m != NULL && w->err == 0; m = m->next)
            jw_node(w, m);
        jw_close(w, ']');
        break;
    }
}

void jw_node_as_string(jw_t *w, const jnode_t *j)
{
    if (w->err != 0)
        return;
    wipe_buf_t tmp = WIPE_BUF_INIT(w->b->max);
    jw_t inner;
    jw_begin(&inner, &tmp);
    jw_node(&inner, j);
    if (inner.err != 0)
        jw_fail(w, inner.err);
    else
        jw_strn(w, tmp.len > 0 ? (const char *)tmp.data : "", tmp.len);
    wipe_buf_free(&tmp);
}
