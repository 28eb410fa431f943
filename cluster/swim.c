/* swim: SWIM membership with Lifeguard extensions as a pure state machine (see swim.h for
 * the protocol and the contract).
 *
 * How it works. Members (this node included, at index 0) live in one array indexed by an
 * open-addressing hash of their names; dead and left members stay there (so late gossip
 * cannot resurrect them) until dead_reclaim_ms has passed. At most one probe of our own is
 * in flight; it has two deadlines: timeout (send ping-reqs) and end (suspect the
 * target). ping-reqs we serve for others are "relays": we ping the target with our own
 * sequence number and forward its ack, or send a nack if it stays silent.
 *
 * Every update is encoded once when queued (kind, length, body) and kept in a slot of the
 * broadcast queue with a transmit count. A binary heap of slots orders them least-sent first,
 * newer first, and a hash of member names finds the queued update a newer one replaces, so
 * filling a datagram costs O((updates taken + a few skipped) * log n), not a sort of the
 * queue. Members' live and suspect counts and the next reclaim time are kept up to date, so
 * a tick with nothing to do costs O(1) rather than a scan of the members. Decoding validates
 * the whole datagram before applying any of it, so a malformed datagram has no effect at all. */
#include "cluster/swim.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { MSG_PING = 1, MSG_ACK = 2, MSG_PINGREQ = 3, MSG_NACK = 4, MSG_GOSSIP = 5, MSG_PUSHPULL = 6 };
enum { UPD_ALIVE = 1, UPD_SUSPECT = 2, UPD_DEAD = 3, UPD_LEAVE = 4 };

#define MAX_CONFIRMERS 8u
#define MAX_RELAYS 64u
#define UPDATE_MAX 400u /* kind + length + the largest body (alive: 5 strings + incarnation) */
#define OUTBOX_MAX 4096u
#define EVENTS_MAX (1u << 20)
#define UPDATE_MIN 9u       /* kind + length + a 1-byte name + incarnation */
#define PIGGYBACK_SKIPS 16u /* queued updates passed over for being too big before a datagram is full */

typedef struct member {
    swim_member_info_t info;
    uint64_t changed_ms; /* last status change */
    /* suspicion (status SUSPECT) */
    uint64_t suspect_start_ms;
    uint64_t suspect_deadline_ms;
    uint64_t suspect_min_ms, suspect_max_ms;
    uint32_t confirm_k, confirmations, n_confirmers;
    uint64_t confirmers[MAX_CONFIRMERS];
} member_t;

typedef struct bcast {
    char name[SWIM_NAME_MAX];
    uint64_t hash; /* name_hash(name) */
    uint64_t id;   /* larger = newer */
    uint32_t transmits;
    uint32_t heap_pos; /* index in bq_heap */
    uint16_t len;
    uint8_t bytes[UPDATE_MAX];
} bcast_t;

typedef struct relay {
    bool used, nack_sent, repinged;
    uint32_t my_seq, orig_seq;
    char requester[SWIM_NAME_MAX];
    char target[SWIM_NAME_MAX], target_addr[SWIM_NAME_MAX];
    uint64_t reping_at_ms, nack_at_ms, expire_ms;
} relay_t;

struct swim {
    swim_config_t cfg;
    uint64_t rng;
    bool leaving;
    uint32_t seq;
    int health; /* 0 .. health_max - 1 */

    member_t *members; /* [0] is this node */
    size_t n_members, cap_members;
    size_t n_live, n_suspect; /* members ALIVE or SUSPECT (self included), and SUSPECT */
    uint64_t next_reclaim_ms; /* no dead/left member is due before */
    uint64_t next_verdict_ms; /* no suspect can be declared dead before */
    uint32_t *index;          /* member index + 1, 0 = empty; size index_cap (power of two) */
    size_t index_cap;

    uint32_t *probe_order;
    size_t probe_n, probe_pos, probe_cap;
    struct {
        bool active, acked, indirect_sent;
        uint32_t seq, expected_nacks, nacks;
        char target[SWIM_NAME_MAX];
        uint64_t timeout_ms, end_ms;
    } probe;
    uint64_t next_probe_ms, next_gossip_ms, next_pushpull_ms;
    uint64_t last_gossip_ms; /* last gossip round (regular or brought forward) */
    bool gossip_early;       /* the next gossip round was brought forward for a verdict */

    relay_t relays[MAX_RELAYS];
    size_t n_relays; /* used */

    char (*join_seeds)[SWIM_NAME_MAX]; /* retried until we know another member */
    size_t n_join_seeds;
    uint64_t next_join_ms;

    bcast_t *bcasts;    /* slots, cap_bcasts of them */
    uint32_t *bq_heap;  /* n_bcasts slot numbers, least-sent then newest first at [0] */
    uint32_t *bq_free;  /* n_free free slot numbers */
    uint32_t *bq_index; /* slot + 1 by name hash, 0 = empty; bq_index_cap (power of two) */
    size_t n_bcasts, n_free, cap_bcasts, bq_index_cap;
    uint64_t bcast_id;

    swim_datagram_t *out;
    size_t out_head, out_n, out_cap;
    swim_event_t *events;
    size_t ev_head, ev_n, ev_cap;
};

/* ---------------------------------------------------------------- helpers */

