/* admin.h — the node's admin API: an HTTP/1.1 (and h2c) JSON listener on --admin-listen
 * serving /healthz, /readyz and /admin/v1/{providers,keys,prices,tokens,logs,usage,audit,cluster}
 * and POST /admin/v1/drain (docs/admin-api.md).
 *
 * It runs on the node's main uv loop (not a worker): its own h2o_globalconf_t, h2o_context_t
 * and listening uv_tcp_t. Config reads come from the config store's current snapshot; writes
 * go through the config store (providers, keys, tokens) or straight to etcd (prices, token
 * deletion, key rotation, audit) and are answered when etcd reports the outcome. Logs, usage
 * and a key's spending come from the node through admin_node_ops_t.
 *
 * Auth: `Authorization: Bearer <token>`. Accepted are the bootstrap token read from
 * cfg->admin_token_file (only its SHA-256 is kept; role admin) and the tokens of the
 * snapshot (config/tokens, roles admin | operator | viewer). viewer may only read; operator
 * may also write keys and providers and drain nodes; admin may do everything (prices, tokens).
 *
 * Audit: every /admin/v1/ call, reads included, becomes an AuditEntry at
 * <prefix>audit/<ts_ms, 13 digits>-<node>-<seq>, written asynchronously in batches (at most
 * 128 puts per txn), buffered (at most ADMIN_AUDIT_MAX_BUFFERED entries, the excess is
 * counted and dropped) while etcd is unreachable. admin_audit_sweep deletes what is older
 * than 7 days by the timestamp in the key (no leases).
 *
 * Ownership: admin_start borrows loop, cfg (read during the call only), store, ops->etcd and
 * ops->data; they must outlive the admin_t until its close has finished (the loop has run
 * after admin_stop). *ops itself is copied. *out is owned by the admin module itself: after
 * admin_stop, it frees itself once its listener and every connection are closed. */
#ifndef LLMRELAY_NODE_ADMIN_H
#define LLMRELAY_NODE_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "cluster/config_store.h"
#include "cluster/etcd.h"
#include "node/channels.h"
#include "node/config.h"
#include "node/wipe.h"

/* Request bodies larger than this are answered 413. */
#define ADMIN_MAX_BODY (1024 * 1024)
/* Audit entries kept in memory while etcd does not take them. */
#define ADMIN_AUDIT_MAX_BUFFERED 10000
/* Audit entries older than this are deleted by admin_audit_sweep. */
#define ADMIN_AUDIT_RETENTION_MS (7LL * 24 * 3600 * 1000)
/* Largest JSON answer the node may give to query_logs / query_usage. */
#define ADMIN_MAX_NODE_ANSWER (16u << 20)

typedef struct admin admin_t;

typedef struct admin_status {
    bool draining;
} admin_status_t;

/* GET /admin/v1/logs, validated. Times are unix milliseconds, [since_ms, until_ms). Empty
 * strings mean "no filter". */
typedef struct admin_logs_query {
    char key_id[68];  /* "key_..." or "" */
    char model[260];  /* exact model name or "" */
    int status;       /* exact HTTP status (100..599), or 0 */
    int status_class; /* 1..5 for "1xx".."5xx", or 0 */
    int64_t since_ms;
    int64_t until_ms;
    int limit;        /* 1..1000 (default 100) */
    char cursor[260]; /* opaque, as the node gave it in next_cursor; "" = first page */
} admin_logs_query_t;

typedef enum admin_usage_by {
    ADMIN_USAGE_BY_NONE = 0, /* totals only, "groups": [] */
    ADMIN_USAGE_BY_MODEL,
    ADMIN_USAGE_BY_HOUR,
    ADMIN_USAGE_BY_NODE,
    ADMIN_USAGE_BY_KEY,
} admin_usage_by_t;

/* GET /admin/v1/usage, validated. */
typedef struct admin_usage_query {
    char key_id[68]; /* "" = every key */
    int64_t since_ms;
    int64_t until_ms;
    admin_usage_by_t by;
} admin_usage_query_t;

/* GET /admin/v1/metrics, validated: the cluster's metric ring over [since_ms, until_ms)
 * (until = now; since = now - range, range default 24h), one node's slots only when node is
 * not "". */
