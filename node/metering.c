/* metering.c — quota owners on the main thread, lessees on the workers (see metering.h).
 *
 * Both sides keep a small open-addressing table from key id to their state. A worker's
 * entry holds its lessee and the FIFO of requests waiting for allowance; the main thread's
 * entry holds the owner and the usage split shown by `key show`. */
#include "node/metering.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "cluster/etcd.h"
#include "cluster/ring.h"
#include "cluster/swim.h"
#include "node/admin.h"
#include "node/config.h"
#include "node/gossip.h"
#include "node/log.h"
#include "node/peer.h"
#include "node/server.h"

/* ---- a string-keyed table (both sides) ---------------------------------------------- */

typedef struct meter_entry {
    char key_id[METER_KEY_ID_MAX + 1];
    /* worker side */
    quota_lessee_t *lessee;
    meter_waiter_t *wait_head, *wait_tail;
    size_t n_waiting;
    int64_t requests, input_tokens, output_tokens; /* split not yet reported */
    quota_usage_t unreserved;                      /* unmetered usage not yet reported */
    struct meter_entry *next_active;               /* worker: entries with a lessee */
    struct meter_entry *next_soon;                 /* worker: report at the end of this iteration */
    bool soon;
    uint32_t unreported;                           /* worker: settles since the last report */
    quota_decision_t last;                         /* worker: last decision (header values) */
    bool has_last;
    /* main side */
    quota_owner_t *owner;
    int64_t total_requests, total_input, total_output;
    quota_usage_t total_unreserved; /* unmetered usage (the owner never saw it) */
    quota_usage_t ckpt_spent; /* from the checkpoint, before the owner exists */
    int64_t ckpt_requests;
    bool from_ckpt;
    /* main side, cluster: this node as the key's owner */
    quota_usage_t owner_base;     /* spent the owner started from */
    struct ack_item *acks;        /* finals applied here, waiting for the backup's ack */
    size_t n_acks, cap_acks;
    uint64_t repl_version, repl_acked;
    uint64_t repl_sent_ms;
    char repl_backup[64];         /* the backup the unacknowledged versions went to */
    bool repl_dirty;
    bool ckpt_dirty; /* counters changed since the last etcd checkpoint */
    struct meter_entry *next_dirty;
    /* main side, cluster: this node as the key's backup (or the receiver of a handoff) */
    bool has_replica;
    uint64_t replica_version, replica_boot;
    quota_usage_t replica_spent, replica_unreserved;
    quota_usage_t replica_committed; /* reserved + leased out at the owner, as replicated */
    /* main side, cluster: the owner's counters as last asked (KeyQuery), for `key show` */
    uint64_t remote_ms;
    quota_usage_t remote_spent;
    int64_t remote_requests, remote_input, remote_output;
    int64_t replica_requests;
    uint64_t *replica_settled; /* ring of REPLICA_SETTLED_MAX request keys */
    uint32_t replica_settled_n, replica_settled_pos;
} meter_entry_t;

typedef struct ack_item {
    uint64_t request_key;
    uint64_t version; /* replica version that carries it; 0: not sent yet */
    uint32_t lessee;  /* global lessee id: node tag << 9 | worker + 1 */
} ack_item_t;

typedef struct table {
    meter_entry_t **slots;
    size_t cap, count;
} table_t;

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static meter_entry_t *table_get(table_t *t, const char *key_id, bool create)
{
    if (t->cap == 0 || (create && (t->count + 1) * 2 > t->cap)) {
        if (!create && t->cap == 0)
            return NULL;
        size_t ncap = t->cap == 0 ? 64 : t->cap * 2;
        meter_entry_t **ns = calloc(ncap, sizeof(*ns));
        if (ns == NULL)
            return NULL;
        for (size_t i = 0; i < t->cap; i++) {
            if (t->slots[i] == NULL)
                continue;
            size_t j = hash_str(t->slots[i]->key_id) & (ncap - 1);
            while (ns[j] != NULL)
                j = (j + 1) & (ncap - 1);
            ns[j] = t->slots[i];
        }
        free(t->slots);
        t->slots = ns;
        t->cap = ncap;
    }
    size_t j = hash_str(key_id) & (t->cap - 1);
    for (; t->slots[j] != NULL; j = (j + 1) & (t->cap - 1))
        if (strcmp(t->slots[j]->key_id, key_id) == 0)
            return t->slots[j];
    if (!create || strlen(key_id) > METER_KEY_ID_MAX)
        return NULL;
    meter_entry_t *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    snprintf(e->key_id, sizeof(e->key_id), "%s", key_id);
    t->slots[j] = e;
    t->count++;
    return e;
}

static quota_limits_t limits_of(const snapshot_key_t *k)
{
    quota_limits_t l = {
        .has_budget_tokens = k->has_budget_tokens,
        .budget_tokens = k->budget_tokens,
        .has_budget_usd = k->has_budget_usd,
        .budget_nanousd = k->has_budget_usd ? quota_usd_to_nanos(k->budget_usd) : 0,
        .rpm = k->rpm,
        .tpm = k->tpm,
    };
    return l;
}

/* ---- worker side ---------------------------------------------------------------------- */

#define HOLD_BUCKETS 1024u

typedef struct meter_worker {
    table_t table;
    meter_entry_t *active; /* entries with a lessee, for the periodic reports */
    meter_entry_t *soon;   /* entries whose report should leave at the end of this iteration */
    meter_hold_t *holds[HOLD_BUCKETS];
    size_t n_holds;
} meter_worker_t;

int meter_worker_init(worker_t *w)
{
    w->meter = calloc(1, sizeof(meter_worker_t));
    return w->meter != NULL ? 0 : -ENOMEM;
}

/* Sends the lessee's reports (a report holds at most QUOTA_REPORT_MAX settles; a busy key
 * has more every tick) with the usage split for `key show`. A report is never invented: an
 * empty one would read as a restarted lessee at the owner. */
static void send_report(worker_t *w, meter_entry_t *e)
{
    uint64_t now = (uint64_t)clock_now_ms(w->server->clock);
    e->unreported = 0;
    for (int i = 0; i < 256; i++) {
        meter_msg_t *msg = malloc(sizeof(*msg));
        if (msg == NULL)
            return;
        msg->has_report = quota_lessee_take_report(e->lessee, now, &msg->u.report) == 1;
        if (!msg->has_report && e->requests == 0) {
            free(msg);
            return;
        }
        msg->kind = METER_REPORT;
        msg->worker = w->index;
        memcpy(msg->key_id, e->key_id, sizeof(msg->key_id));
        msg->requests = e->requests;
        msg->input_tokens = e->input_tokens;
        msg->output_tokens = e->output_tokens;
        msg->unreserved = e->unreserved;
        e->requests = e->input_tokens = e->output_tokens = 0;
        e->unreserved = (quota_usage_t){0, 0};
        bool more = msg->has_report && msg->u.report.more;
        server_send_to_main(w, msg);
        if (!more)
            return;
    }
}

static meter_entry_t *worker_entry(worker_t *w, const char *key_id)
{
    meter_worker_t *mw = w->meter;
    meter_entry_t *e = table_get(&mw->table, key_id, true);
    if (e != NULL && e->lessee == NULL) {
        quota_config_t qc;
        quota_config_default(&qc);
        qc.max_inflight = QUOTA_MAX_INFLIGHT;
        e->lessee = quota_lessee_new(&qc, (uint32_t)w->index + 1);
        if (e->lessee == NULL)
            return NULL;
        e->next_active = mw->active;
        mw->active = e;
    }
    return e;
}

/* Budget committed to requests in flight or parked in another worker's lease is not spent:
 * such a request waits (the owner recalls idle allowance; in-flight requests settle below
 * their worst case) instead of being refused, until the relay's wait bound. */
static bool held_elsewhere(const quota_decision_t *d)
{
    return d->kind != QUOTA_ADMIT && d->kind != QUOTA_WAIT && d->reason == QUOTA_REASON_RESERVED;
}

quota_decision_t meter_reserve(worker_t *w, const snapshot_key_t *key, const char *request_id, quota_usage_t worst,
                               meter_waiter_t *waiter, meter_wait_cb cb)
{
    quota_decision_t d = {.kind = QUOTA_RATE_LIMITED, .reason = QUOTA_REASON_BUSY, .retry_after_ms = 1000};
    meter_entry_t *e = worker_entry(w, key->id);
    if (e == NULL)
        return d;
    uint64_t now = (uint64_t)clock_now_ms(w->server->clock);
    d = quota_lessee_reserve(e->lessee, now, request_id, worst);
    if (d.kind != QUOTA_WAIT) {
        e->last = d;
        e->has_last = true;
    }
    if (d.kind != QUOTA_WAIT && !held_elsewhere(&d))
        return d;
    bool asked = d.kind == QUOTA_WAIT;
    d.kind = QUOTA_WAIT;
    if (e->n_waiting >= 4096) {
        d.kind = QUOTA_RATE_LIMITED;
        d.reason = QUOTA_REASON_BUSY;
        d.retry_after_ms = 1000;
        return d;
    }
    memset(waiter, 0, sizeof(*waiter));
    snprintf(waiter->request_id, sizeof(waiter->request_id), "%s", request_id);
    waiter->worst = worst;
    waiter->cb = cb;
    waiter->entry = e;
    waiter->prev = e->wait_tail;
    if (e->wait_tail != NULL)
        e->wait_tail->next = waiter;
    else
        e->wait_head = waiter;
    e->wait_tail = waiter;
    e->n_waiting++;
    if (asked)
        send_report(w, e); /* carries the ask */
    return d;
}

static void unlink_waiter(meter_waiter_t *wt)
{
    meter_entry_t *e = wt->entry;
    if (e == NULL)
        return;
    if (wt->prev != NULL)
        wt->prev->next = wt->next;
    else
        e->wait_head = wt->next;
    if (wt->next != NULL)
        wt->next->prev = wt->prev;
    else
        e->wait_tail = wt->prev;
    wt->next = wt->prev = NULL;
    wt->entry = NULL;
    e->n_waiting--;
}

void meter_peek(worker_t *w, const snapshot_key_t *key, quota_decision_t *d)
{
    meter_entry_t *e = table_get(&((meter_worker_t *)w->meter)->table, key->id, false);
    if (e != NULL && e->has_last) {
        *d = e->last;
        d->kind = QUOTA_ADMIT;
        return;
    }
    memset(d, 0, sizeof(*d));
    d->limit_requests = key->rpm > 0 ? key->rpm : -1;
    d->remaining_requests = d->limit_requests;
    d->limit_tokens = key->tpm > 0 ? key->tpm : -1;
    d->remaining_tokens = d->limit_tokens;
}

void meter_cancel_wait(meter_waiter_t *waiter)
{
    unlink_waiter(waiter);
}

