/* quota: reserve-then-settle budgets and sliding-window rate limits with leased allotments
 * (see quota.h for the contract, the grant policy and the invariants).
 *
 * How it works. The owner keeps, per budget dimension (tokens, nano-USD), three sums:
 * spent (settled finals), reserved (its own in-flight reservations) and held (allowance out
 * with lessees); every admission or grant checks spent + reserved + held + new <= budget,
 * so the invariant is maintained by construction and recomputed by quota_owner_check. A
 * lessee's held only shrinks by what the lessee reports (final usage, allowance given back)
 * or when the owner declares it vanished, so the owner always over-estimates what a lessee
 * may use: lost or late messages park allowance, they never create any.
 *
 * In-flight requests live in small open-addressing hash tables keyed by the 64-bit hash of
 * the request id (linear probing, backward-shift deletion, grown on demand up to the
 * configured bound). Recently settled ids live in a ring (grown on demand, aged out), which
 * is what makes finals idempotent once their reservation is gone. A lessee also queues the
 * keys of its entries with unreported changes (each once: the entry's dirty flag), so a
 * report costs what it carries, not a scan of the table.
 *
 * Rate windows are two counters per limit (previous and current fixed window); the
 * retry-after arithmetic is exact in integer milliseconds: at now + retry_after the request
 * fits, one millisecond earlier it does not (absent other traffic). */
#include "node/quota.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define WIN ((uint64_t)QUOTA_WINDOW_MS)
#define RESERVED_RETRY_MS 1000u
#define ASK_RING 8u

/* ---------------------------------------------------------------- small helpers */

static int64_t i64_min(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static int64_t i64_max(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

/* dimension d of a usage: 0 = tokens, 1 = nano-USD */
static int64_t ud(quota_usage_t u, int d)
{
    return d == 0 ? u.tokens : u.nanousd;
}

static void ud_add(quota_usage_t *u, int d, int64_t v)
{
    if (d == 0)
        u->tokens += v;
    else
        u->nanousd += v;
}

static bool budget_has(const quota_limits_t *lim, int d)
{
    return d == 0 ? lim->has_budget_tokens : lim->has_budget_usd;
}

static int64_t budget_of(const quota_limits_t *lim, int d)
{
    return d == 0 ? lim->budget_tokens : lim->budget_nanousd;
}

void quota_config_default(quota_config_t *cfg)
{
    cfg->lease_ttl_ms = 3000;
    cfg->clock_margin_ms = 250;
    cfg->liveness_ms = 10000;
    cfg->heartbeat_ms = 1000;
    cfg->idle_return_ms = 1000;
    cfg->max_inflight = 1024;
    cfg->settled_ring = 4096;
    cfg->settled_max_age_ms = 15u * 60u * 1000u;
}

static void config_fix(quota_config_t *out, const quota_config_t *in)
{
    if (in)
        *out = *in;
    else
        quota_config_default(out);
    if (out->lease_ttl_ms == 0)
        out->lease_ttl_ms = 3000;
    if (out->max_inflight == 0 || out->max_inflight > QUOTA_MAX_INFLIGHT)
        out->max_inflight = QUOTA_MAX_INFLIGHT;
    if (out->settled_ring == 0)
        out->settled_ring = 4096;
}

int64_t quota_usd_to_nanos(double usd)
{
    if (!(usd > 0))
        return 0;
    if (usd >= 9.0e9)
        return INT64_MAX / 2;
    return (int64_t)llround(usd * 1e9);
}

double quota_nanos_to_usd(int64_t nanousd)
{
    return (double)nanousd / 1e9;
}

uint64_t quota_request_key(const char *request_id)
{
    /* FNV-1a, then murmur3's finaliser for avalanche. Ids are relay-generated (not chosen by
     * an adversary); 4096 ids in a ring collide with probability ~4096^2 / 2^64. */
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)request_id; *p; p++) {
        h ^= *p;
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h ? h : 1;
}

/* ---------------------------------------------------------------- rate window */

typedef struct rate_window {
    uint64_t id; /* now_ms / WIN of the current window */
    int64_t prev, cur;
} rate_window_t;

static void win_roll(rate_window_t *w, uint64_t now)
{
    uint64_t id = now / WIN;
    if (id <= w->id)
        return; /* same window (or a clock step back: keep counting) */
    w->prev = id == w->id + 1 ? w->cur : 0;
    w->cur = 0;
    w->id = id;
}

static uint64_t win_remaining_ms(const rate_window_t *w, uint64_t now)
{
    uint64_t start = w->id * WIN;
    uint64_t off = now > start ? now - start : 0;
    return off >= WIN ? 0 : WIN - off;
}

/* cur + ceil(prev * remaining fraction) */
static int64_t win_estimate(const rate_window_t *w, uint64_t now)
{
    uint64_t rem = win_remaining_ms(w, now);
    int64_t prev = i64_max(w->prev, 0);
    return i64_max(w->cur, 0) + (int64_t)(((uint64_t)prev * rem + WIN - 1) / WIN);
}

/* ms until estimate + need <= limit, absent new traffic. ceil(x / W) <= room <=> x <= room * W. */
static uint64_t win_wait(const rate_window_t *w, uint64_t now, int64_t need, int64_t limit)
{
    if (need > limit)
        return WIN;
    uint64_t rem = win_remaining_ms(w, now);
    int64_t cur = i64_max(w->cur, 0), prev = i64_max(w->prev, 0);
    int64_t room = limit - need - cur;
    if (room >= 0) {
        if (prev == 0)
            return 0;
        uint64_t rem_max = (uint64_t)room * WIN / (uint64_t)prev;
        return rem > rem_max ? rem - rem_max : 0;
    }
    /* not in this window: in the next one prev' = cur, cur' = 0 */
    uint64_t room2 = (uint64_t)(limit - need);
    if (cur == 0)
        return rem;
    uint64_t rem_max = room2 * WIN / (uint64_t)cur;
    if (rem_max >= WIN)
        return rem;
    return rem + (WIN - rem_max);
}

static uint64_t win_reset(const rate_window_t *w, uint64_t now)
{
    uint64_t rem = win_remaining_ms(w, now);
    if (w->cur > 0)
        return rem + WIN;
    if (w->prev > 0)
        return rem;
    return 0;
}

/* Takes back `amount` counted in window `id` (a correction or an unused slice). */
static void win_take_back(rate_window_t *w, uint64_t id, int64_t amount)
{
    if (id == w->id)
        w->cur = i64_max(0, w->cur - amount);
    else if (id + 1 == w->id)
        w->prev = i64_max(0, w->prev - amount);
}

/* ---------------------------------------------------------------- settled ring */

/* The ids of recent finals: a FIFO ring (age order, for eviction and aging) plus an
 * open-addressing index of the same keys (linear probing, backward-shift deletion), so a
 * lookup is O(1) rather than a scan of up to settled_ring entries per settle. Keys are
 * never 0 (quota_request_key), which marks an empty index slot. */
typedef struct settled_ring {
    uint64_t *keys;
    uint64_t *times;
    uint32_t cap, start, count;
    uint64_t *index;    /* 2 * cap slots (a power of two), 0 = empty */
    uint32_t index_mask;
} settled_ring_t;

static uint32_t index_slot(uint64_t key, uint32_t mask)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (uint32_t)key & mask;
}