static uint64_t rng_next(swim_t *s)
{
    uint64_t z = (s->rng += 0x9e3779b97f4a7c15ull); /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint32_t rng_below(swim_t *s, uint32_t n)
{
    return n ? (uint32_t)(rng_next(s) % n) : 0;
}

static uint64_t name_hash(const char *name)
{
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return h;
}

static bool str_ok(const char *str)
{
    return memchr(str, 0, SWIM_NAME_MAX) != NULL;
}

static bool record_ok(const swim_record_t *r)
{
    return str_ok(r->name) && r->name[0] && str_ok(r->region) && str_ok(r->gossip_addr) && str_ok(r->peer_addr) &&
           str_ok(r->version);
}

static bool record_eq(const swim_record_t *a, const swim_record_t *b)
{
    return !strcmp(a->name, b->name) && !strcmp(a->region, b->region) && !strcmp(a->gossip_addr, b->gossip_addr) &&
           !strcmp(a->peer_addr, b->peer_addr) && !strcmp(a->version, b->version);
}

static void copy_str(char dst[SWIM_NAME_MAX], const char *src)
{
    size_t n = strnlen(src, SWIM_NAME_MAX - 1);
    memcpy(dst, src, n);
    dst[n] = 0;
}

static uint32_t health_mult(const swim_t *s)
{
    return (uint32_t)s->health + 1;
}

static void health_add(swim_t *s, int delta)
{
    int v = s->health + delta;
    int max = (int)s->cfg.health_max - 1;
    s->health = v < 0 ? 0 : v > max ? max : v;
}

void swim_config_default(swim_config_t *cfg)
{
    /* Tuned in the simulation (cluster/sim.c, ops/bench/swim-sim): a crash known to all
     * within 5 s at N <= 100, yet no false verdict on a member paused 3 s under 5 % loss.
     * A crash is known to all after: the first probe of the dead member (about exponential
     * with mean one probe interval: N - 1 independent rounds each reach it once per N - 1
     * probes; p99 about 0.7 s) + the probe (150 ms) + the min suspicion + the spread of the
     * verdict (early gossip rounds: p99 under 0.1 s). The min suspicion (max of the 3.45 s
     * floor and 11 * log10 N * 150 ms; 3.45 s up to N = 123) must outlast a 3 s pause plus the
     * spread of the refutation to the first suspector (early rounds too): in the lossy hour
     * the closest suspector still had about 0.5 s to go. */
    cfg->probe_interval_ms = 150;
    cfg->probe_timeout_ms = 75;
    cfg->indirect_k = 3;
    cfg->suspicion_mult = 11;
    cfg->suspicion_max_mult = 6;
    cfg->suspicion_min_ms = 3450;
    cfg->retransmit_mult = 4;
    cfg->gossip_interval_ms = 200;
    cfg->gossip_nodes = 3;
    cfg->pushpull_interval_ms = 30000;
    cfg->health_max = 8;
    cfg->dead_reclaim_ms = 30000;
    cfg->max_members = 4096;
    cfg->max_datagram = SWIM_DATAGRAM_MAX;
}

/* ---------------------------------------------------------------- wire: writer and reader */

typedef struct wbuf {
    uint8_t *p;
    size_t cap, len;
    bool err;
} wbuf_t;

static void w_u8(wbuf_t *w, unsigned v)
{
    if (w->len + 1 > w->cap) {
        w->err = true;
        return;
    }
    w->p[w->len++] = (uint8_t)v;
}

static void w_u16(wbuf_t *w, unsigned v)
{
    w_u8(w, (v >> 8) & 0xff);
    w_u8(w, v & 0xff);
}

static void w_u32(wbuf_t *w, uint32_t v)
{
    w_u16(w, v >> 16);
    w_u16(w, v & 0xffff);
}

static void w_str(wbuf_t *w, const char *str)
{
    size_t n = strnlen(str, SWIM_NAME_MAX - 1);
    w_u8(w, (unsigned)n);
    if (w->len + n > w->cap) {
        w->err = true;
        return;
    }
    memcpy(w->p + w->len, str, n);
    w->len += n;
}

typedef struct rbuf {
    const uint8_t *p;
    size_t len, off;
    bool err;
} rbuf_t;

static unsigned r_u8(rbuf_t *r)
{
    if (r->err || r->off + 1 > r->len) {
        r->err = true;
        return 0;
    }
    return r->p[r->off++];
}

static unsigned r_u16(rbuf_t *r)
{
    unsigned hi = r_u8(r);
    return (hi << 8) | r_u8(r);
}

static uint32_t r_u32(rbuf_t *r)
{
    uint32_t hi = r_u16(r);
    return (hi << 16) | r_u16(r);
}

static void r_str(rbuf_t *r, char out[SWIM_NAME_MAX])
{
    unsigned n = r_u8(r);
    out[0] = 0;
    if (r->err || n > SWIM_NAME_MAX - 1 || r->off + n > r->len || memchr(r->p + r->off, 0, n)) {
        r->err = true;
        return;
    }
    memcpy(out, r->p + r->off, n);
    out[n] = 0;
    r->off += n;
}

/* An update: kind, u16 body length, body. */
static void enc_update(wbuf_t *w, unsigned kind, const swim_member_info_t *m, const char *from)
{
    w_u8(w, kind);
    size_t len_at = w->len;
    w_u16(w, 0);
    size_t body = w->len;
    w_str(w, m->rec.name);
    w_u32(w, m->incarnation);
    if (kind == UPD_ALIVE) {
        w_str(w, m->rec.region);
        w_str(w, m->rec.gossip_addr);
        w_str(w, m->rec.peer_addr);
        w_str(w, m->rec.version);
    } else if (kind == UPD_SUSPECT || kind == UPD_DEAD) {
        w_str(w, from);
    }
    if (!w->err) {
        size_t n = w->len - body;
        w->p[len_at] = (uint8_t)(n >> 8);
        w->p[len_at + 1] = (uint8_t)n;
    }
}

/* ---------------------------------------------------------------- outputs */

static void push_datagram(swim_t *s, const char *to, const wbuf_t *w)
{
    if (w->err || !to[0])
        return;
    if (s->out_head > 0 && s->out_head + s->out_n == s->out_cap) {
        memmove(s->out, s->out + s->out_head, s->out_n * sizeof(*s->out));
        s->out_head = 0;
    }
    if (s->out_n == s->out_cap) {
        if (s->out_cap >= OUTBOX_MAX)
            return; /* the caller is not draining: drop, like a full socket buffer */
        size_t cap = s->out_cap ? s->out_cap * 2 : 16;
        swim_datagram_t *p = realloc(s->out, cap * sizeof(*p));
        if (!p)
            return;
        s->out = p;
        s->out_cap = cap;
    }
    swim_datagram_t *d = &s->out[s->out_head + s->out_n++];
    copy_str(d->to, to);
    d->len = w->len;
    memcpy(d->data, w->p, w->len);
}

static void push_event(swim_t *s, swim_event_kind_t kind, const swim_member_info_t *m)
{
    if (s->ev_head > 0 && s->ev_head + s->ev_n == s->ev_cap) {
        memmove(s->events, s->events + s->ev_head, s->ev_n * sizeof(*s->events));
        s->ev_head = 0;
    }
    if (s->ev_n == s->ev_cap) {
        if (s->ev_cap >= EVENTS_MAX)
            return;
        size_t cap = s->ev_cap ? s->ev_cap * 2 : 16;
        swim_event_t *p = realloc(s->events, cap * sizeof(*p));
        if (!p)
            return;
        s->events = p;
        s->ev_cap = cap;
    }
    swim_event_t *e = &s->events[s->ev_head + s->ev_n++];
    e->kind = kind;
    e->member = *m;
}

bool swim_pop_datagram(swim_t *s, swim_datagram_t *out)
{
    if (!s->out_n)
        return false;
    *out = s->out[s->out_head++];
    if (--s->out_n == 0) {
        s->out_head = 0;
        if (s->out_cap > 64) { /* a burst (e.g. welcomes after a merge) is over: give the memory back */
            free(s->out);
            s->out = NULL;
            s->out_cap = 0;
        }
    }
    return true;
}

bool swim_pop_event(swim_t *s, swim_event_t *out)
{
    if (!s->ev_n)
        return false;
    *out = s->events[s->ev_head++];
    if (--s->ev_n == 0)
        s->ev_head = 0;
    return true;
}

/* ---------------------------------------------------------------- members */

static void index_rebuild(swim_t *s)
{
    memset(s->index, 0, s->index_cap * sizeof(*s->index));
    for (size_t i = 0; i < s->n_members; i++) {
        size_t mask = s->index_cap - 1, h = name_hash(s->members[i].info.rec.name) & mask;
        while (s->index[h])
            h = (h + 1) & mask;
        s->index[h] = (uint32_t)i + 1;
    }
}

static member_t *find(const swim_t *s, const char *name)
{
    size_t mask = s->index_cap - 1, h = name_hash(name) & mask;
    while (s->index[h]) {
        member_t *m = &s->members[s->index[h] - 1];
        if (!strcmp(m->info.rec.name, name))
            return m;
        h = (h + 1) & mask;
    }
    return NULL;
}

/* A new member goes to a random place in the rest of the current probe round (SWIM paper,
 * section 4.3; memberlist does the same), not to the next round: otherwise a member that
 * joined just after every node started a round was probed by nobody for up to a whole round
 * (N probe intervals), and a crash soon after its join went unnoticed that long. When the
 * round is over (or none started), the reshuffle that begins the next one includes it. */
static void probe_order_insert(swim_t *s, uint32_t idx)
{
    if (s->probe_pos >= s->probe_n)
        return;
    if (s->probe_n == s->probe_cap) {
        size_t cap = s->probe_cap * 2;
        uint32_t *p = realloc(s->probe_order, cap * sizeof(*p));
        if (!p) {
            s->probe_pos = s->probe_n; /* reshuffle on the next probe instead */
            return;
        }
        s->probe_order = p;
        s->probe_cap = cap;
    }
    size_t j = s->probe_pos + rng_below(s, (uint32_t)(s->probe_n - s->probe_pos + 1));
    memmove(&s->probe_order[j + 1], &s->probe_order[j], (s->probe_n - j) * sizeof(*s->probe_order));
    s->probe_order[j] = idx;
    s->probe_n++;
}

static member_t *add_member(swim_t *s, const swim_record_t *rec, uint32_t inc, uint64_t now)
{
    if (s->n_members >= s->cfg.max_members)
        return NULL;
    if (s->n_members == s->cap_members) {
        size_t cap = s->cap_members * 2;
        member_t *p = realloc(s->members, cap * sizeof(*p));
        if (!p)
            return NULL;
        s->members = p;
        s->cap_members = cap;
    }
    if ((s->n_members + 1) * 2 > s->index_cap) {
        uint32_t *p = calloc(s->index_cap * 2, sizeof(*p));
        if (!p)
            return NULL;
        free(s->index);
        s->index = p;
        s->index_cap *= 2;
        index_rebuild(s);
    }
    member_t *m = &s->members[s->n_members++];
    memset(m, 0, sizeof(*m));
    m->info.rec = *rec;
    m->info.status = SWIM_ALIVE;
    s->n_live++;
    m->info.incarnation = inc;
    m->changed_ms = now;
    size_t mask = s->index_cap - 1, h = name_hash(rec->name) & mask;
    while (s->index[h])
        h = (h + 1) & mask;
    s->index[h] = (uint32_t)s->n_members;
    probe_order_insert(s, (uint32_t)s->n_members - 1);
    return m;
}

static bool is_live(const member_t *m)
{
    return m->info.status == SWIM_ALIVE || m->info.status == SWIM_SUSPECT;
}

/* Every status change of a known member goes through here (the counters depend on it). */
static void set_status(swim_t *s, member_t *m, swim_status_t status, uint64_t now)
{
    s->n_live -= is_live(m);
    s->n_suspect -= m->info.status == SWIM_SUSPECT;
    m->info.status = status;
    s->n_live += is_live(m);
    s->n_suspect += status == SWIM_SUSPECT;
    if (!is_live(m) && now + s->cfg.dead_reclaim_ms < s->next_reclaim_ms)
        s->next_reclaim_ms = now + s->cfg.dead_reclaim_ms;
}

size_t swim_alive_count(const swim_t *s)
{
    return s->n_live;
}

/* Up to k random live members other than self and `except` (may be NULL); indices into out. */
static size_t pick_random(swim_t *s, size_t k, const char *except, uint32_t *out, size_t out_cap)
{
    if (k > out_cap)
        k = out_cap;
    if (s->n_members >= 32 && s->n_live >= 2 * k + 16 && s->n_live * 2 >= s->n_members) {
        /* mostly live members, many more than k: sample, no O(n) scan (falls back if unlucky) */
        size_t got = 0;
        for (size_t tries = 0; got < k && tries < 8 * k + 16; tries++) {
            uint32_t i = 1 + rng_below(s, (uint32_t)(s->n_members - 1));
            const member_t *m = &s->members[i];
            bool dup = false;
            for (size_t j = 0; j < got && !dup; j++)
                dup = out[j] == i;
            if (!dup && is_live(m) && (!except || strcmp(m->info.rec.name, except)))
                out[got++] = i;
        }
        if (got == k)
            return got;
    }
    size_t n = 0;
    uint32_t *cand = malloc(s->n_members * sizeof(*cand));
    if (!cand)
        return 0;
    for (size_t i = 1; i < s->n_members; i++)
        if (is_live(&s->members[i]) && (!except || strcmp(s->members[i].info.rec.name, except)))
            cand[n++] = (uint32_t)i;
    size_t got = 0;
    for (; got < k && got < n; got++) {
        size_t j = got + rng_below(s, (uint32_t)(n - got));
        uint32_t t = cand[got];
        cand[got] = cand[j];
        cand[j] = t;
        out[got] = cand[got];
    }
    free(cand);
    return got;
}

/* ---------------------------------------------------------------- broadcasts */

uint32_t swim_retransmit_limit(const swim_t *s)
{
    size_t n = s->n_live;
    uint32_t log2n = 0;
    while (((size_t)1 << log2n) < n + 1)
        log2n++; /* ceil(log2(n + 1)) */
    return s->cfg.retransmit_mult * (log2n ? log2n : 1);
}

size_t swim_broadcast_count(const swim_t *s)
{
    return s->n_bcasts;
}

/* The broadcast heap: slot a goes before slot b (least-sent first, then newest first). */
static bool bq_before(const swim_t *s, uint32_t a, uint32_t b)
{
    const bcast_t *x = &s->bcasts[a], *y = &s->bcasts[b];
    return x->transmits != y->transmits ? x->transmits < y->transmits : x->id > y->id;
}

static void bq_set(swim_t *s, size_t pos, uint32_t slot)
{
    s->bq_heap[pos] = slot;
    s->bcasts[slot].heap_pos = (uint32_t)pos;
}

static void bq_sift(swim_t *s, size_t pos)
{
    uint32_t slot = s->bq_heap[pos];
    while (pos > 0 && bq_before(s, slot, s->bq_heap[(pos - 1) / 2])) {
        bq_set(s, pos, s->bq_heap[(pos - 1) / 2]);
        pos = (pos - 1) / 2;
    }
    for (;;) {
        size_t l = 2 * pos + 1, r = l + 1, best = pos;
        uint32_t best_slot = slot;
        if (l < s->n_bcasts && bq_before(s, s->bq_heap[l], best_slot)) {
            best = l;
            best_slot = s->bq_heap[l];
        }
        if (r < s->n_bcasts && bq_before(s, s->bq_heap[r], best_slot)) {
            best = r;
            best_slot = s->bq_heap[r];
        }
        if (best == pos)
            break;
        bq_set(s, pos, best_slot);
        pos = best;
    }
    bq_set(s, pos, slot);
}

static void bq_heap_push(swim_t *s, uint32_t slot)
{
    bq_set(s, s->n_bcasts++, slot);
    bq_sift(s, s->n_bcasts - 1);
}

static void bq_heap_remove(swim_t *s, uint32_t slot)
{
    size_t pos = s->bcasts[slot].heap_pos;
    uint32_t last = s->bq_heap[--s->n_bcasts];
    if (pos < s->n_bcasts) {
        bq_set(s, pos, last);
        bq_sift(s, pos);
    }
}

/* The name index: open addressing, linear probing, deletion by backward shift. */
static void bq_index_add(swim_t *s, uint32_t slot)
{
    size_t mask = s->bq_index_cap - 1, h = s->bcasts[slot].hash & mask;
    while (s->bq_index[h])
        h = (h + 1) & mask;
    s->bq_index[h] = slot + 1;
}

static size_t bq_index_pos(const swim_t *s, const char *name, uint64_t hash)
{
    size_t mask = s->bq_index_cap - 1, h = hash & mask;
    for (; s->bq_index[h]; h = (h + 1) & mask) {
        const bcast_t *b = &s->bcasts[s->bq_index[h] - 1];
        if (b->hash == hash && !strcmp(b->name, name))
            return h;
    }
    return SIZE_MAX;
}

static void bq_index_del(swim_t *s, size_t hole)
{
    size_t mask = s->bq_index_cap - 1;
    s->bq_index[hole] = 0;
    for (size_t j = (hole + 1) & mask; s->bq_index[j]; j = (j + 1) & mask) {
        size_t home = s->bcasts[s->bq_index[j] - 1].hash & mask;
        /* the entry at j may fill the hole unless its home lies cyclically in (hole, j] */
        bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            s->bq_index[hole] = s->bq_index[j];
            s->bq_index[j] = 0;
            hole = j;
        }
    }
}