void meter_count(worker_t *w, const snapshot_key_t *key, quota_usage_t usage, int64_t input_tokens,
                 int64_t output_tokens)
{
    meter_entry_t *e = worker_entry(w, key->id);
    if (e == NULL)
        return;
    e->requests++;
    e->input_tokens += input_tokens;
    e->output_tokens += output_tokens;
    e->unreserved.tokens += usage.tokens;
    e->unreserved.nanousd += usage.nanousd;
}

bool meter_settle(worker_t *w, const snapshot_key_t *key, const char *request_id, quota_usage_t actual,
                  int64_t input_tokens, int64_t output_tokens, meter_hold_t *hold, meter_hold_cb cb)
{
    meter_entry_t *e = worker_entry(w, key->id);
    if (e == NULL)
        return false;
    uint64_t now = (uint64_t)clock_now_ms(w->server->clock);
    quota_lessee_settle_split(e->lessee, now, request_id, actual, true, input_tokens, output_tokens);
    bool clustered = atomic_load(&w->server->clustered);
    if (!clustered) {
        /* in a cluster the owner counts these from the settles themselves (exactly once) */
        e->requests++;
        e->input_tokens += input_tokens;
        e->output_tokens += output_tokens;
    }
    /* Settled requests stay in the lessee's table until reported: a busy key reports as
     * soon as a report's worth has gathered, not only on the 100 ms tick. */
    if (++e->unreported >= QUOTA_REPORT_MAX)
        send_report(w, e);
    if (hold == NULL || !clustered)
        return false;
    /* Cluster: the final leaves with this iteration's report; the response's end waits for
     * the owner's acknowledgement. */
    meter_worker_t *mw = w->meter;
    if (!e->soon) {
        e->soon = true;
        e->next_soon = mw->soon;
        mw->soon = e;
    }
    hold->request_key = quota_request_key(request_id);
    hold->since_ms = uv_now(&w->loop);
    hold->cb = cb;
    hold->linked = true;
    meter_hold_t **b = &mw->holds[hold->request_key % HOLD_BUCKETS];
    hold->next = *b;
    *b = hold;
    mw->n_holds++;
    return true;
}

void meter_settle_partial(worker_t *w, const snapshot_key_t *key, const char *request_id, quota_usage_t so_far)
{
    meter_entry_t *e = worker_entry(w, key->id);
    if (e != NULL)
        quota_lessee_settle(e->lessee, (uint64_t)clock_now_ms(w->server->clock), request_id, so_far, false);
}

static void hold_unlink(meter_worker_t *mw, meter_hold_t *hold)
{
    if (!hold->linked)
        return;
    for (meter_hold_t **p = &mw->holds[hold->request_key % HOLD_BUCKETS]; *p != NULL; p = &(*p)->next)
        if (*p == hold) {
            *p = hold->next;
            break;
        }
    hold->next = NULL;
    hold->linked = false;
    mw->n_holds--;
}

void meter_hold_cancel(worker_t *w, meter_hold_t *hold)
{
    hold_unlink(w->meter, hold);
}

static void release_holds(worker_t *w, const uint64_t *keys, uint32_t n)
{
    meter_worker_t *mw = w->meter;
    for (uint32_t i = 0; i < n; i++) {
        for (meter_hold_t *h = mw->holds[keys[i] % HOLD_BUCKETS]; h != NULL; h = h->next)
            if (h->request_key == keys[i]) {
                hold_unlink(mw, h);
                h->cb(h, true);
                break;
            }
    }
}

/* Holds past METER_HOLD_MAX_MS end without their acknowledgement. */
static void expire_holds(worker_t *w)
{
    meter_worker_t *mw = w->meter;
    if (mw->n_holds == 0)
        return;
    uint64_t now = uv_now(&w->loop);
    for (uint32_t b = 0; b < HOLD_BUCKETS; b++) {
        meter_hold_t *h = mw->holds[b];
        while (h != NULL) {
            meter_hold_t *next = h->next;
            if (now - h->since_ms >= METER_HOLD_MAX_MS) {
                hold_unlink(mw, h);
                log_warn("quota: a final settle was not acknowledged within %d ms; the response ends anyway",
                         METER_HOLD_MAX_MS);
                h->cb(h, false);
            }
            h = next;
        }
    }
}

void meter_worker_flush(worker_t *w)
{
    meter_worker_t *mw = w->meter;
    while (mw->soon != NULL) {
        meter_entry_t *e = mw->soon;
        mw->soon = e->next_soon;
        e->next_soon = NULL;
        e->soon = false;
        send_report(w, e);
    }
}

/* Retries the waiting requests in order after a grant or a denial. */
static void retry_waiters(worker_t *w, meter_entry_t *e)
{
    uint64_t now = (uint64_t)clock_now_ms(w->server->clock);
    meter_waiter_t *wt = e->wait_head;
    bool asked = false;
    while (wt != NULL) {
        meter_waiter_t *next = wt->next;
        quota_decision_t d = quota_lessee_reserve(e->lessee, now, wt->request_id, wt->worst);
        if (d.kind == QUOTA_WAIT) {
            asked = true;
        } else if (held_elsewhere(&d)) {
            /* stays queued; retried on the next tick */
        } else {
            e->last = d;
            e->has_last = true;
            unlink_waiter(wt);
            wt->cb(wt, &d); /* may start the request or answer 429 */
        }
        wt = next;
    }
    if (asked)
        send_report(w, e);
}

void meter_worker_on_msg(worker_t *w, meter_msg_t *msg)
{
    meter_entry_t *e = worker_entry(w, msg->key_id);
    if (e != NULL) {
        uint64_t now = (uint64_t)clock_now_ms(w->server->clock);
        if (msg->kind == METER_LEASE) {
            quota_lessee_apply_grant(e->lessee, now, &msg->u.lease);
            retry_waiters(w, e);
        } else if (msg->kind == METER_RECALL) {
            quota_lessee_recall(e->lessee);
            send_report(w, e);
        } else if (msg->kind == METER_ACK) {
            release_holds(w, msg->u.acked.keys, msg->u.acked.n < QUOTA_REPORT_MAX ? msg->u.acked.n : QUOTA_REPORT_MAX);
        }
    }
    free(msg);
}

void meter_worker_tick(worker_t *w)
{
    meter_worker_t *mw = w->meter;
    expire_holds(w);
    for (meter_entry_t *e = mw->active; e != NULL; e = e->next_active) {
        if (e->wait_head != NULL)
            retry_waiters(w, e);
        send_report(w, e);
    }
}

/* ---- main side ------------------------------------------------------------------------ */

struct pending_final;
struct tag_name;

struct metering {
    server_t *server;
    const node_clock_t *clock;
    snapshot_t *snap;
    table_t table;
    char *ckpt_path;
    bool dirty;
    /* cluster (NULL peer: a single node) */
    peer_t *peer;
    gossip_t *gossip;
    char *self;
    uint32_t self_tag;
    uint64_t boot; /* this incarnation as an owner (replica versions restart with it) */
    ring_t *ring;
    uint64_t ring_view;
    gossip_peer_t *members;
    size_t n_members;
    bool leaving;
    struct tag_name *tags;
    size_t n_tags, cap_tags;
    struct pending_final **pf;
    struct pending_final *pf_head, *pf_tail;
    size_t n_pf;
    meter_entry_t *dirty_head;
    uv_check_t check;
    bool check_on;
    void (*on_drain)(void *data, const char *by);
    void *on_drain_data;
    metering_cluster_stats_t stats;
    /* etcd checkpoints */
    etcd_client_t *etcd;
    char etcd_prefix[200];
    bool ckpt_busy;
    size_t ckpt_n, ckpt_cursor;
    char ckpt_keys[128][METER_KEY_ID_MAX + 1];
    uint64_t ckpt_last_ms;
    /* `key show` queries to owners */
    struct key_query *queries;
    uint64_t next_query_id;
};

typedef struct key_query {
    struct key_query *next;
    uint64_t id;
    uint64_t deadline_ms;
    char key_id[METER_KEY_ID_MAX + 1];
    void (*done)(void *ctx);
    void *ctx;
} key_query_t;


static void load_checkpoint(metering_t *m)
{
    FILE *f = fopen(m->ckpt_path, "r");
    if (f == NULL)
        return;
    char id[METER_KEY_ID_MAX + 2];
    long long tokens, nanousd, requests, input, output;
    size_t n = 0;
    while (fscanf(f, "%65s %lld %lld %lld %lld %lld", id, &tokens, &nanousd, &requests, &input, &output) == 6) {
        meter_entry_t *e = table_get(&m->table, id, true);
        if (e == NULL)
            break;
        e->ckpt_spent.tokens = tokens;
        e->ckpt_spent.nanousd = nanousd;
        e->ckpt_requests = requests;
        e->total_requests = requests;
        e->total_input = input;
        e->total_output = output;
        e->from_ckpt = true;
        n++;
    }
    fclose(f);
    log_info("quota: %zu keys' spent usage loaded from %s", n, m->ckpt_path);
}

int metering_create(server_t *s, const node_clock_t *clock, const char *data_dir, metering_t **out)
{
    metering_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return -ENOMEM;
    m->server = s;
    m->clock = clock;
    size_t n = strlen(data_dir) + 32;
    m->ckpt_path = malloc(n);
    if (m->ckpt_path == NULL) {
        free(m);
        return -ENOMEM;
    }
    snprintf(m->ckpt_path, n, "%s/quota.ckpt", data_dir);
    load_checkpoint(m);
    *out = m;
    return 0;
}

void metering_set_snapshot(metering_t *m, snapshot_t *snap)
{
    snapshot_retain(snap);
    snapshot_release(m->snap);
    m->snap = snap;
    uint64_t now = (uint64_t)clock_now_ms(m->clock);
    for (size_t i = 0; i < m->table.cap; i++) {
        meter_entry_t *e = m->table.slots[i];
        if (e == NULL || e->owner == NULL)
            continue;
        const snapshot_key_t *k = snapshot_find_key_id(snap, e->key_id);
        if (k != NULL) {
            quota_limits_t l = limits_of(k);
            quota_owner_set_limits(e->owner, now, &l);
        }
    }
}

/* The usage split of `key show` a lessee reported (counted by the key's owner). */
static void add_split(meter_entry_t *e, int64_t requests, int64_t input, int64_t output, quota_usage_t unreserved)
{
    e->total_requests += requests;
    e->total_input += input;
    e->total_output += output;
    e->total_unreserved.tokens += unreserved.tokens;
    e->total_unreserved.nanousd += unreserved.nanousd;
}