static bool ring_has(const settled_ring_t *r, uint64_t key)
{
    if (r->index == NULL)
        return false;
    for (uint32_t i = index_slot(key, r->index_mask);; i = (i + 1) & r->index_mask) {
        if (r->index[i] == key)
            return true;
        if (r->index[i] == 0)
            return false;
    }
}

static void index_put(settled_ring_t *r, uint64_t key)
{
    uint32_t i = index_slot(key, r->index_mask);
    while (r->index[i] != 0 && r->index[i] != key)
        i = (i + 1) & r->index_mask;
    r->index[i] = key;
}

static void index_del(settled_ring_t *r, uint64_t key)
{
    uint32_t i = index_slot(key, r->index_mask);
    while (r->index[i] != key) {
        if (r->index[i] == 0)
            return;
        i = (i + 1) & r->index_mask;
    }
    /* Backward-shift: move later members of the probe run into the hole. */
    uint32_t hole = i;
    for (uint32_t j = (i + 1) & r->index_mask; r->index[j] != 0; j = (j + 1) & r->index_mask) {
        uint32_t home = index_slot(r->index[j], r->index_mask);
        bool movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
        if (movable) {
            r->index[hole] = r->index[j];
            hole = j;
        }
    }
    r->index[hole] = 0;
}

static void ring_free(settled_ring_t *r)
{
    free(r->keys);
    free(r->times);
    free(r->index);
    memset(r, 0, sizeof(*r));
}

static int ring_grow(settled_ring_t *r, uint32_t max)
{
    uint32_t ncap = r->cap ? r->cap * 2 : 16;
    if (ncap > max)
        ncap = max;
    uint32_t nslots = 16;
    while (nslots < 2 * ncap)
        nslots <<= 1;
    uint64_t *keys = malloc(sizeof(uint64_t) * ncap), *times = malloc(sizeof(uint64_t) * ncap);
    uint64_t *index = calloc(nslots, sizeof(uint64_t));
    if (!keys || !times || !index) {
        free(keys);
        free(times);
        free(index);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < r->count; i++) {
        keys[i] = r->keys[(r->start + i) % r->cap];
        times[i] = r->times[(r->start + i) % r->cap];
    }
    free(r->keys);
    free(r->times);
    free(r->index);
    r->keys = keys;
    r->times = times;
    r->index = index;
    r->index_mask = nslots - 1;
    r->cap = ncap;
    r->start = 0;
    for (uint32_t i = 0; i < r->count; i++)
        index_put(r, r->keys[i]);
    return 0;
}

static void ring_add(settled_ring_t *r, uint64_t key, uint64_t now, uint32_t max)
{
    if (r->count == r->cap && (r->cap >= max || ring_grow(r, max) != 0)) {
        if (r->cap == 0)
            return;                         /* no memory at all: idempotency degrades to the in-flight tables */
        index_del(r, r->keys[r->start]);
        r->start = (r->start + 1) % r->cap; /* forget the oldest */
        r->count--;
    }
    uint32_t at = (r->start + r->count) % r->cap;
    r->keys[at] = key;
    r->times[at] = now;
    r->count++;
    index_put(r, key);
}

static void ring_age(settled_ring_t *r, uint64_t now, uint64_t max_age)
{
    while (r->count > 0 && r->times[r->start] + max_age < now) {
        index_del(r, r->keys[r->start]);
        r->start = (r->start + 1) % r->cap;
        r->count--;
    }
    if (r->count == 0 && r->cap > 0)
        ring_free(r);
}

/* ---------------------------------------------------------------- in-flight table */

typedef struct inflight {
    uint64_t key; /* 0 = empty slot */
    quota_usage_t worst, usage;
    int64_t split_in, split_out; /* lessee side: quota_settle_entry_t.input/output_tokens */
    uint64_t window_id;
    uint32_t epoch; /* lessee side: the epoch whose allowance it was admitted from */
    bool dirty;     /* lessee side: to report */
    bool final;
} inflight_t;

typedef struct inflight_table {
    inflight_t *slots;
    uint32_t cap, count; /* cap: power of two */
} inflight_table_t;

static inflight_t *tab_find(const inflight_table_t *t, uint64_t key)
{
    if (t->cap == 0)
        return NULL;
    uint32_t mask = t->cap - 1;
    for (uint32_t i = (uint32_t)key & mask;; i = (i + 1) & mask) {
        if (t->slots[i].key == key)
            return &t->slots[i];
        if (t->slots[i].key == 0)
            return NULL;
    }
}

static void tab_put(inflight_table_t *t, const inflight_t *e)
{
    uint32_t mask = t->cap - 1;
    uint32_t i = (uint32_t)e->key & mask;
    while (t->slots[i].key != 0)
        i = (i + 1) & mask;
    t->slots[i] = *e;
    t->count++;
}

/* New zeroed entry for key, or NULL when at max or out of memory. */
static inflight_t *tab_insert(inflight_table_t *t, uint64_t key, uint32_t max)
{
    if (t->count >= max)
        return NULL;
    if ((t->count + 1) * 2 > t->cap) {
        uint32_t ncap = t->cap ? t->cap * 2 : 16;
        inflight_t *old = t->slots;
        uint32_t ocap = t->cap;
        t->slots = calloc(ncap, sizeof(inflight_t));
        if (!t->slots) {
            t->slots = old;
            return NULL;
        }
        t->cap = ncap;
        t->count = 0;
        for (uint32_t i = 0; i < ocap; i++)
            if (old[i].key)
                tab_put(t, &old[i]);
        free(old);
    }
    inflight_t e = {.key = key};
    tab_put(t, &e);
    return tab_find(t, key);
}

static void tab_remove(inflight_table_t *t, inflight_t *e)
{
    uint32_t mask = t->cap - 1;
    uint32_t hole = (uint32_t)(e - t->slots);
    for (uint32_t j = (hole + 1) & mask; t->slots[j].key != 0; j = (j + 1) & mask) {
        uint32_t home = (uint32_t)t->slots[j].key & mask;
        /* move j into the hole unless its home lies cyclically in (hole, j] */
        bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            t->slots[hole] = t->slots[j];
            hole = j;
        }
    }
    memset(&t->slots[hole], 0, sizeof(inflight_t));
    t->count--;
}

static void tab_free(inflight_table_t *t)
{
    free(t->slots);
    memset(t, 0, sizeof(*t));
}

/* Lessee side: the keys of the dirty entries, oldest change first, each key once (an entry
 * is queued when it turns dirty and leaves the queue when reported). Keys rather than slots
 * or pointers: entries move in the table on removal and growth. Each key once, so the queue
 * never holds more than the table's entries; the lessee grows it before an insert, so a
 * push cannot fail. */
typedef struct key_queue {
    uint64_t *keys;
    uint32_t cap, head, count; /* cap: power of two */
} key_queue_t;

static int kq_reserve(key_queue_t *q, uint32_t need)
{
    if (need <= q->cap)
        return 0;
    uint32_t ncap = q->cap ? q->cap : 16;
    while (ncap < need)
        ncap *= 2;
    uint64_t *keys = malloc(sizeof(uint64_t) * ncap);
    if (!keys)
        return -ENOMEM;
    for (uint32_t i = 0; i < q->count; i++)
        keys[i] = q->keys[(q->head + i) & (q->cap - 1)];
    free(q->keys);
    q->keys = keys;
    q->cap = ncap;
    q->head = 0;
    return 0;
}

