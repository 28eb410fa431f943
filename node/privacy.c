/* privacy.c — what the node does so that memory freed by anyone, and memory that glibc or
 * h2o recycle, carries no request or response content once a request is over.
 *
 * glibc 2.36: mallopt(M_PERTURB, b) makes free() fill a chunk with b, except for chunks
 * parked in the per-thread tcache (measured: a freed 500-byte chunk kept 484 canary bytes).
 * The tcache can only be turned off by GLIBC_TUNABLES at process start, so privacy_reexec
 * adds the tunable and re-executes the binary once; a marker variable stops a loop when
 * the tunable does not take (secure-execution mode drops GLIBC_TUNABLES).
 *
 * h2o 2.2.5 keeps freed blocks on thread-local lists for reuse, unwiped: request-pool
 * chunks (4 KiB: decoded headers, Authorization included), socket buffers, and the HTTP/2
 * write buffers (80 KiB, up to 16 per thread: whole responses). The last two lists are
 * static inside libh2o, out of reach of any setting. Every one of them is filled by
 * h2o_mem_free_recycle, which libh2o calls through its PLT: this file defines that
 * function, so the executable's definition replaces the library's for all of libh2o, and
 * ours wipes each block before keeping it. privacy_recycle_check proves at start-up that
 * the replacement is in force (a static link or a -Bsymbolic libh2o would bypass it).
 * The socket-buffer list is also turned off per thread (allocator.max = 0): those buffers
 * are freed, and glibc's perturb wipes them. */
#include "node/privacy.h"

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

#define TCACHE_KEY "glibc.malloc.tcache_count="
#define TUNABLES_MAX 4096

/* ---- glibc: tcache off, perturb on ------------------------------------------------------ */

/* Is [s, s + n) the entry "key=..." for key (with the '=')? */
static bool entry_is(const char *s, size_t n, const char *key)
{
    size_t k = strlen(key);
    return n >= k && memcmp(s, key, k) == 0;
}

int privacy_tunables_value(const char *current, char *out, size_t outlen)
{
    const char *cur = current != NULL ? current : "";
    bool has = false;
    size_t len = 0;
    for (const char *p = cur; *p != '\0';) {
        size_t n = strcspn(p, ":");
        if (entry_is(p, n, TCACHE_KEY)) {
            /* the last tcache_count entry is the one glibc applies */
            has = n == strlen(PRIVACY_TUNABLE) && memcmp(p, PRIVACY_TUNABLE, n) == 0;
        } else if (n > 0) {
            if (len + n + 1 >= outlen)
                return -E2BIG;
            if (len > 0)
                out[len++] = ':';
            memcpy(out + len, p, n);
            len += n;
        }
        p += n;
        if (*p == ':')
            p++;
    }
    if (has) {
        size_t n = strlen(cur);
        if (n + 1 > outlen)
            return -E2BIG;
        memcpy(out, cur, n + 1);
        return 0;
    }
    size_t t = strlen(PRIVACY_TUNABLE);
    if (len + 1 + t + 1 > outlen)
        return -E2BIG;
    if (len > 0)
        out[len++] = ':';
    memcpy(out + len, PRIVACY_TUNABLE, t + 1);
    return 1;
}

int privacy_reexec(int argc, char **argv)
{
    (void)argc;
#ifdef PRIVACY_ASAN
    (void)argv;
    return 0;
#else
    static char value[TUNABLES_MAX];
    int ret = privacy_tunables_value(getenv("GLIBC_TUNABLES"), value, sizeof(value));
    bool reexecuted = getenv(PRIVACY_REEXEC_MARKER) != NULL;
    unsetenv(PRIVACY_REEXEC_MARKER);
    int result = 0;
    if (ret == 1 && !reexecuted) {
        if (setenv("GLIBC_TUNABLES", value, 1) != 0 || setenv(PRIVACY_REEXEC_MARKER, "1", 1) != 0)
            return -errno;
        execv("/proc/self/exe", argv);
        result = -errno; /* still here: the exec failed, go on as we are */
        unsetenv(PRIVACY_REEXEC_MARKER);
    } else if (ret != 0) {
        result = ret == 1 ? -ENOTSUP : ret; /* re-executed and still no tunable, or too long */
    }
    if (mallopt(M_PERTURB, PRIVACY_PERTURB_BYTE) != 1 && result == 0)
        result = -ENOTSUP;
    return result;
#endif
}

/* ---- process and thread settings --------------------------------------------------------- */

int privacy_process_init(void)
{
    int ret = privacy_recycle_check();
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 && ret == 0)
        ret = -errno;
    struct rlimit none = {0, 0};
    if (setrlimit(RLIMIT_CORE, &none) != 0 && ret == 0)
        ret = -errno;
    h2o_socket_buffer_mmap_settings.threshold = SIZE_MAX;
    return ret;
}

void privacy_thread_init(void)
{
    h2o_socket_buffer_prototype.allocator.max = 0;
}

/* ---- h2o's recycled chunks and buffers ---------------------------------------------------- */

static __thread unsigned long recycled_wiped;

/* Replaces libh2o's own h2o_mem_free_recycle for every caller in the process: libh2o calls
 * it through its PLT, and the executable's definition comes first in symbol lookup. Same
 * behaviour (keep up to allocator->max blocks on a LIFO list linked through their first
 * word, free the rest), except that a block is wiped before it is kept: recycled pool
 * chunks, socket buffers and HTTP/2 write buffers then carry nothing. */
void h2o_mem_free_recycle(h2o_mem_recycle_t *allocator, void *p)
{
    explicit_bzero(p, malloc_usable_size(p));
    recycled_wiped++;
    if (allocator->cnt == allocator->max) {
        free(p);
        return;
    }
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
