/* Tests of ring: SipHash-2-4 test vectors, the score as defined in ring.h, pinned
 * placements, creation errors, empty and one-member rings, determinism and independence
 * from the members' order, owner != backup, load balance over 100k keys, minimal movement
 * on join and leave (owners and backups), and a printed lookup benchmark.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/ring.h"

#define NKEYS 100000
#define MAX_NAMES 1000

/* The keys of ring.h, restated here so that a change in ring.c fails the tests. */
static const uint8_t K_MEMBER[17] = "llmrelay/ring/m1";
static const uint8_t K_KEY[17] = "llmrelay/ring/k1";
static const uint8_t K_SCORE[17] = "llmrelay/ring/s1";

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static char names_buf[MAX_NAMES + 1][32];
static const char *names[MAX_NAMES + 1];

/* names[0..n) = "node-000".."node-<n-1>" */
static void make_names(size_t n)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(names_buf[i], sizeof(names_buf[i]), "node-%03zu", i);
        names[i] = names_buf[i];
    }
}

static ring_t *ring_of(const char *const *list, size_t n)
{
    ring_t *r = NULL;
    assert_int_equal(ring_create(list, n, &r), 0);
    assert_non_null(r);
    return r;
}

/* Key ids: 32 hex characters from a seeded PRNG (random), or "key-<i>" (structured). */
static void random_key(uint64_t *state, char out[33])
{
    snprintf(out, 33, "%016" PRIx64 "%016" PRIx64, splitmix64(state), splitmix64(state));
}

/* --- hash ------------------------------------------------------------------------------ */

static void test_siphash_vectors(void **unused)
{
    (void)unused;
    /* Key 00 01 .. 0f, message 00 01 .. (len-1). The 15-byte one is the worked example of
     * the specification (Aumasson, Bernstein, "SipHash: a fast short-input PRF", appendix
     * A); the others are entries of the authors' reference vector table (vectors.h, output
     * read little-endian), also what OpenSSL's SIPHASH MAC (size 8) gives. */
    static const struct {
        size_t len;
        uint64_t out;
    } vec[] = {
        {0, 0x726fdb47dd0e0e31ULL},  {1, 0x74f839c593dc67fdULL},  {2, 0x0d6c8009d9a94f5aULL},
        {3, 0x85676696d7fb7e2dULL},  {7, 0xab0200f58b01d137ULL},  {8, 0x93f5f5799a932462ULL},
        {15, 0xa129ca6149be45e5ULL}, {63, 0x958a324ceb064572ULL},
    };
    uint8_t key[16], msg[64];
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (uint8_t)i;
    for (size_t i = 0; i < sizeof(msg); i++)
        msg[i] = (uint8_t)i;
    for (size_t i = 0; i < sizeof(vec) / sizeof(vec[0]); i++)
        assert_true(ring_siphash24(key, msg, vec[i].len) == vec[i].out);
}

static uint64_t le64_bytes_score(uint64_t h_member, uint64_t h_key)
{
    uint8_t block[16];
    for (int i = 0; i < 8; i++) {
        block[i] = (uint8_t)(h_member >> (8 * i));
        block[8 + i] = (uint8_t)(h_key >> (8 * i));
    }
    return ring_siphash24(K_SCORE, block, sizeof(block));
}

/* ring's ranking is the one ring.h defines: descending SipHash-2-4 score of
 * le64(h_member) || le64(h_key), computed here the slow way. */
static void test_score_definition(void **unused)
{
    (void)unused;
    make_names(40);
    ring_t *r = ring_of(names, 40);
    uint64_t seed = 7;
    for (int t = 0; t < 300; t++) {
        char key[33];
        random_key(&seed, key);
        uint64_t hk = ring_siphash24(K_KEY, key, strlen(key));
        assert_true(ring_key_hash(key, strlen(key)) == hk);
        uint64_t score[40];
        for (size_t i = 0; i < 40; i++)
            score[i] = le64_bytes_score(ring_siphash24(K_MEMBER, names[i], strlen(names[i])), hk);
        int rank[40];
        assert_int_equal(ring_rank(r, key, strlen(key), rank, 40), 40);
        for (size_t j = 1; j < 40; j++)
            assert_true(score[rank[j - 1]] > score[rank[j]]); /* no ties among 40 64-bit scores */
        assert_int_equal(ring_owner(r, key, strlen(key)), rank[0]);
        assert_int_equal(ring_owner_hashed(r, hk), rank[0]);
        int top3[3];
        assert_int_equal(ring_rank_hashed(r, hk, top3, 3), 3);
        assert_memory_equal(top3, rank, sizeof(top3));
    }
    ring_destroy(r);
}