static meter_entry_t *owner_entry(metering_t *m, const char *key_id, uint64_t now)
{
    meter_entry_t *e = table_get(&m->table, key_id, true);
    if (e == NULL || e->owner != NULL)
        return e;
    const snapshot_key_t *k = m->snap != NULL ? snapshot_find_key_id(m->snap, key_id) : NULL;
    quota_limits_t l = {0};
    if (k != NULL)
        l = limits_of(k);
    quota_config_t qc;
    quota_config_default(&qc);
    qc.max_inflight = QUOTA_MAX_INFLIGHT;
    if (e->has_replica) {
        /* Taking over from a dead or departed owner: its last replicated state. */
        e->owner = quota_owner_new(&qc, &l, &e->replica_spent, e->replica_requests, now);
        if (e->owner != NULL) {
            for (uint32_t i = 0; i < e->replica_settled_n; i++)
                quota_owner_mark_settled(e->owner, now, e->replica_settled[i]);
            /* the previous owner's lessees may still spend what it leased them */
            quota_owner_hold(e->owner, e->replica_committed, now + qc.liveness_ms);
        }
        e->owner_base = e->replica_spent;
        e->ckpt_dirty = true;
        if (e->owner != NULL)
            log_info("quota: key %s: now owned here, from the replica (version %llu, spent %lld tokens)", e->key_id,
                     (unsigned long long)e->replica_version, (long long)e->replica_spent.tokens);
    } else {
        e->owner = quota_owner_new(&qc, &l, e->from_ckpt ? &e->ckpt_spent : NULL, e->ckpt_requests, now);
        e->owner_base = e->from_ckpt ? e->ckpt_spent : (quota_usage_t){0, 0};
    }
    return e->owner != NULL ? e : NULL;
}

/* ---- cluster ------------------------------------------------------------------------------
 *
 * With gossip on, a key's counters live at its owner (the first member of the key's
 * rendezvous ranking over the alive and suspect members, cluster/ring.h) and are replicated
 * to its backup (the second). Workers keep their lessees; the main thread routes their
 * reports: to the local owner when this node owns the key, else over peer RPC (node/peer.h)
 * to the owner, whose answers (leases, recalls) come back the same way.
 *
 * Lessees are told apart across nodes by a global id: the node's tag (23 bits of a hash of
 * its name) << 9 | worker + 1.
 *
 * Settlement: every final passing through here is kept in `pending finals` until the owner
 * acknowledges it (SettleAck); the owner acknowledges a final once the key's backup holds a
 * replica that includes it (or at once when there is no backup). Unacknowledged finals are
 * retried every RETRY_MS against whoever owns the key then (settles are idempotent by
 * request key: the owner and the replica keep the keys of recent finals). The worker keeps
 * the response's last bytes until the acknowledgement (meter_settle's hold).
 *
 * Ownership changes: when the ring changes, an owner hands the keys it no longer owns to
 * their new owner (KeyHandoff: counters and recent final keys); a backup that becomes
 * owner starts from its replica. A dead member's lessees are expired at once
 * (quota_owner_lessee_gone: its in-flight requests billed at their last report). */

#define RETRY_MS 1000u
#define REPL_RETRY_MS 1000u
#define REPLICA_SETTLED_MAX 4096u
#define PF_BUCKETS 4096u
#define MEMBERS_MAX 1024u

typedef struct pending_final {
    struct pending_final *bnext;        /* hash bucket */
    struct pending_final *lnext, *lprev; /* age list */
    uint64_t request_key;
    char key_id[METER_KEY_ID_MAX + 1];
    int worker;
    uint32_t epoch;
    quota_settle_entry_t entry;
    uint64_t sent_ms;
} pending_final_t;

typedef struct tag_name {
    uint32_t tag;
    char name[64];
} tag_name_t;

