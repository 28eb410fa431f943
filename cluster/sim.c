/* sim: many SWIM members over a fake network with a fake clock (see sim.h).
 *
 * How it works. One binary heap of timed events (a datagram or push-pull transfer arriving,
 * a node's tick, a leaving node going away) ordered by time then by insertion, so runs are
 * reproducible. After every call into a swim_t its outputs are drained at once: datagrams
 * become arrival events (or are dropped by loss or partition), swim events update the view
 * matrix and the verdict counters, push-pull requests start a transfer. A paused node's
 * arrivals and ticks are moved to the end of its pause, keeping their order. */
#include "cluster/sim.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { EV_PKT = 1, EV_PP_REQ = 2, EV_PP_RESP = 3, EV_TICK = 4, EV_GONE = 5 };
enum { NODE_UP = 1, NODE_CRASHED = 2, NODE_GONE = 3 };

#define VIEW_NONE 0xffu
#define WAIT_LIMIT_MS 60000u
#define WAIT_STEP_MS 20u

typedef struct sim_ev {
    uint64_t at, seq;
    uint32_t kind, from, to, gen, len;
    uint8_t *data;
} sim_ev_t;

typedef struct sim_node {
    swim_t *swim;
    uint32_t gen;
    int state;
    bool leaving;
    uint64_t paused_until;
    uint32_t group;
} sim_node_t;

struct sim {
    sim_params_t p;
    uint64_t now, seq, rng;
    uint32_t n;
    sim_node_t *nodes;
    uint8_t *view;  /* [observer * n + subject] */
    uint64_t *when; /* time view was last set */
    sim_ev_t *heap;
    size_t heap_n, heap_cap;
    sim_counters_t c;
};

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rnd(sim_t *sim)
{
    sim->rng += 0x9e3779b97f4a7c15ull;
    return mix(sim->rng);
}

static uint32_t rnd_below(sim_t *sim, uint32_t n)
{
    return n ? (uint32_t)(rnd(sim) % n) : 0;
}

void sim_params_default(sim_params_t *p, uint32_t n, uint64_t seed)
{
    memset(p, 0, sizeof(*p));
    p->n = n;
    p->seed = seed;
    p->lat_min_ms = 1;
    p->lat_max_ms = 5;
    p->tail_pct = 1;
    p->tail_ms = 50;
    p->tick_ms = 10;
    p->leave_linger_ms = 1000;
    swim_config_default(&p->swim);
}

/* ---------------------------------------------------------------- event heap */

static bool ev_before(const sim_ev_t *a, const sim_ev_t *b)
{
    return a->at != b->at ? a->at < b->at : a->seq < b->seq;
}

static int heap_push(sim_t *sim, sim_ev_t ev)
{
    if (sim->heap_n == sim->heap_cap) {
        size_t cap = sim->heap_cap ? sim->heap_cap * 2 : 1024;
        sim_ev_t *h = realloc(sim->heap, cap * sizeof(*h));
        if (!h) {
            free(ev.data);
            return -ENOMEM;
        }
        sim->heap = h;
        sim->heap_cap = cap;
    }
    ev.seq = ++sim->seq;
    size_t i = sim->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!ev_before(&ev, &sim->heap[parent]))
            break;
        sim->heap[i] = sim->heap[parent];
        i = parent;
    }
    sim->heap[i] = ev;
    return 0;
}

static sim_ev_t heap_pop(sim_t *sim)
{
    sim_ev_t top = sim->heap[0], last = sim->heap[--sim->heap_n];
    size_t i = 0, n = sim->heap_n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const sim_ev_t *best = &last;
        if (l < n && ev_before(&sim->heap[l], best)) {
            m = l;
            best = &sim->heap[l];
        }
        if (r < n && ev_before(&sim->heap[r], best))
            m = r;
        if (m == i)
            break;
        sim->heap[i] = sim->heap[m];
        i = m;
    }
    if (n)
        sim->heap[i] = last;
    return top;
}

