/* metrics_ring.c — 5-minute roll-ups in etcd (see metrics_ring.h for the scheme).
 *
 * Pure part first (slot arithmetic, rows, merge, protobuf encode/decode), then the node's
 * writer (a 1 s tick that folds deltas and puts slots), the scanner shared by the sweep and
 * the queries (node listing by hops of limit-1 ranges, then index runs read in pages), the
 * sweep and the JSON answers. Everything runs on the main loop. */
#include "node/metrics_ring.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>

#include "config.pb-c.h"
#include "metrics.pb-c.h"
#include "node/log.h"
#include "node/util.h"

#define KEY_MAX 512
#define TICK_MS 1000
#define STOP_MS 2000
#define DELETE_BATCH 60 /* compares + deletes <= 128 ops per txn */
#define HOUR_MS (3600 * 1000LL)

static const char *const class_label[METRICS_STATUS_CLASSES] = {"2xx", "3xx", "4xx", "5xx"};
static const char *const kind_label[METRICS_UPSTREAM_KIND_COUNT] = {"connect", "timeout", "status_5xx", "status_429",
                                                                    "protocol"};

/* ---- pure: slots ---- */

int64_t ring_slot_start(int64_t t_ms)
{
    int64_t q = t_ms / RING_SLOT_MS;
    if (t_ms < 0 && q * RING_SLOT_MS != t_ms)
        q--;
    return q * RING_SLOT_MS;
}

uint32_t ring_slot_index(int64_t start_ms)
{
    int64_t i = (start_ms / RING_SLOT_MS) % RING_SLOTS;
    return (uint32_t)(i < 0 ? i + RING_SLOTS : i);
}

int ring_key(const char *prefix, const char *node, uint32_t index, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%smetrics/%s/%04u", prefix, node, index % RING_SLOTS);
    return n < 0 || (size_t)n >= cap ? -ENOBUFS : n;
}

int ring_key_parse(const char *prefix, const uint8_t *key, size_t len, char node[RING_NODE_MAX + 1], uint32_t *index)
{
    size_t plen = strlen(prefix);
    if (len < plen + 8 + 1 + 1 + 4 || memcmp(key, prefix, plen) != 0 || memcmp(key + plen, "metrics/", 8) != 0)
        return -EINVAL;
    const uint8_t *name = key + plen + 8, *end = key + len;
    const uint8_t *slash = memchr(name, '/', (size_t)(end - name));
    if (slash == NULL || slash == name || (size_t)(slash - name) > RING_NODE_MAX || end - slash != 5)
        return -EINVAL;
    uint32_t v = 0;
    for (int i = 1; i <= 4; i++) {
        if (slash[i] < '0' || slash[i] > '9')
            return -EINVAL;
        v = v * 10 + (uint32_t)(slash[i] - '0');
    }
    if (v >= RING_SLOTS)
        return -EINVAL;
    memcpy(node, name, (size_t)(slash - name));
    node[slash - name] = '\0';
    *index = v;
    return 0;
}

size_t ring_index_runs(int64_t first_start, int64_t last_start, uint32_t runs[2][2])
{
    if (last_start < first_start)
        return 0;
    if ((last_start - first_start) / RING_SLOT_MS + 1 >= RING_SLOTS) {
        runs[0][0] = 0;
        runs[0][1] = RING_SLOTS - 1;
        return 1;
    }
    uint32_t a = ring_slot_index(first_start), b = ring_slot_index(last_start);
    if (a <= b) {
        runs[0][0] = a;
        runs[0][1] = b;
        return 1;
    }
    runs[0][0] = a;
    runs[0][1] = RING_SLOTS - 1;
    runs[1][0] = 0;
    runs[1][1] = b;
    return 2;
}

void ring_slot_init(ring_slot_t *s, const char *node, int64_t start_ms)
{
    memset(s, 0, sizeof(*s));
    snprintf(s->node, sizeof(s->node), "%s", node != NULL ? node : "");
    s->start_ms = start_ms;
}

void ring_slot_dispose(ring_slot_t *s)
{
    free(s->models);
    free(s->providers);
    s->models = NULL;
    s->providers = NULL;
    s->n_models = s->n_providers = 0;
}

uint64_t ring_slot_requests(const ring_slot_t *s)
{
    uint64_t n = 0;
    for (int e = 0; e < METRICS_EP_COUNT; e++)
        for (int k = 0; k < METRICS_STATUS_CLASSES; k++)
            n += s->requests[e][k];
    return n;
}

bool ring_slot_empty(const ring_slot_t *s)
{
    if (ring_slot_requests(s) != 0 || s->n_models != 0 || s->n_providers != 0)
        return false;
    for (int e = 0; e < METRICS_EP_COUNT; e++)
        for (int b = 0; b < METRICS_BUCKETS; b++)
            if (s->latency[e][b] != 0)
                return false;
    return true;
}

/* Rows are few (the configured models); a linear search is enough. */
ring_model_t *ring_slot_model(ring_slot_t *s, const char *name)
{
    for (size_t i = 0; i < s->n_models; i++)
        if (strcmp(s->models[i].name, name) == 0)
            return &s->models[i];
    if (s->n_models >= RING_MAX_ROWS)
        return strcmp(name, "other") == 0 ? NULL : ring_slot_model(s, "other");
    if (s->n_models >= RING_MAX_ROWS - 1 && strcmp(name, "other") != 0)
        return ring_slot_model(s, "other"); /* keep the last row for "other" */
    ring_model_t *m = realloc(s->models, (s->n_models + 1) * sizeof(*m));
    if (m == NULL)
        return NULL;
    s->models = m;
    m = &s->models[s->n_models++];
    memset(m, 0, sizeof(*m));
    snprintf(m->name, sizeof(m->name), "%s", name);
    return m;
}

ring_provider_t *ring_slot_provider(ring_slot_t *s, const char *name)
{
    for (size_t i = 0; i < s->n_providers; i++)
        if (strcmp(s->providers[i].name, name) == 0)
            return &s->providers[i];
    if (s->n_providers >= RING_MAX_ROWS - 1 && strcmp(name, "other") != 0)
        return ring_slot_provider(s, "other");
    if (s->n_providers >= RING_MAX_ROWS)
        return NULL;
    ring_provider_t *p = realloc(s->providers, (s->n_providers + 1) * sizeof(*p));
    if (p == NULL)
        return NULL;
    s->providers = p;
    p = &s->providers[s->n_providers++];
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "%s", name);
    return p;
}

static void model_add(ring_model_t *d, const ring_model_t *s)
{
    d->requests += s->requests;
    d->errors += s->errors;
    d->input_tokens += s->input_tokens;
    d->output_tokens += s->output_tokens;
    d->cached_input_tokens += s->cached_input_tokens;
    d->reasoning_tokens += s->reasoning_tokens;
    d->nano_usd += s->nano_usd;
}

int ring_slot_merge(ring_slot_t *dst, const ring_slot_t *src)
{
    for (int e = 0; e < METRICS_EP_COUNT; e++) {
        for (int k = 0; k < METRICS_STATUS_CLASSES; k++)
            dst->requests[e][k] += src->requests[e][k];
        for (int b = 0; b < METRICS_BUCKETS; b++)
            dst->latency[e][b] += src->latency[e][b];
        dst->latency_sum_us[e] += src->latency_sum_us[e];
    }
    for (int i = 0; i < METRICS_STATUS_CODES; i++)
        dst->statuses[i] += src->statuses[i];
    for (size_t i = 0; i < src->n_models; i++) {
        ring_model_t *m = ring_slot_model(dst, src->models[i].name);
        if (m == NULL)
            return -ENOMEM;
        model_add(m, &src->models[i]);
    }
    for (size_t i = 0; i < src->n_providers; i++) {
        ring_provider_t *p = ring_slot_provider(dst, src->providers[i].name);
        if (p == NULL)
            return -ENOMEM;
        for (int k = 0; k < METRICS_UPSTREAM_KIND_COUNT; k++)
            p->errors[k] += src->providers[i].errors[k];
    }
    if (src->updated_ms > dst->updated_ms)
        dst->updated_ms = src->updated_ms;
    return 0;
}

static int cmp_model_requests(const void *a, const void *b)
{
    const ring_model_t *x = a, *y = b;
    bool xo = strcmp(x->name, "other") == 0, yo = strcmp(y->name, "other") == 0;
    if (xo != yo)
        return xo ? 1 : -1; /* "other" last */
    if (x->requests != y->requests)
        return x->requests > y->requests ? -1 : 1;
    return strcmp(x->name, y->name);
}

