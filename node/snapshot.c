/* snapshot.c — compiling config records into lookup structures for the request path.
 *
 * Keys go into an open-addressing hash table indexed by the first bytes of their SHA-256
 * (already uniformly distributed), models into a sorted array searched by bsearch; each
 * model lists its routes (provider + upstream name), highest priority first. All strings
 * and arrays are carved from one arena so release is a single free. */
#include "node/snapshot.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

typedef struct arena {
    char *base;
    size_t used, cap;
} arena_t;

static void *arena_alloc(arena_t *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (a->used + n > a->cap)
        return NULL;
    void *p = a->base + a->used;
    a->used += n;
    return p;
}

static const char *arena_str(arena_t *a, const char *s)
{
    size_t n = strlen(s ? s : "");
    char *p = arena_alloc(a, n + 1);
    if (p != NULL) {
        memcpy(p, s ? s : "", n);
        p[n] = '\0';
    }
    return p;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool parse_hash(const char *hex, uint8_t out[32])
{
    if (hex == NULL || strlen(hex) != 64)
        return false;
    for (int i = 0; i < 32; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

static size_t slot_of(const uint8_t hash[32], size_t mask)
{
    uint64_t h;
    memcpy(&h, hash, sizeof(h));
    return (size_t)h & mask;
}

static size_t id_slot(const char *id, size_t mask)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *id != '\0'; id++)
        h = (h ^ (unsigned char)*id) * 1099511628211ULL;
    return (size_t)h & mask;
}

typedef struct pair {
    const char *name;
    const snapshot_route_t *route;
} pair_t;

/* By client-visible name, then priority (highest first), then provider name. */
static int pair_cmp(const void *a, const void *b)
{
    const pair_t *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c != 0)
        return c;
    if (x->route->priority != y->route->priority)
        return x->route->priority > y->route->priority ? -1 : 1;
    return strcmp(x->route->provider, y->route->provider);
}

static int provider_cmp(const void *a, const void *b)
{
    return strcmp(((const snapshot_provider_t *)a)->name, ((const snapshot_provider_t *)b)->name);
}

/* The channel identity of an upstream key: 64 bits of its SHA-256 (the key never leaves). */
static uint64_t key_tag(const char *key)
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    uint64_t tag = 0;
    if (EVP_Digest(key, strlen(key), md, &md_len, EVP_sha256(), NULL) != 1 || md_len < 8)
        return 0;
    for (int i = 0; i < 8; i++)
        tag = tag << 8 | md[i];
    return tag;
}

static int price_cmp(const void *a, const void *b)
{
    return strcmp(((const snapshot_price_t *)a)->model, ((const snapshot_price_t *)b)->model);
}

/* The upstream name of a client-visible model for provider p (its --map alias, or itself). */
static const char *upstream_name(const Llmrelay__Provider *p, const char *model)
{
    for (size_t i = 0; i < p->n_model_map; i++)
        if (strcmp(p->model_map[i]->alias, model) == 0)
            return p->model_map[i]->upstream;
    return model;
}

/* Client-visible names of provider p: its models plus its aliases. */
static size_t provider_names(const Llmrelay__Provider *p, const char **out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < p->n_models && n < cap; i++)
        out[n++] = p->models[i];
    for (size_t i = 0; i < p->n_model_map && n < cap; i++) {
        bool dup = false;
        for (size_t j = 0; j < n; j++)
            dup = dup || strcmp(out[j], p->model_map[i]->alias) == 0;
        if (!dup)
            out[n++] = p->model_map[i]->alias;
    }
    return n;
}

