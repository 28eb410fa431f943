/* curl_uv: a libcurl multi handle driven by a libuv loop.
 *
 * One curl_uv_t per loop (per worker thread). Transfers are ordinary easy handles
 * configured by the caller; curl_uv_add starts one and calls its done callback exactly
 * once, from the loop, when it ends.
 *
 * Ownership:
 * - curl_uv_create returns a curl_uv_t owned by the caller, released with curl_uv_destroy.
 *   The loop pointer is borrowed and must outlive the curl_uv_t.
 * - An easy handle passed to curl_uv_add stays owned by the caller, but must not be
 *   cleaned up or reconfigured while attached. It is detached before its done callback
 *   runs, so the callback may curl_easy_cleanup it (or re-add it).
 * - curl_uv owns CURLOPT_PRIVATE of every attached easy handle: do not set or read it
 *   while the handle is attached.
 * - The CURLM returned by curl_uv_multi is owned by curl_uv_t; callers may only set
 *   options on it (never socket/timer functions).
 *
 * Not thread-safe: every call must come from the loop's thread.
 */
#ifndef LLMRELAY_CLUSTER_CURL_UV_H
#define LLMRELAY_CLUSTER_CURL_UV_H

#include <curl/curl.h>
#include <uv.h>

typedef struct curl_uv curl_uv_t;

/* Called once when a transfer ends (success or error). The easy handle is already
 * detached from the multi: the callback owns it again. */
typedef void (*curl_uv_done_cb)(CURL *easy, CURLcode result, void *data);

/* Creates a curl multi bound to loop (CURLMOPT_MAXCONNECTS 1024, HTTP/2 multiplexing
 * on; set CURLOPT_PIPEWAIT on easy handles that should wait for a multiplexed
 * connection). Returns NULL on allocation failure. */
curl_uv_t *curl_uv_create(uv_loop_t *loop);

/* Detaches every easy handle still attached (their callbacks are not called; the
 * callers keep owning them), cleans up the multi and closes the uv handles. The struct
 * is freed once its uv handles are closed: run the loop afterwards (uv_run until no
 * handles are left). May be called from a done callback. */
void curl_uv_destroy(curl_uv_t *cu);

/* Starts a transfer. cb is called exactly once when it ends, from the loop, never
 * synchronously inside curl_uv_add; unless curl_uv_remove is called first.
 * Returns 0, -EINVAL (destroyed/closing or bad args), -ENOMEM, or -EIO. */
int curl_uv_add(curl_uv_t *cu, CURL *easy, curl_uv_done_cb cb, void *data);

/* Cancels a transfer started with curl_uv_add: no callback is called and the caller
 * owns easy again (may curl_easy_cleanup it). A no-op if easy is not attached.
 * Safe from anywhere (done callbacks included) EXCEPT from inside that easy handle's own
 * curl callbacks (write/header/read/progress): those must return an error instead. */
void curl_uv_remove(curl_uv_t *cu, CURL *easy);

/* The multi handle, for setting extra options (e.g. CURLMOPT_MAX_HOST_CONNECTIONS). */
CURLM *curl_uv_multi(curl_uv_t *cu);

/* Number of transfers currently attached. */
size_t curl_uv_count(const curl_uv_t *cu);

#endif