static uint64_t provider_total(const ring_provider_t *p)
{
    uint64_t n = 0;
    for (int k = 0; k < METRICS_UPSTREAM_KIND_COUNT; k++)
        n += p->errors[k];
    return n;
}

static int cmp_provider_errors(const void *a, const void *b)
{
    const ring_provider_t *x = a, *y = b;
    bool xo = strcmp(x->name, "other") == 0, yo = strcmp(y->name, "other") == 0;
    if (xo != yo)
        return xo ? 1 : -1;
    uint64_t tx = provider_total(x), ty = provider_total(y);
    if (tx != ty)
        return tx > ty ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Packs s keeping at most keep_models / keep_providers named rows (the biggest), the rest
 * folded into "other". */
static int encode_with(const ring_slot_t *s, size_t keep_models, size_t keep_providers, uint8_t **out, size_t *len)
{
    int rc = -ENOMEM;
    ring_slot_t c;
    ring_slot_init(&c, s->node, s->start_ms);
    c.updated_ms = s->updated_ms;
    ring_model_t *ms = malloc((s->n_models + 1) * sizeof(*ms));
    ring_provider_t *ps = malloc((s->n_providers + 1) * sizeof(*ps));
    Llmrelay__MetricEndpoint eps[METRICS_EP_COUNT], *epp[METRICS_EP_COUNT];
    Llmrelay__MetricModel *mrows = NULL, **mrowp = NULL;
    Llmrelay__MetricProvider *prows = NULL, **prowp = NULL;
    Llmrelay__MetricStatus srows[METRICS_STATUS_CODES], *srowp[METRICS_STATUS_CODES];
    uint64_t classes[METRICS_EP_COUNT][METRICS_STATUS_CLASSES], buckets[METRICS_EP_COUNT][METRICS_BUCKETS];
    uint64_t perrs[RING_MAX_ROWS + 1][METRICS_UPSTREAM_KIND_COUNT];
    if (ms == NULL || ps == NULL)
        goto done;
    if (s->n_models > 0)
        memcpy(ms, s->models, s->n_models * sizeof(*ms));
    if (s->n_providers > 0)
        memcpy(ps, s->providers, s->n_providers * sizeof(*ps));
    qsort(ms, s->n_models, sizeof(*ms), cmp_model_requests);
    qsort(ps, s->n_providers, sizeof(*ps), cmp_provider_errors);
    for (size_t i = 0; i < s->n_models; i++) {
        ring_model_t *m = ring_slot_model(&c, i < keep_models ? ms[i].name : "other");
        if (m == NULL)
            goto done;
        model_add(m, &ms[i]);
    }
    for (size_t i = 0; i < s->n_providers; i++) {
        ring_provider_t *p = ring_slot_provider(&c, i < keep_providers ? ps[i].name : "other");
        if (p == NULL)
            goto done;
        for (int k = 0; k < METRICS_UPSTREAM_KIND_COUNT; k++)
            p->errors[k] += ps[i].errors[k];
    }
    Llmrelay__MetricSlot slot = LLMRELAY__METRIC_SLOT__INIT;
    slot.version = 1;
    slot.node = c.node;
    slot.start_ms = s->start_ms;
    slot.updated_ms = s->updated_ms;
    for (int e = 0; e < METRICS_EP_COUNT; e++) {
        bool any = false;
        for (int k = 0; k < METRICS_STATUS_CLASSES; k++)
            any |= (classes[e][k] = s->requests[e][k]) != 0;
        for (int b = 0; b < METRICS_BUCKETS; b++)
            any |= (buckets[e][b] = s->latency[e][b]) != 0;
        if (!any)
            continue;
        Llmrelay__MetricEndpoint *ep = &eps[slot.n_endpoints];
        llmrelay__metric_endpoint__init(ep);
        ep->endpoint = (char *)metrics_endpoint_name((metrics_endpoint_t)e);
        ep->n_requests_by_class = METRICS_STATUS_CLASSES;
        ep->requests_by_class = classes[e];
        ep->n_latency_buckets = METRICS_BUCKETS;
        ep->latency_buckets = buckets[e];
        ep->latency_sum_us = s->latency_sum_us[e];
        epp[slot.n_endpoints++] = ep;
    }
    slot.endpoints = epp;
    mrows = calloc(c.n_models + 1, sizeof(*mrows));
    mrowp = calloc(c.n_models + 1, sizeof(*mrowp));
    prows = calloc(c.n_providers + 1, sizeof(*prows));
    prowp = calloc(c.n_providers + 1, sizeof(*prowp));
    if (mrows == NULL || mrowp == NULL || prows == NULL || prowp == NULL)
        goto done;
    for (size_t i = 0; i < c.n_models; i++) {
        llmrelay__metric_model__init(&mrows[i]);
        mrows[i].model = c.models[i].name;
        mrows[i].requests = c.models[i].requests;
        mrows[i].errors = c.models[i].errors;
        mrows[i].input_tokens = c.models[i].input_tokens;
        mrows[i].output_tokens = c.models[i].output_tokens;
        mrows[i].cached_input_tokens = c.models[i].cached_input_tokens;
        mrows[i].reasoning_tokens = c.models[i].reasoning_tokens;
        mrows[i].nano_usd = c.models[i].nano_usd;
        mrowp[i] = &mrows[i];
    }
    slot.n_models = c.n_models;
    slot.models = mrowp;
    for (size_t i = 0; i < c.n_providers; i++) {
        llmrelay__metric_provider__init(&prows[i]);
        prows[i].provider = c.providers[i].name;
        memcpy(perrs[i], c.providers[i].errors, sizeof(perrs[i]));
        prows[i].n_errors = METRICS_UPSTREAM_KIND_COUNT;
        prows[i].errors = perrs[i];
        prowp[i] = &prows[i];
    }
    slot.n_providers = c.n_providers;
    slot.providers = prowp;
    for (int i = 400 - METRICS_STATUS_MIN; i < METRICS_STATUS_CODES; i++) {
        if (s->statuses[i] == 0)
            continue;
        Llmrelay__MetricStatus *st = &srows[slot.n_statuses];
        llmrelay__metric_status__init(st);
        st->status = (uint32_t)(METRICS_STATUS_MIN + i);
        st->count = s->statuses[i];
        srowp[slot.n_statuses++] = st;
    }
    slot.statuses = srowp;
    size_t n = llmrelay__metric_slot__get_packed_size(&slot);
    if (n > RING_MAX_VALUE) {
        rc = -E2BIG;
        goto done;
    }
    *out = malloc(n + 1);
    if (*out == NULL)
        goto done;
    *len = llmrelay__metric_slot__pack(&slot, *out);
    rc = 0;
done:
    free(mrows);
    free(mrowp);
    free(prows);
    free(prowp);
    free(ms);
    free(ps);
    ring_slot_dispose(&c);
    return rc;
}

int ring_slot_encode(const ring_slot_t *s, uint8_t **out, size_t *len)
{
    size_t km = s->n_models, kp = s->n_providers;
    for (;;) {
        int rc = encode_with(s, km, kp, out, len);
        if (rc != -E2BIG)
            return rc;
        if (km == 0 && kp == 0)
            return rc;
        if (km >= kp)
            km /= 2;
        else
            kp /= 2;
    }
}

int ring_slot_decode(const uint8_t *buf, size_t len, ring_slot_t *out)
{
    Llmrelay__MetricSlot *m = llmrelay__metric_slot__unpack(NULL, len, buf);
    if (m == NULL)
        return -EPROTO;
    int rc = -EPROTO;
    if (m->version < 1 || m->start_ms % RING_SLOT_MS != 0 || strlen(m->node) > RING_NODE_MAX)
        goto done;
    ring_slot_init(out, m->node, m->start_ms);
    out->updated_ms = m->updated_ms;
    for (size_t i = 0; i < m->n_endpoints; i++) {
        const Llmrelay__MetricEndpoint *ep = m->endpoints[i];
        int e = metrics_endpoint_from_name(ep->endpoint);
        if (e < 0)
            continue; /* an endpoint a newer release knows */
        for (size_t k = 0; k < ep->n_requests_by_class && k < METRICS_STATUS_CLASSES; k++)
            out->requests[e][k] += ep->requests_by_class[k];
        for (size_t b = 0; b < ep->n_latency_buckets && b < METRICS_BUCKETS; b++)
            out->latency[e][b] += ep->latency_buckets[b];
        out->latency_sum_us[e] += ep->latency_sum_us;
    }
    rc = -ENOMEM;
    for (size_t i = 0; i < m->n_models; i++) {
        ring_model_t *r = ring_slot_model(out, m->models[i]->model);
        if (r == NULL)
            goto fail;
        ring_model_t add = {
            .requests = m->models[i]->requests,
            .errors = m->models[i]->errors,
            .input_tokens = m->models[i]->input_tokens,
            .output_tokens = m->models[i]->output_tokens,
            .cached_input_tokens = m->models[i]->cached_input_tokens,
            .reasoning_tokens = m->models[i]->reasoning_tokens,
            .nano_usd = m->models[i]->nano_usd,
        };
        model_add(r, &add);
    }
    for (size_t i = 0; i < m->n_providers; i++) {
        ring_provider_t *p = ring_slot_provider(out, m->providers[i]->provider);
        if (p == NULL)
            goto fail;
        for (size_t k = 0; k < m->providers[i]->n_errors && k < METRICS_UPSTREAM_KIND_COUNT; k++)
            p->errors[k] += m->providers[i]->errors[k];
    }
    for (size_t i = 0; i < m->n_statuses; i++) {
        uint32_t st = m->statuses[i]->status;
        if (st >= METRICS_STATUS_MIN && st < METRICS_STATUS_MIN + METRICS_STATUS_CODES)
            out->statuses[st - METRICS_STATUS_MIN] += m->statuses[i]->count;
    }
    rc = 0;
    goto done;
fail:
    ring_slot_dispose(out);
done:
    llmrelay__metric_slot__free_unpacked(m, NULL);
    return rc;
}

/* ---- the node's ring ---- */

typedef struct pending {
    char key[KEY_MAX];
    int64_t start_ms;
    uint8_t *value;
    size_t len;
} pending_t;

typedef struct scan scan_t;
typedef struct query query_t;

struct metrics_ring {
    metrics_ring_options_t o;
    char prefix[KEY_MAX / 2], node[RING_NODE_MAX + 1];
    int64_t retention_ms;
    uv_timer_t tick;
    bool stopping, tick_closed;
    bool *done;
    int64_t stop_deadline;
    /* writer */
    ring_slot_t cur;
    bool cur_dirty; /* changed since its last queueing */
    bool loaded;    /* the current slot's earlier value (if any) was read back */
    bool load_busy, put_busy;
    int64_t last_fold_ms, last_queue_ms;
    pending_t pending[RING_MAX_PENDING];
    size_t n_pending;
    uint64_t puts, dropped;
    /* sweep */
    scan_t *sweep;
    int64_t last_sweep_ms; /* when this node last tried to sweep */
    uint64_t sweeps;       /* sweeps this node claimed */
    query_t *queries;      /* in flight */
};

static int64_t now_ms(const metrics_ring_t *r)
{
    return clock_now_ms(r->o.clock);
}

/* ---- writer ---- */

typedef struct fold_ctx {
    metrics_ring_t *r;
    const Llmrelay__Snapshot *snap;
    bool changed;
} fold_ctx_t;

static const Llmrelay__Price *find_price(const Llmrelay__Snapshot *snap, const char *model)
{
    for (size_t i = 0; snap != NULL && i < snap->n_prices; i++)
        if (snap->prices[i]->model != NULL && strcmp(snap->prices[i]->model, model) == 0)
            return snap->prices[i];
    return NULL;
}

/* The relay's own rule (relay.c cost_nanousd): cached input and reasoning at their rates. */
static int64_t price_nanousd(const Llmrelay__Price *p, const uint64_t t[METRICS_TOKEN_KINDS])
{
    if (p == NULL)
        return 0;
    double in = (double)t[0], out = (double)t[1];
    double cached = (double)t[2] < in ? (double)t[2] : in, reasoning = (double)t[3] < out ? (double)t[3] : out;
    double cached_rate = p->has_cached_input ? p->cached_input_per_mtok : p->input_per_mtok;
    double reasoning_rate = p->has_reasoning ? p->reasoning_per_mtok : p->output_per_mtok;
    double nano = ((in - cached) * p->input_per_mtok + cached * cached_rate + (out - reasoning) * p->output_per_mtok +
                   reasoning * reasoning_rate) *
                  1000.0;
    return (int64_t)(nano + 0.5);
}

static void fold_model(void *data, const char *name, const uint64_t requests[METRICS_EP_COUNT][METRICS_STATUS_CLASSES],
                       const uint64_t tokens[METRICS_TOKEN_KINDS])
{
    fold_ctx_t *f = data;
    ring_slot_t *s = &f->r->cur;
    ring_model_t *m = ring_slot_model(s, name);
    uint64_t n = 0, errors = 0;
    for (int e = 0; e < METRICS_EP_COUNT; e++)
        for (int k = 0; k < METRICS_STATUS_CLASSES; k++) {
            s->requests[e][k] += requests[e][k];
            n += requests[e][k];
            if (k >= 2)
                errors += requests[e][k];
        }
    f->changed = true;
    if (m == NULL)
        return; /* out of memory: the endpoint totals still count */
    m->requests += n;
    m->errors += errors;
    m->input_tokens += tokens[0];
    m->output_tokens += tokens[1];
    m->cached_input_tokens += tokens[2];
    m->reasoning_tokens += tokens[3];
    m->nano_usd += price_nanousd(find_price(f->snap, name), tokens);
}

static void fold_provider(void *data, const char *name, const uint64_t errors[METRICS_UPSTREAM_KIND_COUNT])
{
    fold_ctx_t *f = data;
    ring_provider_t *p = ring_slot_provider(&f->r->cur, name);
    f->changed = true;
    for (int k = 0; p != NULL && k < METRICS_UPSTREAM_KIND_COUNT; k++)
        p->errors[k] += errors[k];
}

static void fold_latency(void *data, metrics_endpoint_t e, const uint64_t buckets[METRICS_BUCKETS], uint64_t sum_us)
{
    fold_ctx_t *f = data;
    for (int b = 0; b < METRICS_BUCKETS; b++)
        f->r->cur.latency[e][b] += buckets[b];
    f->r->cur.latency_sum_us[e] += sum_us;
    f->changed = true;
}

static void fold_status(void *data, int status, uint64_t count)
{
    fold_ctx_t *f = data;
    if (status >= 400)
        f->r->cur.statuses[status - METRICS_STATUS_MIN] += count;
}

/* Adds what the counters gained since the last fold to the current slot. */
static void fold(metrics_ring_t *r, int64_t now)
{
    fold_ctx_t f = {.r = r, .snap = r->o.store != NULL ? config_store_current(r->o.store) : NULL};
    metrics_delta_visitor_t v = {
        .data = &f, .model = fold_model, .provider = fold_provider, .latency = fold_latency, .status = fold_status};
    if (metrics_take_delta(r->o.metrics, &v) != 0)
        return;
    r->last_fold_ms = now;
    if (f.changed) {
        r->cur.updated_ms = now;
        r->cur_dirty = true;
    }
}

/* Queues the current slot (replacing a queued older version of it). */
static void queue_current(metrics_ring_t *r, int64_t now)
{
    r->last_queue_ms = now;
    if (!r->cur_dirty)
        return;
    pending_t p = {.start_ms = r->cur.start_ms};
    if (ring_key(r->prefix, r->node, ring_slot_index(r->cur.start_ms), p.key, sizeof(p.key)) < 0 ||
        ring_slot_encode(&r->cur, &p.value, &p.len) != 0) {
        log_warn("metrics ring: cannot encode the slot; it is dropped");
        r->cur_dirty = false;
        return;
    }
    r->cur_dirty = false;
    /* The newest queued version of this slot is replaced (unless it is being put): versions
     * of one slot stay in order, so an older one never lands after a newer one. */
    for (size_t i = r->n_pending; i-- > 0;) {
        if (r->pending[i].start_ms != p.start_ms)
            continue;
        if (i == 0 && r->put_busy)
            break;
        free(r->pending[i].value);
        r->pending[i] = p;
        return;
    }
    if (r->n_pending == RING_MAX_PENDING) {
        size_t drop = r->put_busy ? 1 : 0; /* never the one being put */
        free(r->pending[drop].value);
        memmove(&r->pending[drop], &r->pending[drop + 1], (r->n_pending - drop - 1) * sizeof(pending_t));
        r->n_pending--;
        if (r->dropped++ % 100 == 0)
            log_warn("metrics ring: etcd does not take the slots; %llu dropped so far", (unsigned long long)r->dropped);
    }
    r->pending[r->n_pending++] = p;
}

static void put_next(metrics_ring_t *r);
static void maybe_finish(metrics_ring_t *r);
static void queue_current(metrics_ring_t *r, int64_t now);

static void on_put(etcd_client_t *c, int status, int64_t revision, void *data)
{
    (void)c;
    (void)revision;
    metrics_ring_t *r = data;
    r->put_busy = false;
    if (status == 0 && r->n_pending > 0) {
        r->puts++;
        free(r->pending[0].value);
        memmove(&r->pending[0], &r->pending[1], (r->n_pending - 1) * sizeof(pending_t));
        r->n_pending--;
        put_next(r);
    }
    maybe_finish(r);
}

static void put_next(metrics_ring_t *r)
{
    if (r->put_busy || r->n_pending == 0)
        return;
    pending_t *p = &r->pending[0];
    if (etcd_put(r->o.etcd, (const uint8_t *)p->key, strlen(p->key), p->value, p->len, 0, on_put, r) == 0)
        r->put_busy = true;
}

static void on_load(etcd_client_t *c, int status, int64_t revision, const etcd_kv_t *kvs, size_t n, bool more,
                    void *data)
{
    (void)c;
    (void)revision;
    (void)more;
    metrics_ring_t *r = data;
    r->load_busy = false;
    if (status != 0)
        return; /* retried on the next tick */
    ring_slot_t old;
    if (n > 0 && ring_slot_decode(kvs[0].value, kvs[0].value_len, &old) == 0) {
        if (old.start_ms == r->cur.start_ms && strcmp(old.node, r->node) == 0) {
            ring_slot_merge(&r->cur, &old);
            r->cur_dirty = true;
            log_info("metrics ring: slot %u read back (%llu requests so far)", ring_slot_index(old.start_ms),
                     (unsigned long long)ring_slot_requests(&old));
        }
        ring_slot_dispose(&old);
    }
    r->loaded = true;
}

static void start_load(metrics_ring_t *r)
{
    char key[KEY_MAX];
    int len = ring_key(r->prefix, r->node, ring_slot_index(r->cur.start_ms), key, sizeof(key));
    if (len > 0 && etcd_range(r->o.etcd, (const uint8_t *)key, (size_t)len, NULL, 0, 1, 0, on_load, r) == 0)
        r->load_busy = true;
}

static void on_tick(uv_timer_t *t)
{
    metrics_ring_t *r = t->data;
    int64_t now = now_ms(r), start = ring_slot_start(now);
    if (start != r->cur.start_ms) {
        fold(r, now); /* what came in up to now belongs to the slot that closes */
        queue_current(r, now);
        ring_slot_dispose(&r->cur);
        ring_slot_init(&r->cur, r->node, start);
        r->cur_dirty = false;
        r->loaded = true; /* a slot this node opens has no earlier value (a late read-back is ignored) */
    } else if (now - r->last_fold_ms >= RING_FLUSH_MS || r->last_fold_ms > now) {
        fold(r, now);
        if (r->loaded)
            queue_current(r, now);
    }
    if (!r->loaded && !r->load_busy)
        start_load(r);
    put_next(r);
    if (now - r->last_sweep_ms >= RING_SWEEP_MS || r->last_sweep_ms > now)
        metrics_ring_sweep(r);
}

uint64_t metrics_ring_puts(const metrics_ring_t *r)
{
    return r->puts;
}

/* ---- scanner: nodes by hops, then index runs in pages ---- */

typedef void (*scan_kv_cb)(scan_t *s, const char *node, const etcd_kv_t *kv);
typedef void (*scan_done_cb)(scan_t *s, int status);
/* Fills s->runs for a node. */
typedef void (*scan_runs_cb)(scan_t *s, const char *node);

struct scan {
    metrics_ring_t *r;
    void *owner;
    char only[RING_NODE_MAX + 1]; /* "" = every node */
    bool only_done;
    uint8_t hop[KEY_MAX];
    size_t hop_len;
    uint8_t end[KEY_MAX]; /* end of the metrics/ prefix */
    size_t end_len;
    char node[RING_NODE_MAX + 1];
    uint32_t runs[4][2];
    size_t n_runs, run;
    uint8_t page[KEY_MAX + 1];
    size_t page_len;
    scan_runs_cb runs_cb;
    scan_kv_cb kv_cb;
    scan_done_cb done_cb;
};

static void scan_next_node(scan_t *s);
static void scan_next_page(scan_t *s);

static void scan_finish(scan_t *s, int status)
{
    s->done_cb(s, status);
}

static void on_scan_page(etcd_client_t *c, int status, int64_t revision, const etcd_kv_t *kvs, size_t n, bool more,
                         void *data)
{
    (void)c;
    (void)revision;
    scan_t *s = data;
    if (status != 0) {
        scan_finish(s, status);
        return;
    }
    for (size_t i = 0; i < n; i++)
        s->kv_cb(s, s->node, &kvs[i]);
    if (more && n > 0 && kvs[n - 1].key_len < KEY_MAX) {
        memcpy(s->page, kvs[n - 1].key, kvs[n - 1].key_len);
        s->page[kvs[n - 1].key_len] = 0; /* the next key after it */
        s->page_len = kvs[n - 1].key_len + 1;
    } else {
        s->run++;
        s->page_len = 0;
    }
    scan_next_page(s);
}

static void scan_next_page(scan_t *s)
{
    while (s->run < s->n_runs) {
        char from[KEY_MAX], last[KEY_MAX + 1];
        int flen = ring_key(s->r->prefix, s->node, s->runs[s->run][0], from, sizeof(from));
        int llen = ring_key(s->r->prefix, s->node, s->runs[s->run][1], last, sizeof(last) - 1);
        if (flen < 0 || llen < 0) {
            s->run++;
            continue;
        }
        last[llen] = '\0'; /* exclusive end: just after the run's last key */
        const uint8_t *key = s->page_len > 0 ? s->page : (const uint8_t *)from;
        size_t klen = s->page_len > 0 ? s->page_len : (size_t)flen;
        int rc =
            etcd_range(s->r->o.etcd, key, klen, (const uint8_t *)last, (size_t)llen + 1, RING_PAGE, 0, on_scan_page, s);
        if (rc != 0)
            scan_finish(s, rc);
        return;
    }
    scan_next_node(s);
}

static void scan_begin_node(scan_t *s, const char *node)
{
    snprintf(s->node, sizeof(s->node), "%s", node);
    s->n_runs = s->run = s->page_len = 0;
    s->runs_cb(s, node);
    scan_next_page(s);
}

static void on_scan_hop(etcd_client_t *c, int status, int64_t revision, const etcd_kv_t *kvs, size_t n, bool more,
                        void *data)
{
    (void)c;
    (void)revision;
    (void)more;
    scan_t *s = data;
    if (status != 0) {
        scan_finish(s, status);
        return;
    }
    if (n == 0) {
        scan_finish(s, 0);
        return;
    }
    char node[RING_NODE_MAX + 1];
    uint32_t index;
    size_t plen = strlen(s->r->prefix) + 8;
    if (ring_key_parse(s->r->prefix, kvs[0].key, kvs[0].key_len, node, &index) != 0) {
        /* Not a slot key: step over it. */
        if (kvs[0].key_len >= KEY_MAX) {
            scan_finish(s, -EPROTO);
            return;
        }
        memcpy(s->hop, kvs[0].key, kvs[0].key_len);
        s->hop[kvs[0].key_len] = 0;
        s->hop_len = kvs[0].key_len + 1;
        scan_next_node(s);
        return;
    }
    /* Next hop: just past every "<prefix>metrics/<node>/..." key ('/' + 1 == '0'). */
    s->hop_len = (size_t)snprintf((char *)s->hop, sizeof(s->hop), "%.*s%s0", (int)plen, (const char *)kvs[0].key, node);
    scan_begin_node(s, node);
}

static void scan_next_node(scan_t *s)
{
    if (s->only[0] != '\0') {
        if (s->only_done) {
            scan_finish(s, 0);
            return;
        }
        s->only_done = true;
        scan_begin_node(s, s->only);
        return;
    }
    int rc = etcd_range(s->r->o.etcd, s->hop, s->hop_len, s->end, s->end_len, 1, 0, on_scan_hop, s);
    if (rc != 0)
        scan_finish(s, rc);
}

/* ---- sweep ---- */

typedef struct stale {
    char key[KEY_MAX];
    int64_t mod_revision;
} stale_t;

typedef struct sweep {
    scan_t scan; /* first: a scan_t * is a sweep_t * */
    int64_t now, cutoff, prev;
    stale_t *stale;
    size_t n_stale, cap_stale, next, batch_start;
    bool single;      /* a batch's guard failed: one key per txn from there on */
    int64_t lock_rev; /* mod_revision of our claim of the sweep lock */
    uint64_t deleted, read;
} sweep_t;

static size_t runs_add(uint32_t runs[4][2], size_t n, int64_t first, int64_t last)
{
    uint32_t r[2][2];
    size_t k = ring_index_runs(first, last, r);
    for (size_t i = 0; i < k && n < 4; i++, n++) {
        runs[n][0] = r[i][0];
        runs[n][1] = r[i][1];
    }
    return n;
}

size_t ring_sweep_runs(int64_t now_ms, int64_t prev_ms, int64_t retention_ms, uint32_t runs[4][2])
{
    int64_t cur = ring_slot_start(now_ms), ring_first = cur - (RING_SLOTS - 1) * RING_SLOT_MS;
    /* A: indexes whose slot started since the previous sweep: a value left there from an
     * earlier week has aged. B: this week's slots that passed the retention since then
     * (none when the retention is the whole ring). One slot of margin on each. */
    int64_t a_first = ring_slot_start(prev_ms) - RING_SLOT_MS;
    int64_t b_first = ring_slot_start(prev_ms - retention_ms) - RING_SLOT_MS;
    int64_t b_last = ring_slot_start(now_ms - retention_ms);
    size_t n = runs_add(runs, 0, a_first > ring_first ? a_first : ring_first, cur);
    if (b_last >= ring_first)
        n = runs_add(runs, n, b_first > ring_first ? b_first : ring_first, b_last);
    return n;
}

static void add_runs(scan_t *s, int64_t first, int64_t last)
{
    s->n_runs = runs_add(s->runs, s->n_runs, first, last);
}

static void sweep_runs(scan_t *s, const char *node)
{
    (void)node;
    sweep_t *w = (sweep_t *)s;
    s->n_runs = ring_sweep_runs(w->now, w->prev, s->r->retention_ms, s->runs);
}

static void sweep_kv(scan_t *s, const char *node, const etcd_kv_t *kv)
{
    (void)node;
    sweep_t *w = (sweep_t *)s;
    w->read++;
    ring_slot_t slot;
    bool stale = true; /* an undecodable value is no slot of ours either */
    if (ring_slot_decode(kv->value, kv->value_len, &slot) == 0) {
        stale = slot.start_ms < w->cutoff;
        ring_slot_dispose(&slot);
    }
    if (!stale || kv->key_len >= KEY_MAX)
        return;
    for (size_t i = 0; i < w->n_stale; i++)
        if (strlen(w->stale[i].key) == kv->key_len && memcmp(w->stale[i].key, kv->key, kv->key_len) == 0)
            return; /* the two runs overlap */
    if (w->n_stale == w->cap_stale) {
        size_t cap = w->cap_stale ? 2 * w->cap_stale : 64;
        stale_t *n = realloc(w->stale, cap * sizeof(*n));
        if (n == NULL)
            return;
        w->stale = n;
        w->cap_stale = cap;
    }
    stale_t *e = &w->stale[w->n_stale++];
    memcpy(e->key, kv->key, kv->key_len);
    e->key[kv->key_len] = '\0';
    e->mod_revision = kv->mod_revision;
}

static void sweep_free(sweep_t *w)
{
    if (w->scan.r->sweep == &w->scan)
        w->scan.r->sweep = NULL;
    free(w->stale);
    free(w);
}

static void sweep_delete_next(sweep_t *w);
static void sweep_release(sweep_t *w);

static void on_sweep_txn(etcd_client_t *c, int status, bool succeeded, int64_t revision,
                         const etcd_op_result_t *results, size_t n, void *data)
{
    (void)c;
    (void)revision;
    sweep_t *w = data;
    if (status != 0) {
        log_warn("metrics ring: sweep delete failed (%s)", strerror(-status));
        sweep_free(w);
        return;
    }
    for (size_t i = 0; succeeded && i < n; i++)
        w->deleted += (uint64_t)results[i].deleted;
    if (!succeeded && !w->single) {
        /* One of them was rewritten meanwhile: redo the batch one key per txn. */
        w->single = true;
        w->next = w->batch_start;
    }
    sweep_delete_next(w);
}

/* Deletes in batches, each delete guarded by the mod_revision that was read. A batch whose
 * guard fails (a node rewrote one of them) is retried one key per txn. */
static void sweep_delete_next(sweep_t *w)
{
    metrics_ring_t *r = w->scan.r;
    if (w->next >= w->n_stale) {
        if (w->deleted > 0 || w->read > 0)
            log_info("metrics ring: sweep read %llu slots, deleted %llu older than %lld ms",
                     (unsigned long long)w->read, (unsigned long long)w->deleted, (long long)r->retention_ms);
        sweep_release(w);
        return;
    }
    etcd_compare_t cmp[DELETE_BATCH];
    etcd_op_t ops[DELETE_BATCH];
    size_t n = 0, max = w->single ? 1 : DELETE_BATCH;
    w->batch_start = w->next;
    for (; n < max && w->next < w->n_stale; n++, w->next++) {
        stale_t *e = &w->stale[w->next];
        cmp[n] = (etcd_compare_t){.key = (const uint8_t *)e->key,
                                  .key_len = strlen(e->key),
                                  .target = ETCD_TARGET_MOD,
                                  .result = ETCD_CMP_EQUAL,
                                  .number = e->mod_revision};
        ops[n] = (etcd_op_t){.type = ETCD_OP_DELETE, .key = (const uint8_t *)e->key, .key_len = strlen(e->key)};
    }
    if (etcd_txn(r->o.etcd, cmp, n, ops, n, NULL, 0, on_sweep_txn, w) != 0)
        sweep_free(w);
}

static void sweep_done(scan_t *s, int status)
{
    sweep_t *w = (sweep_t *)s;
    if (status != 0) {
        log_warn("metrics ring: sweep stopped (%s)", strerror(-status));
        sweep_free(w);
        return;
    }
    sweep_delete_next(w);
}

/* The sweep lock, <prefix>metrics_sweep: one node per RING_SWEEP_MS sweeps for the
 * cluster (claim: a txn guarded by the lock's mod_revision), from where the last complete
 * sweep ended (swept_to_ms, written when it completes). A claimer that dies leaves
 * swept_to_ms behind, so the next one covers its window too. */
static int lock_key(const metrics_ring_t *r, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%smetrics_sweep", r->prefix);
    return n < 0 || (size_t)n >= cap ? -ENOBUFS : n;
}

static uint8_t *lock_value(const metrics_ring_t *r, int64_t swept_to, int64_t claimed, size_t *len)
{
    Llmrelay__MetricSweep m = LLMRELAY__METRIC_SWEEP__INIT;
    m.swept_to_ms = swept_to;
    m.claimed_ms = claimed;
    m.node = (char *)r->node;
    *len = llmrelay__metric_sweep__get_packed_size(&m);
    uint8_t *buf = malloc(*len + 1);
    if (buf != NULL)
        llmrelay__metric_sweep__pack(&m, buf);
    return buf;
}

static void on_release(etcd_client_t *c, int status, bool succeeded, int64_t revision, const etcd_op_result_t *results,
                       size_t n, void *data)
{
    (void)c;
    (void)revision;
    (void)results;
    (void)n;
    sweep_t *w = data;
    if (status != 0 || !succeeded)
        log_warn("metrics ring: the sweep's end was not recorded (%s)", status != 0 ? strerror(-status) : "lock moved");
    sweep_free(w);
}

/* Records that the ring is swept up to w->now (if the lock is still ours). */
static void sweep_release(sweep_t *w)
{
    metrics_ring_t *r = w->scan.r;
    char key[KEY_MAX];
    size_t len;
    int klen = lock_key(r, key, sizeof(key));
    uint8_t *val = klen > 0 ? lock_value(r, w->now, w->now, &len) : NULL;
    if (val == NULL) {
        sweep_free(w);
        return;
    }
    etcd_compare_t cmp = {.key = (const uint8_t *)key,
                          .key_len = (size_t)klen,
                          .target = ETCD_TARGET_MOD,
                          .result = ETCD_CMP_EQUAL,
                          .number = w->lock_rev};
    etcd_op_t op = {
        .type = ETCD_OP_PUT, .key = (const uint8_t *)key, .key_len = (size_t)klen, .value = val, .value_len = len};
    if (etcd_txn(r->o.etcd, &cmp, 1, &op, 1, NULL, 0, on_release, w) != 0)
        sweep_free(w);
    free(val);
}

static void on_claim(etcd_client_t *c, int status, bool succeeded, int64_t revision, const etcd_op_result_t *results,
                     size_t n, void *data)
{
    (void)c;
    (void)results;
    (void)n;
    sweep_t *w = data;
    if (status != 0 || !succeeded) { /* etcd down, or another node claimed it first */
        sweep_free(w);
        return;
    }
    w->lock_rev = revision;
    w->scan.r->sweeps++;
    scan_next_node(&w->scan);
}

static void on_lock_read(etcd_client_t *c, int status, int64_t revision, const etcd_kv_t *kvs, size_t n, bool more,
                         void *data)
{
    (void)c;
    (void)revision;
    (void)more;
    sweep_t *w = data;
    metrics_ring_t *r = w->scan.r;
    if (status != 0) {
        sweep_free(w);
        return;
    }
    int64_t swept_to = 0, claimed = 0, mod = 0;
    if (n > 0) {
        Llmrelay__MetricSweep *m = llmrelay__metric_sweep__unpack(NULL, kvs[0].value_len, kvs[0].value);
        if (m != NULL) {
            swept_to = m->swept_to_ms;
            claimed = m->claimed_ms;
            llmrelay__metric_sweep__free_unpacked(m, NULL);
        }
        mod = kvs[0].mod_revision;
    }
    if (claimed <= w->now && w->now - claimed < RING_SWEEP_MS / 2) {
        sweep_free(w); /* someone swept (or is sweeping) this period */
        return;
    }
    /* From where the last complete sweep ended; the whole ring when there was none (or
     * the clock went back). */
    w->prev = swept_to > 0 && swept_to <= w->now ? swept_to : w->now - RING_SPAN_MS;
    char key[KEY_MAX];
    size_t len;
    int klen = lock_key(r, key, sizeof(key));
    uint8_t *val = klen > 0 ? lock_value(r, swept_to, w->now, &len) : NULL;
    if (val == NULL) {
        sweep_free(w);
        return;
    }
    etcd_compare_t cmp = {.key = (const uint8_t *)key,
                          .key_len = (size_t)klen,
                          .target = ETCD_TARGET_MOD,
                          .result = ETCD_CMP_EQUAL,
                          .number = mod};
    etcd_op_t op = {
        .type = ETCD_OP_PUT, .key = (const uint8_t *)key, .key_len = (size_t)klen, .value = val, .value_len = len};
    if (etcd_txn(r->o.etcd, &cmp, 1, &op, 1, NULL, 0, on_claim, w) != 0)
        sweep_free(w);
    free(val);
}

void metrics_ring_sweep(metrics_ring_t *r)
{
    int64_t now = now_ms(r);
    r->last_sweep_ms = now;
    if (r->sweep != NULL || r->stopping)
        return;
    sweep_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return;
    w->scan.r = r;
    w->scan.owner = w;
    w->scan.hop_len = (size_t)snprintf((char *)w->scan.hop, sizeof(w->scan.hop), "%smetrics/", r->prefix);
    w->scan.end_len = etcd_prefix_end(w->scan.hop, w->scan.hop_len, w->scan.end);
    w->scan.runs_cb = sweep_runs;
    w->scan.kv_cb = sweep_kv;
    w->scan.done_cb = sweep_done;
    w->now = now;
    w->cutoff = now - r->retention_ms;
    char key[KEY_MAX];
    int klen = lock_key(r, key, sizeof(key));
    if (klen < 0 || etcd_range(r->o.etcd, (const uint8_t *)key, (size_t)klen, NULL, 0, 1, 0, on_lock_read, w) != 0) {
        free(w);
        return;
    }
    r->sweep = &w->scan;
}

/* ---- queries ---- */

typedef struct entry {
    char group[METRICS_NAME_MAX + 1]; /* node (metrics view) or group name (usage) */
    int64_t start_ms;                 /* metrics view: slot start */
    uint64_t requests, errors, input_tokens, output_tokens;
    int64_t nano_usd;
} entry_t;

struct query {
    scan_t scan; /* first */
    metrics_ring_query_t q;
    metrics_ring_answer_cb cb;
    void *ctx;
    int64_t now, cutoff;
    ring_slot_t totals;
    entry_t *entries;
    size_t n_entries, cap_entries;
    ring_slot_t *mine; /* this node's slots from memory */
    size_t n_mine;
    int64_t partial_start; /* mine's current slot lacks its value in etcd (not read back yet) */
    query_t *next;
};

static void query_unlink(query_t *q)
{
    for (query_t **p = &q->scan.r->queries; *p != NULL; p = &(*p)->next)
        if (*p == q) {
            *p = q->next;
            break;
        }
}

static void query_free(query_t *q)
{
    ring_slot_dispose(&q->totals);
    for (size_t i = 0; i < q->n_mine; i++)
        ring_slot_dispose(&q->mine[i]);
    free(q->mine);
    free(q->entries);
    free(q);
}

static void answer_error(metrics_ring_answer_cb cb, void *ctx, int status, const char *code, const char *msg)
{
    char body[256];
    int n = snprintf(body, sizeof(body), "{\"error\":{\"type\":\"api_error\",\"code\":\"%s\",\"message\":\"%s\"}}\n",
                     code, msg);
    cb(ctx, status, body, (size_t)n);
}

static entry_t *entry_add(query_t *q, const char *group, int64_t start_ms)
{
    if (q->n_entries == q->cap_entries) {
        size_t cap = q->cap_entries ? 2 * q->cap_entries : 64;
        entry_t *n = realloc(q->entries, cap * sizeof(*n));
        if (n == NULL)
            return NULL;
        q->entries = n;
        q->cap_entries = cap;
    }
    entry_t *e = &q->entries[q->n_entries++];
    memset(e, 0, sizeof(*e));
    snprintf(e->group, sizeof(e->group), "%s", group);
    e->start_ms = start_ms;
    return e;
}

static bool in_range(const query_t *q, int64_t start_ms)
{
    return start_ms >= q->cutoff && start_ms + RING_SLOT_MS > q->q.from_ms && start_ms < q->q.to_ms &&
           start_ms <= q->now;
}

static void query_add_slot(query_t *q, const ring_slot_t *s)
{
    if (!in_range(q, s->start_ms) || ring_slot_empty(s))
        return;
    ring_slot_merge(&q->totals, s);
    if (q->q.view == RING_VIEW_USAGE && q->q.by == RING_GROUP_MODEL) {
        for (size_t i = 0; i < s->n_models; i++) {
            entry_t *e = entry_add(q, s->models[i].name, 0);
            if (e == NULL)
                return;
            e->requests = s->models[i].requests;
            e->input_tokens = s->models[i].input_tokens;
            e->output_tokens = s->models[i].output_tokens;
            e->nano_usd = s->models[i].nano_usd;
        }
        return;
    }
    if (q->q.view == RING_VIEW_USAGE && q->q.by == RING_GROUP_NONE)
        return;
    char hour[32] = "";
    if (q->q.view == RING_VIEW_USAGE && q->q.by == RING_GROUP_HOUR)
        util_format_rfc3339(s->start_ms / HOUR_MS * 3600, hour);
    entry_t *e = entry_add(q, hour[0] != '\0' ? hour : s->node, q->q.view == RING_VIEW_METRICS ? s->start_ms : 0);
    if (e == NULL)
        return;
    e->requests = ring_slot_requests(s);
    for (size_t i = 0; i < s->n_models; i++) {
        e->errors += s->models[i].errors;
        e->input_tokens += s->models[i].input_tokens;
        e->output_tokens += s->models[i].output_tokens;
        e->nano_usd += s->models[i].nano_usd;
    }
}

static bool is_mine(const query_t *q, const char *node, int64_t start_ms)
{
    if (strcmp(node, q->scan.r->node) != 0)
        return false;
    for (size_t i = 0; i < q->n_mine; i++)
        if (q->mine[i].start_ms == start_ms)
            return start_ms != q->partial_start; /* disjoint counts: both are added */
    return false;
}

static void query_kv(scan_t *s, const char *node, const etcd_kv_t *kv)
{
    query_t *q = (query_t *)s;
    ring_slot_t slot;
    if (ring_slot_decode(kv->value, kv->value_len, &slot) != 0)
        return;
    if (strcmp(slot.node, node) == 0 && !is_mine(q, node, slot.start_ms))
        query_add_slot(q, &slot);
    ring_slot_dispose(&slot);
}

static void query_runs(scan_t *s, const char *node)
{
    (void)node;
    query_t *q = (query_t *)s;
    int64_t first = q->q.from_ms > q->cutoff ? q->q.from_ms : q->cutoff;
    int64_t last = q->q.to_ms - 1 < q->now ? q->q.to_ms - 1 : q->now;
    if (last >= first)
        add_runs(s, ring_slot_start(first), ring_slot_start(last));
}

static int cmp_entry(const void *a, const void *b)
{
    const entry_t *x = a, *y = b;
    if (x->start_ms != y->start_ms)
        return x->start_ms < y->start_ms ? -1 : 1;
    return strcmp(x->group, y->group);
}

/* Sorts and merges entries of the same (start, group). */
static void entries_merge(query_t *q)
{
    if (q->n_entries == 0)
        return;
    qsort(q->entries, q->n_entries, sizeof(entry_t), cmp_entry);
    size_t o = 0;
    for (size_t i = 1; i < q->n_entries; i++) {
        entry_t *d = &q->entries[o], *e = &q->entries[i];
        if (cmp_entry(d, e) == 0) {
            d->requests += e->requests;
            d->errors += e->errors;
            d->input_tokens += e->input_tokens;
            d->output_tokens += e->output_tokens;
            d->nano_usd += e->nano_usd;
        } else {
            q->entries[++o] = *e;
        }
    }
    q->n_entries = o + 1;
}

static void g_str(yajl_gen g, const char *s)
{
    yajl_gen_string(g, (const unsigned char *)s, strlen(s));
}

static void g_u64(yajl_gen g, const char *key, uint64_t v)
{
    char buf[24];
    if (key != NULL)
        g_str(g, key);
    int n = snprintf(buf, sizeof(buf), "%" PRIu64, v);
    yajl_gen_number(g, buf, (size_t)n);
}

static void g_usd(yajl_gen g, int64_t nano)
{
    char buf[40];
    g_str(g, "usd");
    /* micro-dollar precision, like the metadata records */
    int64_t micro = (nano + (nano >= 0 ? 500 : -500)) / 1000;
    int n = snprintf(buf, sizeof(buf), "%s%" PRId64 ".%06" PRId64, micro < 0 ? "-" : "",
                     (micro < 0 ? -micro : micro) / 1000000, (micro < 0 ? -micro : micro) % 1000000);
    yajl_gen_number(g, buf, (size_t)n);
}

static void g_time(yajl_gen g, const char *key, int64_t ms)
{
    char buf[32];
    g_str(g, key);
    if (util_format_rfc3339((ms >= 0 ? ms : ms - 999) / 1000, buf) == 0)
        g_str(g, buf);
    else
        yajl_gen_null(g);
}

static void g_sums(yajl_gen g, const entry_t *e, bool errors)
{
    g_u64(g, "requests", e->requests);
    if (errors)
        g_u64(g, "errors", e->errors);
    g_u64(g, "input_tokens", e->input_tokens);
    g_u64(g, "output_tokens", e->output_tokens);
    g_usd(g, e->nano_usd);
}

static entry_t slot_sums(const ring_slot_t *s)
{
    entry_t e = {.requests = ring_slot_requests(s)};
    for (size_t i = 0; i < s->n_models; i++) {
        e.errors += s->models[i].errors;
        e.input_tokens += s->models[i].input_tokens;
        e.output_tokens += s->models[i].output_tokens;
        e.nano_usd += s->models[i].nano_usd;
    }
    return e;
}

/* Upper bound (seconds) of the bucket holding quantile p; NULL when there is no request. */
static void g_quantile(yajl_gen g, const char *key, const uint64_t *buckets, uint64_t count, double p)
{
    g_str(g, key);
    if (count == 0) {
        yajl_gen_null(g);
        return;
    }
    uint64_t want = (uint64_t)((double)count * p + 0.999999), seen = 0;
    for (int b = 0; b < METRICS_BUCKETS; b++) {
        seen += buckets[b];
        if (seen >= want) {
            uint64_t us = metrics_bucket_bound_us(b);
            if (us == UINT64_MAX)
                g_str(g, "+Inf");
            else
                yajl_gen_double(g, (double)us / 1e6);
            return;
        }
    }
    yajl_gen_null(g);
}

static void gen_metrics(query_t *q, yajl_gen g)
{
    const ring_slot_t *t = &q->totals;
    entry_t sums = slot_sums(t);
    g_str(g, "totals");
    yajl_gen_map_open(g);
    g_sums(g, &sums, true);
    uint64_t cached = 0, reasoning = 0;
    for (size_t i = 0; i < t->n_models; i++) {
        cached += t->models[i].cached_input_tokens;
        reasoning += t->models[i].reasoning_tokens;
    }
    g_u64(g, "cached_input_tokens", cached);
    g_u64(g, "reasoning_tokens", reasoning);
    g_str(g, "status_classes");
    yajl_gen_map_open(g);
    for (int k = 0; k < METRICS_STATUS_CLASSES; k++) {
        uint64_t n = 0;
        for (int e = 0; e < METRICS_EP_COUNT; e++)
            n += t->requests[e][k];
        g_u64(g, class_label[k], n);
    }
    yajl_gen_map_close(g);
    g_str(g, "statuses");
    yajl_gen_map_open(g);
    for (int i = 0; i < METRICS_STATUS_CODES; i++) {
        if (t->statuses[i] == 0)
            continue;
        char code[8];
        snprintf(code, sizeof(code), "%d", METRICS_STATUS_MIN + i);
        g_u64(g, code, t->statuses[i]);
    }
    yajl_gen_map_close(g);
    uint64_t buckets[METRICS_BUCKETS] = {0}, count = 0, sum_us = 0;
    g_str(g, "endpoints");
    yajl_gen_map_open(g);
    for (int e = 0; e < METRICS_EP_COUNT; e++) {
        uint64_t n = 0;
        for (int k = 0; k < METRICS_STATUS_CLASSES; k++)
            n += t->requests[e][k];
        for (int b = 0; b < METRICS_BUCKETS; b++) {
            buckets[b] += t->latency[e][b];
            count += t->latency[e][b];
        }
        sum_us += t->latency_sum_us[e];
        if (n == 0)
            continue;
        g_str(g, metrics_endpoint_name((metrics_endpoint_t)e));
        yajl_gen_map_open(g);
        g_u64(g, "requests", n);
        for (int k = 0; k < METRICS_STATUS_CLASSES; k++)
            g_u64(g, class_label[k], t->requests[e][k]);
        yajl_gen_map_close(g);
    }
    yajl_gen_map_close(g);
    g_str(g, "latency");
    yajl_gen_map_open(g);
    g_u64(g, "count", count);
    g_str(g, "sum_seconds");
    yajl_gen_double(g, (double)sum_us / 1e6);
    g_quantile(g, "p50", buckets, count, 0.50);
    g_quantile(g, "p90", buckets, count, 0.90);
    g_quantile(g, "p99", buckets, count, 0.99);
    g_str(g, "buckets");
    yajl_gen_array_open(g);
    for (int b = 0; b < METRICS_BUCKETS; b++) {
        yajl_gen_map_open(g);
        g_str(g, "le");
        uint64_t us = metrics_bucket_bound_us(b);
        if (us == UINT64_MAX)
            g_str(g, "+Inf");
        else
            yajl_gen_double(g, (double)us / 1e6);
        g_u64(g, "count", buckets[b]);
        yajl_gen_map_close(g);
    }
    yajl_gen_array_close(g);
    yajl_gen_map_close(g);
    g_str(g, "models");
    yajl_gen_array_open(g);
    for (size_t i = 0; i < t->n_models; i++) {
        const ring_model_t *m = &t->models[i];
        yajl_gen_map_open(g);
        g_str(g, "model");
        g_str(g, m->name);
        entry_t e = {.requests = m->requests,
                     .errors = m->errors,
                     .input_tokens = m->input_tokens,
                     .output_tokens = m->output_tokens,
                     .nano_usd = m->nano_usd};
        g_sums(g, &e, true);
        yajl_gen_map_close(g);
    }
    yajl_gen_array_close(g);
    g_str(g, "upstream_errors");
    yajl_gen_array_open(g);
    for (size_t i = 0; i < t->n_providers; i++) {
        yajl_gen_map_open(g);
        g_str(g, "provider");
        g_str(g, t->providers[i].name);
        for (int k = 0; k < METRICS_UPSTREAM_KIND_COUNT; k++)
            g_u64(g, kind_label[k], t->providers[i].errors[k]);
        yajl_gen_map_close(g);
    }
    yajl_gen_array_close(g);
    yajl_gen_map_close(g);
    /* nodes: every node with a slot in the range */
    g_str(g, "nodes");
    yajl_gen_array_open(g);
    for (size_t i = 0; i < q->n_entries; i++) {
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(q->entries[j].group, q->entries[i].group) == 0;
        if (!seen)
            g_str(g, q->entries[i].group);
    }
    yajl_gen_array_close(g);
    g_str(g, "slots");
    yajl_gen_array_open(g);
    for (size_t i = 0; i < q->n_entries; i++) {
        yajl_gen_map_open(g);
        g_str(g, "node");
        g_str(g, q->entries[i].group);
        g_time(g, "start", q->entries[i].start_ms);
        g_u64(g, "start_ms", (uint64_t)q->entries[i].start_ms);
        g_sums(g, &q->entries[i], true);
        yajl_gen_map_close(g);
    }
    yajl_gen_array_close(g);
}

static void gen_usage(query_t *q, yajl_gen g)
{
    entry_t sums = slot_sums(&q->totals);
    g_str(g, "totals");
    yajl_gen_map_open(g);
    g_sums(g, &sums, false);
    yajl_gen_map_close(g);
    g_str(g, "groups");
    yajl_gen_array_open(g);
    for (size_t i = 0; i < q->n_entries; i++) {
        yajl_gen_map_open(g);
        g_str(g, "group");
        g_str(g, q->entries[i].group);
        g_sums(g, &q->entries[i], false);
        yajl_gen_map_close(g);
    }
    yajl_gen_array_close(g);
    g_str(g, "source");
    g_str(g, "metrics_ring");
}

static void query_done(scan_t *s, int status)
{
    query_t *q = (query_t *)s;
    query_unlink(q);
    if (status != 0) {
        answer_error(q->cb, q->ctx, 503, "not_available", "etcd cannot be read now");
        query_free(q);
        return;
    }
    for (size_t i = 0; i < q->n_mine; i++)
        query_add_slot(q, &q->mine[i]);
    entries_merge(q);
    yajl_gen g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        answer_error(q->cb, q->ctx, 500, "internal_error", "out of memory");
        query_free(q);
        return;
    }
    yajl_gen_map_open(g);
    int64_t from = q->q.from_ms > q->cutoff ? q->q.from_ms : q->cutoff;
    g_time(g, "from", from);
    g_time(g, "to", q->q.to_ms);
    if (q->q.view == RING_VIEW_METRICS)
        gen_metrics(q, g);
    else
        gen_usage(q, g);
    yajl_gen_map_close(g);
    const unsigned char *buf;
    size_t len;
    if (yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok)
        q->cb(q->ctx, 200, (const char *)buf, len);
    else
        answer_error(q->cb, q->ctx, 500, "internal_error", "cannot write the answer");
    yajl_gen_free(g);
    query_free(q);
}