static void kq_push(key_queue_t *q, uint64_t key)
{
    assert(q->count < q->cap);
    q->keys[(q->head + q->count) & (q->cap - 1)] = key;
    q->count++;
}

static uint64_t kq_pop(key_queue_t *q)
{
    assert(q->count > 0);
    uint64_t key = q->keys[q->head];
    q->head = (q->head + 1) & (q->cap - 1);
    q->count--;
    return key;
}

static void kq_free(key_queue_t *q)
{
    free(q->keys);
    memset(q, 0, sizeof(*q));
}

/* ---------------------------------------------------------------- owner */

typedef struct lessee_rec {
    uint32_t id;
    uint32_t epoch;
    quota_usage_t held;
    uint64_t deadline_ms; /* latest grant + ttl + margin */
    uint64_t last_heard_ms;
    uint64_t last_ask_ms;
    bool asked;
    bool recall;
    inflight_table_t inflight; /* reported in flight, with last reported usage */
} lessee_rec_t;

struct quota_owner {
    quota_config_t cfg;
    quota_limits_t limits;
    quota_usage_t spent;
    int64_t spent_requests;
    quota_usage_t reserved; /* direct reservations */
    quota_usage_t held;     /* sum of recs[i].held */
    rate_window_t req_win, tok_win;
    inflight_table_t direct;
    lessee_rec_t *recs;
    uint32_t n_recs, cap_recs;
    uint32_t next_epoch;
    settled_ring_t settled;
    uint64_t dup_settles, unreserved_settles, late_finals, overruns, vanished;
    quota_usage_t hold;  /* quota_owner_hold: allowance a previous owner may still have out */
    uint64_t hold_until;
};

quota_owner_t *quota_owner_new(const quota_config_t *cfg, const quota_limits_t *limits,
                               const quota_usage_t *spent_so_far, int64_t spent_requests, uint64_t now_ms)
{
    quota_owner_t *o = calloc(1, sizeof(*o));
    if (!o)
        return NULL;
    config_fix(&o->cfg, cfg);
    if (limits)
        o->limits = *limits;
    if (spent_so_far)
        o->spent = *spent_so_far;
    o->spent_requests = spent_requests;
    o->req_win.id = o->tok_win.id = now_ms / WIN;
    o->next_epoch = 1;
    return o;
}

void quota_owner_free(quota_owner_t *o)
{
    if (!o)
        return;
    for (uint32_t i = 0; i < o->n_recs; i++)
        tab_free(&o->recs[i].inflight);
    free(o->recs);
    tab_free(&o->direct);
    ring_free(&o->settled);
    free(o);
}

static int64_t committed(const quota_owner_t *o, int d)
{
    return ud(o->spent, d) + ud(o->reserved, d) + ud(o->held, d) + ud(o->hold, d);
}

static void recall_all(quota_owner_t *o, const lessee_rec_t *except)
{
    for (uint32_t i = 0; i < o->n_recs; i++)
        if (&o->recs[i] != except && (o->recs[i].held.tokens > 0 || o->recs[i].held.nanousd > 0))
            o->recs[i].recall = true;
}

void quota_owner_set_limits(quota_owner_t *o, uint64_t now_ms, const quota_limits_t *limits)
{
    (void)now_ms;
    o->limits = *limits;
    for (int d = 0; d < 2; d++)
        if (budget_has(limits, d) && committed(o, d) > budget_of(limits, d))
            recall_all(o, NULL);
}

static void roll(quota_owner_t *o, uint64_t now)
{
    win_roll(&o->req_win, now);
    win_roll(&o->tok_win, now);
}

static void headers(quota_owner_t *o, uint64_t now, quota_decision_t *d)
{
    const quota_limits_t *lim = &o->limits;
    d->limit_requests = lim->rpm > 0 ? lim->rpm : -1;
    d->remaining_requests = lim->rpm > 0 ? i64_max(0, lim->rpm - win_estimate(&o->req_win, now)) : -1;
    d->reset_requests_ms = lim->rpm > 0 ? win_reset(&o->req_win, now) : 0;
    d->limit_tokens = lim->tpm > 0 ? lim->tpm : -1;
    d->remaining_tokens = lim->tpm > 0 ? i64_max(0, lim->tpm - win_estimate(&o->tok_win, now)) : -1;
    d->reset_tokens_ms = lim->tpm > 0 ? win_reset(&o->tok_win, now) : 0;
}

quota_decision_t quota_owner_peek(quota_owner_t *o, uint64_t now_ms)
{
    quota_decision_t d = {.kind = QUOTA_ADMIT};
    roll(o, now_ms);
    headers(o, now_ms, &d);
    return d;
}

/* Bills a final: spent, request count, tpm correction. worst NULL: nothing was reserved. */
static void bill(quota_owner_t *o, quota_usage_t actual, const quota_usage_t *worst, uint64_t window_id)
{
    o->spent.tokens += actual.tokens;
    o->spent.nanousd += actual.nanousd;
    o->spent_requests++;
    if (worst) {
        if (actual.tokens > worst->tokens || actual.nanousd > worst->nanousd)
            o->overruns++;
        /* a negative correction (overrun) adds the excess to the window */
        int64_t back = worst->tokens - actual.tokens;
        if (back >= 0)
            win_take_back(&o->tok_win, window_id, back);
        else if (window_id == o->tok_win.id)
            o->tok_win.cur -= back;
    } else {
        o->tok_win.cur += actual.tokens;
    }
}

/* The checks shared by direct admission and grants, for one request of size worst.
 * Returns QUOTA_ADMIT or the refusal (kind, reason, retry). */
static quota_verdict_t admission_check(quota_owner_t *o, uint64_t now, quota_usage_t worst, int64_t extra_committed[2],
                                       quota_reason_t *reason, uint64_t *retry)
{
    const quota_limits_t *lim = &o->limits;
    *retry = 0;
    for (int d = 0; d < 2; d++)
        if (budget_has(lim, d) && ud(o->spent, d) + ud(worst, d) > budget_of(lim, d)) {
            *reason = QUOTA_REASON_BUDGET;
            return QUOTA_BUDGET_EXHAUSTED;
        }
    if (lim->tpm > 0 && worst.tokens > lim->tpm) {
        *reason = QUOTA_REASON_TOO_LARGE;
        *retry = WIN;
        return QUOTA_RATE_LIMITED;
    }
    if (lim->rpm > 0 && win_estimate(&o->req_win, now) + 1 > lim->rpm) {
        *reason = QUOTA_REASON_REQUESTS;
        *retry = win_wait(&o->req_win, now, 1, lim->rpm);
        return QUOTA_RATE_LIMITED;
    }
    if (lim->tpm > 0 && win_estimate(&o->tok_win, now) + worst.tokens > lim->tpm) {
        *reason = QUOTA_REASON_TOKENS;
        *retry = win_wait(&o->tok_win, now, worst.tokens, lim->tpm);
        return QUOTA_RATE_LIMITED;
    }
    for (int d = 0; d < 2; d++)
        if (budget_has(lim, d) && committed(o, d) + extra_committed[d] + ud(worst, d) > budget_of(lim, d)) {
            *reason = QUOTA_REASON_RESERVED;
            *retry = RESERVED_RETRY_MS;
            return QUOTA_RATE_LIMITED;
        }
    *reason = QUOTA_REASON_NONE;
    return QUOTA_ADMIT;
}