static uint32_t node_tag(const char *name)
{
    uint32_t h = 2166136261u;
    for (const char *p = name; *p != '\0'; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    h &= 0x7fffffu;
    return h != 0 ? h : 1;
}

static uint32_t lessee_gid(uint32_t tag, int worker)
{
    return tag << 9 | (uint32_t)(worker + 1);
}

/* The name of a member by tag, learned from the reports it sent. */
static const char *tag_lookup(metering_t *m, uint32_t tag)
{
    for (size_t i = 0; i < m->n_tags; i++)
        if (m->tags[i].tag == tag)
            return m->tags[i].name;
    return NULL;
}

static void tag_learn(metering_t *m, const char *name)
{
    uint32_t tag = node_tag(name);
    const char *known = tag_lookup(m, tag);
    if (known != NULL) {
        if (strcmp(known, name) != 0)
            log_error("quota: members %s and %s have the same lessee tag; rename one", known, name);
        return;
    }
    if (m->n_tags == m->cap_tags) {
        size_t ncap = m->cap_tags ? m->cap_tags * 2 : 16;
        tag_name_t *t = realloc(m->tags, ncap * sizeof(*t));
        if (t == NULL)
            return;
        m->tags = t;
        m->cap_tags = ncap;
    }
    m->tags[m->n_tags].tag = tag;
    snprintf(m->tags[m->n_tags].name, sizeof(m->tags[m->n_tags].name), "%s", name);
    m->n_tags++;
}

static const gossip_peer_t *member_find(metering_t *m, const char *name)
{
    for (size_t i = 0; i < m->n_members; i++)
        if (strcmp(m->members[i].name, name) == 0)
            return &m->members[i];
    return NULL;
}

/* Rebuilds the ring when gossip's view changed. Members count when alive or suspect and
 * reachable for peer RPC. */
static void ring_refresh(metering_t *m);

static int send_to(metering_t *m, const char *name, Llmrelay__PeerMessage *pm)
{
    const gossip_peer_t *p = member_find(m, name);
    if (p == NULL || p->peer_addr[0] == '\0') {
        m->stats.unroutable++;
        return -ENOENT;
    }
    return peer_send(m->peer, name, p->peer_addr, pm);
}

/* The owner (and backup) of a key under the current ring: member names, NULL if none. */
static const char *owner_of(metering_t *m, const char *key_id, const char **backup)
{
    ring_refresh(m);
    if (backup != NULL)
        *backup = NULL;
    if (m->ring == NULL || ring_size(m->ring) == 0)
        return NULL;
    int idx[2];
    size_t n = ring_rank(m->ring, key_id, strlen(key_id), idx, 2);
    if (n == 0)
        return NULL;
    if (backup != NULL && n > 1)
        *backup = ring_member_name(m->ring, (size_t)idx[1]);
    return ring_member_name(m->ring, (size_t)idx[0]);
}

static void usage_to_pb(Llmrelay__PeerUsage *pb, quota_usage_t u)
{
    llmrelay__peer_usage__init(pb);
    pb->tokens = u.tokens;
    pb->nanousd = u.nanousd;
}

static quota_usage_t usage_from_pb(const Llmrelay__PeerUsage *pb)
{
    quota_usage_t u = {0, 0};
    if (pb != NULL) {
        u.tokens = pb->tokens;
        u.nanousd = pb->nanousd;
    }
    return u;
}

/* ---- pending finals (this node as a lessee) ---- */

static void pf_add(metering_t *m, const char *key_id, int worker, uint32_t epoch, const quota_settle_entry_t *se,
                   uint64_t now)
{
    pending_final_t **b = &m->pf[se->request_key % PF_BUCKETS];
    for (pending_final_t *p = *b; p != NULL; p = p->bnext)
        if (p->request_key == se->request_key)
            return; /* already waiting */
    if (m->n_pf >= 1u << 20) {
        m->stats.pf_dropped++;
        return;
    }
    pending_final_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return;
    p->request_key = se->request_key;
    snprintf(p->key_id, sizeof(p->key_id), "%s", key_id);
    p->worker = worker;
    p->epoch = epoch;
    p->entry = *se;
    p->sent_ms = now;
    p->bnext = *b;
    *b = p;
    p->lnext = NULL;
    p->lprev = m->pf_tail;
    if (m->pf_tail != NULL)
        m->pf_tail->lnext = p;
    else
        m->pf_head = p;
    m->pf_tail = p;
    m->n_pf++;
}

/* Removes a pending final (a no-op when it is not pending). */
static void pf_remove(metering_t *m, uint64_t request_key)
{
    for (pending_final_t **b = &m->pf[request_key % PF_BUCKETS]; *b != NULL; b = &(*b)->bnext) {
        pending_final_t *p = *b;
        if (p->request_key != request_key)
            continue;
        *b = p->bnext;
        if (p->lprev != NULL)
            p->lprev->lnext = p->lnext;
        else
            m->pf_head = p->lnext;
        if (p->lnext != NULL)
            p->lnext->lprev = p->lprev;
        else
            m->pf_tail = p->lprev;
        free(p);
        m->n_pf--;
        return;
    }
}

/* These finals are held by owner and backup: they stop being retried, and the local worker
 * is told (its responses may end). */
static void ack_local(metering_t *m, int worker, const char *key_id, const uint64_t *keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        pf_remove(m, keys[i]);
    if (worker < 0 || worker >= m->server->n_workers)
        return;
    for (size_t off = 0; off < n; off += QUOTA_REPORT_MAX) {
        meter_msg_t *msg = calloc(1, sizeof(*msg));
        if (msg == NULL)
            return;
        msg->kind = METER_ACK;
        snprintf(msg->key_id, sizeof(msg->key_id), "%s", key_id);
        size_t k = n - off < QUOTA_REPORT_MAX ? n - off : QUOTA_REPORT_MAX;
        memcpy(msg->u.acked.keys, keys + off, k * sizeof(uint64_t));
        msg->u.acked.n = (uint32_t)k;
        server_send_to_worker(m->server, worker, msg);
    }
}

/* ---- reports: worker -> owner ---- */

static void report_to_pb(const quota_report_t *r, Llmrelay__QuotaReport *pb, Llmrelay__SettleEntry *ents,
                         Llmrelay__SettleEntry **ptrs, Llmrelay__PeerUsage *us, Llmrelay__QuotaAsk *ask)
{
    llmrelay__quota_report__init(pb);
    pb->epoch = r->epoch;
    for (uint32_t i = 0; i < r->n_entries; i++) {
        const quota_settle_entry_t *s = &r->entries[i];
        Llmrelay__SettleEntry *e = &ents[i];
        llmrelay__settle_entry__init(e);
        e->request_key = s->request_key;
        usage_to_pb(&us[2 * i], s->worst);
        usage_to_pb(&us[2 * i + 1], s->usage);
        e->worst = &us[2 * i];
        e->usage = &us[2 * i + 1];
        e->window_id = s->window_id;
        e->final = s->final;
        e->input_tokens = s->input_tokens;
        e->output_tokens = s->output_tokens;
        ptrs[i] = e;
    }
    pb->n_entries = r->n_entries;
    pb->entries = ptrs;
    size_t u = 2 * QUOTA_REPORT_MAX;
    usage_to_pb(&us[u], r->returned);
    pb->returned = &us[u];
    pb->returned_requests = r->returned_requests;
    pb->returned_rate_tokens = r->returned_rate_tokens;
    pb->returned_window_id = r->returned_window_id;
    if (r->ask.has_ask) {
        llmrelay__quota_ask__init(ask);
        ask->seq = r->ask.seq;
        ask->returned_all = r->ask.returned_all;
        usage_to_pb(&us[u + 1], r->ask.pending);
        usage_to_pb(&us[u + 2], r->ask.max_worst);
        usage_to_pb(&us[u + 3], r->ask.forecast);
        ask->pending = &us[u + 1];
        ask->max_worst = &us[u + 2];
        ask->forecast = &us[u + 3];
        ask->pending_requests = r->ask.pending_requests;
        ask->forecast_requests = r->ask.forecast_requests;
        ask->forecast_rate_tokens = r->ask.forecast_rate_tokens;
        pb->ask = ask;
    }
}

static void report_from_pb(const Llmrelay__QuotaReport *pb, quota_report_t *r)
{
    memset(r, 0, sizeof(*r));
    r->epoch = pb->epoch;
    size_t n = pb->n_entries < QUOTA_REPORT_MAX ? pb->n_entries : QUOTA_REPORT_MAX;
    for (size_t i = 0; i < n; i++) {
        const Llmrelay__SettleEntry *e = pb->entries[i];
        r->entries[i].request_key = e->request_key;
        r->entries[i].worst = usage_from_pb(e->worst);
        r->entries[i].usage = usage_from_pb(e->usage);
        r->entries[i].window_id = e->window_id;
        r->entries[i].final = e->final;
        r->entries[i].input_tokens = e->input_tokens;
        r->entries[i].output_tokens = e->output_tokens;
    }
    r->n_entries = (uint32_t)n;
    if (!pb->retry) {
        r->returned = usage_from_pb(pb->returned);
        r->returned_requests = pb->returned_requests;
        r->returned_rate_tokens = pb->returned_rate_tokens;
        r->returned_window_id = pb->returned_window_id;
        if (pb->ask != NULL) {
            r->ask.has_ask = true;
            r->ask.seq = pb->ask->seq;
            r->ask.returned_all = pb->ask->returned_all;
            r->ask.pending = usage_from_pb(pb->ask->pending);
            r->ask.max_worst = usage_from_pb(pb->ask->max_worst);
            r->ask.forecast = usage_from_pb(pb->ask->forecast);
            r->ask.pending_requests = pb->ask->pending_requests;
            r->ask.forecast_requests = pb->ask->forecast_requests;
            r->ask.forecast_rate_tokens = pb->ask->forecast_rate_tokens;
        }
    }
}

static void lease_to_pb(const quota_lease_t *l, Llmrelay__QuotaLease *pb, Llmrelay__PeerKeyLimits *lim,
                        Llmrelay__PeerUsage *us)
{
    llmrelay__quota_lease__init(pb);
    llmrelay__peer_key_limits__init(lim);
    pb->epoch = l->epoch;
    pb->reset = l->reset;
    pb->ask_seq = l->ask_seq;
    pb->ttl_ms = l->ttl_ms;
    lim->has_budget_tokens = l->limits.has_budget_tokens;
    lim->budget_tokens = l->limits.budget_tokens;
    lim->has_budget_nanousd = l->limits.has_budget_usd;
    lim->budget_nanousd = l->limits.budget_nanousd;
    lim->rpm = l->limits.rpm;
    lim->tpm = l->limits.tpm;
    pb->limits = lim;
    usage_to_pb(&us[0], l->budget);
    usage_to_pb(&us[1], l->deny_threshold);
    pb->budget = &us[0];
    pb->deny_threshold = &us[1];
    pb->rate_requests = l->rate_requests;
    pb->rate_tokens = l->rate_tokens;
    pb->window_id = l->window_id;
    pb->deny_kind = (uint32_t)l->deny_kind;
    pb->deny_reason = (uint32_t)l->deny_reason;
    pb->deny_retry_after_ms = l->deny_retry_after_ms;
    pb->remaining_requests = l->remaining_requests;
    pb->remaining_tokens = l->remaining_tokens;
    pb->reset_requests_ms = l->reset_requests_ms;
    pb->reset_tokens_ms = l->reset_tokens_ms;
    pb->late_finals = l->late_finals;
}

static void lease_from_pb(const Llmrelay__QuotaLease *pb, quota_lease_t *l)
{
    memset(l, 0, sizeof(*l));
    l->epoch = pb->epoch;
    l->reset = pb->reset;
    l->ask_seq = pb->ask_seq;
    l->ttl_ms = pb->ttl_ms;
    if (pb->limits != NULL) {
        l->limits.has_budget_tokens = pb->limits->has_budget_tokens;
        l->limits.budget_tokens = pb->limits->budget_tokens;
        l->limits.has_budget_usd = pb->limits->has_budget_nanousd;
        l->limits.budget_nanousd = pb->limits->budget_nanousd;
        l->limits.rpm = pb->limits->rpm;
        l->limits.tpm = pb->limits->tpm;
    }
    l->budget = usage_from_pb(pb->budget);
    l->deny_threshold = usage_from_pb(pb->deny_threshold);
    l->rate_requests = pb->rate_requests;
    l->rate_tokens = pb->rate_tokens;
    l->window_id = pb->window_id;
    l->deny_kind = pb->deny_kind <= QUOTA_BUDGET_EXHAUSTED ? (quota_verdict_t)pb->deny_kind : QUOTA_RATE_LIMITED;
    l->deny_reason = pb->deny_reason <= QUOTA_REASON_BUSY ? (quota_reason_t)pb->deny_reason : QUOTA_REASON_BUSY;
    l->deny_retry_after_ms = pb->deny_retry_after_ms;
    l->remaining_requests = pb->remaining_requests;
    l->remaining_tokens = pb->remaining_tokens;
    l->reset_requests_ms = pb->reset_requests_ms;
    l->reset_tokens_ms = pb->reset_tokens_ms;
    l->late_finals = pb->late_finals;
}

/* Delivers a lease answer or a recall to a lessee (local worker or remote node). */
static void to_lessee(metering_t *m, uint32_t lessee, const char *key_id, int kind, const quota_lease_t *lease)
{
    uint32_t tag = lessee >> 9;
    int worker = (int)(lessee & 0x1ff) - 1;
    if (tag == m->self_tag) {
        if (worker < 0 || worker >= m->server->n_workers)
            return;
        meter_msg_t *msg = calloc(1, sizeof(*msg));
        if (msg == NULL)
            return;
        msg->kind = kind;
        snprintf(msg->key_id, sizeof(msg->key_id), "%s", key_id);
        if (lease != NULL)
            msg->u.lease = *lease;
        server_send_to_worker(m->server, worker, msg);
        return;
    }
    const char *name = tag_lookup(m, tag);
    if (name == NULL)
        return;
    Llmrelay__PeerMessage pm = LLMRELAY__PEER_MESSAGE__INIT;
    pm.key_id = (char *)key_id;
    pm.worker = (uint32_t)worker;
    Llmrelay__QuotaLease pl;
    Llmrelay__PeerKeyLimits lim;
    Llmrelay__PeerUsage us[2];
    Llmrelay__QuotaRecall rc = LLMRELAY__QUOTA_RECALL__INIT;
    if (kind == METER_LEASE) {
        lease_to_pb(lease, &pl, &lim, us);
        pm.body_case = LLMRELAY__PEER_MESSAGE__BODY_LEASE;
        pm.lease = &pl;
    } else {
        pm.body_case = LLMRELAY__PEER_MESSAGE__BODY_RECALL;
        pm.recall = &rc;
    }
    send_to(m, name, &pm);
}

static void mark_repl_dirty(metering_t *m, meter_entry_t *e)
{
    if (e->repl_dirty)
        return;
    e->repl_dirty = true;
    e->next_dirty = m->dirty_head;
    m->dirty_head = e;
}

/* Applies a report at this node as the key's owner. split: the `key show` counts. */
static void owner_apply(metering_t *m, meter_entry_t *e, uint32_t lessee, const quota_report_t *rep, uint64_t now)
{
    quota_lease_t answer;
    memset(&answer, 0, sizeof(answer));
    bool was_settled[QUOTA_REPORT_MAX];
    for (uint32_t i = 0; i < rep->n_entries && i < QUOTA_REPORT_MAX; i++)
        was_settled[i] = rep->entries[i].final && quota_owner_is_settled(e->owner, rep->entries[i].request_key);
    if (quota_owner_apply_report(e->owner, now, lessee, rep, &answer) == 1) {
        to_lessee(m, lessee, e->key_id, METER_LEASE, &answer);
        if (answer.budget.tokens > 0 || answer.budget.nanousd > 0)
            mark_repl_dirty(m, e); /* the backup learns what is leased out (held back on takeover) */
    }
    bool finals = false;
    for (uint32_t i = 0; i < rep->n_entries && i < QUOTA_REPORT_MAX; i++) {
        if (!rep->entries[i].final)
            continue;
        if (!was_settled[i]) { /* billed now, exactly once: the `key show` split */
            e->total_requests++;
            e->total_input += rep->entries[i].input_tokens;
            e->total_output += rep->entries[i].output_tokens;
            m->dirty = true;
            e->ckpt_dirty = true;
        }
        if (e->n_acks == e->cap_acks) {
            size_t ncap = e->cap_acks ? e->cap_acks * 2 : 16;
            ack_item_t *a = realloc(e->acks, ncap * sizeof(*a));
            if (a == NULL)
                break;
            e->acks = a;
            e->cap_acks = ncap;
        }
        e->acks[e->n_acks++] = (ack_item_t){rep->entries[i].request_key, 0, lessee};
        finals = true;
    }
    if (finals)
        mark_repl_dirty(m, e);
    uint32_t ids[QUOTA_MAX_LESSEES];
    size_t n = quota_owner_take_recalls(e->owner, ids, QUOTA_MAX_LESSEES);
    for (size_t i = 0; i < n; i++)
        to_lessee(m, ids[i], e->key_id, METER_RECALL, NULL);
}

/* Sends a report (a worker's, or a retry of pending finals) to the key's owner. */
static void route_report(metering_t *m, const char *key_id, int worker, const quota_report_t *rep, bool retry,
                         const meter_msg_t *split, uint64_t now)
{
    const char *owner = owner_of(m, key_id, NULL);
    if (owner == NULL || strcmp(owner, m->self) == 0) {
        meter_entry_t *e = owner_entry(m, key_id, now);
        if (e == NULL)
            return;
        if (split != NULL) {
            add_split(e, split->requests, split->input_tokens, split->output_tokens, split->unreserved);
            if (split->requests != 0)
                m->dirty = true;
        }
        if (rep != NULL) {
            owner_apply(m, e, lessee_gid(m->self_tag, worker), rep, now);
            if (rep->n_entries != 0)
                m->dirty = true;
        }
        return;
    }
    static Llmrelay__SettleEntry ents[QUOTA_REPORT_MAX];
    static Llmrelay__SettleEntry *ptrs[QUOTA_REPORT_MAX];
    static Llmrelay__PeerUsage us[2 * QUOTA_REPORT_MAX + 4];
    Llmrelay__QuotaReport pb;
    Llmrelay__QuotaAsk ask;
    quota_report_t empty;
    if (rep == NULL) {
        memset(&empty, 0, sizeof(empty));
        rep = &empty;
    }
    report_to_pb(rep, &pb, ents, ptrs, us, &ask);
    pb.retry = retry;
    Llmrelay__PeerUsage unres;
    if (split != NULL) {
        pb.split_requests = split->requests;
        pb.split_input_tokens = split->input_tokens;
        pb.split_output_tokens = split->output_tokens;
        usage_to_pb(&unres, split->unreserved);
        pb.unreserved = &unres;
    }
    Llmrelay__PeerMessage pm = LLMRELAY__PEER_MESSAGE__INIT;
    pm.key_id = (char *)key_id;
    pm.worker = (uint32_t)worker;
    pm.body_case = LLMRELAY__PEER_MESSAGE__BODY_REPORT;
    pm.report = &pb;
    send_to(m, owner, &pm);
}

static void cluster_on_worker_msg(metering_t *m, meter_msg_t *msg)
{
    uint64_t now = (uint64_t)clock_now_ms(m->clock);
    if (msg->has_report) {
        const quota_report_t *r = &msg->u.report;
        for (uint32_t i = 0; i < r->n_entries; i++)
            if (r->entries[i].final)
                pf_add(m, msg->key_id, msg->worker, r->epoch, &r->entries[i], now);
    }
    route_report(m, msg->key_id, msg->worker, msg->has_report ? &msg->u.report : NULL, false, msg, now);
    free(msg);
}

/* Resends the finals not acknowledged within RETRY_MS, to whoever owns their key now. */
static void retry_pending(metering_t *m, uint64_t now)
{
    static quota_report_t rep;
    /* oldest first; the list is reordered as entries are resent (moved to the tail) */
    size_t budget = m->n_pf;
    while (budget > 0 && m->pf_head != NULL && m->pf_head->sent_ms + RETRY_MS <= now) {
        pending_final_t *first = m->pf_head;
        memset(&rep, 0, sizeof(rep));
        rep.epoch = first->epoch;
        char key_id[METER_KEY_ID_MAX + 1];
        memcpy(key_id, first->key_id, sizeof(key_id));
        int worker = first->worker;
        /* gather this key/worker/epoch's overdue finals */
        for (pending_final_t *p = m->pf_head; p != NULL && rep.n_entries < QUOTA_REPORT_MAX && budget > 0;) {
            pending_final_t *next = p->lnext;
            if (p->sent_ms + RETRY_MS > now)
                break;
            if (p->worker == worker && p->epoch == rep.epoch && strcmp(p->key_id, key_id) == 0) {
                rep.entries[rep.n_entries++] = p->entry;
                p->sent_ms = now;
                /* move to the tail */
                if (p != m->pf_tail) {
                    if (p->lprev != NULL)
                        p->lprev->lnext = p->lnext;
                    else
                        m->pf_head = p->lnext;
                    p->lnext->lprev = p->lprev;
                    p->lprev = m->pf_tail;
                    p->lnext = NULL;
                    m->pf_tail->lnext = p;
                    m->pf_tail = p;
                }
                budget--;
            }
            p = next;
        }
        if (rep.n_entries == 0)
            break;
        m->stats.settle_retries += rep.n_entries;
        route_report(m, key_id, worker, &rep, true, NULL, now);
    }
}

/* ---- replication: owner -> backup ---- */

/* The owner's counters of e as a Replica message (no request keys; committed only when
 * asked: replicas and hand-offs carry it, checkpoints do not). Points into *pb. */
typedef struct owner_replica {
    Llmrelay__Replica rp;
    Llmrelay__PeerUsage spent, unres, committed;
} owner_replica_t;

static void owner_replica(const metering_t *m, const meter_entry_t *e, uint64_t version, bool with_committed,
                          owner_replica_t *pb)
{
    quota_owner_stat_t st;
    quota_owner_stat(e->owner, &st);
    llmrelay__replica__init(&pb->rp);
    usage_to_pb(&pb->spent, st.spent);
    usage_to_pb(&pb->unres, e->total_unreserved);
    pb->rp.version = version;
    pb->rp.spent = &pb->spent;
    pb->rp.spent_requests = st.spent_requests;
    pb->rp.total_requests = e->total_requests;
    pb->rp.total_input_tokens = e->total_input;
    pb->rp.total_output_tokens = e->total_output;
    pb->rp.unreserved = &pb->unres;
    pb->rp.owner_boot_id = m->boot;
    if (with_committed) {
        usage_to_pb(&pb->committed, (quota_usage_t){st.reserved.tokens + st.held.tokens,
                                                     st.reserved.nanousd + st.held.nanousd});
        pb->rp.committed = &pb->committed;
    }
}

static void send_replica(metering_t *m, meter_entry_t *e, const char *backup, bool resend_all, uint64_t now)
{
    uint64_t version = ++e->repl_version;
    size_t n = 0;
    for (size_t i = 0; i < e->n_acks; i++)
        if (e->acks[i].version == 0 || resend_all) {
            e->acks[i].version = version;
            n++;
        }
    uint64_t *keys = malloc((n ? n : 1) * sizeof(uint64_t));
    if (keys == NULL)
        return;
    size_t k = 0;
    for (size_t i = 0; i < e->n_acks; i++)
        if (e->acks[i].version == version)
            keys[k++] = e->acks[i].request_key;
    owner_replica_t pb;
    owner_replica(m, e, version, true, &pb);
    pb.rp.n_settled = k;
    pb.rp.settled = keys;
    Llmrelay__PeerMessage pm = LLMRELAY__PEER_MESSAGE__INIT;
    pm.key_id = e->key_id;
    pm.body_case = LLMRELAY__PEER_MESSAGE__BODY_REPLICA;
    pm.replica = &pb.rp;
    send_to(m, backup, &pm);
    free(keys);
    snprintf(e->repl_backup, sizeof(e->repl_backup), "%s", backup);
    e->repl_sent_ms = now;
    m->stats.replicas_sent++;
}

/* Acknowledges the finals of versions <= version to their lessees and forgets them. */
static void ack_up_to(metering_t *m, meter_entry_t *e, uint64_t version, bool all)
{
    size_t keep = 0;
    /* group by lessee: acks go out per (lessee, key) */
    while (true) {
        uint32_t lessee = 0;
        bool found = false;
        for (size_t i = 0; i < e->n_acks; i++)
            if (all || (e->acks[i].version != 0 && e->acks[i].version <= version)) {
                lessee = e->acks[i].lessee;
                found = true;
                break;
            }
        if (!found)
            break;
        uint64_t keys[QUOTA_REPORT_MAX];
        size_t n = 0;
        keep = 0;
        for (size_t i = 0; i < e->n_acks; i++) {
            ack_item_t *a = &e->acks[i];
            bool due = all || (a->version != 0 && a->version <= version);
            if (due && a->lessee == lessee && n < QUOTA_REPORT_MAX)
                keys[n++] = a->request_key;
            else
                e->acks[keep++] = *a;
        }
        e->n_acks = keep;
        uint32_t tag = lessee >> 9;
        int worker = (int)(lessee & 0x1ff) - 1;
        m->stats.settles_acked += n;
        if (tag == m->self_tag) {
            ack_local(m, worker, e->key_id, keys, n);
        } else {
            const char *name = tag_lookup(m, tag);
            if (name == NULL)
                continue;
            Llmrelay__SettleAck sa = LLMRELAY__SETTLE_ACK__INIT;
            sa.n_held = n;
            sa.held = keys;
            Llmrelay__PeerMessage pm = LLMRELAY__PEER_MESSAGE__INIT;
            pm.key_id = e->key_id;
            pm.worker = (uint32_t)worker;
            pm.body_case = LLMRELAY__PEER_MESSAGE__BODY_SETTLE_ACK;
            pm.settle_ack = &sa;
            send_to(m, name, &pm);
        }
    }
}

/* End of a loop iteration (and every tick): replicate what owners settled. */
static void flush_replication(metering_t *m, uint64_t now)
{
    while (m->dirty_head != NULL) {
        meter_entry_t *e = m->dirty_head;
        m->dirty_head = e->next_dirty;
        e->next_dirty = NULL;
        e->repl_dirty = false;
        if (e->owner == NULL)
            continue;
        const char *backup = NULL;
        const char *owner = owner_of(m, e->key_id, &backup);
        (void)owner;
        if (backup == NULL || strcmp(backup, m->self) == 0) {
            ack_up_to(m, e, 0, true); /* no backup: the owner alone holds it */
            continue;
        }
        bool moved = strcmp(backup, e->repl_backup) != 0;
        send_replica(m, e, backup, moved, now);
    }
}

static void on_replica(metering_t *m, const char *sender, const char *key_id, const Llmrelay__Replica *rp,
                       bool handoff)
{
    meter_entry_t *e = table_get(&m->table, key_id, true);
    if (e == NULL)
        return;
    bool newer = rp->owner_boot_id != e->replica_boot || rp->version > e->replica_version || handoff;
    if (newer) {
        e->has_replica = true;
        e->replica_boot = rp->owner_boot_id;
        e->replica_version = rp->version;
        e->replica_spent = usage_from_pb(rp->spent);
        e->replica_committed = usage_from_pb(rp->committed);
        e->replica_requests = rp->spent_requests;
        e->total_requests = rp->total_requests;
        e->total_input = rp->total_input_tokens;
        e->total_output = rp->total_output_tokens;
        e->total_unreserved = usage_from_pb(rp->unreserved);
    }
    if (e->replica_settled == NULL)
        e->replica_settled = calloc(REPLICA_SETTLED_MAX, sizeof(uint64_t));
    for (size_t i = 0; i < rp->n_settled && e->replica_settled != NULL; i++) {
        e->replica_settled[e->replica_settled_pos] = rp->settled[i];
        e->replica_settled_pos = (e->replica_settled_pos + 1) % REPLICA_SETTLED_MAX;
        if (e->replica_settled_n < REPLICA_SETTLED_MAX)
            e->replica_settled_n++;
    }
    if (handoff) {
        uint64_t now = (uint64_t)clock_now_ms(m->clock);
        m->stats.handoffs_received++;
        if (e->owner != NULL) {
            /* started before the handoff arrived: add what the old owner had billed */
            quota_usage_t add = {e->replica_spent.tokens - e->owner_base.tokens,
                                 e->replica_spent.nanousd - e->owner_base.nanousd};
            if (add.tokens > 0 || add.nanousd > 0)
                quota_owner_add_spent(e->owner, add, 0);
            for (size_t i = 0; i < rp->n_settled; i++)
                quota_owner_mark_settled(e->owner, now, rp->settled[i]);
            e->owner_base = e->replica_spent;
            e->ckpt_dirty = true;
        }
        return;
    }
    m->stats.replicas_received++;
    Llmrelay__ReplicaAck ra = LLMRELAY__REPLICA_ACK__INIT;
    ra.version = rp->version;
    ra.owner_boot_id = rp->owner_boot_id;
    Llmrelay__PeerMessage pm = LLMRELAY__PEER_MESSAGE__INIT;
    pm.key_id = (char *)key_id;
    pm.body_case = LLMRELAY__PEER_MESSAGE__BODY_REPLICA_ACK;
    pm.replica_ack = &ra;
    send_to(m, sender, &pm);
}

/* Hands a key this node no longer owns to its new owner and drops the owner state. */
static void hand_off(metering_t *m, meter_entry_t *e, const char *to)
{
    quota_usage_t spent = quota_owner_spent(e->owner);
    uint64_t *keys = malloc(REPLICA_SETTLED_MAX * sizeof(uint64_t));
    size_t k = keys != NULL ? quota_owner_settled_keys(e->owner, keys, REPLICA_SETTLED_MAX) : 0;
    owner_replica_t pb;
    owner_replica(m, e, ++e->repl_version, true, &pb);
    pb.rp.n_settled = k;
    pb.rp.settled = keys;
    Llmrelay__KeyHandoff kh = LLMRELAY__KEY_HANDOFF__INIT;
    kh.state = &pb.rp;
    Llmrelay__PeerMessage pm = LLMRELAY__PEER_MESSAGE__INIT;
    pm.key_id = e->key_id;
    pm.body_case = LLMRELAY__PEER_MESSAGE__BODY_HANDOFF;
    pm.handoff = &kh;
    if (send_to(m, to, &pm) == 0)
        m->stats.handoffs_sent++;
    /* what it knew stays as a replica, in case the key comes back */
    e->has_replica = true;
    e->replica_boot = m->boot;
    e->replica_version = pb.rp.version;
    e->replica_spent = spent;
    e->replica_requests = pb.rp.spent_requests;
    if (e->replica_settled == NULL)
        e->replica_settled = calloc(REPLICA_SETTLED_MAX, sizeof(uint64_t));
    if (e->replica_settled != NULL) {
        memcpy(e->replica_settled, keys, k * sizeof(uint64_t));
        e->replica_settled_n = (uint32_t)k;
        e->replica_settled_pos = (uint32_t)(k % REPLICA_SETTLED_MAX);
    }
    free(keys);
    quota_owner_free(e->owner);
    e->owner = NULL;
    e->n_acks = 0; /* their lessees retry at the new owner, which knows them as settled */
    log_info("quota: key %s handed off to %s (spent %lld tokens)", e->key_id, to, (long long)spent.tokens);
}

static void ring_refresh(metering_t *m)
{
    if (m->gossip == NULL)
        return;
    uint64_t v = gossip_view_version(m->gossip);
    if (v == m->ring_view && m->ring != NULL)
        return;
    m->ring_view = v;
    size_t n = gossip_view(m->gossip, m->members, MEMBERS_MAX);
    m->n_members = n;
    const char *names[MEMBERS_MAX];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const gossip_peer_t *p = &m->members[i];
        if ((p->status == SWIM_ALIVE || p->status == SWIM_SUSPECT) && (p->peer_addr[0] != '\0' || p->self) &&
            !(p->self && m->leaving))
            names[k++] = p->name;
        tag_learn(m, p->name);
    }
    ring_t *ring = NULL;
    if (ring_create(names, k, &ring) != 0) {
        log_error("quota: cannot build the ring of %zu members", k);
        return;
    }
    ring_destroy(m->ring);
    m->ring = ring;
    m->stats.ring_changes++;
    /* keys this node no longer owns go to their new owner */
    for (size_t i = 0; i < m->table.cap; i++) {
        meter_entry_t *e = m->table.slots[i];
        if (e == NULL || e->owner == NULL)
            continue;
        int idx = ring_owner(ring, e->key_id, strlen(e->key_id));
        const char *owner = idx >= 0 ? ring_member_name(ring, (size_t)idx) : NULL;
        if (owner != NULL && strcmp(owner, m->self) != 0)
            hand_off(m, e, owner);
        else if (e->n_acks > 0)
            mark_repl_dirty(m, e); /* the backup may have changed */
    }
}

