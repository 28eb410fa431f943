/* snapshot.h — the immutable, compiled view of the shared config that worker threads read.
 *
 * The main thread builds a snapshot from the config store's protobuf records whenever the
 * config changes and hands one reference to each worker by message; a worker swaps its
 * pointer and releases the old one. Requests take a reference for their lifetime, so a
 * snapshot is freed only when its last request ends. Reads take no lock: the structure is
 * never modified after snapshot_build returns, only its atomic reference count.
 *
 * Ownership: snapshot_build copies everything it needs; every pointer returned by a lookup
 * is owned by the snapshot and valid while the caller holds a reference. */
#ifndef LLMRELAY_NODE_SNAPSHOT_H
#define LLMRELAY_NODE_SNAPSHOT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.pb-c.h"

typedef struct snapshot_route {
    const char *provider;       /* provider name */
    const char *type;           /* openai | anthropic | gemini */
    const char *base_url;       /* without trailing '/' */
    const char *upstream_model; /* the model name sent upstream */
    const char *const *api_keys;
    size_t n_api_keys;
    int priority, weight;
} snapshot_route_t;

typedef struct snapshot_model {
    const char *name;         /* the name clients use */
    snapshot_route_t *routes; /* sorted by priority, highest first */
    size_t n_routes;
} snapshot_model_t;

typedef struct snapshot_key {
    uint8_t hash[32];
    const char *id, *name;
    bool revoked;
    int64_t expires_at;        /* unix seconds; 0 = never */
    int64_t grace_until;       /* a superseded secret (rotation) works until then; 0 = current */
    /* Limits (see quota.h): absent budgets have has_* false; rpm/tpm 0 = none. */
    bool has_budget_tokens, has_budget_usd;
    int64_t budget_tokens;
    double budget_usd;
    int64_t rpm, tpm;
    const char *const *models; /* allowlist; n_models == 0 means every model */
    size_t n_models;
} snapshot_key_t;

/* USD per 1M tokens of one model (client-visible name). */
typedef struct snapshot_price {
    const char *model;
    double input, output, cached_input, reasoning;
} snapshot_price_t;

/* One provider record, for the per-worker channel tables (node/channels.h). key_tags[i]
 * is the first 8 bytes (big-endian) of SHA-256 of api_keys[i] of the provider's record: a
 * changed key is a new channel. Never the key itself. */
typedef struct snapshot_provider {
    const char *name;
    const char *type;
    size_t n_api_keys;
    const uint64_t *key_tags; /* n_api_keys entries */
} snapshot_provider_t;

typedef struct snapshot {
    atomic_long refs;
    int64_t revision;
    snapshot_key_t *keys; /* open-addressing table, n_key_slots (power of two) entries; id NULL = empty */
    size_t n_key_slots, n_keys;
    const snapshot_key_t **id_index; /* by key id: n_key_slots entries (open addressing), NULL = empty */
    snapshot_model_t *models; /* sorted by name */
    size_t n_models;
    snapshot_price_t *prices; /* sorted by model */
    size_t n_prices;
    snapshot_provider_t *providers; /* sorted by name, one per provider record */
    size_t n_providers;
    void *arena; /* every string and array above lives here */
    /* Something the builder attaches (the metrics name table of this config), released
     * with the snapshot; set before the snapshot is shared. */
    void *attached;
    void (*attached_release)(void *attached);
} snapshot_t;

/* Builds a snapshot with one reference held by the caller. NULL on allocation failure.
 * Providers whose type the node cannot serve are still listed (routing decides). */
snapshot_t *snapshot_build(const Llmrelay__Snapshot *src);
void snapshot_retain(snapshot_t *s);
void snapshot_release(snapshot_t *s);

const snapshot_key_t *snapshot_find_key(const snapshot_t *s, const uint8_t hash[32]);
/* A record of key id (several share an id during a rotation; they carry the same limits). */
const snapshot_key_t *snapshot_find_key_id(const snapshot_t *s, const char *id);
const snapshot_model_t *snapshot_find_model(const snapshot_t *s, const char *name, size_t len);
bool snapshot_key_allows(const snapshot_key_t *k, const char *model);
/* The price of a model, or NULL when none is set (then requests cost 0 USD). */
const snapshot_price_t *snapshot_find_price(const snapshot_t *s, const char *model);
/* True when the key has any limit that needs a reservation (budget or tpm or rpm). */
bool snapshot_key_metered(const snapshot_key_t *k);

#endif
