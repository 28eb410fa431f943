/* metering.h — the node's quota service: quota.h's owner and lessee machines wired to the
 * node's threads.
 *
 * The main thread owns one quota owner per key (the key's counters: spent, rate windows,
 * allowance leased out). Each worker owns one lessee per key it serves and admits requests
 * from its leased allotment without a round trip; a request that does not fit waits while
 * the worker asks the main thread for more. Reports (settles, returns, asks) go to the main
 * thread in batches every 100 ms or at once when a request waits; grants and recalls come
 * back the same way (h2o multithread messages). The main thread checkpoints every key's
 * spent usage to <data-dir>/quota.ckpt (atomic rename, at most once a second), and loads
 * it at start, so a restart does not reset budgets; usage settled in the last second
 * before a crash can be missing from the checkpoint (the metadata store still has it).
 *
 * Keys without limits are counted the same way (their spent usage shows in `key show`),
 * but never refused.
 *
 * Ownership: every object here belongs to the thread that created it; messages carry
 * plain copies. */
#ifndef LLMRELAY_NODE_METERING_H
#define LLMRELAY_NODE_METERING_H

#include <stdbool.h>
#include <stdint.h>

#include "node/clock.h"
#include "node/quota.h"
#include "node/snapshot.h"

struct worker;
struct server;
struct gossip;
struct uv_loop_s;

#define METER_KEY_ID_MAX 64

/* A request waiting for allowance; embedded in the relay. */
typedef struct meter_waiter meter_waiter_t;
typedef void (*meter_wait_cb)(meter_waiter_t *w, const quota_decision_t *d);
struct meter_waiter {
    meter_waiter_t *next, *prev;
    struct meter_entry *entry; /* NULL when not queued */
    char request_id[65];
    quota_usage_t worst;
    meter_wait_cb cb;
};

/* A finished request whose last bytes wait for its final settle to be acknowledged by the
 * key's owner and backup (cluster mode only); embedded in the relay. */
typedef struct meter_hold meter_hold_t;
typedef void (*meter_hold_cb)(meter_hold_t *h, bool acked);
struct meter_hold {
    meter_hold_t *next;
    uint64_t request_key;
    uint64_t since_ms;
    meter_hold_cb cb;
    bool linked;
};
/* How long a final waits for its acknowledgement before the response ends anyway (the
 * settle stays queued and is retried; only the ordering guarantee is given up). */
#define METER_HOLD_MAX_MS 15000

/* The message between the threads (both directions). */
typedef struct meter_msg {
    int kind; /* METER_REPORT (worker -> main), METER_LEASE, METER_RECALL (main -> worker) */
    int worker;
    char key_id[METER_KEY_ID_MAX + 1];
    /* worker -> main: usage split for `key show` since the last report */
    int64_t requests, input_tokens, output_tokens;
    quota_usage_t unreserved; /* usage of unmetered requests (not in any report) */
    bool has_report; /* worker -> main: u.report is a report to apply (else only the split) */
    union {
        quota_report_t report;
        quota_lease_t lease;
        struct {
            uint32_t n;
            uint64_t keys[QUOTA_REPORT_MAX];
        } acked; /* METER_ACK: finals held by owner and backup */
    } u;
} meter_msg_t;

enum { METER_REPORT = 1, METER_LEASE, METER_RECALL, METER_ACK };

/* ---- worker side ---- */

int meter_worker_init(struct worker *w);
/* Admission. ADMIT: go on. WAIT: the waiter is queued and its cb will be called (from the
 * worker loop) with ADMIT or a refusal. A refusal: answer 429. */
quota_decision_t meter_reserve(struct worker *w, const snapshot_key_t *key, const char *request_id,
                               quota_usage_t worst, meter_waiter_t *waiter, meter_wait_cb cb);
/* Header values (x-ratelimit-*) of a key without admitting anything: this worker's last
 * decision for it, or its limits when it has none yet (-1 where the key has no limit). */
void meter_peek(struct worker *w, const snapshot_key_t *key, quota_decision_t *d);
/* The client left while its request waited. */
void meter_cancel_wait(meter_waiter_t *waiter);
/* Final settle of an admitted request. In cluster mode (hold != NULL and the node
 * clustered) returns true: the caller keeps the response's last bytes until cb(hold, acked)
 * runs on this worker (acked: owner and backup hold the settle; false: METER_HOLD_MAX_MS
 * passed). Otherwise returns false. */
bool meter_settle(struct worker *w, const snapshot_key_t *key, const char *request_id, quota_usage_t actual,
                  int64_t input_tokens, int64_t output_tokens, meter_hold_t *hold, meter_hold_cb cb);