void metrics_ring_query(metrics_ring_t *r, const metrics_ring_query_t *mq, metrics_ring_answer_cb cb, void *ctx)
{
    if (r == NULL || r->stopping) {
        answer_error(cb, ctx, 503, "not_available", "the metrics ring is not running");
        return;
    }
    query_t *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        answer_error(cb, ctx, 500, "internal_error", "out of memory");
        return;
    }
    q->q = *mq;
    q->cb = cb;
    q->ctx = ctx;
    q->now = now_ms(r);
    q->cutoff = q->now - r->retention_ms;
    ring_slot_init(&q->totals, "", 0);
    /* This node's slots come from memory: the current one with what it counted up to now,
     * and those still waiting for etcd. */
    bool want_mine = mq->node[0] == '\0' || strcmp(mq->node, r->node) == 0;
    if (want_mine) {
        fold(r, q->now);
        q->partial_start = r->loaded ? -1 : r->cur.start_ms;
        q->mine = calloc(r->n_pending + 1, sizeof(*q->mine));
        if (q->mine != NULL) {
            if (r->cur.start_ms != 0) {
                ring_slot_init(&q->mine[q->n_mine], r->node, r->cur.start_ms);
                if (ring_slot_merge(&q->mine[q->n_mine], &r->cur) == 0)
                    q->n_mine++;
                else
                    ring_slot_dispose(&q->mine[q->n_mine]);
            }
            for (size_t i = 0; i < r->n_pending; i++) {
                if (r->pending[i].start_ms == r->cur.start_ms)
                    continue;
                if (ring_slot_decode(r->pending[i].value, r->pending[i].len, &q->mine[q->n_mine]) == 0)
                    q->n_mine++;
            }
        }
    }
    q->scan.r = r;
    q->scan.owner = q;
    snprintf(q->scan.only, sizeof(q->scan.only), "%s", mq->node);
    q->scan.hop_len = (size_t)snprintf((char *)q->scan.hop, sizeof(q->scan.hop), "%smetrics/", r->prefix);
    q->scan.end_len = etcd_prefix_end(q->scan.hop, q->scan.hop_len, q->scan.end);
    q->scan.runs_cb = query_runs;
    q->scan.kv_cb = query_kv;
    q->scan.done_cb = query_done;
    q->next = r->queries;
    r->queries = q;
    scan_next_node(&q->scan);
}

