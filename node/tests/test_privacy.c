/* test_privacy.c — unit tests of node/privacy: the GLIBC_TUNABLES value, the measured effect
 * of the tcache tunable + M_PERTURB on a freed chunk (in child processes, because the
 * tunable only works at process start), the process and thread settings, and that blocks h2o
 * recycles (pool chunks, buffers) come back wiped.
 *
 * The freed-chunk measurement reads memory after free(): it runs only in the glibc build
 * (skipped under AddressSanitizer, whose allocator is another one and reports the read). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

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

#define CHILD_FLAG "--perturb-child"
#define CHUNK_BYTES 500
#define LINK_BYTES (4 * sizeof(void *))

static const char canary[] = "PRIVACY-CANARY-7f3a9c";

/* ---- GLIBC_TUNABLES value ---------------------------------------------------------------- */

static void test_tunables_value(void **state)
{
    (void)state;
    char out[256];
    assert_int_equal(privacy_tunables_value(NULL, out, sizeof(out)), 1);
    assert_string_equal(out, PRIVACY_TUNABLE);
    assert_int_equal(privacy_tunables_value("", out, sizeof(out)), 1);
    assert_string_equal(out, PRIVACY_TUNABLE);
    assert_int_equal(privacy_tunables_value("glibc.malloc.arena_max=2", out, sizeof(out)), 1);
    assert_string_equal(out, "glibc.malloc.arena_max=2:" PRIVACY_TUNABLE);
    /* another tcache_count is replaced, the rest kept in order */
    assert_int_equal(privacy_tunables_value("glibc.malloc.tcache_count=7:glibc.malloc.arena_max=2", out, sizeof(out)),
                     1);
    assert_string_equal(out, "glibc.malloc.arena_max=2:" PRIVACY_TUNABLE);
    /* present: unchanged */
    assert_int_equal(privacy_tunables_value("glibc.malloc.arena_max=2:" PRIVACY_TUNABLE, out, sizeof(out)), 0);
    assert_string_equal(out, "glibc.malloc.arena_max=2:" PRIVACY_TUNABLE);
    /* the last entry is the one glibc applies */
    assert_int_equal(privacy_tunables_value(PRIVACY_TUNABLE ":glibc.malloc.tcache_count=3", out, sizeof(out)), 1);
    assert_string_equal(out, PRIVACY_TUNABLE);
    /* tcache_count=00 is not the exact entry: replaced */
    assert_int_equal(privacy_tunables_value("glibc.malloc.tcache_count=00", out, sizeof(out)), 1);
    assert_string_equal(out, PRIVACY_TUNABLE);
    /* empty entries are dropped */
    assert_int_equal(privacy_tunables_value("::a=1::", out, sizeof(out)), 1);
    assert_string_equal(out, "a=1:" PRIVACY_TUNABLE);
    /* bounded */
    assert_int_equal(privacy_tunables_value("glibc.malloc.arena_max=2", out, 30), -E2BIG);
    assert_int_equal(privacy_tunables_value(NULL, out, strlen(PRIVACY_TUNABLE)), -E2BIG);
}

/* ---- freed chunks, measured in child processes --------------------------------------------- */

/* Child mode: frees a CHUNK_BYTES chunk full of a pattern and prints "<ret> <survivors>":
 * how many bytes of the freed chunk still hold the pattern. mode "privacy" calls
 * privacy_reexec first (which re-executes this binary once with the tunable), "perturb"
 * only sets M_PERTURB (tcache on), "plain" nothing. */
