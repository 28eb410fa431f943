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
 * The tokenizer hands the callbacks a string where it lies in the input when it can (no escapes,
 * not cut by the end of a feed); else it decodes it into a buffer that keeps only the first
 * STR_CAP decoded bytes (every key or value the role logic compares is shorter) and counts the
 * rest. Numbers are read in place, or kept as raw text while cut, up to NUM_CAP characters
 * (longer is rejected). It accepts what yajl (which it replaced) accepted
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
#ifdef __SSE2__
#include <emmintrin.h>
#endif

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

/* k (n bytes) is the literal lit: lengths first, then a memcmp of constant size. */
#define KEY_IS(k, n, lit) ((n) == sizeof(lit) - 1 && memcmp((k), (lit), sizeof(lit) - 1) == 0)

static key_t_ key_id(role_t role, const unsigned char *k, size_t n)
{
    switch (role) {
    case ROLE_USAGE:
        if (KEY_IS(k, n, "prompt_tokens") || KEY_IS(k, n, "input_tokens"))
            return KEY_INPUT;
        if (KEY_IS(k, n, "completion_tokens") || KEY_IS(k, n, "output_tokens"))
            return KEY_OUTPUT;
        if (KEY_IS(k, n, "prompt_tokens_details") || KEY_IS(k, n, "input_tokens_details"))
            return KEY_IN_DETAILS;
        if (KEY_IS(k, n, "completion_tokens_details") || KEY_IS(k, n, "output_tokens_details"))
            return KEY_OUT_DETAILS;
        return KEY_NONE;
    case ROLE_IN_DETAILS:
        return KEY_IS(k, n, "cached_tokens") ? KEY_CACHED : KEY_NONE;
    case ROLE_OUT_DETAILS:
        return KEY_IS(k, n, "reasoning_tokens") ? KEY_REASONING : KEY_NONE;
    default:
        break;
    }
    /* Root and "response" keys, then the content keys any other map may have; by length,
     * as most keys match none. */
    switch (n) {
    case 4:
        if (role == ROLE_ROOT && memcmp(k, "type", 4) == 0)
            return KEY_TYPE;
        return memcmp(k, "text", 4) == 0 ? KEY_CONTENT : KEY_NONE;
    case 5:
        if (memcmp(k, "usage", 5) == 0)
            return role == ROLE_ROOT || role == ROLE_RESPONSE ? KEY_USAGE : KEY_NONE;
        return memcmp(k, "delta", 5) == 0 ? KEY_DELTA : KEY_NONE;
    case 6:
        return role == ROLE_ROOT && memcmp(k, "output", 6) == 0 ? KEY_OUTPUT_LIST : KEY_NONE;
    case 7:
        if (role == ROLE_ROOT && memcmp(k, "choices", 7) == 0)
            return KEY_CHOICES;
        return memcmp(k, "content", 7) == 0 || memcmp(k, "refusal", 7) == 0 ? KEY_CONTENT : KEY_NONE;
    case 8:
        return role == ROLE_ROOT && memcmp(k, "response", 8) == 0 ? KEY_RESPONSE : KEY_NONE;
    case 9:
        return memcmp(k, "arguments", 9) == 0 ? KEY_CONTENT : KEY_NONE;
    case 17:
        return memcmp(k, "reasoning_content", 17) == 0 ? KEY_CONTENT : KEY_NONE;
    default:
        return KEY_NONE;
    }
}

/* Role and key of the container holding the value now being read (depth 0: role[0] and
 * key[0] stay ROLE_OTHER and KEY_NONE). */
static inline role_t cur_role(const scan_ctx_t *c)
{
    return c->depth <= USAGE_KEY_DEPTH ? (role_t)c->role[c->depth] : ROLE_OTHER;
}

static inline key_t_ cur_key(const scan_ctx_t *c)
{
    return c->depth <= USAGE_KEY_DEPTH ? (key_t_)c->key[c->depth] : KEY_NONE;
}