/* Usage delivered so far by a request still running (reported with the next report; the
 * owner bills it if this node dies before the final). */
void meter_settle_partial(struct worker *w, const snapshot_key_t *key, const char *request_id, quota_usage_t so_far);
/* The client left: the hold is dropped without a callback. */
void meter_hold_cancel(struct worker *w, meter_hold_t *hold);
/* End of a loop iteration: sends the reports that carry finals waiting for acknowledgement. */
void meter_worker_flush(struct worker *w);
/* Usage of a request of a key without limits (nothing was reserved): counted for
 * `key show` and the checkpoint only. */
void meter_count(struct worker *w, const snapshot_key_t *key, quota_usage_t usage, int64_t input_tokens,
                 int64_t output_tokens);
/* A message from the main thread (takes ownership). */
void meter_worker_on_msg(struct worker *w, meter_msg_t *msg);
/* Every ~100 ms: batched reports. */
void meter_worker_tick(struct worker *w);

/* ---- main side ---- */

typedef struct metering metering_t;

typedef struct metering_cluster_stats {
    uint64_t reports_received, forwarded, unroutable, settle_retries, settles_acked, pf_dropped;
    uint64_t replicas_sent, replicas_received, handoffs_sent, handoffs_received, ring_changes;
    uint64_t pending_finals;
    uint64_t peer_batches_sent, peer_batches_failed, peer_messages_received, peer_refused_frames,
        peer_refused_version;
    uint64_t ckpt_txns, ckpt_keys, ckpt_failed, ckpt_loaded;
} metering_cluster_stats_t;

/* Cluster mode (see "cluster" in metering.c): starts peer RPC on cfg->peer_listen and
 * routes every key's reports to its owner on the gossip ring. key: the 32-byte cluster key.
 * Returns 0 or a negative errno with a message in err. */
int metering_enable_cluster(metering_t *m, struct uv_loop_s *loop, const char *self, const uint8_t *key,
                            size_t key_len, struct gossip *gossip, char *err, size_t errlen);
/* Graceful leave: hands every owned key to its next owner (call once requests drained);
 * a key with no other member to go to is checkpointed to etcd. */
void metering_handoff_all(metering_t *m);
/* Cluster mode: owners checkpoint their keys' counters to <prefix>quota/<key_id> (batched
 * transactions within the etcd budget), and the checkpoints are loaded now (async). */
struct etcd_client;
void metering_set_etcd(metering_t *m, struct etcd_client *etcd, const char *prefix);
/* True while checkpoints are being written (or wait to be): run the loop until false
 * before exiting (bounded by the caller). Starts the next write itself. */
bool metering_checkpoints_pending(metering_t *m);
/* Stops peer RPC (before gossip_stop). */
void metering_stop_cluster(metering_t *m);
/* A peer asked this node to drain (by: the asking node). */
void metering_set_drain_handler(metering_t *m, void (*cb)(void *data, const char *by), void *data);
/* Asks member name to drain over peer RPC. 0, or -ENOENT when it is not an alive member. */
int metering_drain_remote(metering_t *m, const char *name, const char *by);
void metering_cluster_stats(metering_t *m, metering_cluster_stats_t *out);
struct admin_cluster;
/* Fills the admin cluster view's quota counters and, for out->query_key, its owner and
 * backup (no-op outside cluster mode). */
void metering_cluster_view(metering_t *m, struct admin_cluster *out);

int metering_create(struct server *s, const node_clock_t *clock, const char *data_dir, metering_t **out);
/* The config changed: new limits for existing owners (snap borrowed; retained inside). */
void metering_set_snapshot(metering_t *m, snapshot_t *snap);
/* A worker's report (takes ownership). */
void metering_on_msg(metering_t *m, meter_msg_t *msg);
/* Every second: owner ticks, recalls, checkpoint. */
void metering_tick(metering_t *m);
/* Cluster mode: asks the key's owner for its counters (when another node owns it) and
 * calls done once they arrived or after 2 s; then metering_key_spent answers with them.
 * Outside cluster mode, or when this node owns the key, done is called at once. */
void metering_refresh_key(metering_t *m, const char *key_id, void (*done)(void *ctx), void *ctx);
/* Spent so far of a key id (the owner's counters in a cluster: this node's if it owns the
 * key, else the owner's as just asked, else the replica this node holds); false when the
 * node has never seen it. */
bool metering_key_spent(metering_t *m, const char *key_id, int64_t *requests, int64_t *input_tokens,
                        int64_t *output_tokens, double *usd);
/* Writes the checkpoint now (at exit). */
void metering_checkpoint(metering_t *m);

#endif
