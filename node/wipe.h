/* wipe: freeing memory that held request or response content without leaving the content behind.
 *
 * Every buffer that may hold content (prompts, outputs, upstream bytes) is freed through
 * wipe_free, which zeroes the whole usable size of the allocation first; growth goes through
 * wipe_realloc, which never lets realloc move content and leave the old copy in the heap.
 * wipe_yajl_alloc_funcs_init hands the same functions to yajl so its parser and generator
 * buffers are wiped too. */
#ifndef LLMRELAY_NODE_WIPE_H
#define LLMRELAY_NODE_WIPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <yajl/yajl_common.h>

/* Wipes n bytes at p (explicit_bzero: never optimised away). Every wipe of content goes
 * through here, so that a build configured with -DLLMRELAY_NO_WIPE=ON — made only by
 * ops/bench/relay, to measure what wiping costs — can leave them all out. */
static inline void wipe_bytes(void *p, size_t n)
{
#ifndef LLMRELAY_NO_WIPE
    explicit_bzero(p, n);
#else
    (void)p;
    (void)n;
#endif
}

/* Frees p with its usable bytes zeroed: by the process's wiping free (node/wipefree.c)
 * where it is linked in, else by zeroing first. NULL is a no-op. p must come from malloc. */
void wipe_free(void *p);

/* Like realloc, but the old block is always wiped and freed: allocates n bytes, copies
 * min(n, usable size of p) bytes, wipe_free(p). p == NULL acts as malloc. n == 0 frees p and
 * returns NULL. On failure returns NULL and leaves p untouched (still owned by the caller). */
void *wipe_realloc(void *p, size_t n);

/* Fills *af with malloc / wipe_realloc / wipe_free, for yajl_alloc and yajl_gen_alloc.
 * The functions hold no state: one af may serve any number of handles and threads. */
void wipe_yajl_alloc_funcs_init(yajl_alloc_funcs *af);

/* A growable byte buffer whose every old or freed block is wiped.
 * data is owned by the buffer (NULL while cap == 0); len bytes are in use; the buffer never
 * grows past max bytes. Initialise with wipe_buf_init (or WIPE_BUF_INIT(max)); a buffer whose
 * max is 0 refuses every non-empty append. */
typedef struct wipe_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
    size_t max;
} wipe_buf_t;

#define WIPE_BUF_INIT(max_bytes)                                                                                       \
    {                                                                                                                  \
        NULL, 0, 0, (max_bytes)                                                                                        \
    }

void wipe_buf_init(wipe_buf_t *b, size_t max);
/* Makes room for n more bytes. 0, -E2BIG past max, -ENOMEM. */
int wipe_buf_reserve(wipe_buf_t *b, size_t n);
/* Appends n bytes copied from p. 0, -E2BIG (nothing appended) past max, -ENOMEM. */
int wipe_buf_append(wipe_buf_t *b, const void *p, size_t n);
/* Wipes the bytes in use and sets len to 0; keeps the allocation for reuse. */
void wipe_buf_reset(wipe_buf_t *b);
/* Wipes and frees the allocation; the buffer is empty (same max) and may be used again. */
void wipe_buf_free(wipe_buf_t *b);

#endif