/* Every value (null, true, false too) goes through here. */
static inline void count_item(scan_ctx_t *c)
{
    if (cur_role(c) == ROLE_CHOICES)
        c->choices = 2;
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

static void cb_number(scan_ctx_t *c, const char *s, size_t n)
{
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
}

/* s: the decoded string, of which only the first STR_CAP bytes may be there (n counts all). */
static void cb_string(scan_ctx_t *c, const unsigned char *s, size_t n)
{
    count_item(c);
    role_t role = cur_role(c);
    key_t_ key = cur_key(c);
    if ((key == KEY_CONTENT || key == KEY_DELTA) && c->counted_depth != 0)
        c->res.content_bytes += n; /* choices[].delta.content, choices[].text, output[].content[].text, ... */
    else if (role == ROLE_ROOT && key == KEY_DELTA)
        c->res.content_bytes += n; /* Responses API *.delta events */
    else if (role == ROLE_ROOT && key == KEY_TYPE)
        c->res.terminal = KEY_IS(s, n, "response.completed") || KEY_IS(s, n, "response.incomplete") ||
                          KEY_IS(s, n, "response.failed");
}

static void cb_map_key(scan_ctx_t *c, const unsigned char *k, size_t n)
{
    if (c->depth <= USAGE_KEY_DEPTH)
        c->key[c->depth] = (uint8_t)key_id((role_t)c->role[c->depth], k, n);
}

/* false if that would nest deeper than USAGE_MAX_DEPTH. */
static bool open_container(scan_ctx_t *c, bool is_map)
{
    count_item(c);
    if (c->depth >= USAGE_MAX_DEPTH)
        return false;
    role_t parent = cur_role(c);
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
    return true;
}

static void close_container(scan_ctx_t *c)
{
    if (cur_role(c) == ROLE_USAGE) {
        c->res.usage = c->cur;
        c->res.usage.found = true;
    }
    if (c->depth == c->counted_depth)
        c->counted_depth = 0;
    c->depth--;
}

/* The tokenizer. Grammar state (what may come next) is where tok_feed resumes; lexical state
 * (inside a string, an escape, a \uXXXX, a number or a literal) is only set while a token is
 * cut by the end of a feed. A token that lies whole in the buffer takes the fast path: a
 * string without escapes is found by a search for '"', '\\' or a control byte, 16 bytes at a
 * time with SSE2 or 8 in a uint64_t, and handed to the callbacks where it lies; a number or
 * literal is checked in place. Any
 * other token (escapes, or cut by the end of the feed) goes through the byte-resumable slow
 * path, which decodes strings into str. The container stack is the callbacks' depth plus one
 * bit per level (map or array). */
#define STR_CAP 64 /* decoded string bytes kept by the slow path; the longest literal compared has 25 */
#define NUM_CAP 64 /* number characters accepted; longer numbers are rejected */

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

static inline bool is_ws(uint8_t ch)
{
    return ch == ' ' || (ch >= '\t' && ch <= '\r'); /* \t \n \v \f \r */
}

static inline bool is_digit(uint8_t ch)
{
    return (unsigned)(ch - '0') < 10;
}

static bool open_value(tok_t *t, bool is_map)
{
    if (!open_container(&t->ctx, is_map))
        return false;
    unsigned d = t->ctx.depth - 1;
    if (is_map)
        t->is_map[d / 8] |= (uint8_t)(1u << (d % 8));
    else
        t->is_map[d / 8] &= (uint8_t) ~(1u << (d % 8));
    return true;
}

static inline bool top_is_map(const tok_t *t)
{
    unsigned d = t->ctx.depth - 1;
    return (t->is_map[d / 8] >> (d % 8)) & 1;
}

/* Next state of a number given ch, or -1 if ch does not continue it. */
static int num_next(num_t st, uint8_t ch)
{
    bool digit = is_digit(ch);
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

/* The first byte in [p, end) that is not plain string content ('"', '\\' or a control byte),
 * or end. 16 bytes at a time with SSE2 (x86-64 always has it), then 8 in a word: a byte of w is
 * flagged (high bit of m) when it equals '"' or '\\' or is below 0x20 (the classic "has zero
 * byte" / "has byte less than" tests: they never miss, and the lowest flagged byte is always a
 * true one), then byte by byte. Never reads at or past end. */
static inline const uint8_t *str_special(const uint8_t *p, const uint8_t *end)
{
#ifdef __SSE2__
    const __m128i quote16 = _mm_set1_epi8('"'), backslash16 = _mm_set1_epi8('\\'), ctl16 = _mm_set1_epi8(0x1f);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote16), _mm_cmpeq_epi8(v, backslash16)),
                                 _mm_cmpeq_epi8(_mm_min_epu8(v, ctl16), v));
        unsigned mask = (unsigned)_mm_movemask_epi8(m);
        if (mask != 0)
            return p + __builtin_ctz(mask);
        p += 16;
    }
