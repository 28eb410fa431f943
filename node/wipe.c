/* wipe: free and grow memory that held content without leaving copies in the heap.
 *
 * glibc does not clear freed chunks (and its tcache keeps them intact), and realloc may move
 * a block and free the old one as is. So content buffers are freed with wipe_free
 * (explicit_bzero over malloc_usable_size, which covers the slack past the requested size
 * too) and grown with wipe_realloc (malloc, copy, wipe the old block). wipe_buf_t grows
 * geometrically, so appends cost amortised O(1) copies. */
#include "node/wipe.h"

#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

/* Defined by node/wipefree.c when the executable has the wiping free. */
extern void (*const llmrelay_wipefree)(void *) __attribute__((weak));

void wipe_free(void *p)
{
    if (p == NULL)
        return;
    if (&llmrelay_wipefree == NULL) /* unit tests, the sanitizer build: no wiping free */
        wipe_bytes(p, malloc_usable_size(p));
    free(p);
}

void *wipe_realloc(void *p, size_t n)
{
    if (n == 0) {
        wipe_free(p);
        return NULL;
    }
    void *q = malloc(n);
    if (q == NULL)
        return NULL;
    if (p != NULL) {
        size_t old = malloc_usable_size(p);
        memcpy(q, p, old < n ? old : n);
        wipe_free(p);
    }
    return q;
}

static void *yajl_wipe_malloc(void *ctx, size_t n)
{
    (void)ctx;
    return malloc(n);
}

static void *yajl_wipe_realloc(void *ctx, void *p, size_t n)
{
    (void)ctx;
    return wipe_realloc(p, n);
}

static void yajl_wipe_free(void *ctx, void *p)
{
    (void)ctx;
    wipe_free(p);
}

void wipe_yajl_alloc_funcs_init(yajl_alloc_funcs *af)
{
    af->malloc = yajl_wipe_malloc;
    af->realloc = yajl_wipe_realloc;
    af->free = yajl_wipe_free;
    af->ctx = NULL;
}

void wipe_buf_init(wipe_buf_t *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

int wipe_buf_reserve(wipe_buf_t *b, size_t n)
{
    if (n > b->max || b->len > b->max - n)
        return -E2BIG;
    size_t need = b->len + n;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap < 256 ? 256 : b->cap;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > b->max)
        cap = b->max;
    uint8_t *d = wipe_realloc(b->data, cap);
    if (d == NULL)
        return -ENOMEM;
    b->data = d;
    b->cap = cap;
    return 0;
}

int wipe_buf_append(wipe_buf_t *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    int r = wipe_buf_reserve(b, n);
    if (r < 0)
        return r;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void wipe_buf_reset(wipe_buf_t *b)
{
    if (b->len > 0)
        wipe_bytes(b->data, b->len);
    b->len = 0;
}

void wipe_buf_free(wipe_buf_t *b)
{
    wipe_free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}