/* Drops a queued update: out of the heap (if in it) and the index, slot freed. */
static void bq_drop(swim_t *s, uint32_t slot, bool in_heap)
{
    bcast_t *b = &s->bcasts[slot];
    if (in_heap)
        bq_heap_remove(s, slot);
    size_t at = bq_index_pos(s, b->name, b->hash);
    if (at != SIZE_MAX)
        bq_index_del(s, at);
    s->bq_free[s->n_free++] = slot;
}

static bool bq_grow(swim_t *s)
{
    size_t bound = (size_t)s->cfg.max_members * 2;
    if (s->cap_bcasts >= bound)
        return false;
    size_t cap = s->cap_bcasts ? s->cap_bcasts * 2 : 16;
    bcast_t *slots = realloc(s->bcasts, cap * sizeof(*slots));
    if (!slots)
        return false;
    s->bcasts = slots;
    uint32_t *heap = realloc(s->bq_heap, cap * sizeof(*heap));
    if (heap)
        s->bq_heap = heap;
    uint32_t *fr = realloc(s->bq_free, cap * sizeof(*fr));
    if (fr)
        s->bq_free = fr;
    uint32_t *index = calloc(cap * 2, sizeof(*index));
    if (!heap || !fr || !index) {
        free(index);
        return false;
    }
    free(s->bq_index);
    s->bq_index = index;
    s->bq_index_cap = cap * 2;
    for (size_t i = 0; i < s->n_bcasts; i++)
        bq_index_add(s, s->bq_heap[i]);
    for (size_t i = cap; i > s->cap_bcasts; i--)
        s->bq_free[s->n_free++] = (uint32_t)(i - 1);
    s->cap_bcasts = cap;
    return true;
}

