/* jtree: a strict JSON parser into a tree in a wiped arena, and a JSON writer into a wipe_buf_t;
 * shared by the request and response translators (node/xlate_req.c, node/xlate_resp.c).
 *
 * Parsing: yajl SAX with the wiping allocators (node/wipe.h) builds the whole document as a tree
 * in an arena whose blocks are wiped when freed; nesting is bounded; with strict_utf8 every string
 * and key must be strictly valid UTF-8 (yajl's own check lets overlong forms and surrogates
 * through); nothing but whitespace may follow the value. Every pointer in the tree points into the
 * arena and lives until jarena_free.
 *
 * Writing: the jw_* functions append to a caller's wipe_buf_t. The writer puts the commas between
 * the members and elements of what jw_open opened (and jw_node writes); at depth 0 it writes no
 * separators, so a caller may also assemble JSON text itself with jw_raw and still use jw_str,
 * jw_int and jw_node for the values. The first error (-E2BIG at the buffer's max, -ENOMEM) is
 * kept in err, makes every later call a no-op and is reported once to error_cb. Pure code: no I/O,
 * no globals. */
#ifndef LLMRELAY_NODE_JTREE_H
#define LLMRELAY_NODE_JTREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "node/wipe.h"

/* ---- arena ---- */

typedef struct jarena_block jarena_block_t;

/* Blocks of zeroed, 16-byte aligned allocations, all wiped and freed at once. Initialise with
 * JARENA_INIT(max) or jarena_init. */
typedef struct jarena {
    jarena_block_t *head;
    size_t total; /* bytes of the blocks allocated */
    size_t max;   /* bound on total; 0: none */
    int err;      /* why the last allocation failed: -ENOMEM, -E2BIG (past max) */
} jarena_t;

#define JARENA_INIT(max_bytes)                                                                                         \
    {                                                                                                                  \
        NULL, 0, (max_bytes), 0                                                                                        \
    }

void jarena_init(jarena_t *a, size_t max);
/* n zeroed bytes owned by the arena; NULL (reason in a->err) on failure. */
void *jarena_alloc(jarena_t *a, size_t n);
/* A NUL-terminated copy of the n bytes at s; NULL on failure. */
char *jarena_strdup(jarena_t *a, const void *s, size_t n);
/* Wipes and frees every block; the arena is empty (same max) and may be used again. */
void jarena_free(jarena_t *a);

/* ---- tree ---- */

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_OBJ, J_ARR } jtype_t;

typedef struct jnode {
    jtype_t type;
    bool b;          /* J_BOOL */
    const char *s;   /* J_STR: the decoded bytes; J_NUM: the number's text (both NUL-terminated) */
    size_t n;        /* bytes at s */
    const char *key; /* the member's name (NUL-terminated) inside an object, else NULL */
    size_t keylen;
    struct jnode *first, *last, *next, *parent; /* members and elements in order */
    size_t count;
} jnode_t;

typedef struct jtree_parse_opts {
    unsigned max_depth; /* containers may nest this deep (the outermost one is depth 1) */
    bool strict_utf8;
} jtree_parse_opts_t;

/* Parses the len bytes at buf (borrowed) into a tree in a; *root is the top value.
 * Returns 0; -ENOMEM; -E2BIG (a's max reached); -EILSEQ (strict_utf8: a string or key that is not
 * strictly valid UTF-8); -ELOOP (nesting deeper than max_depth); -EINVAL (not one JSON value).
 * at (may be NULL) gets, on failure, the byte offset where the parser stopped; str_bytes (may be
 * NULL) the decoded bytes of every string value (keys not counted). */
int jtree_parse(jarena_t *a, const uint8_t *buf, size_t len, const jtree_parse_opts_t *opts, jnode_t **root, size_t *at,
                size_t *str_bytes);

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing past U+10FFFF. yajl's own
 * check accepts all three, and a decoded "\uDC00" escape yields a surrogate too. */
bool jtree_utf8_valid(const unsigned char *s, size_t n);

/* ---- writer ---- */

#define JW_MAX_DEPTH 160 /* containers the writer may have open at once */

typedef struct jw jw_t;
typedef void (*jw_error_cb)(jw_t *w, int err);

struct jw {
    wipe_buf_t *b; /* borrowed */
    size_t start;  /* b->len when the writer began: where jw_end truncates back to */
    int err;       /* the first error; 0 */
    unsigned depth;
    bool after_key; /* a key was written: the next value needs no comma */
    bool first[JW_MAX_DEPTH + 1];
    jw_error_cb error_cb; /* NULL, or called once with the first error */
    void *data;           /* for error_cb */
};

/* Starts writing at the end of b (no error callback: set error_cb and data after this). */
void jw_begin(jw_t *w, wipe_buf_t *b);
/* Ends a write: on failure the bytes appended since jw_begin are wiped and dropped. Returns err. */
int jw_end(jw_t *w);
/* Records err as the writer's error unless it has one. */
void jw_fail(jw_t *w, int err);

/* The comma before a value, unless it is the first in its container or follows its key (for a
 * value then assembled with jw_put). */
void jw_sep(jw_t *w);
/* Bytes as they are, no separator: n bytes at p; the NUL-terminated text s. */
void jw_put(jw_t *w, const void *p, size_t n);
static inline void jw_raw(jw_t *w, const char *s)
{
    jw_put(w, s, strlen(s)); /* inline: the length of a literal is known at compile time */
}
/* A value given as JSON text (a separator, then the bytes). */
void jw_value(jw_t *w, const char *s, size_t n);
/* A string value, quoted and escaped. */
void jw_strn(jw_t *w, const char *s, size_t n);
static inline void jw_str(jw_t *w, const char *s)
{
    jw_strn(w, s, strlen(s));
}
/* The escaped bytes of a string without the quotes (for a string assembled from pieces). */
void jw_str_body(jw_t *w, const char *s, size_t n);
void jw_int(jw_t *w, int64_t v);
/* An object member's name and the ':' (the value follows). */
void jw_keyn(jw_t *w, const char *k, size_t n);
static inline void jw_key(jw_t *w, const char *k)
{
    jw_keyn(w, k, strlen(k));
}
/* '{' or '[' (after a separator), and its closing character. */
void jw_open(jw_t *w, char ch);
void jw_close(jw_t *w, char ch);
/* A parsed value, written back compactly (members in their order, strings re-escaped). */
void jw_node(jw_t *w, const jnode_t *j);
/* j's JSON text as one JSON string (tool-call arguments in OpenAI's shape). */
void jw_node_as_string(jw_t *w, const jnode_t *j);

#endif