/* ---------------------------------------------------------------- addresses and names */

static void addr_of(uint32_t slot, char out[SWIM_NAME_MAX])
{
    snprintf(out, SWIM_NAME_MAX, "n%u", slot);
}

/* "n<slot>" or "n<slot>.<gen>"; false if not ours. */
static bool parse_name(const sim_t *sim, const char *str, uint32_t *slot, uint32_t *gen)
{
    if (str[0] != 'n')
        return false;
    char *end;
    unsigned long v = strtoul(str + 1, &end, 10);
    if (end == str + 1 || v >= sim->n)
        return false;
    *slot = (uint32_t)v;
    *gen = 0;
    if (*end == '.')
        *gen = (uint32_t)strtoul(end + 1, &end, 10);
    return *end == 0;
}

static uint32_t latency(sim_t *sim)
{
    uint32_t span = sim->p.lat_max_ms > sim->p.lat_min_ms ? sim->p.lat_max_ms - sim->p.lat_min_ms + 1 : 1;
    uint32_t ms = sim->p.lat_min_ms + rnd_below(sim, span);
    if (sim->p.tail_pct && rnd_below(sim, 100) < sim->p.tail_pct)
        ms += rnd_below(sim, sim->p.tail_ms + 1);
    return ms;
}

/* ---------------------------------------------------------------- outputs of a node */

static void send_state(sim_t *sim, uint32_t from, uint32_t to, uint32_t kind)
{
    swim_t *s = sim->nodes[from].swim;
    size_t size = swim_pushpull_size(s);
    uint8_t *buf = malloc(size);
    if (!buf)
        return;
    long len = swim_pushpull_state(s, buf, size);
    if (len < 0) {
        free(buf);
        return;
    }
    sim->c.pushpulls++;
    sim->c.pushpull_bytes += (uint64_t)len;
    heap_push(sim, (sim_ev_t){.at = sim->now + latency(sim), .kind = kind, .from = from, .to = to, .len = (uint32_t)len,
                              .data = buf});
}

static void on_verdict(sim_t *sim, uint32_t observer, const swim_event_t *e)
{
    uint32_t slot, gen;
    if (!parse_name(sim, e->member.rec.name, &slot, &gen))
        return;
    const sim_node_t *subj = &sim->nodes[slot];
    bool current = gen == subj->gen;
    bool up = current && subj->state == NODE_UP && !subj->leaving;
    bool left = current && (subj->leaving || subj->state == NODE_GONE);
    if (e->kind == SWIM_EVENT_DEAD && up)
        sim->c.false_dead++;
    if (e->kind == SWIM_EVENT_DEAD && left)
        sim->c.dead_about_left++;
    if (e->kind == SWIM_EVENT_SUSPECT && up)
        sim->c.suspects++;
    if (current) {
        size_t at = (size_t)observer * sim->n + slot;
        if (sim->view[at] != (uint8_t)e->member.status) {
            sim->view[at] = (uint8_t)e->member.status;
            sim->when[at] = sim->now;
        }
    }
}

static void drain(sim_t *sim, uint32_t i)
{
    swim_t *s = sim->nodes[i].swim;
    swim_datagram_t d;
    while (swim_pop_datagram(s, &d)) {
        uint32_t to, gen;
        sim->c.datagrams++;
        sim->c.datagram_bytes += d.len;
        if (!parse_name(sim, d.to, &to, &gen) ||
            (sim->p.loss_pm && rnd_below(sim, 1000) < sim->p.loss_pm)) {
            sim->c.dropped++;
            continue;
        }
        uint8_t *copy = malloc(d.len);
        if (!copy)
            continue;
        memcpy(copy, d.data, d.len);
        heap_push(sim, (sim_ev_t){.at = sim->now + latency(sim), .kind = EV_PKT, .from = i, .to = to,
                                  .len = (uint32_t)d.len, .data = copy});
    }
    swim_event_t e;
    while (swim_pop_event(s, &e)) {
        if (e.kind == SWIM_EVENT_PUSHPULL) {
            uint32_t to, gen;
            if (parse_name(sim, e.member.rec.gossip_addr, &to, &gen))
                send_state(sim, i, to, EV_PP_REQ);
            continue;
        }
        on_verdict(sim, i, &e);
    }
}