/* Pinned placements: every node of every version must agree, so any change of the hash,
 * its keys or the tie rule fails here. Values computed once by this implementation, whose
 * SipHash matches the vectors above. */
static void test_pinned(void **unused)
{
    (void)unused;
    assert_true(ring_key_hash("", 0) == 0x2bf70a1aa9e85716ULL);
    assert_true(ring_key_hash("key-1", 5) == 0x724edfa88bafde49ULL);
    static const char *const members[] = {"node-a", "node-b", "node-c", "node-d", "node-e"};
    static const struct {
        const char *key;
        const char *rank[5];
    } pins[] = {
        {"key-1", {"node-e", "node-d", "node-c", "node-b", "node-a"}},
        {"key-2", {"node-c", "node-d", "node-e", "node-b", "node-a"}},
        {"key-3", {"node-b", "node-e", "node-d", "node-c", "node-a"}},
        {"key-4", {"node-d", "node-a", "node-b", "node-e", "node-c"}},
        {"key-5", {"node-e", "node-c", "node-a", "node-d", "node-b"}},
        {"key-6", {"node-a", "node-e", "node-c", "node-b", "node-d"}},
        {"key-7", {"node-b", "node-a", "node-c", "node-e", "node-d"}},
        {"key-8", {"node-c", "node-a", "node-e", "node-b", "node-d"}},
    };
    ring_t *r = ring_of(members, 5);
    for (size_t i = 0; i < sizeof(pins) / sizeof(pins[0]); i++) {
        int out[5];
        assert_int_equal(ring_rank(r, pins[i].key, strlen(pins[i].key), out, 5), 5);
        for (size_t j = 0; j < 5; j++)
            assert_string_equal(ring_member_name(r, (size_t)out[j]), pins[i].rank[j]);
    }
    ring_destroy(r);
}

/* --- creation and edge cases ---------------------------------------------------------- */

static void test_create_errors(void **unused)
{
    (void)unused;
    ring_t *r = (ring_t *)&r;
    const char *dup[] = {"a", "b", "a"};
    assert_int_equal(ring_create(dup, 3, &r), -EINVAL);
    assert_null(r);
    const char *with_null[] = {"a", NULL};
    assert_int_equal(ring_create(with_null, 2, &r), -EINVAL);
    const char *empty[] = {"a", ""};
    assert_int_equal(ring_create(empty, 2, &r), -EINVAL);
    char long_name[RING_NAME_MAX + 2];
    memset(long_name, 'x', sizeof(long_name) - 1);
    long_name[RING_NAME_MAX + 1] = '\0';
    const char *too_long[] = {long_name};
    assert_int_equal(ring_create(too_long, 1, &r), -EINVAL);
    long_name[RING_NAME_MAX] = '\0'; /* exactly RING_NAME_MAX bytes: fine */
    assert_int_equal(ring_create(too_long, 1, &r), 0);
    assert_string_equal(ring_member_name(r, 0), long_name);
    ring_destroy(r);
    assert_int_equal(ring_create(NULL, 1, &r), -EINVAL);
    assert_int_equal(ring_create(dup, 2, NULL), -EINVAL);
    assert_int_equal(ring_create(dup, RING_MAX_MEMBERS + 1, &r), -E2BIG);
    ring_destroy(NULL);
}

