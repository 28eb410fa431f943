/* Targets of issue 4 asserted on the SWIM simulation (cluster/sim.h) at N = 100, over several
 * seeds: a crash known to every member p99 <= 5 s (and <= 4.6 s on average over the seeds); a
 * join and a leave known to every member p99 <= 2 s (a CI proxy of the N = 1000 target, which
 * ops/bench/swim-sim reports); no false DEAD in a simulated hour with 5 % loss and a random
 * member paused 3 s every minute (two seeds); and the same seed giving the same figures.
 * Also at N = 10: no false DEAD in the lossy hour (three seeds; small clusters rely on the
 * suspicion_min_ms floor).
 *
 * Under a sanitizer (or with SWIM_SIM_SMALL=1) the runs are scaled down (fewer rounds, a
 * 10-minute lossy run) to fit the ASan time budget; what ran is printed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cluster/sim.h"

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

static bool small_run(void)
{
    const char *env = getenv("SWIM_SIM_SMALL");
    return SANITIZED || (env && env[0] == '1');
}

static void print_dist(const char *what, const sim_dist_t *d)
{
    printf("  %-6s samples %u p50 %llu ms p99 %llu ms max %llu ms timeouts %u\n", what, d->samples,
           (unsigned long long)d->p50_ms, (unsigned long long)d->p99_ms, (unsigned long long)d->max_ms, d->timeouts);
}

/* The crash target over several seeds: one seed's figure is the worst of its rounds, and the
 * time to the first probe of a dead member is about exponential (mean one probe interval), so
 * a single seed can pass or fail by luck (a member that joined mid-round and was left out of
 * every node's probe round until the next one gave 5.7 s at one seed in six). Every seed must
 * meet the target; their mean p99 must keep a margin under it. */
static void test_membership_targets_n100(void **state)
{
    (void)state;
    uint32_t rounds = small_run() ? 15 : 30, seeds = small_run() ? 3 : 8;
    uint64_t sum_p99 = 0, worst_p99 = 0;
    for (uint32_t seed = 1; seed <= seeds; seed++) {
        sim_params_t p;
        sim_params_default(&p, 100, seed);
        sim_membership_t m;
        assert_int_equal(sim_measure_membership(&p, rounds, seed == 1 ? 10000 : 2000, &m), 0);
        printf("N=100 seed %u, %u rounds (%llu s simulated):\n", seed, rounds, (unsigned long long)m.sim_ms / 1000);
        print_dist("crash", &m.crash);
        print_dist("join", &m.join);
        print_dist("leave", &m.leave);
        printf("  %.0f datagram bytes/node/s, false DEAD %llu\n", m.bytes_per_node_s,
               (unsigned long long)m.counters.false_dead);
        assert_int_equal(m.crash.samples, rounds);
        assert_int_equal(m.join.samples, 2 * rounds);
        assert_int_equal(m.leave.samples, rounds);
        assert_true(m.crash.p99_ms <= 5000);
        assert_true(m.join.p99_ms <= 2000);
        assert_true(m.leave.p99_ms <= 2000);
        assert_int_equal(m.counters.false_dead, 0);
        assert_int_equal(m.counters.dead_about_left, 0);
        assert_true(m.bytes_per_node_s > 0 && m.bytes_per_node_s < 2000);
        sum_p99 += m.crash.p99_ms;
        if (m.crash.p99_ms > worst_p99)
            worst_p99 = m.crash.p99_ms;
    }
    printf("crash p99 over %u seeds: mean %llu ms, worst %llu ms\n", seeds, (unsigned long long)(sum_p99 / seeds),
           (unsigned long long)worst_p99);
    assert_true(sum_p99 / seeds <= 4600);
}

static void lossy_hour(uint32_t n, uint64_t seed, uint64_t duration_ms, sim_lossy_t *l)
{
    sim_params_t p;
    sim_params_default(&p, n, seed);
    p.loss_pm = 50;
    assert_int_equal(sim_measure_lossy(&p, duration_ms, 60000, 3000, l), 0);
    printf("N=%u seed %llu, %llu s with 5 %% loss, %u pauses of 3 s: false DEAD %llu, SUSPECT %llu, %.0f "
           "bytes/node/s\n",
           n, (unsigned long long)seed, (unsigned long long)duration_ms / 1000, l->pauses,
           (unsigned long long)l->false_dead, (unsigned long long)l->suspects, l->bytes_per_node_s);
    assert_int_equal(l->false_dead, 0);
    assert_int_equal(l->dead_about_left, 0);
    assert_true(l->pauses >= duration_ms / 60000);
}

