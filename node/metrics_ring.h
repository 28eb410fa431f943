/* metrics_ring — the cluster's 7-day ring of 5-minute metric roll-ups in etcd.
 *
 * Every node folds the increase of its counters (metrics_take_delta: requests by endpoint
 * and status class, tokens and USD by model, latency histogram, statuses >= 400, upstream
 * errors by provider) into the slot of the current 5 minutes and puts it to
 * <prefix>metrics/<node>/<index>, index = (start_ms / 300000) % 2016 as 4 digits, value a
 * protobuf MetricSlot (proto/metrics.proto) stamped with its absolute start_ms, at most
 * RING_MAX_VALUE bytes. The slot is put every RING_FLUSH_MS while it changes and once more
 * when it closes: 1 put per minute per busy node, 0 when idle. Puts that fail (etcd down)
 * stay queued (at most RING_MAX_PENDING closed slots, the oldest dropped beyond) and are
 * retried every second. At start the node reads back its current slot so a restart adds to
 * what the slot held instead of replacing it.
 *
 * Sweep: every node tries every RING_SWEEP_MS (and at start, and when the test clock
 * jumps), but one node per period does it for the whole cluster: it claims the lock
 * <prefix>metrics_sweep (protobuf MetricSweep; a txn guarded by the lock's mod_revision;
 * skipped when claimed less than RING_SWEEP_MS / 2 ago) and sweeps from where the last
 * complete sweep ended (swept_to_ms, recorded at the end; a claimer that dies leaves it
 * behind, so the next one covers its window). Sweeping lists the nodes with slots in etcd
 * by hopping from key to key (one range of limit 1 per node: no read of every value), then
 * reads, per node, only the indexes that may have aged since swept_to_ms (the slots that
 * started since — a value left there from an earlier week is stale — and, with a retention
 * under 7 days, those that passed it) and deletes what is older than now - retention, in
 * txns of at most 60 deletes each guarded by the mod_revision read (a slot its node
 * rewrote meanwhile is kept). A departed node's slots go the same way. Cost per period for
 * the cluster of N nodes: N reads of the lock, 2 lock writes, N + 1 hop reads, ~2 slot
 * reads per node and the deletes; after a cluster-wide outage of D, D's worth of slots per
 * node is read once (the whole ring at most).
 *
 * Reads (GET /admin/v1/metrics, cluster-wide /admin/v1/usage): the same node listing, then
 * only the indexes of the asked range; values older than now - retention or outside the
 * range are never returned. This node's own slots come from memory (current counts).
 *
 * Time is the node's clock (node/clock.h). Main loop only. Ownership: metrics_ring_start
 * borrows everything in its options (they must outlive the ring); the ring frees itself
 * after metrics_ring_stop once *done is set. */
#ifndef LLMRELAY_NODE_METRICS_RING_H
#define LLMRELAY_NODE_METRICS_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cluster/config_store.h"
#include "cluster/etcd.h"
#include "node/clock.h"
#include "node/metrics.h"

#define RING_SLOT_MS (300 * 1000LL)
#define RING_SLOTS 2016 /* 7 days */
#define RING_SPAN_MS (RING_SLOT_MS * RING_SLOTS)
#define RING_MAX_VALUE 8192
#define RING_MAX_ROWS 256 /* model / provider rows kept in memory per slot; more count as "other" */
#define RING_FLUSH_MS (60 * 1000)
#define RING_SWEEP_MS (RING_SLOT_MS)
#define RING_MAX_PENDING 64
#define RING_PAGE 64
#define RING_NODE_MAX 64

/* ---- pure: slots ---- */

typedef struct ring_model {
    char name[METRICS_NAME_MAX + 1];
    uint64_t requests, errors, input_tokens, output_tokens, cached_input_tokens, reasoning_tokens;
    int64_t nano_usd;
} ring_model_t;

typedef struct ring_provider {
    char name[METRICS_NAME_MAX + 1];
    uint64_t errors[METRICS_UPSTREAM_KIND_COUNT];
} ring_provider_t;

typedef struct ring_slot {
    char node[RING_NODE_MAX + 1];
    int64_t start_ms, updated_ms;
    uint64_t requests[METRICS_EP_COUNT][METRICS_STATUS_CLASSES];
    uint64_t latency[METRICS_EP_COUNT][METRICS_BUCKETS];
    uint64_t latency_sum_us[METRICS_EP_COUNT];
    uint64_t statuses[METRICS_STATUS_CODES]; /* by status - METRICS_STATUS_MIN; only >= 400 kept */
    ring_model_t *models;                    /* malloc'd, n_models <= RING_MAX_ROWS */
    size_t n_models;
    ring_provider_t *providers;
    size_t n_providers;
} ring_slot_t;

