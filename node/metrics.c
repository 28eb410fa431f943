/* metrics.c — per-worker counters (single writer, relaxed atomics) summed by the main thread
 * into the Prometheus text exposition format 0.0.4.
 *
 * A shard is one cache-aligned block sized for every slot: per model slot the requests by
 * endpoint and status class plus four token counters (256 bytes), per provider slot the
 * upstream errors by kind, per endpoint the two histograms (non-cumulative bucket counts and
 * a sum in microseconds, so no floating-point atomics are needed), and the open-stream gauge.
 * Recording is a few atomic_fetch_add_explicit(..., memory_order_relaxed): a reader may see
 * one counter of a request before another, never a torn or lost value.
 *
 * The registry (slot -> name, active or retired, retirement time) and the per-slot baselines
 * belong to the main thread; see metrics.h for how slots survive config changes. Rendering
 * sums the shards into main-thread scratch arrays first (one pass per shard, in memory
 * order), subtracts the baselines, then formats. A histogram's _count is its +Inf bucket, so
 * the two always agree. Label values are escaped (backslash, quote, newline) even though
 * config validation already forbids those characters. */
#include "node/metrics.h"
#include "node/util.h"

#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define MODEL_SLOTS (METRICS_MAX_MODELS + 1)
#define PROVIDER_SLOTS (METRICS_MAX_PROVIDERS + 1)
#define STATUS_CLASSES METRICS_STATUS_CLASSES
#define TOKEN_KINDS METRICS_TOKEN_KINDS
#define BUCKETS METRICS_BUCKETS
#define LINE_MAX_BYTES (2 * METRICS_NAME_MAX + 256)

static const uint64_t bucket_bound_us[BUCKETS - 1] = {
    5000,    10000,   25000,    50000,    100000,   250000,    500000,    1000000,
    2500000, 5000000, 10000000, 30000000, 60000000, 120000000, 300000000,
};
static const char *const bucket_label[BUCKETS] = {
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "120", "300", "+Inf",
};
static const char *const endpoint_names[METRICS_EP_COUNT] = {
    "chat.completions", "completions", "embeddings", "responses", "models", "messages", "generate_content",
};
static const char *const class_names[STATUS_CLASSES] = {"2xx", "3xx", "4xx", "5xx"};
static const char *const kind_names[METRICS_UPSTREAM_KIND_COUNT] = {
    "connect", "timeout", "status_5xx", "status_429", "protocol",
};
static const struct {
    const char *name, *help;
} token_families[TOKEN_KINDS] = {
    {"llmrelay_input_tokens_total", "Input tokens billed, by model (cached input tokens included)."},
    {"llmrelay_output_tokens_total", "Output tokens billed, by model (reasoning tokens included)."},
    {"llmrelay_cached_input_tokens_total", "Cached input tokens, by model."},
    {"llmrelay_reasoning_tokens_total", "Reasoning tokens, by model."},
};

/* ---- shards ---- */

typedef struct model_counters {
    _Atomic uint64_t requests[METRICS_EP_COUNT][STATUS_CLASSES];
    _Atomic uint64_t tokens[TOKEN_KINDS];
} model_counters_t;

typedef struct histogram {
    _Atomic uint64_t buckets[BUCKETS]; /* non-cumulative */
    _Atomic uint64_t sum_us;
} histogram_t;

struct metrics_shard {
    model_counters_t models[MODEL_SLOTS];
    _Atomic uint64_t upstream[PROVIDER_SLOTS][METRICS_UPSTREAM_KIND_COUNT];
    histogram_t duration[METRICS_EP_COUNT], ttfb[METRICS_EP_COUNT];
    _Atomic int64_t open_streams;
    _Atomic uint64_t statuses[METRICS_STATUS_CODES]; /* by exact status, for the ring */
};

/* Plain mirrors of the counters, for sums and baselines (main thread). */
typedef struct model_totals {
    uint64_t requests[METRICS_EP_COUNT][STATUS_CLASSES];
    uint64_t tokens[TOKEN_KINDS];
} model_totals_t;

typedef struct histogram_totals {
    uint64_t buckets[BUCKETS];
    uint64_t sum_us;
} histogram_totals_t;

/* ---- names ---- */

typedef struct name_entry {
    const char *name; /* NULL: empty entry */
    uint32_t len;
    uint32_t value;
} name_entry_t;

/* Open addressing, linear probing, never more than half full. */
typedef struct name_map {
    name_entry_t *entries;
    size_t mask;
} name_map_t;

typedef struct registry {
    size_t cap;                          /* named slots */
    char (*names)[METRICS_NAME_MAX + 1]; /* per slot; "" = never used */
    uint16_t *lens;
    bool *active;
    int64_t *retired_ms;
    size_t next_unused;
    uint16_t *order; /* active slots sorted by name */
    size_t n_order;
} registry_t;

struct metrics_names {
    atomic_long refs;
    uint16_t *model_slots, *provider_slots; /* by input index */
    size_t n_models, n_providers;
    name_map_t models, providers;
    char *arena; /* the names the maps point to */
};