quota_decision_t quota_owner_reserve(quota_owner_t *o, uint64_t now_ms, const char *request_id, quota_usage_t worst)
{
    quota_decision_t d = {.kind = QUOTA_ADMIT};
    roll(o, now_ms);
    uint64_t key = quota_request_key(request_id);
    worst.tokens = i64_max(worst.tokens, 0);
    worst.nanousd = i64_max(worst.nanousd, 0);
    if (tab_find(&o->direct, key)) { /* same id reserved twice: idempotent */
        headers(o, now_ms, &d);
        return d;
    }
    int64_t none[2] = {0, 0};
    d.kind = admission_check(o, now_ms, worst, none, &d.reason, &d.retry_after_ms);
    if (d.kind == QUOTA_ADMIT) {
        inflight_t *e = tab_insert(&o->direct, key, o->cfg.max_inflight);
        if (!e) {
            d.kind = QUOTA_RATE_LIMITED;
            d.reason = QUOTA_REASON_BUSY;
            d.retry_after_ms = RESERVED_RETRY_MS;
        } else {
            e->worst = worst;
            e->window_id = o->tok_win.id;
            o->reserved.tokens += worst.tokens;
            o->reserved.nanousd += worst.nanousd;
            o->req_win.cur += 1;
            o->tok_win.cur += worst.tokens;
        }
    } else if (d.reason == QUOTA_REASON_RESERVED) {
        recall_all(o, NULL);
    }
    headers(o, now_ms, &d);
    return d;
}

int quota_owner_settle(quota_owner_t *o, uint64_t now_ms, const char *request_id, quota_usage_t actual, bool final)
{
    roll(o, now_ms);
    uint64_t key = quota_request_key(request_id);
    inflight_t *e = tab_find(&o->direct, key);
    if (!final) {
        if (!e)
            return ring_has(&o->settled, key) ? 1 : -ENOENT;
        e->usage = actual;
        return 0;
    }
    if (e) {
        quota_usage_t worst = e->worst;
        uint64_t window_id = e->window_id;
        o->reserved.tokens -= worst.tokens;
        o->reserved.nanousd -= worst.nanousd;
        tab_remove(&o->direct, e);
        bill(o, actual, &worst, window_id);
    } else if (ring_has(&o->settled, key)) {
        o->dup_settles++;
        return 1;
    } else {
        o->unreserved_settles++;
        bill(o, actual, NULL, 0);
    }
    ring_add(&o->settled, key, now_ms, o->cfg.settled_ring);
    return 0;
}

static lessee_rec_t *rec_find(quota_owner_t *o, uint32_t id)
{
    for (uint32_t i = 0; i < o->n_recs; i++)
        if (o->recs[i].id == id)
            return &o->recs[i];
    return NULL;
}

static lessee_rec_t *rec_get(quota_owner_t *o, uint32_t id)
{
    lessee_rec_t *r = rec_find(o, id);
    if (r)
        return r;
    if (o->n_recs >= QUOTA_MAX_LESSEES)
        return NULL;
    if (o->n_recs == o->cap_recs) {
        uint32_t ncap = o->cap_recs ? o->cap_recs * 2 : 4;
        lessee_rec_t *recs = realloc(o->recs, sizeof(lessee_rec_t) * ncap);
        if (!recs)
            return NULL;
        o->recs = recs;
        o->cap_recs = ncap;
    }
    r = &o->recs[o->n_recs++];
    memset(r, 0, sizeof(*r));
    r->id = id;
    r->epoch = o->next_epoch++;
    return r;
}

static void rec_drop_held(quota_owner_t *o, lessee_rec_t *r, int d, int64_t amount)
{
    int64_t take = i64_min(i64_max(amount, 0), ud(r->held, d));
    if (take < amount && budget_has(&o->limits, d))
        o->overruns++; /* reported more than it held: billed anyway */
    ud_add(&r->held, d, -take);
    ud_add(&o->held, d, -take);
}

/* The lessee is gone: bill its reported in-flight requests at their last usage, take back
 * everything it held, and start a new epoch so its old messages cannot give anything back. */
static void rec_vanish(quota_owner_t *o, lessee_rec_t *r, uint64_t now)
{
    for (uint32_t i = 0; i < r->inflight.cap; i++) {
        inflight_t *e = &r->inflight.slots[i];
        if (e->key == 0)
            continue;
        bill(o, e->usage, &e->worst, e->window_id);
        ring_add(&o->settled, e->key, now, o->cfg.settled_ring);
    }
    tab_free(&r->inflight);
    o->held.tokens -= r->held.tokens;
    o->held.nanousd -= r->held.nanousd;
    r->held = (quota_usage_t){0, 0};
    r->epoch = o->next_epoch++;
    r->deadline_ms = 0;
    r->recall = false;
    o->vanished++;
}

void quota_owner_lessee_gone(quota_owner_t *o, uint64_t now_ms, uint32_t lessee_id)
{
    roll(o, now_ms);
    lessee_rec_t *r = rec_find(o, lessee_id);
    if (r)
        rec_vanish(o, r, now_ms);
}

static int64_t grant_size(int64_t free, int64_t pending, int64_t forecast, int64_t share)
{
    int64_t g = i64_max(pending, i64_min(pending + forecast, share));
    return i64_max(0, i64_min(free, g));
}

