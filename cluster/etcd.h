/* etcd: asynchronous client for etcd 3.4's JSON gateway (/v3/...), over curl_uv.
 *
 * Every call is a POST of JSON to one of the configured endpoints; on a connection
 * failure (or 503 / no leader) the request moves to the next endpoint (round robin), with
 * a bounded number of attempts. Timeouts: connect 1 s, request 5 s. Keys and values are
 * arbitrary bytes (base64 on the wire). Responses are bounded (64 MiB).
 *
 * Callbacks run on the loop, never synchronously inside the call that started the
 * operation. Status is 0 or a negative errno: -ECONNREFUSED / -ETIMEDOUT / -EIO (transport,
 * after every attempt failed), -ENOENT (e.g. lease not found), -EINVAL, -ERANGE (revision
 * compacted), -EFBIG (response too big), -EAGAIN (no leader / unavailable), -EPROTO (bad
 * answer). Everything handed to a callback (kvs, events, responses) is valid only during
 * the callback.
 *
 * Ownership:
 * - etcd_client_create borrows loop and cu (both must outlive the client); the client is
 *   owned by the caller and released by etcd_client_destroy.
 * - Buffers passed in (keys, values, endpoints) are copied; the caller keeps them.
 * - `data` pointers are opaque and never freed by the client.
 * - etcd_watch_t is owned by the client; the caller gives it back with etcd_watch_stop
 *   (or etcd_client_destroy stops it).
 *
 * Not thread-safe: one loop thread.
 */
#ifndef LLMRELAY_CLUSTER_ETCD_H
#define LLMRELAY_CLUSTER_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cluster/curl_uv.h"

#define ETCD_MAX_ENDPOINTS 16
#define ETCD_MAX_RESPONSE (64u << 20)

typedef struct etcd_client etcd_client_t;
typedef struct etcd_watch etcd_watch_t;

typedef struct etcd_kv {
    uint8_t *key;
    size_t key_len;
    uint8_t *value;
    size_t value_len;
    int64_t create_revision, mod_revision, version, lease;
} etcd_kv_t;

typedef enum etcd_event_type { ETCD_EVENT_PUT = 0, ETCD_EVENT_DELETE = 1 } etcd_event_type_t;

typedef struct etcd_watch_event {
    etcd_event_type_t type;
    etcd_kv_t kv; /* for DELETE only key and mod_revision are set */
} etcd_watch_event_t;

/* --- txn ---------------------------------------------------------------------------- */
typedef enum etcd_compare_target {
    ETCD_TARGET_VERSION,
    ETCD_TARGET_CREATE,
    ETCD_TARGET_MOD,
    ETCD_TARGET_VALUE
} etcd_compare_target_t;
typedef enum etcd_compare_result {
    ETCD_CMP_EQUAL,
    ETCD_CMP_GREATER,
    ETCD_CMP_LESS,
    ETCD_CMP_NOT_EQUAL
} etcd_compare_result_t;

typedef struct etcd_compare {
    const uint8_t *key;
    size_t key_len;
    etcd_compare_target_t target;
    etcd_compare_result_t result;
    int64_t number;       /* VERSION / CREATE / MOD */
    const uint8_t *value; /* VALUE */
    size_t value_len;
} etcd_compare_t;

typedef enum etcd_op_type { ETCD_OP_PUT, ETCD_OP_DELETE, ETCD_OP_RANGE } etcd_op_type_t;

typedef struct etcd_op {
    etcd_op_type_t type;
    const uint8_t *key;
    size_t key_len;
    const uint8_t *range_end; /* DELETE / RANGE; NULL = the single key */
    size_t range_end_len;
    const uint8_t *value; /* PUT */
    size_t value_len;
    int64_t lease; /* PUT; 0 = none */
    int64_t limit; /* RANGE; 0 = no limit */
} etcd_op_t;

/* One answer per op of the branch that ran. */
typedef struct etcd_op_result {
    etcd_op_type_t type;
    const etcd_kv_t *kvs; /* RANGE */
    size_t n_kvs;
    bool more;       /* RANGE */
    int64_t deleted; /* DELETE */
} etcd_op_result_t;

/* --- callbacks ---------------------------------------------------------------------- */
typedef void (*etcd_range_cb)(etcd_client_t *c, int status, int64_t revision, const etcd_kv_t *kvs, size_t n, bool more,
                              void *data);
typedef void (*etcd_done_cb)(etcd_client_t *c, int status, int64_t revision, void *data);
typedef void (*etcd_delete_cb)(etcd_client_t *c, int status, int64_t revision, int64_t deleted, void *data);
typedef void (*etcd_txn_cb)(etcd_client_t *c, int status, bool succeeded, int64_t revision,
                            const etcd_op_result_t *results, size_t n, void *data);