/* Start of the slot holding t, and its index in the ring. */
int64_t ring_slot_start(int64_t t_ms);
uint32_t ring_slot_index(int64_t start_ms);
/* "<prefix>metrics/<node>/<index, 4 digits>" into out; its length, or -ENOBUFS. */
int ring_key(const char *prefix, const char *node, uint32_t index, char *out, size_t cap);
/* Node name and index of a ring key; -EINVAL if it is not one. */
int ring_key_parse(const char *prefix, const uint8_t *key, size_t len, char node[RING_NODE_MAX + 1], uint32_t *index);

/* The ring indexes of the slot starts first..last (both slot starts, inclusive) as at most
 * two runs [lo, hi]; every index once the span covers the ring. Returns the run count. */
size_t ring_index_runs(int64_t first_start, int64_t last_start, uint32_t runs[2][2]);

/* The ring indexes a sweep at now_ms must read when the previous one ended at prev_ms
 * (retention_ms <= RING_SPAN_MS): at most four runs [lo, hi]. A value there is deleted when
 * its start_ms < now_ms - retention_ms. Returns the run count. */
size_t ring_sweep_runs(int64_t now_ms, int64_t prev_ms, int64_t retention_ms, uint32_t runs[4][2]);

void ring_slot_init(ring_slot_t *s, const char *node, int64_t start_ms);
void ring_slot_dispose(ring_slot_t *s);
bool ring_slot_empty(const ring_slot_t *s);
/* The row of a model / provider, added if new; past RING_MAX_ROWS the "other" row. NULL
 * only when out of memory. */
ring_model_t *ring_slot_model(ring_slot_t *s, const char *name);
ring_provider_t *ring_slot_provider(ring_slot_t *s, const char *name);
/* dst += src (node and start of dst unchanged). 0 or -ENOMEM. */
int ring_slot_merge(ring_slot_t *dst, const ring_slot_t *src);
/* Totals of a slot. */
uint64_t ring_slot_requests(const ring_slot_t *s);

/* Protobuf MetricSlot, at most RING_MAX_VALUE bytes: when the rows do not fit, the smallest
 * model and provider rows are folded into "other". *out is malloc'd. 0, -ENOMEM, -E2BIG. */
int ring_slot_encode(const ring_slot_t *s, uint8_t **out, size_t *len);
/* 0 or -EPROTO (not a MetricSlot, or one that makes no sense) / -ENOMEM. */
int ring_slot_decode(const uint8_t *buf, size_t len, ring_slot_t *out);

/* ---- the node's ring ---- */

typedef struct metrics_ring metrics_ring_t;

typedef struct metrics_ring_options {
    uv_loop_t *loop;
    etcd_client_t *etcd;
    const char *prefix; /* etcd prefix, "/llmrelay/" */
    const char *node;   /* this node's name */
    const node_clock_t *clock;
    metrics_t *metrics;
    config_store_t *store; /* prices for USD; NULL = 0 USD */
    int64_t retention_ms;  /* capped to RING_SPAN_MS */
} metrics_ring_options_t;

/* Same signature as admin_answer_cb: 200 with JSON, or an error status with a JSON body. */
typedef void (*metrics_ring_answer_cb)(void *ctx, int status, const char *json, size_t len);

typedef enum metrics_ring_view {
    RING_VIEW_METRICS, /* GET /admin/v1/metrics */
    RING_VIEW_USAGE,   /* GET /admin/v1/usage without a key filter */
} metrics_ring_view_t;

typedef enum metrics_ring_group {
    RING_GROUP_NONE,
    RING_GROUP_MODEL,
    RING_GROUP_HOUR,
    RING_GROUP_NODE,
} metrics_ring_group_t;

typedef struct metrics_ring_query {
    metrics_ring_view_t view;
    int64_t from_ms, to_ms;
    char node[RING_NODE_MAX + 1]; /* "" = every node */
    metrics_ring_group_t by;      /* usage only */
} metrics_ring_query_t;

int metrics_ring_start(const metrics_ring_options_t *o, metrics_ring_t **out);
/* Folds and queues the current slot, puts what is queued (bounded by 2 s), then frees the
 * ring and sets *done. Queries in flight are answered 503. */
void metrics_ring_stop(metrics_ring_t *r, bool *done);
/* Starts a sweep now (no-op while one runs). */
void metrics_ring_sweep(metrics_ring_t *r);
/* Answers cb exactly once (possibly before returning). q is borrowed for the call. */
void metrics_ring_query(metrics_ring_t *r, const metrics_ring_query_t *q, metrics_ring_answer_cb cb, void *ctx);

/* Puts so far (for the report and tests). */
uint64_t metrics_ring_puts(const metrics_ring_t *r);

#endif