static void grant(quota_owner_t *o, lessee_rec_t *r, uint64_t now, const quota_ask_t *ask, quota_lease_t *ans)
{
    const quota_limits_t *lim = &o->limits;
    uint64_t ttl = o->cfg.lease_ttl_ms;
    int64_t n = 1;
    for (uint32_t i = 0; i < o->n_recs; i++) {
        const lessee_rec_t *x = &o->recs[i];
        if (x != r && (x->held.tokens > 0 || x->held.nanousd > 0 || (x->asked && now - x->last_ask_ms < ttl)))
            n++;
    }
    r->asked = true;
    r->last_ask_ms = now;

    quota_usage_t g = {0, 0};
    int64_t g_req = 0, g_tok = 0;
    quota_verdict_t deny = QUOTA_ADMIT;
    quota_reason_t reason = QUOTA_REASON_NONE;
    uint64_t retry = 0;
    bool pending = ask->pending_requests > 0;

    if (pending) {
        /* can the largest waiting request fit once everything this lessee held is back? */
        int64_t none[2] = {0, 0};
        deny = admission_check(o, now, ask->max_worst, none, &reason, &retry);
    }
    if (deny == QUOTA_ADMIT && r->inflight.count >= o->cfg.max_inflight) {
        deny = QUOTA_RATE_LIMITED;
        reason = QUOTA_REASON_BUSY;
        retry = RESERVED_RETRY_MS;
    }
    if (deny == QUOTA_ADMIT) {
        for (int d = 0; d < 2; d++) {
            if (!budget_has(lim, d))
                continue;
            int64_t free = i64_max(0, budget_of(lim, d) - committed(o, d));
            int64_t v = grant_size(free, ud(ask->pending, d), ud(ask->forecast, d), free / n);
            ud_add(&g, d, v);
        }
        if (lim->rpm > 0) {
            int64_t room = i64_max(0, lim->rpm - win_estimate(&o->req_win, now));
            int64_t share = (int64_t)(((uint64_t)lim->rpm * ttl + WIN - 1) / WIN);
            share = i64_max(1, (share + n - 1) / n);
            g_req = grant_size(room, ask->pending_requests, ask->forecast_requests, share);
        }
        if (lim->tpm > 0) {
            int64_t room = i64_max(0, lim->tpm - win_estimate(&o->tok_win, now));
            int64_t share = (int64_t)(((uint64_t)lim->tpm * ttl + WIN - 1) / WIN);
            share = i64_max(ask->max_worst.tokens, (share + n - 1) / n);
            g_tok = grant_size(room, ask->pending.tokens, ask->forecast_rate_tokens, share);
        }
    }
    if (deny != QUOTA_ADMIT) {
        g = (quota_usage_t){0, 0};
        g_req = g_tok = 0;
        if (reason == QUOTA_REASON_RESERVED)
            recall_all(o, r);
    }

    r->held.tokens += g.tokens;
    r->held.nanousd += g.nanousd;
    o->held.tokens += g.tokens;
    o->held.nanousd += g.nanousd;
    o->req_win.cur += g_req;
    o->tok_win.cur += g_tok;
    /* every answered ask renews the lease (the lessee renews from its ask time, earlier) */
    r->deadline_ms = now + ttl + o->cfg.clock_margin_ms;

    ans->epoch = r->epoch;
    ans->ask_seq = ask->seq;
    ans->ttl_ms = (uint32_t)ttl;
    ans->limits = *lim;
    ans->budget = g;
    ans->rate_requests = g_req;
    ans->rate_tokens = g_tok;
    ans->window_id = o->tok_win.id;
    ans->deny_kind = deny;
    ans->deny_reason = reason;
    ans->deny_retry_after_ms = retry;
    ans->deny_threshold = deny != QUOTA_ADMIT ? ask->max_worst : (quota_usage_t){0, 0};
}

int quota_owner_apply_report(quota_owner_t *o, uint64_t now_ms, uint32_t lessee_id, const quota_report_t *rep,
                             quota_lease_t *ans)
{
    roll(o, now_ms);
    memset(ans, 0, sizeof(*ans));
    lessee_rec_t *r = rec_get(o, lessee_id);
    if (r && rep->epoch == 0 && (r->held.tokens > 0 || r->held.nanousd > 0 || r->inflight.count > 0))
        rec_vanish(o, r, now_ms); /* a restarted lessee (no epoch yet): its former self is gone */
    bool stale = !r || rep->epoch != r->epoch;
    uint32_t late = 0;
    if (r)
        r->last_heard_ms = now_ms;
    uint32_t n = rep->n_entries < QUOTA_REPORT_MAX ? rep->n_entries : QUOTA_REPORT_MAX;
    for (uint32_t i = 0; i < n; i++) {
        const quota_settle_entry_t *s = &rep->entries[i];
        if (s->request_key == 0)
            continue;
        if (ring_has(&o->settled, s->request_key)) {
            if (s->final) {
                if (stale) {
                    late++;
                    o->late_finals++;
                } else {
                    o->dup_settles++;
                }
            }
            continue;
        }
        if (stale) {
            /* admitted from allowance the owner has taken back: bill the truth, reserve nothing */
            if (s->final) {
                o->unreserved_settles++;
                bill(o, s->usage, NULL, 0);
                /* spent from a previous owner's allowance: no longer held back on its behalf */
                o->hold.tokens -= i64_min(o->hold.tokens, i64_max(0, s->usage.tokens));
                o->hold.nanousd -= i64_min(o->hold.nanousd, i64_max(0, s->usage.nanousd));
                ring_add(&o->settled, s->request_key, now_ms, o->cfg.settled_ring);
            }
            continue;
        }
        inflight_t *e = tab_find(&r->inflight, s->request_key);
        if (!s->final) {
            if (!e)
                e = tab_insert(&r->inflight, s->request_key, o->cfg.max_inflight);
            if (e) { /* table full: the request stays covered by held, billed at its final */
                e->worst = s->worst;
                e->usage = s->usage;
                e->window_id = s->window_id;
            }
            continue;
        }
        if (e)
            tab_remove(&r->inflight, e);
        rec_drop_held(o, r, 0, s->usage.tokens);
        rec_drop_held(o, r, 1, s->usage.nanousd);
        bill(o, s->usage, &s->worst, s->window_id);
        ring_add(&o->settled, s->request_key, now_ms, o->cfg.settled_ring);
    }
    if (!stale) {
        rec_drop_held(o, r, 0, rep->returned.tokens);
        rec_drop_held(o, r, 1, rep->returned.nanousd);
        if (rep->returned_requests > 0)
            win_take_back(&o->req_win, rep->returned_window_id, rep->returned_requests);
        if (rep->returned_rate_tokens > 0)
            win_take_back(&o->tok_win, rep->returned_window_id, rep->returned_rate_tokens);
        if (rep->returned.tokens > 0 || rep->returned.nanousd > 0)
            r->recall = false;
    }
    if (!rep->ask.has_ask && !stale)
        return 0;
    if (!r) {
        ans->deny_kind = rep->ask.has_ask ? QUOTA_RATE_LIMITED : QUOTA_ADMIT;
        ans->deny_reason = rep->ask.has_ask ? QUOTA_REASON_BUSY : QUOTA_REASON_NONE;
        ans->deny_retry_after_ms = RESERVED_RETRY_MS;
        ans->deny_threshold = rep->ask.max_worst;
        ans->ask_seq = rep->ask.seq;
        ans->epoch = rep->epoch;
        ans->limits = o->limits;
        ans->ttl_ms = o->cfg.lease_ttl_ms;
        ans->window_id = o->tok_win.id;
    } else {
        ans->reset = stale;
        if (rep->ask.has_ask) {
            grant(o, r, now_ms, &rep->ask, ans);
        } else {
            ans->epoch = r->epoch;
            ans->limits = o->limits;
            ans->ttl_ms = o->cfg.lease_ttl_ms;
            ans->window_id = o->tok_win.id;
        }
    }
    ans->late_finals = late;
    quota_decision_t h = {0};
    headers(o, now_ms, &h);
    ans->remaining_requests = h.remaining_requests;
    ans->remaining_tokens = h.remaining_tokens;
    ans->reset_requests_ms = h.reset_requests_ms;
    ans->reset_tokens_ms = h.reset_tokens_ms;
    return 1;
}

void quota_owner_tick(quota_owner_t *o, uint64_t now_ms)
{
    roll(o, now_ms);
    if (now_ms >= o->hold_until)
        o->hold = (quota_usage_t){0, 0};
    for (uint32_t i = 0; i < o->n_recs;) {
        lessee_rec_t *r = &o->recs[i];
        bool holds = r->held.tokens > 0 || r->held.nanousd > 0 || r->inflight.count > 0;
        bool silent = now_ms > r->last_heard_ms + o->cfg.liveness_ms;
        if (holds && silent && now_ms > r->deadline_ms) {
            rec_vanish(o, r, now_ms);
            holds = false;
        }
        bool asked_lately = r->asked && now_ms - r->last_ask_ms < o->cfg.liveness_ms;
        if (!holds && silent && !asked_lately) {
            /* idle record: forget it (a returning lessee gets a new epoch, harmless) */
            tab_free(&r->inflight);
            o->recs[i] = o->recs[--o->n_recs];
            continue;
        }
        i++;
    }
    ring_age(&o->settled, now_ms, o->cfg.settled_max_age_ms);
}