static void queue_update(swim_t *s, unsigned kind, const swim_member_info_t *m, const char *from)
{
    uint64_t hash = name_hash(m->rec.name);
    size_t at = s->bq_index_cap ? bq_index_pos(s, m->rec.name, hash) : SIZE_MAX;
    if (at != SIZE_MAX) /* a newer update replaces the older */
        bq_drop(s, s->bq_index[at] - 1, true);
    if (!s->n_free && !bq_grow(s)) {
        if (!s->n_bcasts)
            return;
        /* full: drop the most transmitted (the oldest of those); rare, so a scan will do */
        uint32_t worst = s->bq_heap[0];
        for (size_t i = 1; i < s->n_bcasts; i++) {
            const bcast_t *b = &s->bcasts[s->bq_heap[i]], *w = &s->bcasts[worst];
            if (b->transmits > w->transmits || (b->transmits == w->transmits && b->id < w->id))
                worst = s->bq_heap[i];
        }
        bq_drop(s, worst, true);
    }
    uint32_t slot = s->bq_free[s->n_free - 1];
    bcast_t *b = &s->bcasts[slot];
    wbuf_t w = {.p = b->bytes, .cap = sizeof(b->bytes)};
    enc_update(&w, kind, m, from);
    if (w.err)
        return; /* the slot stays free */
    copy_str(b->name, m->rec.name);
    b->hash = hash;
    b->id = ++s->bcast_id;
    b->transmits = 0;
    b->len = (uint16_t)w.len;
    s->n_free--;
    bq_index_add(s, slot);
    bq_heap_push(s, slot);
}

/* Appends the update count, `first` (an encoded update, may be NULL) and as many queued
 * updates as fit, least-sent first, newer first; an update too big for the space left is
 * passed over (at most PIGGYBACK_SKIPS of them) for the next ones. */
static void fill_piggyback_with(swim_t *s, wbuf_t *w, const uint8_t *first, size_t first_len)
{
    size_t count_at = w->len;
    unsigned count = 0;
    w_u8(w, 0);
    if (!w->err && first && w->len + first_len <= w->cap) {
        memcpy(w->p + w->len, first, first_len);
        w->len += first_len;
        w->p[count_at] = (uint8_t)++count;
    }
    if (w->err || !s->n_bcasts)
        return;
    uint32_t limit = swim_retransmit_limit(s);
    uint32_t taken[255], skipped[PIGGYBACK_SKIPS];
    size_t n_taken = 0, n_skipped = 0;
    while (s->n_bcasts && count < 255 && n_skipped < PIGGYBACK_SKIPS && w->len + UPDATE_MIN <= w->cap) {
        uint32_t slot = s->bq_heap[0];
        bq_heap_remove(s, slot);
        bcast_t *b = &s->bcasts[slot];
        if (w->len + b->len > w->cap) {
            skipped[n_skipped++] = slot;
            continue;
        }
        memcpy(w->p + w->len, b->bytes, b->len);
        w->len += b->len;
        b->transmits++;
        count++;
        taken[n_taken++] = slot;
    }
    w->p[count_at] = (uint8_t)count;
    for (size_t i = 0; i < n_skipped; i++)
        bq_heap_push(s, skipped[i]);
    for (size_t i = 0; i < n_taken; i++) {
        if (s->bcasts[taken[i]].transmits < limit)
            bq_heap_push(s, taken[i]);
        else
            bq_drop(s, taken[i], false);
    }
}

/* True while an update about name is queued (not yet sent retransmit_limit times). */
static bool bq_has(const swim_t *s, const char *name)
{
    return s->bq_index_cap && bq_index_pos(s, name, name_hash(name)) != SIZE_MAX;
}

static void fill_piggyback(swim_t *s, wbuf_t *w)
{
    fill_piggyback_with(s, w, NULL, 0);
}

/* A message header into buf (sized max_datagram). */
static wbuf_t msg_start(swim_t *s, uint8_t *buf, unsigned type)
{
    wbuf_t w = {.p = buf, .cap = s->cfg.max_datagram};
    w_u8(&w, SWIM_WIRE_VERSION);
    w_u8(&w, type);
    return w;
}

/* A ping without piggybacked updates: the second try of a probe or of a relay's ping. */
static void send_bare_ping(swim_t *s, const char *to, uint32_t seq, const char *target)
{
    uint8_t buf[SWIM_DATAGRAM_MAX];
    wbuf_t w = msg_start(s, buf, MSG_PING);
    w_u32(&w, seq);
    w_str(&w, target);
    w_u8(&w, 0);
    push_datagram(s, to, &w);
}

static void send_seq_msg(swim_t *s, const char *to, unsigned type, uint32_t seq, const char *target,
                         const char *target_addr)
{
    uint8_t buf[SWIM_DATAGRAM_MAX];
    wbuf_t w = msg_start(s, buf, type);
    w_u32(&w, seq);
    if (type == MSG_PING || type == MSG_PINGREQ)
        w_str(&w, target);
    if (type == MSG_PINGREQ)
        w_str(&w, target_addr);
    fill_piggyback(s, &w);
    push_datagram(s, to, &w);
}

/* ---------------------------------------------------------------- applying updates */

/* A verdict (dead or left) just learned or made, or our own refutation, is news every member
 * needs at once: bring the next gossip round forward to the next tick, with
 * GOSSIP_EARLY_FANOUT_MULT times the usual fan-out, instead of letting the news wait up to a
 * gossip interval at every hop of its spread (that wait was most of the time from the first
 * verdict to the last member's; a one-shot push to gossip_nodes members left about e^-3 of
 * them to the regular rounds). At most one early round per 1/GOSSIP_EARLY_GAP_DIV of the
 * interval, so a burst of verdicts (a partition, a mass restart) costs a few rounds, not one
 * per verdict. */
#define GOSSIP_EARLY_FANOUT_MULT 3u
#define GOSSIP_EARLY_GAP_DIV 4u
static void gossip_soon(swim_t *s, uint64_t now)
{
    if (!s->cfg.gossip_interval_ms)
        return;
    uint64_t at = s->last_gossip_ms + s->cfg.gossip_interval_ms / GOSSIP_EARLY_GAP_DIV;
    if (at < now)
        at = now;
    if (at < s->next_gossip_ms)
        s->next_gossip_ms = at;
    s->gossip_early = true;
}