#endif
    const uint64_t ones = UINT64_C(0x0101010101010101), highs = ones * 0x80;
    while (end - p >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        uint64_t quote = w ^ (ones * '"'), backslash = w ^ (ones * '\\');
        uint64_t m = (((quote - ones) & ~quote) | ((backslash - ones) & ~backslash) | ((w - ones * 0x20) & ~w)) & highs;
        if (m != 0) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            return p + (__builtin_ctzll(m) >> 3);
#else
            break;
#endif
        }
        p += 8;
    }
    while (p < end && str_plain[*p])
        p++;
    return p;
}

/* The byte a one-character escape (after '\\') stands for, or -1. */
static int esc_byte(uint8_t ch)
{
    switch (ch) {
    case '"':
    case '\\':
    case '/':
        return ch;
    case 'b':
        return '\b';
    case 'f':
        return '\f';
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 't':
        return '\t';
    default:
        return -1;
    }
}

/* A \uXXXX was read into t->hex. */
static void str_put_hex(tok_t *t)
{
    if (t->high_pending) {
        t->high_pending = false;
        str_put_code(t, 0x10000 + ((t->high & 0x3FF) << 10) + (t->hex & 0x3FF));
    } else if ((t->hex & 0xFC00) == 0xD800) {
        t->high_pending = true;
        t->high = t->hex;
    } else {
        str_put_code(t, t->hex);
    }
}

/* Slow path of a string (t->lex is L_STR, L_ESC or L_HEX): reads from *pp, decoding into str.
 * 1 once the closing quote is read (*pp is past it, t->lex L_NONE), 0 if the input ran out
 * (all read), -EINVAL. */
static int str_slow(tok_t *t, const uint8_t **pp, const uint8_t *end)
{
    const uint8_t *p = *pp;
    while (p < end) {
        uint8_t ch;
        switch ((lex_t)t->lex) {
        case L_STR: {
            if (t->high_pending && *p != '\\')
                flush_high(t);
            const uint8_t *q = str_special(p, end);
            str_put(t, p, (size_t)(q - p));
            p = q;
            if (p == end)
                break;
            ch = *p++;
            if (ch == '"') {
                t->lex = L_NONE;
                *pp = p;
                return 1;
            }
            if (ch != '\\')
                return -EINVAL; /* raw control byte */
            t->lex = L_ESC;
            if (p == end)
                break;
        }
            /* fall through */
        case L_ESC:
            ch = *p++;
            if (ch != 'u') {
                flush_high(t);
                int b = esc_byte(ch);
                if (b < 0)
                    return -EINVAL;
                ch = (uint8_t)b;
                str_put(t, &ch, 1);
                t->lex = L_STR;
                break;
            }
            t->lex = L_HEX;
            t->hex_n = 0;
            t->hex = 0;
            /* fall through */
        case L_HEX:
            for (; t->hex_n < 4 && p < end; t->hex_n++) {
                int h = hex_digit(*p++);
                if (h < 0)
                    return -EINVAL;
                t->hex = t->hex << 4 | (uint32_t)h;
            }
            if (t->hex_n == 4) {
                t->lex = L_STR;
                str_put_hex(t);
            }
            break;
        default:
            return -EINVAL; /* not reached */
        }
    }
    *pp = p;
    return 0;
}

/* Slow path of a number (t->lex is L_NUM): 1 once a byte that does not continue it is seen
 * (not consumed; t->numbuf holds the number), 0 if the input ran out, -EINVAL. */