size_t quota_owner_take_recalls(quota_owner_t *o, uint32_t *ids, size_t max)
{
    size_t n = 0;
    for (uint32_t i = 0; i < o->n_recs && n < max; i++)
        if (o->recs[i].recall) {
            ids[n++] = o->recs[i].id;
            o->recs[i].recall = false;
        }
    return n;
}

size_t quota_owner_settled_keys(const quota_owner_t *o, uint64_t *out, size_t max)
{
    size_t n = 0;
    for (uint32_t i = 0; i < o->settled.count && n < max; i++)
        out[n++] = o->settled.keys[(o->settled.start + i) % o->settled.cap];
    return n;
}

void quota_owner_mark_settled(quota_owner_t *o, uint64_t now_ms, uint64_t request_key)
{
    if (request_key != 0 && !ring_has(&o->settled, request_key))
        ring_add(&o->settled, request_key, now_ms, o->cfg.settled_ring);
}

bool quota_owner_is_settled(const quota_owner_t *o, uint64_t request_key)
{
    return ring_has(&o->settled, request_key);
}

void quota_owner_hold(quota_owner_t *o, quota_usage_t amount, uint64_t until_ms)
{
    o->hold.tokens = i64_max(0, amount.tokens);
    o->hold.nanousd = i64_max(0, amount.nanousd);
    o->hold_until = until_ms;
}

void quota_owner_add_spent(quota_owner_t *o, quota_usage_t usage, int64_t requests)
{
    o->spent.tokens += usage.tokens;
    o->spent.nanousd += usage.nanousd;
    o->spent_requests += requests;
}

quota_usage_t quota_owner_spent(const quota_owner_t *o)
{
    return o->spent;
}

void quota_owner_stat(const quota_owner_t *o, quota_owner_stat_t *out)
{
    memset(out, 0, sizeof(*out));
    out->limits = o->limits;
    out->spent = o->spent;
    out->spent_requests = o->spent_requests;
    out->reserved = o->reserved;
    out->held = o->held;
    out->inflight = o->direct.count;
    for (uint32_t i = 0; i < o->n_recs; i++)
        out->inflight += o->recs[i].inflight.count;
    out->lessees = o->n_recs;
    out->settled_ids = o->settled.count;
    out->dup_settles = o->dup_settles;
    out->unreserved_settles = o->unreserved_settles;
    out->late_finals = o->late_finals;
    out->overruns = o->overruns;
    out->vanished_lessees = o->vanished;
}

int quota_owner_check(const quota_owner_t *o)
{
    quota_usage_t held = {0, 0}, reserved = {0, 0};
    for (uint32_t i = 0; i < o->n_recs; i++) {
        const lessee_rec_t *r = &o->recs[i];
        if (r->held.tokens < 0 || r->held.nanousd < 0 || r->inflight.count > o->cfg.max_inflight)
            return -EFAULT;
        held.tokens += r->held.tokens;
        held.nanousd += r->held.nanousd;
    }
    for (uint32_t i = 0; i < o->direct.cap; i++)
        if (o->direct.slots[i].key) {
            reserved.tokens += o->direct.slots[i].worst.tokens;
            reserved.nanousd += o->direct.slots[i].worst.nanousd;
        }
    if (held.tokens != o->held.tokens || held.nanousd != o->held.nanousd)
        return -EFAULT;
    if (reserved.tokens != o->reserved.tokens || reserved.nanousd != o->reserved.nanousd)
        return -EFAULT;
    if (o->direct.count > o->cfg.max_inflight || o->n_recs > QUOTA_MAX_LESSEES)
        return -EFAULT;
    if (o->settled.count > o->cfg.settled_ring)
        return -EFAULT;
    /* overruns (actual > worst) are billed truthfully and may overdraw; without them the
     * budget holds exactly */
    if (o->overruns == 0 && o->unreserved_settles == 0)
        for (int d = 0; d < 2; d++)
            if (budget_has(&o->limits, d) && committed(o, d) > budget_of(&o->limits, d))
                return -EFAULT;
    return 0;
}

/* ---------------------------------------------------------------- lessee */

struct quota_lessee {
    quota_config_t cfg;
    uint32_t id;
    uint32_t epoch; /* 0: none adopted yet */
    bool have_limits;
    quota_limits_t limits;
    quota_usage_t free; /* may go negative after an overrun */
    uint64_t deadline_ms;
    int64_t rate_req, rate_tok;
    uint64_t rate_window;
    int64_t ret_req, ret_tok; /* unused rate slice of an older window, to give back */
    uint64_t ret_window;
    inflight_table_t inflight;
    key_queue_t dirty; /* keys of the inflight entries to report */
    /* demand of WAITs since the last ask */
    quota_usage_t pend, pend_max;
    int64_t pend_req;
    /* the outstanding ask and the send times of recent asks */
    bool ask_out;
    uint32_t ask_seq;
    uint64_t ask_sent_ms;
    uint32_t ask_seqs[ASK_RING];
    uint64_t ask_times[ASK_RING];
    /* admissions in the current and previous lease-lifetime buckets */
    uint64_t fc_start;
    quota_usage_t fc_cur, fc_prev;
    int64_t fc_cur_req, fc_prev_req;
    uint64_t last_admit_ms, last_report_ms, last_grant_ms;
    bool recall;
    /* denial from the owner's last answer */
    quota_verdict_t deny_kind;
    quota_reason_t deny_reason;
    uint64_t deny_until;
    quota_usage_t deny_thr;
    /* header values at the last answer */
    int64_t hdr_rem_req, hdr_rem_tok;
    uint64_t hdr_at, hdr_reset_req, hdr_reset_tok;
};

quota_lessee_t *quota_lessee_new(const quota_config_t *cfg, uint32_t lessee_id)
{
    quota_lessee_t *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    config_fix(&l->cfg, cfg);
    l->id = lessee_id;
    return l;
}

void quota_lessee_free(quota_lessee_t *l)
{
    if (!l)
        return;
    tab_free(&l->inflight);
    kq_free(&l->dirty);
    free(l);
}

/* The entry has a change to report: queued unless already waiting (then the report carries
 * its latest state once). */
static void lessee_mark_dirty(quota_lessee_t *l, inflight_t *e)
{
    if (e->dirty)
        return;
    e->dirty = true;
    kq_push(&l->dirty, e->key);
}

uint32_t quota_lessee_id(const quota_lessee_t *l)
{
    return l->id;
}

static void fc_roll(quota_lessee_t *l, uint64_t now)
{
    uint64_t ttl = l->cfg.lease_ttl_ms;
    if (now < l->fc_start + ttl)
        return;
    bool adjacent = now < l->fc_start + 2 * ttl;
    l->fc_prev = adjacent ? l->fc_cur : (quota_usage_t){0, 0};
    l->fc_prev_req = adjacent ? l->fc_cur_req : 0;
    l->fc_cur = (quota_usage_t){0, 0};
    l->fc_cur_req = 0;
    l->fc_start = now - (now % ttl);
}