static void on_peer_message(void *data, const char *sender, uint64_t boot_id, const Llmrelay__PeerMessage *pm)
{
    metering_t *m = data;
    (void)boot_id;
    uint64_t now = (uint64_t)clock_now_ms(m->clock);
    const char *key_id = pm->key_id != NULL ? pm->key_id : "";
    if (key_id[0] == '\0' && pm->body_case != LLMRELAY__PEER_MESSAGE__BODY_DRAIN)
        return;
    if (strlen(key_id) > METER_KEY_ID_MAX)
        return;
    ring_refresh(m);
    tag_learn(m, sender);
    switch (pm->body_case) {
    case LLMRELAY__PEER_MESSAGE__BODY_REPORT: {
        static quota_report_t rep;
        report_from_pb(pm->report, &rep);
        if (pm->worker >= 0x1ff)
            return;
        const char *owner = owner_of(m, key_id, NULL);
        if (owner != NULL && strcmp(owner, m->self) != 0) {
            /* not ours under our view (rings converge within a gossip round): forward */
            m->stats.forwarded++;
            Llmrelay__PeerMessage fw = *pm;
            send_to(m, owner, &fw);
            return;
        }
        meter_entry_t *e = owner_entry(m, key_id, now);
        if (e == NULL)
            return;
        add_split(e, pm->report->split_requests, pm->report->split_input_tokens, pm->report->split_output_tokens,
                  usage_from_pb(pm->report->unreserved));
        m->dirty = true;
        m->stats.reports_received++;
        owner_apply(m, e, lessee_gid(node_tag(sender), (int)pm->worker), &rep, now);
        break;
    }
    case LLMRELAY__PEER_MESSAGE__BODY_LEASE:
    case LLMRELAY__PEER_MESSAGE__BODY_RECALL: {
        if ((int)pm->worker >= m->server->n_workers)
            return;
        meter_msg_t *msg = calloc(1, sizeof(*msg));
        if (msg == NULL)
            return;
        snprintf(msg->key_id, sizeof(msg->key_id), "%s", key_id);
        if (pm->body_case == LLMRELAY__PEER_MESSAGE__BODY_LEASE) {
            msg->kind = METER_LEASE;
            lease_from_pb(pm->lease, &msg->u.lease);
        } else {
            msg->kind = METER_RECALL;
        }
        server_send_to_worker(m->server, (int)pm->worker, msg);
        break;
    }
    case LLMRELAY__PEER_MESSAGE__BODY_SETTLE_ACK:
        /* the held keys leave the pending table; the worker (the lessee's, as reported)
         * releases its responses */
        ack_local(m, (int)pm->worker, key_id, pm->settle_ack->held, pm->settle_ack->n_held);
        break;
    case LLMRELAY__PEER_MESSAGE__BODY_REPLICA:
        on_replica(m, sender, key_id, pm->replica, false);
        break;
    case LLMRELAY__PEER_MESSAGE__BODY_REPLICA_ACK: {
        meter_entry_t *e = table_get(&m->table, key_id, false);
        if (e == NULL || e->owner == NULL || pm->replica_ack->owner_boot_id != m->boot)
            return;
        if (pm->replica_ack->version > e->repl_acked)
            e->repl_acked = pm->replica_ack->version;
        ack_up_to(m, e, pm->replica_ack->version, false);
        break;
    }
    case LLMRELAY__PEER_MESSAGE__BODY_HANDOFF:
        if (pm->handoff->state != NULL)
            on_replica(m, sender, key_id, pm->handoff->state, true);
        break;
    case LLMRELAY__PEER_MESSAGE__BODY_KEY_QUERY: {
        meter_entry_t *e = table_get(&m->table, key_id, false);
        Llmrelay__KeyState ks = LLMRELAY__KEY_STATE__INIT;
        Llmrelay__Replica rp = LLMRELAY__REPLICA__INIT;
        Llmrelay__PeerUsage spent;
        quota_usage_t sp = {0, 0};
        int64_t sreq = 0;
        if (e != NULL && e->owner != NULL) {
            sp = quota_owner_spent(e->owner);
            quota_owner_stat_t st;
            quota_owner_stat(e->owner, &st);
            sreq = st.spent_requests;
        } else if (e != NULL) {
            sp = e->has_replica ? e->replica_spent : e->ckpt_spent;
        }
        if (e != NULL) {
            sp.tokens += e->total_unreserved.tokens;
            sp.nanousd += e->total_unreserved.nanousd;
            rp.total_requests = e->total_requests;
            rp.total_input_tokens = e->total_input;
            rp.total_output_tokens = e->total_output;
        }
        usage_to_pb(&spent, sp);
        rp.spent = &spent;
        rp.spent_requests = sreq;
        ks.query_id = pm->key_query->query_id;
        ks.state = &rp;
        ks.owner = e != NULL && e->owner != NULL;
        Llmrelay__PeerMessage out = LLMRELAY__PEER_MESSAGE__INIT;
        out.key_id = (char *)key_id;
        out.body_case = LLMRELAY__PEER_MESSAGE__BODY_KEY_STATE;
        out.key_state = &ks;
        send_to(m, sender, &out);
        break;
    }
    case LLMRELAY__PEER_MESSAGE__BODY_KEY_STATE: {
        meter_entry_t *e = table_get(&m->table, key_id, true);
        const Llmrelay__Replica *rp = pm->key_state->state;
        if (e != NULL && rp != NULL) {
            e->remote_ms = now;
            e->remote_spent = usage_from_pb(rp->spent);
            e->remote_requests = rp->total_requests;
            e->remote_input = rp->total_input_tokens;
            e->remote_output = rp->total_output_tokens;
        }
        for (key_query_t **q = &m->queries; *q != NULL;) {
            if ((*q)->id == pm->key_state->query_id) {
                key_query_t *done = *q;
                *q = done->next;
                done->done(done->ctx);
                free(done);
                break;
            }
            q = &(*q)->next;
        }
        break;
    }
    case LLMRELAY__PEER_MESSAGE__BODY_DRAIN:
        if (m->on_drain != NULL && pm->drain->node != NULL && strcmp(pm->drain->node, m->self) == 0)
            m->on_drain(m->on_drain_data, sender);
        break;
    default:
        break;
    }
}