/* ---------------------------------------------------------------- the loop */

static bool reachable(const sim_t *sim, uint32_t from, uint32_t to)
{
    return sim->nodes[to].state == NODE_UP && sim->nodes[from].group == sim->nodes[to].group;
}

static void handle(sim_t *sim, sim_ev_t *ev)
{
    sim_node_t *nd = &sim->nodes[ev->to];
    if (ev->kind == EV_GONE) {
        if (nd->gen == ev->gen && nd->state == NODE_UP)
            nd->state = NODE_GONE;
        return;
    }
    if (ev->kind == EV_TICK && (nd->gen != ev->gen || nd->state != NODE_UP))
        return;
    if (ev->kind != EV_TICK && !reachable(sim, ev->from, ev->to)) {
        sim->c.dropped++;
        free(ev->data);
        return;
    }
    if (nd->paused_until > sim->now) { /* stopped process: it all waits for the resume */
        ev->at = nd->paused_until;
        heap_push(sim, *ev);
        return;
    }
    char from[SWIM_NAME_MAX];
    addr_of(ev->from, from);
    switch (ev->kind) {
    case EV_PKT:
        swim_on_message(nd->swim, sim->now, from, ev->data, ev->len);
        break;
    case EV_PP_REQ:
        if (swim_pushpull_merge(nd->swim, sim->now, ev->data, ev->len) == 0)
            send_state(sim, ev->to, ev->from, EV_PP_RESP);
        break;
    case EV_PP_RESP:
        swim_pushpull_merge(nd->swim, sim->now, ev->data, ev->len);
        break;
    case EV_TICK:
        sim->c.ticks++;
        swim_tick(nd->swim, sim->now);
        heap_push(sim, (sim_ev_t){.at = sim->now + sim->p.tick_ms, .kind = EV_TICK, .to = ev->to, .gen = ev->gen});
        break;
    default:
        break;
    }
    free(ev->data);
    drain(sim, ev->to);
}

uint64_t sim_now(const sim_t *sim)
{
    return sim->now;
}

void sim_run(sim_t *sim, uint64_t ms)
{
    uint64_t until = sim->now + ms;
    while (sim->heap_n && sim->heap[0].at <= until) {
        sim_ev_t ev = heap_pop(sim);
        sim->now = ev.at;
        handle(sim, &ev);
    }
    sim->now = until;
}

/* ---------------------------------------------------------------- nodes */

static void reset_views(sim_t *sim, uint32_t slot)
{
    for (uint32_t o = 0; o < sim->n; o++) {
        sim->view[(size_t)o * sim->n + slot] = VIEW_NONE;
        sim->view[(size_t)slot * sim->n + o] = VIEW_NONE;
    }
    sim->view[(size_t)slot * sim->n + slot] = SWIM_ALIVE;
}

static int node_start(sim_t *sim, uint32_t slot)
{
    sim_node_t *nd = &sim->nodes[slot];
    swim_record_t rec;
    memset(&rec, 0, sizeof(rec));
    snprintf(rec.name, sizeof(rec.name), "n%u.%u", slot, nd->gen);
    snprintf(rec.region, sizeof(rec.region), "r%u", slot % 3);
    addr_of(slot, rec.gossip_addr);
    addr_of(slot, rec.peer_addr);
    snprintf(rec.version, sizeof(rec.version), "0.1.0");
    uint64_t seed = mix(sim->p.seed ^ mix(((uint64_t)slot << 32) | nd->gen));
    swim_destroy(nd->swim);
    nd->swim = swim_create(&sim->p.swim, &rec, seed, sim->now);
    if (!nd->swim)
        return -EINVAL;
    nd->state = NODE_UP;
    nd->leaving = false;
    nd->paused_until = 0;
    reset_views(sim, slot);
    return heap_push(sim, (sim_ev_t){.at = sim->now + 1 + rnd_below(sim, sim->p.tick_ms), .kind = EV_TICK,
                                     .to = slot, .gen = nd->gen});
}

