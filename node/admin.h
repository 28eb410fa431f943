/* admin.h — the node's admin API: an HTTP/1.1 (and h2c) JSON listener on --admin-listen
 * serving /healthz, /readyz and /admin/v1/{providers,keys} (docs/admin-api.md).
 *
 * It runs on the node's main uv loop (not a worker): its own h2o_globalconf_t, h2o_context_t
 * and listening uv_tcp_t. Reads come from the config store's current snapshot; writes go
 * through the config store to etcd and are answered when the store reports the outcome.
 *
 * Auth: `Authorization: Bearer <token>`. Accepted are the bootstrap token read from
 * cfg->admin_token_file (only its SHA-256 is kept; role admin) and the tokens of the
 * snapshot (config/tokens, roles admin | operator | viewer). viewer may only GET.
 *
 * Ownership: admin_start borrows loop, cfg (read during the call only), store and
 * status_data; store and status_data must outlive the admin_t until its close has finished
 * (the loop has run after admin_stop). *out is owned by the admin module itself: after
 * admin_stop, it frees itself once its listener and every connection are closed. */
#ifndef LLMRELAY_NODE_ADMIN_H
#define LLMRELAY_NODE_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "cluster/config_store.h"
#include "node/config.h"

/* Request bodies larger than this are answered 413. */
#define ADMIN_MAX_BODY (1024 * 1024)

typedef struct admin admin_t;

typedef struct admin_status {
    bool draining;
} admin_status_t;

/* Called on the loop for /readyz: the node fills *out (pre-zeroed) with its live state. */
typedef void (*admin_status_cb)(void *data, admin_status_t *out);
/* Reserved for the node drain endpoint (not served yet). */
typedef void (*admin_drain_cb)(void *data);

/* Reads the bootstrap token (if cfg->admin_token_file is set), binds cfg->admin_listen and
 * starts serving on loop. status_cb may be NULL (never draining). Returns 0 with *out set,
 * or a negative errno-style error with a one-line message (never a secret) in err. */
int admin_start(uv_loop_t *loop, const llmrelay_config_t *cfg, config_store_t *store, admin_status_cb status_cb,
                void *status_data, admin_t **out, char *err, size_t errlen);

/* Stops accepting, answers writes still waiting for etcd with 503, closes every
 * connection, and frees the admin_t once all of that has finished (the loop must run
 * afterwards). A NULL a is ignored. No callback is made after admin_stop returns, except
 * the store's own completion callbacks, which then do nothing. */
void admin_stop(admin_t *a);

/* The TCP port the listener is bound to (useful with an ADDR:0 listen address). */
int admin_port(const admin_t *a);

/* Pure helpers, exposed for unit tests. */

/* Writes the masked form of an upstream API key ("…" + its last 4 characters, or "…" alone
 * for a key shorter than 8 characters) to out, NUL-terminated. Returns 0 or -ENOBUFS. */
int admin_mask_secret(const char *secret, char *out, size_t outcap);

/* True when s is a valid provider name: 1..64 characters of [A-Za-z0-9._-]. */
bool admin_name_valid(const char *s, size_t len);

#endif
