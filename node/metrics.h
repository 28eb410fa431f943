/* metrics — lock-free per-worker counters and their Prometheus text rendering (GET /metrics).
 *
 * Each worker thread owns one metrics_shard_t and is its only writer: recording a request is
 * a handful of relaxed atomic adds on integers the worker resolved up front (endpoint enum,
 * model slot, provider slot), with no lock, no message, no allocation and no string work. The
 * main thread renders: it loads every shard (relaxed) and sums them.
 *
 * Labels are bounded and come only from configuration. The main thread owns a registry of
 * model names (METRICS_MAX_MODELS slots) and provider names (METRICS_MAX_PROVIDERS slots);
 * whenever the config snapshot changes it calls metrics_names_update, which returns an
 * immutable, reference-counted metrics_names_t (name -> slot) for the workers. Anything not
 * in the table — an unknown model, a name past the capacity — counts under "other".
 *
 * Slots are stable across config changes: a name that stays keeps its slot, so its totals
 * carry on. A name that leaves is retired (no longer rendered) but keeps its slot and its
 * totals, and gets them back if it returns. Only when no never-used slot is left is a retired
 * slot reused, the one retired longest ago, and only once it has been retired for
 * METRICS_SLOT_QUARANTINE_MS: requests still in flight under an older table (which may still
 * add to the retired slot) are long over by then. On reuse the main thread records the slot's
 * current totals as a baseline and renders counts above it, so the new name starts from 0.
 * Until a slot is free, a new name counts under "other".
 *
 * Ownership: metrics_t owns its shards and registry; shards are valid until metrics_free.
 * A metrics_names_t holds copies of its names; it is freed when its last reference is
 * released (any thread). Nothing in here ever holds request content, a key or a secret. */
#ifndef LLMRELAY_NODE_METRICS_H
#define LLMRELAY_NODE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "node/channels.h"
#include "node/wipe.h"

#define METRICS_MAX_MODELS 1024   /* named model slots; one more slot is "other" */
#define METRICS_MAX_PROVIDERS 256 /* named provider slots; one more slot is "other" */
#define METRICS_NAME_MAX 256      /* longer names are not given a slot ("other") */
#define METRICS_VERSION_MAX 64    /* build_info version label, truncated beyond */
#define METRICS_MAX_SHARDS 1024
#define METRICS_SLOT_QUARANTINE_MS (3600 * 1000LL) /* a retired slot is not reused sooner */

#define METRICS_MODEL_OTHER ((uint16_t)METRICS_MAX_MODELS)
#define METRICS_PROVIDER_OTHER ((uint16_t)METRICS_MAX_PROVIDERS)

typedef enum metrics_endpoint {
    METRICS_EP_CHAT_COMPLETIONS, /* "chat.completions" */
    METRICS_EP_COMPLETIONS,      /* "completions" */
    METRICS_EP_EMBEDDINGS,       /* "embeddings" */
    METRICS_EP_RESPONSES,        /* "responses" */
    METRICS_EP_MODELS,           /* "models" */
    METRICS_EP_MESSAGES,         /* "messages" */
    METRICS_EP_GENERATE_CONTENT, /* "generate_content" */
    METRICS_EP_COUNT
} metrics_endpoint_t;

typedef enum metrics_upstream_error {
    METRICS_UPSTREAM_CONNECT,
    METRICS_UPSTREAM_TIMEOUT,
    METRICS_UPSTREAM_STATUS_5XX,
    METRICS_UPSTREAM_STATUS_429,
    METRICS_UPSTREAM_PROTOCOL,
    METRICS_UPSTREAM_KIND_COUNT
} metrics_upstream_error_t;

typedef struct metrics metrics_t;
typedef struct metrics_shard metrics_shard_t;
typedef struct metrics_names metrics_names_t;

/* One finished request, as the worker reports it. */
typedef struct metrics_request {
    metrics_endpoint_t endpoint;
    uint16_t model; /* from metrics_names_model*; METRICS_MODEL_OTHER when none */
    int status;     /* HTTP status sent to the client: class = status / 100 clamped to 2..5 */
    int64_t input_tokens, output_tokens, cached_input_tokens, reasoning_tokens; /* < 0: unknown, not added */
    int64_t duration_us; /* request start to end; < 0: not observed */
    int64_t ttfb_us;     /* request start to first response byte; < 0: not observed */
} metrics_request_t;

/* ---- main thread ---- */

/* Creates the metrics of n_shards workers (1..METRICS_MAX_SHARDS). version (copied, at most
 * METRICS_VERSION_MAX bytes kept) is the build_info label. Every name maps to "other" until
 * the first metrics_names_update. Returns 0 or -EINVAL / -ENOMEM; *out is the caller's. */
int metrics_create(metrics_t **out, int n_shards, const char *version);
/* Frees everything; no worker may use a shard any more. NULL is a no-op. Names tables stay
 * valid (they are independent of m). */
void metrics_free(metrics_t *m);

/* Worker i's shard (0 <= i < n_shards), owned by m. Hand it to worker i once, at start. */
metrics_shard_t *metrics_shard(metrics_t *m, int i);

