/* usage: token usage from OpenAI-format response JSON (see usage.h).
 *
 * How it works: a small incremental JSON tokenizer (no allocation, fed any split of the input)
 * drives SAX-style callbacks that keep, for each open container down to USAGE_KEY_DEPTH, a
 * role (root, "response", "usage", the two *_details objects, the "choices" array, other) and
 * the id of the current key, chosen from a short fixed table per role. A number is a count
 * only when its container's role and key say so, so content is never looked at beyond
 * counting the decoded bytes of delta-like strings. The same tokenizer and callbacks serve
 * whole bodies fed piecewise (usage_scan_*) and single SSE events (usage_scan_chunk).
 *
 * The tokenizer keeps only the first STR_CAP decoded bytes of a string (every key or value the
 * role logic compares is shorter) and counts the rest; numbers are kept as raw text up to
 * NUM_CAP characters (longer is rejected). It accepts what yajl (which it replaced) accepted
 * with its defaults: one top-level value of any type, whitespace " \t\n\v\f\r", no comments, no
 * trailing garbage, strings not checked for UTF-8 (the upstream's answer is relayed byte for
 * byte whatever its encoding) but raw control bytes rejected. \uXXXX escapes are decoded to
 * UTF-8 (a high surrogate followed by any \uXXXX: 4 bytes; a lone high surrogate: "?"). The
 * string buffer is wiped when the scanner is freed or the one-shot scan ends. */
#include "node/usage.h"
#include "node/wipe.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

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

static int cb_null(scan_ctx_t *data)
{
    count_item(data);
    return 1;
}

static int cb_boolean(scan_ctx_t *data, int b)
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

static int cb_number(scan_ctx_t *data, const char *s, size_t n)
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

static int cb_string(scan_ctx_t *data, const unsigned char *s, size_t n)
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

static int close_container(scan_ctx_t *data)
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

static int cb_map_key(scan_ctx_t *data, const unsigned char *k, size_t n)
{
    scan_ctx_t *c = data;
    if (c->depth >= 1 && c->depth <= USAGE_KEY_DEPTH)
        c->key[c->depth] = (uint8_t)key_id((role_t)c->role[c->depth], k, n);
    return 1;
}

/* The tokenizer. Lexical state (inside a string, an escape, a \uXXXX, a number or a literal)
 * and grammar state (what may come next) are kept apart; a token split across feeds simply
 * resumes. The container stack is the callbacks' depth plus one bit per level (map or array). */
#define STR_CAP 64 /* decoded string bytes kept; the longest literal compared has 25 */
#define NUM_CAP 64 /* raw number characters kept; longer numbers are rejected */

typedef enum { G_VALUE, G_ARR_FIRST, G_OBJ_FIRST, G_OBJ_KEY, G_COLON, G_AFTER, G_DONE } gram_t;
typedef enum { L_NONE, L_STR, L_ESC, L_HEX, L_NUM, L_LIT } lex_t;
/* number states; the ones marked end may end the number */
typedef enum {
    N_MINUS,
    N_ZERO /* end */,
    N_INT /* end */,
    N_DOT,
    N_FRAC /* end */,
    N_E,
    N_ESIGN,
    N_EXP /* end */
} num_t;

static const char *const literals[] = {"true", "false", "null"};

typedef struct tok {
    scan_ctx_t ctx;
    uint8_t gram, lex, num, lit, lit_pos, hex_n;
    bool is_key;       /* the string being read is a key */
    bool high_pending; /* a high surrogate was read; a \uXXXX may follow */
    uint32_t hex, high;
    size_t str_len; /* decoded length of the string so far (str holds its first STR_CAP bytes) */
    size_t num_len;
    uint8_t is_map[USAGE_MAX_DEPTH / 8]; /* bit depth-1: container at depth is a map */
    unsigned char str[STR_CAP];
    char numbuf[NUM_CAP];
} tok_t;

struct usage_scan {
    tok_t tok;
    int rc;
};

static inline void str_put(tok_t *t, const uint8_t *p, size_t n)
{
    if (t->str_len < STR_CAP) {
        size_t k = STR_CAP - t->str_len < n ? STR_CAP - t->str_len : n;
        memcpy(t->str + t->str_len, p, k);
    }
    t->str_len += n;
}