typedef struct admin_metrics_query {
    int64_t since_ms;
    int64_t until_ms;
    char node[68]; /* "" = every node */
} admin_metrics_query_t;

/* The node's answer to an async query: status 200 with a complete JSON body (the contract's
 * shape; json is borrowed for the call), or an error status (400, 503, 500...) with json
 * NULL or a JSON error body to relay. Called exactly once per query, on the main loop,
 * possibly from inside the query call itself; also when the node shuts down (503). done_ctx
 * may belong to a request whose client left or to a stopped admin_t: that is harmless (the
 * answer is dropped and the context freed). */
typedef void (*admin_answer_cb)(void *done_ctx, int status, const char *json, size_t len);

/* GET /admin/v1/cluster: one member of the cluster as this node sees it. */
typedef struct admin_cluster_member {
    char name[64];
    char region[64];
    char version[64];
    char gossip[64];    /* gossip address; "" = none (gossip off) */
    const char *status; /* static: "alive" | "suspect" | "dead" | "left" */
    int64_t keys_owned; /* relay keys this member owns on the ring; -1 = unknown (null) */
} admin_cluster_member_t;

/* The node's answer to GET /admin/v1/cluster. members is malloc'd by the node and freed by
 * the admin module with free(). has_packets: the gossip packet counts below are known. */
typedef struct admin_cluster {
    admin_cluster_member_t *members;
    size_t n_members;
    bool has_packets;
    uint64_t sealed, opened, malformed, forged, replayed, too_old; /* gossip_seal counts */
    /* Input (set by the admin module): ?key=ID asks for that key's owner and backup. */
    const char *query_key;
    char key_owner[64], key_backup[64]; /* "" = none */
    /* Sharded quota and peer RPC counters (node/metering.h), n_quota = 0: none. */
    size_t n_quota;
    const char *quota_names[24];
    uint64_t quota_values[24];
} admin_cluster_t;

typedef struct admin_node_ops {
    void *data;
    /* The node's injectable clock (unix ms). NULL = CLOCK_REALTIME. */
    int64_t (*now_ms)(void *data);
    /* /readyz: fill *out (pre-zeroed) with the node's live state. NULL = never draining. */
    void (*status)(void *data, admin_status_t *out);
    /* What a key has spent so far (from its quota owner); false if unknown. NULL = zeros. */
    bool (*key_spent)(void *data, const char *key_id, int64_t *requests, int64_t *input_tokens, int64_t *output_tokens,
                      double *usd);
    /* Async; NULL = answered 503 not_available. q is borrowed for the call only. */
    void (*query_logs)(void *data, const admin_logs_query_t *q, admin_answer_cb done, void *done_ctx);
    void (*query_usage)(void *data, const admin_usage_query_t *q, admin_answer_cb done, void *done_ctx);
    /* GET /admin/v1/metrics from the cluster's metric ring (node/metrics_ring.h). Async; NULL
     * = 503. */
    void (*query_metrics)(void *data, const admin_metrics_query_t *q, admin_answer_cb done, void *done_ctx);
    /* /admin/v1/usage without a key filter and not by key: cluster-wide, from the metric ring.
     * NULL = such queries go to query_usage (this node's metadata store) like the others. */
    void (*query_ring_usage)(void *data, const admin_usage_query_t *q, admin_answer_cb done, void *done_ctx);
    /* The etcd client the config store uses: prices, token deletion, rotation and the audit
     * log are written with it directly. NULL = those answer 503 (and audit entries are
     * dropped). */
    etcd_client_t *etcd;
    /* GET /metrics (no token, like /healthz: metadata counters only): append the Prometheus
     * text exposition to *out; 0 or a negative error. NULL = 404. */
    int (*render_metrics)(void *data, wipe_buf_t *out);
    /* GET /admin/v1/cluster (any role): fill *out (pre-zeroed) with the members, this node
     * included. key_ids are the relay key ids of the current snapshot (borrowed for the
     * call), for keys_owned. Returns 0 or a negative error (answered 500). NULL = 503. */
    int (*cluster)(void *data, const char *const *key_ids, size_t n_keys, admin_cluster_t *out);
    /* GET /admin/v1/keys/ID: bring the node's view of that key's spending up to date (in a
     * cluster, ask the key's owner), then call done (any status; the answer is then built
     * from key_spent). May call done at once. NULL: key_spent is read directly. */
    void (*refresh_key)(void *data, const char *key_id, admin_answer_cb done, void *done_ctx);
    /* POST /admin/v1/drain (roles admin and operator): drain the node called name (a valid
     * node name, borrowed for the call), or this node when name is NULL. Async, answered
     * through done like query_logs: 202 {"node","draining":true} once this node's drain is
     * decided (the answer is sent before the drain starts), or an error status with a JSON
     * error body (404 unknown node, 501 not wired yet...). NULL = 503. */
    void (*drain)(void *data, const char *name, admin_answer_cb done, void *done_ctx);
    /* The channels' circuit breakers (node/channels.h), merged over the workers: fills at
     * most cap rows ordered by (provider, key_index) and returns how many; *now_mono_ms gets
     * the monotonic clock (ms) the rows' last_change_ms are on. Used by GET
     * /admin/v1/providers[/NAME] (a channel without a row shows closed). NULL = none. */
    size_t (*channels)(void *data, channels_row_t *rows, size_t cap, uint64_t *now_mono_ms);
    /* An upper bound of the rows channels can give now (a size for its buffer). */
    size_t (*channels_bound)(void *data);
} admin_node_ops_t;