static size_t total_broadcasts(const sim_t *sim)
{
    size_t n = 0;
    for (uint32_t i = 0; i < sim->n; i++)
        if (sim->nodes[i].state == NODE_UP)
            n += swim_broadcast_count(sim->nodes[i].swim);
    return n;
}

/* Direct, lossless state transfer: a -> b merged at once. */
static int merge_into(sim_t *sim, uint32_t from, uint32_t to)
{
    swim_t *s = sim->nodes[from].swim;
    size_t size = swim_pushpull_size(s);
    uint8_t *buf = malloc(size);
    if (!buf)
        return -ENOMEM;
    long len = swim_pushpull_state(s, buf, size);
    int rc = len < 0 ? (int)len : swim_pushpull_merge(sim->nodes[to].swim, sim->now, buf, (size_t)len);
    free(buf);
    drain(sim, to);
    return rc;
}

sim_t *sim_create(const sim_params_t *p)
{
    if (!p || p->n < 2 || !p->tick_ms || p->lat_min_ms > p->lat_max_ms)
        return NULL;
    sim_t *sim = calloc(1, sizeof(*sim));
    if (!sim)
        return NULL;
    sim->p = *p;
    sim->n = p->n;
    sim->rng = mix(p->seed ^ 0x5157u);
    sim->now = 1000;
    sim->nodes = calloc(p->n, sizeof(*sim->nodes));
    sim->view = malloc((size_t)p->n * p->n);
    sim->when = calloc((size_t)p->n * p->n, sizeof(*sim->when));
    if (!sim->nodes || !sim->view || !sim->when) {
        sim_destroy(sim);
        return NULL;
    }
    memset(sim->view, VIEW_NONE, (size_t)p->n * p->n);
    for (uint32_t i = 0; i < p->n; i++) {
        if (node_start(sim, i) != 0) {
            sim_destroy(sim);
            return NULL;
        }
    }
    /* Bootstrap: everyone's record into node 0, node 0's full list to everyone. */
    for (uint32_t i = 1; i < p->n; i++)
        merge_into(sim, i, 0);
    for (uint32_t i = 1; i < p->n; i++)
        merge_into(sim, 0, i);
    /* Let the initial alive updates run out (bounded). */
    for (int k = 0; k < 300 && total_broadcasts(sim); k++)
        sim_run(sim, 1000);
    return sim;
}

void sim_destroy(sim_t *sim)
{
    if (!sim)
        return;
    for (size_t i = 0; i < sim->heap_n; i++)
        free(sim->heap[i].data);
    free(sim->heap);
    if (sim->nodes)
        for (uint32_t i = 0; i < sim->n; i++)
            swim_destroy(sim->nodes[i].swim);
    free(sim->nodes);
    free(sim->view);
    free(sim->when);
    free(sim);
}

void sim_crash(sim_t *sim, uint32_t node)
{
    if (node < sim->n && sim->nodes[node].state == NODE_UP)
        sim->nodes[node].state = NODE_CRASHED;
}

void sim_pause(sim_t *sim, uint32_t node, uint64_t ms)
{
    if (node < sim->n)
        sim->nodes[node].paused_until = sim->now + ms;
}

void sim_partition(sim_t *sim, uint32_t node, uint32_t group)
{
    if (node < sim->n)
        sim->nodes[node].group = group;
}