/* ---- checkpoints in etcd: <prefix>quota/<key_id> ------------------------------------------
 *
 * An owner writes the counters of the keys whose spent usage changed, in transactions of at
 * most CKPT_TXN_OPS puts, at most one transaction in flight and one every
 * max(1 s, 100 ms x members) per node: at most ~10 transactions a second for the whole
 * cluster whatever its size (DESIGN.md's etcd budget), each ~128 x 110 bytes. A node loads
 * every checkpoint at start (paged), as the starting point of keys it comes to own with no
 * replica or hand-off. Values are a packed Replica (no request keys). */

#define CKPT_TXN_OPS 128u

static void on_ckpt_txn(etcd_client_t *c, int status, bool succeeded, int64_t revision, const etcd_op_result_t *results,
                        size_t n, void *data)
{
    metering_t *m = data;
    (void)c;
    (void)succeeded;
    (void)revision;
    (void)results;
    (void)n;
    m->ckpt_busy = false;
    if (status != 0) {
        /* put the keys back: they go again with the next transaction */
        for (size_t i = 0; i < m->ckpt_n; i++) {
            meter_entry_t *e = table_get(&m->table, m->ckpt_keys[i], false);
            if (e != NULL)
                e->ckpt_dirty = true;
        }
        m->stats.ckpt_failed++;
    } else {
        m->stats.ckpt_txns++;
        m->stats.ckpt_keys += m->ckpt_n;
    }
    m->ckpt_n = 0;
}