/* Reads the bootstrap token (if cfg->admin_token_file is set), binds cfg->admin_listen and
 * starts serving on loop. ops may be NULL (all defaults). The etcd prefix and node name come
 * from cfg->etcd_prefix (default "/llmrelay/") and cfg->name (default "node"). Returns 0
 * with *out set, or a negative errno-style error with a one-line message (never a secret)
 * in err. */
int admin_start(uv_loop_t *loop, const llmrelay_config_t *cfg, config_store_t *store, const admin_node_ops_t *ops,
                admin_t **out, char *err, size_t errlen);

/* Stops accepting, answers requests still waiting with 503, cancels its etcd requests (the
 * etcd client may be destroyed right after this returns), closes every connection, and
 * frees the admin_t once all of that has finished (the loop must run afterwards). Audit
 * entries not yet in etcd are lost (logged as a count). A NULL a is ignored. */
void admin_stop(admin_t *a);

/* The TCP port the listener is bound to (useful with an ADDR:0 listen address). */
int admin_port(const admin_t *a);

/* Deletes the audit entries older than now_ms - ADMIN_AUDIT_RETENTION_MS (one range delete
 * by key; async, result logged). The node calls it on a timer with its clock. Returns 0
 * when started, -EAGAIN while a sweep is in flight, -ENOTCONN without etcd, -ECANCELED
 * after admin_stop. */
int admin_audit_sweep(admin_t *a, int64_t now_ms);

/* Audit entries dropped because the buffer was full, since start. */
uint64_t admin_audit_dropped(const admin_t *a);

/* Pure helpers, exposed for unit tests. */

/* Writes the masked form of an upstream API key ("…" + its last 4 characters, or "…" alone
 * for a key shorter than 12 characters) to out, NUL-terminated. Returns 0 or -ENOBUFS. */
int admin_mask_secret(const char *secret, char *out, size_t outcap);

/* True when s is a valid provider or token name: 1..64 characters of [A-Za-z0-9._-]. */
bool admin_name_valid(const char *s, size_t len);

/* True when s is a valid model name for /prices/MODEL: 1..128 characters of
 * [A-Za-z0-9._:@+-]. */
bool admin_model_valid(const char *s, size_t len);

/* An operator's address truncated to its /24 (IPv4, also IPv4-mapped IPv6) or /48 (IPv6):
 * "192.0.2.0/24", "2001:db8:1::/48"; "-" for anything else. Returns 0 or -ENOBUFS. */
int admin_ip_truncate(const struct sockaddr *sa, char *out, size_t outcap);

/* A time argument: a duration back from now ("500ms", "30s", "15m", "24h", "7d") or an RFC
 * 3339 time. *out_ms gets unix ms. Returns 0 or -EINVAL. */
int admin_parse_time_arg(const char *s, int64_t now_ms, int64_t *out_ms);

/* A duration "500ms" | "30s" | "15m" | "24h" | "7d" (a whole number and a unit) → ms.
 * Returns 0 or -EINVAL (also above 10 years). */
int admin_parse_duration(const char *s, int64_t *out_ms);

#endif