struct metrics {
    int n_shards;
    metrics_shard_t **shards;
    char version[METRICS_VERSION_MAX + 1];
    atomic_int etcd_reachable;
    _Atomic int64_t config_revision;
    registry_t models, providers;
    model_totals_t *model_base, *model_sum;                 /* [MODEL_SLOTS] */
    uint64_t (*provider_base)[METRICS_UPSTREAM_KIND_COUNT]; /* [PROVIDER_SLOTS] */
    uint64_t (*provider_sum)[METRICS_UPSTREAM_KIND_COUNT];  /* [PROVIDER_SLOTS] */
    struct delta_prev *prev; /* metrics_take_delta's last sums; NULL until its first call */
};

/* What metrics_take_delta saw last time (raw shard sums, no baselines). */
typedef struct delta_prev {
    model_totals_t models[MODEL_SLOTS], cur_model;
    uint64_t providers[PROVIDER_SLOTS][METRICS_UPSTREAM_KIND_COUNT];
    histogram_totals_t latency[METRICS_EP_COUNT];
    uint64_t statuses[METRICS_STATUS_CODES];
} delta_prev_t;

static uint64_t name_hash(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static int map_init(name_map_t *m, size_t n)
{
    size_t cap = 8;
    while (cap < 2 * n)
        cap *= 2;
    m->entries = calloc(cap, sizeof(*m->entries));
    m->mask = cap - 1;
    return m->entries == NULL ? -ENOMEM : 0;
}

static void map_free(name_map_t *m)
{
    free(m->entries);
    m->entries = NULL;
}

/* True and *value if name is in the map. */
static bool map_find(const name_map_t *m, const char *name, size_t len, uint32_t *value)
{
    if (m->entries == NULL)
        return false;
    for (size_t i = name_hash(name, len) & m->mask;; i = (i + 1) & m->mask) {
        const name_entry_t *e = &m->entries[i];
        if (e->name == NULL)
            return false;
        if (e->len == len && memcmp(e->name, name, len) == 0) {
            *value = e->value;
            return true;
        }
    }
}

/* name must be absent and the map sized for it; name is borrowed for the map's lifetime. */
static void map_put(name_map_t *m, const char *name, size_t len, uint32_t value)
{
    size_t i = name_hash(name, len) & m->mask;
    while (m->entries[i].name != NULL)
        i = (i + 1) & m->mask;
    m->entries[i] = (name_entry_t){name, (uint32_t)len, value};
}

static size_t valid_len(const char *name)
{
    if (name == NULL)
        return 0;
    size_t len = strnlen(name, METRICS_NAME_MAX + 1);
    return len > METRICS_NAME_MAX ? 0 : len;
}

static int registry_init(registry_t *r, size_t cap)
{
    r->cap = cap;
    r->names = calloc(cap, sizeof(*r->names));
    r->lens = calloc(cap, sizeof(*r->lens));
    r->active = calloc(cap, sizeof(*r->active));
    r->retired_ms = calloc(cap, sizeof(*r->retired_ms));
    r->order = calloc(cap, sizeof(*r->order));
    if (r->names == NULL || r->lens == NULL || r->active == NULL || r->retired_ms == NULL || r->order == NULL)
        return -ENOMEM;
    return 0;
}

static void registry_free(registry_t *r)
{
    free(r->names);
    free(r->lens);
    free(r->active);
    free(r->retired_ms);
    free(r->order);
}

/* A slot for a new name: a never-used one, else the retired one retired longest ago if its
 * quarantine is over; -1 if none. */
static int registry_alloc(registry_t *r, int64_t now_ms)
{
    if (r->next_unused < r->cap)
        return (int)r->next_unused++;
    int best = -1;
    for (size_t i = 0; i < r->cap; i++) {
        if (r->active[i] || now_ms - r->retired_ms[i] < METRICS_SLOT_QUARANTINE_MS)
            continue;
        if (best < 0 || r->retired_ms[i] < r->retired_ms[best])
            best = (int)i;
    }
    return best;
}

static int order_cmp(const void *a, const void *b, void *arg)
{
    const registry_t *r = arg;
    return strcmp(r->names[*(const uint16_t *)a], r->names[*(const uint16_t *)b]);
}

static void registry_sort(registry_t *r)
{
    r->n_order = 0;
    for (size_t i = 0; i < r->cap; i++)
        if (r->active[i])
            r->order[r->n_order++] = (uint16_t)i;
    qsort_r(r->order, r->n_order, sizeof(*r->order), order_cmp, r);
}

/* ---- totals ---- */

static inline uint64_t load(_Atomic uint64_t *p)
{
    return atomic_load_explicit(p, memory_order_relaxed);
}

static inline void add(_Atomic uint64_t *p, uint64_t v)
{
    atomic_fetch_add_explicit(p, v, memory_order_relaxed);
}

static void model_slot_sum(metrics_t *m, size_t slot, model_totals_t *t)
{
    memset(t, 0, sizeof(*t));
    for (int s = 0; s < m->n_shards; s++) {
        model_counters_t *c = &m->shards[s]->models[slot];
        for (int e = 0; e < METRICS_EP_COUNT; e++)
            for (int k = 0; k < STATUS_CLASSES; k++)
                t->requests[e][k] += load(&c->requests[e][k]);
        for (int k = 0; k < TOKEN_KINDS; k++)
            t->tokens[k] += load(&c->tokens[k]);
    }
}

static void provider_slot_sum(metrics_t *m, size_t slot, uint64_t t[METRICS_UPSTREAM_KIND_COUNT])
{
    memset(t, 0, METRICS_UPSTREAM_KIND_COUNT * sizeof(uint64_t));
    for (int s = 0; s < m->n_shards; s++)
        for (int k = 0; k < METRICS_UPSTREAM_KIND_COUNT; k++)
            t[k] += load(&m->shards[s]->upstream[slot][k]);
}

static uint64_t above(uint64_t v, uint64_t base)
{
    return v > base ? v - base : 0;
}

/* ---- main thread API ---- */

int metrics_create(metrics_t **out, int n_shards, const char *version)
{
    *out = NULL;
    if (n_shards < 1 || n_shards > METRICS_MAX_SHARDS || version == NULL)
        return -EINVAL;
    metrics_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return -ENOMEM;
    size_t vlen = strnlen(version, METRICS_VERSION_MAX);
    memcpy(m->version, version, vlen);
    atomic_init(&m->etcd_reachable, 0);
    atomic_init(&m->config_revision, 0);
    m->shards = calloc((size_t)n_shards, sizeof(*m->shards));
    m->model_base = calloc(MODEL_SLOTS, sizeof(*m->model_base));
    m->model_sum = calloc(MODEL_SLOTS, sizeof(*m->model_sum));
    m->provider_base = calloc(PROVIDER_SLOTS, sizeof(*m->provider_base));
    m->provider_sum = calloc(PROVIDER_SLOTS, sizeof(*m->provider_sum));
    int rc = registry_init(&m->models, METRICS_MAX_MODELS);
    if (rc == 0)
        rc = registry_init(&m->providers, METRICS_MAX_PROVIDERS);
    if (rc == 0 && (m->shards == NULL || m->model_base == NULL || m->model_sum == NULL || m->provider_base == NULL ||
                    m->provider_sum == NULL))
        rc = -ENOMEM;
    /* Each shard its own cache-aligned block: workers never write a line another one writes. */
    size_t shard_size = (sizeof(metrics_shard_t) + 63) & ~(size_t)63;
    for (int i = 0; rc == 0 && i < n_shards; i++) {
        m->shards[i] = aligned_alloc(64, shard_size);
        if (m->shards[i] == NULL) {
            rc = -ENOMEM;
            break;
        }
        memset(m->shards[i], 0, shard_size); /* all-zero is a valid zero for these atomics */
        m->n_shards = i + 1;
    }
    if (rc != 0) {
        metrics_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void metrics_free(metrics_t *m)
{
    if (m == NULL)
        return;
    for (int i = 0; i < m->n_shards; i++)
        free(m->shards[i]);
    free(m->shards);
    free(m->model_base);
    free(m->model_sum);
    free(m->provider_base);
    free(m->provider_sum);
    registry_free(&m->models);
    registry_free(&m->providers);
    free(m->prev);
    free(m);
}

metrics_shard_t *metrics_shard(metrics_t *m, int i)
{
    assert(i >= 0 && i < m->n_shards);
    return m->shards[i];
}

void metrics_set_etcd_reachable(metrics_t *m, bool reachable)
{
    atomic_store_explicit(&m->etcd_reachable, reachable ? 1 : 0, memory_order_relaxed);
}

void metrics_set_config_revision(metrics_t *m, int64_t revision)
{
    atomic_store_explicit(&m->config_revision, revision, memory_order_relaxed);
}

/* Temporary maps of one registry update, allocated before anything changes. */
typedef struct update_maps {
    name_map_t wanted;   /* names of the new config -> index of their first occurrence */
    name_map_t existing; /* registry names -> slot, as before the update */
} update_maps_t;

static int update_maps_init(update_maps_t *u, const registry_t *r, size_t n)
{
    if (map_init(&u->wanted, n) != 0 || map_init(&u->existing, r->next_unused) != 0)
        return -ENOMEM;
    for (size_t i = 0; i < r->next_unused; i++)
        map_put(&u->existing, r->names[i], r->lens[i], (uint32_t)i);
    return 0;
}

static void update_maps_free(update_maps_t *u)
{
    map_free(&u->wanted);
    map_free(&u->existing);
}

enum registry_kind { KIND_MODELS, KIND_PROVIDERS };

/* Applies one config's names to a registry (cannot fail: maps are ready) and writes the slot
 * of each input name to slots[]. Names already known are (re)activated before any slot is
 * reused, so a returning name cannot lose its slot to a new one. */
static void registry_apply(metrics_t *m, enum registry_kind kind, update_maps_t *u, const char *const *names, size_t n,
                           int64_t now_ms, uint16_t *slots)
{
    registry_t *r = kind == KIND_MODELS ? &m->models : &m->providers;
    const uint16_t other = (uint16_t)r->cap;
    uint32_t v;
    for (size_t i = 0; i < n; i++) {
        size_t len = valid_len(names[i]);
        if (len > 0 && !map_find(&u->wanted, names[i], len, &v))
            map_put(&u->wanted, names[i], len, (uint32_t)i);
    }
    for (size_t i = 0; i < r->cap; i++) {
        if (r->active[i] && !map_find(&u->wanted, r->names[i], r->lens[i], &v)) {
            r->active[i] = false;
            r->retired_ms[i] = now_ms;
        }
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = valid_len(names[i]);
        slots[i] = other;
        if (len > 0 && map_find(&u->existing, names[i], len, &v)) {
            r->active[v] = true;
            slots[i] = (uint16_t)v;
        }
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = valid_len(names[i]);
        if (len == 0 || slots[i] != other)
            continue;
        if (!map_find(&u->wanted, names[i], len, &v))
            continue; /* every valid name was put in wanted above */
        if (v != i) { /* a duplicate: the first occurrence has been handled */
            slots[i] = slots[v];
            continue;
        }
        int slot = registry_alloc(r, now_ms);
        if (slot < 0)
            continue; /* full: counts as "other" until a retired slot's quarantine ends */
        /* The slot's counts so far belong to its previous name (or are 0). */
        if (kind == KIND_MODELS)
            model_slot_sum(m, (size_t)slot, &m->model_base[slot]);
        else
            provider_slot_sum(m, (size_t)slot, m->provider_base[slot]);
        memcpy(r->names[slot], names[i], len);
        r->names[slot][len] = '\0';
        r->lens[slot] = (uint16_t)len;
        r->active[slot] = true;
        slots[i] = (uint16_t)slot;
    }
    registry_sort(r);
}

/* Fills a names table map with the input names that got a slot (copied into arena). */
static void table_fill(name_map_t *map, const char *const *names, const uint16_t *slots, size_t n, uint16_t other,
                       char **arena)
{
    for (size_t i = 0; i < n; i++) {
        if (slots[i] == other)
            continue;
        size_t len = valid_len(names[i]);
        uint32_t v;
        if (map_find(map, names[i], len, &v))
            continue;
        memcpy(*arena, names[i], len);
        map_put(map, *arena, len, slots[i]);
        *arena += len;
    }
}

int metrics_names_update(metrics_t *m, const char *const *models, size_t n_models, const char *const *providers,
                         size_t n_providers, int64_t now_ms, metrics_names_t **out)
{
    *out = NULL;
    size_t arena_len = 1;
    for (size_t i = 0; i < n_models; i++)
        arena_len += valid_len(models[i]);
    for (size_t i = 0; i < n_providers; i++)
        arena_len += valid_len(providers[i]);
    metrics_names_t *t = calloc(1, sizeof(*t));
    update_maps_t um = {0}, up = {0};
    int rc = -ENOMEM;
    if (t == NULL)
        goto done;
    atomic_init(&t->refs, 1);
    t->n_models = n_models;
    t->n_providers = n_providers;
    t->model_slots = calloc(n_models + 1, sizeof(*t->model_slots));
    t->provider_slots = calloc(n_providers + 1, sizeof(*t->provider_slots));
    t->arena = malloc(arena_len);
    if (t->model_slots == NULL || t->provider_slots == NULL || t->arena == NULL ||
        map_init(&t->models, n_models) != 0 || map_init(&t->providers, n_providers) != 0 ||
        update_maps_init(&um, &m->models, n_models) != 0 || update_maps_init(&up, &m->providers, n_providers) != 0)
        goto done;
    /* Nothing can fail from here on. */
    registry_apply(m, KIND_MODELS, &um, models, n_models, now_ms, t->model_slots);
    registry_apply(m, KIND_PROVIDERS, &up, providers, n_providers, now_ms, t->provider_slots);
    char *arena = t->arena;
    table_fill(&t->models, models, t->model_slots, n_models, METRICS_MODEL_OTHER, &arena);
    table_fill(&t->providers, providers, t->provider_slots, n_providers, METRICS_PROVIDER_OTHER, &arena);
    *out = t;
    t = NULL;
    rc = 0;
done:
    update_maps_free(&um);
    update_maps_free(&up);
    metrics_names_release(t);
    return rc;
}

/* ---- names tables ---- */

void metrics_names_retain(metrics_names_t *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

void metrics_names_release(metrics_names_t *t)
{
    if (t == NULL || atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
        return;
    map_free(&t->models);
    map_free(&t->providers);
    free(t->model_slots);
    free(t->provider_slots);
    free(t->arena);
    free(t);
}

uint16_t metrics_names_model(const metrics_names_t *t, const char *name, size_t len)
{
    uint32_t slot;
    return t != NULL && name != NULL && map_find(&t->models, name, len, &slot) ? (uint16_t)slot : METRICS_MODEL_OTHER;
}

uint16_t metrics_names_provider(const metrics_names_t *t, const char *name, size_t len)
{
    uint32_t slot;
    return t != NULL && name != NULL && map_find(&t->providers, name, len, &slot) ? (uint16_t)slot
                                                                                  : METRICS_PROVIDER_OTHER;
}

uint16_t metrics_names_model_at(const metrics_names_t *t, size_t i)
{
    return t == NULL || i >= t->n_models ? METRICS_MODEL_OTHER : t->model_slots[i];
}

uint16_t metrics_names_provider_at(const metrics_names_t *t, size_t i)
{
    return t == NULL || i >= t->n_providers ? METRICS_PROVIDER_OTHER : t->provider_slots[i];
}

/* ---- worker API ---- */

static void observe(histogram_t *h, uint64_t us)
{
    int b = 0;
    while (b < BUCKETS - 1 && us > bucket_bound_us[b])
        b++;
    add(&h->buckets[b], 1);
    add(&h->sum_us, us);
}

void metrics_record_request(metrics_shard_t *s, const metrics_request_t *r)
{
    assert((unsigned)r->endpoint < METRICS_EP_COUNT);
    if ((unsigned)r->endpoint >= METRICS_EP_COUNT)
        return;
    model_counters_t *c = &s->models[r->model < MODEL_SLOTS ? r->model : METRICS_MODEL_OTHER];
    int cls = r->status / 100;
    cls = cls < 2 ? 2 : cls > 5 ? 5 : cls;
    add(&c->requests[r->endpoint][cls - 2], 1);
    if (r->status >= METRICS_STATUS_MIN && r->status < METRICS_STATUS_MIN + METRICS_STATUS_CODES)
        add(&s->statuses[r->status - METRICS_STATUS_MIN], 1);
    const int64_t tokens[TOKEN_KINDS] = {r->input_tokens, r->output_tokens, r->cached_input_tokens,
                                         r->reasoning_tokens};
    for (int k = 0; k < TOKEN_KINDS; k++)
        if (tokens[k] > 0)
            add(&c->tokens[k], (uint64_t)tokens[k]);
    if (r->duration_us >= 0)
        observe(&s->duration[r->endpoint], (uint64_t)r->duration_us);
    if (r->ttfb_us >= 0)
        observe(&s->ttfb[r->endpoint], (uint64_t)r->ttfb_us);
}

void metrics_record_upstream_error(metrics_shard_t *s, uint16_t provider, metrics_upstream_error_t kind)
{
    assert((unsigned)kind < METRICS_UPSTREAM_KIND_COUNT);
    if ((unsigned)kind >= METRICS_UPSTREAM_KIND_COUNT)
        return;
    add(&s->upstream[provider < PROVIDER_SLOTS ? provider : METRICS_PROVIDER_OTHER][kind], 1);
}

void metrics_stream_opened(metrics_shard_t *s)
{
    atomic_fetch_add_explicit(&s->open_streams, 1, memory_order_relaxed);
}

void metrics_stream_closed(metrics_shard_t *s)
{
    atomic_fetch_sub_explicit(&s->open_streams, 1, memory_order_relaxed);
}

int metrics_endpoint_from_name(const char *name)
{
    for (int e = 0; name != NULL && e < METRICS_EP_COUNT; e++)
        if (strcmp(name, endpoint_names[e]) == 0)
            return e;
    return -EINVAL;
}

const char *metrics_endpoint_name(metrics_endpoint_t e)
{
    return (unsigned)e < METRICS_EP_COUNT ? endpoint_names[e] : "unknown";
}

/* ---- roll-ups ---- */

static const char *slot_name(const registry_t *reg, size_t slot);

uint64_t metrics_bucket_bound_us(int b)
{
    return b >= 0 && b < BUCKETS - 1 ? bucket_bound_us[b] : UINT64_MAX;
}

static uint64_t delta_of(uint64_t cur, uint64_t *prev)
{
    uint64_t d = cur >= *prev ? cur - *prev : cur; /* never below: counters only grow */
    *prev = cur;
    return d;
}

int metrics_take_delta(metrics_t *m, const metrics_delta_visitor_t *v)
{
    if (m->prev == NULL && (m->prev = calloc(1, sizeof(*m->prev))) == NULL)
        return -ENOMEM;
    delta_prev_t *p = m->prev;
    for (size_t slot = 0; slot < MODEL_SLOTS; slot++) {
        model_totals_t *cur = &p->cur_model, d;
        model_slot_sum(m, slot, cur);
        bool any = false;
        for (int e = 0; e < METRICS_EP_COUNT; e++)
            for (int k = 0; k < STATUS_CLASSES; k++)
                any |= (d.requests[e][k] = delta_of(cur->requests[e][k], &p->models[slot].requests[e][k])) != 0;
        for (int k = 0; k < TOKEN_KINDS; k++)
            any |= (d.tokens[k] = delta_of(cur->tokens[k], &p->models[slot].tokens[k])) != 0;
        if (any && v->model != NULL)
            v->model(v->data, slot_name(&m->models, slot)[0] != '\0' ? slot_name(&m->models, slot) : "other",
                     (const uint64_t(*)[STATUS_CLASSES])d.requests, d.tokens);
    }
    for (size_t slot = 0; slot < PROVIDER_SLOTS; slot++) {
        uint64_t cur[METRICS_UPSTREAM_KIND_COUNT], d[METRICS_UPSTREAM_KIND_COUNT];
        provider_slot_sum(m, slot, cur);
        bool any = false;
        for (int k = 0; k < METRICS_UPSTREAM_KIND_COUNT; k++)
            any |= (d[k] = delta_of(cur[k], &p->providers[slot][k])) != 0;
        if (any && v->provider != NULL)
            v->provider(v->data, slot_name(&m->providers, slot)[0] != '\0' ? slot_name(&m->providers, slot) : "other",
                        d);
    }
    for (int e = 0; e < METRICS_EP_COUNT; e++) {
        histogram_totals_t cur = {0}, d;
        for (int s = 0; s < m->n_shards; s++) {
            for (int b = 0; b < BUCKETS; b++)
                cur.buckets[b] += load(&m->shards[s]->duration[e].buckets[b]);
            cur.sum_us += load(&m->shards[s]->duration[e].sum_us);
        }
        bool any = false;
        for (int b = 0; b < BUCKETS; b++)
            any |= (d.buckets[b] = delta_of(cur.buckets[b], &p->latency[e].buckets[b])) != 0;
        d.sum_us = delta_of(cur.sum_us, &p->latency[e].sum_us);
        if (any && v->latency != NULL)
            v->latency(v->data, (metrics_endpoint_t)e, d.buckets, d.sum_us);
    }
    for (int i = 0; i < METRICS_STATUS_CODES; i++) {
        uint64_t cur = 0;
        for (int s = 0; s < m->n_shards; s++)
            cur += load(&m->shards[s]->statuses[i]);
        uint64_t d = delta_of(cur, &p->statuses[i]);
        if (d != 0 && v->status != NULL)
            v->status(v->data, METRICS_STATUS_MIN + i, d);
    }
    return 0;
}

/* ---- rendering ---- */

/* One output line, built on the stack and appended whole. */
typedef struct line {
    char buf[LINE_MAX_BYTES];
    size_t len;
} line_t;

static void line_str(line_t *l, const char *s)
{
    size_t n = strlen(s);
    assert(l->len + n <= sizeof(l->buf));
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

/* A label value, escaped as the exposition format requires. */
static void line_esc(line_t *l, const char *s)
{
    for (; *s != '\0'; s++) {
        assert(l->len + 2 <= sizeof(l->buf));
        if (*s == '\\' || *s == '"') {
            l->buf[l->len++] = '\\';
            l->buf[l->len++] = *s;
        } else if (*s == '\n') {
            l->buf[l->len++] = '\\';
            l->buf[l->len++] = 'n';
        } else {
            l->buf[l->len++] = *s;
        }
    }
}

static void line_u64(line_t *l, uint64_t v)
{
    char tmp[21];
    size_t n = util_u64_dec(v, tmp);
    assert(l->len + n <= sizeof(l->buf));
    memcpy(l->buf + l->len, tmp, n);
    l->len += n;
}

static void line_i64(line_t *l, int64_t v)
{
    if (v < 0) {
        line_str(l, "-");
        line_u64(l, (uint64_t)0 - (uint64_t)v);
    } else {
        line_u64(l, (uint64_t)v);
    }
}

/* Microseconds as seconds, exactly ("12.000345"). */
static void line_seconds(line_t *l, uint64_t us)
{
    line_u64(l, us / 1000000);
    line_str(l, ".");
    char frac[7];
    uint64_t f = us % 1000000;
    for (int i = 5; i >= 0; i--) {
        frac[i] = (char)('0' + f % 10);
        f /= 10;
    }
    frac[6] = '\0';
    line_str(l, frac);
}

typedef struct render {
    wipe_buf_t *out;
    int err;
    line_t line;
} render_t;

static void emit(render_t *r)
{
    r->line.buf[r->line.len++] = '\n';
    if (r->err == 0)
        r->err = wipe_buf_append(r->out, r->line.buf, r->line.len);
    r->line.len = 0;
}

static void family(render_t *r, const char *name, const char *type, const char *help)
{
    line_str(&r->line, "# HELP ");
    line_str(&r->line, name);
    line_str(&r->line, " ");
    line_str(&r->line, help);
    emit(r);
    line_str(&r->line, "# TYPE ");
    line_str(&r->line, name);
    line_str(&r->line, " ");
    line_str(&r->line, type);
    emit(r);
}

/* Rendered slots: the active ones sorted by name, then "other". */
static size_t slot_count(const registry_t *reg)
{
    return reg->n_order + 1;
}

static size_t slot_at(const registry_t *reg, size_t i)
{
    return i < reg->n_order ? reg->order[i] : reg->cap;
}

static const char *slot_name(const registry_t *reg, size_t slot)
{
    return slot < reg->cap ? reg->names[slot] : "other";
}

static void render_histogram(render_t *r, const char *name, const char *help, const histogram_totals_t *h)
{
    family(r, name, "histogram", help);
    for (int e = 0; e < METRICS_EP_COUNT; e++) {
        uint64_t cumulative = 0;
        for (int b = 0; b < BUCKETS; b++) {
            cumulative += h[e].buckets[b];
            line_str(&r->line, name);
            line_str(&r->line, "_bucket{endpoint=\"");
            line_str(&r->line, endpoint_names[e]);
            line_str(&r->line, "\",le=\"");
            line_str(&r->line, bucket_label[b]);
            line_str(&r->line, "\"} ");
            line_u64(&r->line, cumulative);
            emit(r);
        }
        line_str(&r->line, name);
        line_str(&r->line, "_sum{endpoint=\"");
        line_str(&r->line, endpoint_names[e]);
        line_str(&r->line, "\"} ");
        line_seconds(&r->line, h[e].sum_us);
        emit(r);
        line_str(&r->line, name);
        line_str(&r->line, "_count{endpoint=\"");
        line_str(&r->line, endpoint_names[e]);
        line_str(&r->line, "\"} ");
        line_u64(&r->line, cumulative);
        emit(r);
    }
}

int metrics_render(metrics_t *m, wipe_buf_t *out)
{
    /* Sum the shards, each in memory order. */
    histogram_totals_t duration[METRICS_EP_COUNT], ttfb[METRICS_EP_COUNT];
    int64_t open_streams = 0;
    memset(m->model_sum, 0, MODEL_SLOTS * sizeof(*m->model_sum));
    memset(m->provider_sum, 0, PROVIDER_SLOTS * sizeof(*m->provider_sum));
    memset(duration, 0, sizeof(duration));
    memset(ttfb, 0, sizeof(ttfb));
    for (int s = 0; s < m->n_shards; s++) {
        metrics_shard_t *sh = m->shards[s];
        for (size_t slot = 0; slot < MODEL_SLOTS; slot++) {
            model_counters_t *c = &sh->models[slot];
            model_totals_t *t = &m->model_sum[slot];
            for (int e = 0; e < METRICS_EP_COUNT; e++)
                for (int k = 0; k < STATUS_CLASSES; k++)
                    t->requests[e][k] += load(&c->requests[e][k]);
            for (int k = 0; k < TOKEN_KINDS; k++)
                t->tokens[k] += load(&c->tokens[k]);
        }
        for (size_t slot = 0; slot < PROVIDER_SLOTS; slot++)
            for (int k = 0; k < METRICS_UPSTREAM_KIND_COUNT; k++)
                m->provider_sum[slot][k] += load(&sh->upstream[slot][k]);
        for (int e = 0; e < METRICS_EP_COUNT; e++) {
            for (int b = 0; b < BUCKETS; b++) {
                duration[e].buckets[b] += load(&sh->duration[e].buckets[b]);
                ttfb[e].buckets[b] += load(&sh->ttfb[e].buckets[b]);
            }
            duration[e].sum_us += load(&sh->duration[e].sum_us);
            ttfb[e].sum_us += load(&sh->ttfb[e].sum_us);
        }
        open_streams += atomic_load_explicit(&sh->open_streams, memory_order_relaxed);
    }

    render_t r = {.out = out, .err = 0};
    size_t start_len = out->len;
    const registry_t *models = &m->models, *providers = &m->providers;

    family(&r, "llmrelay_requests_total", "counter", "Requests answered, by endpoint, model and status class.");
    for (size_t i = 0; i < slot_count(models) && r.err == 0; i++) {
        size_t slot = slot_at(models, i);
        for (int e = 0; e < METRICS_EP_COUNT; e++) {
            for (int k = 0; k < STATUS_CLASSES; k++) {
                uint64_t v = above(m->model_sum[slot].requests[e][k], m->model_base[slot].requests[e][k]);
                if (v == 0)
                    continue;
                line_str(&r.line, "llmrelay_requests_total{endpoint=\"");
                line_str(&r.line, endpoint_names[e]);
                line_str(&r.line, "\",model=\"");
                line_esc(&r.line, slot_name(models, slot));
                line_str(&r.line, "\",status_class=\"");
                line_str(&r.line, class_names[k]);
                line_str(&r.line, "\"} ");
                line_u64(&r.line, v);
                emit(&r);
            }
        }
    }
    for (int k = 0; k < TOKEN_KINDS; k++) {
        family(&r, token_families[k].name, "counter", token_families[k].help);
        for (size_t i = 0; i < slot_count(models) && r.err == 0; i++) {
            size_t slot = slot_at(models, i);
            uint64_t v = above(m->model_sum[slot].tokens[k], m->model_base[slot].tokens[k]);
            if (v == 0)
                continue;
            line_str(&r.line, token_families[k].name);
            line_str(&r.line, "{model=\"");
            line_esc(&r.line, slot_name(models, slot));
            line_str(&r.line, "\"} ");
            line_u64(&r.line, v);
            emit(&r);
        }
    }
    render_histogram(&r, "llmrelay_request_duration_seconds", "Time from request start to its end, by endpoint.",
                     duration);
    render_histogram(&r, "llmrelay_time_to_first_byte_seconds",
                     "Time from request start to the first response byte, by endpoint.", ttfb);
    family(&r, "llmrelay_upstream_errors_total", "counter", "Failed upstream attempts, by provider and kind.");
    for (size_t i = 0; i < slot_count(providers) && r.err == 0; i++) {
        size_t slot = slot_at(providers, i);
        for (int k = 0; k < METRICS_UPSTREAM_KIND_COUNT; k++) {
            uint64_t v = above(m->provider_sum[slot][k], m->provider_base[slot][k]);
            if (v == 0)
                continue;
            line_str(&r.line, "llmrelay_upstream_errors_total{provider=\"");
            line_esc(&r.line, slot_name(providers, slot));
            line_str(&r.line, "\",kind=\"");
            line_str(&r.line, kind_names[k]);
            line_str(&r.line, "\"} ");
            line_u64(&r.line, v);
            emit(&r);
        }
    }
    family(&r, "llmrelay_open_streams", "gauge", "Streaming responses in progress.");
    line_str(&r.line, "llmrelay_open_streams ");
    line_i64(&r.line, open_streams < 0 ? 0 : open_streams);
    emit(&r);
    family(&r, "llmrelay_etcd_reachable", "gauge", "1 if the node reached etcd at its last attempt, else 0.");
    line_str(&r.line, "llmrelay_etcd_reachable ");
    line_u64(&r.line, (uint64_t)atomic_load_explicit(&m->etcd_reachable, memory_order_relaxed));
    emit(&r);
    family(&r, "llmrelay_config_revision", "gauge", "etcd revision of the config snapshot in use.");
    line_str(&r.line, "llmrelay_config_revision ");
    line_i64(&r.line, atomic_load_explicit(&m->config_revision, memory_order_relaxed));
    emit(&r);
    family(&r, "llmrelay_build_info", "gauge", "Build of this node; the value is always 1.");
    line_str(&r.line, "llmrelay_build_info{version=\"");
    line_esc(&r.line, m->version);
    line_str(&r.line, "\"} 1");
    emit(&r);

    if (r.err != 0)
        out->len = start_len;
    return r.err;
}

static void channel_labels(line_t *l, const char *name, const channels_row_t *row)
{
    line_str(l, name);
    line_str(l, "{provider=\"");
    line_esc(l, row->provider);
    line_str(l, "\",key_index=\"");
    line_u64(l, row->key_index);
    line_str(l, "\"");
}

int metrics_render_channels(wipe_buf_t *out, const channels_row_t *rows, size_t n)
{
    static const struct {
        channels_state_t state;
        const char *name;
    } states[] = {{CHANNELS_CLOSED, "closed"}, {CHANNELS_HALF_OPEN, "half_open"}, {CHANNELS_OPEN, "open"}};
    render_t r = {.out = out, .err = 0};
    size_t start_len = out->len;

    family(&r, "llmrelay_channel_state", "gauge",
           "Circuit breaker of each upstream channel (provider, key index): 1 for its current state, the worst over "
           "the workers.");
    for (size_t i = 0; i < n && r.err == 0; i++) {
        for (size_t k = 0; k < sizeof(states) / sizeof(states[0]); k++) {
            channel_labels(&r.line, "llmrelay_channel_state", &rows[i]);
            line_str(&r.line, ",state=\"");
            line_str(&r.line, states[k].name);
            line_str(&r.line, rows[i].state == states[k].state ? "\"} 1" : "\"} 0");
            emit(&r);
        }
    }
    family(&r, "llmrelay_channel_failures_total", "counter",
           "Failed attempts on each upstream channel counted by its breaker, summed over the workers.");
    for (size_t i = 0; i < n && r.err == 0; i++) {
        channel_labels(&r.line, "llmrelay_channel_failures_total", &rows[i]);
        line_str(&r.line, "} ");
        line_u64(&r.line, rows[i].failures);
        emit(&r);
    }
    family(&r, "llmrelay_channel_opens_total", "counter",
           "Times each upstream channel's breaker opened, summed over the workers.");
    for (size_t i = 0; i < n && r.err == 0; i++) {
        channel_labels(&r.line, "llmrelay_channel_opens_total", &rows[i]);
        line_str(&r.line, "} ");
        line_u64(&r.line, rows[i].opens);
        emit(&r);
    }
    if (r.err != 0)
        out->len = start_len;
    return r.err;
}

size_t metrics_render_bound(void)
{
    const size_t value = 21, name = 2 * METRICS_NAME_MAX; /* 20 digits and a sign; all escaped */
    const size_t families = 12 * 2 * 160;                 /* HELP and TYPE lines */
    size_t req = strlen("llmrelay_requests_total{endpoint=\"generate_content\",model=\"\",status_class=\"2xx\"} \n") +
                 name + value;
    size_t tok = strlen("llmrelay_cached_input_tokens_total{model=\"\"} \n") + name + value;
    size_t err = strlen("llmrelay_upstream_errors_total{provider=\"\",kind=\"status_5xx\"} \n") + name + value;
    size_t hist = 2 * METRICS_EP_COUNT * (BUCKETS + 2) * 160;
    size_t gauges = 4 * 160 + 2 * METRICS_VERSION_MAX;
    return families + (size_t)MODEL_SLOTS * METRICS_EP_COUNT * STATUS_CLASSES * req +
           (size_t)MODEL_SLOTS * TOKEN_KINDS * tok + (size_t)PROVIDER_SLOTS * METRICS_UPSTREAM_KIND_COUNT * err + hist +
           gauges;
}
