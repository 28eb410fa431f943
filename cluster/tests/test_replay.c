/* Tests of replay: creation errors, window edges (exactly window and window - 1 below top,
 * advances by 63/64/65 and by more than the ring, from tops at and off block boundaries), a
 * randomized comparison of windows against a plain model, LRU eviction order and the
 * victim, expiry (tail walk and full scan), keys that collide in the hash, and user data.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/replay.h"

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static replay_t *make(uint32_t capacity, uint32_t window_bits, size_t user_size)
{
    replay_t *t = NULL;
    assert_int_equal(replay_create(capacity, window_bits, user_size, &t), 0);
    assert_non_null(t);
    return t;
}

static replay_stats_t stats_of(const replay_t *t)
{
    replay_stats_t st;
    replay_get_stats(t, &st);
    return st;
}

static void test_create_errors(void **state)
{
    (void)state;
    replay_t *t = (replay_t *)&t;
    assert_int_equal(replay_create(0, 128, 0, &t), -EINVAL);
    assert_null(t);
    assert_int_equal(replay_create(REPLAY_MAX_CAPACITY + 1, 128, 0, &t), -EINVAL);
    assert_int_equal(replay_create(4, 0, 0, &t), -EINVAL);
    assert_int_equal(replay_create(4, 100, 0, &t), -EINVAL);
    assert_int_equal(replay_create(4, REPLAY_MAX_WINDOW_BITS + 64, 0, &t), -EINVAL);
    assert_int_equal(replay_create(4, 128, REPLAY_MAX_USER_SIZE + 1, &t), -EINVAL);
    assert_int_equal(replay_create(4, 128, 0, NULL), -EINVAL);
    t = make(1, 64, 0);
    replay_free(t);
    t = make(1, REPLAY_MAX_WINDOW_BITS, REPLAY_MAX_USER_SIZE);
    replay_free(t);
    t = make(REPLAY_MAX_CAPACITY, 64, 0);
    replay_free(t);
    replay_free(NULL);
}

/* The window edges, for a window of w bits and tops at, just after and just before a
 * 64-counter block boundary. */
static void window_edges(uint32_t w, uint64_t top)
{
    replay_t *t = make(2, w, 0);
    replay_entry_t *e = replay_get(t, 1, 2, NULL);
    assert_int_equal(replay_top(e), 0);
    replay_accept(t, e, top);
    assert_int_equal(replay_top(e), top);
    assert_int_equal(replay_check(t, e, top), REPLAY_REPLAYED);
    assert_int_equal(replay_check(t, e, top + 1), REPLAY_OK);
    assert_int_equal(replay_check(t, e, UINT64_MAX), REPLAY_OK);
    /* top - (w - 1) is the oldest counter inside the window; top - w is too old */
    assert_int_equal(replay_check(t, e, top - (w - 1)), REPLAY_OK);
    assert_int_equal(replay_check(t, e, top - w), REPLAY_TOO_OLD);
    replay_accept(t, e, top - (w - 1));
    assert_int_equal(replay_check(t, e, top - (w - 1)), REPLAY_REPLAYED);
    assert_int_equal(replay_check(t, e, top - (w - 2)), REPLAY_OK);
    replay_accept(t, e, top - 1);
    replay_accept(t, e, top - 63);
    if (w > 64) { /* 64 below top is outside a 64-bit window */
        replay_accept(t, e, top - 64);
        replay_accept(t, e, top - 65);
    }

    /* advance by 63, then 64, then 65: what was accepted stays replayed while in the
     * window, becomes too old exactly when it leaves it, and nothing else looks seen */
    uint64_t accepted[] = {top - (w - 1), top - 65, top - 64, top - 63, top - 1, top};
    uint64_t shifts[] = {63, 64, 65};
    uint64_t now_top = top;
    for (size_t k = 0; k < 3; k++) {
        now_top += shifts[k];
        assert_int_equal(replay_check(t, e, now_top), REPLAY_OK);
        replay_accept(t, e, now_top);
        assert_int_equal(replay_top(e), now_top);
        for (size_t i = 0; i < sizeof(accepted) / sizeof(accepted[0]); i++) {
            uint64_t c = accepted[i];
            replay_verdict_t want = now_top - c >= w ? REPLAY_TOO_OLD : REPLAY_REPLAYED;
            assert_int_equal(replay_check(t, e, c), want);
        }
        assert_int_equal(replay_check(t, e, now_top - (w - 1)) == REPLAY_TOO_OLD, false);
        assert_int_equal(replay_check(t, e, now_top - w), REPLAY_TOO_OLD);
        for (uint64_t d = 1; d < w; d++) {
            uint64_t c = now_top - d;
            bool seen = false;
            for (size_t i = 0; i < sizeof(accepted) / sizeof(accepted[0]); i++)
                seen |= accepted[i] == c;
            seen |= c == top + 63 || c == top + 127; /* the earlier tops of this loop */
            assert_int_equal(replay_check(t, e, c), seen ? REPLAY_REPLAYED : REPLAY_OK);
        }
    }
    /* a jump of more than the whole ring forgets everything below the new top */
    now_top += w + 64 + 5;
    replay_accept(t, e, now_top);
    for (uint64_t d = 1; d < w; d++)
        assert_int_equal(replay_check(t, e, now_top - d), REPLAY_OK);
    assert_int_equal(replay_check(t, e, now_top), REPLAY_REPLAYED);
    replay_free(t);
}

