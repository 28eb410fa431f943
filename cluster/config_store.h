/* config_store: the typed view of the shared config kept in etcd.
 *
 * Records are protobuf (proto/config.proto) under <prefix>config/:
 *   providers/<name>, keys/<sha256 hex of the secret>, tokens/<sha256 hex of the token>.
 * The store loads the whole config prefix (paged), watches it, keeps the current view in
 * memory and in a local snapshot file (fail static: a node restarted while etcd is down
 * serves from the file), and calls update_cb whenever the view changed.
 *
 * Secrets at rest: with a secrets key (config_store_create_ex), every upstream API key
 * (Provider.api_keys[i]) is sealed (cluster/secrets.h, AAD "provider:<name>:api_key:<i>")
 * before it is written to etcd or to the snapshot file, and opened on load/watch: the
 * view (config_store_current, update_cb) holds plaintext, in memory only. Plaintext values
 * found in etcd or in the file (written before the key was configured) are accepted, and
 * logged once per provider (by name) as needing a re-save. A sealed value that does not
 * open (wrong key, tampered, or no key configured) is dropped from the view's api_keys and
 * logged as an error naming the provider; the provider stays. Without a key the store
 * behaves as before (plaintext), with a warning logged at creation.
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
 * - opts of config_store_create_ex is read during the call: the secrets key is copied into
 *   the store (wiped at destroy), so the caller may secrets_key_dispose its own at once.
 *   log_data is borrowed and must outlive the store.
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
#include "cluster/secrets.h"

#define CONFIG_STORE_DEFAULT_PREFIX "/llmrelay/"

typedef struct config_store config_store_t;

/* The config changed (bursts coalesced: at most one call per loop iteration). */
typedef void (*config_store_update_cb)(config_store_t *s, const Llmrelay__Snapshot *snap, void *data);
/* A write finished: 0 once etcd acknowledged it, <0 otherwise (-ENOENT: nothing to
 * delete; -ECONNREFUSED/-ETIMEDOUT/-EIO...: etcd unreachable). */
typedef void (*config_store_done_cb)(config_store_t *s, int status, void *data);

/* Log levels of config_store_log_cb: the same numbers as node/log.h's log_level_t. */
enum { CONFIG_STORE_LOG_INFO = 1, CONFIG_STORE_LOG_WARN = 2, CONFIG_STORE_LOG_ERROR = 3 };
/* One diagnostic line (no newline). It names providers at most, never a secret. */
typedef void (*config_store_log_cb)(int level, const char *msg, void *data);

typedef struct config_store_options {
    /* NULL: upstream API keys are stored in plaintext (a warning is logged). Must be a
     * loaded key otherwise (-EINVAL). Copied. */
    const secrets_key_t *secrets_key;
    /* NULL: lines go to stderr as "llmrelay config_store <level>: <msg>". */
    config_store_log_cb log_cb;
    void *log_data;
} config_store_options_t;

/* prefix NULL = CONFIG_STORE_DEFAULT_PREFIX; snapshot_path NULL = no file.
 * Returns 0, -EINVAL or -ENOMEM. The first update_cb (from the file, if it loads, else
 * from etcd) comes from the loop, never from inside this call.
 * config_store_create is config_store_create_ex with opts NULL (no secrets key, stderr). */
int config_store_create(uv_loop_t *loop, etcd_client_t *etcd, const char *prefix, const char *snapshot_path,
                        config_store_update_cb cb, void *data, config_store_t **out);
int config_store_create_ex(uv_loop_t *loop, etcd_client_t *etcd, const char *prefix, const char *snapshot_path,
                           const config_store_options_t *opts, config_store_update_cb cb, void *data,
                           config_store_t **out);
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
 * (-EINVAL otherwise). The change reaches the view through the watch, not at once.
 * put_provider takes plaintext api_keys and, with a secrets key, writes them sealed
 * (-EIO if sealing fails: nothing is written then). */
int config_store_put_provider(config_store_t *s, const Llmrelay__Provider *p, config_store_done_cb cb, void *data);
int config_store_delete_provider(config_store_t *s, const char *name, config_store_done_cb cb, void *data);
int config_store_put_key(config_store_t *s, const Llmrelay__ApiKey *k, config_store_done_cb cb, void *data);
int config_store_put_token(config_store_t *s, const Llmrelay__AdminToken *t, config_store_done_cb cb, void *data);

/* Snapshot file helpers: save = write <path>.tmp (mode 0600) + fsync + rename; load
 * returns -ENOENT if absent, -EINVAL if unreadable. These are raw: they neither seal nor
 * open api_keys (the store does that around them). */
int config_store_save_file(const Llmrelay__Snapshot *snap, const char *path);
int config_store_load_file(const char *path, Llmrelay__Snapshot **out);

#endif