snapshot_t *snapshot_build(const Llmrelay__Snapshot *src)
{
    /* Size the arena generously from the input: every string at most twice (names appear
     * once per route), plus the tables. */
    size_t bytes = 4096, n_names = 0;
    for (size_t i = 0; i < src->n_providers; i++) {
        const Llmrelay__Provider *p = src->providers[i];
        bytes += strlen(p->name) + strlen(p->type) + strlen(p->base_url) + 64;
        bytes += sizeof(snapshot_provider_t) + p->n_api_keys * sizeof(uint64_t) + 32;
        for (size_t j = 0; j < p->n_api_keys; j++)
            bytes += strlen(p->api_keys[j]) + 32;
        for (size_t j = 0; j < p->n_models; j++)
            bytes += 2 * strlen(p->models[j]) + 96 + sizeof(snapshot_route_t) + sizeof(snapshot_model_t);
        for (size_t j = 0; j < p->n_model_map; j++)
            bytes += 2 * (strlen(p->model_map[j]->alias) + strlen(p->model_map[j]->upstream)) + 128 +
                     sizeof(snapshot_route_t) + sizeof(snapshot_model_t);
        n_names += p->n_models + p->n_model_map;
    }
    size_t n_slots = 16;
    while (n_slots < 2 * src->n_keys + 2)
        n_slots <<= 1;
    bytes += n_slots * (sizeof(snapshot_key_t) + sizeof(snapshot_key_t *)) + 32;
    for (size_t i = 0; i < src->n_keys; i++) {
        const Llmrelay__ApiKey *k = src->keys[i];
        bytes += strlen(k->id) + strlen(k->name) + 48 + k->n_models * sizeof(char *);
        for (size_t j = 0; j < k->n_models; j++)
            bytes += strlen(k->models[j]) + 32;
    }
    bytes += n_names * (sizeof(snapshot_model_t) + sizeof(snapshot_route_t) + 32);
    bytes += (src->n_prices + 1) * sizeof(snapshot_price_t);
    for (size_t i = 0; i < src->n_prices; i++)
        bytes += strlen(src->prices[i]->model) + 32;

    snapshot_t *s = calloc(1, sizeof(*s));
    arena_t a = {calloc(1, bytes), 0, bytes};
    if (s == NULL || a.base == NULL) {
        free(s);
        free(a.base);
        return NULL;
    }
    atomic_init(&s->refs, 1);
    s->arena = a.base;
    s->revision = src->revision;

    /* Keys. */
    s->n_key_slots = n_slots;
    s->keys = arena_alloc(&a, n_slots * sizeof(snapshot_key_t));
    for (size_t i = 0; i < src->n_keys; i++) {
        const Llmrelay__ApiKey *k = src->keys[i];
        uint8_t hash[32];
        if (!parse_hash(k->hash, hash))
            continue;
        size_t slot = slot_of(hash, n_slots - 1);
        while (s->keys[slot].id != NULL && memcmp(s->keys[slot].hash, hash, 32) != 0)
            slot = (slot + 1) & (n_slots - 1);
        snapshot_key_t *dst = &s->keys[slot];
        if (dst->id == NULL)
            s->n_keys++;
        memcpy(dst->hash, hash, 32);
        dst->id = arena_str(&a, k->id);
        dst->name = arena_str(&a, k->name);
        dst->revoked = strcmp(k->status, "active") != 0;
        dst->expires_at = k->expires_at;
        dst->grace_until = k->grace_until;
        dst->has_budget_tokens = k->has_budget_tokens;
        dst->budget_tokens = k->budget_tokens;
        dst->has_budget_usd = k->has_budget_usd;
        dst->budget_usd = k->budget_usd;
        dst->rpm = k->rpm;
        dst->tpm = k->tpm;
        const char **models = arena_alloc(&a, (k->n_models + 1) * sizeof(char *));
        for (size_t j = 0; j < k->n_models; j++)
            models[j] = arena_str(&a, k->models[j]);
        dst->models = models;
        dst->n_models = k->n_models;
    }

    /* Index by key id (the quota owners are keyed by id). */
    s->id_index = arena_alloc(&a, n_slots * sizeof(snapshot_key_t *));
    for (size_t i = 0; i < n_slots; i++) {
        const snapshot_key_t *k = &s->keys[i];
        if (k->id == NULL)
            continue;
        size_t slot = id_slot(k->id, n_slots - 1);
        while (s->id_index[slot] != NULL && strcmp(s->id_index[slot]->id, k->id) != 0)
            slot = (slot + 1) & (n_slots - 1);
        if (s->id_index[slot] == NULL)
            s->id_index[slot] = k;
    }

    /* Providers with their key tags, sorted by name. */
    s->providers = arena_alloc(&a, (src->n_providers + 1) * sizeof(snapshot_provider_t));
    for (size_t i = 0; i < src->n_providers; i++) {
        const Llmrelay__Provider *p = src->providers[i];
        snapshot_provider_t *dst = &s->providers[s->n_providers++];
        uint64_t *tags = arena_alloc(&a, (p->n_api_keys + 1) * sizeof(uint64_t));
        for (size_t j = 0; j < p->n_api_keys; j++)
            tags[j] = key_tag(p->api_keys[j] ? p->api_keys[j] : "");
        dst->name = arena_str(&a, p->name);
        dst->type = arena_str(&a, p->type);
        dst->n_api_keys = p->n_api_keys;
        dst->key_tags = tags;
    }
    qsort(s->providers, s->n_providers, sizeof(snapshot_provider_t), provider_cmp);

    /* Models: collect (name, route) pairs, then group by name. */
    snapshot_model_t *models = arena_alloc(&a, (n_names + 1) * sizeof(snapshot_model_t));
    snapshot_route_t *pairs = arena_alloc(&a, (n_names + 1) * sizeof(snapshot_route_t));
    const char **pair_names = calloc(n_names + 1, sizeof(char *));
    size_t n_pairs = 0;
    for (size_t i = 0; i < src->n_providers; i++) {
        const Llmrelay__Provider *p = src->providers[i];
        const char **names = calloc(p->n_models + p->n_model_map + 1, sizeof(char *));
        size_t nn = names ? provider_names(p, names, p->n_models + p->n_model_map) : 0;
        const char **keys = arena_alloc(&a, (p->n_api_keys + 1) * sizeof(char *));
        for (size_t j = 0; j < p->n_api_keys; j++)
            keys[j] = arena_str(&a, p->api_keys[j]);
        const char *pname = arena_str(&a, p->name), *ptype = arena_str(&a, p->type);
        size_t blen = strlen(p->base_url);
        while (blen > 0 && p->base_url[blen - 1] == '/')
            blen--;
        char *base = arena_alloc(&a, blen + 1);
        memcpy(base, p->base_url, blen);
        base[blen] = '\0';
        for (size_t j = 0; j < nn && pair_names != NULL; j++) {
            snapshot_route_t *r = &pairs[n_pairs];
            r->provider = pname;
            r->type = ptype;
            r->base_url = base;
            r->upstream_model = arena_str(&a, upstream_name(p, names[j]));
            r->api_keys = keys;
            r->n_api_keys = p->n_api_keys;
            r->priority = p->priority;
            r->weight = p->weight > 0 ? p->weight : 1;
            pair_names[n_pairs++] = names[j];
        }
        free(names);
    }
    /* Group by name: sort the pairs by (name, priority) and cut the sorted array into one
     * slice per model. */
    pair_t *order = calloc(n_pairs + 1, sizeof(pair_t));
    snapshot_route_t *routes = arena_alloc(&a, (n_pairs + 1) * sizeof(snapshot_route_t));
    for (size_t i = 0; i < n_pairs && order != NULL; i++) {
        order[i].name = pair_names[i];
        order[i].route = &pairs[i];
    }
    if (order != NULL)
        qsort(order, n_pairs, sizeof(pair_t), pair_cmp);
    for (size_t i = 0; i < n_pairs && order != NULL; i++) {
        routes[i] = *order[i].route;
        if (s->n_models == 0 || strcmp(models[s->n_models - 1].name, order[i].name) != 0) {
            snapshot_model_t *m = &models[s->n_models++];
            m->name = arena_str(&a, order[i].name);
            m->routes = &routes[i];
            m->n_routes = 0;
        }
        models[s->n_models - 1].n_routes++;
    }
    free(order);
    free(pair_names);
    s->models = models;

    /* Prices, sorted by model for bsearch. */
    s->prices = arena_alloc(&a, (src->n_prices + 1) * sizeof(snapshot_price_t));
    for (size_t i = 0; i < src->n_prices; i++) {
        const Llmrelay__Price *p = src->prices[i];
        snapshot_price_t *dst = &s->prices[s->n_prices++];
        dst->model = arena_str(&a, p->model);
        dst->input = p->input_per_mtok;
        dst->output = p->output_per_mtok;
        dst->cached_input = p->has_cached_input ? p->cached_input_per_mtok : p->input_per_mtok;
        dst->reasoning = p->has_reasoning ? p->reasoning_per_mtok : p->output_per_mtok;
    }
    qsort(s->prices, s->n_prices, sizeof(snapshot_price_t), price_cmp);
    return s;
}