static void refute(swim_t *s, uint64_t now, uint32_t accused_inc)
{
    member_t *self = &s->members[0];
    if (s->leaving)
        return;
    if (accused_inc >= self->info.incarnation)
        self->info.incarnation = accused_inc + 1;
    queue_update(s, UPD_ALIVE, &self->info, NULL);
    health_add(s, 1);
    gossip_soon(s, now);
}

static void suspicion_start(swim_t *s, member_t *m, uint64_t from_hash, uint64_t now)
{
    size_t n = swim_alive_count(s);
    double scale = n > 10 ? log10((double)n) : 1.0;
    m->suspect_min_ms = (uint64_t)(s->cfg.suspicion_mult * scale * s->cfg.probe_interval_ms);
    if (m->suspect_min_ms < s->cfg.suspicion_min_ms) /* small clusters: still outlast a pause */
        m->suspect_min_ms = s->cfg.suspicion_min_ms;
    m->suspect_max_ms = m->suspect_min_ms * s->cfg.suspicion_max_mult;
    /* confirmations expected before the timeout reaches min (memberlist: mult - 2, none when
     * the cluster is too small to provide them) */
    m->confirm_k = s->cfg.suspicion_mult > 2 ? s->cfg.suspicion_mult - 2 : 0;
    if (n < (size_t)m->confirm_k + 2)
        m->confirm_k = 0;
    m->confirmations = 0;
    m->n_confirmers = 1;
    m->confirmers[0] = from_hash;
    m->suspect_start_ms = now;
    m->suspect_deadline_ms = now + (m->confirm_k ? m->suspect_max_ms : m->suspect_min_ms);
    if (m->suspect_deadline_ms < s->next_verdict_ms)
        s->next_verdict_ms = m->suspect_deadline_ms;
}

/* True when `from` is a new independent confirmation (the timeout shrank). */
static bool suspicion_confirm(swim_t *s, member_t *m, uint64_t from_hash)
{
    if (m->confirmations >= m->confirm_k)
        return false;
    for (uint32_t i = 0; i < m->n_confirmers; i++)
        if (m->confirmers[i] == from_hash)
            return false;
    if (m->n_confirmers < MAX_CONFIRMERS)
        m->confirmers[m->n_confirmers++] = from_hash;
    m->confirmations++;
    double frac = log((double)m->confirmations + 1.0) / log((double)m->confirm_k + 1.0);
    double t = (double)m->suspect_max_ms - frac * (double)(m->suspect_max_ms - m->suspect_min_ms);
    uint64_t timeout = t < (double)m->suspect_min_ms ? m->suspect_min_ms : (uint64_t)t;
    m->suspect_deadline_ms = m->suspect_start_ms + timeout;
    if (m->suspect_deadline_ms < s->next_verdict_ms)
        s->next_verdict_ms = m->suspect_deadline_ms;
    return true;
}

static void welcome(swim_t *s, const member_t *m)
{
    uint8_t buf[SWIM_DATAGRAM_MAX];
    wbuf_t w = msg_start(s, buf, MSG_GOSSIP);
    w_u8(&w, 1);
    enc_update(&w, UPD_ALIVE, &s->members[0].info, NULL);
    push_datagram(s, m->info.rec.gossip_addr, &w);
}

static void apply_alive(swim_t *s, uint64_t now, const swim_record_t *rec, uint32_t inc, bool greet)
{
    member_t *self = &s->members[0];
    if (!strcmp(rec->name, self->info.rec.name)) {
        /* someone claims a newer or different us: outbid it */
        if (inc > self->info.incarnation || (inc == self->info.incarnation && !record_eq(rec, &self->info.rec)))
            refute(s, now, inc);
        return;
    }
    member_t *m = find(s, rec->name);
    if (!m) {
        m = add_member(s, rec, inc, now);
        if (!m)
            return;
        push_event(s, SWIM_EVENT_ALIVE, &m->info);
        queue_update(s, UPD_ALIVE, &m->info, NULL);
        if (greet && !s->leaving)
            welcome(s, m); /* so a joining node learns every member without a full sync */
        return;
    }
    if (inc <= m->info.incarnation)
        return;
    swim_status_t was = m->info.status;
    bool changed = !record_eq(&m->info.rec, rec);
    m->info.rec = *rec;
    m->info.incarnation = inc;
    set_status(s, m, SWIM_ALIVE, now);
    if (was != SWIM_ALIVE) {
        m->changed_ms = now;
        push_event(s, SWIM_EVENT_ALIVE, &m->info);
    } else if (changed) {
        push_event(s, SWIM_EVENT_UPDATE, &m->info);
    }
    queue_update(s, UPD_ALIVE, &m->info, NULL);
    if (was == SWIM_SUSPECT) /* a refutation: it races the suspicion timeouts elsewhere */
        gossip_soon(s, now);
}

static void apply_suspect(swim_t *s, uint64_t now, const char *name, uint32_t inc, const char *from)
{
    member_t *m = find(s, name);
    if (!m)
        return;
    if (m == &s->members[0]) {
        if (inc >= m->info.incarnation)
            refute(s, now, inc);
        else if (!s->leaving && !bq_has(s, m->info.rec.name)) /* the accuser missed our refutation: repeat it */
            queue_update(s, UPD_ALIVE, &m->info, NULL);
        return;
    }
    if (inc < m->info.incarnation || !is_live(m))
        return;
    uint64_t fh = name_hash(from);
    if (m->info.status == SWIM_SUSPECT && inc == m->info.incarnation) {
        if (suspicion_confirm(s, m, fh))
            queue_update(s, UPD_SUSPECT, &m->info, from);
        return;
    }
    bool was_alive = m->info.status == SWIM_ALIVE;
    set_status(s, m, SWIM_SUSPECT, now);
    m->info.incarnation = inc;
    m->changed_ms = now;
    suspicion_start(s, m, fh, now);
    if (was_alive)
        push_event(s, SWIM_EVENT_SUSPECT, &m->info);
    queue_update(s, UPD_SUSPECT, &m->info, from);
}

static void apply_dead(swim_t *s, uint64_t now, const char *name, uint32_t inc, const char *from, bool leave)
{
    member_t *m = find(s, name);
    if (!m)
        return;
    if (m == &s->members[0]) {
        if (inc >= m->info.incarnation)
            refute(s, now, inc);
        else if (!s->leaving && !bq_has(s, m->info.rec.name)) /* the accuser missed our refutation: repeat it */
            queue_update(s, UPD_ALIVE, &m->info, NULL);
        return;
    }
    if (inc < m->info.incarnation || !is_live(m))
        return;
    set_status(s, m, leave ? SWIM_LEFT : SWIM_DEAD, now);
    m->info.incarnation = inc;
    m->changed_ms = now;
    push_event(s, leave ? SWIM_EVENT_LEFT : SWIM_EVENT_DEAD, &m->info);
    queue_update(s, leave ? UPD_LEAVE : UPD_DEAD, &m->info, from);
    gossip_soon(s, now);
}

