/* upstream.h — one HTTP request to an upstream provider, behind one interface with two
 * backends:
 *   - upstream_curl.c: libcurl multi on the worker's loop (curl_uv). TLS upstreams (HTTP/2
 *     where offered, --upstream-ca-file), proxies (HTTPS_PROXY / HTTP_PROXY / NO_PROXY).
 *   - upstream_h1.c: a lean HTTP/1.1 client on libuv (picohttpparser from libh2o) with
 *     per-worker keep-alive pools of connections that stay open uv_tcp_t handles, for
 *     cleartext upstreams that no proxy applies to (self-hosted OpenAI-compatible servers,
 *     the benchmark's mock): a fraction of curl's CPU per request.
 * upstream_start picks the backend from the URL and the proxy environment.
 *
 * Flow: upstream_start sends the request; on_sent reports that the request is about to
 * leave (or has left) for the upstream — before it, cancelling costs the upstream nothing;
 * on_head reports the status and content type once the response head has arrived; on_body
 * delivers the body in pieces; on_done ends it exactly once (unless upstream_cancel came
 * first, which calls nothing). Backpressure: before each piece the backend asks
 * `writable`; when it answers false the backend holds the data (curl: pause; h2o: stop
 * reading the socket) until upstream_resume. Callbacks never run inside upstream_start.
 *
 * Ownership: every argument of upstream_start is copied or consumed before it returns
 * except `cbs` and `data` (borrowed until on_done or upstream_cancel). The upstream_t is
 * owned by the backend and freed after on_done or inside upstream_cancel. Bodies pass
 * through memory only; buffers that held them are wiped when freed. */
#ifndef LLMRELAY_NODE_UPSTREAM_H
#define LLMRELAY_NODE_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct worker;
typedef struct upstream upstream_t;

typedef struct upstream_cbs {
    void (*on_sent)(void *data);
    void (*on_head)(void *data, int status, const char *content_type, size_t content_type_len);
    bool (*writable)(void *data);
    /* Returns 0, or non-zero to abort the transfer (on_done follows with -ECANCELED). */
    int (*on_body)(void *data, const uint8_t *buf, size_t len);
    /* 0: complete; -ETIMEDOUT (connect timeout); -ECONNREFUSED / -EHOSTUNREACH (could not
     * connect); -EPROTO (malformed answer); -EIO (connection lost mid-answer);
     * -ECANCELED (on_body asked to stop). */
    void (*on_done)(void *data, int error);
} upstream_cbs_t;

/* How the upstream key is sent, by provider type. */
typedef enum upstream_auth {
    UPSTREAM_AUTH_BEARER = 0, /* OpenAI: Authorization: Bearer K */
    UPSTREAM_AUTH_ANTHROPIC,  /* x-api-key: K, and anthropic-version */
    UPSTREAM_AUTH_GEMINI,     /* x-goog-api-key: K */
} upstream_auth_t;

#define UPSTREAM_ANTHROPIC_VERSION "2023-06-01"

/* The start of the key's header line ("Authorization: Bearer ", "x-api-key: ", ...). */
static inline const char *upstream_auth_prefix(upstream_auth_t a)
{
    return a == UPSTREAM_AUTH_ANTHROPIC ? "x-api-key: " : a == UPSTREAM_AUTH_GEMINI ? "x-goog-api-key: "
                                                                                    : "Authorization: Bearer ";
}

/* A header line the provider type needs besides the key (no CRLF), or NULL. */
static inline const char *upstream_auth_extra(upstream_auth_t a)
{
    return a == UPSTREAM_AUTH_ANTHROPIC ? "anthropic-version: " UPSTREAM_ANTHROPIC_VERSION : NULL;
}

typedef struct upstream_request {
    const char *url;          /* http:// or https:// */
    const char *api_key;      /* sent as `auth` says; wiped from copies when done */
    bool stream;              /* Accept: text/event-stream rather than application/json */
    const uint8_t *body;      /* JSON body, borrowed until on_done/upstream_cancel */
    size_t body_len;
    upstream_auth_t auth; /* how api_key is sent (0: Authorization: Bearer) */
} upstream_request_t;

/* Starts the request on worker w's loop. Returns 0 with *out set, or a negative error
 * (nothing started, no callback). */
int upstream_start(struct worker *w, const upstream_request_t *req, const upstream_cbs_t *cbs, void *data,
                   upstream_t **out);
/* Continues delivering after `writable` answered false. Not from inside a callback of u. */
void upstream_resume(upstream_t *u);
/* Stops the request: no callback after this. Not from inside a callback of u. */
void upstream_cancel(upstream_t *u);
/* Which backend serves u ("curl" or "h1"), for logs and tests. */
const char *upstream_backend(const upstream_t *u);

/* Backends (upstream.c dispatches to them). */
int upstream_curl_start(struct worker *w, const upstream_request_t *req, const upstream_cbs_t *cbs, void *data,
                        upstream_t **out);
int upstream_h1_start(struct worker *w, const upstream_request_t *req, const upstream_cbs_t *cbs, void *data,
                      upstream_t **out);

/* True when libcurl would send a request for url through a proxy, given the process's
 * environment (http_proxy for http:// — curl ignores the uppercase HTTP_PROXY —, https_proxy / HTTPS_PROXY for
 * https://, ALL_PROXY, and NO_PROXY / no_proxy with curl's matching rules). */
bool upstream_proxy_applies(const char *url);

#endif