static void test_window_edges(void **state)
{
    (void)state;
    uint32_t windows[] = {64, 128, 960};
    for (size_t i = 0; i < 3; i++) {
        uint64_t w = windows[i];
        uint64_t tops[] = {w + 64 * 10, w + 64 * 10 + 1, w + 64 * 10 + 63, w + 64 * 11 - 1, UINT64_MAX - 10000};
        for (size_t j = 0; j < sizeof(tops) / sizeof(tops[0]); j++)
            window_edges(windows[i], tops[j]);
    }
}

/* Random accepts against a model that remembers every counter: the window must agree
 * exactly with "above top: ok; at or below top - w: too old; else seen or not". */
static void test_window_model(void **state)
{
    (void)state;
    enum { SPAN = 4000000, STEPS = 50000 };
    uint32_t windows[] = {64, 128, 960};
    uint64_t rng = 42;
    bool *seen = calloc(SPAN, 1);
    assert_non_null(seen);
    for (size_t wi = 0; wi < 3; wi++) {
        uint32_t w = windows[wi];
        replay_t *t = make(1, w, 0);
        replay_entry_t *e = replay_get(t, 7, 7, NULL);
        memset(seen, 0, SPAN);
        uint64_t top = 0;
        for (int step = 0; step < STEPS; step++) {
            uint64_t r = splitmix64(&rng);
            uint64_t c;
            if (r % 16 == 0) /* move ahead by up to 2 ring lengths */
                c = top + 1 + (r >> 8) % (2 * (w + 64));
            else if (r % 4 == 1) /* ahead by a little more than a block */
                c = top + 1 + (r >> 8) % 70;
            else /* around the window's lower edge and inside it */
                c = top + 2 > (uint64_t)w + 64 ? top + 2 - (r >> 8) % (w + 64) : 1 + (r >> 8) % (top + 1);
            if (c == 0 || c >= SPAN)
                break;
            replay_verdict_t want = REPLAY_OK;
            if (c <= top && top - c >= w)
                want = REPLAY_TOO_OLD;
            else if (c <= top && seen[c])
                want = REPLAY_REPLAYED;
            replay_verdict_t got = replay_check(t, e, c);
            assert_int_equal(got, want);
            if (got == REPLAY_OK) {
                replay_accept(t, e, c);
                seen[c] = true;
                if (c > top)
                    top = c;
            }
            assert_int_equal(replay_top(e), top);
        }
        assert_true(top > 4 * (uint64_t)w);
        replay_free(t);
    }
    free(seen);
}

