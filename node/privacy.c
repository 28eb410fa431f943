/* privacy.c — what the node does so that memory freed by anyone, and memory that glibc or
 * h2o recycle, carries no request or response content once a request is over.
 *
 * glibc 2.36 keeps the bytes of freed chunks; node/wipefree.c replaces free for the whole
 * process (privacy_wipefree_check says whether that is in force).
 *
 * h2o 2.2.5 keeps freed blocks on thread-local lists for reuse, unwiped: request-pool
 * chunks (4 KiB: decoded headers, Authorization included), socket buffers, and the HTTP/2
 * write buffers (80 KiB, up to 16 per thread: whole responses). The last two lists are
 * static inside libh2o, out of reach of any setting. Every one of them is filled by
 * h2o_mem_free_recycle, which libh2o calls through its PLT: this file defines that
 * function, so the executable's definition replaces the library's for all of libh2o, and
 * ours wipes each block before keeping it. privacy_recycle_check proves at start-up that
 * the replacement is in force (a static link or a -Bsymbolic libh2o would bypass it).
 * An HTTP/2 write buffer is wiped as far as it was written; every other block whole
 * (recycled_dirty_bytes). */
#include "node/privacy.h"
#include "node/wipe.h"

#include <dlfcn.h>
#include <errno.h>
#include <h2o/socket.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define PRIVACY_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PRIVACY_ASAN 1
#endif
#endif

/* ---- glibc: the wiping free ------------------------------------------------------------- */

#if !defined(PRIVACY_ASAN) && !defined(LLMRELAY_NO_WIPE)
/* Defined by node/wipefree.c when it is linked in: the wiping free itself. */
extern void (*const llmrelay_wipefree)(void *) __attribute__((weak));
#endif

int privacy_wipefree_check(void)
{
#if defined(PRIVACY_ASAN) || defined(LLMRELAY_NO_WIPE)
    return 0;
#else
    if (&llmrelay_wipefree == NULL)
        return -ENOTSUP;
    void *found = dlsym(RTLD_DEFAULT, "free");
    return found != NULL && found == (void *)llmrelay_wipefree ? 0 : -ENOTSUP;
#endif
}

/* ---- process and thread settings --------------------------------------------------------- */

int privacy_process_init(void)
{
    int ret = privacy_wipefree_check();
    int r2 = privacy_recycle_check();
    if (ret == 0)
        ret = r2;
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 && ret == 0)
        ret = -errno;
    struct rlimit none = {0, 0};
    if (setrlimit(RLIMIT_CORE, &none) != 0 && ret == 0)
        ret = -errno;
    h2o_socket_buffer_mmap_settings.threshold = SIZE_MAX;
    return ret;
}

/* ---- h2o's recycled chunks and buffers ---------------------------------------------------- */

static __thread unsigned long recycled_wiped;

/* How many bytes at the start of a block h2o recycles may hold content. A block of an
 * h2o_buffer_t that only ever grew by appending — the HTTP/2 write buffers, 80 KiB each,
 * recycled after every write to a client — holds content only in its header and its first
 * `size` bytes: h2o 2.2.5 writes into a buffer by h2o_buffer_reserve + writing + size += n
 * and nothing else, and bytes moves away from _buf only when a reader consumes part of the
 * buffer (which also may leave old bytes past the end after a later memmove). Every other
 * block — socket buffers (consumed in parts), pool chunks — is wiped whole. A block came
 * wiped (from this function or the wiping free) or fresh from the kernel, so what lies past
 * the written end is zero.
 * The block is taken for an h2o_buffer_t only when its header says so in every field: its
 * prototype is the one whose allocator recycles it, its capacity is the prototype's, and
 * bytes is _buf with size within the capacity. */
static size_t recycled_dirty_bytes(h2o_mem_recycle_t *allocator, void *p)
{
    size_t usable = malloc_usable_size(p);
    const h2o_buffer_t *b = p;
    const h2o_buffer_prototype_t *proto = (const h2o_buffer_prototype_t *)allocator;
    if (usable < offsetof(h2o_buffer_t, _buf) || allocator == &h2o_socket_buffer_prototype.allocator ||
        b->_prototype != proto || b->capacity != proto->_initial_buf.capacity || b->bytes != b->_buf ||
        b->size > b->capacity || offsetof(h2o_buffer_t, _buf) + b->capacity > usable)
        return usable;
    return offsetof(h2o_buffer_t, _buf) + b->size;
}

/* Replaces libh2o's own h2o_mem_free_recycle for every caller in the process: libh2o calls
 * it through its PLT, and the executable's definition comes first in symbol lookup. Same
 * behaviour (keep up to allocator->max blocks on a LIFO list linked through their first
 * word, free the rest), except that a block is wiped before it is kept: recycled pool
 * chunks, socket buffers and HTTP/2 write buffers then carry nothing. */
void h2o_mem_free_recycle(h2o_mem_recycle_t *allocator, void *p)
{
    recycled_wiped++;
    if (allocator->cnt == allocator->max) {
        free(p); /* the wiping free clears it */
        return;
    }
    wipe_bytes(p, recycled_dirty_bytes(allocator, p));
    *(void **)p = allocator->_link;
    allocator->_link = p;
    allocator->cnt++;
}

int privacy_recycle_check(void)
{
    unsigned long before = recycled_wiped;
    h2o_mem_pool_t pool;
    h2o_mem_init_pool(&pool);
    (void)h2o_mem_alloc_pool(&pool, 1);
    h2o_mem_clear_pool(&pool);
    return recycled_wiped != before ? 0 : -ENOTSUP;
}
