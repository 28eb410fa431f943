/* test_privacy.c — unit tests of node/privacy and node/wipefree: what a freed chunk keeps
 * under glibc's own free and under the wiping free (called directly and by a library),
 * realloc's moves, the process and thread settings, and that blocks h2o recycles (pool
 * chunks, buffers) come back wiped.
 *
 * The freed-chunk measurement reads memory after free(): it runs only in the glibc build
 * (skipped under AddressSanitizer, whose allocator is another one and reports the read). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <errno.h>
#include <h2o/socket.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "node/privacy.h"

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif

#define CHUNK_BYTES 500
#define LINK_BYTES (4 * sizeof(void *))

static const char canary[] = "PRIVACY-CANARY-7f3a9c";

/* ---- freed chunks ----------------------------------------------------------------------- */

extern void __libc_free(void *p);

#ifndef TEST_ASAN
/* Fills n bytes at p with the canary pattern. */
static void fill(unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)canary[i % (sizeof(canary) - 1)];
}

/* How many bytes of the freed block at addr (n bytes) still hold the pattern. The first
 * LINK_BYTES of a freed chunk hold the allocator's free-list links (heap addresses),
 * written over the content; their bytes match a pattern byte by chance now and then ('a'
 * is 0x61, a heap address byte can be too), so they are not counted. The address comes as
 * an integer: it hides the read after free from the compiler. No allocation may happen
 * between the free and this call (it would take the chunk back). */
static size_t survivors(uintptr_t addr, size_t n)
{
    const volatile unsigned char *q = (const volatile unsigned char *)addr;
    size_t count = 0;
    for (size_t i = LINK_BYTES; i < n; i++)
        count += q[i] == (unsigned char)canary[i % (sizeof(canary) - 1)];
    return count;
}
#endif

static void test_freed_chunk_wiped(void **state)
{
    (void)state;
#ifdef TEST_ASAN
    skip(); /* the sanitizer's allocator is in charge and reports reads after free */
#else
    assert_int_equal(privacy_wipefree_check(), 0);
    /* glibc's own free (the tcache keeps the chunk): the content stays */
    unsigned char *p = malloc(CHUNK_BYTES);
    assert_non_null(p);
    fill(p, CHUNK_BYTES);
    volatile uintptr_t addr = (uintptr_t)p;
    __libc_free(p);
    size_t plain = survivors(addr, CHUNK_BYTES);
    print_message("glibc's free: %zu of %zu canary bytes past the links survive\n", plain,
                  (size_t)(CHUNK_BYTES - LINK_BYTES));
    assert_true(plain >= CHUNK_BYTES - 32 - LINK_BYTES);
    /* the wiping free: nothing */
    p = malloc(CHUNK_BYTES);
    assert_non_null(p);
    fill(p, CHUNK_BYTES);
    addr = (uintptr_t)p;
    free(p);
    size_t wiped = survivors(addr, CHUNK_BYTES);
    print_message("wiping free: %zu survive\n", wiped);
    assert_int_equal(wiped, 0);
    /* a library's free (libcurl calls free through its PLT): nothing either */
    p = malloc(CHUNK_BYTES);
    assert_non_null(p);
    fill(p, CHUNK_BYTES);
    addr = (uintptr_t)p;
    curl_free(p);
    assert_int_equal(survivors(addr, CHUNK_BYTES), 0);
    /* a large (mmapped) chunk goes back to the kernel: its address is no longer mapped,
     * so it is not read; it must still be freed without trouble */
    p = malloc(1 << 20);
    assert_non_null(p);
    fill(p, 1 << 20);
    free(p);
#endif
}