static void test_empty_ring(void **unused)
{
    (void)unused;
    ring_t *r = NULL;
    assert_int_equal(ring_create(NULL, 0, &r), 0);
    assert_int_equal(ring_size(r), 0);
    assert_null(ring_member_name(r, 0));
    assert_int_equal(ring_find(r, "a"), -ENOENT);
    assert_int_equal(ring_owner(r, "k", 1), -ENOENT);
    int out[2] = {-7, -7};
    assert_int_equal(ring_rank(r, "k", 1, out, 2), 0);
    assert_int_equal(out[0], -7);
    ring_destroy(r);
}

static void test_one_member(void **unused)
{
    (void)unused;
    const char *one[] = {"solo"};
    ring_t *r = ring_of(one, 1);
    assert_int_equal(ring_size(r), 1);
    assert_int_equal(ring_find(r, "solo"), 0);
    uint64_t seed = 1;
    for (int t = 0; t < 1000; t++) {
        char key[33];
        random_key(&seed, key);
        assert_int_equal(ring_owner(r, key, strlen(key)), 0);
        int out[2] = {-7, -7};
        assert_int_equal(ring_rank(r, key, strlen(key), out, 2), 1);
        assert_int_equal(out[0], 0);
        assert_int_equal(out[1], -7);
    }
    assert_int_equal(ring_owner(r, NULL, 0), 0); /* empty key id */
    int out[1];
    assert_int_equal(ring_rank(r, "k", 1, out, 0), 0);
    ring_destroy(r);
}

/* --- determinism, order independence, owner != backup ---------------------------------- */

static void test_order_independence(void **unused)
{
    (void)unused;
    enum { N = 50 };
    make_names(N);
    const char *shuffled[N];
    memcpy(shuffled, names, sizeof(shuffled));
    uint64_t seed = 42;
    for (size_t i = N - 1; i > 0; i--) {
        size_t j = splitmix64(&seed) % (i + 1);
        const char *t = shuffled[i];
        shuffled[i] = shuffled[j];
        shuffled[j] = t;
    }
    ring_t *a = ring_of(names, N), *b = ring_of(shuffled, N), *a2 = ring_of(names, N);
    for (size_t i = 0; i < N; i++) {
        assert_string_equal(ring_member_name(b, i), shuffled[i]);
        assert_int_equal(ring_find(b, shuffled[i]), (int)i);
    }
    for (int t = 0; t < 5000; t++) {
        char key[33];
        random_key(&seed, key);
        int ra[N], rb[N], ra2[N];
        size_t k = (t % 10 == 0) ? N : 3; /* full rankings now and then */
        assert_int_equal(ring_rank(a, key, strlen(key), ra, k), k);
        assert_int_equal(ring_rank(b, key, strlen(key), rb, k), k);
        assert_int_equal(ring_rank(a2, key, strlen(key), ra2, k), k);
        for (size_t j = 0; j < k; j++) {
            assert_string_equal(ring_member_name(a, (size_t)ra[j]), ring_member_name(b, (size_t)rb[j]));
            assert_int_equal(ra[j], ra2[j]);
        }
    }
    ring_destroy(a);
    ring_destroy(b);
    ring_destroy(a2);
}

static void test_owner_not_backup(void **unused)
{
    (void)unused;
    static const size_t sizes[] = {2, 3, 17, 100};
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        size_t n = sizes[s];
        make_names(n);
        ring_t *r = ring_of(names, n);
        uint64_t seed = n;
        for (int t = 0; t < 10000; t++) {
            char key[33];
            random_key(&seed, key);
            int out[2];
            assert_int_equal(ring_rank(r, key, strlen(key), out, 2), 2);
            assert_int_not_equal(out[0], out[1]);
            assert_in_range(out[0], 0, n - 1);
            assert_in_range(out[1], 0, n - 1);
        }
        ring_destroy(r);
    }
}

/* --- balance -------------------------------------------------------------------------- */