static void test_lru_eviction(void **state)
{
    (void)state;
    replay_t *t = make(3, 64, 0);
    bool created = false;
    replay_entry_t *a = replay_get(t, 1, 0, &created);
    assert_true(created);
    assert_null(replay_victim(t));
    replay_get(t, 2, 0, NULL);
    replay_get(t, 3, 0, NULL);
    assert_int_equal(stats_of(t).entries, 3);
    /* full: the victim is the least recently used, 1 */
    assert_ptr_equal(replay_victim(t), a);
    /* using 1 again (get, no creation) makes 2 the victim; find changes nothing */
    assert_ptr_equal(replay_get(t, 1, 0, &created), a);
    assert_false(created);
    replay_entry_t *two = replay_find(t, 2, 0);
    assert_non_null(two);
    assert_ptr_equal(replay_victim(t), two);
    /* touch moves to the head too */
    replay_touch(t, two, 5);
    assert_int_equal(replay_key_a(replay_victim(t)), 3);
    replay_entry_t *four = replay_get(t, 4, 0, &created);
    assert_true(created);
    assert_null(replay_find(t, 3, 0));
    assert_int_equal(stats_of(t).evicted, 1);
    assert_int_equal(stats_of(t).entries, 3);
    /* order now (most recent first): 4, 2, 1 */
    assert_int_equal(replay_key_a(replay_victim(t)), 1);
    replay_get(t, 5, 0, NULL);
    assert_null(replay_find(t, 1, 0));
    assert_int_equal(replay_key_a(replay_victim(t)), 2);
    replay_get(t, 6, 0, NULL);
    assert_null(replay_find(t, 2, 0));
    assert_ptr_equal(replay_victim(t), four);
    /* a re-created entry starts empty */
    replay_entry_t *one = replay_get(t, 1, 0, &created);
    assert_true(created);
    assert_int_equal(replay_top(one), 0);
    assert_int_equal(replay_last_ms(one), 0);
    assert_int_equal(stats_of(t).evicted, 4);
    assert_int_equal(stats_of(t).expired, 0);
    replay_free(t);
}

static void test_expire(void **state)
{
    (void)state;
    replay_t *t = make(8, 64, 0);
    for (uint64_t i = 0; i < 6; i++)
        replay_touch(t, replay_get(t, i, 9, NULL), 1000 * (i + 1));
    assert_int_equal(replay_expire(t, 100, 1000), 0);  /* now < idle: nothing */
    assert_int_equal(replay_expire(t, 1000, 1000), 0); /* cutoff 0 */
    assert_int_equal(replay_expire(t, 3000, 1000), 1); /* strictly before 2000: only 1000 */
    assert_int_equal(replay_expire(t, 3500, 1000), 1); /* then 2000 */
    assert_int_equal(stats_of(t).entries, 4);
    assert_int_equal(stats_of(t).expired, 2);
    assert_null(replay_find(t, 0, 9));
    assert_null(replay_find(t, 1, 9));
    assert_non_null(replay_find(t, 2, 9));

    /* times out of LRU order: the tail walk stops at the first fresh entry, the scan does not */
    replay_touch(t, replay_find(t, 2, 9), 100);        /* head now, but old */
    assert_int_equal(replay_expire(t, 6500, 1000), 2); /* 4000 and 5000 from the tail, stops at 6000 */
    assert_non_null(replay_find(t, 2, 9));
    assert_int_equal(replay_expire_scan(t, 6500, 1000), 1); /* the stale head */
    assert_null(replay_find(t, 2, 9));
    assert_non_null(replay_find(t, 5, 9));
    assert_int_equal(replay_expire_scan(t, 100, 1000), 0);
    assert_int_equal(replay_expire_scan(t, 1000000, 0), 1);
    assert_int_equal(stats_of(t).entries, 0);
    assert_int_equal(stats_of(t).expired, 6);
    assert_int_equal(replay_expire(t, 1000000, 0), 0);
    assert_null(replay_victim(t));
    /* the table is reusable after it emptied, to full capacity */
    for (uint64_t i = 0; i < 8; i++)
        replay_get(t, 100 + i, 0, NULL);
    assert_int_equal(stats_of(t).entries, 8);
    assert_int_equal(stats_of(t).evicted, 0);
    replay_free(t);
}

/* Keys whose hash input is equal (b ^ a * golden) share a bucket whatever the table size;
 * a and b swapped are different keys. Removing from the middle, head and tail of a chain
 * keeps the rest findable. */