int sim_leave(sim_t *sim, uint32_t node)
{
    if (node >= sim->n || sim->nodes[node].state != NODE_UP || sim->nodes[node].leaving)
        return -EINVAL;
    sim_node_t *nd = &sim->nodes[node];
    nd->leaving = true;
    int rc = swim_leave(nd->swim, sim->now);
    drain(sim, node);
    if (rc == 0)
        rc = heap_push(sim, (sim_ev_t){.at = sim->now + sim->p.leave_linger_ms, .kind = EV_GONE, .to = node,
                                       .gen = nd->gen});
    return rc;
}

int sim_restart(sim_t *sim, uint32_t node, uint32_t seed_node)
{
    if (node >= sim->n || seed_node >= sim->n || node == seed_node || sim->nodes[node].state == NODE_UP)
        return -EINVAL;
    sim->nodes[node].gen++;
    int rc = node_start(sim, node);
    if (rc)
        return rc;
    char seed[SWIM_NAME_MAX];
    addr_of(seed_node, seed);
    const char *seeds[1] = {seed};
    rc = swim_join(sim->nodes[node].swim, sim->now, seeds, 1);
    drain(sim, node);
    send_state(sim, node, seed_node, EV_PP_REQ); /* the join push-pull swim.h asks for */
    return rc;
}

bool sim_node_up(const sim_t *sim, uint32_t node)
{
    return node < sim->n && sim->nodes[node].state == NODE_UP && !sim->nodes[node].leaving;
}

int sim_view(const sim_t *sim, uint32_t observer, uint32_t subject)
{
    if (observer >= sim->n || subject >= sim->n)
        return -1;
    uint8_t v = sim->view[(size_t)observer * sim->n + subject];
    return v == VIEW_NONE ? -1 : v;
}

void sim_counters(const sim_t *sim, sim_counters_t *out)
{
    *out = sim->c;
}

/* ---------------------------------------------------------------- measurements */

static uint32_t count_up(const sim_t *sim)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < sim->n; i++)
        n += sim_node_up(sim, i);
    return n;
}

static uint32_t random_up(sim_t *sim, uint32_t except)
{
    uint32_t n = count_up(sim) - (sim_node_up(sim, except) ? 1 : 0), k = rnd_below(sim, n);
    for (uint32_t i = 0; i < sim->n; i++)
        if (i != except && sim_node_up(sim, i) && k-- == 0)
            return i;
    return except;
}

/* Runs until every up member other than subject reports `status` for it; the time from t0
 * to the last one's report, or UINT64_MAX after the limit. */
