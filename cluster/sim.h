/* sim: deterministic simulation of many SWIM members (cluster/swim.c, unchanged) in one process.
 *
 * A discrete-event loop with a fake clock (ms) drives N swim_t instances over a fake network:
 * seeded per-packet loss, a latency distribution (uniform lat_min..lat_max plus, with
 * probability tail_pct, an extra uniform 0..tail_ms), partitions (a group id per node; packets
 * between different groups are dropped), crashes (the node stops for good, packets to it are
 * dropped) and pauses (the node processes nothing and none of its timers fire for D ms; packets
 * for it queue, as in a stopped process's socket buffer, and are handled in arrival order when
 * it resumes). Push-pull (SWIM_EVENT_PUSHPULL) is a direct state transfer: the initiator's
 * state reaches the peer after one latency, the peer merges it and its own state comes back
 * after another; it is not subject to random loss (TCP), fails across a partition or to a
 * crashed node, and queues for a paused one like datagrams.
 *
 * The swim API exposes no "next deadline", so every node is ticked every tick_ms of simulated
 * time (staggered phases); inputs are delivered at their exact times.
 *
 * Every node's view of every other is kept in an N x N matrix (status and the time it was
 * reached) fed by swim_pop_event, which is how convergence is measured. Node slot i has the
 * gossip address "n<i>" and the name "n<i>.<generation>": a crashed or departed slot can be
 * restarted as a new member at the same address.
 *
 * The measurements (sim_measure_*) build their own simulation from params and return figures;
 * the same params and seed give the same figures. Pure code apart from malloc: no I/O, no
 * clock, no globals. */
#ifndef LLMRELAY_CLUSTER_SIM_H
#define LLMRELAY_CLUSTER_SIM_H

#include <stdbool.h>
#include <stdint.h>

#include "cluster/swim.h"

typedef struct sim_params {
    uint32_t n;       /* members at start */
    uint64_t seed;    /* everything random derives from it */
    uint32_t loss_pm; /* per-datagram loss, per mille */
    uint32_t lat_min_ms, lat_max_ms;
    uint32_t tail_pct, tail_ms; /* tail_pct % of packets get an extra uniform 0..tail_ms */
    uint32_t tick_ms;           /* every node is ticked this often */
    uint32_t leave_linger_ms;   /* a leaving node keeps running this long after swim_leave */
    swim_config_t swim;
} sim_params_t;

/* Defaults: loss 0, latency 1..5 ms with 1 % of packets up to 50 ms later, tick 10 ms,
 * linger 1000 ms, swim_config_default. */
void sim_params_default(sim_params_t *p, uint32_t n, uint64_t seed);

typedef struct sim sim_t;

/* A cluster of p->n members, every one of which knows every other (bootstrapped by push-pull
 * with node 0) and whose broadcast queues have drained; NULL on error. */
sim_t *sim_create(const sim_params_t *p);
void sim_destroy(sim_t *sim);

uint64_t sim_now(const sim_t *sim);
void sim_run(sim_t *sim, uint64_t ms);
void sim_crash(sim_t *sim, uint32_t node);
void sim_pause(sim_t *sim, uint32_t node, uint64_t ms);
void sim_partition(sim_t *sim, uint32_t node, uint32_t group); /* all start in group 0 */
int sim_leave(sim_t *sim, uint32_t node);                        /* gone after leave_linger_ms */
int sim_restart(sim_t *sim, uint32_t node, uint32_t seed_node); /* new member at a free slot */
bool sim_node_up(const sim_t *sim, uint32_t node);                 /* running (maybe paused) */
/* The status `observer` last reported for `subject`'s current generation; -1 if unknown. */
int sim_view(const sim_t *sim, uint32_t observer, uint32_t subject);

typedef struct sim_counters {
    uint64_t datagrams, datagram_bytes; /* sent (before loss) */
    uint64_t pushpulls, pushpull_bytes;
    uint64_t dropped;        /* loss, partition, crashed or gone receiver */
    uint64_t false_dead;     /* DEAD verdicts about a member that is up (running or paused) */
    uint64_t dead_about_left; /* DEAD verdicts about a member that left gracefully */
    uint64_t suspects;       /* SUSPECT verdicts about a member that is up */
    uint64_t ticks;
} sim_counters_t;
void sim_counters(const sim_t *sim, sim_counters_t *out);

typedef struct sim_dist {
    uint32_t samples, timeouts; /* timeouts: not converged within the limit (not in samples) */
    uint64_t p50_ms, p99_ms, max_ms;
} sim_dist_t;

typedef struct sim_membership {
    sim_dist_t crash; /* crash -> every up member has it DEAD */
    sim_dist_t join;  /* swim_join -> every up member has it ALIVE */
    sim_dist_t leave; /* swim_leave -> every up member has it LEFT */
    double bytes_per_node_s;          /* datagram bytes sent per node per second, steady state */
    double pushpull_bytes_per_node_s; /* push-pull bytes, same window */
    sim_counters_t counters;          /* over the whole run */
    uint64_t sim_ms;
} sim_membership_t;

/* `rounds` rounds on one cluster, each: crash a random member, wait until all know it dead,
 * restart the slot as a new member (a join sample), make another member leave, wait until all
 * know, restart it (a join sample). Before the rounds, steady_ms of quiet traffic give the
 * bytes per node per second. Limit for each wait: 60 s. 0 or -errno. */
int sim_measure_membership(const sim_params_t *p, uint32_t rounds, uint32_t steady_ms, sim_membership_t *out);

typedef struct sim_lossy {
    uint64_t false_dead, suspects, dead_about_left;
    uint32_t pauses;
    double bytes_per_node_s;
    uint64_t sim_ms;
} sim_lossy_t;

/* duration_ms with p's loss; every pause_every_ms a random member is paused for pause_ms. */
int sim_measure_lossy(const sim_params_t *p, uint64_t duration_ms, uint32_t pause_every_ms, uint32_t pause_ms,
                      sim_lossy_t *out);

#endif