static void test_realloc_wipes_what_it_leaves(void **state)
{
    (void)state;
#ifdef TEST_ASAN
    skip();
#else
    /* growing past the block moves it: the old block is wiped */
    unsigned char *p = malloc(CHUNK_BYTES);
    assert_non_null(p);
    fill(p, CHUNK_BYTES);
    volatile uintptr_t addr = (uintptr_t)p;
    unsigned char *q = realloc(p, 64 * 1024);
    assert_non_null(q);
    assert_true((uintptr_t)q != addr);
    /* the content moved with it */
    assert_memory_equal(q, canary, sizeof(canary) - 1);
    size_t left = survivors(addr, CHUNK_BYTES);
    assert_int_equal(left, 0);
    /* shrinking a block by less than half keeps it in place */
    unsigned char *r = realloc(q, 40 * 1024);
    assert_ptr_equal(r, q);
    assert_memory_equal(r, canary, sizeof(canary) - 1);
    /* shrinking a large block to less than half moves it, and wipes the old one */
    r = realloc(r, 64 * 1024);
    assert_non_null(r);
    fill(r, 64 * 1024);
    addr = (uintptr_t)r;
    unsigned char *s = realloc(r, 1000);
    assert_non_null(s);
    assert_true((uintptr_t)s != addr);
    assert_memory_equal(s, canary, sizeof(canary) - 1);
    assert_int_equal(survivors(addr, 64 * 1024), 0);
    /* reallocarray: overflow refused, the block untouched; otherwise as realloc */
    errno = 0;
    volatile size_t huge = SIZE_MAX / 2; /* hidden from the compiler's size checks */
    volatile uintptr_t kept = (uintptr_t)s; /* refused: s is still the block */
    void *refused = reallocarray(s, huge, 4);
    assert_null(refused);
    assert_int_equal(errno, ENOMEM);
    assert_memory_equal((void *)kept, canary, sizeof(canary) - 1);
    s = reallocarray((void *)kept, 1000, 2);
    assert_non_null(s);
    assert_memory_equal(s, canary, sizeof(canary) - 1);
    /* realloc(p, 0) frees; realloc(NULL, n) allocates */
    assert_null(realloc(s, 0));
    s = realloc(NULL, 10);
    assert_non_null(s);
    free(s);
#endif
}

/* ---- process and thread settings ------------------------------------------------------------ */

static void test_process_init(void **state)
{
    (void)state;
    assert_int_equal(privacy_process_init(), 0);
    assert_int_equal(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 0);
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_CORE, &rl), 0);
    assert_int_equal(rl.rlim_cur, 0);
    assert_int_equal(rl.rlim_max, 0);
    assert_true(h2o_socket_buffer_mmap_settings.threshold == SIZE_MAX);
}

/* ---- h2o's recycled blocks ------------------------------------------------------------------ */

/* Takes 16 chunks (h2o's list holds at most 16; the recycled ones come first) and counts the
 * canaries in them. */
static int canaries_on_recycle_list(void)
{
    h2o_mem_pool_t pools[16];
    int found = 0;
    for (size_t i = 0; i < 16; i++) {
        h2o_mem_init_pool(&pools[i]);
        (void)h2o_mem_alloc_pool(&pools[i], 1);
        const char *chunk = (const char *)pools[i].chunks;
        if (memmem(chunk, 4096, canary, sizeof(canary) - 1) != NULL)
            found++;
    }
    for (size_t i = 0; i < 16; i++)
        h2o_mem_clear_pool(&pools[i]);
    return found;
}

static void test_pool_chunks_wiped_when_recycled(void **state)
{
    (void)state;
    assert_int_equal(privacy_recycle_check(), 0); /* our h2o_mem_free_recycle is the one in force */
    h2o_mem_pool_t pool;
    h2o_mem_init_pool(&pool);
    void *first = NULL;           /* cleared last, so on top of h2o's list */
    for (int i = 0; i < 2; i++) { /* two chunks with content */
        char *p = h2o_mem_alloc_pool(&pool, 1000);
        memset(p, 'x', 1000);
        memcpy(p + 100, canary, sizeof(canary));
        if (first == NULL)
            first = pool.chunks;
        for (int j = 0; j < 3; j++)
            memset(h2o_mem_alloc_pool(&pool, 1000), 'y', 1000); /* the chunk is full */
    }
    h2o_mem_clear_pool(&pool);
    /* the chunk came back to the list (h2o takes it again) but wiped */
    h2o_mem_pool_t probe;
    h2o_mem_init_pool(&probe);
    (void)h2o_mem_alloc_pool(&probe, 1);
    assert_ptr_equal(probe.chunks, first);
    h2o_mem_clear_pool(&probe);
    assert_int_equal(canaries_on_recycle_list(), 0);
}