static void test_hash_collisions(void **state)
{
    (void)state;
    enum { N = 16 };
    const uint64_t golden = 0x9e3779b97f4a7c15ULL;
    replay_t *t = make(N, 64, 0);
    uint64_t a[N], b[N];
    for (uint64_t i = 0; i < N; i++) {
        a[i] = 1000 + i;
        b[i] = 77 ^ (a[0] * golden) ^ (a[i] * golden); /* b ^ a * golden == 77 ^ a[0] * golden */
        replay_entry_t *e = replay_get(t, a[i], b[i], NULL);
        replay_accept(t, e, i + 1);
        replay_touch(t, e, i);
    }
    for (uint64_t i = 0; i < N; i++) {
        replay_entry_t *e = replay_find(t, a[i], b[i]);
        assert_non_null(e);
        assert_int_equal(replay_key_a(e), a[i]);
        assert_int_equal(replay_key_b(e), b[i]);
        assert_int_equal(replay_top(e), i + 1);
        assert_null(replay_find(t, b[i], a[i]));
        assert_null(replay_find(t, a[i], b[i] ^ 1));
    }
    /* drop the oldest half (inserted first: the tail of each chain) */
    assert_int_equal(replay_expire(t, N / 2, 0), N / 2);
    for (uint64_t i = 0; i < N; i++)
        assert_true((replay_find(t, a[i], b[i]) != NULL) == (i >= N / 2));
    /* drop one from the middle of the chain, via the scan */
    replay_touch(t, replay_find(t, a[12], b[12]), 0);
    assert_int_equal(replay_expire_scan(t, 1, 0), 1);
    assert_null(replay_find(t, a[12], b[12]));
    for (uint64_t i = N / 2; i < N; i++)
        if (i != 12)
            assert_int_equal(replay_top(replay_find(t, a[i], b[i])), i + 1);
    /* refill with colliding keys until evictions run through the chain */
    for (uint64_t i = 0; i < N; i++) {
        uint64_t x = 5000 + i, y = 77 ^ (a[0] * golden) ^ (x * golden);
        replay_get(t, x, y, NULL);
        assert_non_null(replay_find(t, x, y));
    }
    assert_int_equal(stats_of(t).entries, N);
    assert_int_equal(stats_of(t).evicted, N / 2 - 1); /* 7 held + 16 new - 16 slots */
    for (uint64_t i = 0; i < N; i++)
        assert_non_null(replay_find(t, 5000 + i, 77 ^ (a[0] * golden) ^ ((5000 + i) * golden)));
    replay_free(t);
}

static void test_user_data(void **state)
{
    (void)state;
    replay_t *t = make(2, 128, 13);
    replay_entry_t *e = replay_get(t, 1, 1, NULL);
    uint8_t *d = replay_data(e);
    assert_int_equal((uintptr_t)d % 8, 0);
    for (int i = 0; i < 13; i++)
        assert_int_equal(d[i], 0);
    memset(d, 0xab, 13);
    replay_accept(t, e, 500); /* the window does not overlap the user data */
    replay_accept(t, e, 400);
    for (int i = 0; i < 13; i++)
        assert_int_equal(d[i], 0xab);
    replay_entry_t *f = replay_get(t, 2, 2, NULL);
    memset(replay_data(f), 0xcd, 13);
    assert_int_equal(d[0], 0xab);
    /* evict 1 and reuse its slot: the new entry's data is zero */
    replay_get(t, 2, 2, NULL);
    replay_entry_t *g = replay_get(t, 3, 3, NULL);
    uint8_t *gd = replay_data(g);
    for (int i = 0; i < 13; i++)
        assert_int_equal(gd[i], 0);
    assert_int_equal(replay_check(t, g, 500), REPLAY_OK);
    assert_int_equal(((uint8_t *)replay_data(replay_find(t, 2, 2)))[12], 0xcd);
    replay_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_errors), cmocka_unit_test(test_window_edges),
        cmocka_unit_test(test_window_model),  cmocka_unit_test(test_lru_eviction),
        cmocka_unit_test(test_expire),        cmocka_unit_test(test_hash_collisions),
        cmocka_unit_test(test_user_data),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