static int child_main(const char *mode, int argc, char **argv)
{
    int ret = 0;
    if (strcmp(mode, "privacy") == 0)
        ret = privacy_reexec(argc, argv);
    else if (strcmp(mode, "perturb") == 0)
        ret = mallopt(M_PERTURB, PRIVACY_PERTURB_BYTE) == 1 ? 0 : -ENOTSUP;
    unsigned char *p = malloc(CHUNK_BYTES);
    void *guard = malloc(64); /* keeps p from merging into the top chunk */
    if (p == NULL || guard == NULL)
        return 1;
    for (size_t i = 0; i < CHUNK_BYTES; i++)
        p[i] = (unsigned char)canary[i % (sizeof(canary) - 1)];
    volatile uintptr_t addr = (uintptr_t)p; /* hides the read after free from the compiler */
    free(p);
    const volatile unsigned char *q = (const volatile unsigned char *)addr;
    /* The first LINK_BYTES of a freed chunk hold the allocator's free-list links (heap
     * addresses), written over the content; their bytes match a pattern byte by chance now
     * and then ('a' is 0x61, a heap address byte can be too), so they are not counted. */
    size_t survivors = 0;
    for (size_t i = LINK_BYTES; i < CHUNK_BYTES; i++)
        survivors += q[i] == (unsigned char)canary[i % (sizeof(canary) - 1)];
    const char *tunables = getenv("GLIBC_TUNABLES");
    printf("%d %zu %s\n", ret, survivors, tunables != NULL ? tunables : "-");
    free(guard);
    return 0;
}

#ifndef TEST_ASAN
/* Runs this binary in child mode; returns survivors, sets *ret and copies the tunables. */
static long run_child(const char *mode, int *ret, char *tunables, size_t tlen)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        unsetenv("GLIBC_TUNABLES");
        unsetenv(PRIVACY_REEXEC_MARKER);
        char *args[] = {"test_privacy", CHILD_FLAG, (char *)mode, NULL};
        execv("/proc/self/exe", args);
        _exit(127);
    }
    close(fds[1]);
    char buf[512];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof(buf) - 1 && (r = read(fds[0], buf + n, sizeof(buf) - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    long survivors = -1;
    char t[256] = "";
    assert_int_equal(sscanf(buf, "%d %ld %255s", ret, &survivors, t), 3);
    snprintf(tunables, tlen, "%s", t);
    return survivors;
}

#endif

static void test_freed_chunk_wiped(void **state)
{
    (void)state;
#ifdef TEST_ASAN
    skip();
#else
    int ret;
    char tunables[256];
    /* glibc as it is: the tcache keeps all but its 16 link bytes of the chunk */
    long plain = run_child("plain", &ret, tunables, sizeof(tunables));
    print_message("plain: %ld of %d canary bytes past the links survive free()\n", plain,
                  (int)(CHUNK_BYTES - LINK_BYTES));
    assert_true(plain >= CHUNK_BYTES - 32 - (long)LINK_BYTES);
    /* M_PERTURB alone does not reach the tcache */
    long perturb = run_child("perturb", &ret, tunables, sizeof(tunables));
    print_message("M_PERTURB only: %ld survive\n", perturb);
    assert_int_equal(ret, 0);
    assert_true(perturb >= CHUNK_BYTES - 32 - (long)LINK_BYTES);
    /* privacy_reexec: re-executed with the tunable, perturb on: nothing survives */
    long wiped = run_child("privacy", &ret, tunables, sizeof(tunables));
    print_message("privacy_reexec: %ld survive (GLIBC_TUNABLES=%s)\n", wiped, tunables);
    assert_int_equal(ret, 0);
    assert_string_equal(tunables, PRIVACY_TUNABLE);
    assert_int_equal(wiped, 0);
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

static void test_thread_init_buffers_not_recycled(void **state)
{
    (void)state;
    privacy_thread_init();
    assert_int_equal(h2o_socket_buffer_prototype.allocator.max, 0);
    h2o_buffer_t *b;
    h2o_buffer_init(&b, &h2o_socket_buffer_prototype);
    h2o_iovec_t room = h2o_buffer_reserve(&b, 100);
    assert_non_null(room.base);
    memcpy(room.base, canary, sizeof(canary));
    b->size += sizeof(canary);
    h2o_buffer_dispose(&b);
    assert_int_equal(h2o_socket_buffer_prototype.allocator.cnt, 0); /* freed, not kept */
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

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], CHILD_FLAG) == 0)
        return child_main(argv[2], argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tunables_value),
        cmocka_unit_test(test_freed_chunk_wiped),
        cmocka_unit_test(test_process_init),
        cmocka_unit_test(test_thread_init_buffers_not_recycled),
        cmocka_unit_test(test_pool_chunks_wiped_when_recycled),
        cmocka_unit_test(test_buffers_wiped_when_recycled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