/* Writes one transaction of dirty owned keys (force: ignore the pace). */
static void write_checkpoints(metering_t *m, uint64_t now, bool force)
{
    if (m->etcd == NULL || m->ckpt_busy)
        return;
    uint64_t pace = 100u * (uint64_t)(m->ring != NULL ? ring_size(m->ring) : 1);
    if (pace < 1000)
        pace = 1000;
    if (!force && now - m->ckpt_last_ms < pace)
        return;
    static etcd_op_t ops[CKPT_TXN_OPS];
    static uint8_t *bufs[CKPT_TXN_OPS];
    static char keys[CKPT_TXN_OPS][256];
    size_t n = 0;
    for (size_t i = 0; i < m->table.cap && n < CKPT_TXN_OPS; i++) {
        meter_entry_t *e = m->table.slots[(m->ckpt_cursor + i) % m->table.cap];
        if (e == NULL || !e->ckpt_dirty || e->owner == NULL)
            continue;
        owner_replica_t pb;
        owner_replica(m, e, e->repl_version, false, &pb);
        size_t len = llmrelay__replica__get_packed_size(&pb.rp);
        bufs[n] = malloc(len ? len : 1);
        if (bufs[n] == NULL)
            break;
        llmrelay__replica__pack(&pb.rp, bufs[n]);
        int kl = snprintf(keys[n], sizeof(keys[n]), "%squota/%s", m->etcd_prefix, e->key_id);
        ops[n] = (etcd_op_t){.type = ETCD_OP_PUT, .key = (const uint8_t *)keys[n], .key_len = (size_t)kl,
                             .value = bufs[n], .value_len = len};
        snprintf(m->ckpt_keys[n], sizeof(m->ckpt_keys[n]), "%s", e->key_id);
        e->ckpt_dirty = false;
        n++;
    }
    if (m->table.cap > 0)
        m->ckpt_cursor = (m->ckpt_cursor + 1) % m->table.cap;
    if (n == 0)
        return;
    m->ckpt_n = n;
    m->ckpt_last_ms = now;
    m->ckpt_busy = etcd_txn(m->etcd, NULL, 0, ops, n, NULL, 0, on_ckpt_txn, m) == 0;
    if (!m->ckpt_busy) {
        for (size_t i = 0; i < n; i++) {
            meter_entry_t *e = table_get(&m->table, m->ckpt_keys[i], false);
            if (e != NULL)
                e->ckpt_dirty = true;
        }
        m->ckpt_n = 0;
    }
    for (size_t i = 0; i < n; i++)
        free(bufs[i]);
}

static void load_page(metering_t *m, const uint8_t *from, size_t from_len);

static void on_ckpt_range(etcd_client_t *c, int status, int64_t revision, const etcd_kv_t *kvs, size_t n, bool more,
                          void *data)
{
    metering_t *m = data;
    (void)c;
    (void)revision;
    if (status != 0) {
        log_warn("quota: cannot read the checkpoints from etcd (status %d); keys start from local state", status);
        return;
    }
    size_t plen = strlen(m->etcd_prefix) + strlen("quota/");
    for (size_t i = 0; i < n; i++) {
        if (kvs[i].key_len <= plen || kvs[i].key_len - plen > METER_KEY_ID_MAX)
            continue;
        char id[METER_KEY_ID_MAX + 1];
        memcpy(id, kvs[i].key + plen, kvs[i].key_len - plen);
        id[kvs[i].key_len - plen] = '\0';
        Llmrelay__Replica *rp = llmrelay__replica__unpack(NULL, kvs[i].value_len, kvs[i].value);
        if (rp == NULL)
            continue;
        meter_entry_t *e = table_get(&m->table, id, true);
        if (e != NULL && e->owner == NULL && !e->has_replica) {
            quota_usage_t sp = usage_from_pb(rp->spent);
            /* the larger of the local file's and etcd's: both only grow */
            if (!e->from_ckpt || sp.tokens > e->ckpt_spent.tokens || sp.nanousd > e->ckpt_spent.nanousd) {
                e->ckpt_spent = sp;
                e->ckpt_requests = rp->spent_requests;
                e->total_requests = rp->total_requests;
                e->total_input = rp->total_input_tokens;
                e->total_output = rp->total_output_tokens;
                e->total_unreserved = usage_from_pb(rp->unreserved);
                e->from_ckpt = true;
            }
            m->stats.ckpt_loaded++;
        }
        llmrelay__replica__free_unpacked(rp, NULL);
    }
    if (more && n > 0) {
        uint8_t next[512];
        size_t kl = kvs[n - 1].key_len < sizeof(next) - 1 ? kvs[n - 1].key_len : sizeof(next) - 1;
        memcpy(next, kvs[n - 1].key, kl);
        next[kl++] = '\0'; /* the smallest key after the last one */
        load_page(m, next, kl);
    } else {
        log_info("quota: %llu keys' checkpoints loaded from etcd", (unsigned long long)m->stats.ckpt_loaded);
    }
}

static void load_page(metering_t *m, const uint8_t *from, size_t from_len)
{
    char end[256];
    int el = snprintf(end, sizeof(end), "%squota0", m->etcd_prefix); /* '0' follows '/' */
    if (etcd_range(m->etcd, from, from_len, (const uint8_t *)end, (size_t)el, 1000, 0, on_ckpt_range, m) != 0)
        log_warn("quota: cannot read the checkpoints from etcd");
}

void metering_set_etcd(metering_t *m, etcd_client_t *etcd, const char *prefix)
{
    m->etcd = etcd;
    snprintf(m->etcd_prefix, sizeof(m->etcd_prefix), "%s", prefix);
    char from[256];
    int fl = snprintf(from, sizeof(from), "%squota/", prefix);
    load_page(m, (const uint8_t *)from, (size_t)fl);
}

static void on_member(void *data, const char *name, int status)
{
    metering_t *m = data;
    if (status != SWIM_DEAD && status != SWIM_LEFT)
        return;
    uint64_t now = (uint64_t)clock_now_ms(m->clock);
    uint32_t tag = node_tag(name);
    /* its lessees are gone: their in-flight requests are billed at their last report */
    for (size_t i = 0; i < m->table.cap; i++) {
        meter_entry_t *e = m->table.slots[i];
        if (e == NULL || e->owner == NULL)
            continue;
        for (int w = 0; w < CONFIG_MAX_WORKERS; w++)
            quota_owner_lessee_gone(e->owner, now, lessee_gid(tag, w));
    }
    ring_refresh(m);
    log_info("quota: member %s %s: its leases are settled, the ring has %zu members", name,
             status == SWIM_DEAD ? "dead" : "left", m->ring != NULL ? ring_size(m->ring) : (size_t)0);
}

static void expire_queries(metering_t *m, uint64_t now, bool all);

static void on_main_check(uv_check_t *h)
{
    metering_t *m = h->data;
    flush_replication(m, (uint64_t)clock_now_ms(m->clock));
}