static void str_put_code(tok_t *t, uint32_t cp)
{
    uint8_t u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (uint8_t)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (uint8_t)(0xC0 | (cp >> 6));
        u[1] = (uint8_t)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (uint8_t)(0xE0 | (cp >> 12));
        u[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (uint8_t)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (uint8_t)(0xF0 | (cp >> 18));
        u[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (uint8_t)(0x80 | (cp & 0x3F));
        n = 4;
    }
    str_put(t, u, n);
}

static void flush_high(tok_t *t)
{
    if (t->high_pending) {
        t->high_pending = false;
        str_put(t, (const uint8_t *)"?", 1);
    }
}

static void after_value(tok_t *t)
{
    t->lex = L_NONE;
    t->gram = t->ctx.depth == 0 ? G_DONE : G_AFTER;
}

static bool is_ws(uint8_t ch)
{
    return ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t' || ch == '\v' || ch == '\f';
}

static int open_value(tok_t *t, bool is_map)
{
    if (!open_container(&t->ctx, is_map))
        return -EINVAL;
    unsigned d = t->ctx.depth - 1;
    if (is_map)
        t->is_map[d / 8] |= (uint8_t)(1u << (d % 8));
    else
        t->is_map[d / 8] &= (uint8_t) ~(1u << (d % 8));
    t->gram = is_map ? G_OBJ_FIRST : G_ARR_FIRST;
    return 0;
}

static bool top_is_map(const tok_t *t)
{
    unsigned d = t->ctx.depth - 1;
    return (t->is_map[d / 8] >> (d % 8)) & 1;
}

/* A value starts with ch (already consumed). */
static int start_value(tok_t *t, uint8_t ch)
{
    switch (ch) {
    case '{':
        return open_value(t, true);
    case '[':
        return open_value(t, false);
    case '"':
        t->lex = L_STR;
        t->is_key = false;
        t->str_len = 0;
        return 0;
    case '-':
    case '0':
    case '1':
    case '2':
    case '3':
    case '4':
    case '5':
    case '6':
    case '7':
    case '8':
    case '9':
        t->lex = L_NUM;
        t->num = ch == '-' ? N_MINUS : ch == '0' ? N_ZERO : N_INT;
        t->numbuf[0] = (char)ch;
        t->num_len = 1;
        return 0;
    case 't':
    case 'f':
    case 'n':
        t->lex = L_LIT;
        t->lit = ch == 't' ? 0 : ch == 'f' ? 1 : 2;
        t->lit_pos = 1;
        return 0;
    default:
        return -EINVAL;
    }
}

static void close_value(tok_t *t)
{
    close_container(&t->ctx);
    after_value(t);
}

/* Next state of a number given ch, or -1 if ch does not continue it. */
static int num_next(num_t st, uint8_t ch)
{
    bool digit = ch >= '0' && ch <= '9';
    switch (st) {
    case N_MINUS:
        return ch == '0' ? N_ZERO : digit ? N_INT : -1;
    case N_ZERO:
        return ch == '.' ? N_DOT : (ch == 'e' || ch == 'E') ? N_E : -1;
    case N_INT:
        return digit ? N_INT : ch == '.' ? N_DOT : (ch == 'e' || ch == 'E') ? N_E : -1;
    case N_DOT:
        return digit ? N_FRAC : -1;
    case N_FRAC:
        return digit ? N_FRAC : (ch == 'e' || ch == 'E') ? N_E : -1;
    case N_E:
        return (ch == '+' || ch == '-') ? N_ESIGN : digit ? N_EXP : -1;
    case N_ESIGN:
    case N_EXP:
        return digit ? N_EXP : -1;
    }
    return -1;
}

static bool num_can_end(num_t st)
{
    return st == N_ZERO || st == N_INT || st == N_FRAC || st == N_EXP;
}

static int hex_digit(uint8_t ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* 1 for the bytes a string holds as they are: not '"', '\\' or a control byte. */
/* clang-format off */
#define ROW_1 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1
static const uint8_t str_plain[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x10 */
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x20: '"' */
    ROW_1, ROW_1,                                   /* 0x30, 0x40 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, /* 0x50: '\\' */
    ROW_1, ROW_1, ROW_1, ROW_1, ROW_1, ROW_1, ROW_1, ROW_1, ROW_1, ROW_1, /* 0x60 to 0xff */
};
/* clang-format on */

static int tok_feed(tok_t *t, const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t ch;
        switch ((lex_t)t->lex) {
        case L_STR: {
            if (t->high_pending && p[i] != '\\')
                flush_high(t);
            size_t j = i;
            while (j + 4 <= len && str_plain[p[j]] && str_plain[p[j + 1]] && str_plain[p[j + 2]] && str_plain[p[j + 3]])
                j += 4;
            while (j < len && str_plain[p[j]])
                j++;
            str_put(t, p + i, j - i);
            i = j;
            if (i == len)
                return 0;
            ch = p[i++];
            if (ch == '\\') {
                t->lex = L_ESC;
            } else if (ch != '"') {
                return -EINVAL; /* raw control byte */
            } else if (t->is_key) {
                cb_map_key(&t->ctx, t->str, t->str_len);
                t->lex = L_NONE;
                t->gram = G_COLON;
            } else {
                cb_string(&t->ctx, t->str, t->str_len);
                after_value(t);
            }
            continue;
        }
        case L_ESC:
            ch = p[i++];
            if (ch != 'u')
                flush_high(t);
            t->lex = L_STR;
            switch (ch) {
            case '"':
            case '\\':
            case '/':
                break;
            case 'b':
                ch = '\b';
                break;
            case 'f':
                ch = '\f';
                break;
            case 'n':
                ch = '\n';
                break;
            case 'r':
                ch = '\r';
                break;
            case 't':
                ch = '\t';
                break;
            case 'u':
                t->lex = L_HEX;
                t->hex_n = 0;
                t->hex = 0;
                continue;
            default:
                return -EINVAL;
            }
            str_put(t, &ch, 1);
            continue;
        case L_HEX: {
            int h = hex_digit(p[i++]);
            if (h < 0)
                return -EINVAL;
            t->hex = t->hex << 4 | (uint32_t)h;
            if (++t->hex_n < 4)
                continue;
            t->lex = L_STR;
            if (t->high_pending) {
                t->high_pending = false;
                str_put_code(t, 0x10000 + ((t->high & 0x3FF) << 10) + (t->hex & 0x3FF));
            } else if ((t->hex & 0xFC00) == 0xD800) {
                t->high_pending = true;
                t->high = t->hex;
            } else {
                str_put_code(t, t->hex);
            }
            continue;
        }
        case L_NUM: {
            int next = num_next((num_t)t->num, p[i]);
            if (next >= 0) {
                if (t->num_len == NUM_CAP)
                    return -EINVAL;
                t->numbuf[t->num_len++] = (char)p[i++];
                t->num = (uint8_t)next;
                continue;
            }
            if (!num_can_end((num_t)t->num))
                return -EINVAL;
            cb_number(&t->ctx, t->numbuf, t->num_len);
            after_value(t);
            continue; /* p[i] is read again as grammar */
        }
        case L_LIT: {
            const char *w = literals[t->lit];
            if (p[i++] != (uint8_t)w[t->lit_pos])
                return -EINVAL;
            if (w[++t->lit_pos] != '\0')
                continue;
            if (t->lit == 2)
                cb_null(&t->ctx);
            else
                cb_boolean(&t->ctx, t->lit == 0);
            after_value(t);
            continue;
        }
        case L_NONE:
            break;
        }
        ch = p[i++];
        if (is_ws(ch))
            continue;
        int rc = 0;
        switch ((gram_t)t->gram) {
        case G_ARR_FIRST:
            if (ch == ']') {
                close_value(t);
                break;
            }
            /* fall through */
        case G_VALUE:
            rc = start_value(t, ch);
            break;
        case G_OBJ_FIRST:
            if (ch == '}') {
                close_value(t);
                break;
            }
            /* fall through */
        case G_OBJ_KEY:
            if (ch != '"')
                return -EINVAL;
            t->lex = L_STR;
            t->is_key = true;
            t->str_len = 0;
            break;
        case G_COLON:
            if (ch != ':')
                return -EINVAL;
            t->gram = G_VALUE;
            break;
        case G_AFTER:
            if (ch == ',')
                t->gram = top_is_map(t) ? G_OBJ_KEY : G_VALUE;
            else if (ch == (top_is_map(t) ? '}' : ']'))
                close_value(t);
            else
                return -EINVAL;
            break;
        case G_DONE:
            return -EINVAL; /* trailing garbage */
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* End of input: 0 if exactly one complete value was read, else -EINVAL. */
static int tok_finish(tok_t *t)
{
    if (t->lex == L_NUM && num_can_end((num_t)t->num)) {
        cb_number(&t->ctx, t->numbuf, t->num_len);
        after_value(t);
    }
    return t->lex == L_NONE && t->gram == G_DONE ? 0 : -EINVAL;
}

int usage_scan_init(usage_scan_t **out)
{
    usage_scan_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    *out = s;
    return 0;
}

int usage_scan_feed(usage_scan_t *s, const uint8_t *buf, size_t len)
{
    if (s->rc == 0)
        s->rc = tok_feed(&s->tok, buf, len);
    return s->rc;
}

int usage_scan_finish(usage_scan_t *s, usage_t *out)
{
    if (s->rc == 0)
        s->rc = tok_finish(&s->tok);
    *out = s->tok.ctx.res.usage;
    if (s->rc != 0)
        out->found = false;
    if (!out->found)
        memset(out, 0, sizeof(*out));
    return s->rc;
}

size_t usage_scan_content_bytes(const usage_scan_t *s)
{
    return s->tok.ctx.res.content_bytes;
}

void usage_scan_free(usage_scan_t *s)
{
    if (s == NULL)
        return;
    wipe_bytes(s, sizeof(*s));
    free(s);
}

int usage_scan_chunk(const uint8_t *json, size_t len, usage_chunk_t *out)
{
    tok_t t;
    memset(&t, 0, offsetof(tok_t, is_map)); /* the stack and buffers are written before read */
    int rc = tok_feed(&t, json, len);
    if (rc == 0)
        rc = tok_finish(&t);
    *out = t.ctx.res;
    wipe_bytes(t.str, sizeof(t.str));
    wipe_bytes(t.numbuf, sizeof(t.numbuf));
    if (rc != 0 || !out->usage.found) {
        memset(&out->usage, 0, sizeof(out->usage));
        out->usage_only = false;
    } else {
        out->usage_only = t.ctx.choices == 1;
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