/* grant: lease id + granted ttl. keepalive: ttl 0 (with status -ENOENT) = lease gone. */
typedef void (*etcd_lease_cb)(etcd_client_t *c, int status, int64_t lease_id, int64_t ttl_s, void *data);

/* Watch callback, one call per stream message:
 * - status < 0, n == 0: the stream broke (reported once per outage); the client
 *   re-establishes it by itself from the last seen revision + 1.
 * - status 0, compact_revision > 0: the start revision was compacted; the watch is over
 *   (no more calls): reload, then etcd_watch_stop and start a new watch.
 * - status 0, n == 0: stream (re)created, or progress notification — the watch is healthy
 *   and up to date as of `revision`.
 * - status 0, n > 0: events, in revision order. */
typedef void (*etcd_watch_cb)(etcd_watch_t *w, int status, const etcd_watch_event_t *events, size_t n, int64_t revision,
                              int64_t compact_revision, void *data);

/* --- client ------------------------------------------------------------------------- */
/* endpoints: comma-separated base URLs ("http://127.0.0.1:2379,http://10.0.0.2:2379").
 * Returns 0, -EINVAL (no/too many endpoints) or -ENOMEM. */
int etcd_client_create(uv_loop_t *loop, curl_uv_t *cu, const char *endpoints, etcd_client_t **out);
/* Cancels everything in flight (no callback is called afterwards) and stops watches. Stop
 * stores using the client first. The loop must run afterwards to close uv handles. */
void etcd_client_destroy(etcd_client_t *c);
/* True when the last request that reached a verdict got an answer from some endpoint. */
bool etcd_client_reachable(const etcd_client_t *c);
/* Watch idle limit (seconds, default 660 = etcd's default 10 min progress interval +
 * margin): a watch stream silent for this long is considered dead and re-established. */
void etcd_client_set_watch_idle(etcd_client_t *c, long seconds);
/* Drops every watch's stream as lost (each reports the outage once with `status` and
 * reconnects with its backoff, resuming from its last revision). For a caller that learnt
 * by other means (a failed probe) that etcd is out of reach: a watch on a connection whose
 * packets are silently dropped would otherwise wait for TCP keepalive to notice. */
void etcd_client_reset_watches(etcd_client_t *c, int status);
/* Cancels every pending request whose callback data is `data` (no callback). */
void etcd_cancel_data(etcd_client_t *c, void *data);

/* All return 0 when started (cb will be called) or a negative error (cb will not be). */
int etcd_range(etcd_client_t *c, const uint8_t *key, size_t key_len, const uint8_t *range_end, size_t range_end_len,
               int64_t limit, int64_t revision, etcd_range_cb cb, void *data);
/* Every key starting with prefix (an empty prefix means every key). */
int etcd_range_prefix(etcd_client_t *c, const uint8_t *prefix, size_t prefix_len, int64_t limit, int64_t revision,
                      etcd_range_cb cb, void *data);
int etcd_put(etcd_client_t *c, const uint8_t *key, size_t key_len, const uint8_t *value, size_t value_len,
             int64_t lease, etcd_done_cb cb, void *data);
int etcd_delete(etcd_client_t *c, const uint8_t *key, size_t key_len, const uint8_t *range_end, size_t range_end_len,
                etcd_delete_cb cb, void *data);
int etcd_txn(etcd_client_t *c, const etcd_compare_t *compares, size_t n_compares, const etcd_op_t *success,
             size_t n_success, const etcd_op_t *failure, size_t n_failure, etcd_txn_cb cb, void *data);
int etcd_lease_grant(etcd_client_t *c, int64_t ttl_s, etcd_lease_cb cb, void *data);
int etcd_lease_keepalive(etcd_client_t *c, int64_t lease_id, etcd_lease_cb cb, void *data);
int etcd_lease_revoke(etcd_client_t *c, int64_t lease_id, etcd_done_cb cb, void *data);

/* range_end NULL = the single key; start_revision 0 = from now. Returns NULL on error. */
etcd_watch_t *etcd_watch_start(etcd_client_t *c, const uint8_t *key, size_t key_len, const uint8_t *range_end,
                               size_t range_end_len, int64_t start_revision, etcd_watch_cb cb, void *data);
/* Same, for every key under prefix. */
etcd_watch_t *etcd_watch_prefix(etcd_client_t *c, const uint8_t *prefix, size_t prefix_len, int64_t start_revision,
                                etcd_watch_cb cb, void *data);
/* Stops the watch; no callback afterwards. Safe from inside the watch's own callback. */
void etcd_watch_stop(etcd_watch_t *w);
etcd_client_t *etcd_watch_client(const etcd_watch_t *w);

/* range_end for a prefix: prefix with its last non-0xff byte incremented; "\0" (len 1)
 * when the prefix is empty or all 0xff. out must hold prefix_len bytes (min 1). */
size_t etcd_prefix_end(const uint8_t *prefix, size_t prefix_len, uint8_t *out);

#endif