static void balance(size_t n, bool structured, double max_bound, double min_bound)
{
    make_names(n);
    ring_t *r = ring_of(names, n);
    static unsigned load[MAX_NAMES];
    memset(load, 0, sizeof(load));
    uint64_t seed = 1000 + n;
    for (int t = 0; t < NKEYS; t++) {
        char key[40];
        if (structured)
            snprintf(key, sizeof(key), "key-%d", t);
        else
            random_key(&seed, key);
        int o = ring_owner(r, key, strlen(key));
        assert_in_range(o, 0, n - 1);
        load[o]++;
    }
    unsigned max = 0, min = NKEYS;
    for (size_t i = 0; i < n; i++) {
        max = load[i] > max ? load[i] : max;
        min = load[i] < min ? load[i] : min;
    }
    double mean = (double)NKEYS / (double)n;
    printf("  balance N=%-3zu %s keys: max/mean %.4f  min/mean %.4f\n", n, structured ? "key-<i>" : "random ",
           max / mean, min / mean);
    assert_true(max / mean <= max_bound);
    assert_true(min / mean >= min_bound);
    ring_destroy(r);
}

/* 100k keys. N=3: sd of a member's load is ~0.45% of the mean, N=10 ~0.95%: 1.05 is over
 * 5 sd. N=100: sd ~3.1%, the max of 100 is typically ~1.08; 1.25 is ~8 sd. */
static void test_balance(void **unused)
{
    (void)unused;
    for (int structured = 0; structured <= 1; structured++) {
        balance(3, structured, 1.05, 0.95);
        balance(10, structured, 1.05, 0.95);
        balance(100, structured, 1.25, 0.75);
    }
}

/* --- movement ------------------------------------------------------------------------- */

/* old/new: rings over the same names except one member, present in big only. For each key,
 * the full ranking of big with that member left out equals small's ranking (rendezvous
 * hashing: a member's presence never reorders the others); and on all keys, the top 3 obey
 * the owner/backup rules. Returns the number of keys whose owner differs. */
static size_t check_movement(const ring_t *small, const ring_t *big, const char *extra)
{
    size_t ns = ring_size(small), nb = ring_size(big);
    assert_int_equal(nb, ns + 1);
    int x = ring_find(big, extra);
    assert_true(x >= 0);
    assert_int_equal(ring_find(small, extra), -ENOENT);
    size_t moved = 0;
    uint64_t seed = 99;
    for (int t = 0; t < NKEYS; t++) {
        char key[33];
        random_key(&seed, key);
        uint64_t h = ring_key_hash(key, strlen(key));
        int s[3], b[4];
        size_t ks = ring_rank_hashed(small, h, s, 3);
        size_t kb = ring_rank_hashed(big, h, b, 4);
        /* big's top list without the extra member, as names, is small's top list. */
        size_t j = 0;
        for (size_t i = 0; i < kb && j < ks; i++) {
            if (b[i] == x)
                continue;
            assert_string_equal(ring_member_name(big, (size_t)b[i]), ring_member_name(small, (size_t)s[j]));
            j++;
        }
        assert_int_equal(j, ks);
        if (b[0] == x) {
            /* the extra member owns it in big: small's owner is big's backup */
            moved++;
            assert_string_equal(ring_member_name(big, (size_t)b[1]), ring_member_name(small, (size_t)s[0]));
        } else {
            /* same owner; the backup differs only if the extra member is big's backup */
            assert_string_equal(ring_member_name(big, (size_t)b[0]), ring_member_name(small, (size_t)s[0]));
            if (ks >= 2 && b[1] != x)
                assert_string_equal(ring_member_name(big, (size_t)b[1]), ring_member_name(small, (size_t)s[1]));
        }
        if (t % 50 == 0) { /* the whole ranking, now and then */
            int fs[MAX_NAMES], fb[MAX_NAMES + 1];
            assert_int_equal(ring_rank_hashed(small, h, fs, ns), ns);
            assert_int_equal(ring_rank_hashed(big, h, fb, nb), nb);
            j = 0;
            for (size_t i = 0; i < nb; i++) {
                if (fb[i] == x)
                    continue;
                assert_string_equal(ring_member_name(big, (size_t)fb[i]), ring_member_name(small, (size_t)fs[j]));
                j++;
            }
        }
    }
    return moved;
}

/* 6 standard deviations of the share of NKEYS random keys that land on one member with
 * probability p (binomial). */