static void test_buffers_wiped_when_recycled(void **state)
{
    (void)state;
    /* a prototype that recycles, like h2o's HTTP/2 write buffers (16 x 80 KiB) */
    static h2o_buffer_prototype_t proto;
    memset(&proto, 0, sizeof(proto));
    proto.allocator.max = 16;
    proto._initial_buf.capacity = 8192;
    h2o_buffer_t *b;
    h2o_buffer_init(&b, &proto);
    h2o_iovec_t room = h2o_buffer_reserve(&b, 100);
    memcpy(room.base, canary, sizeof(canary));
    b->size += sizeof(canary);
    h2o_buffer_t *block = b;
    h2o_buffer_consume(&b, b->size); /* emptied: the buffer goes back to the list */
    assert_int_equal(proto.allocator.cnt, 1);
    room = h2o_buffer_reserve(&b, 100);
    assert_ptr_equal(b, block); /* the same block again, wiped */
    assert_null(memmem(b->_buf, b->capacity, canary, sizeof(canary) - 1));
    h2o_buffer_dispose(&b);
    /* empty the list so nothing is reported as leaked */
    while (proto.allocator.cnt > 0)
        free(h2o_mem_alloc_recycle(&proto.allocator, 0));
}

static void test_socket_buffers_wiped_when_recycled(void **state)
{
    (void)state;
    /* a socket buffer read in parts: content, part consumed, more appended (h2o moves the
     * rest to the front when room is short), then all consumed: back on the list, wiped */
    h2o_buffer_t *b;
    h2o_buffer_init(&b, &h2o_socket_buffer_prototype);
    size_t kept_before = h2o_socket_buffer_prototype.allocator.cnt;
    h2o_iovec_t room = h2o_buffer_reserve(&b, 100);
    for (size_t off = 0; off + sizeof(canary) <= room.len && off < 6000; off += sizeof(canary))
        memcpy(room.base + off, canary, sizeof(canary));
    b->size += 6000;
    h2o_buffer_consume(&b, 5000);
    room = h2o_buffer_reserve(&b, 2500); /* moves the last 1000 bytes to the front */
    assert_ptr_equal(b->bytes, b->_buf);
    memcpy(room.base, canary, sizeof(canary));
    b->size += sizeof(canary);
    h2o_buffer_t *block = b;
    h2o_buffer_consume(&b, b->size);
    assert_int_equal(h2o_socket_buffer_prototype.allocator.cnt, kept_before + 1);
    assert_ptr_equal(h2o_socket_buffer_prototype.allocator._link, block);
    size_t usable = malloc_usable_size(block);
    /* past the list link, nothing: the whole block was wiped */
    const char *raw = (const char *)block;
    for (size_t i = sizeof(void *); i < usable; i++)
        if (raw[i] != 0)
            fail_msg("byte %zu of a recycled socket buffer is not wiped", i);
}

static void test_consumed_buffer_wiped_whole(void **state)
{
    (void)state;
    /* a recycling prototype (like h2o's HTTP/2 write buffers): a buffer that was consumed in
     * part is wiped whole, even bytes written past what was committed */
    static h2o_buffer_prototype_t proto;
    memset(&proto, 0, sizeof(proto));
    proto.allocator.max = 16;
    proto._initial_buf.capacity = 8192;
    h2o_buffer_t *b;
    h2o_buffer_init(&b, &proto);
    h2o_iovec_t room = h2o_buffer_reserve(&b, 400);
    memcpy(room.base, canary, sizeof(canary));
    memcpy(room.base + 300, canary, sizeof(canary)); /* written, never committed */
    b->size += 100;
    h2o_buffer_consume(&b, 10);
    h2o_buffer_t *block = b;
    h2o_buffer_consume(&b, b->size);
    assert_int_equal(proto.allocator.cnt, 1);
    assert_null(memmem((const char *)block + sizeof(void *), malloc_usable_size(block) - sizeof(void *), canary,
                       sizeof(canary) - 1));
    while (proto.allocator.cnt > 0)
        free(h2o_mem_alloc_recycle(&proto.allocator, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_freed_chunk_wiped),
        cmocka_unit_test(test_realloc_wipes_what_it_leaves),
        cmocka_unit_test(test_process_init),
        cmocka_unit_test(test_socket_buffers_wiped_when_recycled),
        cmocka_unit_test(test_consumed_buffer_wiped_whole),
        cmocka_unit_test(test_pool_chunks_wiped_when_recycled),
        cmocka_unit_test(test_buffers_wiped_when_recycled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