/* Parses (apply = false: validates only) the update section at r. */
static bool read_updates(swim_t *s, uint64_t now, rbuf_t *r, bool apply)
{
    unsigned count = r_u8(r);
    for (unsigned i = 0; i < count && !r->err; i++) {
        unsigned kind = r_u8(r), len = r_u16(r);
        if (r->err || r->off + len > r->len)
            return false;
        rbuf_t b = {.p = r->p + r->off, .len = len};
        r->off += len;
        swim_record_t rec;
        char from[SWIM_NAME_MAX];
        memset(&rec, 0, sizeof(rec));
        r_str(&b, rec.name);
        uint32_t inc = r_u32(&b);
        switch (kind) {
        case UPD_ALIVE:
            r_str(&b, rec.region);
            r_str(&b, rec.gossip_addr);
            r_str(&b, rec.peer_addr);
            r_str(&b, rec.version);
            if (b.err || !rec.name[0])
                return false;
            if (apply)
                apply_alive(s, now, &rec, inc, true);
            break;
        case UPD_SUSPECT:
        case UPD_DEAD:
            r_str(&b, from);
            if (b.err || !rec.name[0])
                return false;
            if (apply && kind == UPD_SUSPECT)
                apply_suspect(s, now, rec.name, inc, from);
            else if (apply)
                apply_dead(s, now, rec.name, inc, from, false);
            break;
        case UPD_LEAVE:
            if (b.err || !rec.name[0])
                return false;
            if (apply)
                apply_dead(s, now, rec.name, inc, rec.name, true);
            break;
        default: /* unknown update kind from a newer version: skipped */
            break;
        }
    }
    return !r->err;
}

/* ---------------------------------------------------------------- messages in */

void swim_on_message(swim_t *s, uint64_t now, const char *from_addr, const uint8_t *bytes, size_t len)
{
    if (!bytes || !from_addr || len < 2 || len > SWIM_DATAGRAM_MAX ||
        strnlen(from_addr, SWIM_NAME_MAX) >= SWIM_NAME_MAX)
        return;
    rbuf_t r = {.p = bytes, .len = len};
    if (r_u8(&r) != SWIM_WIRE_VERSION)
        return;
    unsigned type = r_u8(&r);
    uint32_t seq = 0;
    char target[SWIM_NAME_MAX] = "", target_addr[SWIM_NAME_MAX] = "";
    switch (type) {
    case MSG_PING:
        seq = r_u32(&r);
        r_str(&r, target);
        break;
    case MSG_ACK:
    case MSG_NACK:
        seq = r_u32(&r);
        break;
    case MSG_PINGREQ:
        seq = r_u32(&r);
        r_str(&r, target);
        r_str(&r, target_addr);
        break;
    case MSG_GOSSIP:
        break;
    default:
        return; /* unknown message type */
    }
    if (r.err)
        return;
    size_t upd_at = r.off;
    if (!read_updates(s, now, &r, false) || r.off != r.len)
        return;
    r.off = upd_at;
    read_updates(s, now, &r, true);

    switch (type) {
    case MSG_PING:
        if (target[0] && strcmp(target, s->members[0].info.rec.name))
            return; /* meant for a previous owner of this address */
        send_seq_msg(s, from_addr, MSG_ACK, seq, NULL, NULL);
        if (!target[0] && !s->leaving) { /* a join: introduce ourselves */
            uint8_t buf[SWIM_DATAGRAM_MAX];
            wbuf_t w = msg_start(s, buf, MSG_GOSSIP);
            w_u8(&w, 1);
            enc_update(&w, UPD_ALIVE, &s->members[0].info, NULL);
            push_datagram(s, from_addr, &w);
        }
        break;
    case MSG_ACK:
        if (s->probe.active && seq == s->probe.seq) {
            s->probe.acked = true;
            s->probe.active = false;
            health_add(s, -1);
            return;
        }
        for (size_t i = 0; i < MAX_RELAYS; i++) {
            relay_t *rl = &s->relays[i];
            if (rl->used && rl->my_seq == seq) {
                send_seq_msg(s, rl->requester, MSG_ACK, rl->orig_seq, NULL, NULL);
                rl->used = false;
                s->n_relays--;
                return;
            }
        }
        break;
    case MSG_NACK:
        if (s->probe.active && seq == s->probe.seq && s->probe.nacks < s->probe.expected_nacks)
            s->probe.nacks++;
        break;
    case MSG_PINGREQ: {
        if (!target[0] || !target_addr[0])
            return;
        relay_t *rl = NULL;
        for (size_t i = 0; i < MAX_RELAYS && !rl; i++)
            if (!s->relays[i].used)
                rl = &s->relays[i];
        if (!rl)
            return; /* bounded: the requester will count a missing nack */
        rl->used = true;
        s->n_relays++;
        rl->nack_sent = rl->repinged = false;
        rl->my_seq = ++s->seq;
        rl->orig_seq = seq;
        copy_str(rl->requester, from_addr);
        copy_str(rl->target, target);
        copy_str(rl->target_addr, target_addr);
        /* no ack by half the nack time: ping once more (a lost ping or ack is the common
         * failure of an indirect path under loss) */
        rl->reping_at_ms = now + (uint64_t)s->cfg.probe_timeout_ms * 2 / 5 * health_mult(s);
        rl->nack_at_ms = now + (uint64_t)s->cfg.probe_timeout_ms * 4 / 5 * health_mult(s);
        rl->expire_ms = now + (uint64_t)s->cfg.probe_interval_ms * 2 * health_mult(s);
        send_seq_msg(s, target_addr, MSG_PING, rl->my_seq, target, NULL);
        break;
    }
    default:
        break;
    }
}

/* ---------------------------------------------------------------- timers */

static void probe_order_rebuild(swim_t *s)
{
    if (s->probe_cap < s->n_members) {
        uint32_t *p = realloc(s->probe_order, s->n_members * sizeof(*p));
        if (!p)
            return;
        s->probe_order = p;
        s->probe_cap = s->n_members;
    }
    s->probe_n = 0;
    for (size_t i = 1; i < s->n_members; i++)
        s->probe_order[s->probe_n++] = (uint32_t)i;
    for (size_t i = s->probe_n; i > 1; i--) { /* Fisher-Yates */
        size_t j = rng_below(s, (uint32_t)i);
        uint32_t t = s->probe_order[i - 1];
        s->probe_order[i - 1] = s->probe_order[j];
        s->probe_order[j] = t;
    }
    s->probe_pos = 0;
}

static member_t *probe_next_target(swim_t *s)
{
    for (int pass = 0; pass < 2; pass++) {
        while (s->probe_pos < s->probe_n) {
            uint32_t i = s->probe_order[s->probe_pos++];
            if (i < s->n_members && is_live(&s->members[i]))
                return &s->members[i];
        }
        probe_order_rebuild(s);
    }
    return NULL;
}