static uint64_t wait_all(sim_t *sim, uint32_t subject, int status, uint64_t t0)
{
    while (sim->now < t0 + WAIT_LIMIT_MS) {
        uint64_t last = t0;
        bool all = true;
        for (uint32_t o = 0; o < sim->n && all; o++) {
            if (o == subject || !sim_node_up(sim, o))
                continue;
            size_t at = (size_t)o * sim->n + subject;
            all = sim->view[at] == status;
            if (sim->when[at] > last)
                last = sim->when[at];
        }
        if (all)
            return last - t0;
        sim_run(sim, WAIT_STEP_MS);
    }
    return UINT64_MAX;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void dist_of(sim_dist_t *d, uint64_t *v, uint32_t n, uint32_t timeouts)
{
    memset(d, 0, sizeof(*d));
    d->samples = n;
    d->timeouts = timeouts;
    if (!n)
        return;
    qsort(v, n, sizeof(*v), cmp_u64);
    d->p50_ms = v[(n + 1) / 2 - 1];
    d->p99_ms = v[(n * 99 + 99) / 100 - 1]; /* nearest rank */
    d->max_ms = v[n - 1];
}

static void record(uint64_t *v, uint32_t *n, uint32_t *timeouts, uint64_t t)
{
    if (t == UINT64_MAX)
        (*timeouts)++;
    else
        v[(*n)++] = t;
}

int sim_measure_membership(const sim_params_t *p, uint32_t rounds, uint32_t steady_ms, sim_membership_t *out)
{
    memset(out, 0, sizeof(*out));
    sim_t *sim = sim_create(p);
    uint64_t *crash = calloc(rounds + 1, sizeof(uint64_t)), *leave = calloc(rounds + 1, sizeof(uint64_t));
    uint64_t *join = calloc(2 * rounds + 1, sizeof(uint64_t));
    int rc = 0;
    if (!sim || !crash || !leave || !join) {
        rc = -ENOMEM;
        goto done;
    }
    sim_counters_t c0, c1;
    sim_counters(sim, &c0);
    uint64_t t_steady = sim->now;
    sim_run(sim, steady_ms);
    sim_counters(sim, &c1);
    double node_s = (double)p->n * (double)(sim->now - t_steady) / 1000.0;
    if (node_s > 0) {
        out->bytes_per_node_s = (double)(c1.datagram_bytes - c0.datagram_bytes) / node_s;
        out->pushpull_bytes_per_node_s = (double)(c1.pushpull_bytes - c0.pushpull_bytes) / node_s;
    }
    uint32_t nc = 0, nj = 0, nl = 0, tc = 0, tj = 0, tl = 0;
    for (uint32_t r = 0; r < rounds && count_up(sim) > 3; r++) {
        sim_run(sim, 1000 + rnd_below(sim, 2000));
        uint32_t x = random_up(sim, UINT32_MAX);
        sim_crash(sim, x);
        record(crash, &nc, &tc, wait_all(sim, x, SWIM_DEAD, sim->now));
        sim_run(sim, rnd_below(sim, 1000));
        if ((rc = sim_restart(sim, x, random_up(sim, x))) != 0)
            goto done;
        record(join, &nj, &tj, wait_all(sim, x, SWIM_ALIVE, sim->now));

        sim_run(sim, 1000 + rnd_below(sim, 2000));
        uint32_t y = random_up(sim, UINT32_MAX);
        if ((rc = sim_leave(sim, y)) != 0)
            goto done;
        record(leave, &nl, &tl, wait_all(sim, y, SWIM_LEFT, sim->now));
        sim_run(sim, p->leave_linger_ms + rnd_below(sim, 1000));
        if ((rc = sim_restart(sim, y, random_up(sim, y))) != 0)
            goto done;
        record(join, &nj, &tj, wait_all(sim, y, SWIM_ALIVE, sim->now));
    }
    dist_of(&out->crash, crash, nc, tc);
    dist_of(&out->join, join, nj, tj);
    dist_of(&out->leave, leave, nl, tl);
    sim_counters(sim, &out->counters);
    out->sim_ms = sim->now;
done:
    free(crash);
    free(join);
    free(leave);
    sim_destroy(sim);
    return rc;
}

int sim_measure_lossy(const sim_params_t *p, uint64_t duration_ms, uint32_t pause_every_ms, uint32_t pause_ms,
                      sim_lossy_t *out)
{
    memset(out, 0, sizeof(*out));
    sim_t *sim = sim_create(p);
    if (!sim)
        return -ENOMEM;
    sim_counters_t c0, c1;
    sim_counters(sim, &c0);
    uint64_t t0 = sim->now, end = t0 + duration_ms;
    uint64_t next_pause = pause_every_ms ? t0 + rnd_below(sim, pause_every_ms) : UINT64_MAX;
    while (sim->now < end) {
        uint64_t step = (next_pause < end ? next_pause : end) - sim->now;
        sim_run(sim, step);
        if (sim->now == next_pause) {
            sim_pause(sim, random_up(sim, UINT32_MAX), pause_ms);
            out->pauses++;
            next_pause += pause_every_ms;
        }
    }
    sim_counters(sim, &c1);
    out->false_dead = c1.false_dead - c0.false_dead;
    out->suspects = c1.suspects - c0.suspects;
    out->dead_about_left = c1.dead_about_left - c0.dead_about_left;
    out->bytes_per_node_s = (double)(c1.datagram_bytes - c0.datagram_bytes) * 1000.0 / ((double)p->n * duration_ms);
    out->sim_ms = duration_ms;
    sim_destroy(sim);
    return 0;
}