/* ---- start / stop ---- */

int metrics_ring_start(const metrics_ring_options_t *o, metrics_ring_t **out)
{
    *out = NULL;
    if (o->loop == NULL || o->etcd == NULL || o->prefix == NULL || o->node == NULL || o->clock == NULL ||
        o->metrics == NULL || strlen(o->node) == 0 || strlen(o->node) > RING_NODE_MAX ||
        strlen(o->prefix) >= KEY_MAX / 2)
        return -EINVAL;
    metrics_ring_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -ENOMEM;
    r->o = *o;
    snprintf(r->prefix, sizeof(r->prefix), "%s", o->prefix);
    snprintf(r->node, sizeof(r->node), "%s", o->node);
    r->retention_ms = o->retention_ms > 0 && o->retention_ms < RING_SPAN_MS ? o->retention_ms : RING_SPAN_MS;
    int64_t now = now_ms(r);
    ring_slot_init(&r->cur, r->node, ring_slot_start(now));
    r->last_fold_ms = now;
    uv_timer_init(o->loop, &r->tick);
    r->tick.data = r;
    uv_timer_start(&r->tick, on_tick, TICK_MS, TICK_MS);
    uv_unref((uv_handle_t *)&r->tick);
    start_load(r);
    metrics_ring_sweep(r);
    *out = r;
    return 0;
}