static int num_slow(tok_t *t, const uint8_t **pp, const uint8_t *end)
{
    const uint8_t *p = *pp;
    for (; p < end; p++) {
        int next = num_next((num_t)t->num, *p);
        if (next < 0) {
            *pp = p;
            return num_can_end((num_t)t->num) ? 1 : -EINVAL;
        }
        if (t->num_len == NUM_CAP)
            return -EINVAL;
        t->numbuf[t->num_len++] = (char)*p;
        t->num = (uint8_t)next;
    }
    *pp = p;
    return 0;
}

/* Slow path of a literal (t->lex is L_LIT): 1 once it is complete, 0 if the input ran out,
 * -EINVAL. */
static int lit_slow(tok_t *t, const uint8_t **pp, const uint8_t *end)
{
    const char *w = literals[t->lit];
    const uint8_t *p = *pp;
    while (p < end) {
        if (*p++ != (uint8_t)w[t->lit_pos])
            return -EINVAL;
        if (w[++t->lit_pos] == '\0') {
            t->lex = L_NONE;
            *pp = p;
            return 1;
        }
    }
    *pp = p;
    return 0;
}

/* Continues the token t->lex is in. 1 once it is complete (its callback made, t->gram set),
 * 0 if the input ran out, -EINVAL. */
static int tok_resume(tok_t *t, const uint8_t **pp, const uint8_t *end)
{
    int rc;
    switch ((lex_t)t->lex) {
    case L_STR:
    case L_ESC:
    case L_HEX:
        rc = str_slow(t, pp, end);
        if (rc == 1 && t->is_key) {
            cb_map_key(&t->ctx, t->str, t->str_len);
            t->gram = G_COLON;
        } else if (rc == 1) {
            cb_string(&t->ctx, t->str, t->str_len);
            after_value(t);
        }
        return rc;
    case L_NUM:
        rc = num_slow(t, pp, end);
        if (rc == 1) {
            cb_number(&t->ctx, t->numbuf, t->num_len);
            after_value(t);
        }
        return rc;
    case L_LIT:
        rc = lit_slow(t, pp, end);
        if (rc == 1) {
            count_item(&t->ctx); /* null, true, false */
            after_value(t);
        }
        return rc;
    case L_NONE:
        break;
    }
    return 1;
}

/* The end of a number starting at s (a '-' or digit) if it lies whole in [s, end) with a byte
 * after it; NULL if it runs to end (the slow path takes it); s itself if it is malformed. */
static inline const uint8_t *num_scan(const uint8_t *s, const uint8_t *end)
{
    const uint8_t *p = s;
    if (*p == '-' && ++p == end)
        return NULL;
    if (*p == '0') {
        p++;
    } else if (is_digit(*p)) {
        while (++p < end && is_digit(*p)) {
        }
    } else {
        return s;
    }
    if (p == end)
        return NULL;
    if (*p == '.') {
        if (++p == end)
            return NULL;
        if (!is_digit(*p))
            return s;
        while (++p < end && is_digit(*p)) {
        }
        if (p == end)
            return NULL;
    }
    if (*p == 'e' || *p == 'E') {
        if (++p == end)
            return NULL;
        if ((*p == '+' || *p == '-') && ++p == end)
            return NULL;
        if (!is_digit(*p))
            return s;
        while (++p < end && is_digit(*p)) {
        }
        if (p == end)
            return NULL;
    }
    return p;
}

/* Skips whitespace; saves state and returns if the feed ends first. */
#define SKIP_WS(state)                                                                                                 \
    for (;; p++) {                                                                                                     \
        if (p == end) {                                                                                                \
            t->gram = (state);                                                                                         \
            return 0;                                                                                                  \
        }                                                                                                              \
        if (*p > ' ' || !is_ws(*p))                                                                                    \
            break;                                                                                                     \
    }