void snapshot_retain(snapshot_t *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

void snapshot_release(snapshot_t *s)
{
    if (s == NULL)
        return;
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) {
        if (s->attached_release != NULL)
            s->attached_release(s->attached);
        free(s->arena);
        free(s);
    }
}

const snapshot_key_t *snapshot_find_key(const snapshot_t *s, const uint8_t hash[32])
{
    size_t mask = s->n_key_slots - 1;
    for (size_t slot = slot_of(hash, mask);; slot = (slot + 1) & mask) {
        const snapshot_key_t *k = &s->keys[slot];
        if (k->id == NULL)
            return NULL;
        if (memcmp(k->hash, hash, 32) == 0)
            return k;
    }
}

const snapshot_key_t *snapshot_find_key_id(const snapshot_t *s, const char *id)
{
    size_t mask = s->n_key_slots - 1;
    for (size_t slot = id_slot(id, mask);; slot = (slot + 1) & mask) {
        const snapshot_key_t *k = s->id_index[slot];
        if (k == NULL || strcmp(k->id, id) == 0)
            return k;
    }
}

const snapshot_model_t *snapshot_find_model(const snapshot_t *s, const char *name, size_t len)
{
    size_t lo = 0, hi = s->n_models;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const char *m = s->models[mid].name;
        int c = strncmp(m, name, len);
        if (c == 0 && m[len] != '\0')
            c = 1;
        if (c == 0)
            return &s->models[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

bool snapshot_key_allows(const snapshot_key_t *k, const char *model)
{
    if (k->n_models == 0)
        return true;
    for (size_t i = 0; i < k->n_models; i++)
        if (strcmp(k->models[i], model) == 0)
            return true;
    return false;
}

const snapshot_price_t *snapshot_find_price(const snapshot_t *s, const char *model)
{
    snapshot_price_t key = {.model = model};
    return bsearch(&key, s->prices, s->n_prices, sizeof(snapshot_price_t), price_cmp);
}

bool snapshot_key_metered(const snapshot_key_t *k)
{
    return k->has_budget_tokens || k->has_budget_usd || k->rpm > 0 || k->tpm > 0;
}