/* Installs the configured model and provider names (borrowed for the call; duplicates, empty
 * names and names longer than METRICS_NAME_MAX are ignored, the latter two count as
 * "other"). now_ms is the caller's clock (quarantine of retired slots). On success *out is a
 * new table with one reference held by the caller: give each worker its own reference by
 * message along with the snapshot. models[i] resolves through metrics_names_model_at(t, i),
 * so passing the snapshot's model array in its order makes resolution a plain index.
 * Returns 0 or -ENOMEM (the registry is unchanged). */
int metrics_names_update(metrics_t *m, const char *const *models, size_t n_models, const char *const *providers,
                         size_t n_providers, int64_t now_ms, metrics_names_t **out);

void metrics_set_etcd_reachable(metrics_t *m, bool reachable);
void metrics_set_config_revision(metrics_t *m, int64_t revision);

/* Appends the Prometheus text exposition (format 0.0.4; Content-Type
 * "text/plain; version=0.0.4; charset=utf-8") to out. Series of requests, tokens and upstream
 * errors appear once non-zero; histograms and gauges always. Deterministic order: families
 * in a fixed order, endpoints in enum order, names sorted bytewise, "other" last. Returns 0,
 * or -E2BIG / -ENOMEM with out->len restored. Main thread only (it is the registry's
 * owner); reads shards concurrently with their writers. */
int metrics_render(metrics_t *m, wipe_buf_t *out);

/* Appends the channel breaker families (rows as server_channels_rows merges them, ordered
 * by provider and key_index; borrowed): llmrelay_channel_state{provider,key_index,state} (1
 * for the current state, 0 for the two others), llmrelay_channel_failures_total and
 * llmrelay_channel_opens_total{provider,key_index}. The HELP/TYPE lines come even with no
 * row. Returns 0, or -ENOMEM / -E2BIG with out->len restored. Pure: any thread. */
int metrics_render_channels(wipe_buf_t *out, const channels_row_t *rows, size_t n);

/* The most bytes metrics_render can ever append (every slot with a longest name that needs
 * escaping everywhere, every series non-zero with 20-digit values): a safe max for out. */
size_t metrics_render_bound(void);

/* ---- roll-ups (node/metrics_ring.c) ---- */

#define METRICS_STATUS_CLASSES 4 /* 2xx 3xx 4xx 5xx */
#define METRICS_TOKEN_KINDS 4    /* input, output, cached input, reasoning */
#define METRICS_BUCKETS 16       /* latency histogram: 15 finite bounds + +Inf */
#define METRICS_STATUS_MIN 100   /* exact statuses counted: 100..599 */
#define METRICS_STATUS_CODES 500

/* What changed since the previous metrics_take_delta, visited item by item; only non-zero
 * items are visited. Names are borrowed for the call. Any callback may be NULL. */
typedef struct metrics_delta_visitor {
    void *data;
    void (*model)(void *data, const char *name, const uint64_t requests[METRICS_EP_COUNT][METRICS_STATUS_CLASSES],
                  const uint64_t tokens[METRICS_TOKEN_KINDS]);
    void (*provider)(void *data, const char *name, const uint64_t errors[METRICS_UPSTREAM_KIND_COUNT]);
    void (*latency)(void *data, metrics_endpoint_t e, const uint64_t buckets[METRICS_BUCKETS], uint64_t sum_us);
    void (*status)(void *data, int status, uint64_t count);
} metrics_delta_visitor_t;

/* Sums the shards and visits the increase of every counter since the previous call (the
 * first call sees everything since start). One consumer (the metrics ring); main thread.
 * Returns 0 or -ENOMEM (nothing visited, nothing consumed). */
int metrics_take_delta(metrics_t *m, const metrics_delta_visitor_t *v);

/* Upper bound of latency bucket b in microseconds (UINT64_MAX for the last, +Inf). */
uint64_t metrics_bucket_bound_us(int b);

/* ---- names tables (immutable; any thread) ---- */

void metrics_names_retain(metrics_names_t *t);
void metrics_names_release(metrics_names_t *t); /* NULL is a no-op */
/* Slot of a model / provider name; METRICS_*_OTHER when t is NULL or the name is unknown. */
uint16_t metrics_names_model(const metrics_names_t *t, const char *name, size_t len);
uint16_t metrics_names_provider(const metrics_names_t *t, const char *name, size_t len);
/* Slot of models[i] / providers[i] as passed to metrics_names_update; OTHER if out of range. */
uint16_t metrics_names_model_at(const metrics_names_t *t, size_t i);
uint16_t metrics_names_provider_at(const metrics_names_t *t, size_t i);

/* ---- worker thread: only the shard's owner ---- */

void metrics_record_request(metrics_shard_t *s, const metrics_request_t *r);
void metrics_record_upstream_error(metrics_shard_t *s, uint16_t provider, metrics_upstream_error_t kind);
void metrics_stream_opened(metrics_shard_t *s);
void metrics_stream_closed(metrics_shard_t *s);

/* Endpoint enum of a label name ("chat.completions", ...); -EINVAL if none. For setup, not
 * the request path. */
int metrics_endpoint_from_name(const char *name);
const char *metrics_endpoint_name(metrics_endpoint_t e);

#endif