static double moved_tolerance(double p)
{
    return 6.0 * sqrt(p * (1.0 - p) / NKEYS);
}

/* A join: only keys the newcomer now owns change owner (from their old owner, who becomes
 * their backup), about 1/(N+1) of them; backups change only where the newcomer is it. */
static void test_join(void **unused)
{
    (void)unused;
    static const size_t sizes[] = {1, 3, 10, 100};
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        size_t n = sizes[s];
        make_names(n + 1);
        names[n] = "joiner"; /* names[n] is not one of the n others */
        ring_t *before = ring_of(names, n), *after = ring_of(names, n + 1);
        size_t moved = check_movement(before, after, "joiner");
        double share = (double)moved / NKEYS, expected = 1.0 / (double)(n + 1);
        printf("  join  N=%-3zu -> %-3zu: %.4f of keys moved (1/(N+1) = %.4f)\n", n, n + 1, share, expected);
        assert_true(fabs(share - expected) < moved_tolerance(expected));
        ring_destroy(before);
        ring_destroy(after);
    }
}

/* A leave: only the keys the leaver owned change owner, each to its previous backup; a key
 * whose backup left gets its previous third as backup; nothing else changes. Same check
 * as a join, read the other way; the leaver is in the middle of the names array so the
 * indexes of the others shift. */
static void test_leave(void **unused)
{
    (void)unused;
    static const size_t sizes[] = {2, 3, 10, 100};
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        size_t n = sizes[s];
        make_names(n);
        ring_t *before = ring_of(names, n);
        size_t gone = n / 2;
        char leaver[32];
        snprintf(leaver, sizeof(leaver), "%s", names[gone]);
        const char *rest[MAX_NAMES];
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (i != gone)
                rest[m++] = names[i];
        ring_t *after = ring_of(rest, m);
        size_t moved = check_movement(after, before, leaver);
        double share = (double)moved / NKEYS, expected = 1.0 / (double)n;
        printf("  leave N=%-3zu -> %-3zu: %.4f of keys moved (1/N = %.4f)\n", n, m, share, expected);
        assert_true(fabs(share - expected) < moved_tolerance(expected));
        ring_destroy(before);
        ring_destroy(after);
    }
}

/* --- benchmark (printed, not asserted) ------------------------------------------------- */

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void test_benchmark(void **unused)
{
    (void)unused;
    static const size_t sizes[] = {10, 100, 1000};
    enum { KEYS = 1024 };
    static char keys[KEYS][33];
    uint64_t seed = 5;
    for (int i = 0; i < KEYS; i++)
        random_key(&seed, keys[i]);
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        size_t n = sizes[s];
        make_names(n);
        double t0 = now_ns();
        ring_t *r = ring_of(names, n);
        double build = now_ns() - t0;
        size_t iters = 1000000 / n;
        unsigned sink = 0;
        t0 = now_ns();
        for (size_t i = 0; i < iters; i++)
            sink += (unsigned)ring_owner(r, keys[i % KEYS], 32);
        double owner_ns = (now_ns() - t0) / (double)iters;
        t0 = now_ns();
        for (size_t i = 0; i < iters; i++) {
            int out[2];
            sink += (unsigned)ring_rank(r, keys[i % KEYS], 32, out, 2) + (unsigned)out[1];
        }
        double rank_ns = (now_ns() - t0) / (double)iters;
        printf("  bench N=%-4zu owner %8.0f ns  owner+backup %8.0f ns  build %8.0f ns  (%u)\n", n, owner_ns, rank_ns,
               build, sink & 1);
        ring_destroy(r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_siphash_vectors),
        cmocka_unit_test(test_score_definition),
        cmocka_unit_test(test_pinned),
        cmocka_unit_test(test_create_errors),
        cmocka_unit_test(test_empty_ring),
        cmocka_unit_test(test_one_member),
        cmocka_unit_test(test_order_independence),
        cmocka_unit_test(test_owner_not_backup),
        cmocka_unit_test(test_balance),
        cmocka_unit_test(test_join),
        cmocka_unit_test(test_leave),
        cmocka_unit_test(test_benchmark),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
