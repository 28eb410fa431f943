/* swim_sim: prints the SWIM simulation figures (cluster/sim.h) for ops/bench/swim-sim.
 *
 * usage: swim_sim N [rounds] [lossy_seconds] [seed]
 * One table row: crash detection, join and leave convergence (p50/p99/max over the rounds),
 * false DEAD and SUSPECT verdicts in a lossy run (5 % loss, one random member paused 3 s
 * every minute), steady-state datagram bytes per node per second, wall time. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cluster/sim.h"

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void print_dist(const char *what, const sim_dist_t *d)
{
    printf("  %-6s samples %3u  p50 %6llu ms  p99 %6llu ms  max %6llu ms  not converged in 60 s: %u\n", what,
           d->samples, (unsigned long long)d->p50_ms, (unsigned long long)d->p99_ms, (unsigned long long)d->max_ms,
           d->timeouts);
}

static void env_u32(const char *name, uint32_t *v)
{
    const char *str = getenv(name);
    if (str && *str)
        *v = (uint32_t)strtoul(str, NULL, 10);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s N [rounds] [lossy_seconds] [seed]\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    uint32_t n = (uint32_t)strtoul(argv[1], NULL, 10);
    uint32_t rounds = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 30;
    uint64_t lossy_s = argc > 3 ? strtoull(argv[3], NULL, 10) : 3600;
    uint64_t seed = argc > 4 ? strtoull(argv[4], NULL, 10) : 1;
    sim_params_t p;
    sim_params_default(&p, n, seed);
    /* overrides for tuning runs: SWIM_SIM_<FIELD>=value */
    env_u32("SWIM_SIM_TICK_MS", &p.tick_ms);
    env_u32("SWIM_SIM_PROBE_INTERVAL_MS", &p.swim.probe_interval_ms);
    env_u32("SWIM_SIM_PROBE_TIMEOUT_MS", &p.swim.probe_timeout_ms);
    env_u32("SWIM_SIM_SUSPICION_MULT", &p.swim.suspicion_mult);
    env_u32("SWIM_SIM_SUSPICION_MAX_MULT", &p.swim.suspicion_max_mult);
    env_u32("SWIM_SIM_RETRANSMIT_MULT", &p.swim.retransmit_mult);
    env_u32("SWIM_SIM_GOSSIP_INTERVAL_MS", &p.swim.gossip_interval_ms);
    env_u32("SWIM_SIM_GOSSIP_NODES", &p.swim.gossip_nodes);
    printf("N=%u seed=%llu tick=%u ms latency %u-%u ms (+%u %% up to %u ms)\n", n, (unsigned long long)seed,
           p.tick_ms, p.lat_min_ms, p.lat_max_ms, p.tail_pct, p.tail_ms);
    printf("swim: probe %u/%u ms, k=%u, suspicion mult %u max x%u, lambda %u, gossip %u ms x%u, push-pull %u ms\n",
           p.swim.probe_interval_ms, p.swim.probe_timeout_ms, p.swim.indirect_k, p.swim.suspicion_mult,
           p.swim.suspicion_max_mult, p.swim.retransmit_mult, p.swim.gossip_interval_ms, p.swim.gossip_nodes,
           p.swim.pushpull_interval_ms);
    double t = wall_s();
    sim_membership_t m;
    if (rounds) {
        if (sim_measure_membership(&p, rounds, 30000, &m) != 0) {
            fprintf(stderr, "membership run failed\n");
            return 1;
        }
        printf("membership (%u rounds, %.0f s simulated, %.1f s wall):\n", rounds, (double)m.sim_ms / 1000.0,
               wall_s() - t);
        print_dist("crash", &m.crash);
        print_dist("join", &m.join);
        print_dist("leave", &m.leave);
        printf("  steady state: %.0f datagram bytes/node/s, %.0f push-pull bytes/node/s; false DEAD %llu\n",
               m.bytes_per_node_s, m.pushpull_bytes_per_node_s, (unsigned long long)m.counters.false_dead);
    }
    if (lossy_s) {
        p.loss_pm = 50;
        t = wall_s();
        sim_lossy_t l;
        if (sim_measure_lossy(&p, lossy_s * 1000, 60000, 3000, &l) != 0) {
            fprintf(stderr, "lossy run failed\n");
            return 1;
        }
        printf("lossy (%llu s simulated, 5 %% loss, %u pauses of 3 s, %.1f s wall): false DEAD %llu, SUSPECT %llu, "
               "DEAD about left %llu, %.0f bytes/node/s\n",
               (unsigned long long)lossy_s, l.pauses, wall_s() - t, (unsigned long long)l.false_dead,
               (unsigned long long)l.suspects, (unsigned long long)l.dead_about_left, l.bytes_per_node_s);
    }
    return 0;
}