static int tok_feed(tok_t *t, const uint8_t *p, size_t len)
{
    if (len == 0)
        return 0; /* p may be NULL */
    const uint8_t *end = p + len;
    const uint8_t *q;
    int rc;
    if (t->lex != L_NONE)
        goto resume;
dispatch:
    switch ((gram_t)t->gram) {
    case G_VALUE:
        goto value;
    case G_ARR_FIRST:
        goto arr_first;
    case G_OBJ_FIRST:
        goto obj_first;
    case G_OBJ_KEY:
        goto obj_key;
    case G_COLON:
        goto colon;
    case G_AFTER:
        goto after;
    case G_DONE:
        goto done;
    }
    return -EINVAL; /* not reached */

resume: /* a token cut by the end of a feed (or not fit for the fast path) */
    rc = tok_resume(t, &p, end);
    if (rc <= 0)
        return rc;
    goto dispatch;

value:
    SKIP_WS(G_VALUE);
    switch (*p++) {
    case '"':
        q = str_special(p, end);
        if (q < end && *q == '"') {
            cb_string(&t->ctx, p, (size_t)(q - p));
            p = q + 1;
            goto after;
        }
        t->is_key = false;
        goto string_slow;
    case '{':
        if (!open_value(t, true))
            return -EINVAL;
        goto obj_first;
    case '[':
        if (!open_value(t, false))
            return -EINVAL;
        goto arr_first;
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
        q = num_scan(p - 1, end);
        if (q == NULL) { /* runs to the end of the feed */
            t->lex = L_NUM;
            t->num = p[-1] == '-' ? N_MINUS : p[-1] == '0' ? N_ZERO : N_INT;
            t->numbuf[0] = (char)p[-1];
            t->num_len = 1;
            goto resume;
        }
        if (q == p - 1 || q - (p - 1) > NUM_CAP)
            return -EINVAL;
        cb_number(&t->ctx, (const char *)p - 1, (size_t)(q - (p - 1)));
        p = q;
        goto after;
    case 't':
        t->lit = 0;
        if (end - p < 3)
            goto literal_slow;
        if (memcmp(p, "rue", 3) != 0)
            return -EINVAL;
        p += 3;
        count_item(&t->ctx);
        goto after;
    case 'f':
        t->lit = 1;
        if (end - p < 4)
            goto literal_slow;
        if (memcmp(p, "alse", 4) != 0)
            return -EINVAL;
        p += 4;
        count_item(&t->ctx);
        goto after;
    case 'n':
        t->lit = 2;
        if (end - p < 3)
            goto literal_slow;
        if (memcmp(p, "ull", 3) != 0)
            return -EINVAL;
        p += 3;
        count_item(&t->ctx);
        goto after;
    default:
        return -EINVAL;
    }

literal_slow: /* cut by the end of the feed */
    t->lex = L_LIT;
    t->lit_pos = 1;
    goto resume;

arr_first:
    SKIP_WS(G_ARR_FIRST);
    if (*p != ']')
        goto value;
    p++;
    close_container(&t->ctx);
    goto after;

obj_first:
    SKIP_WS(G_OBJ_FIRST);
    if (*p != '}')
        goto obj_key;
    p++;
    close_container(&t->ctx);
    goto after;

after: /* a value was read */
    if (t->ctx.depth == 0)
        goto done;
    SKIP_WS(G_AFTER);
    if (*p == ',') {
        p++;
        if (top_is_map(t))
            goto obj_key;
        goto value;
    }
    if (*p != (top_is_map(t) ? '}' : ']'))
        return -EINVAL;
    p++;
    close_container(&t->ctx);
    goto after;

obj_key:
    SKIP_WS(G_OBJ_KEY);
    if (*p++ != '"')
        return -EINVAL;
    q = str_special(p, end);
    if (q < end && *q == '"') {
        cb_map_key(&t->ctx, p, (size_t)(q - p));
        p = q + 1;
        goto colon;
    }
    t->is_key = true;
    goto string_slow;

colon:
    SKIP_WS(G_COLON);
    if (*p++ != ':')
        return -EINVAL;
    goto value;

string_slow: /* p is past the opening quote; [p, q) is plain */
    t->lex = L_STR;
    t->str_len = 0;
    str_put(t, p, (size_t)(q - p));
    p = q;
    goto resume;

done: /* only whitespace may follow */
    SKIP_WS(G_DONE);
    return -EINVAL;
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
    usage_scan_t *s = malloc(sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    memset(&s->tok, 0, offsetof(tok_t, is_map)); /* the stack and buffers are written before read */
    s->rc = 0;
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
    wipe_free(s); /* str and numbuf held content; wiped once, by the process's free where it wipes */
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
