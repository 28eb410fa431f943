/* wipefree.c — free() that wipes: no freed heap chunk keeps what it held.
 *
 * The executable defines free, realloc and reallocarray; the dynamic linker binds every
 * shared library's calls to them (libh2o, libcurl, OpenSSL, nghttp2, libuv, yajl: each
 * calls free through its PLT, and the executable comes first in symbol lookup). free wipes
 * the chunk's usable bytes and hands it to glibc's own __libc_free; glibc's tcache then
 * keeps only wiped chunks. This replaces the earlier plan (tcache off by GLIBC_TUNABLES and
 * a re-exec, plus M_PERTURB): that filled every chunk twice (on malloc and on free) and
 * sent every small allocation through the arena lock — about 2.5 us per request; this
 * costs one memset of what is freed (docs/design-notes.md, "Wiping freed memory").
 *
 * realloc cannot be left to glibc: when it moves a block it frees the old one internally,
 * unwiped. Ours moves by malloc + copy + (wiping) free, and keeps the block in place when
 * it still fits. Chunks glibc obtained by mmap (large blocks) are not wiped: munmap gives
 * the pages back to the kernel, which zeroes them before any reuse.
 *
 * Linked into the llmrelay executable only (and the privacy unit test); not into the
 * sanitizer build, whose runtime owns malloc and free. */
#if defined(__SANITIZE_ADDRESS__)
#define WIPEFREE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define WIPEFREE_ASAN 1
#endif
#endif

#ifndef WIPEFREE_ASAN

#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <string.h>

extern void __libc_free(void *p);

/* glibc's chunk header: the size word before the user pointer; bit 1 marks an mmapped
 * chunk. Stable since glibc 2.0 (malloc/malloc.c, IS_MMAPPED). */
#define CHUNK_IS_MMAPPED 0x2

void free(void *p)
{
    if (p == NULL)
        return;
    if ((((const size_t *)p)[-1] & CHUNK_IS_MMAPPED) == 0)
        explicit_bzero(p, malloc_usable_size(p));
    __libc_free(p);
}

void *realloc(void *p, size_t n)
{
    if (p == NULL)
        return malloc(n);
    if (n == 0) {
        free(p);
        return NULL;
    }
    size_t have = malloc_usable_size(p);
    /* still fits: keep it, unless it shrinks a large block to less than half */
    if (n <= have && (have <= 4096 || n >= have / 2))
        return p;
    void *q = malloc(n);
    if (q == NULL)
        return NULL; /* p stays valid, as realloc promises */
    memcpy(q, p, n < have ? n : have);
    free(p);
    return q;
}

void *reallocarray(void *p, size_t count, size_t size)
{
    size_t n;
    if (__builtin_mul_overflow(count, size, &n)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, n);
}

/* privacy_wipefree_check compares this with what the dynamic linker finds for "free". */
void (*const llmrelay_wipefree)(void *) = free;

#endif