static void on_tick_closed(uv_handle_t *h)
{
    metrics_ring_t *r = h->data;
    r->tick_closed = true;
    bool *done = r->done;
    for (size_t i = 0; i < r->n_pending; i++)
        free(r->pending[i].value);
    ring_slot_dispose(&r->cur);
    log_info("metrics ring: stopped after %llu puts", (unsigned long long)r->puts);
    free(r);
    if (done != NULL)
        *done = true;
}

static void finish_close(metrics_ring_t *r)
{
    if (uv_is_closing((uv_handle_t *)&r->tick))
        return;
    etcd_cancel_data(r->o.etcd, r);
    r->put_busy = false;
    if (r->n_pending > 0)
        log_warn("metrics ring: %zu slots not written at exit", r->n_pending);
    uv_close((uv_handle_t *)&r->tick, on_tick_closed);
}

/* While stopping: done once the queue is empty or nothing can be sent. */
static void maybe_finish(metrics_ring_t *r)
{
    if (!r->stopping || uv_is_closing((uv_handle_t *)&r->tick))
        return;
    put_next(r);
    if (r->n_pending == 0 || !r->put_busy)
        finish_close(r);
}

static void on_stop_tick(uv_timer_t *t)
{
    metrics_ring_t *r = t->data;
    if (uv_now(r->o.loop) >= (uint64_t)r->stop_deadline)
        finish_close(r);
}

void metrics_ring_stop(metrics_ring_t *r, bool *done)
{
    if (r == NULL) {
        *done = true;
        return;
    }
    int64_t now = now_ms(r);
    fold(r, now);
    if (r->loaded || r->cur_dirty)
        queue_current(r, now);
    r->stopping = true;
    r->done = done;
    while (r->queries != NULL) {
        query_t *q = r->queries;
        r->queries = q->next;
        etcd_cancel_data(r->o.etcd, &q->scan);
        answer_error(q->cb, q->ctx, 503, "not_available", "the node is stopping");
        query_free(q);
    }
    if (r->sweep != NULL) {
        etcd_cancel_data(r->o.etcd, r->sweep);
        sweep_free((sweep_t *)r->sweep);
    }
    r->stop_deadline = (int64_t)uv_now(r->o.loop) + STOP_MS;
    uv_ref((uv_handle_t *)&r->tick);
    uv_timer_start(&r->tick, on_stop_tick, 50, 50);
    maybe_finish(r);
}