int metering_enable_cluster(metering_t *m, uv_loop_t *loop, const char *self, const uint8_t *key, size_t key_len,
                            gossip_t *gossip, char *err, size_t errlen)
{
    m->self = strdup(self);
    m->self_tag = node_tag(self);
    m->gossip = gossip;
    m->members = calloc(MEMBERS_MAX, sizeof(gossip_peer_t));
    m->pf = calloc(PF_BUCKETS, sizeof(pending_final_t *));
    if (m->self == NULL || m->members == NULL || m->pf == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    tag_learn(m, self);
    const llmrelay_config_t *cfg = m->server->cfg;
    peer_tls_t tls = {.cert = cfg->peer_tls_cert, .key = cfg->peer_tls_key, .ca_file = cfg->peer_ca_file};
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    int rc = peer_start(loop, cfg->peer_listen, self, key, key_len, &tls, on_peer_message, m, &m->peer, err, errlen);
    if (rc != 0)
        return rc;
    if (RAND_bytes((unsigned char *)&m->boot, sizeof(m->boot)) != 1)
        m->boot = (uint64_t)clock_now_ms(m->clock) ^ 0x9e3779b97f4a7c15ULL;
    gossip_set_listener(gossip, on_member, m);
    uv_check_init(loop, &m->check);
    m->check.data = m;
    uv_check_start(&m->check, on_main_check);
    uv_unref((uv_handle_t *)&m->check);
    m->check_on = true;
    atomic_store(&m->server->clustered, true);
    ring_refresh(m);
    return 0;
}

void metering_handoff_all(metering_t *m)
{
    if (m->peer == NULL)
        return;
    m->leaving = true;
    m->ring_view = 0;
    ring_refresh(m); /* a ring without this node: every owned key goes to its next owner */
    flush_replication(m, (uint64_t)clock_now_ms(m->clock));
    /* the last member keeps its keys: they go to etcd */
    for (size_t i = 0; i < m->table.cap; i++)
        if (m->table.slots[i] != NULL && m->table.slots[i]->owner != NULL)
            m->table.slots[i]->ckpt_dirty = true;
    write_checkpoints(m, (uint64_t)clock_now_ms(m->clock), true);
}

bool metering_checkpoints_pending(metering_t *m)
{
    if (m->etcd == NULL || m->peer == NULL)
        return false;
    if (m->ckpt_busy)
        return true;
    for (size_t i = 0; i < m->table.cap; i++)
        if (m->table.slots[i] != NULL && m->table.slots[i]->owner != NULL && m->table.slots[i]->ckpt_dirty) {
            write_checkpoints(m, (uint64_t)clock_now_ms(m->clock), true);
            return m->ckpt_busy;
        }
    return false;
}

void metering_stop_cluster(metering_t *m)
{
    if (m->peer == NULL)
        return;
    expire_queries(m, 0, true);
    if (m->etcd != NULL)
        etcd_cancel_data(m->etcd, m);
    m->etcd = NULL;
    m->ckpt_busy = false;
    if (m->check_on)
        uv_close((uv_handle_t *)&m->check, NULL);
    m->check_on = false;
    gossip_set_listener(m->gossip, NULL, NULL);
    atomic_store(&m->server->clustered, false);
    peer_stop(m->peer);
    m->peer = NULL;
    m->gossip = NULL;
}

static void expire_queries(metering_t *m, uint64_t now, bool all)
{
    for (key_query_t **q = &m->queries; *q != NULL;) {
        if (all || (*q)->deadline_ms <= now) {
            key_query_t *done = *q;
            *q = done->next;
            done->done(done->ctx); /* answered from what this node knows */
            free(done);
            continue;
        }
        q = &(*q)->next;
    }
}

void metering_refresh_key(metering_t *m, const char *key_id, void (*done)(void *ctx), void *ctx)
{
    if (m->peer == NULL || strlen(key_id) > METER_KEY_ID_MAX) {
        done(ctx);
        return;
    }
    const char *owner = owner_of(m, key_id, NULL);
    key_query_t *q = owner != NULL && strcmp(owner, m->self) != 0 ? calloc(1, sizeof(*q)) : NULL;
    if (q == NULL) {
        done(ctx);
        return;
    }
    q->id = ++m->next_query_id;
    q->deadline_ms = (uint64_t)clock_now_ms(m->clock) + 2000;
    snprintf(q->key_id, sizeof(q->key_id), "%s", key_id);
    q->done = done;
    q->ctx = ctx;
    Llmrelay__KeyQuery kq = LLMRELAY__KEY_QUERY__INIT;
    kq.query_id = q->id;
    Llmrelay__PeerMessage pm = LLMRELAY__PEER_MESSAGE__INIT;
    pm.key_id = q->key_id;
    pm.body_case = LLMRELAY__PEER_MESSAGE__BODY_KEY_QUERY;
    pm.key_query = &kq;
    if (send_to(m, owner, &pm) != 0) {
        free(q);
        done(ctx);
        return;
    }
    q->next = m->queries;
    m->queries = q;
}

void metering_set_drain_handler(metering_t *m, void (*cb)(void *data, const char *by), void *data)
{
    m->on_drain = cb;
    m->on_drain_data = data;
}

int metering_drain_remote(metering_t *m, const char *name, const char *by)
{
    if (m->peer == NULL)
        return -ENOENT;
    ring_refresh(m);
    const gossip_peer_t *p = member_find(m, name);
    if (p == NULL || p->status == SWIM_DEAD || p->status == SWIM_LEFT)
        return -ENOENT;
    Llmrelay__DrainRequest dr = LLMRELAY__DRAIN_REQUEST__INIT;
    dr.node = (char *)name;
    dr.by = (char *)(by != NULL ? by : "");
    Llmrelay__PeerMessage pm = LLMRELAY__PEER_MESSAGE__INIT;
    pm.key_id = "";
    pm.body_case = LLMRELAY__PEER_MESSAGE__BODY_DRAIN;
    pm.drain = &dr;
    return send_to(m, name, &pm);
}

void metering_cluster_view(metering_t *m, admin_cluster_t *out)
{
    if (m->peer == NULL)
        return;
    if (out->query_key != NULL) {
        const char *backup = NULL;
        const char *owner = owner_of(m, out->query_key, &backup);
        snprintf(out->key_owner, sizeof(out->key_owner), "%s", owner != NULL ? owner : "");
        snprintf(out->key_backup, sizeof(out->key_backup), "%s", backup != NULL ? backup : "");
    }
    metering_cluster_stats_t st;
    metering_cluster_stats(m, &st);
    size_t owned = 0, replicas = 0;
    for (size_t i = 0; i < m->table.cap; i++) {
        meter_entry_t *e = m->table.slots[i];
        if (e != NULL && e->owner != NULL)
            owned++;
        else if (e != NULL && e->has_replica)
            replicas++;
    }
    const struct {
        const char *name;
        uint64_t v;
    } rows[] = {
        {"keys_owned_here", owned},
        {"replicas_held", replicas},
        {"pending_finals", st.pending_finals},
        {"settles_acked", st.settles_acked},
        {"settle_retries", st.settle_retries},
        {"reports_received", st.reports_received},
        {"reports_forwarded", st.forwarded},
        {"unroutable", st.unroutable},
        {"replicas_sent", st.replicas_sent},
        {"replicas_received", st.replicas_received},
        {"handoffs_sent", st.handoffs_sent},
        {"handoffs_received", st.handoffs_received},
        {"ring_changes", st.ring_changes},
        {"peer_batches_sent", st.peer_batches_sent},
        {"peer_batches_failed", st.peer_batches_failed},
        {"peer_messages_received", st.peer_messages_received},
        {"peer_refused_frames", st.peer_refused_frames},
        {"peer_refused_version", st.peer_refused_version},
        {"checkpoint_txns", st.ckpt_txns},
        {"checkpoint_keys", st.ckpt_keys},
        {"checkpoint_failures", st.ckpt_failed},
        {"checkpoints_loaded", st.ckpt_loaded},
    };
    size_t n = sizeof(rows) / sizeof(rows[0]);
    for (size_t i = 0; i < n && i < sizeof(out->quota_names) / sizeof(out->quota_names[0]); i++) {
        out->quota_names[i] = rows[i].name;
        out->quota_values[i] = rows[i].v;
    }
    out->n_quota = n;
}

void metering_cluster_stats(metering_t *m, metering_cluster_stats_t *out)
{
    *out = m->stats;
    out->pending_finals = m->n_pf;
    peer_stats_t ps;
    peer_get_stats(m->peer, &ps);
    out->peer_batches_sent = ps.batches_sent;
    out->peer_batches_failed = ps.batches_failed;
    out->peer_messages_received = ps.messages_received;
    out->peer_refused_frames = ps.refused_frames;
    out->peer_refused_version = ps.refused_version;
}

void metering_on_msg(metering_t *m, meter_msg_t *msg)
{
    if (m->peer != NULL) {
        cluster_on_worker_msg(m, msg);
        return;
    }
    uint64_t now = (uint64_t)clock_now_ms(m->clock);
    meter_entry_t *e = owner_entry(m, msg->key_id, now);
    if (e == NULL) {
        free(msg);
        return;
    }
    add_split(e, msg->requests, msg->input_tokens, msg->output_tokens, msg->unreserved);
    if (msg->requests != 0 || (msg->has_report && msg->u.report.n_entries != 0))
        m->dirty = true;
    quota_lease_t answer;
    int worker = msg->worker;
    if (log_enabled(LOG_DEBUG)) {
        quota_owner_stat_t st;
        quota_owner_stat(e->owner, &st);
        log_debug("quota debug %s: report from %d has=%d entries=%u returned=%lld ask=%d pending=%lld | spent=%lld reserved=%lld held=%lld check=%d",
                 e->key_id, worker, msg->has_report, msg->u.report.n_entries, (long long)msg->u.report.returned.tokens,
                 msg->u.report.ask.has_ask, (long long)msg->u.report.ask.pending.tokens, (long long)st.spent.tokens,
                 (long long)st.reserved.tokens, (long long)st.held.tokens, quota_owner_check(e->owner));
    }
    if (msg->has_report && quota_owner_apply_report(e->owner, now, (uint32_t)worker + 1, &msg->u.report, &answer) == 1) {
        /* Reuse the message for the answer. */
        msg->kind = METER_LEASE;
        msg->u.lease = answer;
        server_send_to_worker(m->server, worker, msg);
    } else {
        free(msg);
    }
    uint32_t ids[QUOTA_MAX_LESSEES];
    size_t n = quota_owner_take_recalls(e->owner, ids, QUOTA_MAX_LESSEES);
    for (size_t i = 0; i < n; i++) {
        meter_msg_t *r = calloc(1, sizeof(*r));
        if (r == NULL || ids[i] == 0 || (int)ids[i] > m->server->n_workers) {
            free(r);
            continue;
        }
        r->kind = METER_RECALL;
        memcpy(r->key_id, e->key_id, sizeof(r->key_id));
        server_send_to_worker(m->server, (int)ids[i] - 1, r);
    }
}

void metering_checkpoint(metering_t *m)
{
    if (!m->dirty)
        return;
    size_t n = strlen(m->ckpt_path) + 8;
    char *tmp = malloc(n);
    if (tmp == NULL)
        return;
    snprintf(tmp, n, "%s.tmp", m->ckpt_path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) {
        log_error("quota: cannot write %s", tmp);
        free(tmp);
        return;
    }
    for (size_t i = 0; i < m->table.cap; i++) {
        meter_entry_t *e = m->table.slots[i];
        if (e == NULL)
            continue;
        quota_usage_t spent = e->owner != NULL ? quota_owner_spent(e->owner) : e->ckpt_spent;
        spent.tokens += e->total_unreserved.tokens;
        spent.nanousd += e->total_unreserved.nanousd;
        fprintf(f, "%s %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 "\n", e->key_id, spent.tokens,
                spent.nanousd, e->total_requests, e->total_input, e->total_output);
    }
    fflush(f);
    fdatasync(fileno(f));
    fclose(f);
    if (rename(tmp, m->ckpt_path) != 0)
        log_error("quota: cannot replace %s", m->ckpt_path);
    free(tmp);
    m->dirty = false;
}

void metering_tick(metering_t *m)
{
    uint64_t now = (uint64_t)clock_now_ms(m->clock);
    if (m->peer != NULL) {
        ring_refresh(m);
        expire_queries(m, now, false);
        retry_pending(m, now);
        /* replicas not acknowledged in time go again (to the backup of now) */
        for (size_t i = 0; i < m->table.cap; i++) {
            meter_entry_t *e = m->table.slots[i];
            if (e != NULL && e->owner != NULL && e->n_acks > 0 && e->repl_sent_ms + REPL_RETRY_MS <= now) {
                const char *backup = NULL;
                owner_of(m, e->key_id, &backup);
                if (backup == NULL || strcmp(backup, m->self) == 0)
                    ack_up_to(m, e, 0, true);
                else
                    send_replica(m, e, backup, true, now);
            }
        }
        flush_replication(m, now);
        write_checkpoints(m, now, false);
    }
    for (size_t i = 0; i < m->table.cap; i++) {
        meter_entry_t *e = m->table.slots[i];
        if (e != NULL && e->owner != NULL)
            quota_owner_tick(e->owner, now);
    }
    metering_checkpoint(m);
}

bool metering_key_spent(metering_t *m, const char *key_id, int64_t *requests, int64_t *input_tokens,
                        int64_t *output_tokens, double *usd)
{
    meter_entry_t *e = table_get(&m->table, key_id, false);
    if (e == NULL)
        return false;
    if (e->owner == NULL && e->remote_ms != 0 && (uint64_t)clock_now_ms(m->clock) - e->remote_ms <= 5000) {
        /* the owner's counters, just asked (metering_refresh_key) */
        *requests = e->remote_requests;
        *input_tokens = e->remote_input;
        *output_tokens = e->remote_output;
        *usd = quota_nanos_to_usd(e->remote_spent.nanousd);
        return true;
    }
    quota_usage_t spent = e->owner != NULL  ? quota_owner_spent(e->owner)
                          : e->has_replica ? e->replica_spent
                                           : e->ckpt_spent;
    spent.nanousd += e->total_unreserved.nanousd;
    *requests = e->total_requests;
    *input_tokens = e->total_input;
    *output_tokens = e->total_output;
    *usd = quota_nanos_to_usd(spent.nanousd);
    return true;
}