static void probe_tick(swim_t *s, uint64_t now)
{
    if (s->probe.active && !s->probe.indirect_sent && now >= s->probe.timeout_ms) {
        s->probe.indirect_sent = true;
        member_t *t = find(s, s->probe.target);
        uint32_t pick[16];
        size_t n = t ? pick_random(s, s->cfg.indirect_k, s->probe.target, pick, 16) : 0;
        for (size_t i = 0; i < n; i++)
            send_seq_msg(s, s->members[pick[i]].info.rec.gossip_addr, MSG_PINGREQ, s->probe.seq, t->info.rec.name,
                         t->info.rec.gossip_addr);
        s->probe.expected_nacks = (uint32_t)n;
        /* and a second direct ping (memberlist's TCP fallback ping, over UDP): a single lost
         * ping or ack no longer leaves the verdict to the indirect paths alone, which under
         * uniform loss is most of the false suspicions (and each costs a cluster-wide
         * suspect + refutation broadcast). It carries no piggybacked updates: when the target
         * is really gone they would be transmits lost, and they are what spreads the news. */
        if (t)
            send_bare_ping(s, t->info.rec.gossip_addr, s->probe.seq, t->info.rec.name);
    }
    if (s->probe.active && now >= s->probe.end_ms) {
        s->probe.active = false;
        /* Lifeguard: nacks that did not come back mean our own link is slow or lossy */
        if (s->probe.expected_nacks)
            health_add(s, (int)(s->probe.expected_nacks - s->probe.nacks));
        else
            health_add(s, 1);
        member_t *t = find(s, s->probe.target);
        if (t && is_live(t)) /* a suspect we failed to reach again: an independent confirmation */
            apply_suspect(s, now, t->info.rec.name, t->info.incarnation, s->members[0].info.rec.name);
    }
    if (s->probe.active || s->leaving || now < s->next_probe_ms)
        return;
    member_t *t = probe_next_target(s);
    uint64_t mult = health_mult(s);
    s->next_probe_ms = now + s->cfg.probe_interval_ms * mult;
    if (!t)
        return;
    s->probe.active = true;
    s->probe.acked = false;
    s->probe.indirect_sent = false;
    s->probe.seq = ++s->seq;
    s->probe.expected_nacks = s->probe.nacks = 0;
    copy_str(s->probe.target, t->info.rec.name);
    s->probe.timeout_ms = now + s->cfg.probe_timeout_ms * mult;
    s->probe.end_ms = now + s->cfg.probe_interval_ms * mult;
    if (s->probe.end_ms < s->probe.timeout_ms + s->cfg.probe_timeout_ms * mult)
        s->probe.end_ms = s->probe.timeout_ms + s->cfg.probe_timeout_ms * mult;
    s->next_probe_ms = s->probe.end_ms;
    uint8_t buf[SWIM_DATAGRAM_MAX], sus[UPDATE_MAX];
    wbuf_t w = msg_start(s, buf, MSG_PING);
    w_u32(&w, s->probe.seq);
    w_str(&w, t->info.rec.name);
    wbuf_t su = {.p = sus, .cap = sizeof(sus)};
    if (t->info.status == SWIM_SUSPECT) /* Lifeguard buddy system: tell the suspect at once */
        enc_update(&su, UPD_SUSPECT, &t->info, s->members[0].info.rec.name);
    fill_piggyback_with(s, &w, su.len && !su.err ? sus : NULL, su.len);
    push_datagram(s, t->info.rec.gossip_addr, &w);
}

static void gossip_send(swim_t *s, size_t fanout)
{
    uint32_t pick[16];
    size_t n = pick_random(s, fanout, NULL, pick, 16);
    for (size_t i = 0; i < n && s->n_bcasts; i++) {
        uint8_t buf[SWIM_DATAGRAM_MAX];
        wbuf_t w = msg_start(s, buf, MSG_GOSSIP);
        fill_piggyback(s, &w);
        push_datagram(s, s->members[pick[i]].info.rec.gossip_addr, &w);
    }
}

static void join_send(swim_t *s, uint64_t now)
{
    for (size_t i = 0; i < s->n_join_seeds; i++) {
        uint8_t buf[SWIM_DATAGRAM_MAX];
        wbuf_t w = msg_start(s, buf, MSG_PING);
        w_u32(&w, ++s->seq);
        w_str(&w, ""); /* no target name: whoever is there answers */
        w_u8(&w, 1);
        enc_update(&w, UPD_ALIVE, &s->members[0].info, NULL);
        push_datagram(s, s->join_seeds[i], &w);
    }
    s->next_join_ms = now + s->cfg.probe_interval_ms;
}

/* Forgets dead and left members after dead_reclaim_ms. The array is compacted in place
 * (order kept) and the probe round carries on with the survivors' new indices: forcing a
 * reshuffle instead restarted every node's round at the same moment (they all reclaim a
 * member at about the same time), and a member not yet probed in the cut-short round could
 * land at the end of the new one, two rounds without a probe from this node. */
static void reclaim(swim_t *s, uint64_t now)
{
    uint64_t next = UINT64_MAX;
    uint32_t *remap = NULL;
    size_t kept = 1;
    for (size_t i = 1; i < s->n_members; i++) {
        member_t *m = &s->members[i];
        bool gone = !is_live(m) && now >= m->changed_ms + s->cfg.dead_reclaim_ms;
        if (gone && !remap) { /* first one: from here on indices move */
            remap = malloc(s->n_members * sizeof(*remap));
            if (!remap)
                return; /* retried on the next tick */
            for (size_t k = 0; k < i; k++)
                remap[k] = (uint32_t)k;
        }
        if (remap)
            remap[i] = gone ? UINT32_MAX : (uint32_t)kept;
        if (gone)
            continue;
        if (!is_live(m) && m->changed_ms + s->cfg.dead_reclaim_ms < next)
            next = m->changed_ms + s->cfg.dead_reclaim_ms;
        if (kept != i)
            s->members[kept] = *m;
        kept++;
    }
    s->next_reclaim_ms = next;
    if (!remap)
        return;
    size_t old_n = s->n_members, n = 0, pos = s->probe_pos;
    s->n_members = kept;
    index_rebuild(s);
    for (size_t k = 0; k < s->probe_n; k++) {
        uint32_t i = s->probe_order[k];
        uint32_t to = i < old_n ? remap[i] : UINT32_MAX;
        if (to == UINT32_MAX) {
            pos -= k < s->probe_pos;
            continue;
        }
        s->probe_order[n++] = to;
    }
    s->probe_n = n;
    s->probe_pos = pos;
    free(remap);
}

void swim_tick(swim_t *s, uint64_t now)
{
    if (s->n_join_seeds && !s->leaving && now >= s->next_join_ms) {
        if (swim_alive_count(s) > 1) { /* joined: from now on gossip and push-pull keep us in */
            free(s->join_seeds);
            s->join_seeds = NULL;
            s->n_join_seeds = 0;
        } else {
            join_send(s, now);
        }
    }
    probe_tick(s, now);

    if (s->n_suspect && now >= s->next_verdict_ms) {
        uint64_t next = UINT64_MAX;
        for (size_t i = 1; i < s->n_members; i++) {
            member_t *m = &s->members[i];
            if (m->info.status != SWIM_SUSPECT)
                continue;
            /* A node in poor local health (its own messages are late or lost) also waits longer
             * before a verdict: its accusation may not have reached the accused yet. */
            uint64_t timeout = (m->suspect_deadline_ms - m->suspect_start_ms) * health_mult(s);
            if (now >= m->suspect_start_ms + timeout)
                apply_dead(s, now, m->info.rec.name, m->info.incarnation, s->members[0].info.rec.name, false);
            else if (m->suspect_deadline_ms < next) /* the earliest it can be, at multiplier 1 */
                next = m->suspect_deadline_ms;
        }
        s->next_verdict_ms = next;
    }

    if (now >= s->next_reclaim_ms) {
        reclaim(s, now);
    }

    for (size_t i = 0; i < MAX_RELAYS && s->n_relays; i++) {
        relay_t *rl = &s->relays[i];
        if (!rl->used)
            continue;
        if (!rl->repinged && now >= rl->reping_at_ms) {
            rl->repinged = true;
            send_bare_ping(s, rl->target_addr, rl->my_seq, rl->target);
        }
        if (!rl->nack_sent && now >= rl->nack_at_ms) {
            rl->nack_sent = true;
            send_seq_msg(s, rl->requester, MSG_NACK, rl->orig_seq, NULL, NULL);
        }
        if (now >= rl->expire_ms) {
            rl->used = false;
            s->n_relays--;
        }
    }

    if (s->cfg.gossip_interval_ms && now >= s->next_gossip_ms) {
        s->next_gossip_ms = now + s->cfg.gossip_interval_ms;
        s->last_gossip_ms = now;
        gossip_send(s, s->gossip_early ? s->cfg.gossip_nodes * GOSSIP_EARLY_FANOUT_MULT : s->cfg.gossip_nodes);
        s->gossip_early = false;
    }

    if (s->cfg.pushpull_interval_ms && now >= s->next_pushpull_ms && !s->leaving) {
        /* jittered so that a cluster started at once does not sync in lockstep */
        s->next_pushpull_ms = now + s->cfg.pushpull_interval_ms / 2 + rng_below(s, s->cfg.pushpull_interval_ms);
        uint32_t pick;
        if (pick_random(s, 1, NULL, &pick, 1) == 1)
            push_event(s, SWIM_EVENT_PUSHPULL, &s->members[pick].info);
    }
}