static void lessee_headers(const quota_lessee_t *l, uint64_t now, quota_decision_t *d)
{
    const quota_limits_t *lim = &l->limits;
    uint64_t since = now > l->hdr_at ? now - l->hdr_at : 0;
    d->limit_requests = lim->rpm > 0 ? lim->rpm : -1;
    d->remaining_requests = lim->rpm > 0 ? i64_max(0, l->hdr_rem_req + i64_max(l->rate_req, 0)) : -1;
    d->reset_requests_ms = lim->rpm > 0 && l->hdr_reset_req > since ? l->hdr_reset_req - since : 0;
    d->limit_tokens = lim->tpm > 0 ? lim->tpm : -1;
    d->remaining_tokens = lim->tpm > 0 ? i64_max(0, l->hdr_rem_tok + i64_max(l->rate_tok, 0)) : -1;
    d->reset_tokens_ms = lim->tpm > 0 && l->hdr_reset_tok > since ? l->hdr_reset_tok - since : 0;
}

static bool lease_fits(const quota_lessee_t *l, uint64_t now, quota_usage_t worst)
{
    if (!l->have_limits || now >= l->deadline_ms)
        return false;
    for (int d = 0; d < 2; d++)
        if (budget_has(&l->limits, d) && ud(l->free, d) < ud(worst, d))
            return false;
    if (l->limits.rpm > 0 && l->rate_req < 1)
        return false;
    if (l->limits.tpm > 0 && l->rate_tok < worst.tokens)
        return false;
    return true;
}

quota_decision_t quota_lessee_reserve(quota_lessee_t *l, uint64_t now_ms, const char *request_id, quota_usage_t worst)
{
    quota_decision_t d = {.kind = QUOTA_ADMIT};
    uint64_t key = quota_request_key(request_id);
    worst.tokens = i64_max(worst.tokens, 0);
    worst.nanousd = i64_max(worst.nanousd, 0);
    fc_roll(l, now_ms);
    if (tab_find(&l->inflight, key)) { /* same id reserved twice: idempotent */
        lessee_headers(l, now_ms, &d);
        return d;
    }
    if (l->inflight.count >= l->cfg.max_inflight) {
        d.kind = QUOTA_RATE_LIMITED;
        d.reason = QUOTA_REASON_BUSY;
        d.retry_after_ms = RESERVED_RETRY_MS;
    } else if (lease_fits(l, now_ms, worst)) {
        /* room in the dirty queue first, for every entry the table may then hold */
        inflight_t *e = kq_reserve(&l->dirty, l->inflight.count + 1) == 0
                            ? tab_insert(&l->inflight, key, l->cfg.max_inflight)
                            : NULL;
        if (!e) {
            d.kind = QUOTA_RATE_LIMITED;
            d.reason = QUOTA_REASON_BUSY;
            d.retry_after_ms = RESERVED_RETRY_MS;
        } else {
            /* both dimensions, budget or not: should a budget appear later, free (negative)
             * still equals the owner's held minus what is in flight */
            l->free.tokens -= worst.tokens;
            l->free.nanousd -= worst.nanousd;
            if (l->limits.rpm > 0)
                l->rate_req -= 1;
            if (l->limits.tpm > 0)
                l->rate_tok -= worst.tokens;
            e->worst = worst;
            e->window_id = l->rate_window;
            e->epoch = l->epoch;
            lessee_mark_dirty(l, e); /* the admission is reported, so the owner can bill it if we vanish */
            l->fc_cur.tokens += worst.tokens;
            l->fc_cur.nanousd += worst.nanousd;
            l->fc_cur_req++;
            l->last_admit_ms = now_ms;
        }
    } else if (l->deny_kind != QUOTA_ADMIT && now_ms < l->deny_until && worst.tokens >= l->deny_thr.tokens &&
               worst.nanousd >= l->deny_thr.nanousd) {
        d.kind = l->deny_kind;
        d.reason = l->deny_reason;
        d.retry_after_ms = l->deny_kind == QUOTA_RATE_LIMITED ? l->deny_until - now_ms : 0;
    } else {
        d.kind = QUOTA_WAIT;
        l->pend.tokens += worst.tokens;
        l->pend.nanousd += worst.nanousd;
        l->pend_max.tokens = i64_max(l->pend_max.tokens, worst.tokens);
        l->pend_max.nanousd = i64_max(l->pend_max.nanousd, worst.nanousd);
        l->pend_req++;
    }
    lessee_headers(l, now_ms, &d);
    return d;
}

int quota_lessee_settle(quota_lessee_t *l, uint64_t now_ms, const char *request_id, quota_usage_t actual, bool final)
{
    return quota_lessee_settle_split(l, now_ms, request_id, actual, final, 0, 0);
}

int quota_lessee_settle_split(quota_lessee_t *l, uint64_t now_ms, const char *request_id, quota_usage_t actual,
                              bool final, int64_t input_tokens, int64_t output_tokens)
{
    (void)now_ms;
    inflight_t *e = tab_find(&l->inflight, quota_request_key(request_id));
    if (!e)
        return -ENOENT;
    if (e->final)
        return 1;
    e->usage = actual;
    e->split_in = input_tokens;
    e->split_out = output_tokens;
    lessee_mark_dirty(l, e);
    if (!final)
        return 0;
    e->final = true;
    if (e->epoch == l->epoch) { /* else the owner has taken that allowance back already */
        l->free.tokens += e->worst.tokens - actual.tokens;
        l->free.nanousd += e->worst.nanousd - actual.nanousd;
    }
    return 0;
}

