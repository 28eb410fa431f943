/* config_store: the typed view of the shared config kept in etcd.
 *
 * Records are protobuf (proto/config.proto) under <prefix>config/:
 *   providers/<name>, keys/<sha256 hex of the secret>, tokens/<sha256 hex of the token>.
 * The store loads the whole config prefix (paged), watches it, keeps the current view in
 * memory and in a local snapshot file (fail static: a node restarted while etcd is down
 * serves from the file), and calls update_cb whenever the view changed.
 *
 * Ownership:
 * - config_store_create borrows loop and etcd (both must outlive the store: destroy the
 *   store before the etcd client); prefix and snapshot_path are copied.
 * - Snapshots handed to callbacks / returned by config_store_current belong to the store
 *   and are valid only during the callback / until the next loop iteration (any store
 *   call or loop turn may change them). Copy what you need.
 * - Records passed to the put functions are read (packed) during the call; the caller
 *   keeps them.
 * - *out of config_store_load_file is owned by the caller: free it with
 *   llmrelay__snapshot__free_unpacked(snap, NULL).
 *
 * Not thread-safe: one loop thread.
 */
#ifndef LLMRELAY_CLUSTER_CONFIG_STORE_H
#define LLMRELAY_CLUSTER_CONFIG_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.pb-c.h"
#include "cluster/etcd.h"

#define CONFIG_STORE_DEFAULT_PREFIX "/llmrelay/"

typedef struct config_store config_store_t;

/* The config changed (bursts coalesced: at most one call per loop iteration). */
typedef void (*config_store_update_cb)(config_store_t *s, const Llmrelay__Snapshot *snap, void *data);
/* A write finished: 0 once etcd acknowledged it, <0 otherwise (-ENOENT: nothing to
 * delete; -ECONNREFUSED/-ETIMEDOUT/-EIO...: etcd unreachable). */
typedef void (*config_store_done_cb)(config_store_t *s, int status, void *data);

/* prefix NULL = CONFIG_STORE_DEFAULT_PREFIX; snapshot_path NULL = no file.
 * Returns 0, -EINVAL or -ENOMEM. The first update_cb (from the file, if it loads, else
 * from etcd) comes from the loop, never from inside this call. */
int config_store_create(uv_loop_t *loop, etcd_client_t *etcd, const char *prefix, const char *snapshot_path,
                        config_store_update_cb cb, void *data, config_store_t **out);
/* Cancels pending writes (their callbacks are not called), stops the watch, flushes a
 * pending snapshot save. The loop must run afterwards to close uv handles. */
void config_store_destroy(config_store_t *s);

/* Loaded from etcd at least once and the watch is healthy. */
bool config_store_synced(const config_store_t *s);
/* Has a config to serve (from etcd or from the snapshot file). */
bool config_store_has_snapshot(const config_store_t *s);
/* etcd revision the current view reflects (0 = none). */
int64_t config_store_revision(const config_store_t *s);
/* The current view (never NULL; empty before any load). */
const Llmrelay__Snapshot *config_store_current(config_store_t *s);

/* Writes. name must be non-empty without '/'; hashes 64 lowercase hex characters
 * (-EINVAL otherwise). The change reaches the view through the watch, not at once. */
int config_store_put_provider(config_store_t *s, const Llmrelay__Provider *p, config_store_done_cb cb, void *data);
int config_store_delete_provider(config_store_t *s, const char *name, config_store_done_cb cb, void *data);
int config_store_put_key(config_store_t *s, const Llmrelay__ApiKey *k, config_store_done_cb cb, void *data);
int config_store_put_token(config_store_t *s, const Llmrelay__AdminToken *t, config_store_done_cb cb, void *data);

/* Snapshot file helpers: save = write <path>.tmp (mode 0600) + fsync + rename; load
 * returns -ENOENT if absent, -EINVAL if unreadable. */
int config_store_save_file(const Llmrelay__Snapshot *snap, const char *path);
int config_store_load_file(const char *path, Llmrelay__Snapshot **out);

#endif