/* ---------------------------------------------------------------- join, leave */

int swim_join(swim_t *s, uint64_t now, const char *const *seeds, size_t n_seeds)
{
    if (n_seeds > 64)
        n_seeds = 64; /* bound; more seeds add nothing */
    for (size_t i = 0; i < n_seeds; i++)
        if (!seeds[i] || strnlen(seeds[i], SWIM_NAME_MAX) >= SWIM_NAME_MAX)
            return -EINVAL;
    char(*list)[SWIM_NAME_MAX] = calloc(n_seeds ? n_seeds : 1, sizeof(*list));
    if (!list)
        return -ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < n_seeds; i++)
        if (strcmp(seeds[i], s->members[0].info.rec.gossip_addr))
            copy_str(list[n++], seeds[i]);
    free(s->join_seeds);
    s->join_seeds = list;
    s->n_join_seeds = n;
    queue_update(s, UPD_ALIVE, &s->members[0].info, NULL);
    join_send(s, now);
    return 0;
}

int swim_leave(swim_t *s, uint64_t now)
{
    if (s->leaving)
        return 0;
    member_t *self = &s->members[0];
    self->info.incarnation++;
    set_status(s, self, SWIM_LEFT, now);
    s->leaving = true;
    s->probe.active = false;
    queue_update(s, UPD_LEAVE, &self->info, NULL);
    gossip_send(s, s->cfg.gossip_nodes > 3 ? s->cfg.gossip_nodes : 3);
    return 0;
}

/* ---------------------------------------------------------------- push-pull */

static size_t str_wire(const char *str)
{
    return 1 + strnlen(str, SWIM_NAME_MAX - 1);
}

size_t swim_pushpull_size(const swim_t *s)
{
    size_t n = 2 + 4;
    for (size_t i = 0; i < s->n_members; i++) {
        const swim_record_t *r = &s->members[i].info.rec;
        n += 1 + 4 + str_wire(r->name) + str_wire(r->region) + str_wire(r->gossip_addr) + str_wire(r->peer_addr) +
             str_wire(r->version);
    }
    return n;
}

long swim_pushpull_state(const swim_t *s, uint8_t *out, size_t cap)
{
    if (swim_pushpull_size(s) > cap)
        return -ENOSPC;
    wbuf_t w = {.p = out, .cap = cap};
    w_u8(&w, SWIM_WIRE_VERSION);
    w_u8(&w, MSG_PUSHPULL);
    w_u32(&w, (uint32_t)s->n_members);
    for (size_t i = 0; i < s->n_members; i++) {
        const swim_member_info_t *m = &s->members[i].info;
        w_u8(&w, m->status);
        w_u32(&w, m->incarnation);
        w_str(&w, m->rec.name);
        w_str(&w, m->rec.region);
        w_str(&w, m->rec.gossip_addr);
        w_str(&w, m->rec.peer_addr);
        w_str(&w, m->rec.version);
    }
    return w.err ? -ENOSPC : (long)w.len;
}

static bool read_pushpull(swim_t *s, uint64_t now, const uint8_t *bytes, size_t len, bool apply)
{
    rbuf_t r = {.p = bytes, .len = len};
    if (r_u8(&r) != SWIM_WIRE_VERSION || r_u8(&r) != MSG_PUSHPULL)
        return false;
    uint32_t count = r_u32(&r);
    for (uint32_t i = 0; i < count && !r.err; i++) {
        swim_record_t rec;
        memset(&rec, 0, sizeof(rec));
        unsigned status = r_u8(&r);
        uint32_t inc = r_u32(&r);
        r_str(&r, rec.name);
        r_str(&r, rec.region);
        r_str(&r, rec.gossip_addr);
        r_str(&r, rec.peer_addr);
        r_str(&r, rec.version);
        if (r.err || !rec.name[0] || status > SWIM_LEFT)
            return false;
        if (!apply)
            continue;
        if (status == SWIM_ALIVE) {
            apply_alive(s, now, &rec, inc, false);
        } else if (status == SWIM_LEFT) {
            apply_dead(s, now, rec.name, inc, rec.name, true);
        } else { /* a remote verdict of dead is only a suspicion here (memberlist does the same) */
            if (!find(s, rec.name) && status == SWIM_SUSPECT)
                apply_alive(s, now, &rec, inc, false);
            apply_suspect(s, now, rec.name, inc, "push-pull");
        }
    }
    return !r.err && r.off == r.len;
}

int swim_pushpull_merge(swim_t *s, uint64_t now, const uint8_t *bytes, size_t len)
{
    if (!bytes || !read_pushpull(s, now, bytes, len, false))
        return -EBADMSG;
    read_pushpull(s, now, bytes, len, true);
    return 0;
}

/* ---------------------------------------------------------------- lifecycle, introspection */

swim_t *swim_create(const swim_config_t *cfg, const swim_record_t *self, uint64_t seed, uint64_t now)
{
    if (!cfg || !self || !record_ok(self) || !cfg->probe_interval_ms || !cfg->probe_timeout_ms || !cfg->health_max ||
        cfg->max_members < 2 || cfg->max_datagram < 256 || cfg->max_datagram > SWIM_DATAGRAM_MAX ||
        !cfg->retransmit_mult || !cfg->suspicion_mult || !cfg->suspicion_max_mult)
        return NULL;
    swim_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->cfg = *cfg;
    s->rng = seed;
    s->next_reclaim_ms = s->next_verdict_ms = UINT64_MAX;
    s->cap_members = 16;
    s->index_cap = 64;
    s->members = calloc(s->cap_members, sizeof(*s->members));
    s->index = calloc(s->index_cap, sizeof(*s->index));
    if (!s->members || !s->index) {
        swim_destroy(s);
        return NULL;
    }
    add_member(s, self, 0, now);
    s->next_probe_ms = now + rng_below(s, cfg->probe_interval_ms); /* desynchronise probes */
    s->next_gossip_ms = now + rng_below(s, cfg->gossip_interval_ms ? cfg->gossip_interval_ms : 1);
    s->next_pushpull_ms = now + cfg->pushpull_interval_ms / 2 + rng_below(s, cfg->pushpull_interval_ms + 1);
    return s;
}

void swim_destroy(swim_t *s)
{
    if (!s)
        return;
    free(s->members);
    free(s->index);
    free(s->probe_order);
    free(s->join_seeds);
    free(s->bcasts);
    free(s->bq_heap);
    free(s->bq_free);
    free(s->bq_index);
    free(s->out);
    free(s->events);
    free(s);
}

size_t swim_member_count(const swim_t *s)
{
    return s->n_members;
}

bool swim_member_at(const swim_t *s, size_t i, swim_member_info_t *out)
{
    if (i >= s->n_members)
        return false;
    *out = s->members[i].info;
    return true;
}

bool swim_member_find(const swim_t *s, const char *name, swim_member_info_t *out)
{
    const member_t *m = find(s, name);
    if (m && out)
        *out = m->info;
    return m != NULL;
}

uint32_t swim_health_multiplier(const swim_t *s)
{
    return health_mult(s);
}

uint32_t swim_incarnation(const swim_t *s)
{
    return s->members[0].info.incarnation;
}