static void test_no_false_dead_lossy_hour_n100(void **state)
{
    (void)state;
    uint64_t duration_ms = small_run() ? 600000 : 3600000;
    for (uint64_t seed = 11; seed <= (small_run() ? 11u : 12u); seed++) {
        sim_lossy_t l;
        lossy_hour(100, seed, duration_ms, &l);
    }
}

/* At N = 10 the log10 N scaling alone gives a 1.65 s minimum suspicion, shorter than the pause:
 * the suspicion_min_ms floor must hold it. Cheap (10 members), so the full hour always runs. */
static void test_no_false_dead_lossy_hour_n10(void **state)
{
    (void)state;
    for (uint64_t seed = 13; seed <= 15; seed++) {
        sim_lossy_t l;
        lossy_hour(10, seed, 3600000, &l);
        assert_true(l.suspects > 0); /* the pauses were noticed */
    }
}

static void test_same_seed_same_figures(void **state)
{
    (void)state;
    sim_params_t p;
    sim_params_default(&p, 20, 3);
    p.loss_pm = 20;
    sim_membership_t a, b;
    assert_int_equal(sim_measure_membership(&p, 3, 5000, &a), 0);
    assert_int_equal(sim_measure_membership(&p, 3, 5000, &b), 0);
    assert_memory_equal(&a.crash, &b.crash, sizeof(a.crash));
    assert_memory_equal(&a.join, &b.join, sizeof(a.join));
    assert_memory_equal(&a.leave, &b.leave, sizeof(a.leave));
    assert_memory_equal(&a.counters, &b.counters, sizeof(a.counters));
    assert_true(a.bytes_per_node_s == b.bytes_per_node_s);
    assert_true(a.counters.dropped > 0); /* the loss was applied */
    p.seed = 4; /* and the seed matters */
    assert_int_equal(sim_measure_membership(&p, 3, 5000, &b), 0);
    assert_true(memcmp(&a.counters, &b.counters, sizeof(a.counters)) != 0);
}

static void test_partition_and_pause(void **state)
{
    (void)state;
    sim_params_t p;
    sim_params_default(&p, 10, 5);
    sim_t *sim = sim_create(&p);
    assert_non_null(sim);
    for (uint32_t o = 0; o < 10; o++)
        for (uint32_t x = 0; x < 10; x++)
            assert_int_equal(sim_view(sim, o, x), SWIM_ALIVE); /* bootstrapped: all know all */
    /* a node paused for 1 s is not declared dead */
    sim_pause(sim, 3, 1000);
    sim_run(sim, 10000);
    for (uint32_t o = 0; o < 10; o++)
        assert_int_equal(sim_view(sim, o, 3), SWIM_ALIVE);
    /* node 9 cut off: each side declares the other dead */
    sim_partition(sim, 9, 1);
    sim_run(sim, 20000);
    assert_int_equal(sim_view(sim, 0, 9), SWIM_DEAD);
    assert_int_not_equal(sim_view(sim, 9, 0), SWIM_ALIVE); /* slower: its health multiplier grew */
    sim_counters_t c;
    sim_counters(sim, &c);
    assert_true(c.false_dead > 0); /* verdicts about a live member, as expected across a partition */
    /* a crash is seen by all */
    sim_partition(sim, 9, 0);
    sim_crash(sim, 5);
    sim_run(sim, 10000);
    for (uint32_t o = 0; o < 9; o++)
        if (o != 5)
            assert_int_equal(sim_view(sim, o, 5), SWIM_DEAD);
    sim_destroy(sim);
}

int main(void)
{
    printf("swim sim: %s run\n", small_run() ? "small (sanitizer or SWIM_SIM_SMALL=1)" : "full");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_partition_and_pause),
        cmocka_unit_test(test_same_seed_same_figures),
        cmocka_unit_test(test_membership_targets_n100),
        cmocka_unit_test(test_no_false_dead_lossy_hour_n100),
        cmocka_unit_test(test_no_false_dead_lossy_hour_n10),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