int quota_lessee_take_report(quota_lessee_t *l, uint64_t now_ms, quota_report_t *out)
{
    /* everything but the entries, then only the entries written: nothing reads past
     * n_entries, and zeroing all QUOTA_REPORT_MAX of them cost more than a busy report */
    size_t tail = offsetof(quota_report_t, entries) + sizeof(out->entries);
    memset(out, 0, offsetof(quota_report_t, entries));
    memset((char *)out + tail, 0, sizeof(*out) - tail);
    out->epoch = l->epoch;
    fc_roll(l, now_ms);

    /* settles: admissions, partials, finals (finals leave the table once reported); what
     * does not fit stays queued, in order, for the next report */
    while (l->dirty.count > 0) {
        if (out->n_entries == QUOTA_REPORT_MAX) {
            out->more = true;
            break;
        }
        inflight_t *e = tab_find(&l->inflight, kq_pop(&l->dirty));
        assert(e != NULL && e->dirty); /* queued = dirty, and dirty entries stay until reported */
        if (e == NULL || !e->dirty)
            continue;
        quota_settle_entry_t *s = &out->entries[out->n_entries++];
        memset(s, 0, sizeof(*s));
        s->request_key = e->key;
        s->worst = e->worst;
        s->usage = e->usage;
        s->window_id = e->window_id;
        s->final = e->final;
        s->input_tokens = e->split_in;
        s->output_tokens = e->split_out;
        e->dirty = false;
        if (e->final)
            tab_remove(&l->inflight, e);
    }

    /* give back free allowance */
    bool expired = now_ms >= l->deadline_ms;
    uint64_t last_use = l->last_admit_ms > l->last_grant_ms ? l->last_admit_ms : l->last_grant_ms;
    bool idle = now_ms - last_use >= l->cfg.idle_return_ms && l->pend_req == 0;
    bool want_ask = l->pend_req > 0 && (!l->ask_out || now_ms - l->ask_sent_ms >= l->cfg.lease_ttl_ms);
    bool give_back = expired || l->recall || idle || want_ask;
    if (give_back) {
        out->returned.tokens = i64_max(0, l->free.tokens);
        out->returned.nanousd = i64_max(0, l->free.nanousd);
        l->free.tokens -= out->returned.tokens;
        l->free.nanousd -= out->returned.nanousd;
        if (l->ret_window != l->rate_window) {
            l->ret_req = l->ret_tok = 0; /* an older window's leftovers no longer matter */
            l->ret_window = l->rate_window;
        }
        l->ret_req += i64_max(0, l->rate_req);
        l->ret_tok += i64_max(0, l->rate_tok);
        l->rate_req = l->rate_tok = 0;
        l->recall = false;
    }
    if (l->ret_req > 0 || l->ret_tok > 0) {
        out->returned_requests = l->ret_req;
        out->returned_rate_tokens = l->ret_tok;
        out->returned_window_id = l->ret_window;
        l->ret_req = l->ret_tok = 0;
    }

    /* ask: for waiting requests, or a prefetch when an active lease runs low */
    quota_usage_t fc = {i64_max(l->fc_cur.tokens, l->fc_prev.tokens), i64_max(l->fc_cur.nanousd, l->fc_prev.nanousd)};
    int64_t fc_req = i64_max(l->fc_cur_req, l->fc_prev_req);
    bool prefetch = false;
    bool ask_lately = l->ask_seq != 0 && now_ms - l->ask_sent_ms < l->cfg.lease_ttl_ms / 4;
    if (!want_ask && !give_back && !l->ask_out && !ask_lately && l->have_limits && fc_req > 0) {
        for (int d = 0; d < 2; d++)
            if (budget_has(&l->limits, d) && ud(l->free, d) * 2 < ud(fc, d))
                prefetch = true;
        if ((l->limits.rpm > 0 && l->rate_req * 2 < fc_req) || (l->limits.tpm > 0 && l->rate_tok * 2 < fc.tokens))
            prefetch = true;
        /* a lease about to expire is renewed by a prefetch too */
        if (l->deadline_ms - now_ms < l->cfg.lease_ttl_ms / 4)
            prefetch = true;
    }
    if (want_ask || prefetch) {
        quota_ask_t *a = &out->ask;
        a->has_ask = true;
        a->seq = ++l->ask_seq;
        a->returned_all = want_ask;
        a->pending = l->pend;
        a->pending_requests = l->pend_req;
        a->max_worst = l->pend_max;
        if (want_ask) { /* everything free went back with this report */
            a->forecast = fc;
            a->forecast_requests = fc_req;
            a->forecast_rate_tokens = fc.tokens;
        } else { /* top up to the forecast */
            a->forecast.tokens = i64_max(0, fc.tokens - l->free.tokens);
            a->forecast.nanousd = i64_max(0, fc.nanousd - l->free.nanousd);
            a->forecast_requests = i64_max(0, fc_req - l->rate_req);
            a->forecast_rate_tokens = i64_max(0, fc.tokens - l->rate_tok);
        }
        l->ask_out = true;
        l->ask_sent_ms = now_ms;
        l->ask_seqs[a->seq % ASK_RING] = a->seq;
        l->ask_times[a->seq % ASK_RING] = now_ms;
        l->pend = l->pend_max = (quota_usage_t){0, 0};
        l->pend_req = 0;
    }

    bool something = out->n_entries > 0 || out->returned.tokens > 0 || out->returned.nanousd > 0 ||
                     out->returned_requests > 0 || out->returned_rate_tokens > 0 || out->ask.has_ask;
    bool holding = l->inflight.count > 0 || l->free.tokens > 0 || l->free.nanousd > 0;
    if (!something && holding && l->epoch != 0 && now_ms - l->last_report_ms >= l->cfg.heartbeat_ms)
        something = true;
    if (something)
        l->last_report_ms = now_ms;
    return something ? 1 : 0;
}

void quota_lessee_apply_grant(quota_lessee_t *l, uint64_t now_ms, const quota_lease_t *lease)
{
    if (lease->reset || lease->epoch != l->epoch) {
        /* a new epoch: whatever we held of the old one the owner has taken back */
        l->epoch = lease->epoch;
        l->free = (quota_usage_t){0, 0};
        l->rate_req = l->rate_tok = l->ret_req = l->ret_tok = 0;
        l->deadline_ms = 0;
    }
    if (lease->ask_seq != 0 && l->ask_seqs[lease->ask_seq % ASK_RING] == lease->ask_seq) {
        /* the lease runs from when we asked: never later than the owner's deadline */
        uint64_t deadline = l->ask_times[lease->ask_seq % ASK_RING] + lease->ttl_ms;
        if (lease->deny_kind == QUOTA_ADMIT && deadline > l->deadline_ms)
            l->deadline_ms = deadline;
    }
    l->free.tokens += lease->budget.tokens;
    l->free.nanousd += lease->budget.nanousd;
    if (lease->window_id != l->rate_window) {
        if (l->ret_window != l->rate_window)
            l->ret_req = l->ret_tok = 0;
        l->ret_window = l->rate_window;
        l->ret_req += i64_max(0, l->rate_req);
        l->ret_tok += i64_max(0, l->rate_tok);
        l->rate_req = l->rate_tok = 0;
        l->rate_window = lease->window_id;
    }
    l->rate_req += lease->rate_requests;
    l->rate_tok += lease->rate_tokens;
    l->limits = lease->limits;
    l->have_limits = true;
    if (lease->ask_seq == l->ask_seq)
        l->ask_out = false;
    l->deny_kind = lease->deny_kind;
    l->deny_reason = lease->deny_reason;
    l->deny_thr = lease->deny_threshold;
    if (lease->deny_kind == QUOTA_RATE_LIMITED)
        l->deny_until = now_ms + (lease->deny_retry_after_ms ? lease->deny_retry_after_ms : RESERVED_RETRY_MS);
    else if (lease->deny_kind == QUOTA_BUDGET_EXHAUSTED)
        l->deny_until = now_ms + lease->ttl_ms; /* then ask again: limits may have changed */
    l->hdr_rem_req = lease->remaining_requests;
    l->hdr_rem_tok = lease->remaining_tokens;
    l->hdr_reset_req = lease->reset_requests_ms;
    l->hdr_reset_tok = lease->reset_tokens_ms;
    l->hdr_at = now_ms;
    l->last_grant_ms = now_ms;
}

void quota_lessee_recall(quota_lessee_t *l)
{
    l->recall = true;
}

void quota_lessee_pending(const quota_lessee_t *l, quota_usage_t *worst_sum, int64_t *requests)
{
    if (worst_sum)
        *worst_sum = l->pend;
    if (requests)
        *requests = l->pend_req;
}

quota_usage_t quota_lessee_free_allowance(const quota_lessee_t *l)
{
    return l->free;
}

uint32_t quota_lessee_inflight(const quota_lessee_t *l)
{
    return l->inflight.count;
}
