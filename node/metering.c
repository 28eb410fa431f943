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

#include "node/log.h"
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
    quota_decision_t last;                         /* worker: last decision (header values) */
    bool has_last;
    /* main side */
    quota_owner_t *owner;
    int64_t total_requests, total_input, total_output;
    quota_usage_t total_unreserved; /* unmetered usage (the owner never saw it) */
    quota_usage_t ckpt_spent; /* from the checkpoint, before the owner exists */
    int64_t ckpt_requests;
    bool from_ckpt;
} meter_entry_t;

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

typedef struct meter_worker {
    table_t table;
    meter_entry_t *active; /* entries with a lessee, for the periodic reports */
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

void meter_settle(worker_t *w, const snapshot_key_t *key, const char *request_id, quota_usage_t actual,
                  int64_t input_tokens, int64_t output_tokens)
{
    meter_entry_t *e = worker_entry(w, key->id);
    if (e == NULL)
        return;
    quota_lessee_settle(e->lessee, (uint64_t)clock_now_ms(w->server->clock), request_id, actual, true);
    e->requests++;
    e->input_tokens += input_tokens;
    e->output_tokens += output_tokens;
    /* Settled requests stay in the lessee's table until reported: a busy key reports as
     * soon as a report's worth has gathered, not only on the 100 ms tick. */
    if (e->requests >= QUOTA_REPORT_MAX)
        send_report(w, e);
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
        }
    }
    free(msg);
}

void meter_worker_tick(worker_t *w)
{
    meter_worker_t *mw = w->meter;
    for (meter_entry_t *e = mw->active; e != NULL; e = e->next_active) {
        if (e->wait_head != NULL)
            retry_waiters(w, e);
        send_report(w, e);
    }
}

/* ---- main side ------------------------------------------------------------------------ */

struct metering {
    server_t *server;
    const node_clock_t *clock;
    snapshot_t *snap;
    table_t table;
    char *ckpt_path;
    bool dirty;
};


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
    e->owner = quota_owner_new(&qc, &l, e->from_ckpt ? &e->ckpt_spent : NULL, e->ckpt_requests, now);
    return e->owner != NULL ? e : NULL;
}

void metering_on_msg(metering_t *m, meter_msg_t *msg)
{
    uint64_t now = (uint64_t)clock_now_ms(m->clock);
    meter_entry_t *e = owner_entry(m, msg->key_id, now);
    if (e == NULL) {
        free(msg);
        return;
    }
    e->total_requests += msg->requests;
    e->total_input += msg->input_tokens;
    e->total_output += msg->output_tokens;
    e->total_unreserved.tokens += msg->unreserved.tokens;
    e->total_unreserved.nanousd += msg->unreserved.nanousd;
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
    quota_usage_t spent = e->owner != NULL ? quota_owner_spent(e->owner) : e->ckpt_spent;
    spent.nanousd += e->total_unreserved.nanousd;
    *requests = e->total_requests;
    *input_tokens = e->total_input;
    *output_tokens = e->total_output;
    *usd = quota_nanos_to_usd(spent.nanousd);
    return true;
}
